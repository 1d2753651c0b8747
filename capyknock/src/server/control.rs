//! The control socket: a Unix domain socket (mode 0660, owner root, group from the config) that
//! speaks line-delimited JSON. On Windows the same lines go over a named pipe
//! (`\\.\pipe\capyknock`) whose ACL admits SYSTEM, Administrators and the configured group
//! ([`super::win_acl`]). `capyknock status|ban|unban|reload` are its clients; fail2ban
//! reaches it through `capyknock ban`.
//!
//! One request per line, one response line per request (docs/OPERATIONS.md):
//!
//! ```text
//! -> {"cmd":"ban","addr":"203.0.113.7","duration_secs":3600}
//! <- {"ok":true,"message":"banned 203.0.113.7 for 1h"}
//! -> {"cmd":"status"}
//! <- {"ok":true,"status":{...}}
//! -> {"cmd":"nonsense"}
//! <- {"ok":false,"error":"bad request: unknown variant `nonsense`, ..."}
//! ```
//!
//! Nothing a client sends is trusted: lines are bounded ([`MAX_REQUEST_LINE`]), every read and
//! write has a timeout, connections are capped, and the daemon core sees only parsed, typed
//! requests through a bounded channel. Access control is the socket file's permissions (a user
//! who is neither root nor in the group cannot connect); the peer's uid and pid are logged.

use std::{net::IpAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use super::status::Status;

/// Longest request line accepted, newline included.
pub const MAX_REQUEST_LINE: usize = 4096;
/// Longest response line a client accepts.
pub const MAX_RESPONSE_LINE: usize = 16 * 1024 * 1024;
/// How long a connection may stay idle between requests, and a write may take.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most control connections served at once from users other than root (members of
/// `control_group`); more are answered "busy" and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// Connections kept for root on top of [`MAX_CONNECTIONS`], so clients of the group holding
/// every shared slot can never lock out the admin or fail2ban (which runs as root).
pub const ROOT_CONNECTIONS: usize = 4;
/// At most one "too many control connections" log line per this interval (with a count).
pub const BUSY_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Most requests served on one connection.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 64;
/// Longest ban: a year (longer is refused as a likely mistake; leave the duration out for a ban
/// that lasts until `unban`).
pub const MAX_BAN: Duration = Duration::from_hours(366 * 24);

/// A request, one JSON object per line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Daemon snapshot.
    Status {},
    /// Ban an address: its grants are revoked and its knocks refused.
    Ban {
        /// The address.
        addr: IpAddr,
        /// Seconds; absent: until unbanned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_secs: Option<u64>,
    },
    /// Lift a ban.
    Unban {
        /// The address.
        addr: IpAddr,
    },
    /// Re-read the configuration.
    Reload {},
}

/// For log lines: `status`, `ban 192.0.2.1 for 3600s`, `ban 192.0.2.1 until unbanned`,
/// `unban 192.0.2.1`, `reload`.
impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Request::Status {} => f.write_str("status"),
            Request::Ban {
                addr,
                duration_secs: Some(secs),
            } => write!(f, "ban {addr} for {secs}s"),
            Request::Ban {
                addr,
                duration_secs: None,
            } => write!(f, "ban {addr} until unbanned"),
            Request::Unban { addr } => write!(f, "unban {addr}"),
            Request::Reload {} => f.write_str("reload"),
        }
    }
}

/// The answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Human-readable result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The snapshot, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
}

impl Response {
    /// Success with a message.
    #[must_use]
    pub fn message(msg: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: Some(msg.into()),
            error: None,
            status: None,
        }
    }

    /// Failure.
    #[must_use]
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: None,
            error: Some(msg.into()),
            status: None,
        }
    }

    /// A status snapshot.
    #[must_use]
    pub fn status(status: Status) -> Self {
        Self {
            ok: true,
            message: None,
            error: None,
            status: Some(Box::new(status)),
        }
    }
}

/// Parses one request line (without its newline). Errors are messages for the client.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    let req: Request = serde_json::from_slice(line).map_err(|e| format!("bad request: {e}"))?;
    if let Request::Ban {
        duration_secs: Some(secs),
        ..
    } = req
        && (secs == 0 || Duration::from_secs(secs) > MAX_BAN)
    {
        return Err(format!(
            "bad request: duration_secs must be 1 to {} (leave it out to ban until unbanned)",
            MAX_BAN.as_secs()
        ));
    }
    Ok(req)
}

/// Why `addr` must not be banned, if so: the host itself (loopback, or one of `local`, this
/// server's own addresses), or no single host at all.
#[must_use]
pub fn unbannable(addr: IpAddr, local: &[IpAddr]) -> Option<&'static str> {
    let addr = addr.to_canonical();
    if addr.is_loopback() {
        Some("a loopback address is this host itself")
    } else if addr.is_unspecified() {
        Some("the unspecified address is no host")
    } else if addr.is_multicast() {
        Some("a multicast address is a group, not a host")
    } else if matches!(addr, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address is no host")
    } else if local.iter().any(|l| l.to_canonical() == addr) {
        Some("it is an address of this server; banning it would cut the server off from itself")
    } else {
        None
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The group named in the config does not exist.
    #[error(
        "control_group {0:?} does not exist: create it (`groupadd --system {0}`) or remove control_group from the config"
    )]
    NoSuchGroup(String),
    /// Looking the group up failed.
    #[error("cannot look up group {name:?}")]
    GroupLookup {
        /// The group.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on the socket.
    #[error(
        "another capyknock daemon is already listening on {0}: stop it first (or set another control_socket)"
    )]
    InUse(String),
    /// Creating, binding or setting permissions failed.
    #[error("cannot set up control socket {path}")]
    Io {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How to see whether the daemon runs, in [`ClientError::NotRunning`].
#[cfg(not(windows))]
const IS_IT_RUNNING: &str = "`systemctl status capyknock`";
#[cfg(windows)]
const IS_IT_RUNNING: &str = "`sc.exe query capyknock`; start it with `capyknock service start`";

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket: the daemon is not running, or uses another path.
    #[error(
        "no capyknock daemon at {0}: is it running ({IS_IT_RUNNING})? Use --socket PATH or --config PATH if it uses another socket"
    )]
    NotRunning(String),
    /// Permission denied.
    #[error("permission denied on {0}: run as root or as a member of the config's control_group")]
    Denied(String),
    /// Other I/O failure.
    #[error("control socket {path}")]
    Io {
        /// The socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered something unreadable.
    #[error("unreadable answer from the daemon: {0}")]
    BadResponse(String),
}

pub use client::request;

mod client {
    use std::{
        io::{BufRead as _, BufReader, Read as _, Write as _},
        path::Path,
    };

    use super::{ClientError, MAX_RESPONSE_LINE, Request, Response};

    /// Sends one request to the daemon at `socket` (Windows: the named pipe) and returns its
    /// response.
    pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
        let path = socket.display().to_string();
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.clone())
            }
            std::io::ErrorKind::PermissionDenied => ClientError::Denied(path.clone()),
            _ => ClientError::Io {
                path: path.clone(),
                source,
            },
        };
        let mut stream = connect(socket).map_err(io)?;
        let mut line = serde_json::to_vec(req)
            .map_err(|e| ClientError::BadResponse(format!("cannot encode request: {e}")))?;
        line.push(b'\n');
        // A daemon with no free connection answers "busy" and closes at once, maybe before the
        // request is written: then read its answer rather than report the broken pipe.
        let written = stream.write_all(&line);
        let mut reader = BufReader::new(stream.take(MAX_RESPONSE_LINE as u64));
        let mut answer = Vec::new();
        let read = reader.read_until(b'\n', &mut answer);
        if answer.last() != Some(&b'\n') {
            written.map_err(io)?;
            read.map_err(io)?;
            return Err(ClientError::BadResponse(
                "connection closed before a complete answer".into(),
            ));
        }
        serde_json::from_slice(&answer).map_err(|e| ClientError::BadResponse(e.to_string()))
    }

    /// The daemon's Unix socket, with read and write timeouts.
    #[cfg(unix)]
    fn connect(socket: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
        let stream = std::os::unix::net::UnixStream::connect(socket)?;
        // Reload and status can take a moment on a busy daemon: allow three timeouts.
        stream.set_read_timeout(Some(super::IO_TIMEOUT * 3))?;
        stream.set_write_timeout(Some(super::IO_TIMEOUT))?;
        Ok(stream)
    }

    /// The daemon's named pipe. Every instance busy (`ERROR_PIPE_BUSY`): tried again for a
    /// few seconds, as a Unix client waits in the socket's backlog.
    #[cfg(windows)]
    fn connect(pipe: &Path) -> std::io::Result<std::fs::File> {
        /// `ERROR_PIPE_BUSY`.
        const PIPE_BUSY: i32 = 231;
        let mut tries = 0;
        loop {
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(pipe)
            {
                Err(e) if e.raw_os_error() == Some(PIPE_BUSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }
}

#[cfg(unix)]
pub(crate) use server::bind_socket_file;
pub use server::{Command, ControlServer};

mod server {
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt as _;
    use std::{
        path::{Path, PathBuf},
        sync::Arc,
    };

    #[cfg(unix)]
    use tokio::net::{UnixListener, UnixStream};
    use tokio::{
        io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
        sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot},
    };

    use super::{
        BUSY_LOG_INTERVAL, ControlError, IO_TIMEOUT, MAX_CONNECTIONS, MAX_REQUEST_LINE,
        MAX_REQUESTS_PER_CONNECTION, ROOT_CONNECTIONS, Request, Response, parse_request,
    };

    /// Binds a Unix socket at `path` with mode 0660 and group `gid` (root only when `None`),
    /// for the control socket and the metrics socket alike. A missing parent directory is made
    /// 0755. The socket is bound under a temporary name and renamed into place once its mode
    /// and group are set, so no client ever sees it with other permissions.
    #[cfg(unix)]
    pub(crate) fn bind_socket_file(path: &Path, gid: Option<u32>) -> std::io::Result<UnixListener> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let listener = UnixListener::bind(&tmp)?;
        let setup = (|| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o660))?;
            if let Some(gid) = gid {
                std::os::unix::fs::chown(&tmp, None, Some(gid))?;
            }
            std::fs::rename(&tmp, path)
        })();
        if let Err(e) = setup {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(listener)
    }

    /// Connection slots: [`MAX_CONNECTIONS`] shared by everyone, [`ROOT_CONNECTIONS`] more for
    /// root only.
    #[derive(Debug)]
    pub(super) struct Slots {
        shared: Arc<Semaphore>,
        root: Arc<Semaphore>,
    }

    impl Slots {
        pub(super) fn new() -> Self {
            Self {
                shared: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
                root: Arc::new(Semaphore::new(ROOT_CONNECTIONS)),
            }
        }

        /// A slot for a client of user `uid`, if one is free: root takes its own first.
        pub(super) fn admit(&self, uid: u32) -> Option<OwnedSemaphorePermit> {
            if uid == 0
                && let Ok(permit) = Arc::clone(&self.root).try_acquire_owned()
            {
                return Some(permit);
            }
            Arc::clone(&self.shared).try_acquire_owned().ok()
        }
    }

    /// Rate limit of the "busy" log line: one per [`BUSY_LOG_INTERVAL`], with how many were
    /// refused since the last one.
    #[derive(Debug, Default)]
    pub(super) struct BusyLog {
        last: Option<std::time::Instant>,
        refused: u64,
    }

    impl BusyLog {
        /// Refusals since the last line logged.
        #[cfg(all(test, target_os = "linux"))]
        pub(super) fn unlogged(&self) -> u64 {
            self.refused
        }

        /// Counts a refused connection; logs one line per interval.
        pub(super) fn refused(&mut self, uid: u32) {
            self.refused += 1;
            let now = std::time::Instant::now();
            if self
                .last
                .is_none_or(|t| now.duration_since(t) >= BUSY_LOG_INTERVAL)
            {
                tracing::warn!(
                    uid,
                    refused = self.refused,
                    "too many control connections; refusing new ones (each gets a \"busy\" answer)"
                );
                self.last = Some(now);
                self.refused = 0;
            }
        }
    }

    /// A parsed request on its way to the daemon core, with the channel for its answer.
    #[derive(Debug)]
    pub struct Command {
        /// What the client asked.
        pub request: Request,
        /// Where the core sends the answer (the client may be gone: ignore send errors).
        pub reply: oneshot::Sender<Response>,
    }

    /// The bound control socket.
    #[cfg(unix)]
    #[derive(Debug)]
    pub struct ControlServer {
        listener: UnixListener,
        path: PathBuf,
    }

    #[cfg(unix)]
    impl ControlServer {
        /// Binds `path` with mode 0660, group `group` (root only when `None`). A stale socket
        /// file is replaced; a live one (another daemon answers) is an error. The socket is
        /// bound under a temporary name and renamed into place once its permissions are set, so
        /// no client ever sees it with others.
        pub fn bind(path: &Path, group: Option<&str>) -> Result<Self, ControlError> {
            let shown = path.display().to_string();
            let io = |source| ControlError::Io {
                path: shown.clone(),
                source,
            };
            let gid = group.map(lookup_group).transpose()?;
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(shown));
            }
            let listener = bind_socket_file(path, gid).map_err(io)?;
            Ok(Self {
                listener,
                path: path.to_owned(),
            })
        }

        /// The socket's path.
        #[must_use]
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// Serves clients until the task is dropped or `commands` closes. Each connection runs
        /// in its own task, so a slow client never holds up the daemon.
        pub async fn serve(self, commands: mpsc::Sender<Command>) {
            let slots = Slots::new();
            let mut busy = BusyLog::default();
            loop {
                let stream = match self.listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(err) => {
                        tracing::warn!(error = %err, "control socket accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if commands.is_closed() {
                    return;
                }
                let uid = stream.peer_cred().map_or(u32::MAX, |c| c.uid());
                let Some(permit) = slots.admit(uid) else {
                    busy.refused(uid);
                    // The socket's buffer is empty: this small write cannot block.
                    let mut line = serde_json::to_vec(&Response::error(
                        "the daemon is busy: too many control connections; try again",
                    ))
                    .unwrap_or_default();
                    line.push(b'\n');
                    let _ = stream.try_write(&line);
                    continue;
                };
                let commands = commands.clone();
                tokio::spawn(async move {
                    handle_unix(stream, commands).await;
                    drop(permit);
                });
            }
        }
    }

    #[cfg(unix)]
    impl Drop for ControlServer {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    #[cfg(unix)]
    fn lookup_group(name: &str) -> Result<u32, ControlError> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(g.gid.as_raw()),
            Ok(None) => Err(ControlError::NoSuchGroup(name.to_owned())),
            Err(errno) => Err(ControlError::GroupLookup {
                name: name.to_owned(),
                source: std::io::Error::from(errno),
            }),
        }
    }

    #[cfg(unix)]
    async fn handle_unix(stream: UnixStream, commands: mpsc::Sender<Command>) {
        let (uid, pid) = stream
            .peer_cred()
            .map_or((u32::MAX, 0), |c| (c.uid(), c.pid().unwrap_or(0)));
        let (read, write) = stream.into_split();
        handle(read, write, uid, pid, commands).await;
    }

    /// Serves one connection: up to [`MAX_REQUESTS_PER_CONNECTION`] requests, each line
    /// bounded and timed. `uid` and `pid` are the peer's, for the log (`u32::MAX` and 0 when
    /// unknown).
    async fn handle<R, W>(
        read: R,
        mut write: W,
        uid: u32,
        pid: i32,
        commands: mpsc::Sender<Command>,
    ) where
        R: tokio::io::AsyncRead + Unpin,
        W: tokio::io::AsyncWrite + Unpin,
    {
        let mut reader = BufReader::new(read);
        for _ in 0..MAX_REQUESTS_PER_CONNECTION {
            let line = match tokio::time::timeout(IO_TIMEOUT, read_line(&mut reader)).await {
                Ok(Ok(Some(line))) => line,
                Ok(Ok(None)) | Err(_) => return,
                Ok(Err(too_long)) => {
                    let _ = send(&mut write, &Response::error(too_long)).await;
                    // Read what the client still sends (bounded), so closing does not reset
                    // the connection before it has read the error.
                    let _ = write.shutdown().await;
                    let mut sink = tokio::io::sink();
                    let mut rest = tokio::io::AsyncReadExt::take(reader, 1 << 20);
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        tokio::io::copy(&mut rest, &mut sink),
                    )
                    .await;
                    return;
                }
            };
            let response = match parse_request(&line) {
                Err(msg) => Response::error(msg),
                Ok(request) => {
                    tracing::info!(uid, pid, request = %request, "control request");
                    let (reply, answer) = oneshot::channel();
                    let sent =
                        tokio::time::timeout(IO_TIMEOUT, commands.send(Command { request, reply }))
                            .await;
                    match sent {
                        Ok(Ok(())) => match tokio::time::timeout(IO_TIMEOUT * 2, answer).await {
                            Ok(Ok(r)) => r,
                            _ => Response::error("the daemon did not answer in time"),
                        },
                        Ok(Err(_)) => Response::error("the daemon is shutting down"),
                        Err(_) => Response::error("the daemon is busy; try again"),
                    }
                }
            };
            if send(&mut write, &response).await.is_err() {
                return;
            }
        }
    }

    /// Reads one line of at most [`MAX_REQUEST_LINE`] bytes. `Ok(None)` at end of stream;
    /// `Err` for an over-long line (the connection is then closed).
    async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
        reader: &mut R,
    ) -> Result<Option<Vec<u8>>, String> {
        use tokio::io::AsyncReadExt as _;
        let mut line = Vec::new();
        let mut limited = reader.take(MAX_REQUEST_LINE as u64);
        match limited.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => Ok(None),
            Ok(_) if line.last() == Some(&b'\n') => {
                line.pop();
                Ok(Some(line))
            }
            Ok(_) if line.len() >= MAX_REQUEST_LINE => {
                Err(format!("request longer than {MAX_REQUEST_LINE} bytes"))
            }
            // End of stream without a newline: treat what came as the last line.
            Ok(_) => Ok(Some(line)),
        }
    }

    async fn send<W: tokio::io::AsyncWrite + Unpin>(write: &mut W, r: &Response) -> Result<(), ()> {
        let mut bytes = serde_json::to_vec(r).map_err(|_| ())?;
        bytes.push(b'\n');
        match tokio::time::timeout(IO_TIMEOUT, write.write_all(&bytes)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// The bound control pipe (Windows): `\\.\pipe\capyknock` or the config's
    /// `control_socket`, with the ACL of [`super::super::win_acl`].
    #[cfg(windows)]
    #[derive(Debug)]
    pub struct ControlServer {
        security: super::super::win_acl::PipeSecurity,
        /// The instance the next client connects to.
        next: tokio::net::windows::named_pipe::NamedPipeServer,
        path: PathBuf,
    }

    #[cfg(windows)]
    impl ControlServer {
        /// Creates the pipe's first instance with the ACL for SYSTEM, Administrators and
        /// `group`. A pipe of that name that already exists (another daemon serves it) is an
        /// error.
        pub fn bind(path: &Path, group: Option<&str>) -> Result<Self, ControlError> {
            let shown = path.display().to_string();
            let io = |source| ControlError::Io {
                path: shown.clone(),
                source,
            };
            let security = super::super::win_acl::PipeSecurity::new(group).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    ControlError::NoSuchGroup(group.unwrap_or_default().to_owned())
                } else {
                    io(e)
                }
            })?;
            let next = match security.create(&shown, true) {
                Ok(p) => p,
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(ControlError::InUse(shown));
                }
                Err(e) => return Err(io(e)),
            };
            tracing::debug!(pipe = %shown, acl = security.sddl(), "control pipe created");
            Ok(Self {
                security,
                next,
                path: path.to_owned(),
            })
        }

        /// The pipe's name.
        #[must_use]
        pub fn path(&self) -> &Path {
            &self.path
        }

        /// Serves clients until the task is dropped or `commands` closes, each connection in
        /// its own task, as on Unix. Every client counts against the shared slots (the pipe's
        /// ACL already admits administrators only, or the configured group).
        pub async fn serve(mut self, commands: mpsc::Sender<Command>) {
            let slots = Slots::new();
            let mut busy = BusyLog::default();
            let name = self.path.display().to_string();
            loop {
                if let Err(err) = self.next.connect().await {
                    tracing::warn!(error = %err, "control pipe accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
                let connected = loop {
                    match self.security.create(&name, false) {
                        Ok(fresh) => break std::mem::replace(&mut self.next, fresh),
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot create the next control pipe instance");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    }
                };
                if commands.is_closed() {
                    return;
                }
                let Some(permit) = slots.admit(u32::MAX) else {
                    busy.refused(u32::MAX);
                    let mut line = serde_json::to_vec(&Response::error(
                        "the daemon is busy: too many control connections; try again",
                    ))
                    .unwrap_or_default();
                    line.push(b'\n');
                    let _ = connected.try_write(&line);
                    continue;
                };
                let commands = commands.clone();
                tokio::spawn(async move {
                    let (read, write) = tokio::io::split(connected);
                    handle(read, write, u32::MAX, 0, commands).await;
                    drop(permit);
                });
            }
        }
    }
}
/// Parses a CLI ban duration: `3600`, `90s`, `1h`, `2days`.
pub fn parse_ban_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("invalid duration {s:?} ({e}): write e.g. 3600, 10m, 1h or 7d"))?,
    };
    if d.is_zero() {
        return Err(format!(
            "a ban of {s} would end at once: give at least 1s, or -1 (or forever) for a ban \
             until unbanned"
        ));
    }
    if d > MAX_BAN || d.subsec_nanos() != 0 {
        return Err(format!(
            "ban duration must be whole seconds from 1s to {} days (or -1 for a ban until \
             unbanned)",
            MAX_BAN.as_secs() / 86_400
        ));
    }
    Ok(d)
}

/// The socket to talk to: `--socket`, else the config's `control_socket`, else the default.
#[must_use]
pub fn socket_path(socket: Option<&Path>, config: Option<&Path>) -> std::path::PathBuf {
    match (socket, config) {
        (Some(s), _) => s.to_owned(),
        (None, Some(c)) => super::config::control_socket_of(c),
        (None, None) => super::config::control_socket_of(&super::config::default_config_path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_itself_and_non_hosts_cannot_be_banned() {
        let local: Vec<IpAddr> = vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ];
        for addr in [
            "127.0.0.1",
            "127.3.4.5",
            "::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "192.0.2.10",
            "::ffff:192.0.2.10",
            "2001:db8::10",
        ] {
            let ip: IpAddr = addr.parse().unwrap();
            assert!(unbannable(ip, &local).is_some(), "{addr} was bannable");
        }
        for addr in ["192.0.2.11", "198.51.100.7", "2001:db8::11"] {
            let ip: IpAddr = addr.parse().unwrap();
            assert_eq!(unbannable(ip, &local), None, "{addr}");
        }
    }

    #[test]
    fn requests_read_as_words_in_logs() {
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        let ban = |duration_secs| Request::Ban {
            addr,
            duration_secs,
        };
        assert_eq!(ban(Some(60)).to_string(), "ban 192.0.2.1 for 60s");
        assert_eq!(ban(None).to_string(), "ban 192.0.2.1 until unbanned");
        assert_eq!(Request::Unban { addr }.to_string(), "unban 192.0.2.1");
        assert_eq!(Request::Status {}.to_string(), "status");
    }

    #[test]
    fn ban_durations_say_what_is_wrong() {
        let zero = parse_ban_duration("0").unwrap_err();
        assert!(
            zero.contains("would end at once") && zero.contains("-1"),
            "{zero}"
        );
        let long = parse_ban_duration("400d").unwrap_err();
        assert!(long.contains("1s to 366 days"), "{long}");
        assert_eq!(parse_ban_duration("10m"), Ok(Duration::from_mins(10)));
    }

    #[test]
    fn requests_parse() {
        assert_eq!(
            parse_request(br#"{"cmd":"status"}"#),
            Ok(Request::Status {})
        );
        assert_eq!(
            parse_request(br#"{"cmd":"reload"}"#),
            Ok(Request::Reload {})
        );
        assert_eq!(
            parse_request(br#"{"cmd":"ban","addr":"2001:db8::7","duration_secs":60}"#),
            Ok(Request::Ban {
                addr: "2001:db8::7".parse().unwrap(),
                duration_secs: Some(60)
            })
        );
        assert_eq!(
            parse_request(br#"{"cmd":"unban","addr":"192.0.2.1"}"#),
            Ok(Request::Unban {
                addr: "192.0.2.1".parse().unwrap()
            })
        );
    }

    #[test]
    fn bad_requests_are_refused() {
        for bad in [
            &br#"{"cmd":"shutdown"}"#[..],
            br#"{"cmd":"ban"}"#,
            br#"{"cmd":"ban","addr":"not-an-ip"}"#,
            br#"{"cmd":"ban","addr":"fe80::1%eth0"}"#,
            br#"{"cmd":"ban","addr":"192.0.2.1","duration_secs":0}"#,
            br#"{"cmd":"ban","addr":"192.0.2.1","duration_secs":-1}"#,
            br#"{"cmd":"ban","addr":"192.0.2.1","duration_secs":99999999999}"#,
            br#"{"cmd":"status","extra":1}"#,
            b"status",
            b"",
            b"\xff\xfe",
        ] {
            assert!(
                parse_request(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn requests_round_trip() {
        for r in [
            Request::Status {},
            Request::Reload {},
            Request::Ban {
                addr: "192.0.2.1".parse().unwrap(),
                duration_secs: None,
            },
            Request::Unban {
                addr: "::1".parse().unwrap(),
            },
        ] {
            let line = serde_json::to_vec(&r).unwrap();
            assert_eq!(parse_request(&line), Ok(r));
        }
        let line = serde_json::to_string(&Response::error("x")).unwrap();
        assert_eq!(line, r#"{"ok":false,"error":"x"}"#);
    }

    #[test]
    fn ban_durations() {
        assert_eq!(parse_ban_duration("3600"), Ok(Duration::from_hours(1)));
        assert_eq!(parse_ban_duration("10m"), Ok(Duration::from_mins(10)));
        assert_eq!(parse_ban_duration("7d"), Ok(Duration::from_hours(7 * 24)));
        for bad in ["0", "0s", "-5", "soon", "500ms", "5y"] {
            assert!(parse_ban_duration(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_request_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_request(&bytes);
        }
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn socket_serves_and_bounds_lines() {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

        let dir = std::env::temp_dir().join(format!("ck-ctl-{}", std::process::id()));
        let path = dir.join("run/control.sock");
        let server = ControlServer::bind(&path, None).unwrap();
        {
            use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
            let meta = std::fs::metadata(&path).unwrap();
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        }
        // A second daemon on the same socket is refused.
        assert!(matches!(
            ControlServer::bind(&path, None),
            Err(ControlError::InUse(_))
        ));
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Command>(4);
        let serve = tokio::spawn(server.serve(tx));
        let core = tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                let _ = cmd
                    .reply
                    .send(Response::message(format!("{:?}", cmd.request)));
            }
        });

        // The blocking client, from a blocking thread.
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || request(&p, &Request::Reload {}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.message.as_deref(), Some("Reload"));

        // Several requests on one connection; garbage gets an error and the connection lives.
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = tokio::io::BufReader::new(r);
        w.write_all(b"{\"cmd\":\"status\"}\nnot json\n{\"cmd\":\"reload\"}\n")
            .await
            .unwrap();
        let mut lines = Vec::new();
        for _ in 0..3 {
            let mut l = String::new();
            r.read_line(&mut l).await.unwrap();
            lines.push(serde_json::from_str::<Response>(&l).unwrap());
        }
        assert!(lines[0].ok && !lines[1].ok && lines[2].ok, "{lines:?}");

        // An over-long line is answered with an error and the connection closed.
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = tokio::io::BufReader::new(r);
        let _ = w.write_all(&vec![b'x'; MAX_REQUEST_LINE * 4]).await;
        let mut l = String::new();
        r.read_line(&mut l).await.unwrap();
        let resp: Response = serde_json::from_str(&l).unwrap();
        assert!(resp.error.unwrap().contains("longer than"));
        l.clear();
        assert_eq!(
            r.read_line(&mut l).await.unwrap(),
            0,
            "connection not closed"
        );

        serve.abort();
        let _ = serve.await;
        core.abort();
        assert!(!path.exists(), "socket file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Regression (hardening review): while 16 idle connections were held, `capyknock ban`
    /// failed with "connection reset". Root keeps slots of its own.
    #[cfg(target_os = "linux")]
    #[test]
    fn root_keeps_slots_when_others_hold_every_shared_one() {
        let slots = server::Slots::new();
        let group_member = 1000;
        let held: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| slots.admit(group_member).unwrap())
            .collect();
        assert!(slots.admit(group_member).is_none());
        let root: Vec<_> = (0..ROOT_CONNECTIONS)
            .map(|_| slots.admit(0).unwrap())
            .collect();
        assert!(slots.admit(0).is_none());
        drop(held);
        assert!(slots.admit(group_member).is_some());
        drop(root);
    }

    /// Regression (hardening review): each refused connection logged a WARN line, without limit.
    #[cfg(target_os = "linux")]
    #[test]
    fn refused_connections_log_one_line_per_interval() {
        let mut log = server::BusyLog::default();
        for _ in 0..10_000 {
            log.refused(1000);
        }
        // The first refusal logged (and reset the count); the other 9,999 wait for the next
        // line, which says how many there were.
        assert_eq!(log.unlogged(), 9_999);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_client_over_the_limit_is_told_the_daemon_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let server = ControlServer::bind(&path, None).unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel::<Command>(4);
        let serve = tokio::spawn(server.serve(tx));
        // Idle connections fill every slot this (root or not) user may take.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS + ROOT_CONNECTIONS {
            idle.push(tokio::net::UnixStream::connect(&path).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || request(&p, &Request::Status {}))
            .await
            .unwrap()
            .unwrap();
        assert!(!r.ok);
        assert!(r.error.unwrap().contains("busy"));
        drop(idle);
        serve.abort();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn unknown_group_is_a_clear_error() {
        let path = std::env::temp_dir().join(format!("ck-ctl-g-{}.sock", std::process::id()));
        let err = ControlServer::bind(&path, Some("no-such-group-ck")).unwrap_err();
        assert!(err.to_string().contains("groupadd"), "{err}");
    }

    #[test]
    fn client_reports_missing_daemon() {
        #[cfg(unix)]
        {
            let err = request(Path::new("/nonexistent/ck.sock"), &Request::Status {}).unwrap_err();
            assert!(matches!(err, ClientError::NotRunning(_)), "{err}");
        }
    }
}
