//! Log field values written for people and for log parsers alike: `-` for nothing, paths and
//! times as plain text, lists comma-separated. Log lines never show Rust `Debug` output
//! (`Some("/x")`, `[[::]:62201]`, `None`).

use std::{fmt, path::Path, time::SystemTime};

/// An optional path: the path, or `-`.
#[derive(Debug, Clone, Copy)]
pub struct OptPath<'a>(pub Option<&'a Path>);

impl fmt::Display for OptPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, "{}", p.display()),
            None => f.write_str("-"),
        }
    }
}

/// An end time: RFC 3339 in UTC to the second, or `never`.
#[derive(Debug, Clone, Copy)]
pub struct Until(pub Option<SystemTime>);

impl fmt::Display for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(t) => write!(f, "{}", humantime::format_rfc3339_seconds(t)),
            None => f.write_str("never"),
        }
    }
}

/// Items of a list, comma-separated (`a, b`), each with its `Display`.
#[derive(Debug, Clone, Copy)]
pub struct List<'a, T>(pub &'a [T]);

impl<T: fmt::Display> fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::SocketAddr,
        time::{Duration, UNIX_EPOCH},
    };

    use super::*;

    #[test]
    fn values_read_as_plain_text() {
        assert_eq!(OptPath(Some(Path::new("/x/y"))).to_string(), "/x/y");
        assert_eq!(OptPath(None).to_string(), "-");
        let t = UNIX_EPOCH + Duration::from_hours(500_000);
        assert_eq!(Until(Some(t)).to_string(), "2027-01-15T08:00:00Z");
        assert_eq!(Until(None).to_string(), "never");
        let socks: Vec<SocketAddr> =
            vec!["[::]:62201".parse().unwrap(), "0.0.0.0:1".parse().unwrap()];
        assert_eq!(List(&socks).to_string(), "[::]:62201, 0.0.0.0:1");
        assert_eq!(List::<u16>(&[]).to_string(), "");
    }
}
