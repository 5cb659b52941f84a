//! `computearbitrage-agent`: the program that runs on every instance next to the
//! workload. This first part watches the cloud's interruption signal; registering with
//! the service, restoring and uploading checkpoints, running the workload and its
//! operator tasks come next (docs/agent.md says what is built).
//!
//! It is small on purpose: no dependency on the service's crates, its store or its
//! gRPC stack, only an HTTP client.
//!
//! Module map:
//! - [`notice`]: the clouds' notice payloads parsed into one [`notice::Notice`] (pure,
//!   fuzzed, tested on the real shapes in `../shared/reference/cloud-api/`).
//! - [`watch`]: the [`watch::Watcher`] of one cloud's metadata endpoint.

pub mod notice;
pub mod watch;
