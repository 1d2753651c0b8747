//! Where a knock's TOTP code comes from: typed at the terminal without echo (`rpassword`, which
//! reads the terminal itself, so it works when stdin is ssh's data stream), given with `--otp`,
//! read from stdin with `--otp-stdin`, or computed from a machine profile's stored secret.

use std::io::{BufRead as _, Read as _};

use crate::protocol::{
    keys::TotpSecret,
    totp::{TotpCode, TotpError},
};

/// Longest line read by `--otp-stdin`.
const MAX_STDIN_LINE: u64 = 64;

/// Why no code could be had.
#[derive(Debug, thiserror::Error)]
pub enum CodeError {
    /// Not six digits.
    #[error("the code must be the 6 digits your authenticator app shows")]
    Bad(#[source] TotpError),
    /// No terminal to ask on.
    #[error(
        "no terminal to ask for the code on: pass --otp CODE or --otp-stdin (or use a profile \
         with totp_mode = \"derived\")"
    )]
    NoTerminal(#[source] std::io::Error),
    /// stdin could not be read or was empty.
    #[error("cannot read the code from stdin")]
    Stdin(#[source] std::io::Error),
    /// The TOTP secret was refused.
    #[error("cannot compute the code from the profile's totp_secret")]
    Derive(#[source] TotpError),
}

/// Parses a code given on the command line.
pub fn from_arg(code: &str) -> Result<TotpCode, CodeError> {
    code.parse().map_err(CodeError::Bad)
}

/// Reads one line from stdin and parses it as a code.
pub fn from_stdin() -> Result<TotpCode, CodeError> {
    let mut line = zeroize::Zeroizing::new(String::new());
    let n = std::io::stdin()
        .lock()
        .take(MAX_STDIN_LINE)
        .read_line(&mut line)
        .map_err(CodeError::Stdin)?;
    if n == 0 {
        return Err(CodeError::Stdin(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "stdin is empty",
        )));
    }
    line.parse().map_err(CodeError::Bad)
}

/// Asks on the terminal, without echo.
pub fn prompt(question: &str) -> Result<TotpCode, CodeError> {
    let answer = zeroize::Zeroizing::new(
        rpassword::prompt_password(question).map_err(CodeError::NoTerminal)?,
    );
    answer.parse().map_err(CodeError::Bad)
}

/// The code a machine profile uses at `unix_secs`.
pub fn derived(secret: &TotpSecret, unix_secs: u64) -> Result<TotpCode, CodeError> {
    let totp = crate::protocol::totp::Totp::new(secret).map_err(CodeError::Derive)?;
    Ok(totp.code_at(unix_secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_and_derivation() {
        assert_eq!(from_arg("012 345").unwrap().as_str(), "012345");
        assert!(matches!(from_arg("12345"), Err(CodeError::Bad(_))));
        // RFC 6238 SHA1 seed at 59 s: 94287082 -> last six digits.
        let secret = TotpSecret::from_bytes(*b"12345678901234567890");
        assert_eq!(derived(&secret, 59).unwrap().as_str(), "287082");
    }
}
