//! How far behind the store each fleet watch (bans, group grants) is, for `status`.
//!
//! A watch that receives nothing may be current (nothing changed) or stuck (a member that lost
//! its peers, a half-open connection): silence does not tell. So [`TrackedWatch`] asks etcd
//! for the watch's progress every [`PROGRESS_INTERVAL`] (`WatchProgressRequest`, etcd 3.4 and
//! later); etcd answers only once the watch has delivered every change up to the store's
//! current revision. The watch's lag is the time that answer took, or, while an answer is
//! overdue, how long it has been awaited: a few milliseconds when all is well, growing without
//! bound when the watch is stuck.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{WatchResponse, WatchStream};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use crate::server::status::WatchStatus;

/// How often a watch asks for its progress.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// One watch's progress, shared between the watch's task and `status`.
#[derive(Debug)]
pub struct WatchTracker {
    name: &'static str,
    state: Mutex<Progress>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// A watch stream is open now.
    watching: bool,
    /// When the progress request still unanswered was sent.
    asked: Option<Instant>,
    /// How long the last answered request took.
    last_lag: Option<Duration>,
}

impl WatchTracker {
    #[must_use]
    pub fn new(name: &'static str) -> Arc<Self> {
        Arc::new(Self {
            name,
            state: Mutex::new(Progress::default()),
        })
    }

    /// The watch's name (`bans`, `group grants`).
    #[must_use]
    pub const fn name(&self) -> &'static str {
        self.name
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut state) = self.state.lock() {
            f(&mut state);
        }
    }

    /// A watch stream was opened (and has caught up) or has ended.
    pub fn set_watching(&self, watching: bool) {
        self.update(|p| {
            *p = Progress {
                watching,
                ..Progress::default()
            };
        });
    }

    fn asking(&self, now: Instant) {
        self.update(|p| {
            // An older request still unanswered keeps its time: the lag keeps growing.
            p.asked.get_or_insert(now);
        });
    }

    fn answered(&self, now: Instant) {
        self.update(|p| {
            if let Some(asked) = p.asked.take() {
                p.last_lag = Some(now.saturating_duration_since(asked));
            }
        });
    }

    /// What `status` shows for this watch at `now`.
    #[must_use]
    pub fn status(&self, now: Instant) -> WatchStatus {
        let p = self.state.lock().map(|p| *p).unwrap_or_default();
        let waiting = p.asked.map(|asked| now.saturating_duration_since(asked));
        // An answer overdue longer than the last one took is the lag now.
        let lag = match (waiting, p.last_lag) {
            (Some(w), Some(last)) => Some(w.max(last)),
            (Some(w), None) if w > PROGRESS_INTERVAL => Some(w),
            (None | Some(_), last) => last,
        };
        WatchStatus {
            name: self.name.to_owned(),
            watching: p.watching,
            lag_ms: lag.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// A watch stream that asks for its progress while it waits for events.
pub struct TrackedWatch {
    stream: WatchStream,
    tracker: Arc<WatchTracker>,
    tick: Interval,
}

impl std::fmt::Debug for TrackedWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedWatch")
            .field("tracker", &self.tracker)
            .finish_non_exhaustive()
    }
}

impl TrackedWatch {
    /// Wraps `stream` (which has caught up: its catch-up read was applied).
    #[must_use]
    pub fn new(stream: WatchStream, tracker: Arc<WatchTracker>) -> Self {
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tracker.set_watching(true);
        Self {
            stream,
            tracker,
            tick,
        }
    }

    /// The next response that carries events; `Ok(None)` when etcd ended the stream. A
    /// cancelled watch (compaction, lost leader) is an error.
    pub async fn next(&mut self) -> Result<Option<WatchResponse>, etcd_client::Error> {
        loop {
            tokio::select! {
                message = self.stream.message() => {
                    let Some(resp) = message? else { return Ok(None) };
                    if resp.canceled() {
                        return Err(etcd_client::Error::WatchError(
                            resp.cancel_reason().to_owned(),
                        ));
                    }
                    if !resp.events().is_empty() {
                        return Ok(Some(resp));
                    }
                    if !resp.created() {
                        // A progress notification: every change up to now was delivered.
                        self.tracker.answered(Instant::now());
                    }
                }
                _ = self.tick.tick() => {
                    self.tracker.asking(Instant::now());
                    self.stream.request_progress().await?;
                }
            }
        }
    }
}

impl Drop for TrackedWatch {
    fn drop(&mut self) {
        self.tracker.set_watching(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_last_answer_time_or_the_overdue_wait() {
        let t0 = Instant::now();
        let tracker = WatchTracker::new("bans");
        assert_eq!(tracker.status(t0).lag_ms, None, "never asked");
        tracker.set_watching(true);
        tracker.asking(t0);
        tracker.answered(t0 + Duration::from_millis(4));
        let s = tracker.status(t0 + Duration::from_millis(10));
        assert!(s.watching);
        assert_eq!(s.lag_ms, Some(4));
        // Asked again and not answered: the lag is the wait once it exceeds the last answer.
        let t1 = t0 + Duration::from_secs(1);
        tracker.asking(t1);
        assert_eq!(
            tracker.status(t1 + Duration::from_millis(2)).lag_ms,
            Some(4)
        );
        // A second request while the first is unanswered does not reset the clock.
        tracker.asking(t1 + Duration::from_secs(1));
        assert_eq!(
            tracker.status(t1 + Duration::from_secs(5)).lag_ms,
            Some(5000)
        );
        tracker.answered(t1 + Duration::from_secs(6));
        assert_eq!(
            tracker.status(t1 + Duration::from_secs(7)).lag_ms,
            Some(6000)
        );
        tracker.set_watching(false);
        let s = tracker.status(t1 + Duration::from_secs(8));
        assert!(!s.watching);
        assert_eq!(s.lag_ms, None);
    }

    #[test]
    fn a_first_request_unanswered_for_long_shows_as_lag() {
        let t0 = Instant::now();
        let tracker = WatchTracker::new("group grants");
        tracker.set_watching(true);
        tracker.asking(t0);
        assert_eq!(tracker.status(t0 + Duration::from_millis(500)).lag_ms, None);
        assert_eq!(
            tracker.status(t0 + Duration::from_secs(3)).lag_ms,
            Some(3000)
        );
    }
}
