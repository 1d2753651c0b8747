//! The junk flood: packets of one [`Junk`] profile sent from the attacker namespace to the knock
//! port with `sendmmsg` (64 datagrams per system call), at a paced rate or as fast as the
//! sender goes.
//!
//! A flood is bounded three ways and stops by itself: its time limit, its packet limit, and a
//! stop flag (set by the run, and by Ctrl-C). It sends only inside the namespaces: the socket
//! lives in the attacker namespace, whose only route is the veth to the server.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde::Serialize;

use crate::topology::{NetNs, enter, interrupted};

/// Every knock is this long (capyknock-common `wire::KNOCK_LEN`).
pub const KNOCK_LEN: usize = 256;
/// The knock magic and version (`wire::MAGIC`, `wire::VERSION`).
const MAGIC_VERSION: [u8; 5] = *b"CKnk\x01";
/// Offsets in the knock header (docs/PROTOCOL.md).
const USER_ID: std::ops::Range<usize> = 8..24;
const TIME_STEP: std::ops::Range<usize> = 24..32;
/// The nonce, tag and everything after: what "wrong tag" packets randomise.
const AFTER_STEP: std::ops::RangeFrom<usize> = 32..;
/// Largest random datagram: fits a 1500-byte MTU without IP fragments.
const MAX_RANDOM_LEN: usize = 1472;
/// Distinct packets per profile, sent round-robin (the sender does no work per packet).
const POOL: usize = 4096;
/// Datagrams per `sendmmsg`.
const BATCH: usize = 64;

/// What the junk looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Junk {
    /// Random bytes of random length (1 to 1472).
    Random,
    /// The exact knock size, right magic and version and the current time step, random user
    /// ids (dies at "unknown user").
    Magic,
    /// A known user id and the current time step with random tags (dies at "bad tag").
    BadTag,
    /// One captured valid knock (already used by its owner), replayed (dies at "duplicate").
    Replay,
    /// The four above in turn.
    Mix,
}

impl Junk {
    /// Every profile, in report order.
    pub const ALL: [Junk; 5] = [
        Junk::Random,
        Junk::Magic,
        Junk::BadTag,
        Junk::Replay,
        Junk::Mix,
    ];

    /// Stable name (CLI, JSON, report).
    pub fn name(self) -> &'static str {
        match self {
            Junk::Random => "random",
            Junk::Magic => "magic",
            Junk::BadTag => "bad_tag",
            Junk::Replay => "replay",
            Junk::Mix => "mix",
        }
    }

    /// One line for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Junk::Random => "random bytes, random length 1-1472",
            Junk::Magic => "256 bytes, right magic/version/step, random user ids",
            Junk::BadTag => "256 bytes, a known user id, current step, wrong tags",
            Junk::Replay => "one captured valid knock, replayed",
            Junk::Mix => "random, magic, bad_tag and replay in turn",
        }
    }
}

impl fmt::Display for Junk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Junk {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Junk::ALL
            .into_iter()
            .find(|j| j.name() == s || (s == "badtag" && *j == Junk::BadTag))
            .ok_or_else(|| {
                format!("unknown junk profile {s:?} (random, magic, bad_tag, replay, mix)")
            })
    }
}

/// An offered rate: packets per second, or as fast as the sender goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rate {
    /// Paced at this many packets per second.
    Pps(u64),
    /// Unpaced.
    Max,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Pps(n) => write!(f, "{n}"),
            Rate::Max => f.write_str("max"),
        }
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "max" {
            return Ok(Rate::Max);
        }
        let digits = s.replace('_', "");
        let (num, mult) = match digits.strip_suffix(['k', 'K']) {
            Some(n) => (n, 1000),
            None => (digits.as_str(), 1),
        };
        match num.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Rate::Pps(n.saturating_mul(mult))),
            _ => Err(format!(
                "bad rate {s:?}: packets per second (10000, 10k) or max"
            )),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// What the junk packets are made from.
#[derive(Debug, Clone)]
pub struct Material {
    /// A valid knock of the junk user, already delivered once (so its copies are duplicates).
    pub captured: Vec<u8>,
    /// The current TOTP time step.
    pub time_step: u64,
}

/// Builds the packet pool of `junk`.
pub fn pool(junk: Junk, m: &Material) -> anyhow::Result<Vec<Vec<u8>>> {
    if m.captured.len() != KNOCK_LEN {
        bail!(
            "the captured knock is {} bytes, not {KNOCK_LEN}",
            m.captured.len()
        );
    }
    let mut rng = fastrand::Rng::new();
    let known_user = m.captured.get(USER_ID).unwrap_or_default().to_vec();
    let step = m.time_step.to_be_bytes();
    let header = |user: &[u8], rng: &mut fastrand::Rng| {
        let mut p = vec![0u8; KNOCK_LEN];
        rng.fill(&mut p);
        if let Some(h) = p.get_mut(..8) {
            h.fill(0);
        }
        if let Some(h) = p.get_mut(..MAGIC_VERSION.len()) {
            h.copy_from_slice(&MAGIC_VERSION);
        }
        if let Some(u) = p.get_mut(USER_ID) {
            u.copy_from_slice(user);
        }
        if let Some(s) = p.get_mut(TIME_STEP) {
            s.copy_from_slice(&step);
        }
        p
    };
    let one = |kind: Junk, rng: &mut fastrand::Rng| -> Vec<u8> {
        match kind {
            Junk::Random | Junk::Mix => {
                let mut p = vec![0u8; rng.usize(1..=MAX_RANDOM_LEN)];
                rng.fill(&mut p);
                p
            }
            Junk::Magic => {
                let mut user = [0u8; 16];
                rng.fill(&mut user);
                header(&user, rng)
            }
            Junk::BadTag => {
                let mut p = header(&known_user, rng);
                // Everything from the nonce on is random already; the tag matches with
                // probability 2^-64.
                if let Some(rest) = p.get_mut(AFTER_STEP) {
                    rng.fill(rest);
                }
                p
            }
            Junk::Replay => m.captured.clone(),
        }
    };
    let kinds: &[Junk] = match junk {
        Junk::Mix => &[Junk::Random, Junk::Magic, Junk::BadTag, Junk::Replay],
        _ => &[junk],
    };
    let count = if junk == Junk::Replay { 1 } else { POOL };
    Ok((0..count)
        .map(|i| {
            one(
                kinds.get(i % kinds.len()).copied().unwrap_or(junk),
                &mut rng,
            )
        })
        .collect())
}

/// What a flood did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct FloodStats {
    /// Datagrams the kernel accepted from `sendmmsg`.
    pub sent: u64,
    /// Failed `sendmmsg` calls (ENOBUFS and the like).
    pub send_errors: u64,
    /// From the first send to the last, seconds.
    pub secs: f64,
    /// CPU time of the sending thread, seconds (exact, from the scheduler): the sending itself,
    /// plus whatever receive work the kernel did in this thread's system calls.
    pub cpu_secs: f64,
}

/// A running flood; [`Flood::stop`] ends it and returns what it did.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<FloodStats>>>,
}

impl Flood {
    /// Starts sending `packets` round-robin from `ns` to `to`, at `rate`, for at most
    /// `max_secs` and `max_packets`.
    pub fn start(
        ns: &NetNs,
        to: SocketAddrV4,
        packets: Vec<Vec<u8>>,
        rate: Rate,
        max_secs: f64,
        max_packets: u64,
    ) -> anyhow::Result<Self> {
        if packets.is_empty() {
            bail!("no junk packets to send");
        }
        let file = ns.file()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let socket = enter(&file).and_then(|()| {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
                s.connect(to)?;
                Ok(s)
            });
            let socket = match socket {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    bail!("flood socket failed");
                }
            };
            Ok(send_loop(
                &socket,
                &packets,
                rate,
                &stopping,
                Limits {
                    secs: max_secs,
                    packets: max_packets,
                },
            ))
        });
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("flood thread died"))??;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the flood and returns its figures.
    pub fn stop(mut self) -> anyhow::Result<FloodStats> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))?,
            None => Ok(FloodStats::default()),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// When a flood stops by itself.
#[derive(Debug, Clone, Copy)]
struct Limits {
    secs: f64,
    packets: u64,
}

/// Sends until a limit, the stop flag or Ctrl-C.
fn send_loop(
    socket: &UdpSocket,
    packets: &[Vec<u8>],
    rate: Rate,
    stop: &AtomicBool,
    limits: Limits,
) -> FloodStats {
    // Paced floods send small batches often (about every 0.5 ms), so the rate is smooth.
    let batch = match rate {
        Rate::Max => BATCH,
        Rate::Pps(pps) => usize::try_from(pps / 2000).unwrap_or(BATCH).clamp(1, BATCH),
    };
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(batch);
    // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are a valid value.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; batch];
    let mut next = 0usize;
    let mut stats = FloodStats::default();
    let cpu_start = thread_cpu_secs();
    let started = Instant::now();
    let mut calls = 0u64;
    while stats.sent < limits.packets {
        calls += 1;
        if stop.load(Ordering::Relaxed) || (calls.is_multiple_of(256) && interrupted()) {
            break;
        }
        let elapsed = started.elapsed().as_secs_f64();
        if elapsed >= limits.secs {
            break;
        }
        if let Rate::Pps(pps) = rate {
            // Ahead of schedule: wait until the next batch is due.
            let due = (stats.sent as f64 + batch as f64) / pps as f64;
            if due > elapsed {
                std::thread::sleep(Duration::from_secs_f64((due - elapsed).min(0.01)));
                continue;
            }
        }
        let n = batch.min(usize::try_from(limits.packets - stats.sent).unwrap_or(batch));
        iov.clear();
        for _ in 0..n {
            let p = packets.get(next).or(packets.first());
            next = (next + 1) % packets.len();
            if let Some(p) = p {
                iov.push(libc::iovec {
                    iov_base: p.as_ptr().cast_mut().cast(),
                    iov_len: p.len(),
                });
            }
        }
        for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = std::ptr::from_mut(v);
            m.msg_hdr.msg_iovlen = 1;
            m.msg_len = 0;
        }
        let count = u32::try_from(iov.len()).unwrap_or(0);
        // SAFETY: `msgs` holds at least `count` headers, each pointing at one iovec of `iov`,
        // which points into `packets`; all outlive the call. The socket is connected, so no
        // address is needed; the kernel only reads the buffers.
        let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), count, 0) };
        if let Ok(sent) = u64::try_from(rc) {
            stats.sent += sent;
        } else {
            stats.send_errors += 1;
            // ENOBUFS/ECONNREFUSED: the path is full or an ICMP error came back; go on.
            std::thread::yield_now();
        }
    }
    stats.secs = started.elapsed().as_secs_f64();
    stats.cpu_secs = thread_cpu_secs() - cpu_start;
    stats
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    fn material() -> Material {
        let mut captured = vec![0u8; KNOCK_LEN];
        captured[..5].copy_from_slice(&MAGIC_VERSION);
        captured[USER_ID].fill(0xAB);
        Material {
            captured,
            time_step: 0x0102_0304_0506_0708,
        }
    }

    #[test]
    fn profiles_look_as_described() {
        let m = material();
        let step = m.time_step.to_be_bytes();
        let random = pool(Junk::Random, &m).unwrap();
        assert_eq!(random.len(), POOL);
        assert!(
            random
                .iter()
                .all(|p| (1..=MAX_RANDOM_LEN).contains(&p.len()))
        );
        assert!(random.iter().any(|p| p.len() != random[0].len()));

        for p in pool(Junk::Magic, &m).unwrap() {
            assert_eq!(p.len(), KNOCK_LEN);
            assert_eq!(&p[..5], &MAGIC_VERSION);
            assert_eq!(&p[5..8], &[0, 0, 0]);
            assert_eq!(&p[TIME_STEP], &step);
            assert_ne!(&p[USER_ID], &m.captured[USER_ID]);
        }
        let bad = pool(Junk::BadTag, &m).unwrap();
        for p in &bad {
            assert_eq!(&p[USER_ID], &m.captured[USER_ID]);
            assert_eq!(&p[TIME_STEP], &step);
        }
        assert_ne!(bad[0][56..64], bad[1][56..64], "tags differ");
        assert_eq!(pool(Junk::Replay, &m).unwrap(), vec![m.captured.clone()]);
        let mix = pool(Junk::Mix, &m).unwrap();
        assert_eq!(mix[3], m.captured);
        assert_eq!(&mix[1][USER_ID].len(), &16);
        assert!(
            pool(
                Junk::Replay,
                &Material {
                    captured: vec![1],
                    time_step: 0
                }
            )
            .is_err()
        );
    }

    #[test]
    fn rates_and_profiles_parse() {
        assert_eq!("max".parse(), Ok(Rate::Max));
        assert_eq!("10k".parse(), Ok(Rate::Pps(10_000)));
        assert_eq!("250000".parse(), Ok(Rate::Pps(250_000)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert_eq!("bad_tag".parse(), Ok(Junk::BadTag));
        assert!("x".parse::<Junk>().is_err());
    }

    #[test]
    fn paced_loop_keeps_its_rate_and_limits() {
        let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        let packets = vec![vec![7u8; 16]; 3];
        let stop = AtomicBool::new(false);
        let s = send_loop(
            &tx,
            &packets,
            Rate::Pps(2000),
            &stop,
            Limits {
                secs: 0.5,
                packets: u64::MAX,
            },
        );
        assert!((800..=1200).contains(&s.sent), "{s:?}");
        let s = send_loop(
            &tx,
            &packets,
            Rate::Max,
            &stop,
            Limits {
                secs: 5.0,
                packets: 100,
            },
        );
        assert_eq!(s.sent, 100);
        assert!(s.cpu_secs > 0.0 && s.cpu_secs <= s.secs + 0.01, "{s:?}");
        let mut buf = [0u8; 64];
        assert_eq!(rx.recv(&mut buf).unwrap(), 16);
    }
}
