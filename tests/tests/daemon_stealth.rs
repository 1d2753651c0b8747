//! Stealth whatever the firewall backend: the server never answers a knock or junk to the knock
//! port, with the exec backend (which, before, dropped nothing: pcap capture left the kernel to
//! answer every knock with ICMP port unreachable) and with frames XDP hands to the stack (IPv4
//! fragments, reassembled by the kernel). With `none` the daemon says that stealth is the
//! admin's job. Needs root.
//!
//! ```text
//!   [client] 10.77.S.2 (sniffer) ---- 10.77.S.1 [server: capyknock server --firewall exec|none]
//! ```

use std::time::Duration;

use capyknock_testkit::clock::unix_now;
use capyknock_tests::{
    daemon::{DaemonLab, SERVICE, Sniffer, describe_ip_frame, knock, mac_of, send_raw_frame, user},
    frames,
};

/// An exec configuration that changes nothing and drops nothing: the worst case for stealth.
const EXEC_WITHOUT_DROP: &str = "
[firewall]
backend = \"exec\"

[firewall.exec]
open = [\"/bin/true\"]
close = [\"/bin/true\"]
";

fn lab_with(tag: &str, firewall: &str) -> DaemonLab {
    let lab = DaemonLab::new(tag);
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    let text = std::fs::read_to_string(lab.config()).unwrap();
    let lab_firewall = "[firewall]\nbackend = \"nftables\"\n";
    assert!(text.contains(lab_firewall), "{text}");
    lab.write_raw_config(&text.replace(lab_firewall, firewall.trim_start()));
    lab
}

/// IP packets the server sent to the client while `f` ran.
fn answers_during(lab: &DaemonLab, f: impl FnOnce()) -> Vec<String> {
    let sniffer = Sniffer::start(&lab.client, &lab.link.b_if);
    f();
    std::thread::sleep(Duration::from_millis(500));
    sniffer
        .finish()
        .iter()
        .filter_map(|frame| describe_ip_frame(frame))
        .collect()
}

/// Regression (hardening review): with `--firewall exec` and pcap capture a real knock was
/// answered three times with ICMP port unreachable.
#[test]
fn exec_backend_with_pcap_capture_never_answers() {
    let mut lab = lab_with("sxp", EXEC_WITHOUT_DROP);
    lab.start_with(&["--capture", "pcap"]);
    lab.wait_log(&["has no knock_drop", "udp/62201"]);
    let alice = user("alice", 1);
    let answers = answers_during(&lab, || {
        lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 3);
        lab.send(&[0u8; 64], false, 3);
        lab.send(&[0u8; 256], true, 3);
    });
    assert!(answers.is_empty(), "the server answered: {answers:?}");
    // The knock itself was seen and accepted (capture works; the exec backend ran `open`).
    lab.wait_log(&["knock accepted", "nickname=alice"]);
}

/// Regression (hardening review): under XDP, frames the program passes to the stack (here IPv6
/// with seven extension headers, one more than it parses) reached the host's UDP layer on the
/// knock port; with the exec backend nothing dropped them, so the host answered.
#[test]
fn frames_xdp_passes_get_no_answer_with_exec() {
    let mut lab = lab_with("sxv", EXEC_WITHOUT_DROP);
    lab.start();
    let client = (
        mac_of(&lab.client, &lab.link.b_if),
        as_v6(lab.client_addr(true)),
    );
    let server = (
        mac_of(&lab.server, &lab.link.a_if),
        as_v6(lab.server_addr(true)),
    );
    let seven: Vec<(u8, Vec<u8>)> = (0..7)
        .map(|_| (frames::DSTOPTS, frames::ext_options(0)))
        .collect();
    let answers_to = |port: u16| {
        let frame = frames::ipv6_udp_routable(client, server, &seven, port, &[7u8; 256]);
        let sniffer = Sniffer::start(&lab.client, &lab.link.b_if);
        for _ in 0..3 {
            send_raw_frame(&lab.client, &lab.link.b_if, &frame);
        }
        std::thread::sleep(Duration::from_millis(500));
        sniffer
            .finish()
            .iter()
            .filter_map(|f| describe_ip_frame(f))
            .collect::<Vec<_>>()
    };
    // The probe works: the same frames to a closed port that is not the knock port are
    // answered by the stack (ICMPv6 port unreachable).
    let control = answers_to(40_000);
    assert!(
        control.iter().any(|a| a.contains("ICMPv6 type 1")),
        "no ICMP even for a closed port: the probe proves nothing ({control:?})"
    );
    let answers = answers_to(capyknock_testkit::KNOCK_PORT);
    assert!(answers.is_empty(), "the server answered: {answers:?}");
}

fn as_v6(addr: std::net::IpAddr) -> std::net::Ipv6Addr {
    match addr {
        std::net::IpAddr::V6(v6) => v6,
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

#[test]
fn none_backend_says_stealth_is_the_admins_job() {
    let mut lab = lab_with("sxn", "");
    lab.start_with(&["--firewall", "none"]);
    lab.wait_log(&["backend \"none\"", "stealth is your firewall's job"]);
}
