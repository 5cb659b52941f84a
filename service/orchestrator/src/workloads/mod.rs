//! Workloads: the durable orchestrator and everything that changes a workload.
//!
//! - [`Orchestrator`] (this file): the operations the API calls (apply, update,
//!   delete, replay, interrupt) and the shared context of the workflows.
//! - [`engine`]: executes workflow runs step by step against the ledger in the store,
//!   with retries, dead letters and crash-safe resumption.
//! - [`steps`]: what each provisioning and termination step does.
//! - [`agents`]: what the on-instance agents may do (register, heartbeat, report
//!   notices, checkpoints and exits), and who is fenced.
//! - [`migration`]: moving an interrupted workload to a replacement instance (and
//!   the make-before-break moves of rebalancing).
//! - [`rebalance`]: when a running workload moves to a cheaper offer, or back to spot.
//! - [`monitor`]: health checks of running workloads.
//! - [`notify`]: signed webhook notifications with retries, per-tenant delivery.
//! - [`webhook_target`]: where webhooks may go (no internal addresses, no redirects).
//! - [`tasks`]: operator tasks (exec, checkpoint, stop, pause, resume) queued for a
//!   workload's agent, delivered at least once, retried, dead-lettered.
//! - [`workload_storage`]: the workload's own `state/` and `artifacts/` (signed URLs
//!   and listings), asked for through its agent.
//! - [`retention`]: deletes terminated workloads' storage once `retention_days` pass.
//! - [`background`]: the workers that listen to driver events, resume runs and sweep
//!   orphaned instances.
//!
//! Invariant: only this module changes a workload's status, and only through
//! `core::lifecycle::Transition`.

pub mod agents;
pub mod background;
pub mod engine;
pub mod migration;
pub mod monitor;
pub mod notify;
pub mod rebalance;
pub mod retention;
pub mod steps;
pub mod tasks;
#[cfg(test)]
mod tests;
pub mod webhook_target;
pub mod workload_storage;

use crate::error::OrchestratorError;
use crate::pricing::PriceBook;
use computearbitrage_core::{
    Cloud, Driver, ScoringPolicy, Transition, WorkloadSpec, WorkloadStatus,
};
use computearbitrage_store::{
    CreateOutcome, RunKind, RunRecord, RunStatus, Store, WorkloadChanges, WorkloadRecord,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A random id with a readable prefix (`wl-…`, `run-…`: DNS-safe, so a workload id can be a host label).
pub fn new_id(prefix: &str) -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 10];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

/// Orchestrator settings from the service configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Quota of active workloads per tenant unless the tenant overrides it.
    pub max_concurrent_workloads: u32,
    /// How long an instance may take to report running.
    pub wait_running_timeout: Duration,
    /// Default delay between an injected interruption notice and the kill.
    pub interruption_delay: Duration,
    /// Where the engine pauses for the crash test (`STEP:before|after|uncommitted`).
    pub pause_at: Option<String>,
    /// Derives each workload's router access token.
    pub access_tokens: crate::tokens::AccessTokenKey,
    /// Router TCP listener ports are allocated from (and requested within) this range.
    pub tcp_ports: std::ops::RangeInclusive<u16>,
    /// How often agents send heartbeats.
    pub agent_heartbeat: Duration,
    /// How long placement skips an offer after one of its instances was reclaimed.
    pub migration_cooldown: Duration,
    /// How long the old instance of a make-before-break move keeps serving the
    /// requests sent before the switch.
    pub drain: Duration,
}

/// An API-level failure of an orchestrator operation, one variant per cause the API
/// reports with its own reason.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("{0}")]
    NotFound(String),
    /// An active workload of the name exists and asks for something else.
    #[error("{0}")]
    NameTaken(String),
    /// The workload has terminated; nothing about it can change.
    #[error("{0}")]
    Terminated(String),
    /// The operation needs the workload (or run) in another state.
    #[error("{0}")]
    WrongState(String),
    /// The change cannot be made in place.
    #[error("{0}")]
    NeedsReplacement(String),
    /// A field of the request cannot be honoured (names the field, like validation).
    #[error("{field}: {message}")]
    InvalidField {
        field: &'static str,
        message: String,
    },
    /// A shared, finite resource ran out.
    #[error("{0}")]
    Exhausted(String),
    #[error(transparent)]
    Service(#[from] OrchestratorError),
}

impl From<computearbitrage_store::StoreError> for OperationError {
    fn from(e: computearbitrage_store::StoreError) -> Self {
        OperationError::Service(e.into())
    }
}

/// What `UpdateWorkload` replaces.
#[derive(Debug, Clone)]
pub struct WorkloadUpdate {
    pub tags: std::collections::BTreeMap<String, String>,
    pub env: std::collections::BTreeMap<String, String>,
    /// The check in effect (defaults filled in).
    pub health_check: computearbitrage_core::HealthCheck,
    /// Whether the request had a health_check block.
    pub health_check_written: bool,
    pub on_interruption: computearbitrage_core::OnInterruption,
    pub on_unhealthy: computearbitrage_core::OnUnhealthy,
    pub replace_unhealthy_after: std::time::Duration,
    pub fallback: computearbitrage_core::Fallback,
    /// `None`: no price-driven moves.
    pub rebalance: Option<computearbitrage_core::RebalancePolicy>,
    /// `None` keeps the current storage.
    pub storage: Option<computearbitrage_core::StorageSpec>,
    /// Empty: this machine only.
    pub tcp_allowed_cidrs: Vec<String>,
    /// The checkpointing in effect (defaults filled in).
    pub checkpoint: computearbitrage_core::CheckpointSpec,
    /// Whether the request had a checkpoint block.
    pub checkpoint_written: bool,
}

pub struct Orchestrator {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) book: Arc<PriceBook>,
    pub(crate) policy: ScoringPolicy,
    pub(crate) drivers: HashMap<Cloud, Arc<dyn Driver>>,
    pub(crate) monitor: Arc<monitor::Monitor>,
    pub(crate) http: reqwest::Client,
    pub(crate) settings: Settings,
    /// Runs executing in this process: run id → workload id.
    pub(crate) in_flight: Mutex<HashMap<String, String>>,
    /// Workloads whose provisioning must stop at the next step boundary.
    pub(crate) cancelled: Mutex<HashSet<String>>,
    /// Where agents reach the service, and checkpoint storage (set once listening).
    pub(crate) agents: std::sync::OnceLock<agents::AgentLink>,
    /// The last checkpoint report per workload.
    pub(crate) checkpoint_reports: Mutex<HashMap<String, agents::CheckpointOutcome>>,
    /// The last output lines of exited workloads, by the run that launched them.
    pub(crate) exit_reports: Mutex<HashMap<String, computearbitrage_agent_protocol::ExitReport>>,
    /// Offers recently reclaimed, skipped by placement until the time (unix ms).
    pub(crate) reclaimed: Mutex<Vec<(migration::ExcludedOffer, i64)>>,
    /// Replacements the cloud announced it reclaims before their migration switched.
    pub(crate) reclaimed_replacements: Mutex<HashSet<String>>,
    /// When each workload's current agent was last heard from (register, heartbeat).
    pub(crate) heard_from: Mutex<HashMap<String, std::time::Instant>>,
    /// Workloads whose current instance's agent reported the workload's own exit, by
    /// the instance: such an instance ended, it was not lost.
    pub(crate) exited: Mutex<HashMap<String, String>>,
    /// Instances already reported as silent but alive (warned once each).
    pub(crate) silent: Mutex<HashSet<String>>,
    /// A lock per workload around deciding to move it (a notice, a lost instance, a
    /// rebalance, a rolling restart, an unhealthy replacement), so two reports of one
    /// notice, or a notice and a sweep, never both start a run; and a sweep over many
    /// workloads never holds up another workload's notice.
    pub(crate) moves: MoveLocks,
    /// Each workload's recent output, as its agents shipped it.
    pub(crate) logs: Mutex<HashMap<String, agents::LogRing>>,
    /// When this process started: agents not heard from since count from here.
    pub(crate) started: std::time::Instant,
    /// Serializes every change of a task (claim, result, replay) in this process.
    pub(crate) task_changes: tokio::sync::Mutex<()>,
    /// Wakes agents waiting for a task when one is queued.
    pub(crate) task_queued: tokio::sync::Notify,
    /// Each rebalancing workload's wait for a cheaper offer to hold.
    pub(crate) rebalance_watches: Mutex<
        HashMap<String, computearbitrage_core::rebalance::RebalanceWatch<migration::ExcludedOffer>>,
    >,
}

/// One async lock per workload id; see [`Orchestrator::moves`].
#[derive(Default)]
pub(crate) struct MoveLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl MoveLocks {
    pub(crate) async fn lock(&self, workload_id: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if locks.len() > 1024 {
                // Forget the locks nobody holds or waits for.
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks.entry(workload_id.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

impl Orchestrator {
    /// The workload as stored now, with its move lock held: a sweep's older snapshot
    /// must not decide a move (`None` when it is gone).
    pub(crate) async fn lock_moves(
        &self,
        workload: &WorkloadRecord,
    ) -> Result<Option<(tokio::sync::OwnedMutexGuard<()>, WorkloadRecord)>, OrchestratorError> {
        let guard = self.moves.lock(&workload.id).await;
        Ok(self
            .store
            .workload(&workload.tenant_id, &workload.id)
            .await?
            .map(|fresh| (guard, fresh)))
    }

    /// An orchestrator with a driver per cloud.
    pub fn new(
        store: Arc<dyn Store>,
        book: Arc<PriceBook>,
        policy: ScoringPolicy,
        drivers: HashMap<Cloud, Arc<dyn Driver>>,
        monitor: Arc<monitor::Monitor>,
        settings: Settings,
    ) -> Arc<Orchestrator> {
        Arc::new(Orchestrator {
            store,
            book,
            policy,
            drivers,
            monitor,
            // Health checks: a 2xx of the workload itself; a redirect is an answer, not a
            // place to go.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client with default settings builds"),
            settings,
            in_flight: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(HashSet::new()),
            agents: std::sync::OnceLock::new(),
            checkpoint_reports: Mutex::new(HashMap::new()),
            exit_reports: Mutex::new(HashMap::new()),
            reclaimed: Mutex::new(Vec::new()),
            reclaimed_replacements: Mutex::new(HashSet::new()),
            heard_from: Mutex::new(HashMap::new()),
            exited: Mutex::new(HashMap::new()),
            silent: Mutex::new(HashSet::new()),
            logs: Mutex::new(HashMap::new()),
            moves: MoveLocks::default(),
            started: std::time::Instant::now(),
            task_changes: tokio::sync::Mutex::new(()),
            task_queued: tokio::sync::Notify::new(),
            rebalance_watches: Mutex::new(HashMap::new()),
        })
    }

    /// One driver standing in for every cloud (the embedded default: the local driver).
    pub fn with_one_driver(
        store: Arc<dyn Store>,
        book: Arc<PriceBook>,
        policy: ScoringPolicy,
        driver: Arc<dyn Driver>,
        monitor: Arc<monitor::Monitor>,
        settings: Settings,
    ) -> Arc<Orchestrator> {
        let drivers = Cloud::ALL
            .into_iter()
            .map(|c| (c, driver.clone()))
            .collect();
        Self::new(store, book, policy, drivers, monitor, settings)
    }

    /// The key each workload's router access token derives from.
    pub fn access_tokens(&self) -> &crate::tokens::AccessTokenKey {
        &self.settings.access_tokens
    }

    /// Each driver once (one driver may serve several clouds).
    pub(crate) fn distinct_drivers(&self) -> Vec<Arc<dyn Driver>> {
        let mut seen = HashSet::new();
        self.drivers
            .values()
            .filter(|d| seen.insert(d.name().to_string()))
            .cloned()
            .collect()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub(crate) fn driver(&self, cloud: &str) -> Result<Arc<dyn Driver>, OrchestratorError> {
        Cloud::parse(cloud)
            .and_then(|c| self.drivers.get(&c).cloned())
            .ok_or_else(|| OrchestratorError::config(format!("no driver for cloud {cloud:?}")))
    }

    /// Creates a workload and starts provisioning it, or returns the active workload
    /// of the same name if it asks for the same thing (the adopt path of a create that
    /// Terraform lost).
    pub async fn apply(
        self: &Arc<Self>,
        tenant: &str,
        spec: WorkloadSpec,
    ) -> Result<WorkloadRecord, OperationError> {
        let now = now_ms();
        let id = new_id("wl");
        let record = WorkloadRecord {
            id: id.clone(),
            tenant_id: tenant.to_string(),
            name: spec.name.clone(),
            spec: spec.clone(),
            status: WorkloadStatus::Pending,
            status_reason: "accepted; provisioning will start".into(),
            failed_step: None,
            placement: None,
            instance_id: None,
            endpoint: None,
            instance_started_at: None,
            access_token_hash: Some(self.settings.access_tokens.hash_for(&id)),
            tcp_endpoint: None,
            tcp_listen_port: None,
            created_at: now,
            updated_at: now,
        };
        let run = RunRecord {
            id: new_id("run"),
            tenant_id: tenant.to_string(),
            workload_id: id.clone(),
            kind: RunKind::Provision,
            status: RunStatus::Running,
            reason: "created".into(),
            error: None,
            failed_step: None,
            replays: 0,
            created_at: now,
            updated_at: now,
        };
        let run_id = run.id.clone();
        let (record, outcome) = self.create_with_tcp_port(record, run).await?;
        match outcome {
            CreateOutcome::Created => {
                tracing::info!(tenant, workload_id = %id, name = %spec.name, "workload accepted");
                self.spawn_run(run_id);
                Ok(record)
            }
            CreateOutcome::Existing(existing) => {
                let differences = existing.spec.differences(&spec);
                if differences.is_empty() {
                    tracing::info!(tenant, workload_id = %existing.id, name = %spec.name, "adopted the existing workload of this name");
                    Ok(*existing)
                } else {
                    Err(OperationError::NameTaken(format!(
                        "workload {:?} already exists as {} ({}) and differs in {}; to manage it from this configuration, import it with `terraform import <resource address> {}`; otherwise choose another name, or destroy it first",
                        spec.name,
                        existing.id,
                        existing.status,
                        differences.join(", "),
                        existing.id
                    )))
                }
            }
        }
    }

    /// Stores the workload, giving it a router TCP port when it asked for TCP exposure:
    /// the one it requested, or the lowest free one of the range. The store's unique
    /// index settles races between concurrent creates.
    async fn create_with_tcp_port(
        &self,
        mut record: WorkloadRecord,
        run: RunRecord,
    ) -> Result<(WorkloadRecord, CreateOutcome), OperationError> {
        if record.spec.tcp_port.is_none() {
            let outcome = self.store.create_workload(record.clone(), run).await?;
            return Ok((record, outcome));
        }
        let range = self.settings.tcp_ports.clone();
        if let Some(requested) = record.spec.tcp_listen_port {
            if !range.contains(&requested) {
                return Err(OperationError::InvalidField {
                    field: "tcp_listen_port",
                    message: format!(
                        "{requested} is outside the router's TCP port range {}-{}; choose a port in it, or leave tcp_listen_port unset to get one",
                        range.start(),
                        range.end()
                    ),
                });
            }
        }
        for _ in 0..8 {
            let port = match record.spec.tcp_listen_port {
                Some(requested) => requested,
                None => {
                    let taken: HashSet<u16> = self
                        .store
                        .workloads_in(&WorkloadStatus::active())
                        .await?
                        .into_iter()
                        .filter_map(|w| w.tcp_listen_port)
                        .collect();
                    range.clone().find(|p| !taken.contains(p)).ok_or_else(|| {
                        OperationError::Exhausted(format!(
                            "every router TCP port in {}-{} is in use; destroy a workload with tcp_port, or widen router.tcp_port_min/max",
                            range.start(),
                            range.end()
                        ))
                    })?
                }
            };
            record.tcp_listen_port = Some(port);
            match self
                .store
                .create_workload(record.clone(), run.clone())
                .await
            {
                Ok(outcome) => return Ok((record, outcome)),
                Err(computearbitrage_store::StoreError::Conflict { .. }) => {
                    // Either the requested port is taken, or a concurrent create
                    // took the one we picked; the same name may also exist now.
                    if let Some(existing) = self
                        .store
                        .active_workload_named(&record.tenant_id, &record.name)
                        .await?
                    {
                        return Ok((record, CreateOutcome::Existing(Box::new(existing))));
                    }
                    if record.spec.tcp_listen_port.is_some() {
                        return Err(OperationError::InvalidField {
                            field: "tcp_listen_port",
                            message: format!(
                                "{port} is already used by another workload; choose another port, or leave tcp_listen_port unset to get a free one"
                            ),
                        });
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(OperationError::Service(OrchestratorError::Store(
            computearbitrage_store::StoreError::Unavailable {
                engine: self.store.engine(),
                message: "could not allocate a router TCP port after 8 tries; retry".into(),
            },
        )))
    }

    pub async fn get(&self, tenant: &str, id: &str) -> Result<WorkloadRecord, OperationError> {
        self.store.workload(tenant, id).await?.ok_or_else(|| {
            OperationError::NotFound(format!(
                "no workload {id:?}; it may have been created in another tenant or never existed"
            ))
        })
    }

    /// Replaces what can change in place: tags, env, health check, on_interruption,
    /// on_unhealthy and its wait, fallback, rebalance, and storage's quota and retention.
    pub async fn update(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        update: WorkloadUpdate,
    ) -> Result<WorkloadRecord, OperationError> {
        let current = self.get(tenant, id).await?;
        if matches!(
            current.status,
            WorkloadStatus::Terminated | WorkloadStatus::Failed
        ) {
            return Err(OperationError::Terminated(format!(
                "workload {id} is {} and cannot change; create a new one",
                current.status
            )));
        }
        let mut spec = current.spec.clone();
        let mut written = spec.written_blocks();
        if let Some(storage) = update.storage {
            if storage.enabled != spec.storage.enabled {
                return Err(OperationError::NeedsReplacement(format!(
                    "storage.enabled of workload {id} cannot change in place (it is {}); replace the workload to {} storage",
                    spec.storage.enabled,
                    if storage.enabled { "add" } else { "remove" }
                )));
            }
            spec.storage = storage;
            written.storage = true;
        }
        spec.tags = update.tags;
        spec.env = update.env;
        spec.health_check = update.health_check;
        written.health_check = update.health_check_written;
        spec.on_interruption = update.on_interruption;
        spec.on_unhealthy = update.on_unhealthy;
        spec.replace_unhealthy_after = update.replace_unhealthy_after;
        spec.fallback = update.fallback;
        spec.rebalance = update.rebalance;
        spec.tcp_allowed_cidrs = update.tcp_allowed_cidrs;
        if !update.checkpoint.interval.is_zero() && !spec.storage.enabled {
            return Err(OperationError::InvalidField {
                field: "checkpoint.interval_seconds",
                message: format!(
                    "workload {id} has no storage for periodic checkpoints to go to; set 0, or replace it with `storage {{ enabled = true }}`"
                ),
            });
        }
        spec.checkpoint = update.checkpoint;
        written.checkpoint = update.checkpoint_written;
        spec.written = Some(written);
        self.store
            .update_workload(
                tenant,
                id,
                WorkloadChanges {
                    spec: Some(spec),
                    ..Default::default()
                },
                now_ms(),
            )
            .await?;
        let updated = self.get(tenant, id).await?;
        if matches!(
            updated.status,
            WorkloadStatus::Running | WorkloadStatus::Unhealthy
        ) {
            self.monitor.watch(&updated);
        }
        // A new env reaches the workload only on a new instance: a rolling replacement
        // now (or, if a move is under way, by the rebalancer's check once it is done).
        self.restart_one_if_stale(&updated).await?;
        Ok(updated)
    }

    /// Starts termination unless it is under way or done.
    pub async fn delete(
        self: &Arc<Self>,
        tenant: &str,
        id: &str,
        reason: &str,
    ) -> Result<WorkloadRecord, OperationError> {
        let workload = self.get(tenant, id).await?;
        if workload.status == WorkloadStatus::Terminated {
            return Ok(workload);
        }
        self.start_termination(&workload, reason).await?;
        self.get(tenant, id).await
    }

    /// Starts a termination run for a workload, unless one is already running.
    pub(crate) async fn start_termination(
        self: &Arc<Self>,
        workload: &WorkloadRecord,
        reason: &str,
    ) -> Result<(), OrchestratorError> {
        let runs = self
            .store
            .runs_of(&workload.tenant_id, &workload.id)
            .await?;
        if runs
            .iter()
            .any(|r| r.kind == RunKind::Terminate && r.status == RunStatus::Running)
        {
            return Ok(());
        }
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(workload.id.clone());
        let now = now_ms();
        let run = RunRecord {
            id: new_id("run"),
            tenant_id: workload.tenant_id.clone(),
            workload_id: workload.id.clone(),
            kind: RunKind::Terminate,
            status: RunStatus::Running,
            reason: reason.to_string(),
            error: None,
            failed_step: None,
            replays: 0,
            created_at: now,
            updated_at: now,
        };
        let run_id = run.id.clone();
        self.store.create_run(run).await?;
        tracing::info!(tenant = %workload.tenant_id, workload_id = %workload.id, reason, "termination started");
        self.spawn_run(run_id);
        Ok(())
    }

    /// Puts a dead run back to work from its first unfinished step.
    pub async fn replay(
        self: &Arc<Self>,
        tenant: &str,
        run_id: &str,
    ) -> Result<RunRecord, OperationError> {
        let run = self
            .store
            .run(run_id)
            .await?
            .filter(|r| r.tenant_id == tenant)
            .ok_or_else(|| OperationError::NotFound(format!("no run {run_id:?}")))?;
        if run.status != RunStatus::Dead {
            return Err(OperationError::WrongState(format!(
                "run {run_id} is {}, not a dead letter; only dead runs can be replayed",
                run.status.as_str()
            )));
        }
        if run.kind == RunKind::Provision {
            return Err(OperationError::WrongState(format!(
                "run {run_id} provisioned a workload that has FAILED and released its instance; apply the workload again instead of replaying"
            )));
        }
        self.store.revive_run(run_id, now_ms()).await?;
        tracing::info!(tenant, run_id, "dead letter replayed");
        self.spawn_run(run_id.to_string());
        Ok(self.store.run(run_id).await?.unwrap_or(run))
    }

    /// Every billing segment of a workload: the closed ones, then the current
    /// instance's up to now (marked by `ended_at` = now), when it runs.
    pub async fn billing_to_date(
        &self,
        workload: &WorkloadRecord,
    ) -> Result<
        (
            Vec<computearbitrage_store::BillingRecord>,
            Option<computearbitrage_store::BillingRecord>,
        ),
        OrchestratorError,
    > {
        let closed = self
            .store
            .billing(&workload.tenant_id, &workload.id)
            .await?;
        let open = match (
            &workload.placement,
            workload.instance_started_at,
            &workload.instance_id,
        ) {
            (Some(placed), Some(started), Some(instance))
                if workload.status.is_active()
                    && !closed.iter().any(|b| &b.instance_id == instance) =>
            {
                Some(steps::bill(workload, placed, instance, started, now_ms()))
            }
            _ => None,
        };
        Ok((closed, open))
    }

    /// Completed migrations and the time they kept the workload unreachable (from the
    /// notice until the route switched; none for a rebalance), in seconds.
    pub async fn migration_downtime(
        &self,
        workload: &WorkloadRecord,
    ) -> Result<(u32, f64), OrchestratorError> {
        let mut count = 0;
        let mut seconds = 0.0;
        for run in self
            .store
            .runs_of(&workload.tenant_id, &workload.id)
            .await?
            .into_iter()
            .filter(|r| r.kind == RunKind::Migrate)
        {
            let switched = self
                .store
                .steps(&run.id)
                .await?
                .into_iter()
                .find(|s| s.step == computearbitrage_core::workflow::SWITCH_ROUTE && s.completed)
                .and_then(|s| s.output)
                .and_then(|o| serde_json::from_str::<serde_json::Value>(&o).ok())
                .and_then(|o| o["switched_at_ms"].as_i64());
            if let Some(switched) = switched {
                count += 1;
                // A make-before-break move served throughout.
                if !migration::Cause::of(&run).keeps_serving() {
                    seconds += (switched - run.created_at).max(0) as f64 / 1000.0;
                }
            }
        }
        Ok((count, seconds))
    }

    /// Local driver only: a spot interruption of the workload's instance, or of the
    /// replacement its unfinished migration started.
    pub async fn inject_interruption(
        &self,
        tenant: &str,
        id: &str,
        delay: Option<Duration>,
    ) -> Result<(String, i64), OperationError> {
        let workload = self.get(tenant, id).await?;
        // A workload on the move: the notice goes to the replacement being started.
        let moving = match workload.status {
            WorkloadStatus::Running => None,
            _ => self
                .replacement_in_flight(&workload)
                .await
                .map_err(OperationError::Service)?,
        };
        let (instance_id, cloud) = match (&moving, &workload.instance_id, &workload.placement) {
            (Some((_, placed, replacement, _)), _, _) => {
                (replacement.clone(), placed.cloud.clone())
            }
            (None, Some(instance), Some(placed)) if workload.status == WorkloadStatus::Running => {
                (instance.clone(), placed.cloud.clone())
            }
            _ => {
                return Err(OperationError::WrongState(format!(
                    "workload {id} is {}; only a RUNNING workload, or one whose replacement is starting, can be interrupted",
                    workload.status
                )))
            }
        };
        let driver = self.driver(&cloud)?;
        let deadline = driver
            .inject_interruption(
                &instance_id,
                delay.unwrap_or(self.settings.interruption_delay),
            )
            .await
            .map_err(|e| OperationError::Service(e.into()))?;
        Ok((instance_id, deadline))
    }

    /// Applies a checked transition; succeeds if the workload is already in `to`
    /// (a step redone after a crash between its effect and its ledger entry).
    pub(crate) async fn transition(
        &self,
        workload: &WorkloadRecord,
        from: WorkloadStatus,
        to: WorkloadStatus,
        reason: &str,
        changes: WorkloadChanges,
    ) -> Result<(), OrchestratorError> {
        let transition = Transition::new(from, to)?;
        let applied = self
            .store
            .transition_workload(
                &workload.tenant_id,
                &workload.id,
                transition,
                reason,
                now_ms(),
                changes.clone(),
            )
            .await?;
        if applied {
            tracing::info!(tenant = %workload.tenant_id, workload_id = %workload.id, from = %from, to = %to, reason, "workload status changed");
            return Ok(());
        }
        let current = self
            .store
            .workload(&workload.tenant_id, &workload.id)
            .await?
            .map(|w| w.status);
        if current == Some(to) {
            self.store
                .update_workload(&workload.tenant_id, &workload.id, changes, now_ms())
                .await?;
            return Ok(());
        }
        Err(OrchestratorError::ChangedConcurrently(format!(
            "workload {} is {}, not {from}; it changed concurrently",
            workload.id,
            current
                .map(|s| s.to_string())
                .unwrap_or_else(|| "gone".into())
        )))
    }

    /// Drops what this process remembers about a workload that has ended.
    pub(crate) fn forget(&self, workload_id: &str) {
        fn drop_key<V>(map: &Mutex<HashMap<String, V>>, key: &str) {
            map.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
        }
        drop_key(&self.heard_from, workload_id);
        drop_key(&self.exited, workload_id);
        drop_key(&self.checkpoint_reports, workload_id);
        drop_key(&self.logs, workload_id);
    }

    pub(crate) fn is_cancelled(&self, workload_id: &str) -> bool {
        self.cancelled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(workload_id)
    }
}
