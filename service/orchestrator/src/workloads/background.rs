//! Background workers of the orchestrator: the driver event listener (acts on
//! interruption notices as they arrive), the lost-instance watch (silent agents whose
//! driver agrees the instance ended), the run resumer (restarts unfinished runs after
//! a crash or a store outage), and the orphan sweeper (kills instances no workload
//! owns).

use super::migration::Cause;
use super::monitor::{HealthEvent, HealthHandler};
use super::{notify, Orchestrator};
use crate::error::OrchestratorError;
use crate::worker::Worker;
use computearbitrage_core::driver::{TENANT_TAG, WORKLOAD_TAG};
use computearbitrage_core::{Driver, DriverEvent, InstanceState, OnInterruption, WorkloadStatus};
use computearbitrage_store::{RunKind, RunStatus, WorkloadChanges, WorkloadRecord};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

impl Orchestrator {
    async fn workload_with_instance(
        &self,
        instance_id: &str,
    ) -> Result<Option<WorkloadRecord>, OrchestratorError> {
        let candidates = self
            .store
            .workloads_in(&[
                WorkloadStatus::Running,
                WorkloadStatus::Unhealthy,
                WorkloadStatus::Provisioning,
            ])
            .await?;
        Ok(candidates
            .into_iter()
            .find(|w| w.instance_id.as_deref() == Some(instance_id)))
    }

    /// Acts on what a driver reported.
    pub async fn on_driver_event(
        self: &Arc<Self>,
        event: DriverEvent,
    ) -> Result<(), OrchestratorError> {
        match event {
            DriverEvent::InterruptionNotice {
                instance_id,
                deadline,
            } => {
                let Some(found) = self.workload_with_instance(&instance_id).await? else {
                    self.on_replacement_notice(&instance_id).await?;
                    return Ok(());
                };
                let Some((_moves, workload)) = self.lock_moves(&found).await? else {
                    return Ok(());
                };
                if workload.instance_id.as_deref() != Some(instance_id.as_str()) {
                    // Moved off that instance meanwhile.
                    return Ok(());
                }
                tracing::warn!(tenant = %workload.tenant_id, workload_id = %workload.id, instance_id, deadline, "spot interruption notice");
                self.monitor.unwatch(&workload.id);
                let reason = format!(
                    "spot interruption: instance {instance_id} is reclaimed at {}",
                    computearbitrage_core::fmt::rfc3339(deadline)
                );
                if matches!(
                    workload.status,
                    WorkloadStatus::Running | WorkloadStatus::Unhealthy
                ) {
                    self.transition(
                        &workload,
                        workload.status,
                        WorkloadStatus::Interrupted,
                        &reason,
                        WorkloadChanges::default(),
                    )
                    .await?;
                } else {
                    // Already acted on (the agent and the driver both report a notice),
                    // or still provisioning: provisioning fails on its own.
                    return Ok(());
                }
                notify::enqueue(
                    self,
                    &workload,
                    "workload.interrupted",
                    json!({ "instance_id": instance_id, "deadline": computearbitrage_core::fmt::rfc3339(deadline), "on_interruption": workload.spec.on_interruption.as_str() }),
                )
                .await?;
                match workload.spec.on_interruption {
                    OnInterruption::Terminate => {
                        self.start_termination(
                            &workload,
                            "spot interruption; on_interruption = \"terminate\"",
                        )
                        .await?;
                    }
                    OnInterruption::Migrate => {
                        self.start_migration(&workload, Cause::Notice { deadline })
                            .await?
                    }
                }
            }
            DriverEvent::Exited {
                instance_id,
                reason,
            } => {
                let Some(workload) = self.workload_with_instance(&instance_id).await? else {
                    return Ok(());
                };
                if workload.status == WorkloadStatus::Running {
                    let why = format!("instance {instance_id} exited: {reason}");
                    self.transition(
                        &workload,
                        WorkloadStatus::Running,
                        WorkloadStatus::Unhealthy,
                        &why,
                        WorkloadChanges::default(),
                    )
                    .await?;
                    notify::enqueue(
                        self,
                        &workload,
                        "workload.unhealthy",
                        json!({ "reason": why }),
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl Orchestrator {
    /// INTERRUPTED workloads that no run is moving or ending (a store blip lost the
    /// run's creation, or a notice came while the last migration was finishing):
    /// their migration or termination is started again.
    pub async fn recover_interrupted(self: &Arc<Self>) -> Result<usize, OrchestratorError> {
        let mut started = 0;
        for workload in self
            .store
            .workloads_in(&[WorkloadStatus::Interrupted])
            .await?
        {
            let Some((_moves, workload)) = self.lock_moves(&workload).await? else {
                continue;
            };
            if workload.status != WorkloadStatus::Interrupted {
                continue;
            }
            if super::now_ms() - workload.updated_at < 10_000 {
                continue;
            }
            let runs = self
                .store
                .runs_of(&workload.tenant_id, &workload.id)
                .await?;
            let moving = runs.iter().any(|r| {
                r.status == computearbitrage_store::RunStatus::Running
                    && matches!(
                        r.kind,
                        computearbitrage_store::RunKind::Migrate
                            | computearbitrage_store::RunKind::Terminate
                    )
            });
            if moving {
                continue;
            }
            tracing::warn!(workload_id = %workload.id, "an interrupted workload had no run; starting it again");
            match workload.spec.on_interruption {
                OnInterruption::Terminate => {
                    self.start_termination(&workload, &workload.status_reason)
                        .await?
                }
                OnInterruption::Migrate => {
                    self.start_migration(
                        &workload,
                        Cause::Notice {
                            deadline: super::now_ms() / 1000,
                        },
                    )
                    .await?
                }
            }
            started += 1;
        }
        Ok(started)
    }

    /// An instance gone without a notice: as a notice with no time left.
    pub(crate) async fn on_instance_lost(
        self: &Arc<Self>,
        workload: &WorkloadRecord,
        instance_id: &str,
        reason: &str,
        quiet: Duration,
    ) -> Result<(), OrchestratorError> {
        let _moves = self.moves.lock(&workload.id).await;
        // A notice may have been acted on meanwhile.
        let Some(workload) = self
            .store
            .workload(&workload.tenant_id, &workload.id)
            .await?
            .filter(|w| {
                matches!(
                    w.status,
                    WorkloadStatus::Running | WorkloadStatus::Unhealthy
                ) && w.instance_id.as_deref() == Some(instance_id)
            })
        else {
            return Ok(());
        };
        let workload = &workload;
        self.monitor.unwatch(&workload.id);
        let why = format!(
            "instance {instance_id} lost: no heartbeat for {} s and the driver reports it ended ({reason})",
            quiet.as_secs()
        );
        self.transition(
            workload,
            workload.status,
            WorkloadStatus::Interrupted,
            &why,
            WorkloadChanges::default(),
        )
        .await?;
        notify::enqueue(
            self,
            workload,
            "workload.interrupted",
            json!({ "instance_id": instance_id, "lost": true, "reason": why, "on_interruption": workload.spec.on_interruption.as_str() }),
        )
        .await?;
        let now = super::now_ms() / 1000;
        match workload.spec.on_interruption {
            OnInterruption::Terminate => self.start_termination(workload, &why).await,
            OnInterruption::Migrate => {
                self.start_migration(workload, Cause::Notice { deadline: now })
                    .await
            }
        }
    }
}

#[async_trait::async_trait]
impl HealthHandler for Orchestrator {
    async fn on_health_event(&self, event: HealthEvent) -> Result<(), OrchestratorError> {
        match event {
            HealthEvent::Unhealthy {
                tenant,
                workload_id,
                failures,
                last_error,
            } => {
                let Some(workload) = self.store.workload(&tenant, &workload_id).await? else {
                    return Ok(());
                };
                if workload.status == WorkloadStatus::Running {
                    let reason =
                        format!("{failures} consecutive health checks failed; last: {last_error}");
                    self.transition(
                        &workload,
                        WorkloadStatus::Running,
                        WorkloadStatus::Unhealthy,
                        &reason,
                        WorkloadChanges::default(),
                    )
                    .await?;
                    notify::enqueue(
                        self,
                        &workload,
                        "workload.unhealthy",
                        json!({ "failures": failures, "last_error": last_error }),
                    )
                    .await?;
                }
            }
            HealthEvent::Recovered {
                tenant,
                workload_id,
            } => {
                let Some(workload) = self.store.workload(&tenant, &workload_id).await? else {
                    return Ok(());
                };
                if workload.status == WorkloadStatus::Unhealthy {
                    self.transition(
                        &workload,
                        WorkloadStatus::Unhealthy,
                        WorkloadStatus::Running,
                        "health check passed again",
                        WorkloadChanges::default(),
                    )
                    .await?;
                    notify::enqueue(self, &workload, "workload.recovered", json!({})).await?;
                }
            }
        }
        Ok(())
    }
}

/// Waits for driver events and acts on them at once.
pub struct DriverEventListener {
    pub orchestrator: Arc<Orchestrator>,
    pub driver: Arc<dyn Driver>,
}

#[async_trait::async_trait]
impl Worker for DriverEventListener {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        format!("driver-events:{}", self.driver.name())
    }

    fn interval(&self) -> Duration {
        Duration::ZERO
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        // Bounded wait, so shutdown is noticed within a second.
        if let Some(event) = self.driver.next_event(Duration::from_secs(1)).await {
            self.orchestrator.on_driver_event(event).await?;
        }
        Ok(())
    }
}

/// Declares lost the instances whose agents fell silent and whose driver agrees.
pub struct LostInstanceWatch {
    pub orchestrator: Arc<Orchestrator>,
    pub interval: Duration,
}

#[async_trait::async_trait]
impl Worker for LostInstanceWatch {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        "lost-instances".into()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        self.orchestrator.find_lost_instances().await?;
        self.orchestrator.recover_interrupted().await.map(|_| ())
    }
}

/// Replaces the instances of workloads that stayed UNHEALTHY (`on_unhealthy = "replace"`).
pub struct UnhealthyReplacer {
    pub orchestrator: Arc<Orchestrator>,
    pub interval: Duration,
}

#[async_trait::async_trait]
impl Worker for UnhealthyReplacer {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        "unhealthy-replacer".into()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        self.orchestrator.replace_unhealthy().await.map(|_| ())
    }
}

/// Moves workloads to cheaper offers once the saving holds (`rebalance` blocks), and
/// on-demand fallbacks back to spot; replaces instances that run an older env.
pub struct Rebalancer {
    pub orchestrator: Arc<Orchestrator>,
    pub interval: Duration,
}

#[async_trait::async_trait]
impl Worker for Rebalancer {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        "rebalancer".into()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        self.orchestrator.restart_stale().await?;
        self.orchestrator.rebalance().await.map(|_| ())
    }
}

/// Restarts runs that are `running` in the store but not executing here.
pub struct RunResumer {
    pub orchestrator: Arc<Orchestrator>,
    pub interval: Duration,
}

#[async_trait::async_trait]
impl Worker for RunResumer {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        "run-resumer".into()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        self.orchestrator.resume_unfinished().await.map(|_| ())
    }
}

/// Terminates live instances that no active workload owns.
pub struct OrphanSweeper {
    pub orchestrator: Arc<Orchestrator>,
    pub interval: Duration,
}

impl OrphanSweeper {
    pub async fn sweep(&self) -> Result<Vec<String>, OrchestratorError> {
        let orch = &self.orchestrator;
        let mut swept = Vec::new();
        for driver in orch.distinct_drivers() {
            for instance in driver.list_by_tag(WORKLOAD_TAG, None).await? {
                if matches!(instance.state, InstanceState::Terminated { .. }) {
                    continue;
                }
                let (Some(workload_id), Some(tenant)) = (
                    instance.tags.get(WORKLOAD_TAG),
                    instance.tags.get(TENANT_TAG),
                ) else {
                    continue;
                };
                let owner = orch.store.workload(tenant, workload_id).await?;
                let orphan = match &owner {
                    None => true,
                    Some(w) => match w.status {
                        WorkloadStatus::Failed | WorkloadStatus::Terminated => true,
                        WorkloadStatus::Pending | WorkloadStatus::Provisioning => false,
                        // A live instance that is not the workload's current one.
                        _ => w.instance_id.as_deref() != Some(instance.instance_id.as_str()),
                    },
                };
                // A move under way ends the instances it leaves or started itself (the
                // one a make-before-break move leaves is draining); if it fails, the
                // next sweep finds them.
                let moving = match &owner {
                    Some(w) if orphan && w.status.is_active() => orch
                        .store
                        .runs_of(tenant, workload_id)
                        .await?
                        .iter()
                        .any(|r| r.kind == RunKind::Migrate && r.status == RunStatus::Running),
                    _ => false,
                };
                if orphan && !moving {
                    tracing::warn!(instance_id = %instance.instance_id, workload_id = %workload_id, "terminating an orphaned instance");
                    driver.terminate(&instance.instance_id).await?;
                    swept.push(instance.instance_id);
                }
            }
        }
        Ok(swept)
    }
}

#[async_trait::async_trait]
impl Worker for OrphanSweeper {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        "orphan-sweeper".into()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        self.sweep().await.map(|_| ())
    }
}
