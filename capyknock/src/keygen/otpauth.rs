//! The `otpauth://` URI that authenticator apps import (the "Key Uri Format" that Google
//! Authenticator defined and every TOTP app follows):
//! `otpauth://totp/ISSUER:ACCOUNT?secret=BASE32&issuer=ISSUER&algorithm=SHA1&digits=6&period=30`.

use std::fmt::Write as _;

use capyknock_common::wire::TIME_STEP_SECONDS;

use crate::protocol::{keys::TotpSecret, totp::TOTP_DIGITS};

/// The issuer shown by authenticator apps.
pub const ISSUER: &str = "capyknock";

/// The URI for `account` (`nickname@server`). Holds the TOTP secret: show it only to the user.
#[must_use]
pub fn uri(account: &str, secret: &TotpSecret) -> String {
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1\
         &digits={TOTP_DIGITS}&period={TIME_STEP_SECONDS}",
        issuer = encode(ISSUER),
        account = encode(account),
        secret = secret.to_base32_secret(),
    )
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `@` (kept readable in
/// `alice@host`; apps show the label as is). `:` in an IPv6 server address becomes `%3A`, so
/// it cannot be mistaken for the issuer separator.
#[must_use]
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_format() {
        let secret = TotpSecret::from_bytes(*b"12345678901234567890");
        assert_eq!(
            uri("alice@work.example.com", &secret),
            "otpauth://totp/capyknock:alice@work.example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=capyknock&algorithm=SHA1&digits=6&period=30"
        );
        assert!(
            uri("bob@2001:db8::1", &secret)
                .starts_with("otpauth://totp/capyknock:bob@2001%3Adb8%3A%3A1?")
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a b/c?d&e=f:g"), "a%20b%2Fc%3Fd%26e%3Df%3Ag");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(encode("A-z_0.9~@"), "A-z_0.9~@");
    }
}
