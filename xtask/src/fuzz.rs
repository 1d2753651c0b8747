//! `cargo xtask fuzz [--seconds N] [TARGET]`: runs the cargo-fuzz targets in `fuzz/` for N
//! seconds each (default 30) and prints how many inputs each executed.
//!
//! Installs cargo-fuzz if it is missing and uses the pinned nightly (libFuzzer needs nightly's
//! sanitizer flags). New inputs go to `fuzz/target/corpus-out/TARGET`, so a run never clutters
//! the committed seed corpus in `fuzz/corpus/TARGET`; crashes land in `fuzz/artifacts/TARGET/` and
//! make the task fail.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{self, describe, output, workspace_root},
    setup::NIGHTLY,
};

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct FuzzOptions {
    /// Seconds to run each target.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Run only this target (default: every target in fuzz/Cargo.toml).
    pub target: Option<String>,
}

/// What one target's run did.
struct Report {
    target: String,
    execs: Option<u64>,
    seconds: f64,
}

/// Runs the fuzz targets.
pub fn run(opts: &FuzzOptions) -> anyhow::Result<()> {
    if opts.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let fuzz_dir = workspace_root().join("fuzz");
    ensure_nightly()?;
    ensure_cargo_fuzz()?;
    let all = list_targets(&fuzz_dir)?;
    let targets = match &opts.target {
        Some(t) if all.contains(t) => vec![t.clone()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are: {}", all.join(", ")),
        None => all,
    };
    let mut reports = Vec::new();
    for target in &targets {
        reports.push(run_target(&fuzz_dir, target, opts.seconds)?);
    }
    println!("\nfuzz summary ({} s per target):", opts.seconds);
    for r in &reports {
        match r.execs {
            Some(execs) => println!(
                "  {:<16} {execs:>12} execs in {:>5.0} s ({:.0}/s)",
                r.target,
                r.seconds,
                rate(execs, r.seconds)
            ),
            None => println!(
                "  {:<16} finished in {:.0} s (libFuzzer printed no execution count)",
                r.target, r.seconds
            ),
        }
    }
    Ok(())
}

/// Executions per second, for the summary.
#[expect(
    clippy::cast_precision_loss,
    reason = "a rate for humans; 2^52 executions is far off"
)]
fn rate(execs: u64, seconds: f64) -> f64 {
    execs as f64 / seconds.max(1.0)
}

/// A `cargo` command on the pinned nightly, in `fuzz/`. `RUSTUP_TOOLCHAIN` also reaches the
/// `cargo build` that cargo-fuzz starts, which would otherwise pick the workspace's stable
/// `rust-toolchain.toml`.
fn nightly_cargo(fuzz_dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{NIGHTLY}"))
        .args(args)
        .current_dir(fuzz_dir)
        .env("RUSTUP_TOOLCHAIN", NIGHTLY);
    cmd
}

fn ensure_nightly() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if installed.lines().any(|l| l.starts_with(NIGHTLY)) {
        return Ok(());
    }
    println!("fuzz: installing {NIGHTLY}");
    cmd::run(Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]))
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    if output(Command::new("cargo").args(["fuzz", "--version"])).is_some() {
        return Ok(());
    }
    println!("fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    cmd::run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

fn list_targets(fuzz_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut cmd = nightly_cargo(fuzz_dir, &["fuzz", "list"]);
    let listed = output(&mut cmd).with_context(|| format!("{} failed", describe(&cmd)))?;
    let targets: Vec<String> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("fuzz/Cargo.toml declares no fuzz targets");
    }
    Ok(targets)
}

fn run_target(fuzz_dir: &Path, target: &str, seconds: u64) -> anyhow::Result<Report> {
    let out_corpus = fuzz_dir.join("target").join("corpus-out").join(target);
    std::fs::create_dir_all(&out_corpus)
        .with_context(|| format!("cannot create {}", out_corpus.display()))?;
    let seeds = fuzz_dir.join("corpus").join(target);
    let max_time = format!("-max_total_time={seconds}");
    let out_str = out_corpus.to_string_lossy().into_owned();
    let seeds_str = seeds.to_string_lossy().into_owned();
    let mut args = vec!["fuzz", "run", target, out_str.as_str()];
    if seeds.is_dir() {
        args.push(seeds_str.as_str());
    }
    args.extend(["--", max_time.as_str(), "-print_final_stats=1"]);
    let mut cmd = nightly_cargo(fuzz_dir, &args);
    println!("fuzz: {}", describe(&cmd));
    let started = Instant::now();
    // libFuzzer reports on stderr: echo it and keep the execution count.
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", describe(&cmd)))?;
    let mut execs = None;
    let mut fuzz_seconds = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines() {
            let line = line.context("reading libFuzzer output")?;
            eprintln!("{line}");
            if let Some(n) = parse_execs(&line) {
                execs = Some(n);
            }
            if let Some(s) = parse_done_seconds(&line) {
                fuzz_seconds = Some(s);
            }
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    if !status.success() {
        bail!(
            "fuzz target {target} failed ({status}); the crashing input is in fuzz/artifacts/{target}/ \
             (reproduce with `cd fuzz && cargo +{NIGHTLY} fuzz run {target} ARTIFACT`)"
        );
    }
    Ok(Report {
        target: target.to_owned(),
        execs,
        // libFuzzer's own running time; the wall time also counts the build.
        seconds: fuzz_seconds.unwrap_or_else(|| started.elapsed().as_secs_f64()),
    })
}

/// The seconds of libFuzzer's closing line `Done N runs in S second(s)`.
fn parse_done_seconds(line: &str) -> Option<f64> {
    let rest = line.trim().strip_prefix("Done ")?;
    let mut words = rest.split_whitespace();
    words.next()?;
    (words.next()? == "runs" && words.next()? == "in").then_some(())?;
    words.next()?.parse().ok()
}

/// The execution count from libFuzzer's final stats (`stat::number_of_executed_units: N`) or
/// its closing line (`Done N runs in S second(s)`).
fn parse_execs(line: &str) -> Option<u64> {
    if let Some(rest) = line.trim().strip_prefix("stat::number_of_executed_units:") {
        return rest.trim().parse().ok();
    }
    let rest = line.trim().strip_prefix("Done ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::{parse_done_seconds, parse_execs};

    #[test]
    fn reads_libfuzzer_counts() {
        assert_eq!(
            parse_execs("stat::number_of_executed_units: 123456"),
            Some(123_456)
        );
        assert_eq!(parse_execs("Done 999 runs in 30 second(s)"), Some(999));
        assert_eq!(
            parse_execs("#1024 pulse cov: 12 ft: 30 corp: 5/1200b exec/s: 512"),
            None
        );
        assert_eq!(parse_execs("Done"), None);
        assert_eq!(
            parse_done_seconds("Done 999 runs in 61 second(s)"),
            Some(61.0)
        );
        assert_eq!(parse_done_seconds("Done 999 runs"), None);
    }
}
