//! The encrypted part of a knock: what the client asks for, serialized with postcard and padded
//! with zeros to a fixed [`PLAINTEXT_LEN`] so every knock has the same size.
//!
//! Decoding is strict: the payload version must match, the padding must be all zeros, and every
//! field is validated (ports, address, TOTP digits), because an authenticated sender is still
//! treated as hostile.

use std::{collections::HashSet, fmt, net::IpAddr, str::FromStr};

use capyknock_common::wire::PLAINTEXT_LEN;
use zeroize::Zeroizing;

use super::totp::{TOTP_DIGITS, TotpCode};
use crate::ports::{PortSpec, Protocol};

/// Version of the payload layout, inside the encryption.
pub const PAYLOAD_VERSION: u8 = 1;
/// Most ports one knock can ask for. More is an error on the client, never a silent cut.
pub const MAX_PORTS: usize = 16;
/// Length of the random packet id.
pub const PACKET_ID_LEN: usize = 16;

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// More ports than [`MAX_PORTS`].
    #[error("a knock can ask for at most {MAX_PORTS} ports, not {0}")]
    TooManyPorts(usize),
    /// The same port twice.
    #[error("port {0} is asked for twice")]
    DuplicatePort(PortSpec),
    /// A port 0 or an unknown protocol number.
    #[error("invalid port or protocol in payload")]
    BadPort,
    /// An address no grant can be for (unspecified, multicast, broadcast, loopback,
    /// link-local).
    #[error("address {0} cannot be granted access")]
    BadAddress(IpAddr),
    /// Postcard could not encode or decode it, or it did not fit.
    #[error("payload does not encode or decode: {0}")]
    Postcard(postcard::Error),
    /// A payload version this build does not know.
    #[error("unknown payload version {0}")]
    Version(u8),
    /// Non-zero bytes after the payload.
    #[error("payload padding is not zero")]
    Padding,
    /// The TOTP field is not six ASCII digits.
    #[error("TOTP field is not {TOTP_DIGITS} digits")]
    TotpDigits,
    /// Decodable, but not the one canonical encoding (an overlong varint).
    #[error("payload is not canonically encoded")]
    NotCanonical,
}

/// The random id of one knock, remembered by the server so the same packet never opens twice.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct PacketId(pub [u8; PACKET_ID_LEN]);

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PacketId({self})")
    }
}

impl From<PacketId> for String {
    fn from(id: PacketId) -> String {
        id.to_string()
    }
}

impl FromStr for PacketId {
    type Err = PacketIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| PacketIdError)?;
        bytes.try_into().map(Self).map_err(|_| PacketIdError)
    }
}

impl TryFrom<String> for PacketId {
    type Error = PacketIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A packet id that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid packet id: expected 32 hexadecimal digits")]
pub struct PacketIdError;

/// The decoded, validated payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The client's clock, Unix seconds.
    pub timestamp: u64,
    /// The TOTP code.
    pub totp: TotpCode,
    /// Requested ports, at most [`MAX_PORTS`], no duplicates; empty means all the user's ports.
    pub ports: Vec<PortSpec>,
    /// The address the client asks access for, if not its source address.
    pub allow_ip: Option<IpAddr>,
    /// Random id of this knock.
    pub packet_id: PacketId,
}

/// The postcard layout (docs/PROTOCOL.md, "Payload"). Field order is the wire order.
#[derive(serde::Serialize, serde::Deserialize)]
struct Wire {
    version: u8,
    timestamp: u64,
    totp: [u8; TOTP_DIGITS],
    ports: Vec<(u8, u16)>,
    allow_ip: Option<IpAddr>,
    packet_id: [u8; PACKET_ID_LEN],
}

impl Drop for Wire {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.totp);
    }
}

/// Checks a port list: count, duplicates.
pub(crate) fn check_ports(ports: &[PortSpec]) -> Result<(), PayloadError> {
    if ports.len() > MAX_PORTS {
        return Err(PayloadError::TooManyPorts(ports.len()));
    }
    let mut seen = HashSet::with_capacity(ports.len());
    for p in ports {
        if p.port == 0 {
            return Err(PayloadError::BadPort);
        }
        if !seen.insert(*p) {
            return Err(PayloadError::DuplicatePort(*p));
        }
    }
    Ok(())
}

/// The address a grant may be for: canonical (an IPv4-mapped IPv6 address is its IPv4
/// address, checked as such), and not unspecified, loopback, multicast, broadcast
/// (`255.255.255.255`) or link-local (`169.254.0.0/16`, `fe80::/10`). Canonicalising comes first, so
/// `::ffff:127.0.0.1` is refused as the loopback address it is.
pub(crate) fn check_address(ip: IpAddr) -> Result<IpAddr, PayloadError> {
    let ip = ip.to_canonical();
    let bad = ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_loopback()
        || match ip {
            IpAddr::V4(v4) => v4.is_broadcast() || v4.is_link_local(),
            IpAddr::V6(v6) => v6.is_unicast_link_local(),
        };
    if bad {
        Err(PayloadError::BadAddress(ip))
    } else {
        Ok(ip)
    }
}

impl Payload {
    /// Serializes and pads to [`PLAINTEXT_LEN`] bytes, checking the same rules as decoding.
    pub fn encode(&self) -> Result<Zeroizing<[u8; PLAINTEXT_LEN]>, PayloadError> {
        check_ports(&self.ports)?;
        // An IPv4 address always goes as IPv4, never IPv4-mapped IPv6.
        let allow_ip = self.allow_ip.map(check_address).transpose()?;
        let wire = Wire {
            version: PAYLOAD_VERSION,
            timestamp: self.timestamp,
            totp: *self.totp.digits(),
            ports: self
                .ports
                .iter()
                .map(|p| (p.protocol.number(), p.port))
                .collect(),
            allow_ip,
            packet_id: self.packet_id.0,
        };
        let mut buf = Zeroizing::new([0u8; PLAINTEXT_LEN]);
        postcard::to_slice(&wire, &mut buf[..]).map_err(PayloadError::Postcard)?;
        Ok(buf)
    }

    /// Parses and validates a decrypted plaintext.
    pub fn decode(plaintext: &[u8; PLAINTEXT_LEN]) -> Result<Self, PayloadError> {
        // The version comes first: refuse unknown layouts before trying to parse them.
        let version = plaintext.first().copied().unwrap_or(0);
        if version != PAYLOAD_VERSION {
            return Err(PayloadError::Version(version));
        }
        let (wire, rest) =
            postcard::take_from_bytes::<Wire>(plaintext).map_err(PayloadError::Postcard)?;
        if rest.iter().any(|&b| b != 0) {
            return Err(PayloadError::Padding);
        }
        // One encoding per payload: postcard also reads overlong varints, so re-encode and
        // compare (decoded bytes and padding together are the whole plaintext).
        let mut again = Zeroizing::new([0u8; PLAINTEXT_LEN]);
        postcard::to_slice(&wire, &mut again[..]).map_err(PayloadError::Postcard)?;
        if again[..] != plaintext[..] {
            return Err(PayloadError::NotCanonical);
        }
        if wire.ports.len() > MAX_PORTS {
            return Err(PayloadError::TooManyPorts(wire.ports.len()));
        }
        let ports = wire
            .ports
            .iter()
            .map(|&(proto, port)| {
                let protocol = match proto {
                    6 => Protocol::Tcp,
                    17 => Protocol::Udp,
                    _ => return Err(PayloadError::BadPort),
                };
                Ok(PortSpec { protocol, port })
            })
            .collect::<Result<Vec<_>, _>>()?;
        check_ports(&ports)?;
        let allow_ip = wire.allow_ip.map(check_address).transpose()?;
        let totp = TotpCode::from_digits(wire.totp).ok_or(PayloadError::TotpDigits)?;
        Ok(Payload {
            timestamp: wire.timestamp,
            totp,
            ports,
            allow_ip,
            packet_id: PacketId(wire.packet_id),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    fn sample() -> Payload {
        Payload {
            timestamp: 1_700_000_000,
            totp: "012345".parse().unwrap(),
            ports: vec![PortSpec::tcp(22), PortSpec::udp(51820)],
            allow_ip: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
            packet_id: PacketId([9; 16]),
        }
    }

    #[test]
    fn round_trip_and_padding() {
        let p = sample();
        let buf = p.encode().unwrap();
        assert_eq!(Payload::decode(&buf).unwrap(), p);
        assert_eq!(buf[0], PAYLOAD_VERSION);
        assert_eq!(*buf.last().unwrap(), 0);
    }

    #[test]
    fn the_largest_payload_fits() {
        let p = Payload {
            timestamp: u64::MAX,
            totp: "999999".parse().unwrap(),
            ports: (0..MAX_PORTS as u16)
                .map(|i| PortSpec::udp(65535 - i))
                .collect(),
            allow_ip: Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6))),
            packet_id: PacketId([0xff; 16]),
        };
        assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);
    }

    #[test]
    fn too_many_ports_is_an_error_not_a_cut() {
        let mut p = sample();
        p.ports = (1..=17).map(PortSpec::tcp).collect();
        assert_eq!(p.encode(), Err(PayloadError::TooManyPorts(17)));
    }

    #[test]
    fn duplicate_ports_and_bad_addresses_are_refused() {
        let mut p = sample();
        p.ports = vec![PortSpec::tcp(22), PortSpec::tcp(22)];
        assert_eq!(
            p.encode(),
            Err(PayloadError::DuplicatePort(PortSpec::tcp(22)))
        );
        for ip in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::BROADCAST),
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let mut p = sample();
            p.allow_ip = Some(ip);
            assert_eq!(p.encode(), Err(PayloadError::BadAddress(ip)));
        }
    }

    /// Hand-made wire payloads that a buggy or hostile client could send.
    fn raw(wire: &Wire) -> [u8; PLAINTEXT_LEN] {
        let mut buf = [0u8; PLAINTEXT_LEN];
        postcard::to_slice(wire, &mut buf).unwrap();
        buf
    }

    fn wire() -> Wire {
        Wire {
            version: 1,
            timestamp: 5,
            totp: *b"123456",
            ports: vec![(6, 22)],
            allow_ip: None,
            packet_id: [1; 16],
        }
    }

    #[test]
    fn decode_validates_every_field() {
        assert!(Payload::decode(&raw(&wire())).is_ok());
        let mut w = wire();
        w.version = 2;
        assert_eq!(Payload::decode(&raw(&w)), Err(PayloadError::Version(2)));
        let mut w = wire();
        w.ports = vec![(6, 0)];
        assert_eq!(Payload::decode(&raw(&w)), Err(PayloadError::BadPort));
        let mut w = wire();
        w.ports = vec![(1, 22)];
        assert_eq!(Payload::decode(&raw(&w)), Err(PayloadError::BadPort));
        let mut w = wire();
        w.ports = vec![(6, 1); 17];
        assert_eq!(
            Payload::decode(&raw(&w)),
            Err(PayloadError::TooManyPorts(17))
        );
        let mut w = wire();
        w.totp = *b"12345 ";
        assert_eq!(Payload::decode(&raw(&w)), Err(PayloadError::TotpDigits));
        let mut w = wire();
        w.allow_ip = Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert!(matches!(
            Payload::decode(&raw(&w)),
            Err(PayloadError::BadAddress(_))
        ));
        let mut buf = raw(&wire());
        buf[PLAINTEXT_LEN - 1] = 1;
        assert_eq!(Payload::decode(&buf), Err(PayloadError::Padding));
    }

    /// Regression (hardening review): `::ffff:127.0.0.1` stated by a key holder was checked as
    /// an IPv6 address (fine) and then granted as 127.0.0.1; `::ffff:0.0.0.0`, `::ffff:224.0.0.1`
    /// and `::ffff:255.255.255.255` passed and failed later in the firewall.
    #[test]
    fn ipv4_mapped_addresses_are_checked_as_the_ipv4_address_they_are() {
        for bad in [
            "::ffff:127.0.0.1",
            "::ffff:0.0.0.0",
            "::ffff:224.0.0.1",
            "::ffff:255.255.255.255",
            "::ffff:169.254.1.1",
            "169.254.1.1",
            "fe80::1",
            "::1",
            "ff02::1",
        ] {
            let ip: IpAddr = bad.parse().unwrap();
            let mut w = wire();
            w.allow_ip = Some(ip);
            assert!(
                matches!(Payload::decode(&raw(&w)), Err(PayloadError::BadAddress(_))),
                "{bad} accepted"
            );
            let mut p = sample();
            p.allow_ip = Some(ip);
            assert!(p.encode().is_err(), "{bad} encoded");
        }
        // A good IPv4-mapped address decodes as IPv4, and a client encodes it as IPv4.
        let mut w = wire();
        w.allow_ip = Some("::ffff:192.0.2.7".parse().unwrap());
        let decoded = Payload::decode(&raw(&w)).unwrap();
        assert_eq!(decoded.allow_ip, Some("192.0.2.7".parse().unwrap()));
        let mut p = sample();
        p.allow_ip = Some("::ffff:192.0.2.7".parse().unwrap());
        let mut v4 = sample();
        v4.allow_ip = Some("192.0.2.7".parse().unwrap());
        assert_eq!(p.encode().unwrap(), v4.encode().unwrap());
    }

    /// What the decoder does with encodings a careless encoder could produce (docs/PROTOCOL.md
    /// section 3 states it).
    #[test]
    fn non_canonical_and_out_of_range_encodings() {
        let good = raw(&wire());
        // Bytes: version, timestamp varint (5), totp (6), ports count (1), proto (6), port
        // varint (22), allow_ip tag (0), packet id (16).
        assert_eq!(
            &good[..12],
            &[1, 5, b'1', b'2', b'3', b'4', b'5', b'6', 1, 6, 22, 0]
        );
        let with = |patch: &dyn Fn(&mut Vec<u8>)| {
            let mut v = good.to_vec();
            patch(&mut v);
            v.truncate(PLAINTEXT_LEN);
            v.resize(PLAINTEXT_LEN, 0);
            Payload::decode(&v.try_into().unwrap())
        };
        // Port 22 as an overlong two-byte varint (0x96 0x00).
        let overlong = with(&|v| {
            v[10] = 0x96;
            v.insert(11, 0x00);
        });
        // Port 65536 (0x80 0x80 0x04) is out of range for a u16.
        let too_big = with(&|v| {
            v.splice(10..11, [0x80, 0x80, 0x04]);
        });
        // allow_ip enum index 2 (neither IPv4 nor IPv6).
        let bad_enum = with(&|v| {
            v[11] = 1;
            v.insert(12, 2);
        });
        assert!(
            matches!(too_big, Err(PayloadError::Postcard(_))),
            "{too_big:?}"
        );
        assert!(
            matches!(bad_enum, Err(PayloadError::Postcard(_))),
            "{bad_enum:?}"
        );
        // postcard reads overlong varints; the canonical check refuses them.
        assert_eq!(overlong, Err(PayloadError::NotCanonical));
        // tcp/22 and udp/22 are different ports; tcp/22 twice is a duplicate.
        let mut w = wire();
        w.ports = vec![(6, 22), (17, 22)];
        assert!(Payload::decode(&raw(&w)).is_ok());
        w.ports = vec![(6, 22), (6, 22)];
        assert!(matches!(
            Payload::decode(&raw(&w)),
            Err(PayloadError::DuplicatePort(_))
        ));
    }

    #[test]
    fn huge_length_prefix_is_refused_without_allocating_it() {
        let mut buf = [0u8; PLAINTEXT_LEN];
        // version 1, timestamp 0, totp, then a ports length of 2^32 - 1 as a varint.
        buf[0] = 1;
        buf[2..8].copy_from_slice(b"123456");
        buf[8..13].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            Payload::decode(&buf),
            Err(PayloadError::Postcard(_))
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), PLAINTEXT_LEN)) {
            let buf: [u8; PLAINTEXT_LEN] = bytes.try_into().unwrap();
            let _ = Payload::decode(&buf);
        }

        #[test]
        fn round_trips(
            timestamp in any::<u64>(),
            code in 0u32..1_000_000,
            ports in proptest::collection::btree_set((any::<bool>(), 1u16..), 0..=MAX_PORTS),
            v4 in any::<[u8; 4]>(),
            use_ip in any::<bool>(),
            id in any::<[u8; 16]>(),
        ) {
            let ip = IpAddr::V4(Ipv4Addr::from(v4));
            let p = Payload {
                timestamp,
                totp: format!("{code:06}").parse().unwrap(),
                ports: ports.into_iter().map(|(udp, port)| if udp { PortSpec::udp(port) } else { PortSpec::tcp(port) }).collect(),
                allow_ip: (use_ip && check_address(ip).is_ok()).then_some(ip),
                packet_id: PacketId(id),
            };
            prop_assert_eq!(Payload::decode(&p.encode().unwrap()).unwrap(), p);
        }
    }
}
