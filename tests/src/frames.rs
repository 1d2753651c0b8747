//! Crafted Ethernet frames for XDP and pre-filter tests.

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
    assert!(options % 4 == 0 && options <= 40);
    let mut f = ethernet(0x0800);
    let ihl = 5 + options / 4;
    let total = 4 * ihl + 8 + payload.len();
    f.push(0x40 | u8::try_from(ihl).unwrap());
    f.push(0);
    f.extend_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&[192, 0, 2, 7, 192, 0, 2, 1]);
    f.extend(std::iter::repeat_n(1u8, options));
    f.extend_from_slice(&udp(dport, payload));
    f
}

/// An IPv6/UDP frame from 2001:db8::7 port 40000 to `dport`.
#[must_use]
pub fn ipv6_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = ethernet(0x86DD);
    let len = u16::try_from(8 + payload.len()).unwrap();
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    f.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    f.extend_from_slice(&udp(dport, payload));
    f
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

/// An ARP request frame.
#[must_use]
pub fn arp() -> Vec<u8> {
    let mut f = ethernet(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 192, 0, 2, 7]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 1]);
    f
}

fn udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::with_capacity(8 + payload.len());
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}
