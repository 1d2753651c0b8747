//! Validators for values both configs hold.

/// Longest nickname.
pub const MAX_NICKNAME_LEN: usize = 32;

/// A nickname is 1-32 characters of `A-Z a-z 0-9 . _ @ -`: safe in logs (no spaces, quotes or
/// control characters) and in firewall rule comments. The server's `[[user]] nickname`, the
/// client's `nickname` and `keygen --nickname` all use this check.
pub fn check_nickname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NICKNAME_LEN {
        return Err(format!(
            "nickname must be 1 to {MAX_NICKNAME_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
    {
        return Err(format!(
            "nickname {name:?} may only use letters, digits, '.', '_', '@' and '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames() {
        for good in ["alice", "a", "bob.smith_2@host-1", &"x".repeat(32)] {
            assert!(check_nickname(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "has space",
            "quote\"",
            "new\nline",
            "ünï",
            &"x".repeat(33),
        ] {
            assert!(check_nickname(bad).is_err(), "{bad:?}");
        }
    }
}
