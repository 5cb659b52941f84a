//! `ListObjects` and `SignStorageUrl`: a workload's storage namespace as its tenant
//! sees it. Keys on the wire are relative to the namespace (`artifacts/out.csv`); the
//! tenant comes from the caller, so no key can name another tenant's workload.

use super::{audit, caller, callers_workload, invalid};
use crate::auth::Caller;
use computearbitrage_api::{pb, validate, Reason};
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_orchestrator::workloads::Orchestrator;
use computearbitrage_storage::{Method, ObjectKey, Prefix, Storage, StorageError};
use computearbitrage_store::{Scope, WorkloadRecord};
use tonic::{Request, Status};

/// The one mapping of storage failures onto statuses.
pub(crate) fn storage_status(error: StorageError, field: &'static str) -> Status {
    match &error {
        StorageError::InvalidKey { .. } => {
            invalid(vec![validate::Violation::field(field, error.to_string())])
        }
        StorageError::NotFound(_) => Reason::NotFound.status(false, error.to_string()),
        StorageError::QuotaExceeded { .. } => Reason::Exhausted.status(false, error.to_string()),
        StorageError::Denied(_) => Reason::PermissionDenied.status(false, error.to_string()),
        StorageError::Backend { .. } if error.is_retryable() => {
            Reason::StorageUnavailable.status(true, format!("{error}; retry shortly"))
        }
        StorageError::Backend { .. } | StorageError::Config(_) => {
            Reason::Internal.status(false, error.to_string())
        }
    }
}

/// The caller's workload, which must have storage.
async fn workload_with_storage(
    orchestrator: &Orchestrator,
    caller: &Caller,
    scope: Scope,
    call: &str,
    id: &str,
) -> Result<WorkloadRecord, Status> {
    let workload = callers_workload(orchestrator, caller, scope, call, id).await?;
    if !workload.spec.storage.enabled {
        return Err(Reason::WrongWorkloadState.status(
            false,
            format!("workload {id} has no storage; it needs `storage {{ enabled = true }}`, which takes a new workload"),
        ));
    }
    Ok(workload)
}

pub(crate) async fn list_objects(
    orchestrator: &Orchestrator,
    storage: &Storage,
    request: Request<pb::ListObjectsRequest>,
) -> Result<pb::ListObjectsResponse, Status> {
    let caller = caller(&request)?;
    let request = request.into_inner();
    let workload = workload_with_storage(
        orchestrator,
        &caller,
        Scope::Read,
        "ListObjects",
        &request.workload_id,
    )
    .await?;
    let prefix = Prefix::in_namespace(&workload.id, &request.prefix)
        .map_err(|e| storage_status(e, "prefix"))?;
    let namespace = Prefix::workload(&workload.id).map_err(|e| storage_status(e, "workload_id"))?;
    let (objects, used_bytes) = storage
        .list_with_usage(&prefix)
        .await
        .map_err(|e| storage_status(e, "prefix"))?;
    Ok(pb::ListObjectsResponse {
        storage_prefix: namespace.to_string(),
        objects: objects
            .iter()
            .map(|o| pb::StoredObject {
                key: o.key.relative(),
                size_bytes: o.size,
                modified_at: rfc3339(o.modified_ms / 1000),
            })
            .collect(),
        used_bytes,
        quota_bytes: workload.spec.storage.quota_bytes(),
    })
}

pub(crate) async fn sign_storage_url(
    orchestrator: &Orchestrator,
    storage: &Storage,
    request: Request<pb::SignStorageUrlRequest>,
) -> Result<pb::SignedStorageUrl, Status> {
    let caller = caller(&request)?;
    let request = request.into_inner();
    let method = Method::parse(&request.method).ok_or_else(|| {
        invalid(vec![validate::Violation::field(
            "method",
            format!(
                "{:?} is not a method; use \"GET\" to download or \"PUT\" to upload",
                request.method
            ),
        )])
    })?;
    let (scope, call) = match method {
        Method::Get => (Scope::Read, "SignStorageUrl (GET)"),
        Method::Put => (Scope::Write, "SignStorageUrl (PUT)"),
    };
    let workload =
        workload_with_storage(orchestrator, &caller, scope, call, &request.workload_id).await?;
    let key = ObjectKey::in_namespace(&workload.id, &request.key)
        .map_err(|e| storage_status(e, "key"))?;
    let quota = workload.spec.storage.quota_bytes();
    let result = storage
        .signed_url(method, &key, Some(quota), request.size_bytes)
        .await
        .map(|signed| pb::SignedStorageUrl {
            url: signed.url,
            expires_at: rfc3339(signed.expires_at),
        })
        .map_err(|e| storage_status(e, "key"));
    if method == Method::Put {
        // The audit names the object, never the URL (it is a credential).
        audit(
            orchestrator.store().as_ref(),
            &caller,
            "SignStorageUrl PUT",
            &key.to_string(),
            &result,
        )
        .await;
    }
    result
}
