//! A run's figures from what was observed: the legit knocks' latencies and success, counter
//! deltas between the two samples, CPU shares, and the CPU cost per junk packet with the idle
//! run's baseline and the sender's own cost taken off.

use std::{collections::BTreeMap, path::Path, time::Duration};

use capyknock_testkit::flood::{FloodStats, Rate};

use super::{
    CaptureMode,
    flood::Junk,
    legit::{self, KnockResult},
    report::{KnockTimes, Latency, LegitSummary, RunResult},
    sample::{self, Sample},
    watch::{self, NftWatch},
};

/// CPU seconds per second of a run, to take an idle baseline off the flood runs.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    daemon: f64,
    ksoftirqd: f64,
    softirq: f64,
}

/// The legit knocks' figures.
pub fn summarise(
    knocks: &[KnockResult],
    nft: &NftWatch,
    log: &Path,
) -> anyhow::Result<LegitSummary> {
    let accepted = watch::accepted_in_log(log)?;
    let limit = legit::KNOCK_TIMEOUT + Duration::from_secs(1);
    let mut tcp = Vec::new();
    let mut fw = Vec::new();
    let mut daemon = Vec::new();
    let mut errors = Vec::new();
    let mut times = Vec::new();
    let first = knocks.iter().map(|k| k.sent_at).min();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
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
        let firewall = [seen, k.tcp].into_iter().flatten().min();
        if let Some(d) = firewall {
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
        times.push(KnockTimes {
            sent: first.map_or(0.0, |f| ms(k.sent_at.saturating_duration_since(f))),
            daemon_log: logged.map(ms),
            firewall: firewall.map(ms),
            tcp: k.tcp.map(ms),
        });
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
        knocks: times,
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
pub struct FloodCost {
    pub stats: FloodStats,
    pub sender_alone_ns: Option<f64>,
}

/// Counter deltas, CPU shares and per-packet costs of one run.
pub fn compute(
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
        rss_mib: after.daemon_rss_kib as f64 / 1024.0,
        legit,
    };
    (result, rates)
}
