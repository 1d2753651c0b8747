//! Interfaces that appear after start: the daemon (XDP capture, `interfaces = "all"`) attaches
//! to a veth created once it is ready, so a knock through it opens the port (real nftables, real
//! TCP connect) and junk to the knock port through it is judged by the XDP program and never
//! answered; `status` lists the new interface. And a named interface that does not exist is an
//! error, for `server --iface` and for `check-config`. Needs root.
//!
//! ```text
//!   [client] 10.77.S.2 ---- 10.77.S.1 [server: capyknock server, interfaces = "all"]
//!   [late]  10.77.L.2 ---- 10.77.L.1 [server]        (created after the daemon is ready)
//! ```

use std::{net::SocketAddr, time::Duration};

use capyknock_testkit::{
    KNOCK_PORT,
    clock::unix_now,
    netns::{NetNs, connect},
    probe::probe_from,
};
use capyknock_tests::daemon::{
    DaemonLab, PROBE_TIMEOUT, SERVICE, Sniffer, describe_ip_frame, knock, user,
};

/// The config the lab writes, with `interfaces` replaced by `value`.
fn lab_with_interfaces(tag: &str, value: &str) -> DaemonLab {
    let lab = DaemonLab::new(tag);
    lab.write_config(&[&user("alice", 1)]);
    let text = std::fs::read_to_string(lab.config()).unwrap();
    let named = format!("interfaces = [\"{}\"]", lab.link.a_if);
    assert!(text.contains(&named), "{text}");
    lab.write_raw_config(&text.replace(&named, &format!("interfaces = {value}")));
    lab
}

fn greets(ns: &NetNs, target: SocketAddr) -> bool {
    probe_from(ns, target, PROBE_TIMEOUT).unwrap().greeting() == Some("hello")
}

/// Regression (hardening review, issue 13.6): a valid knock through an interface created after
/// start never reached the daemon, and a probe through it reached the stack.
#[test]
fn a_new_interface_is_attached_and_knocks_through_it_work() {
    follow("iff", "\"all\"", true, 231);
}

/// The same under pcap capture, with a pattern: the new interface gets its own handle.
#[test]
fn pcap_capture_follows_a_pattern() {
    follow("ifp", "[\"cka*\"]", false, 232);
}

fn follow(tag: &str, interfaces: &str, xdp: bool, subnet: u8) {
    let mut lab = lab_with_interfaces(tag, interfaces);
    lab.start_with(&["--capture", if xdp { "xdp" } else { "pcap" }]);
    let before = lab.status();
    assert!(
        before.capture.interfaces.contains(&lab.link.a_if),
        "{:?}",
        before.capture
    );
    assert_eq!(
        before.capture.follows,
        interfaces.trim_matches(['[', ']', '"'])
    );

    // A new client, on a new veth, after the daemon is ready.
    let late = NetNs::unique(&format!("{tag}l")).unwrap();
    let link = connect(&lab.server, &late, subnet).unwrap();
    lab.wait_log(&["new interface: capture attached", &link.a_if]);
    let status = lab.status();
    assert!(
        status.capture.interfaces.contains(&link.a_if),
        "status does not list {}: {:?}",
        link.a_if,
        status.capture
    );
    assert!(
        !xdp || status.capture.detail.contains(&format!("{}: ", link.a_if)),
        "no XDP mode for {}: {:?}",
        link.a_if,
        status.capture
    );

    let service = SocketAddr::new(link.a(false), SERVICE.port);
    let knock_port = SocketAddr::new(link.a(false), KNOCK_PORT);
    assert!(
        !greets(&late, service),
        "the service is open before a knock"
    );

    // Junk to the knock port through the new interface: judged in the kernel, never answered.
    let judged_before = lab.prefilter("bad_header");
    let sniffer = Sniffer::start(&late, &link.b_if);
    let sent = late
        .send_udp(None, knock_port, &[[0u8; 256], [0u8; 256], [0u8; 256]])
        .unwrap();
    assert_eq!(sent, 3);
    std::thread::sleep(Duration::from_millis(500));
    let answers: Vec<String> = sniffer
        .finish()
        .iter()
        .filter_map(|f| describe_ip_frame(f))
        .collect();
    assert!(answers.is_empty(), "the server answered: {answers:?}");
    assert_eq!(
        lab.prefilter("bad_header") - judged_before,
        3,
        "the pre-filter on the new interface did not judge the junk"
    );

    // A valid knock through the new interface opens the port for that client.
    let delivered = lab.prefilter("delivered");
    let alice = user("alice", 1);
    late.send_udp(None, knock_port, &[knock(&alice, &[SERVICE], unix_now())])
        .unwrap();
    lab.wait_log(&["knock accepted", "nickname=alice"]);
    assert_eq!(lab.prefilter("delivered"), delivered + 1);
    let open = capyknock_testkit::wait::wait_until(
        Duration::from_secs(5),
        Duration::from_millis(100),
        || Ok(greets(&late, service)),
    )
    .unwrap();
    assert!(
        open,
        "tcp/22 still closed after the knock:\n{}",
        lab.run_log()
    );

    // Removed again: forgotten, and the daemon runs on.
    drop(late);
    lab.wait_log(&["interface removed: capture detached", &link.a_if]);
    assert!(!lab.status().capture.interfaces.contains(&link.a_if));
}

/// Regression (issue 14.6): `--iface eth9` (no such interface) with capture `auto` fell through
/// to a UDP socket on every interface and reported ready.
#[test]
fn a_missing_named_interface_is_an_error_at_start() {
    let lab = lab_with_interfaces("ifm", "[]");
    let out = lab
        .server
        .command("timeout")
        .arg("20")
        .arg(capyknock_tests::capyknock_bin())
        .arg("server")
        .arg("--config")
        .arg(lab.config())
        .args(["--iface", "ck-eth9", "--capture", "auto"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(124),
        "still running after 20 s: {stderr}"
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"ck-eth9\" does not exist"),
        "unclear error: {stderr}"
    );
    assert!(!stderr.contains("using a udp socket"), "{stderr}");
}

/// Regression (issue 14.6): `check-config` said OK for `interfaces = ["eth9"]`.
#[test]
fn check_config_refuses_a_missing_named_interface() {
    let check = |lab: &DaemonLab| {
        lab.server
            .command(capyknock_tests::capyknock_bin())
            .arg("check-config")
            .arg(lab.config())
            .output()
            .unwrap()
    };
    let lab = lab_with_interfaces("ifc", "[\"ck-eth9\"]");
    let out = check(&lab);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted it: {stderr}");
    assert!(
        stderr.contains("\"ck-eth9\" does not exist"),
        "unclear error: {stderr}"
    );
    // A pattern need not match anything yet, and "all" is fine.
    for ok in ["[\"ck-eth*\"]", "\"all\""] {
        let lab = lab_with_interfaces("ifo", ok);
        let out = check(&lab);
        assert!(
            out.status.success(),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
