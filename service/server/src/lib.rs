//! The computearbitrage service.
//!
//! Module map:
//! - [`cli`]: the operator commands that talk to a running service.
//! - [`config`]: the configuration struct, loaded from file, environment and flags.
//! - [`server`]: `serve`: wiring of store, auth, catalog, workers and gRPC.
//! - [`grpc`]: the `Pricing` and `System` handlers and wire ↔ core conversion.
//! - [`grpc_workloads`]: the `Workloads` and `Admin` handlers.
//! - [`auth`]: bearer-token authentication, tenants, the bootstrap token.
//! - [`pricing`]: the served catalog ([`pricing::PriceBook`]), the snapshot collector and
//!   the collector worker.
//! - [`workloads`]: the orchestrator (durable workflows), the health monitor,
//!   notifications and the driver-event, resumer and sweeper workers.
//! - [`worker`]: the background-worker trait and its supervisor.
//! - [`error`]: [`error::ServiceError`], classified by origin and retryability.
//!
//! The service never speaks the Terraform plugin protocol: only `provider/` does.

pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod grpc;
pub mod grpc_workloads;
pub mod pricing;
pub mod server;
pub mod worker;
pub mod workloads;
