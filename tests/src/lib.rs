//! Helpers for capyknock's privileged end-to-end tests, on top of the lab kit
//! (`capyknock-testkit`: namespaces, veths, the daemon guard, the TCP service, probes, the clock),
//! with what only the tests need: the daemon lab with fixed-key users ([`daemon`]), the
//! end-to-end lab driving the real binary ([`e2e`]), the firewall lab ([`firewall`]), fleet
//! nodes on a real etcd cluster ([`fleet`]), crafted
//! frames ([`frames`]) and the XDP differential harness ([`xdp_harness`]).
//!
//! ```text
//!   [ns A] veth-a 10.x.y.1/24, fd00:x:y::1/64  <---->  veth-b 10.x.y.2/24, fd00:x:y::2/64 [ns B]
//! ```
//!
//! Every test that touches the network runs inside namespaces it created; nothing is ever
//! attached to or changed in the machine's own namespace. Tests panic with a message instead of
//! returning errors, and refuse to run (fail, never skip) when not root.

pub mod daemon;
pub mod e2e;
pub mod firewall;
pub mod fleet;
pub mod frames;
pub mod raw;
pub mod xdp_harness;

use std::path::PathBuf;

/// Fails the calling test with instructions when not running as root. Privileged tests never
/// skip silently.
pub fn require_root() {
    assert!(
        capyknock_testkit::is_root(),
        "this test needs root (network namespaces, XDP, nftables): run `sudo -E cargo xtask test`"
    );
}

/// Path to the `capyknock` binary: `$CAPYKNOCK_BIN`, else the debug build of this workspace
/// (`cargo xtask test` builds it first).
#[must_use]
pub fn capyknock_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("CAPYKNOCK_BIN") {
        return PathBuf::from(path);
    }
    let bin = capyknock_testkit::files::capyknock_binary("debug");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build -p capyknock` (cargo xtask test does)",
        bin.display()
    );
    bin
}
