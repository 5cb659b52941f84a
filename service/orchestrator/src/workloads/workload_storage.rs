//! The workload's own storage, reached through its agent's local API: a signed URL for
//! one object of `state/` or `artifacts/`, and listings of them. Keys are relative to
//! the namespace of the agent's workload, so no spelling reaches another's.
//!
//! What stays the agent's: `checkpoints/` (a checkpoint is complete exactly when its
//! manifest exists, so nothing else may write there) and uploads to `artifacts/logs/`
//! (the rotated log segments).

use super::agents::{AgentError, AgentLink};
use super::Orchestrator;
use crate::tokens::AgentTokenKind;
use computearbitrage_agent_protocol as protocol;
use computearbitrage_storage::{Area, Method, ObjectKey, Prefix};
use computearbitrage_store::WorkloadRecord;
use std::time::Duration;

/// Where a workload may not sign for itself.
fn refuse_agents_own(key: &ObjectKey, method: Method) -> Result<(), AgentError> {
    match key.area() {
        Area::Checkpoints => Err(AgentError::Invalid(format!(
            "{} is in checkpoints/, which only the agent writes (a checkpoint is complete when its manifest exists); keep the workload's files in state/ or artifacts/, and ask for a checkpoint with `workload checkpoint`",
            key.relative()
        ))),
        Area::Artifacts if method == Method::Put && key.path().starts_with("logs/") => {
            Err(AgentError::Invalid(format!(
                "{} is in artifacts/logs/, where the agent keeps the workload's output; upload elsewhere in artifacts/",
                key.relative()
            )))
        }
        _ => Ok(()),
    }
}

impl Orchestrator {
    /// The storage link of a workload that has storage; `without` says what cannot be
    /// done otherwise.
    pub(super) fn storage_for(
        &self,
        workload: &WorkloadRecord,
        without: &str,
    ) -> Result<&AgentLink, AgentError> {
        self.agent_link()
            .filter(|_| workload.spec.storage.enabled)
            .ok_or_else(|| {
                AgentError::Invalid(format!(
                    "workload {} has no storage, so {without}; it needs `storage {{ enabled = true }}`",
                    workload.id
                ))
            })
    }

    /// A signed URL for one object of the workload's `state/` or `artifacts/`; an
    /// upload is checked against the quota first.
    pub async fn agent_storage_url(
        &self,
        token: &str,
        request: protocol::StorageUrlRequest,
    ) -> Result<protocol::StorageUrl, AgentError> {
        let session = self
            .agent_session(token, AgentTokenKind::Session, Duration::ZERO)
            .await?;
        let workload = &session.workload;
        let link = self.storage_for(workload, "it has no state/ or artifacts/ to reach")?;
        let method = Method::parse(&request.method).ok_or_else(|| {
            AgentError::Invalid(format!(
                "method {:?} is not \"GET\" (download) or \"PUT\" (upload)",
                request.method
            ))
        })?;
        let key = ObjectKey::in_namespace(&workload.id, &request.key)?;
        refuse_agents_own(&key, method)?;
        let quota = workload.spec.storage.quota_bytes();
        let signed = link
            .storage
            .signed_url(method, &key, Some(quota), request.size_bytes)
            .await?;
        // The object, never the URL: it is a credential.
        tracing::info!(workload_id = %workload.id, key = %key, method = method.as_str(), "storage URL signed for the workload");
        Ok(protocol::StorageUrl {
            url: signed.url,
            method: method.as_str().to_string(),
            key: key.relative(),
            expires_at: signed.expires_at,
        })
    }

    /// The workload's objects under `prefix` (checkpoints are not among them), with
    /// what it stores in all against its quota.
    pub async fn agent_storage_list(
        &self,
        token: &str,
        request: protocol::StorageListRequest,
    ) -> Result<protocol::StorageList, AgentError> {
        let session = self
            .agent_session(token, AgentTokenKind::Session, Duration::ZERO)
            .await?;
        let workload = &session.workload;
        let link = self.storage_for(workload, "it has no state/ or artifacts/ to list")?;
        let prefix = Prefix::in_namespace(&workload.id, &request.prefix)?;
        if prefix.area_of() == Some(Area::Checkpoints) {
            return Err(AgentError::Invalid(
                "checkpoints/ is the agent's; list state/ or artifacts/ (or \"\" for both)".into(),
            ));
        }
        let (objects, used_bytes) = link.storage.list_with_usage(&prefix).await?;
        let objects = objects
            .into_iter()
            .filter(|o| o.key.area() != Area::Checkpoints)
            .map(|o| protocol::StoredObject {
                key: o.key.relative(),
                size_bytes: o.size,
                modified_ms: o.modified_ms,
            })
            .collect();
        Ok(protocol::StorageList {
            objects,
            used_bytes,
            quota_bytes: workload.spec.storage.quota_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agents_own_areas_are_not_the_workloads_to_sign() {
        let key = |k: &str| ObjectKey::in_namespace("wl-1", k).unwrap();
        assert!(refuse_agents_own(&key("state/db.sqlite"), Method::Put).is_ok());
        assert!(refuse_agents_own(&key("artifacts/out.csv"), Method::Put).is_ok());
        assert!(refuse_agents_own(&key("artifacts/logs/i-1/1.log"), Method::Get).is_ok());
        assert!(refuse_agents_own(&key("artifacts/logs/i-1/1.log"), Method::Put).is_err());
        assert!(refuse_agents_own(&key("checkpoints/1/manifest.json"), Method::Put).is_err());
        assert!(refuse_agents_own(&key("checkpoints/1/manifest.json"), Method::Get).is_err());
    }
}
