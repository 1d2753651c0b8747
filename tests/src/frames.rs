//! Crafted Ethernet frames and knock payloads for XDP and pre-filter tests.
//!
//! Every builder makes a well-formed frame (lengths agreeing); tests break one thing at a time
//! with the offset helpers ([`udp_offset`]) or by wrapping ([`vlan`]).
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers: a builder misused by a test fails that test with a message"
)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use capyknock_common::wire::{Header, KNOCK_LEN, NONCE_LEN};

/// The protocol's default knock port, used by most tests.
pub const KNOCK_PORT: u16 = capyknock_common::wire::DEFAULT_KNOCK_PORT;
/// Default IPv4 source of the builders.
pub const SRC_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// Default IPv6 source of the builders.
pub const SRC_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
/// Default UDP source port of the builders.
pub const SRC_PORT: u16 = 40000;

/// IPv6 hop-by-hop options.
pub const HOPOPTS: u8 = 0;
/// IPv6 routing header.
pub const ROUTING: u8 = 43;
/// IPv6 fragment header.
pub const FRAGMENT: u8 = 44;
/// IPv6 authentication header.
pub const AH: u8 = 51;
/// IPv6 destination options.
pub const DSTOPTS: u8 = 60;

/// A knock with a valid header (tag computed under `tag_key`, nonce bytes from `nonce`) and a
/// body of bytes derived from the nonce (the pre-filter never looks at the body).
#[must_use]
pub fn knock(tag_key: &[u8; 16], user: [u8; 16], step: u64, nonce: u32) -> [u8; KNOCK_LEN] {
    let mut nonce_bytes = [0u8; NONCE_LEN];
    for (i, b) in nonce_bytes.iter_mut().enumerate() {
        *b = nonce.to_le_bytes()[i % 4];
    }
    let header = Header::sealed(tag_key, user, step, nonce_bytes).to_bytes();
    let mut k = [0u8; KNOCK_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(nonce as u8);
    }
    k[..header.len()].copy_from_slice(&header);
    k
}

/// Destination MAC, source MAC and EtherType.
#[must_use]
pub fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4/UDP frame from 192.0.2.7:40000 to `dport`, with `options` bytes of IP options
/// (a multiple of 4, at most 40) and `payload`.
#[must_use]
pub fn ipv4_udp(options: usize, dport: u16, payload: &[u8]) -> Vec<u8> {
    ipv4_udp_full(SRC_V4, SRC_PORT, options, 0x4000, dport, payload)
}

/// An IPv4/UDP frame with every field chosen: `frag` is the flags + fragment offset field
/// (0x4000 = don't fragment, 0x2000 = more fragments).
#[must_use]
pub fn ipv4_udp_full(
    src: Ipv4Addr,
    sport: u16,
    options: usize,
    frag: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    assert!(options.is_multiple_of(4) && options <= 40);
    let mut f = ethernet(0x0800);
    let ihl = 5 + options / 4;
    let total = 4 * ihl + 8 + payload.len();
    f.push(0x40 | u8::try_from(ihl).unwrap());
    f.push(0);
    f.extend_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    f.extend_from_slice(&[0, 1]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, 17, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&[192, 0, 2, 1]);
    // Options: NOPs (type 1) fill any length.
    f.extend(std::iter::repeat_n(1u8, options));
    f.extend_from_slice(&udp(sport, dport, payload));
    f
}

/// An IPv6/UDP frame from `2001:db8::7` port 40000 to `dport`.
#[must_use]
pub fn ipv6_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    ipv6_udp_full(SRC_V6, SRC_PORT, &[], dport, payload)
}

/// An IPv6/UDP frame with extension headers `ext` (each `(type, bytes)`; the first byte of each,
/// its next-header field, is filled in here) between the IPv6 and UDP headers.
#[must_use]
pub fn ipv6_udp_full(
    src: Ipv6Addr,
    sport: u16,
    ext: &[(u8, Vec<u8>)],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp = udp(sport, dport, payload);
    let ext_len: usize = ext.iter().map(|(_, b)| b.len()).sum();
    let mut f = ethernet(0x86DD);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(ext_len + udp.len()).unwrap().to_be_bytes());
    f.push(ext.first().map_or(17, |(t, _)| *t));
    f.push(64);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    for (i, (_, bytes)) in ext.iter().enumerate() {
        let mut b = bytes.clone();
        b[0] = ext.get(i + 1).map_or(17, |(t, _)| *t);
        f.extend_from_slice(&b);
    }
    f.extend_from_slice(&udp);
    f
}

/// A generic IPv6 options-style extension header of `(units + 1) * 8` bytes.
#[must_use]
pub fn ext_options(units: u8) -> Vec<u8> {
    let mut b = vec![0u8; (usize::from(units) + 1) * 8];
    b[1] = units;
    // A PadN option covering the rest keeps it well formed.
    b[2] = 1;
    b[3] = u8::try_from(b.len() - 4).unwrap_or(0);
    b
}

/// An IPv6 fragment header with the given offset-and-flags field (offset << 3 | M).
#[must_use]
pub fn ext_fragment(offset_flags: u16) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    b[2..4].copy_from_slice(&offset_flags.to_be_bytes());
    b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b
}

/// An IPv6 authentication header with `icv_words` 4-byte words of ICV.
#[must_use]
pub fn ext_ah(icv_words: u8) -> Vec<u8> {
    let mut b = vec![0u8; 12 + 4 * usize::from(icv_words)];
    b[1] = icv_words + 1;
    b
}

/// `frame` with VLAN tags (EtherTypes `tags`, outermost first) inserted after the MACs.
#[must_use]
pub fn vlan(mut frame: Vec<u8>, tags: &[u16]) -> Vec<u8> {
    let inner = frame.split_off(12);
    for (i, t) in tags.iter().enumerate() {
        frame.extend_from_slice(&t.to_be_bytes());
        frame.extend_from_slice(&(100 + u16::try_from(i).unwrap()).to_be_bytes());
    }
    frame.extend_from_slice(&inner);
    frame
}

/// Offset of the UDP header in a frame the builders made (no VLAN tags).
#[must_use]
pub fn udp_offset(frame: &[u8]) -> usize {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => 14 + usize::from(frame[14] & 0x0f) * 4,
        0x86DD => {
            // Walk the extension headers the builders write until UDP.
            let mut next = frame[20];
            let mut off = 14 + 40;
            loop {
                match next {
                    17 => return off,
                    // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
                    0 | 43 | 60 => {
                        next = frame[off];
                        off += (usize::from(frame[off + 1]) + 1) * 8;
                    }
                    // Fragment: 8 bytes.
                    44 => {
                        next = frame[off];
                        off += 8;
                    }
                    // Authentication header: (len + 2) * 4 bytes.
                    51 => {
                        next = frame[off];
                        off += (usize::from(frame[off + 1]) + 2) * 4;
                    }
                    other => panic!("udp_offset: next header {other}"),
                }
            }
        }
        other => panic!("udp_offset: EtherType {other:#06x}"),
    }
}

/// An IPv4/TCP SYN frame to `dport`.
#[must_use]
pub fn ipv4_tcp(dport: u16) -> Vec<u8> {
    let mut f = ethernet(0x0800);
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&[192, 0, 2, 7, 192, 0, 2, 1]);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// An IPv6/TCP SYN frame to `dport`.
#[must_use]
pub fn ipv6_tcp(dport: u16) -> Vec<u8> {
    let mut f = ethernet(0x86DD);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 20, 6, 64]);
    f.extend_from_slice(&SRC_V6.octets());
    f.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

/// An ARP request frame.
#[must_use]
pub fn arp() -> Vec<u8> {
    let mut f = ethernet(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 192, 0, 2, 7]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 1]);
    f
}

/// The source address a frame made by these builders carries, for comparing with candidates.
#[must_use]
pub fn default_src(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(SRC_V6)
    } else {
        IpAddr::V4(SRC_V4)
    }
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// A routable IPv6/UDP frame from `src` (MAC `src_mac`) to `dst` (MAC `dst_mac`) with the
/// extension headers `ext` (each `(type, bytes)`, as in [`ipv6_udp_full`]) and a correct UDP
/// checksum, so the receiving kernel's stack takes it as it would a real datagram.
#[must_use]
pub fn ipv6_udp_routable(
    (src_mac, src): ([u8; 6], Ipv6Addr),
    (dst_mac, dst): ([u8; 6], Ipv6Addr),
    ext: &[(u8, Vec<u8>)],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = ipv6_udp_full(src, SRC_PORT, ext, dport, payload);
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[14 + 24..14 + 40].copy_from_slice(&dst.octets());
    let udp_at = f.len() - 8 - payload.len();
    // Checksum over the pseudo-header (addresses, length, next header 17) and the datagram.
    let udp_len = u32::try_from(8 + payload.len()).unwrap();
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&udp_len.to_be_bytes());
    add(&[0, 0, 0, 17]);
    add(&f[udp_at..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let check = !(sum as u16);
    let check = if check == 0 { 0xffff } else { check };
    f[udp_at + 6..udp_at + 8].copy_from_slice(&check.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_offset_finds_the_header() {
        let k = [7u8; 10];
        assert_eq!(udp_offset(&ipv4_udp(8, 1, &k)), 14 + 28);
        assert_eq!(udp_offset(&ipv6_udp(1, &k)), 14 + 40);
        let ext = [(HOPOPTS, ext_options(1)), (FRAGMENT, ext_fragment(0))];
        let f = ipv6_udp_full(SRC_V6, 1, &ext, 2, &k);
        assert_eq!(udp_offset(&f), 14 + 40 + 16 + 8);
        assert_eq!(
            &f[udp_offset(&f) + 2..udp_offset(&f) + 4],
            &2u16.to_be_bytes()
        );
    }
}
