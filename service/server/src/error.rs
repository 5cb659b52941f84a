//! The service's error type: where an error came from and whether retrying can help.
//! Retry decisions read [`ServiceError::is_retryable`], never message text.

use computearbitrage_orchestrator::worker::TickError;
use computearbitrage_store::StoreError;

/// Where an error originated (the same classification as the orchestrator's).
pub use computearbitrage_orchestrator::error::Origin;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] computearbitrage_core::Error),
    #[error(transparent)]
    Router(#[from] computearbitrage_router::RouterError),
    #[error(transparent)]
    Orchestrator(#[from] computearbitrage_orchestrator::OrchestratorError),
    #[error(transparent)]
    Storage(#[from] computearbitrage_storage::StorageError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl ServiceError {
    pub fn config(message: impl Into<String>) -> Self {
        ServiceError::Config(message.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ServiceError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            ServiceError::Config(_) => Origin::Config,
            ServiceError::Store(_) => Origin::Store,
            ServiceError::Core(computearbitrage_core::Error::Collect { .. }) => Origin::Collector,
            ServiceError::Core(computearbitrage_core::Error::Driver { .. }) => Origin::Driver,
            ServiceError::Core(_) => Origin::Input,
            ServiceError::Io { .. } => Origin::Io,
            ServiceError::Router(computearbitrage_router::RouterError::Store(_)) => Origin::Store,
            ServiceError::Orchestrator(e) => e.origin(),
            ServiceError::Storage(_) => Origin::Storage,
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            ServiceError::Config(_) => false,
            ServiceError::Store(e) => e.is_retryable(),
            ServiceError::Core(e) => e.is_retryable(),
            ServiceError::Router(e) => e.is_retryable(),
            ServiceError::Orchestrator(e) => e.is_retryable(),
            ServiceError::Storage(e) => e.is_retryable(),
            ServiceError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

impl TickError for ServiceError {
    fn origin(&self) -> Origin {
        ServiceError::origin(self)
    }
    fn is_retryable(&self) -> bool {
        ServiceError::is_retryable(self)
    }
}
