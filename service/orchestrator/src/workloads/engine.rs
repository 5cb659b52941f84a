//! The workflow engine: runs a workflow's steps in order against the run's ledger.
//!
//! - A step completed in the ledger is never executed again; its recorded output is
//!   reused. After a crash, a run resumes at its first unfinished step.
//! - Each attempt is counted in the ledger before it starts; a failed attempt records
//!   its error; retries follow the step's `RetryPolicy` and only for retryable errors.
//! - A run whose step fails permanently, or exhausts its retries, becomes a dead
//!   letter (status `dead`); provisioning failures also release what was created and
//!   mark the workload FAILED with the step and its last error.
//! - Side-effecting steps pass the idempotency token `RUN_ID:STEP` to the driver.

use super::{now_ms, steps, Orchestrator};
use crate::error::OrchestratorError;
use computearbitrage_core::workflow::{migrate_steps, provision_steps, terminate_steps, StepDef};
use computearbitrage_store::{RunKind, RunRecord, RunStatus, StepRecord, WorkloadRecord};
use rand::Rng;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

/// Why a step failed, and whether trying again can help.
#[derive(Debug)]
pub struct StepError {
    pub message: String,
    pub retryable: bool,
}

impl StepError {
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        StepError {
            message: message.into(),
            retryable: true,
        }
    }
}

impl From<OrchestratorError> for StepError {
    fn from(e: OrchestratorError) -> Self {
        StepError {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

impl From<computearbitrage_core::Error> for StepError {
    fn from(e: computearbitrage_core::Error) -> Self {
        StepError {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

impl From<computearbitrage_store::StoreError> for StepError {
    fn from(e: computearbitrage_store::StoreError) -> Self {
        StepError {
            retryable: e.is_retryable(),
            message: e.to_string(),
        }
    }
}

/// What a step sees: the run, the workload as of the step's start, and the outputs
/// of the steps before it.
pub struct StepContext<'a> {
    pub run: &'a RunRecord,
    pub workload: &'a WorkloadRecord,
    pub outputs: &'a HashMap<String, Value>,
}

impl StepContext<'_> {
    /// The idempotency token of side effects of `step` in this run.
    pub fn token(&self, step: &str) -> String {
        format!("{}:{}", self.run.id, step)
    }

    pub fn output(&self, step: &str) -> Result<&Value, StepError> {
        self.outputs
            .get(step)
            .ok_or_else(|| StepError::permanent(format!("step {step} has no recorded output")))
    }
}

enum Outcome {
    Completed,
    Cancelled(String),
    Dead { step: String, error: String },
}

impl Orchestrator {
    /// Executes a run in the background unless this process is already executing it.
    pub fn spawn_run(self: &Arc<Self>, run_id: String) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = this.execute(&run_id).await {
                // Infrastructure trouble (the store is unreachable): the run stays
                // `running` and the resumer picks it up again.
                tracing::warn!(run_id, %error, retryable = error.is_retryable(), "run interrupted; it will be resumed");
            }
        });
    }

    /// Runs every unfinished run not already executing here.
    pub async fn resume_unfinished(self: &Arc<Self>) -> Result<usize, OrchestratorError> {
        let runs = self.store.unfinished_runs().await?;
        let mut started = 0;
        for run in runs {
            let busy = self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&run.id);
            if !busy {
                tracing::info!(run_id = %run.id, workload_id = %run.workload_id, kind = run.kind.as_str(), "resuming run");
                self.spawn_run(run.id);
                started += 1;
            }
        }
        Ok(started)
    }

    async fn execute(self: &Arc<Self>, run_id: &str) -> Result<(), OrchestratorError> {
        let Some(run) = self.store.run(run_id).await? else {
            return Ok(());
        };
        {
            let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if run.status != RunStatus::Running || in_flight.contains_key(run_id) {
                return Ok(());
            }
            in_flight.insert(run_id.to_string(), run.workload_id.clone());
        }
        let result = self.execute_steps(&run).await;
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(run_id);
        let outcome = result?;
        let now = now_ms();
        match outcome {
            Outcome::Completed => {
                self.store
                    .finish_run(&run.id, RunStatus::Completed, None, None, now)
                    .await?;
                tracing::info!(run_id = %run.id, workload_id = %run.workload_id, kind = run.kind.as_str(), "run completed");
            }
            Outcome::Cancelled(why) => {
                self.store
                    .finish_run(&run.id, RunStatus::Completed, Some(why.clone()), None, now)
                    .await?;
                tracing::info!(run_id = %run.id, workload_id = %run.workload_id, reason = %why, "run cancelled");
            }
            Outcome::Dead { step, error } => {
                tracing::warn!(run_id = %run.id, workload_id = %run.workload_id, step = %step, %error, "run failed; moved to dead letters");
                let mut next_move = None;
                if run.kind == RunKind::Provision {
                    self.fail_provisioning(&run, &step, &error).await?;
                } else if run.kind == RunKind::Migrate {
                    next_move = self.fail_migration(&run, &step, &error).await?;
                } else if let Some(workload) = self
                    .store
                    .workload(&run.tenant_id, &run.workload_id)
                    .await?
                {
                    self.store
                        .update_workload(
                            &workload.tenant_id,
                            &workload.id,
                            computearbitrage_store::WorkloadChanges {
                                failed_step: Some(Some(step.clone())),
                                ..Default::default()
                            },
                            now,
                        )
                        .await?;
                }
                self.store
                    .finish_run(&run.id, RunStatus::Dead, Some(error), Some(step), now)
                    .await?;
                // The reclaimed replacement's move starts over, now that no run moves it.
                if let Some(cause) = next_move {
                    if let Some(workload) = self
                        .store
                        .workload(&run.tenant_id, &run.workload_id)
                        .await?
                    {
                        if let Some((_moves, workload)) = self.lock_moves(&workload).await? {
                            self.start_migration(&workload, cause).await?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn execute_steps(
        self: &Arc<Self>,
        run: &RunRecord,
    ) -> Result<Outcome, OrchestratorError> {
        let definitions: Vec<StepDef> = match run.kind {
            RunKind::Provision => provision_steps(),
            RunKind::Terminate => terminate_steps(),
            RunKind::Migrate => migrate_steps(),
        };
        let ledger: HashMap<String, StepRecord> = self
            .store
            .steps(&run.id)
            .await?
            .into_iter()
            .map(|s| (s.step.clone(), s))
            .collect();
        let mut outputs: HashMap<String, Value> = HashMap::new();
        for def in definitions {
            if let Some(done) = ledger.get(def.name).filter(|s| s.completed) {
                let output = done
                    .output
                    .as_deref()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or(Value::Null);
                outputs.insert(def.name.to_string(), output);
                continue;
            }
            let Some(workload) = self
                .store
                .workload(&run.tenant_id, &run.workload_id)
                .await?
            else {
                return Ok(Outcome::Dead {
                    step: def.name.into(),
                    error: "the workload no longer exists".into(),
                });
            };
            if run.kind != RunKind::Terminate && self.is_cancelled(&workload.id) {
                return Ok(Outcome::Cancelled(
                    "cancelled: the workload is being terminated".into(),
                ));
            }
            let started_at = ledger
                .get(def.name)
                .map(|s| s.started_at)
                .unwrap_or_else(now_ms);
            let mut attempts = ledger.get(def.name).map(|s| s.attempts).unwrap_or(0);
            loop {
                attempts += 1;
                let mut record = StepRecord {
                    run_id: run.id.clone(),
                    step: def.name.to_string(),
                    attempts,
                    completed: false,
                    output: None,
                    last_error: None,
                    started_at,
                    finished_at: None,
                };
                self.store.save_step(record.clone()).await?;
                self.pause_if(run.kind, def.name, "before").await;
                let ctx = StepContext {
                    run,
                    workload: &workload,
                    outputs: &outputs,
                };
                let result = steps::execute(self, def.name, &ctx).await;
                match result {
                    Ok(output) => {
                        self.pause_if(run.kind, def.name, "uncommitted").await;
                        record.completed = true;
                        record.output = Some(output.to_string());
                        record.finished_at = Some(now_ms());
                        self.store.save_step(record).await?;
                        tracing::debug!(run_id = %run.id, step = def.name, attempts, "step completed");
                        outputs.insert(def.name.to_string(), output);
                        self.pause_if(run.kind, def.name, "after").await;
                        break;
                    }
                    Err(error) => {
                        record.last_error = Some(error.message.clone());
                        self.store.save_step(record).await?;
                        if run.kind != RunKind::Terminate && self.is_cancelled(&workload.id) {
                            return Ok(Outcome::Cancelled(
                                "cancelled: the workload is being terminated".into(),
                            ));
                        }
                        // An attempt cut short by a crash does not count against the
                        // policy: a resumed step always gets one more try.
                        let may_retry = error.retryable
                            && def.retry.allows_another(
                                attempts.saturating_sub(ledger_crashed(&ledger, def.name)),
                            );
                        tracing::warn!(run_id = %run.id, step = def.name, attempts, retryable = error.retryable, error = %error.message, "step attempt failed");
                        if !may_retry {
                            let times = if attempts == 1 {
                                "1 attempt".to_string()
                            } else {
                                format!("{attempts} attempts")
                            };
                            return Ok(Outcome::Dead {
                                step: def.name.to_string(),
                                error: format!(
                                    "step {} failed after {times}: {}",
                                    def.name, error.message
                                ),
                            });
                        }
                        let jitter: f64 = rand::thread_rng().gen();
                        tokio::time::sleep(def.retry.delay_after(attempts, jitter)).await;
                    }
                }
            }
        }
        Ok(Outcome::Completed)
    }

    /// Test hook for the crash test: parks the run forever at a named point so the
    /// test can kill -9 the process there. Set by `CA_TEST_PAUSE_AT=STEP:WHEN`, or
    /// `migrate.STEP:WHEN` for a migration's steps (which share names with provisioning).
    async fn pause_if(&self, kind: RunKind, step: &str, when: &str) {
        let point = match kind {
            RunKind::Migrate => format!("migrate.{step}:{when}"),
            _ => format!("{step}:{when}"),
        };
        if self.settings.pause_at.as_deref() == Some(point.as_str()) {
            tracing::warn!(step, when, "paused by CA_TEST_PAUSE_AT");
            eprintln!("computearbitrage: paused at {point}");
            std::future::pending::<()>().await;
        }
    }

    /// Provisioning failed for good: release what was created, bill it, mark FAILED.
    async fn fail_provisioning(
        self: &Arc<Self>,
        run: &RunRecord,
        step: &str,
        error: &str,
    ) -> Result<(), OrchestratorError> {
        let Some(workload) = self
            .store
            .workload(&run.tenant_id, &run.workload_id)
            .await?
        else {
            return Ok(());
        };
        self.monitor.unwatch(&workload.id);
        match steps::release_instances(self, &workload).await {
            Ok(_) => {
                if let (Some(placed), Some(started), Some(instance_id)) = (
                    &workload.placement,
                    workload.instance_started_at,
                    &workload.instance_id,
                ) {
                    let record = steps::bill(&workload, placed, instance_id, started, now_ms());
                    self.store.add_billing(record).await?;
                }
            }
            Err(e) => {
                tracing::warn!(workload_id = %workload.id, error = %e.message, "could not release instances of a failed workload; the sweeper will retry");
            }
        }
        let from = workload.status;
        if from.is_active()
            && computearbitrage_core::lifecycle::is_allowed(
                from,
                computearbitrage_core::WorkloadStatus::Failed,
            )
        {
            self.transition(
                &workload,
                from,
                computearbitrage_core::WorkloadStatus::Failed,
                error,
                computearbitrage_store::WorkloadChanges {
                    failed_step: Some(Some(step.to_string())),
                    endpoint: Some(None),
                    tcp_endpoint: Some(None),
                    ..Default::default()
                },
            )
            .await?;
        }
        super::notify::enqueue(
            self,
            &workload,
            "workload.failed",
            serde_json::json!({ "failed_step": step, "error": error }),
        )
        .await?;
        Ok(())
    }
}

/// Attempts of a step that were recorded but never finished (cut short by a crash):
/// the ledger shows attempts without an error.
fn ledger_crashed(ledger: &HashMap<String, StepRecord>, step: &str) -> u32 {
    ledger
        .get(step)
        .filter(|s| !s.completed && s.last_error.is_none() && s.attempts > 0)
        .map(|_| 1)
        .unwrap_or(0)
}
