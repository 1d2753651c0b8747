//! A UDP flood from inside a namespace: a pool of packets sent round-robin with `sendmmsg` (up
//! to 64 datagrams per system call, the sender doing no work per packet) on a connected socket,
//! at a paced rate or as fast as the sender goes.
//!
//! A flood is bounded three ways and stops by itself: its time limit, its packet limit, and a
//! stop flag (set by [`Flood::stop`], by drop, and by Ctrl-C through [`crate::wait`]). It sends
//! only inside the namespace it was started in.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{Error, Result, clock::thread_cpu_time, netns::NetNs, wait::interrupted};

/// Most datagrams per `sendmmsg`.
pub const BATCH: usize = 64;

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

    /// `max`, or packets per second: `10000`, `10_000`, `10k`.
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

/// When a flood stops by itself.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Seconds from the first send.
    pub secs: f64,
    /// Datagrams sent.
    pub packets: u64,
}

/// What a flood did.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloodStats {
    /// Datagrams the kernel accepted from `sendmmsg`.
    pub sent: u64,
    /// Failed `sendmmsg` calls (ENOBUFS and the like).
    pub send_errors: u64,
    /// From the first send to the last, seconds.
    pub secs: f64,
    /// CPU time of the sending thread, seconds (exact, from the scheduler): the sending itself,
    /// plus whatever receive work the kernel did in this thread's system calls (a veth delivers
    /// in the sender's own `sendmmsg`).
    pub cpu_secs: f64,
}

/// A running flood; [`Flood::stop`] ends it and returns what it did.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<FloodStats>>,
}

impl Flood {
    /// Starts sending `packets` round-robin from `ns` to `to`, at `rate`, within `limits`.
    pub fn start(
        ns: &NetNs,
        to: SocketAddr,
        packets: Vec<Vec<u8>>,
        rate: Rate,
        limits: Limits,
    ) -> Result<Self> {
        if packets.is_empty() {
            return Err(Error::Other("no packets to flood with".into()));
        }
        let socket = ns.run(move || -> Result<UdpSocket> {
            let any = match to {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            };
            let s = UdpSocket::bind((any, 0)).map_err(|e| Error::io("flood socket: bind", e))?;
            s.connect(to)
                .map_err(|e| Error::io(format!("flood socket: connect {to}"), e))?;
            Ok(s)
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread =
            std::thread::spawn(move || send_loop(&socket, &packets, rate, &stopping, limits));
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the flood and returns its figures.
    pub fn stop(mut self) -> Result<FloodStats> {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| Error::Other("flood thread panicked".into())),
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

/// Sends until a limit, the stop flag or Ctrl-C, on a connected socket.
#[expect(
    clippy::cast_precision_loss,
    reason = "packet counts and rates stay far below 2^52"
)]
pub fn send_loop(
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
    let mut next = 0usize;
    let mut stats = FloodStats::default();
    let mut iov: Vec<&[u8]> = Vec::with_capacity(batch);
    let mut mmsg = Mmsg::new(batch);
    let cpu_start = thread_cpu_time();
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
                iov.push(p);
            }
        }
        if let Some(sent) = mmsg.send(socket, &iov) {
            stats.sent += sent;
        } else {
            stats.send_errors += 1;
            // ENOBUFS/ECONNREFUSED: the path is full or an ICMP error came back; go on.
            std::thread::yield_now();
        }
    }
    stats.secs = started.elapsed().as_secs_f64();
    stats.cpu_secs = (thread_cpu_time().saturating_sub(cpu_start)).as_secs_f64();
    stats
}

/// The `sendmmsg(2)` call: the only foreign interface of the kit. (nix's wrapper builds its
/// headers anew on every call; this one reuses them, so the sender does no work per packet.)
struct Mmsg {
    iov: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

#[expect(
    unsafe_code,
    reason = "sendmmsg(2) through libc; the pointers are only read by the kernel during the call"
)]
impl Mmsg {
    fn new(batch: usize) -> Self {
        Self {
            iov: Vec::with_capacity(batch),
            // SAFETY: mmsghdr is a plain C struct for which all-zero bytes are a valid value.
            msgs: vec![unsafe { std::mem::zeroed() }; batch],
        }
    }

    /// Sends one datagram per packet of `packets` (at most the batch size) on the connected
    /// `socket`; how many the kernel took, `None` on an error.
    fn send(&mut self, socket: &UdpSocket, packets: &[&[u8]]) -> Option<u64> {
        self.iov.clear();
        for p in packets.iter().take(self.msgs.len()) {
            self.iov.push(libc::iovec {
                iov_base: p.as_ptr().cast_mut().cast(),
                iov_len: p.len(),
            });
        }
        for (m, v) in self.msgs.iter_mut().zip(self.iov.iter_mut()) {
            m.msg_hdr.msg_iov = std::ptr::from_mut(v);
            m.msg_hdr.msg_iovlen = 1;
            m.msg_len = 0;
        }
        let count = u32::try_from(self.iov.len()).unwrap_or(0);
        // SAFETY: `msgs` holds at least `count` headers, each pointing at one iovec of `iov`,
        // which point into `packets`, borrowed for the call; the socket is
        // connected, so no address is needed; the kernel only reads the buffers.
        let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), self.msgs.as_mut_ptr(), count, 0) };
        u64::try_from(rc).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        assert_eq!("max".parse(), Ok(Rate::Max));
        assert_eq!("10k".parse(), Ok(Rate::Pps(10_000)));
        assert_eq!("250_000".parse(), Ok(Rate::Pps(250_000)));
        assert!("0".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
        assert_eq!(Rate::Pps(20_000).to_string(), "20000");
        assert_eq!(Rate::Max.to_string(), "max");
        assert!(Rate::Pps(1) < Rate::Max, "max sorts last");
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
