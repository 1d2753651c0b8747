//! `cargo xtask load`: floods the knock port with junk while real users knock, on the real
//! daemon, in throwaway namespaces, once per capture mode (xdp, pcap, udp), and reports what it
//! cost and whether the users got in. docs/PERFORMANCE.md explains the method and the figures.
//!
//! ```text
//!   [client] cli 10.98.0.2/16 + 10.98.x.y ---- 10.98.0.1 srv-c [server] srv-a 10.97.0.1 ---- 10.97.0.2 att [attacker]
//!            legit knocks, TCP probes              capyknock server             junk flood (sendmmsg)
//!                                                  nftables, tcp/22 service
//!   [sink] snk0 10.98.255.254/16 -- snk1 (up, answers nothing): `capyknock knock --save-packet`
//!          makes the legit packets here, and what it sends goes nowhere
//!   [attacker] cal0 10.96.0.2/24 -- cal1 [sink] (down): the calibration link, where floods
//!          cost the sender alone
//! ```
//!
//! [`run`] is the entry point. The [`plan`] settles the options; the [`topology`] (namespaces,
//! links, addresses, service, users, `nft monitor`) is built once. Per capture mode the
//! [`daemon`] starts once; then an idle run (legit knocks only), the `mix` junk at each offered
//! rate, and each single junk profile at the sender's maximum. Every [`run`](mod@run) samples
//! the daemon's counters, CPU and RSS, the `ksoftirqd` threads' CPU and the machine's softirq
//! time before and after ([`sample`]), floods ([`flood`], sent by the lab kit's `sendmmsg`
//! sender) and knocks ([`legit`], users and packets from [`users`], timed by [`prober`] and
//! [`watch`]) at the same time; its [`figures`] end up as one row of the [`report`] in
//! `target/load/<time>/` (`report.md`, `results.json`, the daemon logs). What sending costs
//! the sender alone is measured once per junk profile and rate on the calibration link, so
//! that the receive work the kernel does inside the sender's `sendmmsg` calls (a veth delivers
//! there) can be counted to the receiving side.
//!
//! Namespaces (`ckload-<pid>-*`), the daemon, `nft monitor` and the files are removed on every
//! exit, Ctrl-C included (the guards of `capyknock_testkit`). Only root can run it.

#![expect(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "statistics: packet and tick counts stay far below 2^52, and the floats cast back \
              to integers are non-negative rates and ranks"
)]

mod daemon;
mod figures;
mod flood;
mod legit;
mod plan;
mod prober;
mod report;
mod run;
mod sample;
mod topology;
mod users;
mod watch;

use std::{
    path::{Path, PathBuf},
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use capyknock_testkit::{files::target_dir, flood::Rate, netns, wait::install_signal_handlers};

use self::{
    flood::Junk,
    plan::Plan,
    report::{Report, RunResult, Settings},
    topology::{Lab, NS_PREFIX, TEMP_PREFIX},
};
use crate::cmd::{self, is_root};

#[expect(
    clippy::struct_excessive_bools,
    reason = "independent command-line switches, as clap derives them"
)]
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds of junk per run [default: 8; with --quick 3]. At most 25: each run's knocks
    /// are made before it starts and must still be fresh (their TOTP step current) when sent.
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..=25))]
    pub duration: Option<u64>,
    /// Offered junk rates of the sweep, packets/s (`10000`, `10k`) or `max` (as fast as the
    /// sender goes) [default: 10k,30k,100k,300k,max; with --quick 20k,max].
    #[arg(long, value_name = "PPS", num_args = 1.., value_delimiter = ',')]
    pub rate: Vec<Rate>,
    /// Capture modes to compare.
    #[arg(
        long,
        value_name = "MODES",
        value_delimiter = ',',
        default_value = "xdp,pcap,udp"
    )]
    pub capture: Vec<CaptureMode>,
    /// Junk profiles also run alone at the maximum rate (the sweep uses `mix`) [default:
    /// `random,magic,bad_tag,replay`; with --quick none].
    #[arg(long, value_name = "PROFILES", num_args = 1.., value_delimiter = ',')]
    pub junk: Vec<Junk>,
    /// Legit knocks per second during each run.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=40))]
    pub legit_rate: u32,
    /// Output folder [default: target/load/<UTC time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// About a minute: 3 s runs, rates 20k and max, no single-profile runs (CI smoke test).
    #[arg(long)]
    pub quick: bool,
    /// Use the debug build (figures not representative; for CI, which built it already).
    #[arg(long)]
    pub debug: bool,
    /// Do not build: use the existing binary.
    #[arg(long)]
    pub no_build: bool,
    /// Put the daemon's state directory (replay state, flushed to the disk behind the knocks)
    /// in a new folder under DIR instead of the temporary directory; e.g. /dev/shm to see what
    /// the disk costs.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Fleet mode (docs/FLEET.md): the daemon claims every knock in a three-member etcd
    /// cluster started in a namespace of its own; compare with a run without it to see what
    /// the claim costs end to end.
    #[arg(long)]
    pub fleet: bool,
    /// Set `realtime_priority = N` in the daemon's config (1-99): its knock path runs at
    /// `SCHED_FIFO` (docs/OPERATIONS.md). Left out: normal priority.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=99))]
    pub realtime_priority: Option<u8>,
    /// Set `xdp_mode` in the daemon's config (xdp capture): `auto` (the default: tc ingress on
    /// the benchmark's veths), `native`, `skb` or `tc`.
    #[arg(
        long,
        value_name = "MODE",
        default_value = "auto",
        value_parser = ["auto", "native", "skb", "tc"]
    )]
    pub xdp_mode: String,
}

impl Options {
    /// What `cargo xtask test` runs last: `--quick` on the debug build it has just made (the
    /// figures of a debug build mean little; the point is that the benchmark works).
    pub fn ci_smoke() -> Self {
        Self {
            duration: None,
            rate: Vec::new(),
            capture: vec![CaptureMode::Xdp, CaptureMode::Pcap, CaptureMode::Udp],
            junk: Vec::new(),
            legit_rate: 10,
            out: None,
            quick: true,
            debug: true,
            no_build: false,
            state_dir: None,
            fleet: false,
            realtime_priority: None,
            xdp_mode: "auto".to_owned(),
        }
    }
}

/// A capture mode of the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CaptureMode {
    /// XDP pre-filter in the kernel, candidates through a ring buffer.
    Xdp,
    /// libpcap, pre-filter in userspace.
    Pcap,
    /// A UDP socket, pre-filter in userspace.
    Udp,
}

impl CaptureMode {
    fn name(self) -> &'static str {
        match self {
            CaptureMode::Xdp => "xdp",
            CaptureMode::Pcap => "pcap",
            CaptureMode::Udp => "udp",
        }
    }
}

/// Runs the benchmark as `opts` say.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the load benchmark needs root (network namespaces, XDP, nftables): run \
             `sudo -E env PATH=\"$PATH\" cargo xtask load`"
        );
    }
    // The test tools (tcpdump, nftables, ...) come with `setup --for-tests`; a no-op when present.
    crate::setup::setup(&crate::setup::Options::tests())?;
    install_signal_handlers()?;
    netns::remove_stale(NS_PREFIX, TEMP_PREFIX);
    raise_fd_limit();
    let plan = Plan::new(opts)?;
    let started = Instant::now();
    let started_wall = SystemTime::now();
    // Before the build: the load average says what else the machine was doing.
    let machine = report::Machine::describe();
    let stamp = humantime::format_rfc3339_seconds(started_wall).to_string();
    let out = opts.out.clone().unwrap_or_else(|| {
        let name: String = stamp.chars().filter(char::is_ascii_digit).collect();
        target_dir().join("load").join(name)
    });
    let bin = cmd::capyknock_binary(!opts.debug, opts.no_build, |cargo| {
        println!("load: {cargo}");
    })?;
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;

    let runs = plan.runs();
    println!(
        "load: {} capture mode(s) x {} runs of {} s, {} legit knocks/s; output in {}",
        plan.modes.len(),
        runs.len(),
        plan.duration.as_secs(),
        plan.legit_rate,
        out.display()
    );
    let mut lab = Lab::new(&bin, &plan)?;
    let mut results = Vec::new();
    let outcome = (|| -> anyhow::Result<()> {
        for mode in &plan.modes {
            daemon::run_mode(&mut lab, &plan, *mode, &runs, &mut results)?;
        }
        Ok(())
    })();
    // Keep the daemon logs with the report.
    for mode in &plan.modes {
        let log = lab.dir.file(&format!("server-{}.log", mode.name()));
        let _ = std::fs::copy(&log, out.join(format!("server-{}.log", mode.name())));
    }
    drop(lab);
    if results.is_empty() {
        return outcome;
    }
    let ratios = report::ratios(&results);
    let goals = report::goals(&results, &ratios);
    let report = Report {
        started: stamp,
        command: std::iter::once("cargo xtask".to_owned())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        machine,
        settings: Settings {
            duration_secs: plan.duration.as_secs(),
            legit_per_sec: plan.legit_rate,
            quick: plan.quick,
            build: if opts.debug { "debug" } else { "release" }.to_owned(),
            users: plan.users_needed(),
            realtime_priority: plan.realtime_priority,
        },
        runs: results,
        ratios,
        goals,
    };
    let json = serde_json::to_string_pretty(&report).context("serialising the results")?;
    std::fs::write(out.join("results.json"), json + "\n")
        .with_context(|| format!("cannot write {}", out.join("results.json").display()))?;
    std::fs::write(out.join("report.md"), report::markdown(&report))
        .with_context(|| format!("cannot write {}", out.join("report.md").display()))?;
    println!("\n{}", report::summary(&report));
    println!(
        "report: {} (and results.json)",
        out.join("report.md").display()
    );
    println!("load: done in {:.0} s", started.elapsed().as_secs_f64());
    if outcome.is_err() {
        println!("(incomplete: the benchmark stopped early)");
    }
    outcome?;
    sanity(&report.runs, &out)
}

/// The benchmark's own smoke test (its goals are reported, never asserted): with no flood at
/// all, every legit knock must open, or the setup is broken rather than slow.
fn sanity(runs: &[RunResult], out: &Path) -> anyhow::Result<()> {
    let broken: Vec<String> = runs
        .iter()
        .filter(|r| r.junk.is_none() && (r.legit.sent == 0 || r.legit.honoured < r.legit.sent))
        .map(|r| {
            format!(
                "{}: {}/{} {}",
                r.capture,
                r.legit.honoured,
                r.legit.sent,
                r.legit.errors.join("; ")
            )
        })
        .collect();
    if !broken.is_empty() {
        bail!(
            "legit knocks failed with no flood at all ({}): the benchmark setup is broken; the \
             daemon logs are in {}",
            broken.join(", "),
            out.display()
        );
    }
    Ok(())
}

/// Lifts the soft limit on open files to the hard one: every pending knock keeps up to a
/// hundred TCP attempts open.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
