//! Runs frames through the kernel pre-filter (`BPF_PROG_TEST_RUN`, no interface needed), as the
//! XDP program or as the tc program, and through the userspace pre-filter side by side, so
//! tests can demand that both give the same verdict and deliver the same bytes.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers: a disagreement or a failed BPF call fails the calling test"
)]

use aya::maps::{MapData, RingBuf};
/// Which of the object's two pre-filter programs the kernel side runs.
pub use capyknock::capture::xdp::Hook;
use capyknock::capture::{
    Candidate,
    userspace::UserPrefilter,
    xdp::{XdpFilter, parse_event},
};
use capyknock_common::{counters::Counter, maps::Config};

use crate::frames::KNOCK_PORT;

/// The user every harness knows.
pub const USER: [u8; 16] = *b"user-id-0123456\x01";
/// That user's tag key.
pub const KEY: [u8; 16] = *b"tag-key-abcdefg\x02";
/// A second user every harness knows (the victim in the key-holder tests).
pub const USER_B: [u8; 16] = *b"user-id-bbbbbbb\x03";
/// The second user's tag key.
pub const KEY_B: [u8; 16] = *b"tag-key-bbbbbbb\x04";
/// The current time step of every harness.
pub const STEP: u64 = 59_000_123;

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;

/// Whether `BPF_PROG_TEST_RUN` takes `frame` for a tc program: at least an Ethernet header, and
/// with the IPv4 or IPv6 EtherType at least that fixed IP header too (the kernel refuses
/// shorter ones with `EINVAL`; measured on Linux 6.18, every length from 14 to 69 bytes).
#[must_use]
pub fn tc_test_run_takes(frame: &[u8]) -> bool {
    let min = match frame.get(12..14) {
        Some([0x08, 0x00]) => 14 + 20,
        Some([0x86, 0xdd]) => 14 + 40,
        Some(_) => 14,
        None => return false,
    };
    frame.len() >= min
}

/// What one side made of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The verdict.
    pub verdict: Counter,
    /// The candidate handed on, if any.
    pub candidate: Option<Candidate>,
}

/// The kernel program and the userspace pre-filter, configured alike.
pub struct Harness {
    /// The loaded programs (the tc one loaded by its first run).
    pub filter: XdpFilter,
    /// The program [`Self::kernel`] runs.
    hook: Hook,
    events: RingBuf<MapData>,
    /// The userspace pre-filter.
    pub user: UserPrefilter,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("filter", &self.filter)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Harness {
    /// Loads the program with knock port [`KNOCK_PORT`], users [`USER`] / [`KEY`] and
    /// [`USER_B`] / [`KEY_B`], time step [`STEP`] and the given rate limits. Needs root.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self::with_hook(config, Hook::Xdp)
    }

    /// [`Self::new`], with the kernel side running `hook`'s program.
    #[must_use]
    pub fn with_hook(config: Config, hook: Hook) -> Self {
        crate::require_root();
        let users = [(USER, KEY), (USER_B, KEY_B)];
        let mut filter = XdpFilter::load(&[KNOCK_PORT]).expect("load the XDP program");
        filter.set_users(&users).unwrap();
        filter.set_time_step(STEP).unwrap();
        filter.set_config(&config).unwrap();
        let events = filter.take_events().unwrap();
        let mut user = UserPrefilter::new(&[KNOCK_PORT], config);
        user.set_users(&users);
        user.set_time_step(STEP);
        Self {
            filter,
            hook,
            events,
            user,
        }
    }

    /// Sets the time step on both sides.
    pub fn set_time_step(&mut self, step: u64) {
        self.filter.set_time_step(step).unwrap();
        self.user.set_time_step(step);
    }

    /// Runs `frame` through the kernel program: its verdict (the one counter that went up by
    /// one; all others must stay), the candidate it put in the ring buffer, and its action,
    /// which must be the pass value (`XDP_PASS`, tc `TCX_NEXT`) exactly for `not_knock`.
    pub fn kernel(&mut self, frame: &[u8]) -> Outcome {
        let before = self.filter.counters().unwrap();
        let action = self
            .filter
            .test_run_repeat(self.hook, frame, 1)
            .unwrap()
            .action;
        let delta = self.filter.counters().unwrap().since(&before);
        let changed: Vec<Counter> = Counter::ALL
            .iter()
            .copied()
            .filter(|c| delta.get(*c) != 0)
            .collect();
        assert!(
            changed.len() == 1 && delta.get(changed[0]) == 1,
            "counters changed by {delta} for {frame:02x?}"
        );
        let verdict = changed[0];
        assert_eq!(
            action,
            self.hook.returns(verdict.passes()),
            "{:?} return value for verdict {}",
            self.hook,
            verdict.name()
        );
        let candidate = self.events.next().map(|record| {
            parse_event(&record).unwrap_or_else(|| panic!("bad ring record {:?}", &*record))
        });
        assert!(
            self.events.next().is_none(),
            "more than one ring record for one frame"
        );
        Outcome { verdict, candidate }
    }

    /// Reads and discards every record in the ring buffer; returns how many there were.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        while self.events.next().is_some() {
            n += 1;
        }
        n
    }

    /// Runs `frame` through the userspace pre-filter.
    pub fn user(&mut self, frame: &[u8]) -> Outcome {
        let mut candidate = None;
        let now = self.user.now_ns();
        let verdict = self.user.check_frame(frame, None, now, &mut |c| {
            candidate = Some(c);
            true
        });
        Outcome { verdict, candidate }
    }

    /// Runs `frame` through both sides; they must agree (verdict, source, bytes). Returns the
    /// kernel's outcome. With the tc program, a frame the kernel's test run refuses
    /// ([`tc_test_run_takes`]) goes through userspace only.
    pub fn both(&mut self, frame: &[u8]) -> Outcome {
        if self.hook == Hook::Tc && !tc_test_run_takes(frame) {
            return self.user(frame);
        }
        let kernel = self.kernel(frame);
        let user = self.user(frame);
        assert_eq!(
            kernel.verdict,
            user.verdict,
            "kernel said {}, userspace {} for {frame:02x?}",
            kernel.verdict.name(),
            user.verdict.name()
        );
        match (&kernel.candidate, &user.candidate) {
            (Some(k), Some(u)) => {
                assert_eq!(k.src, u.src, "candidate source");
                assert_eq!(k.bytes, u.bytes, "candidate bytes");
            }
            (None, None) => {}
            (k, u) => panic!("kernel candidate {k:?}, userspace {u:?}"),
        }
        assert_eq!(
            kernel.candidate.is_some(),
            kernel.verdict == Counter::Delivered,
            "a candidate exactly when delivered"
        );
        kernel
    }

    /// [`Self::both`], and the verdict must be `expected`.
    pub fn check(&mut self, frame: &[u8], expected: Counter) -> Outcome {
        let outcome = self.both(frame);
        assert_eq!(
            outcome.verdict,
            expected,
            "expected {}, got {} for {frame:02x?}",
            expected.name(),
            outcome.verdict.name()
        );
        outcome
    }
}
