//! The I/O-free verifier: bytes, source address and the time in, a [`Verdict`] out.
//!
//! The checks run in the order of docs/PROTOCOL.md ("Verification order"), cheapest and least
//! trusting first, so junk costs little: size, magic, version -> user -> header time step ->
//! pre-filter tag -> AEAD -> payload -> freshness -> TOTP -> one-time use -> policy. The replay
//! state changes only once every cryptographic check has passed.
//!
//! Bans are not checked here: the daemon looks the source up in its ban list before calling
//! [`Verifier::verify`] and, for a banned source, logs [`Rejection::banned`] without verifying.

use std::{net::IpAddr, time::Duration};

use capyknock_common::wire::{Header, HeaderError, KNOCK_LEN, split_knock};

use super::{
    keys::UserId,
    packet::open,
    payload::Payload,
    replay::{ReplayError, ReplayState, Used},
    totp::step_of,
    users::{AllowIp, Users},
};
use crate::ports::PortSpec;

/// Default freshness window: a knock's timestamp may differ from the server's clock by this much.
pub const DEFAULT_FRESHNESS: Duration = Duration::from_secs(90);

/// Verifier settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// How far a knock's timestamp may be from the server's clock, either way. Default
    /// [`DEFAULT_FRESHNESS`] (90 s). The TOTP window (one 30 s step either way) and the header
    /// step check bound the clock difference further; this mainly bounds how long a captured
    /// packet stays interesting.
    pub freshness: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            freshness: DEFAULT_FRESHNESS,
        }
    }
}

/// Why a knock was refused. `name()` is stable: logs, counters and fail2ban filters use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, strum::VariantArray)]
pub enum RejectReason {
    /// The daemon's ban list holds the source (set by the daemon, never by `verify`).
    Banned,
    /// Not exactly 256 bytes.
    WrongSize,
    /// Not the capyknock magic.
    BadMagic,
    /// Another protocol version.
    BadVersion,
    /// Reserved header bytes not zero.
    BadReserved,
    /// No user has this id.
    UnknownUser,
    /// The header's time step is more than one step from the server's.
    StaleStep,
    /// The pre-filter tag is wrong.
    BadTag,
    /// The AEAD did not authenticate the packet.
    DecryptFailed,
    /// The decrypted payload is malformed or disagrees with the header.
    BadPayload,
    /// The payload timestamp is outside the freshness window, or before a start without saved
    /// state.
    StaleTimestamp,
    /// The TOTP code is wrong for every step of the window.
    BadTotp,
    /// The user already used this step's code, or a later one.
    ReplayedTotp,
    /// This exact packet was already used.
    ReplayedPacket,
    /// The daemon cannot make the replay state durable (state directory read-only, damaged
    /// disk), so it refuses new grants rather than risk accepting a replay after a restart.
    /// Decided by the daemon after the verifier accepted the knock.
    StateUnavailable,
    /// A requested port is not among the user's ports.
    PortNotAllowed,
    /// The address rules of the user refuse the requested or source address.
    AddressNotAllowed,
}

impl RejectReason {
    /// Every reason, in declaration order (derived, so a new variant cannot be left out of the
    /// counters).
    pub const ALL: &'static [RejectReason] = <Self as strum::VariantArray>::VARIANTS;

    /// Stable snake_case name.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            RejectReason::Banned => "banned",
            RejectReason::WrongSize => "wrong_size",
            RejectReason::BadMagic => "bad_magic",
            RejectReason::BadVersion => "bad_version",
            RejectReason::BadReserved => "bad_reserved",
            RejectReason::UnknownUser => "unknown_user",
            RejectReason::StaleStep => "stale_step",
            RejectReason::BadTag => "bad_tag",
            RejectReason::DecryptFailed => "decrypt_failed",
            RejectReason::BadPayload => "bad_payload",
            RejectReason::StaleTimestamp => "stale_timestamp",
            RejectReason::BadTotp => "bad_totp",
            RejectReason::ReplayedTotp => "replayed_totp",
            RejectReason::ReplayedPacket => "replayed_packet",
            RejectReason::StateUnavailable => "state_unavailable",
            RejectReason::PortNotAllowed => "port_not_allowed",
            RejectReason::AddressNotAllowed => "address_not_allowed",
        }
    }

    /// Whether the sender proved knowledge of the user's key (the AEAD opened): such rejections
    /// concern a real user (wrong code, replay, policy), the others are junk or forgeries.
    #[must_use]
    pub const fn is_authenticated(self) -> bool {
        matches!(
            self,
            RejectReason::BadPayload
                | RejectReason::StaleTimestamp
                | RejectReason::BadTotp
                | RejectReason::ReplayedTotp
                | RejectReason::ReplayedPacket
                | RejectReason::StateUnavailable
                | RejectReason::PortNotAllowed
                | RejectReason::AddressNotAllowed
        )
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused knock. `user` and `nickname` are set once the header named a known user; for
/// reasons before [`RejectReason::DecryptFailed`] passes they only say which id the packet
/// claimed, not who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: RejectReason,
    /// The user the header named, if known.
    pub user: Option<UserId>,
    /// That user's nickname.
    pub nickname: Option<String>,
}

impl Rejection {
    /// The rejection the daemon logs for a banned source (it does not call `verify` then).
    #[must_use]
    pub const fn banned() -> Self {
        Self {
            reason: RejectReason::Banned,
            user: None,
            nickname: None,
        }
    }

    const fn anonymous(reason: RejectReason) -> Self {
        Self {
            reason,
            user: None,
            nickname: None,
        }
    }
}

/// An accepted knock: open `ports` for `addr` during `duration`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Who knocked.
    pub user: UserId,
    /// Their nickname.
    pub nickname: String,
    /// The address to open for (canonical: IPv4-mapped IPv6 addresses become IPv4).
    pub addr: IpAddr,
    /// The ports to open: what the knock asked for, all of it allowed to the user; all the
    /// user's ports if the knock named none.
    pub ports: Vec<PortSpec>,
    /// How long.
    pub duration: Duration,
}

/// The outcome of one knock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Open the firewall.
    Grant(Access),
    /// Do nothing (and never answer the sender).
    Reject(Rejection),
}

/// The verifier: settings and the replay state. One per daemon.
#[derive(Debug)]
pub struct Verifier {
    settings: Settings,
    replay: ReplayState,
    used: Option<Used>,
}

impl Verifier {
    /// A verifier starting from `replay` (loaded from the state directory, or
    /// [`ReplayState::safe_start`]).
    #[must_use]
    pub fn new(settings: Settings, replay: ReplayState) -> Self {
        Self {
            settings,
            replay,
            used: None,
        }
    }

    /// The settings.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Changes the settings (config reload); the replay state is kept.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The replay state.
    #[must_use]
    pub fn replay(&self) -> &ReplayState {
        &self.replay
    }

    /// The use the last [`verify`](Self::verify) charged, if it charged one (it does once
    /// every cryptographic check passed, whatever the policy checks then decided). The daemon
    /// makes it durable **before** it applies the grant to the firewall, so no crash can
    /// forget a knock that opened something.
    pub fn take_used(&mut self) -> Option<Used> {
        self.used.take()
    }

    /// Decides about one packet received from `source` at `now_unix` (server clock, Unix
    /// seconds).
    pub fn verify(
        &mut self,
        users: &Users,
        bytes: &[u8],
        source: IpAddr,
        now_unix: u64,
    ) -> Verdict {
        self.used = None;
        match self.check(users, bytes, source, now_unix) {
            Ok(grant) => Verdict::Grant(grant),
            Err(rejection) => Verdict::Reject(rejection),
        }
    }

    fn check(
        &mut self,
        users: &Users,
        bytes: &[u8],
        source: IpAddr,
        now: u64,
    ) -> Result<Access, Rejection> {
        // 1. Size, magic, version, reserved.
        let packet: &[u8; KNOCK_LEN] = bytes
            .try_into()
            .map_err(|_| Rejection::anonymous(RejectReason::WrongSize))?;
        let (header_bytes, body) = split_knock(packet);
        let header = Header::parse(&header_bytes).map_err(|e| {
            Rejection::anonymous(match e {
                HeaderError::BadMagic => RejectReason::BadMagic,
                HeaderError::BadVersion(_) => RejectReason::BadVersion,
                HeaderError::ReservedNotZero => RejectReason::BadReserved,
            })
        })?;

        // 2. User.
        let id = UserId(header.user_id);
        let entry = users
            .entry(&id)
            .ok_or_else(|| Rejection::anonymous(RejectReason::UnknownUser))?;
        let user = &entry.user;
        let reject = |reason| Rejection {
            reason,
            user: Some(id),
            nickname: Some(user.nickname.clone()),
        };

        // 3. Header time step within one step of ours.
        if step_of(now).abs_diff(header.time_step) > capyknock_common::wire::STEP_SKEW {
            return Err(reject(RejectReason::StaleStep));
        }

        // 4. Pre-filter tag.
        if !header.tag_is_valid(entry.tag_key.expose_secret()) {
            return Err(reject(RejectReason::BadTag));
        }

        // 5. AEAD, the header as associated data.
        let plaintext = open(&entry.aead, &header_bytes, &header.nonce, &body)
            .ok_or_else(|| reject(RejectReason::DecryptFailed))?;
        let payload: Payload =
            Payload::decode(&plaintext).map_err(|_| reject(RejectReason::BadPayload))?;
        if step_of(payload.timestamp) != header.time_step {
            return Err(reject(RejectReason::BadPayload));
        }

        // 6. Freshness.
        if payload.timestamp.abs_diff(now) > self.settings.freshness.as_secs() {
            return Err(reject(RejectReason::StaleTimestamp));
        }

        // 7. TOTP, one step of skew around our clock; the highest matching step is the one
        //    used.
        let totp_step = entry
            .totp
            .check(&payload.totp, now)
            .ok_or_else(|| reject(RejectReason::BadTotp))?;

        // 8. One-time use: the packet is not the user's last one, and its step is above the
        //    last step the user used. Every cryptographic check has passed: only now may the
        //    state change.
        self.replay
            .check(&id, totp_step, &payload.packet_id, payload.timestamp)
            .map_err(|e| {
                reject(match e {
                    ReplayError::StepUsed => RejectReason::ReplayedTotp,
                    ReplayError::PacketUsed => RejectReason::ReplayedPacket,
                    ReplayError::BeforeStart => RejectReason::StaleTimestamp,
                })
            })?;
        self.used = Some(self.replay.record(id, totp_step, payload.packet_id));

        // 9. Policy: ports, then address.
        if !payload.ports.iter().all(|p| user.ports.contains(p)) {
            return Err(reject(RejectReason::PortNotAllowed));
        }
        let ports = if payload.ports.is_empty() {
            user.ports.clone()
        } else {
            payload.ports
        };
        let source = source.to_canonical();
        let stated = payload.allow_ip.map(|ip| ip.to_canonical());
        let addr = match (user.allow_ip, stated) {
            (AllowIp::Source, _) | (AllowIp::Payload, None) => source,
            (AllowIp::Payload, Some(ip)) => ip,
            (AllowIp::RequireMatch, Some(ip)) if ip == source => source,
            (AllowIp::RequireMatch, _) => return Err(reject(RejectReason::AddressNotAllowed)),
        };
        Ok(Access {
            user: id,
            nickname: user.nickname.clone(),
            addr,
            ports,
            duration: user.access,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{
        keys::UserKey,
        packet::{KnockRequest, Randomness, build_knock, seal_knock},
        payload::PacketId,
        replay::ReplayState,
        totp::{Totp, TotpCode},
        users::{User, tests::user},
    };

    /// 2023-11-14T22:13:15Z, 15 s into its step.
    const NOW: u64 = 1_700_000_000 - 5;
    const SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
    const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));

    fn users_with(list: Vec<User>) -> Users {
        Users::new(list).unwrap()
    }

    fn users() -> Users {
        users_with(vec![user(1, "alice"), user(2, "bob")])
    }

    fn verifier() -> Verifier {
        Verifier::new(Settings::default(), ReplayState::safe_start(0))
    }

    fn code(u: &User, at: u64) -> TotpCode {
        Totp::new(&u.totp).unwrap().code_at(at)
    }

    /// A knock by `u` made at client time `at`, with its code for `at`.
    fn knock_at(u: &User, at: u64, req: &KnockRequest) -> [u8; KNOCK_LEN] {
        build_knock(
            &u.id,
            &u.key,
            &code(u, at),
            req,
            at,
            &Randomness::os().unwrap(),
        )
        .unwrap()
    }

    fn knock(u: &User) -> [u8; KNOCK_LEN] {
        knock_at(u, NOW, &KnockRequest::default())
    }

    fn reason(v: &Verdict) -> Option<RejectReason> {
        match v {
            Verdict::Grant(_) => None,
            Verdict::Reject(r) => Some(r.reason),
        }
    }

    fn grant(v: Verdict) -> Access {
        match v {
            Verdict::Grant(g) => g,
            Verdict::Reject(r) => panic!("rejected: {r:?}"),
        }
    }

    #[test]
    fn a_valid_knock_is_granted_for_the_source() {
        let alice = user(1, "alice");
        let mut v = verifier();
        let g = grant(v.verify(&users(), &knock(&alice), SRC, NOW));
        assert_eq!(g.user, alice.id);
        assert_eq!(g.nickname, "alice");
        assert_eq!(g.addr, SRC);
        assert_eq!(g.ports, alice.ports);
        assert_eq!(g.duration, Duration::from_hours(1));
        let used = v.take_used().unwrap();
        assert_eq!((used.user, used.step), (alice.id, step_of(NOW)));
        assert!(v.take_used().is_none());
    }

    #[test]
    fn requested_subset_is_granted_and_disallowed_port_refused() {
        let alice = user(1, "alice");
        let mut v = verifier();
        let req = KnockRequest {
            ports: vec![PortSpec::udp(51820)],
            allow_ip: None,
        };
        let g = grant(v.verify(&users(), &knock_at(&alice, NOW, &req), SRC, NOW));
        assert_eq!(g.ports, vec![PortSpec::udp(51820)]);

        let bad = KnockRequest {
            ports: vec![PortSpec::tcp(22), PortSpec::tcp(3389)],
            allow_ip: None,
        };
        let r = v.verify(&users(), &knock_at(&alice, NOW + 30, &bad), SRC, NOW + 30);
        assert_eq!(reason(&r), Some(RejectReason::PortNotAllowed));
        let Verdict::Reject(rej) = r else {
            unreachable!()
        };
        assert_eq!(rej.nickname.as_deref(), Some("alice"));
    }

    #[test]
    fn leading_zero_code_is_accepted() {
        // Find a time where alice's code starts with 0, then knock with it.
        let alice = user(1, "alice");
        let totp = Totp::new(&alice.totp).unwrap();
        let t = (0..10_000u64)
            .map(|i| NOW + i * 30)
            .find(|&t| totp.code_at(t).as_str().starts_with('0'))
            .unwrap();
        let mut v = verifier();
        let packet = knock_at(&alice, t, &KnockRequest::default());
        grant(v.verify(&users(), &packet, SRC, t));
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let alice = user(1, "alice");
        let users = users();
        let packet = knock(&alice);
        for bit in 0..KNOCK_LEN * 8 {
            let mut p = packet;
            p[bit / 8] ^= 1 << (bit % 8);
            let mut v = verifier();
            let r = v.verify(&users, &p, SRC, NOW);
            assert!(reason(&r).is_some(), "bit {bit} accepted");
            assert!(
                v.take_used().is_none(),
                "bit {bit} changed the replay state"
            );
        }
        // And the untouched packet still passes.
        grant(verifier().verify(&users, &packet, SRC, NOW));
    }

    #[test]
    fn truncated_or_extended_packets_are_rejected() {
        let alice = user(1, "alice");
        let packet = knock(&alice);
        let mut v = verifier();
        for len in 0..KNOCK_LEN {
            let r = v.verify(&users(), &packet[..len], SRC, NOW);
            assert_eq!(reason(&r), Some(RejectReason::WrongSize), "len {len}");
        }
        for extra in [1usize, 2, 64, 1000] {
            let mut long = packet.to_vec();
            long.extend(std::iter::repeat_n(0u8, extra));
            let r = v.verify(&users(), &long, SRC, NOW);
            assert_eq!(reason(&r), Some(RejectReason::WrongSize));
        }
        assert!(v.take_used().is_none());
        grant(v.verify(&users(), &packet, SRC, NOW));
    }

    #[test]
    fn replay_from_same_and_other_source_is_rejected() {
        let alice = user(1, "alice");
        let packet = knock(&alice);
        let mut v = verifier();
        grant(v.verify(&users(), &packet, SRC, NOW));
        assert_eq!(
            reason(&v.verify(&users(), &packet, SRC, NOW)),
            Some(RejectReason::ReplayedPacket)
        );
        assert_eq!(
            reason(&v.verify(&users(), &packet, OTHER, NOW + 1)),
            Some(RejectReason::ReplayedPacket)
        );
    }

    #[test]
    fn second_knock_with_the_same_code_is_rejected() {
        // RFC 6238 5.2: a different packet (new nonce and packet id) carrying the same code.
        let alice = user(1, "alice");
        let mut v = verifier();
        grant(v.verify(&users(), &knock(&alice), SRC, NOW));
        let r = v.verify(&users(), &knock(&alice), SRC, NOW + 2);
        assert_eq!(reason(&r), Some(RejectReason::ReplayedTotp));
        // The next step's code works, and other users are independent.
        grant(v.verify(
            &users(),
            &knock_at(&alice, NOW + 30, &KnockRequest::default()),
            SRC,
            NOW + 30,
        ));
        grant(v.verify(&users(), &knock(&user(2, "bob")), SRC, NOW));
    }

    #[test]
    fn replay_across_a_step_boundary_is_rejected() {
        let alice = user(1, "alice");
        // Sent 1 s before the end of its step, replayed in the next two steps.
        let t = (NOW / 30) * 30 + 29;
        let packet = knock_at(&alice, t, &KnockRequest::default());
        let mut v = verifier();
        grant(v.verify(&users(), &packet, SRC, t));
        for later in [t + 1, t + 2, t + 31, t + 50] {
            let r = v.verify(&users(), &packet, SRC, later);
            assert!(
                matches!(
                    reason(&r),
                    Some(RejectReason::ReplayedPacket | RejectReason::StaleStep)
                ),
                "at +{}: {r:?}",
                later - t
            );
        }
    }

    #[test]
    fn an_older_knock_is_refused_after_a_newer_one() {
        // Captured at NOW, held back, replayed after alice knocked again in the next step.
        let alice = user(1, "alice");
        let mut v = verifier();
        let old = knock(&alice);
        grant(v.verify(
            &users(),
            &knock_at(&alice, NOW + 30, &KnockRequest::default()),
            SRC,
            NOW + 30,
        ));
        assert_eq!(
            reason(&v.verify(&users(), &old, OTHER, NOW + 31)),
            Some(RejectReason::ReplayedTotp)
        );
    }

    #[test]
    fn a_server_clock_stepped_back_does_not_revive_a_used_code() {
        // Accepted at NOW; the server's clock then goes forward 600 s and back 95 s: the
        // same packet and a new packet with the same code are refused at every point where
        // the header step and TOTP window would otherwise let them through.
        let alice = user(1, "alice");
        let mut v = verifier();
        let packet = knock(&alice);
        grant(v.verify(&users(), &packet, SRC, NOW));
        for now in [NOW + 600, NOW - 95, NOW - 20, NOW, NOW + 20] {
            let r = v.verify(&users(), &packet, OTHER, now);
            assert_ne!(reason(&r), None, "replay accepted at {now}");
            let again = knock_at(&alice, NOW, &KnockRequest::default());
            let r = v.verify(&users(), &again, OTHER, now);
            assert_ne!(reason(&r), None, "same code accepted at {now}");
        }
    }

    #[test]
    fn replay_after_restart_with_reloaded_state_is_rejected() {
        let alice = user(1, "alice");
        let packet = knock(&alice);
        let mut v = verifier();
        grant(v.verify(&users(), &packet, SRC, NOW));
        let saved: Vec<Used> = v.replay().iter().copied().collect();
        drop(v);
        let replay = ReplayState::from_parts(0, 0, saved);
        let mut v = Verifier::new(Settings::default(), replay);
        assert_eq!(
            reason(&v.verify(&users(), &packet, OTHER, NOW + 10)),
            Some(RejectReason::ReplayedPacket)
        );
        let again = knock(&alice);
        assert_eq!(
            reason(&v.verify(&users(), &again, OTHER, NOW + 10)),
            Some(RejectReason::ReplayedTotp)
        );
    }

    #[test]
    fn safe_start_refuses_knocks_made_before_it() {
        let alice = user(1, "alice");
        let packet = knock(&alice);
        let mut v = Verifier::new(Settings::default(), ReplayState::safe_start(NOW + 1));
        let r = v.verify(&users(), &packet, SRC, NOW + 1);
        assert_eq!(reason(&r), Some(RejectReason::StaleTimestamp));
        assert!(v.take_used().is_none());
        grant(v.verify(
            &users(),
            &knock_at(&alice, NOW + 1, &KnockRequest::default()),
            SRC,
            NOW + 1,
        ));
    }

    /// Client clock offset by `offset` seconds from the server at server time `server`.
    fn with_offset(server: u64, offset: i64) -> Option<RejectReason> {
        let alice = user(1, "alice");
        let client = server.checked_add_signed(offset).unwrap();
        let packet = knock_at(&alice, client, &KnockRequest::default());
        reason(&verifier().verify(&users(), &packet, SRC, server))
    }

    #[test]
    fn client_clock_29_seconds_off_is_always_accepted() {
        let base = (NOW / 30) * 30;
        for into_step in [0, 1, 15, 28, 29] {
            for offset in [-29, 29] {
                assert_eq!(
                    with_offset(base + into_step, offset),
                    None,
                    "{into_step} {offset}"
                );
            }
        }
    }

    #[test]
    fn client_clock_31_seconds_off_is_accepted_within_one_step_refused_two_steps_away() {
        let base = (NOW / 30) * 30;
        // 31 s ahead from 0 s into a step lands 1 step ahead: accepted; from 29 s into it, 2.
        assert_eq!(with_offset(base, 31), None);
        assert_eq!(with_offset(base + 29, 31), Some(RejectReason::StaleStep));
        // 31 s behind from 29 s into a step: 1 step behind; from 0 s into it: 2.
        assert_eq!(with_offset(base + 29, -31), None);
        assert_eq!(with_offset(base, -31), Some(RejectReason::StaleStep));
    }

    #[test]
    fn one_step_off_accepted_two_steps_refused() {
        let server = (NOW / 30) * 30 + 10;
        assert_eq!(with_offset(server, -30), None);
        assert_eq!(with_offset(server, 30), None);
        assert_eq!(with_offset(server, -60), Some(RejectReason::StaleStep));
        assert_eq!(with_offset(server, 60), Some(RejectReason::StaleStep));
    }

    #[test]
    fn code_from_another_device_one_step_off_is_accepted() {
        // Laptop clock right, phone 30 s behind: the code is for the previous step.
        let alice = user(1, "alice");
        let packet = build_knock(
            &alice.id,
            &alice.key,
            &code(&alice, NOW - 30),
            &KnockRequest::default(),
            NOW,
            &Randomness::os().unwrap(),
        )
        .unwrap();
        grant(verifier().verify(&users(), &packet, SRC, NOW));
        let stale = build_knock(
            &alice.id,
            &alice.key,
            &code(&alice, NOW - 60),
            &KnockRequest::default(),
            NOW,
            &Randomness::os().unwrap(),
        )
        .unwrap();
        assert_eq!(
            reason(&verifier().verify(&users(), &stale, SRC, NOW)),
            Some(RejectReason::BadTotp)
        );
    }

    #[test]
    fn wrong_code_is_rejected_without_consuming_anything() {
        let alice = user(1, "alice");
        let right = code(&alice, NOW);
        let wrong: TotpCode = if right.as_str() == "000000" {
            "000001"
        } else {
            "000000"
        }
        .parse()
        .unwrap();
        let packet = build_knock(
            &alice.id,
            &alice.key,
            &wrong,
            &KnockRequest::default(),
            NOW,
            &Randomness::os().unwrap(),
        )
        .unwrap();
        let mut v = verifier();
        assert_eq!(
            reason(&v.verify(&users(), &packet, SRC, NOW)),
            Some(RejectReason::BadTotp)
        );
        assert!(v.take_used().is_none());
        grant(v.verify(&users(), &knock(&alice), SRC, NOW));
    }

    #[test]
    fn freshness_window_is_enforced() {
        let alice = user(1, "alice");
        let packet = knock(&alice);
        let settings = Settings {
            freshness: Duration::from_secs(10),
        };
        let mut v = Verifier::new(settings, ReplayState::safe_start(0));
        assert_eq!(
            reason(&v.verify(&users(), &packet, SRC, NOW + 11)),
            Some(RejectReason::StaleTimestamp)
        );
        grant(v.verify(&users(), &packet, SRC, NOW + 10));
    }

    #[test]
    fn unknown_user_and_wrong_key_are_rejected() {
        let mallory = user(9, "mallory");
        assert_eq!(
            reason(&verifier().verify(&users(), &knock(&mallory), SRC, NOW)),
            Some(RejectReason::UnknownUser)
        );
        // Alice's id, someone else's key: the tag fails.
        let mut forged = user(1, "alice");
        forged.key = UserKey::from_bytes([0x77; 32]);
        assert_eq!(
            reason(&verifier().verify(&users(), &knock(&forged), SRC, NOW)),
            Some(RejectReason::BadTag)
        );
    }

    #[test]
    fn address_rules() {
        let stated = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 5));
        let with_ip = |ip| KnockRequest {
            ports: vec![],
            allow_ip: Some(ip),
        };
        let run = |mode: AllowIp, req: &KnockRequest, src: IpAddr| {
            let mut u = user(1, "alice");
            u.allow_ip = mode;
            let packet = knock_at(&u, NOW, req);
            verifier().verify(&users_with(vec![u]), &packet, src, NOW)
        };
        // source: the stated address is ignored.
        assert_eq!(grant(run(AllowIp::Source, &with_ip(stated), SRC)).addr, SRC);
        // payload: the stated address if any, else the source.
        assert_eq!(
            grant(run(AllowIp::Payload, &with_ip(stated), SRC)).addr,
            stated
        );
        assert_eq!(
            grant(run(AllowIp::Payload, &KnockRequest::default(), SRC)).addr,
            SRC
        );
        // require-match: must be stated and equal.
        assert_eq!(
            grant(run(AllowIp::RequireMatch, &with_ip(SRC), SRC)).addr,
            SRC
        );
        assert_eq!(
            reason(&run(AllowIp::RequireMatch, &with_ip(SRC), OTHER)),
            Some(RejectReason::AddressNotAllowed)
        );
        assert_eq!(
            reason(&run(AllowIp::RequireMatch, &KnockRequest::default(), SRC)),
            Some(RejectReason::AddressNotAllowed)
        );
        // An IPv4-mapped IPv6 source (dual-stack socket) is the IPv4 address.
        let mapped = IpAddr::V6(Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped());
        assert_eq!(
            grant(run(AllowIp::RequireMatch, &with_ip(SRC), mapped)).addr,
            SRC
        );
    }

    #[test]
    fn reason_names_are_unique_snake_case_and_complete() {
        let mut names: Vec<_> = RejectReason::ALL.iter().map(|r| r.name()).collect();
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), RejectReason::ALL.len());
        assert_eq!(Rejection::banned().reason.name(), "banned");
    }

    #[test]
    fn payload_timestamp_must_match_header_step() {
        // Properly sealed by the key holder, but the header announces another step than the
        // payload's timestamp: refused after decryption.
        let alice = user(1, "alice");
        let payload = Payload {
            timestamp: NOW,
            totp: code(&alice, NOW),
            ports: vec![],
            allow_ip: None,
            packet_id: PacketId([7; 16]),
        };
        let mut v = verifier();
        let packet =
            seal_knock(&alice.id, &alice.key, step_of(NOW) + 1, &payload, &[1; 24]).unwrap();
        assert_eq!(
            reason(&v.verify(&users(), &packet, SRC, NOW)),
            Some(RejectReason::BadPayload)
        );
        assert!(v.take_used().is_none());
        let packet = seal_knock(&alice.id, &alice.key, step_of(NOW), &payload, &[1; 24]).unwrap();
        grant(v.verify(&users(), &packet, SRC, NOW));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic_and_never_grant(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut v = verifier();
            prop_assert!(reason(&v.verify(&users(), &bytes, SRC, NOW)).is_some());
            prop_assert!(v.take_used().is_none());
        }

        #[test]
        fn right_looking_headers_never_grant(tail in proptest::collection::vec(any::<u8>(), KNOCK_LEN - 24), step_delta in -2i64..=2) {
            // A valid magic/version/user id/step, random everything else.
            let mut p = vec![];
            p.extend_from_slice(b"CKnk\x01\0\0\0");
            p.extend_from_slice(&[1u8; 16]);
            let mut rest = tail;
            let step = (NOW / 30).checked_add_signed(step_delta).unwrap();
            rest[..8].copy_from_slice(&step.to_be_bytes());
            p.extend_from_slice(&rest);
            prop_assert_eq!(p.len(), KNOCK_LEN);
            let mut v = verifier();
            prop_assert!(reason(&v.verify(&users(), &p, SRC, NOW)).is_some());
        }
    }
}
