//! The per-CPU verdict counters kept by the XDP program (and by the userspace pre-filter in the
//! fallback capture modes), one slot per [`Counter`].

/// What happened to one frame. The discriminant is the index into the `COUNTERS` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
pub enum Counter {
    /// Not UDP to a knock port: passed on to the stack untouched.
    NotKnock = 0,
    /// UDP to a knock port: dropped in the kernel.
    KnockDropped = 1,
}

impl Counter {
    /// Number of counters, the size of the `COUNTERS` map.
    pub const COUNT: u32 = 2;

    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [Counter::NotKnock, Counter::KnockDropped];

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
            Counter::KnockDropped => "knock_dropped",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order_and_complete() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index() as usize, i);
        }
        assert_eq!(Counter::ALL.len(), Counter::COUNT as usize);
    }

    #[test]
    fn names_are_unique() {
        for a in Counter::ALL {
            for b in Counter::ALL {
                if a != b {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
