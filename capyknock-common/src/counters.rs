//! The per-CPU verdict counters kept by the XDP program (and by the userspace pre-filter in the
//! fallback capture modes), one slot per [`Counter`].
//!
//! Every frame gets exactly one verdict. [`Counter::NotKnock`] frames pass to the network stack
//! untouched; every other verdict is a UDP datagram to a knock port, which is always dropped
//! (only [`Counter::Delivered`] ones reach userspace, through the ring buffer). The verdicts are
//! listed in the order the pre-filter checks them.

/// What happened to one frame. The discriminant is the index into the `COUNTERS` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, strum::VariantArray)]
#[repr(u32)]
pub enum Counter {
    /// Not UDP to a knock port: passed on to the stack untouched.
    NotKnock = 0,
    /// UDP to a knock port that cannot be a knock whatever its bytes: an IP fragment, a UDP
    /// length that disagrees with the IP length, or a frame shorter than its headers announce.
    Malformed = 1,
    /// UDP payload is not exactly `wire::KNOCK_LEN` bytes.
    WrongSize = 2,
    /// Wrong magic, protocol version or non-zero reserved bytes.
    BadHeader = 3,
    /// User id not in the users map.
    UnknownUser = 4,
    /// Time step more than one step away from the current one.
    StaleStep = 5,
    /// The pre-filter tag does not match the header under the user's tag key.
    BadTag = 6,
    /// The same tag was seen recently (a retransmission or a replay).
    Duplicate = 7,
    /// Over the rate limit of its user (one key spends only its own share).
    RateLimitedUser = 8,
    /// Over the per-source rate limit of its user (IPv4 address or IPv6 /64, per user).
    RateLimitedSource = 9,
    /// Over the global rate limit.
    RateLimitedGlobal = 10,
    /// A valid candidate, but the ring buffer (or userspace queue) was full.
    RingFull = 11,
    /// A candidate handed to userspace.
    Delivered = 12,
}

impl Counter {
    /// Every counter, in index order (derived from the declaration, so none can be left out).
    pub const ALL: &'static [Counter] = <Self as strum::VariantArray>::VARIANTS;

    /// Number of counters, the size of the `COUNTERS` map.
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// Index into the `COUNTERS` map.
    #[must_use]
    pub const fn index(self) -> u32 {
        self as u32
    }

    /// Stable snake_case name, used in `status` output and logs.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Counter::NotKnock => "not_knock",
            Counter::Malformed => "malformed",
            Counter::WrongSize => "wrong_size",
            Counter::BadHeader => "bad_header",
            Counter::UnknownUser => "unknown_user",
            Counter::StaleStep => "stale_step",
            Counter::BadTag => "bad_tag",
            Counter::Duplicate => "duplicate",
            Counter::RateLimitedUser => "rate_limited_user",
            Counter::RateLimitedSource => "rate_limited_source",
            Counter::RateLimitedGlobal => "rate_limited_global",
            Counter::RingFull => "ring_full",
            Counter::Delivered => "delivered",
        }
    }

    /// The counter with this [`name`](Self::name).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Counter> {
        let mut i = 0;
        while let Some(c) = Self::ALL.get(i) {
            if c.name().as_bytes() == name.as_bytes() {
                return Some(*c);
            }
            i += 1;
        }
        None
    }

    /// The counter at `index`.
    #[must_use]
    pub fn from_index(index: u32) -> Option<Counter> {
        Self::ALL.get(index as usize).copied()
    }

    /// Whether a frame with this verdict passes to the network stack. Only
    /// [`Counter::NotKnock`] does: UDP to a knock port is always dropped.
    #[must_use]
    pub const fn passes(self) -> bool {
        matches!(self, Counter::NotKnock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
            assert_eq!(Counter::from_index(c.index()), Some(*c));
        }
        assert_eq!(Counter::ALL.len(), Counter::COUNT as usize);
        assert_eq!(Counter::from_index(Counter::COUNT), None);
    }

    #[test]
    fn names_are_unique_snake_case_and_round_trip() {
        for &a in Counter::ALL {
            assert!(
                a.name()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_')
            );
            assert_eq!(Counter::from_name(a.name()), Some(a));
            for &b in Counter::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
        assert_eq!(Counter::from_name("knock_dropped"), None);
    }

    #[test]
    fn only_not_knock_passes() {
        let passing: std::vec::Vec<_> = Counter::ALL
            .iter()
            .copied()
            .filter(|c| c.passes())
            .collect();
        assert_eq!(passing, [Counter::NotKnock]);
    }
}
