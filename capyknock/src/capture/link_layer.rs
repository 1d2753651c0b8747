//! What comes before the IP header in a captured frame, for the userspace capture modes.
//!
//! libpcap reports each interface's link type: Ethernet on most, `DLT_NULL` on the loopback of
//! macOS and the BSDs (a 4-byte address family in the capturing host's byte order), `DLT_LOOP`
//! (the same in network byte order; OpenBSD), raw IP on tunnels (no header at all). A Windows raw
//! socket (`raw` capture) hands over IP packets with no link header either. Ethernet frames go to
//! the pre-filter as they are (`check_frame`, which also walks VLAN tags); for the others this
//! module finds where the IP header starts and which version it is, and the pre-filter takes it
//! from there (`check_packet`): the same checks and verdicts either way.
//!
//! Every frame is hostile: a family or version we do not know, or a frame too short to say, is
//! `None` (counted as `not_knock`), never a panic.

use std::fmt;

use capyknock_common::frame::{ETH_P_IPV4, ETH_P_IPV6, Frame};

/// `DLT_NULL` / `DLT_LOOP` address family of IPv4 (`AF_INET` is 2 everywhere).
pub const BSD_AF_INET: u32 = 2;
/// The values BSDs use for `AF_INET6` in `DLT_NULL` headers: NetBSD/OpenBSD, FreeBSD, macOS.
/// libpcap accepts all three whatever the host, and so do we.
pub const BSD_AF_INET6: [u32; 3] = [24, 28, 30];
/// Length of the `DLT_NULL` / `DLT_LOOP` header.
pub const NULL_HLEN: usize = 4;

/// `DLT_RAW` as `pcap_datalink` reports it (14 on OpenBSD, 12 elsewhere).
#[cfg(target_os = "openbsd")]
const DLT_RAW: i32 = 14;
#[cfg(not(target_os = "openbsd"))]
const DLT_RAW: i32 = 12;
/// `DLT_LOOP` as `pcap_datalink` reports it (12 on OpenBSD, 108 elsewhere).
#[cfg(target_os = "openbsd")]
const DLT_LOOP: i32 = 12;
#[cfg(not(target_os = "openbsd"))]
const DLT_LOOP: i32 = 108;
/// `LINKTYPE_RAW` (files), which some platforms also report live.
const LINKTYPE_RAW: i32 = 101;
/// Raw IPv4 only and raw IPv6 only (`DLT_IPV4`, `DLT_IPV6`): the version nibble tells anyway.
const DLT_IPV4: i32 = 228;
const DLT_IPV6: i32 = 229;

/// The link layer of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLayer {
    /// Ethernet II, up to two VLAN tags (`DLT_EN10MB`).
    Ethernet,
    /// BSD loopback: the address family as a 32-bit number in host byte order (`DLT_NULL`).
    Null,
    /// The same in network byte order (`DLT_LOOP`).
    Loop,
    /// The IP header first (`DLT_RAW`, `DLT_IPV4`, `DLT_IPV6`, a Windows raw socket).
    RawIp,
}

impl LinkLayer {
    /// The link layer for a `pcap_datalink` value; `None` for one we do not parse.
    #[must_use]
    pub fn from_dlt(dlt: i32) -> Option<Self> {
        match dlt {
            0 => Some(Self::Null),
            1 => Some(Self::Ethernet),
            DLT_LOOP => Some(Self::Loop),
            DLT_RAW | LINKTYPE_RAW | DLT_IPV4 | DLT_IPV6 => Some(Self::RawIp),
            _ => None,
        }
    }

    /// Name for logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ethernet => "ethernet",
            Self::Null => "null",
            Self::Loop => "loop",
            Self::RawIp => "raw-ip",
        }
    }

    /// Where the IP header of `frame` starts and which version it is (as an EtherType,
    /// [`ETH_P_IPV4`] or [`ETH_P_IPV6`]), for the link layers without Ethernet. `None` for
    /// Ethernet (its frames go through `check_frame` whole), for another protocol, and for a
    /// frame too short to say.
    #[must_use]
    pub fn ip_start(self, frame: &[u8]) -> Option<(u16, usize)> {
        match self {
            Self::Ethernet => None,
            Self::RawIp => {
                let version = frame.load_u8(0)? >> 4;
                match version {
                    4 => Some((ETH_P_IPV4, 0)),
                    6 => Some((ETH_P_IPV6, 0)),
                    _ => None,
                }
            }
            Self::Null | Self::Loop => {
                let bytes = frame.load::<NULL_HLEN>(0)?;
                let family = if self == Self::Null {
                    u32::from_ne_bytes(bytes)
                } else {
                    u32::from_be_bytes(bytes)
                };
                if family == BSD_AF_INET {
                    Some((ETH_P_IPV4, NULL_HLEN))
                } else if BSD_AF_INET6.contains(&family) {
                    Some((ETH_P_IPV6, NULL_HLEN))
                } else {
                    None
                }
            }
        }
    }
}

impl fmt::Display for LinkLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use capyknock_common::{
        counters::Counter,
        maps::Config,
        wire::{HEADER_LEN, Header, KNOCK_LEN, NONCE_LEN},
    };

    use super::*;
    use crate::capture::{Candidate, userspace::UserPrefilter};

    const PORT: u16 = 62201;
    const USER: [u8; 16] = [1; 16];
    const KEY: [u8; 16] = [2; 16];

    fn knock(nonce: u8) -> [u8; KNOCK_LEN] {
        let mut k = [0u8; KNOCK_LEN];
        k[..HEADER_LEN]
            .copy_from_slice(&Header::sealed(&KEY, USER, 100, [nonce; NONCE_LEN]).to_bytes());
        k
    }

    fn udp(payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&40000u16.to_be_bytes());
        u.extend_from_slice(&PORT.to_be_bytes());
        u.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    /// An IPv4 packet (no link header) from 192.0.2.7 to 192.0.2.1 carrying `payload` to the
    /// knock port. Also used by the Windows raw capture's tests.
    pub(crate) fn ipv4_packet(payload: &[u8]) -> Vec<u8> {
        let u = udp(payload);
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&u16::try_from(20 + u.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 7, 192, 0, 2, 1]);
        p.extend_from_slice(&u);
        p
    }

    /// An IPv6 packet from `2001:db8::7` carrying `payload` to the knock port.
    fn ipv6_packet(payload: &[u8]) -> Vec<u8> {
        let u = udp(payload);
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&u16::try_from(u.len()).unwrap().to_be_bytes());
        p.extend_from_slice(&[17, 64]);
        let mut src = [0u8; 16];
        src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        src[15] = 7;
        p.extend_from_slice(&src);
        p.extend_from_slice(&[0u8; 16]);
        p.extend_from_slice(&u);
        p
    }

    fn prefilter() -> UserPrefilter {
        let mut p = UserPrefilter::new(&[PORT], Config::default());
        p.set_users(&[(USER, KEY)]);
        p.set_time_step(100);
        p
    }

    fn judge(p: &mut UserPrefilter, link: LinkLayer, frame: &[u8]) -> (Counter, Vec<Candidate>) {
        let mut got = Vec::new();
        let v = p.check_link(link, frame, Some(3), 0, &mut |c| {
            got.push(c);
            true
        });
        (v, got)
    }

    fn with_header(header: &[u8], packet: &[u8]) -> Vec<u8> {
        let mut f = header.to_vec();
        f.extend_from_slice(packet);
        f
    }

    #[test]
    fn link_types_from_pcap() {
        assert_eq!(LinkLayer::from_dlt(0), Some(LinkLayer::Null));
        assert_eq!(LinkLayer::from_dlt(1), Some(LinkLayer::Ethernet));
        assert_eq!(LinkLayer::from_dlt(DLT_LOOP), Some(LinkLayer::Loop));
        for raw in [DLT_RAW, 101, 228, 229] {
            assert_eq!(LinkLayer::from_dlt(raw), Some(LinkLayer::RawIp), "{raw}");
        }
        // Linux cooked capture (the "any" device), 802.11, PPP: not parsed.
        for other in [113, 105, 9, -1, i32::MAX] {
            assert_eq!(LinkLayer::from_dlt(other), None, "{other}");
        }
    }

    #[test]
    fn raw_ip_knocks_are_delivered_v4_and_v6() {
        let mut p = prefilter();
        let (v, got) = judge(&mut p, LinkLayer::RawIp, &ipv4_packet(&knock(1)));
        assert_eq!(v, Counter::Delivered);
        assert_eq!(got[0].src, "192.0.2.7:40000".parse().unwrap());
        assert_eq!(got[0].bytes, knock(1));
        assert_eq!(got[0].ifindex, Some(3));
        let (v, got) = judge(&mut p, LinkLayer::RawIp, &ipv6_packet(&knock(2)));
        assert_eq!(v, Counter::Delivered);
        assert_eq!(got[0].src, "[2001:db8::7]:40000".parse().unwrap());
        // The same packet again is a duplicate, as in every mode.
        assert_eq!(
            judge(&mut p, LinkLayer::RawIp, &ipv4_packet(&knock(1))).0,
            Counter::Duplicate
        );
        assert_eq!(p.counters().get(Counter::Delivered), 2);
    }

    #[test]
    fn null_and_loop_headers_in_every_bsd_flavour() {
        let mut p = prefilter();
        let mut nonce = 10;
        let mut next = || {
            nonce += 1;
            knock(nonce)
        };
        let v4 = BSD_AF_INET;
        for (link, family, v6) in [
            (LinkLayer::Null, v4.to_ne_bytes(), false),
            (LinkLayer::Loop, v4.to_be_bytes(), false),
            (LinkLayer::Null, 24u32.to_ne_bytes(), true),
            (LinkLayer::Null, 28u32.to_ne_bytes(), true),
            (LinkLayer::Null, 30u32.to_ne_bytes(), true),
            (LinkLayer::Loop, 30u32.to_be_bytes(), true),
        ] {
            let packet = if v6 {
                ipv6_packet(&next())
            } else {
                ipv4_packet(&next())
            };
            let (v, got) = judge(&mut p, link, &with_header(&family, &packet));
            assert_eq!(v, Counter::Delivered, "{link} {family:?}");
            assert_eq!(got[0].src.is_ipv6(), v6);
        }
    }

    #[test]
    fn wrong_family_version_or_length_is_not_a_knock() {
        let mut p = prefilter();
        let v4 = ipv4_packet(&knock(1));
        // A family that is not IP (AF_UNSPEC, AF_APPLETALK = 16), or in the wrong byte order.
        for family in [0u32, 16, 0x0200_0000, u32::MAX] {
            let f = with_header(&family.to_ne_bytes(), &v4);
            assert_eq!(
                judge(&mut p, LinkLayer::Null, &f).0,
                Counter::NotKnock,
                "{family}"
            );
        }
        // DLT_LOOP is big-endian: the host order of a little-endian host is wrong there.
        if cfg!(target_endian = "little") {
            let f = with_header(&2u32.to_le_bytes(), &v4);
            assert_eq!(judge(&mut p, LinkLayer::Loop, &f).0, Counter::NotKnock);
        }
        // An IPv6 family with an IPv4 packet behind it.
        let f = with_header(&28u32.to_ne_bytes(), &v4);
        assert_eq!(judge(&mut p, LinkLayer::Null, &f).0, Counter::NotKnock);
        // Raw IP with another version nibble, and frames too short to say anything.
        let mut bad = v4.clone();
        bad[0] = 0x55;
        assert_eq!(judge(&mut p, LinkLayer::RawIp, &bad).0, Counter::NotKnock);
        for short in [&[][..], &[0x45][..], &[2, 0, 0][..]] {
            for link in [LinkLayer::RawIp, LinkLayer::Null, LinkLayer::Loop] {
                assert_eq!(judge(&mut p, link, short).0, Counter::NotKnock);
            }
        }
        // A raw IP packet read as Ethernet is not a knock either (and the other way round).
        assert_eq!(judge(&mut p, LinkLayer::Ethernet, &v4).0, Counter::NotKnock);
        // Truncated after the headers: the lengths do not add up.
        let cut = &v4[..v4.len() - 1];
        assert_eq!(judge(&mut p, LinkLayer::RawIp, cut).0, Counter::Malformed);
        assert_eq!(p.counters().get(Counter::Delivered), 0);
    }

    #[test]
    fn ethernet_still_goes_through_the_whole_frame_parser() {
        let mut p = prefilter();
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETH_P_IPV4.to_be_bytes());
        f.extend_from_slice(&ipv4_packet(&knock(1)));
        assert_eq!(judge(&mut p, LinkLayer::Ethernet, &f).0, Counter::Delivered);
        assert_eq!(LinkLayer::Ethernet.ip_start(&f), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut p = prefilter();
            for link in [LinkLayer::Ethernet, LinkLayer::Null, LinkLayer::Loop, LinkLayer::RawIp] {
                let (v, _) = judge(&mut p, link, &bytes);
                proptest::prop_assert_ne!(v, Counter::Delivered);
            }
        }
    }
}
