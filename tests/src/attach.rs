//! What is attached to an interface in a network namespace: the pre-filter as XDP (native or
//! generic mode, from `ip -o link`) or at tc ingress (the kernel's tcx list: Debian 12's `tc`
//! predates tcx and does not show it).
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed `ip` or BPF query fails the calling test"
)]

use aya::programs::{SchedClassifier, TcAttachType};
use capyknock_common::maps::TC_PROGRAM;
use capyknock_testkit::netns::NetNs;

/// The XDP attach flag `ip -o link` shows for `iface` in `ns`: `xdp` (native), `xdpgeneric`
/// (SKB), or `None` when no XDP program is attached.
#[must_use]
pub fn xdp_flag(ns: &NetNs, iface: &str) -> Option<String> {
    let out = ns.ip(&["-o", "link", "show", "dev", iface]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .find(|w| ["xdp", "xdpgeneric", "xdpdrv", "xdpoffload"].contains(w))
        .map(str::to_owned)
}

/// The names of the tcx programs on the ingress of `iface`, asked from inside `ns`.
#[must_use]
pub fn tcx_ingress_programs(ns: &NetNs, iface: &str) -> Vec<String> {
    ns.run(|| {
        let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress).unwrap();
        programs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect()
    })
    .unwrap()
}

/// How capyknock's pre-filter is attached to `iface` in `ns`: `xdp` or `xdpgeneric` (the XDP
/// flag), `tc` (our program in the tcx ingress list), or `None`.
#[must_use]
pub fn prefilter_attachment(ns: &NetNs, iface: &str) -> Option<String> {
    xdp_flag(ns, iface).or_else(|| {
        tcx_ingress_programs(ns, iface)
            .iter()
            .any(|name| name == TC_PROGRAM)
            .then(|| "tc".to_owned())
    })
}
