//! contrib/fail2ban against the real daemon's log: the filter matches exactly the rejections a
//! knock key is needed for (never replays, stale packets or bans, which a forged source address
//! could produce), with the right address, IPv4 and IPv6. Needs root and `fail2ban-regex`
//! (Debian package `fail2ban`).
//! The action's ban and unban command lines, with fail2ban's tags filled in, work against a
//! daemon on a socket of its own.
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

/// The `actionban`/`actionunban` lines of contrib/fail2ban/action.d/capyknock.conf, tags filled
/// in as fail2ban does (a jail that sets `socket`), as argv.
fn action_argv(key: &str, tags: &[(&str, &str)]) -> Vec<String> {
    let conf = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/fail2ban/action.d/capyknock.conf"),
    )
    .unwrap();
    let line = conf
        .lines()
        .find_map(|l| l.strip_prefix(key)?.trim_start().strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in the action"));
    line.split_whitespace()
        .map(|word| {
            tags.iter().fold(word.to_owned(), |w, (tag, value)| {
                w.replace(&format!("<{tag}>"), value)
            })
        })
        .collect()
}

#[test]
fn the_action_bans_and_unbans_through_the_configured_socket() {
    let mut lab = DaemonLab::new("dfa");
    lab.write_config(&[&user("alice", 1)]);
    lab.start();
    let bin = capyknock_tests::capyknock_bin();
    let socket = lab.socket();
    let tags = [
        ("capyknock", bin.to_str().unwrap()),
        ("socket", socket.to_str().unwrap()),
        ("ip", "198.51.100.7"),
        ("duration", "<bantime>"),
        ("bantime", "600"),
    ];
    let run = |key: &str| {
        let argv = action_argv(key, &tags);
        assert!(
            argv.iter().all(|w| !w.contains('<')),
            "unfilled tag: {argv:?}"
        );
        let out = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{argv:?}: {out:?}");
    };
    run("actionban");
    let bans = lab.status().bans;
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert!(bans[0].expires_in_secs.is_some_and(|s| s <= 600 && s > 500));
    run("actionunban");
    assert!(lab.status().bans.is_empty());
    assert!(lab.stop());
}
