//! Price-driven rebalancing: every check, each RUNNING workload with a `rebalance`
//! block (or on on-demand capacity, to return to spot) compares what it pays now
//! with the offer a fresh placement would choose, through core's
//! [`RebalanceWatch`]. Once the saving has held for `min_duration`, it moves with the
//! migration run, make-before-break ([`super::migration::Cause::Rebalance`]).
//!
//! The watches live in memory: a restart starts every wait again, which only delays
//! a move.
//!
//! The same check replaces the instances whose `env` is not the spec's any more (a
//! rolling replacement, [`Cause::Restart`]): the update starts one at once, and this
//! catches what it could not (a move was under way, or the service stopped between
//! the write and the run).

use super::migration::{Cause, ExcludedOffer};
use super::{now_ms, Orchestrator};
use crate::error::OrchestratorError;
use computearbitrage_core::rebalance::{RebalancePolicy, RebalanceWatch};
use computearbitrage_core::{place, Catalog, Offer, WorkloadStatus};
use computearbitrage_store::{PlacementRecord, RunKind, RunStatus, WorkloadRecord};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// After a failed rebalance, the least time before the next attempt (a zero
/// `min_duration` must not turn a failing move into a loop).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// After a failed rolling replacement, the wait before the next (its health check
/// had `create_timeout` to fail; a broken env should not launch an instance a minute).
const RESTART_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(300);

/// Whether a run is under way for the workload, or a `cause` move of it failed within
/// `wait` (then the next try waits).
fn busy_or_failed_lately(
    runs: &[computearbitrage_store::RunRecord],
    cause: Cause,
    wait: Duration,
    now: i64,
) -> bool {
    runs.iter().any(|r| r.status == RunStatus::Running)
        || runs.iter().any(|r| {
            r.kind == RunKind::Migrate
                && r.status == RunStatus::Dead
                && Cause::of(r) == cause
                && now - r.updated_at < wait.as_millis() as i64
        })
}

impl Orchestrator {
    /// Whether the serving instance runs the spec's env and no run of the workload is
    /// unfinished: a move begun before the last env change would switch to an
    /// instance with the env it was given. Read from the store, so a run waiting to be
    /// resumed after a restart counts too.
    pub async fn env_applied(&self, workload: &WorkloadRecord) -> Result<bool, OrchestratorError> {
        if env_is_stale(workload) {
            return Ok(false);
        }
        let runs = self
            .store
            .runs_of(&workload.tenant_id, &workload.id)
            .await?;
        Ok(!runs.iter().any(|r| r.status == RunStatus::Running))
    }
}

/// Whether the workload's instance was started with another env than its spec's.
pub fn env_is_stale(workload: &WorkloadRecord) -> bool {
    workload
        .placement
        .as_ref()
        .and_then(|p| p.env_fingerprint.as_deref())
        .is_some_and(|launched| launched != super::steps::env_fingerprint(&workload.spec.env))
}

/// The rule a workload moves by, if any: its `rebalance` block, or (on on-demand
/// capacity without one) the default return to spot.
pub(crate) fn policy_of(workload: &WorkloadRecord) -> Option<RebalancePolicy> {
    let on_demand = workload.placement.as_ref().is_some_and(|p| p.on_demand);
    workload
        .spec
        .rebalance
        .or_else(|| on_demand.then(RebalancePolicy::return_to_spot))
}

/// What the workload's offer costs now, on the market it runs on; `None` when the
/// catalog no longer lists it (then any matching offer is worth the move).
pub(crate) fn price_now(
    offers: &HashMap<ExcludedOffer, Offer>,
    placed: &PlacementRecord,
) -> Option<f64> {
    let offer = offers.get(&ExcludedOffer::of(placed))?;
    Some(if placed.on_demand {
        offer.on_demand_price.unwrap_or(offer.spot_price)
    } else {
        offer.spot_price
    })
}

/// The offers of the catalog that these placements are on, by their key.
pub(crate) fn current_offers<'a>(
    catalog: &Catalog,
    placements: impl Iterator<Item = &'a PlacementRecord>,
) -> HashMap<ExcludedOffer, Offer> {
    let wanted: std::collections::HashSet<ExcludedOffer> =
        placements.map(ExcludedOffer::of).collect();
    if wanted.is_empty() {
        return HashMap::new();
    }
    catalog
        .iter()
        .filter_map(|o| {
            let key = ExcludedOffer::of_offer(&o);
            wanted.contains(&key).then_some((key, o))
        })
        .collect()
}

/// The spot offer a fresh placement would choose for the workload, other than the
/// ones excluded (its own, and those in cooldown after a reclaim).
pub(crate) fn best_other(
    orch: &Orchestrator,
    catalog: &Catalog,
    workload: &WorkloadRecord,
    excluded: &[ExcludedOffer],
) -> Option<Offer> {
    let placed = place(
        catalog,
        &workload.spec.requirements,
        computearbitrage_core::placement::MAX_ALTERNATIVES,
        &orch.policy,
    )
    .ok()?;
    std::iter::once(placed.best)
        .chain(placed.alternatives)
        .find(|c| !excluded.iter().any(|x| x.matches(&c.offer)))
        .map(|c| c.offer)
}

impl Orchestrator {
    /// Starts a rolling replacement for each RUNNING workload whose instance runs an
    /// older env, unless a run is under way or one failed lately; their ids.
    pub async fn restart_stale(self: &Arc<Self>) -> Result<Vec<String>, OrchestratorError> {
        let mut started = Vec::new();
        for workload in self
            .store
            .workloads_in(&[WorkloadStatus::Running, WorkloadStatus::Unhealthy])
            .await?
        {
            if !env_is_stale(&workload) {
                continue;
            }
            let Some((_moves, workload)) = self.lock_moves(&workload).await? else {
                continue;
            };
            if self.restart_if_stale(&workload, true).await? {
                started.push(workload.id.clone());
            }
        }
        Ok(started)
    }

    /// The update's own trigger: this workload only, at once even after a failure (the
    /// update may be the fix).
    pub(crate) async fn restart_one_if_stale(
        self: &Arc<Self>,
        workload: &WorkloadRecord,
    ) -> Result<bool, OrchestratorError> {
        let Some((_moves, workload)) = self.lock_moves(workload).await? else {
            return Ok(false);
        };
        self.restart_if_stale(&workload, false).await
    }

    async fn restart_if_stale(
        self: &Arc<Self>,
        workload: &WorkloadRecord,
        wait_after_failure: bool,
    ) -> Result<bool, OrchestratorError> {
        let serving = matches!(
            workload.status,
            WorkloadStatus::Running | WorkloadStatus::Unhealthy
        );
        if !serving || !env_is_stale(workload) {
            return Ok(false);
        }
        let runs = self
            .store
            .runs_of(&workload.tenant_id, &workload.id)
            .await?;
        let wait = if wait_after_failure {
            RESTART_RETRY_AFTER_FAILURE
        } else {
            Duration::ZERO
        };
        if busy_or_failed_lately(&runs, Cause::Restart, wait, now_ms()) {
            return Ok(false);
        }
        tracing::info!(workload_id = %workload.id, "the instance runs an older env: rolling replacement");
        self.start_migration(workload, Cause::Restart).await?;
        Ok(true)
    }

    /// One rebalancing check over every RUNNING workload; starts the moves that are
    /// due and returns their workload ids.
    pub async fn rebalance(self: &Arc<Self>) -> Result<Vec<String>, OrchestratorError> {
        let running = self.store.workloads_in(&[WorkloadStatus::Running]).await?;
        let candidates: Vec<(WorkloadRecord, RebalancePolicy)> = running
            .into_iter()
            .filter(|w| w.placement.is_some() && w.instance_id.is_some())
            .filter_map(|w| policy_of(&w).map(|p| (w, p)))
            .collect();
        {
            // Forget the watches of workloads that no longer rebalance.
            let mut watches = self
                .rebalance_watches
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            watches.retain(|id, _| candidates.iter().any(|(w, _)| &w.id == id));
        }
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let catalog = self.book.catalog();
        let offers = current_offers(
            &catalog,
            candidates.iter().filter_map(|(w, _)| w.placement.as_ref()),
        );
        let cooling = self.offers_in_cooldown();
        let now = now_ms();
        let mut started = Vec::new();
        for (workload, policy) in candidates {
            let Some(placed) = workload.placement.as_ref() else {
                continue;
            };
            let current = ExcludedOffer::of(placed);
            let mut excluded = cooling.clone();
            // From on-demand, the spot side of the same offer is a move too.
            if !placed.on_demand {
                excluded.push(current.clone());
            }
            let best = best_other(self, &catalog, &workload, &excluded);
            let paid = price_now(&offers, placed).unwrap_or(f64::INFINITY);
            let due = {
                let mut watches = self
                    .rebalance_watches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let watch = watches
                    .entry(workload.id.clone())
                    .or_insert_with(RebalanceWatch::new);
                watch.observe(
                    &policy,
                    now / 1000,
                    paid,
                    best.as_ref()
                        .map(|o| (ExcludedOffer::of_offer(o), o.spot_price)),
                )
            };
            let (Some(target), Some(best)) = (due, best) else {
                continue;
            };
            let Some((_moves, workload)) = self.lock_moves(&workload).await? else {
                continue;
            };
            if workload.status != WorkloadStatus::Running
                || workload.placement.as_ref() != Some(placed)
            {
                // It changed while the sweep ran: the next sweep sees it as it is now.
                continue;
            }
            let runs = self
                .store
                .runs_of(&workload.tenant_id, &workload.id)
                .await?;
            let wait = policy.min_duration.max(RETRY_AFTER_FAILURE);
            if busy_or_failed_lately(&runs, Cause::Rebalance, wait, now) {
                continue;
            }
            tracing::info!(
                workload_id = %workload.id,
                from = %current,
                to = %target,
                paid_per_hour = paid,
                offered_per_hour = best.spot_price,
                min_savings_percent = policy.min_savings_percent,
                min_duration_s = policy.min_duration.as_secs(),
                "a cheaper offer held for the rebalance duration: moving, make-before-break"
            );
            self.start_migration(&workload, Cause::Rebalance).await?;
            started.push(workload.id.clone());
        }
        Ok(started)
    }
}
