//! The store's error type: where it came from and whether retrying can help.

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is busy, locked or unreachable. Retrying later may succeed.
    #[error("database {engine} is unavailable: {message}")]
    Unavailable {
        engine: &'static str,
        message: String,
    },
    /// The write contradicts existing data (e.g. a token already owned by another
    /// tenant). Retrying the same write cannot succeed.
    #[error("conflict in {engine}: {message}")]
    Conflict {
        engine: &'static str,
        message: String,
    },
    /// Stored data could not be read back (schema drift, corruption). Not retryable.
    #[error("corrupt data in {engine}: {message}")]
    Corrupt {
        engine: &'static str,
        message: String,
    },
    /// Opening or migrating the database failed; the message says which path.
    #[error("cannot open {engine} database: {message}")]
    Open {
        engine: &'static str,
        message: String,
    },
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}
