//! Each local instance's stand-in for its cloud's instance metadata endpoint, in the
//! real shape (`../shared/reference/cloud-api/`), so the on-instance agent watches the
//! same endpoints it watches on a real VM:
//!
//! - AWS IMDSv2: `PUT /latest/api/token` (`X-aws-ec2-metadata-token-ttl-seconds`
//!   1–21600, else 400), then every GET with `X-aws-ec2-metadata-token` (else 401):
//!   `meta-data/instance-id`, `meta-data/spot/instance-action` (404 until an
//!   interruption, then `{"action": "terminate", "time": "…Z"}`),
//!   `meta-data/spot/termination-time`, `meta-data/events/recommendations/rebalance`.
//! - GCP: `Metadata-Flavor: Google` required (else 403), and sent on every answer;
//!   `computeMetadata/v1/instance/{id,name,preempted,scheduling/preemptible}` with an
//!   `ETag`; `?wait_for_change=true[&last_etag=…][&timeout_sec=…]` holds the request
//!   until the value's ETag differs from `last_etag` (without one: from the current
//!   value), or the timeout (60 s at most) passes.
//! - Azure: `Metadata: true` and `api-version` required (else 400); Scheduled Events
//!   `GET /metadata/scheduledevents` (one `Preempt` event after an interruption) and
//!   `POST` with `StartRequests` to approve it; `instance/compute/{name,vmId}`.
//!
//! Unknown paths are 404. Bound on 127.0.0.1 only.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, ETAG};
use hyper::{Method, Request, Response, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Which cloud's metadata shape an instance is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataCloud {
    Aws,
    Gcp,
    Azure,
}

impl MetadataCloud {
    pub fn parse(cloud: &str) -> Option<Self> {
        match cloud {
            "aws" => Some(Self::Aws),
            "gcp" => Some(Self::Gcp),
            "azure" => Some(Self::Azure),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aws => "aws",
            Self::Gcp => "gcp",
            Self::Azure => "azure",
        }
    }

    /// The time between the cloud's notice and the reclamation: AWS's two minutes,
    /// GCP's 30 s, Azure's minimum for `Preempt`, 30 s.
    pub fn notice_window(self) -> Duration {
        Duration::from_secs(match self {
            Self::Aws => 120,
            Self::Gcp | Self::Azure => 30,
        })
    }
}

/// IMDSv2's longest session token (6 h).
const AWS_MAX_TTL: u64 = 21_600;
/// The longest a GCP hanging GET is held.
const GCP_MAX_WAIT: u64 = 60;
/// The largest request body read (Azure's `StartRequests`).
const MAX_BODY: usize = 64 * 1024;

/// What the endpoint announces; GCP's hanging GETs wait on changes to it.
#[derive(Default)]
struct Signals {
    deadline: Option<i64>,
    rebalance_at: Option<i64>,
    /// Azure: the document's incarnation, bumped on every change of its events.
    incarnation: i64,
    event_id: Option<String>,
    approved: bool,
}

struct State {
    cloud: MetadataCloud,
    instance_id: String,
    resource_name: String,
    signals: watch::Sender<Signals>,
    /// AWS session tokens and when they expire.
    tokens: Mutex<HashMap<String, Instant>>,
}

struct Handle {
    port: u16,
    state: Arc<State>,
    /// Dropping it (the last handle) stops the server as `shutdown` does.
    stop: watch::Sender<bool>,
}

/// One instance's metadata endpoint. Clones share it; it stops on `shutdown` or when
/// the last clone is dropped.
#[derive(Clone)]
pub struct MetadataServer {
    inner: Arc<Handle>,
}

impl MetadataServer {
    /// Binds 127.0.0.1:`port` (0 = any free port) and serves. `instance_id` is served as
    /// the instance id; `resource_name` is the VM name Azure's Scheduled Events put in
    /// `Resources`. A given port still held by a server just shut down is retried for
    /// up to 2 s.
    pub async fn start(
        cloud: MetadataCloud,
        instance_id: &str,
        resource_name: &str,
        port: u16,
    ) -> std::io::Result<MetadataServer> {
        let listener = bind(port).await?;
        Self::serve_listener(cloud, instance_id, resource_name, listener)
    }

    /// Serves on a socket bound elsewhere (inside the instance's network namespace).
    pub fn serve(
        cloud: MetadataCloud,
        instance_id: &str,
        resource_name: &str,
        listener: std::net::TcpListener,
    ) -> std::io::Result<MetadataServer> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        Self::serve_listener(cloud, instance_id, resource_name, listener)
    }

    fn serve_listener(
        cloud: MetadataCloud,
        instance_id: &str,
        resource_name: &str,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<MetadataServer> {
        let port = listener.local_addr()?.port();
        let state = Arc::new(State {
            cloud,
            instance_id: instance_id.to_string(),
            resource_name: resource_name.to_string(),
            signals: watch::Sender::new(Signals::default()),
            tokens: Mutex::new(HashMap::new()),
        });
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept(listener, state.clone(), stopped));
        Ok(MetadataServer {
            inner: Arc::new(Handle { port, state, stop }),
        })
    }

    pub fn port(&self) -> u16 {
        self.inner.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.port)
    }

    /// From now on the endpoint announces reclamation at `deadline` (unix seconds).
    pub fn raise_interruption(&self, deadline: i64) {
        let cloud = self.inner.state.cloud;
        self.inner.state.signals.send_modify(|s| {
            s.deadline = Some(deadline);
            if cloud == MetadataCloud::Azure {
                s.incarnation += 1;
                if s.event_id.is_none() {
                    s.event_id = Some(event_id());
                }
            }
        });
    }

    /// AWS rebalance recommendation (other clouds: no-op returning false).
    pub fn raise_rebalance(&self) -> bool {
        if self.inner.state.cloud != MetadataCloud::Aws {
            return false;
        }
        self.inner
            .state
            .signals
            .send_modify(|s| s.rebalance_at = s.rebalance_at.or(Some(unix_now())));
        true
    }

    /// Azure: whether the agent approved the Preempt event with `StartRequests` (other
    /// clouds: false).
    pub fn approved(&self) -> bool {
        self.inner.state.signals.borrow().approved
    }

    /// Stops accepting and closes every connection, hanging requests included.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }
}

async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut attempts = 0;
    loop {
        let socket = tokio::net::TcpSocket::new_v4()?;
        // The old server's closed connections (TIME_WAIT) do not keep the port.
        socket.set_reuseaddr(true)?;
        match socket.bind(address).and_then(|()| socket.listen(1024)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && port != 0 && attempts < 40 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Shut down, or the last handle dropped.
            _ = stopped.wait_for(|s| *s) => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of descriptors, say: try again shortly.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let (state, mut stopped) = (state.clone(), stopped.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(&state, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn header<'a, B>(request: &'a Request<B>, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

fn query<'a, B>(request: &'a Request<B>, name: &str) -> Option<&'a str> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

async fn handle(state: &State, request: Request<hyper::body::Incoming>) -> Reply {
    match state.cloud {
        MetadataCloud::Aws => aws(state, &request),
        MetadataCloud::Gcp => gcp(state, &request).await,
        MetadataCloud::Azure => azure(state, request).await,
    }
}

fn aws<B>(state: &State, request: &Request<B>) -> Reply {
    const TEXT: &str = "text/plain";
    let path = request.uri().path();
    if path == "/latest/api/token" {
        if request.method() != Method::PUT {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "");
        }
        let Some(ttl) = header(request, "X-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ttl| (1..=AWS_MAX_TTL).contains(ttl))
        else {
            return reply(StatusCode::BAD_REQUEST, TEXT, "");
        };
        let token = format!("{:016x}{:016x}{:016x}", random(), random(), random());
        let now = Instant::now();
        let mut tokens = state.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.retain(|_, expires| *expires > now);
        tokens.insert(token.clone(), now + Duration::from_secs(ttl));
        let mut response = reply(StatusCode::OK, TEXT, token);
        response.headers_mut().insert(
            "X-aws-ec2-metadata-token-ttl-seconds",
            HeaderValue::from(ttl),
        );
        return response;
    }
    if request.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "");
    }
    let valid = header(request, "X-aws-ec2-metadata-token").is_some_and(|token| {
        let tokens = state.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(token)
            .is_some_and(|expires| *expires > Instant::now())
    });
    if !valid {
        return reply(StatusCode::UNAUTHORIZED, TEXT, "");
    }
    let signals = state.signals.borrow();
    let body = match path {
        "/latest/meta-data/instance-id" => Some(state.instance_id.clone()),
        "/latest/meta-data/spot/instance-action" => signals
            .deadline
            .map(|t| format!(r#"{{"action": "terminate", "time": "{}"}}"#, rfc3339(t))),
        "/latest/meta-data/spot/termination-time" => signals.deadline.map(rfc3339),
        "/latest/meta-data/events/recommendations/rebalance" => signals
            .rebalance_at
            .map(|t| format!(r#"{{"noticeTime": "{}"}}"#, rfc3339(t))),
        _ => None,
    };
    match body {
        Some(body) => reply(StatusCode::OK, TEXT, body),
        None => reply(StatusCode::NOT_FOUND, TEXT, ""),
    }
}

fn gcp_value(state: &State, signals: &Signals, path: &str) -> Option<String> {
    Some(match path.strip_prefix("/computeMetadata/v1/instance/")? {
        "id" => state.instance_id.clone(),
        "name" => state.resource_name.clone(),
        "preempted" if signals.deadline.is_some() => "TRUE".into(),
        "preempted" => "FALSE".into(),
        "scheduling/preemptible" => "TRUE".into(),
        _ => return None,
    })
}

const GCP_TEXT: &str = "application/text";

/// Every GCP answer, refusals included, says `Metadata-Flavor: Google`.
async fn gcp<B>(state: &State, request: &Request<B>) -> Reply {
    let mut response = gcp_answer(state, request).await;
    response
        .headers_mut()
        .insert("Metadata-Flavor", HeaderValue::from_static("Google"));
    response
}

async fn gcp_answer<B>(state: &State, request: &Request<B>) -> Reply {
    if header(request, "Metadata-Flavor") != Some("Google") {
        return reply(
            StatusCode::FORBIDDEN,
            GCP_TEXT,
            "Missing Metadata-Flavor:Google header.\n",
        );
    }
    if request.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, GCP_TEXT, "");
    }
    let path = request.uri().path();
    let mut signals = state.signals.subscribe();
    let Some(mut value) = gcp_value(state, &signals.borrow_and_update(), path) else {
        return reply(StatusCode::NOT_FOUND, GCP_TEXT, "");
    };
    if query(request, "wait_for_change") == Some("true") {
        let timeout = match query(request, "timeout_sec").map(str::parse::<u64>) {
            None => GCP_MAX_WAIT,
            Some(Ok(seconds)) if seconds > 0 => seconds.min(GCP_MAX_WAIT),
            Some(_) => return reply(StatusCode::BAD_REQUEST, GCP_TEXT, "invalid timeout_sec\n"),
        };
        // Waits while the value is the one the client last saw (or, without an ETag,
        // the one it has now).
        let last = query(request, "last_etag").map_or_else(|| etag(&value), str::to_string);
        let until = tokio::time::Instant::now() + Duration::from_secs(timeout);
        while etag(&value) == last {
            tokio::select! {
                changed = signals.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(until) => break,
            }
            match gcp_value(state, &signals.borrow_and_update(), path) {
                Some(now) => value = now,
                None => break,
            }
        }
    }
    let tag = HeaderValue::from_str(&etag(&value));
    let mut response = reply(StatusCode::OK, GCP_TEXT, value);
    if let Ok(tag) = tag {
        response.headers_mut().insert(ETAG, tag);
    }
    response
}

/// GCP's ETags are 16 hex digits; this one is FNV-1a of the value, so a restarted
/// server gives the same value the same ETag.
fn etag(value: &str) -> String {
    let hash = value.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

async fn azure(state: &State, request: Request<hyper::body::Incoming>) -> Reply {
    const JSON: &str = "application/json; charset=utf-8";
    let bad = |message: &str| {
        let body = serde_json::json!({ "error": message }).to_string();
        reply(StatusCode::BAD_REQUEST, JSON, body)
    };
    if header(&request, "Metadata") != Some("true") {
        return bad("Bad request. Required metadata header not specified");
    }
    if query(&request, "api-version")
        .filter(|v| !v.is_empty())
        .is_none()
    {
        return bad("Bad request. api-version was not specified in the request");
    }
    let leaf = match request.uri().path() {
        "/metadata/scheduledevents" => None,
        "/metadata/instance/compute/name" => Some(state.resource_name.clone()),
        "/metadata/instance/compute/vmId" => Some(state.instance_id.clone()),
        _ => return reply(StatusCode::NOT_FOUND, JSON, r#"{"error": "Not found"}"#),
    };
    let method = request.method().clone();
    match (leaf, method) {
        (Some(value), Method::GET) if query(&request, "format") == Some("json") => reply(
            StatusCode::OK,
            JSON,
            serde_json::Value::from(value).to_string(),
        ),
        (Some(value), Method::GET) => reply(StatusCode::OK, "text/plain; charset=utf-8", value),
        (None, Method::GET) => {
            let signals = state.signals.borrow();
            let events: Vec<_> = signals
                .deadline
                .zip(signals.event_id.as_ref())
                .map(|(deadline, id)| {
                    let (status, not_before) = if signals.approved {
                        ("Started", String::new())
                    } else {
                        ("Scheduled", http_date(deadline))
                    };
                    serde_json::json!({
                        "EventId": id,
                        "EventType": "Preempt",
                        "ResourceType": "VirtualMachine",
                        "Resources": [state.resource_name],
                        "EventStatus": status,
                        "NotBefore": not_before,
                        "Description": "",
                        "EventSource": "Platform",
                        "DurationInSeconds": -1,
                    })
                })
                .into_iter()
                .collect();
            let document = serde_json::json!({
                "DocumentIncarnation": signals.incarnation,
                "Events": events,
            });
            reply(StatusCode::OK, JSON, document.to_string())
        }
        (None, Method::POST) => {
            #[derive(serde::Deserialize)]
            struct Approval {
                #[serde(rename = "StartRequests")]
                start_requests: Vec<StartRequest>,
            }
            #[derive(serde::Deserialize)]
            struct StartRequest {
                #[serde(rename = "EventId")]
                event_id: String,
            }
            let Ok(body) = Limited::new(request.into_body(), MAX_BODY).collect().await else {
                return bad("Bad request. The request body could not be read");
            };
            let Ok(approval) = serde_json::from_slice::<Approval>(&body.to_bytes()) else {
                return bad("Bad request. The body is not a StartRequests document");
            };
            let mut known = !approval.start_requests.is_empty();
            state.signals.send_if_modified(|s| {
                known &= approval
                    .start_requests
                    .iter()
                    .all(|r| s.event_id.as_ref().is_some_and(|id| *id == r.event_id));
                let approves = known && !s.approved;
                if approves {
                    s.approved = true;
                    s.incarnation += 1;
                }
                approves
            });
            if known {
                reply(StatusCode::OK, JSON, "")
            } else {
                bad("Bad request. Unknown EventId")
            }
        }
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, JSON, ""),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unpredictable enough for a local stand-in's tokens and event ids (std's randomly
/// keyed hasher over a counter and the clock).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// Azure's EventId shape: an upper-case UUID.
fn event_id() -> String {
    let (a, b) = (random(), random());
    format!(
        "{:08X}-{:04X}-{:04X}-{:04X}-{:012X}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Unix seconds → (year, month, day, seconds of the day, weekday with 0 = Sunday), in
/// the proleptic Gregorian calendar (days-from-civil inverted).
fn civil(unix: i64) -> (i64, i64, i64, i64, i64) {
    let (days, seconds) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    let z = days + 719_468;
    let (era, doe) = (z.div_euclid(146_097), z.rem_euclid(146_097));
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, seconds, (days + 4).rem_euclid(7))
}

/// AWS's `2017-09-18T08:22:00Z`.
fn rfc3339(unix: i64) -> String {
    let (y, mo, d, s, _) = civil(unix);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

/// Azure's `Tue, 09 Aug 2022 17:07:32 GMT` (RFC 1123).
fn http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, s, wd) = civil(unix);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[wd as usize % 7],
        MONTHS[(mo as usize + 11) % 12],
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_the_references_formats() {
        // The reference payloads' own instants.
        assert_eq!(rfc3339(1_505_722_920), "2017-09-18T08:22:00Z");
        assert_eq!(http_date(1_660_064_852), "Tue, 09 Aug 2022 17:07:32 GMT");
        assert_eq!(http_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
        // Never a panic, whatever the deadline.
        let _ = (http_date(i64::MAX), rfc3339(i64::MIN));
    }

    #[test]
    fn clouds_parse_and_have_their_notice_windows() {
        for cloud in [MetadataCloud::Aws, MetadataCloud::Gcp, MetadataCloud::Azure] {
            assert_eq!(MetadataCloud::parse(cloud.as_str()), Some(cloud));
        }
        assert_eq!(MetadataCloud::parse("ibm"), None);
        assert_eq!(MetadataCloud::Aws.notice_window(), Duration::from_secs(120));
        assert_eq!(
            MetadataCloud::Azure.notice_window(),
            Duration::from_secs(30)
        );
        let id = event_id();
        assert_eq!((id.len(), id.matches('-').count()), (36, 4), "{id}");
    }
}
