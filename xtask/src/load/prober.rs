//! "When did the service first answer from this address?": overlapping non-blocking TCP connects
//! from one source address (a fresh socket every millisecond, each given up to 100 ms), so the
//! first connect after the firewall opens is seen within about a millisecond.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

/// A new TCP attempt this often, each kept this long.
const ATTEMPT_EVERY: Duration = Duration::from_millis(1);
const ATTEMPT_LIFETIME: Duration = Duration::from_millis(100);

/// Overlapping non-blocking TCP connects from one source address.
pub struct Prober {
    src: Ipv4Addr,
    dst: SocketAddrV4,
    attempts: Vec<(OwnedFd, Instant)>,
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
        let mut fds: Vec<libc::pollfd> = self
            .attempts
            .iter()
            .map(|(fd, _)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        let wait = self.next_attempt.saturating_duration_since(Instant::now());
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::c_long::try_from(wait.as_nanos()).unwrap_or(1_000_000),
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs for the call; a null
        // signal mask keeps ours.
        let rc = unsafe {
            libc::ppoll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                &raw const ts,
                std::ptr::null(),
            )
        };
        if rc <= 0 {
            return Ok(None);
        }
        let at = Instant::now();
        let mut failed = Vec::new();
        for (i, p) in fds.iter().enumerate() {
            if p.revents == 0 {
                continue;
            }
            match socket_error(p.fd) {
                0 => return Ok(Some(at)),
                libc::ECONNREFUSED => {
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
fn connect_nonblocking(src: Ipv4Addr, dst: SocketAddrV4) -> Result<OwnedFd, String> {
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket creation; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh descriptor we own; OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: valid fd, option value and length. Port chosen at connect time, so thousands of
    // attempts do not use up the ports of one address.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let local = sockaddr(SocketAddrV4::new(src, 0));
    // SAFETY: `local` is a valid sockaddr_in of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), len) } != 0 {
        return Err(format!("bind {src}: {}", std::io::Error::last_os_error()));
    }
    let remote = sockaddr(dst);
    // SAFETY: `remote` is a valid sockaddr_in of `len` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), (&raw const remote).cast(), len) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(format!("connect {dst}: {e}"));
        }
    }
    Ok(fd)
}

/// `SO_ERROR` of a socket (0: connected).
fn socket_error(fd: libc::c_int) -> libc::c_int {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    };
    if rc != 0 { libc::EIO } else { err }
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
