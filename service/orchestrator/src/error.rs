//! The orchestrator's error type: where an error came from and whether retrying can
//! help. Retry decisions read [`OrchestratorError::is_retryable`], never message text.

use computearbitrage_store::StoreError;

/// Where an error originated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Config,
    Store,
    Collector,
    Driver,
    Input,
    Io,
    /// Workload storage (the object store).
    Storage,
}

impl Origin {
    /// The name logs carry in their `origin` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Store => "store",
            Origin::Collector => "collector",
            Origin::Driver => "driver",
            Origin::Input => "input",
            Origin::Io => "io",
            Origin::Storage => "storage",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// A setting or a bundled input is wrong; retrying cannot help.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Core(#[from] computearbitrage_core::Error),
    #[error(transparent)]
    Storage(#[from] computearbitrage_storage::StorageError),
    /// A compare-and-set status change found the workload moved on by someone else
    /// (a health check, a notice). Retrying re-reads it and may well succeed.
    #[error("{0}")]
    ChangedConcurrently(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl OrchestratorError {
    pub fn config(message: impl Into<String>) -> Self {
        OrchestratorError::Config(message.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        OrchestratorError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            OrchestratorError::Config(_) => Origin::Config,
            OrchestratorError::Store(_) | OrchestratorError::ChangedConcurrently(_) => {
                Origin::Store
            }
            OrchestratorError::Core(computearbitrage_core::Error::Collect { .. }) => {
                Origin::Collector
            }
            OrchestratorError::Core(computearbitrage_core::Error::Driver { .. }) => Origin::Driver,
            OrchestratorError::Core(_) => Origin::Input,
            OrchestratorError::Io { .. } => Origin::Io,
            OrchestratorError::Storage(_) => Origin::Storage,
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            OrchestratorError::Config(_) => false,
            OrchestratorError::ChangedConcurrently(_) => true,
            OrchestratorError::Store(e) => e.is_retryable(),
            OrchestratorError::Core(e) => e.is_retryable(),
            OrchestratorError::Storage(e) => e.is_retryable(),
            OrchestratorError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
        }
    }
}
