//! Differential test: random and mutated frames through the kernel pre-filter
//! (`BPF_PROG_TEST_RUN`), as the XDP program and as the tc program (each with maps of its own),
//! and through the userspace pre-filter must get the same verdict, and delivered knocks the same
//! bytes. Needs root (loads BPF).
//!
//! Three generators: random bytes; valid knocks in every encapsulation with a few mutations
//! (byte writes, bit flips, truncation, insertion, deletion), mostly in the headers; and knocks
//! with random user, key and time step around the current one.

use std::{cell::RefCell, collections::BTreeMap};

use capyknock_common::{counters::Counter, maps::Config};
use capyknock_tests::{
    frames::{self, KNOCK_PORT, SRC_PORT, SRC_V4, SRC_V6},
    xdp_harness::{Harness, Hook, KEY, KEY_B, STEP, USER, USER_B},
};
use proptest::{
    prelude::*,
    test_runner::{Config as RunnerConfig, TestRunner},
};

/// Valid knock frames in every encapsulation the parser follows (and a few it does not).
fn bases(nonce: u32) -> Vec<Vec<u8>> {
    let k = frames::knock(&KEY, USER, STEP, nonce);
    let ext =
        |list: &[(u8, Vec<u8>)]| frames::ipv6_udp_full(SRC_V6, SRC_PORT, list, KNOCK_PORT, &k);
    vec![
        frames::ipv4_udp(0, KNOCK_PORT, &k),
        frames::ipv4_udp(12, KNOCK_PORT, &k),
        frames::ipv4_udp_full(SRC_V4, SRC_PORT, 0, 0x2000, KNOCK_PORT, &k),
        frames::ipv6_udp(KNOCK_PORT, &k),
        ext(&[
            (frames::HOPOPTS, frames::ext_options(0)),
            (frames::ROUTING, frames::ext_options(1)),
        ]),
        ext(&[(frames::FRAGMENT, frames::ext_fragment(0))]),
        ext(&[(frames::AH, frames::ext_ah(2))]),
        frames::vlan(frames::ipv4_udp(0, KNOCK_PORT, &k), &[0x8100]),
        frames::vlan(frames::ipv6_udp(KNOCK_PORT, &k), &[0x88a8, 0x8100]),
        frames::ipv4_udp(0, 53, &k),
        frames::ipv4_udp(0, KNOCK_PORT, &k[..255]),
        frames::ipv6_udp(KNOCK_PORT, &[k.as_slice(), &[0; 9]].concat()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Flip(usize, u8),
    Truncate(usize),
    Insert(usize, u8),
    Delete(usize),
}

/// Positions mostly in the first 130 bytes (all headers and the knock header), sometimes
/// anywhere.
fn position() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0usize..130, 1 => 0usize..400]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (position(), any::<u8>()).prop_map(|(p, v)| Mutation::Set(p, v)),
        4 => (position(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        1 => (14usize..400).prop_map(Mutation::Truncate),
        1 => (position(), any::<u8>()).prop_map(|(p, v)| Mutation::Insert(p, v)),
        1 => position().prop_map(Mutation::Delete),
    ]
}

fn apply(mut frame: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = frame.len();
        match *m {
            Mutation::Set(p, v) if p < len => frame[p] = v,
            Mutation::Flip(p, b) if p < len => frame[p] ^= 1 << b,
            Mutation::Truncate(n) => frame.truncate(n.max(14)),
            Mutation::Insert(p, v) if p <= len => frame.insert(p, v),
            Mutation::Delete(p) if p < len && len > 14 => {
                frame.remove(p);
            }
            _ => {}
        }
    }
    frame
}

fn mutated_frames() -> impl Strategy<Value = Vec<u8>> {
    (
        0usize..12,
        // Few nonces, so the same knock comes again (duplicates).
        0u32..40,
        prop::collection::vec(mutation(), 0..5),
    )
        .prop_map(|(which, nonce, mutations)| {
            let base = bases(nonce).swap_remove(which);
            apply(base, &mutations)
        })
}

fn random_frames() -> impl Strategy<Value = Vec<u8>> {
    let raw = (
        prop::collection::vec(any::<u8>(), 14..400),
        prop_oneof![Just(None), Just(Some(0x0800u16)), Just(Some(0x86dd))],
    )
        .prop_map(|(mut bytes, ethertype)| {
            if let Some(t) = ethertype {
                bytes[12..14].copy_from_slice(&t.to_be_bytes());
            }
            bytes
        });
    // Random payloads in well-formed UDP to the knock port, often exactly knock-sized.
    let payload_len = prop_oneof![Just(256usize), 0usize..400];
    let to_knock_port = (payload_len, any::<bool>(), any::<u64>()).prop_map(|(len, v6, seed)| {
        let payload: Vec<u8> = (0..len)
            .map(|i| (seed.rotate_left(i as u32 % 64) >> (i % 8)) as u8)
            .collect();
        if v6 {
            frames::ipv6_udp(KNOCK_PORT, &payload)
        } else {
            frames::ipv4_udp(0, KNOCK_PORT, &payload)
        }
    });
    prop_oneof![raw, to_knock_port]
}

fn header_variations() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just((USER, KEY)),
            Just((USER_B, KEY_B)),
            any::<([u8; 16], [u8; 16])>()
        ],
        prop_oneof![3 => Just(true), 1 => Just(false)],
        -3i64..=3,
        any::<u32>(),
        any::<bool>(),
    )
        .prop_map(|((user, user_key), right_key, offset, nonce, v6)| {
            let key = if right_key { user_key } else { [0x5a; 16] };
            let step = STEP.checked_add_signed(offset).unwrap();
            let k = frames::knock(&key, user, step, nonce);
            if v6 {
                frames::ipv6_udp(KNOCK_PORT, &k)
            } else {
                frames::ipv4_udp(0, KNOCK_PORT, &k)
            }
        })
}

/// Runs `cases` frames from `strategy` through both sides; returns how often each verdict came.
fn run(strategy: impl Strategy<Value = Vec<u8>>, cases: u32) -> BTreeMap<&'static str, u32> {
    run_with(strategy, cases, Config::default())
}

fn run_with(
    strategy: impl Strategy<Value = Vec<u8>>,
    cases: u32,
    config: Config,
) -> BTreeMap<&'static str, u32> {
    let xdp = RefCell::new(Harness::with_hook(config, Hook::Xdp));
    let tc = RefCell::new(Harness::with_hook(config, Hook::Tc));
    let seen = RefCell::new(BTreeMap::new());
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&strategy, |frame| {
        let verdict = xdp.borrow_mut().both(&frame).verdict;
        let tc_verdict = tc.borrow_mut().both(&frame).verdict;
        prop_assert_eq!(verdict, tc_verdict, "XDP and tc disagree on {:02x?}", frame);
        *seen.borrow_mut().entry(verdict.name()).or_insert(0) += 1;
        Ok(())
    });
    if let Err(err) = result {
        panic!("kernel and userspace disagree: {err}");
    }
    seen.into_inner()
}

#[test]
fn random_frames_agree() {
    let seen = run(random_frames(), 3000);
    println!("random: {seen:?}");
    for c in [Counter::NotKnock, Counter::WrongSize, Counter::BadHeader] {
        assert!(
            seen.contains_key(c.name()),
            "never saw {}: {seen:?}",
            c.name()
        );
    }
}

#[test]
fn mutated_knocks_agree() {
    let seen = run(mutated_frames(), 4000);
    println!("mutated: {seen:?}");
    // The generator must reach deep into the pre-filter, not just bounce off the parser.
    for c in [
        Counter::NotKnock,
        Counter::Malformed,
        Counter::WrongSize,
        Counter::BadHeader,
        Counter::UnknownUser,
        Counter::StaleStep,
        Counter::BadTag,
        Counter::Duplicate,
        Counter::Delivered,
    ] {
        assert!(
            seen.contains_key(c.name()),
            "never saw {}: {seen:?}",
            c.name()
        );
    }
}

#[test]
fn header_variations_agree() {
    let seen = run(header_variations(), 2000);
    println!("headers: {seen:?}");
    for c in [
        Counter::UnknownUser,
        Counter::StaleStep,
        Counter::BadTag,
        Counter::Delivered,
    ] {
        assert!(
            seen.contains_key(c.name()),
            "never saw {}: {seen:?}",
            c.name()
        );
    }
}

/// Valid knocks of two users from a few sources under tight limits that never refill while the
/// test runs (a token an hour): every rate-limit verdict comes up, and both sides agree on each.
#[test]
fn rate_limits_agree() {
    let hour = 3_600_000_000_000u64;
    let hourly = |burst: u64| capyknock_common::ratelimit::RateLimit {
        interval_ns: hour,
        tolerance_ns: hour * (burst - 1),
    };
    let config = Config {
        per_user: hourly(40),
        per_source: hourly(2),
        global: hourly(45),
    };
    let knocks = (any::<bool>(), 0u8..8, any::<u32>(), any::<bool>()).prop_map(
        |(second_user, host, nonce, v6)| {
            let (user, key) = if second_user {
                (USER_B, KEY_B)
            } else {
                (USER, KEY)
            };
            let k = frames::knock(&key, user, STEP, nonce);
            if v6 {
                let mut src = SRC_V6.octets();
                src[7] = host;
                frames::ipv6_udp_full(src.into(), SRC_PORT, &[], KNOCK_PORT, &k)
            } else {
                let src = std::net::Ipv4Addr::new(198, 51, 100, host);
                frames::ipv4_udp_full(src, SRC_PORT, 0, 0, KNOCK_PORT, &k)
            }
        },
    );
    let seen = run_with(knocks, 400, config);
    println!("rate limits: {seen:?}");
    for c in [
        Counter::Delivered,
        Counter::RateLimitedUser,
        Counter::RateLimitedSource,
        Counter::RateLimitedGlobal,
    ] {
        assert!(
            seen.contains_key(c.name()),
            "never saw {}: {seen:?}",
            c.name()
        );
    }
}
