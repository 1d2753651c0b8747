//! Protected ports with the real daemon, XDP and nftables (issue 13.7): a port no user has is
//! open to everyone unless `[server] protect` lists it. Needs root.
//! Run: `cargo test -p capyknock-tests --test daemon_protect -- --test-threads=1`.

use capyknock::{ports::PortSpec, server::control::Request};
use capyknock_tests::daemon::{DaemonLab, OTHER_SERVICE, SERVICE, user};

/// A user with only `port`.
fn user_with(nickname: &str, n: u8, port: PortSpec) -> capyknock::protocol::users::User {
    let mut u = user(nickname, n);
    u.ports = vec![port];
    u
}

/// Regression: every user has lost tcp/22, yet with `protect = ["tcp/22", ...]` an attacker's
/// connect to 22 still fails (before, the port was silently unprotected); the daemon warns that
/// no user may open it.
#[test]
fn a_port_listed_in_protect_stays_closed_when_no_user_has_it() {
    let mut lab = DaemonLab::new("dpp");
    let alice = user_with("alice", 1, OTHER_SERVICE);
    lab.server_extra = format!("protect = [\"{SERVICE}\", \"{OTHER_SERVICE}\"]\n");
    lab.write_config(&[&alice]);
    assert!(lab.can_connect(SERVICE.port, false), "no daemon yet: open");
    lab.start();
    lab.wait_log(&["WARN", &format!("no user may open {SERVICE}")]);
    assert!(!lab.can_connect(SERVICE.port, false), "tcp/22 opened");
    assert!(!lab.can_connect(SERVICE.port, true), "tcp/22 opened (IPv6)");
    assert!(!lab.can_connect(OTHER_SERVICE.port, false));
    assert!(lab.stop());
}

/// Without `protect` (configs written before it), the protected ports are the users' ports, as
/// before: a port no user has is left alone, and the daemon says how to keep it closed. A reload
/// that takes tcp/22 from its last user keeps it protected until the restart and says so.
#[test]
fn without_protect_the_users_ports_are_protected_and_the_daemon_warns() {
    let mut lab = DaemonLab::new("dpu");
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    lab.start();
    lab.wait_log(&["WARN", "no `protect` list"]);
    assert!(!lab.can_connect(SERVICE.port, false));
    assert!(
        lab.can_connect(OTHER_SERVICE.port, false),
        "a port no user has"
    );

    lab.write_config(&[&user_with("alice", 1, OTHER_SERVICE)]);
    let r = lab.request(&Request::Reload {});
    assert!(r.ok, "{r:?}");
    let msg = r.message.unwrap_or_default();
    assert!(
        msg.contains(&format!(
            "protected until the next restart, then open to everyone: {SERVICE}"
        )),
        "{msg}"
    );
    assert!(msg.contains("[server] protect"), "{msg}");
    lab.wait_log(&["WARN", "protected until the next restart"]);
    assert!(
        !lab.can_connect(SERVICE.port, false),
        "opened by the reload"
    );
    assert!(!lab.can_connect(OTHER_SERVICE.port, false), "now protected");
    assert!(lab.stop());
}
