//! Knock-port sinks: UDP sockets bound to the knock ports that are never read, so the host's
//! network stack never answers a knock.
//!
//! With XDP or pcap capture nothing needs to listen on the knock port, and the firewall drops
//! it (nftables, or an exec backend with `knock_drop`). But a datagram to a port no socket is
//! bound to makes the kernel send ICMP "port unreachable", which tells a scanner something is
//! there: that happens when the firewall does not drop the port (the `none` backend, an exec
//! configuration without `knock_drop`, a ruleset flushed by hand) and for frames the XDP
//! program passes to the stack (more VLAN tags or IPv6 extension headers than it parses). A
//! bound socket stops the ICMP answer whatever the firewall does; its receive buffer is the
//! smallest the kernel allows and is never read, so whatever reaches it is dropped silently once
//! the buffer is full, at no cost to the daemon.
//!
//! Not used in `udp` capture mode, where the capture's own socket is bound to the port. In
//! Windows `raw` capture only the IPv4 sink is bound: IPv6 knocks come through capture's own
//! IPv6 socket on the port.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};

/// The sockets, kept open for the daemon's lifetime.
#[derive(Debug, Default)]
pub struct KnockSink {
    sockets: Vec<Socket>,
}

impl KnockSink {
    /// Binds a sink on every knock port, IPv4 and IPv6. A port that cannot be bound (another
    /// program has it, no IPv6 on this host) is logged and skipped: the firewall's drop still
    /// stands.
    #[must_use]
    pub fn bind(ports: &[u16]) -> Self {
        Self::bind_except(ports, &[])
    }

    /// [`Self::bind`], leaving out the addresses capture's own sockets already hold (Windows
    /// `raw` capture takes IPv6 knocks on `[::]:port`).
    #[must_use]
    pub fn bind_except(ports: &[u16], taken: &[SocketAddr]) -> Self {
        let mut sockets = Vec::new();
        for &port in ports {
            for addr in [
                SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            ] {
                if taken.contains(&addr) {
                    continue;
                }
                match sink(addr) {
                    Ok(s) => sockets.push(s),
                    Err(err) => tracing::warn!(
                        %addr,
                        error = %err,
                        "cannot bind the knock-port sink: if the firewall does not drop this \
                         port, the host may answer knocks with ICMP port unreachable"
                    ),
                }
            }
        }
        Self { sockets }
    }

    /// How many sockets are bound.
    #[must_use]
    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    /// Whether none is.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

fn sink(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // The kernel rounds this up to its minimum (a couple of kilobytes).
    socket.set_recv_buffer_size(0)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use std::{net::UdpSocket, time::Duration};

    use super::*;

    #[test]
    fn addresses_capture_holds_are_left_out() {
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
        let all = KnockSink::bind(&[port]);
        let two = all.len();
        drop(all);
        let sink = KnockSink::bind_except(&[port], &[v6]);
        // Only the IPv4 sink (the host may have no IPv6, then `two` is 1 too).
        assert_eq!(sink.len(), 1, "{two}");
        assert!(UdpSocket::bind(("0.0.0.0", port)).is_err());
        if two == 2 {
            let s = socket2::Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_only_v6(true).unwrap();
            s.bind(&v6.into()).unwrap();
        }
    }

    #[test]
    fn a_sink_takes_the_port_and_nothing_answers() {
        // A free port: bind, note it, release.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sink = KnockSink::bind(&[port]);
        assert!(!sink.is_empty());
        // Nobody else gets the port while the sink holds it.
        assert!(UdpSocket::bind(("0.0.0.0", port)).is_err());
        // A connected sender learns of a closed port from ICMP (ECONNREFUSED on the next
        // call); with the sink there is nothing to learn.
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        sender.connect(("127.0.0.1", port)).unwrap();
        for _ in 0..3 {
            sender.send(&[0u8; 256]).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
        sender
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let err = sender.recv(&mut [0u8; 16]).unwrap_err();
        assert_ne!(
            err.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "ICMP came back"
        );
        drop(sink);
        // Without the sink the same probe gets ICMP port unreachable: the test can fail.
        for _ in 0..3 {
            let _ = sender.send(&[0u8; 256]);
        }
        std::thread::sleep(Duration::from_millis(50));
        let refused = (0..3).any(|_| {
            matches!(sender.recv(&mut [0u8; 16]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
                || matches!(sender.send(&[0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
        });
        assert!(
            refused,
            "a closed port did not answer with ICMP: the probe proves nothing"
        );
    }
}
