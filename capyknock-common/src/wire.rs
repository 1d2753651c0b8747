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

/// Length of a per-user pre-filter (SipHash) key.
pub const TAG_KEY_LEN: usize = 16;

/// TOTP time step length in seconds (RFC 6238 default).
pub const TIME_STEP_SECONDS: u64 = 30;

const _: () = assert!(KNOCK_LEN == 256);
const _: () = assert!(TAG_OFFSET + TAG_LEN == HEADER_LEN);
