//! The gRPC API.
//!
//! - [`pricing`]: the `Pricing` and `System` handlers.
//! - [`workloads`]: the `Workloads` handlers.
//! - [`admin`]: the `Admin` handlers (webhooks, interruption injection, route feed).
//! - [`wire`]: wire ↔ core conversions, in canonical form.
//! - this file: the caller of a request and the one mapping of every failure onto a
//!   status with its [`Reason`] and retryability.
//!
//! The tenant always comes from the auth interceptor, never from a request body.

pub mod admin;
pub mod pricing;
pub mod wire;
pub mod workloads;

use crate::auth::TenantId;
use crate::error::{Origin, ServiceError};
use crate::workloads::OperationError;
use computearbitrage_api::{validate, Reason, ERROR_FIELD_METADATA};
use tonic::{Request, Status};

/// The tenant of an authenticated request.
pub(crate) fn tenant<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<TenantId>()
        .map(|t| t.0.clone())
        .ok_or_else(|| Reason::Unauthenticated.status(false, "no tenant on this request"))
}

/// INVALID_ARGUMENT naming every violation; the first one's path goes in metadata.
pub(crate) fn invalid(violations: Vec<validate::Violation>) -> Status {
    let message = violations
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    let mut status = Reason::InvalidArgument.status(false, message);
    if let Some(first) = violations.first() {
        if let Ok(value) = first.dotted_path().parse() {
            status.metadata_mut().insert(ERROR_FIELD_METADATA, value);
        }
    }
    status
}

/// A failure inside the service: UNAVAILABLE with the retryable flag when a retry may
/// help, naming what failed; INTERNAL otherwise.
pub(crate) fn service_status(error: &ServiceError) -> Status {
    if error.is_retryable() {
        let reason = match error.origin() {
            Origin::Driver | Origin::Collector => Reason::DriverUnavailable,
            _ => Reason::StoreUnavailable,
        };
        reason.status(true, format!("{error}; retry shortly"))
    } else {
        Reason::Internal.status(false, error.to_string())
    }
}

pub(crate) fn store_status(error: computearbitrage_store::StoreError) -> Status {
    service_status(&ServiceError::from(error))
}

pub(crate) fn core_status(error: computearbitrage_core::Error) -> Status {
    use computearbitrage_core::Error;
    match error {
        Error::NoMatch(_) => Reason::NoMatchingOffer.status(false, error.to_string()),
        Error::InvalidInput { .. } | Error::InvalidPageToken(_) => {
            Reason::InvalidArgument.status(false, error.to_string())
        }
        Error::InvalidTransition { .. } => {
            Reason::WrongWorkloadState.status(false, error.to_string())
        }
        Error::Collect { .. } | Error::Driver { .. } => {
            service_status(&ServiceError::Core(error))
        }
    }
}

/// The one mapping of orchestrator failures onto statuses.
pub(crate) fn status_of(error: OperationError) -> Status {
    match error {
        OperationError::NotFound(m) => Reason::NotFound.status(false, m),
        OperationError::NameTaken(m) => Reason::NameTaken.status(false, m),
        OperationError::Terminated(m) => Reason::WorkloadTerminated.status(false, m),
        OperationError::WrongState(m) => Reason::WrongWorkloadState.status(false, m),
        OperationError::NeedsReplacement(m) => Reason::NeedsReplacement.status(false, m),
        OperationError::InvalidField { field, message } => {
            invalid(vec![validate::Violation::field(field, message)])
        }
        OperationError::Exhausted(m) => Reason::Exhausted.status(false, m),
        OperationError::Service(e) => service_status(&e),
    }
}
