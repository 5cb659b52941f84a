//! Migration: a reclaimed workload moves to the best other offer under the same id,
//! endpoint, tokens and TCP listener (`core::workflow::migrate_steps`).
//!
//! 1. `record-interruption`: what is being left (instance, offer, notice time).
//! 2. `placement`: the provisioning step, excluding the reclaimed offer and every
//!    offer reclaimed within `workloads.migration_cooldown_seconds`.
//! 3. `mark-migrating`: INTERRUPTED → PROVISIONING; the route keeps answering 503.
//! 4. `provision`: the replacement is started at once, while the old instance is
//!    still writing its final checkpoint; its agent waits for step 5.
//! 5. `await-checkpoint`: the old agent's report, or a complete checkpoint newer than
//!    the notice in storage, or (when it failed or the deadline passed) the newest
//!    complete one. The replacement restores what this step chose.
//! 6. `wait-running`, 7. `wait-healthy`: the provisioning steps, on the replacement.
//! 8. `switch-route`: one store write makes the replacement the workload's instance
//!    and endpoint, back to RUNNING; the old segment is billed.
//! 9. `terminate-replaced`: the old instance is terminated if it is still there.
//! 10. `notify`: `workload.migrated`, and the health monitor follows the new address.
//!
//! The same run replaces an instance that stayed UNHEALTHY (`on_unhealthy =
//! "replace"`, [`Cause::Unhealthy`]): nothing was reclaimed, so no offer is excluded,
//! there is no final checkpoint to wait for (the newest complete one is restored), and
//! a replacement that fails leaves the workload on its instance
//! ([`Orchestrator::fail_replacement`]).
//!
//! And it moves a workload to a cheaper offer ([`Cause::Rebalance`], see
//! [`super::rebalance`]), make-before-break: the workload stays RUNNING on its
//! instance throughout; `await-checkpoint` asks the old agent for a fresh checkpoint
//! (a checkpoint task) and the move is abandoned if that fails; `switch-route` changes
//! the instance and endpoint in one write without a status change; the old instance
//! drains for `drain` (its agent is told nothing yet, and the router has switched)
//! before `terminate-replaced` stops it.

use super::agents::complete_checkpoints;
use super::engine::{StepContext, StepError};
use super::steps::{bill, instance_id, placement_record};
use super::{new_id, notify, now_ms, Orchestrator};
use crate::error::OrchestratorError;
use computearbitrage_core::workflow::*;
use computearbitrage_core::{InstanceState, Offer, OnUnhealthy, WorkloadStatus};
use computearbitrage_store::{
    PlacementRecord, RunKind, RunRecord, RunStatus, StepRecord, WorkloadChanges, WorkloadRecord,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Why a workload moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The cloud reclaims the instance (a notice, or the instance was lost); the
    /// final checkpoint is due by `deadline` (unix seconds).
    Notice { deadline: i64 },
    /// The workload stayed UNHEALTHY past `replace_unhealthy_after`.
    Unhealthy,
    /// Another offer stayed cheaper enough for long enough (or spot came back for a
    /// workload on on-demand capacity): a make-before-break move.
    Rebalance,
    /// The spec changed in a way only a new instance applies (`env`): a rolling
    /// replacement, make-before-break, on the best offer now.
    Restart,
}

const UNHEALTHY_MARK: &str = "cause=unhealthy";
const REBALANCE_MARK: &str = "cause=rebalance";
const RESTART_MARK: &str = "cause=restart";

impl Cause {
    /// The cause and deadline ride in the run's reason, its only free-form field.
    fn reason(self) -> String {
        match self {
            Cause::Notice { deadline } => format!("spot interruption; deadline={deadline}"),
            Cause::Unhealthy => {
                format!(
                    "replacing an unhealthy instance (on_unhealthy = replace); {UNHEALTHY_MARK}"
                )
            }
            Cause::Rebalance => {
                format!("moving to a cheaper offer (rebalance); {REBALANCE_MARK}")
            }
            Cause::Restart => {
                format!("rolling replacement: the env changed; {RESTART_MARK}")
            }
        }
    }

    pub(crate) fn of(run: &RunRecord) -> Cause {
        if run.reason.ends_with(UNHEALTHY_MARK) {
            return Cause::Unhealthy;
        }
        if run.reason.ends_with(REBALANCE_MARK) {
            return Cause::Rebalance;
        }
        if run.reason.ends_with(RESTART_MARK) {
            return Cause::Restart;
        }
        let deadline = run
            .reason
            .rsplit_once("deadline=")
            .and_then(|(_, d)| d.trim().parse().ok())
            .unwrap_or(run.created_at / 1000 + 30);
        Cause::Notice { deadline }
    }

    fn name(self) -> &'static str {
        match self {
            Cause::Notice { .. } => "interruption",
            Cause::Unhealthy => "unhealthy",
            Cause::Rebalance => "rebalance",
            Cause::Restart => "restart",
        }
    }

    /// Make-before-break: the workload serves from its instance until the switch, so
    /// its status never leaves RUNNING.
    pub(crate) fn keeps_serving(self) -> bool {
        matches!(self, Cause::Rebalance | Cause::Restart)
    }

    /// Nothing was reclaimed: a replacement that fails leaves the workload where it is.
    fn stays_on_failure(self) -> bool {
        matches!(self, Cause::Unhealthy | Cause::Rebalance | Cause::Restart)
    }
}

/// An offer a workload must not be placed on: (cloud, region, zone, type).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExcludedOffer {
    pub cloud: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
}

impl ExcludedOffer {
    pub fn matches(&self, offer: &Offer) -> bool {
        offer.cloud.as_str() == self.cloud
            && offer.region == self.region
            && offer.zone == self.zone
            && offer.instance_type == self.instance_type
    }

    pub(crate) fn of(placed: &PlacementRecord) -> ExcludedOffer {
        ExcludedOffer {
            cloud: placed.cloud.clone(),
            region: placed.region.clone(),
            zone: placed.zone.clone(),
            instance_type: placed.instance_type.clone(),
        }
    }

    pub(crate) fn of_offer(offer: &Offer) -> ExcludedOffer {
        ExcludedOffer {
            cloud: offer.cloud.as_str().to_string(),
            region: offer.region.clone(),
            zone: offer.zone.clone(),
            instance_type: offer.instance_type.clone(),
        }
    }
}

impl std::fmt::Display for ExcludedOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} in {}",
            self.cloud, self.instance_type, self.region
        )?;
        if !self.zone.is_empty() {
            write!(f, "/{}", self.zone)?;
        }
        Ok(())
    }
}

/// Offers placement must skip for this run: those reclaimed recently anywhere in this
/// service (kept in memory: a restart forgets them), and for a migration the one it
/// leaves.
pub(crate) fn excluded_offers(
    orch: &Orchestrator,
    ctx: &StepContext<'_>,
) -> Result<Vec<ExcludedOffer>, StepError> {
    let mut excluded = match ctx.run.kind {
        // A fresh instance of an unhealthy one's offer is a new machine all the same.
        RunKind::Migrate if matches!(Cause::of(ctx.run), Cause::Unhealthy | Cause::Restart) => {
            Vec::new()
        }
        RunKind::Migrate => left_offer(ctx)?.into_iter().collect(),
        RunKind::Provision => Vec::new(),
        RunKind::Terminate => return Ok(Vec::new()),
    };
    for offer in orch.offers_in_cooldown() {
        if !excluded.contains(&offer) {
            excluded.push(offer);
        }
    }
    Ok(excluded)
}

impl Orchestrator {
    /// The offers reclaimed within `migration_cooldown` anywhere in this service.
    pub(crate) fn offers_in_cooldown(&self) -> Vec<ExcludedOffer> {
        let now = now_ms();
        let mut reclaimed = self.reclaimed.lock().unwrap_or_else(|p| p.into_inner());
        reclaimed.retain(|(_, until)| *until > now);
        reclaimed.iter().map(|(offer, _)| offer.clone()).collect()
    }
}

/// The offer a move leaves, which its placement skips; none for a rebalance off
/// on-demand capacity, whose way back to spot may be the same offer.
fn left_offer(ctx: &StepContext<'_>) -> Result<Option<ExcludedOffer>, StepError> {
    let left = ctx.output(RECORD_INTERRUPTION)?;
    let placed: PlacementRecord =
        serde_json::from_value(left["placement"].clone()).map_err(|e| {
            StepError::permanent(format!("the recorded interruption is unreadable: {e}"))
        })?;
    if placed.on_demand && matches!(Cause::of(ctx.run), Cause::Rebalance) {
        return Ok(None);
    }
    Ok(Some(ExcludedOffer::of(&placed)))
}

/// The migration-only steps; `None` for the provisioning steps it reuses.
pub(crate) async fn execute(
    orch: &Arc<Orchestrator>,
    step: &str,
    ctx: &StepContext<'_>,
) -> Option<Result<Value, StepError>> {
    Some(match step {
        RECORD_INTERRUPTION => record_interruption(orch, ctx),
        MARK_MIGRATING => mark_migrating(orch, ctx).await,
        AWAIT_CHECKPOINT => await_checkpoint(orch, ctx).await,
        SWITCH_ROUTE => switch_route(orch, ctx).await,
        TERMINATE_REPLACED => terminate_replaced(orch, ctx).await,
        NOTIFY => notify_migrated(orch, ctx).await,
        _ => return None,
    })
}

fn record_interruption(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let w = ctx.workload;
    let (Some(placed), Some(instance_id)) = (&w.placement, &w.instance_id) else {
        return Err(StepError::permanent(
            "the workload has no instance to migrate from",
        ));
    };
    let cause = Cause::of(ctx.run);
    let deadline = match cause {
        Cause::Notice { deadline } => {
            // Every placement in this service skips the reclaimed offer for the cooldown.
            let cooldown_ms = orch.settings.migration_cooldown.as_millis() as i64;
            orch.reclaimed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((ExcludedOffer::of(placed), ctx.run.created_at + cooldown_ms));
            deadline
        }
        Cause::Unhealthy | Cause::Rebalance | Cause::Restart => ctx.run.created_at / 1000,
    };
    Ok(json!({
        "cause": cause.name(),
        "instance_id": instance_id,
        "placement": placed,
        "started_at_ms": w.instance_started_at,
        "deadline": deadline,
        "notice_ms": ctx.run.created_at,
    }))
}

async fn mark_migrating(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let to = placement_record(ctx.output(PLACEMENT)?);
    let from = ExcludedOffer::of(
        &serde_json::from_value::<PlacementRecord>(
            ctx.output(RECORD_INTERRUPTION)?["placement"].clone(),
        )
        .map_err(|e| StepError::permanent(e.to_string()))?,
    );
    let reason = format!(
        "migrating from {from} to {} {} in {}",
        to.cloud, to.instance_type, to.region
    );
    // An unhealthy workload was never INTERRUPTED: it goes straight to PROVISIONING;
    // a rebalancing one keeps serving (RUNNING) until the switch.
    let cause = Cause::of(ctx.run);
    let was = match cause {
        Cause::Unhealthy => Some(WorkloadStatus::Unhealthy),
        Cause::Notice { .. } => Some(WorkloadStatus::Interrupted),
        Cause::Rebalance | Cause::Restart => None,
    };
    if let Some(was) = was {
        orch.transition(
            ctx.workload,
            was,
            WorkloadStatus::Provisioning,
            &reason,
            WorkloadChanges::default(),
        )
        .await?;
    }
    notify::enqueue(
        orch,
        ctx.workload,
        "workload.migrating",
        json!({ "from": from.to_string(), "to": format!("{} {} in {}", to.cloud, to.instance_type, to.region), "cause": cause.name() }),
    )
    .await?;
    Ok(json!({ "reason": reason }))
}

/// AWS's two minutes: no cloud announces a reclaim earlier.
const LONGEST_NOTICE_MS: i64 = 120_000;

/// Why a complete checkpoint was taken, from its manifest.
async fn checkpoint_trigger(
    storage: &computearbitrage_storage::Storage,
    workload_id: &str,
    name: &str,
) -> Option<String> {
    let key = computearbitrage_storage::ObjectKey::new(
        workload_id,
        computearbitrage_storage::Area::Checkpoints,
        &format!("{name}/{}", computearbitrage_agent_protocol::MANIFEST),
    )
    .ok()?;
    let bytes = storage.get(&key).await.ok()?;
    serde_json::from_slice::<computearbitrage_agent_protocol::Manifest>(&bytes)
        .ok()
        .map(|m| m.trigger)
}

/// Chooses the checkpoint the replacement restores.
async fn await_checkpoint(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let left = ctx.output(RECORD_INTERRUPTION)?;
    let notice_ms = left["notice_ms"].as_i64().unwrap_or(ctx.run.created_at);
    // Only the reclaimed instance's own checkpoints can be its final one (not, say, the
    // final checkpoint of the instance it replaced a minute earlier).
    let old_started_ms = left["started_at_ms"].as_i64().unwrap_or(0);
    let deadline = left["deadline"].as_i64().unwrap_or(0);
    let old_id = left["instance_id"].as_str().unwrap_or_default().to_string();
    let old_cloud = left["placement"]["cloud"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let Some(link) = orch
        .agent_link()
        .filter(|_| ctx.workload.spec.storage.enabled)
    else {
        return Ok(
            json!({ "checkpoint": null, "why": "the workload has no storage: the replacement starts from scratch" }),
        );
    };
    if Cause::of(ctx.run).keeps_serving() {
        return fresh_checkpoint(orch, ctx, &link.storage).await;
    }
    if Cause::of(ctx.run) == Cause::Unhealthy {
        // An unhealthy workload's last word is not worth waiting for.
        let newest = complete_checkpoints(&link.storage, &ctx.workload.id)
            .await
            .map_err(|e| StepError::transient(format!("cannot list the checkpoints: {e}")))?
            .pop();
        return Ok(
            json!({ "checkpoint": newest, "final": false, "why": "replacing an unhealthy instance: the newest complete checkpoint" }),
        );
    }
    let driver = orch.driver(&old_cloud)?;
    // The final checkpoint is a complete one the agent took on this notice, whether or
    // not its report reached this process. The agent may see the notice before the
    // service does, so one begun within the longest notice window before it counts.
    let find_final = |complete: Vec<String>| async move {
        for name in complete.iter().rev() {
            let begun = name.parse::<i64>().unwrap_or(0);
            if begun < (notice_ms - LONGEST_NOTICE_MS).max(old_started_ms) {
                break;
            }
            if checkpoint_trigger(&link.storage, &ctx.workload.id, name)
                .await
                .as_deref()
                == Some("notice")
            {
                return (Some(name.clone()), complete);
            }
        }
        (None, complete)
    };
    loop {
        // Store and driver blips are waited out here, within the notice deadline: the
        // step runs once, and failing it would fail the workload.
        let listed = complete_checkpoints(&link.storage, &ctx.workload.id).await;
        let state = driver.instance(&old_id).await;
        let (complete, state) = match (listed, state) {
            (Ok(complete), Ok(state)) => (complete, state),
            (Err(e), _) => {
                tracing::warn!(workload_id = %ctx.workload.id, error = %e, "cannot list checkpoints; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            (_, Err(e)) => {
                tracing::warn!(workload_id = %ctx.workload.id, error = %e, "cannot ask the driver about the old instance; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let (found, complete) = find_final(complete).await;
        if let Some(name) = found {
            return Ok(json!({ "checkpoint": name, "final": true }));
        }
        let failed = orch
            .checkpoint_outcome(&ctx.workload.id)
            .filter(|o| o.at_ms >= notice_ms && o.error.is_some() && o.trigger == "notice");
        let gone = matches!(state.state, InstanceState::Terminated { .. });
        let late = now_ms() / 1000 > deadline;
        if failed.is_some() || gone || late {
            // The manifest may have landed just before the instance went: look once more.
            let complete = complete_checkpoints(&link.storage, &ctx.workload.id)
                .await
                .unwrap_or(complete);
            let (found, complete) = find_final(complete).await;
            if let Some(name) = found {
                return Ok(json!({ "checkpoint": name, "final": true }));
            }
            let why = match (&failed, gone) {
                (Some(o), _) => format!(
                    "the final checkpoint failed: {}",
                    o.error.clone().unwrap_or_default()
                ),
                (None, true) => {
                    format!("instance {old_id} ended before its final checkpoint completed")
                }
                (None, false) => {
                    "the notice deadline passed before the final checkpoint completed".to_string()
                }
            };
            if failed.is_none() {
                notify::enqueue(
                    orch,
                    ctx.workload,
                    "workload.checkpoint_failed",
                    json!({ "trigger": "notice", "error": why }),
                )
                .await?;
            }
            let fallback = complete.last().cloned();
            tracing::warn!(workload_id = %ctx.workload.id, why, fallback = ?fallback, "no final checkpoint; restoring the newest complete one");
            return Ok(json!({ "checkpoint": fallback, "final": false, "why": why }));
        }
        if orch.is_cancelled(&ctx.workload.id) {
            return Err(StepError::permanent("cancelled"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How long a rebalance waits for the checkpoint it asked for: the task's own
/// timeout, each of its attempts, and their backoff.
const FRESH_CHECKPOINT_WAIT: Duration = Duration::from_secs(300);

/// A rebalance restores a checkpoint taken for it: one checkpoint task on the old
/// (still serving) instance. If it fails, the move is abandoned: the workload is fine
/// where it is, and a move must not lose what it wrote since its last checkpoint.
async fn fresh_checkpoint(
    orch: &Orchestrator,
    ctx: &StepContext<'_>,
    storage: &computearbitrage_storage::Storage,
) -> Result<Value, StepError> {
    let w = ctx.workload;
    // The task's id rides in the step's own attempts: ask once per run.
    let task_id = match orch
        .store
        .tasks_of(&w.tenant_id, &w.id)
        .await?
        .into_iter()
        .find(|t| t.kind == "checkpoint" && t.created_at >= ctx.run.created_at)
    {
        Some(task) => task.id,
        None => {
            orch.create_task(
                &w.tenant_id,
                &w.id,
                super::tasks::NewTask {
                    kind: "checkpoint".into(),
                    command: Vec::new(),
                    timeout_seconds: 0,
                },
            )
            .await
            .map_err(|e| StepError::permanent(format!("cannot ask for a checkpoint: {e}")))?
            .id
        }
    };
    let give_up = std::time::Instant::now() + FRESH_CHECKPOINT_WAIT;
    loop {
        let newest = complete_checkpoints(storage, &w.id)
            .await
            .map_err(|e| StepError::transient(format!("cannot list the checkpoints: {e}")))?
            .pop()
            .filter(|name| name.parse::<i64>().unwrap_or(0) >= ctx.run.created_at);
        if let Some(name) = newest {
            return Ok(json!({ "checkpoint": name, "final": true, "task_id": task_id }));
        }
        let task = orch.store.task(&w.tenant_id, &task_id).await?;
        let failed = match &task {
            None => Some("the checkpoint task is gone".to_string()),
            Some(t) if t.state == computearbitrage_store::TaskState::Dead => Some(
                t.error
                    .clone()
                    .unwrap_or_else(|| "the checkpoint task failed".into()),
            ),
            _ => None,
        };
        if let Some(error) = failed.or_else(|| {
            (std::time::Instant::now() > give_up)
                .then(|| format!("no checkpoint within {} s", FRESH_CHECKPOINT_WAIT.as_secs()))
        }) {
            notify::enqueue(
                orch,
                w,
                "workload.checkpoint_failed",
                json!({ "trigger": "rebalance", "error": error }),
            )
            .await?;
            return Err(StepError::permanent(format!(
                "the checkpoint for the move failed ({error}); the workload stays where it is"
            )));
        }
        if orch.is_cancelled(&w.id) {
            return Err(StepError::permanent("cancelled"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn switch_route(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let placed = super::steps::provisioned_placement(ctx)?;
    let replacement = instance_id(ctx)?;
    let started = ctx.output(PROVISION)?["started_at_ms"].as_i64();
    let running = ctx.output(WAIT_RUNNING)?;
    let address = running["address"].as_str().unwrap_or_default().to_string();
    let tcp_address = running["tcp_address"].as_str().map(str::to_string);
    let switched_ms = now_ms();
    let reason = format!(
        "migrated to {} {} in {}",
        placed.cloud, placed.instance_type, placed.region
    );
    let changes = WorkloadChanges {
        placement: Some(Some(placed.clone())),
        instance_id: Some(Some(replacement.clone())),
        instance_started_at: Some(started),
        endpoint: Some(Some(address.clone())),
        tcp_endpoint: Some(tcp_address),
        ..Default::default()
    };
    if Cause::of(ctx.run).keeps_serving() {
        switch_serving(orch, ctx, &reason, changes).await?;
    } else {
        orch.transition(
            ctx.workload,
            WorkloadStatus::Provisioning,
            WorkloadStatus::Running,
            &reason,
            changes,
        )
        .await?;
    }
    // The new instance is heard from from now on; the old one's silence is not its.
    orch.heard(&ctx.workload.id);
    orch.silent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&replacement);
    Ok(json!({ "instance_id": replacement, "endpoint": address, "switched_at_ms": switched_ms }))
}

/// The switch of a make-before-break move: the workload keeps its status (it served
/// throughout), and the instance, endpoint and placement change in one write, which
/// the router applies at once. If the old instance was reclaimed or went unhealthy
/// meanwhile, the replacement (healthy by now) brings the workload back to RUNNING.
async fn switch_serving(
    orch: &Orchestrator,
    ctx: &StepContext<'_>,
    reason: &str,
    changes: WorkloadChanges,
) -> Result<(), StepError> {
    let current = orch
        .store
        .workload(&ctx.workload.tenant_id, &ctx.workload.id)
        .await?
        .ok_or_else(|| StepError::permanent("the workload is gone"))?;
    match current.status {
        WorkloadStatus::Running => {
            orch.store
                .update_workload(&current.tenant_id, &current.id, changes, now_ms())
                .await?;
        }
        WorkloadStatus::Unhealthy | WorkloadStatus::Provisioning => {
            orch.transition(
                &current,
                current.status,
                WorkloadStatus::Running,
                reason,
                changes,
            )
            .await?;
        }
        WorkloadStatus::Interrupted => {
            orch.transition(
                &current,
                WorkloadStatus::Interrupted,
                WorkloadStatus::Provisioning,
                "the instance being left was reclaimed during the move",
                WorkloadChanges::default(),
            )
            .await?;
            let current = orch
                .store
                .workload(&current.tenant_id, &current.id)
                .await?
                .ok_or_else(|| StepError::permanent("the workload is gone"))?;
            orch.transition(
                &current,
                WorkloadStatus::Provisioning,
                WorkloadStatus::Running,
                reason,
                changes,
            )
            .await?;
        }
        other => {
            return Err(StepError::permanent(format!(
                "the workload became {other} during the move"
            )))
        }
    }
    tracing::info!(workload_id = %current.id, reason, "route switched to the replacement (make-before-break)");
    // The monitor checks the replacement from now on; the old one is draining.
    if let Some(switched) = orch.store.workload(&current.tenant_id, &current.id).await? {
        orch.monitor.watch(&switched);
    }
    Ok(())
}

async fn terminate_replaced(
    orch: &Orchestrator,
    ctx: &StepContext<'_>,
) -> Result<Value, StepError> {
    let left = ctx.output(RECORD_INTERRUPTION)?;
    let old_id = left["instance_id"].as_str().unwrap_or_default();
    if Cause::of(ctx.run).keeps_serving() {
        // Requests the router sent the old instance before the switch finish there.
        let switched = ctx.output(SWITCH_ROUTE)?["switched_at_ms"]
            .as_i64()
            .unwrap_or_else(now_ms);
        // A destroy meanwhile ends the drain: everything goes now.
        let drain_until = switched + orch.settings.drain.as_millis() as i64;
        while now_ms() < drain_until && !orch.is_cancelled(&ctx.workload.id) {
            let left = (drain_until - now_ms()).clamp(1, 100) as u64;
            tokio::time::sleep(Duration::from_millis(left)).await;
        }
    }
    let driver = orch.driver(left["placement"]["cloud"].as_str().unwrap_or_default())?;
    driver.terminate(old_id).await?;
    // The old instance's segment ends when it does (billing is once per instance).
    let ended_ms = now_ms();
    if let (Ok(old_placed), Some(old_started)) = (
        serde_json::from_value::<PlacementRecord>(left["placement"].clone()),
        left["started_at_ms"].as_i64(),
    ) {
        orch.store
            .add_billing(bill(
                ctx.workload,
                &old_placed,
                old_id,
                old_started,
                ended_ms,
            ))
            .await?;
    }
    Ok(json!({ "terminated": old_id, "ended_at_ms": ended_ms }))
}

async fn notify_migrated(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let current = orch
        .get(&ctx.workload.tenant_id, &ctx.workload.id)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?;
    orch.monitor.watch(&current);
    let left = ctx.output(RECORD_INTERRUPTION)?;
    let switched = ctx.output(SWITCH_ROUTE)?["switched_at_ms"]
        .as_i64()
        .unwrap_or_else(now_ms);
    let notice_ms = left["notice_ms"].as_i64().unwrap_or(ctx.run.created_at);
    let checkpoint = ctx.output(AWAIT_CHECKPOINT)?.clone();
    let to = placement_record(ctx.output(PLACEMENT)?);
    let body = json!({
        "from": {
            "instance_id": left["instance_id"],
            "cloud": left["placement"]["cloud"],
            "region": left["placement"]["region"],
            "instance_type": left["placement"]["instance_type"],
        },
        "to": {
            "instance_id": current.instance_id,
            "cloud": to.cloud,
            "region": to.region,
            "instance_type": to.instance_type,
        },
        "cause": left["cause"].as_str().unwrap_or("interruption"),
        // A make-before-break move never stopped serving.
        "downtime_ms": if Cause::of(ctx.run).keeps_serving() { 0 } else { switched - notice_ms },
        "checkpoint": checkpoint["checkpoint"],
        "final_checkpoint": checkpoint["final"],
    });
    tracing::info!(workload_id = %current.id, downtime_ms = switched - notice_ms, checkpoint = %checkpoint["checkpoint"], "workload migrated");
    notify::enqueue(orch, &current, "workload.migrated", body.clone()).await?;
    Ok(body)
}

/// The replacement a migration started, from its ledger: where, which, since when (ms).
fn replacement_of(ledger: &[StepRecord]) -> Option<(PlacementRecord, String, i64)> {
    let output = |name: &str| {
        ledger
            .iter()
            .find(|s| s.step == name && s.completed)
            .and_then(|s| s.output.as_deref())
            .and_then(|o| serde_json::from_str::<Value>(o).ok())
    };
    let provisioned = output(PROVISION)?;
    let mut placed = placement_record(&output(PLACEMENT)?);
    super::steps::apply_market(&mut placed, &provisioned);
    Some((
        placed,
        provisioned["instance_id"].as_str()?.to_string(),
        provisioned["started_at_ms"].as_i64()?,
    ))
}

/// Replacements one notice may start: the first, and two more if the cloud reclaims
/// those too before the switch.
pub const MAX_REPLACEMENTS: usize = 3;

impl Orchestrator {
    /// The replacement the unfinished migration of `workload` started, if any: its
    /// run, placement, instance id and start.
    pub(crate) async fn replacement_in_flight(
        &self,
        workload: &WorkloadRecord,
    ) -> Result<Option<(RunRecord, PlacementRecord, String, i64)>, OrchestratorError> {
        let runs = self
            .store
            .runs_of(&workload.tenant_id, &workload.id)
            .await?;
        let Some(run) = runs
            .into_iter()
            .find(|r| r.kind == RunKind::Migrate && r.status == RunStatus::Running)
        else {
            return Ok(None);
        };
        self.unswitched_replacement(run).await
    }

    /// The replacement `run` (a migration) started, while it is not yet the
    /// workload's instance.
    async fn unswitched_replacement(
        &self,
        run: RunRecord,
    ) -> Result<Option<(RunRecord, PlacementRecord, String, i64)>, OrchestratorError> {
        let ledger = self.store.steps(&run.id).await?;
        if ledger.iter().any(|s| s.step == SWITCH_ROUTE && s.completed) {
            return Ok(None); // the replacement is the workload's instance now
        }
        Ok(replacement_of(&ledger).map(|(placed, id, started)| (run, placed, id, started)))
    }

    /// A notice for an instance that may be the replacement of an unfinished
    /// migration (the driver names only the instance): see
    /// [`Self::replacement_is_reclaimed`]. Whether it was one.
    pub(crate) async fn on_replacement_notice(
        &self,
        instance_id: &str,
    ) -> Result<bool, OrchestratorError> {
        for run in self.store.unfinished_runs().await? {
            if run.kind != RunKind::Migrate {
                continue;
            }
            if let Some((run, placed, id, _)) = self.unswitched_replacement(run).await? {
                if id == instance_id {
                    self.replacement_is_reclaimed(&run, &placed, &id);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The cloud reclaims replacement `id` of `run` before the switch: its offer is
    /// skipped like any reclaimed one, and the migration, failing at its wait for the
    /// replacement, starts over on another offer.
    pub(crate) fn replacement_is_reclaimed(
        &self,
        run: &RunRecord,
        placed: &PlacementRecord,
        id: &str,
    ) {
        let offer = ExcludedOffer::of(placed);
        let cooldown_ms = self.settings.migration_cooldown.as_millis() as i64;
        tracing::warn!(workload_id = %run.workload_id, run_id = %run.id, instance_id = id, offer = %offer, "the replacement is reclaimed before the switch; the move goes on to another offer");
        self.reclaimed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((offer, now_ms() + cooldown_ms));
        self.reclaimed_replacements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
    }

    /// Whether a notice for replacement `id` came (from its driver or its agent).
    pub(crate) fn reclaim_announced(&self, id: &str) -> bool {
        self.reclaimed_replacements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
    }

    /// Whether the cloud reclaims (or reclaimed) replacement `id`: its notice came,
    /// or its driver reports it interrupted.
    pub(crate) async fn replacement_reclaimed(&self, cloud: &str, id: &str) -> bool {
        if self.reclaim_announced(id) {
            return true;
        }
        match self.driver(cloud) {
            Ok(driver) => matches!(
                driver.instance(id).await.map(|i| i.state),
                Ok(InstanceState::Interrupted { .. })
            ),
            Err(_) => false,
        }
    }

    /// A replacement nothing forced (of an unhealthy instance, or a rebalance) failed
    /// before the switch: only the replacement goes, and the workload stays on its
    /// instance (RUNNING again if the move had begun, so the monitor judges it
    /// afresh); the next attempt comes after another `replace_unhealthy_after`, or
    /// once the saving has held again.
    async fn fail_replacement(
        self: &Arc<Self>,
        workload: &WorkloadRecord,
        cause: Cause,
        ledger: &[StepRecord],
        step: &str,
        error: &str,
    ) -> Result<(), OrchestratorError> {
        if let Some((placed, id, started)) = replacement_of(ledger) {
            if let Err(e) = self.driver(&placed.cloud)?.terminate(&id).await {
                tracing::warn!(workload_id = %workload.id, instance_id = %id, error = %e, "could not terminate the failed replacement; the sweeper will retry");
            }
            self.store
                .add_billing(bill(workload, &placed, &id, started, now_ms()))
                .await?;
        }
        let on = workload.instance_id.as_deref().unwrap_or("its instance");
        tracing::warn!(workload_id = %workload.id, step, error, instance_id = on, cause = cause.name(), "the replacement failed; the workload stays on its instance");
        if workload.status == WorkloadStatus::Provisioning {
            let (what, again) = match cause {
                Cause::Rebalance => (
                    "moving to a cheaper offer",
                    "moved once the saving holds again",
                ),
                Cause::Restart => ("the rolling replacement", "tried again in a few minutes"),
                _ => (
                    "replacing the unhealthy instance",
                    "tried again after replace_unhealthy_after_seconds",
                ),
            };
            self.transition(
                workload,
                WorkloadStatus::Provisioning,
                WorkloadStatus::Running,
                &format!("{what} failed at {step}: {error}; still on {on}, {again}"),
                WorkloadChanges::default(),
            )
            .await?;
        }
        if let Some(current) = self
            .store
            .workload(&workload.tenant_id, &workload.id)
            .await?
        {
            self.monitor.watch(&current);
        }
        notify::enqueue(
            self,
            workload,
            "workload.replacement_failed",
            json!({ "failed_step": step, "error": error, "instance_id": on, "cause": cause.name() }),
        )
        .await?;
        Ok(())
    }

    /// Starts replacing each workload with `on_unhealthy = "replace"` that has been
    /// UNHEALTHY for its `replace_unhealthy_after` (since its last transition there, as
    /// the store recorded it, so a restart does not reset the wait). One attempt per
    /// wait: a replacement that failed is tried again only once another has passed.
    pub async fn replace_unhealthy(self: &Arc<Self>) -> Result<Vec<String>, OrchestratorError> {
        let now = now_ms();
        let mut started = Vec::new();
        for workload in self
            .store
            .workloads_in(&[WorkloadStatus::Unhealthy])
            .await?
        {
            if workload.spec.on_unhealthy != OnUnhealthy::Replace {
                continue;
            }
            let Some((_moves, workload)) = self.lock_moves(&workload).await? else {
                continue;
            };
            if workload.status != WorkloadStatus::Unhealthy {
                continue;
            }
            let wait_ms = workload.spec.replace_unhealthy_after.as_millis() as i64;
            let since = self
                .store
                .transitions(&workload.tenant_id, &workload.id)
                .await?
                .iter()
                .rev()
                .find(|t| t.to == WorkloadStatus::Unhealthy)
                .map(|t| t.at)
                .unwrap_or(workload.updated_at);
            if now - since < wait_ms {
                continue;
            }
            let runs = self
                .store
                .runs_of(&workload.tenant_id, &workload.id)
                .await?;
            let busy = runs.iter().any(|r| {
                r.status == RunStatus::Running
                    && matches!(r.kind, RunKind::Migrate | RunKind::Terminate)
            });
            let tried_lately = runs.iter().any(|r| {
                r.kind == RunKind::Migrate
                    && Cause::of(r) == Cause::Unhealthy
                    && now - r.created_at < wait_ms
            });
            if busy || tried_lately {
                continue;
            }
            self.monitor.unwatch(&workload.id);
            tracing::warn!(workload_id = %workload.id, unhealthy_ms = now - since, "unhealthy for longer than replace_unhealthy_after_seconds: replacing the instance");
            self.start_migration(&workload, Cause::Unhealthy).await?;
            started.push(workload.id.clone());
        }
        Ok(started)
    }

    /// Starts a migration run for an interrupted workload, unless one is under way.
    pub(crate) async fn start_migration(
        self: &Arc<Self>,
        workload: &WorkloadRecord,
        cause: Cause,
    ) -> Result<(), OrchestratorError> {
        let runs = self
            .store
            .runs_of(&workload.tenant_id, &workload.id)
            .await?;
        if runs.iter().any(|r| {
            r.status == RunStatus::Running
                && matches!(r.kind, RunKind::Migrate | RunKind::Terminate)
        }) {
            return Ok(());
        }
        let now = now_ms();
        let run = RunRecord {
            id: new_id("run"),
            tenant_id: workload.tenant_id.clone(),
            workload_id: workload.id.clone(),
            kind: RunKind::Migrate,
            status: RunStatus::Running,
            reason: cause.reason(),
            error: None,
            failed_step: None,
            replays: 0,
            created_at: now,
            updated_at: now,
        };
        let run_id = run.id.clone();
        self.store.create_run(run).await?;
        tracing::info!(tenant = %workload.tenant_id, workload_id = %workload.id, run_id, cause = cause.name(), "migration started");
        self.spawn_run(run_id);
        Ok(())
    }

    /// A migration failed for good: release the replacement (the old instance is
    /// reclaimed anyway), mark the workload FAILED with the step and error. Except when
    /// the cloud reclaimed the replacement of a notice's move too (fewer than
    /// [`MAX_REPLACEMENTS`] times): then only the replacement goes, and the cause to
    /// start a new migration with, once this run is finished, is returned.
    pub(crate) async fn fail_migration(
        self: &Arc<Self>,
        run: &RunRecord,
        step: &str,
        error: &str,
    ) -> Result<Option<Cause>, OrchestratorError> {
        let Some(workload) = self
            .store
            .workload(&run.tenant_id, &run.workload_id)
            .await?
        else {
            return Ok(None);
        };
        let ledger = self.store.steps(&run.id).await?;
        let done = |name: &str| ledger.iter().any(|s| s.step == name && s.completed);
        if done(SWITCH_ROUTE) {
            // The workload runs on its replacement: a failure to terminate the old
            // instance or to notify must not kill it. The sweeper ends the old one.
            tracing::warn!(workload_id = %workload.id, step, error, "migration finished its move but not its cleanup; the orphan sweeper terminates the old instance");
            return Ok(None);
        }
        let cause = Cause::of(run);
        if cause.stays_on_failure() {
            self.fail_replacement(&workload, cause, &ledger, step, error)
                .await?;
            return Ok(None);
        }
        if let Some((placed, id, started)) = replacement_of(&ledger) {
            if self.replacement_reclaimed(&placed.cloud, &id).await
                && self.replacements_for_this_notice(&workload, run).await? < MAX_REPLACEMENTS
            {
                self.reclaimed_replacements
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Err(e) = self.driver(&placed.cloud)?.terminate(&id).await {
                    tracing::warn!(workload_id = %workload.id, instance_id = %id, error = %e, "could not terminate the reclaimed replacement; the sweeper will retry");
                }
                self.store
                    .add_billing(bill(&workload, &placed, &id, started, now_ms()))
                    .await?;
                tracing::warn!(workload_id = %workload.id, instance_id = %id, step, error, "the replacement was reclaimed before the switch; starting another on the next offer");
                notify::enqueue(
                    self,
                    &workload,
                    "workload.replacement_failed",
                    json!({ "failed_step": step, "error": error, "instance_id": id, "cause": cause.name(), "reclaimed": true, "retrying": true }),
                )
                .await?;
                return Ok(Some(cause));
            }
        }
        // The replacement, if one was started, is billed for what it ran.
        if let Some((placed, id, started)) = replacement_of(&ledger) {
            self.store
                .add_billing(bill(&workload, &placed, &id, started, now_ms()))
                .await?;
        }
        if let Err(e) = super::steps::release_instances(self, &workload).await {
            tracing::warn!(workload_id = %workload.id, error = %e.message, "could not release the instances of a failed migration; the sweeper will retry");
        }
        if let (Some(placed), Some(started), Some(instance_id)) = (
            &workload.placement,
            workload.instance_started_at,
            &workload.instance_id,
        ) {
            self.store
                .add_billing(bill(&workload, placed, instance_id, started, now_ms()))
                .await?;
        }
        let from = workload.status;
        if computearbitrage_core::lifecycle::is_allowed(from, WorkloadStatus::Failed) {
            self.transition(
                &workload,
                from,
                WorkloadStatus::Failed,
                &format!("migration failed: {error}"),
                WorkloadChanges {
                    failed_step: Some(Some(step.to_string())),
                    endpoint: Some(None),
                    tcp_endpoint: Some(None),
                    ..Default::default()
                },
            )
            .await?;
        }
        notify::enqueue(
            self,
            &workload,
            "workload.failed",
            json!({ "failed_step": step, "error": error, "during": "migration" }),
        )
        .await?;
        Ok(None)
    }

    /// The replacements started since the workload last finished a run (its
    /// provisioning or its last completed move): the dead migrations since, and `run`.
    async fn replacements_for_this_notice(
        &self,
        workload: &WorkloadRecord,
        run: &RunRecord,
    ) -> Result<usize, OrchestratorError> {
        let runs = self
            .store
            .runs_of(&workload.tenant_id, &workload.id)
            .await?;
        let since = runs
            .iter()
            .filter(|r| r.status == RunStatus::Completed)
            .map(|r| r.created_at)
            .max()
            .unwrap_or(0);
        let dead = runs
            .iter()
            .filter(|r| {
                r.kind == RunKind::Migrate
                    && r.status == RunStatus::Dead
                    && r.created_at > since
                    && r.id != run.id
            })
            .count();
        Ok(dead + 1)
    }
}
