//! The router's error type: where an error came from and whether retrying can help.
//! Listener and connection I/O failures are logged where they happen and never
//! returned, so the only source that reaches callers is the store.

use computearbitrage_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Reading routes or writing connection records failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RouterError {
    pub fn is_retryable(&self) -> bool {
        match self {
            RouterError::Store(e) => e.is_retryable(),
        }
    }
}
