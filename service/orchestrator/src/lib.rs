//! The computearbitrage engine: everything the service does on its own, between API
//! calls. It knows the store, core's types and the `Driver` trait; it never speaks gRPC
//! (that is `service/server`, which wires this crate to the API).
//!
//! Module map:
//! - [`pricing`]: the served catalog ([`pricing::PriceBook`]), the snapshot collector and
//!   the collector worker.
//! - [`workloads`]: the orchestrator (durable workflows), the health monitor,
//!   notifications and the driver-event, resumer and sweeper workers.
//! - [`worker`]: the background-worker trait and its supervisor, shared by every loop
//!   (the server's too).
//! - [`tokens`]: workload access-token derivation and token hashing.
//! - [`error`]: [`error::OrchestratorError`], classified by origin and retryability.

pub mod error;
pub mod pricing;
pub mod tokens;
pub mod worker;
pub mod workloads;

pub use error::OrchestratorError;
