//! Daemon logging: the tracing subscriber (stderr, journald-friendly) and the knock log lines,
//! whose format is documented for fail2ban (docs/OPERATIONS.md), with a rate limit so a flood of
//! rejected knocks cannot flood the log.
//!
//! The lines, always with target `capyknock::knock` and fields in this order:
//!
//! ```text
//! INFO capyknock::knock: knock accepted nickname=alice src=198.51.100.4 addr=198.51.100.4 ports=tcp/22 duration=5m
//! WARN capyknock::knock: knock rejected reason=bad_totp src=203.0.113.7 nickname=alice
//! WARN capyknock::knock: knock rejected reason=unknown_user src=203.0.113.7 nickname=-
//! WARN capyknock::knock: rejection log lines suppressed count=1234
//! ```
//!
//! Nothing secret is ever a field: no key, TOTP secret or code.

use std::{
    collections::HashMap,
    net::IpAddr,
    time::{Duration, Instant},
};

use super::config::LogLimits;
use crate::protocol::verify;

/// The tracing target of every knock line; fail2ban filters match on it.
pub const KNOCK_TARGET: &str = "capyknock::knock";

/// Most source addresses the per-source log limiter remembers; beyond that it starts afresh
/// (so its memory is bounded whatever the number of sources).
pub const MAX_TRACKED_SOURCES: usize = 8192;

/// How often a "suppressed" summary line may be written.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

const MINUTE: Duration = Duration::from_mins(1);

/// Sets up tracing for the process (kept here for callers of the daemon's API; the code lives in
/// [`crate::tracing_setup`], shared with the client).
pub fn init() {
    crate::tracing_setup::init();
}

/// Writes the line for an accepted knock: who, from where, what opens for how long.
pub fn accepted(grant: &verify::Access, src: IpAddr) {
    let ports: Vec<String> = grant.ports.iter().map(ToString::to_string).collect();
    tracing::info!(
        target: KNOCK_TARGET,
        nickname = %grant.nickname,
        src = %src,
        addr = %grant.addr,
        ports = %ports.join(","),
        duration = %humantime::format_duration(grant.duration),
        "knock accepted"
    );
}

/// Writes the line for a rejected knock (call only when [`RejectionLimiter::allow`] said so).
/// `reason` is a stable snake_case name; `nickname` is `None` when the user is unknown.
pub fn rejected(reason: &str, src: IpAddr, nickname: Option<&str>) {
    tracing::warn!(
        target: KNOCK_TARGET,
        reason = %reason,
        src = %src,
        nickname = %nickname.unwrap_or("-"),
        "knock rejected"
    );
}

/// Decides which rejection lines are written: at most `per_source_per_minute` per source
/// address (IPv6 counted per /64, as the pre-filter does) and `per_second` overall; counts the
/// rest for a periodic summary line.
#[derive(Debug)]
pub struct RejectionLimiter {
    limits: LogLimits,
    sources: HashMap<IpAddr, (Instant, u32)>,
    tokens: f64,
    refilled: Instant,
    suppressed_pending: u64,
    suppressed_total: u64,
    last_summary: Instant,
}

impl RejectionLimiter {
    /// A limiter starting at `now` with a full budget.
    #[must_use]
    pub fn new(limits: LogLimits, now: Instant) -> Self {
        Self {
            limits,
            sources: HashMap::new(),
            tokens: f64::from(limits.per_second),
            refilled: now,
            suppressed_pending: 0,
            suppressed_total: 0,
            last_summary: now,
        }
    }

    /// Applies new limits (on reload), keeping the counts.
    pub fn set_limits(&mut self, limits: LogLimits) {
        self.limits = limits;
        self.tokens = self.tokens.min(f64::from(limits.per_second));
    }

    /// Whether a rejection line from `src` may be written at `now`.
    pub fn allow(&mut self, src: IpAddr, now: Instant) -> bool {
        let rate = f64::from(self.limits.per_second);
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled = now;

        let key = source_key(src);
        if self.sources.len() >= MAX_TRACKED_SOURCES && !self.sources.contains_key(&key) {
            self.sources
                .retain(|_, (start, _)| now.saturating_duration_since(*start) < MINUTE);
            if self.sources.len() >= MAX_TRACKED_SOURCES {
                self.sources.clear();
            }
        }
        let entry = self.sources.entry(key).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= MINUTE {
            *entry = (now, 0);
        }
        let ok = entry.1 < self.limits.per_source_per_minute && self.tokens >= 1.0;
        if ok {
            entry.1 += 1;
            self.tokens -= 1.0;
        } else {
            self.suppressed_pending += 1;
            self.suppressed_total += 1;
        }
        ok
    }

    /// Lines suppressed since the last summary, when a summary is due at `now` (at most every
    /// [`SUMMARY_INTERVAL`]); the caller logs it with [`suppressed`].
    pub fn take_summary(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed_pending == 0
            || now.saturating_duration_since(self.last_summary) < SUMMARY_INTERVAL
        {
            return None;
        }
        self.last_summary = now;
        Some(std::mem::take(&mut self.suppressed_pending))
    }

    /// Lines suppressed since start.
    #[must_use]
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }
}

/// Writes the summary line for `count` suppressed rejection lines.
pub fn suppressed(count: u64) {
    tracing::warn!(target: KNOCK_TARGET, count, "rejection log lines suppressed");
}

/// The per-source key: the address, or its /64 for IPv6.
fn source_key(src: IpAddr) -> IpAddr {
    match src {
        IpAddr::V4(_) => src,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LogLimits = LogLimits {
        per_source_per_minute: 3,
        per_second: 5,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_source_limit_resets_each_minute() {
        let t0 = Instant::now();
        let mut l = RejectionLimiter::new(LIMITS, t0);
        let a = ip("203.0.113.1");
        let allowed: Vec<bool> = (0..5).map(|_| l.allow(a, t0)).collect();
        assert_eq!(allowed, [true, true, true, false, false]);
        // Another source still gets its lines.
        assert!(l.allow(ip("203.0.113.2"), t0));
        assert!(!l.allow(a, t0 + Duration::from_secs(59)));
        assert!(l.allow(a, t0 + Duration::from_mins(1)));
        assert_eq!(l.suppressed_total(), 3);
    }

    #[test]
    fn global_limit_caps_a_spread_flood() {
        let t0 = Instant::now();
        let mut l = RejectionLimiter::new(LIMITS, t0);
        let allowed = (0..1000u32)
            .filter(|i| l.allow(IpAddr::V4((0x0a00_0000 + i).into()), t0))
            .count();
        assert_eq!(allowed, 5);
        // One second later the budget is back.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (1000..2000u32)
            .filter(|i| l.allow(IpAddr::V4((0x0a00_0000 + i).into()), t1))
            .count();
        assert_eq!(allowed, 5);
        assert_eq!(l.suppressed_total(), 1990);
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let t0 = Instant::now();
        let mut l = RejectionLimiter::new(
            LogLimits {
                per_second: 100,
                ..LIMITS
            },
            t0,
        );
        let allowed = (1..=10)
            .filter(|i| l.allow(ip(&format!("2001:db8:1:2::{i:x}")), t0))
            .count();
        assert_eq!(allowed, 3);
        assert!(l.allow(ip("2001:db8:1:3::1"), t0));
    }

    #[test]
    fn summary_is_periodic_and_drains() {
        let t0 = Instant::now();
        let mut l = RejectionLimiter::new(LIMITS, t0);
        let a = ip("192.0.2.1");
        for _ in 0..10 {
            l.allow(a, t0);
        }
        assert_eq!(l.take_summary(t0 + Duration::from_secs(1)), None);
        assert_eq!(l.take_summary(t0 + SUMMARY_INTERVAL), Some(7));
        assert_eq!(l.take_summary(t0 + SUMMARY_INTERVAL * 3), None);
        assert_eq!(l.suppressed_total(), 7);
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut l = RejectionLimiter::new(
            LogLimits {
                per_source_per_minute: 1,
                per_second: u32::MAX,
            },
            t0,
        );
        for i in 0..(MAX_TRACKED_SOURCES as u32 * 3) {
            l.allow(IpAddr::V4(i.into()), t0);
        }
        assert!(l.sources.len() <= MAX_TRACKED_SOURCES);
    }
}
