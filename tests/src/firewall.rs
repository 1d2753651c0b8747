//! A small lab for the firewall tests: a server namespace with a TCP echo server and two client
//! namespaces, each on its own veth link, plus helpers to connect, echo and run `nft`.
//!
//! ```text
//!   [client1] 10.77.N.2, fd00:77:N::2 <--> 10.77.N.1, fd00:77:N::1 [server]  echo on [::]:PORT
//!   [client2] 10.77.M.2, fd00:77:M::2 <--> 10.77.M.1, fd00:77:M::1 [server]  capyknock table
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use capyknock_testkit::{
    netns::{self, Link, NetNs},
    process,
    service::TcpService,
};

/// Port of the echo server (the "protected service").
pub const SERVICE_PORT: u16 = 2222;

/// How long a connect attempt may take before the port counts as closed (dropped SYNs).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(400);

/// Three namespaces and an echo server; everything is removed on drop.
#[derive(Debug)]
pub struct Lab {
    // Dropped first: stops the echo server before the namespaces go.
    echo: TcpService,
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
    /// Builds the namespaces and starts the echo server (no greeting) on `[::]:SERVICE_PORT`.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let server = NetNs::unique(&format!("{tag}s")).unwrap();
        let (c1, l1) = netns::attach(&server, &format!("{tag}a"), 31).unwrap();
        let (c2, l2) = netns::attach(&server, &format!("{tag}b"), 32).unwrap();
        let echo = TcpService::start(&server, &[SERVICE_PORT], b"").unwrap();
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
        self.l1.b(false)
    }

    /// Client 1's IPv6 address.
    #[must_use]
    pub fn c1_v6(&self) -> IpAddr {
        self.l1.b(true)
    }

    /// Client 2's IPv4 address.
    #[must_use]
    pub fn c2_v4(&self) -> IpAddr {
        self.l2.b(false)
    }

    /// The server's address as seen from client 1 (same family as `family_of`).
    #[must_use]
    pub fn server_for_c1(&self, family_of: IpAddr) -> IpAddr {
        self.l1.a(family_of.is_ipv6())
    }

    /// The server's IPv4 address as seen from client 2.
    #[must_use]
    pub fn server_for_c2(&self) -> IpAddr {
        self.l2.a(false)
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
        self.echo.accepted()
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
    let out = process::run(ns.command("nft").args(args)).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects from `ns` to `addr:port` within [`CONNECT_TIMEOUT`].
#[must_use]
pub fn connect(ns: &NetNs, addr: IpAddr, port: u16) -> Option<TcpStream> {
    ns.run(|| TcpStream::connect_timeout(&SocketAddr::new(addr, port), CONNECT_TIMEOUT).ok())
        .unwrap()
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
