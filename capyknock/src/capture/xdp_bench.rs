//! What the XDP program costs, measured from inside the kernel: the hidden `capyknock xdp-bench`
//! diagnostic that `cargo xtask bench-xdp` drives (docs/PERFORMANCE.md).
//!
//! It lives in this crate because it needs the embedded object and [`XdpFilter`], which xtask
//! cannot link (xtask builds before the eBPF toolchain is installed). It prints JSON; xtask
//! turns it into tables.
//!
//! - `cost`: every frame class (a TCP segment to another port, ... a valid knock) through the
//!   program with `BPF_PROG_TEST_RUN` and a repeat count, beside the empty program of the same
//!   object (the floor); the XDP program and its tc twin, each beside its own empty program.
//!   Two clocks: the kernel's average per test run, and the kernel's BPF run-time statistics
//!   (`run_time_ns / run_cnt`), enabled with `BPF_ENABLE_STATS` for as long as the
//!   measurement holds the returned descriptor, so nothing is left switched on if the process
//!   dies. Each class's verdict is checked: a wrong verdict is an error, not a figure.
//! - `hold`: loads one of the two programs, configures it like `cost` does, attaches it to an
//!   interface (with `--stats`, enables the statistics) and waits for a line (or end of file) on
//!   stdin; then prints the run statistics and verdict counters. The pass-through benchmark runs
//!   it in a network namespace while traffic flows. `--xdp-mode tc` attaches the tc twin.

use std::{
    io::{BufRead as _, Write as _},
    net::Ipv4Addr,
};

use aya::maps::{MapData, RingBuf};
use capyknock_common::{
    counters::Counter,
    maps::{Config, TagKey, UserId},
    ratelimit::RateLimit,
    wire::{DEFAULT_KNOCK_PORT, HEADER_LEN, Header, KNOCK_LEN, NONCE_LEN, TAG_OFFSET},
};
use serde_json::{Value, json};

use super::{
    CaptureConfig, XdpAttachMode,
    xdp::{Hook, RunStats, XdpError, XdpFilter},
};

/// The user the benchmark configures; `cargo xtask bench-xdp` builds its bad-tag flood for it.
pub const BENCH_USER: UserId = *b"capyknock-bench!";
/// That user's tag key.
pub const BENCH_TAG_KEY: TagKey = *b"bench-tag-key-00";
/// The time step the benchmark sets (fixed, so a flood built elsewhere matches it).
pub const BENCH_STEP: u64 = 59_000_123;

/// `capyknock xdp-bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: BenchMode,
}

#[derive(Debug, clap::Subcommand)]
enum BenchMode {
    /// Per-class cost with `BPF_PROG_TEST_RUN`, beside the empty program.
    Cost(CostArgs),
    /// Attach a program to an interface until stdin has a line or closes.
    Hold(HoldArgs),
    /// The knock port, user id and time step the other modes configure (for flood builders).
    Info,
}

#[derive(Debug, clap::Args)]
struct CostArgs {
    /// Runs per `BPF_PROG_TEST_RUN` call.
    #[arg(long, default_value_t = 1_000_000)]
    repeat: u32,
    /// Calls per class and program; the median is reported.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Distinct valid knocks (each runs once: a second run would be a duplicate).
    #[arg(long, default_value_t = 5000)]
    valid: u32,
}

#[derive(Debug, clap::Args)]
struct HoldArgs {
    /// Interface to attach to.
    #[arg(long)]
    iface: String,
    /// `capyknock` (the pre-filter) or `pass` (the empty program).
    #[arg(long, default_value = "capyknock")]
    program: String,
    /// `native`, `skb`, `tc` (the same pre-filter at tc ingress), or `auto` (as the daemon's
    /// `xdp_mode = "auto"`).
    #[arg(long, default_value = "native")]
    xdp_mode: String,
    /// Keep the kernel's BPF run-time statistics on while attached (their clock reads add
    /// about 25 ns to every packet, so throughput tests leave them off).
    #[arg(long)]
    stats: bool,
}

/// Why the benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Loading, configuring, attaching or running the program failed.
    #[error(transparent)]
    Xdp(#[from] XdpError),
    /// `BPF_ENABLE_STATS` was refused.
    #[error("cannot enable BPF run-time statistics")]
    Stats(#[source] aya::sys::SyscallError),
    /// A frame class did not get the verdict it is built for.
    #[error("frame class {class}: expected verdict {expected}, the program said {got}")]
    Verdict {
        /// The class.
        class: &'static str,
        /// What it is built for.
        expected: &'static str,
        /// What came out (counter names, or the XDP action).
        got: String,
    },
    /// A command-line value is not one of the choices.
    #[error("{0}")]
    Usage(String),
    /// Reading stdin or writing stdout failed.
    #[error("terminal I/O failed")]
    Io(#[source] std::io::Error),
}

/// Runs `capyknock xdp-bench`.
pub fn run(args: &BenchArgs) -> Result<(), BenchError> {
    match &args.mode {
        BenchMode::Cost(c) => cost(c),
        BenchMode::Hold(h) => hold(h),
        BenchMode::Info => {
            println!("{}", info());
            Ok(())
        }
    }
}

/// A frame class: what it is, the frame, and the verdict it must get.
struct Class {
    name: &'static str,
    what: &'static str,
    expected: Counter,
    frame: Vec<u8>,
}

fn classes() -> Vec<Class> {
    let port = DEFAULT_KNOCK_PORT;
    let mut junk = [0u8; KNOCK_LEN];
    fill(&mut junk, 7);
    let good = knock(&BENCH_TAG_KEY, BENCH_USER, 0);
    let mut unknown = BENCH_USER;
    unknown[15] ^= 0xff;
    let bad_tag = {
        let mut k = good;
        if let Some(b) = k.get_mut(TAG_OFFSET) {
            *b ^= 1;
        }
        k
    };
    vec![
        Class {
            name: "tcp_other_port",
            what: "a TCP segment to another port (IPv4)",
            expected: Counter::NotKnock,
            frame: ipv4(6, 22, &[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]),
        },
        Class {
            name: "tcp6_other_port",
            what: "a TCP segment to another port (IPv6)",
            expected: Counter::NotKnock,
            frame: ipv6(6, 22, &[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]),
        },
        Class {
            name: "udp_other_port",
            what: "a UDP datagram to another port",
            expected: Counter::NotKnock,
            frame: ipv4(17, 53, &[0x42; 64]),
        },
        Class {
            name: "wrong_size",
            what: "knock-port junk of the wrong size (100 bytes)",
            expected: Counter::WrongSize,
            frame: ipv4(17, port, &[0x42; 100]),
        },
        Class {
            name: "bad_magic",
            what: "256 bytes of junk (bad magic)",
            expected: Counter::BadHeader,
            frame: ipv4(17, port, &junk),
        },
        Class {
            name: "unknown_user",
            what: "right header, unknown user id",
            expected: Counter::UnknownUser,
            frame: ipv4(17, port, &knock(&BENCH_TAG_KEY, unknown, 0)),
        },
        Class {
            name: "bad_tag",
            what: "known user, current step, bad tag (SipHash of 56 bytes)",
            expected: Counter::BadTag,
            frame: ipv4(17, port, &bad_tag),
        },
        Class {
            name: "duplicate",
            what: "a valid knock delivered before",
            expected: Counter::Duplicate,
            frame: ipv4(17, port, &good),
        },
        Class {
            name: "valid",
            what: "a valid knock (each one new: delivered to the ring buffer)",
            expected: Counter::Delivered,
            frame: Vec::new(),
        },
    ]
}

/// The rate limits of the benchmark: the defaults, except for valid knocks, whose limits must
/// never refuse but still be consulted (a new knock per run would exceed the defaults).
fn bench_config(generous: bool) -> Config {
    if generous {
        Config {
            per_source: RateLimit::new(u32::MAX, u32::MAX),
            global: RateLimit::new(u32::MAX, u32::MAX),
            per_user: RateLimit::new(u32::MAX, u32::MAX),
        }
    } else {
        CaptureConfig::default().prefilter_config()
    }
}

fn configure(filter: &mut XdpFilter, config: &Config) -> Result<(), XdpError> {
    filter.set_knock_ports(&[DEFAULT_KNOCK_PORT])?;
    filter.set_users(&[(BENCH_USER, BENCH_TAG_KEY)])?;
    filter.set_time_step(BENCH_STEP)?;
    filter.set_config(config)
}

/// Median and minimum of the per-round figures of one program on one class.
#[derive(Debug, Default)]
struct Figures {
    test_run_ns: Vec<f64>,
    stats_ns: Vec<f64>,
}

impl Figures {
    fn to_json(&self) -> Value {
        json!({
            "test_run_ns": median(&self.test_run_ns),
            "test_run_min_ns": min(&self.test_run_ns),
            "stats_ns": median(&self.stats_ns),
            "stats_min_ns": min(&self.stats_ns),
            "test_run_rounds": self.test_run_ns,
            "stats_rounds": self.stats_ns,
        })
    }
}

fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return None;
    }
    let mid = n / 2;
    if n % 2 == 1 {
        s.get(mid).copied()
    } else {
        Some(f64::midpoint(
            s.get(mid - 1).copied()?,
            s.get(mid).copied()?,
        ))
    }
}

fn min(v: &[f64]) -> Option<f64> {
    v.iter().copied().min_by(f64::total_cmp)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "nanosecond figures far below 2^53"
)]
fn as_f64(n: u64) -> f64 {
    n as f64
}

/// Runs `frame` `repeat` times in one call, `rounds` times, and records the kernel's test-run
/// average, or, with `stats`, the run-time statistics (enabled only for those rounds: the
/// statistics' own clock reads would otherwise inflate the test-run figures).
fn measure(
    filter: &mut XdpFilter,
    hook: Hook,
    frame: &[u8],
    repeat: u32,
    rounds: u32,
    stats: bool,
    figures: &mut Figures,
) -> Result<u32, BenchError> {
    let mut action = 0;
    let _enabled = stats.then(enable_stats).transpose()?;
    for _ in 0..rounds {
        let before = filter.run_stats()?;
        let timing = filter.test_run_repeat(hook, frame, repeat)?;
        let delta = filter.run_stats()?.since(&before);
        action = timing.action;
        if stats {
            if let Some(ns) = delta.ns_per_run() {
                figures.stats_ns.push(ns);
            }
        } else {
            figures.test_run_ns.push(as_f64(timing.ns_per_run));
        }
    }
    Ok(action)
}

/// Turns the kernel's BPF run-time statistics on for as long as the descriptor lives.
fn enable_stats() -> Result<std::os::fd::OwnedFd, BenchError> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime).map_err(BenchError::Stats)
}

/// Whether `kernel.bpf_stats_enabled` is on (then the statistics also count the test runs).
fn stats_sysctl_on() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() != "0")
}

/// `valid` distinct valid knocks (nonces from `nonce` on) through `hook`'s program of `filter`,
/// one run each, draining the ring buffer `events` after each; the floor program gets the same
/// frames. Returns the program's per-run figures.
fn measure_valid(
    filter: &mut XdpFilter,
    floor: &mut XdpFilter,
    events: &mut RingBuf<MapData>,
    hook: Hook,
    nonce: &mut u32,
    valid: u32,
    rounds: u32,
) -> Result<(Figures, Figures, PrefilterDelta), BenchError> {
    let mut program = Figures::default();
    let mut empty = Figures::default();
    let before = filter.counters()?;
    let per_round = (valid / rounds.max(1)).max(1);
    for round in 0..rounds.saturating_mul(2) {
        // Even rounds time the test runs, odd ones read the statistics (see `measure`).
        let stats = round % 2 == 1;
        let _enabled = stats.then(enable_stats).transpose()?;
        let (mut sum, mut sum_floor) = (0u64, 0u64);
        let stats_before = filter.run_stats()?;
        let floor_stats_before = floor.run_stats()?;
        for _ in 0..per_round {
            let frame = ipv4(
                17,
                DEFAULT_KNOCK_PORT,
                &knock(&BENCH_TAG_KEY, BENCH_USER, *nonce),
            );
            *nonce = nonce.wrapping_add(1);
            sum = sum.saturating_add(filter.test_run_repeat(hook, &frame, 1)?.ns_per_run);
            sum_floor =
                sum_floor.saturating_add(floor.test_run_repeat(hook, &frame, 1)?.ns_per_run);
            while events.next().is_some() {}
        }
        if stats {
            if let Some(ns) = filter.run_stats()?.since(&stats_before).ns_per_run() {
                program.stats_ns.push(ns);
            }
            if let Some(ns) = floor.run_stats()?.since(&floor_stats_before).ns_per_run() {
                empty.stats_ns.push(ns);
            }
        } else {
            let n = as_f64(u64::from(per_round));
            program.test_run_ns.push(as_f64(sum) / n);
            empty.test_run_ns.push(as_f64(sum_floor) / n);
        }
    }
    let delta = PrefilterDelta(filter.counters()?.since(&before));
    Ok((program, empty, delta))
}

struct PrefilterDelta(super::PrefilterCounters);

impl PrefilterDelta {
    /// The only verdict counted, if exactly one was.
    fn only(&self) -> Result<Counter, String> {
        let changed: Vec<_> = Counter::ALL
            .iter()
            .copied()
            .filter(|c| self.0.get(*c) != 0)
            .collect();
        match changed.as_slice() {
            [one] => Ok(*one),
            _ => Err(self.0.to_string()),
        }
    }
}

fn check_verdict(
    class: &Class,
    hook: Hook,
    delta: &PrefilterDelta,
    action: u32,
) -> Result<(), BenchError> {
    let got = delta.only();
    if got != Ok(class.expected) || action != hook.returns(class.expected.passes()) {
        return Err(BenchError::Verdict {
            class: class.name,
            expected: class.expected.name(),
            got: match got {
                Ok(c) => format!("{} ({hook:?} program returned {action})", c.name()),
                Err(counters) => counters,
            },
        });
    }
    Ok(())
}

fn cost(args: &CostArgs) -> Result<(), BenchError> {
    let rounds = args.rounds.max(1);
    let repeat = args.repeat.max(1);
    let mut filter = XdpFilter::load(&[DEFAULT_KNOCK_PORT])?;
    configure(&mut filter, &bench_config(false))?;
    let mut events = filter.take_events()?;
    let mut floor = XdpFilter::load_pass()?;
    let sysctl_on = stats_sysctl_on();
    let mut nonce = 1u32;
    let mut out = Vec::new();
    for class in classes() {
        let mut entry = serde_json::Map::new();
        entry.insert("class".to_owned(), json!(class.name));
        entry.insert("what".to_owned(), json!(class.what));
        entry.insert("verdict".to_owned(), json!(class.expected.name()));
        entry.insert("frame_len".to_owned(), json!(class.frame.len()));
        for hook in [Hook::Xdp, Hook::Tc] {
            let (program, empty, delta, action) = if class.expected == Counter::Delivered {
                configure(&mut filter, &bench_config(true))?;
                let (p, e, d) = measure_valid(
                    &mut filter,
                    &mut floor,
                    &mut events,
                    hook,
                    &mut nonce,
                    args.valid,
                    rounds,
                )?;
                (p, e, d, hook.returns(false))
            } else {
                if class.expected == Counter::Duplicate {
                    // Deliver it once; every later run (of either program) is a duplicate.
                    filter.test_run_repeat(hook, &class.frame, 1)?;
                    while events.next().is_some() {}
                }
                // Warm up both (caches, branch predictors), then measure.
                filter.test_run_repeat(hook, &class.frame, repeat.min(10_000))?;
                floor.test_run_repeat(hook, &class.frame, repeat.min(10_000))?;
                let before = filter.counters()?;
                let mut program = Figures::default();
                let mut empty = Figures::default();
                let mut action = 0;
                for stats in [false, true] {
                    action = measure(
                        &mut filter,
                        hook,
                        &class.frame,
                        repeat,
                        rounds,
                        stats,
                        &mut program,
                    )?;
                    let (frame, figures) = (&class.frame, &mut empty);
                    measure(&mut floor, hook, frame, repeat, rounds, stats, figures)?;
                }
                let delta = PrefilterDelta(filter.counters()?.since(&before));
                (program, empty, delta, action)
            };
            check_verdict(&class, hook, &delta, action)?;
            let figures = json!({ "program": program.to_json(), "floor": empty.to_json() });
            entry.insert(hook_name(hook).to_owned(), figures);
        }
        out.push(Value::Object(entry));
    }
    let report = json!({
        "repeat": repeat,
        "rounds": rounds,
        "valid_knocks": args.valid,
        "stats_sysctl_was_on": sysctl_on,
        "classes": out,
    });
    println!("{report}");
    Ok(())
}

/// The key of `hook`'s figures in the JSON report.
const fn hook_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => "xdp",
        Hook::Tc => "tc",
    }
}

fn info() -> Value {
    let user_id = BENCH_USER.iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write as _;
        let _ = write!(hex, "{b:02x}");
        hex
    });
    json!({
        "knock_port": DEFAULT_KNOCK_PORT,
        "user_id_hex": user_id,
        "step": BENCH_STEP,
    })
}

fn hold(args: &HoldArgs) -> Result<(), BenchError> {
    let mode = match args.xdp_mode.as_str() {
        "auto" => None,
        other => Some(other.parse::<XdpAttachMode>().map_err(|_| {
            BenchError::Usage(format!(
                "--xdp-mode {other:?}: expected native, skb, tc or auto"
            ))
        })?),
    };
    let mut filter = match args.program.as_str() {
        "capyknock" => {
            let mut f = XdpFilter::load(&[DEFAULT_KNOCK_PORT])?;
            configure(&mut f, &bench_config(false))?;
            f
        }
        "pass" => XdpFilter::load_pass()?,
        other => {
            return Err(BenchError::Usage(format!(
                "--program {other:?}: expected capyknock or pass"
            )));
        }
    };
    let used = filter.attach(&args.iface, mode)?;
    let _stats = args.stats.then(enable_stats).transpose()?;
    let start: RunStats = filter.run_stats()?;
    let counters_before = filter.counters()?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "{}",
        json!({ "ready": true, "mode": used.to_string() })
    )
    .and_then(|()| stdout.flush())
    .map_err(BenchError::Io)?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(BenchError::Io)?;
    let stats = filter.run_stats()?.since(&start);
    let counters = filter.counters()?.since(&counters_before);
    let by_name: serde_json::Map<String, Value> = counters
        .iter()
        .map(|(name, n)| (name.to_owned(), json!(n)))
        .collect();
    writeln!(
        stdout,
        "{}",
        json!({
            "run_count": stats.run_count,
            "run_time_ns": stats.run_time_ns,
            "ns_per_run": stats.ns_per_run(),
            "counters": by_name,
        })
    )
    .map_err(BenchError::Io)?;
    filter.detach_all();
    Ok(())
}

/// A knock of `user` at [`BENCH_STEP`] with a valid tag under `key`; `nonce` makes it unique.
fn knock(key: &TagKey, user: UserId, nonce: u32) -> [u8; KNOCK_LEN] {
    let mut nonce_bytes = [0u8; NONCE_LEN];
    for (b, n) in nonce_bytes
        .iter_mut()
        .zip(nonce.to_le_bytes().iter().cycle())
    {
        *b = *n;
    }
    let header = Header::sealed(key, user, BENCH_STEP, nonce_bytes).to_bytes();
    let mut k = [0u8; KNOCK_LEN];
    fill(&mut k, nonce);
    for (dst, src) in k.iter_mut().zip(header.iter()).take(HEADER_LEN) {
        *dst = *src;
    }
    k
}

/// Deterministic filler bytes.
fn fill(buf: &mut [u8], seed: u32) {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    for b in buf {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x.to_le_bytes()[0];
    }
}

const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const DST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SRC_PORT: u16 = 40000;

fn ethernet(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Layer 4: UDP header + payload, or the TCP ports + sequence numbers + `rest`.
fn l4(protocol: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + payload.len());
    l4.extend_from_slice(&SRC_PORT.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if protocol == 17 {
        let len = u16::try_from(8 + payload.len()).unwrap_or(u16::MAX);
        l4.extend_from_slice(&len.to_be_bytes());
        l4.extend_from_slice(&[0, 0]);
    } else {
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0]);
    }
    l4.extend_from_slice(payload);
    l4
}

fn ipv4(protocol: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    let l4 = l4(protocol, dport, payload);
    let mut f = ethernet(0x0800);
    let total = u16::try_from(20 + l4.len()).unwrap_or(u16::MAX);
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]);
    f.extend_from_slice(&SRC.octets());
    f.extend_from_slice(&DST.octets());
    f.extend_from_slice(&l4);
    f
}

fn ipv6(protocol: u8, dport: u16, payload: &[u8]) -> Vec<u8> {
    let l4 = l4(protocol, dport, payload);
    let mut f = ethernet(0x86DD);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&u16::try_from(l4.len()).unwrap_or(u16::MAX).to_be_bytes());
    f.extend_from_slice(&[protocol, 64]);
    f.extend_from_slice(&SRC.to_ipv6_mapped().octets());
    f.extend_from_slice(&DST.to_ipv6_mapped().octets());
    f.extend_from_slice(&l4);
    f
}

#[cfg(test)]
mod tests {
    use capyknock_common::frame::parse_udp;

    use super::{super::userspace::UserPrefilter, *};

    #[test]
    fn frames_parse_as_built() {
        for class in classes() {
            if class.frame.is_empty() {
                continue;
            }
            let udp = parse_udp(class.frame.as_slice());
            if class.name.starts_with("tcp") {
                assert!(udp.is_none(), "{}", class.name);
            } else {
                let udp = udp.unwrap();
                assert!(udp.length_consistent, "{}", class.name);
                assert_eq!(udp.payload_offset + udp.payload_len, class.frame.len());
            }
        }
    }

    #[test]
    fn every_class_gets_its_verdict_in_userspace() {
        let mut p = UserPrefilter::new(&[DEFAULT_KNOCK_PORT], bench_config(false));
        p.set_users(&[(BENCH_USER, BENCH_TAG_KEY)]);
        p.set_time_step(BENCH_STEP);
        let mut ok = |_| true;
        for class in classes() {
            if class.expected == Counter::Delivered {
                for nonce in 1..4 {
                    let f = ipv4(
                        17,
                        DEFAULT_KNOCK_PORT,
                        &knock(&BENCH_TAG_KEY, BENCH_USER, nonce),
                    );
                    assert_eq!(p.check_frame(&f, None, 0, &mut ok), Counter::Delivered);
                }
                continue;
            }
            if class.expected == Counter::Duplicate {
                assert_eq!(
                    p.check_frame(&class.frame, None, 0, &mut ok),
                    Counter::Delivered
                );
            }
            assert_eq!(
                p.check_frame(&class.frame, None, 0, &mut ok),
                class.expected,
                "{}",
                class.name
            );
        }
    }

    #[test]
    fn median_and_min() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(min(&[3.0, 1.0]), Some(1.0));
    }
}
