//! TOTP (RFC 6238): the second factor inside every knock. HMAC-SHA1, 6 digits, 30-second steps,
//! one step of skew either way, computed and checked by the `totp-rs` crate; time is passed in.
//!
//! A code is kept as its six ASCII digits, never as a number, so a code such as `081804` keeps its
//! leading zero all the way (the Python original lost it by converting to an integer).

use std::{fmt, str::FromStr};

use capyknock_common::wire::{STEP_SKEW, TIME_STEP_SECONDS};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::keys::TotpSecret;

/// Digits in a code.
pub const TOTP_DIGITS: usize = 6;

/// Why a code did not parse or a TOTP could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TotpError {
    /// Not exactly six digits.
    #[error("a TOTP code is exactly {TOTP_DIGITS} digits (spaces are ignored)")]
    BadCode,
    /// totp-rs refused the parameters (cannot happen with a 160-bit secret).
    #[error("TOTP setup failed")]
    Setup(#[source] totp_rs::TotpError),
}

/// A six-digit code as typed or computed, leading zeros kept. `Debug` prints nothing secret.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct TotpCode([u8; TOTP_DIGITS]);

impl TotpCode {
    /// From six ASCII digits (as in the decrypted payload); `None` if any byte is not a digit.
    #[must_use]
    pub fn from_digits(digits: [u8; TOTP_DIGITS]) -> Option<Self> {
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then_some(Self(digits))
    }

    /// The six ASCII digits.
    #[must_use]
    pub const fn digits(&self) -> &[u8; TOTP_DIGITS] {
        &self.0
    }

    /// The code as a string: secret for its 30 seconds, never log it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Invariant: every byte is an ASCII digit (checked by every constructor).
        core::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl FromStr for TotpCode {
    type Err = TotpError;

    /// Parses six digits; ASCII spaces anywhere are ignored (`123 456` as apps show it).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut digits = [0u8; TOTP_DIGITS];
        let mut n = 0usize;
        for b in s.bytes().filter(|b| !b.is_ascii_whitespace()) {
            let slot = digits.get_mut(n).ok_or(TotpError::BadCode)?;
            *slot = b;
            n += 1;
        }
        if n != TOTP_DIGITS {
            return Err(TotpError::BadCode);
        }
        Self::from_digits(digits).ok_or(TotpError::BadCode)
    }
}

impl fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpCode(<redacted>)")
    }
}

/// The TOTP step of a Unix time.
#[must_use]
pub const fn step_of(unix_secs: u64) -> u64 {
    unix_secs / TIME_STEP_SECONDS
}

/// A user's TOTP generator and checker (totp-rs, SHA1, 6 digits, 30 s).
#[derive(Clone)]
pub struct Totp {
    /// Built with skew 0: [`Totp::check`] walks the skew window itself so it can try the step
    /// the client announced first (one HMAC for most knocks instead of up to three).
    inner: totp_rs::Totp,
}

impl Totp {
    /// Sets up TOTP for a secret.
    pub fn new(secret: &TotpSecret) -> Result<Self, TotpError> {
        let inner = totp_rs::Builder::new()
            .with_algorithm(totp_rs::Algorithm::SHA1)
            .with_digits(TOTP_DIGITS as u8)
            .with_step_duration(TIME_STEP_SECONDS)
            .with_skew(0)
            .with_secret(*secret.expose_secret())
            .build()
            .map_err(TotpError::Setup)?;
        Ok(Self { inner })
    }

    /// The code for the step containing `unix_secs` (what an authenticator app shows then).
    #[must_use]
    pub fn code_at(&self, unix_secs: u64) -> TotpCode {
        let token = zeroize::Zeroizing::new(self.inner.generate(unix_secs).to_string());
        let mut digits = [b'0'; TOTP_DIGITS];
        // Token's Display pads to exactly TOTP_DIGITS digits.
        for (d, s) in digits.iter_mut().zip(token.bytes()) {
            *d = s;
        }
        TotpCode(digits)
    }

    /// The step whose code is `code`, among the server's current step (`now_unix / 30`) and
    /// [`STEP_SKEW`] steps either side; `None` if no step in that window matches. When the code
    /// matches more than one step (two steps' codes can collide, about one chance in a
    /// million), the **highest** is returned: that is the step the replay state records as
    /// used, so the same six digits cannot be accepted again for any step of the window.
    #[must_use]
    pub fn check(&self, code: &TotpCode, now_unix: u64) -> Option<u64> {
        let now = step_of(now_unix);
        let lo = now.saturating_sub(STEP_SKEW);
        let hi = now.saturating_add(STEP_SKEW);
        (lo..=hi).rev().find(|&step| {
            step.checked_mul(TIME_STEP_SECONDS)
                .and_then(|t| self.inner.check(code.as_str(), t))
                == Some(step)
        })
    }
}

impl fmt::Debug for Totp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Totp(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// RFC 6238 appendix B's SHA1 seed.
    fn rfc_totp() -> Totp {
        Totp::new(&TotpSecret::from_bytes(*b"12345678901234567890")).unwrap()
    }

    /// RFC 6238 appendix B, SHA1 column: (time, 8-digit TOTP).
    const RFC6238_SHA1: [(u64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    #[test]
    fn rfc6238_sha1_vectors_eight_digits() {
        // The RFC's own 8-digit values, straight through totp-rs with the RFC's parameters.
        let totp = totp_rs::Builder::new()
            .with_algorithm(totp_rs::Algorithm::SHA1)
            .with_digits(8)
            .with_secret(*b"12345678901234567890")
            .build()
            .unwrap();
        for (t, expected) in RFC6238_SHA1 {
            assert_eq!(totp.generate(t).to_string(), expected, "t={t}");
        }
    }

    #[test]
    fn rfc6238_sha1_vectors_six_digits() {
        // Six digits are the value mod 10^6: the last six of the RFC's eight.
        let totp = rfc_totp();
        for (t, expected) in RFC6238_SHA1 {
            let six = &expected[2..];
            assert_eq!(totp.code_at(t).as_str(), six, "t={t}");
            let code: TotpCode = six.parse().unwrap();
            assert_eq!(totp.check(&code, t), Some(step_of(t)));
        }
    }

    #[test]
    fn leading_zero_code_is_accepted() {
        // 1111111109 -> 081804, 1234567890 -> 005924 (two leading zeros).
        let totp = rfc_totp();
        for (t, code) in [(1_111_111_109u64, "081804"), (1_234_567_890, "005924")] {
            let parsed: TotpCode = code.parse().unwrap();
            assert_eq!(parsed.as_str(), code);
            assert_eq!(totp.check(&parsed, t), Some(step_of(t)));
        }
    }

    #[test]
    fn one_step_of_skew_each_way_not_two() {
        let totp = rfc_totp();
        let now: u64 = 1_234_567_890;
        for (offset, accepted) in [
            (-60i64, false),
            (-30, true),
            (0, true),
            (30, true),
            (60, false),
        ] {
            let t = now.checked_add_signed(offset).unwrap();
            let code = totp.code_at(t);
            let got = totp.check(&code, now);
            assert_eq!(got.is_some(), accepted, "offset {offset}");
            if accepted {
                assert_eq!(got, Some(step_of(t)));
            }
        }
    }

    #[test]
    fn edges_of_time_are_safe() {
        let totp = rfc_totp();
        let code = totp.code_at(1_234_567_890);
        assert_eq!(totp.check(&code, 0), None);
        assert_eq!(totp.check(&code, u64::MAX), None);
    }

    #[test]
    fn a_code_matching_two_steps_counts_as_the_higher() {
        // This secret's codes for steps 56666666 and 56666667 are both 773037 (found by a
        // search; two adjacent codes collide about once in a million secrets).
        let mut secret = [0u8; 20];
        secret[..8].copy_from_slice(&1_702_862u64.to_be_bytes());
        let totp = Totp::new(&TotpSecret::from_bytes(secret)).unwrap();
        let step = 56_666_666;
        let t = step * TIME_STEP_SECONDS;
        assert_eq!(totp.code_at(t).as_str(), "773037");
        assert_eq!(totp.code_at(t + TIME_STEP_SECONDS).as_str(), "773037");
        let code: TotpCode = "773037".parse().unwrap();
        // Whichever of the two steps the server is in, the higher one is the step used.
        assert_eq!(totp.check(&code, t), Some(step + 1));
        assert_eq!(totp.check(&code, t + TIME_STEP_SECONDS), Some(step + 1));
    }

    #[test]
    fn code_parsing() {
        assert_eq!("123 456".parse::<TotpCode>().unwrap().as_str(), "123456");
        assert_eq!(" 000001\n".parse::<TotpCode>().unwrap().as_str(), "000001");
        for bad in [
            "",
            "12345",
            "1234567",
            "12345a",
            "١٢٣٤٥٦",
            "+12345",
            "-12345",
        ] {
            assert!(bad.parse::<TotpCode>().is_err(), "{bad:?}");
        }
        assert!(TotpCode::from_digits(*b"12345x").is_none());
        assert_eq!(
            format!("{:?}", "123456".parse::<TotpCode>().unwrap()),
            "TotpCode(<redacted>)"
        );
    }

    proptest! {
        #[test]
        fn generated_codes_always_check(secret in any::<[u8; 20]>(), t in 0u64..(1 << 40)) {
            let totp = Totp::new(&TotpSecret::from_bytes(secret)).unwrap();
            let code = totp.code_at(t);
            prop_assert_eq!(code.as_str().len(), 6);
            // The code's own step, or the step after it in the rare case that both codes are
            // the same (the higher step is the one recorded).
            let step = totp.check(&code, t);
            prop_assert!(step == Some(step_of(t)) || step == Some(step_of(t) + 1), "{step:?}");
            if let Some(s) = step {
                let again = totp.code_at(s * TIME_STEP_SECONDS);
                prop_assert_eq!(again.as_str(), code.as_str());
            }
        }

        #[test]
        fn code_parse_never_panics(s in ".{0,20}") {
            let _ = s.parse::<TotpCode>();
        }
    }
}
