//! CI proof that the client is as easy to get as the README says: the public install command
//! (`cargo install --locked --path capyknock --no-default-features --features client`) runs in a
//! clean copy of the tree with `bpf-linker`, cargo-installed tools and the eBPF nightly out of
//! reach (filtered `PATH`, `RUSTUP_TOOLCHAIN` pinned to the stable), the binary links libc only,
//! and `cargo check` of the client passes for the other platforms users run it on.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{
    cmd::{self, describe, output, workspace_root},
    setup::STABLE,
};

/// Where the clean copy, its target directory and the installed client live (workspace-relative).
pub const BASE_DIR: &str = "target/client-build";

/// Targets the client must compile for besides the host (setup adds them to the stable).
pub const CHECK_TARGETS: &[&str] = &[
    "aarch64-unknown-linux-gnu",
    "x86_64-apple-darwin",
    "aarch64-apple-darwin",
    "x86_64-pc-windows-gnu",
    "x86_64-unknown-freebsd",
];

/// Shared libraries a client binary may link: libc and what the Rust runtime always brings.
const ALLOWED_LIBS: &[&str] = &[
    "linux-vdso.so",
    "libc.so",
    "libgcc_s.so",
    "ld-linux",
    "libm.so",
];

/// Builds and installs the client the public way in a clean environment, checks its `ldd`, and
/// checks the other targets. Returns the installed binary.
pub fn run() -> anyhow::Result<PathBuf> {
    let base = workspace_root().join(BASE_DIR);
    let src = base.join("src");
    copy_clean_tree(&src)?;
    let bin_dir = base.join("bin");
    let path = clean_path(&bin_dir)?;
    let env = |cmd: &mut Command| {
        cmd.env("PATH", &path)
            .env("RUSTUP_TOOLCHAIN", STABLE)
            .env("CARGO_TARGET_DIR", base.join("target"))
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER")
            .env_remove("CARGO_BUILD_TARGET")
            .current_dir(&src);
    };
    let which = Command::new("sh")
        .args(["-c", "command -v bpf-linker"])
        .env("PATH", &path)
        .output()
        .context("running sh")?;
    if which.status.success() {
        bail!("bpf-linker is still reachable through the filtered PATH");
    }
    let root = base.join("root");
    let mut install = Command::new("cargo");
    install.args([
        "install",
        "--locked",
        "--path",
        "capyknock",
        "--no-default-features",
    ]);
    install.args(["--features", "client", "--root"]).arg(&root);
    env(&mut install);
    println!("client build: {}", describe(&install));
    cmd::run(&mut install)?;
    let binary = root.join("bin/capyknock");
    check_ldd(&binary)?;
    // One cargo run for all targets: their builds share the job queue.
    let mut check = Command::new("cargo");
    check.args([
        "check",
        "--locked",
        "-p",
        "capyknock",
        "--no-default-features",
        "--features",
        "client",
    ]);
    for target in CHECK_TARGETS {
        check.args(["--target", target]);
    }
    env(&mut check);
    println!("client build: {}", describe(&check));
    cmd::run(&mut check)?;
    Ok(binary)
}

/// `git archive` of the working tree (uncommitted changes included, untracked files not) into
/// `dir`: a clean clone without its history.
fn copy_clean_tree(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = workspace_root();
    let stash = output(
        Command::new("git")
            .args(["stash", "create"])
            .current_dir(&root),
    )
    .map(|s| s.trim().to_owned())
    .filter(|s| !s.is_empty())
    .unwrap_or_else(|| "HEAD".to_owned());
    let archive = dir.join("../src.tar");
    cmd::run(
        Command::new("git")
            .args(["archive", "--format=tar", "-o"])
            .arg(&archive)
            .arg(&stash)
            .current_dir(&root),
    )?;
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(dir),
    )?;
    let _ = std::fs::remove_file(&archive);
    Ok(())
}

/// A `PATH` without bpf-linker: every entry that holds it is dropped, and what the build needs
/// from such an entry (cargo, rustc, rustup's proxies) is linked from `bin_dir`.
fn clean_path(bin_dir: &Path) -> anyhow::Result<std::ffi::OsString> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if bin_dir.exists() {
        std::fs::remove_dir_all(bin_dir)?;
    }
    std::fs::create_dir_all(bin_dir)?;
    let mut dirs = vec![bin_dir.to_path_buf()];
    for dir in std::env::split_paths(&path) {
        if dir.join("bpf-linker").exists() {
            for tool in ["cargo", "rustc", "rustup", "rustdoc"] {
                let from = dir.join(tool);
                let to = bin_dir.join(tool);
                if from.exists() && !to.exists() {
                    std::os::unix::fs::symlink(&from, &to)
                        .with_context(|| format!("linking {}", to.display()))?;
                }
            }
        } else if !dir.to_string_lossy().contains("nightly") {
            dirs.push(dir);
        }
    }
    std::env::join_paths(dirs).context("joining PATH")
}

/// Fails unless `ldd binary` lists only [`ALLOWED_LIBS`]; prints the listing.
pub fn check_ldd(binary: &Path) -> anyhow::Result<()> {
    let ldd = output(Command::new("ldd").arg(binary))
        .with_context(|| format!("ldd {} failed", binary.display()))?;
    println!("client build: ldd {}\n{ldd}", binary.display());
    let bad: Vec<&str> = ldd
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !ALLOWED_LIBS.iter().any(|ok| l.contains(ok)))
        .collect();
    if !bad.is_empty() {
        bail!("the client links more than libc: {bad:?}");
    }
    Ok(())
}
