//! Regression (issue 13.2): a key holder cannot lock the other users out. One user's key makes
//! valid-tag junk (every packet a fresh knock, so no duplicate check catches it) sent over a
//! veth as fast as the sender goes, with forged source addresses, while ten other users knock
//! once each from the client's real address. Before the per-user bucket this junk emptied the
//! global bucket (other users' knocks got through 3 of 10 under XDP) or, forged from a victim's
//! address, that address's bucket (0 of 8). Now it stops at its own user's bucket: every other
//! user's knock reaches the daemon. Real capture (XDP, native mode), default rate limits. Needs
//! root.
//!
//! ```text
//!   [ns kcli] AF_PACKET: user A's valid-tag junk, forged sources  --veth-->  [ns ksrv] XDP
//!             UDP socket: one knock each from users B..K                     Capture::next()
//! ```
//!
//! Run with `--nocapture` for the figures (docs/SECURITY.md quotes them).

use std::{
    collections::HashSet,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use capyknock::capture::{Capture, CaptureConfig, CaptureMode, PrefilterCounters};
use capyknock_common::{counters::Counter, wire::KNOCK_LEN};
use capyknock_testkit::netns::{self, Link, NetNs};
use capyknock_tests::{frames, raw::RawSender, require_root};

const KNOCK_PORT: u16 = capyknock_testkit::KNOCK_PORT;
const STEP: u64 = 59_300_000;
/// How long the junk flows.
const FLOOD: Duration = Duration::from_secs(3);
/// Most junk packets sent, whatever the rate.
const FLOOD_MAX_PACKETS: u64 = 5_000_000;
/// Other users, one knock each during the flood.
const LEGIT: u8 = 10;

fn user(i: u8) -> ([u8; 16], [u8; 16]) {
    ([0x40 | i; 16], [0x80 | i; 16])
}

/// Where the junk claims to come from.
#[derive(Debug, Clone, Copy)]
enum Forged {
    /// A random address per packet.
    Random,
    /// The address the legit knocks come from (the victim's).
    Victim,
}

#[derive(Debug)]
struct Outcome {
    junk_sent: u64,
    seconds: f64,
    legit_delivered: usize,
    counters: PrefilterCounters,
}

/// Sends user 0's fresh valid-tag knocks as raw Ethernet frames (broadcast destination, so no
/// neighbour lookup; XDP sees them first either way) out of `ifname` until `stop`.
fn flood(ifname: &str, victim: Ipv4Addr, forged: Forged, stop: &AtomicBool) -> (u64, f64) {
    let sender = RawSender::open(ifname);
    let (attacker, attacker_key) = user(0);
    let started = Instant::now();
    let mut sent = 0u64;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while !stop.load(Ordering::Relaxed) && sent < FLOOD_MAX_PACKETS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let src = match forged {
            Forged::Random => Ipv4Addr::from(0x0a00_0000 | (x as u32 & 0x00ff_ffff)),
            Forged::Victim => victim,
        };
        let knock = frames::knock(&attacker_key, attacker, STEP, sent as u32);
        let mut frame = frames::ipv4_udp_full(src, 40000, 0, 0, KNOCK_PORT, &knock);
        frame[..6].copy_from_slice(&[0xff; 6]);
        if sender.send(&frame) {
            sent += 1;
        }
    }
    (sent, started.elapsed().as_secs_f64())
}

fn run(forged: Forged, subnet: u8) -> Outcome {
    require_root();
    let server = NetNs::unique("ksrv").unwrap();
    let client = NetNs::unique("kcli").unwrap();
    let link = netns::connect(&client, &server, subnet).unwrap();
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (done_tx, done_rx) = mpsc::channel::<(u64, f64, Vec<[u8; KNOCK_LEN]>)>();
    let (link_ref, server_ref, client_ref) = (&link, &server, &client);
    std::thread::scope(|s| {
        let srv = s.spawn(move || {
            server_ref
                .run(move || consume(link_ref, &ready_tx, &done_rx))
                .unwrap()
        });
        s.spawn(move || {
            client_ref
                .run(move || {
                    ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
                    done_tx.send(client_side(link_ref, forged)).unwrap();
                })
                .unwrap();
        });
        srv.join().unwrap()
    })
}

fn client_side(link: &Link, forged: Forged) -> (u64, f64, Vec<[u8; KNOCK_LEN]>) {
    let to = SocketAddr::from((link.b_v4, KNOCK_PORT));
    let knocker = UdpSocket::bind((link.a_v4, 0)).unwrap();
    knocker.send_to(b"warm-up", (link.b_v4, 9)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let flood_stop = Arc::clone(&stop);
    let (ifname, victim) = (link.a_if.clone(), link.a_v4);
    let flooder = std::thread::spawn(move || flood(&ifname, victim, forged, &flood_stop));
    // Let the junk get going before the first legit knock.
    std::thread::sleep(Duration::from_millis(300));
    let gap = FLOOD.saturating_sub(Duration::from_millis(600)) / u32::from(LEGIT);
    let mut knocks = Vec::new();
    for i in 1..=LEGIT {
        let (id, key) = user(i);
        let k = frames::knock(&key, id, STEP, 7);
        knocker.send_to(&k, to).unwrap();
        knocks.push(k);
        std::thread::sleep(gap);
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (sent, seconds) = flooder.join().unwrap();
    (sent, seconds, knocks)
}

fn consume(
    link: &Link,
    ready: &mpsc::Sender<()>,
    done: &mpsc::Receiver<(u64, f64, Vec<[u8; KNOCK_LEN]>)>,
) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = CaptureConfig {
            mode: CaptureMode::Xdp,
            ifaces: vec![link.b_if.clone()],
            knock_ports: vec![KNOCK_PORT],
            // The defaults: 10/s per user and per source, 10,000/s in all.
            ..CaptureConfig::default()
        };
        let mut capture = Capture::open(&config).unwrap();
        let users: Vec<_> = (0..=LEGIT).map(user).collect();
        capture.set_users(&users).unwrap();
        capture.set_time_step(STEP).unwrap();
        let before = capture.counters().unwrap();
        ready.send(()).unwrap();
        let started = Instant::now();
        let mut received: HashSet<[u8; KNOCK_LEN]> = HashSet::new();
        let report = loop {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(20), capture.next()).await
            {
                received.insert(c.bytes);
            }
            match done.try_recv() {
                Ok(report) => break report,
                Err(mpsc::TryRecvError::Disconnected) => panic!("the client side failed"),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            assert!(started.elapsed() < FLOOD * 10, "the client never finished");
        };
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_millis(300) {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(20), capture.next()).await
            {
                received.insert(c.bytes);
            }
        }
        let (junk_sent, seconds, knocks) = report;
        Outcome {
            junk_sent,
            seconds,
            legit_delivered: knocks.iter().filter(|k| received.contains(*k)).count(),
            counters: capture.counters().unwrap().since(&before),
        }
    })
}

fn check(name: &str, o: &Outcome) {
    println!(
        "{name}: user A's valid-tag junk {} packets in {:.2} s ({:.0}/s); other users' knocks \
         delivered {}/{LEGIT}\n  counters: {}",
        o.junk_sent,
        o.seconds,
        o.junk_sent as f64 / o.seconds,
        o.legit_delivered,
        o.counters
    );
    assert!(o.junk_sent > 1000, "the flood did not run: {}", o.junk_sent);
    assert_eq!(
        o.legit_delivered,
        usize::from(LEGIT),
        "every other user's knock gets through: {}",
        o.counters
    );
    // The junk stopped at its own user's bucket: at most its burst plus its rate got further.
    let junk_delivered = o.counters.get(Counter::Delivered) - u64::from(LEGIT);
    let bound = 20.0 + 10.0 * (o.seconds + 1.0);
    assert!(junk_delivered as f64 <= bound, "{}", o.counters);
    assert!(
        o.counters.get(Counter::RateLimitedUser) > 0,
        "{}",
        o.counters
    );
    assert_eq!(
        o.counters.get(Counter::RateLimitedGlobal),
        0,
        "{}",
        o.counters
    );
    assert_eq!(
        o.counters.get(Counter::RateLimitedSource),
        0,
        "{}",
        o.counters
    );
}

#[test]
fn junk_from_random_forged_sources_spends_only_its_users_share() {
    let o = run(Forged::Random, 61);
    check("random forged sources", &o);
}

#[test]
fn junk_forged_from_the_victims_address_does_not_lock_the_victim_out() {
    let o = run(Forged::Victim, 62);
    check("forged from the victim's address", &o);
}
