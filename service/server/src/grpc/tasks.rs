//! `CreateTask`, `GetTask`, `ListTasks`, `ListDeadTasks`, `ReplayTask`: the operator
//! task queue as its tenant sees it. The tenant comes from the caller, so no id
//! reaches another tenant's task.

use super::{audit, caller, status_of};
use computearbitrage_api::pb;
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_orchestrator::workloads::tasks::NewTask;
use computearbitrage_orchestrator::workloads::Orchestrator;
use computearbitrage_store::{Scope, TaskRecord};
use tonic::{Request, Status};

fn task_to_pb(task: TaskRecord) -> pb::Task {
    pb::Task {
        id: task.id,
        workload_id: task.workload_id,
        kind: task.kind,
        command: task.command,
        timeout_seconds: task.timeout_seconds,
        state: task.state.as_str().to_uppercase(),
        attempts: task.attempts,
        max_attempts: task.max_attempts,
        instance_id: task.instance_id.unwrap_or_default(),
        exit_code: task.exit_code,
        output: task.output,
        error: task.error.unwrap_or_default(),
        created_at: rfc3339(task.created_at / 1000),
        updated_at: rfc3339(task.updated_at / 1000),
    }
}

fn list(tasks: Vec<TaskRecord>) -> pb::ListTasksResponse {
    pb::ListTasksResponse {
        tasks: tasks.into_iter().map(task_to_pb).collect(),
    }
}

pub(crate) async fn create_task(
    orchestrator: &Orchestrator,
    request: Request<pb::CreateTaskRequest>,
) -> Result<pb::Task, Status> {
    let caller = caller(&request)?;
    let request = request.into_inner();
    let result = async {
        caller.require(Scope::Write, "CreateTask")?;
        let task = NewTask {
            kind: request.kind.clone(),
            command: request.command.clone(),
            timeout_seconds: request.timeout_seconds,
        };
        orchestrator
            .create_task(&caller.tenant, &request.workload_id, task)
            .await
            .map_err(status_of)
    }
    .await;
    audit(
        orchestrator.store().as_ref(),
        &caller,
        "CreateTask",
        &request.workload_id,
        &result,
    )
    .await;
    result.map(task_to_pb)
}

pub(crate) async fn get_task(
    orchestrator: &Orchestrator,
    request: Request<pb::GetTaskRequest>,
) -> Result<pb::Task, Status> {
    let caller = caller(&request)?;
    caller.require(Scope::Read, "GetTask")?;
    let id = request.into_inner().id;
    let task = orchestrator
        .task(&caller.tenant, &id)
        .await
        .map_err(status_of)?;
    Ok(task_to_pb(task))
}

pub(crate) async fn list_tasks(
    orchestrator: &Orchestrator,
    request: Request<pb::ListTasksRequest>,
) -> Result<pb::ListTasksResponse, Status> {
    let caller = caller(&request)?;
    caller.require(Scope::Read, "ListTasks")?;
    let workload_id = request.into_inner().workload_id;
    let tasks = orchestrator
        .tasks_of(&caller.tenant, &workload_id)
        .await
        .map_err(status_of)?;
    Ok(list(tasks))
}

pub(crate) async fn list_dead_tasks(
    orchestrator: &Orchestrator,
    request: Request<pb::ListDeadTasksRequest>,
) -> Result<pb::ListTasksResponse, Status> {
    let caller = caller(&request)?;
    caller.require(Scope::Read, "ListDeadTasks")?;
    let tasks = orchestrator
        .dead_tasks(&caller.tenant)
        .await
        .map_err(status_of)?;
    Ok(list(tasks))
}

pub(crate) async fn replay_task(
    orchestrator: &Orchestrator,
    request: Request<pb::ReplayTaskRequest>,
) -> Result<pb::Task, Status> {
    let caller = caller(&request)?;
    let id = request.into_inner().id;
    let result = async {
        caller.require(Scope::Write, "ReplayTask")?;
        orchestrator
            .replay_task(&caller.tenant, &id)
            .await
            .map_err(status_of)
    }
    .await;
    audit(
        orchestrator.store().as_ref(),
        &caller,
        "ReplayTask",
        &id,
        &result,
    )
    .await;
    result.map(task_to_pb)
}
