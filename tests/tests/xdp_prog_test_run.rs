//! The XDP program's verdicts on crafted frames through `BPF_PROG_TEST_RUN` (no interface
//! needed), every one compared with the userspace pre-filter on the same bytes: both must give
//! the same verdict and hand on the same knock. The tests of verdicts by frame (encapsulations,
//! other traffic, every rejection class, malformed datagrams, truncation) run the tc program
//! too. Needs root (loads BPF).

use capyknock_common::{
    counters::Counter,
    maps::{Config, EVENTS_BYTES, KnockEvent},
    ratelimit::RateLimit,
    wire::{KNOCK_LEN, RESERVED_OFFSET, TAG_OFFSET, USER_ID_OFFSET, VERSION_OFFSET},
};
use capyknock_tests::{
    frames::{self, KNOCK_PORT, SRC_PORT, SRC_V4, SRC_V6},
    xdp_harness::{Harness, Hook, KEY, KEY_B, STEP, USER, USER_B, XDP_DROP, XDP_PASS},
};

fn harness() -> Harness {
    Harness::new(Config::default())
}

/// A harness for the XDP program and one for the tc program, each with maps of its own.
fn every_hook() -> [Harness; 2] {
    [Hook::Xdp, Hook::Tc].map(|hook| Harness::with_hook(Config::default(), hook))
}

fn knock(nonce: u32) -> [u8; KNOCK_LEN] {
    frames::knock(&KEY, USER, STEP, nonce)
}

fn v4(payload: &[u8]) -> Vec<u8> {
    frames::ipv4_udp(0, KNOCK_PORT, payload)
}

fn v6(payload: &[u8]) -> Vec<u8> {
    frames::ipv6_udp(KNOCK_PORT, payload)
}

/// Every way a knock can be wrapped that the parser follows, each with its own nonce.
fn encapsulations(first_nonce: u32) -> Vec<(&'static str, Vec<u8>)> {
    let k = |i: u32| knock(first_nonce + i);
    let ext = |list: &[(u8, Vec<u8>)], payload: &[u8]| {
        frames::ipv6_udp_full(SRC_V6, SRC_PORT, list, KNOCK_PORT, payload)
    };
    vec![
        ("ipv4", v4(&k(0))),
        (
            "ipv4 + 40 bytes of options",
            frames::ipv4_udp(40, KNOCK_PORT, &k(1)),
        ),
        (
            "ipv4 + 4 bytes of options",
            frames::ipv4_udp(4, KNOCK_PORT, &k(2)),
        ),
        ("ipv6", v6(&k(3))),
        (
            "ipv6 + hop-by-hop, routing, destination options",
            ext(
                &[
                    (frames::HOPOPTS, frames::ext_options(0)),
                    (frames::ROUTING, frames::ext_options(2)),
                    (frames::DSTOPTS, frames::ext_options(1)),
                ],
                &k(4),
            ),
        ),
        (
            "ipv6 + authentication header",
            ext(&[(frames::AH, frames::ext_ah(3))], &k(5)),
        ),
        (
            "ipv6 + atomic fragment header",
            ext(&[(frames::FRAGMENT, frames::ext_fragment(0))], &k(6)),
        ),
        ("vlan ipv4", frames::vlan(v4(&k(7)), &[0x8100])),
        ("qinq ipv4", frames::vlan(v4(&k(8)), &[0x88a8, 0x8100])),
        ("vlan ipv6", frames::vlan(v6(&k(9)), &[0x8100])),
        (
            "double 802.1q ipv6",
            frames::vlan(v6(&k(10)), &[0x8100, 0x8100]),
        ),
        ("ipv4 + ethernet padding", {
            let mut f = v4(&k(11));
            f.extend_from_slice(&[0xee; 6]);
            f
        }),
    ]
}

#[test]
fn valid_knocks_are_delivered_from_every_encapsulation() {
    for mut h in every_hook() {
        for (name, frame) in encapsulations(1) {
            let outcome = h.check(&frame, Counter::Delivered);
            let c = outcome.candidate.unwrap();
            let v6 = name.contains("ipv6");
            assert_eq!(c.src.ip(), frames::default_src(v6), "{name}");
            assert_eq!(c.src.port(), SRC_PORT, "{name}");
            let offset = frame.len() - KNOCK_LEN - if name.contains("padding") { 6 } else { 0 };
            assert_eq!(&c.bytes[..], &frame[offset..offset + KNOCK_LEN], "{name}");
            // The same knock again, in the same wrapping: a duplicate, still dropped.
            h.check(&frame, Counter::Duplicate);
        }
    }
}

#[test]
fn other_traffic_passes_untouched() {
    for mut h in every_hook() {
        let k = knock(1);
        let mut seven_ext = Vec::new();
        for _ in 0..7 {
            seven_ext.push((frames::DSTOPTS, frames::ext_options(0)));
        }
        for (name, frame) in [
            ("udp to another port", frames::ipv4_udp(0, 53, &k)),
            ("udp6 to another port", frames::ipv6_udp(53, &k)),
            ("tcp to the knock port", frames::ipv4_tcp(KNOCK_PORT)),
            ("tcp6 to the knock port", frames::ipv6_tcp(KNOCK_PORT)),
            ("tcp to ssh", frames::ipv4_tcp(22)),
            ("arp", frames::arp()),
            (
                "three vlan tags (not parsed)",
                frames::vlan(v4(&k), &[0x88a8, 0x8100, 0x8100]),
            ),
            (
                "ipv4 later fragment",
                frames::ipv4_udp_full(SRC_V4, SRC_PORT, 0, 0x0020, KNOCK_PORT, &k),
            ),
            (
                "ipv6 later fragment",
                frames::ipv6_udp_full(
                    SRC_V6,
                    SRC_PORT,
                    &[(frames::FRAGMENT, frames::ext_fragment(64 << 3))],
                    KNOCK_PORT,
                    &k,
                ),
            ),
            (
                "ipv6 with more extension headers than walked",
                frames::ipv6_udp_full(SRC_V6, SRC_PORT, &seven_ext, KNOCK_PORT, &k),
            ),
            (
                "ipv6 esp",
                frames::ipv6_udp_full(SRC_V6, SRC_PORT, &[(50, vec![0; 16])], KNOCK_PORT, &k),
            ),
        ] {
            let outcome = h.both(&frame);
            assert_eq!(outcome.verdict, Counter::NotKnock, "{name}");
        }
    }
}

#[test]
fn every_rejection_class() {
    for mut h in every_hook() {
        let good = knock(1);
        let flip = |at: usize, mask: u8| {
            let mut k = good;
            k[at] ^= mask;
            k
        };
        // Sizes.
        h.check(&v4(&[]), Counter::WrongSize);
        h.check(&v4(&good[..KNOCK_LEN - 1]), Counter::WrongSize);
        h.check(&v6(&[good.as_slice(), &[0]].concat()), Counter::WrongSize);
        h.check(&v4(&[0u8; 1400]), Counter::WrongSize);
        // Header.
        h.check(&v4(&flip(0, 0x20)), Counter::BadHeader);
        h.check(&v4(&flip(VERSION_OFFSET, 0x03)), Counter::BadHeader);
        for i in 0..3 {
            h.check(&v6(&flip(RESERVED_OFFSET + i, 0x01)), Counter::BadHeader);
        }
        h.check(&v4(&[0u8; KNOCK_LEN]), Counter::BadHeader);
        // User and step.
        h.check(&v4(&flip(USER_ID_OFFSET + 15, 0x80)), Counter::UnknownUser);
        for step in [STEP - 2, STEP + 2, 0, u64::MAX] {
            h.check(&v4(&frames::knock(&KEY, USER, step, 2)), Counter::StaleStep);
        }
        for (i, step) in [STEP - 1, STEP + 1].into_iter().enumerate() {
            let k = frames::knock(&KEY, USER, step, 3 + i as u32);
            h.check(&v4(&k), Counter::Delivered);
        }
        // Tag: any bit of it, or of what it covers (with the user and step still valid).
        for i in 0..8 {
            h.check(&v4(&flip(TAG_OFFSET + i, 1 << i)), Counter::BadTag);
        }
        for at in [33, 40, 55] {
            h.check(&v6(&flip(at, 0x10)), Counter::BadTag);
        }
        h.check(
            &v4(&frames::knock(&[0x55; 16], USER, STEP, 9)),
            Counter::BadTag,
        );
        // Delivered once, then duplicates: the same bytes, a different body (not covered by the
        // tag), another source.
        h.check(&v4(&good), Counter::Delivered);
        h.check(&v4(&good), Counter::Duplicate);
        h.check(&v4(&flip(200, 0xff)), Counter::Duplicate);
        h.check(&v6(&good), Counter::Duplicate);
    }
}

#[test]
fn malformed_knock_port_datagrams_are_dropped() {
    for mut h in every_hook() {
        let k = knock(1);
        // IPv4 first fragment (MF set), IPv6 fragment header with M set.
        h.check(
            &frames::ipv4_udp_full(SRC_V4, SRC_PORT, 0, 0x2000, KNOCK_PORT, &k),
            Counter::Malformed,
        );
        h.check(
            &frames::ipv6_udp_full(
                SRC_V6,
                SRC_PORT,
                &[(frames::FRAGMENT, frames::ext_fragment(1))],
                KNOCK_PORT,
                &k,
            ),
            Counter::Malformed,
        );
        // UDP length disagreeing with the IP length, both ways, on both families.
        for frame in [v4(&k), v6(&k)] {
            let udp_len_at = frames::udp_offset(&frame) + 4;
            for delta in [1i32, -1, 8, -264] {
                let mut f = frame.clone();
                let len = u16::from_be_bytes([f[udp_len_at], f[udp_len_at + 1]]);
                let len = u16::try_from(i32::from(len) + delta).unwrap();
                f[udp_len_at..udp_len_at + 2].copy_from_slice(&len.to_be_bytes());
                h.check(&f, Counter::Malformed);
            }
        }
        // IPv4 total length shorter than the headers, and longer than the frame.
        let mut f = v4(&k);
        f[16..18].copy_from_slice(&20u16.to_be_bytes());
        h.check(&f, Counter::Malformed);
        let mut f = v4(&k);
        f[16..18].copy_from_slice(&1000u16.to_be_bytes());
        h.check(&f, Counter::Malformed);
        // IPv6 payload length that cannot hold its extension headers.
        let mut f = frames::ipv6_udp_full(
            SRC_V6,
            SRC_PORT,
            &[(frames::HOPOPTS, frames::ext_options(3))],
            KNOCK_PORT,
            &k,
        );
        f[18..20].copy_from_slice(&8u16.to_be_bytes());
        h.check(&f, Counter::Malformed);
        // Headers announcing a knock the frame does not hold.
        let full = v6(&k);
        h.check(&full[..full.len() - 1], Counter::Malformed);
        // And after all that, the knock itself is fine.
        h.check(&v4(&k), Counter::Delivered);
    }
}

#[test]
fn truncated_at_every_offset() {
    for mut h in every_hook() {
        for (name, full) in encapsulations(100) {
            if name.contains("padding") {
                continue;
            }
            let header_end = full.len() - KNOCK_LEN;
            // BPF_PROG_TEST_RUN needs at least an Ethernet header.
            for len in 14..full.len() {
                let expected = if len < header_end {
                    Counter::NotKnock
                } else {
                    Counter::Malformed
                };
                let outcome = h.both(&full[..len]);
                assert_eq!(outcome.verdict, expected, "{name} cut to {len}");
            }
            h.check(&full, Counter::Delivered);
        }
    }
}

#[test]
fn per_source_limit_counts_ipv4_hosts_and_ipv6_prefixes() {
    let mut h = Harness::new(Config {
        per_source: RateLimit::new(1, 2),
        ..Config::default()
    });
    let from4 = |host: u8, nonce: u32| {
        frames::ipv4_udp_full(
            std::net::Ipv4Addr::new(198, 51, 100, host),
            SRC_PORT,
            0,
            0,
            KNOCK_PORT,
            &knock(nonce),
        )
    };
    let from6 = |addr: &str, nonce: u32| {
        frames::ipv6_udp_full(
            addr.parse().unwrap(),
            SRC_PORT,
            &[],
            KNOCK_PORT,
            &knock(nonce),
        )
    };
    h.check(&from4(1, 1), Counter::Delivered);
    h.check(&from4(1, 2), Counter::Delivered);
    h.check(&from4(1, 3), Counter::RateLimitedSource);
    h.check(&from4(2, 4), Counter::Delivered);
    // The limited knock was not remembered as delivered: it is limited again, not a duplicate.
    h.check(&from4(1, 3), Counter::RateLimitedSource);

    h.check(&from6("2001:db8:1:1::1", 10), Counter::Delivered);
    h.check(&from6("2001:db8:1:1::2", 11), Counter::Delivered);
    h.check(
        &from6("2001:db8:1:1:ffff::3", 12),
        Counter::RateLimitedSource,
    );
    h.check(&from6("2001:db8:1:2::1", 12), Counter::Delivered);
}

/// A token an hour: no bucket refills while a test runs, so the kernel and userspace (whose
/// clocks differ by microseconds) cannot disagree at a refill.
fn hourly(burst: u64) -> RateLimit {
    let hour = 3_600_000_000_000;
    RateLimit {
        interval_ns: hour,
        tolerance_ns: hour * (burst - 1),
    }
}

fn from(src: std::net::Ipv4Addr, knock: &[u8; KNOCK_LEN]) -> Vec<u8> {
    frames::ipv4_udp_full(src, SRC_PORT, 0, 0, KNOCK_PORT, knock)
}

/// Regression (issue 13.2): with one user's key, valid-tag junk from random forged sources
/// exhausted the global bucket, and forged from a victim's address it emptied the victim's
/// source bucket. Now it stops at that user's own bucket; the other user's knocks, from the
/// very address the junk was forged from, still get through, and the global bucket saw only
/// the attacker's share.
#[test]
fn a_key_holders_flood_stops_at_their_own_bucket() {
    let mut h = Harness::new(Config {
        per_user: hourly(5),
        per_source: hourly(5),
        global: hourly(12),
    });
    let victim = std::net::Ipv4Addr::new(203, 0, 113, 9);
    let before = h.filter.counters().unwrap();
    for n in 0..300u32 {
        let src = if n % 2 == 0 {
            victim
        } else {
            std::net::Ipv4Addr::from(0x0a00_0000 + n)
        };
        let expected = if n < 5 {
            Counter::Delivered
        } else {
            Counter::RateLimitedUser
        };
        h.check(
            &from(src, &frames::knock(&KEY, USER, STEP, 1000 + n)),
            expected,
        );
    }
    for n in 0..5 {
        let k = frames::knock(&KEY_B, USER_B, STEP, n);
        h.check(&from(victim, &k), Counter::Delivered);
    }
    let delta = h.filter.counters().unwrap().since(&before);
    assert_eq!(delta.get(Counter::Delivered), 10, "{delta}");
    assert_eq!(delta.get(Counter::RateLimitedUser), 295, "{delta}");
    assert_eq!(delta.get(Counter::RateLimitedGlobal), 0, "{delta}");
    assert_eq!(delta.get(Counter::RateLimitedSource), 0, "{delta}");
    assert_eq!(h.user.counters().get(Counter::RateLimitedUser), 295);
}

/// The source buckets are per user: junk with one user's key forged from a victim's address
/// empties only that user's bucket for the address.
#[test]
fn source_buckets_are_per_user() {
    let mut h = Harness::new(Config {
        per_source: hourly(3),
        ..Config::default()
    });
    let victim = std::net::Ipv4Addr::new(203, 0, 113, 9);
    for n in 0..3 {
        h.check(
            &from(victim, &frames::knock(&KEY, USER, STEP, 10 + n)),
            Counter::Delivered,
        );
    }
    for n in 3..10 {
        h.check(
            &from(victim, &frames::knock(&KEY, USER, STEP, 10 + n)),
            Counter::RateLimitedSource,
        );
    }
    for n in 0..3 {
        h.check(
            &from(victim, &frames::knock(&KEY_B, USER_B, STEP, n)),
            Counter::Delivered,
        );
    }
}

#[test]
fn global_limit_applies_over_all_sources() {
    let mut h = Harness::new(Config {
        global: RateLimit::new(1, 3),
        ..Config::default()
    });
    for host in 1..=3 {
        let f = frames::ipv4_udp_full(
            std::net::Ipv4Addr::new(198, 51, 100, host),
            SRC_PORT,
            0,
            0,
            KNOCK_PORT,
            &knock(u32::from(host)),
        );
        h.check(&f, Counter::Delivered);
    }
    h.check(&v6(&knock(4)), Counter::RateLimitedGlobal);
}

#[test]
fn a_full_ring_buffer_is_counted_and_the_knock_may_come_again() {
    {
        let mut h = harness();
        let capacity = EVENTS_BYTES as usize / (KnockEvent::SIZE + 8);
        let before = h.filter.counters().unwrap();
        // Without a reader the ring fills up.
        let frames_sent: Vec<Vec<u8>> = (0..capacity as u32 + 20).map(|n| v4(&knock(n))).collect();
        for f in &frames_sent {
            assert_eq!(h.filter.test_run(f).unwrap(), XDP_DROP);
        }
        let delta = h.filter.counters().unwrap().since(&before);
        assert!(delta.get(Counter::RingFull) >= 1, "{delta}");
        assert_eq!(
            delta.get(Counter::Delivered) + delta.get(Counter::RingFull),
            frames_sent.len() as u64,
            "{delta}"
        );
        assert!(
            delta.get(Counter::Delivered) as usize <= capacity,
            "{delta}"
        );
        // Drain, then the last (refused) knock gets through: its tag was forgotten.
        let drained = h.drain();
        assert_eq!(drained as u64, delta.get(Counter::Delivered));
        let last = frames_sent.last().unwrap();
        assert_eq!(h.kernel(last).verdict, Counter::Delivered);
    }
}

#[test]
fn maps_can_change_at_run_time() {
    let mut h = harness();
    // Knock ports.
    let frame = frames::ipv4_udp(0, 4000, &knock(1));
    assert_eq!(h.filter.test_run(&frame).unwrap(), XDP_PASS);
    h.filter.set_knock_ports(&[4000, KNOCK_PORT]).unwrap();
    assert_eq!(h.kernel(&frame).verdict, Counter::Delivered);
    h.filter.set_knock_ports(&[4000]).unwrap();
    assert_eq!(h.filter.test_run(&v4(&knock(2))).unwrap(), XDP_PASS);
    h.filter.set_knock_ports(&[KNOCK_PORT]).unwrap();
    // Time step: yesterday's knock is stale once the step moves on.
    let k = v4(&knock(3));
    h.set_time_step(STEP + 2);
    h.check(&k, Counter::StaleStep);
    h.set_time_step(STEP);
    // Users: removed, then back with another key.
    h.filter.set_users(&[]).unwrap();
    h.user.set_users(&[]);
    h.check(&k, Counter::UnknownUser);
    h.filter.set_users(&[(USER, [9; 16])]).unwrap();
    h.user.set_users(&[(USER, [9; 16])]);
    h.check(&k, Counter::BadTag);
    h.check(
        &v4(&frames::knock(&[9; 16], USER, STEP, 4)),
        Counter::Delivered,
    );
}
