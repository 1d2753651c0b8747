//! `realtime_priority` (`[server]`, off unless set): the threads a knock passes through run
//! under `SCHED_FIFO` at that priority, so that on a busy machine a knock does not wait for
//! whatever else holds the CPU (docs/PERFORMANCE.md, docs/OPERATIONS.md).
//!
//! The knock path, and so the threads that switch (Linux only):
//!
//! - `capyknock-ring` (xdp capture only, [`crate::capture::xdp`]): waits on the XDP ring buffer,
//!   which holds only what the kernel's pre-filter let through, and hands candidates on;
//! - the core: the daemon's main thread, where the runtime's `block_on` runs `daemon::Core`
//!   (verifier, users, bans). A future given to `block_on` never moves to another thread, and
//!   what reaches it is the pre-filter's candidates, bounded by `global_rate`, in every mode;
//! - `capyknock-fw`, the [`worker`](super::worker) thread (firewall, replay store, bans);
//! - the firewall helper process ([`super::privsep`]), single-threaded: the daemon switches it
//!   by its pid right after starting it.
//!
//! Not the tokio runtime's threads (control socket, metrics, fleet, interface following, and
//! the `udp` capture's socket tasks), not the blocking pool, not the `pcap` threads: under `pcap`
//! and `udp` capture every datagram to the knock port reaches those, so a flood of junk would
//! run at real-time priority and could starve the machine. Those modes still raise the core,
//! the worker and the helper (only candidates reach them) and the daemon says, once, that
//! capture stays at normal priority.
//!
//! Every thread ends up with `SCHED_RESET_ON_FORK`: threads and programs it starts (the
//! blocking pool, the exec backend's commands) begin at normal priority. Switching to
//! `SCHED_FIFO` takes `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` of at least the priority (systemd:
//! `LimitRTPRIO=`). The network process gives up `CAP_SYS_NICE` when it enters its sandbox, and
//! the worker starts after that, so the worker inherits the priority instead: the core switches
//! before the sandbox without the flag ([`this_thread_and_its_next`]), starts the worker, and
//! both then add the flag ([`this_thread`]), which the kernel allows without privilege (same
//! policy, same priority); the network filter allows `sched_setscheduler` for that. A switch
//! that fails (no `CAP_SYS_NICE` and no `RLIMIT_RTPRIO`, systemd's `RestrictRealtime=yes`, a
//! container) logs one warning for the whole daemon and the thread carries on at normal
//! priority: never a reason to stop.
//!
//! The one foreign call is `sched_setscheduler(2)` (nix and rustix have no wrapper), here alone.

#![allow(unsafe_code)]

use std::fmt;
#[cfg(target_os = "linux")]
use std::sync::atomic::{AtomicBool, Ordering};

/// The lowest and highest `SCHED_FIFO` priority Linux accepts.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<u8> = 1..=99;

/// A `SCHED_FIFO` priority, 1 to 99.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RealtimePriority(u8);

impl RealtimePriority {
    /// `value` when it is within [`PRIORITY_RANGE`].
    #[must_use]
    pub fn new(value: i64) -> Option<Self> {
        u8::try_from(value)
            .ok()
            .filter(|v| PRIORITY_RANGE.contains(v))
            .map(Self)
    }

    /// The priority as a number.
    #[must_use]
    pub const fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for RealtimePriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The name the XDP ring buffer thread runs under (at most 15 bytes, as Linux keeps them).
pub const RING_THREAD: &str = "capyknock-ring";
/// The name the worker thread runs under.
pub const WORKER_THREAD: &str = "capyknock-fw";

/// Set by the first failure: later ones are logged at debug level only.
#[cfg(target_os = "linux")]
static WARNED: AtomicBool = AtomicBool::new(false);

/// What to tell the admin when a switch fails, once.
#[cfg(target_os = "linux")]
fn warn_once(priority: RealtimePriority, what: &str, err: &dyn fmt::Display) {
    if WARNED.swap(true, Ordering::Relaxed) {
        tracing::debug!(thread = what, error = %err, "no real-time priority");
        return;
    }
    tracing::warn!(
        thread = what,
        error = %err,
        "realtime_priority = {priority}: cannot switch the knock path to SCHED_FIFO, it runs at \
         normal priority; the daemon needs CAP_SYS_NICE at start or an RLIMIT_RTPRIO of at least \
         {priority} (systemd: LimitRTPRIO={priority} and RestrictRealtime=no, \
         docs/OPERATIONS.md)"
    );
}

#[cfg(target_os = "linux")]
mod imp {
    use super::{RealtimePriority, warn_once};

    /// `SCHED_FIFO`, which new threads inherit.
    const INHERITED: libc::c_int = libc::SCHED_FIFO;
    /// `SCHED_FIFO` with `SCHED_RESET_ON_FORK`: new threads and processes start normal.
    const POLICY: libc::c_int = libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK;

    /// `sched_setscheduler(pid, policy, priority)`; `pid` 0 is the calling thread.
    fn set(
        pid: libc::pid_t,
        policy: libc::c_int,
        priority: RealtimePriority,
    ) -> std::io::Result<()> {
        let param = libc::sched_param {
            sched_priority: libc::c_int::from(priority.get()),
        };
        // SAFETY: `param` is a valid, initialised `sched_param` that outlives the call, which
        // only reads it; the call changes scheduling attributes and touches no memory of ours.
        let rc = unsafe { libc::sched_setscheduler(pid, policy, &raw const param) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    pub fn this_thread(priority: RealtimePriority, what: &str, inherited: bool) {
        let policy = if inherited { INHERITED } else { POLICY };
        match set(0, policy, priority) {
            Ok(()) => tracing::debug!(thread = what, %priority, inherited, "running at SCHED_FIFO"),
            Err(err) => warn_once(priority, what, &err),
        }
    }

    pub fn process(priority: RealtimePriority, pid: u32, what: &str) {
        let result = libc::pid_t::try_from(pid)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
            .and_then(|pid| set(pid, POLICY, priority));
        match result {
            Ok(()) => tracing::debug!(process = what, pid, %priority, "running at SCHED_FIFO"),
            Err(err) => warn_once(priority, what, &err),
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::RealtimePriority;

    pub fn check_platform(priority: RealtimePriority) {
        tracing::warn!(
            "realtime_priority = {priority}: real-time priority is only available on Linux; \
             ignored"
        );
    }

    pub fn this_thread(_: RealtimePriority, _: &str, _: bool) {}

    pub fn process(_: RealtimePriority, _: u32, _: &str) {}
}

/// At start: off Linux, says the setting is ignored. Nothing when `priority` is `None`.
pub fn check_platform(priority: Option<RealtimePriority>) {
    #[cfg(not(target_os = "linux"))]
    if let Some(p) = priority {
        imp::check_platform(p);
    }
    #[cfg(target_os = "linux")]
    let _ = priority;
}

/// Switches the calling thread (named `what` in messages) to `SCHED_FIFO` at `priority`, with
/// `SCHED_RESET_ON_FORK`; nothing when `None`. A thread that already runs at that priority
/// needs no privilege for it. Never fails: a refusal is logged (once per daemon).
pub fn this_thread(priority: Option<RealtimePriority>, what: &str) {
    if let Some(p) = priority {
        imp::this_thread(p, what, false);
    }
}

/// Like [`this_thread`], but threads the calling thread starts inherit the priority, until it
/// calls [`this_thread`]: how a thread started without privilege gets it.
pub fn this_thread_and_its_next(priority: Option<RealtimePriority>, what: &str) {
    if let Some(p) = priority {
        imp::this_thread(p, what, true);
    }
}

/// Switches the single-threaded process `pid` (named `what` in messages) to `SCHED_FIFO` at
/// `priority`; nothing when `None`. Never fails, like [`this_thread`].
pub fn process(priority: Option<RealtimePriority>, pid: u32, what: &str) {
    if let Some(p) = priority {
        imp::process(p, pid, what);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_are_1_to_99() {
        assert_eq!(RealtimePriority::new(1).map(RealtimePriority::get), Some(1));
        assert_eq!(
            RealtimePriority::new(99).map(RealtimePriority::get),
            Some(99)
        );
        for bad in [0, 100, 255, 256, -1, i64::MAX, i64::MIN] {
            assert_eq!(RealtimePriority::new(bad), None, "{bad}");
        }
    }

    #[test]
    fn thread_names_fit_linux_comm() {
        assert!(RING_THREAD.len() <= 15 && WORKER_THREAD.len() <= 15);
    }
}
