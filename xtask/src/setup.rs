//! Prerequisites as code: detects what building and testing capyknock need and installs what is
//! missing. Idempotent, and a few seconds when everything is present. Where it cannot install
//! (not root, not Debian/Ubuntu), it stops with the exact commands to run.
//!
//! What and why (docs/TOOLCHAIN.md has the long version):
//! - apt packages: C libraries for the nftables (libnftnl, libmnl) and pcap bindings, and the
//!   tools the privileged tests drive (iproute2, nftables, tcpdump, util-linux, fail2ban,
//!   systemd-analyze).
//! - the pinned stable toolchain (rust-toolchain.toml) with clippy and rustfmt, plus the Windows
//!   target for `cargo check` of the Windows code;
//! - the pinned nightly with `rust-src`, which compiles the eBPF object (`-Z build-std=core`);
//! - bpf-linker, linked against the nightly's own libLLVM so its LLVM major version matches the
//!   bitcode rustc emits (a plain `cargo install bpf-linker` picks Debian's LLVM 14 and fails).

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use crate::cmd::{self, command, is_root, output};

/// The stable toolchain; must match rust-toolchain.toml.
pub const STABLE: &str = "1.95.0";
/// The nightly that builds the eBPF object; must match capyknock/build.rs.
pub const NIGHTLY: &str = "nightly-2026-05-20";
/// Target for the Windows compile check.
pub const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";
/// bpf-linker release we build.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages needed to build and test.
const APT_PACKAGES: &[&str] = &[
    "pkg-config",
    "libnftnl-dev",
    "libmnl-dev",
    "libpcap-dev",
    "iproute2",
    "nftables",
    "tcpdump",
    // nsenter and setpriv: run the daemon in a namespace with bpffs reachable, and as a
    // non-root user in the control-socket test.
    "util-linux",
    // fail2ban-regex checks the shipped filter against a real daemon log.
    "fail2ban",
    // systemd-analyze verifies the shipped unit.
    "systemd",
    // The exec firewall backend's shipped ipset example is tested end to end.
    "ipset",
    "iptables",
    // mkfs.ext4/e2fsck: the replay-guarantee test runs the state directory on a small ext4
    // image and makes it fail (read-only) under the daemon.
    "e2fsprogs",
    // curl scrapes the metrics endpoint in tests/tests/metrics.rs (TCP and Unix socket).
    "curl",
    // cc builds the test-only clock shim (LD_PRELOAD) that steps the daemon's clock.
    "gcc",
];

#[derive(Debug, clap::Args)]
pub struct Options {}

pub fn setup(_opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    apt_packages()?;
    toolchains()?;
    bpf_linker()?;
    println!(
        "setup: all prerequisites present ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let install = format!(
        "apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !is_root() || output(Command::new("apt-get").arg("--version")).is_none() {
        bail!(
            "missing system packages: {}\nInstall them (Debian/Ubuntu) with:\n  sudo apt-get update && sudo {install}\n\
             then run this again.",
            missing.join(" ")
        );
    }
    println!("setup: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    let mut cmd = Command::new("apt-get");
    cmd.args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd::run(&mut cmd)
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.ends_with("install ok installed"))
}

fn toolchains() -> anyhow::Result<()> {
    let rustup = |args: &[&str]| -> anyhow::Result<()> {
        if output(Command::new("rustup").arg("--version")).is_none() {
            bail!(
                "rustup not found; install it (https://rustup.rs), then run: rustup {}",
                args.join(" ")
            );
        }
        cmd::run(Command::new("rustup").args(args))
    };
    let installed = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    let has = |name: &str| {
        installed
            .lines()
            .any(|l| l.starts_with(&format!("{name}-")))
    };
    if !has(STABLE) {
        println!("setup: installing toolchain {STABLE}");
        rustup(&[
            "toolchain",
            "install",
            STABLE,
            "--profile",
            "minimal",
            "--component",
            "rustfmt,clippy",
        ])?;
    }
    if !has(NIGHTLY) {
        println!("setup: installing toolchain {NIGHTLY}");
        rustup(&[
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ])?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: adding rust-src to {NIGHTLY}");
        rustup(&["component", "add", "rust-src", "--toolchain", NIGHTLY])?;
    }
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        STABLE,
    ]))
    .unwrap_or_default();
    for component in ["rustfmt", "clippy"] {
        if !components.lines().any(|l| l.starts_with(component)) {
            println!("setup: adding {component} to {STABLE}");
            rustup(&["component", "add", component, "--toolchain", STABLE])?;
        }
    }
    let targets = output(Command::new("rustup").args([
        "target",
        "list",
        "--installed",
        "--toolchain",
        STABLE,
    ]))
    .unwrap_or_default();
    if !targets.lines().any(|l| l.trim() == WINDOWS_TARGET) {
        println!("setup: adding target {WINDOWS_TARGET} to {STABLE}");
        rustup(&["target", "add", WINDOWS_TARGET, "--toolchain", STABLE])?;
    }
    Ok(())
}

/// The nightly's sysroot and LLVM major version.
fn nightly_llvm() -> anyhow::Result<(PathBuf, String)> {
    let vv = output(Command::new("rustc").arg(format!("+{NIGHTLY}")).arg("-vV"))
        .with_context(|| format!("cannot run rustc +{NIGHTLY}"))?;
    let major = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
        .context("rustc -vV printed no LLVM version")?;
    let sysroot = output(
        Command::new("rustc")
            .arg(format!("+{NIGHTLY}"))
            .args(["--print", "sysroot"]),
    )
    .context("rustc --print sysroot failed")?;
    Ok((PathBuf::from(sysroot.trim()), major))
}

/// The libLLVM that `bpf-linker` is linked against, from `ldd`, if it runs at all.
fn bpf_linker_llvm() -> Option<String> {
    let version = output(Command::new("bpf-linker").arg("--version"))?;
    if !version.contains(BPF_LINKER_VERSION) {
        return None;
    }
    let path = find_in_path("bpf-linker")?;
    let ldd = output(Command::new("ldd").arg(path))?;
    ldd.lines()
        .find(|l| l.contains("libLLVM") && !l.contains("not found"))
        .map(str::to_owned)
}

/// The first `name` on `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn bpf_linker() -> anyhow::Result<()> {
    let (sysroot, major) = nightly_llvm()?;
    if let Some(lib) = bpf_linker_llvm() {
        // e.g. "libLLVM.so.22.1-rust-1.97.0-nightly => /path (0x...)"
        if lib.contains(&format!("libLLVM.so.{major}."))
            || lib.contains(&format!("libLLVM-{major}"))
        {
            return Ok(());
        }
        println!(
            "setup: bpf-linker uses another LLVM ({}); rebuilding for LLVM {major}",
            lib.trim()
        );
    }
    // Link against the nightly's own libLLVM through a prefix folder with the names
    // bpf-linker's build script looks for. The folder must stay: bpf-linker finds the library
    // through it at run time.
    let libdir = sysroot.join("lib");
    let llvm = std::fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with(&format!("libLLVM.so.{major}")))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", libdir.display()))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let prefix = cargo_home.join("capyknock-llvm").join(NIGHTLY);
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", llvm.as_str()] {
        let link = prefix_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&llvm), &link)
            .with_context(|| format!("creating {}", link.display()))?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against {llvm} (about a minute or two)"
    );
    let started = Instant::now();
    let mut install = command(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ],
    );
    install.env("LLVM_PREFIX", &prefix);
    cmd::run(&mut install)
        .context("building bpf-linker failed; see docs/TOOLCHAIN.md for the manual steps")?;
    println!(
        "setup: bpf-linker built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if bpf_linker_llvm().is_none() {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}
