//! `cargo xtask test`: everything CI checks, in order, with a summary at the end.
//!
//! Steps: setup (installs what is missing); `cargo fmt --check`; clippy with `-D warnings` on all
//! targets; unit and property tests; the crate's unit tests for Windows under Wine (cargo's
//! target runner, `tests/wine/runner`); clippy of the whole crate for Windows, macOS and FreeBSD; the client built the public way
//! in a clean environment and checked for other targets (`client_build`); the release packages
//! built and checked (`cargo xtask dist --check`, root); the privileged end-to-end tests
//! (root only, one at a time; with the Windows debug build, which `windows_wine` runs under
//! Wine); a short fuzzing pass (`cargo xtask fuzz`, 20 s per target); last,
//! `cargo xtask load --quick` and `cargo xtask bench-xdp --quick` on the debug build (about a
//! minute and 20 s; smoke tests of the benchmarks, which report their figures without judging
//! them). Not root: fails with how to run it, never skips.

use std::time::Instant;

use anyhow::bail;

use crate::{
    cmd::{self, command, is_root},
    disk, setup,
};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip the privileged tests (they need root). The run then reports itself incomplete and
    /// fails, so this is for quick local iterations only.
    #[arg(long)]
    pub unprivileged_only: bool,
    /// Seconds each fuzz target runs in the short fuzzing pass.
    #[arg(long, default_value_t = 20)]
    pub fuzz_seconds: u64,
    /// Delete each step's outputs once no later step needs them (the Wine prefix of the
    /// Windows unit tests, the macOS and FreeBSD checks, the clean-environment client build, the
    /// release builds of `dist`, the Windows build after the privileged tests). CI passes it:
    /// its machine's disk may be small (one CI run filled it). Local runs keep them, so the
    /// next run is incremental.
    #[arg(long)]
    pub reclaim_disk: bool,
}

/// Test counts summed from `cargo test` output.
#[derive(Debug, Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds the counts of every `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
    fn add(&mut self, lines: &[String]) {
        for line in lines {
            let Some(rest) = line.strip_prefix("test result: ") else {
                continue;
            };
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else { continue };
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

pub fn test(opts: &Options) -> anyhow::Result<()> {
    if !is_root() && !opts.unprivileged_only {
        bail!(
            "the privileged tests need root (network namespaces, XDP, nftables).\n\
             Run: sudo -E env PATH=\"$PATH\" cargo xtask test\n\
             (or `cargo xtask test --unprivileged-only` for the quick part, which then fails as incomplete)"
        );
    }
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut steps: Vec<(&str, f64, bool)> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut(&mut Tally) -> anyhow::Result<()>| {
        println!("\n==> xtask test: {name}");
        let t = Instant::now();
        let result = f(&mut tally);
        steps.push((name, t.elapsed().as_secs_f64(), result.is_ok()));
        disk::report(name);
        result
    };
    let reclaim = |paths: &[&str]| {
        if opts.reclaim_disk {
            disk::reclaim(paths);
        }
    };

    let result = (|| -> anyhow::Result<()> {
        step("setup", &mut |_| {
            setup::setup(&setup::Options {
                for_tests: true,
                for_dist: true,
            })
        })?;
        step("fmt", &mut |_| {
            cmd::run(&mut command("cargo", &["fmt", "--all", "--", "--check"]))
        })?;
        step("clippy", &mut |_| {
            cmd::run(&mut command(
                "cargo",
                // Default members: the eBPF crate builds only for the BPF target (aya-build
                // compiles it, with its warnings, during the capyknock build).
                &["clippy", "--all-targets", "--", "-D", "warnings"],
            ))
        })?;
        step("unit and property tests", &mut |t| {
            // Default members less the privileged crate, which runs last, as root.
            cargo_test(
                t,
                &[
                    "test",
                    "--exclude",
                    "capyknock-tests",
                    "--workspace",
                    "--exclude",
                    "capyknock-ebpf",
                ],
            )
        })?;
        step("windows unit tests (Wine)", &mut windows_unit_tests)?;
        // The runner's Wine prefix (it makes a new one when missing); the Wine end-to-end
        // tests make their own.
        reclaim(&["target/wine-runner"]);
        step("other platforms check", &mut |_| platforms_check())?;
        // The Windows outputs stay: the privileged tests run the Windows debug build.
        reclaim(&[
            "target/x86_64-apple-darwin",
            "target/x86_64-unknown-freebsd",
        ]);
        step("client build (clean env, other targets)", &mut |_| {
            crate::client_build::run().map(drop)
        })?;
        reclaim(&[crate::client_build::BASE_DIR]);
        if opts.unprivileged_only {
            bail!("privileged tests skipped (--unprivileged-only): this run is incomplete");
        }
        step("dist --check", &mut |_| {
            crate::dist::dist(&crate::dist::Options { check: true })
        })?;
        // The packages stay in target/dist; the later steps run the debug build.
        reclaim(&[
            "target/release",
            "target/x86_64-unknown-linux-musl",
            "target/x86_64-pc-windows-gnu/release",
        ]);
        step("privileged tests", &mut |t| {
            privileged_builds()?;
            cargo_test(
                t,
                &["test", "-p", "capyknock-tests", "--", "--test-threads=1"],
            )
        })?;
        // The Windows build the Wine tests ran; the fuzzing pass that follows needs room.
        reclaim(&["target/x86_64-pc-windows-gnu"]);
        step("fuzz (short pass)", &mut |_| {
            crate::fuzz::run(&crate::fuzz::FuzzOptions {
                seconds: opts.fuzz_seconds,
                target: None,
            })
        })?;
        step("load benchmark (quick)", &mut |_| {
            crate::load::run(&crate::load::Options::ci_smoke())
        })?;
        step("xdp benchmark (quick)", &mut |_| {
            crate::bench_xdp::bench_xdp(&crate::bench_xdp::Options::ci_smoke())
        })?;
        Ok(())
    })();

    print_summary(&steps, started, &tally);
    result
}

/// The table at the end: each step's time and outcome, the total, the test counts.
fn print_summary(steps: &[(&str, f64, bool)], started: Instant, tally: &Tally) {
    println!("\n==> xtask test summary");
    for (name, secs, ok) in steps {
        println!(
            "  {:<26} {:>7.1} s  {}",
            name,
            secs,
            if *ok { "ok" } else { "FAILED" }
        );
    }
    println!("  total {:.1} s", started.elapsed().as_secs_f64());
    println!(
        "tests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
}

/// The binaries the privileged tests run: the Linux debug build and the Windows debug build
/// that `tests/tests/windows_wine.rs` runs under Wine (built once, about 3 minutes from scratch).
fn privileged_builds() -> anyhow::Result<()> {
    cmd::run(&mut command("cargo", &["build", "-p", "capyknock"]))?;
    cmd::run(&mut command(
        "cargo",
        &[
            "build",
            "-p",
            "capyknock",
            "--target",
            setup::WINDOWS_TARGET,
        ],
    ))
}

/// The crate's unit tests built for Windows and run under Wine by cargo's target runner,
/// `tests/wine/runner` (loopback only; docs/WINDOWS.md). Counted in the summary like the rest.
fn windows_unit_tests(tally: &mut Tally) -> anyhow::Result<()> {
    let mut cmd = command(
        "cargo",
        &[
            "test",
            "-p",
            "capyknock",
            "--lib",
            "--target",
            setup::WINDOWS_TARGET,
        ],
    );
    cmd.env(
        "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER",
        cmd::workspace_root().join("tests/wine/runner"),
    );
    tally_run(tally, &mut cmd)
}

fn cargo_test(tally: &mut Tally, args: &[&str]) -> anyhow::Result<()> {
    tally_run(tally, &mut command("cargo", args))
}

/// Runs a `cargo test` command, adding its counts to `tally`.
fn tally_run(tally: &mut Tally, cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let (ok, lines) = cmd::run_tee(cmd)?;
    tally.add(&lines);
    if !ok {
        bail!("{} failed", cmd::describe(cmd));
    }
    Ok(())
}

/// clippy (`-D warnings`, so also `cargo check`) of the full crate, daemon included, for
/// Windows, macOS and FreeBSD in one cargo run (the client alone is checked by `client_build`):
/// the daemon is gated on what a platform has, and these are the platforms it claims.
fn platforms_check() -> anyhow::Result<()> {
    let mut args = vec!["clippy", "-p", "capyknock"];
    for target in setup::SERVER_CHECK_TARGETS {
        args.extend(["--target", target]);
    }
    args.extend(["--", "-D", "warnings"]);
    cmd::run(&mut command("cargo", &args))
}
