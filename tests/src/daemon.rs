//! Harness for the daemon tests: the real `capyknock server` process in a server namespace, a
//! client namespace that crafts and sends knocks with the protocol's packet builder, a TCP
//! service to open, and helpers to read the daemon's log, status and control socket.
//!
//! ```text
//!   [client] ckb* 10.77.S.2, fd00:77:S::2  <---->  cka* 10.77.S.1, fd00:77:S::1 [server]
//!            sends knocks, probes tcp/22              capyknock server (XDP on cka*, nftables),
//!                                                     TCP service on tcp/22 and tcp/23
//! ```
//!
//! The config is generated with the library's own writers (`render_user`), the users have
//! fixed keys so the tests can build any packet. Everything lives in the namespaces and a
//! temporary directory removed on drop (the daemon is killed first). The directory is mode 0755
//! so that the socket's own permissions, not the directory's, decide who may connect.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use capyknock::{
    ports::PortSpec,
    protocol::{
        keys::{TotpSecret, UserId, UserKey},
        packet::{KnockRequest, Randomness, build_knock},
        totp::{Totp, TotpCode},
        unix_secs,
        users::{AllowIp, TotpMode, User},
    },
    server::{
        config::render_user,
        control::{self, Request, Response},
        status::Status,
    },
};
use capyknock_common::wire::KNOCK_LEN;

use crate::netns::{Link, NetNs, connect};

/// UDP knock port.
pub const KNOCK_PORT: u16 = 62201;
/// The protected service every test user may open.
pub const SERVICE: PortSpec = PortSpec::tcp(22);
/// A second service no test user may open.
pub const OTHER_SERVICE: PortSpec = PortSpec::tcp(23);
/// How long a TCP probe waits before calling a port closed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

static SUBNET: AtomicU8 = AtomicU8::new(100);
static DIRS: AtomicU8 = AtomicU8::new(0);

/// A test user with fixed secrets derived from `n`.
#[must_use]
pub fn user(nickname: &str, n: u8) -> User {
    let mut secret = [0u8; 20];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = n.wrapping_mul(31).wrapping_add(i as u8);
    }
    let secret = TotpSecret::from_base32(&base32(&secret)).unwrap_or_else(|e| panic!("{e}"));
    User {
        id: UserId([n; 16]),
        nickname: nickname.to_owned(),
        key: UserKey::from_bytes([n.wrapping_add(100); 32]),
        totp: secret,
        totp_mode: TotpMode::Prompt,
        ports: vec![SERVICE],
        access: Duration::from_mins(5),
        allow_ip: AllowIp::Source,
    }
}

/// RFC 4648 base32 without padding (for building test secrets).
fn base32(bytes: &[u8]) -> String {
    const A: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(A[((acc >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(A[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

/// A code that is wrong for `user` at `unix` (the right one with its first digit changed).
#[must_use]
pub fn wrong_code(user: &User, unix: u64) -> TotpCode {
    let mut digits = *code(user, unix).digits();
    digits[0] = b'0' + (digits[0] - b'0' + 1) % 10;
    TotpCode::from_digits(digits).unwrap_or_else(|| panic!("digits"))
}

/// The current TOTP code of `user` at `unix`.
#[must_use]
pub fn code(user: &User, unix: u64) -> TotpCode {
    Totp::new(&user.totp)
        .unwrap_or_else(|e| panic!("{e}"))
        .code_at(unix)
}

/// A valid knock by `user` for `ports` at `unix`.
#[must_use]
pub fn knock(user: &User, ports: &[PortSpec], unix: u64) -> [u8; KNOCK_LEN] {
    knock_with_code(user, ports, unix, &code(user, unix))
}

/// A knock by `user` carrying `totp`, otherwise valid.
#[must_use]
pub fn knock_with_code(
    user: &User,
    ports: &[PortSpec],
    unix: u64,
    totp: &TotpCode,
) -> [u8; KNOCK_LEN] {
    let request = KnockRequest {
        ports: ports.to_vec(),
        allow_ip: None,
    };
    let random = Randomness::os().unwrap_or_else(|e| panic!("{e}"));
    build_knock(&user.id, &user.key, totp, &request, unix, &random)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A knock made `age` seconds ago (its code was right then). With `freshness = "30s"` and
/// `age` just over 30, taken at least `age - 28` seconds into a step, its header step is still
/// within the pre-filter's one-step window, so only the verifier's freshness check refuses it.
#[must_use]
pub fn stale_knock(user: &User, unix: u64, age: u64) -> [u8; KNOCK_LEN] {
    knock(user, &[SERVICE], unix - age)
}

/// Current Unix time.
#[must_use]
pub fn now() -> u64 {
    unix_secs(SystemTime::now())
}

/// Waits until at least `margin` seconds remain in the current 30 s TOTP step.
pub fn wait_for_fresh_step(margin: u64) {
    let into = now() % 30;
    if into + margin >= 30 {
        std::thread::sleep(Duration::from_secs(30 - into + 1));
    }
}

/// Server and client namespaces, a TCP service, a temporary directory, and the daemon.
#[derive(Debug)]
pub struct DaemonLab {
    /// The daemon process, when running.
    pub daemon: Option<Child>,
    service: Option<Service>,
    /// Server side.
    pub server: NetNs,
    /// The knocking side.
    pub client: NetNs,
    /// server (a) <-> client (b).
    pub link: Link,
    /// Temporary directory (config, state, socket, log).
    pub dir: PathBuf,
    /// Extra `[server]` lines for the next config written.
    pub server_extra: String,
    /// Program and arguments the daemon is started through (after `nsenter`), e.g. `setpriv`
    /// with a reduced capability set.
    pub wrapper: Vec<String>,
    log_len_at_start: u64,
}

impl DaemonLab {
    /// Namespaces, link, service; no config or daemon yet.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let server = NetNs::new(&format!("{tag}s"));
        let client = NetNs::new(&format!("{tag}c"));
        let link = connect(&server, &client, SUBNET.fetch_add(1, Ordering::Relaxed));
        let service = Service::start(&server, &[SERVICE.port, OTHER_SERVICE.port]);
        let dir = std::env::temp_dir().join(format!(
            "ck-daemon-{tag}-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            daemon: None,
            service: Some(service),
            server,
            client,
            link,
            dir,
            server_extra: String::new(),
            wrapper: Vec::new(),
            log_len_at_start: 0,
        }
    }

    /// A file in the lab's directory.
    #[must_use]
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The server config path.
    #[must_use]
    pub fn config(&self) -> PathBuf {
        self.file("server.toml")
    }

    /// The control socket path.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.file("control.sock")
    }

    /// Writes the server config (mode 0600) with `users`: XDP on the server's veth, nftables,
    /// state and socket in the lab directory, plus [`Self::server_extra`].
    pub fn write_config(&self, users: &[&User]) {
        let mut text = format!(
            "[server]\nknock_ports = [{KNOCK_PORT}]\ninterfaces = [\"{}\"]\ncapture = \"xdp\"\n\
             state_dir = \"{}\"\ncontrol_socket = \"{}\"\n{}\n[firewall]\nbackend = \"nftables\"\n",
            self.link.a_if,
            self.file("state").display(),
            self.socket().display(),
            self.server_extra,
        );
        for u in users {
            text.push_str(&render_user(u));
        }
        self.write_raw_config(&text);
    }

    /// Replaces the config file with `text` (mode 0600).
    pub fn write_raw_config(&self, text: &str) {
        let path = self.config();
        let tmp = self.file("server.toml.new");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &path).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Starts `capyknock server --config ...` in the server namespace (through `nsenter --net`,
    /// which keeps the host's bpffs) and waits until `status` answers.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Like [`Self::start`] with extra command-line arguments.
    pub fn start_with(&mut self, args: &[&str]) {
        assert!(self.daemon.is_none(), "daemon already running");
        let log = self.file("server.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        self.log_len_at_start = file.metadata().map_or(0, |m| m.len());
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.server.name()))
            .arg("--")
            .args(&self.wrapper)
            .arg(crate::capyknock_bin())
            .arg("server")
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start capyknock server: {e}"));
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = control::request(&self.socket(), &Request::Status {})
                && r.ok
            {
                return;
            }
            assert!(
                self.is_running(),
                "capyknock server exited:\n{}",
                self.log()
            );
            assert!(
                Instant::now() < deadline,
                "capyknock server not ready in 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the daemon process is running.
    pub fn is_running(&mut self) -> bool {
        self.daemon
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        let child = self.daemon.as_ref().unwrap_or_else(|| panic!("no daemon"));
        let pid = libc::pid_t::try_from(child.id()).unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        let rc = unsafe { libc::kill(pid, signal) };
        assert!(rc == 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }

    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.daemon.take() else {
            return false;
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("daemon did not exit in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The whole daemon log (all runs).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.file("server.log")).unwrap_or_default()
    }

    /// The log of the current run.
    #[must_use]
    pub fn run_log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(self.file("server.log")) {
            let mut all = Vec::new();
            let _ = f.read_to_end(&mut all);
            let start = usize::try_from(self.log_len_at_start).unwrap_or(0);
            text = String::from_utf8_lossy(all.get(start..).unwrap_or_default()).into_owned();
        }
        text
    }

    /// Waits up to 5 s for a log line (of this run) containing every one of `parts`; returns it.
    #[expect(clippy::must_use_candidate, reason = "often called only to wait")]
    pub fn wait_log(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self
                .run_log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {parts:?} in:\n{}",
                self.run_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Lines of this run's log containing every one of `parts`.
    #[must_use]
    pub fn count_log(&self, parts: &[&str]) -> usize {
        self.run_log()
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .count()
    }

    /// Sends a control request as root.
    #[must_use]
    pub fn request(&self, req: &Request) -> Response {
        control::request(&self.socket(), req).unwrap_or_else(|e| panic!("control: {e}"))
    }

    /// The daemon's status.
    #[must_use]
    pub fn status(&self) -> Status {
        let r = self.request(&Request::Status {});
        let error = r.error.clone();
        *r.status.unwrap_or_else(|| panic!("no status: {error:?}"))
    }

    /// A verifier rejection counter.
    #[must_use]
    pub fn rejected(&self, reason: &str) -> u64 {
        self.status()
            .verifier
            .rejected
            .get(reason)
            .copied()
            .unwrap_or_else(|| panic!("no counter {reason}"))
    }

    /// A pre-filter counter.
    #[must_use]
    pub fn prefilter(&self, name: &str) -> u64 {
        self.status()
            .prefilter
            .get(name)
            .copied()
            .unwrap_or_else(|| panic!("no pre-filter counter {name}"))
    }

    /// The server's address on the link, in the family of `v6`.
    #[must_use]
    pub fn server_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.link.a_v6)
        } else {
            IpAddr::V4(self.link.a_v4)
        }
    }

    /// The client's address on the link.
    #[must_use]
    pub fn client_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.link.b_v6)
        } else {
            IpAddr::V4(self.link.b_v4)
        }
    }

    /// Sends `packet` from the client to the knock port, `copies` times.
    pub fn send(&self, packet: &[u8], v6: bool, copies: usize) {
        let to = SocketAddr::new(self.server_addr(v6), KNOCK_PORT);
        let packet = packet.to_vec();
        self.client.run(move || {
            let bind: SocketAddr = if v6 {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind: {e}"));
            for _ in 0..copies {
                socket
                    .send_to(&packet, to)
                    .unwrap_or_else(|e| panic!("send: {e}"));
            }
        });
    }

    /// Sends every packet of `packets` once, from one client socket; returns how many the
    /// kernel took.
    #[must_use]
    pub fn send_batch(&self, packets: &[Vec<u8>], v6: bool) -> usize {
        let to = SocketAddr::new(self.server_addr(v6), KNOCK_PORT);
        self.client.run(move || {
            let bind: SocketAddr = if v6 {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            };
            let socket = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind: {e}"));
            // ENOBUFS under load is fine for a flood: count what went out.
            packets
                .iter()
                .filter(|p| socket.send_to(p, to).is_ok())
                .count()
        })
    }

    /// Whether the client can open a TCP connection to the server's `port` and read the
    /// service's greeting.
    #[must_use]
    pub fn can_connect(&self, port: u16, v6: bool) -> bool {
        let target = SocketAddr::new(self.server_addr(v6), port);
        self.client.run(move || {
            let Ok(mut stream) = TcpStream::connect_timeout(&target, PROBE_TIMEOUT) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(PROBE_TIMEOUT));
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).is_ok() && &buf == b"hello"
        })
    }

    /// Waits up to 5 s for the client to be able (or, with `open = false`, unable) to connect.
    pub fn wait_connect(&self, port: u16, v6: bool, open: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.can_connect(port, v6) != open {
            assert!(
                Instant::now() < deadline,
                "tcp/{port} (v6: {v6}) still {} after 5 s:\n{}",
                if open { "closed" } else { "open" },
                self.run_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `capyknock ARGS --socket SOCKET` as `nobody` with the supplementary groups
    /// `groups` (comma-separated gids, or empty for none), through `setpriv`.
    #[must_use]
    pub fn cli_as_nobody(&self, groups: &str, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid=65534", "--regid=65534"]);
        if groups.is_empty() {
            cmd.arg("--clear-groups");
        } else {
            cmd.arg(format!("--groups={groups}"));
        }
        cmd.arg("--")
            .arg(crate::capyknock_bin())
            .args(args)
            .arg("--socket")
            .arg(self.socket());
        cmd.output().unwrap_or_else(|e| panic!("setpriv: {e}"))
    }
}

impl Drop for DaemonLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log());
        }
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.service = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// TCP listeners in the server namespace that greet with `hello` and close.
#[derive(Debug)]
struct Service {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    fn start(ns: &NetNs, ports: &[u16]) -> Self {
        let path = format!("/run/netns/{}", ns.name());
        let ports = ports.to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let listeners: Vec<TcpListener> = ports
                .iter()
                .map(|&p| {
                    let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, p))
                        .unwrap_or_else(|e| panic!("service bind {p}: {e}"));
                    l.set_nonblocking(true).unwrap_or_else(|e| panic!("{e}"));
                    l
                })
                .collect();
            let _ = ready_tx.send(());
            while !stopping.load(Ordering::SeqCst) {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((mut s, _)) = l.accept() {
                        idle = false;
                        let _ = s.set_nonblocking(false);
                        let _ = s.write_all(b"hello");
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("service did not start: {e}"));
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Enters the network namespace at `path` on the calling thread.
fn enter(path: &str) {
    use std::os::fd::AsRawFd as _;
    let file = File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: the fd is an open namespace file for the call; setns changes only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert!(rc == 0, "setns: {}", std::io::Error::last_os_error());
}

/// Frames received (not sent) on an interface of a namespace, captured with an `AF_PACKET`
/// socket from creation until [`Sniffer::finish`].
#[derive(Debug)]
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Vec<u8>>>>,
}

impl Sniffer {
    /// Starts capturing everything arriving on `iface` in `ns`.
    #[must_use]
    pub fn start(ns: &NetNs, iface: &str) -> Self {
        let path = format!("/run/netns/{}", ns.name());
        let iface = std::ffi::CString::new(iface).unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2) call; the result is checked.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            // SAFETY: iface is a valid NUL-terminated string.
            let index = unsafe { libc::if_nametoindex(iface.as_ptr()) };
            assert!(index > 0, "no interface {iface:?}");
            // SAFETY: an all-zero sockaddr_ll is valid; the fields are set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = i32::try_from(index).unwrap_or_else(|e| panic!("{e}"));
            // SAFETY: sll is a valid sockaddr_ll of the size given.
            let rc = unsafe {
                libc::bind(
                    fd,
                    std::ptr::from_ref(&sll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert!(rc == 0, "bind: {}", std::io::Error::last_os_error());
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: tv is a valid timeval of the size given.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::from_ref(&tv).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
            }
            let _ = ready_tx.send(());
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65536];
            while !stopping.load(Ordering::SeqCst) {
                // SAFETY: an all-zero sockaddr_ll is a valid out-parameter.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: buf and from are valid for the sizes given.
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        std::ptr::from_mut(&mut from).cast(),
                        &raw mut len,
                    )
                };
                if n > 0 && from.sll_pkttype != libc::PACKET_OUTGOING {
                    let n = usize::try_from(n).unwrap_or(0);
                    frames.push(buf[..n].to_vec());
                }
            }
            // SAFETY: fd is ours and closed once.
            unsafe { libc::close(fd) };
            frames
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("sniffer did not start: {e}"));
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns every frame received.
    #[must_use]
    pub fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .take()
            .map(|t| t.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .unwrap_or_default()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a received frame is, for the "never answers" check: `None` for link-layer chatter the
/// kernel sends by itself (ARP, IPv6 neighbour discovery and router solicitation/MLD), else a
/// description of the IP packet.
#[must_use]
pub fn describe_ip_frame(frame: &[u8]) -> Option<String> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    match ethertype {
        0x0800 => {
            let proto = *frame.get(14 + 9)?;
            Some(format!("IPv4 protocol {proto}, {} bytes", frame.len()))
        }
        0x86dd => {
            let next = *frame.get(14 + 6)?;
            if next == 0 {
                // Hop-by-hop options: only MLD reports carry them here.
                return None;
            }
            if next == 58 {
                // ICMPv6: neighbour discovery (133-137) and MLD (130-132, 143) are kernel
                // housekeeping; anything else (an error such as port unreachable) is an answer.
                let icmp_type = *frame.get(14 + 40)?;
                if matches!(icmp_type, 130..=137 | 143) {
                    return None;
                }
                return Some(format!("ICMPv6 type {icmp_type}"));
            }
            Some(format!("IPv6 next header {next}, {} bytes", frame.len()))
        }
        _ => None,
    }
}

/// The path of a file in `dir` as a string, for configs.
#[must_use]
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
