//! Capture end to end over a real veth pair between two network namespaces. Needs root.
//!
//! ```text
//!   [ns client] cka 10.77.N.1, fd00:77:N::1  <--veth-->  ckb 10.77.N.2, fd00:77:N::2 [ns server]
//!     UDP sockets sending knocks, junk,                  Capture (xdp | pcap | udp) on ckb,
//!     other UDP and TCP                                  a UDP socket on the knock port (xdp),
//!                                                        a UDP socket and a TCP listener elsewhere
//! ```
//!
//! - xdp: real knocks reach userspace, junk does not (the counters say why), other TCP/UDP and
//!   IPv6 pass, and a UDP socket bound to the knock port receives nothing while XDP is attached
//!   (and does once it is detached, which proves the check can fail). The same with the
//!   pre-filter at tc ingress (`xdp_mode = "tc"`, what `auto` takes on a veth).
//! - The same traffic through the xdp, pcap and udp modes yields the same candidates and the
//!   same knock-port verdicts.
//! - A flood of junk: how many packets per second the XDP path drops while the consumer stays
//!   under 5% CPU, and valid knocks still get through promptly.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::mpsc,
    time::{Duration, Instant},
};

use capyknock::capture::{
    ActiveMode, Capture, CaptureConfig, CaptureMode, PrefilterCounters, RateLimitConfig,
    XdpAttachMode,
};
use capyknock_common::{counters::Counter, maps::TC_PROGRAM, wire::KNOCK_LEN};
use capyknock_testkit::{
    KNOCK_PORT,
    netns::{self, Link, NetNs},
};
use capyknock_tests::{
    attach::{tcx_ingress_programs, xdp_flag},
    frames, require_root,
};

const OTHER_UDP: u16 = 5353;
const OTHER_TCP: u16 = 2222;
const CLIENT_PORT_V4: u16 = 41000;
const CLIENT_PORT_V6: u16 = 41001;
const USER: [u8; 16] = *b"netns-user-id-01";
const KEY: [u8; 16] = *b"netns-tag-key-01";
const STEP: u64 = 59_100_000;

/// What the server side saw in one run.
#[derive(Debug)]
struct ServerReport {
    mode: ActiveMode,
    candidates: Vec<(SocketAddr, [u8; KNOCK_LEN])>,
    counters: PrefilterCounters,
    knock_socket_got: usize,
    other_udp_got: Vec<SocketAddr>,
    tcp_accepted: usize,
    knock_socket_after_detach: Option<SocketAddr>,
}

fn capture_config(mode: CaptureMode, link: &Link) -> CaptureConfig {
    CaptureConfig {
        mode,
        ifaces: vec![link.b_if.clone()],
        knock_ports: vec![KNOCK_PORT],
        // Native mode: what these tests check is the program where a NIC's driver runs it (on
        // a veth, `auto` takes tc ingress: xdp_mode_auto_is_tc_on_a_veth; tc's own run is
        // tc_ingress_delivers_knocks_drops_junk_and_passes_other_traffic).
        xdp_mode: Some(XdpAttachMode::Native),
        per_source: RateLimitConfig {
            per_second: 100,
            burst: 100,
        },
        global: RateLimitConfig {
            per_second: 1000,
            burst: 1000,
        },
        per_user: RateLimitConfig {
            per_second: 100,
            burst: 100,
        },
        realtime_priority: None,
    }
}

/// Messages from the client thread to the server thread.
enum ClientSays {
    Done,
    ProbeSent,
}

/// Runs `mode` on the server (xdp attached in `xdp_mode`), the standard traffic from the client,
/// and reports.
fn run_mode(mode: CaptureMode, xdp_mode: XdpAttachMode, subnet: u8) -> (Link, ServerReport) {
    require_root();
    let server = NetNs::unique("srv").unwrap();
    let client = NetNs::unique("cli").unwrap();
    let link = netns::connect(&client, &server, subnet).unwrap();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (client_tx, client_rx) = mpsc::channel::<ClientSays>();
    let (detached_tx, detached_rx) = mpsc::channel::<()>();
    let (link_ref, server_ref, client_ref) = (&link, &server, &client);
    let report = std::thread::scope(|s| {
        let srv = s.spawn(move || {
            server_ref
                .run(move || {
                    let mut config = capture_config(mode, link_ref);
                    config.xdp_mode = Some(xdp_mode);
                    server_side(&config, &ready_tx, &client_rx, &detached_tx)
                })
                .unwrap()
        });
        let cli = s.spawn(move || {
            client_ref
                .run(move || {
                    let link = link_ref;
                    ready_rx
                        .recv_timeout(Duration::from_secs(20))
                        .expect("server never got ready");
                    send_standard_traffic(link);
                    client_tx.send(ClientSays::Done).unwrap();
                    if mode == CaptureMode::Xdp {
                        detached_rx
                            .recv_timeout(Duration::from_secs(20))
                            .expect("server never detached");
                        let probe = UdpSocket::bind((link.a_v4, 0)).unwrap();
                        for _ in 0..5 {
                            probe.send_to(b"probe", (link.b_v4, KNOCK_PORT)).unwrap();
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        client_tx.send(ClientSays::ProbeSent).unwrap();
                    }
                })
                .unwrap();
        });
        cli.join().unwrap();
        srv.join().unwrap()
    });
    (link, report)
}

fn server_side(
    config: &CaptureConfig,
    ready: &mpsc::Sender<()>,
    client: &mpsc::Receiver<ClientSays>,
    detached: &mpsc::Sender<()>,
) -> ServerReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mode = config.mode;
    rt.block_on(async {
        // In xdp mode a socket sits on the knock port: XDP must keep it starving.
        let knock_socket = (mode == CaptureMode::Xdp).then(|| {
            let s = UdpSocket::bind(("::", KNOCK_PORT)).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        });
        let other_udp = UdpSocket::bind(("::", OTHER_UDP)).unwrap();
        other_udp.set_nonblocking(true).unwrap();
        let tcp = TcpListener::bind(("::", OTHER_TCP)).unwrap();
        tcp.set_nonblocking(true).unwrap();

        let mut capture = Capture::open(config).unwrap();
        capture.set_users(&[(USER, KEY)]).unwrap();
        capture.set_time_step(STEP).unwrap();
        ready.send(()).unwrap();

        let mut candidates = Vec::new();
        let mut done_at = None;
        loop {
            match tokio::time::timeout(Duration::from_millis(50), capture.next()).await {
                Ok(Ok(c)) => {
                    assert_eq!(c.ifindex.is_some(), mode != CaptureMode::Udp);
                    candidates.push((c.src, c.bytes));
                }
                Ok(Err(err)) => panic!("capture failed: {err}"),
                Err(_) => {}
            }
            if done_at.is_none() && matches!(client.try_recv(), Ok(ClientSays::Done)) {
                done_at = Some(Instant::now());
            }
            if done_at.is_some_and(|t| t.elapsed() > Duration::from_millis(700)) {
                break;
            }
        }
        let counters = capture.counters().unwrap();
        let active = capture.mode();

        let mut buf = [0u8; 2048];
        let mut knock_socket_got = 0;
        if let Some(s) = &knock_socket {
            while s.recv_from(&mut buf).is_ok() {
                knock_socket_got += 1;
            }
        }
        let mut other_udp_got = Vec::new();
        while let Ok((_, from)) = other_udp.recv_from(&mut buf) {
            other_udp_got.push(from);
        }
        let mut tcp_accepted = 0;
        while tcp.accept().is_ok() {
            tcp_accepted += 1;
        }

        capture.shutdown();
        let mut knock_socket_after_detach = None;
        if let Some(s) = &knock_socket {
            detached.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while knock_socket_after_detach.is_none() && Instant::now() < deadline {
                match s.recv_from(&mut buf) {
                    Ok((_, from)) => knock_socket_after_detach = Some(from),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => panic!("knock socket: {e}"),
                }
            }
            let _ = client.recv_timeout(Duration::from_secs(5));
        }
        ServerReport {
            mode: active,
            candidates,
            counters,
            knock_socket_got,
            other_udp_got,
            tcp_accepted,
            knock_socket_after_detach,
        }
    })
}

/// Two real knocks (IPv4 and IPv6), each sent three times; junk of every kind the pre-filter
/// names; UDP and TCP to other ports over both families. Deterministic, so every mode sees the
/// same bytes.
fn send_standard_traffic(link: &Link) {
    let v4 = UdpSocket::bind((link.a_v4, CLIENT_PORT_V4)).unwrap();
    let v6 = UdpSocket::bind((link.a_v6, CLIENT_PORT_V6)).unwrap();
    let to4 = SocketAddr::new(IpAddr::V4(link.b_v4), KNOCK_PORT);
    let to6 = SocketAddr::new(IpAddr::V6(link.b_v6), KNOCK_PORT);
    let pace = || std::thread::sleep(Duration::from_millis(5));

    // Warm up neighbour tables so no knock waits on ARP/ND.
    v4.send_to(b"hello", (link.b_v4, OTHER_UDP)).unwrap();
    v6.send_to(b"hello6", (link.b_v6, OTHER_UDP)).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    let good4 = frames::knock(&KEY, USER, STEP, 1);
    let good6 = frames::knock(&KEY, USER, STEP + 1, 2);
    for _ in 0..3 {
        v4.send_to(&good4, to4).unwrap();
        pace();
        v6.send_to(&good6, to6).unwrap();
        pace();
    }
    let mut bad_tag = frames::knock(&KEY, USER, STEP, 3);
    bad_tag[60] ^= 1;
    let junk: Vec<(&str, Vec<u8>)> = vec![
        ("short", b"let me in".to_vec()),
        ("long", vec![0x41; 1000]),
        ("zeros", vec![0; KNOCK_LEN]),
        ("bad tag", bad_tag.to_vec()),
        (
            "unknown user",
            frames::knock(&KEY, [7; 16], STEP, 4).to_vec(),
        ),
        ("stale", frames::knock(&KEY, USER, STEP - 5, 5).to_vec()),
    ];
    for (_, payload) in &junk {
        v4.send_to(payload, to4).unwrap();
        pace();
        v6.send_to(payload, to6).unwrap();
        pace();
    }
    v4.send_to(b"other4", (link.b_v4, OTHER_UDP)).unwrap();
    v6.send_to(b"other6", (link.b_v6, OTHER_UDP)).unwrap();
    for addr in [IpAddr::V4(link.b_v4), IpAddr::V6(link.b_v6)] {
        TcpStream::connect_timeout(&SocketAddr::new(addr, OTHER_TCP), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("TCP to {addr} failed: {e}"));
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// The knock-port verdicts of the standard traffic (both families).
fn assert_standard_verdicts(c: &PrefilterCounters) {
    let want = [
        (Counter::Delivered, 2),
        (Counter::Duplicate, 4),
        (Counter::WrongSize, 4),
        (Counter::BadHeader, 2),
        (Counter::BadTag, 2),
        (Counter::UnknownUser, 2),
        (Counter::StaleStep, 2),
        (Counter::Malformed, 0),
        (Counter::RateLimitedUser, 0),
        (Counter::RateLimitedSource, 0),
        (Counter::RateLimitedGlobal, 0),
        (Counter::RingFull, 0),
    ];
    for (counter, n) in want {
        assert_eq!(c.get(counter), n, "{}: {c}", counter.name());
    }
}

fn expected_candidates(link: &Link) -> Vec<(SocketAddr, [u8; KNOCK_LEN])> {
    let mut v = vec![
        (
            SocketAddr::new(IpAddr::V4(link.a_v4), CLIENT_PORT_V4),
            frames::knock(&KEY, USER, STEP, 1),
        ),
        (
            SocketAddr::new(IpAddr::V6(link.a_v6), CLIENT_PORT_V6),
            frames::knock(&KEY, USER, STEP + 1, 2),
        ),
    ];
    v.sort();
    v
}

#[test]
fn xdp_delivers_knocks_drops_junk_and_passes_other_traffic() {
    delivers_knocks_drops_junk_and_passes_other_traffic(XdpAttachMode::Native, 41);
}

#[test]
fn tc_ingress_delivers_knocks_drops_junk_and_passes_other_traffic() {
    delivers_knocks_drops_junk_and_passes_other_traffic(XdpAttachMode::Tc, 47);
}

/// The pre-filter attached in `xdp_mode`: the standard traffic's knocks delivered once, its junk
/// dropped and counted, other UDP and TCP passed, and the knock port open again after detach.
fn delivers_knocks_drops_junk_and_passes_other_traffic(xdp_mode: XdpAttachMode, subnet: u8) {
    let (link, report) = run_mode(CaptureMode::Xdp, xdp_mode, subnet);
    println!("{xdp_mode} counters: {}", report.counters);
    assert_eq!(report.mode, ActiveMode::Xdp);
    let mut got = report.candidates.clone();
    got.sort();
    assert_eq!(got, expected_candidates(&link));
    assert_standard_verdicts(&report.counters);
    assert!(report.counters.get(Counter::NotKnock) > 0);
    assert_eq!(
        report.knock_socket_got, 0,
        "a socket on the knock port received data while XDP was attached"
    );
    let mut other: Vec<IpAddr> = report
        .other_udp_got
        .iter()
        .map(|a| a.ip().to_canonical())
        .collect();
    other.sort();
    other.dedup();
    assert_eq!(
        other,
        vec![IpAddr::V4(link.a_v4), IpAddr::V6(link.a_v6)],
        "other UDP over both families"
    );
    assert_eq!(report.tcp_accepted, 2, "TCP over both families");
    assert_eq!(
        report
            .knock_socket_after_detach
            .map(|a| a.ip().to_canonical()),
        Some(IpAddr::V4(link.a_v4)),
        "after detaching, the knock port socket receives again"
    );
}

#[test]
fn xdp_pcap_and_udp_modes_deliver_the_same_candidates() {
    let mut runs = Vec::new();
    for (i, mode) in [CaptureMode::Xdp, CaptureMode::Pcap, CaptureMode::Udp]
        .into_iter()
        .enumerate()
    {
        let subnet = 42 + u8::try_from(i).unwrap();
        let (link, report) = run_mode(mode, XdpAttachMode::Native, subnet);
        println!("{:?} counters: {}", report.mode, report.counters);
        let mut got = report.candidates.clone();
        got.sort();
        // Each run has its own subnet: compare by position in the address, not the address.
        assert_eq!(got, expected_candidates(&link), "{mode:?}");
        assert_standard_verdicts(&report.counters);
        runs.push((mode, report));
    }
    assert_eq!(runs[0].1.mode, ActiveMode::Xdp);
    assert_eq!(runs[1].1.mode, ActiveMode::Pcap);
    assert_eq!(runs[2].1.mode, ActiveMode::Udp);
    // Verdicts on knock-port traffic are identical (not_knock differs by design: pcap and the
    // socket only see the knock port).
    for &c in Counter::ALL.iter().filter(|c| !c.passes()) {
        let counts: Vec<u64> = runs.iter().map(|(_, r)| r.counters.get(c)).collect();
        assert!(
            counts.windows(2).all(|w| w[0] == w[1]),
            "{}: {counts:?}",
            c.name()
        );
    }
}

/// Runs `f` on a thread in `ns` inside a current-thread tokio runtime (`Capture::open` needs one
/// for its `AsyncFd`).
fn in_runtime<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    ns.run(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = rt.enter();
        f()
    })
    .unwrap()
}

#[test]
fn auto_mode_picks_xdp_when_it_can() {
    require_root();
    let server = NetNs::unique("auto").unwrap();
    let client = NetNs::unique("autoc").unwrap();
    let link = netns::connect(&client, &server, 45).unwrap();
    let open = |config: CaptureConfig| {
        in_runtime(&server, move || Capture::open(&config).map(|c| c.mode()))
    };
    let mode = open(capture_config(CaptureMode::Auto, &link)).unwrap();
    assert_eq!(mode, ActiveMode::Xdp);
    // A missing interface is a clear error naming it.
    let mut config = capture_config(CaptureMode::Xdp, &link);
    config.ifaces = vec!["ck-missing0".to_owned()];
    let err = open(config).unwrap_err();
    let text = capyknock::capture::ErrorChain(&err).to_string();
    assert!(
        text.contains("ck-missing0") && text.contains("does not exist"),
        "{text}"
    );
}

#[test]
fn xdp_mode_auto_is_tc_on_a_veth() {
    require_root();
    let server = NetNs::unique("vtc").unwrap();
    let client = NetNs::unique("vtcc").unwrap();
    let link = netns::connect(&client, &server, 46).unwrap();
    // The capture is opened and kept on a thread in the server's namespace while we look.
    let attached_as = |xdp_mode: Option<XdpAttachMode>| {
        let mut config = capture_config(CaptureMode::Xdp, &link);
        config.xdp_mode = xdp_mode;
        in_runtime(&server, || {
            let capture = Capture::open(&config).unwrap();
            let reported: Vec<_> = capture
                .interfaces()
                .into_iter()
                .map(|a| a.xdp_mode)
                .collect();
            let flag = xdp_flag(&server, &link.b_if);
            let tc = tcx_ingress_programs(&server, &link.b_if);
            capture.shutdown();
            (reported, flag, tc)
        })
    };
    let (reported, flag, tc) = attached_as(None);
    assert_eq!(reported, [Some(XdpAttachMode::Tc)], "auto on a veth");
    assert_eq!((flag, tc), (None, vec![TC_PROGRAM.to_owned()]), "auto");
    let (reported, flag, tc) = attached_as(Some(XdpAttachMode::Skb));
    assert_eq!(reported, [Some(XdpAttachMode::Skb)], "skb forced");
    assert_eq!(flag.as_deref(), Some("xdpgeneric"), "skb forced");
    assert!(tc.is_empty(), "skb forced: {tc:?}");
    let (reported, flag, _) = attached_as(Some(XdpAttachMode::Native));
    assert_eq!(reported, [Some(XdpAttachMode::Native)], "native forced");
    assert_eq!(flag.as_deref(), Some("xdp"), "native forced");
    // Detached on shutdown every time.
    assert_eq!(xdp_flag(&server, &link.b_if), None);
    assert!(tcx_ingress_programs(&server, &link.b_if).is_empty());
}
