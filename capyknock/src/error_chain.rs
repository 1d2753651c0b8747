//! One-line display of an error with its whole `source()` chain, for log fields:
//! `outer: cause: root cause`.

use std::fmt;

/// Displays an error with all its causes: `outer: cause: root cause`.
#[derive(Debug)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn prints_every_cause() {
        let err = Outer(std::io::Error::other("root"));
        assert_eq!(ErrorChain(&err).to_string(), "outer: root");
    }
}
