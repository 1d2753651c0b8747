//! Privilege separation (docs/SECURITY.md): the network-facing daemon runs with no capability
//! and under seccomp, the firewall helper with `CAP_NET_ADMIN` only and its own filter; a knock
//! still opens the port through the helper (real XDP, real nftables); the helper refuses a
//! malformed message; a dead helper makes the daemon exit for a restart; `privsep = false`
//! still works.
//! Needs root. Run: `cargo test -p capyknock-tests --test privsep -- --test-threads=1`.

use std::{
    io::{Read, Write},
    os::{fd::OwnedFd, unix::net::UnixStream},
    process::{Command, Stdio},
    time::Duration,
};

use capyknock::server::control::Request;
use capyknock_testkit::{
    Signal,
    clock::{unix_now, wait_for_fresh_step, wait_into_step},
};
use capyknock_tests::daemon::{DaemonLab, SERVICE, knock, user};

/// `CAP_NET_ADMIN` alone, as /proc shows capability sets.
const NET_ADMIN_ONLY: &str = "0000000000001000";
const NONE: &str = "0000000000000000";
/// The bounding set of the systemd unit, which every test daemon is started with
/// (`CAP_CHOWN`, `CAP_NET_ADMIN`, `CAP_NET_RAW`, `CAP_PERFMON`, `CAP_BPF`). Without
/// `CAP_SETPCAP` (which the unit does not grant) the daemon cannot shrink it; with
/// `NoNewPrivs` and empty permitted sets nothing in it can be regained.
const UNIT_BOUNDING: &str = "000000c000003001";

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_owned()
}

/// The status of every thread of `pid`.
fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path().join("status")).unwrap())
        .collect()
}

/// The child of `pid` (the helper).
fn helper_of(pid: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("daemon {pid} has no helper child"))
        .parse()
        .unwrap()
}

#[test]
fn network_process_has_no_capability_and_the_helper_only_net_admin() {
    let mut lab = DaemonLab::new("psp");
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    lab.start();
    lab.wait_log(&["privileges dropped"]);
    let pid = lab
        .daemon
        .as_ref()
        .and_then(capyknock_testkit::daemon::Daemon::pid)
        .expect("daemon pid");
    // Runtime threads started before the drop follow at their next wake-up (the tick is 1 s).
    std::thread::sleep(Duration::from_secs(3));
    for status in threads(pid) {
        let name = field(&status, "Name:");
        assert_eq!(field(&status, "CapEff:"), NONE, "thread {name}");
        assert_eq!(field(&status, "CapPrm:"), NONE, "thread {name}");
        assert_eq!(field(&status, "CapBnd:"), UNIT_BOUNDING, "thread {name}");
        assert_eq!(field(&status, "Seccomp:"), "2", "thread {name}");
        assert_eq!(field(&status, "NoNewPrivs:"), "1", "thread {name}");
    }
    let helper = helper_of(pid);
    let status = std::fs::read_to_string(format!("/proc/{helper}/status")).unwrap();
    assert_eq!(field(&status, "CapEff:"), NET_ADMIN_ONLY, "{status}");
    assert_eq!(field(&status, "CapPrm:"), NET_ADMIN_ONLY, "{status}");
    assert_eq!(field(&status, "CapBnd:"), UNIT_BOUNDING, "{status}");
    assert_eq!(field(&status, "NoNewPrivs:"), "1", "{status}");
    assert_eq!(field(&status, "Seccomp:"), "2", "{status}");

    // The firewall still works through the helper.
    assert!(
        !lab.can_connect(SERVICE.port, false),
        "open before any knock"
    );
    wait_into_step(2, 20);
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);
    // And the state directory (root-owned) is still written without CAP_DAC_OVERRIDE.
    assert!(
        lab.file("state").join("replay.slots").exists()
            || lab.log().contains("granted")
            || lab.log().contains("knock accepted")
    );
    assert!(lab.stop(), "daemon did not stop cleanly:\n{}", lab.log());
}

/// Under the sandbox: a ban and an unban over the control socket reach the firewall through the
/// helper, and a SIGHUP reload that adds a user works (the seccomp filter allows every path).
#[test]
fn ban_unban_and_sighup_reload_work_in_the_sandbox() {
    let mut lab = DaemonLab::new("psr");
    let alice = user("alice", 1);
    let bob = user("bob", 2);
    lab.write_config(&[&alice]);
    lab.start();
    lab.wait_log(&["privileges dropped"]);
    let pid = lab
        .daemon
        .as_ref()
        .and_then(capyknock_testkit::daemon::Daemon::pid)
        .expect("daemon pid");

    wait_into_step(2, 20);
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);
    let client = lab.client_addr(false);
    let r = lab.request(&Request::Ban {
        addr: client,
        duration_secs: None,
    });
    assert!(r.ok, "{r:?}");
    lab.wait_connect(SERVICE.port, false, false);
    let r = lab.request(&Request::Unban { addr: client });
    assert!(r.ok, "{r:?}");
    assert!(lab.status().bans.is_empty());

    lab.write_config(&[&alice, &bob]);
    lab.signal(Signal::SIGHUP);
    lab.wait_log(&["configuration reloaded"]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.is_running(), "SIGHUP killed the daemon:\n{}", lab.log());
    wait_for_fresh_step(12);
    lab.send(&knock(&bob, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(field(&status, "Seccomp:"), "2", "{status}");
    assert!(lab.stop(), "daemon did not stop cleanly:\n{}", lab.log());
}

#[test]
fn privsep_off_still_works() {
    let mut lab = DaemonLab::new("psq");
    let alice = user("alice", 1);
    lab.server_extra = "privsep = false\n".into();
    lab.write_config(&[&alice]);
    lab.start();
    let pid = lab
        .daemon
        .as_ref()
        .and_then(capyknock_testkit::daemon::Daemon::pid)
        .expect("daemon pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(field(&status, "Seccomp:"), "0", "{status}");
    wait_into_step(2, 20);
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);
    assert!(lab.stop(), "daemon did not stop cleanly:\n{}", lab.log());
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(body.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn read_reply(sock: &mut UnixStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    sock.read_exact(&mut body).unwrap();
    body
}

/// The helper, started by hand in a namespace with the `none` backend, answers garbage with an
/// error (postcard: `Reply::Error` is variant 4) and keeps serving; an oversized frame ends it.
#[test]
fn helper_rejects_malformed_messages() {
    let lab = DaemonLab::new("psh");
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", lab.server.path().display()))
        .arg(capyknock_tests::capyknock_bin())
        .arg("firewall-helper")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .unwrap();
    // Init { config: "{\"backend\":\"none\"}", protected: [], knock_drop: [] }
    let config = br#"{"backend":"none"}"#;
    let mut init = vec![0u8, u8::try_from(config.len()).unwrap()];
    init.extend_from_slice(config);
    init.extend_from_slice(&[0, 0]);
    ours.write_all(&frame(&init)).unwrap();
    let info = read_reply(&mut ours);
    assert_eq!(info.first(), Some(&2), "expected Info, got {info:?}");

    for garbage in [&b"\xff\xff\xff\xff"[..], b"", b"\x00\x00", b"\x63"] {
        ours.write_all(&frame(garbage)).unwrap();
        let reply = read_reply(&mut ours);
        assert_eq!(reply.first(), Some(&4), "garbage {garbage:?} got {reply:?}");
    }
    // A second Init is refused too.
    ours.write_all(&frame(&init)).unwrap();
    assert_eq!(read_reply(&mut ours).first(), Some(&4));
    // IsIntact (variant 7) still works after all that.
    ours.write_all(&frame(&[7])).unwrap();
    assert_eq!(read_reply(&mut ours), vec![1, 1]);
    // An oversized frame: the helper stops.
    ours.write_all(&u32::MAX.to_le_bytes()).unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "helper kept running after an oversized frame"
    );
}

/// The helper killed (an OOM kill, a crash): the network process has no capability left to
/// start another, so the daemon exits with an error for its service manager to restart it,
/// instead of running on with a firewall nothing can reach.
#[test]
fn a_dead_helper_makes_the_daemon_exit_for_a_restart() {
    let mut lab = DaemonLab::new("psd");
    let alice = user("alice", 1);
    lab.write_config(&[&alice]);
    lab.start();
    lab.wait_log(&["privileges dropped"]);
    let pid = lab
        .daemon
        .as_ref()
        .and_then(capyknock_testkit::daemon::Daemon::pid)
        .expect("daemon pid");
    let helper = helper_of(pid);
    let killed = Command::new("kill")
        .args(["-KILL", &helper.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lab.is_running() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !lab.is_running(),
        "daemon still running without its helper:\n{}",
        lab.log()
    );
    assert!(
        lab.log().contains("the firewall helper ended"),
        "{}",
        lab.log()
    );
    // Restarted (as systemd's Restart=on-failure does), it works again.
    lab.daemon = None;
    lab.start();
    wait_into_step(2, 20);
    lab.send(&knock(&alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);
    assert!(lab.stop(), "{}", lab.log());
}
