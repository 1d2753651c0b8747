//! Replay defence: each user's codes are used in increasing order, and never twice.
//!
//! RFC 6238 section 5.2: a verifier must not accept the second attempt of the same OTP. For
//! every user the state keeps the highest TOTP step that user has used (and the id of the
//! packet that used it), and refuses any knock whose code is for that step or an earlier one.
//! Nothing is ever forgotten because time passed, so a server clock stepped forward and back
//! (NTP, a resumed VM) cannot bring a used code back: the decision needs no clock at all.
//!
//! The state is one small record per user ([`Used`]), at most [`CAPACITY`] of them. Records of
//! users removed from the configuration are kept (a user added back cannot replay an old knock);
//! when the state is full, the record with the lowest step is evicted and raises a **floor**
//! that every user without a record must stay above. Evicting is always safe (the floor covers
//! the evicted user), and the lowest step is the oldest, so the floor stays far behind the
//! current step and never refuses a fresh knock.
//!
//! After a start whose saved state was missing or damaged, [`ReplayState::safe_start`] refuses
//! every knock whose (authenticated) timestamp is older than the start, since the lost state
//! might have held it.
//!
//! The daemon makes each new record durable before the firewall opens (`server::replay_store`).

use std::collections::HashMap;

use super::{keys::UserId, payload::PacketId};

/// Most records kept: twice the users a configuration may hold, so evictions happen only after
/// many users came and went.
pub const CAPACITY: usize = 2 * capyknock_common::maps::USERS_MAX as usize;

/// Why the replay state refuses a knock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// This user already used this step's code, or a later one.
    StepUsed,
    /// This exact packet was the user's last accepted knock.
    PacketUsed,
    /// The packet was made before a start that found no usable saved state.
    BeforeStart,
}

/// The last knock a user was charged for: the TOTP step whose code it carried and its packet
/// id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// The user.
    pub user: UserId,
    /// The highest TOTP step (Unix time / 30) this user has used.
    pub step: u64,
    /// The id of the packet that used it.
    pub packet_id: PacketId,
}

/// The replay state. See the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayState {
    /// Knocks with a client timestamp before this (Unix seconds) are refused.
    not_before: u64,
    /// Users without a record must use a step above this.
    floor_step: u64,
    /// Every user's last use.
    used: HashMap<UserId, Used>,
}

impl ReplayState {
    /// A state for a start with no (usable) saved state: refuses every knock whose timestamp is
    /// before `now_unix`, since a packet sent earlier could have been accepted by the previous
    /// run and its record lost.
    #[must_use]
    pub fn safe_start(now_unix: u64) -> Self {
        Self {
            not_before: now_unix,
            ..Self::default()
        }
    }

    /// A state rebuilt from saved parts. A user listed twice keeps the higher step.
    #[must_use]
    pub fn from_parts(
        not_before: u64,
        floor_step: u64,
        used: impl IntoIterator<Item = Used>,
    ) -> Self {
        let mut state = Self {
            not_before,
            floor_step,
            used: HashMap::new(),
        };
        for u in used {
            let keep = state.used.get(&u.user).is_none_or(|old| old.step < u.step);
            if keep {
                state.used.insert(u.user, u);
            }
        }
        state
    }

    /// Knocks with a client timestamp before this are refused.
    #[must_use]
    pub fn not_before(&self) -> u64 {
        self.not_before
    }

    /// Users without a record must use a step above this.
    #[must_use]
    pub fn floor_step(&self) -> u64 {
        self.floor_step
    }

    /// Number of users with a record.
    #[must_use]
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether no user has a record.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }

    /// Every user's last use, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Used> {
        self.used.values()
    }

    /// `user`'s last use, if any.
    #[must_use]
    pub fn last_used(&self, user: &UserId) -> Option<&Used> {
        self.used.get(user)
    }

    /// Whether a knock by `user` with the code of `step`, packet id `packet_id` and client
    /// timestamp `timestamp` may still be accepted. Changes nothing.
    pub fn check(
        &self,
        user: &UserId,
        step: u64,
        packet_id: &PacketId,
        timestamp: u64,
    ) -> Result<(), ReplayError> {
        if timestamp < self.not_before {
            return Err(ReplayError::BeforeStart);
        }
        match self.used.get(user) {
            Some(last) if last.packet_id == *packet_id => Err(ReplayError::PacketUsed),
            Some(last) if step <= last.step => Err(ReplayError::StepUsed),
            None if step <= self.floor_step => Err(ReplayError::StepUsed),
            _ => Ok(()),
        }
    }

    /// Charges `user` for the code of `step` (which [`check`](Self::check) accepted) and
    /// returns the record to make durable. When the state is full and `user` has no record,
    /// the record with the lowest step is evicted first and the floor raised to its step.
    pub fn record(&mut self, user: UserId, step: u64, packet_id: PacketId) -> Used {
        if self.used.len() >= CAPACITY && !self.used.contains_key(&user) {
            self.evict_lowest();
        }
        let record = Used {
            user,
            step,
            packet_id,
        };
        self.used.insert(user, record);
        record
    }

    /// Drops the record with the lowest step, raising the floor to it.
    fn evict_lowest(&mut self) {
        let lowest = self.used.values().min_by_key(|u| u.step).copied();
        if let Some(u) = lowest {
            self.floor_step = self.floor_step.max(u.step);
            self.used.remove(&u.user);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::totp::step_of;

    const NOW: u64 = 1_700_000_000;
    const ALICE: UserId = UserId([1; 16]);
    const BOB: UserId = UserId([2; 16]);

    fn id(n: u8) -> PacketId {
        PacketId([n; 16])
    }

    #[test]
    fn a_code_is_used_once_and_only_later_codes_follow() {
        let mut s = ReplayState::safe_start(0);
        let step = step_of(NOW);
        assert_eq!(s.check(&ALICE, step, &id(1), NOW), Ok(()));
        s.record(ALICE, step, id(1));
        assert_eq!(
            s.check(&ALICE, step, &id(1), NOW),
            Err(ReplayError::PacketUsed)
        );
        assert_eq!(
            s.check(&ALICE, step, &id(2), NOW),
            Err(ReplayError::StepUsed)
        );
        assert_eq!(
            s.check(&ALICE, step - 1, &id(3), NOW),
            Err(ReplayError::StepUsed)
        );
        assert_eq!(s.check(&ALICE, step + 1, &id(4), NOW), Ok(()));
        // Other users are independent.
        assert_eq!(s.check(&BOB, step, &id(5), NOW), Ok(()));
    }

    #[test]
    fn nothing_is_forgotten_when_the_clock_moves() {
        // The check takes no clock: however far "now" moves, a used step stays used.
        let mut s = ReplayState::safe_start(0);
        s.record(ALICE, 100, id(1));
        for timestamp in [0, 3_000, NOW, NOW + 600, u64::MAX] {
            assert_eq!(
                s.check(&ALICE, 100, &id(2), timestamp),
                Err(ReplayError::StepUsed)
            );
            assert_eq!(
                s.check(&ALICE, 99, &id(2), timestamp),
                Err(ReplayError::StepUsed)
            );
        }
    }

    #[test]
    fn safe_start_refuses_older_knocks() {
        let s = ReplayState::safe_start(NOW);
        assert_eq!(
            s.check(&ALICE, 1, &id(0), NOW - 1),
            Err(ReplayError::BeforeStart)
        );
        assert_eq!(s.check(&ALICE, 1, &id(0), NOW), Ok(()));
    }

    #[test]
    fn a_full_state_evicts_the_oldest_record_under_a_floor() {
        let mut s = ReplayState::safe_start(0);
        for i in 0..CAPACITY {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            s.record(UserId(id), 1_000 + i as u64, PacketId([1; 16]));
        }
        let oldest = UserId([0; 16]);
        assert_eq!(s.len(), CAPACITY);
        // A new user pushes out the record with the lowest step, which becomes the floor.
        s.record(UserId([0xee; 16]), 5_000, PacketId([2; 16]));
        assert_eq!(s.len(), CAPACITY);
        assert!(s.last_used(&oldest).is_none());
        assert_eq!(s.floor_step(), 1_000);
        // The evicted user still cannot reuse that step; a later one works.
        assert_eq!(
            s.check(&oldest, 1_000, &id(9), NOW),
            Err(ReplayError::StepUsed)
        );
        assert_eq!(s.check(&oldest, 1_001, &id(9), NOW), Ok(()));
    }

    #[test]
    fn from_parts_keeps_the_highest_step_per_user() {
        let s = ReplayState::from_parts(
            7,
            3,
            [
                Used {
                    user: ALICE,
                    step: 10,
                    packet_id: id(1),
                },
                Used {
                    user: ALICE,
                    step: 12,
                    packet_id: id(2),
                },
                Used {
                    user: ALICE,
                    step: 11,
                    packet_id: id(3),
                },
            ],
        );
        assert_eq!(s.not_before(), 7);
        assert_eq!(s.floor_step(), 3);
        assert_eq!(s.last_used(&ALICE).map(|u| u.step), Some(12));
        assert_eq!(s.len(), 1);
    }
}
