//! Operator tasks: commands for a workload's instance (seed 004's queue), kept in the
//! store and pulled by the workload's current agent.
//!
//! - Delivered at least once: a delivery holds a lease of the task's timeout plus
//!   [`LEASE_SLACK`]; without a result by then the attempt counts as failed and the
//!   task is delivered again (to whichever instance is current by then).
//! - A failed attempt (the agent could not run it, it timed out, its lease ran out) is
//!   retried after a backoff of 1 s · 2^(attempt−1), at most [`BACKOFF_MAX`]; after
//!   `max_attempts` the task is dead, listed with the dead letters, and can be replayed.
//! - A command that ran and exited non-zero is a result, not a failure: `exec` reports
//!   what the command did, like a shell would.
//! - A workload that ends takes its unfinished tasks with it (dead, "the workload
//!   ended").
//!
//! Changes of a task are serialized by `Orchestrator::task_changes` (one service
//! process owns the queue, like the workflow engine's runs).

use super::agents::AgentError;
use super::{new_id, now_ms, OperationError, Orchestrator};
use computearbitrage_agent_protocol as protocol;
use computearbitrage_store::{TaskRecord, TaskState, WorkloadRecord};
use std::time::Duration;

/// Kinds of task, as the API and the agent name them.
pub const KINDS: [&str; 5] = ["exec", "checkpoint", "stop", "pause", "resume"];
/// Seconds an `exec` may run (and a `stop` waits) when the request gives none.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 60;
pub const MAX_TIMEOUT_SECONDS: u32 = 3600;
/// Deliveries before a task is dead.
pub const MAX_ATTEMPTS: u32 = 3;
/// A delivery's lease beyond the task's timeout: time to report the result.
pub const LEASE_SLACK: Duration = Duration::from_secs(30);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The end of a command's output that is kept.
pub const OUTPUT_MAX: usize = 64 << 10;
/// Unfinished tasks a workload may have queued.
pub const MAX_PENDING: usize = 100;
const MAX_COMMAND_BYTES: usize = 64 << 10;
/// The longest an agent's request for a task is held open.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// What an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct NewTask {
    pub kind: String,
    pub command: Vec<String>,
    /// 0: [`DEFAULT_TIMEOUT_SECONDS`].
    pub timeout_seconds: u32,
}

fn backoff(attempts: u32) -> Duration {
    let exponent = attempts.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(BACKOFF_MAX)
}

/// A failed attempt: queued again after its backoff, or dead after the last one.
fn fail_attempt(task: &mut TaskRecord, error: String, now: i64) {
    task.lease_until = None;
    task.updated_at = now;
    if task.attempts >= task.max_attempts {
        task.state = TaskState::Dead;
        task.error = Some(format!(
            "{error} (attempt {} of {}; replay it to try again)",
            task.attempts, task.max_attempts
        ));
    } else {
        task.state = TaskState::Queued;
        task.next_attempt_at = now + backoff(task.attempts).as_millis() as i64;
        task.error = Some(format!(
            "{error} (attempt {} of {}; retried)",
            task.attempts, task.max_attempts
        ));
    }
}

/// Applies what time and the workload's end decide; whether the task changed.
fn settle(task: &mut TaskRecord, workload_active: bool, now: i64) -> bool {
    let unfinished = matches!(task.state, TaskState::Queued | TaskState::Delivered);
    if unfinished && !workload_active {
        task.state = TaskState::Dead;
        task.lease_until = None;
        task.updated_at = now;
        task.error = Some("the workload ended before the task ran".into());
        return true;
    }
    if task.state == TaskState::Delivered && task.lease_until.is_some_and(|l| l < now) {
        let instance = task.instance_id.clone().unwrap_or_default();
        fail_attempt(
            task,
            format!("no result from instance {instance} within the lease"),
            now,
        );
        return true;
    }
    false
}

/// The kept end of `output`, cut at a character boundary.
fn tail(mut output: String) -> String {
    if output.len() <= OUTPUT_MAX {
        return output;
    }
    let mut cut = output.len() - OUTPUT_MAX;
    while !output.is_char_boundary(cut) {
        cut += 1;
    }
    output.drain(..cut);
    output
}

fn invalid(field: &'static str, message: String) -> OperationError {
    OperationError::InvalidField { field, message }
}

fn check(task: &NewTask, workload: &WorkloadRecord) -> Result<(), OperationError> {
    if !KINDS.contains(&task.kind.as_str()) {
        return Err(invalid(
            "kind",
            format!(
                "{:?} is not a task kind; use one of {}",
                task.kind,
                KINDS.join(", ")
            ),
        ));
    }
    if task.kind == "exec" {
        if task.command.first().is_none_or(|p| p.is_empty()) {
            return Err(invalid(
                "command",
                "an exec task needs a command: the program and its arguments".into(),
            ));
        }
        let bytes: usize = task.command.iter().map(|a| a.len() + 1).sum();
        if bytes > MAX_COMMAND_BYTES || task.command.iter().any(|a| a.contains('\0')) {
            return Err(invalid(
                "command",
                format!("the command must be at most {MAX_COMMAND_BYTES} bytes without NUL characters; put a longer script in the workload's storage and run that"),
            ));
        }
    } else if !task.command.is_empty() {
        return Err(invalid(
            "command",
            format!("a {} task takes no command; only exec runs one", task.kind),
        ));
    }
    if task.timeout_seconds > MAX_TIMEOUT_SECONDS {
        return Err(invalid(
            "timeout_seconds",
            format!(
                "{} s is longer than the {MAX_TIMEOUT_SECONDS} s a task may take",
                task.timeout_seconds
            ),
        ));
    }
    if task.kind == "checkpoint" && !workload.spec.storage.enabled {
        return Err(invalid(
            "kind",
            format!(
                "workload {} has no storage, so it cannot checkpoint; it needs `storage {{ enabled = true }}`",
                workload.id
            ),
        ));
    }
    Ok(())
}

fn to_agent(task: &TaskRecord) -> protocol::AgentTask {
    protocol::AgentTask {
        id: task.id.clone(),
        kind: task.kind.clone(),
        command: task.command.clone(),
        timeout_seconds: task.timeout_seconds,
        attempt: task.attempts,
    }
}

impl Orchestrator {
    /// Queues a task for the workload's agent.
    pub async fn create_task(
        &self,
        tenant: &str,
        workload_id: &str,
        task: NewTask,
    ) -> Result<TaskRecord, OperationError> {
        let workload = self.get(tenant, workload_id).await?;
        if !workload.status.is_active() {
            return Err(OperationError::Terminated(format!(
                "workload {workload_id} is {}; tasks run only on an active workload",
                workload.status
            )));
        }
        check(&task, &workload)?;
        let _serialized = self.task_changes.lock().await;
        let pending = self
            .store
            .tasks_of(tenant, workload_id)
            .await?
            .into_iter()
            .filter(|t| matches!(t.state, TaskState::Queued | TaskState::Delivered))
            .count();
        if pending >= MAX_PENDING {
            return Err(OperationError::Exhausted(format!(
                "workload {workload_id} already has {pending} unfinished tasks; wait for them (`computearbitrage workload tasks {workload_id}`)"
            )));
        }
        let now = now_ms();
        let record = TaskRecord {
            id: new_id("tsk"),
            tenant_id: tenant.to_string(),
            workload_id: workload_id.to_string(),
            kind: task.kind,
            command: task.command,
            timeout_seconds: if task.timeout_seconds == 0 {
                DEFAULT_TIMEOUT_SECONDS
            } else {
                task.timeout_seconds
            },
            state: TaskState::Queued,
            attempts: 0,
            max_attempts: MAX_ATTEMPTS,
            next_attempt_at: now,
            lease_until: None,
            instance_id: None,
            exit_code: None,
            output: String::new(),
            error: None,
            created_at: now,
            updated_at: now,
        };
        self.store.save_task(record.clone()).await?;
        tracing::info!(tenant, workload_id, task_id = %record.id, kind = %record.kind, "task queued");
        self.task_queued.notify_waiters();
        Ok(record)
    }

    /// Saves what [`settle`] changed; the settled tasks.
    async fn settled(
        &self,
        tenant: &str,
        tasks: Vec<TaskRecord>,
    ) -> Result<Vec<TaskRecord>, OperationError> {
        let mut out = Vec::with_capacity(tasks.len());
        let mut active = std::collections::HashMap::new();
        let now = now_ms();
        for mut task in tasks {
            if !active.contains_key(&task.workload_id) {
                let is_active = self
                    .store
                    .workload(tenant, &task.workload_id)
                    .await?
                    .is_some_and(|w| w.status.is_active());
                active.insert(task.workload_id.clone(), is_active);
            }
            let workload_active = active[&task.workload_id];
            if settle(&mut task, workload_active, now) {
                self.store.save_task(task.clone()).await?;
            }
            out.push(task);
        }
        Ok(out)
    }

    pub async fn task(&self, tenant: &str, id: &str) -> Result<TaskRecord, OperationError> {
        let _serialized = self.task_changes.lock().await;
        let task = self.store.task(tenant, id).await?.ok_or_else(|| {
            OperationError::NotFound(format!(
                "no task {id:?}; it may belong to another tenant or never existed"
            ))
        })?;
        Ok(self.settled(tenant, vec![task]).await?.remove(0))
    }

    /// A workload's tasks, oldest first.
    pub async fn tasks_of(
        &self,
        tenant: &str,
        workload_id: &str,
    ) -> Result<Vec<TaskRecord>, OperationError> {
        self.get(tenant, workload_id).await?;
        let _serialized = self.task_changes.lock().await;
        let tasks = self.store.tasks_of(tenant, workload_id).await?;
        self.settled(tenant, tasks).await
    }

    /// The tenant's dead tasks, oldest first.
    pub async fn dead_tasks(&self, tenant: &str) -> Result<Vec<TaskRecord>, OperationError> {
        Ok(self.store.dead_tasks(tenant).await?)
    }

    /// Queues a dead task again, with its attempts reset.
    pub async fn replay_task(&self, tenant: &str, id: &str) -> Result<TaskRecord, OperationError> {
        let mut task = self.task(tenant, id).await?;
        if task.state != TaskState::Dead {
            return Err(OperationError::WrongState(format!(
                "task {id} is {}; only a dead task can be replayed",
                task.state.as_str()
            )));
        }
        let workload = self.get(tenant, &task.workload_id).await?;
        if !workload.status.is_active() {
            return Err(OperationError::Terminated(format!(
                "workload {} is {}; its tasks cannot run again",
                workload.id, workload.status
            )));
        }
        let _serialized = self.task_changes.lock().await;
        let now = now_ms();
        task.state = TaskState::Queued;
        task.attempts = 0;
        task.next_attempt_at = now;
        task.lease_until = None;
        task.updated_at = now;
        self.store.save_task(task.clone()).await?;
        tracing::info!(tenant, task_id = %task.id, "dead task replayed");
        self.task_queued.notify_waiters();
        Ok(task)
    }

    /// The next task for a workload's current agent, held up to `wait` for one to be
    /// queued. Fenced and replacement agents get none.
    pub async fn agent_next_task(
        &self,
        token: &str,
        request: protocol::NextTask,
    ) -> Result<protocol::NextTaskReply, AgentError> {
        let wait = Duration::from_millis(request.wait_ms).min(MAX_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let queued = self.task_queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            // Checked again on every try: the instance may have been replaced meanwhile.
            let session = self.current_session(token).await?;
            if let Some(task) = self.claim(&session.workload, session.instance).await? {
                return Ok(protocol::NextTaskReply {
                    task: Some(to_agent(&task)),
                });
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(protocol::NextTaskReply { task: None });
            }
            // Woken by a new task; otherwise looked at again for backoffs and leases.
            let _ =
                tokio::time::timeout((deadline - now).min(Duration::from_secs(1)), queued).await;
        }
    }

    /// Delivers the oldest due task of the workload, if any.
    async fn claim(
        &self,
        workload: &WorkloadRecord,
        instance: Option<String>,
    ) -> Result<Option<TaskRecord>, AgentError> {
        let _serialized = self.task_changes.lock().await;
        loop {
            let now = now_ms();
            let Some(mut task) = self.store.next_task(&workload.id, now).await? else {
                return Ok(None);
            };
            if settle(&mut task, true, now) {
                // A lease ran out: that attempt failed; it may be due again at once.
                self.store.save_task(task.clone()).await?;
                if task.state != TaskState::Queued || task.next_attempt_at > now {
                    continue;
                }
            }
            task.state = TaskState::Delivered;
            task.attempts += 1;
            task.lease_until =
                Some(now + i64::from(task.timeout_seconds) * 1000 + LEASE_SLACK.as_millis() as i64);
            task.instance_id = instance.clone();
            task.updated_at = now;
            self.store.save_task(task.clone()).await?;
            tracing::info!(workload_id = %workload.id, task_id = %task.id, kind = %task.kind, attempt = task.attempts, instance_id = ?task.instance_id, "task delivered");
            return Ok(Some(task));
        }
    }

    /// The agent's result of one delivery. A repeated or late report of a task that
    /// already has its result changes nothing.
    pub async fn agent_task_result(
        &self,
        token: &str,
        result: protocol::TaskResult,
    ) -> Result<(), AgentError> {
        let session = self.current_session(token).await?;
        let workload = &session.workload;
        let _serialized = self.task_changes.lock().await;
        let mut task = self
            .store
            .task(&workload.tenant_id, &result.id)
            .await?
            .filter(|t| t.workload_id == workload.id)
            .ok_or_else(|| {
                AgentError::Invalid(format!(
                    "no task {:?} for workload {}",
                    result.id, workload.id
                ))
            })?;
        if matches!(task.state, TaskState::Completed | TaskState::Dead) {
            tracing::debug!(task_id = %task.id, attempt = result.attempt, "a result for a finished task; ignored");
            return Ok(());
        }
        let now = now_ms();
        task.output = tail(result.output);
        match (result.exit_code, result.error) {
            (Some(code), None) => {
                task.state = TaskState::Completed;
                task.exit_code = Some(code);
                task.error = None;
                task.lease_until = None;
                task.updated_at = now;
                tracing::info!(workload_id = %workload.id, task_id = %task.id, kind = %task.kind, exit_code = code, attempt = result.attempt, "task completed");
            }
            (_, error) => {
                let error = error.unwrap_or_else(|| "the agent reported no exit code".into());
                tracing::warn!(workload_id = %workload.id, task_id = %task.id, kind = %task.kind, attempt = result.attempt, error = %error, "task attempt failed");
                fail_attempt(&mut task, error, now);
            }
        }
        self.store.save_task(task).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(attempts: u32) -> TaskRecord {
        TaskRecord {
            id: "tsk-1".into(),
            tenant_id: "t".into(),
            workload_id: "wl-1".into(),
            kind: "exec".into(),
            command: vec!["true".into()],
            timeout_seconds: 60,
            state: TaskState::Delivered,
            attempts,
            max_attempts: MAX_ATTEMPTS,
            next_attempt_at: 0,
            lease_until: Some(1_000),
            instance_id: Some("i-1".into()),
            exit_code: None,
            output: String::new(),
            error: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn a_lease_that_ran_out_is_a_failed_attempt_backed_off_then_dead() {
        let mut task = delivered(1);
        assert!(
            !settle(&mut task, true, 1_000),
            "the lease still holds at its end"
        );
        assert!(settle(&mut task, true, 1_001));
        assert_eq!(task.state, TaskState::Queued);
        assert_eq!(
            task.next_attempt_at,
            1_001 + 1_000,
            "1 s after the first attempt"
        );
        assert!(task.error.as_deref().unwrap().contains("instance i-1"));

        let mut second = delivered(2);
        settle(&mut second, true, 5_000);
        assert_eq!(second.next_attempt_at, 5_000 + 2_000, "doubled");

        let mut last = delivered(MAX_ATTEMPTS);
        settle(&mut last, true, 5_000);
        assert_eq!(last.state, TaskState::Dead);
        assert!(last.error.as_deref().unwrap().contains("replay"));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn a_workload_that_ended_takes_its_unfinished_tasks() {
        let mut task = delivered(1);
        task.lease_until = Some(i64::MAX);
        assert!(settle(&mut task, false, 10));
        assert_eq!(task.state, TaskState::Dead);
        let mut done = delivered(1);
        done.state = TaskState::Completed;
        assert!(!settle(&mut done, false, 10), "a result stays");
    }

    #[test]
    fn output_keeps_its_end_on_a_character_boundary() {
        let long = format!("{}é{}", "a".repeat(OUTPUT_MAX), "z".repeat(10));
        let kept = tail(long);
        assert!(kept.len() <= OUTPUT_MAX && kept.ends_with("zzzzzzzzzz"));
        assert_eq!(tail("short".into()), "short");
    }
}
