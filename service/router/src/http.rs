//! The HTTP router: finds the workload of a request ([`crate::parse`]), checks the
//! credential against the route table, and forwards the request to the workload's
//! current backend with bodies streamed both ways. HTTP/1.1 keep-alive, HTTP/2 (h2c)
//! from clients and `Upgrade` (WebSocket) are supported; backends are spoken to over
//! pooled HTTP/1.1 connections.

use crate::head;
use crate::metrics::{GaugeGuard, Metrics, WorkloadMetrics, UNROUTED};
use crate::parse::{self, TargetError};
use crate::table::{Access, RouteTable};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// The body type the router sends and returns.
pub type Body = BoxBody<Bytes, hyper::Error>;

const X_WORKLOAD_ID: HeaderName = HeaderName::from_static("x-workload-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// How long to wait before the one retry of an idempotent request whose backend
/// refused the connection: long enough for a route change in flight to land.
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// What the HTTP router needs from the configuration.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// `{workload-id}.{base_domain}` names a workload; empty turns host routing off.
    pub base_domain: String,
    /// `Retry-After` of 503 answers for workloads that are not serving.
    pub retry_after_seconds: u32,
    /// Connect timeout to backends.
    pub connect_timeout: Duration,
    /// Time a client has to send a whole request head once it started one (and, on
    /// connections handed to hyper, once it may send the next one).
    pub header_read_timeout: Duration,
    /// Time a kept-alive connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Longest request head accepted; a longer one is answered 431.
    pub max_header_bytes: usize,
    /// Connections open at once, shared by every serving thread.
    pub connection_limits: Arc<crate::limits::ConnectionLimits>,
    /// Requests per second per workload; `None` for no limit.
    pub rate_limit: Option<crate::limits::RateLimit>,
}

pub struct HttpRouter {
    table: Arc<RouteTable>,
    metrics: Arc<Metrics>,
    settings: HttpSettings,
    client: Client<HttpConnector, Body>,
    /// Upgraded (WebSocket) tunnels open now: [`serve`] drains them like requests.
    open_tunnels: Arc<AtomicUsize>,
}

impl HttpRouter {
    pub fn new(
        table: Arc<RouteTable>,
        metrics: Arc<Metrics>,
        settings: HttpSettings,
    ) -> Arc<HttpRouter> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(connector);
        Arc::new(HttpRouter {
            table,
            metrics,
            settings,
            client,
            open_tunnels: Arc::default(),
        })
    }

    pub(crate) fn base_domain(&self) -> &str {
        &self.settings.base_domain
    }

    pub(crate) fn table(&self) -> &RouteTable {
        &self.table
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.settings.connect_timeout
    }

    pub(crate) fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    pub(crate) fn metrics_of(&self, workload_id: &str) -> Arc<WorkloadMetrics> {
        self.metrics.workload(workload_id)
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let started = Instant::now();
        let (response, metrics) = self.route(req, peer).await;
        let metrics = metrics.unwrap_or_else(|| self.metrics.workload(UNROUTED));
        metrics.observe(response.status().as_u16(), started.elapsed());
        response
    }

    async fn route(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
    ) -> (Response<Body>, Option<Arc<WorkloadMetrics>>) {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        let target = match parse::find_target(
            host.as_deref(),
            req.headers().get(&X_WORKLOAD_ID).map(|v| v.as_bytes()),
            &path_and_query,
            &self.settings.base_domain,
        ) {
            Ok(t) => t,
            Err(TargetError::Unnamed) => {
                return (
                    plain(
                        StatusCode::NOT_FOUND,
                        "no workload named: use the Host {workload-id}.{base-domain}, the header X-Workload-Id, or the path /w/{workload-id}/\n"
                            .to_string(),
                    ),
                    None,
                )
            }
            Err(TargetError::Conflicting { first, second }) => {
                return (
                    plain(
                        StatusCode::BAD_REQUEST,
                        format!("the request names two workloads ({first} and {second}); name one, by Host, X-Workload-Id or /w/{{id}}/\n"),
                    ),
                    None,
                )
            }
            Err(TargetError::BadHeader) => {
                return (
                    plain(
                        StatusCode::BAD_REQUEST,
                        "X-Workload-Id is not a workload id (expected lower-case letters, digits, '-' and '_', like wl-0123…)\n".to_string(),
                    ),
                    None,
                )
            }
        };

        // The credential: a bearer token, else `?token=` (for browsers).
        let parse::Credential {
            token,
            from_authorization,
            path,
            query,
        } = parse::credential(
            req.headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
            &target.path_and_query,
        );
        let route = match self.table.authorize(token.as_deref(), &target.workload_id) {
            Access::Unauthenticated => return (unauthorized(), None),
            Access::NotFound => return (not_found(&target.workload_id), None),
            Access::Granted(route) => route,
        };
        let metrics = self.metrics.workload(&route.workload_id);
        if let Some(limit) = self.settings.rate_limit {
            if let Err(wait) = metrics.admit(limit) {
                metrics
                    .local()
                    .rate_limited
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return (
                    too_many_requests(&route.workload_id, limit, wait),
                    Some(metrics),
                );
            }
        }
        let in_flight = GaugeGuard::new(metrics.clone(), |m| &m.active_http);

        let Some(backend) = route.serving_backend().map(str::to_owned) else {
            return (
                self.unavailable(&route.workload_id, route.status.as_str()),
                Some(metrics),
            );
        };

        // The headers the backend sees.
        let original_host = host.unwrap_or_default();
        let mut headers = std::mem::take(req.headers_mut());
        let upgrade = take_upgrade(&mut headers);
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        if from_authorization {
            // Our credential, not the workload's: never forwarded.
            headers.remove(header::AUTHORIZATION);
        }
        for claim in parse::CLIENT_CLAIMS {
            headers.remove(claim);
        }
        let referer = headers
            .get(header::REFERER)
            .and_then(|v| parse::referer_without_token(v.as_bytes()));
        if let Some(clean) = referer {
            match HeaderValue::from_bytes(&clean) {
                Ok(v) => {
                    headers.insert(header::REFERER, v);
                }
                Err(_) => {
                    headers.remove(header::REFERER);
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&peer.ip().to_string()) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        match HeaderValue::from_str(&original_host) {
            Ok(v) if !original_host.is_empty() => {
                headers.insert(X_FORWARDED_HOST, v);
            }
            _ => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
        if let Ok(v) = HeaderValue::from_str(&route.workload_id) {
            headers.insert(X_WORKLOAD_ID, v);
        }
        let keep_trace = headers
            .get(&TRACEPARENT)
            .is_some_and(|v| parse::is_valid_traceparent(v.as_bytes()));
        if !keep_trace {
            headers.remove("tracestate");
            if let Ok(v) = HeaderValue::from_str(&parse::new_traceparent()) {
                headers.insert(TRACEPARENT, v);
            }
        }
        let path_and_query = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        };
        let method = req.method().clone();

        if let Some(protocol) = upgrade {
            let response = self
                .upgrade(
                    req,
                    &backend,
                    &path_and_query,
                    headers,
                    protocol,
                    metrics.clone(),
                )
                .await;
            return (response, Some(metrics));
        }

        // Kept only when a retry is allowed: most requests never need it.
        let retry_headers = (parse::is_idempotent(method.as_str()) && req.body().is_end_stream())
            .then(|| headers.clone());
        let body = Counted::new(req.into_body(), metrics.clone(), true, None).boxed();
        let first = outgoing(&method, &backend, &path_and_query, headers, body);
        let result = match (self.client.request(first).await, retry_headers) {
            (Err(e), Some(headers)) if e.is_connect() => {
                tracing::debug!(workload = %route.workload_id, %backend, error = %e, "backend refused; retrying once");
                tokio::time::sleep(RETRY_DELAY).await;
                // The route may have moved meanwhile: ask the table again.
                match self
                    .table
                    .get(&route.workload_id)
                    .as_deref()
                    .and_then(|r| r.serving_backend())
                {
                    Some(now) => {
                        let empty = Empty::<Bytes>::new()
                            .map_err(|never| match never {})
                            .boxed();
                        self.client
                            .request(outgoing(&method, now, &path_and_query, headers, empty))
                            .await
                    }
                    None => {
                        return (
                            self.unavailable(&route.workload_id, "moving"),
                            Some(metrics),
                        );
                    }
                }
            }
            (result, _) => result,
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(workload = %route.workload_id, %backend, error = %e, connect = e.is_connect(), "backend request failed");
                let text = if e.is_connect() {
                    format!(
                        "workload {} did not accept the connection ({}); retry later\n",
                        route.workload_id,
                        describe(&e)
                    )
                } else {
                    format!(
                        "workload {} failed to answer ({}); retry later\n",
                        route.workload_id,
                        describe(&e)
                    )
                };
                return (plain(StatusCode::BAD_GATEWAY, text), Some(metrics));
            }
        };
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Counted::new(body, metrics.clone(), false, Some(in_flight)).boxed();
        (Response::from_parts(parts, body), Some(metrics))
    }

    /// Forwards an `Upgrade` request on its own backend connection and, on 101, joins
    /// the two upgraded streams.
    async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        backend: &str,
        path_and_query: &str,
        mut headers: HeaderMap,
        protocol: HeaderValue,
        metrics: Arc<WorkloadMetrics>,
    ) -> Response<Body> {
        let client_side = hyper::upgrade::on(&mut req);
        let stream = match tokio::time::timeout(
            self.settings.connect_timeout,
            tokio::net::TcpStream::connect(backend),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("workload backend did not accept the connection ({e}); retry later\n"),
                )
            }
            Err(_) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    "workload backend did not accept the connection in time; retry later\n".into(),
                )
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake::<_, Body>(TokioIo::new(stream)).await {
                Ok(pair) => pair,
                Err(e) => {
                    return plain(
                        StatusCode::BAD_GATEWAY,
                        format!("workload backend failed the handshake ({e})\n"),
                    )
                }
            };
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
        if let Ok(v) = HeaderValue::from_str(backend) {
            headers.insert(header::HOST, v);
        }
        let mut out = Request::new(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        *out.method_mut() = req.method().clone();
        *out.uri_mut() = match path_and_query.parse() {
            Ok(uri) => uri,
            Err(_) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "the request path is not a valid URI\n".into(),
                )
            }
        };
        *out.headers_mut() = headers;
        let mut response = match sender.send_request(out).await {
            Ok(r) => r,
            Err(e) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("workload backend failed to answer the upgrade ({e})\n"),
                )
            }
        };
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            return Response::from_parts(parts, body.boxed());
        }
        let backend_side = hyper::upgrade::on(&mut response);
        let tunnel_metrics = metrics.clone();
        let tunnel_open = OpenGuard::new(self.open_tunnels.clone());
        tokio::spawn(async move {
            let _tunnel_open = tunnel_open;
            let (Ok(client), Ok(server)) = (client_side.await, backend_side.await) else {
                return;
            };
            let _open = GaugeGuard::new(tunnel_metrics.clone(), |m| &m.active_http);
            let mut client = TokioIo::new(client);
            let mut server = TokioIo::new(server);
            if let Ok((up, down)) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
                tunnel_metrics
                    .local()
                    .bytes_to_backend
                    .fetch_add(up, Ordering::Relaxed);
                tunnel_metrics
                    .local()
                    .bytes_from_backend
                    .fetch_add(down, Ordering::Relaxed);
            }
        });
        let mut reply = Response::new(
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        );
        *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *reply.headers_mut() = response.headers().clone();
        reply
    }

    fn unavailable(&self, workload_id: &str, status: &str) -> Response<Body> {
        let mut response = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "workload {workload_id} is {status} and cannot take requests now; retry after {} s\n",
                self.settings.retry_after_seconds
            ),
        );
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(self.settings.retry_after_seconds),
        );
        response
    }
}

fn outgoing(
    method: &Method,
    backend: &str,
    path_and_query: &str,
    headers: HeaderMap,
    body: Body,
) -> Request<Body> {
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    // The backend and path were validated; a parse failure here would be a bug, and
    // answering "/" is safer than panicking.
    *request.uri_mut() = format!("http://{backend}{path_and_query}")
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    *request.headers_mut() = headers;
    request
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request, taken out of the headers.
fn take_upgrade(headers: &mut HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    headers.remove(header::UPGRADE)
}

/// Removes the headers that belong to one connection, not to the message.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // A transfer coding overrides a length, and a proxy must not pass the length on
    // (RFC 9112 §6.3): the body is re-framed from what actually arrives.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in head::HOP_BY_HOP {
        headers.remove(name);
    }
}

fn describe(e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    text
}

fn plain(status: StatusCode, text: String) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn too_many_requests(
    workload_id: &str,
    limit: crate::limits::RateLimit,
    wait: Duration,
) -> Response<Body> {
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = plain(
        StatusCode::TOO_MANY_REQUESTS,
        format!(
            "workload {workload_id} gets more requests than the router allows it ({} per second); retry after {seconds} s\n",
            limit.per_second
        ),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn unauthorized() -> Response<Body> {
    let mut response = plain(
        StatusCode::UNAUTHORIZED,
        "a credential is required: send `Authorization: Bearer <token>` or add `?token=<token>`, with the workload's access_token or your tenant's API token\n".into(),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"computearbitrage\""),
    );
    response
}

/// The one answer for "no such workload" and "not yours": same status, headers and
/// body either way.
fn not_found(workload_id: &str) -> Response<Body> {
    plain(
        StatusCode::NOT_FOUND,
        format!("no workload {workload_id} is visible with this credential\n"),
    )
}

/// A body that counts its data bytes into a workload's metrics and can hold the
/// in-flight gauge until the last byte has gone.
pub struct Counted<B> {
    inner: B,
    metrics: Arc<WorkloadMetrics>,
    to_backend: bool,
    _in_flight: Option<GaugeGuard>,
}

impl<B> Counted<B> {
    pub fn new(
        inner: B,
        metrics: Arc<WorkloadMetrics>,
        to_backend: bool,
        in_flight: Option<GaugeGuard>,
    ) -> Self {
        Counted {
            inner,
            metrics,
            to_backend,
            _in_flight: in_flight,
        }
    }
}

impl<B> HttpBody for Counted<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let counter = if this.to_backend {
                    &this.metrics.local().bytes_to_backend
                } else {
                    &this.metrics.local().bytes_from_backend
                };
                counter.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until `shutdown` resolves, then stops
/// accepting and lets open requests finish for up to `grace`.
pub async fn serve(
    listener: TcpListener,
    router: Arc<HttpRouter>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    use hyper_util::server::conn::auto;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let settings = router.settings();
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX));
    let limits = settings.connection_limits.clone();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Fast-path connections see the stop between requests; hyper's see `graceful`.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fast_open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and similar: back off, keep serving.
                        tracing::warn!(error = %e, "router accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Some(permit) = limits.admit(peer.ip()) else {
                    // Past the limits: refused before a byte is read, at no cost to
                    // the connections within them.
                    tracing::debug!(%peer, open = limits.open(), "router connection refused: limit reached");
                    let mut stream = stream;
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt;
                        let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                    });
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let router = router.clone();
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let mut stop = stop_rx.clone();
                let open = OpenGuard::new(fast_open.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let mut stream = stream;
                    let prefix = match crate::fast::run(&mut stream, peer, &router, &mut stop).await {
                        crate::fast::Outcome::Closed => return,
                        crate::fast::Outcome::HandOff(prefix) => prefix,
                    };
                    drop(open);
                    let service = hyper::service::service_fn(move |req| {
                        let router = router.clone();
                        async move { Ok::<_, Infallible>(router.handle(req, peer).await) }
                    });
                    let io = TokioIo::new(Prefixed { prefix, inner: stream });
                    let connection = builder.serve_connection_with_upgrades(io, service).into_owned();
                    if let Err(e) = watcher.watch(connection).await {
                        tracing::debug!(%peer, error = %e, "client connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Tunnels end when either side closes them; the router cannot end a WebSocket
    // politely without speaking its protocol, so open ones are cut at the deadline.
    let drained = async {
        graceful.shutdown().await;
        while fast_open.load(Ordering::Relaxed) > 0
            || router.open_tunnels.load(Ordering::Relaxed) > 0
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        () = drained => tracing::info!("router drained"),
        () = tokio::time::sleep(grace) => {
            tracing::warn!(grace_seconds = grace.as_secs(), "router connections still open after the grace period; closing them");
        }
    }
}

/// Counts something open (a fast-path connection, a tunnel) until dropped.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(count: Arc<AtomicUsize>) -> OpenGuard {
        count.fetch_add(1, Ordering::Relaxed);
        OpenGuard(count)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection handed over from the fast path: the bytes it had read come
/// first.
struct Prefixed {
    prefix: Bytes,
    inner: tokio::net::TcpStream,
}

impl tokio::io::AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            let chunk = self.prefix.split_to(n);
            out.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl tokio::io::AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The listening side of [`serve_per_core`].
pub struct PerCore {
    pub address: std::net::SocketAddr,
    pub threads: Vec<std::thread::JoinHandle<()>>,
}

/// Serves on `threads` single-thread runtimes, each accepting on its own
/// `SO_REUSEPORT` listener of `address` and with its own [`HttpRouter`] (so its backend
/// connection pool), the way nginx runs one worker per core: a request and its backend
/// exchange stay on one thread, with no cross-core wake-ups. Must be called inside a
/// tokio runtime; each thread stops when `stop` turns true, after draining for up to
/// `grace`.
pub fn serve_per_core(
    address: std::net::SocketAddr,
    threads: usize,
    make_router: impl Fn() -> Arc<HttpRouter>,
    stop: tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<PerCore> {
    let mut bound = address;
    let mut listeners = Vec::new();
    for _ in 0..threads.max(1) {
        let socket = if bound.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(bound)?;
        let listener = socket.listen(1024)?;
        // Port 0 picks a port once; the other listeners share it.
        bound = listener.local_addr()?;
        listeners.push(listener.into_std()?);
    }
    let mut handles = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let router = make_router();
        let mut stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("router-http-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a router thread's runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let listener = match TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot adopt a router listener");
                            return;
                        }
                    };
                    let stopped = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    serve(listener, router, stopped, grace).await;
                });
            })?;
        handles.push(handle);
    }
    Ok(PerCore {
        address: bound,
        threads: handles,
    })
}
