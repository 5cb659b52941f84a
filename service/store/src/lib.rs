//! Durable state of the service behind one trait, [`Store`], with one adapter per
//! database engine. Every adapter must pass [`suite`], the shared behavioural tests.
//!
//! Module map:
//! - [`Store`] and its record types (this file).
//! - [`sqlite`]: the embedded default adapter (rusqlite, WAL, one connection).
//! - [`error`]: [`StoreError`], classified by retryability.
//! - [`workloads`]: record types of workloads, runs, steps, billing, notifications.
//! - [`tenants`]: record types of tokens (with their scopes) and the audit log.
//! - [`tasks`]: record types of operator tasks run on an instance by its agent.
//! - [`suite`]: the conformance tests every adapter runs.
//!
//! Ownership: tenant-owned rows (tenants, tokens, and later workloads and runs) carry a
//! `tenant_id`, and every query on them takes the tenant as a parameter. Offers and
//! collector status are shared reference data owned by the system, not by a tenant.

pub mod error;
pub mod sqlite;
pub mod suite;
pub mod tasks;
pub mod tenants;
pub mod workloads;

pub use error::StoreError;
pub use sqlite::SqliteStore;
pub use tasks::*;
pub use tenants::*;
pub use workloads::*;

use computearbitrage_core::{Offer, Transition};

/// A tenant: the unit of ownership and isolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Stable identifier, also its name (`default`).
    pub id: String,
    pub created_at: i64,
}

/// The result of one collector run.
#[derive(Debug, Clone, PartialEq)]
pub enum CollectorOutcome {
    /// The source answered; `fingerprint` identifies the content so unchanged data need
    /// not be written again.
    Succeeded {
        offers: u64,
        fingerprint: String,
    },
    Failed {
        error: String,
    },
}

/// What the service knows about one price source.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CollectorStatus {
    pub source: String,
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    /// The error of the last run if it failed; `None` after a success.
    pub last_error: Option<String>,
    /// Offers stored by the last successful run.
    pub offers: u64,
    pub fingerprint: Option<String>,
}

/// The storage contract. Times are unix seconds supplied by the caller, so adapters
/// never read the clock and the suite can test them deterministically.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// `sqlite`, `postgres`, … for logs and health.
    fn engine(&self) -> &'static str;

    /// Replaces every offer of `source` with `offers`, atomically.
    async fn replace_offers(&self, source: &str, offers: Vec<Offer>) -> Result<(), StoreError>;

    /// Every stored offer, of every source, in no particular order.
    async fn load_offers(&self) -> Result<Vec<Offer>, StoreError>;

    /// Records a collector run at time `at`.
    async fn record_collector_run(
        &self,
        source: &str,
        at: i64,
        outcome: CollectorOutcome,
    ) -> Result<(), StoreError>;

    async fn collector_statuses(&self) -> Result<Vec<CollectorStatus>, StoreError>;

    /// Creates the tenant if it does not exist, and returns it either way.
    async fn ensure_tenant(&self, id: &str, now: i64) -> Result<Tenant, StoreError>;

    /// Adds a token hash to a tenant. Adding the same hash to the same tenant again is a
    /// no-op; adding it to another tenant is [`StoreError::Conflict`].
    async fn add_token(&self, record: TokenRecord) -> Result<(), StoreError>;

    /// Every token, revoked and expired ones included, to build the service's
    /// in-memory authenticator and the router's table.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;

    /// Marks a token revoked at `at`; returns it as it is now, `None` if there is none
    /// with that id. Revoking twice keeps the first time.
    async fn revoke_token(&self, id: &str, at: i64) -> Result<Option<TokenRecord>, StoreError>;

    /// Every tenant, oldest first.
    async fn tenants(&self) -> Result<Vec<Tenant>, StoreError>;

    /// Appends to the audit log; the store assigns the id.
    async fn record_audit(&self, record: AuditRecord) -> Result<(), StoreError>;

    /// The newest `limit` audit records, newest first: of one tenant, or of all when
    /// `tenant_id` is `None`.
    async fn audit_log(
        &self,
        tenant_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError>;

    async fn tenant_settings(&self, tenant_id: &str) -> Result<TenantSettings, StoreError>;

    async fn set_tenant_settings(&self, settings: TenantSettings) -> Result<(), StoreError>;

    // ---- workloads ----

    /// Stores a new workload and its provisioning run in one transaction, unless an
    /// active workload (not FAILED or TERMINATED) of the same tenant has that name.
    async fn create_workload(
        &self,
        workload: WorkloadRecord,
        run: RunRecord,
    ) -> Result<CreateOutcome, StoreError>;

    async fn workload(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WorkloadRecord>, StoreError>;

    /// The active workload of that name, if any.
    async fn active_workload_named(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<WorkloadRecord>, StoreError>;

    /// Active workloads of a tenant.
    async fn count_active_workloads(&self, tenant_id: &str) -> Result<u64, StoreError>;

    /// Every workload in one of `statuses`, across tenants (for the monitor and sweeps).
    async fn workloads_in(
        &self,
        statuses: &[computearbitrage_core::WorkloadStatus],
    ) -> Result<Vec<WorkloadRecord>, StoreError>;

    /// Applies a checked transition if the workload is still in `transition.from()`;
    /// returns whether it was applied (false: someone else moved it first). The change
    /// and its history row are written together.
    async fn transition_workload(
        &self,
        tenant_id: &str,
        id: &str,
        transition: Transition,
        reason: &str,
        at: i64,
        changes: WorkloadChanges,
    ) -> Result<bool, StoreError>;

    /// Changes fields without changing the status.
    async fn update_workload(
        &self,
        tenant_id: &str,
        id: &str,
        changes: WorkloadChanges,
        at: i64,
    ) -> Result<(), StoreError>;

    async fn transitions(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Vec<TransitionRecord>, StoreError>;

    // ---- workflow runs ----

    async fn create_run(&self, run: RunRecord) -> Result<(), StoreError>;

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError>;

    /// Runs of a workload, oldest first.
    async fn runs_of(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Every run still `running`, across tenants: what to resume after a restart.
    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>, StoreError>;

    /// Dead runs of a tenant.
    async fn dead_runs(&self, tenant_id: &str) -> Result<Vec<RunRecord>, StoreError>;

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<String>,
        failed_step: Option<String>,
        at: i64,
    ) -> Result<(), StoreError>;

    /// Sets a dead run running again (for replay); returns false if it was not dead.
    async fn revive_run(&self, run_id: &str, at: i64) -> Result<bool, StoreError>;

    /// Inserts or replaces one step's ledger row.
    async fn save_step(&self, step: StepRecord) -> Result<(), StoreError>;

    /// The ledger of a run, in the order steps were first started.
    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError>;

    // ---- billing ----

    /// Records a segment; recording the same (workload, instance) again is a no-op.
    async fn add_billing(&self, record: BillingRecord) -> Result<(), StoreError>;

    async fn billing(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<BillingRecord>, StoreError>;

    // ---- notifications ----

    async fn enqueue_notification(
        &self,
        notification: NotificationRecord,
    ) -> Result<(), StoreError>;

    /// Pending notifications whose next attempt is due at `now`, oldest first.
    async fn due_notifications(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError>;

    async fn save_notification(&self, notification: NotificationRecord) -> Result<(), StoreError>;

    async fn notifications(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<NotificationRecord>, StoreError>;

    // ---- operator tasks ----

    /// Inserts or replaces a task (its id is the key).
    async fn save_task(&self, task: TaskRecord) -> Result<(), StoreError>;

    async fn task(&self, tenant_id: &str, id: &str) -> Result<Option<TaskRecord>, StoreError>;

    /// A workload's tasks, oldest first.
    async fn tasks_of(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<TaskRecord>, StoreError>;

    /// The tenant's dead tasks, oldest first.
    async fn dead_tasks(&self, tenant_id: &str) -> Result<Vec<TaskRecord>, StoreError>;

    /// The oldest task of the workload an agent may take at `now_ms`: queued and due,
    /// or delivered with its lease run out.
    async fn next_task(
        &self,
        workload_id: &str,
        now_ms: i64,
    ) -> Result<Option<TaskRecord>, StoreError>;

    // ---- routing ----

    /// Announces every committed change of a workload row (create, transition,
    /// update) in this process, so the router's cache follows the store without
    /// polling. A receiver that lags gets `Lagged` and must reload everything.
    fn workload_changes(&self) -> tokio::sync::broadcast::Receiver<WorkloadChange>;

    /// One workload by id, whatever its tenant: only for the router, which then checks
    /// the caller's credential against the workload's tenant.
    async fn workload_for_routing(&self, id: &str) -> Result<Option<WorkloadRecord>, StoreError>;

    /// Applies a router's pending connection changes in one transaction: rows of
    /// opened connections, byte counters `(id, to_backend, from_backend)` of open ones,
    /// and removal of closed ones. Batching keeps a connection flood from issuing a
    /// write per connection.
    async fn apply_connection_batch(&self, batch: ConnectionBatch) -> Result<(), StoreError>;

    /// Removes every row of a router (it restarted, so they are closed); returns how
    /// many there were.
    async fn close_router_connections(&self, router_id: &str) -> Result<u64, StoreError>;

    /// Open connections of a workload, oldest first.
    async fn connections(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<ConnectionRecord>, StoreError>;
}
