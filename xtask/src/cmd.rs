//! Running programs for the tasks (always with argv, never a shell): with the terminal's
//! stdio, streamed, or for their output; and building the `capyknock` binary. The lab side
//! (programs in namespaces, output captured) is in `capyknock_testkit::process`.

use std::{
    ffi::OsStr,
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
pub use capyknock_testkit::{files::workspace_root, is_root, process::describe};

/// Builds a command running in the workspace root.
pub fn command(program: impl AsRef<OsStr>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(workspace_root());
    cmd
}

/// Runs `cmd`, inheriting stdio; fails with the command line when it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout if it exits zero, `None` if it fails or cannot start.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd`, echoing its stdout line by line and returning those lines, so callers can read
/// test summaries while the output still streams.
pub fn run_tee(cmd: &mut Command) -> anyhow::Result<(bool, Vec<String>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {}", describe(cmd)))?;
    let mut lines = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading command output")?;
            println!("{line}");
            lines.push(line);
        }
    }
    let status = child.wait().context("waiting for command")?;
    Ok((status.success(), lines))
}

/// The `capyknock` binary of the debug or release build, built first (quietly) unless
/// `no_build`; `announce` is told the cargo command line before it runs.
pub fn capyknock_binary(
    release: bool,
    no_build: bool,
    announce: impl FnOnce(&str),
) -> anyhow::Result<PathBuf> {
    let bin = capyknock_testkit::files::capyknock_binary(if release { "release" } else { "debug" });
    if !no_build {
        let mut args = vec!["build", "--quiet", "-p", "capyknock"];
        if release {
            args.push("--release");
        }
        announce(&format!("cargo {}", args.join(" ")));
        run(command("cargo", &args).stdout(Stdio::null()))?;
    }
    if !bin.exists() {
        bail!(
            "{} is missing: build it first (leave out --no-build)",
            bin.display()
        );
    }
    Ok(bin)
}
