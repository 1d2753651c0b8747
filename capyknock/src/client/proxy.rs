//! The ssh `ProxyCommand` relay: bytes from stdin go to the TCP connection and bytes from the
//! connection go to stdout, both ways at once (tokio), each direction closed on its own:
//! end of stdin shuts down the connection's sending side (so the server sees EOF and can still
//! answer), and the server's EOF closes stdout (so ssh sees EOF) while stdin keeps flowing.

use std::net::TcpStream;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

/// Why the relay stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The async runtime could not start.
    #[error("cannot start the relay")]
    Runtime(#[source] std::io::Error),
    /// Copying failed.
    #[error("relay {direction} failed")]
    Copy {
        /// Which way.
        direction: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Bytes moved each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relayed {
    /// stdin -> server.
    pub to_server: u64,
    /// server -> stdout.
    pub from_server: u64,
}

/// Relays stdin/stdout to `stream` until both directions are done.
pub fn relay_stdio(stream: TcpStream) -> Result<Relayed, ProxyError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(ProxyError::Runtime)?;
    let result = runtime.block_on(async {
        stream.set_nonblocking(true).map_err(ProxyError::Runtime)?;
        let stream = tokio::net::TcpStream::from_std(stream).map_err(ProxyError::Runtime)?;
        let (read_half, write_half) = stream.into_split();
        relay(
            tokio::io::stdin(),
            StdoutCloser::new(),
            read_half,
            write_half,
        )
        .await
    });
    // tokio's stdin reads on a blocking thread that may still wait for input nobody will send:
    // do not wait for it.
    runtime.shutdown_background();
    result
}

/// Copies `input` -> `to_server` and `from_server` -> `output` concurrently. When `input` ends,
/// `to_server` is shut down; when `from_server` ends, `output` is shut down. Returns when both
/// directions have ended; an error in one direction ends the relay.
pub async fn relay<I, O, R, W>(
    mut input: I,
    mut output: O,
    mut from_server: R,
    mut to_server: W,
) -> Result<Relayed, ProxyError>
where
    I: AsyncRead + Unpin,
    O: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let upstream = async {
        let n = tokio::io::copy(&mut input, &mut to_server)
            .await
            .map_err(|source| ProxyError::Copy {
                direction: "to the server",
                source,
            })?;
        // Half-close: the server sees EOF and may still answer.
        let _ = to_server.shutdown().await;
        Ok::<u64, ProxyError>(n)
    };
    let downstream = async {
        let n = tokio::io::copy(&mut from_server, &mut output)
            .await
            .map_err(|source| ProxyError::Copy {
                direction: "from the server",
                source,
            })?;
        let _ = output.flush().await;
        let _ = output.shutdown().await;
        Ok::<u64, ProxyError>(n)
    };
    let (to_server, from_server) = tokio::try_join!(upstream, downstream)?;
    Ok(Relayed {
        to_server,
        from_server,
    })
}

/// stdout that really closes on `shutdown`, so the reader (ssh) sees EOF as soon as the server
/// closes, even while this process keeps relaying stdin.
struct StdoutCloser {
    inner: tokio::io::Stdout,
    closed: bool,
}

impl StdoutCloser {
    fn new() -> Self {
        Self {
            inner: tokio::io::stdout(),
            closed: false,
        }
    }
}

impl AsyncWrite for StdoutCloser {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flushed = std::pin::Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() && !self.closed {
            self.closed = true;
            close_stdout();
        }
        flushed
    }
}

/// Points fd 1 at /dev/null, which closes the pipe to ssh (EOF for the reader) without leaving
/// fd 1 free for the next file opened.
/// Nothing else in this process writes to fd 1 after the relay (progress goes to stderr).
#[cfg(target_os = "linux")]
fn close_stdout() {
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

/// Elsewhere stdout closes when the process exits, right after the relay.
#[cfg(not(target_os = "linux"))]
fn close_stdout() {}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        // An echo server that answers after the client's EOF, then closes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(b"echo:").await.unwrap();
            s.write_all(&got).await.unwrap();
            s.shutdown().await.unwrap();
            got
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let (input, mut feed) = tokio::io::duplex(64);
        let (output, mut sink) = tokio::io::duplex(1 << 16);
        let relay_task = tokio::spawn(relay(input, output, r, w));
        let big = vec![7u8; 100_000];
        feed.write_all(&big).await.unwrap();
        drop(feed); // EOF on "stdin"
        let mut out = Vec::new();
        sink.read_to_end(&mut out).await.unwrap();
        assert_eq!(&out[..5], b"echo:");
        assert_eq!(&out[5..], &big[..]);
        let relayed = relay_task.await.unwrap().unwrap();
        assert_eq!(relayed.to_server, 100_000);
        assert_eq!(relayed.from_server, 100_005);
        assert_eq!(server.await.unwrap().len(), 100_000);
    }

    #[tokio::test]
    async fn server_eof_first_keeps_stdin_flowing() {
        // The server sends a banner and shuts its side, but keeps reading.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"banner\n").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let (input, mut feed) = tokio::io::duplex(64);
        let (output, mut sink) = tokio::io::duplex(1024);
        let relay_task = tokio::spawn(relay(input, output, r, w));
        let mut out = Vec::new();
        sink.read_to_end(&mut out).await.unwrap(); // EOF arrives while stdin is still open
        assert_eq!(out, b"banner\n");
        feed.write_all(b"late bytes").await.unwrap();
        drop(feed);
        assert_eq!(server.await.unwrap(), b"late bytes");
        let relayed = relay_task.await.unwrap().unwrap();
        assert_eq!(
            relayed,
            Relayed {
                to_server: 10,
                from_server: 7
            }
        );
    }
}
