//! contrib/fail2ban against the real daemon's log: the filter matches exactly the rejections a
//! knock key is needed for (never replays, stale packets or bans, which a forged source address
//! could produce), with the right address, IPv4 and IPv6. Needs root and `fail2ban-regex`
//! (Debian package `fail2ban`).
//! Run: `cargo test -p capyknock-tests --test daemon_fail2ban -- --test-threads=1`.

use std::{path::Path, process::Command};

use capyknock_testkit::clock::{unix_now, wait_into_step};
use capyknock_tests::daemon::{
    DaemonLab, OTHER_SERVICE, SERVICE, knock, knock_with_code, stale_knock, user, wrong_code,
};

#[test]
fn filter_matches_the_daemons_key_holder_rejections_only() {
    let filter =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/fail2ban/filter.d/capyknock.conf");
    assert!(
        Command::new("fail2ban-regex")
            .arg("--help")
            .output()
            .is_ok_and(|o| o.status.success()),
        "fail2ban-regex missing: `apt-get install fail2ban` (cargo xtask setup installs it)"
    );
    let mut lab = DaemonLab::new("dfb");
    let alice = user("alice", 1);
    let bob = user("bob", 2);
    lab.server_extra = "freshness = \"30s\"\n".into();
    lab.write_config(&[&alice, &bob]);
    lab.start();

    wait_into_step(4, 12);
    let t = unix_now();
    // Two that count (bad code over IPv4, forbidden port over IPv6) ...
    lab.send(
        &knock_with_code(&alice, &[SERVICE], t, &wrong_code(&alice, t)),
        false,
        1,
    );
    lab.send(&knock(&bob, &[OTHER_SERVICE], t), true, 1);
    // ... and three that must not: stale, a replayed code, a banned source.
    lab.send(&stale_knock(&alice, t, 32), false, 1);
    lab.send(&knock(&bob, &[SERVICE], t), true, 1);
    lab.wait_log(&["reason=replayed_totp"]);
    lab.wait_log(&["reason=stale_timestamp"]);
    assert!(
        lab.request(&capyknock::server::control::Request::Ban {
            addr: lab.client_addr(false),
            duration_secs: Some(60)
        })
        .ok
    );
    lab.send(&knock(&alice, &[SERVICE], t), false, 1);
    lab.wait_log(&["reason=banned"]);
    lab.wait_log(&["reason=bad_totp"]);
    lab.wait_log(&["reason=port_not_allowed"]);
    assert!(lab.stop());

    let log = lab.file("server.log");
    let out = Command::new("fail2ban-regex")
        .args(["--print-all-matched", "--print-no-missed"])
        .arg(&log)
        .arg(&filter)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "fail2ban-regex failed:\n{text}");
    let matched: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("capyknock::knock: knock rejected reason=") && !l.contains("(?:"))
        .collect();
    assert_eq!(matched.len(), 2, "matched lines:\n{text}");
    assert!(
        matched.iter().any(|l| l.contains("reason=bad_totp")
            && l.contains(&format!("src={}", lab.client_addr(false))))
    );
    assert!(matched.iter().any(|l| l.contains("reason=port_not_allowed")
        && l.contains(&format!("src={}", lab.client_addr(true)))));
    assert!(text.contains("2 matched"), "{text}");
}
