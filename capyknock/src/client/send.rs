//! Building one knock packet and sending it a few times over UDP (the protocol has no reply, so
//! repetition is the only defence against packet loss; the server accepts the first copy that
//! arrives and drops the others as replays).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use capyknock_common::wire::KNOCK_LEN;

use crate::protocol::{
    keys::{UserId, UserKey},
    packet::{KnockRequest, PacketError, Randomness, build_knock},
    totp::TotpCode,
};

/// Copies of each knock sent.
pub const COPIES: usize = 3;
/// Pause between copies.
pub const SPACING: Duration = Duration::from_millis(50);

/// Why a knock could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The packet could not be built.
    #[error("cannot build the knock packet")]
    Build(#[source] PacketError),
    /// The OS random generator failed.
    #[error("cannot get random bytes for the knock")]
    Random(#[source] crate::protocol::keys::KeyError),
    /// The socket could not be opened or the packet not sent.
    #[error("cannot send the knock to {to}")]
    Io {
        /// Destination.
        to: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Builds a knock for `now_unix` with fresh randomness.
pub fn build(
    id: &UserId,
    key: &UserKey,
    code: &TotpCode,
    request: &KnockRequest,
    now_unix: u64,
) -> Result<[u8; KNOCK_LEN], SendError> {
    let random = Randomness::os().map_err(SendError::Random)?;
    build_knock(id, key, code, request, now_unix, &random).map_err(SendError::Build)
}

/// Sends `packet` to `to` [`COPIES`] times, [`SPACING`] apart, from an ephemeral port of the
/// same address family. Succeeds if at least one copy left the machine.
pub fn send(packet: &[u8], to: SocketAddr) -> Result<usize, SendError> {
    let io = |source| SendError::Io { to, source };
    let bind: SocketAddr = match to.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).map_err(io)?;
    let mut sent = 0;
    let mut last_err = None;
    for i in 0..COPIES {
        if i > 0 {
            std::thread::sleep(SPACING);
        }
        match socket.send_to(packet, to) {
            Ok(_) => sent += 1,
            Err(e) => last_err = Some(e),
        }
    }
    match (sent, last_err) {
        (0, Some(e)) => Err(io(e)),
        _ => Ok(sent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_three_identical_copies() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let code: TotpCode = "123456".parse().unwrap();
        let packet = build(
            &UserId([1; 16]),
            &UserKey::from_bytes([2; 32]),
            &code,
            &KnockRequest::default(),
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(send(&packet, rx.local_addr().unwrap()).unwrap(), COPIES);
        let mut buf = [0u8; 2048];
        for _ in 0..COPIES {
            let (n, _) = rx.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &packet[..]);
        }
        // Two builds differ (fresh nonce and packet id).
        let again = build(
            &UserId([1; 16]),
            &UserKey::from_bytes([2; 32]),
            &code,
            &KnockRequest::default(),
            1_700_000_000,
        )
        .unwrap();
        assert_ne!(packet, again);
    }
}
