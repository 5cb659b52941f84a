//! The retention cleaner: the storage namespace of a workload that ended (TERMINATED or
//! FAILED) is kept for its `storage.retention_days` after the end (so its artifacts,
//! logs and last checkpoint can still be downloaded), then deleted.
//!
//! A namespace is listed on every tick until one signed URL lifetime after it was due
//! (a URL granted before the end may still upload into it), then remembered as done for
//! the life of the process. Deletion is idempotent, so a tick cut short is finished by
//! the next, and a restart lists each ended namespace once more.

use crate::error::OrchestratorError;
use crate::worker::Worker;
use computearbitrage_core::WorkloadStatus;
use computearbitrage_storage::{Prefix, Storage};
use computearbitrage_store::Store;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DAY_MS: i64 = 24 * 3600 * 1000;

pub struct RetentionCleaner {
    store: Arc<dyn Store>,
    storage: Arc<Storage>,
    interval: Duration,
    /// (workload id, end) of namespaces emptied after nothing could write to them.
    done: Mutex<HashSet<(String, i64)>>,
}

impl RetentionCleaner {
    pub fn new(
        store: Arc<dyn Store>,
        storage: Arc<Storage>,
        interval: Duration,
    ) -> RetentionCleaner {
        RetentionCleaner {
            store,
            storage,
            interval,
            done: Mutex::new(HashSet::new()),
        }
    }

    /// Deletes what is due at `now_ms`; returns (workload id, objects deleted) for
    /// each namespace that still held objects.
    pub async fn clean(&self, now_ms: i64) -> Result<Vec<(String, usize)>, OrchestratorError> {
        let mut cleaned = Vec::new();
        for workload in self
            .store
            .workloads_in(&[WorkloadStatus::Terminated, WorkloadStatus::Failed])
            .await?
        {
            let storage = &workload.spec.storage;
            if !storage.enabled {
                continue;
            }
            // Nothing changes an ended workload but its destruction, so its last update
            // is its end.
            let ended = (workload.id.clone(), workload.updated_at);
            let due = workload.updated_at + i64::from(storage.retention_days) * DAY_MS;
            if now_ms < due || self.done.lock().unwrap().contains(&ended) {
                continue;
            }
            let deleted = self
                .storage
                .delete_prefix(&Prefix::workload(&workload.id)?)
                .await?;
            let url_lifetime_ms = self.storage.url_expiry().as_millis() as i64;
            if now_ms > due + url_lifetime_ms {
                self.done.lock().unwrap().insert(ended);
            }
            if deleted > 0 {
                tracing::info!(
                    workload_id = %workload.id,
                    tenant_id = %workload.tenant_id,
                    objects = deleted,
                    status = %workload.status,
                    retention_days = storage.retention_days,
                    "retention passed; storage deleted"
                );
                cleaned.push((workload.id, deleted));
            }
        }
        Ok(cleaned)
    }
}

#[async_trait::async_trait]
impl Worker for RetentionCleaner {
    type Error = OrchestratorError;

    fn name(&self) -> String {
        "storage-retention".into()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        self.clean(super::now_ms()).await.map(|_| ())
    }
}
