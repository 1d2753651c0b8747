//! Rate limiting for knock candidates: a token bucket in its GCRA form (generic cell rate
//! algorithm), shared by the XDP program and the userspace pre-filter.
//!
//! GCRA keeps one number per bucket, the "theoretical arrival time" (TAT): when the bucket would
//! be full again if no packet came. A packet is allowed while the TAT is at most `tolerance`
//! ahead of now, and each allowed packet pushes the TAT one `interval` further. That is exactly a
//! token bucket refilling one token per `interval` with room for `burst` tokens, but it needs no
//! division in the kernel and a single `u64` of state, so a bucket fits an LRU map value and
//! an update is one read and one write.

/// Nanoseconds per second.
pub const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// A rate limit in kernel form. `interval_ns == 0` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct RateLimit {
    /// Nanoseconds per token: `1e9 / rate`.
    pub interval_ns: u64,
    /// How far ahead of now the TAT may run: `interval * (burst - 1)`.
    pub tolerance_ns: u64,
}

impl RateLimit {
    /// No limit at all.
    pub const UNLIMITED: Self = Self {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `per_second` packets per second on average with bursts of up to `burst` packets
    /// (`burst` 0 counts as 1). `per_second` 0 means unlimited.
    #[must_use]
    pub const fn new(per_second: u32, burst: u32) -> Self {
        if per_second == 0 {
            return Self::UNLIMITED;
        }
        let interval_ns = NANOS_PER_SECOND / per_second as u64;
        // Rates above 1e9/s round to 1 ns, which is as good as unlimited but stays a limit.
        let interval_ns = if interval_ns == 0 { 1 } else { interval_ns };
        let extra = if burst == 0 { 0 } else { burst as u64 - 1 };
        Self {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(extra),
        }
    }

    /// Whether this limit lets everything through.
    #[must_use]
    pub const fn is_unlimited(&self) -> bool {
        self.interval_ns == 0
    }
}

/// Decides one packet against the bucket whose TAT is `tat` at time `now_ns`, updating `tat` if
/// the packet is allowed. A new bucket starts with `tat == 0`.
#[inline(always)]
pub fn allow(tat: &mut u64, now_ns: u64, limit: &RateLimit) -> bool {
    if limit.interval_ns == 0 {
        return true;
    }
    let start = if *tat > now_ns { *tat } else { now_ns };
    if start - now_ns > limit.tolerance_ns {
        return false;
    }
    *tat = start.saturating_add(limit.interval_ns);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SECOND;

    fn burst_at(tat: &mut u64, now: u64, limit: &RateLimit) -> usize {
        (0..1000).take_while(|_| allow(tat, now, limit)).count()
    }

    #[test]
    fn burst_then_refill() {
        let limit = RateLimit::new(10, 5);
        let mut tat = 0;
        let t0 = 1000 * SEC;
        assert_eq!(burst_at(&mut tat, t0, &limit), 5);
        // One token back every 100 ms.
        assert!(!allow(&mut tat, t0 + SEC / 10 - 1, &limit));
        assert!(allow(&mut tat, t0 + SEC / 10, &limit));
        assert!(!allow(&mut tat, t0 + SEC / 10, &limit));
        // After a long pause the bucket is full again, never fuller.
        assert_eq!(burst_at(&mut tat, t0 + 100 * SEC, &limit), 5);
    }

    #[test]
    fn sustained_rate_is_respected() {
        let limit = RateLimit::new(100, 1);
        let mut tat = 0;
        let allowed = (0..10_000u64)
            .filter(|i| allow(&mut tat, SEC + i * SEC / 1000, &limit))
            .count();
        // 10 s at 1000 offers/s, 100/s allowed.
        assert!((999..=1001).contains(&allowed), "{allowed}");
    }

    #[test]
    fn unlimited_and_zero_burst() {
        let mut tat = 0;
        assert!(RateLimit::new(0, 7).is_unlimited());
        assert_eq!(burst_at(&mut tat, 5, &RateLimit::UNLIMITED), 1000);
        assert_eq!(tat, 0);
        assert_eq!(burst_at(&mut tat, SEC, &RateLimit::new(1, 0)), 1);
        let huge = RateLimit::new(u32::MAX, u32::MAX);
        assert_eq!(huge.interval_ns, 1);
    }

    #[test]
    fn time_going_backwards_does_not_panic() {
        let limit = RateLimit::new(1, 1);
        let mut tat = u64::MAX - 1;
        assert!(!allow(&mut tat, 0, &limit));
        let mut tat = u64::MAX;
        assert!(allow(&mut tat, u64::MAX, &limit));
        assert_eq!(tat, u64::MAX);
    }

    proptest::proptest! {
        #[test]
        fn never_more_than_burst_plus_rate(
            rate in 1u32..1000, burst in 1u32..50,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..300)
        ) {
            let limit = RateLimit::new(rate, burst);
            let mut tat = 0;
            let mut now = SEC;
            let mut allowed = 0u64;
            for gap in &gaps {
                now += gap;
                allowed += u64::from(allow(&mut tat, now, &limit));
            }
            let elapsed = now - SEC;
            let bound = u64::from(burst) + elapsed / limit.interval_ns + 1;
            proptest::prop_assert!(allowed <= bound, "{allowed} > {bound}");
        }
    }
}
