//! Identities and secrets: the random user id, the 256-bit user key with the two keys derived
//! from it (pre-filter tag key, AEAD key), and the 160-bit TOTP secret.
//!
//! Every secret comes from the OS random generator, is wiped from memory when dropped, prints as
//! `<redacted>` in `Debug`, and is written out only through a method whose name says so
//! (`to_base64_secret`, `to_base32_secret`). Comparisons of secrets run in constant time.

use std::{fmt, str::FromStr};

use base64::Engine as _;
use capyknock_common::wire::{TAG_KEY_LEN, USER_ID_LEN};
use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of a user key in bytes (256 bits).
pub const USER_KEY_LEN: usize = 32;
/// Length of a TOTP secret in bytes (160 bits, the RFC 4226 recommendation).
pub const TOTP_SECRET_LEN: usize = 20;
/// Length of the derived AEAD key.
pub const AEAD_KEY_LEN: usize = 32;

/// HKDF-SHA256 `info` label of the pre-filter tag key (docs/PROTOCOL.md, "Keys").
pub const TAG_KEY_LABEL: &[u8] = b"capyknock v1 prefilter tag key";
/// HKDF-SHA256 `info` label of the AEAD key.
pub const AEAD_KEY_LABEL: &[u8] = b"capyknock v1 aead key";

/// Why a key, id or secret did not parse, or the OS random generator failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A user id that is not 32 hex digits.
    #[error("invalid user id: expected 32 hexadecimal digits")]
    BadUserId,
    /// A user key that is not standard base64 of 32 bytes.
    #[error("invalid user key: expected standard base64 of 32 bytes (44 characters)")]
    BadUserKey,
    /// A TOTP secret that is not unpadded base32 of 20 bytes.
    #[error(
        "invalid TOTP secret: expected base32 (RFC 4648, A-Z and 2-7) of 20 bytes (32 characters)"
    )]
    BadTotpSecret,
    /// The OS random generator failed.
    #[error("the operating system's random generator failed: {0}")]
    Random(getrandom::Error),
}

/// Fills `buf` from the OS random generator.
pub(crate) fn os_random(buf: &mut [u8]) -> Result<(), KeyError> {
    getrandom::fill(buf).map_err(KeyError::Random)
}

/// A user's random, opaque 16-byte id: sent in clear in every knock, so it is never a real
/// account name. Written as 32 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub [u8; USER_ID_LEN]);

impl UserId {
    /// A new id from the OS random generator.
    pub fn random() -> Result<Self, KeyError> {
        let mut id = [0u8; USER_ID_LEN];
        os_random(&mut id)?;
        Ok(Self(id))
    }

    /// The raw bytes, as in the packet header.
    #[must_use]
    pub const fn as_bytes(&self) -> &[u8; USER_ID_LEN] {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({self})")
    }
}

impl FromStr for UserId {
    type Err = KeyError;

    /// Parses 32 hex digits (either case).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| KeyError::BadUserId)?;
        bytes.try_into().map(Self).map_err(|_| KeyError::BadUserId)
    }
}

impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A user's 256-bit master key, shared by the server and the user's client. Never used directly:
/// [`UserKey::tag_key`] and the AEAD key are derived from it with HKDF-SHA256.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct UserKey([u8; USER_KEY_LEN]);

impl UserKey {
    /// A new key from the OS random generator.
    pub fn random() -> Result<Self, KeyError> {
        let mut key = Self([0; USER_KEY_LEN]);
        os_random(&mut key.0)?;
        Ok(key)
    }

    /// A key from its raw bytes (tests and test vectors).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; USER_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses standard base64 (with padding) of 32 bytes.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        let mut buf = zeroize::Zeroizing::new([0u8; USER_KEY_LEN + 3]);
        let len = base64::engine::general_purpose::STANDARD
            .decode_slice(s.trim().as_bytes(), &mut buf[..])
            .map_err(|_| KeyError::BadUserKey)?;
        if len != USER_KEY_LEN {
            return Err(KeyError::BadUserKey);
        }
        let mut key = Self([0; USER_KEY_LEN]);
        key.0
            .copy_from_slice(buf.get(..USER_KEY_LEN).ok_or(KeyError::BadUserKey)?);
        Ok(key)
    }

    /// The raw key: secret material, for sealing it (fleet mode's user records) only.
    #[must_use]
    pub const fn expose_secret(&self) -> &[u8; USER_KEY_LEN] {
        &self.0
    }

    /// The key as standard base64: secret material, for config files only.
    #[must_use]
    pub fn to_base64_secret(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// The pre-filter tag key: `HKDF-SHA256(ikm = key, salt = none, info = TAG_KEY_LABEL)`,
    /// 16 bytes. The XDP program holds only this key, which authenticates headers but cannot
    /// decrypt anything.
    #[must_use]
    pub fn tag_key(&self) -> TagKey {
        let mut out = TagKey([0; TAG_KEY_LEN]);
        self.expand(TAG_KEY_LABEL, &mut out.0);
        out
    }

    /// The XChaCha20-Poly1305 key: `HKDF-SHA256(ikm = key, salt = none, info = AEAD_KEY_LABEL)`,
    /// 32 bytes.
    #[must_use]
    pub(crate) fn aead_key(&self) -> zeroize::Zeroizing<[u8; AEAD_KEY_LEN]> {
        let mut out = zeroize::Zeroizing::new([0; AEAD_KEY_LEN]);
        self.expand(AEAD_KEY_LABEL, &mut out[..]);
        out
    }

    fn expand(&self, label: &[u8], out: &mut [u8]) {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(None, &self.0);
        // Invariant: HKDF-SHA256 can expand up to 255 * 32 bytes; `out` is 16 or 32 bytes.
        if hk.expand(label, out).is_err() {
            out.fill(0);
        }
    }
}

impl PartialEq for UserKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for UserKey {}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserKey(<redacted>)")
    }
}

impl serde::Serialize for UserKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64_secret())
    }
}

impl<'de> serde::Deserialize<'de> for UserKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(deserializer)?);
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// A user's 16-byte pre-filter (`SipHash`) key, derived from the [`UserKey`]. Loaded into the XDP
/// program's user map.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TagKey(pub(crate) [u8; TAG_KEY_LEN]);

impl TagKey {
    /// The raw key, for the kernel's user map.
    #[must_use]
    pub const fn expose_secret(&self) -> &[u8; TAG_KEY_LEN] {
        &self.0
    }
}

impl PartialEq for TagKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for TagKey {}

impl fmt::Debug for TagKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TagKey(<redacted>)")
    }
}

/// A user's 160-bit TOTP secret (RFC 6238, HMAC-SHA1, 6 digits, 30 s), written as unpadded
/// base32 the way `otpauth://` URIs and authenticator apps expect.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct TotpSecret([u8; TOTP_SECRET_LEN]);

impl TotpSecret {
    /// A new secret from the OS random generator.
    pub fn random() -> Result<Self, KeyError> {
        let mut secret = Self([0; TOTP_SECRET_LEN]);
        os_random(&mut secret.0)?;
        Ok(secret)
    }

    /// A secret from its raw bytes (tests and test vectors).
    #[must_use]
    pub const fn from_bytes(bytes: [u8; TOTP_SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses unpadded RFC 4648 base32 of 20 bytes (32 characters). Lower case, spaces and a
    /// trailing `=` padding are accepted too, as apps and tools show or write them.
    pub fn from_base32(s: &str) -> Result<Self, KeyError> {
        // Upper or lower case, spaces ignored (apps show groups of four), `=` padding allowed.
        let upper: zeroize::Zeroizing<String> = zeroize::Zeroizing::new(
            s.trim()
                .trim_end_matches('=')
                .chars()
                .filter(|c| *c != ' ')
                .map(|c| c.to_ascii_uppercase())
                .collect(),
        );
        let bytes = zeroize::Zeroizing::new(
            data_encoding::BASE32_NOPAD
                .decode(upper.as_bytes())
                .map_err(|_| KeyError::BadTotpSecret)?,
        );
        let mut secret = Self([0; TOTP_SECRET_LEN]);
        if bytes.len() != TOTP_SECRET_LEN {
            return Err(KeyError::BadTotpSecret);
        }
        secret.0.copy_from_slice(&bytes);
        Ok(secret)
    }

    /// The secret as unpadded base32, as in `otpauth://totp/...?secret=`: secret material.
    #[must_use]
    pub fn to_base32_secret(&self) -> String {
        data_encoding::BASE32_NOPAD.encode(&self.0)
    }

    /// The raw secret bytes.
    #[must_use]
    pub const fn expose_secret(&self) -> &[u8; TOTP_SECRET_LEN] {
        &self.0
    }
}

impl PartialEq for TotpSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for TotpSecret {}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl serde::Serialize for TotpSecret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base32_secret())
    }
}

impl<'de> serde::Deserialize<'de> for TotpSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(deserializer)?);
        Self::from_base32(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn user_id_hex_round_trip() {
        let id = UserId(core::array::from_fn(|i| (i * 17) as u8));
        let s = id.to_string();
        assert_eq!(s, "00112233445566778899aabbccddeeff");
        assert_eq!(s.parse::<UserId>().unwrap(), id);
        assert_eq!(
            "00112233445566778899AABBCCDDEEFF"
                .parse::<UserId>()
                .unwrap(),
            id
        );
        for bad in [
            "",
            "0011",
            "00112233445566778899aabbccddeeff00",
            "zz112233445566778899aabbccddeeff",
        ] {
            assert!(bad.parse::<UserId>().is_err(), "{bad:?}");
        }
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"00112233445566778899aabbccddeeff\""
        );
    }

    #[test]
    fn random_values_differ() {
        assert_ne!(UserId::random().unwrap(), UserId::random().unwrap());
        assert_ne!(UserKey::random().unwrap(), UserKey::random().unwrap());
        assert_ne!(TotpSecret::random().unwrap(), TotpSecret::random().unwrap());
    }

    #[test]
    fn user_key_base64_round_trip_and_rejects() {
        let key = UserKey::from_bytes([0xab; 32]);
        let s = key.to_base64_secret();
        assert_eq!(s.len(), 44);
        assert_eq!(UserKey::from_base64(&s).unwrap(), key);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<UserKey>(&json).unwrap(), key);
        for bad in [
            "",
            "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s",
            "AAAA",
            &s[..40],
        ] {
            assert!(UserKey::from_base64(bad).is_err(), "{bad:?}");
        }
        // 33 bytes.
        assert!(
            UserKey::from_base64(&base64::engine::general_purpose::STANDARD.encode([1u8; 33]))
                .is_err()
        );
    }

    #[test]
    fn derived_keys_differ_and_are_stable() {
        let key = UserKey::from_bytes(core::array::from_fn(|i| i as u8));
        let tag = key.tag_key();
        let aead = key.aead_key();
        assert_ne!(&tag.0[..], &aead[..16]);
        assert_eq!(key.tag_key(), tag);
        assert_ne!(UserKey::from_bytes([0; 32]).tag_key(), tag);
    }

    #[test]
    fn totp_secret_base32_round_trip() {
        let secret = TotpSecret::from_bytes(*b"12345678901234567890");
        let s = secret.to_base32_secret();
        assert_eq!(s, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(TotpSecret::from_base32(&s).unwrap(), secret);
        assert_eq!(
            TotpSecret::from_base32("gezdgnbvgy3tqojqgezdgnbvgy3tqojq").unwrap(),
            secret
        );
        assert_eq!(
            TotpSecret::from_base32("gezd gnbv gy3t qojq GEZD GNBV GY3T QOJQ").unwrap(),
            TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap()
        );
        assert!(TotpSecret::from_base32("GEZDGNBVGY3TQOJQ").is_err());
        assert!(TotpSecret::from_base32("GEZD\tGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").is_err());
        assert!(TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1").is_err());
    }

    #[test]
    fn debug_prints_no_secret() {
        let key = UserKey::from_bytes([0x41; 32]);
        let secret = TotpSecret::from_bytes([0x42; 20]);
        for text in [
            format!("{key:?}"),
            format!("{secret:?}"),
            format!("{:?}", key.tag_key()),
        ] {
            assert!(text.contains("redacted"), "{text}");
            assert!(
                !text.contains("41") && !text.contains("QUFB") && !text.contains("IJB"),
                "{text}"
            );
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,80}") {
            let _ = s.parse::<UserId>();
            let _ = UserKey::from_base64(&s);
            let _ = TotpSecret::from_base32(&s);
        }

        #[test]
        fn secrets_round_trip(key in any::<[u8; 32]>(), totp in any::<[u8; 20]>(), id in any::<[u8; 16]>()) {
            let k = UserKey::from_bytes(key);
            prop_assert_eq!(UserKey::from_base64(&k.to_base64_secret()).unwrap(), k);
            let t = TotpSecret::from_bytes(totp);
            prop_assert_eq!(TotpSecret::from_base32(&t.to_base32_secret()).unwrap(), t);
            let u = UserId(id);
            prop_assert_eq!(u.to_string().parse::<UserId>().unwrap(), u);
        }
    }
}
