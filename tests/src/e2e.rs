//! End-to-end harness: a server, a client and an attacker namespace, the real `capyknock`
//! binary (keygen, server, knock, status, ban), real XDP, nftables and TCP.
//!
//! ```text
//!   [client] ckb* 10.77.S.2, fd00:77:S::2  <---->  cka* 10.77.S.1, fd00:77:S::1 [server]
//!   [attacker] ckb* 10.77.T.2, fd00:77:T::2 <---->  cka* 10.77.T.1, fd00:77:T::1 [server]
//!                                                    capyknock server (XDP on both veths,
//!                                                    nftables), TCP echo service on tcp/22
//! ```
//!
//! Everything lives in the namespaces and a temporary directory that [`Lab`] removes on drop
//! (the daemon is stopped first). Helpers panic with the programs' output on failure.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use capyknock::{
    protocol::{
        keys::TotpSecret,
        totp::{Totp, TotpCode},
    },
    server::status::Status,
};

use crate::netns::{Link, NetNs, connect};

/// The protected TCP service's port in the server namespace.
pub const SERVICE_PORT: u16 = 22;
/// The first line the service sends.
pub const BANNER: &str = "SSH-2.0-capyknock-e2e";
/// UDP knock port.
pub const KNOCK_PORT: u16 = 62201;
/// How long a probe waits before calling a port closed.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

static SUBNET: AtomicU8 = AtomicU8::new(10);

/// Server, client and attacker namespaces with the service running, and a temporary directory
/// for the configs, state and control socket.
#[derive(Debug)]
pub struct Lab {
    /// The daemon, once started (stopped first on drop).
    pub daemon: Option<Daemon>,
    service: Option<EchoService>,
    /// Server side.
    pub server: NetNs,
    /// The legitimate user's machine.
    pub client: NetNs,
    /// Someone else on the network.
    pub attacker: NetNs,
    /// server (a) <-> client (b).
    pub client_link: Link,
    /// server (a) <-> attacker (b).
    pub attacker_link: Link,
    /// Temporary directory with every file.
    pub dir: tempfile::TempDir,
}

/// What `capyknock keygen` printed.
#[derive(Debug, Clone)]
pub struct Keygen {
    /// stdout.
    pub stdout: String,
    /// The `otpauth://` line.
    pub uri: String,
}

impl Keygen {
    /// The TOTP secret in the URI.
    #[must_use]
    pub fn secret(&self) -> TotpSecret {
        let query = self.uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let secret = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("secret="))
            .unwrap_or_else(|| panic!("no secret in {}", self.uri));
        TotpSecret::from_base32(secret).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The code an authenticator app shows at `unix_secs`.
    #[must_use]
    pub fn code_at(&self, unix_secs: u64) -> TotpCode {
        Totp::new(&self.secret())
            .unwrap_or_else(|e| panic!("{e}"))
            .code_at(unix_secs)
    }
}

impl Lab {
    /// Creates the namespaces, links and the service (the daemon is started separately, after
    /// keygen).
    #[must_use]
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let server = NetNs::new(&format!("{tag}s"));
        let client = NetNs::new(&format!("{tag}c"));
        let attacker = NetNs::new(&format!("{tag}a"));
        let n = SUBNET.fetch_add(2, Ordering::Relaxed);
        let client_link = connect(&server, &client, n);
        let attacker_link = connect(&server, &attacker, n.wrapping_add(1));
        let service = EchoService::start(&server);
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let lab = Self {
            daemon: None,
            service: Some(service),
            server,
            client,
            attacker,
            client_link,
            attacker_link,
            dir,
        };
        lab.write_server_config();
        lab
    }

    /// A file in the lab's directory.
    #[must_use]
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server config.
    #[must_use]
    pub fn server_config(&self) -> PathBuf {
        self.file("server.toml")
    }

    /// The client config.
    #[must_use]
    pub fn client_config(&self) -> PathBuf {
        self.file("client.toml")
    }

    /// The control socket.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.file("control.sock")
    }

    fn write_server_config(&self) {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = self.dir.path().display();
        let text = format!(
            "[server]\nknock_ports = [{KNOCK_PORT}]\ninterfaces = [\"{}\", \"{}\"]\n\
             capture = \"xdp\"\nstate_dir = \"{dir}/state\"\ncontrol_socket = \"{dir}/control.sock\"\n\
             default_access = \"5m\"\n\n[firewall]\nbackend = \"nftables\"\n",
            self.client_link.a_if, self.attacker_link.a_if
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.server_config())
            .unwrap_or_else(|e| panic!("server config: {e}"));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("server config: {e}"));
    }

    /// Runs `capyknock keygen` for `nickname` with profile `profile`, server `server` and
    /// `extra` flags; panics on failure.
    #[must_use]
    pub fn keygen(&self, nickname: &str, profile: &str, server: &str, extra: &[&str]) -> Keygen {
        let out = crate::netns::run(
            Command::new(crate::capyknock_bin())
                .args(["keygen", "--nickname", nickname, "--profile", profile])
                .args(["--server", server, "--ports", &SERVICE_PORT.to_string()])
                .arg("--server-config")
                .arg(self.server_config())
                .arg("--client-config")
                .arg(self.client_config())
                .arg("--no-qr")
                .args(extra)
                .stdin(Stdio::null()),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let uri = stdout
            .lines()
            .find(|l| l.starts_with("otpauth://"))
            .unwrap_or_else(|| panic!("no otpauth URI in keygen output:\n{stdout}"))
            .to_owned();
        Keygen { stdout, uri }
    }

    /// Starts the daemon in the server namespace and waits until `status` answers.
    pub fn start_daemon(&mut self) {
        let daemon = Daemon::start(
            &self.server,
            &self.server_config(),
            &self.file("server.log"),
        );
        daemon.wait_ready(&self.socket());
        self.daemon = Some(daemon);
    }

    /// The daemon's log so far.
    #[must_use]
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.file("server.log")).unwrap_or_default()
    }

    /// `capyknock knock ARGS` in the client namespace with `stdin` as input.
    #[must_use]
    pub fn knock(&self, args: &[&str], stdin: &str) -> Output {
        self.knock_from(&self.client, args, stdin)
    }

    /// `capyknock knock ARGS` in `ns`.
    #[must_use]
    pub fn knock_from(&self, ns: &NetNs, args: &[&str], stdin: &str) -> Output {
        let mut cmd = in_ns(ns, crate::capyknock_bin());
        cmd.arg("knock")
            .args(args)
            .arg("--client-config")
            .arg(self.client_config());
        run_with_stdin(&mut cmd, stdin)
    }

    /// `capyknock status --json`.
    #[must_use]
    pub fn status(&self) -> Status {
        let out = crate::netns::run(
            Command::new(crate::capyknock_bin())
                .args(["status", "--json", "--socket"])
                .arg(self.socket()),
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "status --json: {e}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `capyknock ARGS --socket SOCKET` (ban, unban).
    #[must_use]
    pub fn control(&self, args: &[&str]) -> Output {
        crate::netns::run(
            Command::new(crate::capyknock_bin())
                .args(args)
                .arg("--socket")
                .arg(self.socket()),
        )
    }

    /// Connects from `ns` to `addr:port`; the service's banner if it answered.
    #[must_use]
    pub fn probe(ns: &NetNs, addr: IpAddr, port: u16) -> Option<String> {
        let target = SocketAddr::new(addr, port);
        ns.run(move || {
            let stream = TcpStream::connect_timeout(&target, PROBE_TIMEOUT).ok()?;
            stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
            let mut line = String::new();
            BufReader::new(stream).take(256).read_line(&mut line).ok()?;
            Some(line.trim_end().to_owned())
        })
    }

    /// Sends `packet` to `to` from `ns`, three times.
    pub fn send_udp(ns: &NetNs, packet: &[u8], to: SocketAddr) {
        let packet = packet.to_vec();
        ns.run(move || {
            let bind: SocketAddr = match to {
                SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("bind: {e}"));
            for _ in 0..3 {
                socket
                    .send_to(&packet, to)
                    .unwrap_or_else(|e| panic!("send: {e}"));
            }
        });
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.server_log());
        }
        self.daemon = None;
        self.service = None;
    }
}

/// Current Unix time.
#[must_use]
pub fn unix_now() -> u64 {
    capyknock::protocol::unix_secs(std::time::SystemTime::now())
}

/// Waits until at least `margin` seconds remain in the current 30 s TOTP step, so a code
/// computed now is still current when the knock arrives.
pub fn wait_for_fresh_step(margin: u64) {
    let into = unix_now() % 30;
    if into + margin >= 30 {
        std::thread::sleep(Duration::from_secs(30 - into));
    }
}

/// A command that runs `program` inside `ns` through `nsenter --net` (keeps the host's /sys,
/// so bpffs works for the daemon).
#[must_use]
pub fn in_ns(ns: &NetNs, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", ns.name()))
        .arg("--")
        .arg(program);
    cmd
}

/// Runs `cmd` with `input` on stdin, with no controlling terminal (`setsid`), so nothing can
/// prompt.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Output {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setsid is async-signal-safe and only detaches the child from the terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait {cmd:?}: {e}"))
}

/// stdout and stderr of `out`, for messages.
#[must_use]
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Enters the network namespace `name` on the calling thread.
fn enter(name: &str) {
    let file = File::open(format!("/run/netns/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"));
    // SAFETY: the fd is an open namespace file for the call; setns changes only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert!(rc == 0, "setns: {}", std::io::Error::last_os_error());
}

/// The protected service: greets with [`BANNER`], then echoes until the client's EOF, then
/// closes. Listens on `[::]:22` (IPv4 and IPv6) in the server namespace; stops on drop.
#[derive(Debug)]
struct EchoService {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoService {
    fn start(ns: &NetNs) -> Self {
        let name = ns.name().to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter(&name);
            let listener = TcpListener::bind((Ipv6Addr::UNSPECIFIED, SERVICE_PORT))
                .unwrap_or_else(|e| panic!("service bind: {e}"));
            listener
                .set_nonblocking(true)
                .unwrap_or_else(|e| panic!("{e}"));
            let _ = ready_tx.send(());
            while !stopping.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        std::thread::spawn(move || echo(stream));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
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

fn echo(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = stream.write_all(format!("{BANNER}\r\n").as_bytes());
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 || stream.write_all(buf.get(..n).unwrap_or_default()).is_err() {
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

impl Drop for EchoService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `capyknock server` in a namespace; SIGTERM on drop (SIGKILL after 5 s).
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(ns: &NetNs, config: &Path, log: &Path) -> Self {
        let log_file = File::create(log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let child = in_ns(ns, crate::capyknock_bin())
            .arg("server")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start capyknock server: {e}"));
        Self {
            child,
            log: log.to_owned(),
        }
    }

    fn wait_ready(&self, socket: &Path) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let ok = Command::new(crate::capyknock_bin())
                .args(["status", "--socket"])
                .arg(socket)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "capyknock server not ready in 20 s:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
