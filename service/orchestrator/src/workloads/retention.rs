//! The retention cleaner: a terminated workload's storage namespace is kept for its
//! `storage.retention_days` after termination (so its artifacts and last checkpoint can
//! still be downloaded), then deleted.
//!
//! Each tick lists the namespace of every terminated workload with storage whose
//! retention has passed, so a namespace already emptied costs one listing per tick;
//! deletion is idempotent, so a tick cut short is finished by the next.

use crate::error::OrchestratorError;
use crate::worker::Worker;
use computearbitrage_core::WorkloadStatus;
use computearbitrage_storage::{Prefix, Storage};
use computearbitrage_store::Store;
use std::sync::Arc;
use std::time::Duration;

const DAY_MS: i64 = 24 * 3600 * 1000;

pub struct RetentionCleaner {
    store: Arc<dyn Store>,
    storage: Arc<Storage>,
    interval: Duration,
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
        }
    }

    /// Deletes what is due at `now_ms`; returns (workload id, objects deleted) for
    /// each namespace that still held objects.
    pub async fn clean(&self, now_ms: i64) -> Result<Vec<(String, usize)>, OrchestratorError> {
        let mut cleaned = Vec::new();
        for workload in self
            .store
            .workloads_in(&[WorkloadStatus::Terminated])
            .await?
        {
            let storage = &workload.spec.storage;
            if !storage.enabled {
                continue;
            }
            // Nothing changes a terminated workload, so its last update is its end.
            let due = workload.updated_at + i64::from(storage.retention_days) * DAY_MS;
            if now_ms < due {
                continue;
            }
            let deleted = self
                .storage
                .delete_prefix(&Prefix::workload(&workload.id)?)
                .await?;
            if deleted > 0 {
                tracing::info!(
                    workload_id = %workload.id,
                    tenant_id = %workload.tenant_id,
                    objects = deleted,
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
