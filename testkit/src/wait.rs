//! Waiting, and Ctrl-C as a flag instead of a kill: after [`install_signal_handlers`], SIGINT and
//! SIGTERM only set a flag that every wait of the kit checks ([`check_interrupted`], [`sleep`],
//! [`wait_until`]), so an interrupted task returns [`Error::Interrupted`] and unwinds through the
//! guards' `Drop` (daemon stopped, namespaces deleted, files removed). Tests never install the
//! handlers; for them the flag stays down and the waits simply run.

use std::{
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::{Error, Result};

/// Set by SIGINT/SIGTERM once the handlers are installed.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();

/// Makes SIGINT and SIGTERM set the flag [`interrupted`] reads instead of ending the process.
/// Installing twice is harmless.
pub fn install_signal_handlers() -> Result<()> {
    let mut result = Ok(());
    INSTALL.call_once(|| {
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            if let Err(e) = signal_hook::flag::register(sig, &INTERRUPTED) {
                result = Err(Error::io(format!("cannot handle signal {sig}"), e));
            }
        }
    });
    result
}

/// Whether Ctrl-C (or SIGTERM) arrived.
#[must_use]
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// [`Error::Interrupted`] once Ctrl-C arrived, so the caller unwinds and the guards clean up.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        return Err(Error::Interrupted);
    }
    Ok(())
}

/// Sleeps in slices of at most 50 ms, so Ctrl-C is noticed.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupted()?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
}

/// Asks `done` every `every` until it says yes (`Ok(true)`) or `within` has passed
/// (`Ok(false)`; it is asked once more at the deadline). Errors of `done` and Ctrl-C end the
/// wait early.
pub fn wait_until(
    within: Duration,
    every: Duration,
    mut done: impl FnMut() -> Result<bool>,
) -> Result<bool> {
    let deadline = Instant::now() + within;
    loop {
        check_interrupted()?;
        if done()? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        sleep(every.min(deadline.saturating_duration_since(Instant::now())))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_sleeps_while_not_interrupted() {
        let t = Instant::now();
        sleep(Duration::from_millis(120)).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(120));
        assert!(check_interrupted().is_ok());
    }

    #[test]
    fn wait_until_says_whether_it_happened() {
        let mut n = 0;
        let happened = wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            n += 1;
            Ok(n == 3)
        });
        assert!(happened.unwrap());
        assert_eq!(n, 3);
        let never = wait_until(Duration::from_millis(30), Duration::from_millis(5), || {
            Ok(false)
        });
        assert!(!never.unwrap());
        let failed = wait_until(Duration::from_secs(5), Duration::from_millis(1), || {
            Err(Error::Other("no".into()))
        });
        assert!(failed.is_err());
    }
}
