//! Durable state of the service behind one trait, [`Store`], with one adapter per
//! database engine. Every adapter must pass [`suite`], the shared behavioural tests.
//!
//! Module map:
//! - [`Store`] and its record types (this file).
//! - [`sqlite`]: the embedded default adapter (rusqlite, WAL, one connection).
//! - [`error`]: [`StoreError`], classified by retryability.
//! - [`suite`]: the conformance tests every adapter runs.
//!
//! Ownership: tenant-owned rows (tenants, tokens, and later workloads and runs) carry a
//! `tenant_id`, and every query on them takes the tenant as a parameter. Offers and
//! collector status are shared reference data owned by the system, not by a tenant.

pub mod error;
pub mod sqlite;
pub mod suite;

pub use error::StoreError;
pub use sqlite::SqliteStore;

use computearbitrage_core::Offer;

/// A tenant: the unit of ownership and isolation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// Stable identifier, also its name (`default`).
    pub id: String,
    pub created_at: i64,
}

/// An API token as stored: only its SHA-256, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// Hex SHA-256 of the token.
    pub token_hash: String,
    pub tenant_id: String,
    /// Where the token came from (`bootstrap-env`, `generated-at-first-start`).
    pub label: String,
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

    /// Every token hash, to build the service's in-memory authenticator.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
}
