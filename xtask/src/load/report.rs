//! The benchmark's figures: one [`RunResult`] per run, the CPU ratios between capture modes,
//! the goals from issue 8 judged against them, and their renderings (JSON, Markdown, a short
//! summary for the terminal).

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

use serde::Serialize;

use capyknock_testkit::flood::Rate;

use super::flood::Junk;

/// Latency percentiles in milliseconds (nearest rank), over the knocks that have the figure.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// How many knocks the figures are over.
    pub n: usize,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `values` (`None` for empty).
    pub fn of(values: &[Duration]) -> Option<Self> {
        let mut ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        if ms.is_empty() {
            return None;
        }
        ms.sort_by(f64::total_cmp);
        let rank = |p: f64| -> f64 {
            let i = ((p * ms.len() as f64).ceil() as usize).saturating_sub(1);
            ms.get(i.min(ms.len() - 1)).copied().unwrap_or(0.0)
        };
        Some(Self {
            n: ms.len(),
            p50_ms: rank(0.50),
            p99_ms: rank(0.99),
            max_ms: ms.last().copied().unwrap_or(0.0),
        })
    }
}

/// The legit knocks of one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LegitSummary {
    /// Knocks sent.
    pub sent: usize,
    /// Knocks after which the service answered within the timeout.
    pub honoured: usize,
    /// `honoured / sent` in percent.
    pub success_pct: f64,
    /// Send to first successful TCP connect from the knock's address.
    pub tcp: Option<Latency>,
    /// Send to the nftables element being in place: the earlier of `nft monitor` reporting it
    /// and the first successful TCP connect.
    pub firewall: Option<Latency>,
    /// Send to the daemon's "knock accepted" log line.
    pub daemon_log: Option<Latency>,
    /// The first few unexpected errors.
    pub errors: Vec<String>,
    /// Each knock in the order sent (results.json only): where the tail of a latency comes
    /// from, and whether the slow knocks share a moment.
    pub knocks: Vec<KnockTimes>,
}

/// One legit knock's timings in ms (`None`: not observed within the timeout), each from its
/// send but the first.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KnockTimes {
    /// When it was sent, ms after the run's first knock.
    pub sent: f64,
    /// Send to the daemon's "knock accepted" log line.
    pub daemon_log: Option<f64>,
    /// Send to the nftables element (see [`LegitSummary::firewall`]).
    pub firewall: Option<f64>,
    /// Send to the first successful TCP connect.
    pub tcp: Option<f64>,
}

/// One run: a capture mode, a junk profile (or none) at an offered rate, legit knocks alongside.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// `xdp`, `pcap` or `udp`.
    pub capture: String,
    /// What the daemon said about its capture (XDP attach mode).
    pub capture_detail: String,
    /// Junk profile, `None` for the idle run.
    pub junk: Option<Junk>,
    /// Offered junk rate (`"20000"`, `"max"`).
    #[serde(serialize_with = "rate_as_text")]
    pub rate: Option<Rate>,
    /// Measurement window, seconds.
    pub secs: f64,
    /// Junk datagrams the sender got out.
    pub junk_sent: u64,
    /// `junk_sent` per second of sending.
    pub achieved_pps: f64,
    /// Failed `sendmmsg` calls.
    pub send_errors: u64,
    /// Datagrams to the knock port that got a pre-filter verdict, per second.
    pub prefilter_pps: f64,
    /// Share of the junk sent that reached the pre-filter (the rest was dropped on the way:
    /// a full pcap buffer, UDP socket buffer or veth queue), percent.
    pub junk_seen_pct: Option<f64>,
    /// Pre-filter verdicts in the window (counter deltas, zeros left out).
    pub prefilter: BTreeMap<String, u64>,
    /// Candidates lost because the ring buffer (or userspace queue) was full.
    pub ring_full: u64,
    /// Datagrams dropped on a full UDP socket buffer in the server namespace (udp mode).
    pub udp_rcvbuf_errors: u64,
    /// Packets the server interfaces dropped on receive.
    pub rx_dropped: u64,
    /// Verifier outcomes in the window.
    pub verifier_accepted: u64,
    /// Verifier rejections in the window, by reason (zeros left out).
    pub verifier_rejected: BTreeMap<String, u64>,
    /// Grants the firewall failed to apply in the window.
    pub firewall_errors: u64,
    /// Daemon CPU (user + system, exact), percent of one core.
    pub daemon_cpu_pct: f64,
    /// CPU of the `ksoftirqd` threads (exact), percent of one core.
    pub ksoftirqd_cpu_pct: f64,
    /// CPU of the flood's sending thread (exact), percent of one core.
    pub sender_cpu_pct: f64,
    /// What sending costs the sender alone, per packet (measured into a dead link with the same
    /// packets and pacing), nanoseconds.
    pub sender_alone_ns: Option<f64>,
    /// Softirq CPU of the whole machine from `/proc/stat` (tick samples), percent of one core.
    pub softirq_cpu_pct: f64,
    /// The same per core, percent.
    pub softirq_per_cpu_pct: Vec<f64>,
    /// What one junk packet cost the receiving side, nanoseconds of CPU: the daemon, the
    /// `ksoftirqd` threads and the receive work done inside the sender's system calls (its CPU
    /// beyond `sender_alone_ns`), above the same mode's idle run. Exact run times throughout.
    pub ns_per_junk: Option<f64>,
    /// The first formula: (daemon + `/proc/stat` softirq) per junk packet above idle,
    /// nanoseconds. Tick-sampled; misses the receive work done in the sender's system calls.
    pub softirq_ns_per_junk: Option<f64>,
    /// Daemon CPU alone per junk packet above idle, nanoseconds.
    pub daemon_ns_per_junk: Option<f64>,
    /// Daemon peak RSS so far (`VmHWM`), MiB.
    pub rss_peak_mib: f64,
    /// Daemon RSS at the end of the run (`VmRSS`), MiB.
    pub rss_mib: f64,
    /// The legit knocks.
    pub legit: LegitSummary,
}

impl RunResult {
    /// `idle`, `mix@100000`, `replay@max`.
    pub fn label(&self) -> String {
        match (self.junk, self.rate) {
            (Some(j), Some(r)) => format!("{j}@{r}"),
            _ => "idle".to_owned(),
        }
    }
}

/// CPU per junk packet of pcap and udp against xdp, for one junk profile and rate.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The run label.
    pub run: String,
    /// xdp's `ns_per_junk`.
    pub xdp_ns: f64,
    /// pcap/xdp of `ns_per_junk`.
    pub pcap_over_xdp: Option<f64>,
    /// udp/xdp of `ns_per_junk`.
    pub udp_over_xdp: Option<f64>,
    /// pcap/xdp of `softirq_ns_per_junk` (tick-sampled, for reference).
    pub softirq_pcap_over_xdp: Option<f64>,
    /// udp/xdp of `softirq_ns_per_junk`.
    pub softirq_udp_over_xdp: Option<f64>,
}

/// The ratios for every run label that xdp and another mode both have.
pub fn ratios(results: &[RunResult]) -> Vec<Ratio> {
    let find = |mode: &str, label: &str| {
        results
            .iter()
            .find(|r| r.capture == mode && r.label() == label)
    };
    // Below a nanosecond the denominator is noise: no ratio.
    let over = |v: Option<f64>, x: Option<f64>| match (v, x) {
        (Some(v), Some(x)) if x >= 1.0 => Some(v / x),
        _ => None,
    };
    results
        .iter()
        .filter(|r| r.capture == "xdp" && r.junk.is_some())
        .filter_map(|x| {
            let label = x.label();
            let pcap = find("pcap", &label);
            let udp = find("udp", &label);
            Some(Ratio {
                pcap_over_xdp: over(pcap.and_then(|r| r.ns_per_junk), x.ns_per_junk),
                udp_over_xdp: over(udp.and_then(|r| r.ns_per_junk), x.ns_per_junk),
                softirq_pcap_over_xdp: over(
                    pcap.and_then(|r| r.softirq_ns_per_junk),
                    x.softirq_ns_per_junk,
                ),
                softirq_udp_over_xdp: over(
                    udp.and_then(|r| r.softirq_ns_per_junk),
                    x.softirq_ns_per_junk,
                ),
                run: label,
                xdp_ns: x.ns_per_junk?,
            })
        })
        .collect()
}

/// One goal of issue 8 and how the run did.
#[derive(Debug, Clone, Serialize)]
pub struct Goal {
    /// What it asks.
    pub what: String,
    /// What was measured.
    pub measured: String,
    /// Met, not met, or `None` when this run could not tell.
    pub met: Option<bool>,
}

/// The highest-rate flood run of `mode` (the `mix` profile at `max` when there is one).
pub fn highest_flood<'a>(results: &'a [RunResult], mode: &str) -> Option<&'a RunResult> {
    let floods = results
        .iter()
        .filter(|r| r.capture == mode && r.junk.is_some());
    floods
        .clone()
        .find(|r| r.junk == Some(Junk::Mix) && r.rate == Some(Rate::Max))
        .or_else(|| floods.max_by(|a, b| a.achieved_pps.total_cmp(&b.achieved_pps)))
}

/// The pcap/xdp ratio the CPU goal is judged on: the `mix` run at the highest paced rate, where
/// every mode was offered the same load (at `max` the sender and the daemon share the two CPUs
/// and each mode reaches a different rate); `max` when nothing was paced.
fn ratio_headline(ratios: &[Ratio]) -> Option<(&str, f64)> {
    let mix: Vec<(&Ratio, Rate)> = ratios
        .iter()
        .filter_map(|r| {
            let rate = r.run.strip_prefix("mix@")?.parse().ok()?;
            Some((r, rate))
        })
        .collect();
    let pick = mix
        .iter()
        .filter(|(r, rate)| *rate != Rate::Max && r.pcap_over_xdp.is_some())
        .max_by_key(|(_, rate)| *rate)
        .or_else(|| mix.iter().find(|(r, _)| r.pcap_over_xdp.is_some()))?;
    Some((pick.0.run.as_str(), pick.0.pcap_over_xdp?))
}

/// Judges the goals of issue 8.
pub fn goals(results: &[RunResult], ratios: &[Ratio]) -> Vec<Goal> {
    let mut out = Vec::new();
    let top = highest_flood(results, "xdp");

    let headline = ratio_headline(ratios);
    out.push(Goal {
        what: "XDP at least 5x less CPU per junk packet than pcap".into(),
        measured: headline.map_or("no matching xdp and pcap runs".into(), |(run, r)| {
            let others: Vec<String> = ratios
                .iter()
                .filter(|o| o.run != run)
                .filter_map(|o| Some(format!("{:.1}x at {}", o.pcap_over_xdp?, o.run)))
                .collect();
            format!(
                "pcap/xdp = {r:.1}x at {run} (the highest paced rate: every mode got the same \
                 load){}",
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; {}", others.join(", "))
                }
            )
        }),
        met: headline.map(|(_, r)| r >= 5.0),
    });

    out.push(Goal {
        what: "100% of legit knocks honoured at the highest junk rate (xdp)".into(),
        measured: top.map_or("no xdp flood run".into(), |r| {
            format!(
                "{}/{} ({:.1}%) at {} ({:.0} pps achieved)",
                r.legit.honoured,
                r.legit.sent,
                r.legit.success_pct,
                r.label(),
                r.achieved_pps
            )
        }),
        met: top.map(|r| r.legit.sent > 0 && r.legit.honoured == r.legit.sent),
    });

    let idle = results
        .iter()
        .find(|r| r.capture == "xdp" && r.junk.is_none());
    let p99 = |r: Option<&RunResult>| r.and_then(|r| r.legit.firewall).map(|l| l.p99_ms);
    let tcp99 = |r: Option<&RunResult>| r.and_then(|r| r.legit.tcp).map(|l| l.p99_ms);
    for (what, run, limit) in [("idle", idle, 2.0), ("under the highest flood", top, 10.0)] {
        out.push(Goal {
            what: format!("knock to firewall element p99 <= {limit} ms {what} (xdp)"),
            measured: match p99(run) {
                Some(v) => format!(
                    "firewall p99 {v:.2} ms, TCP connect p99 {} ms",
                    tcp99(run).map_or("-".into(), |t| format!("{t:.2}"))
                ),
                None => "not measured".into(),
            },
            met: p99(run).map(|v| v <= limit),
        });
    }

    let cpu = results
        .iter()
        .filter(|r| r.capture == "xdp" && r.junk.is_some())
        .map(|r| (r.daemon_cpu_pct, r.label()))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    out.push(Goal {
        what: "daemon CPU under 5% of a core while junk floods (xdp)".into(),
        measured: cpu.as_ref().map_or("no xdp flood run".into(), |(c, l)| {
            format!("at most {c:.2}% ({l})")
        }),
        met: cpu.map(|(c, _)| c < 5.0),
    });

    let mut rss: BTreeMap<&str, f64> = BTreeMap::new();
    for r in results {
        let e = rss.entry(r.capture.as_str()).or_default();
        *e = e.max(r.rss_peak_mib);
    }
    out.push(Goal {
        what: "daemon RSS under 64 MiB throughout".into(),
        measured: rss
            .iter()
            .map(|(m, v)| format!("{m} {v:.1} MiB"))
            .collect::<Vec<_>>()
            .join(", "),
        met: (!rss.is_empty()).then(|| rss.values().all(|v| *v < 64.0)),
    });
    out
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When it ran (UTC, RFC 3339).
    pub started: String,
    /// The command line.
    pub command: String,
    /// The machine.
    pub machine: Machine,
    /// Settings of this run.
    pub settings: Settings,
    /// Every run.
    pub runs: Vec<RunResult>,
    /// CPU ratios against xdp.
    pub ratios: Vec<Ratio>,
    /// The goals.
    pub goals: Vec<Goal>,
}

/// What the benchmark ran with.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Seconds of each run's flood.
    pub duration_secs: u64,
    /// Legit knocks per second.
    pub legit_per_sec: u32,
    /// Short mode.
    pub quick: bool,
    /// Which build of capyknock.
    pub build: String,
    /// Legit users keygen'd.
    pub users: usize,
    /// The daemon's `realtime_priority` (`--realtime-priority`); `None`: normal priority.
    pub realtime_priority: Option<u8>,
}

/// The machine the figures are from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `uname -srm`.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    /// `MemTotal`, MiB.
    pub memory_mib: u64,
    /// `/proc/loadavg` when the benchmark started (other work on the machine skews figures).
    pub load_average: String,
}

impl Machine {
    /// Reads it from /proc and uname.
    pub fn describe() -> Self {
        let kernel = crate::cmd::output(std::process::Command::new("uname").arg("-srm"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_owned())
            })
            .unwrap_or_default();
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|l| l.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Self {
            kernel,
            cpus,
            cpu_model,
            memory_mib,
            load_average,
        }
    }
}

/// A rate as its text in the JSON (`"20000"`, `"max"`), as the CLI takes it.
#[expect(
    clippy::ref_option,
    reason = "serde's serialize_with passes the field by reference"
)]
fn rate_as_text<S: serde::Serializer>(rate: &Option<Rate>, s: S) -> Result<S::Ok, S::Error> {
    match rate {
        Some(r) => s.serialize_some(&r.to_string()),
        None => s.serialize_none(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
}

fn lat(l: Option<Latency>) -> String {
    l.map_or_else(
        || "-".to_owned(),
        |l| format!("{:.2} / {:.2} / {:.2}", l.p50_ms, l.p99_ms, l.max_ms),
    )
}

fn rate(r: Option<Rate>) -> String {
    r.map_or_else(|| "-".to_owned(), |r| r.to_string())
}

/// The Markdown report.
pub fn markdown(report: &Report) -> String {
    let mut s = String::new();
    let m = &report.machine;
    let _ = writeln!(s, "# capyknock load benchmark\n");
    let _ = writeln!(
        s,
        "{} on {} ({} vCPU, {}, {} MiB; load average {} at the start). Command: `{}`. Build: \
         {}. Each run {} s, {} legit knocks/s from {} keygen'd users. Daemon priority: {}.\n",
        report.started,
        m.kernel,
        m.cpus,
        m.cpu_model,
        m.memory_mib,
        m.load_average,
        report.command,
        report.settings.build,
        report.settings.duration_secs,
        report.settings.legit_per_sec,
        report.settings.users,
        report
            .settings
            .realtime_priority
            .map_or_else(|| "normal".to_owned(), |p| format!("SCHED_FIFO {p}")),
    );
    s.push_str("## Goals\n\n| goal | measured | met |\n| --- | --- | --- |\n");
    for g in &report.goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "?",
        };
        let _ = writeln!(s, "| {} | {} | {met} |", g.what, g.measured);
    }
    s.push_str(&knock_table(&report.runs));
    s.push_str(&cpu_table(&report.runs));
    s.push_str(
        "\n## CPU per junk packet against XDP\n\n`ns/junk` ratios (exact run times); in \
         brackets the same from `/proc/stat` softirq ticks.\n\n\
         | run | xdp ns/junk | pcap/xdp | udp/xdp |\n| --- | ---: | ---: | ---: |\n",
    );
    for r in &report.ratios {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} ({}) | {} ({}) |",
            r.run,
            r.xdp_ns,
            opt(r.pcap_over_xdp, 1),
            opt(r.softirq_pcap_over_xdp, 1),
            opt(r.udp_over_xdp, 1),
            opt(r.softirq_udp_over_xdp, 1),
        );
    }
    s.push_str(&verdicts(&report.runs));
    s.push_str("\n## Junk profiles\n\n");
    for j in Junk::ALL {
        let _ = writeln!(s, "- `{j}`: {}", j.describe());
    }
    s
}

/// Offered and achieved load, and the legit knocks.
fn knock_table(runs: &[RunResult]) -> String {
    let mut s = String::from(
        "\n## Legit knocks under load\n\nLatencies are p50 / p99 / max in ms from sending the \
         knock's first copy: to the nftables element being in place (the earlier of `nft \
         monitor` seeing it and a TCP connect succeeding), to the first successful TCP connect, \
         and to the daemon's \"knock accepted\" log line. Junk seen: the share of the junk sent \
         that reached the pre-filter.\n\n\
         | capture | run | offered pps | achieved pps | junk seen % | legit ok | firewall ms | \
         TCP connect ms | daemon log ms |\n\
         | --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- |\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {}/{} | {} | {} | {} |",
            r.capture,
            r.label(),
            rate(r.rate),
            r.achieved_pps,
            opt(r.junk_seen_pct, 1),
            r.legit.honoured,
            r.legit.sent,
            lat(r.legit.firewall),
            lat(r.legit.tcp),
            lat(r.legit.daemon_log),
        );
    }
    s
}

/// What each run cost.
fn cpu_table(runs: &[RunResult]) -> String {
    let mut s = String::from(
        "\n## CPU and memory\n\nPercent of one core. Daemon, ksoftirqd and sender are exact run \
         times; softirq is machine-wide `/proc/stat` tick samples. ns/junk: CPU one junk packet \
         cost the receiving side (daemon + ksoftirqd + the sender's CPU beyond what sending \
         alone costs it), above the same mode's idle run; softirq ns/junk: (daemon + softirq \
         ticks) the same way.\n\n\
         | capture | run | daemon % | ksoftirqd % | sender % | sender alone ns | softirq % | \
         ns/junk | softirq ns/junk | daemon ns/junk | ring full | udp rcvbuf drops | rx dropped \
         | RSS at the end MiB | peak RSS so far MiB |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | \
         ---: | ---: | ---: |\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {:.1} | {:.1} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            r.capture,
            r.label(),
            r.daemon_cpu_pct,
            r.ksoftirqd_cpu_pct,
            r.sender_cpu_pct,
            opt(r.sender_alone_ns, 0),
            r.softirq_cpu_pct,
            opt(r.ns_per_junk, 0),
            opt(r.softirq_ns_per_junk, 0),
            opt(r.daemon_ns_per_junk, 0),
            r.ring_full,
            r.udp_rcvbuf_errors,
            r.rx_dropped,
            r.rss_mib,
            r.rss_peak_mib,
        );
    }
    s
}

/// The verdict counts and verifier outcomes of each run.
fn verdicts(runs: &[RunResult]) -> String {
    let mut s = String::from("\n## Pre-filter verdicts per run\n\n");
    for r in runs {
        let verdicts: Vec<String> = r
            .prefilter
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let rejected: Vec<String> = r
            .verifier_rejected
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "- {} {}: {}; verifier accepted {}{}{}",
            r.capture,
            r.label(),
            if verdicts.is_empty() {
                "none".to_owned()
            } else {
                verdicts.join(", ")
            },
            r.verifier_accepted,
            if rejected.is_empty() {
                String::new()
            } else {
                format!(", rejected {}", rejected.join(", "))
            },
            if r.legit.errors.is_empty() {
                String::new()
            } else {
                format!("; errors: {}", r.legit.errors.join("; "))
            },
        );
    }
    s
}

/// A few lines for the terminal.
pub fn summary(report: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<5} {:<16} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "mode",
        "run",
        "achieved",
        "legit",
        "fw p99",
        "tcp p99",
        "daemon%",
        "ksoftirq%",
        "softirq%",
        "ns/junk"
    );
    for r in &report.runs {
        let _ = writeln!(
            s,
            "{:<5} {:<16} {:>10.0} {:>9} {:>8} {:>8} {:>8.2} {:>8.1} {:>8.1} {:>8}",
            r.capture,
            r.label(),
            r.achieved_pps,
            format!("{}/{}", r.legit.honoured, r.legit.sent),
            opt(r.legit.firewall.map(|l| l.p99_ms), 2),
            opt(r.legit.tcp.map(|l| l.p99_ms), 2),
            r.daemon_cpu_pct,
            r.ksoftirqd_cpu_pct,
            r.softirq_cpu_pct,
            opt(r.ns_per_junk, 0),
        );
    }
    for g in &report.goals {
        let met = match g.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "unknown",
        };
        let _ = writeln!(s, "goal {met:<8} {}: {}", g.what, g.measured);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(capture: &str, junk: Option<Junk>, rate: Option<Rate>, ns: Option<f64>) -> RunResult {
        RunResult {
            capture: capture.into(),
            capture_detail: String::new(),
            junk,
            rate,
            secs: 1.0,
            junk_sent: 1000,
            achieved_pps: 1000.0,
            send_errors: 0,
            prefilter_pps: 1000.0,
            junk_seen_pct: None,
            prefilter: BTreeMap::new(),
            ring_full: 0,
            udp_rcvbuf_errors: 0,
            rx_dropped: 0,
            verifier_accepted: 10,
            verifier_rejected: BTreeMap::new(),
            firewall_errors: 0,
            daemon_cpu_pct: 1.0,
            ksoftirqd_cpu_pct: 1.0,
            sender_cpu_pct: 50.0,
            sender_alone_ns: Some(500.0),
            softirq_cpu_pct: 10.0,
            softirq_per_cpu_pct: vec![5.0, 5.0],
            ns_per_junk: ns,
            softirq_ns_per_junk: ns,
            daemon_ns_per_junk: ns,
            rss_peak_mib: 12.0,
            rss_mib: 10.0,
            legit: LegitSummary {
                sent: 10,
                honoured: 10,
                success_pct: 100.0,
                tcp: Latency::of(&[Duration::from_millis(2)]),
                firewall: Latency::of(&[Duration::from_millis(1)]),
                daemon_log: None,
                errors: Vec::new(),
                knocks: Vec::new(),
            },
        }
    }

    #[test]
    fn percentiles_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&d).unwrap();
        assert_eq!(
            (l.n, l.p50_ms, l.p99_ms, l.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        let l = Latency::of(&[Duration::from_millis(3)]).unwrap();
        assert_eq!((l.p50_ms, l.p99_ms), (3.0, 3.0));
        assert!(Latency::of(&[]).is_none());
    }

    #[test]
    fn ratios_and_goals() {
        let max = Some(Rate::Max);
        let mix = Some(Junk::Mix);
        let paced = Some(Rate::Pps(1000));
        let mut results = vec![
            run("xdp", None, None, None),
            run("xdp", mix, max, Some(100.0)),
            run("pcap", mix, max, Some(300.0)),
            run("udp", mix, max, Some(300.0)),
        ];
        let r = ratios(&results);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].pcap_over_xdp, Some(3.0));
        assert_eq!(r[0].udp_over_xdp, Some(3.0));
        let g = goals(&results, &r);
        assert_eq!(g[0].met, Some(false), "only max: judged there");
        // A paced run is what the CPU goal is judged on.
        results.push(run("xdp", mix, paced, Some(100.0)));
        results.push(run("pcap", mix, paced, Some(800.0)));
        let r = ratios(&results);
        assert_eq!(r.len(), 2);
        let g = goals(&results, &r);
        assert_eq!(g.len(), 6);
        assert!(
            g[0].measured.starts_with("pcap/xdp = 8.0x at mix@1000"),
            "{g:?}"
        );
        assert!(g.iter().all(|g| g.met == Some(true)), "{g:?}");
        let md = markdown(&Report {
            started: "now".into(),
            command: "cargo xtask load".into(),
            machine: Machine::describe(),
            settings: Settings {
                duration_secs: 1,
                legit_per_sec: 10,
                quick: true,
                build: "release".into(),
                users: 1,
                realtime_priority: None,
            },
            runs: results,
            ratios: r,
            goals: g,
        });
        assert!(md.contains("| xdp | mix@max |"), "{md}");
        assert!(
            md.contains("| mix@max | 100 | 3.0 (3.0) | 3.0 (3.0) |"),
            "{md}"
        );
    }
}
