//! Frame parsing shared by the XDP program and userspace: Ethernet (up to two VLAN tags) ->
//! IPv4 (any header length) or IPv6 (a bounded chain of extension headers) -> UDP.
//!
//! The parser reads through the [`Frame`] trait, implemented over the packet pointers in the kernel
//! and over `[u8]` in userspace, so both sides run the same code on the same bytes. Every read is
//! bounds-checked by the implementation and returns `None` when the frame is too short: a
//! truncated frame is never an error here, just "not something we recognise". Whether a UDP
//! datagram is well formed (not a fragment, lengths agreeing) is reported, not judged: the
//! pre-filter decides (see [`crate::prefilter`]).

#![expect(
    clippy::inline_always,
    reason = "the XDP program calls these; BPF has no real function calls for them to go through"
)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Length of an Ethernet II header without VLAN tags.
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: usize = 4;
/// Most VLAN tags parsed (802.1ad "QinQ" outer tag plus 802.1Q inner tag).
pub const MAX_VLAN_TAGS: usize = 2;
/// EtherType of IPv4.
pub const ETH_P_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of an 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an 802.1ad (QinQ service) VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88A8;
/// Minimum IPv4 header length (IHL = 5).
pub const IPV4_MIN_HLEN: usize = 20;
/// Fixed IPv6 header length.
pub const IPV6_HLEN: usize = 40;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IPv6 hop-by-hop options header.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IPv6 authentication header (length in 4-byte units).
pub const IPPROTO_AH: u8 = 51;
/// IPv6 destination options header.
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 mobility header (same generic layout as the options headers).
pub const IPPROTO_MH: u8 = 135;
/// Most IPv6 extension headers walked before giving up ("not something we recognise").
pub const MAX_IPV6_EXT_HEADERS: usize = 6;
/// Headers ending beyond this offset are not parsed. No XDP frame without multi-buffer support
/// is longer than a page, and userspace uses the same bound so both sides agree.
pub const MAX_HEADER_OFFSET: usize = 4096;

/// Byte-level access to a frame. Implementations bounds-check every read.
pub trait Frame {
    /// Length of the frame in bytes.
    fn len(&self) -> usize;

    /// Whether the frame is empty.
    #[inline(always)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

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
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }

    #[inline]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.get(offset..end)?.try_into().ok()
    }
}

/// Where the source address of a datagram sits in its frame. The parser only notes it: reading
/// it (16 bytes for IPv6) is left until the datagram is known to go to a knock port, so traffic
/// that passes costs nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceAt {
    /// An IPv4 source address at this offset.
    V4(usize),
    /// An IPv6 source address at this offset.
    V6(usize),
}

/// A UDP datagram found in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpDatagram {
    /// Where the source address is (read it with [`UdpDatagram::source`]).
    pub src: SourceAt,
    /// UDP source port.
    pub src_port: u16,
    /// UDP destination port.
    pub dst_port: u16,
    /// Offset of the UDP payload from the start of the frame.
    pub payload_offset: usize,
    /// Payload length announced by the UDP header (its length field minus 8; 0 if smaller).
    pub payload_len: usize,
    /// The first fragment of a fragmented datagram (IPv4 MF set, or an IPv6 fragment header
    /// with M set). Later fragments carry no UDP header and are not parsed at all.
    pub fragment: bool,
    /// The UDP length field equals the length the IP header(s) leave for UDP.
    pub length_consistent: bool,
}

impl UdpDatagram {
    /// The source address. `None` only if the frame is shorter than the header the parser
    /// already walked, which cannot happen for a datagram [`parse_udp`] returned.
    #[inline(always)]
    pub fn source<F: Frame + ?Sized>(&self, frame: &F) -> Option<IpAddr> {
        match self.src {
            SourceAt::V4(at) => Some(IpAddr::V4(Ipv4Addr::from(frame.load::<4>(at)?))),
            SourceAt::V6(at) => {
                // Two 8-byte reads: small enough for direct packet access in the kernel.
                let high = frame.load::<8>(at)?;
                let low = frame.load::<8>(at + 8)?;
                let mut octets = [0u8; 16];
                for (o, b) in octets.iter_mut().zip(high.iter().chain(low.iter())) {
                    *o = *b;
                }
                Some(IpAddr::V6(Ipv6Addr::from(octets)))
            }
        }
    }
}

/// Finds the UDP header of an Ethernet frame carrying IPv4 or IPv6, behind up to
/// [`MAX_VLAN_TAGS`] VLAN tags.
///
/// Returns `None` for anything else: other EtherTypes, other IP protocols, non-first fragments
/// (their bytes are payload, not a UDP header), IPv6 with more than [`MAX_IPV6_EXT_HEADERS`]
/// extension headers or with ESP, and frames too short to hold the headers they announce.
#[inline(always)]
pub fn parse_udp<F: Frame + ?Sized>(frame: &F) -> Option<UdpDatagram> {
    parse_udp_to(frame, |_| true)
}

/// [`parse_udp`] for datagrams to the ports `wanted` accepts: the destination port is read and
/// judged before the rest of the UDP header, so a datagram to another port costs two bytes.
#[inline(always)]
pub fn parse_udp_to<F: Frame + ?Sized>(
    frame: &F,
    wanted: impl Fn(u16) -> bool,
) -> Option<UdpDatagram> {
    let mut ethertype = frame.load_u16(12)?;
    let mut l3 = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = frame.load_u16(l3 + 2)?;
        l3 += VLAN_HLEN;
        tags += 1;
    }
    parse_udp_at(frame, ethertype, l3, wanted)
}

/// [`parse_udp_to`] for a packet whose IP header starts at `l3`, with `ethertype` saying which
/// IP version it is ([`ETH_P_IPV4`] or [`ETH_P_IPV6`]; anything else is `None`). For frames
/// without an Ethernet header: raw IP, BSD loopback (`DLT_NULL`), a Windows raw socket.
#[inline(always)]
pub fn parse_udp_at<F: Frame + ?Sized>(
    frame: &F,
    ethertype: u16,
    l3: usize,
    wanted: impl Fn(u16) -> bool,
) -> Option<UdpDatagram> {
    let l4 = match ethertype {
        ETH_P_IPV4 => parse_ipv4(frame, l3)?,
        ETH_P_IPV6 => parse_ipv6(frame, l3)?,
        _ => return None,
    };
    if l4.offset > MAX_HEADER_OFFSET {
        return None;
    }
    let dst_port = frame.load_u16(l4.offset + 2)?;
    if !wanted(dst_port) {
        return None;
    }
    let [sp_hi, sp_lo, _, _, len_hi, len_lo, _, _] = frame.load::<8>(l4.offset)?;
    let udp_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    Some(UdpDatagram {
        src: l4.src,
        src_port: u16::from_be_bytes([sp_hi, sp_lo]),
        dst_port,
        payload_offset: l4.offset + UDP_HLEN,
        payload_len: udp_len.saturating_sub(UDP_HLEN),
        fragment: l4.fragment,
        length_consistent: udp_len >= UDP_HLEN && l4.ip_payload == Some(udp_len),
    })
}

/// Where the UDP header starts, and what the IP layer said about it.
struct L4 {
    offset: usize,
    src: SourceAt,
    fragment: bool,
    /// Bytes the IP header(s) leave for UDP (`None` if the lengths do not add up).
    ip_payload: Option<usize>,
}

#[inline(always)]
fn parse_ipv4<F: Frame + ?Sized>(frame: &F, l3: usize) -> Option<L4> {
    let [version_ihl, _tos, len_hi, len_lo] = frame.load::<4>(l3)?;
    if version_ihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if ihl < IPV4_MIN_HLEN {
        return None;
    }
    let total_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let frag = frame.load_u16(l3 + 6)?;
    if frag & 0x1fff != 0 {
        // Not the first fragment: no UDP header here.
        return None;
    }
    if frame.load_u8(l3 + 9)? != IPPROTO_UDP {
        return None;
    }
    Some(L4 {
        offset: l3 + ihl,
        src: SourceAt::V4(l3 + 12),
        fragment: frag & 0x2000 != 0,
        ip_payload: total_len.checked_sub(ihl),
    })
}

#[inline(always)]
fn parse_ipv6<F: Frame + ?Sized>(frame: &F, l3: usize) -> Option<L4> {
    let [version, _, _, _, len_hi, len_lo, mut next, _hop] = frame.load::<8>(l3)?;
    if version >> 4 != 6 {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    let first = l3 + IPV6_HLEN;
    let mut l4 = first;
    let mut fragment = false;
    let mut walked = 0;
    while next != IPPROTO_UDP {
        if walked == MAX_IPV6_EXT_HEADERS || l4 > MAX_HEADER_OFFSET {
            return None;
        }
        walked += 1;
        let [nh, len] = frame.load::<2>(l4)?;
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_MH => {
                l4 += (usize::from(len) + 1) * 8;
            }
            IPPROTO_AH => l4 += (usize::from(len) + 2) * 4,
            IPPROTO_FRAGMENT => {
                let offset_flags = frame.load_u16(l4 + 2)?;
                if offset_flags & 0xfff8 != 0 {
                    // Not the first fragment.
                    return None;
                }
                fragment |= offset_flags & 1 != 0;
                l4 += 8;
            }
            _ => return None,
        }
        next = nh;
    }
    Some(L4 {
        offset: l4,
        src: SourceAt::V6(l3 + 8),
        fragment,
        ip_payload: payload_len.checked_sub(l4 - first),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn eth(ethertype: u16) -> Vec<u8> {
        let mut f = std::vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&40000u16.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        u
    }

    fn ipv4_udp(options: usize, frag: u16, dport: u16) -> Vec<u8> {
        let mut f = eth(ETH_P_IPV4);
        let ihl = 5 + options / 4;
        let payload = b"hi!!";
        let total = (ihl * 4 + 8 + payload.len()) as u16;
        f.push(0x40 | ihl as u8);
        f.push(0);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&frag.to_be_bytes());
        f.extend_from_slice(&[64, IPPROTO_UDP, 0, 0]);
        f.extend_from_slice(&[192, 0, 2, 7, 192, 0, 2, 1]);
        f.extend(std::iter::repeat_n(1u8, options));
        f.extend_from_slice(&udp(dport, payload));
        f
    }

    /// IPv6 with the given extension headers (each `(type, bytes)`) before UDP.
    fn ipv6_udp(ext: &[(u8, Vec<u8>)], dport: u16) -> Vec<u8> {
        let payload = udp(dport, b"hi");
        let ext_len: usize = ext.iter().map(|(_, b)| b.len()).sum();
        let mut f = eth(ETH_P_IPV6);
        let first = ext.first().map_or(IPPROTO_UDP, |(t, _)| *t);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext_len + payload.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[first, 64]);
        let mut src = [0u8; 16];
        src[0] = 0x20;
        src[1] = 0x01;
        src[15] = 7;
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0u8; 16]);
        for (i, (_, bytes)) in ext.iter().enumerate() {
            let next = ext.get(i + 1).map_or(IPPROTO_UDP, |(t, _)| *t);
            let mut b = bytes.clone();
            b[0] = next;
            f.extend_from_slice(&b);
        }
        f.extend_from_slice(&payload);
        f
    }

    #[test]
    fn ip_without_ethernet_parses_like_the_frame() {
        // The same packets with the Ethernet header cut off and the IP header at 0: the same
        // datagram, every offset 14 bytes earlier.
        for (frame, ethertype) in [
            (ipv4_udp(0, 0, 9), ETH_P_IPV4),
            (ipv4_udp(8, 0x2000, 9), ETH_P_IPV4),
            (ipv6_udp(&[(IPPROTO_DSTOPTS, opts(1))], 9), ETH_P_IPV6),
        ] {
            let whole = parse_udp(frame.as_slice()).unwrap();
            let ip = &frame[ETH_HLEN..];
            let bare = parse_udp_at(ip, ethertype, 0, |_| true).unwrap();
            assert_eq!(bare.payload_offset + ETH_HLEN, whole.payload_offset);
            assert_eq!(bare.source(ip), whole.source(frame.as_slice()));
            assert_eq!(
                (bare.dst_port, bare.fragment, bare.length_consistent),
                (whole.dst_port, whole.fragment, whole.length_consistent)
            );
            // The version named must be the one in the header.
            let other = if ethertype == ETH_P_IPV4 {
                ETH_P_IPV6
            } else {
                ETH_P_IPV4
            };
            assert_eq!(parse_udp_at(ip, other, 0, |_| true), None);
            assert_eq!(parse_udp_at(ip, ETH_P_8021Q, 0, |_| true), None);
            assert_eq!(parse_udp_at(ip, ethertype, 0, |p| p != 9), None);
        }
        assert_eq!(parse_udp_at(&[0x45u8][..], ETH_P_IPV4, 0, |_| true), None);
        assert_eq!(
            parse_udp_at(&[][..], ETH_P_IPV4, usize::MAX, |_| true),
            None
        );
    }

    fn opts(units: u8) -> Vec<u8> {
        let mut b = std::vec![0u8; (usize::from(units) + 1) * 8];
        b[1] = units;
        b
    }

    fn frag_hdr(offset_flags: u16) -> Vec<u8> {
        let mut b = std::vec![0u8; 8];
        b[2..4].copy_from_slice(&offset_flags.to_be_bytes());
        b
    }

    fn vlan(mut f: Vec<u8>, tags: &[u16]) -> Vec<u8> {
        let inner = f.split_off(12);
        for t in tags {
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&[0, 42]);
        }
        f.extend_from_slice(&inner);
        f
    }

    #[test]
    fn ipv4_udp_is_found() {
        let f = ipv4_udp(0, 0, 62201);
        let u = parse_udp(f.as_slice()).unwrap();
        assert_eq!(u.dst_port, 62201);
        assert_eq!(u.src_port, 40000);
        assert_eq!(u.payload_len, 4);
        assert!(u.length_consistent && !u.fragment);
    }

    #[test]
    fn ipv4_options_shift_the_udp_header() {
        let f = ipv4_udp(40, 0, 9);
        let udp = parse_udp(f.as_slice()).unwrap();
        assert_eq!(udp.payload_offset, ETH_HLEN + 60 + UDP_HLEN);
        assert_eq!(
            udp.source(f.as_slice()),
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)))
        );
        assert!(udp.length_consistent);
    }

    #[test]
    fn first_fragment_is_flagged_later_fragments_are_not_udp() {
        let first = parse_udp(ipv4_udp(0, 0x2000, 9).as_slice()).unwrap();
        assert!(first.fragment);
        let df = parse_udp(ipv4_udp(0, 0x4000, 9).as_slice()).unwrap();
        assert!(!df.fragment);
        assert!(parse_udp(ipv4_udp(0, 0x0010, 9).as_slice()).is_none());
        assert!(parse_udp(ipv4_udp(0, 0x2010, 9).as_slice()).is_none());
    }

    #[test]
    fn udp_length_must_match_ip_length() {
        let mut f = ipv4_udp(0, 0, 9);
        let udp_len_at = ETH_HLEN + 20 + 4;
        f[udp_len_at + 1] += 1;
        assert!(!parse_udp(f.as_slice()).unwrap().length_consistent);
        f[udp_len_at + 1] -= 1;
        // IP total length shorter than IHL: no room for anything.
        f[ETH_HLEN + 2] = 0;
        f[ETH_HLEN + 3] = 10;
        assert!(!parse_udp(f.as_slice()).unwrap().length_consistent);
        // UDP length below the header size.
        let mut f = ipv4_udp(0, 0, 9);
        f[ETH_HLEN + 2] = 0;
        f[ETH_HLEN + 3] = 24;
        f[udp_len_at] = 0;
        f[udp_len_at + 1] = 4;
        let u = parse_udp(f.as_slice()).unwrap();
        assert!(!u.length_consistent);
        assert_eq!(u.payload_len, 0);
    }

    #[test]
    fn ipv6_plain_and_with_extension_headers() {
        let f = ipv6_udp(&[], 9);
        let u = parse_udp(f.as_slice()).unwrap();
        assert_eq!(u.payload_offset, ETH_HLEN + IPV6_HLEN + UDP_HLEN);
        assert_eq!(
            u.source(f.as_slice()),
            Some(IpAddr::V6("2001::7".parse().unwrap()))
        );
        assert!(u.length_consistent && !u.fragment);

        let ext = std::vec![
            (IPPROTO_HOPOPTS, opts(0)),
            (IPPROTO_ROUTING, opts(2)),
            (IPPROTO_DSTOPTS, opts(1)),
        ];
        let f = ipv6_udp(&ext, 9);
        let u = parse_udp(f.as_slice()).unwrap();
        assert_eq!(
            u.payload_offset,
            ETH_HLEN + IPV6_HLEN + 8 + 24 + 16 + UDP_HLEN
        );
        assert!(u.length_consistent);
        assert_eq!(u.dst_port, 9);
    }

    #[test]
    fn ipv6_authentication_header_counts_in_four_byte_units() {
        let mut ah = std::vec![0u8; 16];
        ah[1] = 2; // (2 + 2) * 4 = 16 bytes
        let f = ipv6_udp(&[(IPPROTO_AH, ah)], 9);
        let u = parse_udp(f.as_slice()).unwrap();
        assert_eq!(u.payload_offset, ETH_HLEN + IPV6_HLEN + 16 + UDP_HLEN);
    }

    #[test]
    fn ipv6_fragments() {
        let first = ipv6_udp(&[(IPPROTO_FRAGMENT, frag_hdr(1))], 9);
        assert!(parse_udp(first.as_slice()).unwrap().fragment);
        let atomic = ipv6_udp(&[(IPPROTO_FRAGMENT, frag_hdr(0))], 9);
        assert!(!parse_udp(atomic.as_slice()).unwrap().fragment);
        let later = ipv6_udp(&[(IPPROTO_FRAGMENT, frag_hdr(8 << 3))], 9);
        assert!(parse_udp(later.as_slice()).is_none());
    }

    #[test]
    fn ipv6_extension_chain_is_bounded() {
        let ok: Vec<_> = (0..MAX_IPV6_EXT_HEADERS)
            .map(|_| (IPPROTO_DSTOPTS, opts(0)))
            .collect();
        assert!(parse_udp(ipv6_udp(&ok, 9).as_slice()).is_some());
        let too_many: Vec<_> = (0..=MAX_IPV6_EXT_HEADERS)
            .map(|_| (IPPROTO_DSTOPTS, opts(0)))
            .collect();
        assert!(parse_udp(ipv6_udp(&too_many, 9).as_slice()).is_none());
        // ESP cannot be walked.
        assert!(parse_udp(ipv6_udp(&[(50, opts(0))], 9).as_slice()).is_none());
    }

    #[test]
    fn vlan_tags() {
        for tags in [
            &[ETH_P_8021Q][..],
            &[ETH_P_8021AD, ETH_P_8021Q],
            &[ETH_P_8021Q, ETH_P_8021Q],
        ] {
            let f = vlan(ipv4_udp(0, 0, 9), tags);
            let u = parse_udp(f.as_slice()).unwrap();
            assert_eq!(
                u.payload_offset,
                ETH_HLEN + 4 * tags.len() + 20 + 8,
                "{tags:?}"
            );
            let f = vlan(ipv6_udp(&[], 9), tags);
            assert!(parse_udp(f.as_slice()).is_some());
        }
        let three = vlan(ipv4_udp(0, 0, 9), &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q]);
        assert!(parse_udp(three.as_slice()).is_none());
    }

    #[test]
    fn tcp_arp_and_bad_versions_are_not_udp() {
        assert!(parse_udp(ipv6_udp(&[(6, opts(0))], 9).as_slice()).is_none());
        let mut arp = eth(0x0806);
        arp.extend_from_slice(&[0u8; 28]);
        assert!(parse_udp(arp.as_slice()).is_none());
        let mut f = ipv4_udp(0, 0, 9);
        f[ETH_HLEN] = 0x44;
        assert!(parse_udp(f.as_slice()).is_none());
        f[ETH_HLEN] = 0x65;
        assert!(parse_udp(f.as_slice()).is_none());
    }

    #[test]
    fn every_truncation_is_safe() {
        let ext = std::vec![(IPPROTO_HOPOPTS, opts(1)), (IPPROTO_FRAGMENT, frag_hdr(0))];
        for full in [
            ipv4_udp(8, 0, 9),
            ipv6_udp(&[], 9),
            ipv6_udp(&ext, 9),
            vlan(ipv4_udp(0, 0, 9), &[ETH_P_8021AD, ETH_P_8021Q]),
        ] {
            let header_end = parse_udp(full.as_slice()).unwrap().payload_offset;
            for len in 0..full.len() {
                let parsed = parse_udp(&full[..len]);
                assert_eq!(parsed.is_some(), len >= header_end, "len {len}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            if let Some(u) = parse_udp(bytes.as_slice()) {
                proptest::prop_assert!(u.payload_offset <= bytes.len());
                proptest::prop_assert!(u.source(bytes.as_slice()).is_some());
            }
        }
    }
}
