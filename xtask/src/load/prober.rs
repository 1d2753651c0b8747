//! "When did the service first answer from this address?": overlapping non-blocking TCP connects
//! from one source address (a fresh socket every millisecond, each given up to 100 ms), so the
//! first connect after the firewall opens is seen within about a millisecond.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::AsFd as _,
    time::{Duration, Instant},
};

use nix::poll::{PollFd, PollFlags, PollTimeout};
use socket2::{Domain, Socket, Type};

/// A new TCP attempt this often, each kept this long.
const ATTEMPT_EVERY: Duration = Duration::from_millis(1);
const ATTEMPT_LIFETIME: Duration = Duration::from_millis(100);

/// Overlapping non-blocking TCP connects from one source address.
pub struct Prober {
    src: Ipv4Addr,
    dst: SocketAddrV4,
    attempts: Vec<(Socket, Instant)>,
    next_attempt: Instant,
}

impl Prober {
    pub fn new(src: Ipv4Addr, dst: SocketAddrV4) -> Self {
        Self {
            src,
            dst,
            attempts: Vec::new(),
            next_attempt: Instant::now(),
        }
    }

    /// Starts an attempt if one is due, waits up to the next one for any to connect; the time
    /// one connected, if one did.
    pub fn step(&mut self, now: Instant) -> Result<Option<Instant>, String> {
        if now >= self.next_attempt {
            self.attempts
                .push((connect_nonblocking(self.src, self.dst)?, now));
            self.next_attempt = now + ATTEMPT_EVERY;
        }
        self.attempts
            .retain(|(_, started)| now.saturating_duration_since(*started) < ATTEMPT_LIFETIME);
        let wait = self.next_attempt.saturating_duration_since(Instant::now());
        let ready: Vec<usize> = {
            let mut fds: Vec<PollFd<'_>> = self
                .attempts
                .iter()
                .map(|(s, _)| PollFd::new(s.as_fd(), PollFlags::POLLOUT))
                .collect();
            let timeout = PollTimeout::try_from(wait.max(Duration::from_micros(100)))
                .unwrap_or(PollTimeout::ZERO);
            match nix::poll::poll(&mut fds, timeout) {
                Ok(n) if n > 0 => fds
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
                    .map(|(i, _)| i)
                    .collect(),
                _ => return Ok(None),
            }
        };
        let at = Instant::now();
        let mut failed = Vec::new();
        for i in ready {
            let Some((socket, _)) = self.attempts.get(i) else {
                continue;
            };
            match socket.take_error() {
                Ok(None) => return Ok(Some(at)),
                Ok(Some(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(format!(
                        "{}: connection refused (is the service running?)",
                        self.dst
                    ));
                }
                _ => failed.push(i),
            }
        }
        for i in failed.into_iter().rev() {
            if i < self.attempts.len() {
                self.attempts.swap_remove(i);
            }
        }
        Ok(None)
    }
}

/// A non-blocking TCP socket bound to `src`, connecting to `dst`.
fn connect_nonblocking(src: Ipv4Addr, dst: SocketAddrV4) -> Result<Socket, String> {
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, None).map_err(|e| format!("socket: {e}"))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("socket: {e}"))?;
    // Port chosen at connect time, so thousands of attempts do not use up the ports of one
    // address.
    let _ = nix::sys::socket::setsockopt(
        &socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    );
    socket
        .bind(&SocketAddrV4::new(src, 0).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    match socket.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(format!("connect {dst}: {e}")),
    }
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_a_closed_then_open_port() {
        // A free port on loopback: refused is reported as an error.
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let dst = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let mut p = Prober::new(Ipv4Addr::LOCALHOST, dst);
        let start = Instant::now();
        let mut opened = None;
        while opened.is_none() && start.elapsed() < Duration::from_secs(1) {
            opened = p.step(Instant::now()).unwrap();
        }
        assert!(opened.is_some());
        drop(l);
        let mut p = Prober::new(Ipv4Addr::LOCALHOST, dst);
        let mut refused = false;
        while !refused && start.elapsed() < Duration::from_secs(2) {
            refused = p.step(Instant::now()).is_err();
        }
        assert!(refused);
    }
}
