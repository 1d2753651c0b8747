//! One run: the legit packets made beforehand (and, with a flood, the knock the attacker
//! captures, used once by its owner first), the sender's cost alone calibrated, a sample of the
//! counters, the flood and the legit knocks at the same time, another sample, and the figures.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::bail;
use capyknock_testkit::{
    clock::time_step,
    flood::{FloodStats, Rate},
    wait::{check_interrupted, sleep},
};

use super::{
    CaptureMode,
    figures::{self, FloodCost, Rates},
    flood::{self, Junk, Material},
    legit,
    plan::Plan,
    report::RunResult,
    sample::Sample,
    topology::{CLIENT_V4, DEAD_END, JUNK_TARGET, Lab, TARGET},
    users,
};

/// Flood time before the first legit knock, so it meets a flood in full swing.
pub const WARMUP: Duration = Duration::from_millis(300);

/// One run.
pub fn run_one(
    lab: &mut Lab,
    plan: &Plan,
    mode: CaptureMode,
    run: Option<(Junk, Rate)>,
    pid: u32,
    log: &Path,
    idle: Option<&Rates>,
) -> anyhow::Result<(RunResult, Rates)> {
    check_interrupted()?;
    let target = TARGET;
    // The legit packets, made before anything is measured; with a flood, one more: the knock
    // the attacker captured (its owner uses it first, so the attacker's copies are replays).
    let extra = usize::from(run.is_some());
    let profiles = lab.users.take(plan.knocks_per_run() + extra)?;
    let mut packets = users::generate(
        &lab.bin,
        &lab.sink,
        &lab.dir.file("client.toml"),
        &lab.dir.path,
        &profiles,
    )?;
    lab.users.mark(&profiles, time_step());
    let captured = if extra > 0 { packets.pop() } else { None };
    let knocks: Vec<(Ipv4Addr, Vec<u8>)> =
        packets.into_iter().map(|p| (lab.addrs.next(), p)).collect();

    let pool = match (run, captured) {
        (Some((junk, _)), Some(captured)) => {
            let owner: &[u8] = &captured;
            let to = SocketAddr::V4(target.knock);
            if lab.client.send_udp(Some(CLIENT_V4.into()), to, &[owner])? != 1 {
                bail!("the captured knock's first use was not sent");
            }
            sleep(Duration::from_millis(200))?;
            Some(flood::pool(
                junk,
                &Material {
                    captured,
                    time_step: time_step(),
                },
            )?)
        }
        _ => None,
    };

    let sender_alone = match (run, &pool) {
        (Some(key), Some(pool)) => {
            Some(
                lab.calibration
                    .sender_alone(&lab.attacker, DEAD_END, key, pool)?,
            )
        }
        _ => None,
    };

    let before = Sample::take(&lab.bin, &lab.socket(), pid, &lab.ksoftirqd)?;
    let flood = match (run, pool) {
        (Some((_, rate)), Some(pool)) => {
            let max_secs =
                (plan.duration + legit::KNOCK_TIMEOUT + Duration::from_secs(2)).as_secs_f64();
            Some(flood::start(
                &lab.attacker,
                JUNK_TARGET,
                pool,
                rate,
                max_secs,
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
        None => FloodStats::default(),
    };
    let after = Sample::take(&lab.bin, &lab.socket(), pid, &lab.ksoftirqd)?;
    let knocked = knocked?;
    let legit = figures::summarise(&knocked, &lab.nft, log)?;
    let flood = FloodCost {
        stats,
        sender_alone_ns: sender_alone,
    };
    Ok(figures::compute(
        mode,
        run,
        (&before, &after),
        &flood,
        legit,
        idle,
    ))
}

/// The run's row on the terminal.
pub fn print_row(r: &RunResult) {
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
