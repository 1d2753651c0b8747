//! Helpers for capyknock's privileged end-to-end tests, on top of the lab kit
//! (`capyknock-testkit`: namespaces, veths, the daemon guard, the TCP service, probes, the clock),
//! with what only the tests need: how the pre-filter is attached ([`attach`]), the daemon lab
//! with fixed-key users ([`daemon`]), the
//! end-to-end lab driving the real binary ([`e2e`]), the firewall lab ([`firewall`]), fleet
//! nodes on a real etcd cluster ([`fleet`]), crafted frames ([`frames`]), the XDP differential
//! harness ([`xdp_harness`]) and the Windows build under Wine ([`wine`]).
//!
//! ```text
//!   [ns A] veth-a 10.x.y.1/24, fd00:x:y::1/64  <---->  veth-b 10.x.y.2/24, fd00:x:y::2/64 [ns B]
//! ```
//!
//! Every test that touches the network runs inside namespaces it created; nothing is ever
//! attached to or changed in the machine's own namespace. Tests panic with a message instead of
//! returning errors, and refuse to run (fail, never skip) when not root.

pub mod attach;
pub mod daemon;
pub mod e2e;
pub mod firewall;
pub mod fleet;
pub mod frames;
pub mod raw;
pub mod wine;
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

/// The systemd unit every test daemon runs under the capability set of.
const UNIT: &str = "contrib/systemd/capyknock.service";

/// `setpriv` and its arguments that give the program it runs exactly the capabilities of the
/// shipped systemd unit (`CapabilityBoundingSet=`, read from the unit file, so the tests follow
/// it) and `NoNewPrivileges`, as the unit does. Every daemon the tests start goes through it, so
/// the whole suite proves the daemon works with what the unit grants, no more.
#[must_use]
pub fn unit_capabilities_wrapper() -> Vec<String> {
    unit_capabilities_wrapper_plus(&[])
}

/// [`unit_capabilities_wrapper`] with `extra` capabilities (setpriv's spelling, `sys_nice`)
/// added to the unit's, as a `systemctl edit` drop-in would.
#[must_use]
pub fn unit_capabilities_wrapper_plus(extra: &[&str]) -> Vec<String> {
    let unit = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(UNIT);
    let text = std::fs::read_to_string(&unit)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", unit.display()));
    let caps = unit_capabilities(&text)
        .unwrap_or_else(|| panic!("{} has no CapabilityBoundingSet= line", unit.display()));
    let mut bounding = String::from("--bounding-set=-all");
    for cap in caps
        .into_iter()
        .chain(extra.iter().map(|c| (*c).to_owned()))
    {
        bounding.push_str(",+");
        bounding.push_str(&cap);
    }
    [
        "setpriv",
        &bounding,
        "--inh-caps=-all",
        "--no-new-privs",
        "--",
    ]
    .map(String::from)
    .to_vec()
}

/// The capabilities of a unit's `CapabilityBoundingSet=` line, in setpriv's spelling
/// (`CAP_NET_ADMIN` becomes `net_admin`).
fn unit_capabilities(unit: &str) -> Option<Vec<String>> {
    let line = unit
        .lines()
        .find_map(|l| l.trim().strip_prefix("CapabilityBoundingSet="))?;
    Some(
        line.split_whitespace()
            .map(|c| c.trim_start_matches("CAP_").to_ascii_lowercase())
            .collect(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_capabilities_are_read_in_setprivs_spelling() {
        let unit = "[Service]\n# CapabilityBoundingSet= in a comment\nCapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN\n";
        assert_eq!(
            unit_capabilities(unit),
            Some(vec!["bpf".to_owned(), "net_admin".to_owned()])
        );
        assert_eq!(unit_capabilities("[Service]\n"), None);
    }

    #[test]
    fn the_shipped_unit_limits_capabilities() {
        let wrapper = unit_capabilities_wrapper();
        assert_eq!(wrapper.first().map(String::as_str), Some("setpriv"));
        assert!(
            wrapper
                .iter()
                .any(|a| a.starts_with("--bounding-set=-all,+")),
            "{wrapper:?}"
        );
    }
}
