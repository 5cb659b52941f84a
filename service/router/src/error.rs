//! The router's error type: where an error came from and whether retrying can help.

use computearbitrage_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Reading routes or writing connection records failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be opened or accepted from.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl RouterError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> RouterError {
        RouterError::Io {
            context: context.into(),
            source,
        }
    }

    pub fn is_retryable(&self) -> bool {
        match self {
            RouterError::Store(e) => e.is_retryable(),
            // A port in use may be freed; a permission error will not change.
            RouterError::Io { source, .. } => !matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidInput
            ),
        }
    }
}
