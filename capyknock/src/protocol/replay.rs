//! Replay defence: which (user, TOTP step) pairs and which packet ids have already opened
//! something, and the moment before which nothing is accepted after a start without saved state.
//!
//! RFC 6238 section 5.2: a verifier must not accept the second attempt of the same OTP. So each
//! (user, step) opens at most once, and each packet id at most once. Entries are dropped once no
//! packet carrying them could pass the TOTP window or the freshness check any more, so the state
//! stays small: a few entries per user. Only packets that passed every cryptographic check add
//! entries, and a hard cap bounds the rest (the verifier then refuses, it never forgets early).
//!
//! The state is serializable ([`ReplaySnapshot`]) so the daemon keeps it across restarts
//! (`server::state`).

use std::collections::{HashMap, HashSet};

use super::{keys::UserId, payload::PacketId, totp::step_of};

/// Most (user, step) entries or packet ids kept. Far above what real users produce (a few per
/// user); reaching it means refusing new grants until entries expire.
pub const MAX_ENTRIES: usize = 1 << 16;

/// Why the replay state refuses a knock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This user's code for this step was already used.
    StepUsed,
    /// This packet id was already used.
    PacketUsed,
    /// The packet was made before the daemon started without saved state.
    BeforeStart,
    /// The state is full.
    Full,
}

/// The replay state. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayState {
    /// Knocks with a client timestamp before this (Unix seconds) are refused.
    not_before: u64,
    /// (user, TOTP step) pairs already accepted.
    steps: HashSet<(UserId, u64)>,
    /// Packet ids already accepted, with the Unix time after which they fail freshness anyway.
    packets: HashMap<PacketId, u64>,
}

impl ReplayState {
    /// A state for a start with no (usable) saved state: refuses every knock whose timestamp is
    /// before `now_unix`, since a packet sent earlier could have been accepted by the previous
    /// run and its record lost.
    #[must_use]
    pub fn safe_start(now_unix: u64) -> Self {
        Self {
            not_before: now_unix,
            steps: HashSet::new(),
            packets: HashMap::new(),
        }
    }

    /// Knocks with a client timestamp before this are refused.
    #[must_use]
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// Number of remembered (user, step) pairs and packet ids.
    #[must_use]
    pub fn len(&self) -> usize {
        self.steps.len() + self.packets.len()
    }

    /// Whether nothing is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.packets.is_empty()
    }

    /// Whether a knock with these values may still be accepted. Changes nothing.
    pub fn check(
        &self,
        user: &UserId,
        totp_step: u64,
        packet_id: &PacketId,
        timestamp: u64,
    ) -> Result<(), ReplayError> {
        if timestamp < self.not_before {
            return Err(ReplayError::BeforeStart);
        }
        if self.steps.contains(&(*user, totp_step)) {
            return Err(ReplayError::StepUsed);
        }
        if self.packets.contains_key(packet_id) {
            return Err(ReplayError::PacketUsed);
        }
        if self.steps.len() >= MAX_ENTRIES || self.packets.len() >= MAX_ENTRIES {
            return Err(ReplayError::Full);
        }
        Ok(())
    }

    /// Remembers an accepted knock. `expires` is the Unix time after which the packet fails the
    /// freshness check by itself.
    pub fn record(&mut self, user: UserId, totp_step: u64, packet_id: PacketId, expires: u64) {
        self.steps.insert((user, totp_step));
        self.packets.insert(packet_id, expires);
    }

    /// Drops entries no knock could match any more at `now_unix`: steps older than the TOTP
    /// window, packet ids past their freshness.
    pub fn prune(&mut self, now_unix: u64) {
        let oldest_step = step_of(now_unix).saturating_sub(capyknock_common::wire::STEP_SKEW);
        self.steps.retain(|&(_, step)| step >= oldest_step);
        self.packets.retain(|_, &mut expires| expires >= now_unix);
    }

    /// The serializable form, entries sorted so the file is stable.
    #[must_use]
    pub fn snapshot(&self) -> ReplaySnapshot {
        let mut steps: Vec<StepEntry> = self
            .steps
            .iter()
            .map(|&(user, step)| StepEntry { user, step })
            .collect();
        steps.sort_unstable_by_key(|e| (e.user, e.step));
        let mut packets: Vec<PacketEntry> = self
            .packets
            .iter()
            .map(|(&id, &expires)| PacketEntry { id, expires })
            .collect();
        packets.sort_unstable_by_key(|e| e.id);
        ReplaySnapshot {
            version: SNAPSHOT_VERSION,
            not_before: self.not_before,
            steps,
            packets,
        }
    }

    /// Restores a saved state, refusing one that is too large or of another version.
    pub fn from_snapshot(snapshot: &ReplaySnapshot) -> Result<Self, SnapshotError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(snapshot.version));
        }
        if snapshot.steps.len() > MAX_ENTRIES || snapshot.packets.len() > MAX_ENTRIES {
            return Err(SnapshotError::TooLarge);
        }
        Ok(Self {
            not_before: snapshot.not_before,
            steps: snapshot.steps.iter().map(|e| (e.user, e.step)).collect(),
            packets: snapshot.packets.iter().map(|e| (e.id, e.expires)).collect(),
        })
    }
}

/// Version of [`ReplaySnapshot`].
pub const SNAPSHOT_VERSION: u32 = 1;

/// The replay state as saved in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaySnapshot {
    /// Layout version, [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// See [`ReplayState::not_before`].
    pub not_before: u64,
    /// Used (user, TOTP step) pairs.
    pub steps: Vec<StepEntry>,
    /// Used packet ids.
    pub packets: Vec<PacketEntry>,
}

/// A used (user, TOTP step) pair.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepEntry {
    /// The user.
    pub user: UserId,
    /// The TOTP step (Unix time / 30) whose code was used.
    pub step: u64,
}

/// A used packet id.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacketEntry {
    /// The id.
    pub id: PacketId,
    /// Unix time after which the packet would fail freshness anyway.
    pub expires: u64,
}

/// Why a saved replay state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Another layout version.
    #[error("replay state has version {0}, this build reads version {SNAPSHOT_VERSION}")]
    Version(u32),
    /// More entries than [`MAX_ENTRIES`].
    #[error("replay state has more than {MAX_ENTRIES} entries")]
    TooLarge,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn a_step_and_a_packet_id_are_used_once() {
        let mut s = ReplayState::safe_start(0);
        let alice = UserId([1; 16]);
        let bob = UserId([2; 16]);
        let step = step_of(NOW);
        assert_eq!(s.check(&alice, step, &PacketId([1; 16]), NOW), Ok(()));
        s.record(alice, step, PacketId([1; 16]), NOW + 90);
        assert_eq!(
            s.check(&alice, step, &PacketId([2; 16]), NOW),
            Err(ReplayError::StepUsed)
        );
        assert_eq!(
            s.check(&bob, step, &PacketId([1; 16]), NOW),
            Err(ReplayError::PacketUsed)
        );
        assert_eq!(s.check(&alice, step + 1, &PacketId([2; 16]), NOW), Ok(()));
        assert_eq!(s.check(&bob, step, &PacketId([2; 16]), NOW), Ok(()));
    }

    #[test]
    fn safe_start_refuses_older_knocks() {
        let s = ReplayState::safe_start(NOW);
        let id = UserId([1; 16]);
        assert_eq!(
            s.check(&id, 1, &PacketId([0; 16]), NOW - 1),
            Err(ReplayError::BeforeStart)
        );
        assert_eq!(s.check(&id, 1, &PacketId([0; 16]), NOW), Ok(()));
    }

    #[test]
    fn prune_keeps_what_could_still_match() {
        let mut s = ReplayState::safe_start(0);
        let id = UserId([1; 16]);
        let step = step_of(NOW);
        s.record(id, step - 2, PacketId([1; 16]), NOW - 1);
        s.record(id, step - 1, PacketId([2; 16]), NOW);
        s.record(id, step, PacketId([3; 16]), NOW + 90);
        s.prune(NOW);
        assert_eq!(s.check(&id, step - 2, &PacketId([9; 16]), NOW), Ok(()));
        assert_eq!(
            s.check(&id, step - 1, &PacketId([9; 16]), NOW),
            Err(ReplayError::StepUsed)
        );
        assert_eq!(s.check(&id, step + 5, &PacketId([1; 16]), NOW), Ok(()));
        assert_eq!(
            s.check(&id, step + 5, &PacketId([2; 16]), NOW),
            Err(ReplayError::PacketUsed)
        );
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn full_state_refuses_instead_of_forgetting() {
        let mut s = ReplayState::safe_start(0);
        for i in 0..MAX_ENTRIES as u64 {
            s.steps.insert((UserId([0; 16]), i));
        }
        assert_eq!(
            s.check(&UserId([1; 16]), 0, &PacketId([0; 16]), NOW),
            Err(ReplayError::Full)
        );
    }

    #[test]
    fn snapshot_round_trip_through_json() {
        let mut s = ReplayState::safe_start(NOW - 100);
        s.record(UserId([1; 16]), 7, PacketId([5; 16]), NOW);
        s.record(UserId([2; 16]), 8, PacketId([6; 16]), NOW + 1);
        let json = serde_json::to_string(&s.snapshot()).unwrap();
        let back = ReplayState::from_snapshot(&serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(
            json.contains("\"01010101010101010101010101010101\""),
            "{json}"
        );
    }

    #[test]
    fn snapshot_checks() {
        let mut snap = ReplayState::safe_start(0).snapshot();
        snap.version = 2;
        assert_eq!(
            ReplayState::from_snapshot(&snap),
            Err(SnapshotError::Version(2))
        );
        let mut snap = ReplayState::safe_start(0).snapshot();
        snap.packets = vec![
            PacketEntry {
                id: PacketId([0; 16]),
                expires: 0
            };
            MAX_ENTRIES + 1
        ];
        assert_eq!(
            ReplayState::from_snapshot(&snap),
            Err(SnapshotError::TooLarge)
        );
    }
}
