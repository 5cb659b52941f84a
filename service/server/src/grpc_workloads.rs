//! The `Workloads` and `Admin` gRPC handlers: validation, wire ↔ core conversion, and
//! calls into the orchestrator. The tenant always comes from the auth interceptor.

use crate::auth::TenantId;
use crate::grpc::{invalid, requirements_from_pb};
use crate::routing::PublicAddress;
use crate::workloads::{OperationError, Orchestrator};
use computearbitrage_api::pb::admin_server::Admin;
use computearbitrage_api::pb::workloads_server::Workloads;
use computearbitrage_api::{pb, validate};
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_core::{HealthCheck, OnInterruption, StorageSpec, WorkloadSpec};
use computearbitrage_store::{RunRecord, TenantSettings, WorkloadRecord};
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub struct WorkloadsApi {
    pub orchestrator: Arc<Orchestrator>,
    /// Where users reach workloads: builds `endpoint` and `tcp_endpoint`.
    pub public: PublicAddress,
}

pub struct AdminApi {
    pub orchestrator: Arc<Orchestrator>,
}

pub const DEFAULT_CREATE_TIMEOUT_SECONDS: u32 = 600;

fn tenant<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<TenantId>()
        .map(|t| t.0.clone())
        .ok_or_else(|| Status::unauthenticated("no tenant on this request"))
}

/// A store failure: UNAVAILABLE when a retry may help, INTERNAL otherwise.
fn store_status(error: computearbitrage_store::StoreError) -> Status {
    status_of(OperationError::from(error))
}

fn status_of(error: OperationError) -> Status {
    match error {
        OperationError::NotFound(m) => Status::not_found(m),
        OperationError::AlreadyExists(m) => Status::already_exists(m),
        OperationError::FailedPrecondition(m) => Status::failed_precondition(m),
        OperationError::InvalidField { field, message } => {
            invalid(vec![validate::Violation::field(field, message)])
        }
        OperationError::Exhausted(m) => Status::resource_exhausted(m),
        OperationError::Service(e) if e.is_retryable() => Status::unavailable(e.to_string()),
        OperationError::Service(e) => Status::internal(e.to_string()),
    }
}

pub fn health_check_from_pb(check: Option<&pb::HealthCheck>) -> HealthCheck {
    let defaults = HealthCheck::default();
    let Some(c) = check else { return defaults };
    HealthCheck {
        path: if c.path.is_empty() {
            defaults.path
        } else {
            c.path.clone()
        },
        interval: if c.interval_seconds == 0 {
            defaults.interval
        } else {
            Duration::from_secs(c.interval_seconds.into())
        },
        timeout: if c.timeout_seconds == 0 {
            defaults.timeout
        } else {
            Duration::from_secs(c.timeout_seconds.into())
        },
        unhealthy_threshold: if c.unhealthy_threshold == 0 {
            defaults.unhealthy_threshold
        } else {
            c.unhealthy_threshold
        },
    }
}

fn on_interruption(text: &str) -> OnInterruption {
    OnInterruption::parse(text).unwrap_or(OnInterruption::Migrate)
}

pub fn spec_from_pb(spec: &pb::WorkloadSpec) -> WorkloadSpec {
    let storage = spec.storage.clone().unwrap_or_default();
    WorkloadSpec {
        name: spec.name.clone(),
        requirements: requirements_from_pb(
            spec.requirements.as_ref().unwrap_or(&Default::default()),
        ),
        command: spec.command.clone(),
        image: Some(spec.image.clone()).filter(|i| !i.is_empty()),
        env: spec.env.clone().into_iter().collect(),
        port: spec.port as u16,
        health_check: health_check_from_pb(spec.health_check.as_ref()),
        on_interruption: on_interruption(&spec.on_interruption),
        storage: StorageSpec {
            enabled: storage.enabled,
            quota_gb: storage.quota_gb,
            retention_days: storage.retention_days,
        },
        tags: spec.tags.clone().into_iter().collect(),
        create_timeout: Duration::from_secs(u64::from(if spec.create_timeout_seconds == 0 {
            DEFAULT_CREATE_TIMEOUT_SECONDS
        } else {
            spec.create_timeout_seconds
        })),
        // Validation has checked both are ports.
        tcp_port: spec.tcp_port.map(|p| p as u16),
        tcp_listen_port: spec.tcp_listen_port.map(|p| p as u16),
    }
}

fn requirements_to_pb(r: &computearbitrage_core::Requirements) -> pb::Requirements {
    let f = &r.filter;
    pb::Requirements {
        min_vcpus: f.min_vcpus,
        min_memory_gib: f.min_memory_gib,
        gpu_name: f.gpu_name.clone().unwrap_or_default(),
        min_gpus: f.min_gpus.map(i64::from),
        architecture: f.architecture.map(|a| a.to_string()).unwrap_or_default(),
        providers: f.clouds.iter().map(|c| c.to_string()).collect(),
        regions: f.regions.clone(),
        exclude_regions: f.exclude_regions.clone(),
        preferred_regions: r.preferred_regions.clone(),
        max_interruption_rate: f.max_interruption_rate,
        allow_unknown_interruption_rate: Some(f.allow_unknown_interruption_rate),
        max_price_per_hour: f.max_spot_price,
    }
}

impl WorkloadsApi {
    fn to_pb(&self, w: &WorkloadRecord) -> pb::Workload {
        workload_to_pb(w, &self.public, &self.orchestrator.settings.access_tokens)
    }
}

/// The wire form of a workload, as its owner sees it: with its router endpoints and
/// access token.
pub fn workload_to_pb(
    w: &WorkloadRecord,
    public: &PublicAddress,
    tokens: &crate::auth::AccessTokenKey,
) -> pb::Workload {
    let s = &w.spec;
    let placement = w.placement.clone();
    pb::Workload {
        id: w.id.clone(),
        spec: Some(pb::WorkloadSpec {
            name: s.name.clone(),
            requirements: Some(requirements_to_pb(&s.requirements)),
            command: s.command.clone(),
            image: s.image.clone().unwrap_or_default(),
            env: s.env.clone().into_iter().collect(),
            port: u32::from(s.port),
            health_check: Some(pb::HealthCheck {
                path: s.health_check.path.clone(),
                interval_seconds: s.health_check.interval.as_secs() as u32,
                timeout_seconds: s.health_check.timeout.as_secs() as u32,
                unhealthy_threshold: s.health_check.unhealthy_threshold,
            }),
            on_interruption: s.on_interruption.as_str().into(),
            storage: Some(pb::StorageSpec {
                enabled: s.storage.enabled,
                quota_gb: s.storage.quota_gb,
                retention_days: s.storage.retention_days,
            }),
            tags: s.tags.clone().into_iter().collect(),
            create_timeout_seconds: s.create_timeout.as_secs() as u32,
            tcp_port: s.tcp_port.map(u32::from),
            tcp_listen_port: s.tcp_listen_port.map(u32::from),
        }),
        status: w.status.to_string(),
        status_reason: w.status_reason.clone(),
        failed_step: w.failed_step.clone().unwrap_or_default(),
        provider: placement
            .as_ref()
            .map(|p| p.provider.clone())
            .unwrap_or_default(),
        region: placement
            .as_ref()
            .map(|p| p.region.clone())
            .unwrap_or_default(),
        zone: placement
            .as_ref()
            .map(|p| p.zone.clone())
            .unwrap_or_default(),
        instance_type: placement
            .as_ref()
            .map(|p| p.instance_type.clone())
            .unwrap_or_default(),
        instance_id: w.instance_id.clone().unwrap_or_default(),
        endpoint: public.endpoint(&w.id),
        backend_endpoint: w.endpoint.clone().unwrap_or_default(),
        access_token: if w.access_token_hash.is_some() {
            tokens.token_for(&w.id)
        } else {
            String::new()
        },
        tcp_listen_port: w.tcp_listen_port.map(u32::from),
        tcp_endpoint: w
            .tcp_listen_port
            .map(|p| public.tcp_endpoint(p))
            .unwrap_or_default(),
        price_per_hour: placement.as_ref().map(|p| p.price_per_hour),
        on_demand_price_per_hour: placement.as_ref().and_then(|p| p.on_demand_price_per_hour),
        created_at: rfc3339(w.created_at / 1000),
        updated_at: rfc3339(w.updated_at / 1000),
    }
}

async fn runs_to_pb(
    orch: &Orchestrator,
    runs: &[RunRecord],
) -> Result<pb::ListRunsResponse, Status> {
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        out.push(run_to_pb(orch, run).await?);
    }
    Ok(pb::ListRunsResponse { runs: out })
}

async fn run_to_pb(orch: &Orchestrator, run: &RunRecord) -> Result<pb::Run, Status> {
    let steps = orch.store().steps(&run.id).await.map_err(store_status)?;
    Ok(pb::Run {
        id: run.id.clone(),
        workload_id: run.workload_id.clone(),
        kind: run.kind.as_str().into(),
        status: run.status.as_str().into(),
        reason: run.reason.clone(),
        error: run.error.clone().unwrap_or_default(),
        failed_step: run.failed_step.clone().unwrap_or_default(),
        replays: run.replays,
        steps: steps
            .into_iter()
            .map(|s| pb::Step {
                name: s.step,
                attempts: s.attempts,
                completed: s.completed,
                output: s.output.unwrap_or_default(),
                last_error: s.last_error.unwrap_or_default(),
                started_at: rfc3339(s.started_at / 1000),
                finished_at: s.finished_at.map(|t| rfc3339(t / 1000)).unwrap_or_default(),
            })
            .collect(),
        created_at: rfc3339(run.created_at / 1000),
        updated_at: rfc3339(run.updated_at / 1000),
    })
}

#[tonic::async_trait]
impl Workloads for WorkloadsApi {
    async fn apply_workload(
        &self,
        request: Request<pb::ApplyWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        let tenant = tenant(&request)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is missing"))?;
        let violations = validate::workload_spec(&spec);
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let record = self
            .orchestrator
            .apply(&tenant, spec_from_pb(&spec))
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_pb(&record)))
    }

    async fn get_workload(
        &self,
        request: Request<pb::GetWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        let tenant = tenant(&request)?;
        let id = request.into_inner().id;
        let record = self
            .orchestrator
            .get(&tenant, &id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_pb(&record)))
    }

    async fn update_workload(
        &self,
        request: Request<pb::UpdateWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let mut violations = Vec::new();
        if let Some(check) = &req.health_check {
            violations.extend(
                validate::health_check(check)
                    .into_iter()
                    .map(|v| v.within("health_check")),
            );
        }
        if !["", "migrate", "terminate"].contains(&req.on_interruption.as_str()) {
            return Err(Status::invalid_argument(format!(
                "on_interruption: {:?} is not a choice; use \"migrate\" or \"terminate\"",
                req.on_interruption
            )));
        }
        if !violations.is_empty() {
            return Err(invalid(violations));
        }
        let record = self
            .orchestrator
            .update(&tenant, &req.id, |spec| {
                spec.tags = req.tags.clone().into_iter().collect();
                spec.env = req.env.clone().into_iter().collect();
                spec.health_check = health_check_from_pb(req.health_check.as_ref());
                spec.on_interruption = on_interruption(&req.on_interruption);
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_pb(&record)))
    }

    async fn delete_workload(
        &self,
        request: Request<pb::DeleteWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        let tenant = tenant(&request)?;
        let req = request.into_inner();
        let reason = if req.reason.is_empty() {
            "deleted on request".to_string()
        } else {
            req.reason
        };
        let record = self
            .orchestrator
            .delete(&tenant, &req.id, &reason)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_pb(&record)))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let tenant = tenant(&request)?;
        let workload_id = request.into_inner().workload_id;
        self.orchestrator
            .get(&tenant, &workload_id)
            .await
            .map_err(status_of)?;
        let runs = self
            .orchestrator
            .store()
            .runs_of(&tenant, &workload_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(runs_to_pb(&self.orchestrator, &runs).await?))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let tenant = tenant(&request)?;
        let runs = self
            .orchestrator
            .store()
            .dead_runs(&tenant)
            .await
            .map_err(store_status)?;
        Ok(Response::new(runs_to_pb(&self.orchestrator, &runs).await?))
    }

    async fn replay_dead_letter(
        &self,
        request: Request<pb::ReplayDeadLetterRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let tenant = tenant(&request)?;
        let run_id = request.into_inner().run_id;
        let run = self
            .orchestrator
            .replay(&tenant, &run_id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(run_to_pb(&self.orchestrator, &run).await?))
    }

    async fn get_billing(
        &self,
        request: Request<pb::GetBillingRequest>,
    ) -> Result<Response<pb::GetBillingResponse>, Status> {
        let tenant = tenant(&request)?;
        let workload_id = request.into_inner().workload_id;
        self.orchestrator
            .get(&tenant, &workload_id)
            .await
            .map_err(status_of)?;
        let records = self
            .orchestrator
            .store()
            .billing(&tenant, &workload_id)
            .await
            .map_err(store_status)?;
        let total_cost = records.iter().map(|r| r.cost).sum();
        Ok(Response::new(pb::GetBillingResponse {
            records: records
                .into_iter()
                .map(|r| pb::BillingRecord {
                    instance_id: r.instance_id,
                    provider: r.provider,
                    region: r.region,
                    instance_type: r.instance_type,
                    price_per_hour: r.price_per_hour,
                    started_at: rfc3339(r.started_at / 1000),
                    ended_at: rfc3339(r.ended_at / 1000),
                    duration_seconds: (r.ended_at - r.started_at) as f64 / 1000.0,
                    cost: r.cost,
                })
                .collect(),
            total_cost,
        }))
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let tenant = tenant(&request)?;
        let workload_id = request.into_inner().workload_id;
        let list = self
            .orchestrator
            .store()
            .notifications(&tenant, &workload_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: list
                .into_iter()
                .map(|n| pb::Notification {
                    id: n.id,
                    kind: n.kind,
                    payload: n.payload,
                    status: n.status.as_str().into(),
                    attempts: n.attempts,
                    last_error: n.last_error.unwrap_or_default(),
                    created_at: rfc3339(n.created_at / 1000),
                    delivered_at: n
                        .delivered_at
                        .map(|t| rfc3339(t / 1000))
                        .unwrap_or_default(),
                })
                .collect(),
        }))
    }
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
                return Err(Status::invalid_argument(format!(
                    "url: {:?} is not an http(s) URL",
                    req.url
                )));
            }
            if req.secret.len() < 16 {
                return Err(Status::invalid_argument(
                    "secret: at least 16 characters are needed to sign notifications; use a random secret",
                ));
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
            return Err(Status::permission_denied(format!(
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
