//! Prerequisites as code: detects what building and testing capyknock need and installs what is
//! missing. Idempotent, and a few seconds when everything is present. Where it cannot install
//! (not root, not Debian/Ubuntu), it stops with the exact commands to run.
//!
//! What and why (docs/TOOLCHAIN.md has the long version):
//! - apt packages: C libraries for the nftables (libnftnl, libmnl) and pcap bindings; with
//!   `--for-tests` also the tools the privileged tests drive (iproute2, nftables, tcpdump,
//!   util-linux, fail2ban, systemd-analyze, ...); with `--for-dist` what `cargo xtask dist` needs
//!   (cargo-deb, lintian, the musl and Windows targets, mingw). A production server runs plain
//!   `setup` and gets no test tools. Nothing setup does starts a service: apt runs under a
//!   `policy-rc.d` that forbids it.
//! - the pinned stable toolchain (rust-toolchain.toml) with clippy and rustfmt, plus the Windows,
//!   macOS and FreeBSD targets for the compile checks (and the Windows build run under Wine);
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
/// Target of the Windows build (compile check, the Wine tests, the Windows zip).
pub const WINDOWS_TARGET: &str = "x86_64-pc-windows-gnu";
/// Targets the whole crate, daemon included, is checked for besides Linux (`cargo xtask test`).
pub const SERVER_CHECK_TARGETS: &[&str] = &[
    WINDOWS_TARGET,
    "x86_64-apple-darwin",
    "x86_64-unknown-freebsd",
];
/// bpf-linker release we build.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages needed to build.
const APT_BUILD: &[&str] = &[
    "pkg-config",
    "libnftnl-dev",
    "libmnl-dev",
    "libpcap-dev",
    "gcc",
    // etcd-client's build script compiles etcd's .proto files with protoc (fleet mode); they
    // import google/protobuf/descriptor.proto, which is in libprotobuf-dev (only a Recommends
    // of protobuf-compiler, and we install without those).
    "protobuf-compiler",
    "libprotobuf-dev",
];
/// Debian packages only the tests need (`setup --for-tests`).
const APT_TESTS: &[&str] = &[
    "iproute2",
    "nftables",
    "tcpdump",
    // nsenter and setpriv: run the daemon in a namespace with bpffs reachable, and as a
    // non-root user in the control-socket test.
    "util-linux",
    // fail2ban-regex checks the shipped filter against a real daemon log.
    "fail2ban",
    // systemd-analyze verifies the shipped unit; it runs `man` on the unit's Documentation=.
    "systemd",
    "man-db",
    // The exec firewall backend's shipped ipset example is tested end to end.
    "ipset",
    "iptables",
    // mkfs.ext4/e2fsck: the replay-guarantee test runs the state directory on a small ext4
    // image and makes it fail (read-only) under the daemon.
    "e2fsprogs",
    // curl scrapes the metrics endpoint in tests/tests/metrics.rs (TCP and Unix socket).
    "curl",
    // Fleet tests (tests/tests/fleet.rs) start real etcd members in their namespaces and use
    // etcdctl to look at the keys.
    "etcd-server",
    "etcd-client",
    // cc builds the test-only clock shim (LD_PRELOAD) that steps the daemon's clock (also in
    // APT_BUILD; the list is deduplicated).
    "gcc",
    // The Windows build runs under Wine in tests/tests/windows_wine.rs: mingw links the .exe
    // and the test's ProcessPrng shim DLL, wine64 runs them (Wine 8.0; docs/WINDOWS.md).
    "gcc-mingw-w64-x86-64",
    "wine64",
];
/// Debian packages `cargo xtask dist` and `dist --check` need (`setup --for-dist`).
const APT_DIST: &[&str] = &[
    // lintian checks the .debs; dpkg-dev gives cargo-deb dpkg-shlibdeps.
    "lintian",
    "dpkg-dev",
    // The Windows client zip is linked with mingw.
    "gcc-mingw-w64-x86-64",
    // `dist --check` reads the installed man page and verifies the installed unit.
    "man-db",
    "systemd",
    // The Windows client zip (not in a minimal Debian).
    "zip",
];
/// Target of the static Linux client.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// cargo-deb release `setup --for-dist` installs.
const CARGO_DEB_VERSION: &str = "3.8.0";

#[derive(Debug, Default, clap::Args)]
pub struct Options {
    /// Also install the tools the tests drive (the `test`, `demo`, `load` and `bench-xdp` tasks
    /// ask for this).
    #[arg(long)]
    pub for_tests: bool,
    /// Also install what `cargo xtask dist` needs: cargo-deb, lintian, the musl target, mingw.
    #[arg(long)]
    pub for_dist: bool,
}

impl Options {
    /// What the tests need.
    pub fn tests() -> Self {
        Self {
            for_tests: true,
            for_dist: false,
        }
    }
}

pub fn setup(opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut packages = APT_BUILD.to_vec();
    if opts.for_tests {
        packages.extend_from_slice(APT_TESTS);
    }
    if opts.for_dist {
        packages.extend_from_slice(APT_DIST);
    }
    packages.sort_unstable();
    packages.dedup();
    apt_packages(&packages)?;
    toolchains(opts.for_dist)?;
    bpf_linker()?;
    if opts.for_dist {
        cargo_deb()?;
    }
    println!(
        "setup: all prerequisites present ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
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
    let _guard = NoServiceStarts::new()?;
    cmd::run(&mut cmd)
}

/// While alive, `/usr/sbin/policy-rc.d` exits 101, so packages apt installs (fail2ban, ...) do
/// not start their services. Only written if no policy exists; removed on drop.
struct NoServiceStarts {
    path: Option<PathBuf>,
}

impl NoServiceStarts {
    const PATH: &str = "/usr/sbin/policy-rc.d";

    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = PathBuf::from(Self::PATH);
        if path.exists() {
            return Ok(Self { path: None });
        }
        std::fs::write(
            &path,
            "#!/bin/sh\n# written by cargo xtask setup: start no service\nexit 101\n",
        )
        .with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", path.display()))?;
        Ok(Self { path: Some(path) })
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// cargo-deb, pinned, for `cargo xtask dist`.
fn cargo_deb() -> anyhow::Result<()> {
    let version = output(Command::new("cargo").args(["deb", "--version"])).unwrap_or_default();
    if version.contains(CARGO_DEB_VERSION) {
        return Ok(());
    }
    println!("setup: installing cargo-deb {CARGO_DEB_VERSION}");
    cmd::run(&mut command(
        "cargo",
        &[
            "install",
            "--locked",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
        ],
    ))
}

fn dpkg_installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.ends_with("install ok installed"))
}

fn toolchains(for_dist: bool) -> anyhow::Result<()> {
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
    let mut wanted = SERVER_CHECK_TARGETS.to_vec();
    wanted.extend_from_slice(crate::client_build::CHECK_TARGETS);
    if for_dist {
        wanted.push(MUSL_TARGET);
    }
    wanted.sort_unstable();
    wanted.dedup();
    for target in wanted {
        if !targets.lines().any(|l| l.trim() == target) {
            println!("setup: adding target {target} to {STABLE}");
            rustup(&["target", "add", target, "--toolchain", STABLE])?;
        }
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
