//! The daemon's control side with the real process: bans and unbans over the control socket,
//! who may use the socket, bans of the host itself refused, the commands' exit statuses, reload
//! with a broken and then a good config, and running with only the capabilities the systemd unit
//! grants. Needs root.
//! Run: `cargo test -p capyknock-tests --test daemon_control -- --test-threads=1`.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use capyknock::server::control::Request;
use capyknock_testkit::{
    Signal,
    clock::{unix_now, wait_for_fresh_step},
};
use capyknock_tests::daemon::{DaemonLab, OTHER_SERVICE, SERVICE, knock, user};

/// A ban closes the address's access at once and refuses its knocks (logged and counted as
/// `banned`); an unban lets it knock again.
#[test]
fn ban_and_unban_over_the_socket() {
    let mut lab = DaemonLab::new("dcb");
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    lab.start();
    let client = lab.client_addr(false);

    wait_for_fresh_step(12);
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);

    let r = lab.request(&Request::Ban {
        addr: client,
        duration_secs: Some(3600),
    });
    assert!(r.ok, "{r:?}");
    let msg = r.message.unwrap_or_default();
    assert!(
        msg.contains(&format!("banned {client} for 1h")) && msg.contains("1 grant revoked"),
        "{msg}"
    );
    lab.wait_connect(SERVICE.port, false, false);
    let status = lab.status();
    assert!(status.grants.is_empty(), "{:?}", status.grants);
    assert_eq!(status.bans.len(), 1);
    assert_eq!(status.bans[0].addr, client);
    assert!(status.bans[0].expires_in_secs.is_some_and(|s| s > 3500));

    // Its knocks are refused before verification.
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_log(&["knock rejected", "reason=banned", &format!("src={client}")]);
    assert_eq!(lab.rejected("banned"), 1);
    assert!(!lab.can_connect(SERVICE.port, false));

    // Garbage over the socket is refused and the daemon goes on.
    for bad in [
        Request::Ban {
            addr: "0.0.0.0".parse().unwrap(),
            duration_secs: None,
        },
        Request::Ban {
            addr: "224.0.0.1".parse().unwrap(),
            duration_secs: None,
        },
    ] {
        let r = lab.request(&bad);
        assert!(!r.ok, "{bad:?} accepted: {r:?}");
    }

    let r = lab.request(&Request::Unban { addr: client });
    assert!(r.ok, "{r:?}");
    assert!(lab.status().bans.is_empty());
    // A fresh step: the code of the earlier knocks is used up.
    std::thread::sleep(std::time::Duration::from_secs(30 - unix_now() % 30 + 1));
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);

    // The CLI does the same (fail2ban's action).
    let out = std::process::Command::new(capyknock_tests::capyknock_bin())
        .args(["ban", &client.to_string(), "-1", "--socket"])
        .arg(lab.socket())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("until unbanned"));
    lab.wait_connect(SERVICE.port, false, false);
    assert!(lab.stop());
}

/// The host itself cannot be banned (loopback, the server's own address), and the server-side
/// commands' exit status tells a refused request (4) from a daemon that cannot be reached (3)
/// and a config problem (2), as docs/OPERATIONS.md documents.
#[test]
fn the_host_itself_cannot_be_banned_and_exit_codes_tell_why() {
    let mut lab = DaemonLab::new("dcx");
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    lab.start();
    let cli = |args: &[&str]| {
        std::process::Command::new(capyknock_tests::capyknock_bin())
            .args(args)
            .output()
            .unwrap()
    };
    let socket = lab.socket();
    let socket = socket.to_str().unwrap();
    let own = lab.server_addr(false).to_string();
    for addr in ["127.0.0.1", "::1", own.as_str()] {
        let out = cli(&["ban", addr, "1h", "--socket", socket]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{addr}: {out:?}");
        assert!(err.contains(&format!("refusing to ban {addr}")), "{err}");
    }
    lab.wait_log(&["ban refused", "addr=127.0.0.1"]);
    assert!(lab.status().bans.is_empty());

    let stranger = "198.51.100.99";
    let out = cli(&["unban", stranger, "--socket", socket]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not banned"));
    assert_eq!(lab.count_log(&["address unbanned"]), 0, "{}", lab.log());

    let out = cli(&["ban", stranger, "0", "--socket", socket]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("would end at once"));

    // Log lines carry plain values, never Rust Debug output.
    let log = lab.log();
    assert!(log.contains("request=unban 198.51.100.99"), "{log}");
    for debug in ["Unban {", "Ban {", "Some(", "=None", "=[["] {
        assert!(!log.contains(debug), "{debug:?} in the log:\n{log}");
    }

    let out = cli(&["status", "--socket", "/nonexistent/capyknock.sock"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    let missing = lab.file("missing.toml");
    let out = cli(&["check-config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = cli(&["server", "--config", missing.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        err.contains("does not exist") && !err.contains("daemon stopped"),
        "{err}"
    );
    assert!(lab.stop());
}

/// The socket is mode 0660, group `control_group`: root and members of the group may use it,
/// anyone else is refused by the kernel.
#[test]
fn only_root_and_the_control_group_may_use_the_socket() {
    let mut lab = DaemonLab::new("dcp");
    // gid 100 (`users`) exists on Debian.
    lab.server_extra = "control_group = \"users\"\n".into();
    lab.write_config(&[&user("alice", 1)]);
    lab.start();

    let meta = std::fs::metadata(lab.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.gid(), 100);

    let refused = lab.cli_as_nobody("", &["status"]);
    assert!(!refused.status.success(), "nobody got in: {refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("permission denied"), "{err}");
    let refused = lab.cli_as_nobody("", &["ban", "192.0.2.1"]);
    assert!(!refused.status.success());
    assert!(lab.status().bans.is_empty(), "nobody managed to ban");

    let member = lab.cli_as_nobody("100", &["status"]);
    assert!(
        member.status.success(),
        "a control_group member was refused: {member:?}"
    );
    assert!(String::from_utf8_lossy(&member.stdout).contains("capyknock"));
    assert!(lab.stop());
    assert!(!lab.socket().exists(), "socket left behind");
}

/// SIGHUP with a broken config: refused with the reason, the daemon and the old users keep
/// working. `capyknock reload` with a good one: new users can knock, removed users cannot.
#[test]
fn reload_keeps_the_old_config_when_the_new_one_is_broken() {
    let mut lab = DaemonLab::new("dcr");
    let alice = user("alice", 1);
    let bob = user("bob", 2);
    lab.write_config(&[&alice]);
    lab.start();

    let good = std::fs::read_to_string(lab.config()).unwrap();
    lab.write_raw_config(&format!("{good}\n[server]\nfreshness = \"soon\"\n"));
    lab.signal(Signal::SIGHUP);
    let line = lab.wait_log(&["reload refused"]);
    assert!(line.contains("server.toml"), "{line}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(lab.is_running());
    let r = lab.request(&Request::Reload {});
    assert!(
        !r.ok && r.error.as_deref().unwrap_or("").contains("unchanged"),
        "{r:?}"
    );

    wait_for_fresh_step(12);
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_log(&["knock accepted", "nickname=alice"]);
    lab.wait_connect(SERVICE.port, false, true);

    // Replace alice by bob.
    lab.write_config(&[&bob]);
    let r = lab.request(&Request::Reload {});
    assert!(r.ok, "{r:?}");
    let msg = r.message.unwrap_or_default();
    assert!(msg.contains("1 added, 1 removed"), "{msg}");
    assert_eq!(lab.status().users, 1);
    // Alice's grant runs on (revoke_removed_users is off) ...
    assert!(lab.can_connect(SERVICE.port, false));
    // ... but she can no longer knock: the pre-filter no longer knows her.
    let before = lab.prefilter("unknown_user");
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while lab.prefilter("unknown_user") <= before {
        assert!(std::time::Instant::now() < deadline, "alice still known");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    lab.send(&knock(&bob, &[SERVICE], unix_now()), true, 1);
    lab.wait_log(&["knock accepted", "nickname=bob"]);
    lab.wait_connect(SERVICE.port, true, true);

    // With revoke_removed_users, removing bob closes his access at once.
    lab.server_extra = "revoke_removed_users = true\n".into();
    lab.write_config(&[&alice]);
    let r = lab.request(&Request::Reload {});
    assert!(r.ok, "{r:?}");
    assert!(
        r.message
            .unwrap_or_default()
            .contains("their access revoked"),
        "reload message"
    );
    lab.wait_connect(SERVICE.port, true, false);

    // A user with a port no one had: the firewall starts protecting it at the reload, and
    // the grants in force stay.
    assert!(
        lab.can_connect(OTHER_SERVICE.port, false),
        "tcp/23 not yet protected"
    );
    let mut carol = user("carol", 3);
    carol.ports = vec![SERVICE, OTHER_SERVICE];
    lab.write_config(&[&alice, &carol]);
    let r = lab.request(&Request::Reload {});
    assert!(
        r.ok && r
            .message
            .as_deref()
            .unwrap_or("")
            .contains("now protecting tcp/23"),
        "{r:?}"
    );
    lab.wait_connect(OTHER_SERVICE.port, false, false);
    assert!(lab.can_connect(SERVICE.port, false), "alice's grant lost");
    lab.send(&knock(&carol, &[OTHER_SERVICE], unix_now()), true, 1);
    lab.wait_connect(OTHER_SERVICE.port, true, true);
    assert!(
        !lab.can_connect(OTHER_SERVICE.port, false),
        "opened for the wrong address"
    );
    assert!(lab.stop());
}

/// The daemon works with only the capabilities of contrib/systemd/capyknock.service
/// (`CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW CAP_CHOWN`) and
/// `NoNewPrivileges`. Every test daemon is started that way
/// ([`capyknock_tests::unit_capabilities_wrapper`]); this test proves the limits really apply.
#[test]
fn runs_with_only_the_units_capabilities() {
    let mut lab = DaemonLab::new("dcc");
    let alice = user("alice", 1);
    lab.server_extra = "control_group = \"users\"\n".into();
    lab.write_config(&[&alice]);
    lab.start();
    // The limits really apply: nsenter and setpriv exec into the daemon, same pid.
    let pid = lab.daemon.as_ref().unwrap().pid().unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let bounding = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let unit = (1u64 << 0) | (1 << 12) | (1 << 13) | (1 << 38) | (1 << 39);
    assert_eq!(bounding, unit, "{proc_status}");
    assert!(proc_status.contains("NoNewPrivs:\t1"), "{proc_status}");

    wait_for_fresh_step(12);
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);
    let r = lab.request(&Request::Ban {
        addr: lab.client_addr(false),
        duration_secs: None,
    });
    assert!(r.ok, "{r:?}");
    lab.wait_connect(SERVICE.port, false, false);
    assert!(lab.stop());
}
