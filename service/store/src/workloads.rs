//! Record types of workloads and their durable workflows: the workload row, its status
//! history, workflow runs and their step ledger, billing segments, notifications and
//! per-tenant settings. Every one carries its tenant.

use computearbitrage_core::{WorkloadSpec, WorkloadStatus};

/// Where a workload was placed and what it pays.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlacementRecord {
    pub cloud: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    /// What is paid per hour: the spot price, or the on-demand price when `on_demand`.
    pub price_per_hour: f64,
    pub on_demand_price_per_hour: Option<f64>,
    /// On-demand capacity (`fallback = "on_demand"`), not spot.
    pub on_demand: bool,
    /// A digest of the env the instance was started with, so a changed `env` is seen
    /// to need a rolling replacement; `None` for instances started before it was kept.
    /// Kept in the store only, never served.
    pub env_fingerprint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadRecord {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub spec: WorkloadSpec,
    pub status: WorkloadStatus,
    /// Why it is in this status (for FAILED: the failed step and its last error).
    pub status_reason: String,
    /// The workflow step that failed, for FAILED workloads.
    pub failed_step: Option<String>,
    pub placement: Option<PlacementRecord>,
    pub instance_id: Option<String>,
    /// Where the workload answers (`127.0.0.1:PORT` locally).
    pub endpoint: Option<String>,
    /// When the current instance was created, unix seconds (start of billing).
    pub instance_started_at: Option<i64>,
    /// Hex SHA-256 of the workload's router access token; the token itself is derived
    /// by the service and never stored.
    pub access_token_hash: Option<String>,
    /// Where the workload answers TCP (`127.0.0.1:PORT` locally), when it asked for it.
    pub tcp_endpoint: Option<String>,
    /// The router's stable TCP listener port for this workload; unique among active
    /// workloads.
    pub tcp_listen_port: Option<u16>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Field changes applied together with (or without) a status transition. `None`
/// leaves a field as it is; `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkloadChanges {
    pub placement: Option<Option<PlacementRecord>>,
    pub instance_id: Option<Option<String>>,
    pub endpoint: Option<Option<String>>,
    pub instance_started_at: Option<Option<i64>>,
    pub failed_step: Option<Option<String>>,
    pub tcp_endpoint: Option<Option<String>>,
    pub spec: Option<WorkloadSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRecord {
    pub from: WorkloadStatus,
    pub to: WorkloadStatus,
    pub reason: String,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    Provision,
    Terminate,
    /// Moves a workload to a replacement instance (after an interruption).
    Migrate,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Provision => "provision",
            RunKind::Terminate => "terminate",
            RunKind::Migrate => "migrate",
        }
    }

    pub fn parse(text: &str) -> Option<RunKind> {
        match text {
            "provision" => Some(RunKind::Provision),
            "terminate" => Some(RunKind::Terminate),
            "migrate" => Some(RunKind::Migrate),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Running,
    Completed,
    /// Exhausted its retries or hit a permanent error: a dead letter until replayed.
    Dead,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        match text {
            "running" => Some(RunStatus::Running),
            "completed" => Some(RunStatus::Completed),
            "dead" => Some(RunStatus::Dead),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: String,
    pub tenant_id: String,
    pub workload_id: String,
    pub kind: RunKind,
    pub status: RunStatus,
    /// Why the run was started (`terraform destroy`, `spot interruption`, …).
    pub reason: String,
    pub error: Option<String>,
    pub failed_step: Option<String>,
    /// How many times the run was replayed from the dead-letter list.
    pub replays: u32,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One step of a run, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub run_id: String,
    pub step: String,
    /// Attempts made so far, counting the one in progress.
    pub attempts: u32,
    pub completed: bool,
    /// The step's result (JSON), once completed.
    pub output: Option<String>,
    pub last_error: Option<String>,
    pub started_at: i64,
    pub finished_at: Option<i64>,
}

/// What one instance segment of a workload cost.
#[derive(Debug, Clone, PartialEq)]
pub struct BillingRecord {
    pub tenant_id: String,
    pub workload_id: String,
    pub instance_id: String,
    pub cloud: String,
    pub region: String,
    pub instance_type: String,
    pub price_per_hour: f64,
    pub started_at: i64,
    pub ended_at: i64,
    /// `price_per_hour × (ended_at − started_at) / 3600`.
    pub cost: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationStatus {
    Pending,
    Delivered,
    /// Retries exhausted; kept with its last error.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Delivered => "delivered",
            NotificationStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<NotificationStatus> {
        match text {
            "pending" => Some(NotificationStatus::Pending),
            "delivered" => Some(NotificationStatus::Delivered),
            "failed" => Some(NotificationStatus::Failed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotificationRecord {
    pub id: String,
    pub tenant_id: String,
    pub workload_id: String,
    /// `workload.ready`, `workload.unhealthy`, `workload.interrupted`, …
    pub kind: String,
    /// The JSON body that is signed and sent.
    pub payload: String,
    pub status: NotificationStatus,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// Per-tenant settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TenantSettings {
    pub tenant_id: String,
    /// Where notifications are POSTed; none when unset.
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key of the webhook signature. A secret: never logged.
    pub webhook_secret: Option<String>,
    /// Overrides the service-wide quota when set.
    pub max_concurrent_workloads: Option<u32>,
}

/// A committed change of one workload row, announced by [`crate::Store::workload_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadChange {
    pub tenant_id: String,
    /// Empty for [`ChangeKind::Credentials`].
    pub workload_id: String,
    pub kind: ChangeKind,
}

/// What a [`WorkloadChange`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// The workload's row changed.
    Workload,
    /// A token was added or revoked: credentials must be re-read.
    Credentials,
}

/// Connection changes a router applies together ([`crate::Store::apply_connection_batch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionBatch {
    pub opened: Vec<ConnectionRecord>,
    /// `(id, bytes to the backend, bytes from the backend)`.
    pub bytes: Vec<(String, u64, u64)>,
    pub closed: Vec<String>,
}

impl ConnectionBatch {
    pub fn is_empty(&self) -> bool {
        self.opened.is_empty() && self.bytes.is_empty() && self.closed.is_empty()
    }
}

/// One open TCP connection through a router, while it is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRecord {
    pub id: String,
    /// The router process that holds it: its rows are cleared when it restarts.
    pub router_id: String,
    pub tenant_id: String,
    pub workload_id: String,
    /// The backend address the connection was forwarded to.
    pub backend: String,
    /// The client's address.
    pub client: String,
    pub started_at: i64,
    pub bytes_to_backend: u64,
    pub bytes_from_backend: u64,
}

/// The result of [`crate::Store::create_workload`].
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    /// A new workload and its provisioning run were stored.
    Created,
    /// An active workload with that name already exists; nothing was written.
    Existing(Box<WorkloadRecord>),
}
