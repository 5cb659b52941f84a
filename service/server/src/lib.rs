//! The computearbitrage service.
//!
//! Module map:
//! - [`config`]: the configuration struct, loaded from file, environment and flags.
//! - [`server`]: `serve`: wiring of store, auth, catalog, workers and gRPC.
//! - [`grpc`]: the `Pricing` and `System` handlers and wire ↔ core conversion.
//! - [`auth`]: bearer-token authentication, tenants, the bootstrap token.
//! - [`pricing`]: the served catalog ([`pricing::PriceBook`]), the snapshot collector and
//!   the collector worker.
//! - [`worker`]: the background-worker trait and its supervisor.
//! - [`error`]: [`error::ServiceError`], classified by origin and retryability.
//!
//! The service never speaks the Terraform plugin protocol: only `provider/` does.

pub mod auth;
pub mod config;
pub mod error;
pub mod grpc;
pub mod pricing;
pub mod server;
pub mod worker;
