//! The `Workloads` handlers: validation, wire ↔ core conversion, and calls into the
//! orchestrator.

use super::wire::{self, workload_to_pb};
use super::{audit, caller, callers_workload, invalid, status_of, store_status};
use crate::routing::PublicAddress;
use computearbitrage_api::pb::workloads_server::Workloads;
use computearbitrage_api::{pb, validate};
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_orchestrator::workloads::{Orchestrator, WorkloadUpdate};
use computearbitrage_store::{RunRecord, Scope, WorkloadRecord};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct WorkloadsApi {
    pub orchestrator: Arc<Orchestrator>,
    /// Where users reach workloads: builds `endpoint` and `tcp_endpoint`.
    pub public: PublicAddress,
    /// Workload storage namespaces.
    pub storage: Arc<computearbitrage_storage::Storage>,
}

impl WorkloadsApi {
    /// The wire form with what its finished instances cost. The running instance's
    /// cost so far is left to `GetBilling`: a value that grew on every read would make
    /// every Terraform plan that outputs the resource show a change.
    async fn to_pb(&self, w: &WorkloadRecord) -> Result<pb::Workload, Status> {
        let mut out = workload_to_pb(w, &self.public, self.orchestrator.access_tokens());
        let (closed, _) = self
            .orchestrator
            .billing_to_date(w)
            .await
            .map_err(|e| status_of(e.into()))?;
        out.cost_to_date = Some(closed.iter().map(|b| b.cost).sum());
        out.env_applied = self
            .orchestrator
            .env_applied(w)
            .await
            .map_err(|e| status_of(e.into()))?;
        Ok(out)
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
        let caller = caller(&request)?;
        let spec = request.into_inner().spec;
        let name = spec.as_ref().map(|s| s.name.clone()).unwrap_or_default();
        let result = async {
            caller.require(Scope::Write, "ApplyWorkload")?;
            let spec = spec.ok_or_else(|| {
                invalid(vec![validate::Violation::field(
                    "spec",
                    "the spec is missing; send the workload's spec",
                )])
            })?;
            let violations = validate::workload_spec(&spec);
            if !violations.is_empty() {
                return Err(invalid(violations));
            }
            self.orchestrator
                .apply(&caller.tenant, wire::spec_from_pb(&spec))
                .await
                .map_err(status_of)
        }
        .await;
        let target = result.as_ref().map(|w| w.id.clone()).unwrap_or(name);
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "ApplyWorkload",
            &target,
            &result,
        )
        .await;
        Ok(Response::new(self.to_pb(&result?).await?))
    }

    async fn get_workload(
        &self,
        request: Request<pb::GetWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::Read, "GetWorkload")?;
        let id = request.into_inner().id;
        let record = self
            .orchestrator
            .get(&caller.tenant, &id)
            .await
            .map_err(status_of)?;
        Ok(Response::new(self.to_pb(&record).await?))
    }

    async fn update_workload(
        &self,
        request: Request<pb::UpdateWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            caller.require(Scope::Write, "UpdateWorkload")?;
            let violations = validate::update_workload(&req);
            if !violations.is_empty() {
                return Err(invalid(violations));
            }
            let update = WorkloadUpdate {
                tags: req.tags.clone().into_iter().collect(),
                env: req.env.clone().into_iter().collect(),
                health_check: wire::health_check_from_pb(req.health_check.as_ref()),
                health_check_written: req.health_check.is_some(),
                on_interruption: wire::on_interruption(&req.on_interruption),
                on_unhealthy: wire::on_unhealthy(&req.on_unhealthy),
                replace_unhealthy_after: wire::replace_unhealthy_after(
                    req.replace_unhealthy_after_seconds,
                ),
                fallback: wire::fallback(&req.fallback),
                rebalance: wire::rebalance_from_pb(req.rebalance.as_ref()),
                storage: req.storage.as_ref().map(|s| wire::storage_from_pb(Some(s))),
                tcp_allowed_cidrs: wire::canonical_cidrs(&req.tcp_allowed_cidrs),
                checkpoint: wire::checkpoint_from_pb(req.checkpoint.as_ref()),
                checkpoint_written: req.checkpoint.is_some(),
            };
            self.orchestrator
                .update(&caller.tenant, &req.id, update)
                .await
                .map_err(status_of)
        }
        .await;
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "UpdateWorkload",
            &req.id,
            &result,
        )
        .await;
        Ok(Response::new(self.to_pb(&result?).await?))
    }

    async fn delete_workload(
        &self,
        request: Request<pb::DeleteWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let result = async {
            caller.require(Scope::Write, "DeleteWorkload")?;
            let reason = if req.reason.is_empty() {
                "deleted on request".to_string()
            } else {
                req.reason.clone()
            };
            self.orchestrator
                .delete(&caller.tenant, &req.id, &reason)
                .await
                .map_err(status_of)
        }
        .await;
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "DeleteWorkload",
            &req.id,
            &result,
        )
        .await;
        Ok(Response::new(self.to_pb(&result?).await?))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let caller = caller(&request)?;
        let workload_id = request.into_inner().workload_id;
        callers_workload(
            &self.orchestrator,
            &caller,
            Scope::Read,
            "ListRuns",
            &workload_id,
        )
        .await?;
        let runs = self
            .orchestrator
            .store()
            .runs_of(&caller.tenant, &workload_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(runs_to_pb(&self.orchestrator, &runs).await?))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::Read, "ListDeadLetters")?;
        let runs = self
            .orchestrator
            .store()
            .dead_runs(&caller.tenant)
            .await
            .map_err(store_status)?;
        Ok(Response::new(runs_to_pb(&self.orchestrator, &runs).await?))
    }

    async fn replay_dead_letter(
        &self,
        request: Request<pb::ReplayDeadLetterRequest>,
    ) -> Result<Response<pb::Run>, Status> {
        let caller = caller(&request)?;
        let run_id = request.into_inner().run_id;
        let result = async {
            caller.require(Scope::Write, "ReplayDeadLetter")?;
            self.orchestrator
                .replay(&caller.tenant, &run_id)
                .await
                .map_err(status_of)
        }
        .await;
        audit(
            self.orchestrator.store().as_ref(),
            &caller,
            "ReplayDeadLetter",
            &run_id,
            &result,
        )
        .await;
        Ok(Response::new(
            run_to_pb(&self.orchestrator, &result?).await?,
        ))
    }

    async fn get_billing(
        &self,
        request: Request<pb::GetBillingRequest>,
    ) -> Result<Response<pb::GetBillingResponse>, Status> {
        let caller = caller(&request)?;
        let workload_id = request.into_inner().workload_id;
        let workload = callers_workload(
            &self.orchestrator,
            &caller,
            Scope::Read,
            "GetBilling",
            &workload_id,
        )
        .await?;
        let (closed, open) = self
            .orchestrator
            .billing_to_date(&workload)
            .await
            .map_err(|e| status_of(e.into()))?;
        let (migrations, downtime_seconds) = self
            .orchestrator
            .migration_downtime(&workload)
            .await
            .map_err(|e| status_of(e.into()))?;
        let segment = |r: computearbitrage_store::BillingRecord, open: bool| pb::BillingRecord {
            instance_id: r.instance_id,
            cloud: r.cloud,
            region: r.region,
            instance_type: r.instance_type,
            price_per_hour: r.price_per_hour,
            started_at: rfc3339(r.started_at / 1000),
            ended_at: rfc3339(r.ended_at / 1000),
            duration_seconds: (r.ended_at - r.started_at) as f64 / 1000.0,
            cost: r.cost,
            open,
        };
        let total_cost = closed.iter().chain(open.iter()).map(|r| r.cost).sum();
        let mut records: Vec<pb::BillingRecord> =
            closed.into_iter().map(|r| segment(r, false)).collect();
        records.extend(open.map(|r| segment(r, true)));
        Ok(Response::new(pb::GetBillingResponse {
            records,
            total_cost,
            migrations,
            downtime_seconds,
        }))
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Result<Response<pb::ListNotificationsResponse>, Status> {
        let caller = caller(&request)?;
        caller.require(Scope::Read, "ListNotifications")?;
        let workload_id = request.into_inner().workload_id;
        let list = self
            .orchestrator
            .store()
            .notifications(&caller.tenant, &workload_id)
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

    async fn get_logs(
        &self,
        request: Request<pb::GetLogsRequest>,
    ) -> Result<Response<pb::GetLogsResponse>, Status> {
        let caller = caller(&request)?;
        let request = request.into_inner();
        let workload = callers_workload(
            &self.orchestrator,
            &caller,
            Scope::Read,
            "GetLogs",
            &request.workload_id,
        )
        .await?;
        let limit = if request.limit == 0 {
            1000
        } else {
            request.limit as usize
        };
        let page = self
            .orchestrator
            .logs(&workload.id, request.after_seq, limit);
        Ok(Response::new(pb::GetLogsResponse {
            lines: page
                .lines
                .into_iter()
                .map(|l| pb::LogLine {
                    seq: l.seq,
                    instance_id: l.instance_id,
                    at: rfc3339(l.at_ms / 1000),
                    text: l.text,
                })
                .collect(),
            next_seq: page.next_seq,
            missed: page.missed,
        }))
    }

    async fn list_objects(
        &self,
        request: Request<pb::ListObjectsRequest>,
    ) -> Result<Response<pb::ListObjectsResponse>, Status> {
        super::storage::list_objects(&self.orchestrator, &self.storage, request)
            .await
            .map(Response::new)
    }

    async fn sign_storage_url(
        &self,
        request: Request<pb::SignStorageUrlRequest>,
    ) -> Result<Response<pb::SignedStorageUrl>, Status> {
        super::storage::sign_storage_url(&self.orchestrator, &self.storage, request)
            .await
            .map(Response::new)
    }

    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        super::tasks::create_task(&self.orchestrator, request)
            .await
            .map(Response::new)
    }

    async fn get_task(
        &self,
        request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        super::tasks::get_task(&self.orchestrator, request)
            .await
            .map(Response::new)
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        super::tasks::list_tasks(&self.orchestrator, request)
            .await
            .map(Response::new)
    }

    async fn list_dead_tasks(
        &self,
        request: Request<pb::ListDeadTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        super::tasks::list_dead_tasks(&self.orchestrator, request)
            .await
            .map(Response::new)
    }

    async fn replay_task(
        &self,
        request: Request<pb::ReplayTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        super::tasks::replay_task(&self.orchestrator, request)
            .await
            .map(Response::new)
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let caller = caller(&request)?;
        let workload_id = request.into_inner().workload_id;
        callers_workload(
            &self.orchestrator,
            &caller,
            Scope::Read,
            "ListConnections",
            &workload_id,
        )
        .await?;
        let list = self
            .orchestrator
            .store()
            .connections(&caller.tenant, &workload_id)
            .await
            .map_err(store_status)?;
        Ok(Response::new(pb::ListConnectionsResponse {
            connections: list
                .into_iter()
                .map(|c| pb::Connection {
                    id: c.id,
                    router_id: c.router_id,
                    client: c.client,
                    backend: c.backend,
                    started_at: rfc3339(c.started_at / 1000),
                    bytes_to_backend: c.bytes_to_backend,
                    bytes_from_backend: c.bytes_from_backend,
                })
                .collect(),
        }))
    }
}
