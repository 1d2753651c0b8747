//! How a fleet watch (bans, group grants) starts again after it broke: it waits with a growing
//! delay, and not before the store answers the health probe again, and it logs the break once
//! and the recovery once, not one line per attempt.
//!
//! Before, a watch retried every 500 ms and logged a warning each time while etcd was down
//! (about two lines a second for as long as the outage lasted); the store's health probe
//! already reports the outage itself (`FLEET STORE (etcd) UNREACHABLE`).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{store::Store, watch_health::WatchTracker};
use crate::error_chain::ErrorChain;

/// First wait after a break, doubled after each failed attempt up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// Longest wait between two attempts once the store answers again.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// An attempt that ran this long was a working watch: the next break starts from the first
/// delay again.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
/// While a watch keeps failing, one reminder at this interval (at debug level in between).
const REMINDER: Duration = Duration::from_mins(1);

/// The retry state of one watch, with its progress tracker (shown by `status`).
#[derive(Debug)]
pub struct WatchRetry {
    tracker: Arc<WatchTracker>,
    what: &'static str,
    delay: Duration,
    failures: u32,
    last_warning: Option<Instant>,
}

impl WatchRetry {
    /// A watch named in logs and `status` by its tracker's name (`bans`).
    #[must_use]
    pub fn new(tracker: Arc<WatchTracker>) -> Self {
        Self {
            what: tracker.name(),
            tracker,
            delay: FIRST_DELAY,
            failures: 0,
            last_warning: None,
        }
    }

    /// An attempt that started at `started` ended with `error`: log it (the first failure of a
    /// run, then one reminder a minute), then wait for the next attempt: the backoff delay,
    /// and until the store answers its health probe (or `effects_closed` says the daemon
    /// stops).
    pub async fn failed(
        &mut self,
        error: &etcd_client::Error,
        started: Instant,
        store: &Store,
        effects_closed: impl Fn() -> bool,
    ) {
        if started.elapsed() >= HEALTHY_RUN {
            self.delay = FIRST_DELAY;
        }
        self.failures = self.failures.saturating_add(1);
        let remind = self.last_warning.is_none_or(|at| at.elapsed() >= REMINDER);
        if self.failures == 1 || remind {
            tracing::warn!(
                watch = self.what,
                failures = self.failures,
                error = %ErrorChain(error),
                "fleet watch interrupted; catching up again when the store answers"
            );
            self.last_warning = Some(Instant::now());
        } else {
            tracing::debug!(watch = self.what, failures = self.failures, error = %ErrorChain(error), "fleet watch still interrupted");
        }
        tokio::time::sleep(self.delay).await;
        self.delay = next_delay(self.delay);
        while !store.is_healthy() && !effects_closed() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The watch's progress tracker.
    #[must_use]
    pub const fn tracker(&self) -> &Arc<WatchTracker> {
        &self.tracker
    }

    /// The watch caught up again (read everything and is watching): say so once if it had
    /// broken.
    pub fn caught_up(&mut self) {
        if self.failures > 0 {
            tracing::info!(
                watch = self.what,
                failures = self.failures,
                "fleet watch resumed and caught up"
            );
        }
        self.failures = 0;
        self.last_warning = None;
    }
}

/// The wait after `delay`: doubled, at most [`MAX_DELAY`].
fn next_delay(delay: Duration) -> Duration {
    delay.saturating_mul(2).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_up_to_the_cap() {
        let mut delay = FIRST_DELAY;
        let mut seen = vec![delay];
        for _ in 0..8 {
            delay = next_delay(delay);
            seen.push(delay);
        }
        assert_eq!(seen[1], Duration::from_millis(500));
        assert_eq!(seen[2], Duration::from_secs(1));
        assert_eq!(seen.last().copied(), Some(MAX_DELAY));
        assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    }
}
