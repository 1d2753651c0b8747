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
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

pub use crate::raw::{Sniffer, send_raw_frame};
use capyknock::{
    ports::PortSpec,
    protocol::{
        keys::{TotpSecret, UserId, UserKey},
        packet::{KnockRequest, Randomness, build_knock},
        totp::{Totp, TotpCode},
        users::{AllowIp, TotpMode, User},
    },
    server::{
        config::render_user,
        control::{self, Request, Response},
        status::Status,
    },
};
use capyknock_common::wire::KNOCK_LEN;
use capyknock_testkit::{
    KNOCK_PORT, Signal,
    config::ServerToml,
    daemon::{Daemon, DaemonOptions, read_log_from},
    files::{TempDir, replace_private},
    netns::{Link, NetNs, attach},
    probe::probe_from,
    service::TcpService,
    wait::wait_until,
};

/// The protected service every test user may open.
pub const SERVICE: PortSpec = PortSpec::tcp(22);
/// A second service no test user may open.
pub const OTHER_SERVICE: PortSpec = PortSpec::tcp(23);
/// How long a TCP probe waits before calling a port closed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// What the service says first.
const GREETING: &str = "hello";

static SUBNET: AtomicU8 = AtomicU8::new(100);
static DIRS: AtomicU8 = AtomicU8::new(0);

/// A test user with fixed secrets derived from `n`.
#[must_use]
pub fn user(nickname: &str, n: u8) -> User {
    let mut secret = [0u8; 20];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = n.wrapping_mul(31).wrapping_add(i as u8);
    }
    User {
        id: UserId([n; 16]),
        nickname: nickname.to_owned(),
        key: UserKey::from_bytes([n.wrapping_add(100); 32]),
        totp: TotpSecret::from_bytes(secret),
        totp_mode: TotpMode::Prompt,
        ports: vec![SERVICE],
        access: Duration::from_mins(5),
        allow_ip: AllowIp::Source,
    }
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

/// Server and client namespaces, a TCP service, a temporary directory, and the daemon.
#[derive(Debug)]
pub struct DaemonLab {
    /// The daemon, when running.
    pub daemon: Option<Daemon>,
    /// The protected service (fields drop in order: the daemon first, then the service, the
    /// namespaces and the directory).
    _service: TcpService,
    /// Server side.
    pub server: NetNs,
    /// The knocking side.
    pub client: NetNs,
    /// server (a) <-> client (b).
    pub link: Link,
    /// Temporary directory (config, state, socket, log), mode 0755 so that the socket's own
    /// permissions, not the directory's, decide who may connect.
    pub dir: TempDir,
    /// Extra `[server]` lines for the next config written.
    pub server_extra: String,
    /// Program and arguments the daemon is started through (after `nsenter` and the unit's
    /// capability set, [`crate::unit_capabilities_wrapper`]), e.g. `env` with an `LD_PRELOAD`.
    pub wrapper: Vec<String>,
    /// Capabilities added to the unit's for the next start (setpriv's spelling, `sys_nice`).
    pub extra_caps: Vec<&'static str>,
    /// Where the current (or last) run's part of the log starts.
    log_start: u64,
}

impl DaemonLab {
    /// Namespaces, link, service; no config or daemon yet.
    #[must_use]
    pub fn new(tag: &str) -> Self {
        crate::require_root();
        let server = NetNs::unique(&format!("{tag}s")).unwrap();
        let (client, link) = attach(
            &server,
            &format!("{tag}c"),
            SUBNET.fetch_add(1, Ordering::Relaxed),
        )
        .unwrap();
        let greeting = format!("{GREETING}\r\n");
        let service = TcpService::start(
            &server,
            &[SERVICE.port, OTHER_SERVICE.port],
            greeting.as_bytes(),
        )
        .unwrap();
        let dir = TempDir::create(
            std::env::temp_dir().join(format!(
                "ck-daemon-{tag}-{}-{}",
                std::process::id(),
                DIRS.fetch_add(1, Ordering::Relaxed)
            )),
            0o755,
        )
        .unwrap();
        Self {
            daemon: None,
            _service: service,
            server,
            client,
            link,
            dir,
            server_extra: String::new(),
            wrapper: Vec::new(),
            extra_caps: Vec::new(),
            log_start: 0,
        }
    }

    /// A file in the lab's directory.
    #[must_use]
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.file(name)
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
        let mut text = ServerToml {
            comment: None,
            knock_port: KNOCK_PORT,
            interfaces: &[&self.link.a_if],
            state_dir: &self.file("state"),
            control_socket: &self.socket(),
            default_access: None,
            extra: &self.server_extra,
        }
        .render();
        for u in users {
            text.push_str(&render_user(u));
        }
        self.write_raw_config(&text);
    }

    /// Replaces the config file with `text` (mode 0600).
    pub fn write_raw_config(&self, text: &str) {
        replace_private(&self.config(), text.as_bytes()).unwrap();
    }

    /// Starts `capyknock server --config ...` in the server namespace (through `nsenter --net`,
    /// which keeps the host's bpffs) and waits until `status` answers.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Like [`Self::start`] with extra command-line arguments.
    pub fn start_with(&mut self, args: &[&str]) {
        assert!(self.daemon.is_none(), "daemon already running");
        let (bin, config, log) = (
            crate::capyknock_bin(),
            self.config(),
            self.file("server.log"),
        );
        let mut wrapper = crate::unit_capabilities_wrapper_plus(&self.extra_caps);
        wrapper.extend(self.wrapper.iter().cloned());
        let mut daemon = Daemon::start(
            &self.server,
            &DaemonOptions {
                bin: &bin,
                config: &config,
                log: &log,
                args,
                wrapper: &wrapper,
                rust_log: Some("info"),
                own_process_group: false,
            },
        )
        .unwrap();
        self.log_start = daemon.log_start();
        let socket = self.socket();
        let ready = daemon.wait_ready(Duration::from_secs(20), || {
            control::request(&socket, &Request::Status {}).is_ok_and(|r| r.ok)
        });
        self.daemon = Some(daemon);
        ready.unwrap();
    }

    /// Whether the daemon process is running.
    pub fn is_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(Daemon::is_running)
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: Signal) {
        self.daemon
            .as_ref()
            .unwrap_or_else(|| panic!("no daemon"))
            .signal(signal)
            .unwrap();
    }

    /// SIGTERM, then waits for the exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let mut daemon = self.daemon.take().unwrap_or_else(|| panic!("no daemon"));
        daemon.terminate(Duration::from_secs(10)).unwrap().success()
    }

    /// SIGKILL, then reaps the process.
    pub fn kill9(&mut self) {
        let mut daemon = self.daemon.take().unwrap_or_else(|| panic!("no daemon"));
        daemon.kill().unwrap();
    }

    /// The whole daemon log (all runs).
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.file("server.log")).unwrap_or_default()
    }

    /// The log of the current (or last) run.
    #[must_use]
    pub fn run_log(&self) -> String {
        read_log_from(&self.file("server.log"), self.log_start)
    }

    /// Waits up to 5 s for a log line (of this run) containing every one of `parts`; returns it.
    #[expect(clippy::must_use_candidate, reason = "often called only to wait")]
    pub fn wait_log(&self, parts: &[&str]) -> String {
        self.wait_log_within(parts, 5)
    }

    /// Waits up to `secs` seconds for a log line (of this run) containing every one of
    /// `parts`; returns it.
    #[expect(clippy::must_use_candidate, reason = "often called only to wait")]
    pub fn wait_log_within(&self, parts: &[&str], secs: u64) -> String {
        let find = || {
            self.run_log()
                .lines()
                .find(|l| parts.iter().all(|p| l.contains(p)))
                .map(str::to_owned)
        };
        let mut found = None;
        wait_until(Duration::from_secs(secs), Duration::from_millis(50), || {
            found = find();
            Ok(found.is_some())
        })
        .unwrap();
        found.unwrap_or_else(|| panic!("no log line with {parts:?} in:\n{}", self.run_log()))
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
        self.link.a(v6)
    }

    /// The client's address on the link.
    #[must_use]
    pub fn client_addr(&self, v6: bool) -> IpAddr {
        self.link.b(v6)
    }

    /// Sends `packet` from the client to the knock port, `copies` times.
    pub fn send(&self, packet: &[u8], v6: bool, copies: usize) {
        let sent = self.send_batch(&vec![packet; copies], v6);
        assert_eq!(sent, copies, "the kernel took {sent} of {copies} copies");
    }

    /// Sends every packet of `packets` once, from one client socket; returns how many the
    /// kernel took (ENOBUFS under load is fine for a flood: it counts what went out).
    #[must_use]
    pub fn send_batch<P: AsRef<[u8]> + Sync>(&self, packets: &[P], v6: bool) -> usize {
        let to = SocketAddr::new(self.server_addr(v6), KNOCK_PORT);
        self.client.send_udp(None, to, packets).unwrap()
    }

    /// Whether the client can open a TCP connection to the server's `port` and read the
    /// service's greeting.
    #[must_use]
    pub fn can_connect(&self, port: u16, v6: bool) -> bool {
        let target = SocketAddr::new(self.server_addr(v6), port);
        probe_from(&self.client, target, PROBE_TIMEOUT)
            .unwrap()
            .greeting()
            == Some(GREETING)
    }

    /// Waits up to 5 s for the client to be able (or, with `open = false`, unable) to connect.
    pub fn wait_connect(&self, port: u16, v6: bool, open: bool) {
        let done = wait_until(Duration::from_secs(5), Duration::from_millis(100), || {
            Ok(self.can_connect(port, v6) == open)
        })
        .unwrap();
        assert!(
            done,
            "tcp/{port} (v6: {v6}) still {} after 5 s:\n{}",
            if open { "closed" } else { "open" },
            self.run_log()
        );
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
    }
}

/// The MAC address of interface `iface` in `ns`.
#[must_use]
pub fn mac_of(ns: &NetNs, iface: &str) -> [u8; 6] {
    let out = ns.ip(&["link", "show", "dev", iface]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mac = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text}"));
    let mut out = [0u8; 6];
    for (b, part) in out.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(part, 16).unwrap_or_else(|e| panic!("{mac}: {e}"));
    }
    out
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
