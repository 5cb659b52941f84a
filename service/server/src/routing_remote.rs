//! The route feed of a separate router process: a `WatchRoutes` stream from the
//! service, re-read from the shared store on each change. On connect and on every
//! reconnect or `resync`, the whole table is reloaded, so nothing missed while
//! disconnected stays stale.

use crate::error::ServiceError;
use computearbitrage_api::connect::{self, Target};
use computearbitrage_api::pb;
use computearbitrage_api::pb::admin_client::AdminClient;
use computearbitrage_orchestrator::worker::Worker;
use computearbitrage_router::RouteTable;
use computearbitrage_store::Store;
use std::sync::Arc;
use std::time::Duration;

type Stream = tonic::Streaming<pb::RouteChanged>;

pub struct RemoteFollower {
    table: Arc<RouteTable>,
    store: Arc<dyn Store>,
    target: Target,
    token: String,
    stream: Option<Stream>,
    /// Pause before the next connect attempt after a failure.
    backoff: Duration,
}

impl RemoteFollower {
    pub fn new(
        table: Arc<RouteTable>,
        store: Arc<dyn Store>,
        target: Target,
        token: String,
    ) -> RemoteFollower {
        RemoteFollower {
            table,
            store,
            target,
            token,
            stream: None,
            backoff: Duration::ZERO,
        }
    }

    async fn connect(target: Target, token: String) -> Result<Stream, ServiceError> {
        let endpoint = target.url.clone();
        let channel = connect::endpoint(&target)
            .map_err(|e| ServiceError::config(format!("router feed endpoint: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| {
                ServiceError::io(
                    format!("cannot reach the service at {endpoint} for route changes"),
                    std::io::Error::other(e),
                )
            })?;
        let authorization: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| ServiceError::config("the router's token cannot be sent in a header"))?;
        let mut client =
            AdminClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("authorization", authorization.clone());
                Ok(request)
            });
        let stream = client
            .watch_routes(pb::WatchRoutesRequest {})
            .await
            .map_err(|status| {
                ServiceError::io(
                    format!("the service refused the route feed: {}", status.message()),
                    std::io::Error::other(status.code().description()),
                )
            })?
            .into_inner();
        Ok(stream)
    }
}

#[async_trait::async_trait]
impl Worker for RemoteFollower {
    type Error = ServiceError;
    fn name(&self) -> String {
        "router:follow-remote".into()
    }

    fn interval(&self) -> Duration {
        self.backoff
    }

    async fn tick(&mut self) -> Result<(), ServiceError> {
        let Some(stream) = self.stream.as_mut() else {
            match Self::connect(self.target.clone(), self.token.clone()).await {
                Ok(stream) => {
                    self.stream = Some(stream);
                    self.backoff = Duration::ZERO;
                    // Changes made while disconnected were not seen: start over.
                    let routes = self.table.reload(self.store.as_ref()).await?;
                    tracing::info!(endpoint = %self.target.url, routes, "following the service's route changes");
                    return Ok(());
                }
                Err(e) => {
                    self.backoff = (self.backoff * 2)
                        .clamp(Duration::from_millis(250), Duration::from_secs(5));
                    return Err(e);
                }
            }
        };
        // Bounded, so a shutdown is seen within this wait.
        match tokio::time::timeout(Duration::from_millis(250), stream.message()).await {
            Err(_) => Ok(()),
            Ok(Ok(Some(change))) => {
                if change.resync {
                    self.table.reload(self.store.as_ref()).await?;
                } else {
                    self.table
                        .refresh(self.store.as_ref(), &change.workload_id)
                        .await?;
                }
                Ok(())
            }
            Ok(Ok(None)) | Ok(Err(_)) => {
                tracing::warn!(endpoint = %self.target.url, "route feed closed; reconnecting");
                self.stream = None;
                self.backoff = Duration::from_millis(250);
                Ok(())
            }
        }
    }
}
