//! The messages between the network-facing daemon and the firewall helper, with no I/O but the
//! framing: a 4-byte little-endian length, then a postcard-encoded [`Request`] or [`Reply`].
//!
//! The helper trusts nothing it reads: a frame longer than [`MAX_FRAME`] ends the connection,
//! a body that does not decode gets [`Reply::Error`], and every grant, ban and port is checked
//! ([`Request::validate`]) before a backend sees it, so a compromised daemon can ask the helper
//! only for what a healthy one could (open, close, ban and unban addresses on our own table),
//! never to run a program or change another table.

use std::{
    io::{self, Read, Write},
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::{
    conf::check_nickname,
    firewall::{
        Ban, GrantKey, Ledger, Owner, PortGrant,
        model::{self, MAX_BANS, MAX_GRANT_DURATION, MAX_GRANTS},
    },
    ports::{PortSpec, Protocol},
    protocol::keys::UserId,
};

/// Largest frame either side accepts: a restore of [`MAX_GRANTS`] grants and [`MAX_BANS`] bans
/// fits (about 80 bytes each at most).
pub const MAX_FRAME: usize = 16 << 20;

/// Most protected ports or knock ports a message may name.
pub const MAX_PORTS: usize = 4096;

/// Largest `[firewall]` settings text in [`Request::Init`].
pub const MAX_CONFIG: usize = 64 << 10;

/// A transport protocol on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl From<Protocol> for WireProto {
    fn from(p: Protocol) -> Self {
        match p {
            Protocol::Tcp => Self::Tcp,
            Protocol::Udp => Self::Udp,
        }
    }
}

impl From<WireProto> for Protocol {
    fn from(p: WireProto) -> Self {
        match p {
            WireProto::Tcp => Self::Tcp,
            WireProto::Udp => Self::Udp,
        }
    }
}

/// A protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WirePort {
    /// Protocol.
    pub proto: WireProto,
    /// Port, never 0.
    pub port: u16,
}

/// A [`GrantKey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireKey {
    /// Address.
    pub addr: IpAddr,
    /// Protocol and port.
    pub port: WirePort,
}

/// A [`PortGrant`]; times are milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireGrant {
    /// What it opens.
    pub key: WireKey,
    /// When it ends.
    pub until_ms: u64,
    /// Owner: user id and nickname.
    pub owner: Option<([u8; 16], String)>,
}

/// A [`Ban`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireBan {
    /// Address.
    pub addr: IpAddr,
    /// End, or none.
    pub until_ms: Option<u64>,
}

/// What the daemon asks the helper. Each gets one [`Reply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First message only, sent before the daemon reads any network input: the `[firewall]`
    /// settings as JSON, the protected ports and the knock ports to drop. Answered with
    /// [`Reply::Info`]. A second one is refused.
    Init {
        /// `FirewallConfig` as JSON.
        config: String,
        /// Ports closed to everyone without a grant.
        protected: Vec<WirePort>,
        /// UDP ports dropped (the knock ports).
        knock_drop: Vec<u16>,
    },
    /// Open the backend again protecting these ports (a reload added some). [`Reply::Info`].
    Reopen {
        /// Ports closed to everyone without a grant.
        protected: Vec<WirePort>,
    },
    /// What the firewall holds now. [`Reply::Installed`].
    Installed,
    /// Grant. [`Reply::Done`].
    AddGrants(Vec<WireGrant>),
    /// Revoke. [`Reply::Done`].
    RemoveGrants(Vec<WireKey>),
    /// Ban. [`Reply::Bool`]: whether the backend can ban.
    AddBan(WireBan),
    /// Unban. [`Reply::Done`].
    RemoveBan(IpAddr),
    /// Check our rules. [`Reply::Bool`].
    IsIntact,
    /// Repair: make the firewall hold exactly these. [`Reply::Done`].
    Restore {
        /// Grants.
        grants: Vec<WireGrant>,
        /// Bans.
        bans: Vec<WireBan>,
    },
    /// Whether a connection still uses an expired grant. [`Reply::Bool`].
    InUse(WireKey),
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Done.
    Done,
    /// A yes or no.
    Bool(bool),
    /// The backend's properties.
    Info {
        /// `nftables`, `exec`, `none`.
        name: String,
        /// Kernel timeouts.
        expires_by_itself: bool,
        /// The facade should keep the ledger file.
        persistent_ledger: bool,
        /// Failed changes leave nothing behind.
        atomic: bool,
    },
    /// What the firewall holds, when it can tell.
    Installed(Option<(Vec<WireGrant>, Vec<WireBan>)>),
    /// Refused or failed, with the reason (the error chain).
    Error(String),
}

/// Why a message could not be read or was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Reading or writing the socket failed (or the peer closed it).
    #[error("helper socket")]
    Io(#[from] io::Error),
    /// A frame's length is over [`MAX_FRAME`].
    #[error("frame of {0} bytes is over the limit")]
    TooLong(usize),
    /// The body does not decode.
    #[error("malformed message")]
    Malformed(#[source] postcard::Error),
    /// The message decodes but asks for something not allowed.
    #[error("invalid request: {0}")]
    Invalid(String),
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<(), WireError> {
    let body = postcard::to_stdvec(msg).map_err(WireError::Malformed)?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLong(body.len()));
    }
    let len = u32::try_from(body.len()).map_err(|_| WireError::TooLong(body.len()))?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame's body (bounded by [`MAX_FRAME`]).
pub fn read_frame(r: &mut impl Read) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLong(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Decodes a body; trailing bytes are refused.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    let (msg, rest) = postcard::take_from_bytes(body).map_err(WireError::Malformed)?;
    if rest.is_empty() {
        Ok(msg)
    } else {
        Err(WireError::Invalid(format!(
            "{} trailing bytes after the message",
            rest.len()
        )))
    }
}

fn invalid(what: impl Into<String>) -> WireError {
    WireError::Invalid(what.into())
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl From<PortSpec> for WirePort {
    fn from(p: PortSpec) -> Self {
        Self {
            proto: p.protocol.into(),
            port: p.port,
        }
    }
}

impl From<GrantKey> for WireKey {
    fn from(k: GrantKey) -> Self {
        Self {
            addr: k.addr,
            port: WirePort {
                proto: k.protocol.into(),
                port: k.port,
            },
        }
    }
}

impl From<&PortGrant> for WireGrant {
    fn from(g: &PortGrant) -> Self {
        Self {
            key: g.key().into(),
            until_ms: millis(g.until),
            owner: g.owner.map(|o| (o.user.0, o.nickname().to_owned())),
        }
    }
}

impl From<&Ban> for WireBan {
    fn from(b: &Ban) -> Self {
        Self {
            addr: b.addr,
            until_ms: b.until.map(millis),
        }
    }
}

/// Checks a port: never 0.
pub fn port(p: WirePort) -> Result<PortSpec, WireError> {
    if p.port == 0 {
        return Err(invalid("port 0"));
    }
    Ok(PortSpec {
        protocol: p.proto.into(),
        port: p.port,
    })
}

/// Checks a list of ports (bounded, none 0).
pub fn ports(list: &[WirePort]) -> Result<Vec<PortSpec>, WireError> {
    if list.len() > MAX_PORTS {
        return Err(invalid(format!("{} ports", list.len())));
    }
    list.iter().map(|p| port(*p)).collect()
}

/// Checks knock ports (bounded, none 0).
pub fn knock_ports(list: &[u16]) -> Result<Vec<u16>, WireError> {
    if list.len() > MAX_PORTS || list.contains(&0) {
        return Err(invalid("bad knock port list"));
    }
    Ok(list.to_vec())
}

/// Checks a grant key: an address that can be a packet's source, a port that is not 0.
pub fn key(k: WireKey) -> Result<GrantKey, WireError> {
    let addr = model::canonical_addr(k.addr).map_err(|e| invalid(e.to_string()))?;
    let p = port(k.port)?;
    Ok(GrantKey {
        addr,
        protocol: p.protocol,
        port: p.port,
    })
}

/// Checks keys (bounded).
pub fn keys(list: &[WireKey]) -> Result<Vec<GrantKey>, WireError> {
    if list.len() > MAX_GRANTS {
        return Err(invalid(format!("{} grant keys", list.len())));
    }
    list.iter().map(|k| key(*k)).collect()
}

/// Checks a grant: a valid key, an end no further than [`MAX_GRANT_DURATION`] from `now`, an
/// owner whose nickname a config could hold.
pub fn grant(g: &WireGrant, now: SystemTime) -> Result<PortGrant, WireError> {
    let key = key(g.key)?;
    let until = time_of(g.until_ms);
    if until > now + MAX_GRANT_DURATION + Duration::from_mins(1) {
        return Err(invalid("grant ends too far in the future"));
    }
    let owner = match &g.owner {
        None => None,
        Some((id, nickname)) => {
            check_nickname(nickname).map_err(|e| invalid(format!("owner nickname: {e}")))?;
            Some(Owner::new(UserId(*id), nickname))
        }
    };
    Ok(key.grant(until, owner))
}

/// Checks grants (bounded).
pub fn grants(list: &[WireGrant], now: SystemTime) -> Result<Vec<PortGrant>, WireError> {
    if list.len() > MAX_GRANTS {
        return Err(invalid(format!("{} grants", list.len())));
    }
    list.iter().map(|g| grant(g, now)).collect()
}

/// Checks a ban: an address that can be a packet's source.
pub fn ban(b: WireBan) -> Result<Ban, WireError> {
    let addr = model::canonical_addr(b.addr).map_err(|e| invalid(e.to_string()))?;
    Ok(Ban {
        addr,
        until: b.until_ms.map(time_of),
    })
}

/// Checks bans (bounded).
pub fn bans(list: &[WireBan]) -> Result<Vec<Ban>, WireError> {
    if list.len() > MAX_BANS {
        return Err(invalid(format!("{} bans", list.len())));
    }
    list.iter().map(|b| ban(*b)).collect()
}

/// A ledger holding these grants and bans.
#[must_use]
pub fn ledger(grants: Vec<PortGrant>, bans: Vec<Ban>, now: SystemTime) -> Ledger {
    let mut ledger = Ledger::new();
    for g in grants {
        ledger.insert_grant(g, now);
    }
    for b in bans {
        ledger.insert_ban(b, now);
    }
    ledger
}

/// A ledger's grants and bans on the wire.
#[must_use]
pub fn from_ledger(ledger: &Ledger) -> (Vec<WireGrant>, Vec<WireBan>) {
    (
        ledger.grants().map(|g| WireGrant::from(&g)).collect(),
        ledger.bans().map(|b| WireBan::from(&b)).collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn frame(msg: &impl Serialize) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(&mut out, msg).unwrap();
        out
    }

    #[test]
    fn requests_round_trip() {
        let now = SystemTime::now();
        let g = PortGrant {
            addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
            protocol: Protocol::Tcp,
            port: 22,
            until: now + Duration::from_mins(5),
            owner: Some(Owner::new(UserId([7; 16]), "alice")),
        };
        let req = Request::AddGrants(vec![WireGrant::from(&g)]);
        let bytes = frame(&req);
        let body = read_frame(&mut bytes.as_slice()).unwrap();
        let back: Request = decode(&body).unwrap();
        assert_eq!(back, req);
        let Request::AddGrants(list) = back else {
            panic!("wrong variant")
        };
        let got = grants(&list, now).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key(), g.key());
        assert_eq!(got[0].owner.unwrap().nickname(), "alice");
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for body in [&b""[..], b"\xff\xff\xff", b"\x09", b"\x03\x01\x02"] {
            assert!(decode::<Request>(body).is_err(), "{body:?} decoded");
        }
        // Trailing bytes after a valid message are refused too.
        let mut body = postcard::to_stdvec(&Request::IsIntact).unwrap();
        body.push(0);
        assert!(matches!(
            decode::<Request>(&body),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn oversized_frames_are_refused_before_allocating() {
        let mut bytes = u32::MAX.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"xx");
        assert!(matches!(
            read_frame(&mut bytes.as_slice()),
            Err(WireError::TooLong(_))
        ));
    }

    #[test]
    fn invalid_values_are_refused() {
        let now = SystemTime::now();
        let key = |addr: &str, port| WireKey {
            addr: addr.parse().unwrap(),
            port: WirePort {
                proto: WireProto::Tcp,
                port,
            },
        };
        assert!(super::key(key("192.0.2.1", 0)).is_err());
        assert!(super::key(key("0.0.0.0", 22)).is_err());
        assert!(super::key(key("224.0.0.1", 22)).is_err());
        assert!(
            super::key(key("::ffff:192.0.2.1", 22))
                .unwrap()
                .addr
                .is_ipv4()
        );
        let far = WireGrant {
            key: key("192.0.2.1", 22),
            until_ms: millis(now + MAX_GRANT_DURATION * 2),
            owner: None,
        };
        assert!(grant(&far, now).is_err());
        let bad_nick = WireGrant {
            key: key("192.0.2.1", 22),
            until_ms: millis(now + Duration::from_mins(1)),
            owner: Some(([1; 16], "bad nick\n{".into())),
        };
        assert!(grant(&bad_nick, now).is_err());
        assert!(knock_ports(&[0]).is_err());
        assert!(
            ports(&vec![
                WirePort {
                    proto: WireProto::Udp,
                    port: 1
                };
                MAX_PORTS + 1
            ])
            .is_err()
        );
        assert!(
            ban(WireBan {
                addr: "255.255.255.255".parse().unwrap(),
                until_ms: None
            })
            .is_err()
        );
    }
}
