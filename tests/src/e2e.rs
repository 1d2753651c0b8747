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
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU8, Ordering},
    time::Duration,
};

use capyknock::{
    protocol::{
        keys::TotpSecret,
        totp::{Totp, TotpCode},
    },
    server::status::Status,
};
use capyknock_testkit::{
    KNOCK_PORT,
    config::{ServerToml, otpauth_secret, otpauth_uri},
    daemon::{Daemon, DaemonOptions},
    files::write_private,
    netns::{Link, NetNs, attach},
    probe::probe_from,
    process::{self, run_with_stdin},
    service::TcpService,
};

/// The protected TCP service's port in the server namespace.
pub const SERVICE_PORT: u16 = 22;
/// The first line the service sends.
pub const BANNER: &str = "SSH-2.0-capyknock-e2e";
/// How long a probe waits before calling a port closed.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

static SUBNET: AtomicU8 = AtomicU8::new(10);

/// Server, client and attacker namespaces with the service running, and a temporary directory
/// for the configs, state and control socket.
#[derive(Debug)]
pub struct Lab {
    /// The daemon, once started (stopped first on drop).
    pub daemon: Option<Daemon>,
    /// The protected service (fields drop in order: the daemon first, then the service, the
    /// namespaces and the directory).
    _service: TcpService,
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
    /// The `otpauth://` line; empty for a machine profile (keygen prints no secret then).
    pub uri: String,
}

impl Keygen {
    /// The TOTP secret in the URI.
    #[must_use]
    pub fn secret(&self) -> TotpSecret {
        let secret =
            otpauth_secret(&self.uri).unwrap_or_else(|| panic!("no secret in {}", self.uri));
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
        let server = NetNs::unique(&format!("{tag}s")).unwrap();
        let n = SUBNET.fetch_add(2, Ordering::Relaxed);
        let (client, client_link) = attach(&server, &format!("{tag}c"), n).unwrap();
        let (attacker, attacker_link) =
            attach(&server, &format!("{tag}a"), n.wrapping_add(1)).unwrap();
        let banner = format!("{BANNER}\r\n");
        let service = TcpService::start(&server, &[SERVICE_PORT], banner.as_bytes()).unwrap();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let lab = Self {
            daemon: None,
            _service: service,
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
        let text = ServerToml {
            comment: None,
            knock_port: KNOCK_PORT,
            interfaces: &[&self.client_link.a_if, &self.attacker_link.a_if],
            state_dir: &self.file("state"),
            control_socket: &self.socket(),
            default_access: Some("5m"),
            extra: "",
        }
        .render();
        write_private(&self.server_config(), text.as_bytes()).unwrap();
    }

    /// Runs `capyknock keygen` for `nickname` with profile `profile`, server `server` and
    /// `extra` flags; panics on failure.
    #[must_use]
    pub fn keygen(&self, nickname: &str, profile: &str, server: &str, extra: &[&str]) -> Keygen {
        let out = process::run(
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
        )
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let derived = extra.windows(2).any(|w| w == ["--totp-mode", "derived"]);
        let uri = match otpauth_uri(&stdout) {
            Some(uri) => uri.to_owned(),
            None if derived => String::new(),
            None => panic!("no otpauth URI in keygen output:\n{stdout}"),
        };
        Keygen { stdout, uri }
    }

    /// Starts the daemon in the server namespace and waits until `status` answers.
    pub fn start_daemon(&mut self) {
        let bin = crate::capyknock_bin();
        let (config, log) = (self.server_config(), self.file("server.log"));
        let mut daemon = Daemon::start(
            &self.server,
            &DaemonOptions {
                bin: &bin,
                config: &config,
                log: &log,
                args: &[],
                wrapper: &crate::unit_capabilities_wrapper(),
                rust_log: Some("info"),
                own_process_group: false,
            },
        )
        .unwrap();
        daemon.wait_status_ready(&bin, &self.socket()).unwrap();
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
        let mut cmd = ns.command(crate::capyknock_bin());
        cmd.arg("knock")
            .args(args)
            .arg("--client-config")
            .arg(self.client_config());
        run_with_stdin(&mut cmd, stdin).unwrap()
    }

    /// `capyknock status --json`.
    #[must_use]
    pub fn status(&self) -> Status {
        let out = process::run(
            Command::new(crate::capyknock_bin())
                .args(["status", "--json", "--socket"])
                .arg(self.socket()),
        )
        .unwrap();
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
        process::run(
            Command::new(crate::capyknock_bin())
                .args(args)
                .arg("--socket")
                .arg(self.socket()),
        )
        .unwrap()
    }

    /// Connects from `ns` to `addr:port`; the service's banner if it answered.
    #[must_use]
    pub fn probe(ns: &NetNs, addr: IpAddr, port: u16) -> Option<String> {
        probe_from(ns, SocketAddr::new(addr, port), PROBE_TIMEOUT)
            .unwrap()
            .greeting()
            .map(str::to_owned)
    }

    /// Sends `packet` to `to` from `ns`, three times.
    pub fn send_udp(ns: &NetNs, packet: &[u8], to: SocketAddr) {
        let sent = ns.send_udp(None, to, &[packet; 3]).unwrap();
        assert_eq!(sent, 3, "the kernel took {sent} of 3 copies");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- server log ---\n{}", self.server_log());
        }
    }
}
