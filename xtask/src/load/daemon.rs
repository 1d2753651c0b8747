//! One capture mode: the daemon started with `--capture MODE` in the server namespace (checked
//! to run that mode), every run of the plan against it, one after the other with a pause
//! between, then the daemon stopped. Its log stays in the lab's directory for the report.

use std::time::Duration;

use anyhow::{Context as _, bail};
use capyknock_testkit::{
    daemon::{Daemon, DaemonOptions},
    flood::Rate,
    wait::sleep,
};

use super::{
    CaptureMode, figures::Rates, flood::Junk, plan::Plan, report::RunResult, run, sample,
    topology::Lab,
};

/// Pause between runs, so one run's backlog is not measured in the next.
const SETTLE: Duration = Duration::from_secs(1);

/// Starts the daemon in `mode` and does every run.
pub fn run_mode(
    lab: &mut Lab,
    plan: &Plan,
    mode: CaptureMode,
    runs: &[Option<(Junk, Rate)>],
    results: &mut Vec<RunResult>,
) -> anyhow::Result<()> {
    println!("\nload: capyknock server --capture {}", mode.name());
    let log = lab.dir.file(&format!("server-{}.log", mode.name()));
    let mut daemon = Daemon::start(
        &lab.server,
        &DaemonOptions {
            bin: &lab.bin,
            config: &lab.dir.file("server.toml"),
            log: &log,
            args: &["--capture", mode.name(), "--firewall", "nftables"],
            wrapper: &[],
            rust_log: None,
            own_process_group: true,
        },
    )?;
    daemon.wait_status_ready(&lab.bin, &lab.socket())?;
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
        let r = run::run_one(lab, plan, mode, *run, pid, &log, idle.as_ref())?;
        if run.is_none() {
            idle = Some(r.1);
        }
        run::print_row(&r.0);
        results.push(r.0);
        sleep(SETTLE)?;
    }
    daemon.stop();
    Ok(())
}
