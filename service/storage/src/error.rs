//! The storage crate's error type, classified by origin and retryability. Retry
//! decisions read [`StorageError::is_retryable`], never message text. No variant
//! carries a signing key, a credential or a signed URL's signature.

/// Where an error originated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The caller named something that cannot be (a bad key, a malformed URL).
    Input,
    /// A signed URL that does not grant this request.
    Denied,
    /// The workload's quota would be exceeded.
    Quota,
    /// The object store (local filesystem or cloud) failed.
    Backend,
    /// The storage configuration is wrong.
    Config,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    /// The request is not what a signed URL grants (expired, tampered, another key or
    /// method). The text says which, never the expected signature.
    #[error("{0}")]
    Denied(String),
    #[error("storage quota of workload {workload_id} exceeded: {used} bytes used, {adding} more would pass the quota of {limit} bytes; delete objects or raise storage.quota_gb")]
    QuotaExceeded {
        workload_id: String,
        used: u64,
        adding: u64,
        limit: u64,
    },
    #[error("no object {0}")]
    NotFound(String),
    #[error("{context}: {source}")]
    Backend {
        context: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{0}")]
    Config(String),
}

impl StorageError {
    pub fn invalid_key(key: &str, reason: impl Into<String>) -> StorageError {
        StorageError::InvalidKey {
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    pub fn denied(message: impl Into<String>) -> StorageError {
        StorageError::Denied(message.into())
    }

    pub fn config(message: impl Into<String>) -> StorageError {
        StorageError::Config(message.into())
    }

    /// A backend failure; a missing object becomes [`StorageError::NotFound`].
    pub fn backend(context: impl Into<String>, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
            source => StorageError::Backend {
                context: context.into(),
                source,
            },
        }
    }

    pub fn origin(&self) -> Origin {
        match self {
            StorageError::InvalidKey { .. } | StorageError::NotFound(_) => Origin::Input,
            StorageError::Denied(_) => Origin::Denied,
            StorageError::QuotaExceeded { .. } => Origin::Quota,
            StorageError::Backend { .. } => Origin::Backend,
            StorageError::Config(_) => Origin::Config,
        }
    }

    /// Whether the same request may succeed later. Only backend failures can: the
    /// object store already retried transient ones, so what is left here is an outage.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Backend { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            _ => false,
        }
    }
}
