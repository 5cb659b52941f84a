//! Serving the local backend's signed URLs over HTTP (`GET`/`PUT /storage/v1/…`), as
//! a framework-neutral handler the service mounts on its HTTP side. Bodies stream in
//! both directions, so a checkpoint of any size never sits in memory.
//!
//! Answers: 200 (GET), 201 (PUT), 400 a malformed or traversing key, 403 a URL that
//! does not grant the request, 404 no such object, 405 another method, 413 over quota,
//! 503 the backend failed in a way a retry may fix. Error bodies are one line of text
//! and never echo the signature.

use crate::backend::Storage;
use crate::error::{Origin, StorageError};
use crate::signed::Method;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, BodyStream, Full, StreamBody};

pub type ResponseBody = UnsyncBoxBody<Bytes, std::io::Error>;

fn text(status: StatusCode, message: String) -> Response<ResponseBody> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(
            Full::new(Bytes::from(message + "\n"))
                .map_err(|never| match never {})
                .boxed_unsync(),
        )
        .expect("a static response builds")
}

/// The status an error answers with.
pub fn status_of(error: &StorageError) -> StatusCode {
    match (error.origin(), error) {
        (_, StorageError::NotFound(_)) => StatusCode::NOT_FOUND,
        (Origin::Input, _) => StatusCode::BAD_REQUEST,
        (Origin::Denied, _) => StatusCode::FORBIDDEN,
        (Origin::Quota, _) => StatusCode::PAYLOAD_TOO_LARGE,
        (Origin::Backend, e) if e.is_retryable() => StatusCode::SERVICE_UNAVAILABLE,
        (Origin::Backend | Origin::Config, _) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// Answers one request for a signed URL. `storage` must be the local backend.
pub async fn handle<B>(storage: &Storage, request: Request<B>) -> Response<ResponseBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let Some(signer) = storage.local_signer() else {
        return text(
            StatusCode::NOT_FOUND,
            "this service's storage backend signs its own URLs; use the URL the service gave"
                .into(),
        );
    };
    let method = match *request.method() {
        http::Method::GET => Method::Get,
        http::Method::PUT => Method::Put,
        _ => {
            let mut response = text(
                StatusCode::METHOD_NOT_ALLOWED,
                "signed storage URLs take GET or PUT".into(),
            );
            response.headers_mut().insert(
                http::header::ALLOW,
                http::HeaderValue::from_static("GET, PUT"),
            );
            return response;
        }
    };
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let authorized = match signer.verify(method, &path, &query, crate::backend::unix_now()) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%path, error = %e, "storage URL refused");
            return text(status_of(&e), e.to_string());
        }
    };
    match method {
        Method::Get => match storage.get_stream(&authorized.key).await {
            Ok((size, stream)) => {
                let frames = stream
                    .map_ok(http_body::Frame::data)
                    .map_err(|e| std::io::Error::other(e.to_string()));
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_LENGTH, size)
                    .header(http::header::CONTENT_TYPE, "application/octet-stream")
                    .body(StreamBody::new(frames).boxed_unsync())
                    .expect("a response with a length builds")
            }
            Err(e) => text(status_of(&e), e.to_string()),
        },
        Method::Put => {
            let body = BodyStream::new(request.into_body()).filter_map(|frame| async move {
                match frame {
                    Ok(frame) => frame.into_data().ok().map(Ok),
                    Err(e) => Some(Err(e.to_string())),
                }
            });
            match storage
                .put_stream(&authorized.key, Box::pin(body), authorized.limit_bytes)
                .await
            {
                Ok(written) => {
                    tracing::debug!(key = %authorized.key, bytes = written, "stored");
                    text(StatusCode::CREATED, format!("stored {written} bytes"))
                }
                Err(e) => {
                    tracing::info!(key = %authorized.key, error = %e, "upload refused");
                    text(status_of(&e), e.to_string())
                }
            }
        }
    }
}

/// Serves the local backend's URLs on `listener` with HTTP/1.1 until the task is
/// dropped: a storage endpoint of its own, for tools and tests (the service mounts
/// [`handle`] beside gRPC instead).
pub async fn serve(storage: std::sync::Arc<Storage>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let storage = storage.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let storage = storage.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&storage, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}
