//! The demo's story as assertions, with the real binary in namespaces: keygen -> daemon (XDP +
//! nftables) -> port closed -> knock with the current code -> port open -> the knock replayed
//! from the attacker opens nothing -> a second knock is not needed (already open) -> ban ->
//! access gone, and a fresh knock while banned is refused (exit 4) -> counters in `status`.
//! Needs root.

use std::{net::IpAddr, net::SocketAddr};

use capyknock_testkit::KNOCK_PORT;
use capyknock_testkit::{
    clock::{unix_now, wait_for_fresh_step},
    process::output_text as text,
};
use capyknock_tests::e2e::{BANNER, Lab, SERVICE_PORT};

/// Pre-filter duplicates plus verifier replay rejections: every way a replay can be refused.
fn replays_refused(lab: &Lab) -> u64 {
    let s = lab.status();
    let get = |m: &std::collections::BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    get(&s.prefilter, "duplicate")
        + get(&s.verifier.rejected, "replayed_packet")
        + get(&s.verifier.rejected, "replayed_totp")
}

/// A code for a TOTP step in the server's window (current step +-1) above every step in `used`,
/// which it joins: a user's codes open once each, in increasing order of their steps.
fn unused_code(key: &capyknock_tests::e2e::Keygen, used: &mut Vec<u64>) -> String {
    let now = unix_now() / 30;
    let last = used.iter().copied().max();
    let step = [now - 1, now, now + 1]
        .into_iter()
        .find(|s| last.is_none_or(|l| *s > l))
        .expect("no unused step left in the window");
    used.push(step);
    key.code_at(step * 30).as_str().to_owned()
}

#[test]
fn closed_knock_open_replay_refused_ban_gone() {
    let mut lab = Lab::new("sty");
    let server_ip = IpAddr::V4(lab.client_link.a_v4);
    let client_ip = IpAddr::V4(lab.client_link.b_v4);
    let alice = lab.keygen("alice", "work", &server_ip.to_string(), &[]);
    lab.start_daemon();

    // Closed: nothing answers, not even a reset.
    assert_eq!(Lab::probe(&lab.client, server_ip, SERVICE_PORT), None);

    // Knock with the code the app shows now.
    wait_for_fresh_step(8);
    let mut used = vec![unix_now() / 30];
    let code = alice.code_at(unix_now());
    let saved = lab.file("knock.bin");
    let out = lab.knock(
        &[
            "work",
            "--otp-stdin",
            "--save-packet",
            saved.to_str().unwrap(),
        ],
        &format!("{}\n", code.as_str()),
    );
    let said = text(&out);
    assert!(out.status.success(), "knock failed:\n{said}");
    assert!(said.contains("tcp/22 on"), "{said}");
    assert!(said.contains(": open"), "{said}");

    // Open, for the client only.
    assert_eq!(
        Lab::probe(&lab.client, server_ip, SERVICE_PORT).as_deref(),
        Some(BANNER)
    );
    let status = lab.status();
    assert_eq!(status.verifier.accepted, 1);
    let grant = status
        .grants
        .iter()
        .find(|g| g.nickname == "alice")
        .unwrap();
    assert_eq!(grant.addr, client_ip);
    assert_eq!(grant.ports, vec![format!("tcp/{SERVICE_PORT}")]);

    // The attacker replays the recorded packet from its own address: nothing opens for it.
    let attacker_server_ip = IpAddr::V4(lab.attacker_link.a_v4);
    let before = replays_refused(&lab);
    let packet = std::fs::read(&saved).unwrap();
    Lab::send_udp(
        &lab.attacker,
        &packet,
        SocketAddr::new(attacker_server_ip, KNOCK_PORT),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        Lab::probe(&lab.attacker, attacker_server_ip, SERVICE_PORT),
        None
    );
    assert!(
        replays_refused(&lab) >= before + 3,
        "the three replayed copies were not counted as replays: {:?}",
        lab.status()
    );
    assert_eq!(lab.status().verifier.accepted, 1);

    // Knocking again while open: the client sees the open port and sends nothing.
    let out = lab.knock(&["work", "--otp", "000000"], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already open"), "{}", text(&out));

    // Ban: the grant is revoked, the port is closed again.
    let out = lab.control(&["ban", &client_ip.to_string()]);
    assert!(text(&out).contains("banned"), "{}", text(&out));
    assert_eq!(Lab::probe(&lab.client, server_ip, SERVICE_PORT), None);
    let status = lab.status();
    assert!(
        status.bans.iter().any(|b| b.addr == client_ip),
        "{status:?}"
    );
    assert!(
        status.grants.iter().all(|g| g.addr != client_ip),
        "{status:?}"
    );

    // A fresh, valid code while banned: refused, exit status 4 with the documented message. A
    // banned source's knock is refused unverified: its code is not used up (`used` unchanged).
    let next = unused_code(&alice, &mut used.clone());
    let out = lab.knock(
        &["work", "--otp-stdin", "--wait", "2"],
        &format!("{next}\n"),
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        text(&out).contains("wrong code, clock skew, or blocked path?"),
        "{}",
        text(&out)
    );
    assert!(
        lab.status()
            .verifier
            .rejected
            .get("banned")
            .copied()
            .unwrap_or(0)
            >= 1
    );

    // Unban: the same user can get in again with the next code.
    let out = lab.control(&["unban", &client_ip.to_string()]);
    assert!(text(&out).contains("unbanned"), "{}", text(&out));
    let later = unused_code(&alice, &mut used);
    let out = lab.knock(&["work", "--otp-stdin"], &format!("{later}\n"));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        Lab::probe(&lab.client, server_ip, SERVICE_PORT).as_deref(),
        Some(BANNER)
    );
    assert!(lab.daemon.as_mut().unwrap().is_running());
}
