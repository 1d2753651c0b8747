//! The XDP program's verdicts on crafted frames, through BPF_PROG_TEST_RUN (no interface
//! needed), compared with the userspace copy of the same parser. Needs root (loads BPF).
#![expect(clippy::unwrap_used, reason = "test code")]

use capyknock::capture::xdp::XdpFilter;
use capyknock_common::{counters::Counter, frame::classify};
use capyknock_tests::{frames, require_root};

const KNOCK: u16 = 62201;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

fn filter() -> XdpFilter {
    require_root();
    XdpFilter::load(&[KNOCK]).unwrap()
}

/// Runs `frame` through the kernel program and the userspace parser; both must agree with
/// `expected`, and the kernel counter for `expected` must go up by exactly one.
fn check(filter: &mut XdpFilter, frame: &[u8], expected: Counter) {
    let before = filter.counters().unwrap();
    let action = filter.test_run(frame).unwrap();
    let after = filter.counters().unwrap();
    let want = match expected {
        Counter::KnockDropped => XDP_DROP,
        Counter::NotKnock => XDP_PASS,
    };
    assert_eq!(action, want, "kernel action for {frame:02x?}");
    assert_eq!(
        classify(frame, |p| p == KNOCK),
        expected,
        "userspace verdict"
    );
    for c in Counter::ALL {
        let delta = after.get(c) - before.get(c);
        assert_eq!(
            delta,
            u64::from(c == expected),
            "counter {} for {frame:02x?}",
            c.name()
        );
    }
}

#[test]
fn knocks_are_dropped_and_other_traffic_passes() {
    let mut f = filter();
    check(
        &mut f,
        &frames::ipv4_udp(0, KNOCK, b"knock"),
        Counter::KnockDropped,
    );
    check(
        &mut f,
        &frames::ipv4_udp(40, KNOCK, b"with options"),
        Counter::KnockDropped,
    );
    check(
        &mut f,
        &frames::ipv6_udp(KNOCK, b"knock6"),
        Counter::KnockDropped,
    );
    check(&mut f, &frames::ipv4_udp(0, 53, b"dns"), Counter::NotKnock);
    check(&mut f, &frames::ipv6_udp(53, b"dns6"), Counter::NotKnock);
    check(&mut f, &frames::ipv4_tcp(KNOCK), Counter::NotKnock);
    check(&mut f, &frames::ipv4_tcp(22), Counter::NotKnock);
    check(&mut f, &frames::arp(), Counter::NotKnock);
}

#[test]
fn truncated_frames_never_abort() {
    let mut f = filter();
    for full in [
        frames::ipv4_udp(8, KNOCK, b"x"),
        frames::ipv6_udp(KNOCK, b"y"),
    ] {
        // BPF_PROG_TEST_RUN needs at least an Ethernet header.
        for len in 14..full.len() {
            let frame = &full[..len];
            let expected = classify(frame, |p| p == KNOCK);
            check(&mut f, frame, expected);
        }
    }
}

#[test]
fn knock_ports_can_change() {
    let mut f = filter();
    let frame = frames::ipv4_udp(0, 4000, b"k");
    assert_eq!(f.test_run(&frame).unwrap(), XDP_PASS);
    f.set_knock_ports(&[4000]).unwrap();
    assert_eq!(f.test_run(&frame).unwrap(), XDP_DROP);
    assert_eq!(
        f.test_run(&frames::ipv4_udp(0, KNOCK, b"k")).unwrap(),
        XDP_PASS
    );
}
