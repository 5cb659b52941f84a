//! Runs one [`PriceCollector`] as a [`Worker`]: collect, store if changed, rebuild the
//! catalog, record the outcome.

use super::PriceBook;
use crate::error::OrchestratorError;
use crate::worker::Worker;
use computearbitrage_core::{Offer, PriceCollector};
use computearbitrage_store::{CollectorOutcome, Store};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct CollectorWorker {
    collector: Arc<dyn PriceCollector>,
    store: Arc<dyn Store>,
    book: Arc<PriceBook>,
    /// Fingerprint of what the store holds for this source, to skip unchanged data.
    stored_fingerprint: Option<String>,
}

impl CollectorWorker {
    /// `stored_fingerprint` is the fingerprint the store last recorded for the source.
    pub fn new(
        collector: Arc<dyn PriceCollector>,
        store: Arc<dyn Store>,
        book: Arc<PriceBook>,
        stored_fingerprint: Option<String>,
    ) -> Self {
        CollectorWorker {
            collector,
            store,
            book,
            stored_fingerprint,
        }
    }
}

/// A content hash of a collector's result, independent of order.
pub fn fingerprint(offers: &[Offer]) -> String {
    let mut lines: Vec<String> = offers.iter().map(|o| format!("{o:?}")).collect();
    lines.sort_unstable();
    let mut hasher = Sha256::new();
    for line in lines {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl Worker for CollectorWorker {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        format!("collector:{}", self.collector.source())
    }

    fn interval(&self) -> Duration {
        self.collector.interval()
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        let source = self.collector.source().to_string();
        let started = std::time::Instant::now();
        let offers = match self.collector.collect().await {
            Ok(offers) => offers,
            Err(error) => {
                self.store
                    .record_collector_run(
                        &source,
                        unix_now(),
                        CollectorOutcome::Failed {
                            error: error.to_string(),
                        },
                    )
                    .await?;
                return Err(error.into());
            }
        };
        let count = offers.len() as u64;
        let print = fingerprint(&offers);
        let changed = self.stored_fingerprint.as_deref() != Some(print.as_str());
        if changed {
            self.store.replace_offers(&source, offers).await?;
        }
        self.store
            .record_collector_run(
                &source,
                unix_now(),
                CollectorOutcome::Succeeded {
                    offers: count,
                    fingerprint: print.clone(),
                },
            )
            .await?;
        self.stored_fingerprint = Some(print);
        if changed {
            let size = self.book.reload(self.store.as_ref()).await?;
            tracing::info!(
                source = %source,
                offers = count,
                catalog_offers = size,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "price catalog updated"
            );
        } else {
            tracing::debug!(source = %source, offers = count, "prices unchanged");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use computearbitrage_core::{Architecture, Cloud, Error, InterruptionRate};
    use computearbitrage_store::SqliteStore;
    use std::sync::Mutex;

    struct Scripted {
        results: Mutex<Vec<Result<Vec<Offer>, Error>>>,
    }

    #[async_trait::async_trait]
    impl PriceCollector for Scripted {
        fn source(&self) -> &str {
            "scripted"
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(60)
        }
        async fn collect(&self) -> Result<Vec<Offer>, Error> {
            self.results.lock().unwrap().remove(0)
        }
    }

    fn offer(spot: f64) -> Offer {
        Offer {
            cloud: Cloud::Aws,
            region: "us-east-1".into(),
            zone: "use1-az1".into(),
            instance_type: "m5.large".into(),
            vcpus: 2.0,
            memory_gib: 8.0,
            architecture: Architecture::X86_64,
            gpu: None,
            on_demand_price: Some(0.096),
            spot_price: spot,
            interruption_rate: InterruptionRate::Unknown,
            interruption_source: String::new(),
            observed_at: 1,
            source: "scripted".into(),
        }
    }

    #[tokio::test]
    async fn successes_update_the_catalog_and_failures_keep_the_last_prices() {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
        let book = Arc::new(PriceBook::default());
        let collector = Arc::new(Scripted {
            results: Mutex::new(vec![
                Ok(vec![offer(0.03)]),
                Err(Error::Collect {
                    source_name: "scripted".into(),
                    message: "throttled".into(),
                    retryable: true,
                }),
                Ok(vec![offer(0.04)]),
            ]),
        });
        let mut worker = CollectorWorker::new(collector, store.clone(), book.clone(), None);

        worker.tick().await.unwrap();
        assert_eq!(book.catalog().offer(0).spot_price, 0.03);

        let err = worker.tick().await.unwrap_err();
        assert!(err.is_retryable(), "the collector said retryable");
        assert_eq!(
            book.catalog().offer(0).spot_price,
            0.03,
            "last good prices stay"
        );
        let status = &store.collector_statuses().await.unwrap()[0];
        assert_eq!(
            status.last_error.as_deref(),
            Some("price source `scripted` failed: throttled")
        );

        worker.tick().await.unwrap();
        assert_eq!(book.catalog().offer(0).spot_price, 0.04);
        let status = &store.collector_statuses().await.unwrap()[0];
        assert_eq!(status.last_error, None);
        assert_eq!(status.offers, 1);
    }

    #[test]
    fn fingerprint_ignores_order_but_not_content() {
        let a = vec![offer(0.01), offer(0.02)];
        let b = vec![offer(0.02), offer(0.01)];
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert_ne!(fingerprint(&a), fingerprint(&[offer(0.01), offer(0.03)]));
    }
}
