//! The core crate's error type. Each variant says whether retrying can help, so callers
//! (collector workers, the orchestrator) decide on retries from [`Error::is_retryable`],
//! never from message text.

use crate::lifecycle::WorkloadStatus;
use crate::placement::NoMatch;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A requirement or filter value is invalid. Retrying the same input cannot help.
    #[error("invalid value for `{field}`: {message}")]
    InvalidInput { field: String, message: String },

    /// No offer satisfies the requirements; the explanation says which constraint removed
    /// how many offers and what the nearest misses are.
    #[error("{0}")]
    NoMatch(Box<NoMatch>),

    /// A page cursor could not be decoded. The caller should restart the listing.
    #[error("invalid page token: {0}; start the listing again without a page token")]
    InvalidPageToken(String),

    /// A status change the lifecycle does not allow. A bug or a race: not retryable.
    #[error("a workload cannot go from {from} to {to}")]
    InvalidTransition {
        from: WorkloadStatus,
        to: WorkloadStatus,
    },

    /// A compute driver call failed. `retryable` is the driver's judgement (throttling,
    /// capacity, network: yes; bad spec, auth: no).
    #[error("driver `{driver}` failed: {message}")]
    Driver {
        driver: String,
        message: String,
        retryable: bool,
    },

    /// The cloud has no capacity for this offer now (AWS
    /// `InsufficientInstanceCapacity`, GCP `ZONE_RESOURCE_POOL_EXHAUSTED`, Azure
    /// `SkuNotAvailable`). Retryable: capacity comes back; with `fallback =
    /// "on_demand"`, errors that persist move the workload to on-demand capacity.
    #[error("driver `{driver}` has no capacity: {message}")]
    Capacity { driver: String, message: String },

    /// A price source failed. `retryable` says whether the next attempt may succeed
    /// (network, throttling) or not (malformed data, bad credentials).
    #[error("price source `{source_name}` failed: {message}")]
    Collect {
        source_name: String,
        message: String,
        retryable: bool,
    },
}

impl Error {
    /// Whether the same call may succeed if made again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Collect { retryable, .. } | Error::Driver { retryable, .. } => *retryable,
            Error::Capacity { .. } => true,
            Error::InvalidInput { .. }
            | Error::NoMatch(_)
            | Error::InvalidPageToken(_)
            | Error::InvalidTransition { .. } => false,
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            message: message.into(),
        }
    }
}
