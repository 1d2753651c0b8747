//! Restarts of the real daemon: SIGTERM detaches the pre-filter, removes the socket and saves the state;
//! kill -9 loses nothing: grants keep working while the daemon is down and are still there
//! afterwards, bans persist, and a knock accepted before the crash is refused as a replay after
//! it. Needs root. Run: `cargo test -p capyknock-tests --test daemon_restart -- --test-threads=1`.

use capyknock::server::control::Request;
use capyknock_testkit::clock::{unix_now, wait_for_fresh_step};
use capyknock_tests::{
    attach::prefilter_attachment,
    daemon::{DaemonLab, SERVICE, knock, user},
};

#[test]
fn kill_9_then_restart_keeps_grants_bans_and_replay_state() {
    let mut lab = DaemonLab::new("drk");
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    lab.start();
    let client = lab.client_addr(false);

    wait_for_fresh_step(15);
    let packet = knock(&alice, &[SERVICE], unix_now());
    lab.send(&packet, false, 1);
    lab.wait_log(&["knock accepted", "nickname=alice"]);
    lab.wait_connect(SERVICE.port, false, true);
    let banned_v4 = "192.0.2.77".parse().unwrap();
    let banned_v6 = "2001:db8::77".parse().unwrap();
    assert!(
        lab.request(&Request::Ban {
            addr: banned_v4,
            duration_secs: None
        })
        .ok
    );
    assert!(
        lab.request(&Request::Ban {
            addr: banned_v6,
            duration_secs: Some(600)
        })
        .ok
    );
    // The worker saves asynchronously: give it a moment, as a real crash would not wait.
    std::thread::sleep(std::time::Duration::from_millis(300));

    lab.kill9();
    // The grant lives in the kernel: still open with no daemon.
    assert!(
        lab.can_connect(SERVICE.port, false),
        "grant lost with the daemon"
    );

    lab.start();
    lab.wait_log(&["replay state loaded"]);
    let status = lab.status();
    assert!(
        status
            .grants
            .iter()
            .any(|g| g.addr == client && g.ports == ["tcp/22"] && g.expires_in_secs > 200),
        "grant not found after restart: {:?}",
        status.grants
    );
    let mut bans: Vec<_> = status
        .bans
        .iter()
        .map(|b| (b.addr, b.expires_in_secs.is_some()))
        .collect();
    bans.sort();
    assert_eq!(bans, vec![(banned_v4, false), (banned_v6, true)]);
    assert!(lab.can_connect(SERVICE.port, false));

    // The packet accepted before the crash, replayed now (the new XDP program's duplicate
    // filter has never seen it, so it reaches the verifier): refused from the saved state.
    lab.send(&packet, false, 1);
    let line = lab.wait_log(&["knock rejected", &format!("src={client}"), "nickname=alice"]);
    assert!(line.contains("reason=replayed_"), "{line}");
    assert_eq!(lab.status().verifier.accepted, 0);
    assert!(lab.stop());
}

#[test]
fn sigterm_detaches_saves_and_leaves_grants() {
    let mut lab = DaemonLab::new("drt");
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    lab.start();
    let attached = |lab: &DaemonLab| prefilter_attachment(&lab.server, &lab.link.a_if);
    // A veth: `xdp_mode = "auto"` attaches at tc ingress.
    assert_eq!(
        attached(&lab).as_deref(),
        Some("tc"),
        "pre-filter not attached"
    );

    wait_for_fresh_step(12);
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);

    assert!(lab.stop(), "SIGTERM exit was not clean:\n{}", lab.log());
    assert_eq!(attached(&lab), None, "pre-filter still attached");
    assert!(!lab.socket().exists(), "control socket left behind");
    assert!(lab.file("state/replay.slots").exists());
    assert!(lab.file("state/bans.json").exists());
    // Grants run out on their own.
    assert!(
        lab.can_connect(SERVICE.port, false),
        "grant removed at shutdown"
    );
    lab.wait_log(&["current grants stay until they expire"]);
}

/// Regression (hardening review): with `revoke_removed_users = true`, a user removed after a
/// restart kept the grant made before it (who owned a grant lived only in memory), and
/// `status` showed "-" for every nickname. Owners are kept with the grants now (nftables
/// element comments), and removing a user closes exactly that user's grants, not those of
/// another user knocking from the same address.
#[test]
fn a_user_removed_after_a_restart_loses_exactly_their_grants() {
    let mut lab = DaemonLab::new("dro");
    let alice = user("alice", 1);
    let mut bob = user("bob", 2);
    bob.ports = vec![capyknock_tests::daemon::OTHER_SERVICE];
    lab.server_extra = "revoke_removed_users = true\n".to_owned();
    lab.write_config(&[&alice, &bob]);
    lab.start();

    wait_for_fresh_step(10);
    // Both from the same client address (one NAT).
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.send(&knock(&bob, &[], unix_now()), false, 1);
    lab.wait_log(&["knock accepted", "nickname=alice"]);
    lab.wait_log(&["knock accepted", "nickname=bob"]);
    lab.wait_connect(SERVICE.port, false, true);
    lab.wait_connect(capyknock_tests::daemon::OTHER_SERVICE.port, false, true);

    lab.kill9();
    lab.start();
    let mut nicknames: Vec<String> = lab
        .status()
        .grants
        .into_iter()
        .map(|g| g.nickname)
        .collect();
    nicknames.sort();
    assert_eq!(nicknames, ["alice", "bob"], "owners lost by the restart");

    // Alice leaves the configuration.
    lab.write_config(&[&bob]);
    let r = lab.request(&Request::Reload {});
    assert!(r.ok, "{r:?}");
    lab.wait_connect(SERVICE.port, false, false);
    assert!(
        lab.can_connect(capyknock_tests::daemon::OTHER_SERVICE.port, false),
        "bob's grant from the same address was closed too"
    );
    let left: Vec<String> = lab
        .status()
        .grants
        .into_iter()
        .map(|g| g.nickname)
        .collect();
    assert_eq!(left, ["bob"]);
}
