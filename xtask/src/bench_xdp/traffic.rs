//! Pass-through traffic with and without the pre-filter program: what capyknock costs the SSH
//! sessions and web servers behind it.
//!
//! ```text
//!   [client ns] bx-c 10.96.0.1/24  <---- veth ---->  bx-s 10.96.0.2/24 [server ns]
//!               TCP senders, junk flood                the program here (XDP native or SKB
//!                                                      mode, or tc ingress: --xdp-mode)
//!                                                      TCP sinks / echo
//! ```
//!
//! For each of: no program, the empty program, capyknock's program (attached by `capyknock
//! xdp-bench hold`), four tests run one after the other: a TCP bulk transfer (the receiver
//! counts bytes), a TCP request/response test (one byte each way, `TCP_NODELAY`, every round
//! trip timed), and both again while a paced junk flood (bad tags for a known user, the
//! costliest rejection) goes to the knock port. Small tools of ours, no iperf3 needed. The flood
//! is bounded in time and count and sends only inside the namespaces.
//!
//! Last for each program, the flood alone: what the whole machine's CPUs spend per junk packet
//! (sender, veth and receiver, from `/proc/stat`, the same stretch without the flood
//! subtracted), which is what a flood takes from other traffic, measured without depending on a
//! TCP transfer's run-to-run noise.
//!
//! With several rounds (`--traffic-rounds`) the three programs take turns in every round, so a
//! machine whose speed drifts (other work, frequency) moves every program's figures alike; the
//! table shows each figure's median over the rounds and, per round, capyknock's bulk throughput
//! against no program's of the same round.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use capyknock_testkit::{
    netns::{NetNs, enter, veth},
    wait::{check_interrupted, interrupted},
};

const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 2);
const CLIENT_IF: &str = "bx-c";
const SERVER_IF: &str = "bx-s";
const BULK_PORT: u16 = 5201;
const RR_PORT: u16 = 5202;
/// Write size of the bulk sender.
const CHUNK: usize = 128 * 1024;
/// Most round trips kept for percentiles.
const MAX_SAMPLES: usize = 2_000_000;

/// What to run.
#[derive(Debug)]
pub struct Plan {
    /// The capyknock binary (runs `xdp-bench hold` and `xdp-bench info`).
    pub bin: PathBuf,
    /// Namespace names start with this.
    pub ns_prefix: String,
    /// Seconds per test.
    pub seconds: u64,
    /// Junk packets per second offered in the flood runs.
    pub flood_rate: u64,
    /// XDP attach mode: `native` or `skb`.
    pub xdp_mode: String,
    /// Times the three programs take turns (at least 1).
    pub rounds: u32,
}

/// The programs compared, in the order they run in every round (the first is the baseline).
const PROGRAMS: [&str; 3] = ["none", "pass", "capyknock"];

/// Runs every configuration; returns the figures as JSON.
pub fn run(plan: &Plan) -> anyhow::Result<Value> {
    let info = bench_info(plan)?;
    let client = NetNs::new(&format!("{}-c", plan.ns_prefix))?;
    let server = NetNs::new(&format!("{}-s", plan.ns_prefix))?;
    veth(
        (&client, CLIENT_IF, CLIENT_IP.into()),
        (&server, SERVER_IF, SERVER_IP.into()),
        24,
    )?;
    let secs = Duration::from_secs(plan.seconds.max(1));
    let rounds = plan.rounds.max(1);
    let mut rows = Vec::new();
    for (round, program) in (1..=rounds).flat_map(|r| PROGRAMS.map(|p| (r, p))) {
        check_interrupted()?;
        println!("bench-xdp: traffic with program: {program} (round {round} of {rounds})");
        let hold = if program == "none" {
            None
        } else {
            Some(Hold::start(&plan.bin, &server, program, &plan.xdp_mode)?)
        };
        let bulk = bulk(&client, &server, secs)?;
        let rr = request_response(&client, &server, secs)?;
        let flood = Flood::start(&client, &info, plan.flood_rate, secs)?;
        let bulk_flood = bulk_test_during(&client, &server, secs, flood)?;
        let flood = Flood::start(&client, &info, plan.flood_rate, secs)?;
        let rr_flood = rr_test_during(&client, &server, secs, flood)?;
        let flood_alone = flood_alone(&client, &info, plan.flood_rate, secs)?;
        let xdp = match hold {
            Some(h) => h.finish()?,
            None => Value::Null,
        };
        rows.push(json!({
            "program": program,
            "round": round,
            "bulk": bulk,
            "rr": rr,
            "flood_bulk": bulk_flood,
            "flood_rr": rr_flood,
            "flood_alone": flood_alone,
            "xdp": xdp,
        }));
    }
    let medians = PROGRAMS
        .iter()
        .map(|program| {
            let of: Vec<&Value> = rows
                .iter()
                .filter(|r| r.get("program").and_then(Value::as_str) == Some(program))
                .collect();
            median_of(&of)
        })
        .collect::<Vec<_>>();
    Ok(json!({
        "seconds": plan.seconds,
        "flood_rate": plan.flood_rate,
        "xdp_mode": plan.xdp_mode,
        "rounds": rounds,
        "runs": medians,
        "every_run": rows,
    }))
}

/// One value shaped like `values[0]` whose numbers are the medians of the numbers at the same
/// place in every value (strings and the like are taken from the first).
fn median_of(values: &[&Value]) -> Value {
    match values.first() {
        Some(Value::Object(first)) => Value::Object(
            first
                .iter()
                .map(|(key, _)| {
                    let inner: Vec<&Value> = values.iter().filter_map(|v| v.get(key)).collect();
                    (key.clone(), median_of(&inner))
                })
                .collect(),
        ),
        Some(Value::Number(_)) => {
            let mut numbers: Vec<f64> = values.iter().filter_map(|v| v.as_f64()).collect();
            numbers.sort_by(f64::total_cmp);
            let median = match numbers.len() {
                0 => None,
                n if n % 2 == 1 => numbers.get(n / 2).copied(),
                n => numbers
                    .get(n / 2 - 1)
                    .zip(numbers.get(n / 2))
                    .map(|(a, b)| f64::midpoint(*a, *b)),
            };
            median.map_or(Value::Null, Value::from)
        }
        Some(other) => (*other).clone(),
        None => Value::Null,
    }
}

/// The knock port, user id and step `xdp-bench hold` configures.
struct Info {
    port: u16,
    user: [u8; 16],
    step: u64,
}

fn bench_info(plan: &Plan) -> anyhow::Result<Info> {
    let out = super::capture(Command::new(&plan.bin).args(["xdp-bench", "info"]))?;
    let v: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .context("capyknock xdp-bench info printed no JSON")?;
    let port = v
        .get("knock_port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .context("no knock_port")?;
    let step = v.get("step").and_then(Value::as_u64).context("no step")?;
    let hex = v
        .get("user_id_hex")
        .and_then(Value::as_str)
        .context("no user_id_hex")?;
    let mut user = [0u8; 16];
    for (i, b) in user.iter_mut().enumerate() {
        let digits = hex.get(2 * i..2 * i + 2).context("short user id")?;
        *b = u8::from_str_radix(digits, 16).context("user id is not hex")?;
    }
    Ok(Info { port, user, step })
}

/// `capyknock xdp-bench hold` in the server namespace; killed on drop.
struct Hold {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Hold {
    fn start(
        bin: &std::path::Path,
        server: &NetNs,
        program: &str,
        xdp_mode: &str,
    ) -> anyhow::Result<Self> {
        let mut child = server
            .command(bin)
            .args([
                "xdp-bench",
                "hold",
                "--iface",
                SERVER_IF,
                "--program",
                program,
                "--xdp-mode",
                xdp_mode,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start capyknock xdp-bench hold")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut hold = Self {
            child,
            stdin,
            stdout,
        };
        let ready = hold.json_line()?;
        if ready.get("ready").and_then(Value::as_bool) != Some(true) {
            bail!("xdp-bench hold did not get ready: {ready}");
        }
        Ok(hold)
    }

    fn json_line(&mut self) -> anyhow::Result<Value> {
        loop {
            let mut line = String::new();
            if self.stdout.read_line(&mut line)? == 0 {
                bail!("xdp-bench hold ended early (see its log above)");
            }
            if let Ok(v) = serde_json::from_str(line.trim()) {
                return Ok(v);
            }
        }
    }

    /// Detaches and returns what the program counted meanwhile.
    fn finish(mut self) -> anyhow::Result<Value> {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"done\n")?;
        }
        let stats = self.json_line()?;
        let _ = self.child.wait();
        Ok(stats)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(200));
            if matches!(self.child.try_wait(), Ok(None)) {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
    }
}

/// Runs `f` on a new thread inside `ns`.
fn spawn_in<T: Send + 'static>(
    ns: &NetNs,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<T>>> {
    let file = ns.file()?;
    Ok(std::thread::spawn(move || {
        enter(&file)?;
        f()
    }))
}

fn join<T>(h: JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    h.join()
        .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?
}

/// A listener that gives up after `wait`, so a failed client cannot hang the server thread.
fn accept(listener: &TcpListener, wait: Duration) -> anyhow::Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let end = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > end || interrupted() {
                    bail!("no connection within {wait:?}");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn connect(port: u16) -> anyhow::Result<TcpStream> {
    let addr = SocketAddr::from((SERVER_IP, port));
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < end => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("connecting to the benchmark server"),
        }
    }
}

fn bulk(client: &NetNs, server: &NetNs, secs: Duration) -> anyhow::Result<Value> {
    bulk_test_during(client, server, secs, None)
}

/// TCP bulk transfer for `secs`; the receiver's byte count over its time.
fn bulk_test_during(
    client: &NetNs,
    server: &NetNs,
    secs: Duration,
    flood: Option<Flood>,
) -> anyhow::Result<Value> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let sink = spawn_in(server, move || {
        let listener = TcpListener::bind((SERVER_IP, BULK_PORT))?;
        let _ = ready_tx.send(());
        let mut s = accept(&listener, Duration::from_secs(10))?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut bytes = 0u64;
        let mut first = None;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                break;
            }
            first.get_or_insert_with(Instant::now);
            bytes += n as u64;
        }
        let elapsed = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok((bytes, elapsed))
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the bulk receiver did not start")?;
    let sender = spawn_in(client, move || {
        let mut s = connect(BULK_PORT)?;
        let buf = vec![0x5au8; CHUNK];
        let end = Instant::now() + secs;
        while Instant::now() < end && !interrupted() {
            s.write_all(&buf)?;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    })?;
    join(sender)?;
    let (bytes, elapsed) = join(sink)?;
    let flood = flood.map(Flood::stop).transpose()?;
    #[expect(clippy::cast_precision_loss, reason = "a statistic")]
    let gbps = if elapsed > 0.0 {
        bytes as f64 * 8.0 / elapsed / 1e9
    } else {
        0.0
    };
    Ok(json!({ "bytes": bytes, "seconds": elapsed, "gbit_per_s": gbps, "flood": flood }))
}

fn request_response(client: &NetNs, server: &NetNs, secs: Duration) -> anyhow::Result<Value> {
    rr_test_during(client, server, secs, None)
}

/// One byte each way over one TCP connection (`TCP_NODELAY`) for `secs`, every round trip
/// timed.
fn rr_test_during(
    client: &NetNs,
    server: &NetNs,
    secs: Duration,
    flood: Option<Flood>,
) -> anyhow::Result<Value> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let echo = spawn_in(server, move || {
        let listener = TcpListener::bind((SERVER_IP, RR_PORT))?;
        let _ = ready_tx.send(());
        let mut s = accept(&listener, Duration::from_secs(10))?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        while s.read(&mut b)? == 1 {
            s.write_all(&b)?;
        }
        Ok(())
    })?;
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .context("the echo server did not start")?;
    let pinger = spawn_in(client, move || {
        let mut s = connect(RR_PORT)?;
        s.set_nodelay(true)?;
        let mut samples: Vec<u64> = Vec::new();
        let mut b = [0u8; 1];
        let end = Instant::now() + secs;
        let started = Instant::now();
        let mut count = 0u64;
        while Instant::now() < end && !interrupted() {
            let t = Instant::now();
            s.write_all(b"x")?;
            s.read_exact(&mut b)?;
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            count += 1;
            if samples.len() < MAX_SAMPLES {
                samples.push(ns);
            }
        }
        s.shutdown(std::net::Shutdown::Both)?;
        Ok((samples, count, started.elapsed().as_secs_f64()))
    })?;
    let (mut samples, count, elapsed) = join(pinger)?;
    join(echo)?;
    let flood = flood.map(Flood::stop).transpose()?;
    samples.sort_unstable();
    #[expect(clippy::cast_precision_loss, reason = "statistics")]
    let (per_s, mean_us) = (
        count as f64 / elapsed.max(1e-9),
        samples.iter().map(|&x| x as f64).sum::<f64>() / (samples.len().max(1) as f64) / 1e3,
    );
    let pct = |p: usize| {
        #[expect(clippy::cast_precision_loss, reason = "statistics")]
        samples
            .get(samples.len().saturating_sub(1) * p / 100)
            .map(|&x| x as f64 / 1e3)
    };
    Ok(json!({
        "transactions": count,
        "per_s": per_s,
        "mean_us": mean_us,
        "p50_us": pct(50),
        "p99_us": pct(99),
        "flood": flood,
    }))
}

/// A paced junk flood from the client namespace to the knock port, bounded in time (the test
/// time plus two seconds) and count (the rate times that); stops on [`Flood::stop`] or Ctrl-C.
struct Flood {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<anyhow::Result<(u64, f64)>>,
}

impl Flood {
    fn start(
        client: &NetNs,
        info: &Info,
        rate: u64,
        secs: Duration,
    ) -> anyhow::Result<Option<Self>> {
        if rate == 0 {
            return Ok(None);
        }
        let limit = secs + Duration::from_secs(2);
        let max_packets = rate.saturating_mul(limit.as_secs());
        let pool = junk_pool(info);
        let port = info.port;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = spawn_in(client, move || {
            let sock = UdpSocket::bind((CLIENT_IP, 0))?;
            sock.connect((SERVER_IP, port))?;
            let started = Instant::now();
            let mut sent = 0u64;
            'outer: while !stopping.load(Ordering::Relaxed) && !interrupted() {
                let elapsed = started.elapsed();
                if elapsed > limit || sent >= max_packets {
                    break;
                }
                // Pace: how many should be out by now.
                #[expect(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss,
                    reason = "a packet count well inside u64"
                )]
                let due = (elapsed.as_secs_f64() * rate as f64) as u64;
                if sent >= due {
                    std::thread::sleep(Duration::from_micros(200));
                    continue;
                }
                for _ in 0..64 {
                    let packet = pool
                        .get(usize::try_from(sent).unwrap_or(0) % pool.len().max(1))
                        .map_or(&[][..], Vec::as_slice);
                    // Errors (ICMP unreachable reported back, buffer full) do not stop a flood.
                    let _ = sock.send(packet);
                    sent += 1;
                    if sent >= max_packets {
                        break 'outer;
                    }
                }
            }
            Ok((sent, started.elapsed().as_secs_f64()))
        })?;
        Ok(Some(Self { stop, thread }))
    }

    /// Stops the flood; what it sent.
    fn stop(self) -> anyhow::Result<Value> {
        self.stop.store(true, Ordering::Relaxed);
        let (sent, secs) = join(self.thread)?;
        #[expect(clippy::cast_precision_loss, reason = "a statistic")]
        let pps = sent as f64 / secs.max(1e-9);
        Ok(json!({ "sent": sent, "seconds": secs, "pps": pps }))
    }
}

/// `/proc/stat` counts in `USER_HZ`, 100 per second on every Linux architecture we build for.
const USER_HZ: f64 = 100.0;

/// CPU time of all CPUs together so far, busy (everything but idle and iowait) and in total, in
/// seconds, from the first line of `/proc/stat`.
fn cpu_seconds() -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("an unexpected /proc/stat")?;
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Ok(((total - idle) / USER_HZ, total / USER_HZ))
}

/// The flood alone for `secs`, after the same stretch without it: the busy CPU time per junk
/// packet the flood added (sender, veth and receiver together).
fn flood_alone(client: &NetNs, info: &Info, rate: u64, secs: Duration) -> anyhow::Result<Value> {
    let (quiet_start, _) = cpu_seconds()?;
    std::thread::sleep(secs);
    let (quiet_end, _) = cpu_seconds()?;
    let Some(flood) = Flood::start(client, info, rate, secs)? else {
        return Ok(Value::Null);
    };
    let (busy_start, _) = cpu_seconds()?;
    std::thread::sleep(secs);
    let flood = flood.stop()?;
    let (busy_end, _) = cpu_seconds()?;
    let sent = flood.get("sent").and_then(Value::as_f64).unwrap_or(0.0);
    let seconds = flood.get("seconds").and_then(Value::as_f64).unwrap_or(0.0);
    // The quiet stretch's busy time, scaled to the flood's length, is the background.
    let quiet_rate = (quiet_end - quiet_start) / secs.as_secs_f64();
    let added = (busy_end - busy_start) - quiet_rate * seconds;
    let ns_per_packet = (sent > 0.0).then(|| added * 1e9 / sent);
    Ok(json!({
        "flood": flood,
        "background_cpu_per_s": quiet_rate,
        "added_cpu_s": added,
        "ns_per_packet": ns_per_packet,
    }))
}

/// 256 knock-sized packets with the right magic, version, user id and step and random tags.
fn junk_pool(info: &Info) -> Vec<Vec<u8>> {
    (0..256)
        .map(|_| {
            let mut p = vec![0u8; 256];
            fastrand::fill(&mut p);
            let header = b"CKnk\x01\0\0\0"
                .iter()
                .copied()
                .chain(info.user)
                .chain(info.step.to_be_bytes());
            for (b, h) in p.iter_mut().zip(header) {
                *b = h;
            }
            p
        })
        .collect()
}

/// The number at `path` in `r`.
fn at(r: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(r, |v, k| v.get(k))?.as_f64()
}

/// `x` with `digits` decimals, or `-`.
fn fixed(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "-".to_owned(), |x| format!("{x:.digits$}"))
}

/// `x` against `base` in percent, or `-`.
fn percent(x: Option<f64>, base: Option<f64>) -> String {
    x.zip(base).filter(|(_, b)| *b > 0.0).map_or_else(
        || "-".to_owned(),
        |(x, b)| format!("{:+.1} %", (x / b - 1.0) * 100.0),
    )
}

/// `x - base`, or `-`.
fn delta(x: Option<f64>, base: Option<f64>) -> String {
    x.zip(base)
        .map_or_else(|| "-".to_owned(), |(x, b)| format!("{:+.1}", x - b))
}

/// The array at `key` in `v` (empty when missing).
fn rows<'a>(v: &'a Value, key: &str) -> Vec<&'a Value> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default()
}

/// The traffic figures as Markdown tables.
pub fn table(v: &Value) -> String {
    use std::fmt::Write as _;
    let runs = rows(v, "runs");
    let base = runs.first().copied();
    let base_of = |path: &[&str]| base.and_then(|b| at(b, path));
    let base_bulk = base_of(&["bulk", "gbit_per_s"]);
    let base_rtt = base_of(&["rr", "mean_us"]);
    let base_bulk_flood = base_of(&["flood_bulk", "gbit_per_s"]);
    let base_rtt_flood = base_of(&["flood_rr", "mean_us"]);
    let mut t = String::from(
        "| program | TCP bulk Gbit/s | vs none | TCP RR/s | RTT mean / p99 µs | RTT vs none µs \
         | with flood: bulk Gbit/s | vs none + flood | with flood: RTT mean / p99 µs | vs none + flood µs \
         | flood pps (bulk / RR) |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for &r in &runs {
        let name = r.get("program").and_then(Value::as_str).unwrap_or("?");
        let bulk = at(r, &["bulk", "gbit_per_s"]);
        let rtt = at(r, &["rr", "mean_us"]);
        let bulk_f = at(r, &["flood_bulk", "gbit_per_s"]);
        let rtt_f = at(r, &["flood_rr", "mean_us"]);
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} | {} / {} | {} | {} | {} | {} / {} | {} | {} / {} |",
            fixed(bulk, 2),
            percent(bulk, base_bulk),
            fixed(at(r, &["rr", "per_s"]), 0),
            fixed(rtt, 1),
            fixed(at(r, &["rr", "p99_us"]), 1),
            delta(rtt, base_rtt),
            fixed(bulk_f, 2),
            percent(bulk_f, base_bulk_flood),
            fixed(rtt_f, 1),
            fixed(at(r, &["flood_rr", "p99_us"]), 1),
            delta(rtt_f, base_rtt_flood),
            fixed(at(r, &["flood_bulk", "flood", "pps"]), 0),
            fixed(at(r, &["flood_rr", "flood", "pps"]), 0),
        );
    }
    t.push_str(&flood_alone_table(&runs));
    t.push_str(&rounds_line(v));
    t
}

/// The flood-alone figures (CPU per junk packet), when the runs have them.
fn flood_alone_table(runs: &[&Value]) -> String {
    use std::fmt::Write as _;
    let ns_of = |r: &Value| at(r, &["flood_alone", "ns_per_packet"]);
    let Some(base) = runs.first().and_then(|b| ns_of(b)) else {
        return String::new();
    };
    let mut t = String::from(
        "\nThe flood alone (no TCP): CPU time all vCPUs spent per junk packet, sender included, \
         the same stretch without the flood subtracted.\n\n\
         | program | flood pps | CPU ns per junk packet | vs none ns |\n\
         | --- | ---: | ---: | ---: |\n",
    );
    for &r in runs {
        let name = r.get("program").and_then(Value::as_str).unwrap_or("?");
        let _ = writeln!(
            t,
            "| {name} | {} | {} | {} |",
            fixed(at(r, &["flood_alone", "flood", "pps"]), 0),
            fixed(ns_of(r), 0),
            delta(ns_of(r), Some(base)),
        );
    }
    t
}

/// With several rounds: capyknock's bulk throughput against no program's, round by round.
fn rounds_line(v: &Value) -> String {
    let rounds = v.get("rounds").and_then(Value::as_u64).unwrap_or(1);
    if rounds < 2 {
        return String::new();
    }
    let every = rows(v, "every_run");
    let bulk_of = |round: u64, program: &str| {
        every
            .iter()
            .find(|r| {
                r.get("round").and_then(Value::as_u64) == Some(round)
                    && r.get("program").and_then(Value::as_str) == Some(program)
            })
            .and_then(|r| at(r, &["bulk", "gbit_per_s"]))
    };
    let per_round: Vec<String> = (1..=rounds)
        .map(|round| percent(bulk_of(round, "capyknock"), bulk_of(round, "none")))
        .collect();
    format!(
        "\nMedians of {rounds} rounds. TCP bulk, capyknock against no program, round by round: \
         {}.\n",
        per_round.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(program: &str, round: u64, gbit: f64, rtt: f64) -> Value {
        json!({
            "program": program,
            "round": round,
            "bulk": { "gbit_per_s": gbit },
            "rr": { "mean_us": rtt, "per_s": 1000.0, "p99_us": 2.0 * rtt },
        })
    }

    #[test]
    fn medians_are_taken_leaf_by_leaf() {
        let rows = [
            row("none", 1, 9.0, 30.0),
            row("none", 2, 7.0, 20.0),
            row("none", 3, 8.0, 50.0),
        ];
        let m = median_of(&rows.iter().collect::<Vec<_>>());
        assert_eq!(m["program"], "none");
        assert_eq!(m["bulk"]["gbit_per_s"], 8.0);
        assert_eq!(m["rr"]["mean_us"], 30.0);
        let two = median_of(&[&rows[0], &rows[1]]);
        assert_eq!(two["bulk"]["gbit_per_s"], 8.0);
        assert_eq!(median_of(&[]), Value::Null);
    }

    #[test]
    fn the_table_shows_medians_and_each_round() {
        let every = vec![
            row("none", 1, 10.0, 30.0),
            row("pass", 1, 9.9, 30.0),
            row("capyknock", 1, 9.8, 31.0),
            row("none", 2, 8.0, 30.0),
            row("pass", 2, 8.2, 30.0),
            row("capyknock", 2, 8.4, 29.0),
        ];
        let runs: Vec<Value> = PROGRAMS
            .iter()
            .map(|p| {
                let of: Vec<&Value> = every.iter().filter(|r| r["program"] == *p).collect();
                median_of(&of)
            })
            .collect();
        let mut runs = runs;
        for (r, ns) in runs.iter_mut().zip([900.0, 950.0, 870.0]) {
            r["flood_alone"] = json!({ "ns_per_packet": ns, "flood": { "pps": 1000.0 } });
        }
        let t = table(&json!({ "rounds": 2, "runs": runs, "every_run": every }));
        assert!(t.contains("| capyknock | 1000 | 870 | -30.0 |"), "{t}");
        assert!(t.contains("| none | 9.00 | +0.0 % |"), "{t}");
        assert!(t.contains("| capyknock | 9.10 | +1.1 % |"), "{t}");
        assert!(t.contains("round by round: -2.0 %, +5.0 %."), "{t}");
        let one = table(&json!({ "rounds": 1, "runs": [row("none", 1, 1.0, 1.0)] }));
        assert!(!one.contains("round by round"), "{one}");
    }
}
