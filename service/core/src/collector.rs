//! The trait every price source implements: the bundled snapshot now, the live AWS,
//! GCP and Azure collectors later. A collector only fetches and normalises; storing,
//! scheduling and status bookkeeping belong to the service, so a collector never sees
//! the store.

use crate::error::Error;
use crate::offer::Offer;
use std::time::Duration;

#[async_trait::async_trait]
pub trait PriceCollector: Send + Sync {
    /// Stable name recorded as each offer's `source` and in collector status.
    fn source(&self) -> &str;

    /// How often the service should run this collector.
    fn interval(&self) -> Duration;

    /// Fetches the source's complete current set of offers. The service replaces all
    /// offers of this source with the result, so a partial result must be an error.
    async fn collect(&self) -> Result<Vec<Offer>, Error>;
}
