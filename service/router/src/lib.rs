//! One stable endpoint per workload. Users reach a workload through the router, never
//! through its instance's address, so the address they hold survives moves between
//! instances and clouds.
//!
//! Module map:
//! - [`parse`]: pure parsing of Host / `X-Workload-Id` / `/w/{id}/`, credentials and
//!   `traceparent` (the fuzz target's surface).
//! - [`head`]: pure reading and rewriting of HTTP/1.1 heads for the fast path (the
//!   second fuzz target's surface).
//! - [`table`]: the route cache and the access decision (401 / 404 / route).
//! - [`follow`]: keeps the cache equal to the store by following its change feed.
//! - [`http`]: the HTTP proxy (keep-alive, h2c, Upgrade, streaming, one retry); its
//!   plain-HTTP/1.1 requests take `fast`, a relay over one backend connection per
//!   client connection, and everything else (and every non-forwarded answer) hyper.
//! - [`tcp`]: per-workload TCP listeners (allowed ranges, a cap), batched connection
//!   records, drain.
//! - [`limits`]: connection limits (in all, per client address) and per-workload
//!   request rate limits.
//! - [`metrics`]: per-workload Prometheus metrics and their HTTP endpoint.
//! - [`error`]: [`RouterError`], classified by source and retryability.
//!
//! Invariants: the router never calls a cloud API or a driver; it only reads routes
//! and writes connection records through the [`computearbitrage_store::Store`] trait.
//! A lookup never touches the store.

pub mod error;
mod fast;
pub mod follow;
pub mod head;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod parse;
pub mod table;
pub mod tcp;

pub use error::RouterError;
pub use table::{Route, RouteTable};
