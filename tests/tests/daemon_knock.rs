//! The real `capyknock server` (XDP + nftables) in a network namespace, knocked at from a client
//! namespace with packets built by the protocol's own builder: what opens, what is refused and
//! why (log line and counter), what a flood does, and that the daemon never answers.
//! Needs root. Run: `cargo test -p capyknock-tests --test daemon_knock -- --test-threads=1`.

use capyknock_testkit::clock::{unix_now, wait_for_fresh_step, wait_into_step};
use capyknock_tests::daemon::{
    DaemonLab, OTHER_SERVICE, SERVICE, Sniffer, code, describe_ip_frame, knock, knock_with_code,
    stale_knock, user, wrong_code,
};

/// Every refusal the verifier can see is logged with its reason, the source and the nickname,
/// and counted; a valid knock opens the user's port for the client's address, over IPv4 and
/// IPv6; a second packet with an already used code is a replay.
#[test]
fn valid_knock_opens_and_each_refusal_has_its_reason() {
    let mut lab = DaemonLab::new("dkn");
    let alice = user("alice", 1);
    let bob = user("bob", 2);
    let carol = user("carol", 3);
    // The shortest freshness window, so a stale timestamp can pass the pre-filter's step check.
    lab.server_extra = "freshness = \"30s\"\n".into();
    lab.write_config(&[&alice, &bob, &carol]);
    lab.start();
    let src = format!("src={}", lab.client_addr(false));
    assert!(
        !lab.can_connect(SERVICE.port, false),
        "open before any knock"
    );

    wait_into_step(4, 12);
    let t = unix_now();

    // Wrong TOTP code.
    lab.send(
        &knock_with_code(&alice, &[SERVICE], t, &wrong_code(&alice, t)),
        false,
        1,
    );
    let line = lab.wait_log(&["knock rejected", "reason=bad_totp", &src, "nickname=alice"]);
    assert!(line.contains("capyknock::knock"), "{line}");
    assert_eq!(lab.rejected("bad_totp"), 1);

    // A port the user may not open. (The code counts as used by then: policy comes after
    // the one-time-use check, so carol is used here.)
    lab.send(&knock(&carol, &[OTHER_SERVICE], t), false, 1);
    lab.wait_log(&["reason=port_not_allowed", &src, "nickname=carol"]);
    assert_eq!(lab.rejected("port_not_allowed"), 1);

    // A timestamp outside the freshness window (header step still within one step, so only
    // the verifier can tell).
    lab.send(&stale_knock(&alice, t, 32), false, 1);
    lab.wait_log(&["reason=stale_timestamp", &src, "nickname=alice"]);
    assert_eq!(lab.rejected("stale_timestamp"), 1);

    // An unknown user: the kernel pre-filter drops it (no user, no tag key), so it costs no
    // log line, only its counter.
    let before = lab.prefilter("unknown_user");
    lab.send(&knock(&user("mallory", 9), &[SERVICE], t), false, 1);
    wait_until(
        || lab.prefilter("unknown_user") == before + 1,
        "unknown_user counter",
    );

    assert!(
        !lab.can_connect(SERVICE.port, false),
        "a refused knock opened"
    );

    // The valid knock, sent three times as the client does: one grant, two duplicates dropped
    // in the kernel.
    let dup_before = lab.prefilter("duplicate");
    let good = knock(&alice, &[SERVICE], t);
    lab.send(&good, false, 3);
    let line = lab.wait_log(&["knock accepted", "nickname=alice", &src, "ports=tcp/22"]);
    assert!(line.contains("duration=5m"), "{line}");
    lab.wait_connect(SERVICE.port, false, true);
    wait_until(
        || lab.prefilter("duplicate") >= dup_before + 2,
        "duplicates",
    );
    assert_eq!(lab.status().verifier.accepted, 1);

    // The same code in a new packet: a replay of the TOTP code (RFC 6238 5.2).
    lab.send(&knock(&alice, &[SERVICE], t), false, 1);
    lab.wait_log(&["reason=replayed_totp", &src, "nickname=alice"]);
    assert_eq!(lab.rejected("replayed_totp"), 1);

    // IPv6.
    let src6 = format!("src={}", lab.client_addr(true));
    assert!(!lab.can_connect(SERVICE.port, true) || lab.status().grants.len() > 1);
    lab.send(&knock(&bob, &[], t), true, 1);
    lab.wait_log(&["knock accepted", "nickname=bob", &src6]);
    lab.wait_connect(SERVICE.port, true, true);

    let status = lab.status();
    let grants: Vec<_> = status
        .grants
        .iter()
        .map(|g| (g.nickname.as_str(), g.addr, g.ports.clone()))
        .collect();
    assert!(
        grants.contains(&("alice", lab.client_addr(false), vec!["tcp/22".to_owned()])),
        "{grants:?}"
    );
    assert!(
        grants.contains(&("bob", lab.client_addr(true), vec!["tcp/22".to_owned()])),
        "{grants:?}"
    );
    assert!(status.grants.iter().all(|g| g.expires_in_secs > 250));

    // Nothing secret in the log.
    let log = lab.log();
    for secret in [
        alice.key.to_base64_secret(),
        alice.totp.to_base32_secret(),
        code(&alice, t).as_str().to_owned(),
    ] {
        assert!(!log.contains(&secret), "secret in the log:\n{log}");
    }
    assert!(lab.stop(), "daemon did not exit cleanly");
}

/// A flood of malformed packets (every size, random bytes, right-looking headers) while the
/// client side captures every frame: the daemon keeps running and answering, a valid knock still
/// opens during the flood, and not one IP packet comes back to the knocking address.
#[test]
fn storm_of_junk_neither_stops_nor_reveals_the_daemon() {
    let mut lab = DaemonLab::new("dks");
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    lab.start();
    let sniffer = Sniffer::start(&lab.client, &lab.link.b_if);

    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut junk = Vec::new();
    for i in 0..2000u32 {
        let len = match i % 4 {
            0 => 256,
            1 => (next() % 600) as usize,
            2 => (next() % 300) as usize,
            _ => 1 + (next() % 64) as usize,
        };
        let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 8 == 0 && p.len() >= 8 {
            // Right magic and version, junk elsewhere.
            p[..5].copy_from_slice(b"CKnk\x01");
            p[5..8].fill(0);
        }
        junk.push(p);
    }
    let started = std::time::Instant::now();
    let mut sent = 0;
    for round in 0..25 {
        sent += lab.send_batch(&junk[..1000], false);
        sent += lab.send_batch(&junk[1000..], true);
        if round == 12 {
            // A real knock in the middle of the flood.
            wait_for_fresh_step(5);
            lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
        }
    }
    let elapsed = started.elapsed();
    assert!(
        lab.is_running(),
        "daemon died under the flood:\n{}",
        lab.log()
    );
    lab.wait_log(&["knock accepted", "nickname=alice"]);
    let status = lab.status();
    let junk_seen: u64 = [
        "wrong_size",
        "bad_header",
        "unknown_user",
        "malformed",
        "bad_tag",
    ]
    .iter()
    .map(|c| status.prefilter.get(*c).copied().unwrap_or(0))
    .sum();
    eprintln!(
        "sent {sent} junk packets in {elapsed:?}; pre-filter: {:?}",
        status.prefilter
    );
    assert!(
        junk_seen >= sent as u64 * 9 / 10,
        "pre-filter counted {junk_seen} of {sent}: {:?}",
        status.prefilter
    );
    // Junk never reaches the verifier.
    let verifier_rejections: u64 = status.verifier.rejected.values().sum();
    assert_eq!(verifier_rejections, 0, "{:?}", status.verifier.rejected);

    let frames = sniffer.finish();
    let answers: Vec<String> = frames.iter().filter_map(|f| describe_ip_frame(f)).collect();
    assert!(
        answers.is_empty(),
        "the server sent {} IP packets to the knocking client: {:?}",
        answers.len(),
        &answers[..answers.len().min(10)]
    );
    // The grant is real.
    lab.wait_connect(SERVICE.port, false, true);
    assert!(lab.stop(), "daemon did not exit cleanly");
}

fn wait_until(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
