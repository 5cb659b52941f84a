//! Pure domain logic of computearbitrage. Nothing here performs I/O, reads a clock or
//! needs an async runtime: time and data are parameters, so every function is
//! deterministic and unit-testable.
//!
//! Module map:
//! - [`cloud`]: the three clouds, CPU architectures, and name parsing with suggestions.
//! - [`gpu`]: canonical GPU names across clouds.
//! - [`offer`]: one spot offer, its interruption rate, and row normalisation helpers.
//! - [`filter`]: the constraints a user can put on offers (list filter and placement
//!   requirements), compiled against a catalog.
//! - [`catalog`]: the in-memory, interned, price-sorted offer index with keyset paging.
//! - [`placement`]: scoring, ranked placement, and the "nothing matches" explanation;
//!   on-demand placement for `fallback`.
//! - [`rebalance`]: when a price move is worth a move (the rule alone, pure).
//! - [`hints`]: names a request uses that no offer has, with the closest known names.
//! - [`spot_advisor`]: the parser of AWS's Spot Instance Advisor feed (interruption rates).
//! - [`collector`]: the trait every price source implements.
//! - [`driver`]: the trait every compute driver implements (create, status, terminate,
//!   list by tag, interruption events).
//! - [`lifecycle`]: the workload state machine.
//! - [`workload`]: the workload spec.
//! - [`retry`]: retry policies as values.
//! - [`workflow`]: the provisioning and termination workflows as data (steps, retries).
//! - [`error`]: this crate's error type.
//! - [`fmt`]: small formatting helpers shared by messages (thousands separators, RFC 3339).

pub mod catalog;
pub mod cloud;
pub mod collector;
pub mod driver;
pub mod error;
pub mod filter;
pub mod fmt;
pub mod gpu;
pub mod hints;
pub mod lifecycle;
pub mod offer;
pub mod placement;
pub mod rebalance;
pub mod retry;
pub mod spot_advisor;
pub mod workflow;
pub mod workload;

pub use catalog::{Catalog, PageCursor};
pub use cloud::{Architecture, Cloud};
pub use collector::PriceCollector;
/// Spellings and defaults shared with the API contract.
pub use computearbitrage_conventions as conventions;
pub use driver::{AgentBoot, Driver, DriverEvent, Instance, InstanceSpec, InstanceState};
pub use error::Error;
pub use filter::{OfferFilter, Requirements};
pub use lifecycle::{Transition, WorkloadStatus};
pub use offer::{InterruptionRate, Offer};
pub use placement::{place, place_on_demand, Candidate, Placement, ScoringPolicy};
pub use rebalance::RebalancePolicy;
pub use retry::RetryPolicy;
pub use workload::{
    CheckpointSpec, Fallback, HealthCheck, OnInterruption, OnUnhealthy, StorageSpec, WorkloadSpec,
};
