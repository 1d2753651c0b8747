//! Windows `raw` capture: knocks read without a socket listening on the knock port.
//!
//! One raw IPv4 socket per local address (an adapter that is up, loopback excluded), bound to
//! that address with `SIO_RCVALL` at IP level (`RCVALL_IPLEVEL`: every IP packet to the
//! address, without promiscuous mode). No driver is needed, only Administrator rights. Each
//! socket has a blocking thread that reads whole IP packets (Windows puts the IPv4 header in
//! front of what a raw socket receives), skips those not addressed to the socket's own address
//! (our own outgoing packets show up too), and judges the rest with the userspace pre-filter as
//! raw IP ([`LinkLayer::RawIp`]): the same parser, checks and counters as pcap.
//!
//! `SIO_RCVALL` only copies packets: Windows still delivers them to its own stack, which answers
//! a datagram to a port no socket holds with ICMP "port unreachable" unless the Windows Firewall
//! drops it (its default for blocked inbound traffic, "stealth mode"). The daemon also keeps a
//! never-read socket on the knock port (`server::knock_sink`) so no ICMP answer leaves whatever
//! the firewall does.
//!
//! IPv4 only: IPv6 knocks are taken by IPv6-only UDP sockets on the knock ports (the `udp`
//! module's receivers, same pre-filter and queue); a host without IPv6 goes without. Addresses
//! added after start are not captured on until the daemon restarts.

use std::{
    io::{self, Read as _},
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::mpsc;

use super::{
    Candidate, CaptureConfig,
    link_layer::LinkLayer,
    udp::{self, Family},
    userspace::{SharedPrefilter, UserPrefilter},
    win_sock::{self, LocalV4},
};

/// Candidates queued between the capture threads and [`RawCapture::next`].
pub const QUEUE_LEN: usize = 1024;
/// Bytes read per packet: the largest IPv4 packet, so none is cut short (a knock is far
/// smaller; what does not fit a knock is judged by its headers, not read further).
const PACKET_MAX: usize = 65_535;
/// How long a read waits before the thread checks whether it should stop.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// Receive buffer asked for: as the udp capture's, room for a burst of junk.
const RECEIVE_BUFFER: usize = 4 << 20;
/// Offset of the destination address in an IPv4 header.
const IPV4_DST_AT: usize = 16;
/// `IPPROTO_IP`: a raw socket of protocol 0 receives every IP protocol (`SIO_RCVALL` needs it).
const IPPROTO_IP: i32 = 0;
/// `SOCK_RAW`.
const SOCK_RAW: i32 = 3;

/// Why raw capture could not start.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The address list could not be read.
    #[error("cannot list this host's IPv4 addresses")]
    Addresses(#[source] io::Error),
    /// Nothing to bind to.
    #[error("no network adapter that is up has an IPv4 address (besides loopback)")]
    NoAddress,
    /// The raw socket could not be made or bound.
    #[error("cannot open a raw socket on {addr}{hint}")]
    Socket {
        /// The local address.
        addr: Ipv4Addr,
        /// What to do about it, if we know.
        hint: &'static str,
        /// What Windows said.
        #[source]
        source: io::Error,
    },
    /// `SIO_RCVALL` was refused.
    #[error("SIO_RCVALL refused on {addr}{hint}")]
    ReceiveAll {
        /// The local address.
        addr: Ipv4Addr,
        /// What to do about it, if we know.
        hint: &'static str,
        /// What Windows said.
        #[source]
        source: io::Error,
    },
    /// A capture thread could not start.
    #[error("cannot start the capture thread")]
    Thread(#[source] io::Error),
}

/// Captures knocks with raw sockets (IPv4) and IPv6-only UDP sockets (IPv6).
#[derive(Debug)]
pub struct RawCapture {
    rx: mpsc::Receiver<Candidate>,
    prefilter: SharedPrefilter,
    stop: Arc<AtomicBool>,
    /// The address of each raw socket, with its thread.
    threads: Vec<(LocalV4, JoinHandle<()>)>,
    /// The IPv6 sockets' tasks.
    v6_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The IPv6 sockets' addresses (`[::]:port`).
    v6_local: Vec<SocketAddr>,
}

impl RawCapture {
    /// Opens a raw socket on every local IPv4 address and an IPv6-only UDP socket on every
    /// knock port, and starts reading. Must run inside a tokio runtime.
    pub fn open(config: &CaptureConfig) -> Result<Self, RawError> {
        let addrs = win_sock::ipv4_addresses().map_err(RawError::Addresses)?;
        if addrs.is_empty() {
            return Err(RawError::NoAddress);
        }
        let mut sockets = Vec::new();
        for local in addrs {
            sockets.push((open_one(local.addr)?, local));
        }
        let prefilter = SharedPrefilter::new(UserPrefilter::new(
            &config.knock_ports,
            config.prefilter_config(),
        ));
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let mut capture = Self {
            rx,
            prefilter,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            v6_tasks: Vec::new(),
            v6_local: Vec::new(),
        };
        for (socket, local) in sockets {
            let (shared, tx, stop) = (
                capture.prefilter.clone(),
                tx.clone(),
                Arc::clone(&capture.stop),
            );
            let at = local.clone();
            // An error drops `capture`, which stops the threads started so far.
            let thread = std::thread::Builder::new()
                .name(format!("raw-{}", local.addr))
                .spawn(move || read_loop(&socket, &at, &shared, &tx, &stop))
                .map_err(RawError::Thread)?;
            tracing::info!(addr = %local.addr, ifindex = local.ifindex, "raw capture on (SIO_RCVALL)");
            capture.threads.push((local, thread));
        }
        match udp::spawn_receivers(&config.knock_ports, Family::V6Only, &capture.prefilter, &tx) {
            Ok((tasks, local)) => {
                tracing::info!(
                    sockets = %crate::log_fields::List(&local),
                    "raw capture: IPv6 knocks through udp sockets"
                );
                capture.v6_tasks = tasks;
                capture.v6_local = local;
            }
            Err(err) => tracing::warn!(
                error = %super::ErrorChain(&err),
                "raw capture: no IPv6 socket on the knock port, IPv6 knocks are not received"
            ),
        }
        Ok(capture)
    }

    /// The next candidate; `None` once capture stopped.
    pub async fn next(&mut self) -> Option<Candidate> {
        self.rx.recv().await
    }

    /// The shared pre-filter state.
    pub fn prefilter(&self) -> std::sync::MutexGuard<'_, UserPrefilter> {
        self.prefilter.lock()
    }

    /// The interface index and address of each raw socket whose thread still runs.
    #[must_use]
    pub fn attached(&self) -> Vec<(u32, String)> {
        self.threads
            .iter()
            .filter(|(_, t)| !t.is_finished())
            .map(|(l, _)| (l.ifindex, l.addr.to_string()))
            .collect()
    }

    /// The addresses of the IPv6 UDP sockets on the knock ports.
    #[must_use]
    pub fn v6_local_addrs(&self) -> &[SocketAddr] {
        &self.v6_local
    }
}

impl Drop for RawCapture {
    fn drop(&mut self) {
        // The threads notice within READ_TIMEOUT and close their sockets; not joined here so
        // dropping never blocks an async task.
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.v6_tasks {
            task.abort();
        }
    }
}

/// A raw IPv4 socket bound to `addr`, receiving every packet to it.
fn open_one(addr: Ipv4Addr) -> Result<Socket, RawError> {
    let socket_err = |source: io::Error| RawError::Socket {
        addr,
        hint: hint(&source),
        source,
    };
    let socket = Socket::new(
        Domain::IPV4,
        Type::from(SOCK_RAW),
        Some(Protocol::from(IPPROTO_IP)),
    )
    .map_err(socket_err)?;
    // SIO_RCVALL needs an explicit address: INADDR_ANY is refused.
    socket
        .bind(&SocketAddr::from((addr, 0)).into())
        .map_err(socket_err)?;
    win_sock::receive_all_ip_level(&socket).map_err(|source| RawError::ReceiveAll {
        addr,
        hint: hint(&source),
        source,
    })?;
    if let Err(err) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::debug!(%addr, error = %err, "cannot enlarge the raw socket's receive buffer");
    }
    socket
        .set_read_timeout(Some(READ_TIMEOUT))
        .map_err(socket_err)?;
    Ok(socket)
}

/// `WSAEACCES`: raw sockets and `SIO_RCVALL` are for Administrators.
const WSAEACCES: i32 = 10013;
/// `WSAEPROTONOSUPPORT`, `WSAEOPNOTSUPP`: this Windows (or Wine) has no such raw socket or ioctl.
const UNSUPPORTED: [i32; 2] = [10043, 10045];

/// What the admin can do about `err`.
fn hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(WSAEACCES) => " (raw sockets need Administrator rights: run elevated or as a service)",
        Some(code) if UNSUPPORTED.contains(&code) => {
            " (not supported here; Wine has no SIO_RCVALL)"
        }
        _ => "",
    }
}

fn read_loop(
    socket: &Socket,
    local: &LocalV4,
    prefilter: &SharedPrefilter,
    tx: &mpsc::Sender<Candidate>,
    stop: &AtomicBool,
) {
    let mut buf = vec![0u8; PACKET_MAX];
    let mut reader = socket;
    while !stop.load(Ordering::Relaxed) && !tx.is_closed() {
        match reader.read(&mut buf) {
            Ok(n) => {
                let packet = buf.get(..n).unwrap_or_default();
                if !addressed_to(packet, local.addr) {
                    continue;
                }
                let mut p = prefilter.lock();
                let now = p.now_ns();
                p.check_link(
                    LinkLayer::RawIp,
                    packet,
                    Some(local.ifindex),
                    now,
                    &mut |c| tx.try_send(c).is_ok(),
                );
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                tracing::error!(
                    addr = %local.addr,
                    error = %err,
                    "raw capture failed, thread stops: knocks to this address are not seen"
                );
                return;
            }
        }
    }
}

/// Whether `packet` (IPv4, header first) is addressed to `local`: the raw socket also sees what
/// this host sends.
fn addressed_to(packet: &[u8], local: Ipv4Addr) -> bool {
    packet
        .get(IPV4_DST_AT..IPV4_DST_AT + 4)
        .is_some_and(|dst| dst == local.octets())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::link_layer::tests::ipv4_packet;

    #[test]
    fn only_packets_to_the_bound_address_are_judged() {
        let packet = ipv4_packet(b"x");
        assert!(addressed_to(&packet, Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!addressed_to(&packet, Ipv4Addr::new(192, 0, 2, 7)));
        assert!(!addressed_to(&packet[..19], Ipv4Addr::new(192, 0, 2, 1)));
        assert!(!addressed_to(&[], Ipv4Addr::new(192, 0, 2, 1)));
    }
}
