//! What the benchmark reads from the system before and after each run: the daemon's CPU time
//! and peak RSS (`/proc/PID/stat`, `/proc/PID/status`), the CPU time of the `ksoftirqd`
//! threads, the machine's softirq time (`/proc/stat`), the UDP receive-buffer drops and
//! interface drops of the server namespace (`/proc/PID/net/snmp` and `/proc/PID/net/dev` show
//! the namespace of PID, the daemon's), and the daemon's own counters (`capyknock status
//! --json`).
//!
//! A task's utime + stime in `/proc/PID/stat` add up to the scheduler's exact run time (only
//! the split between user and system is sampled), so the daemon's and the `ksoftirqd` threads'
//! figures are exact. The columns of `/proc/stat` are tick samples (this kernel has no
//! `IRQ_TIME_ACCOUNTING`): the softirq column is what the issue asked for, machine-wide, but it
//! misses softirq work done inside another task's system call (a veth delivers the packets it
//! is sent in the sender's own `sendmmsg`), so the report prefers the exact figures.

use std::{collections::BTreeMap, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// Clock ticks per second of the times in `/proc` (`USER_HZ`).
pub fn clock_ticks() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

/// One reading of everything, at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Daemon user + system time, in clock ticks (all threads, `/proc/PID/stat` fields 14 and
    /// 15).
    pub daemon_ticks: u64,
    /// Daemon peak resident set size so far (`VmHWM`), KiB.
    pub daemon_hwm_kib: u64,
    /// Daemon resident set size now (`VmRSS`), KiB.
    pub daemon_rss_kib: u64,
    /// CPU time of the `ksoftirqd/N` threads, ticks (softirq work deferred to them).
    pub ksoftirqd_ticks: u64,
    /// Softirq time summed over all CPUs, ticks (`/proc/stat`, machine-wide: on veth the
    /// receive path of every namespace runs there).
    pub softirq_ticks: u64,
    /// Softirq time per CPU, ticks.
    pub softirq_per_cpu: Vec<u64>,
    /// `Udp: RcvbufErrors` of the server namespace (datagrams dropped on a full socket buffer).
    pub udp_rcvbuf_errors: u64,
    /// Dropped received packets of each server interface, by name.
    pub rx_dropped: BTreeMap<String, u64>,
    /// The daemon's counters.
    pub status: Status,
}

impl Sample {
    /// Reads everything for the daemon `pid`, whose control socket is `socket`.
    pub fn take(bin: &Path, socket: &Path, pid: u32, ksoftirqd: &[u32]) -> anyhow::Result<Self> {
        let status = Status::read(bin, socket)?;
        let at = Instant::now();
        let daemon_ticks = proc_cpu_ticks(pid)?;
        let (daemon_hwm_kib, daemon_rss_kib) = proc_memory_kib(pid)?;
        let ksoftirqd_ticks = ksoftirqd
            .iter()
            .filter_map(|p| proc_cpu_ticks(*p).ok())
            .sum();
        let (softirq_ticks, softirq_per_cpu) = softirq()?;
        let udp_rcvbuf_errors = std::fs::read_to_string(format!("/proc/{pid}/net/snmp"))
            .ok()
            .and_then(|t| snmp_field(&t, "Udp:", "RcvbufErrors"))
            .unwrap_or(0);
        let rx_dropped = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))
            .map(|t| net_dev_rx_dropped(&t))
            .unwrap_or_default();
        Ok(Self {
            at,
            daemon_ticks,
            daemon_hwm_kib,
            daemon_rss_kib,
            ksoftirqd_ticks,
            softirq_ticks,
            softirq_per_cpu,
            udp_rcvbuf_errors,
            rx_dropped,
            status,
        })
    }
}

/// The part of `capyknock status --json` the benchmark reads (docs/OPERATIONS.md lists the
/// fields; unknown ones are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Status {
    /// Capture mode and details.
    pub capture: CaptureStatus,
    /// Pre-filter verdict counters by name.
    pub prefilter: BTreeMap<String, u64>,
    /// Verifier outcomes.
    pub verifier: VerifierStatus,
}

/// `capture` of the status.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CaptureStatus {
    /// `xdp`, `pcap` or `udp`.
    pub mode: String,
    /// Free-form details (XDP attach mode).
    #[serde(default)]
    pub detail: String,
}

/// `verifier` of the status.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct VerifierStatus {
    /// Knocks that granted access.
    pub accepted: u64,
    /// Rejections by reason.
    #[serde(default)]
    pub rejected: BTreeMap<String, u64>,
    /// Grants the firewall failed to apply.
    #[serde(default)]
    pub firewall_errors: u64,
}

impl Status {
    /// `capyknock status --json --socket SOCKET`.
    pub fn read(bin: &Path, socket: &Path) -> anyhow::Result<Self> {
        let out = Command::new(bin)
            .args(["status", "--json", "--socket"])
            .arg(socket)
            .output()
            .context("cannot run capyknock status --json")?;
        if !out.status.success() {
            bail!(
                "capyknock status --json failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("capyknock status --json printed bad JSON")
    }
}

/// The pids of the `ksoftirqd/N` kernel threads.
pub fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// utime + stime of `pid`, in ticks.
fn proc_cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("the daemon (pid {pid}) is gone"))?;
    stat_cpu_ticks(&stat).context("cannot parse /proc/PID/stat")
}

/// utime + stime from the text of `/proc/PID/stat`.
fn stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    // Field 3 (state) is the first after it, so utime (14) and stime (15) are the 12th and 13th.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmHWM` and `VmRSS` of `pid` in KiB.
fn proc_memory_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the daemon (pid {pid}) is gone"))?;
    let hwm = status_kib(&status, "VmHWM:").context("no VmHWM in /proc/PID/status")?;
    let rss = status_kib(&status, "VmRSS:").context("no VmRSS in /proc/PID/status")?;
    Ok((hwm, rss))
}

/// A `Name:   1234 kB` line of `/proc/PID/status`.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Softirq ticks: the total and per CPU.
fn softirq() -> anyhow::Result<(u64, Vec<u64>)> {
    let text = std::fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse_softirq(&text).context("cannot parse /proc/stat")
}

/// The softirq column (the 7th number) of the `cpu` line and of each `cpuN` line.
fn parse_softirq(text: &str) -> Option<(u64, Vec<u64>)> {
    let column = |line: &str| -> Option<u64> { line.split_whitespace().nth(7)?.parse().ok() };
    let mut total = None;
    let mut per_cpu = Vec::new();
    for line in text.lines() {
        if line.starts_with("cpu ") {
            total = column(line);
        } else if line.starts_with("cpu") {
            per_cpu.push(column(line)?);
        }
    }
    Some((total?, per_cpu))
}

/// A field of `/proc/net/snmp`: a header line and a value line share the `prefix`.
fn snmp_field(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == name)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Dropped received packets per interface from `/proc/net/dev`.
fn net_dev_rx_dropped(text: &str) -> BTreeMap<String, u64> {
    let mut dropped = BTreeMap::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        // Receive: bytes packets errs drop ...
        if let Some(d) = rest.split_whitespace().nth(3).and_then(|n| n.parse().ok()) {
            dropped.insert(name.trim().to_owned(), d);
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let stat = "1234 (cap (y) knock) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 3 0 123 456 789";
        assert_eq!(stat_cpu_ticks(stat), Some(325));
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn ours_is_readable() {
        assert!(proc_cpu_ticks(std::process::id()).is_ok());
        let (hwm, rss) = proc_memory_kib(std::process::id()).unwrap();
        assert!(rss > 0 && hwm >= rss, "{hwm} {rss}");
        let (total, per_cpu) = softirq().unwrap();
        assert!(!per_cpu.is_empty());
        assert!(total >= per_cpu.iter().copied().max().unwrap_or(0));
    }

    #[test]
    fn ksoftirqd_threads_are_found() {
        // One per CPU on any Linux with softirqs.
        assert!(!ksoftirqd_pids().is_empty());
    }

    #[test]
    fn softirq_column() {
        let text = "cpu  10 0 20 300 4 5 66 0 0 0\ncpu0 5 0 10 150 2 2 30 0 0 0\n\
                    cpu1 5 0 10 150 2 3 36 0 0 0\nintr 1 2 3\n";
        assert_eq!(parse_softirq(text), Some((66, vec![30, 36])));
    }

    #[test]
    fn snmp_and_net_dev() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 10 2 7 4 7 0\n";
        assert_eq!(snmp_field(snmp, "Udp:", "RcvbufErrors"), Some(7));
        assert_eq!(snmp_field(snmp, "Udp:", "Nope"), None);
        let dev = "Inter-|   Receive\n face |bytes packets errs drop\n\
                   srv-a: 1000 10 0 3 0 0 0 0 500 5 0 0 0 0 0 0\n";
        assert_eq!(net_dev_rx_dropped(dev).get("srv-a"), Some(&3));
    }

    #[test]
    fn status_json_subset() {
        let json = r#"{"version":"0.1.0","capture":{"mode":"xdp","interfaces":["a"],"detail":"a: native"},
            "prefilter":{"bad_tag":3,"delivered":1},"verifier":{"accepted":1,"rejected":{"bad_totp":0},
            "firewall_errors":0},"grants":[]}"#;
        let s: Status = serde_json::from_str(json).unwrap();
        assert_eq!(s.capture.mode, "xdp");
        assert_eq!(s.prefilter.get("bad_tag"), Some(&3));
        assert_eq!(s.verifier.accepted, 1);
    }
}
