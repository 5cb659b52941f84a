//! Workload storage: every workload's namespace `workloads/{id}/{state,checkpoints,artifacts}/`
//! on one object store, and the signed URLs through which instances read and write it
//! without holding any credential.
//!
//! Module map:
//! - [`key`]: checked keys and prefixes; nothing unchecked reaches a backend.
//! - [`backend`]: [`Storage`] on the local filesystem, S3, GCS or Azure Blob
//!   (`object_store`), chosen by [`StorageConfig`]; quota checks, listing, deletion.
//! - [`signed`]: the local backend's HMAC-signed, expiring URLs (cloud backends use
//!   their own signatures).
//! - [`http`]: serving the local backend's URLs, streamed.
//! - [`chunks`]: a file as a stream of large chunks (serving, and clients sending files).
//! - [`suite`]: the behaviour every backend must show, run against each.
//! - [`error`]: [`StorageError`], classified by origin and retryability.

pub mod backend;
pub mod chunks;
pub mod error;
pub mod http;
pub mod key;
pub mod signed;
pub mod suite;

pub use backend::{BackendKind, ObjectInfo, SignedUrl, Storage, StorageConfig};
pub use error::StorageError;
pub use key::{Area, ObjectKey, Prefix};
pub use signed::{Method, Scope, UrlSigner};
