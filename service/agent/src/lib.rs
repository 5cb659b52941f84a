//! `computearbitrage-agent`: the program that runs on every instance next to the
//! workload: it registers with the service, restores the workload's checkpoint, runs
//! the workload, sends heartbeats, watches the cloud's interruption signal and
//! checkpoints on a notice (docs/agent.md says what is built and what is not yet).
//!
//! It is small on purpose: no dependency on the service's crates, its store or its
//! gRPC stack, only an HTTP client and the wire types of `computearbitrage-agent-protocol`.
//!
//! Module map:
//! - [`checkpoint`]: `$CHECKPOINT_DIR` packed into content-hashed chunks and a manifest,
//!   uploaded through signed URLs (manifest last), restored with every chunk verified.
//! - [`local_api`]: the workload's HTTP API on a unix socket only it can open: signed
//!   URLs for its own `state/` and `artifacts/`, relayed to the service.
//! - [`run`]: the agent's life on an instance (`computearbitrage-agent run`).
//! - [`notice`]: the clouds' notice payloads parsed into one [`notice::Notice`] (pure,
//!   fuzzed, tested on the real shapes in `../shared/reference/cloud-api/`).
//! - [`snapshot`]: a checkpoint copied while the workload runs, as its user, by a child
//!   process that never holds the agent's token.
//! - [`tasks`]: operator tasks pulled from the service (exec, checkpoint, stop, pause,
//!   resume), each id run once however often it is delivered.
//! - [`watch`]: the [`watch::Watcher`] of one cloud's metadata endpoint.

pub mod checkpoint;
pub mod local_api;
pub mod notice;
pub mod run;
pub mod snapshot;
pub mod tasks;
pub mod watch;
