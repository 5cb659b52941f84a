//! Keeps a [`RouteTable`] equal to the store: subscribe to the store's change feed
//! first, load everything, then re-read each workload the feed names. A route change
//! reaches the table within one store read of its commit, without polling.

use crate::error::RouterError;
use crate::table::RouteTable;
use computearbitrage_store::{ChangeKind, Store, WorkloadChange};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::broadcast::Receiver;

pub struct Follower {
    table: Arc<RouteTable>,
    store: Arc<dyn Store>,
    changes: Receiver<WorkloadChange>,
}

impl Follower {
    /// Subscribes and loads the full table (in that order, so no change is missed).
    pub async fn start(
        table: Arc<RouteTable>,
        store: Arc<dyn Store>,
    ) -> Result<Follower, RouterError> {
        let changes = store.workload_changes();
        let routes = table.reload(store.as_ref()).await?;
        tracing::info!(routes, "route table loaded");
        Ok(Follower {
            table,
            store,
            changes,
        })
    }

    /// Waits up to `wait` for announced changes and applies every one pending;
    /// returns how many workloads were re-read.
    pub async fn next(&mut self, wait: Duration) -> Result<usize, RouterError> {
        let first = match tokio::time::timeout(wait, self.changes.recv()).await {
            Err(_) => return Ok(0),
            Ok(Ok(change)) => change,
            Ok(Err(RecvError::Lagged(missed))) => return self.resync(missed).await,
            Ok(Err(RecvError::Closed)) => {
                tokio::time::sleep(wait).await;
                return Ok(0);
            }
        };
        let mut applied = 0;
        let mut pending = Some(first);
        while let Some(change) = pending.take() {
            match change.kind {
                ChangeKind::Workload => {
                    self.table
                        .refresh(self.store.as_ref(), &change.workload_id)
                        .await?
                }
                // A token was added or revoked: credentials are read with everything.
                ChangeKind::Credentials => {
                    self.table.reload(self.store.as_ref()).await?;
                }
            }
            applied += 1;
            pending = match self.changes.try_recv() {
                Ok(next) => Some(next),
                Err(TryRecvError::Lagged(missed)) => return self.resync(missed).await,
                Err(_) => None,
            };
        }
        Ok(applied)
    }

    async fn resync(&mut self, missed: u64) -> Result<usize, RouterError> {
        tracing::warn!(missed, "route feed lagged; reloading every route");
        self.table.reload(self.store.as_ref()).await
    }
}
