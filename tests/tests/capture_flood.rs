//! Flood measurement: junk to the knock port at the sender's full rate (`sendmmsg`, bounded to a
//! few seconds) over a veth between two namespaces, with the XDP pre-filter attached on the
//! server side. Measures how many junk packets per second the XDP path drops while the consumer
//! (the thread running the capture's tokio runtime) stays under 5% CPU, and checks that valid
//! knocks sent during the flood still arrive promptly. Needs root.
//!
//! ```text
//!   [ns client] flood: sendmmsg, 256-byte junk     --veth-->  [ns server] XDP on ckb
//!               knocker: one valid knock / 250 ms                 consumer: Capture::next()
//! ```
//!
//! Run with `--nocapture` to see the figures (docs/CAPTURE.md quotes them). A second run of the
//! same flood against the `udp` socket mode is printed for comparison, without assertions.

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use capyknock::capture::{Capture, CaptureConfig, CaptureMode, PrefilterCounters, RateLimitConfig};
use capyknock_common::{counters::Counter, wire::KNOCK_LEN};
use capyknock_tests::{
    frames,
    netns::{self, Link, NetNs},
    require_root,
};

const KNOCK_PORT: u16 = 62201;
const USER: [u8; 16] = *b"flood-user-id-01";
const KEY: [u8; 16] = *b"flood-tag-key-01";
const STEP: u64 = 59_200_000;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(3);
/// Most packets the flood sends, whatever the rate.
const FLOOD_MAX_PACKETS: u64 = 20_000_000;
/// Messages per `sendmmsg` call.
const BATCH: usize = 64;
/// Valid knocks sent during the flood.
const KNOCKS: u32 = 10;

/// Packets the flood sent, and when each valid knock was sent.
type ClientReport = (u64, Vec<(Instant, [u8; KNOCK_LEN])>);

#[derive(Debug)]
struct Measured {
    /// Packets the flood sender handed to the kernel.
    sent: u64,
    /// Verdict counter deltas over the flood.
    counters: PrefilterCounters,
    /// Wall time of the measurement window.
    wall: Duration,
    /// CPU time of the consumer thread in that window.
    consumer_cpu: Duration,
    /// Latency from send to `Capture::next` returning, per valid knock received.
    latencies: Vec<Duration>,
}

impl Measured {
    fn cpu_percent(&self) -> f64 {
        100.0 * self.consumer_cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    fn dropped_pps(&self) -> f64 {
        let dropped = self.counters.knock_port_total() - self.counters.get(Counter::Delivered);
        dropped as f64 / self.wall.as_secs_f64()
    }
}

fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap(),
        u32::try_from(ts.tv_nsec).unwrap(),
    )
}

/// 64 junk payloads: half with a right-looking header (magic, version, the real user id, the
/// current step) and a wrong tag, which costs the kernel a SipHash each; half random bytes.
fn junk_payloads() -> Vec<[u8; KNOCK_LEN]> {
    (0..BATCH as u32)
        .map(|i| {
            let mut k = frames::knock(&KEY, USER, STEP, 1_000_000 + i);
            if i % 2 == 0 {
                k[56] ^= 0xa5;
            } else {
                let mut x = u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for b in &mut k {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            k
        })
        .collect()
}

/// Sends junk with `sendmmsg` on a connected socket until `stop` or the packet bound.
fn flood(to: SocketAddr, stop: &AtomicBool) -> u64 {
    let socket = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
    socket.connect(to).unwrap();
    let payloads = junk_payloads();
    let mut iovecs: Vec<libc::iovec> = payloads
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, iov) in msgs.iter_mut().zip(iovecs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && sent < FLOOD_MAX_PACKETS {
        // SAFETY: `msgs` holds BATCH initialised headers whose iovecs point into `payloads`,
        // all alive for the call; the socket is connected, so no address is needed.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            sent += u64::try_from(n).unwrap();
        }
    }
    sent
}

fn run_flood(mode: CaptureMode, subnet: u8) -> Measured {
    require_root();
    let server = NetNs::new("fsrv");
    let client = NetNs::new("fcli");
    let link = netns::connect(&client, &server, subnet);
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let (start_tx, start_rx) = mpsc::channel::<Instant>();
    let (done_tx, done_rx) = mpsc::channel::<ClientReport>();
    let (link_ref, server_ref, client_ref) = (&link, &server, &client);
    std::thread::scope(|s| {
        let srv = s.spawn(move || {
            server_ref.run(move || consume(mode, link_ref, &ready_tx, &start_rx, &done_rx))
        });
        s.spawn(move || {
            client_ref.run(move || {
                ready_rx.recv_timeout(Duration::from_secs(20)).unwrap();
                let (sent, knocks) = client_side(link_ref, &start_tx);
                done_tx.send((sent, knocks)).unwrap();
            });
        });
        srv.join().unwrap()
    })
}

fn client_side(link: &Link, start: &mpsc::Sender<Instant>) -> ClientReport {
    let to = SocketAddr::from((link.b_v4, KNOCK_PORT));
    let knocker = UdpSocket::bind((link.a_v4, 0)).unwrap();
    // Resolve the neighbour before timing anything.
    knocker.send_to(b"warm-up", (link.b_v4, 9)).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stop = Arc::new(AtomicBool::new(false));
    let flood_stop = Arc::clone(&stop);
    let t0 = Instant::now();
    start.send(t0).unwrap();
    let flooder = std::thread::spawn(move || flood(to, &flood_stop));
    let mut knocks = Vec::new();
    let gap = FLOOD / (KNOCKS + 1);
    for i in 0..KNOCKS {
        std::thread::sleep(gap);
        let k = frames::knock(&KEY, USER, STEP, i);
        knocks.push((Instant::now(), k));
        knocker.send_to(&k, to).unwrap();
    }
    let rest = FLOOD.saturating_sub(t0.elapsed());
    std::thread::sleep(rest);
    stop.store(true, Ordering::Relaxed);
    (flooder.join().unwrap(), knocks)
}

fn consume(
    mode: CaptureMode,
    link: &Link,
    ready: &mpsc::Sender<()>,
    start: &mpsc::Receiver<Instant>,
    done: &mpsc::Receiver<ClientReport>,
) -> Measured {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = CaptureConfig {
            mode,
            ifaces: vec![link.b_if.clone()],
            knock_ports: vec![KNOCK_PORT],
            xdp_mode: None,
            per_source: RateLimitConfig {
                per_second: 10,
                burst: 20,
            },
            global: RateLimitConfig {
                per_second: 10_000,
                burst: 10_000,
            },
            per_user: RateLimitConfig {
                per_second: 10,
                burst: 20,
            },
        };
        let mut capture = Capture::open(&config).unwrap();
        capture.set_users(&[(USER, KEY)]).unwrap();
        capture.set_time_step(STEP).unwrap();
        ready.send(()).unwrap();
        let t0 = start.recv_timeout(Duration::from_secs(20)).unwrap();
        let before = capture.counters().unwrap();
        let cpu0 = thread_cpu_time();
        let mut received: HashMap<[u8; KNOCK_LEN], Instant> = HashMap::new();
        let client_report = loop {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(20), capture.next()).await
            {
                received.entry(c.bytes).or_insert_with(Instant::now);
            }
            match done.try_recv() {
                Ok(report) => break report,
                Err(mpsc::TryRecvError::Disconnected) => panic!("the client side failed"),
                Err(mpsc::TryRecvError::Empty) => {}
            }
            assert!(t0.elapsed() < FLOOD * 10, "the client never finished");
        };
        let wall = t0.elapsed();
        let consumer_cpu = thread_cpu_time().saturating_sub(cpu0);
        // Let the last knocks and queued junk settle before reading the counters.
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_millis(300) {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(20), capture.next()).await
            {
                received.entry(c.bytes).or_insert_with(Instant::now);
            }
        }
        let counters = capture.counters().unwrap().since(&before);
        let (sent, knocks) = client_report;
        let latencies = knocks
            .iter()
            .filter_map(|(at, k)| {
                received
                    .get(k)
                    .map(|got| got.saturating_duration_since(*at))
            })
            .collect();
        Measured {
            sent,
            counters,
            wall,
            consumer_cpu,
            latencies,
        }
    })
}

#[test]
fn xdp_drops_a_junk_flood_with_an_idle_consumer() {
    let m = run_flood(CaptureMode::Xdp, 51);
    let max_latency = m.latencies.iter().max().copied().unwrap_or_default();
    println!(
        "xdp flood: sent {} in {:.2?}, XDP dropped {:.0} junk packets/s, consumer CPU {:.2}%, \
         {}/{} valid knocks delivered, max latency {:.2?}\n  counters: {}",
        m.sent,
        m.wall,
        m.dropped_pps(),
        m.cpu_percent(),
        m.latencies.len(),
        KNOCKS,
        max_latency,
        m.counters
    );
    assert!(m.sent > 0);
    assert_eq!(
        m.latencies.len(),
        KNOCKS as usize,
        "every valid knock arrives"
    );
    assert!(max_latency < Duration::from_millis(500), "{max_latency:?}");
    assert!(
        m.cpu_percent() < 5.0,
        "consumer used {:.2}% CPU",
        m.cpu_percent()
    );
    assert_eq!(m.counters.get(Counter::Delivered), u64::from(KNOCKS));
    // The junk was seen and judged in the kernel, not lost before it (a modest floor: the
    // sender is the bottleneck on a small machine).
    assert!(m.counters.get(Counter::BadTag) > 10_000, "{}", m.counters);
    assert!(
        m.counters.get(Counter::BadHeader) > 10_000,
        "{}",
        m.counters
    );
    assert!(m.dropped_pps() > 10_000.0, "{:.0} pps", m.dropped_pps());
}

#[test]
fn udp_socket_mode_under_the_same_flood_for_comparison() {
    let m = run_flood(CaptureMode::Udp, 52);
    println!(
        "udp flood: sent {} in {:.2?}, userspace judged {:.0} packets/s, consumer CPU {:.2}%, \
         {}/{} valid knocks delivered\n  counters: {}",
        m.sent,
        m.wall,
        m.counters.knock_port_total() as f64 / m.wall.as_secs_f64(),
        m.cpu_percent(),
        m.latencies.len(),
        KNOCKS,
        m.counters
    );
    assert!(m.sent > 0);
}
