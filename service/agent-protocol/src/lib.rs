//! What the agent and the service say to each other, in one place so neither side
//! guesses the other's shapes. JSON over HTTP on the service's port; every call
//! carries `Authorization: Bearer <agent token>`.
//!
//! - [`paths`]: the endpoints.
//! - [`Register`], [`Assignment`]: the agent's first call and what it is told to run;
//!   [`Checkpointing`]: how the workload is told of a notice and checkpointed.
//! - [`Heartbeat`], [`HeartbeatReply`]: liveness, token refresh, and fencing.
//! - [`NoticeReport`], [`CheckpointGrantRequest`], [`CheckpointGrant`],
//!   [`CheckpointReport`]: acting on an interruption notice.
//! - [`NextTask`], [`NextTaskReply`], [`AgentTask`], [`TaskResult`]: operator tasks
//!   (exec, checkpoint, stop, pause, resume), pulled by the agent, delivered at least
//!   once.
//! - [`StorageUrlRequest`], [`StorageUrl`], [`StorageListRequest`], [`StorageList`]:
//!   the workload's own `state/` and `artifacts/`, asked for through the agent's local
//!   API and relayed to the service as they are.
//! - [`Manifest`]: a checkpoint's table of contents, written last: a checkpoint is
//!   complete exactly when its `manifest.json` exists.
//! - [`ErrorBody`]: every refusal, with what to do.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

pub mod paths {
    pub const REGISTER: &str = "/agent/v1/register";
    pub const HEARTBEAT: &str = "/agent/v1/heartbeat";
    pub const NOTICE: &str = "/agent/v1/notice";
    pub const CHECKPOINT_GRANT: &str = "/agent/v1/checkpoint/grant";
    pub const CHECKPOINT_REPORT: &str = "/agent/v1/checkpoint/report";
    pub const EXITED: &str = "/agent/v1/exited";
    pub const LOGS: &str = "/agent/v1/logs";
    pub const LOG_SEGMENT_GRANT: &str = "/agent/v1/logs/grant";
    pub const TASK_NEXT: &str = "/agent/v1/tasks/next";
    pub const TASK_RESULT: &str = "/agent/v1/tasks/result";
    pub const STORAGE_URL: &str = "/agent/v1/storage/url";
    pub const STORAGE_LIST: &str = "/agent/v1/storage/list";
}

/// The file name that completes a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";
/// Checkpoint chunks are at most this large.
pub const CHUNK_BYTES: u64 = 8 << 20;

/// The agent's first call, and its retries until it gets an assignment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Register {
    /// The instance id as the machine knows it (the cloud's, or the local driver's).
    pub instance_id: String,
    pub agent_version: String,
}

/// The reply to [`Register`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RegisterReply {
    /// Not yet: the instance is a replacement whose predecessor is still writing its
    /// final checkpoint, or the service has not recorded the instance yet.
    Wait {
        retry_ms: u64,
        why: String,
    },
    Run(Box<Assignment>),
}

/// What to run, and how.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assignment {
    pub workload_id: String,
    /// A fresh token for every later call; the registration credential is spent.
    pub token: String,
    /// Unix seconds.
    pub token_expires_at: i64,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub heartbeat_ms: u64,
    /// How the workload is told of a notice, and how often it is checkpointed.
    pub checkpointing: Checkpointing,
    /// Present when the workload has storage; checkpoints need it.
    pub storage: Option<StorageGrant>,
    /// The checkpoint to restore into `$CHECKPOINT_DIR` before starting, if any.
    pub restore: Option<Restore>,
}

/// The workload's `checkpoint` settings as the agent applies them; every heartbeat
/// reply carries them again, so a change reaches a running instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Checkpointing {
    /// Signal number sent to the workload on a notice (15 = SIGTERM) when `command`
    /// is empty.
    pub signal: i32,
    /// Run instead of signalling on a notice, and before every periodic copy, as the
    /// workload's user with `CHECKPOINT_DIR` set.
    pub command: Vec<String>,
    /// Between periodic checkpoints; 0: none (needs storage).
    pub interval_ms: u64,
    /// Seconds before the deadline by which the checkpoint upload must be under way.
    pub safety_margin_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageGrant {
    /// `workloads/{id}/`.
    pub prefix: String,
    pub quota_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Restore {
    /// The checkpoint's name (`checkpoints/{name}/`).
    pub name: String,
    pub manifest: Manifest,
    /// Signed GET URL of each chunk, by its SHA-256 (hex).
    pub chunk_urls: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Heartbeat {
    /// `starting`, `running`, `checkpointing`, `exited`.
    pub phase: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HeartbeatReply {
    pub token: String,
    pub token_expires_at: i64,
    /// The settings in effect now (they change in place).
    pub checkpointing: Checkpointing,
}

/// The agent saw the cloud's notice (interruption or rebalance).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NoticeReport {
    /// `interruption` or `rebalance`.
    pub signal: String,
    /// Unix seconds, when the cloud said.
    pub deadline: Option<i64>,
}

/// Asks for upload URLs for one checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointGrantRequest {
    /// `{unix ms}`, chosen by the agent; the directory `checkpoints/{name}/`.
    pub name: String,
    /// SHA-256 (hex) → size of each distinct chunk.
    pub chunks: BTreeMap<String, u64>,
    pub manifest_bytes: u64,
    /// The agent reuses chunks already stored ([`CheckpointGrant::reused`]). An agent
    /// from before shared chunks sends nothing, and is granted a URL for every chunk.
    #[serde(default)]
    pub reuse_stored: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointGrant {
    /// Signed PUT URL per chunk to upload, by SHA-256.
    pub chunk_urls: BTreeMap<String, String>,
    /// Chunks an earlier checkpoint already stored: named by the manifest, not sent.
    #[serde(default)]
    pub reused: BTreeSet<String>,
    /// Signed PUT URL of `manifest.json`; upload it last.
    pub manifest_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointReport {
    pub name: String,
    /// Why it was taken: `notice`, `periodic`, `task`.
    pub trigger: String,
    /// `None`: complete. Otherwise what went wrong.
    pub error: Option<String>,
    pub bytes: u64,
    pub files: u64,
    pub duration_ms: u64,
}

/// The workload's output since the last batch, line by line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogBatch {
    pub lines: Vec<String>,
    /// Lines the agent could not keep while the service was unreachable.
    #[serde(default)]
    pub dropped: u64,
}

/// Asks for the upload URL of one rotated log segment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogSegmentGrantRequest {
    /// `{first line's unix ms}.log`, chosen by the agent.
    pub name: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogSegmentGrant {
    /// Signed PUT URL of `artifacts/logs/{instance id}/{name}`.
    pub url: String,
}

/// The workload exited on its own, or the agent could not start it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ExitReport {
    /// `exit status: 3`, `signal: 9`; with `not_started`, why the agent did not start
    /// the workload (`cannot restore checkpoint …`).
    pub status: String,
    /// The last lines the workload wrote to stdout and stderr.
    pub last_output: Vec<String>,
    /// The agent never started the workload's command (its restore or its spawn
    /// failed). Absent from older agents, whose reports are all of an exit.
    #[serde(default)]
    pub not_started: bool,
}

/// Asks for the next operator task; the service holds the call up to `wait_ms`
/// (capped) until one is queued.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct NextTask {
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NextTaskReply {
    pub task: Option<AgentTask>,
}

/// One delivery of an operator task. The same id may come again (at least once): an
/// agent that already ran it reports the result it has instead of running it twice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AgentTask {
    /// `tsk-…`.
    pub id: String,
    /// `exec`, `checkpoint`, `stop`, `pause`, `resume`.
    pub kind: String,
    /// The program and its arguments, for `exec`.
    pub command: Vec<String>,
    /// An `exec` is killed after this; a `stop` waits this long before the kill.
    pub timeout_seconds: u32,
    /// 1 for the first delivery.
    pub attempt: u32,
}

/// What became of one delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskResult {
    pub id: String,
    pub attempt: u32,
    /// The command's exit code (`exec`), the workload's (`stop`), 0 for the others.
    /// `None` with `error`: the attempt failed and may be retried.
    pub exit_code: Option<i32>,
    /// The end of what the command wrote, stdout and stderr together.
    pub output: String,
    pub error: Option<String>,
}

/// A signed URL for one object of the workload's `state/` or `artifacts/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageUrlRequest {
    /// `GET` to download, `PUT` to upload.
    pub method: String,
    /// Relative to the workload's namespace: `state/db.sqlite`, `artifacts/out.csv`.
    pub key: String,
    /// The upload's size, so one past the quota is refused before it starts.
    #[serde(default)]
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageUrl {
    pub url: String,
    pub method: String,
    pub key: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The workload's objects under a prefix of its namespace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct StorageListRequest {
    /// `""` (all of `state/` and `artifacts/`), `state/`, `artifacts/results/`.
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StorageList {
    pub objects: Vec<StoredObject>,
    /// Everything the workload stores, checkpoints included, against its quota.
    pub used_bytes: u64,
    pub quota_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StoredObject {
    /// Relative to the namespace, as [`StorageUrlRequest::key`] takes it.
    pub key: String,
    pub size_bytes: u64,
    /// Unix milliseconds.
    pub modified_ms: i64,
}

/// A checkpoint's table of contents.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Manifest {
    pub version: u32,
    /// Unix milliseconds when the copy began.
    pub created_at_ms: i64,
    /// Every directory, relative, `/`-separated (so empty ones come back too).
    pub directories: Vec<String>,
    pub files: Vec<ManifestFile>,
    pub total_bytes: u64,
    /// Why it was taken: `notice` (the final checkpoint before a reclaim), `periodic`,
    /// `task`.
    #[serde(default)]
    pub trigger: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ManifestFile {
    /// Relative, `/`-separated, no `.` or `..` segments.
    pub path: String,
    pub size: u64,
    /// Unix permission bits.
    pub mode: u32,
    /// The file's content is these chunks (SHA-256 hex) in order.
    pub chunks: Vec<String>,
}

/// Every refusal: what was wrong and what to do. `fenced` tells an agent it has
/// been replaced and must stop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default)]
    pub fenced: bool,
    #[serde(default)]
    pub retryable: bool,
}
