//! Retry policies of workflow steps and notification delivery, as values. The delay
//! of each attempt is computed here from a jitter sample the caller draws, so the
//! schedule is deterministic under test.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_delay: Duration,
    /// Each further delay is the previous one times this.
    pub backoff_coefficient: f64,
    /// Upper bound on any delay.
    pub max_delay: Duration,
    /// Fraction of the delay that is randomised: 0.2 means ±20 %.
    pub jitter: f64,
}

impl RetryPolicy {
    pub const fn once() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 1,
            initial_delay: Duration::ZERO,
            backoff_coefficient: 1.0,
            max_delay: Duration::ZERO,
            jitter: 0.0,
        }
    }

    /// Whether another attempt may follow attempt number `attempt` (1-based).
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The pause after failed attempt number `attempt` (1-based). `jitter_sample` is a
    /// uniform draw from [0, 1).
    pub fn delay_after(&self, attempt: u32, jitter_sample: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let base = self.initial_delay.as_secs_f64() * self.backoff_coefficient.powi(exponent);
        let capped = base.min(self.max_delay.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * jitter_sample.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64(
            (capped * factor).clamp(0.0, self.max_delay.as_secs_f64().max(capped)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            max_delay: Duration::from_secs(5),
            jitter: 0.0,
        }
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap() {
        let p = policy();
        let delays: Vec<u64> = (1..=5).map(|a| p.delay_after(a, 0.5).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 5, 5]);
        assert!(p.allows_another(4));
        assert!(!p.allows_another(5));
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let p = RetryPolicy {
            jitter: 0.2,
            ..policy()
        };
        let low = p.delay_after(2, 0.0).as_secs_f64();
        let high = p.delay_after(2, 0.999_999).as_secs_f64();
        assert!((low - 1.6).abs() < 1e-6, "{low}");
        assert!((high - 2.4).abs() < 1e-3, "{high}");
    }
}
