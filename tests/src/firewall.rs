//! A small lab for the firewall tests: a server namespace with a TCP echo server and two client
//! namespaces, each on its own veth link, plus helpers to connect, echo and run `nft`.
//!
//! ```text
//!   [client1] 10.77.N.2, fd00:77:N::2 <--> 10.77.N.1, fd00:77:N::1 [server]  echo on [::]:PORT
//!   [client2] 10.77.M.2, fd00:77:M::2 <--> 10.77.M.1, fd00:77:M::1 [server]  capyknock table
//! ```
#![expect(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "test helpers: a failed setup step fails the calling test"
)]

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::netns::{self, Link, NetNs};

/// Port of the echo server (the "protected service").
pub const SERVICE_PORT: u16 = 2222;

/// How long a connect attempt may take before the port counts as closed (dropped SYNs).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

/// Three namespaces and an echo server; everything is removed on drop.
#[derive(Debug)]
pub struct Lab {
    // Dropped first: stops the echo server before the namespaces go.
    echo: EchoServer,
    /// The protected host.
    pub server: NetNs,
    /// First client.
    pub c1: NetNs,
    /// Second client.
    pub c2: NetNs,
    /// server (a) <-> client1 (b).
    pub l1: Link,
    /// server (a) <-> client2 (b).
    pub l2: Link,
}

impl Lab {
    /// Builds the namespaces and starts the echo server on `[::]:SERVICE_PORT`.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let server = NetNs::new(&format!("{tag}s"));
        let c1 = NetNs::new(&format!("{tag}a"));
        let c2 = NetNs::new(&format!("{tag}b"));
        let l1 = netns::connect(&server, &c1, 31);
        let l2 = netns::connect(&server, &c2, 32);
        let echo = EchoServer::start(&server, SERVICE_PORT);
        Self {
            echo,
            server,
            c1,
            c2,
            l1,
            l2,
        }
    }

    /// Client 1's IPv4 address.
    #[must_use]
    pub fn c1_v4(&self) -> IpAddr {
        IpAddr::V4(self.l1.b_v4)
    }

    /// Client 1's IPv6 address.
    #[must_use]
    pub fn c1_v6(&self) -> IpAddr {
        IpAddr::V6(self.l1.b_v6)
    }

    /// Client 2's IPv4 address.
    #[must_use]
    pub fn c2_v4(&self) -> IpAddr {
        IpAddr::V4(self.l2.b_v4)
    }

    /// The server's address as seen from client 1 (same family as `family_of`).
    #[must_use]
    pub fn server_for_c1(&self, family_of: IpAddr) -> IpAddr {
        match family_of {
            IpAddr::V4(_) => IpAddr::V4(self.l1.a_v4),
            IpAddr::V6(_) => IpAddr::V6(self.l1.a_v6),
        }
    }

    /// The server's IPv4 address as seen from client 2.
    #[must_use]
    pub fn server_for_c2(&self) -> IpAddr {
        IpAddr::V4(self.l2.a_v4)
    }

    /// Whether client 1 can open a TCP connection to the service over `family_of`'s family.
    #[must_use]
    pub fn c1_can_connect(&self, family_of: IpAddr) -> bool {
        can_connect(&self.c1, self.server_for_c1(family_of), SERVICE_PORT)
    }

    /// Whether client 2 can open a TCP connection to the service (IPv4).
    #[must_use]
    pub fn c2_can_connect(&self) -> bool {
        can_connect(&self.c2, self.server_for_c2(), SERVICE_PORT)
    }

    /// Connections the echo server accepted so far.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.echo.accepted.load(Ordering::Relaxed)
    }

    /// Runs `nft ARGS` in the server namespace; panics on failure, returns stdout.
    #[expect(clippy::must_use_candidate, reason = "often run for its effect")]
    pub fn nft(&self, args: &[&str]) -> String {
        nft(&self.server, args)
    }
}

/// Runs `nft ARGS` in `ns`; panics on failure, returns stdout.
#[expect(clippy::must_use_candidate, reason = "often run for its effect")]
pub fn nft(ns: &NetNs, args: &[&str]) -> String {
    let out = netns::run(ns.command("nft").args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects from `ns` to `addr:port` within [`CONNECT_TIMEOUT`].
#[must_use]
pub fn connect(ns: &NetNs, addr: IpAddr, port: u16) -> Option<TcpStream> {
    ns.run(|| TcpStream::connect_timeout(&SocketAddr::new(addr, port), CONNECT_TIMEOUT).ok())
}

/// Whether a TCP connection from `ns` to `addr:port` succeeds and echoes.
#[must_use]
pub fn can_connect(ns: &NetNs, addr: IpAddr, port: u16) -> bool {
    connect(ns, addr, port).is_some_and(|mut s| echo_ok(&mut s))
}

/// Sends a line on an open connection and checks it comes back within a second.
pub fn echo_ok(stream: &mut TcpStream) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).is_ok() && &buf == b"ping\n"
}

/// A TCP echo server inside a namespace, stopped on drop.
#[derive(Debug)]
struct EchoServer {
    stop: Arc<AtomicBool>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    fn start(ns: &NetNs, port: u16) -> Self {
        let listener = ns.run(|| {
            TcpListener::bind(SocketAddr::new(IpAddr::from([0u16; 8]), port))
                .unwrap_or_else(|e| panic!("bind [::]:{port}: {e}"))
        });
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (stop2, accepted2) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let stop3 = stop2.clone();
                        std::thread::spawn(move || echo(conn, &stop3));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            accepted,
            thread: Some(thread),
        }
    }
}

fn echo(mut conn: TcpStream, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = [0u8; 256];
    while !stop.load(Ordering::Relaxed) {
        match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
