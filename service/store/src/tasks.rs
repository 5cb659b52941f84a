//! Record types of operator tasks: commands run on a workload's instance by its agent
//! (seed 004's queue). Delivered at least once, retried with backoff, dead-lettered.

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Waiting for the workload's agent (from `next_attempt_at`).
    Queued,
    /// Taken by an agent; redelivered if no result comes before `lease_until`.
    Delivered,
    /// The agent ran it and reported its result (an `exec` may have exited non-zero).
    Completed,
    /// Every attempt failed, or the workload ended first; `replay` queues it again.
    Dead,
}

impl TaskState {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Delivered => "delivered",
            TaskState::Completed => "completed",
            TaskState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<TaskState> {
        Some(match text {
            "queued" => TaskState::Queued,
            "delivered" => TaskState::Delivered,
            "completed" => TaskState::Completed,
            "dead" => TaskState::Dead,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskRecord {
    /// `tsk-…`.
    pub id: String,
    pub tenant_id: String,
    pub workload_id: String,
    /// `exec`, `checkpoint`, `stop`, `pause`, `resume`.
    pub kind: String,
    /// The program and its arguments, for `exec`.
    pub command: Vec<String>,
    pub timeout_seconds: u32,
    pub state: TaskState,
    pub attempts: u32,
    pub max_attempts: u32,
    /// Unix ms; when a queued task may be delivered.
    pub next_attempt_at: i64,
    /// Unix ms; a delivered task without a result by then counts as a failed attempt.
    pub lease_until: Option<i64>,
    /// The instance whose agent took the last attempt.
    pub instance_id: Option<String>,
    pub exit_code: Option<i32>,
    /// The end of what the command wrote (bounded by the service).
    pub output: String,
    /// Why the last attempt failed, or why the task is dead.
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}
