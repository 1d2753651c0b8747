//! The XDP program's log records (aya-log), forwarded into `tracing`, rate-limited.
//!
//! The program writes a record only for rare events (the ring buffer full, a map update that
//! failed, the self-test at start), at most one per second per kind and CPU; nothing per packet
//! (an early test that logged every event saturated the consumer). This side reads the records
//! with tokio's `AsyncFd`, so it sleeps until one arrives, and forwards at most
//! [`MAX_PER_MINUTE`] a minute into `tracing` (target `capyknock::xdp`), saying how many it held
//! back.

use std::{
    os::fd::AsRawFd as _,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::JoinHandle,
};

/// Most records forwarded per minute; the rest are counted and reported with the next one.
pub const MAX_PER_MINUTE: u32 = 20;

/// Why the log records cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum XdpLogError {
    /// The object has no log ring buffer, or it cannot be opened.
    #[error("cannot open the XDP program's log records")]
    Open(#[source] aya_log::Error),
    /// The ring buffer cannot be watched.
    #[error("cannot watch the XDP program's log records")]
    Watch(#[source] std::io::Error),
}

/// Forwards records until dropped.
#[derive(Debug)]
pub struct LogForwarder {
    task: JoinHandle<()>,
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts forwarding the records of the program in `ebpf` into `tracing` (takes its `AYA_LOGS`
/// map). Must run inside a tokio runtime.
pub fn forward(ebpf: &mut Ebpf) -> Result<LogForwarder, XdpLogError> {
    let logger =
        EbpfLogger::init_with_logger(ebpf, RateLimitedTracing::new()).map_err(XdpLogError::Open)?;
    let fd = logger.as_raw_fd();
    // SAFETY: the logger owns its ring buffer's fd; it stays open and the same for as long as
    // the `AsyncFd` owns the logger.
    let mut watched = unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) }
        .map_err(|e| XdpLogError::Watch(e.into_parts().1))?;
    tracing::debug!(fd, "forwarding the XDP program's log records");
    let task = tokio::spawn(async move {
        loop {
            let Ok(mut guard) = watched.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(LogForwarder { task })
}

/// A `log::Log` that forwards into `tracing`, at most [`MAX_PER_MINUTE`] records a minute.
#[derive(Debug)]
pub struct RateLimitedTracing {
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    sent: u32,
    held_back: u64,
}

impl RateLimitedTracing {
    /// A fresh limiter.
    #[must_use]
    pub fn new() -> Self {
        Self {
            window: Mutex::new(Window {
                start: Instant::now(),
                sent: 0,
                held_back: 0,
            }),
        }
    }

    /// Whether a record may go out at `now`; if so, how many were held back before it.
    fn admit(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        if now.saturating_duration_since(w.start) >= Duration::from_mins(1) {
            w.start = now;
            w.sent = 0;
        }
        if w.sent >= MAX_PER_MINUTE {
            w.held_back = w.held_back.saturating_add(1);
            return None;
        }
        w.sent += 1;
        Some(std::mem::take(&mut w.held_back))
    }
}

impl Default for RateLimitedTracing {
    fn default() -> Self {
        Self::new()
    }
}

impl log::Log for RateLimitedTracing {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let Some(held_back) = self.admit(Instant::now()) else {
            return;
        };
        let message = record.args();
        match record.level() {
            log::Level::Error => {
                tracing::error!(target: "capyknock::xdp", held_back, "XDP: {message}");
            }
            log::Level::Warn => {
                tracing::warn!(target: "capyknock::xdp", held_back, "XDP: {message}");
            }
            log::Level::Info => {
                tracing::info!(target: "capyknock::xdp", held_back, "XDP: {message}");
            }
            log::Level::Debug | log::Level::Trace => {
                tracing::debug!(target: "capyknock::xdp", held_back, "XDP: {message}");
            }
        }
    }

    fn flush(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_per_minute_then_the_count_held_back() {
        let limiter = RateLimitedTracing::new();
        let t0 = Instant::now();
        for _ in 0..MAX_PER_MINUTE {
            assert_eq!(limiter.admit(t0), Some(0));
        }
        for _ in 0..7 {
            assert_eq!(limiter.admit(t0 + Duration::from_secs(30)), None);
        }
        assert_eq!(limiter.admit(t0 + Duration::from_secs(61)), Some(7));
        assert_eq!(limiter.admit(t0 + Duration::from_secs(62)), Some(0));
    }

    #[test]
    fn records_reach_tracing_without_panicking() {
        let limiter = RateLimitedTracing::new();
        log::Log::log(
            &limiter,
            &log::Record::builder()
                .level(log::Level::Warn)
                .args(format_args!("ring buffer full"))
                .build(),
        );
        log::Log::flush(&limiter);
    }
}
