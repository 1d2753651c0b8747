//! Transport protocol and port: the unit of access that users ask for, configs list and firewall
//! rules open, written `tcp/22` or `udp/51820` everywhere (config, CLI, logs).

use std::{fmt, str::FromStr};

/// Knock ports as written everywhere else: `udp/62201, udp/62202`.
#[must_use]
pub fn knock_ports_text(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(|p| format!("udp/{p}")).collect();
    list.join(", ")
}

/// `1 user`, `2 users`: a count with its noun, singular or plural.
#[must_use]
pub fn count_of(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// A transport protocol a grant can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// Lower-case name as written in configs: `tcp` or `udp`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// IANA protocol number (6 or 17).
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol and port, such as `tcp/22`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    /// Transport protocol.
    pub protocol: Protocol,
    /// Port number, never 0.
    pub port: u16,
}

impl PortSpec {
    /// `tcp/PORT`.
    #[must_use]
    pub const fn tcp(port: u16) -> Self {
        Self {
            protocol: Protocol::Tcp,
            port,
        }
    }

    /// `udp/PORT`.
    #[must_use]
    pub const fn udp(port: u16) -> Self {
        Self {
            protocol: Protocol::Udp,
            port,
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// Why a port spec did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid port {input:?}: expected tcp/PORT or udp/PORT with PORT in 1-65535 (a bare number means tcp)"
)]
pub struct PortSpecError {
    input: String,
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    /// Parses `tcp/22`, `udp/51820`, or a bare `22` (meaning TCP).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PortSpecError {
            input: s.to_owned(),
        };
        let (protocol, port) = match s.split_once('/') {
            Some(("tcp", port)) => (Protocol::Tcp, port),
            Some(("udp", port)) => (Protocol::Udp, port),
            Some(_) => return Err(err()),
            None => (Protocol::Tcp, s),
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        match port.parse::<u16>() {
            Ok(port) if port != 0 => Ok(Self { protocol, port }),
            _ => Err(err()),
        }
    }
}

impl serde::Serialize for PortSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knock_ports_and_counts_read_as_words() {
        assert_eq!(knock_ports_text(&[62201]), "udp/62201");
        assert_eq!(knock_ports_text(&[1, 2]), "udp/1, udp/2");
        assert_eq!(count_of(1, "user"), "1 user");
        assert_eq!(count_of(0, "user"), "0 users");
        assert_eq!(count_of(2, "user"), "2 users");
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!("tcp/22".parse::<PortSpec>().unwrap(), PortSpec::tcp(22));
        assert_eq!(
            "udp/51820".parse::<PortSpec>().unwrap(),
            PortSpec::udp(51820)
        );
        assert_eq!("443".parse::<PortSpec>().unwrap(), PortSpec::tcp(443));
        assert_eq!(PortSpec::udp(53).to_string(), "udp/53");
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "",
            "tcp/",
            "tcp/0",
            "tcp/65536",
            "sctp/22",
            "tcp/+22",
            "tcp/ 22",
            "TCP/22",
            "22/tcp",
            "-1",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad:?} accepted");
        }
    }

    proptest::proptest! {
        #[test]
        fn round_trips(port in 1u16.., udp in proptest::bool::ANY) {
            let spec = if udp { PortSpec::udp(port) } else { PortSpec::tcp(port) };
            proptest::prop_assert_eq!(spec.to_string().parse::<PortSpec>().unwrap(), spec);
        }
    }
}
