//! Frame parsing shared by the XDP program and userspace: Ethernet -> IPv4/IPv6 -> UDP.
//!
//! The parser reads through the [`Frame`] trait, implemented over the packet pointers in the kernel
//! and over `[u8]` in userspace, so both sides run the same code on the same bytes. Every read is
//! bounds-checked by the implementation and returns `None` when the frame is too short: a
//! truncated frame is never an error here, just "not something we recognise".

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::counters::Counter;

/// Length of an Ethernet II header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// EtherType of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// Minimum IPv4 header length (IHL = 5).
pub const IPV4_MIN_HLEN: usize = 20;
/// Fixed IPv6 header length.
pub const IPV6_HLEN: usize = 40;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;

/// Byte-level access to a frame. Implementations bounds-check every read.
pub trait Frame {
    /// The `N` bytes at `offset`, or `None` if the frame ends before `offset + N`.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;

    /// Big-endian `u16` at `offset`.
    #[inline(always)]
    fn load_u16(&self, offset: usize) -> Option<u16> {
        self.load::<2>(offset).map(u16::from_be_bytes)
    }

    /// The byte at `offset`.
    #[inline(always)]
    fn load_u8(&self, offset: usize) -> Option<u8> {
        self.load::<1>(offset).map(|[b]| b)
    }
}

impl Frame for [u8] {
    #[inline]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// A UDP datagram found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram {
    /// Source address from the IP header.
    pub src: IpAddr,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// Offset of the UDP payload from the start of the frame.
    pub payload_offset: usize,
}

/// Finds the UDP header of an Ethernet frame carrying IPv4 or IPv6.
///
/// Returns `None` for anything else: other EtherTypes, other IP protocols, IPv4 fragments other
/// than the first (their bytes are payload, not a UDP header), IPv6 with extension headers, and
/// frames too short to hold the headers they announce.
#[inline(always)]
pub fn parse_udp<F: Frame + ?Sized>(frame: &F) -> Option<UdpDatagram> {
    let ethertype = frame.load_u16(12)?;
    let l3 = ETH_HLEN;
    let (src, l4) = match ethertype {
        ETH_P_IPV4 => {
            let version_ihl = frame.load_u8(l3)?;
            if version_ihl >> 4 != 4 {
                return None;
            }
            let ihl = usize::from(version_ihl & 0x0f) * 4;
            if ihl < IPV4_MIN_HLEN {
                return None;
            }
            let frag = frame.load_u16(l3 + 6)?;
            if frag & 0x1fff != 0 {
                // Not the first fragment: no UDP header here.
                return None;
            }
            if frame.load_u8(l3 + 9)? != IPPROTO_UDP {
                return None;
            }
            let src = Ipv4Addr::from(frame.load::<4>(l3 + 12)?);
            (IpAddr::V4(src), l3 + ihl)
        }
        ETH_P_IPV6 => {
            if frame.load_u8(l3)? >> 4 != 6 {
                return None;
            }
            if frame.load_u8(l3 + 6)? != IPPROTO_UDP {
                return None;
            }
            let src = Ipv6Addr::from(frame.load::<16>(l3 + 8)?);
            (IpAddr::V6(src), l3 + IPV6_HLEN)
        }
        _ => return None,
    };
    let ports = frame.load::<4>(l4)?;
    Some(UdpDatagram {
        src,
        src_port: u16::from_be_bytes([ports[0], ports[1]]),
        dst_port: u16::from_be_bytes([ports[2], ports[3]]),
        payload_offset: l4 + UDP_HLEN,
    })
}

/// The verdict for one frame: UDP to a knock port is dropped, everything else passes.
///
/// `is_knock_port` answers for a destination port in host byte order (a map lookup in the
/// kernel).
#[inline(always)]
pub fn classify<F: Frame + ?Sized>(frame: &F, is_knock_port: impl Fn(u16) -> bool) -> Counter {
    match parse_udp(frame) {
        Some(udp) if is_knock_port(udp.dst_port) => Counter::KnockDropped,
        _ => Counter::NotKnock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    const KNOCK: u16 = 62201;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = std::vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4_udp(options: usize, frag: u16, dport: u16) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV4);
        let ihl = 5 + options / 4;
        f.push(0x40 | ihl as u8);
        f.extend_from_slice(&[0, 0, 0, 0, 0]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, IPPROTO_UDP, 0, 0]);
        f.extend_from_slice(&[192, 0, 2, 7, 192, 0, 2, 1]);
        f.extend(std::iter::repeat_n(1u8, options));
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 12, 0, 0, b'h', b'i', b'!', b'!']);
        f
    }

    fn ipv6_udp(next: u8, dport: u16) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV6);
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 12, next, 64]);
        let mut src = [0u8; 16];
        src[0] = 0x20;
        src[1] = 0x01;
        src[15] = 7;
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0u8; 16]);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&dport.to_be_bytes());
        f.extend_from_slice(&[0, 12, 0, 0]);
        f
    }

    fn verdict(f: &[u8]) -> Counter {
        classify(f, |p| p == KNOCK)
    }

    #[test]
    fn ipv4_knock_is_dropped_other_port_passes() {
        assert_eq!(verdict(&ipv4_udp(0, 0, KNOCK)), Counter::KnockDropped);
        assert_eq!(verdict(&ipv4_udp(0, 0, 53)), Counter::NotKnock);
    }

    #[test]
    fn ipv4_options_shift_the_udp_header() {
        let f = ipv4_udp(40, 0, KNOCK);
        let udp = parse_udp(f.as_slice()).unwrap();
        assert_eq!(udp.payload_offset, ETH_HLEN + 60 + UDP_HLEN);
        assert_eq!(udp.src, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(verdict(&f), Counter::KnockDropped);
    }

    #[test]
    fn first_fragment_is_dropped_later_fragments_pass() {
        assert_eq!(verdict(&ipv4_udp(0, 0x2000, KNOCK)), Counter::KnockDropped);
        assert_eq!(verdict(&ipv4_udp(0, 0x0010, KNOCK)), Counter::NotKnock);
    }

    #[test]
    fn ipv6_knock_is_dropped() {
        let f = ipv6_udp(IPPROTO_UDP, KNOCK);
        assert_eq!(verdict(&f), Counter::KnockDropped);
        let udp = parse_udp(f.as_slice()).unwrap();
        assert_eq!(udp.src_port, 40000);
        assert_eq!(udp.payload_offset, ETH_HLEN + IPV6_HLEN + UDP_HLEN);
    }

    #[test]
    fn tcp_and_arp_pass() {
        assert_eq!(verdict(&ipv6_udp(6, KNOCK)), Counter::NotKnock);
        let mut arp = eth(0x0806);
        arp.extend_from_slice(&[0u8; 28]);
        assert_eq!(verdict(&arp), Counter::NotKnock);
    }

    #[test]
    fn bad_ihl_and_version_pass() {
        let mut f = ipv4_udp(0, 0, KNOCK);
        f[ETH_HLEN] = 0x44;
        assert_eq!(verdict(&f), Counter::NotKnock);
        f[ETH_HLEN] = 0x65;
        assert_eq!(verdict(&f), Counter::NotKnock);
    }

    #[test]
    fn every_truncation_is_safe() {
        for full in [ipv4_udp(8, 0, KNOCK), ipv6_udp(IPPROTO_UDP, KNOCK)] {
            let header_end = parse_udp(full.as_slice()).unwrap().payload_offset - UDP_HLEN + 4;
            for len in 0..full.len() {
                let expected = if len >= header_end {
                    Counter::KnockDropped
                } else {
                    Counter::NotKnock
                };
                assert_eq!(verdict(&full[..len]), expected, "len {len}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = verdict(&bytes);
        }
    }
}
