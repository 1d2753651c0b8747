//! Finding the server and asking whether a TCP port answers: name resolution (IPv4 and IPv6)
//! and a connect with a timeout.

use std::{
    io,
    net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _},
    time::{Duration, Instant},
};

/// How long one check of the port may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Which address families to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    /// Both, in the system's preferred order.
    #[default]
    Any,
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
}

impl Family {
    fn allows(self, ip: IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
        }
    }
}

/// Why the server could not be found.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The resolver failed.
    #[error("cannot resolve {host:?}: check the name and your DNS")]
    Lookup {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No address of the wanted family.
    #[error("{host:?} has no {family} address")]
    NoAddress {
        /// The host.
        host: String,
        /// "IPv4", "IPv6" or "IP".
        family: &'static str,
    },
}

/// Resolves `host` (a name or an address, IPv6 possibly in brackets) to addresses of `family`,
/// in the resolver's order (RFC 6724: usually IPv6 first when it is routed), without
/// duplicates.
pub fn resolve(host: &str, family: Family) -> Result<Vec<IpAddr>, ResolveError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let all: Vec<IpAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => (bare, 0u16)
            .to_socket_addrs()
            .map_err(|source| ResolveError::Lookup {
                host: host.to_owned(),
                source,
            })?
            .map(|a| a.ip())
            .collect(),
    };
    let mut out: Vec<IpAddr> = Vec::new();
    for ip in all {
        if family.allows(ip) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    if out.is_empty() {
        return Err(ResolveError::NoAddress {
            host: host.to_owned(),
            family: match family {
                Family::Any => "IP",
                Family::V4 => "IPv4",
                Family::V6 => "IPv6",
            },
        });
    }
    Ok(out)
}

/// What a connection attempt found.
#[derive(Debug)]
pub enum Probe {
    /// The port answered; here is the connection.
    Open(TcpStream),
    /// The host answered with a reset: nothing listens there (or a firewall rejects).
    Refused,
    /// No answer in time: dropped by a firewall (the normal closed state of a protected port).
    Timeout,
    /// Another error (no route, network down, ...).
    Failed(io::Error),
}

impl Probe {
    /// Whether the port answered.
    #[must_use]
    pub const fn is_open(&self) -> bool {
        matches!(self, Probe::Open(_))
    }

    /// A few words for progress lines.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Probe::Open(_) => "open".into(),
            Probe::Refused => "closed (connection refused)".into(),
            Probe::Timeout => "closed (no answer)".into(),
            Probe::Failed(e) => format!("unreachable ({e})"),
        }
    }
}

/// Tries one TCP connection to `addr` within `timeout`.
#[must_use]
pub fn probe(addr: SocketAddr, timeout: Duration) -> Probe {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(stream) => Probe::Open(stream),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Probe::Refused,
        Err(e) if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            Probe::Timeout
        }
        Err(e) => Probe::Failed(e),
    }
}

/// Probes `addr` repeatedly until it opens or `total` has passed (each try at most
/// [`CHECK_TIMEOUT`], a short pause between refused tries). Returns the last result, or a
/// refusal at once when `refused_is_final` (the port was dropped before: a refusal now means
/// the firewall opened and nothing listens, which waiting does not change).
#[must_use]
pub fn wait_open(addr: SocketAddr, total: Duration, refused_is_final: bool) -> Probe {
    let deadline = Instant::now() + total;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let result = probe(addr, left.clamp(Duration::from_millis(100), CHECK_TIMEOUT));
        let done = match result {
            Probe::Open(_) => true,
            Probe::Refused => refused_is_final,
            Probe::Timeout | Probe::Failed(_) => false,
        };
        if done || Instant::now() >= deadline {
            return result;
        }
        // A refused or failed connect returns at once: do not spin.
        std::thread::sleep(Duration::from_millis(200).min(left));
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};

    use super::*;

    #[test]
    fn resolves_literals_and_filters_family() {
        assert_eq!(
            resolve("127.0.0.1", Family::Any).unwrap(),
            vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]
        );
        assert_eq!(
            resolve("[::1]", Family::V6).unwrap(),
            vec![IpAddr::V6(Ipv6Addr::LOCALHOST)]
        );
        let err = resolve("::1", Family::V4).unwrap_err();
        assert!(err.to_string().contains("no IPv4 address"), "{err}");
        assert!(resolve("localhost", Family::Any).is_ok());
        assert!(resolve("name.that.does.not.exist.invalid", Family::Any).is_err());
    }

    #[test]
    fn probe_open_and_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(probe(addr, CHECK_TIMEOUT).is_open());
        assert!(wait_open(addr, Duration::from_secs(1), false).is_open());
        drop(listener);
        let p = probe(addr, CHECK_TIMEOUT);
        assert!(matches!(p, Probe::Refused), "{p:?}");
        assert_eq!(p.describe(), "closed (connection refused)");
        let start = Instant::now();
        let p = wait_open(addr, Duration::from_millis(500), false);
        assert!(matches!(p, Probe::Refused), "{p:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
        // Told a refusal is final, it returns on the first one.
        let p = wait_open(addr, Duration::from_secs(30), true);
        assert!(matches!(p, Probe::Refused), "{p:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
