//! UDP socket capture: a plain socket bound to each knock port (dual-stack where the OS allows),
//! with the userspace pre-filter. Works on every OS and needs no capture privileges, but the knock
//! port is a real open socket: a scanner gets no ICMP "port unreachable" from it, which is the
//! same silence as a filtered port, yet it is the weakest mode (every datagram wakes userspace).
//!
//! On Windows each socket is bound with `SO_EXCLUSIVEADDRUSE`, so no other program (not even
//! one of the same account asking for `SO_REUSEADDR`) can bind the knock port beside it and take
//! knocks away. The `raw` capture uses this module's IPv6-only sockets for IPv6 knocks
//! ([`spawn_receivers`] with [`Family::V6Only`]).

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
};

use capyknock_common::wire::KNOCK_LEN;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::UdpSocket, sync::mpsc, task::JoinHandle};

use super::{
    Candidate, CaptureConfig,
    userspace::{SharedPrefilter, UserPrefilter},
};

/// Candidates queued between the socket tasks and [`UdpCapture::next`].
pub const QUEUE_LEN: usize = 1024;

/// Why the UDP socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    /// Binding failed (port in use, or no permission for a low port).
    #[error("cannot bind a UDP socket to knock port {port}")]
    Bind {
        /// The knock port.
        port: u16,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

/// Receives knocks on UDP sockets.
#[derive(Debug)]
pub struct UdpCapture {
    rx: mpsc::Receiver<Candidate>,
    prefilter: SharedPrefilter,
    tasks: Vec<JoinHandle<()>>,
    local: Vec<SocketAddr>,
}

impl UdpCapture {
    /// Binds every knock port and starts receiving. Must run inside a tokio runtime.
    pub fn open(config: &CaptureConfig) -> Result<Self, UdpError> {
        let prefilter = SharedPrefilter::new(UserPrefilter::new(
            &config.knock_ports,
            config.prefilter_config(),
        ));
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        let (tasks, local) =
            spawn_receivers(&config.knock_ports, Family::DualStack, &prefilter, &tx)?;
        tracing::info!(sockets = %crate::log_fields::List(&local), "udp capture listening");
        Ok(Self {
            rx,
            prefilter,
            tasks,
            local,
        })
    }

    /// The next candidate; `None` once every socket task ended.
    pub async fn next(&mut self) -> Option<Candidate> {
        self.rx.recv().await
    }

    /// The shared pre-filter state.
    pub fn prefilter(&self) -> std::sync::MutexGuard<'_, UserPrefilter> {
        self.prefilter.lock()
    }

    /// The addresses the sockets are bound to.
    #[must_use]
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }
}

impl Drop for UdpCapture {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Which addresses a knock-port socket takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `[::]:port` for IPv4 and IPv6, or `0.0.0.0:port` where the host has no IPv6.
    DualStack,
    /// `[::]:port` for IPv6 only (`raw` capture takes IPv4 through its raw sockets).
    V6Only,
}

/// Binds a socket of `family` on every port of `ports` and starts a receiving task for each,
/// feeding `prefilter` and `tx`. Returns the tasks and the addresses bound. Must run inside a
/// tokio runtime.
pub fn spawn_receivers(
    ports: &[u16],
    family: Family,
    prefilter: &SharedPrefilter,
    tx: &mpsc::Sender<Candidate>,
) -> Result<(Vec<JoinHandle<()>>, Vec<SocketAddr>), UdpError> {
    let mut sockets = Vec::new();
    for &port in ports {
        let socket = bind(port, family).map_err(|source| UdpError::Bind { port, source })?;
        sockets.push(socket);
    }
    let mut local = Vec::new();
    let mut tasks = Vec::new();
    for socket in sockets {
        if let Ok(addr) = socket.local_addr() {
            local.push(addr);
        }
        tasks.push(tokio::spawn(receive(socket, prefilter.clone(), tx.clone())));
    }
    Ok((tasks, local))
}

/// A socket of `family` on `port`: dual-stack on `[::]:port` (or IPv4 only where the host has no
/// IPv6), or IPv6 only.
fn bind(port: u16, family: Family) -> io::Result<UdpSocket> {
    let socket = match (family, v6_socket(port, family == Family::V6Only)) {
        (_, Ok(s)) => s,
        (Family::V6Only, Err(err)) => return Err(err),
        (Family::DualStack, Err(v6_err)) => {
            tracing::debug!(port, error = %v6_err, "no IPv6 socket, binding IPv4 only");
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
            exclusive(&s)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            s
        }
    };
    set_receive_buffer(&socket);
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Windows: no other socket may bind this port beside ours (`SO_EXCLUSIVEADDRUSE`, before
/// `bind`). Elsewhere nothing to do: a bound UDP port is only shared with sockets that all ask
/// for `SO_REUSEADDR`/`SO_REUSEPORT` (and, on Linux, of the same user), which ours never does.
#[cfg(windows)]
fn exclusive(socket: &Socket) -> io::Result<()> {
    super::win_sock::set_exclusive_addr_use(socket)
}

#[cfg(not(windows))]
#[expect(
    clippy::unnecessary_wraps,
    reason = "the same signature as the Windows version"
)]
fn exclusive(_socket: &Socket) -> io::Result<()> {
    Ok(())
}

/// Asks for [`RECEIVE_BUFFER`]; a smaller buffer only costs knocks under a flood, so a refusal
/// is logged, not fatal.
fn set_receive_buffer(socket: &Socket) {
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};
        if setsockopt(socket, RcvBufForce, &RECEIVE_BUFFER).is_ok() {
            return;
        }
    }
    if let Err(err) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::debug!(error = %err, "cannot enlarge the udp receive buffer");
    }
}

fn v6_socket(port: u16, only_v6: bool) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(only_v6)?;
    exclusive(&s)?;
    s.bind(&SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)).into())?;
    Ok(s)
}

/// Datagrams taken from the socket per `recvmmsg(2)` call: under a flood one system call and one
/// pre-filter lock serve a whole batch instead of one datagram.
#[cfg(target_os = "linux")]
const BATCH: usize = 32;

/// Receive buffer asked for (`SO_RCVBUFFORCE` as root, else `SO_RCVBUF`, which the kernel caps
/// at `net.core.rmem_max`): about 1,800 full-size datagrams, a few milliseconds of a flood at
/// the rates a 2-core machine reaches, so a burst of junk does not crowd out a legit knock.
const RECEIVE_BUFFER: usize = 4 << 20;

/// One buffer per datagram of a batch, one byte more than a knock, so a longer datagram shows
/// as too long, not as a knock.
type DatagramBuf = [u8; KNOCK_LEN + 1];

#[cfg(target_os = "linux")]
async fn receive(socket: UdpSocket, prefilter: SharedPrefilter, tx: mpsc::Sender<Candidate>) {
    use std::os::fd::AsRawFd as _;

    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
    use tokio::io::Interest;

    let fd = socket.as_raw_fd();
    let mut bufs: Vec<DatagramBuf> = vec![[0; KNOCK_LEN + 1]; BATCH];
    let mut batch: Vec<(usize, Option<SocketAddr>)> = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        let received = socket
            .async_io(Interest::READABLE, || {
                // Made per call: nix's headers hold raw pointers, so they cannot live across an
                // await in a task that may move between threads. Two small allocations per
                // batch of up to BATCH datagrams.
                let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
                let mut iovs: Vec<[io::IoSliceMut<'_>; 1]> =
                    bufs.iter_mut().map(|b| [io::IoSliceMut::new(b)]).collect();
                let results = recvmmsg(
                    fd,
                    &mut headers,
                    iovs.iter_mut(),
                    MsgFlags::MSG_DONTWAIT,
                    None,
                )
                .map_err(io::Error::from)?;
                for msg in results {
                    let from = msg.address.as_ref().and_then(socket_addr);
                    batch.push((msg.bytes, from));
                }
                Ok(())
            })
            .await;
        match received {
            Ok(()) => {
                let mut p = prefilter.lock();
                let now = p.now_ns();
                for (&(n, from), buf) in batch.iter().zip(&bufs) {
                    let Some(from) = from else { continue };
                    let payload = buf.get(..n).unwrap_or_default();
                    p.check_datagram(payload, from, now, &mut |c| tx.try_send(c).is_ok());
                }
            }
            Err(err) => receive_error(&err).await,
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// The sender's address as the standard library would report it.
#[cfg(target_os = "linux")]
fn socket_addr(addr: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(not(target_os = "linux"))]
async fn receive(socket: UdpSocket, prefilter: SharedPrefilter, tx: mpsc::Sender<Candidate>) {
    let mut buf: DatagramBuf = [0; KNOCK_LEN + 1];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let payload = buf.get(..n).unwrap_or_default();
                let mut p = prefilter.lock();
                let now = p.now_ns();
                p.check_datagram(payload, from, now, &mut |c| tx.try_send(c).is_ok());
            }
            // Windows reports a datagram longer than the buffer as an error (WSAEMSGSIZE).
            Err(err) if is_message_too_long(&err) => {
                prefilter
                    .lock()
                    .count(capyknock_common::counters::Counter::WrongSize);
            }
            Err(err) => receive_error(&err).await,
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// ICMP errors for earlier sends and the like: not fatal for a receive-only socket. Yields so a
/// persistent error cannot spin.
async fn receive_error(err: &io::Error) {
    tracing::debug!(error = %err, "udp capture receive error");
    tokio::task::yield_now().await;
}

/// Windows reports a datagram longer than the buffer as an error (`WSAEMSGSIZE`).
#[cfg(not(target_os = "linux"))]
fn is_message_too_long(err: &io::Error) -> bool {
    cfg!(windows) && err.raw_os_error() == Some(10040)
}

#[cfg(test)]
mod tests {
    use capyknock_common::{
        counters::Counter,
        wire::{HEADER_LEN, Header, NONCE_LEN},
    };

    use super::*;
    use crate::capture::{Capture, CaptureMode};

    #[tokio::test]
    async fn knocks_on_loopback_are_delivered_and_junk_counted() {
        // An unused port from the OS, then our socket on it.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = CaptureConfig {
            mode: CaptureMode::Udp,
            knock_ports: vec![port],
            ..CaptureConfig::default()
        };
        let mut capture = Capture::open(&config).unwrap();
        capture.set_users(&[([1; 16], [2; 16])]).unwrap();
        capture.set_time_step(7).unwrap();

        let mut knock = [0u8; KNOCK_LEN];
        knock[..HEADER_LEN]
            .copy_from_slice(&Header::sealed(&[2; 16], [1; 16], 7, [9; NONCE_LEN]).to_bytes());
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"junk", ("127.0.0.1", port)).unwrap();
        client
            .send_to(&[0u8; KNOCK_LEN + 100], ("127.0.0.1", port))
            .unwrap();
        client.send_to(&knock, ("127.0.0.1", port)).unwrap();
        client.send_to(&knock, ("127.0.0.1", port)).unwrap();

        let got = tokio::time::timeout(std::time::Duration::from_secs(5), capture.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.src, client.local_addr().unwrap());
        assert_eq!(got.bytes, knock);
        // Wait for the duplicate to be judged too.
        for _ in 0..100 {
            if capture.counters().unwrap().get(Counter::Duplicate) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let c = capture.counters().unwrap();
        assert_eq!(c.get(Counter::WrongSize), 2, "{c}");
        assert_eq!(c.get(Counter::Delivered), 1, "{c}");
        assert_eq!(c.get(Counter::Duplicate), 1, "{c}");
        assert_eq!(capture.mode(), crate::capture::ActiveMode::Udp);
    }

    #[tokio::test]
    async fn port_in_use_is_a_clear_error() {
        // Taken the way the capture takes it (as by a second daemon): dual-stack, or IPv4.
        let taken = bind(0, Family::DualStack).unwrap();
        let port = taken.local_addr().unwrap().port();
        let config = CaptureConfig {
            mode: CaptureMode::Udp,
            knock_ports: vec![port],
            ..CaptureConfig::default()
        };
        let err = UdpCapture::open(&config).unwrap_err();
        assert!(err.to_string().contains(&port.to_string()), "{err}");
    }

    /// Windows: the knock port's socket is exclusive. The option reads back as set, and a second
    /// socket cannot bind the port even when it asks for `SO_REUSEADDR` (which, without
    /// `SO_EXCLUSIVEADDRUSE`, lets a program of the same account share the port and read knocks).
    #[cfg(windows)]
    #[tokio::test]
    async fn knock_port_socket_is_exclusive() {
        use socket2::SockRef;

        use crate::capture::win_sock;

        // The read-back tells a set option from an unset one.
        let plain = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        assert!(!win_sock::exclusive_addr_use(&plain).unwrap());
        for family in [Family::DualStack, Family::V6Only] {
            let ours = bind(0, family).unwrap();
            let addr = ours.local_addr().unwrap();
            assert!(
                win_sock::exclusive_addr_use(&SockRef::from(&ours)).unwrap(),
                "{family:?}: SO_EXCLUSIVEADDRUSE not set"
            );

            for domain in [Domain::IPV6, Domain::IPV4] {
                let thief = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).unwrap();
                thief.set_reuse_address(true).unwrap();
                let target = if domain == Domain::IPV6 {
                    SocketAddr::from((Ipv6Addr::UNSPECIFIED, addr.port()))
                } else {
                    SocketAddr::from((Ipv4Addr::UNSPECIFIED, addr.port()))
                };
                if family == Family::V6Only && domain == Domain::IPV4 {
                    // An IPv6-only socket leaves IPv4 to others: the raw capture takes IPv4.
                    continue;
                }
                assert!(
                    thief.bind(&target.into()).is_err(),
                    "{family:?}: a second socket with SO_REUSEADDR bound {target}"
                );
            }
            drop(ours);
        }
    }
}
