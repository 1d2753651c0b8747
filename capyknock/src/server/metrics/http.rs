//! The metrics endpoint: a minimal HTTP/1.1 responder on a loopback TCP port or a Unix socket
//! that answers `GET /metrics` (and `HEAD`) with [`Metrics::render`], and nothing else.
//!
//! Hand-written on tokio rather than with an HTTP server crate: the request surface is one
//! line (method and path; headers are read and ignored), no HTTP crate is in the dependency
//! tree, and a few dozen lines with hard limits are easier to audit than a server's features.
//! Limits: the request head is at most [`MAX_REQUEST`] bytes and must arrive within
//! [`READ_TIMEOUT`], at most [`MAX_CONNECTIONS`] are served at once (more are closed at once),
//! one request per connection (`Connection: close`). The listener is bound only to loopback or
//! a Unix socket ([`Listen`] refuses anything else).

use std::{
    io,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, UnixListener},
    sync::Semaphore,
};

use super::{CONTENT_TYPE, Listen, Metrics};

/// Largest request head read (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request head, and then to take the response.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 8;

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address or socket could not be bound.
    #[error("cannot listen on metrics_listen {listen}")]
    Bind {
        /// The setting.
        listen: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Something that is not a socket is in the Unix socket's place.
    #[error("metrics_listen {0}: the path exists and is not a socket; remove it or pick another")]
    NotASocket(String),
    /// The control group does not exist.
    #[error(
        "control_group {0:?} does not exist (the metrics socket takes the control socket's group)"
    )]
    Group(String),
}

/// A bound endpoint, ready to [`serve`](Self::serve).
#[derive(Debug)]
pub struct MetricsServer {
    listener: Listener,
    listen: Listen,
    /// The Unix socket's file, removed on drop.
    _socket_file: Option<SocketFile>,
}

#[derive(Debug)]
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Removes the Unix socket's file when the server is dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl MetricsServer {
    /// Binds `listen`. A Unix socket is made mode 0660 with the group `group` (the control
    /// socket's), replacing a stale socket file left by an earlier run. Must run inside a tokio
    /// runtime.
    pub fn bind(listen: &Listen, group: Option<&str>) -> Result<Self, MetricsError> {
        let bind_err = |source| MetricsError::Bind {
            listen: listen.to_string(),
            source,
        };
        let mut socket_file = None;
        let listener = match listen {
            Listen::Tcp(addr) => {
                let std = std::net::TcpListener::bind(addr).map_err(bind_err)?;
                std.set_nonblocking(true).map_err(bind_err)?;
                Listener::Tcp(TcpListener::from_std(std).map_err(bind_err)?)
            }
            Listen::Unix(path) => {
                let gid = group
                    .map(|g| match nix::unistd::Group::from_name(g) {
                        Ok(Some(group)) => Ok(group.gid.as_raw()),
                        _ => Err(MetricsError::Group(g.to_owned())),
                    })
                    .transpose()?;
                let listener = bind_unix(path, gid, listen)?;
                socket_file = Some(SocketFile(path.clone()));
                Listener::Unix(listener)
            }
        };
        Ok(Self {
            listener,
            listen: listen.clone(),
            _socket_file: socket_file,
        })
    }

    /// What it listens on.
    #[must_use]
    pub fn listen(&self) -> &Listen {
        &self.listen
    }

    /// The bound TCP address (the port the kernel chose for port 0, in tests).
    #[must_use]
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(_) => None,
        }
    }

    /// Serves scrapes until the task is dropped; each connection in its own task.
    pub async fn serve(self, metrics: Metrics) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let accepted = match &self.listener {
                Listener::Tcp(l) => l.accept().await.map(|(s, _)| Stream::Tcp(s)),
                Listener::Unix(l) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
            };
            let stream = match accepted {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                tracing::debug!("metrics endpoint: too many connections; one closed");
                continue;
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                match stream {
                    Stream::Tcp(s) => handle(s, &metrics, READ_TIMEOUT).await,
                    Stream::Unix(s) => handle(s, &metrics, READ_TIMEOUT).await,
                }
                drop(permit);
            });
        }
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Binds the metrics socket at `path`: a stale socket file left by an earlier run is replaced,
/// anything else there is refused; then as the control socket is
/// ([`super::super::control::bind_socket_file`]).
fn bind_unix(path: &Path, gid: Option<u32>, listen: &Listen) -> Result<UnixListener, MetricsError> {
    let bind_err = |source| MetricsError::Bind {
        listen: listen.to_string(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        // Left by an earlier run (the control socket, bound first, proves none is running).
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => return Err(MetricsError::NotASocket(listen.to_string())),
        Err(_) => {}
    }
    super::super::control::bind_socket_file(path, gid).map_err(bind_err)
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`head`: `HEAD /metrics`, headers only).
    Metrics { head: bool },
    /// Another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line.
    BadRequest,
}

/// Routes a request head (everything up to the blank line).
fn route(head: &[u8]) -> Route {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Some(line) = head.get(..line_end) else {
        return Route::BadRequest;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/metrics" {
        Route::Metrics { head }
    } else {
        Route::NotFound
    }
}

/// Where the request head ends (just past the blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Reads one request head; `Err(status)` when it is too large.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<Result<Vec<u8>, u16>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(Ok(buf));
        }
        if buf.len() >= MAX_REQUEST {
            return Ok(Err(431));
        }
    }
}

/// Serves one connection: one request, one response, then close; `timeout` for reading the
/// request and again for writing the response.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    metrics: &Metrics,
    timeout: Duration,
) {
    // Timed out, closed early, or a read error: nothing to answer.
    let Ok(Ok(head)) = tokio::time::timeout(timeout, read_head(&mut stream)).await else {
        return;
    };
    let response = match head.map(|h| route(&h)) {
        Ok(Route::Metrics { head }) => {
            let body = metrics.render();
            let mut out = header(200, "OK", CONTENT_TYPE, body.len()).into_bytes();
            if !head {
                out.extend_from_slice(body.as_bytes());
            }
            out
        }
        Ok(Route::NotFound) => plain(404, "Not Found", "only /metrics is served\n"),
        Ok(Route::MethodNotAllowed) => plain(405, "Method Not Allowed", "use GET\n"),
        Ok(Route::BadRequest) => plain(400, "Bad Request", "not an HTTP/1.1 request\n"),
        Err(_) => plain(
            431,
            "Request Header Fields Too Large",
            "request head over 8 KiB\n",
        ),
    };
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(timeout, write).await;
}

fn header(status: u16, reason: &str, content_type: &str, len: usize) -> String {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n"
    )
}

fn plain(status: u16, reason: &str, body: &str) -> Vec<u8> {
    let mut out = header(status, reason, "text/plain; charset=utf-8", body.len());
    if status == 405 {
        out.insert_str(out.len() - 2, "Allow: GET, HEAD\r\n");
    }
    out.push_str(body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    #[test]
    fn routes() {
        for (req, want) in [
            (
                &b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"[..],
                Route::Metrics { head: false },
            ),
            (
                b"GET /metrics?x=1 HTTP/1.0\r\n\r\n",
                Route::Metrics { head: false },
            ),
            (
                b"HEAD /metrics HTTP/1.1\r\n\r\n",
                Route::Metrics { head: true },
            ),
            (b"GET /metrics HTTP/1.1\n\n", Route::Metrics { head: false }),
            (b"GET / HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Route::MethodNotAllowed),
            (b"GET /metrics\r\n\r\n", Route::BadRequest),
            (b"GET /metrics HTTP/2\r\n\r\n", Route::BadRequest),
            (b"GET metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"\xff\xfe /metrics HTTP/1.1\r\n\r\n", Route::BadRequest),
            (b"", Route::BadRequest),
        ] {
            assert_eq!(route(req), want, "{:?}", String::from_utf8_lossy(req));
        }
    }

    /// Sends `request` through an in-memory pipe to [`handle`]; returns the response.
    async fn exchange(request: &[u8]) -> String {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let metrics = Metrics::new();
        metrics.accepted();
        let task = tokio::spawn(async move { handle(server, &metrics, READ_TIMEOUT).await });
        client.write_all(request).await.unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        task.await.unwrap();
        out
    }

    #[tokio::test]
    async fn answers_metrics_and_refuses_the_rest() {
        let ok = exchange(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.contains("\ncapyknock_knocks_accepted_total 1\n"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{ok}"
        );
        assert!(body.ends_with("# EOF\n"));

        let head = exchange(b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );

        let nf = exchange(b"GET /secret HTTP/1.1\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404 "), "{nf}");
        let na = exchange(b"DELETE /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            na.starts_with("HTTP/1.1 405 ") && na.contains("Allow: GET, HEAD\r\n"),
            "{na}"
        );
        let bad = exchange(b"hello\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    }

    #[tokio::test]
    async fn a_huge_request_head_is_refused() {
        let mut req = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', MAX_REQUEST + 10));
        let resp = exchange(&req).await;
        assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_after_the_timeout() {
        let (mut client, server) = tokio::io::duplex(1024);
        let timeout = Duration::from_millis(200);
        let task = tokio::spawn(async move { handle(server, &Metrics::new(), timeout).await });
        // The head never ends: the connection is closed with no answer.
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(started.elapsed() >= timeout);
        task.await.unwrap();
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    }

    #[tokio::test]
    async fn serves_over_tcp_and_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.sock");
        let unix = MetricsServer::bind(&Listen::Unix(path.clone()), None).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o660);
        let tcp = MetricsServer::bind(&Listen::Tcp("127.0.0.1:0".parse().unwrap()), None).unwrap();
        let addr = tcp.local_addr().unwrap();
        let metrics = Metrics::new();
        let t1 = tokio::spawn(unix.serve(metrics.clone()));
        let t2 = tokio::spawn(tcp.serve(metrics.clone()));
        metrics.banned();

        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.contains("\ncapyknock_bans_total 1\n"), "{out}");

        let mut s = tokio::net::UnixStream::connect(&path).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.contains("\ncapyknock_bans_total 1\n"), "{out}");

        t1.abort();
        t2.abort();
        let _ = t1.await;
        assert!(!path.exists(), "the socket file outlived the server");
        // A stale socket is replaced; a regular file is not.
        std::fs::write(&path, b"x").unwrap();
        let err = MetricsServer::bind(&Listen::Unix(path.clone()), None).unwrap_err();
        assert!(matches!(err, MetricsError::NotASocket(_)), "{err}");
    }
}
