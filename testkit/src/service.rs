//! The protected service of a lab (what stands in for sshd): TCP listeners on `[::]` (IPv4 and
//! IPv6) in a namespace that greet each connection with a fixed line (or nothing) and then echo
//! what they get until the client's EOF. Stops on drop.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv6Addr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{Error, Result, netns::NetNs};

/// How long a connection may stay silent before the service hangs up.
const IDLE: Duration = Duration::from_secs(20);
/// How often the loops look at the stop flag.
const TICK: Duration = Duration::from_millis(5);

/// A TCP greeting-and-echo service in a namespace.
#[derive(Debug)]
pub struct TcpService {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl TcpService {
    /// Listens on `[::]:PORT` for each of `ports` in `ns`; each connection first gets
    /// `greeting` (for a banner, a line ending in `\r\n`; empty for none), then its own bytes
    /// back.
    pub fn start(ns: &NetNs, ports: &[u16], greeting: &[u8]) -> Result<Self> {
        let ports = ports.to_vec();
        let listeners = ns.run(move || -> Result<Vec<TcpListener>> {
            ports
                .iter()
                .map(|&port| {
                    let l = TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
                        .map_err(|e| Error::io(format!("service: bind [::]:{port}"), e))?;
                    l.set_nonblocking(true)
                        .map_err(|e| Error::io("service: set_nonblocking", e))?;
                    Ok(l)
                })
                .collect()
        })??;
        Ok(Self::serve(listeners, greeting))
    }

    /// Serves on listeners bound already (non-blocking), from a thread of its own.
    fn serve(listeners: Vec<TcpListener>, greeting: &[u8]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let greeting: Arc<[u8]> = greeting.into();
        let (stopping, counting) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = std::thread::spawn(move || {
            while !stopping.load(Ordering::SeqCst) {
                let mut idle = true;
                for l in &listeners {
                    if let Ok((stream, _)) = l.accept() {
                        idle = false;
                        counting.fetch_add(1, Ordering::Relaxed);
                        let (greeting, stopping) = (Arc::clone(&greeting), Arc::clone(&stopping));
                        std::thread::spawn(move || answer(stream, &greeting, &stopping));
                    }
                }
                if idle {
                    std::thread::sleep(TICK);
                }
            }
        });
        Self {
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// Connections accepted so far.
    #[must_use]
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// One connection: the greeting, then an echo until EOF, an error, [`IDLE`] of silence or the
/// stop flag.
fn answer(mut stream: TcpStream, greeting: &[u8], stop: &AtomicBool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    if !greeting.is_empty() && stream.write_all(greeting).is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) && last.elapsed() < IDLE {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if stream.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
                last = Instant::now();
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader},
        net::Ipv4Addr,
    };

    use super::*;

    #[test]
    fn greets_echoes_and_counts_on_loopback() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let service = TcpService::serve(vec![l], b"SSH-2.0-test\r\n");
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"ping\n").unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut lines = BufReader::new(stream).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "SSH-2.0-test");
        assert_eq!(lines.next().unwrap().unwrap(), "ping");
        assert!(lines.next().is_none(), "closed after the client's EOF");
        assert_eq!(service.accepted(), 1);
    }
}
