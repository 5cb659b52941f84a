//! Price collection and the catalog the API serves from.
//!
//! - [`PriceBook`]: the current [`Catalog`], rebuilt from the store whenever a
//!   collector writes new offers. The store is the source of truth; the catalog is a
//!   derived, read-optimised index swapped atomically.
//! - [`snapshot`]: the bundled (or a local) CSV price snapshot as a [`PriceCollector`],
//!   with interruption rates joined from Spot Instance Advisor feeds
//!   (`computearbitrage_core::spot_advisor`).
//! - [`collect`]: the [`crate::worker::Worker`] that runs one collector on its schedule
//!   and records its status.

pub mod collect;
pub mod snapshot;

use crate::error::OrchestratorError;
use computearbitrage_core::Catalog;
use computearbitrage_store::Store;
use std::sync::{Arc, RwLock};

/// The catalog currently served.
#[derive(Default)]
pub struct PriceBook {
    current: RwLock<Arc<Catalog>>,
}

impl PriceBook {
    /// The catalog as of now. Cheap: clones an `Arc`.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Rebuilds the catalog from every offer in the store.
    pub async fn reload(&self, store: &dyn Store) -> Result<usize, OrchestratorError> {
        let offers = store.load_offers().await?;
        let catalog = tokio::task::spawn_blocking(move || Catalog::build(offers))
            .await
            .map_err(|e| OrchestratorError::config(format!("catalog build task failed: {e}")))?;
        let size = catalog.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(catalog);
        Ok(size)
    }
}
