//! The gRPC contract between the Terraform provider and the service.
//!
//! Module map:
//! - [`pb`]: the generated prost messages and tonic clients/servers of
//!   `proto/computearbitrage/v1/computearbitrage.proto`.
//! - [`validate`]: the rules every request must satisfy, shared so that the provider
//!   reports bad values at plan time, on the attribute's path, and the service rejects
//!   them from any other client with the same words.
//! - [`ERROR_FIELD_METADATA`]: where an INVALID_ARGUMENT status names the bad field.
//!
//! This crate knows nothing of the service's internals or of Terraform.

pub mod validate;

/// Generated code for package `computearbitrage.v1`.
pub mod pb {
    tonic::include_proto!("computearbitrage.v1");
}

/// The API package name, returned by `Version`.
pub const API_VERSION: &str = "computearbitrage.v1";

/// Response metadata key carrying the dotted path of the offending field on
/// INVALID_ARGUMENT (`requirements.providers[1]`).
pub const ERROR_FIELD_METADATA: &str = "x-computearbitrage-field";

/// The cloud names the API accepts.
pub const PROVIDERS: [&str; 3] = ["aws", "gcp", "azure"];

/// Default and maximum page sizes of `ListOffers`.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Maximum `alternatives` of `FindPlacement`.
pub const MAX_ALTERNATIVES: u32 = 50;
