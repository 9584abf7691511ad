//! The service's clock in a simulation: turmoil's logical wall-clock time
//! (the run's fixed epoch plus simulated time), so timestamps, session
//! expiry and windows follow simulated time and replay with the seed.

use pigeon_core::Clock;

/// The simulation's epoch, Unix ms: 2030-01-01. Fixed, so a seed replays;
/// in the future, because the gateway compares session expiry with the
/// real system time (and the sessions live a century: see `setup.rs`).
pub(crate) const EPOCH_MS: i64 = 1_893_456_000_000;

/// Simulated wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> i64 {
        // Outside a host (the setup before the run) the epoch itself.
        turmoil::since_epoch().map_or(EPOCH_MS, |d| d.as_millis() as i64)
    }
}
