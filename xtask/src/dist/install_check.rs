//! Installs a `.deb` into a throwaway root and checks it: a copy-on-write overlay of `/` in a
//! private mount namespace (so dependencies resolve and nothing reaches the real system), with a
//! `policy-rc.d` that forbids starting services. The steps are in `install_check.sh` (fixed
//! text, arguments passed as positional parameters): `dpkg -i`, the installed
//! `capyknock --version`, `man -l` of its page, `systemd-analyze verify` of the unit, the
//! config directory's mode and the group; then remove (only config may stay) and purge (nothing
//! may stay).

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd::{self, is_root};

const SCRIPT: &str = include_str!("install_check.sh");

pub fn run(deb: &Path, package: &str, server: bool, work: &Path) -> anyhow::Result<()> {
    if !is_root() {
        bail!("the install check needs root (mount namespace, overlay, chroot)");
    }
    if work.exists() {
        std::fs::remove_dir_all(work).with_context(|| format!("removing {}", work.display()))?;
    }
    std::fs::create_dir_all(work)?;
    let script = work.join("install_check.sh");
    std::fs::write(&script, SCRIPT)?;
    println!(
        "dist --check: installing {} into a throwaway root",
        deb.display()
    );
    let result = cmd::run(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh"])
            .arg(&script)
            .arg(work)
            .arg(deb)
            .arg(package)
            .arg(if server { "yes" } else { "no" }),
    );
    // The overlay's upper directory may hold root-owned files; it is under target/ and goes on
    // the next run.
    result
}
