//! Time as the labs need it: Unix seconds, the TOTP step (30 s, `wire::TIME_STEP_SECONDS`), waiting
//! for a step with enough time left in it, and a thread's own CPU time (for what a flood or a
//! consumer cost).

use std::time::{Duration, SystemTime};

use capyknock_common::wire::TIME_STEP_SECONDS;
use nix::time::{ClockId, clock_gettime};

/// The current Unix time in whole seconds (0 for a clock before 1970).
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The current TOTP time step.
#[must_use]
pub fn time_step() -> u64 {
    unix_now() / TIME_STEP_SECONDS
}

/// Seconds until the current TOTP step ends (1 to 30).
#[must_use]
pub fn secs_left_in_step() -> u64 {
    TIME_STEP_SECONDS - unix_now() % TIME_STEP_SECONDS
}

/// Waits until at least `margin` seconds remain in the current TOTP step, so a code computed
/// now is still current when the knock arrives (sleeps into the next step when too little is
/// left; at most 30 s).
pub fn wait_for_fresh_step(margin: u64) {
    let left = secs_left_in_step();
    if left <= margin {
        std::thread::sleep(Duration::from_secs(left));
    }
}

/// Waits until the current TOTP step is at least `min_into` seconds old and has more than
/// `min_left` seconds left (for knocks dated a little in the past, whose step must still be the
/// current one or the one before). `min_into + min_left` must stay below 30.
pub fn wait_into_step(min_into: u64, min_left: u64) {
    wait_for_fresh_step(min_left);
    let into = unix_now() % TIME_STEP_SECONDS;
    if into < min_into {
        std::thread::sleep(Duration::from_secs(min_into - into));
    }
}

/// CPU time the calling thread has used (exact, from the scheduler); zero if the clock cannot be
/// read.
#[must_use]
pub fn thread_cpu_time() -> Duration {
    clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).map_or(Duration::ZERO, Duration::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_and_seconds_agree() {
        let (t, step, left) = (unix_now(), time_step(), secs_left_in_step());
        assert!(t > 1_700_000_000, "the clock is set");
        assert!((t / 30..=t / 30 + 1).contains(&step));
        assert!((1..=30).contains(&left));
    }

    #[test]
    fn thread_cpu_time_grows_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(thread_cpu_time() > before, "{x}");
    }
}
