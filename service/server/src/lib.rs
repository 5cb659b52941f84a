//! The computearbitrage service: the wiring around the engine
//! (`computearbitrage-orchestrator`): configuration, the gRPC API, auth, the CLI and
//! the router's process.
//!
//! Module map:
//! - [`cli`]: the operator commands that talk to a running service.
//! - [`config`]: the configuration struct, loaded from file, environment and flags.
//! - [`server`]: `serve`: wiring of store, auth, the orchestrator's catalog, workloads
//!   and workers, and gRPC.
//! - [`grpc`]: the gRPC handlers (`Pricing`, `System`, `Workloads`, `Admin`), wire ↔
//!   core conversion, and the mapping of failures onto statuses with a reason.
//! - [`agent_api`]: the agents' HTTP API (`/agent/v1/…`) beside gRPC.
//! - [`auth`]: bearer-token authentication, tenants, the bootstrap token.
//! - [`routing`]: runs the router (in `serve` or as `computearbitrage router`) and
//!   builds each workload's public `endpoint`; [`routing_remote`] is the route feed of
//!   a separate router process.
//! - [`error`]: [`error::ServiceError`], classified by origin and retryability.
//! - [`secrets`]: secrets taken from the environment so nothing can read them later.
//!
//! The service never speaks the Terraform plugin protocol: only `provider/` does.

pub mod agent_api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod error;
pub mod grpc;
pub mod routing;
pub mod routing_remote;
pub mod secrets;
pub mod server;
