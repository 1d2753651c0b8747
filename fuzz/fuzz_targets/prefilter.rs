//! The knock pre-filter (`capyknock_common::prefilter`, the very function the XDP program runs)
//! through its userspace entry points, on any bytes as an Ethernet frame and as a UDP datagram:
//! no panic; a candidate exactly when the verdict says delivered, and then a valid header under
//! the user's key in the current time window; the same frame again is a duplicate.
#![no_main]

use capyknock::capture::userspace::UserPrefilter;
use capyknock_common::{
    counters::Counter,
    maps::Config,
    wire::{self, Header},
};
use libfuzzer_sys::fuzz_target;

/// The seeds in corpus/prefilter are built with these.
const PORT: u16 = 62201;
const USER: [u8; 16] = [0x11; 16];
const KEY: [u8; 16] = [0x22; 16];
const STEP: u64 = 1000;

fuzz_target!(|data: &[u8]| {
    let mut p = UserPrefilter::new(&[PORT], Config::default());
    p.set_users(&[(USER, KEY)]);
    p.set_time_step(STEP);
    let mut delivered = Vec::new();
    let verdict = p.check_frame(data, None, 0, &mut |c| {
        delivered.push(c);
        true
    });
    assert_eq!(verdict == Counter::Delivered, delivered.len() == 1);
    if let Some(c) = delivered.first() {
        let (header, _) = wire::split_knock(&c.bytes);
        let h = Header::parse(&header).expect("a delivered knock has a valid header");
        assert!(h.user_id == USER && h.tag_is_valid(&KEY));
        assert!(h.time_step.abs_diff(STEP) <= 1);
        let again = p.check_frame(data, None, 0, &mut |_| true);
        assert_eq!(again, Counter::Duplicate);
    }
    let src = "192.0.2.7:40000".parse().expect("a valid address");
    let _ = p.check_datagram(data, src, 0, &mut |_| true);
});
