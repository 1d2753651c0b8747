//! Knock packet layout, protocol version 1: the specification constants shared by the XDP
//! pre-filter and the userspace verifier. docs/PROTOCOL.md is the normative description.
//!
//! ```text
//!  0               4   5       8                       24              32
//! +---------------+---+-------+-----------------------+---------------+
//! |  magic "CKnk" |ver| zero  |     user id (16)      | step (u64 BE) |
//! +---------------+---+-------+-----------------------+---------------+
//! 32                                      56              64
//! +---------------------------------------+---------------+
//! |          XChaCha20 nonce (24)         | tag (8)       |
//! +---------------------------------------+---------------+
//! 64                                                      240     256
//! +-------------------------------------------------------+-------+
//! |       ciphertext of the padded postcard payload (176) | AEAD  |
//! +-------------------------------------------------------+-------+
//! ```
//!
//! The tag is SipHash-2-4 (under the user's tag key) of bytes `0..56`; the whole 64-byte header
//! is the AEAD's associated data.

/// First four bytes of every knock.
pub const MAGIC: [u8; 4] = *b"CKnk";
/// Protocol version carried in byte 4.
pub const VERSION: u8 = 1;

/// Offset of the magic.
pub const MAGIC_OFFSET: usize = 0;
/// Offset of the version byte.
pub const VERSION_OFFSET: usize = 4;
/// Offset of the three reserved bytes, which must be zero.
pub const RESERVED_OFFSET: usize = 5;
/// Length of the reserved field.
pub const RESERVED_LEN: usize = 3;
/// Offset of the 16-byte random user id.
pub const USER_ID_OFFSET: usize = 8;
/// Length of a user id.
pub const USER_ID_LEN: usize = 16;
/// Offset of the client's TOTP time step (big-endian `u64`).
pub const TIME_STEP_OFFSET: usize = 24;
/// Offset of the 24-byte XChaCha20-Poly1305 nonce.
pub const NONCE_OFFSET: usize = 32;
/// Length of the nonce.
pub const NONCE_LEN: usize = 24;
/// Offset of the 8-byte pre-filter tag.
pub const TAG_OFFSET: usize = 56;
/// Length of the pre-filter tag.
pub const TAG_LEN: usize = 8;
/// Bytes covered by the pre-filter tag: everything before it.
pub const TAGGED_LEN: usize = TAG_OFFSET;
/// Length of the clear header (the AEAD associated data).
pub const HEADER_LEN: usize = 64;
/// Length of the padded plaintext payload.
pub const PLAINTEXT_LEN: usize = 176;
/// Length of the Poly1305 authentication tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Length of every knock packet: header, ciphertext, AEAD tag.
pub const KNOCK_LEN: usize = HEADER_LEN + PLAINTEXT_LEN + AEAD_TAG_LEN;

/// Length of a per-user pre-filter (`SipHash`) key.
pub const TAG_KEY_LEN: usize = 16;

/// TOTP time step length in seconds (RFC 6238 default).
pub const TIME_STEP_SECONDS: u64 = 30;

/// Steps either side of the server's current time step that still count as current: for the
/// header's time step (checked by the pre-filter, in the kernel and in userspace, and again by
/// the verifier) and for the TOTP code (RFC 6238 section 5.2 recommends at most one).
pub const STEP_SKEW: u64 = 1;

/// The UDP port knocks go to when the configuration names none.
pub const DEFAULT_KNOCK_PORT: u16 = 62201;

const _: () = assert!(KNOCK_LEN == 256);
const _: () = assert!(TAG_OFFSET + TAG_LEN == HEADER_LEN);
const _: () = assert!(RESERVED_OFFSET + RESERVED_LEN == PREFIX_LEN);

/// Length of everything after the header: ciphertext and AEAD tag.
pub const BODY_LEN: usize = KNOCK_LEN - HEADER_LEN;

/// The `N` bytes at constant offset `OFF` of a `L`-byte array.
///
/// The compile-time assertion makes the fallback arm unreachable, so this never panics and
/// compiles to plain loads (also in BPF).
#[inline(always)]
fn array_at<const L: usize, const N: usize, const OFF: usize>(bytes: &[u8; L]) -> [u8; N] {
    const { assert!(OFF + N <= L) };
    match bytes.split_at_checked(OFF) {
        Some((_, rest)) => match rest.first_chunk::<N>() {
            Some(field) => *field,
            None => [0; N],
        },
        None => [0; N],
    }
}

/// The bytes covered by the pre-filter tag: the header without its last 8 bytes.
#[inline(always)]
#[must_use]
pub fn tagged_part(header: &[u8; HEADER_LEN]) -> [u8; TAGGED_LEN] {
    array_at::<HEADER_LEN, TAGGED_LEN, 0>(header)
}

/// The pre-filter tag of a header, as it appears in the packet: SipHash-2-4 of `tagged` under
/// the user's tag key, little-endian.
#[inline(always)]
#[must_use]
pub fn header_tag(key: &[u8; TAG_KEY_LEN], tagged: &[u8; TAGGED_LEN]) -> [u8; TAG_LEN] {
    crate::siphash::siphash24(key, tagged).to_le_bytes()
}

/// Splits a knock into its header and the rest (ciphertext and AEAD tag).
#[inline(always)]
#[must_use]
pub fn split_knock(knock: &[u8; KNOCK_LEN]) -> ([u8; HEADER_LEN], [u8; BODY_LEN]) {
    (
        array_at::<KNOCK_LEN, HEADER_LEN, 0>(knock),
        array_at::<KNOCK_LEN, BODY_LEN, HEADER_LEN>(knock),
    )
}

/// Why a header is not a version 1 knock header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// The first four bytes are not [`MAGIC`].
    BadMagic,
    /// The version byte is not [`VERSION`].
    BadVersion(u8),
    /// A reserved byte is not zero.
    ReservedNotZero,
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            HeaderError::BadMagic => f.write_str("not a capyknock packet (bad magic)"),
            HeaderError::BadVersion(v) => {
                write!(f, "unsupported protocol version {v} (expected {VERSION})")
            }
            HeaderError::ReservedNotZero => f.write_str("reserved header bytes are not zero"),
        }
    }
}

impl core::error::Error for HeaderError {}

/// Length of the fixed start of every header: magic, version and reserved bytes.
pub const PREFIX_LEN: usize = USER_ID_OFFSET;

/// Checks the fixed start of a header (magic, version, reserved bytes, in that order): the
/// cheap first look the pre-filter takes before reading the whole header.
#[inline(always)]
pub fn check_prefix(prefix: &[u8; PREFIX_LEN]) -> Result<(), HeaderError> {
    if array_at::<PREFIX_LEN, 4, MAGIC_OFFSET>(prefix) != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let [version] = array_at::<PREFIX_LEN, 1, VERSION_OFFSET>(prefix);
    if version != VERSION {
        return Err(HeaderError::BadVersion(version));
    }
    if array_at::<PREFIX_LEN, RESERVED_LEN, RESERVED_OFFSET>(prefix) != [0; RESERVED_LEN] {
        return Err(HeaderError::ReservedNotZero);
    }
    Ok(())
}

/// The fields of a knock's clear header, after the magic, version and reserved bytes checked out.
///
/// Parsing says nothing about authenticity: the tag and the AEAD decide that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The sender's 16-byte user id.
    pub user_id: [u8; USER_ID_LEN],
    /// The client's TOTP time step (`unix_seconds / 30`).
    pub time_step: u64,
    /// The XChaCha20-Poly1305 nonce.
    pub nonce: [u8; NONCE_LEN],
    /// The pre-filter tag, as in the packet.
    pub tag: [u8; TAG_LEN],
}

impl Header {
    /// Parses a 64-byte header: checks magic, version and the reserved bytes, in that order.
    #[inline(always)]
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, HeaderError> {
        check_prefix(&array_at::<HEADER_LEN, PREFIX_LEN, 0>(bytes))?;
        Ok(Header {
            user_id: array_at::<HEADER_LEN, USER_ID_LEN, USER_ID_OFFSET>(bytes),
            time_step: u64::from_be_bytes(array_at::<HEADER_LEN, 8, TIME_STEP_OFFSET>(bytes)),
            nonce: array_at::<HEADER_LEN, NONCE_LEN, NONCE_OFFSET>(bytes),
            tag: array_at::<HEADER_LEN, TAG_LEN, TAG_OFFSET>(bytes),
        })
    }

    /// The bytes this header's tag covers (magic, version, reserved, user id, step, nonce).
    #[must_use]
    pub fn tagged_bytes(&self) -> [u8; TAGGED_LEN] {
        let mut out = [0u8; TAGGED_LEN];
        let mut w = Writer {
            buf: &mut out,
            pos: 0,
        };
        w.put(&MAGIC);
        w.put(&[VERSION]);
        w.put(&[0; RESERVED_LEN]);
        w.put(&self.user_id);
        w.put(&self.time_step.to_be_bytes());
        w.put(&self.nonce);
        out
    }

    /// The 64 header bytes as sent: [`Header::tagged_bytes`] followed by `self.tag`.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let mut w = Writer {
            buf: &mut out,
            pos: 0,
        };
        w.put(&self.tagged_bytes());
        w.put(&self.tag);
        out
    }

    /// Builds the header of a new knock, computing its tag under `tag_key`.
    #[must_use]
    pub fn sealed(
        tag_key: &[u8; TAG_KEY_LEN],
        user_id: [u8; USER_ID_LEN],
        time_step: u64,
        nonce: [u8; NONCE_LEN],
    ) -> Header {
        let mut header = Header {
            user_id,
            time_step,
            nonce,
            tag: [0; TAG_LEN],
        };
        header.tag = header_tag(tag_key, &header.tagged_bytes());
        header
    }

    /// Whether the tag is right for `tag_key`. Compares the 64-bit values in one operation, so
    /// the time taken does not depend on how many bytes match.
    #[inline(always)]
    #[must_use]
    pub fn tag_is_valid(&self, tag_key: &[u8; TAG_KEY_LEN]) -> bool {
        let expected = crate::siphash::siphash24(tag_key, &self.tagged_bytes());
        u64::from_le_bytes(self.tag) == expected
    }
}

/// Appends byte strings to a fixed buffer; writes past the end are dropped (callers write
/// exactly the buffer's length, checked by the tests).
struct Writer<'a, const N: usize> {
    buf: &'a mut [u8; N],
    pos: usize,
}

impl<const N: usize> Writer<'_, N> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.pos.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.pos..end) {
            dst.copy_from_slice(bytes);
        }
        self.pos = end;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Header {
        Header::sealed(
            &[7; TAG_KEY_LEN],
            core::array::from_fn(|i| i as u8),
            0x0102_0304_0506_0708,
            core::array::from_fn(|i| 0xa0 + i as u8),
        )
    }

    #[test]
    fn layout_matches_the_offsets() {
        let h = sample();
        let b = h.to_bytes();
        assert_eq!(&b[MAGIC_OFFSET..4], b"CKnk");
        assert_eq!(b[VERSION_OFFSET], 1);
        assert_eq!(
            &b[RESERVED_OFFSET..RESERVED_OFFSET + RESERVED_LEN],
            &[0, 0, 0]
        );
        assert_eq!(&b[USER_ID_OFFSET..USER_ID_OFFSET + USER_ID_LEN], &h.user_id);
        assert_eq!(
            &b[TIME_STEP_OFFSET..TIME_STEP_OFFSET + 8],
            &[1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(&b[NONCE_OFFSET..NONCE_OFFSET + NONCE_LEN], &h.nonce);
        assert_eq!(&b[TAG_OFFSET..HEADER_LEN], &h.tag);
        assert_eq!(tagged_part(&b), h.tagged_bytes());
        assert_eq!(header_tag(&[7; TAG_KEY_LEN], &tagged_part(&b)), h.tag);
    }

    #[test]
    fn parse_round_trips_and_checks_the_tag() {
        let h = sample();
        let parsed = Header::parse(&h.to_bytes()).unwrap();
        assert_eq!(parsed, h);
        assert!(parsed.tag_is_valid(&[7; TAG_KEY_LEN]));
        assert!(!parsed.tag_is_valid(&[8; TAG_KEY_LEN]));
    }

    #[test]
    fn parse_rejects_bad_magic_version_reserved() {
        let good = sample().to_bytes();
        let mut b = good;
        b[0] = b'c';
        assert_eq!(Header::parse(&b), Err(HeaderError::BadMagic));
        let mut b = good;
        b[VERSION_OFFSET] = 2;
        assert_eq!(Header::parse(&b), Err(HeaderError::BadVersion(2)));
        for i in 0..RESERVED_LEN {
            let mut b = good;
            b[RESERVED_OFFSET + i] = 0x80;
            assert_eq!(Header::parse(&b), Err(HeaderError::ReservedNotZero));
        }
    }

    #[test]
    fn any_bit_flip_breaks_the_tag_or_the_parse() {
        let good = sample().to_bytes();
        for bit in 0..HEADER_LEN * 8 {
            let mut b = good;
            b[bit / 8] ^= 1 << (bit % 8);
            if let Ok(h) = Header::parse(&b) {
                assert!(!h.tag_is_valid(&[7; TAG_KEY_LEN]), "bit {bit}");
            }
        }
    }

    #[test]
    fn split_knock_splits_at_the_header() {
        let knock: [u8; KNOCK_LEN] = core::array::from_fn(|i| i as u8);
        let (h, body) = split_knock(&knock);
        assert_eq!(&h[..], &knock[..HEADER_LEN]);
        assert_eq!(&body[..], &knock[HEADER_LEN..]);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN)) {
            let bytes: [u8; HEADER_LEN] = bytes.try_into().unwrap();
            let _ = Header::parse(&bytes);
        }

        #[test]
        fn fields_round_trip(
            user_id in any::<[u8; USER_ID_LEN]>(),
            time_step in any::<u64>(),
            nonce in proptest::collection::vec(any::<u8>(), NONCE_LEN),
            key in any::<[u8; TAG_KEY_LEN]>(),
        ) {
            let nonce: [u8; NONCE_LEN] = nonce.try_into().unwrap();
            let h = Header::sealed(&key, user_id, time_step, nonce);
            let parsed = Header::parse(&h.to_bytes()).unwrap();
            prop_assert_eq!(parsed, h);
            prop_assert!(parsed.tag_is_valid(&key));
        }
    }
}
