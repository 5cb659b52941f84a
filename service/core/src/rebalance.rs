//! Price-driven rebalancing, the decision alone: move when another offer has been at
//! least `min_savings_percent` cheaper than the current one for `min_duration`.
//! Pure (the caller passes the time), so the savings replay
//! (`service/orchestrator/benches/savings_replay.rs`) runs exactly the rule a
//! workload's `rebalance` block will.

use std::time::Duration;

/// A workload's `rebalance { min_savings_percent, min_duration }`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RebalancePolicy {
    /// How much cheaper, in percent of the current price, another offer must be.
    pub min_savings_percent: f64,
    /// How long it must have stayed that much cheaper (one price blip is no reason to
    /// move).
    pub min_duration: Duration,
}

/// What one workload's rebalancing remembers between observations: which offer has
/// been cheaper enough, since when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RebalanceWatch<K> {
    cheaper: Option<(K, i64)>,
}

impl Default for RebalancePolicy {
    fn default() -> Self {
        use computearbitrage_conventions::defaults;
        RebalancePolicy {
            min_savings_percent: defaults::REBALANCE_MIN_SAVINGS_PERCENT,
            min_duration: Duration::from_secs(defaults::REBALANCE_MIN_DURATION_SECONDS.into()),
        }
    }
}

impl RebalancePolicy {
    /// What a workload on on-demand capacity without a `rebalance` block waits for
    /// before it returns to spot: any spot offer cheaper than what it pays, for
    /// `RETURN_TO_SPOT_AFTER_SECONDS`.
    pub fn return_to_spot() -> RebalancePolicy {
        RebalancePolicy {
            min_savings_percent: 0.0,
            min_duration: Duration::from_secs(
                computearbitrage_conventions::defaults::RETURN_TO_SPOT_AFTER_SECONDS.into(),
            ),
        }
    }

    /// Whether `price` is cheaper enough than `current` to be worth a move.
    pub fn worth_it(&self, current: f64, price: f64) -> bool {
        let threshold = current * (1.0 - self.min_savings_percent / 100.0);
        if self.min_savings_percent <= 0.0 {
            price < current
        } else {
            price <= threshold
        }
    }
}

impl<K: Clone + PartialEq> RebalanceWatch<K> {
    pub fn new() -> Self {
        RebalanceWatch { cheaper: None }
    }

    /// Observes the current price and the best other offer at `now` (unix seconds);
    /// returns the offer to move to once the rule holds. A different best offer, or one
    /// no longer cheap enough, starts the wait again.
    pub fn observe(
        &mut self,
        policy: &RebalancePolicy,
        now: i64,
        current_price: f64,
        best_other: Option<(K, f64)>,
    ) -> Option<K> {
        let Some((key, _)) = best_other.filter(|(_, p)| policy.worth_it(current_price, *p)) else {
            self.cheaper = None;
            return None;
        };
        let since = match &self.cheaper {
            Some((k, since)) if *k == key => *since,
            _ => {
                self.cheaper = Some((key.clone(), now));
                now
            }
        };
        if now - since >= policy.min_duration.as_secs() as i64 {
            self.cheaper = None;
            Some(key)
        } else {
            None
        }
    }

    /// After a move (or an interruption): nothing is being waited on.
    pub fn reset(&mut self) {
        self.cheaper = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RebalancePolicy = RebalancePolicy {
        min_savings_percent: 20.0,
        min_duration: Duration::from_secs(3600),
    };

    #[test]
    fn moves_only_after_the_saving_held_for_the_whole_duration() {
        let mut watch = RebalanceWatch::new();
        // 15 % cheaper: not enough.
        assert_eq!(watch.observe(&POLICY, 0, 1.0, Some(("b", 0.85))), None);
        // 25 % cheaper from t = 100; not yet an hour.
        assert_eq!(watch.observe(&POLICY, 100, 1.0, Some(("b", 0.75))), None);
        assert_eq!(watch.observe(&POLICY, 3699, 1.0, Some(("b", 0.75))), None);
        assert_eq!(
            watch.observe(&POLICY, 3700, 1.0, Some(("b", 0.70))),
            Some("b")
        );
        // The decision is spent: the wait starts over.
        assert_eq!(watch.observe(&POLICY, 3701, 1.0, Some(("b", 0.70))), None);
    }

    #[test]
    fn a_blip_or_another_best_offer_starts_the_wait_again() {
        let mut watch = RebalanceWatch::new();
        assert_eq!(watch.observe(&POLICY, 0, 1.0, Some(("b", 0.7))), None);
        // The price came back for a moment.
        assert_eq!(watch.observe(&POLICY, 1800, 1.0, Some(("b", 0.9))), None);
        assert_eq!(watch.observe(&POLICY, 2000, 1.0, Some(("b", 0.7))), None);
        assert_eq!(watch.observe(&POLICY, 5000, 1.0, Some(("b", 0.7))), None);
        assert_eq!(
            watch.observe(&POLICY, 5600, 1.0, Some(("b", 0.7))),
            Some("b")
        );
        // Another offer became the best: its own wait.
        assert_eq!(watch.observe(&POLICY, 6000, 1.0, Some(("c", 0.6))), None);
        assert_eq!(watch.observe(&POLICY, 7000, 1.0, Some(("d", 0.6))), None);
        assert_eq!(watch.observe(&POLICY, 10_599, 1.0, Some(("d", 0.6))), None);
        assert_eq!(
            watch.observe(&POLICY, 10_600, 1.0, Some(("d", 0.6))),
            Some("d")
        );
        assert_eq!(watch.observe(&POLICY, 20_000, 1.0, None), None);
    }

    #[test]
    fn a_zero_saving_means_any_cheaper_offer_and_the_defaults_are_documented() {
        let back = RebalancePolicy::return_to_spot();
        assert!(back.worth_it(0.10, 0.099));
        assert!(!back.worth_it(0.10, 0.10));
        let default = RebalancePolicy::default();
        assert_eq!(
            (default.min_savings_percent, default.min_duration.as_secs()),
            (20.0, 3600)
        );
        assert!(default.worth_it(1.0, 0.8) && !default.worth_it(1.0, 0.81));
    }
}
