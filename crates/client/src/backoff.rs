//! Exponential reconnect backoff with full jitter.

use std::time::Duration;

use rand::Rng;

/// Doublings after which the ceiling stops growing (2^20 × min is far past any sane max).
const BACKOFF_DOUBLINGS_MAX: u32 = 20;

/// Delays between retries: attempt `n` waits a uniformly random time in
/// `[min, min(max, min × 2^n)]`. Randomising the whole range ("full jitter")
/// spreads the reconnects of many clients after a server restart.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max` (`max` below `min` counts as `min`).
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Starts over from the shortest delays (after a successful connect).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The ceiling of the next delay.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(BACKOFF_DOUBLINGS_MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay, drawn from `rng`.
    pub(crate) fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let low = self.min.as_micros() as u64;
        let high = (self.ceiling().as_micros() as u64).max(low);
        self.attempt = self.attempt.saturating_add(1);
        Duration::from_micros(rng.random_range(low..=high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// Checks every delay lies within [min, max] and under the doubling ceiling.
    #[test]
    fn delays_stay_within_bounds() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(min, max);
        for n in 0..100u32 {
            let ceiling = b.ceiling();
            let expected_ceiling = min.saturating_mul(1 << n.min(20)).min(max);
            assert_eq!(ceiling, expected_ceiling, "attempt {n}");
            let d = b.next_delay(&mut rng);
            assert!(
                d >= min && d <= ceiling,
                "attempt {n}: {d:?} not in [{min:?}, {ceiling:?}]"
            );
        }
        assert_eq!(b.ceiling(), max);
        b.reset();
        assert_eq!(b.ceiling(), min);
        let d = b.next_delay(&mut rng);
        assert_eq!(d, min, "the first delay has no room to jitter");
    }

    /// Checks delays are jittered: many clients do not pick the same delay.
    #[test]
    fn delays_are_jittered() {
        let (min, max) = (Duration::from_millis(200), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(42);
        let mut delays = Vec::new();
        for _ in 0..50 {
            let mut b = Backoff::new(min, max);
            b.attempt = 10;
            delays.push(b.next_delay(&mut rng));
        }
        delays.sort();
        delays.dedup();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
        let mean = delays.iter().sum::<Duration>() / delays.len() as u32;
        assert!(
            mean > Duration::from_secs(8) && mean < Duration::from_secs(22),
            "mean {mean:?}"
        );
    }

    /// Checks an inverted range does not panic and yields the minimum.
    #[test]
    fn inverted_range_is_the_minimum() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..5 {
            assert_eq!(b.next_delay(&mut rng), Duration::from_secs(2));
        }
    }
}
