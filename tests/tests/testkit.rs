//! The lab kit itself (`capyknock-testkit`), where it needs root: namespaces vanish on drop even
//! when the test panics, the service answers across a veth and the probes see it come and go,
//! UDP and a flood reach the other side, and the daemon guard stops the daemon on drop.
//!
//! ```text
//!   [ns a] cka* 10.77.S.1, fd00:77:S::1  <---->  ckb* 10.77.S.2, fd00:77:S::2 [ns b]
//!          TCP service, UDP socket                  probes, send_udp, flood
//! ```

use std::{
    net::{SocketAddr, UdpSocket},
    panic::AssertUnwindSafe,
    path::Path,
    time::Duration,
};

use capyknock_testkit::{
    flood::{Flood, Limits, Rate},
    netns::{self, Link, NetNs},
    probe::{Probe, probe_from, wait_for_port},
    service::TcpService,
};
use capyknock_tests::{e2e::Lab, require_root};

const PORT: u16 = 7000;
const TIMEOUT: Duration = Duration::from_millis(500);

/// Two namespaces joined on subnet `subnet`.
fn pair(tag: &str, subnet: u8) -> (NetNs, NetNs, Link) {
    require_root();
    let a = NetNs::unique(&format!("{tag}a")).unwrap();
    let (b, link) = netns::attach(&a, &format!("{tag}b"), subnet).unwrap();
    (a, b, link)
}

fn listed(name: &str) -> bool {
    let out =
        capyknock_testkit::process::run(std::process::Command::new("ip").args(["netns", "list"]))
            .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

#[test]
fn a_namespace_goes_away_on_drop_even_when_the_test_panics() {
    require_root();
    let mut name = String::new();
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let ns = NetNs::unique("kpanic").unwrap();
        name = ns.name().to_owned();
        assert!(listed(&name), "created");
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(!listed(&name), "{name} is still there");
    assert!(!Path::new("/run/netns").join(&name).exists());
}

#[test]
fn the_service_answers_across_a_veth_and_the_probes_see_it_go() {
    let (a, b, link) = pair("ks", 60);
    let service = TcpService::start(&a, &[PORT], b"hi there\r\n").unwrap();
    for v6 in [false, true] {
        let target = SocketAddr::new(link.a(v6), PORT);
        let p = probe_from(&b, target, TIMEOUT).unwrap();
        assert_eq!(p.greeting(), Some("hi there"), "v6: {v6}: {p}");
        wait_for_port(&b, target, true, Duration::from_secs(2), TIMEOUT).unwrap();
    }
    assert_eq!(service.accepted(), 4);
    let target = SocketAddr::new(link.a(false), PORT);
    drop(service);
    wait_for_port(&b, target, false, Duration::from_secs(2), TIMEOUT).unwrap();
    let p = probe_from(&b, target, TIMEOUT).unwrap();
    assert!(matches!(p, Probe::Refused), "{p}");
    // A wait that cannot succeed says so.
    let err = wait_for_port(&b, target, true, Duration::from_millis(300), TIMEOUT).unwrap_err();
    assert!(err.to_string().contains("still closed"), "{err}");
}

#[test]
fn udp_and_a_flood_reach_the_other_side_only() {
    let (a, b, link) = pair("ku", 61);
    let to = SocketAddr::new(link.a(false), 9999);
    let socket = a.run(|| UdpSocket::bind(to).unwrap()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];

    let sent = b.send_udp(None, to, &[b"one", b"two"]).unwrap();
    assert_eq!(sent, 2);
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"one");
    assert_eq!(from.ip(), link.b(false), "sent from b's side of the link");
    assert_eq!(socket.recv(&mut buf).unwrap(), 3);

    let flood = Flood::start(
        &b,
        to,
        vec![vec![7u8; 32]],
        Rate::Pps(1000),
        Limits {
            secs: 5.0,
            packets: 50,
        },
    )
    .unwrap();
    let mut got = 0;
    while got < 50 {
        assert_eq!(socket.recv(&mut buf).unwrap(), 32);
        got += 1;
    }
    let stats = flood.stop().unwrap();
    assert_eq!(stats.sent, 50, "{stats:?}");
    // Nothing of the flood arrives in the machine's own namespace.
    let host = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    assert!(
        Flood::start(
            &b,
            host.local_addr().unwrap(),
            vec![vec![1]],
            Rate::Max,
            Limits {
                secs: 0.2,
                packets: 10
            }
        )
        .unwrap()
        .stop()
        .is_ok()
    );
    host.set_nonblocking(true).unwrap();
    assert!(host.recv(&mut buf).is_err(), "the flood left its namespace");
}

#[test]
fn the_daemon_guard_stops_the_daemon_on_drop() {
    let mut lab = Lab::new("kd");
    let _ = lab.keygen("alice", "work", &lab.client_link.a_v4.to_string(), &[]);
    lab.start_daemon();
    let pid = lab.daemon.as_ref().unwrap().pid().unwrap();
    assert!(capyknock_testkit::netns::is_alive(&pid.to_string()));
    lab.daemon = None;
    assert!(
        !capyknock_testkit::netns::is_alive(&pid.to_string()),
        "pid {pid} still runs"
    );
}
