//! `realtime_priority` (docs/OPERATIONS.md): the knock path of the real daemon (XDP, nftables,
//! privilege separation, the unit's capabilities) runs at `SCHED_FIFO` and nothing else does;
//! without the permission the daemon warns once and works at normal priority.
//!
//! The daemon gets its permission as under systemd with `LimitRTPRIO=10`: an `RLIMIT_RTPRIO` of
//! 10, which this test process sets on itself (`prlimit`) before starting it, since the unit's
//! capability set has no `CAP_SYS_NICE`. Where root cannot raise that limit (a container
//! without `CAP_SYS_RESOURCE`), the daemon gets `CAP_SYS_NICE` added to the unit's set instead,
//! the other way docs/OPERATIONS.md gives; the test says which it used.
//! Needs root. Run: `cargo test -p capyknock-tests --test daemon_realtime -- --test-threads=1`.

use std::{process::Command, time::Duration};

use capyknock_testkit::clock::{unix_now, wait_into_step};
use capyknock_tests::daemon::{DaemonLab, SERVICE, knock, user};

/// `SCHED_OTHER` and `SCHED_FIFO` as /proc shows the policy.
const OTHER: u32 = 0;
const FIFO: u32 = 1;
/// The priority the tests configure.
const PRIORITY: u32 = 10;
/// The daemon's warning when it cannot switch.
const WARNING: &str = "cannot switch the knock path to SCHED_FIFO";

/// Sets this test process's `RLIMIT_RTPRIO` (soft and hard), which the daemon inherits;
/// whether it could (raising the hard limit needs `CAP_SYS_RESOURCE`).
fn set_rtprio(limit: u32) -> bool {
    let out = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--rtprio={limit}:{limit}"))
        .output()
        .expect("prlimit (util-linux)");
    out.status.success()
}

/// One task (thread) of a process: its name, scheduling policy and real-time priority.
#[derive(Debug)]
struct Task {
    tid: u32,
    name: String,
    policy: u32,
    rt_priority: u32,
}

/// Fields 40 (`rt_priority`) and 41 (`policy`) of a `/proc/.../stat` line (proc(5)); the name
/// in parentheses may hold spaces, so fields are counted after its closing parenthesis.
fn sched_of(stat: &str) -> (u32, u32) {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).expect("stat line");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3.
    (
        fields[40 - 3].parse().unwrap(),
        fields[41 - 3].parse().unwrap(),
    )
}

fn tasks(pid: u32) -> Vec<Task> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| {
            let dir = e.unwrap().path();
            let tid = dir.file_name().unwrap().to_str().unwrap().parse().unwrap();
            let name = std::fs::read_to_string(dir.join("comm"))
                .unwrap()
                .trim()
                .to_owned();
            let (rt_priority, policy) =
                sched_of(&std::fs::read_to_string(dir.join("stat")).unwrap());
            Task {
                tid,
                name,
                policy,
                rt_priority,
            }
        })
        .collect()
}

/// The daemon's child (the firewall helper).
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

/// A daemon with `realtime_priority = 10` (and `extra_caps` beyond the unit's), started and
/// through its sandbox, and its pid.
fn start(
    tag: &str,
    extra_caps: &[&'static str],
) -> (DaemonLab, capyknock::protocol::users::User, u32) {
    let mut lab = DaemonLab::new(tag);
    lab.extra_caps = extra_caps.to_vec();
    let alice = user("alice", 1);
    lab.server_extra = format!("realtime_priority = {PRIORITY}\n");
    lab.write_config(&[&alice]);
    lab.start();
    lab.wait_log(&["privileges dropped"]);
    let pid = lab
        .daemon
        .as_ref()
        .and_then(capyknock_testkit::daemon::Daemon::pid)
        .expect("daemon pid");
    (lab, alice, pid)
}

/// A knock still opens the service.
fn knock_opens(lab: &DaemonLab, alice: &capyknock::protocol::users::User) {
    assert!(
        !lab.can_connect(SERVICE.port, false),
        "open before any knock"
    );
    wait_into_step(2, 20);
    lab.send(&knock(alice, &[SERVICE], unix_now()), false, 1);
    lab.wait_connect(SERVICE.port, false, true);
}

#[test]
fn the_knock_path_runs_at_sched_fifo_and_nothing_else_does() {
    let extra: &[&str] = if set_rtprio(PRIORITY) {
        eprintln!("permission: RLIMIT_RTPRIO {PRIORITY} (LimitRTPRIO=)");
        &[]
    } else {
        set_rtprio(0);
        eprintln!("permission: CAP_SYS_NICE (this root cannot raise RLIMIT_RTPRIO)");
        &["sys_nice"]
    };
    let (mut lab, alice, pid) = start("rtp", extra);
    knock_opens(&lab, &alice);
    // Threads started late (the blocking pool, the replay flusher) have had time to appear.
    std::thread::sleep(Duration::from_secs(2));

    let all = tasks(pid);
    let on_path = |t: &Task| t.tid == pid || t.name == "capyknock-ring" || t.name == "capyknock-fw";
    for name in ["capyknock-ring", "capyknock-fw"] {
        assert!(
            all.iter().any(|t| t.name == name),
            "no thread {name}: {all:?}"
        );
    }
    let others = all.iter().filter(|t| !on_path(t)).count();
    assert!(
        others >= 2,
        "no thread off the knock path to compare: {all:?}"
    );
    for t in &all {
        if on_path(t) {
            assert_eq!(
                (t.policy, t.rt_priority),
                (FIFO, PRIORITY),
                "knock-path thread not at SCHED_FIFO {PRIORITY}: {t:?}\n{}",
                lab.log()
            );
        } else {
            assert_eq!(
                (t.policy, t.rt_priority),
                (OTHER, 0),
                "thread off the knock path at real-time priority: {t:?}"
            );
        }
    }
    let helper = helper_of(pid);
    let (rt_priority, policy) =
        sched_of(&std::fs::read_to_string(format!("/proc/{helper}/stat")).unwrap());
    assert_eq!(
        (policy, rt_priority),
        (FIFO, PRIORITY),
        "firewall helper {helper}"
    );
    assert_eq!(lab.count_log(&[WARNING]), 0, "{}", lab.log());
    assert!(lab.stop(), "daemon did not stop cleanly:\n{}", lab.log());
}

#[test]
fn without_permission_it_warns_once_and_runs_at_normal_priority() {
    // Neither CAP_SYS_NICE (the unit does not grant it) nor an RLIMIT_RTPRIO.
    assert!(set_rtprio(0), "cannot lower RLIMIT_RTPRIO");
    let (mut lab, alice, pid) = start("rtn", &[]);
    knock_opens(&lab, &alice);
    assert_eq!(lab.count_log(&[WARNING]), 1, "{}", lab.log());
    for t in tasks(pid) {
        assert_eq!(t.policy, OTHER, "{t:?}");
    }
    let helper = helper_of(pid);
    let (_, policy) = sched_of(&std::fs::read_to_string(format!("/proc/{helper}/stat")).unwrap());
    assert_eq!(policy, OTHER, "firewall helper {helper}");
    assert!(lab.stop(), "daemon did not stop cleanly:\n{}", lab.log());
}
