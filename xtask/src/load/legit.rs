//! The legit knocks of a run: each sent from its own client address as the client does (three
//! copies, 50 ms apart), and timed from the first copy to the first successful TCP connect to
//! the service from that address ([`super::prober`]). The other two timings, the nftables
//! element appearing and the daemon's log line, come from [`super::watch`].
//!
//! Grants are per source address, so every knock uses an address that holds no grant (a pool
//! of client addresses used round-robin, each reused only after its short grant ran out;
//! [`super::topology::Addresses`]).

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use capyknock_testkit::{
    netns::{NetNs, enter},
    wait::{check_interrupted, interrupted},
};

use super::prober::Prober;

/// How long a knock may take to open before it counts as not honoured.
pub const KNOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Copies of each knock and the pause between them (what `capyknock knock` does).
pub const COPIES: usize = 3;
const SPACING: Duration = Duration::from_millis(50);

/// One legit knock's outcome.
#[derive(Debug, Clone)]
pub struct KnockResult {
    /// The client address it came from.
    pub src: Ipv4Addr,
    /// When the first copy left.
    pub sent_at: Instant,
    /// The same moment on the wall clock (to compare with the daemon's log).
    pub sent_wall: SystemTime,
    /// Time to the first successful TCP connect, if within [`KNOCK_TIMEOUT`].
    pub tcp: Option<Duration>,
    /// Something went wrong beyond "the port stayed closed".
    pub error: Option<String>,
}

/// Where legit knocks go.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// The server's knock port on the client side.
    pub knock: SocketAddrV4,
    /// The protected service.
    pub service: SocketAddrV4,
}

/// Sends `knocks` (address, packet) from the client namespace, one every `interval`, and
/// returns each one's outcome once all are settled.
pub fn run_knocks(
    client: &NetNs,
    target: Target,
    knocks: Vec<(Ipv4Addr, Vec<u8>)>,
    interval: Duration,
) -> anyhow::Result<Vec<KnockResult>> {
    let ns = Arc::new(client.file()?);
    let start = Instant::now();
    let mut threads: Vec<JoinHandle<KnockResult>> = Vec::new();
    for (i, (src, packet)) in knocks.into_iter().enumerate() {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if interrupted() {
            break;
        }
        let ns = Arc::clone(&ns);
        threads.push(std::thread::spawn(move || {
            knock_one(&ns, src, &packet, target)
        }));
    }
    let mut out = Vec::new();
    for t in threads {
        out.push(
            t.join()
                .map_err(|_| anyhow::anyhow!("knock thread panicked"))?,
        );
    }
    check_interrupted()?;
    Ok(out)
}

/// Sends one knock from `src` and probes the service until it answers or the timeout.
fn knock_one(ns: &File, src: Ipv4Addr, packet: &[u8], target: Target) -> KnockResult {
    let mut result = KnockResult {
        src,
        sent_at: Instant::now(),
        sent_wall: SystemTime::now(),
        tcp: None,
        error: None,
    };
    let socket = enter(ns)
        .map_err(anyhow::Error::from)
        .and_then(|()| Ok(UdpSocket::bind((src, 0))?));
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            result.error = Some(format!("knock socket: {e}"));
            return result;
        }
    };
    result.sent_wall = SystemTime::now();
    result.sent_at = Instant::now();
    if let Err(e) = socket.send_to(packet, target.knock) {
        result.error = Some(format!("knock send: {e}"));
        return result;
    }
    let mut copies_left = COPIES - 1;
    let mut next_copy = result.sent_at + SPACING;
    let deadline = result.sent_at + KNOCK_TIMEOUT;
    let mut prober = Prober::new(src, target.service);
    loop {
        let now = Instant::now();
        if copies_left > 0 && now >= next_copy {
            let _ = socket.send_to(packet, target.knock);
            copies_left -= 1;
            next_copy += SPACING;
        }
        if now >= deadline {
            break;
        }
        match prober.step(now) {
            Ok(Some(at)) => {
                result.tcp = Some(at.saturating_duration_since(result.sent_at));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                result.error = Some(e);
                break;
            }
        }
    }
    // Let the remaining copies go out as the client would (they are duplicates by now).
    while copies_left > 0 {
        let now = Instant::now();
        if next_copy > now {
            std::thread::sleep(next_copy - now);
        }
        let _ = socket.send_to(packet, target.knock);
        copies_left -= 1;
        next_copy += SPACING;
    }
    result
}
