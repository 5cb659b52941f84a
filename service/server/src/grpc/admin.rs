//! The `Admin` handlers: tenant settings and operator actions.

use super::{status_of, store_status, tenant};
use crate::workloads::Orchestrator;
use computearbitrage_api::pb::admin_server::Admin;
use computearbitrage_api::{pb, Reason};
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_store::TenantSettings;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    pub orchestrator: Arc<Orchestrator>,
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn set_webhook(
        &self,
        request: Request<pb::SetWebhookRequest>,
    ) -> Result<Response<pb::SetWebhookResponse>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let store = self.orchestrator.store();
        let mut settings = store.tenant_settings(&tenant).await.map_err(store_status)?;
        if req.url.is_empty() {
            settings.webhook_url = None;
            settings.webhook_secret = None;
        } else {
            if !(req.url.starts_with("http://") || req.url.starts_with("https://"))
                || reqwest::Url::parse(&req.url).is_err()
            {
                return Err(super::invalid(vec![computearbitrage_api::validate::Violation::field(
                    "url",
                    format!("{:?} is not an http(s) URL", req.url),
                )]));
            }
            if req.secret.len() < 16 {
                return Err(super::invalid(vec![computearbitrage_api::validate::Violation::field(
                    "secret",
                    "at least 16 characters are needed to sign notifications; use a random secret",
                )]));
            }
            settings = TenantSettings {
                tenant_id: tenant.clone(),
                webhook_url: Some(req.url),
                webhook_secret: Some(req.secret),
                ..settings
            };
        }
        store
            .set_tenant_settings(settings)
            .await
            .map_err(store_status)?;
        tracing::info!(tenant, "webhook updated");
        Ok(Response::new(pb::SetWebhookResponse {}))
    }

    type WatchRoutesStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::RouteChanged, Status>> + Send + 'static>,
    >;

    async fn watch_routes(
        &self,
        request: Request<pb::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let tenant = tenant(&request)?;
        if tenant != crate::auth::DEFAULT_TENANT {
            return Err(Reason::PermissionDenied.status(false, format!(
                "the route feed spans every tenant; use a token of the operator tenant \"{}\" (the service's admin token)",
                crate::auth::DEFAULT_TENANT
            )));
        }
        let mut changes = self.orchestrator.store().workload_changes();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let message = match changes.recv().await {
                    Ok(change) => pb::RouteChanged {
                        workload_id: change.workload_id,
                        resync: false,
                    },
                    Err(RecvError::Lagged(_)) => pb::RouteChanged {
                        workload_id: String::new(),
                        resync: true,
                    },
                    Err(RecvError::Closed) => return,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return; // the router went away
                }
            }
        });
        tracing::info!("a router subscribed to route changes");
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn inject_interruption(
        &self,
        request: Request<pb::InjectInterruptionRequest>,
    ) -> Result<Response<pb::InjectInterruptionResponse>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let delay = (req.delay_ms > 0).then(|| Duration::from_millis(req.delay_ms.into()));
        let (instance_id, deadline) = self
            .orchestrator
            .inject_interruption(&tenant, &req.workload_id, delay)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::InjectInterruptionResponse {
            instance_id,
            deadline: rfc3339(deadline),
        }))
    }
}
