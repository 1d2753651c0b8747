//! "Does this TCP port answer?": one connection attempt that reads the service's greeting line,
//! and waiting until a port answers, or stops answering, from inside a namespace.

use std::{
    fmt,
    io::{BufRead as _, BufReader, ErrorKind, Read as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{Error, Result, netns::NetNs, wait::wait_until};

/// What a connection attempt found.
#[derive(Debug)]
pub enum Probe {
    /// Connected; the first line the service sent (empty if none came in time).
    Open(String),
    /// Actively refused (a RST: nothing listens, or a firewall rejects).
    Refused,
    /// No answer in this time (a firewall that drops, as capyknock's does).
    Timeout(Duration),
    /// Anything else.
    Failed(std::io::Error),
}

impl Probe {
    /// Whether the connection was made.
    #[must_use]
    pub fn is_open(&self) -> bool {
        matches!(self, Probe::Open(_))
    }

    /// The greeting line of an open port.
    #[must_use]
    pub fn greeting(&self) -> Option<&str> {
        match self {
            Probe::Open(line) => Some(line),
            _ => None,
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Open(line) => write!(f, "open, the service says {line:?}"),
            Probe::Refused => f.write_str("refused"),
            Probe::Timeout(t) => write!(
                f,
                "no answer in {} s (closed: the server stays silent)",
                t.as_secs_f64()
            ),
            Probe::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// Connects to `target` within `timeout` and reads the first line (up to 256 bytes) the service
/// sends within `timeout` more. Call it inside the namespace to probe from ([`probe_from`]).
#[must_use]
pub fn probe(target: SocketAddr, timeout: Duration) -> Probe {
    match TcpStream::connect_timeout(&target, timeout) {
        Ok(stream) => {
            let _ = stream.set_read_timeout(Some(timeout));
            let mut line = String::new();
            let _ = BufReader::new(stream).take(256).read_line(&mut line);
            Probe::Open(line.trim_end().to_owned())
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Probe::Refused,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
            Probe::Timeout(timeout)
        }
        Err(e) => Probe::Failed(e),
    }
}

/// [`probe`] from inside `ns`.
pub fn probe_from(ns: &NetNs, target: SocketAddr, timeout: Duration) -> Result<Probe> {
    ns.run(|| probe(target, timeout))
}

/// Waits up to `within` until `target` answers from `ns` (`open`), or stops answering (not
/// `open`), probing with `timeout` every 100 ms.
pub fn wait_for_port(
    ns: &NetNs,
    target: SocketAddr,
    open: bool,
    within: Duration,
    timeout: Duration,
) -> Result<()> {
    let mut last = None;
    let done = wait_until(within, Duration::from_millis(100), || {
        let p = probe_from(ns, target, timeout)?;
        let done = p.is_open() == open;
        last = Some(p);
        Ok(done)
    })?;
    if done {
        return Ok(());
    }
    Err(Error::Timeout(format!(
        "tcp {target} from namespace {} still {} after {within:?} (last probe: {})",
        ns.name(),
        if open { "closed" } else { "open" },
        last.map_or_else(|| "none".to_owned(), |p| p.to_string())
    )))
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, net::TcpListener};

    use super::*;

    #[test]
    fn open_with_greeting_then_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"hello\r\n").unwrap();
        });
        let p = probe(addr, Duration::from_secs(2));
        server.join().unwrap();
        assert_eq!(p.greeting(), Some("hello"));
        assert_eq!(p.to_string(), "open, the service says \"hello\"");
        // The listener is gone: nothing listens there any more.
        let p = probe(addr, Duration::from_secs(2));
        assert!(matches!(p, Probe::Refused), "{p}");
        assert!(!p.is_open());
        assert_eq!(
            Probe::Timeout(Duration::from_secs(2)).to_string(),
            "no answer in 2 s (closed: the server stays silent)"
        );
    }
}
