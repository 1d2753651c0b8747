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
//! Per capture mode the daemon starts once; then an idle run (legit knocks only), the `mix`
//! junk at each offered rate, and each single junk profile at the sender's maximum. Every run
//! samples the daemon's counters, CPU and RSS, the `ksoftirqd` threads' CPU and the machine's
//! softirq time before and after ([`sample`]), floods ([`flood`]) and knocks ([`legit`]) at the
//! same time, and ends up as one row of the report ([`report`]) in `target/load/<time>/`
//! (`report.md`, `results.json`, the daemon logs). What sending costs the sender alone is
//! measured once per junk profile and rate on the calibration link, so that the receive work
//! the kernel does inside the sender's `sendmmsg` calls (a veth delivers there) can be counted
//! to the receiving side.
//!
//! Namespaces (`ckload-<pid>-*`), the daemon, `nft monitor` and the files are removed on every
//! exit, Ctrl-C included (see [`crate::topology`]). Only root can run it.

#![expect(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "statistics: packet and tick counts stay far below 2^52, and the floats cast back \
              to integers are non-negative rates and ranks"
)]

mod flood;
mod legit;
mod report;
mod sample;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};

use self::{
    flood::{Flood, Junk, Material, Rate},
    legit::{Addresses, KnockResult, NftWatch, Target, UserSetup, Users},
    report::{Latency, LegitSummary, Report, RunResult, Settings},
    sample::Sample,
};
use crate::{
    cmd::{self, command, is_root, workspace_root},
    topology::{
        Daemon, NetNs, TcpService, TempDir, check_interrupted, install_signal_handlers,
        remove_stale_namespaces, sleep, veth,
    },
};

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
    /// Put the daemon's state directory (replay state, fsync'd before every grant) in a new
    /// folder under DIR instead of the temporary directory; e.g. /dev/shm to see what the
    /// disk's fsync costs.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
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

/// UDP port the daemon watches for knocks.
const KNOCK_PORT: u16 = 62201;
/// The protected service's port.
const SERVICE_PORT: u16 = 22;
const BANNER: &str = "SSH-2.0-capyknock-load";
/// How long each grant lasts: short, so client addresses can be used again.
const ACCESS: &str = "3s";
/// The second octet of the client side's /16 (10.98.0.0/16).
const CLIENT_NET: u8 = 98;
const SERVER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, CLIENT_NET, 0, 1);
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, CLIENT_NET, 0, 2);
const SINK_V4: Ipv4Addr = Ipv4Addr::new(10, CLIENT_NET, 255, 254);
const SERVER_ATTACKER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
const ATTACKER_V4: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);
/// The calibration link: the attacker's `cal0` (10.96.0.2/24) to a peer that stays down.
const CALIBRATION_V4: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);
const CALIBRATION_PEER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
/// How long each calibration flood runs.
const CALIBRATION: Duration = Duration::from_secs(2);
/// Flood time before the first legit knock, so it meets a flood in full swing.
const WARMUP: Duration = Duration::from_millis(300);
/// Pause between runs, so one run's backlog is not measured in the next.
const SETTLE: Duration = Duration::from_secs(1);
/// Most junk packets one run sends (a bound on top of the time limit).
const MAX_PACKETS_PER_RUN: u64 = 50_000_000;
/// Namespace and temporary directory prefixes.
const NS_PREFIX: &str = "ckload-";
const TEMP_PREFIX: &str = "capyknock-load-";

/// The settled plan.
#[derive(Debug, Clone)]
struct Plan {
    duration: Duration,
    rates: Vec<Rate>,
    modes: Vec<CaptureMode>,
    singles: Vec<Junk>,
    legit_rate: u32,
    quick: bool,
    state_parent: Option<PathBuf>,
}

impl Plan {
    fn new(opts: &Options) -> anyhow::Result<Self> {
        let quick = opts.quick;
        let duration = Duration::from_secs(opts.duration.unwrap_or(if quick { 3 } else { 8 }));
        let mut rates = if opts.rate.is_empty() {
            if quick {
                vec![Rate::Pps(20_000), Rate::Max]
            } else {
                [10_000, 30_000, 100_000, 300_000]
                    .map(Rate::Pps)
                    .into_iter()
                    .chain([Rate::Max])
                    .collect()
            }
        } else {
            opts.rate.clone()
        };
        rates.sort();
        rates.dedup();
        let singles: Vec<Junk> = if !opts.junk.is_empty() {
            opts.junk
                .iter()
                .copied()
                .filter(|j| *j != Junk::Mix)
                .collect()
        } else if quick {
            Vec::new()
        } else {
            vec![Junk::Random, Junk::Magic, Junk::BadTag, Junk::Replay]
        };
        let mut modes = opts.capture.clone();
        modes.dedup();
        if modes.is_empty() {
            bail!("--capture names no mode");
        }
        Ok(Self {
            duration,
            rates,
            modes,
            singles,
            legit_rate: opts.legit_rate,
            quick,
            state_parent: opts.state_dir.clone(),
        })
    }

    /// The runs of one mode: idle, the mix sweep, the single profiles at max.
    fn runs(&self) -> Vec<Option<(Junk, Rate)>> {
        std::iter::once(None)
            .chain(self.rates.iter().map(|r| Some((Junk::Mix, *r))))
            .chain(self.singles.iter().map(|j| Some((*j, Rate::Max))))
            .collect()
    }

    /// Legit knocks per run.
    fn knocks_per_run(&self) -> usize {
        let secs = self.duration.saturating_sub(WARMUP).as_secs_f64();
        ((secs * f64::from(self.legit_rate)).floor() as usize).max(1)
    }
}

pub fn load(opts: &Options) -> anyhow::Result<()> {
    if !is_root() {
        bail!(
            "the load benchmark needs root (network namespaces, XDP, nftables): run \
             `sudo -E env PATH=\"$PATH\" cargo xtask load`"
        );
    }
    install_signal_handlers();
    remove_stale_namespaces(NS_PREFIX, TEMP_PREFIX);
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
    let bin = build(opts)?;
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
            run_mode(&mut lab, &plan, *mode, &runs, &mut results)?;
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
            users: users_needed(&plan),
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
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim);
        }
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// Builds capyknock (release unless --debug) and returns the binary.
fn build(opts: &Options) -> anyhow::Result<PathBuf> {
    let profile = if opts.debug { "debug" } else { "release" };
    let bin = target_dir().join(profile).join("capyknock");
    if !opts.no_build {
        let mut args = vec!["build", "--quiet", "-p", "capyknock"];
        if !opts.debug {
            args.push("--release");
        }
        println!("load: cargo {}", args.join(" "));
        cmd::run(command("cargo", &args).stdout(Stdio::null()))?;
    }
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (leave out --no-build)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Users to keygen: enough for a TOTP step of continuous knocking without waits, and at least
/// one run's worth (its knocks and the captured one).
fn users_needed(plan: &Plan) -> usize {
    (plan.legit_rate as usize * 30).clamp(plan.knocks_per_run() + 1, 4000)
}

/// Everything the runs share. Fields drop in order: nft monitor, service, namespaces, files.
struct Lab {
    bin: PathBuf,
    nft: NftWatch,
    _service: TcpService,
    server: NetNs,
    client: NetNs,
    attacker: NetNs,
    sink: NetNs,
    addrs: Addresses,
    users: Users,
    ksoftirqd: Vec<u32>,
    /// What sending costs the sender alone, ns per packet, by junk profile and rate.
    sender_alone: BTreeMap<(Junk, Rate), f64>,
    _state: StateDir,
    dir: TempDir,
}

/// The daemon's state directory, removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new(path: PathBuf) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Lab {
    fn new(bin: &Path, plan: &Plan) -> anyhow::Result<Self> {
        let dir = TempDir::new(TEMP_PREFIX)?;
        let tag = std::process::id();
        let ns = |role: &str| NetNs::new(&format!("{NS_PREFIX}{tag}-{role}"));
        let server = ns("server")?;
        let client = ns("client")?;
        let attacker = ns("attacker")?;
        let sink = ns("sink")?;
        wire(&server, &client, &attacker, &sink)?;
        check_interrupted()?;

        let pool = (plan.legit_rate as usize * 20).clamp(plan.knocks_per_run() + 1, 10_000);
        let addrs = Addresses::add(&client, "cli", CLIENT_NET, pool)?;
        pin_neighbours(&server, &client, &addrs)?;
        let service = TcpService::start(&server, SERVICE_PORT, BANNER)?;

        let count = users_needed(plan);
        println!("load: keygen {count} machine users (--totp-mode derived, --access {ACCESS})");
        let t = Instant::now();
        let state = match &plan.state_parent {
            Some(parent) => StateDir::new(parent.join(format!("{TEMP_PREFIX}state-{tag}")))?,
            None => StateDir::new(dir.file("state"))?,
        };
        let header = server_header(&dir, &state.0);
        let users = Users::create(&UserSetup {
            bin,
            dir: &dir.path,
            server_header: &header,
            server_config: &dir.file("server.toml"),
            client_config: &dir.file("client.toml"),
            server_addr: SERVER_CLIENT_SIDE,
            service_port: SERVICE_PORT,
            access: ACCESS,
            count,
        })?;
        println!(
            "load: {} users in {:.1} s; {pool} client addresses",
            users.len(),
            t.elapsed().as_secs_f64()
        );
        let nft = NftWatch::start(&server)?;
        Ok(Self {
            bin: bin.to_owned(),
            nft,
            _service: service,
            server,
            client,
            attacker,
            sink,
            addrs,
            users,
            ksoftirqd: sample::ksoftirqd_pids(),
            sender_alone: BTreeMap::new(),
            _state: state,
            dir,
        })
    }

    fn socket(&self) -> PathBuf {
        self.dir.file("control.sock")
    }

    /// What sending `pool` at `rate` costs the sending thread alone, ns per packet: the same
    /// flood into the calibration link, whose peer is down (the packets die at the sender's
    /// own queue, so no receive work is done anywhere). Measured once per profile and rate.
    fn sender_alone(&mut self, key: (Junk, Rate), pool: &[Vec<u8>]) -> anyhow::Result<f64> {
        if let Some(ns) = self.sender_alone.get(&key) {
            return Ok(*ns);
        }
        let secs = CALIBRATION.as_secs_f64();
        let max_packets = match key.1 {
            Rate::Pps(pps) => (pps as f64 * secs) as u64,
            Rate::Max => MAX_PACKETS_PER_RUN,
        };
        let flood = Flood::start(
            &self.attacker,
            SocketAddrV4::new(CALIBRATION_PEER, KNOCK_PORT),
            pool.to_vec(),
            key.1,
            secs,
            max_packets,
        )?;
        sleep(CALIBRATION)?;
        let stats = flood.stop()?;
        if stats.sent == 0 {
            bail!(
                "the calibration flood sent nothing ({} errors)",
                stats.send_errors
            );
        }
        let ns = stats.cpu_secs * 1e9 / stats.sent as f64;
        self.sender_alone.insert(key, ns);
        Ok(ns)
    }
}

/// Links the namespaces (the diagram in the module doc), plus the sink's and the calibration
/// link's dead ends.
fn wire(server: &NetNs, client: &NetNs, attacker: &NetNs, sink: &NetNs) -> anyhow::Result<()> {
    veth(
        (server, "srv-c", SERVER_CLIENT_SIDE),
        (client, "cli", CLIENT_V4),
        16,
    )?;
    veth(
        (server, "srv-a", SERVER_ATTACKER_SIDE),
        (attacker, "att", ATTACKER_V4),
        24,
    )?;
    // The sink: its route to 10.98.0.0/16 leads to a veth peer that answers no ARP.
    cmd::run(Command::new("ip").args([
        "-n",
        sink.name(),
        "link",
        "add",
        "snk0",
        "type",
        "veth",
        "peer",
        "name",
        "snk1",
    ]))?;
    sink.ip(&["addr", "add", &format!("{SINK_V4}/16"), "dev", "snk0"])?;
    sink.ip(&["link", "set", "snk0", "up"])?;
    sink.ip(&["link", "set", "snk1", "up"])?;
    // The calibration link: cal0 in the attacker namespace, its peer cal1 (in the sink)
    // down, a fixed neighbour so nothing waits for ARP. What goes there is dropped at
    // cal0's own queue.
    cmd::run(Command::new("ip").args([
        "link",
        "add",
        "cal0",
        "netns",
        attacker.name(),
        "type",
        "veth",
        "peer",
        "name",
        "cal1",
        "netns",
        sink.name(),
    ]))?;
    attacker.ip(&[
        "addr",
        "add",
        &format!("{CALIBRATION_V4}/24"),
        "dev",
        "cal0",
    ])?;
    attacker.ip(&["link", "set", "cal0", "up"])?;
    attacker.ip(&[
        "neigh",
        "replace",
        &CALIBRATION_PEER.to_string(),
        "lladdr",
        "02:00:00:00:00:01",
        "dev",
        "cal0",
        "nud",
        "permanent",
    ])?;
    Ok(())
}

/// The server config before the users; keygen appends them.
fn server_header(dir: &TempDir, state: &Path) -> String {
    let d = dir.path.display();
    let state = state.display();
    format!(
        "# capyknock load benchmark server (cargo xtask load): everything lives in {d}.\n\
         [server]\n\
         knock_ports = [{KNOCK_PORT}]\n\
         interfaces = [\"srv-c\", \"srv-a\"]\n\
         capture = \"xdp\"\n\
         state_dir = \"{state}\"\n\
         control_socket = \"{d}/control.sock\"\n\
         default_access = \"{ACCESS}\"\n\
         \n\
         [firewall]\n\
         backend = \"nftables\"\n"
    )
}

/// Writes the client's MAC for every client address into the server's neighbour table, so the
/// first reply to a fresh address does not wait for ARP (a real server talks to its gateway,
/// whose address it knows already).
fn pin_neighbours(server: &NetNs, client: &NetNs, addrs: &Addresses) -> anyhow::Result<()> {
    let link =
        cmd::output(Command::new("ip").args(["-n", client.name(), "-o", "link", "show", "cli"]))
            .context("cannot read the client's link")?;
    let mac = link
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .context("the client's link has no MAC address")?
        .to_owned();
    let mut lines = String::new();
    for a in addrs.all().iter().chain(std::iter::once(&CLIENT_V4)) {
        let _ = writeln!(
            lines,
            "neigh replace {a} lladdr {mac} dev srv-c nud permanent"
        );
    }
    server.ip_batch(&lines)
}

/// Starts the daemon in `mode` and does every run.
fn run_mode(
    lab: &mut Lab,
    plan: &Plan,
    mode: CaptureMode,
    runs: &[Option<(Junk, Rate)>],
    results: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    println!("\nload: capyknock server --capture {}", mode.name());
    let log = lab.dir.file(&format!("server-{}.log", mode.name()));
    let mut daemon = Daemon::start(
        &lab.bin,
        &lab.server,
        &lab.dir.file("server.toml"),
        &log,
        &["--capture", mode.name(), "--firewall", "nftables"],
    )?;
    daemon.wait_ready(&lab.bin, &lab.socket())?;
    let pid = daemon.pid().context("the daemon is not running")?;
    let status = sample::Status::read(&lab.bin, &lab.socket())?;
    if status.capture.mode != mode.name() {
        bail!(
            "asked for --capture {} but the daemon runs {}",
            mode.name(),
            status.capture.mode
        );
    }
    sleep(SETTLE)?;
    let mut idle: Option<Rates> = None;
    for run in runs {
        let r = run_one(lab, plan, mode, *run, pid, &log, idle.as_ref())?;
        if run.is_none() {
            idle = Some(r.1);
        }
        print_row(&r.0);
        results.push(r.0);
        sleep(SETTLE)?;
    }
    daemon.stop();
    Ok(())
}

fn print_row(r: &RunResult) {
    println!(
        "  {:<5} {:<14} achieved {:>8.0} pps  legit {:>3}/{:<3} fw p99 {:>6} ms  tcp p99 {:>6} \
         ms  daemon {:>5.2}%  ksoftirqd {:>5.1}%  ns/junk {:>6}",
        r.capture,
        r.label(),
        r.achieved_pps,
        r.legit.honoured,
        r.legit.sent,
        r.legit
            .firewall
            .map_or("-".into(), |l| format!("{:.2}", l.p99_ms)),
        r.legit
            .tcp
            .map_or("-".into(), |l| format!("{:.2}", l.p99_ms)),
        r.daemon_cpu_pct,
        r.ksoftirqd_cpu_pct,
        r.ns_per_junk.map_or("-".into(), |v| format!("{v:.0}")),
    );
}

/// CPU seconds per second of a run, to take an idle baseline off the flood runs.
#[derive(Debug, Clone, Copy)]
struct Rates {
    daemon: f64,
    ksoftirqd: f64,
    softirq: f64,
}

/// One run.
fn run_one(
    lab: &mut Lab,
    plan: &Plan,
    mode: CaptureMode,
    run: Option<(Junk, Rate)>,
    pid: u32,
    log: &Path,
    idle: Option<&Rates>,
) -> anyhow::Result<(RunResult, Rates)> {
    check_interrupted()?;
    let target = Target {
        knock: SocketAddrV4::new(SERVER_CLIENT_SIDE, KNOCK_PORT),
        service: SocketAddrV4::new(SERVER_CLIENT_SIDE, SERVICE_PORT),
    };
    // The legit packets, made before anything is measured; with a flood, one more: the knock
    // the attacker captured (its owner uses it first, so the attacker's copies are replays).
    let extra = usize::from(run.is_some());
    let profiles = lab.users.take(plan.knocks_per_run() + extra)?;
    let mut packets = legit::generate(
        &lab.bin,
        &lab.sink,
        &lab.dir.file("client.toml"),
        &lab.dir.path,
        &profiles,
    )?;
    let captured = if extra > 0 { packets.pop() } else { None };
    let knocks: Vec<(Ipv4Addr, Vec<u8>)> =
        packets.into_iter().map(|p| (lab.addrs.next(), p)).collect();

    let pool = match (run, captured) {
        (Some((junk, _)), Some(captured)) => {
            let owner = captured.clone();
            lab.client.run(move || -> anyhow::Result<()> {
                let s = UdpSocket::bind((CLIENT_V4, 0))?;
                s.send_to(&owner, target.knock)?;
                Ok(())
            })??;
            sleep(Duration::from_millis(200))?;
            Some(flood::pool(
                junk,
                &Material {
                    captured,
                    time_step: legit::current_step(),
                },
            )?)
        }
        _ => None,
    };

    let sender_alone = match (run, &pool) {
        (Some(key), Some(pool)) => Some(lab.sender_alone(key, pool)?),
        _ => None,
    };

    let before = Sample::take(&lab.bin, &lab.socket(), pid, &lab.ksoftirqd)?;
    let flood = match (run, pool) {
        (Some((_, rate)), Some(pool)) => {
            let max_secs =
                (plan.duration + legit::KNOCK_TIMEOUT + Duration::from_secs(2)).as_secs_f64();
            let max_packets = match rate {
                Rate::Pps(pps) => (pps as f64 * max_secs) as u64,
                Rate::Max => MAX_PACKETS_PER_RUN,
            };
            Some(Flood::start(
                &lab.attacker,
                SocketAddrV4::new(SERVER_ATTACKER_SIDE, KNOCK_PORT),
                pool,
                rate,
                max_secs,
                max_packets,
            )?)
        }
        _ => None,
    };
    let knocked = (|| {
        sleep(WARMUP)?;
        legit::run_knocks(
            &lab.client,
            target,
            knocks,
            Duration::from_secs_f64(1.0 / f64::from(plan.legit_rate)),
        )
    })();
    let stats = match flood {
        Some(f) => f.stop()?,
        None => flood::FloodStats::default(),
    };
    let after = Sample::take(&lab.bin, &lab.socket(), pid, &lab.ksoftirqd)?;
    let knocked = knocked?;
    let legit = summarise(&knocked, &lab.nft, log)?;
    let flood = FloodCost {
        stats,
        sender_alone_ns: sender_alone,
    };
    Ok(compute(mode, run, (&before, &after), &flood, legit, idle))
}

/// The legit knocks' figures.
fn summarise(knocks: &[KnockResult], nft: &NftWatch, log: &Path) -> anyhow::Result<LegitSummary> {
    let accepted = legit::accepted_in_log(log)?;
    let limit = legit::KNOCK_TIMEOUT + Duration::from_secs(1);
    let mut tcp = Vec::new();
    let mut fw = Vec::new();
    let mut daemon = Vec::new();
    let mut errors = Vec::new();
    for k in knocks {
        if let Some(t) = k.tcp {
            tcp.push(t);
        }
        // The element is in place by the earlier of the two observations: `nft monitor` sees
        // it when that process gets to run (late when the CPUs are saturated), and a TCP
        // connect can only succeed once it is there.
        let seen = nft
            .first_after(k.src, k.sent_at)
            .map(|at| at.saturating_duration_since(k.sent_at))
            .filter(|d| *d <= limit);
        if let Some(d) = [seen, k.tcp].into_iter().flatten().min() {
            fw.push(d);
        }
        let logged = accepted
            .iter()
            .filter(|(src, _)| *src == k.src)
            .filter_map(|(_, t)| t.duration_since(k.sent_wall).ok())
            .filter(|d| *d <= limit)
            .min();
        if let Some(d) = logged {
            daemon.push(d);
        }
        if let Some(e) = &k.error
            && errors.len() < 5
        {
            errors.push(format!("{}: {e}", k.src));
        }
    }
    let sent = knocks.len();
    Ok(LegitSummary {
        sent,
        honoured: tcp.len(),
        success_pct: if sent == 0 {
            0.0
        } else {
            tcp.len() as f64 * 100.0 / sent as f64
        },
        tcp: Latency::of(&tcp),
        firewall: Latency::of(&fw),
        daemon_log: Latency::of(&daemon),
        errors,
    })
}

/// `after - before` for every counter, zeros left out.
fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// What a run's flood did and what sending alone costs the sender per packet.
#[derive(Debug, Clone, Copy)]
struct FloodCost {
    stats: flood::FloodStats,
    sender_alone_ns: Option<f64>,
}

/// Counter deltas, CPU shares and per-packet costs of one run.
fn compute(
    mode: CaptureMode,
    run: Option<(Junk, Rate)>,
    (before, after): (&Sample, &Sample),
    flood: &FloodCost,
    legit: LegitSummary,
    idle: Option<&Rates>,
) -> (RunResult, Rates) {
    let stats = flood.stats;
    let hz = sample::clock_ticks();
    let secs = after
        .at
        .saturating_duration_since(before.at)
        .as_secs_f64()
        .max(1e-3);
    let daemon_s = after.daemon_ticks.saturating_sub(before.daemon_ticks) as f64 / hz;
    let softirq_s = after.softirq_ticks.saturating_sub(before.softirq_ticks) as f64 / hz;
    let ksoftirqd_s = after.ksoftirqd_ticks.saturating_sub(before.ksoftirqd_ticks) as f64 / hz;
    let rates = Rates {
        daemon: daemon_s / secs,
        ksoftirqd: ksoftirqd_s / secs,
        softirq: softirq_s / secs,
    };
    // Receive work the kernel did inside the sender's sendmmsg calls: its CPU beyond what the
    // same sending costs into a dead link.
    let inline_rx_s = flood
        .sender_alone_ns
        .map(|ns| (stats.cpu_secs - ns * 1e-9 * stats.sent as f64).max(0.0));
    let prefilter = delta(&after.status.prefilter, &before.status.prefilter);
    let reached: u64 = prefilter
        .iter()
        .filter(|(k, _)| k.as_str() != "not_knock")
        .map(|(_, v)| *v)
        .sum();
    let per_junk = |total_s: f64, idle_rate: Option<f64>| -> Option<f64> {
        let idle_rate = idle_rate?;
        (stats.sent > 0).then(|| ((total_s - idle_rate * secs).max(0.0)) * 1e9 / stats.sent as f64)
    };
    let softirq_per_cpu_pct = after
        .softirq_per_cpu
        .iter()
        .zip(&before.softirq_per_cpu)
        .map(|(a, b)| a.saturating_sub(*b) as f64 / hz / secs * 100.0)
        .collect();
    let rx_dropped = delta(&after.rx_dropped, &before.rx_dropped).values().sum();
    let result = RunResult {
        capture: mode.name().to_owned(),
        capture_detail: after.status.capture.detail.clone(),
        junk: run.map(|r| r.0),
        rate: run.map(|r| r.1),
        secs,
        junk_sent: stats.sent,
        achieved_pps: if stats.secs > 0.0 {
            stats.sent as f64 / stats.secs
        } else {
            0.0
        },
        send_errors: stats.send_errors,
        prefilter_pps: reached as f64 / secs,
        junk_seen_pct: (stats.sent > 0).then(|| {
            let legit_copies = (legit.sent * legit::COPIES) as u64;
            reached.saturating_sub(legit_copies) as f64 * 100.0 / stats.sent as f64
        }),
        ring_full: prefilter.get("ring_full").copied().unwrap_or(0),
        prefilter,
        udp_rcvbuf_errors: after
            .udp_rcvbuf_errors
            .saturating_sub(before.udp_rcvbuf_errors),
        rx_dropped,
        verifier_accepted: after
            .status
            .verifier
            .accepted
            .saturating_sub(before.status.verifier.accepted),
        verifier_rejected: delta(
            &after.status.verifier.rejected,
            &before.status.verifier.rejected,
        ),
        firewall_errors: after
            .status
            .verifier
            .firewall_errors
            .saturating_sub(before.status.verifier.firewall_errors),
        daemon_cpu_pct: rates.daemon * 100.0,
        ksoftirqd_cpu_pct: rates.ksoftirqd * 100.0,
        sender_cpu_pct: stats.cpu_secs / secs * 100.0,
        sender_alone_ns: flood.sender_alone_ns,
        softirq_cpu_pct: rates.softirq * 100.0,
        softirq_per_cpu_pct,
        ns_per_junk: inline_rx_s.and_then(|inline| {
            per_junk(
                daemon_s + ksoftirqd_s + inline,
                idle.map(|i| i.daemon + i.ksoftirqd),
            )
        }),
        softirq_ns_per_junk: per_junk(daemon_s + softirq_s, idle.map(|i| i.daemon + i.softirq)),
        daemon_ns_per_junk: per_junk(daemon_s, idle.map(|i| i.daemon)),
        rss_peak_mib: after.daemon_hwm_kib as f64 / 1024.0,
        legit,
    };
    (result, rates)
}
