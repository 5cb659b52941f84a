//! The `Admin` handlers: tenant settings, operator actions, tenants, tokens and the
//! audit log. Every write is audited with the token that made it.

use super::{audit, caller, invalid, status_of, store_status};
use crate::auth::{self, Authenticator, Caller, DEFAULT_TENANT};
use computearbitrage_api::pb::admin_server::Admin;
use computearbitrage_api::validate::Violation;
use computearbitrage_api::{pb, validate, Reason};
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_orchestrator::workloads::Orchestrator;
use computearbitrage_store::{ChangeKind, Scope, Scopes, TenantSettings, TokenRecord};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    pub orchestrator: Arc<Orchestrator>,
    /// Reloaded when a token is created or revoked, so the change takes effect at once.
    pub authenticator: Arc<Authenticator>,
    /// Whether webhooks may target loopback, private and link-local addresses.
    pub allow_private_webhooks: bool,
}

fn unix_now() -> i64 {
    computearbitrage_orchestrator::workloads::now_ms() / 1000
}

fn token_info(t: &TokenRecord) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        tenant: t.tenant_id.clone(),
        scopes: t.scopes.to_string(),
        label: t.label.clone(),
        created_at: rfc3339(t.created_at),
        expires_at: t.expires_at.map(rfc3339).unwrap_or_default(),
        revoked_at: t.revoked_at.map(rfc3339).unwrap_or_default(),
    }
}

/// Which tenant a listing is about: the caller's by default; another or `*` (all,
/// returned as `None`) needs admin.
fn listed_tenant(caller: &Caller, asked: &str, call: &str) -> Result<Option<String>, Status> {
    match asked {
        "" => Ok(Some(caller.tenant.clone())),
        t if t == caller.tenant => Ok(Some(caller.tenant.clone())),
        other => {
            caller.require(Scope::Admin, call)?;
            Ok((other != "*").then(|| other.to_string()))
        }
    }
}

impl AdminApi {
    async fn tenant_info(&self, id: &str, created_at: i64) -> Result<pb::TenantInfo, Status> {
        let settings = self
            .orchestrator
            .store()
            .tenant_settings(id)
            .await
            .map_err(store_status)?;
        Ok(pb::TenantInfo {
            id: id.to_string(),
            created_at: rfc3339(created_at),
            max_concurrent_workloads: settings.max_concurrent_workloads,
        })
    }

    async fn reload_tokens(&self) -> Result<(), Status> {
        self.authenticator
            .reload(self.orchestrator.store().as_ref())
            .await
            .map_err(|e| super::service_status(&e))
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn set_webhook(
        &self,
        request: Request<pb::SetWebhookRequest>,
    ) -> Result<Response<pb::SetWebhookResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            caller.require(Scope::Write, "SetWebhook")?;
            let store = self.orchestrator.store();
            let mut settings = store
                .tenant_settings(&caller.tenant)
                .await
                .map_err(store_status)?;
            if req.url.is_empty() {
                settings.webhook_url = None;
                settings.webhook_secret = None;
            } else {
                computearbitrage_orchestrator::workloads::notify::check_webhook_url(&req.url, self.allow_private_webhooks)
                    .map_err(|message| invalid(vec![Violation::field("url", message)]))?;
                if req.secret.len() < 16 {
                    return Err(invalid(vec![Violation::field(
                        "secret",
                        "at least 16 characters are needed to sign notifications; use a random secret",
                    )]));
                }
                settings = TenantSettings {
                    tenant_id: caller.tenant.clone(),
                    webhook_url: Some(req.url.clone()),
                    webhook_secret: Some(req.secret.clone()),
                    ..settings
                };
            }
            store.set_tenant_settings(settings).await.map_err(store_status)
        }
        .await;
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "SetWebhook",
            &caller.tenant,
            &result,
        )
        .await;
        result?;
        Ok(Response::new(pb::SetWebhookResponse {}))
    }

    type WatchRoutesStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::RouteChanged, Status>> + Send + 'static>,
    >;

    async fn watch_routes(
        &self,
        request: Request<pb::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let caller = caller(&request)?;
        caller.require(
            Scope::Admin,
            "WatchRoutes (the route feed spans every tenant)",
        )?;
        let mut changes = self.orchestrator.store().workload_changes();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                let message = match changes.recv().await {
                    Ok(change) if change.kind == ChangeKind::Workload => pb::RouteChanged {
                        workload_id: change.workload_id,
                        resync: false,
                    },
                    // A token changed: the router re-reads its credentials with the rest.
                    Ok(_) | Err(RecvError::Lagged(_)) => pb::RouteChanged {
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
        tracing::info!(token_id = %caller.token_id, "a router subscribed to route changes");
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn inject_interruption(
        &self,
        request: Request<pb::InjectInterruptionRequest>,
    ) -> Result<Response<pb::InjectInterruptionResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            caller.require(Scope::Write, "InjectInterruption")?;
            let delay = (req.delay_ms > 0).then(|| Duration::from_millis(req.delay_ms.into()));
            self.orchestrator
                .inject_interruption(&caller.tenant, &req.workload_id, delay)
                .await
                .map_err(status_of)
        }
        .await;
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "InjectInterruption",
            &req.workload_id,
            &result,
        )
        .await;
        let (instance_id, deadline) = result?;
        Ok(Response::new(pb::InjectInterruptionResponse {
            instance_id,
            deadline: rfc3339(deadline),
        }))
    }

    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::TenantInfo>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            caller.require(Scope::Admin, "CreateTenant")?;
            let violations = validate::tenant(&req);
            if !violations.is_empty() {
                return Err(invalid(violations));
            }
            let store = self.orchestrator.store();
            let tenant = store
                .ensure_tenant(&req.id, unix_now())
                .await
                .map_err(store_status)?;
            let mut settings = store.tenant_settings(&req.id).await.map_err(store_status)?;
            settings.max_concurrent_workloads = req.max_concurrent_workloads;
            store
                .set_tenant_settings(settings)
                .await
                .map_err(store_status)?;
            self.tenant_info(&tenant.id, tenant.created_at).await
        }
        .await;
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "CreateTenant",
            &req.id,
            &result,
        )
        .await;
        Ok(Response::new(result?))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::Admin, "ListTenants")?;
        let mut tenants = Vec::new();
        for t in self
            .orchestrator
            .store()
            .tenants()
            .await
            .map_err(store_status)?
        {
            tenants.push(self.tenant_info(&t.id, t.created_at).await?);
        }
        Ok(Response::new(pb::ListTenantsResponse { tenants }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            caller.require(Scope::Admin, "CreateToken")?;
            let scopes = Scopes::parse(&req.scopes)
                .map_err(|message| invalid(vec![Violation::field("scopes", message)]))?;
            if scopes.contains(Scope::Admin) && req.tenant != DEFAULT_TENANT {
                return Err(invalid(vec![Violation::field(
                    "scopes",
                    format!(
                        "only tokens of the operator tenant {DEFAULT_TENANT:?} may hold `admin`; give tenant {:?} read, write or route",
                        req.tenant
                    ),
                )]));
            }
            let store = self.orchestrator.store();
            let exists = store
                .tenants()
                .await
                .map_err(store_status)?
                .iter()
                .any(|t| t.id == req.tenant);
            if !exists {
                return Err(Reason::NotFound.status(
                    false,
                    format!("no tenant {:?}; create it first (`computearbitrage tenant create`)", req.tenant),
                ));
            }
            let token = auth::new_token();
            let now = unix_now();
            let record = TokenRecord {
                id: auth::new_token_id(),
                token_hash: auth::hash_token(&token),
                tenant_id: req.tenant.clone(),
                label: req.label.clone(),
                scopes,
                created_at: now,
                expires_at: (req.expires_in_seconds > 0)
                    .then(|| now.saturating_add(i64::try_from(req.expires_in_seconds).unwrap_or(i64::MAX))),
                revoked_at: None,
            };
            store.add_token(record.clone()).await.map_err(store_status)?;
            self.reload_tokens().await?;
            Ok(pb::CreateTokenResponse {
                info: Some(token_info(&record)),
                token,
            })
        }
        .await;
        let target = result
            .as_ref()
            .ok()
            .and_then(|r| r.info.as_ref().map(|i| i.id.clone()))
            .unwrap_or_else(|| req.tenant.clone());
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "CreateToken",
            &target,
            &result,
        )
        .await;
        Ok(Response::new(result?))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::Admin, "ListTokens")?;
        let tenant = listed_tenant(&caller, &request.get_ref().tenant, "ListTokens")?;
        let tokens = self
            .orchestrator
            .store()
            .list_tokens()
            .await
            .map_err(store_status)?
            .iter()
            .filter(|t| tenant.as_deref().is_none_or(|want| t.tenant_id == want))
            .map(token_info)
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let caller = caller(&request)?;
        let id = request.into_inner().id;
        let result = async {
            caller.require(Scope::Admin, "RevokeToken")?;
            let revoked = self
                .orchestrator
                .store()
                .revoke_token(&id, unix_now())
                .await
                .map_err(store_status)?
                .ok_or_else(|| {
                    Reason::NotFound.status(
                        false,
                        format!("no token {id:?}; list them with `computearbitrage token list`"),
                    )
                })?;
            self.reload_tokens().await?;
            Ok(token_info(&revoked))
        }
        .await;
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "RevokeToken",
            &id,
            &result,
        )
        .await;
        Ok(Response::new(result?))
    }

    async fn list_audit(
        &self,
        request: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::Read, "ListAudit")?;
        let req = request.into_inner();
        let tenant = listed_tenant(&caller, &req.tenant, "ListAudit")?;
        let limit = match req.limit {
            0 => 100,
            n => n.min(1000),
        };
        let entries = self
            .orchestrator
            .store()
            .audit_log(tenant.as_deref(), limit)
            .await
            .map_err(store_status)?
            .into_iter()
            .map(|r| pb::AuditEntry {
                tenant: r.tenant_id,
                token_id: r.token_id,
                action: r.action,
                target: r.target,
                outcome: r.outcome,
                at: rfc3339(r.at / 1000),
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }
}
