//! The gRPC API.
//!
//! - [`pricing`]: the `Pricing` and `System` handlers.
//! - [`workloads`]: the `Workloads` handlers.
//! - [`storage`], [`tasks`]: the storage and operator-task calls of `Workloads`.
//! - [`admin`]: the `Admin` handlers (webhooks, interruption injection, route feed).
//! - [`wire`]: wire ↔ core conversions, in canonical form.
//! - this file: the caller of a request and the one mapping of every failure onto a
//!   status with its [`Reason`] and retryability.
//!
//! The tenant always comes from the auth interceptor, never from a request body.

pub mod admin;
pub mod pricing;
pub mod storage;
pub mod tasks;
pub mod wire;
pub mod workloads;

use crate::auth::Caller;
use crate::error::{Origin, ServiceError};
use computearbitrage_api::{validate, Reason, ERROR_FIELD_METADATA};
use computearbitrage_orchestrator::workloads::OperationError;
use computearbitrage_store::{AuditRecord, Store};
use tonic::{Request, Status};

/// Who made an authenticated request (set by the auth interceptor).
pub(crate) fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Reason::Unauthenticated.status(false, "no caller on this request"))
}

/// The caller's workload `id`, for a call that needs `scope`: PERMISSION_DENIED without
/// the scope, NOT_FOUND for an unknown id and for another tenant's.
pub(crate) async fn callers_workload(
    orchestrator: &computearbitrage_orchestrator::workloads::Orchestrator,
    caller: &Caller,
    scope: computearbitrage_store::Scope,
    call: &str,
    id: &str,
) -> Result<computearbitrage_store::WorkloadRecord, Status> {
    caller.require(scope, call)?;
    orchestrator
        .get(&caller.tenant, id)
        .await
        .map_err(status_of)
}

/// Records a write in the audit log: who, what, on what, and how it ended. A failure
/// to record is logged; the call's own outcome stands.
pub(crate) async fn audit<T>(
    store: &dyn Store,
    caller: &Caller,
    action: &str,
    target: &str,
    result: &Result<T, Status>,
) {
    let outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(status) => Reason::of(status)
            .map(|r| r.as_str().to_string())
            .unwrap_or_else(|| format!("{:?}", status.code())),
    };
    let record = AuditRecord {
        id: 0,
        tenant_id: caller.tenant.clone(),
        token_id: caller.token_id.clone(),
        action: action.to_string(),
        target: target.to_string(),
        outcome: outcome.clone(),
        at: computearbitrage_orchestrator::workloads::now_ms(),
    };
    tracing::info!(tenant = %caller.tenant, token_id = %caller.token_id, action, target, outcome = %outcome, "audit");
    if let Err(e) = store.record_audit(record).await {
        tracing::error!(error = %e, action, target, "cannot record an audit entry");
    }
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
        Error::Collect { .. } | Error::Driver { .. } | Error::Capacity { .. } => {
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
        OperationError::Service(e) => service_status(&ServiceError::from(e)),
    }
}
