//! The declarative model every firewall backend implements, with no I/O and the clock passed in:
//! [`PortGrant`]s (an address may reach one protocol/port until a point in time), [`Ban`]s, and the
//! [`Ledger`] that holds what is open right now, merges repeat grants, and says what has expired.
//!
//! Backends with kernel timeouts (nftables) use the ledger to restore a deleted table and to
//! revoke; backends without (Windows Firewall, exec) also use it to close expired grants on
//! their own timer and persist it (see [`super::persist`]) so a restart still closes them.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    time::{Duration, SystemTime},
};

use crate::{
    conf::MAX_NICKNAME_LEN,
    ports::{PortSpec, Protocol},
    protocol::keys::UserId,
};

/// Who a grant was made for: the knocking user's id and nickname. Kept with the grant wherever
/// the grant is kept (nftables element comments, the ledger file), so `status` names it and a
/// user removed from the configuration loses exactly their own grants, also after a restart.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The user.
    pub user: UserId,
    nickname: [u8; MAX_NICKNAME_LEN],
    nickname_len: u8,
}

/// Prefix of the nftables element comment that carries an [`Owner`].
const COMMENT_PREFIX: &str = "capyknock:";

impl Owner {
    /// An owner; a nickname longer than [`MAX_NICKNAME_LEN`] bytes (configs never hold one) is
    /// cut at a character boundary.
    #[must_use]
    pub fn new(user: UserId, nickname: &str) -> Self {
        let mut end = nickname.len().min(MAX_NICKNAME_LEN);
        while !nickname.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0u8; MAX_NICKNAME_LEN];
        let kept = nickname.as_bytes().get(..end).unwrap_or_default();
        if let Some(dst) = bytes.get_mut(..kept.len()) {
            dst.copy_from_slice(kept);
        }
        Self {
            user,
            nickname: bytes,
            nickname_len: kept.len() as u8,
        }
    }

    /// The nickname.
    #[must_use]
    pub fn nickname(&self) -> &str {
        let bytes = self
            .nickname
            .get(..usize::from(self.nickname_len))
            .unwrap_or_default();
        std::str::from_utf8(bytes).unwrap_or_default()
    }

    /// The text kept in an nftables element's comment: `capyknock:<user id>:<nickname>` (also
    /// what `nft list set` shows an admin).
    #[must_use]
    pub fn to_comment(&self) -> String {
        format!("{COMMENT_PREFIX}{}:{}", self.user, self.nickname())
    }

    /// Reads [`Owner::to_comment`]'s text back; `None` for anything else.
    #[must_use]
    pub fn from_comment(text: &str) -> Option<Self> {
        let (user, nickname) = text.strip_prefix(COMMENT_PREFIX)?.split_once(':')?;
        let user: UserId = user.parse().ok()?;
        (nickname.len() <= MAX_NICKNAME_LEN && crate::conf::check_nickname(nickname).is_ok())
            .then(|| Self::new(user, nickname))
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Owner({}, {})", self.user, self.nickname())
    }
}

/// Longest access one grant can give. Longer grants are shortened to this (and logged): a
/// kernel timeout or a timer that far out is almost surely a configuration mistake.
pub const MAX_GRANT_DURATION: Duration = Duration::from_hours(31 * 24);

/// Most grants the ledger holds at once; grants beyond are refused. Grants come only from
/// authenticated knocks, so this is a bound on memory, not a limit anyone should meet.
pub const MAX_GRANTS: usize = 65_536;

/// Most bans the ledger holds at once; bans beyond are refused.
pub const MAX_BANS: usize = 65_536;

/// Access for one address to one protocol/port until `until`.
///
/// `until` is wall-clock time: the daemon computes it once (`now + access duration`) and every
/// backend derives what it needs from it. nftables turns it into the kernel element timeout
/// (`until - now`, rounded up to the millisecond) at the moment it applies the batch, so a grant
/// closes in the kernel even if the daemon dies; timer-driven backends compare it with the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortGrant {
    /// Address allowed in (the knock's source, or the address the user stated).
    pub addr: IpAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port on this host, never 0.
    pub port: u16,
    /// When the access ends.
    pub until: SystemTime,
    /// Who knocked for it, when known.
    pub owner: Option<Owner>,
}

impl PortGrant {
    /// The (address, protocol, port) this grant opens.
    #[must_use]
    pub fn key(&self) -> GrantKey {
        GrantKey {
            addr: self.addr,
            protocol: self.protocol,
            port: self.port,
        }
    }

    /// Time left at `now`, or `None` when the grant has expired.
    #[must_use]
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        remaining(self.until, now)
    }
}

/// What a grant opens, without its expiry: the identity of a firewall element or rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GrantKey {
    /// Address allowed in.
    pub addr: IpAddr,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
}

impl GrantKey {
    /// The protocol/port part.
    #[must_use]
    pub fn port_spec(&self) -> PortSpec {
        PortSpec {
            protocol: self.protocol,
            port: self.port,
        }
    }

    /// This key with an expiry and an owner.
    #[must_use]
    pub fn grant(self, until: SystemTime, owner: Option<Owner>) -> PortGrant {
        PortGrant {
            addr: self.addr,
            protocol: self.protocol,
            port: self.port,
            until,
            owner,
        }
    }
}

impl fmt::Display for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.addr, self.protocol, self.port)
    }
}

/// A banned source address: dropped on every protected port, even with a grant, and even on an
/// established connection. `until: None` bans until unbanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ban {
    /// Banned address.
    pub addr: IpAddr,
    /// End of the ban, or `None` for no end.
    pub until: Option<SystemTime>,
}

impl Ban {
    /// Time left at `now`: `Some(None)` for a ban with no end, `None` when it has expired.
    #[must_use]
    pub fn remaining(&self, now: SystemTime) -> Option<Option<Duration>> {
        match self.until {
            None => Some(None),
            Some(until) => remaining(until, now).map(Some),
        }
    }
}

/// Why the ledger refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The address can never be a knock's source.
    #[error(
        "refusing {addr}: unspecified, multicast and broadcast addresses are never granted or banned"
    )]
    BadAddress {
        /// The address.
        addr: IpAddr,
    },
    /// Port 0 cannot be opened.
    #[error("refusing port 0 for {addr}")]
    PortZero {
        /// The address.
        addr: IpAddr,
    },
    /// The ledger is full.
    #[error("too many active {what} (limit {limit}); refusing more until some expire")]
    Full {
        /// `grants` or `bans`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
}

/// Maps IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, as a dual-stack socket reports IPv4
/// peers) to plain IPv4 so a grant matches the packets the firewall sees, and refuses addresses
/// that can never be a packet's source.
pub fn canonical_addr(addr: IpAddr) -> Result<IpAddr, ModelError> {
    let addr = addr.to_canonical();
    let bad = match addr {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if bad {
        Err(ModelError::BadAddress { addr })
    } else {
        Ok(addr)
    }
}

/// Time from `now` to `until`, or `None` when `until` is not in the future.
#[must_use]
pub fn remaining(until: SystemTime, now: SystemTime) -> Option<Duration> {
    match until.duration_since(now) {
        Ok(d) if !d.is_zero() => Some(d),
        _ => None,
    }
}

/// A duration in whole milliseconds, rounded up (kernel set timeouts are milliseconds), and at
/// least 1 for a non-zero duration.
#[must_use]
pub fn ceil_millis(d: Duration) -> u64 {
    let ms = d.as_millis();
    let ms = if d.subsec_nanos().is_multiple_of(1_000_000) {
        ms
    } else {
        ms.saturating_add(1)
    };
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// A duration in whole seconds, rounded up (for `{timeout}` in exec templates).
#[must_use]
pub fn ceil_secs(d: Duration) -> u64 {
    if d.subsec_nanos() == 0 {
        d.as_secs()
    } else {
        d.as_secs().saturating_add(1)
    }
}

/// What [`Ledger::take_expired`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Grants whose time is up.
    pub grants: Vec<GrantKey>,
    /// Bans whose time is up.
    pub bans: Vec<IpAddr>,
}

impl Expired {
    /// Nothing expired.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.bans.is_empty()
    }
}

/// One grant in the ledger: its expiry and who it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    until: SystemTime,
    owner: Option<Owner>,
}

impl Entry {
    /// Merges a new grant for the same key: the later expiry (a repeat knock never shortens),
    /// and the newest known owner (whoever knocked last is who the key is for).
    fn merge(&mut self, until: SystemTime, owner: Option<Owner>) {
        self.until = self.until.max(until);
        if owner.is_some() {
            self.owner = owner;
        }
    }
}

/// The grants and bans in force: what the firewall should contain right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    grants: BTreeMap<GrantKey, Entry>,
    bans: BTreeMap<IpAddr, Option<SystemTime>>,
}

impl Ledger {
    /// An empty ledger.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Merges `grants` into the ledger and returns what the firewall must apply: one entry per
    /// key (a key given twice keeps the later `until`), each with the later of its old and new
    /// `until` (a repeat knock extends, never shortens), `until` capped at `now +`
    /// [`MAX_GRANT_DURATION`]. Grants already expired at `now`, and grants for banned addresses,
    /// are left out (a banned address gets nothing new; the caller logs it). Invalid addresses
    /// or ports refuse the whole call, before anything is recorded.
    pub fn merge_grants(
        &mut self,
        grants: &[PortGrant],
        now: SystemTime,
    ) -> Result<MergedGrants, ModelError> {
        let mut wanted: BTreeMap<GrantKey, Entry> = BTreeMap::new();
        let mut refused_banned = Vec::new();
        for g in grants {
            let addr = canonical_addr(g.addr)?;
            if g.port == 0 {
                return Err(ModelError::PortZero { addr });
            }
            let key = GrantKey {
                addr,
                protocol: g.protocol,
                port: g.port,
            };
            if self.is_banned(addr, now) {
                refused_banned.push(key);
                continue;
            }
            let until = cap_until(g.until, now);
            if remaining(until, now).is_none() {
                continue;
            }
            wanted
                .entry(key)
                .or_insert(Entry { until, owner: None })
                .merge(until, g.owner);
        }
        let new_keys = wanted
            .keys()
            .filter(|k| !self.grants.contains_key(k))
            .count();
        if self.grants.len().saturating_add(new_keys) > MAX_GRANTS {
            return Err(ModelError::Full {
                what: "grants",
                limit: MAX_GRANTS,
            });
        }
        let mut apply = Vec::with_capacity(wanted.len());
        for (key, new) in wanted {
            let slot = self.grants.entry(key).or_insert(new);
            // An entry that expired but was not yet collected is replaced, not extended from.
            if remaining(slot.until, now).is_none() {
                *slot = new;
            }
            slot.merge(new.until, new.owner);
            apply.push(key.grant(slot.until, slot.owner));
        }
        Ok(MergedGrants {
            apply,
            refused_banned,
        })
    }

    /// The current entries for the keys of `grants` (`None`: absent), to hand back to
    /// [`Ledger::restore_entries`] if the firewall refuses the change.
    #[must_use]
    pub fn clone_entries(&self, grants: &[PortGrant]) -> SavedEntries {
        grants
            .iter()
            .filter_map(|g| {
                let key = GrantKey {
                    addr: canonical_addr(g.addr).ok()?,
                    protocol: g.protocol,
                    port: g.port,
                };
                Some((key, self.grants.get(&key).copied()))
            })
            .collect::<Vec<_>>()
            .into()
    }

    /// Puts back entries saved by [`Ledger::clone_entries`].
    pub fn restore_entries(&mut self, saved: SavedEntries) {
        for (key, entry) in saved.0 {
            match entry {
                Some(entry) => {
                    self.grants.insert(key, entry);
                }
                None => {
                    self.grants.remove(&key);
                }
            }
        }
    }

    /// Records a grant as found in the firewall or the ledger file (loading existing state),
    /// keeping the later expiry if the key is already known. Entries already expired are kept,
    /// so that [`Ledger::take_expired`] hands them to the backend to close; invalid ones and
    /// ones beyond [`MAX_GRANTS`] are ignored.
    pub fn insert_grant(&mut self, grant: PortGrant, now: SystemTime) {
        let Ok(addr) = canonical_addr(grant.addr) else {
            return;
        };
        if grant.port == 0 || self.grants.len() >= MAX_GRANTS {
            return;
        }
        let until = cap_until(grant.until, now);
        self.grants
            .entry(GrantKey {
                addr,
                protocol: grant.protocol,
                port: grant.port,
            })
            .or_insert(Entry { until, owner: None })
            .merge(until, grant.owner);
    }

    /// Removes every grant whose owner is one of `users` and returns their keys (a user
    /// removed from the configuration; grants of others, even from the same address, stay).
    pub fn remove_owned_by(&mut self, users: &[UserId]) -> Vec<GrantKey> {
        let keys: Vec<GrantKey> = self
            .grants
            .iter()
            .filter(|(_, e)| e.owner.is_some_and(|o| users.contains(&o.user)))
            .map(|(k, _)| *k)
            .collect();
        for k in &keys {
            self.grants.remove(k);
        }
        keys
    }

    /// Removes every grant of `addr` and returns their keys.
    pub fn remove_addr(&mut self, addr: IpAddr) -> Vec<GrantKey> {
        let addr = addr.to_canonical();
        let keys: Vec<GrantKey> = self
            .grants
            .keys()
            .filter(|k| k.addr == addr)
            .copied()
            .collect();
        for k in &keys {
            self.grants.remove(k);
        }
        keys
    }

    /// Records a ban (replacing an earlier one for the address) and returns it in canonical
    /// form, or `None` when its `until` has already passed.
    pub fn set_ban(&mut self, ban: Ban, now: SystemTime) -> Result<Option<Ban>, ModelError> {
        let addr = canonical_addr(ban.addr)?;
        let until = ban.until.map(|u| cap_until(u, now));
        if let Some(u) = until
            && remaining(u, now).is_none()
        {
            return Ok(None);
        }
        if !self.bans.contains_key(&addr) && self.bans.len() >= MAX_BANS {
            return Err(ModelError::Full {
                what: "bans",
                limit: MAX_BANS,
            });
        }
        self.bans.insert(addr, until);
        Ok(Some(Ban { addr, until }))
    }

    /// Records a ban found in the firewall or the ledger file; like
    /// [`Ledger::insert_grant`], expired entries are kept for [`Ledger::take_expired`].
    pub fn insert_ban(&mut self, ban: Ban, now: SystemTime) {
        let Ok(addr) = canonical_addr(ban.addr) else {
            return;
        };
        if !self.bans.contains_key(&addr) && self.bans.len() >= MAX_BANS {
            return;
        }
        self.bans.insert(addr, ban.until.map(|u| cap_until(u, now)));
    }

    /// Removes the ban of `addr`; true if there was one.
    pub fn remove_ban(&mut self, addr: IpAddr) -> bool {
        self.bans.remove(&addr.to_canonical()).is_some()
    }

    /// The ban of `addr`, if any (expired or not).
    #[must_use]
    pub fn ban_of(&self, addr: IpAddr) -> Option<Ban> {
        let addr = addr.to_canonical();
        self.bans.get(&addr).map(|until| Ban {
            addr,
            until: *until,
        })
    }

    /// Whether `addr` is banned at `now`.
    #[must_use]
    pub fn is_banned(&self, addr: IpAddr, now: SystemTime) -> bool {
        match self.bans.get(&addr.to_canonical()) {
            Some(None) => true,
            Some(Some(until)) => remaining(*until, now).is_some(),
            None => false,
        }
    }

    /// Removes and returns everything expired at `now`. A grant for which `keep` returns true
    /// stays (Windows: an established connection still uses it) and is asked about again on
    /// the next call.
    pub fn take_expired(
        &mut self,
        now: SystemTime,
        mut keep: impl FnMut(&GrantKey) -> bool,
    ) -> Expired {
        let mut expired = Expired::default();
        for (key, entry) in &self.grants {
            if remaining(entry.until, now).is_none() && !keep(key) {
                expired.grants.push(*key);
            }
        }
        for key in &expired.grants {
            self.grants.remove(key);
        }
        for (addr, until) in &self.bans {
            if let Some(until) = until
                && remaining(*until, now).is_none()
            {
                expired.bans.push(*addr);
            }
        }
        for addr in &expired.bans {
            self.bans.remove(addr);
        }
        expired
    }

    /// Active grants (including ones past their `until` that [`Ledger::take_expired`] has not
    /// collected yet).
    pub fn grants(&self) -> impl Iterator<Item = PortGrant> + '_ {
        self.grants.iter().map(|(k, e)| k.grant(e.until, e.owner))
    }

    /// Grants of one address.
    pub fn grants_of(&self, addr: IpAddr) -> impl Iterator<Item = PortGrant> + '_ {
        let addr = addr.to_canonical();
        self.grants().filter(move |g| g.addr == addr)
    }

    /// Bans.
    pub fn bans(&self) -> impl Iterator<Item = Ban> + '_ {
        self.bans.iter().map(|(addr, until)| Ban {
            addr: *addr,
            until: *until,
        })
    }

    /// A snapshot of the bans.
    #[must_use]
    pub fn ban_list(&self) -> BanList {
        BanList(self.bans.clone())
    }

    /// Number of grants.
    #[must_use]
    pub fn grant_count(&self) -> usize {
        self.grants.len()
    }

    /// Number of bans.
    #[must_use]
    pub fn ban_count(&self) -> usize {
        self.bans.len()
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.grants.clear();
        self.bans.clear();
    }
}

/// The bans in force, as a read-only snapshot: what the daemon core checks before it verifies a
/// knock. The firewall facade owns the bans; the core only ever sees copies of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BanList(BTreeMap<IpAddr, Option<SystemTime>>);

impl BanList {
    /// Whether `addr` is banned at `now`.
    #[must_use]
    pub fn is_banned(&self, addr: IpAddr, now: SystemTime) -> bool {
        match self.0.get(&addr.to_canonical()) {
            Some(None) => true,
            Some(Some(until)) => remaining(*until, now).is_some(),
            None => false,
        }
    }

    /// Number of bans (expired ones not yet collected included).
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Ledger entries saved by [`Ledger::clone_entries`] for [`Ledger::restore_entries`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedEntries(Vec<(GrantKey, Option<Entry>)>);

impl From<Vec<(GrantKey, Option<Entry>)>> for SavedEntries {
    fn from(v: Vec<(GrantKey, Option<Entry>)>) -> Self {
        Self(v)
    }
}

/// Result of [`Ledger::merge_grants`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergedGrants {
    /// Grants to apply, with their merged expiry.
    pub apply: Vec<PortGrant>,
    /// Grants left out because their address is banned.
    pub refused_banned: Vec<GrantKey>,
}

fn cap_until(until: SystemTime, now: SystemTime) -> SystemTime {
    match now.checked_add(MAX_GRANT_DURATION) {
        Some(max) if until > max => max,
        _ => until,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    /// A fixed wall-clock time plus `secs` (shared with the facade's tests).
    pub(in crate::firewall) fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    pub(in crate::firewall) fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    pub(in crate::firewall) fn grant(addr: &str, port: u16, until: SystemTime) -> PortGrant {
        PortGrant {
            addr: ip(addr),
            protocol: Protocol::Tcp,
            port,
            until,
            owner: None,
        }
    }

    #[test]
    fn repeat_grant_extends_and_never_shortens() {
        let mut l = Ledger::new();
        let m = l
            .merge_grants(&[grant("192.0.2.1", 22, t(60))], t(0))
            .unwrap();
        assert_eq!(m.apply, vec![grant("192.0.2.1", 22, t(60))]);
        // A later knock with a longer grant extends.
        let m = l
            .merge_grants(&[grant("192.0.2.1", 22, t(100))], t(10))
            .unwrap();
        assert_eq!(m.apply[0].until, t(100));
        // A shorter one keeps the longer expiry, and the firewall is told the kept value.
        let m = l
            .merge_grants(&[grant("192.0.2.1", 22, t(50))], t(20))
            .unwrap();
        assert_eq!(m.apply[0].until, t(100));
        assert_eq!(l.grant_count(), 1);
    }

    #[test]
    fn duplicates_in_one_batch_collapse_to_the_latest() {
        let mut l = Ledger::new();
        let m = l
            .merge_grants(
                &[
                    grant("192.0.2.1", 22, t(30)),
                    grant("192.0.2.1", 22, t(90)),
                    grant("192.0.2.1", 443, t(30)),
                ],
                t(0),
            )
            .unwrap();
        assert_eq!(
            m.apply,
            vec![
                grant("192.0.2.1", 22, t(90)),
                grant("192.0.2.1", 443, t(30))
            ]
        );
    }

    #[test]
    fn expired_entry_is_replaced_not_extended() {
        let mut l = Ledger::new();
        l.merge_grants(&[grant("192.0.2.1", 22, t(10))], t(0))
            .unwrap();
        // Not yet collected, expired: the new grant stands alone.
        let m = l
            .merge_grants(&[grant("192.0.2.1", 22, t(25))], t(20))
            .unwrap();
        assert_eq!(m.apply[0].until, t(25));
    }

    #[test]
    fn past_grants_are_dropped_and_mapped_addresses_canonicalised() {
        let mut l = Ledger::new();
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        let m = l
            .merge_grants(
                &[
                    grant("192.0.2.1", 22, t(5)),
                    PortGrant {
                        addr: mapped,
                        protocol: Protocol::Udp,
                        port: 53,
                        until: t(60),
                        owner: None,
                    },
                ],
                t(10),
            )
            .unwrap();
        assert_eq!(m.apply.len(), 1);
        assert_eq!(m.apply[0].addr, ip("192.0.2.7"));
    }

    #[test]
    fn bad_addresses_and_port_zero_refuse_the_batch() {
        for bad in ["0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"] {
            let mut l = Ledger::new();
            let err = l
                .merge_grants(
                    &[grant("192.0.2.1", 22, t(60)), grant(bad, 22, t(60))],
                    t(0),
                )
                .unwrap_err();
            assert!(matches!(err, ModelError::BadAddress { .. }), "{bad}");
            assert_eq!(l.grant_count(), 0, "nothing recorded for {bad}");
        }
        let mut l = Ledger::new();
        assert!(matches!(
            l.merge_grants(&[grant("192.0.2.1", 0, t(60))], t(0)),
            Err(ModelError::PortZero { .. })
        ));
        assert!(
            l.set_ban(
                Ban {
                    addr: ip("::"),
                    until: None
                },
                t(0)
            )
            .is_err()
        );
    }

    #[test]
    fn durations_are_capped() {
        let mut l = Ledger::new();
        let far = t(0) + MAX_GRANT_DURATION * 3;
        let m = l
            .merge_grants(&[grant("192.0.2.1", 22, far)], t(0))
            .unwrap();
        assert_eq!(m.apply[0].until, t(0) + MAX_GRANT_DURATION);
    }

    #[test]
    fn banned_addresses_get_no_grants() {
        let mut l = Ledger::new();
        l.set_ban(
            Ban {
                addr: ip("192.0.2.9"),
                until: Some(t(100)),
            },
            t(0),
        )
        .unwrap();
        let m = l
            .merge_grants(
                &[grant("192.0.2.9", 22, t(60)), grant("192.0.2.1", 22, t(60))],
                t(0),
            )
            .unwrap();
        assert_eq!(m.apply, vec![grant("192.0.2.1", 22, t(60))]);
        assert_eq!(m.refused_banned.len(), 1);
        // After the ban expires the address may be granted again.
        assert!(!l.is_banned(ip("192.0.2.9"), t(100)));
        let m = l
            .merge_grants(&[grant("192.0.2.9", 22, t(160))], t(100))
            .unwrap();
        assert_eq!(m.apply.len(), 1);
    }

    #[test]
    fn take_expired_honours_keep_and_ban_expiry() {
        let mut l = Ledger::new();
        l.merge_grants(
            &[
                grant("192.0.2.1", 22, t(10)),
                grant("192.0.2.2", 22, t(10)),
                grant("192.0.2.3", 22, t(100)),
            ],
            t(0),
        )
        .unwrap();
        l.set_ban(
            Ban {
                addr: ip("2001:db8::1"),
                until: Some(t(10)),
            },
            t(0),
        )
        .unwrap();
        l.set_ban(
            Ban {
                addr: ip("2001:db8::2"),
                until: None,
            },
            t(0),
        )
        .unwrap();
        assert!(l.take_expired(t(5), |_| false).is_empty());
        let kept = ip("192.0.2.2");
        let e = l.take_expired(t(10), |k| k.addr == kept);
        assert_eq!(e.grants.len(), 1);
        assert_eq!(e.grants[0].addr, ip("192.0.2.1"));
        assert_eq!(e.bans, vec![ip("2001:db8::1")]);
        // The kept grant goes once nothing holds it any more.
        let e = l.take_expired(t(20), |_| false);
        assert_eq!(e.grants[0].addr, kept);
        assert_eq!(l.grant_count(), 1);
        assert_eq!(l.ban_count(), 1);
        assert!(l.is_banned(ip("2001:db8::2"), t(1_000_000)));
    }

    #[test]
    fn owners_follow_the_last_knock_and_revoke_only_their_own() {
        let alice = Owner::new(UserId([1; 16]), "alice");
        let bob = Owner::new(UserId([2; 16]), "bob");
        let mut l = Ledger::new();
        let mut g = grant("192.0.2.1", 22, t(60));
        g.owner = Some(alice);
        let mut h = grant("192.0.2.1", 443, t(60));
        h.owner = Some(bob);
        l.merge_grants(&[g, h], t(0)).unwrap();
        // Bob knocks for tcp/22 too (same NAT address): he owns it now.
        let mut g2 = grant("192.0.2.1", 22, t(30));
        g2.owner = Some(bob);
        let merged = l.merge_grants(&[g2], t(1)).unwrap();
        assert_eq!(merged.apply[0].owner, Some(bob));
        assert_eq!(merged.apply[0].until, t(60), "a refresh never shortens");
        // A grant without an owner (read back from an old file) keeps the known one.
        l.insert_grant(grant("192.0.2.1", 22, t(10)), t(1));
        assert_eq!(l.grants().next().unwrap().owner, Some(bob));
        // Alice removed: nothing of hers is left, bob's grants from the same address stay.
        assert!(l.remove_owned_by(&[alice.user]).is_empty());
        assert_eq!(l.remove_owned_by(&[bob.user]).len(), 2);
        assert_eq!(l.grant_count(), 0);
    }

    #[test]
    fn owner_comments_round_trip_and_refuse_anything_else() {
        let o = Owner::new(UserId([0xab; 16]), "alice.smith@corp");
        let c = o.to_comment();
        assert_eq!(c, format!("capyknock:{}:alice.smith@corp", "ab".repeat(16)));
        assert_eq!(Owner::from_comment(&c), Some(o));
        for bad in [
            "",
            "capyknock:",
            "capyknock:zz:alice",
            "other:abab:x",
            "capyknock:ab:alice",
        ] {
            assert_eq!(Owner::from_comment(bad), None, "{bad}");
        }
        let long = Owner::new(UserId([1; 16]), &"x".repeat(40));
        assert_eq!(long.nickname().len(), MAX_NICKNAME_LEN);
        let bad_nick = format!("capyknock:{}:a b", "01".repeat(16));
        assert_eq!(Owner::from_comment(&bad_nick), None);
    }

    #[test]
    fn remove_addr_takes_all_ports() {
        let mut l = Ledger::new();
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        l.merge_grants(
            &[
                grant("2001:db8::1", 22, t(10)),
                grant("2001:db8::1", 443, t(10)),
                grant("192.0.2.3", 22, t(10)),
            ],
            t(0),
        )
        .unwrap();
        assert_eq!(l.remove_addr(v6).len(), 2);
        assert_eq!(l.grant_count(), 1);
        assert!(l.remove_addr(v6).is_empty());
    }

    #[test]
    fn restore_entries_undoes_a_merge() {
        let mut l = Ledger::new();
        l.merge_grants(&[grant("192.0.2.1", 22, t(60))], t(0))
            .unwrap();
        let before = l.clone();
        let batch = [
            grant("192.0.2.1", 22, t(120)),
            grant("192.0.2.2", 22, t(60)),
        ];
        let saved = l.clone_entries(&batch);
        l.merge_grants(&batch, t(1)).unwrap();
        assert_ne!(l, before);
        l.restore_entries(saved);
        assert_eq!(l, before);
    }

    #[test]
    fn rounding_up() {
        assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(Duration::from_millis(1500)), 1500);
        assert_eq!(ceil_millis(Duration::from_nanos(1_500_000_001)), 1501);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::from_mins(1)), 60);
        assert_eq!(ceil_secs(Duration::from_millis(60_001)), 61);
    }

    #[test]
    fn ledger_bound() {
        let mut l = Ledger::new();
        let many: Vec<PortGrant> = (0..MAX_GRANTS as u32)
            .map(|i| PortGrant {
                addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                protocol: Protocol::Tcp,
                port: 22,
                until: t(60),
                owner: None,
            })
            .collect();
        l.merge_grants(&many, t(0)).unwrap();
        assert!(matches!(
            l.merge_grants(&[grant("192.0.2.1", 22, t(60))], t(0)),
            Err(ModelError::Full { .. })
        ));
        // Refreshing existing entries is still fine when full.
        l.merge_grants(&many[..10], t(1)).unwrap();
    }

    proptest::proptest! {
        #[test]
        fn merge_never_shortens(a in 1u64..10_000, b in 1u64..10_000, now in 0u64..5_000) {
            let mut l = Ledger::new();
            let _ = l.merge_grants(&[grant("192.0.2.1", 22, t(a))], t(0)).unwrap();
            let m = l.merge_grants(&[grant("192.0.2.1", 22, t(b))], t(now)).unwrap();
            if b > now {
                let expect = if a > now { a.max(b) } else { b };
                proptest::prop_assert_eq!(m.apply[0].until, t(expect));
            } else {
                proptest::prop_assert!(m.apply.is_empty());
            }
        }
    }
}
