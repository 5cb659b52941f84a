//! The workload's local API: HTTP/1.1 on a unix socket in its working directory
//! (`$COMPUTEARBITRAGE_AGENT_SOCKET`, mode 0600, owned by the workload's user), so the
//! workload, and no other user on the machine, gets signed URLs for its own objects
//! without ever holding the agent's token.
//!
//! - `POST /v1/storage/url` `{"method": "GET"|"PUT", "key": "state/db", "size_bytes": N}`
//!   → `{"url", "method", "key", "expires_at"}`
//! - `POST /v1/storage/list` `{"prefix": "artifacts/"}` → `{"objects": [{"key",
//!   "size_bytes", "modified_ms"}], "used_bytes", "quota_bytes"}`
//!
//! A request's JSON shape is checked here; then it is relayed with the agent's token,
//! and the service's answer, refusals included, comes back as it is. The service
//! decides what the workload may reach (`orchestrator::workloads::workload_storage`).

use crate::run::{CallError, Client};
use bytes::Bytes;
use computearbitrage_agent_protocol::{self as protocol, paths};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The socket's name in the working directory.
pub const SOCKET_NAME: &str = "agent.sock";
/// Where the workload finds the socket.
pub const SOCKET_ENV: &str = "COMPUTEARBITRAGE_AGENT_SOCKET";
/// Requests are a few fields.
const MAX_BODY: usize = 64 << 10;

/// Binds the socket, only the workload's user may open it, and serves it. `None` (and
/// a warning) when it cannot be bound: the workload runs, without the API.
pub(crate) fn start(
    work_dir: &Path,
    owner: Option<(u32, u32)>,
    client: Arc<Client>,
) -> Option<(PathBuf, tokio::task::JoinHandle<()>)> {
    let path = work_dir.join(SOCKET_NAME);
    match bind(&path, owner) {
        Ok(listener) => {
            tracing::info!(socket = %path.display(), "local API served to the workload");
            Some((path, tokio::spawn(serve(listener, client))))
        }
        Err(e) => {
            tracing::warn!(socket = %path.display(), error = %e, "cannot serve the local API; the workload runs without it");
            None
        }
    }
}

fn bind(path: &Path, owner: Option<(u32, u32)>) -> std::io::Result<tokio::net::UnixListener> {
    // A socket left by an earlier agent on the same directory.
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(listener)
}

async fn serve(listener: tokio::net::UnixListener, client: Arc<Client>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "local API: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let client = client.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&client, request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "local API connection ended");
            }
        });
    }
}

fn reply(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn refusal(status: StatusCode, error: String, retryable: bool) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&protocol::ErrorBody {
        error,
        fenced: false,
        retryable,
    })
    .unwrap_or_default();
    reply(status, Bytes::from(body))
}

const CALLS: &str = "the agent serves POST /v1/storage/url {\"method\": \"GET\"|\"PUT\", \"key\": \"state/…\", \"size_bytes\": N} and POST /v1/storage/list {\"prefix\": \"artifacts/\"}";

/// The request's JSON as the service takes it, re-encoded from its checked shape.
fn checked(relay_to: &str, body: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    if relay_to == paths::STORAGE_URL {
        serde_json::to_vec(&serde_json::from_slice::<protocol::StorageUrlRequest>(
            body,
        )?)
    } else {
        serde_json::to_vec(&serde_json::from_slice::<protocol::StorageListRequest>(
            body,
        )?)
    }
}

async fn handle(client: &Client, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let relay_to = match request.uri().path() {
        "/v1/storage/url" => paths::STORAGE_URL,
        "/v1/storage/list" => paths::STORAGE_LIST,
        other => {
            return refusal(
                StatusCode::NOT_FOUND,
                format!("no call {other}; {CALLS}"),
                false,
            )
        }
    };
    if request.method() != Method::POST {
        return refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} is not a method here; {CALLS}", request.method()),
            false,
        );
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("cannot read the request body (at most {MAX_BODY} bytes): {e}"),
                false,
            )
        }
    };
    let body = match checked(relay_to, &body) {
        Ok(body) => body,
        Err(e) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                format!("the request body is not the expected JSON: {e}; {CALLS}"),
                false,
            )
        }
    };
    match client.send(relay_to, body).await {
        Ok((status, bytes)) => reply(
            StatusCode::from_u16(status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY),
            bytes,
        ),
        Err(CallError::Transient(m) | CallError::Refused(m) | CallError::Fenced(m)) => refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the agent cannot reach the service ({m}); retry shortly"),
            true,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_before_they_are_relayed() {
        let url = checked(
            paths::STORAGE_URL,
            br#"{"method":"PUT","key":"state/a","size_bytes":3}"#,
        )
        .unwrap();
        let back: protocol::StorageUrlRequest = serde_json::from_slice(&url).unwrap();
        assert_eq!(
            (back.method.as_str(), back.key.as_str(), back.size_bytes),
            ("PUT", "state/a", 3)
        );
        // A misspelt field is refused, not dropped.
        assert!(checked(paths::STORAGE_URL, br#"{"method":"GET","path":"state/a"}"#).is_err());
        assert!(checked(paths::STORAGE_URL, b"").is_err());
        assert!(checked(paths::STORAGE_URL, b"\xff\xfe").is_err());
        // Listing everything needs no body.
        let list = checked(paths::STORAGE_LIST, b"  ").unwrap();
        assert_eq!(
            serde_json::from_slice::<protocol::StorageListRequest>(&list)
                .unwrap()
                .prefix,
            ""
        );
    }
}
