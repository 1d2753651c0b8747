//! Helpers for capyknock's privileged end-to-end tests: network namespaces that clean up after
//! themselves, veth pairs, running code or programs inside a namespace, and finding the
//! `capyknock` binary.
//!
//! ```text
//!   [ns A] veth-a 10.x.y.1/24, fd00:x:y::1/64  <---->  veth-b 10.x.y.2/24, fd00:x:y::2/64 [ns B]
//! ```
//!
//! Every test that touches the network runs inside namespaces it created here; nothing is ever
//! attached to or changed in the machine's own namespace. Tests panic with a message instead of
//! returning errors, and refuse to run (fail, never skip) when not root.

pub mod daemon;
pub mod e2e;
pub mod firewall;
pub mod frames;
pub mod netns;
pub mod xdp_harness;

use std::path::PathBuf;

/// Fails the calling test with instructions when not running as root. Privileged tests never
/// skip silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, XDP, nftables): run `sudo -E cargo xtask test`"
    );
}

/// Path to the `capyknock` binary: `$CAPYKNOCK_BIN`, else `target/debug/capyknock` of this
/// workspace (`cargo xtask test` builds it first).
#[must_use]
pub fn capyknock_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CAPYKNOCK_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let bin = target.join("debug/capyknock");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p capyknock` (cargo xtask test does)",
        bin.display()
    );
    bin
}
