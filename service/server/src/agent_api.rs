//! The agents' HTTP API (`/agent/v1/…`, JSON), served beside gRPC on the service's
//! port so an instance needs to reach only the service. Each call carries the agent's
//! token as `Authorization: Bearer`; what the call may do is decided by
//! `orchestrator::workloads::agents`. Refusals are `protocol::ErrorBody`, with
//! `fenced` set when the instance has been replaced.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::Response;
use computearbitrage_agent_protocol::{self as protocol, paths};
use computearbitrage_orchestrator::workloads::agents::AgentError;
use computearbitrage_orchestrator::workloads::Orchestrator;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// Request bodies are small: a checkpoint's chunk list is the largest.
const MAX_BODY: usize = 4 << 20;

fn reply(status: StatusCode, body: Vec<u8>) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn refusal(status: StatusCode, error: String, fenced: bool, retryable: bool) -> Response {
    let body = serde_json::to_vec(&protocol::ErrorBody {
        error,
        fenced,
        retryable,
    })
    .unwrap_or_default();
    reply(status, body)
}

fn error_response(error: AgentError) -> Response {
    match error {
        AgentError::Unauthorized(m) => refusal(StatusCode::UNAUTHORIZED, m, false, false),
        AgentError::Fenced(m) => refusal(StatusCode::CONFLICT, m, true, false),
        AgentError::Invalid(m) => refusal(StatusCode::BAD_REQUEST, m, false, false),
        AgentError::Service(e) => {
            let retryable = e.is_retryable();
            tracing::warn!(error = %e, retryable, "agent call failed");
            let status = if retryable {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            refusal(
                status,
                format!("the service could not do this: {e}"),
                false,
                retryable,
            )
        }
    }
}

fn bearer(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

async fn body<T: DeserializeOwned>(request: Request) -> Result<T, Response> {
    let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|e| {
            refusal(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
                false,
                false,
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        refusal(
            StatusCode::BAD_REQUEST,
            format!("the request body is not the expected JSON: {e}"),
            false,
            false,
        )
    })
}

fn ok<T: serde::Serialize>(value: &T) -> Response {
    reply(
        StatusCode::OK,
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

/// Handles one agent call.
pub async fn handle(orchestrator: Arc<Orchestrator>, request: Request) -> Response {
    if request.method() != axum::http::Method::POST {
        return refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "agent calls are POST".into(),
            false,
            false,
        );
    }
    let Some(token) = bearer(&request) else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer <agent token>`".into(),
            false,
            false,
        );
    };
    let path = request.uri().path().to_string();
    // Parses the call's body, then hands it to the orchestrator with the token.
    macro_rules! call {
        ($method:ident) => {
            match body(request).await {
                Ok(b) => orchestrator.$method(&token, b).await.map(|r| ok(&r)),
                Err(r) => return r,
            }
        };
        ($method:ident, no_reply) => {
            match body(request).await {
                Ok(b) => orchestrator
                    .$method(&token, b)
                    .await
                    .map(|()| ok(&serde_json::json!({}))),
                Err(r) => return r,
            }
        };
    }
    let result = match path.as_str() {
        paths::REGISTER => call!(agent_register),
        paths::HEARTBEAT => call!(agent_heartbeat),
        paths::NOTICE => call!(agent_notice, no_reply),
        paths::CHECKPOINT_GRANT => call!(agent_checkpoint_grant),
        paths::CHECKPOINT_REPORT => call!(agent_checkpoint_report, no_reply),
        paths::EXITED => call!(agent_exited, no_reply),
        paths::LOGS => call!(agent_logs, no_reply),
        paths::LOG_SEGMENT_GRANT => call!(agent_log_segment_grant),
        paths::TASK_NEXT => call!(agent_next_task),
        paths::TASK_RESULT => call!(agent_task_result, no_reply),
        paths::STORAGE_URL => call!(agent_storage_url),
        paths::STORAGE_LIST => call!(agent_storage_list),
        other => {
            return refusal(
                StatusCode::NOT_FOUND,
                format!("no agent call {other}"),
                false,
                false,
            )
        }
    };
    result.unwrap_or_else(error_response)
}
