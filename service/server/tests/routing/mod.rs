//! An in-process router over a real SQLite store, real backends and real sockets on
//! 127.0.0.1, for the router integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use computearbitrage::config::RouterConfig;
use computearbitrage::routing::{Feed, RunningRouter};
use computearbitrage_core::{
    HealthCheck, OnInterruption, Requirements, StorageSpec, Transition, WorkloadSpec,
    WorkloadStatus,
};
use computearbitrage_store::{
    RunKind, RunRecord, RunStatus, SqliteStore, Store, TokenRecord, WorkloadChanges, WorkloadRecord,
};
use http_body_util::{BodyExt, Full};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const TENANT_A: &str = "tenant-a";
pub const TENANT_B: &str = "tenant-b";
pub const TOKEN_A: &str = "token-of-tenant-a-0123456789";
pub const TOKEN_B: &str = "token-of-tenant-b-0123456789";
pub const BASE_DOMAIN: &str = "apps.test";

/// The `Authorization` value that carries `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The access token tests give a workload.
pub fn workload_token(id: &str) -> String {
    format!("caw-test-{id}")
}

pub struct Fixture {
    pub store: Arc<dyn Store>,
    pub router: Option<RunningRouter>,
    pub config: RouterConfig,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub async fn start() -> Fixture {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut RouterConfig)) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("state.db")).unwrap());
        for (tenant, token) in [(TENANT_A, TOKEN_A), (TENANT_B, TOKEN_B)] {
            store.ensure_tenant(tenant, 1).await.unwrap();
            store
                .add_token(TokenRecord {
                    id: format!("tok-{tenant}"),
                    token_hash: computearbitrage::auth::hash_token(token),
                    tenant_id: tenant.into(),
                    label: "test".into(),
                    // The router accepts tenant tokens with the route scope only.
                    scopes: computearbitrage_store::Scopes::parse("read,route").unwrap(),
                    created_at: 1,
                    expires_at: None,
                    revoked_at: None,
                })
                .await
                .unwrap();
        }
        let (tcp_min, tcp_max) = free_port_range();
        let mut config = RouterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: "127.0.0.1:0".into(),
            base_domain: BASE_DOMAIN.into(),
            tcp_port_min: tcp_min,
            tcp_port_max: tcp_max,
            ..RouterConfig::default()
        };
        adjust(&mut config);
        let router =
            RunningRouter::start(store.clone(), &config, Duration::from_secs(2), Feed::Local)
                .await
                .unwrap();
        let url = format!("http://{}", router.http_address);
        Fixture {
            store,
            router: Some(router),
            config,
            url,
            dir,
        }
    }

    pub fn router(&self) -> &RunningRouter {
        self.router.as_ref().unwrap()
    }

    /// Stores a workload (PENDING), then walks it to `status` with `backend`.
    pub async fn workload(
        &self,
        tenant: &str,
        id: &str,
        status: WorkloadStatus,
        backend: Option<&str>,
    ) {
        self.workload_with(tenant, id, status, backend, None, None)
            .await
    }

    pub async fn workload_with(
        &self,
        tenant: &str,
        id: &str,
        status: WorkloadStatus,
        backend: Option<&str>,
        tcp_backend: Option<&str>,
        tcp_listen_port: Option<u16>,
    ) {
        let record = WorkloadRecord {
            id: id.into(),
            tenant_id: tenant.into(),
            name: id.into(),
            spec: spec(id),
            status: WorkloadStatus::Pending,
            status_reason: "test".into(),
            failed_step: None,
            placement: None,
            instance_id: None,
            endpoint: None,
            instance_started_at: None,
            access_token_hash: Some(computearbitrage::auth::hash_token(&workload_token(id))),
            tcp_endpoint: None,
            tcp_listen_port,
            created_at: 1,
            updated_at: 1,
        };
        let run = RunRecord {
            id: format!("run-{id}"),
            tenant_id: tenant.into(),
            workload_id: id.into(),
            kind: RunKind::Provision,
            status: RunStatus::Completed,
            reason: "test".into(),
            error: None,
            failed_step: None,
            replays: 0,
            created_at: 1,
            updated_at: 1,
        };
        self.store.create_workload(record, run).await.unwrap();
        let path: &[WorkloadStatus] = match status {
            WorkloadStatus::Pending => &[],
            WorkloadStatus::Provisioning => &[WorkloadStatus::Provisioning],
            WorkloadStatus::Running => &[WorkloadStatus::Provisioning, WorkloadStatus::Running],
            WorkloadStatus::Interrupted => &[
                WorkloadStatus::Provisioning,
                WorkloadStatus::Running,
                WorkloadStatus::Interrupted,
            ],
            WorkloadStatus::Stopping => &[
                WorkloadStatus::Provisioning,
                WorkloadStatus::Running,
                WorkloadStatus::Stopping,
            ],
            other => panic!("walk to {other} not needed"),
        };
        let mut from = WorkloadStatus::Pending;
        for to in path {
            let changes = if *to == WorkloadStatus::Running {
                WorkloadChanges {
                    endpoint: Some(backend.map(str::to_string)),
                    tcp_endpoint: Some(tcp_backend.map(str::to_string)),
                    ..Default::default()
                }
            } else {
                WorkloadChanges::default()
            };
            self.move_to(tenant, id, from, *to, changes).await;
            from = *to;
        }
        self.wait_for_route(id, status).await;
    }

    pub async fn move_to(
        &self,
        tenant: &str,
        id: &str,
        from: WorkloadStatus,
        to: WorkloadStatus,
        changes: WorkloadChanges,
    ) {
        let applied = self
            .store
            .transition_workload(
                tenant,
                id,
                Transition::new(from, to).unwrap(),
                "test",
                2,
                changes,
            )
            .await
            .unwrap();
        assert!(applied, "{id}: {from} -> {to}");
    }

    /// Waits (bounded) until the router's route of `id` is one that `check` accepts.
    pub async fn wait_for_route_where(
        &self,
        id: &str,
        what: &str,
        check: impl Fn(&computearbitrage_router::Route) -> bool,
    ) {
        let table = &self.router().table;
        for _ in 0..600 {
            if table.get(id).is_some_and(|route| check(&route)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the router never saw {what} for {id}");
    }

    /// Waits (bounded) until the router's table shows the workload in `status`.
    pub async fn wait_for_route(&self, id: &str, status: WorkloadStatus) {
        let table = &self.router().table;
        for _ in 0..200 {
            let seen = table.get(id).map(|r| r.status);
            if seen == Some(status) || (!status.is_active() && seen.is_none()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the router never saw {id} as {status}");
    }

    pub async fn shutdown(mut self) {
        if let Some(router) = self.router.take() {
            router.shutdown().await;
        }
    }
}

pub fn spec(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        requirements: Requirements::default(),
        command: vec!["server".into()],
        image: None,
        env: BTreeMap::new(),
        port: 8080,
        health_check: HealthCheck::default(),
        on_interruption: OnInterruption::Terminate,
        on_unhealthy: Default::default(),
        replace_unhealthy_after: std::time::Duration::from_secs(300),
        fallback: Default::default(),
        rebalance: None,
        storage: StorageSpec::default(),
        checkpoint: Default::default(),
        tags: BTreeMap::new(),
        create_timeout: Duration::from_secs(60),
        tcp_port: None,
        tcp_listen_port: None,
        tcp_allowed_cidrs: Vec::new(),
        written: None,
    }
}

/// Ten consecutive free ports for a router's TCP range.
pub fn free_port_range() -> (u16, u16) {
    loop {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let start = probe.local_addr().unwrap().port();
        drop(probe);
        if start < 65_000
            && (start..start + 10).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return (start, start + 9);
        }
    }
}

/// What a backend saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP backend that answers `{name}` and records every request. The body is read
/// chunk by chunk and counted, never kept. `/slow` answers after 300 ms.
pub struct Backend {
    pub address: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub requests: Arc<AtomicU64>,
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, name)
    }

    pub fn serve(listener: tokio::net::TcpListener, name: &str) -> Backend {
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(AtomicU64::new(0));
        let (seen2, requests2, name2) = (seen.clone(), requests.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, requests, name) = (seen2.clone(), requests2.clone(), name2.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let (seen, requests, name) =
                                (seen.clone(), requests.clone(), name.clone());
                            async move {
                                let method = req.method().to_string();
                                let path_and_query = req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default();
                                let headers = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).to_string(),
                                        )
                                    })
                                    .collect();
                                let mut body = req.into_body();
                                let mut body_bytes = 0u64;
                                while let Some(frame) = body.frame().await {
                                    if let Ok(data) = frame.map(|f| f.into_data()) {
                                        body_bytes += data.map(|d| d.len() as u64).unwrap_or(0);
                                    }
                                }
                                if path_and_query.starts_with("/slow") {
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                }
                                seen.lock().unwrap().push(Seen {
                                    method,
                                    path_and_query,
                                    headers,
                                    body_bytes,
                                });
                                requests.fetch_add(1, Ordering::Relaxed);
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                    Bytes::from(name),
                                )))
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        Backend {
            address,
            name: name.into(),
            seen,
            requests,
        }
    }

    pub fn addr(&self) -> String {
        self.address.to_string()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the backend saw a request")
    }
}

/// A reqwest client with a timeout; it sends no credential of its own.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A port with nothing listening on it.
pub fn refused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Sends one request on `stream` and reads its whole answer (by `content-length`).
pub async fn one_exchange(stream: &mut tokio::net::TcpStream, request: &str) -> String {
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&answer)
        );
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return String::from_utf8_lossy(&answer).to_string();
            }
        }
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
}

/// A TCP echo server that prefixes every answer with `tag`.
pub async fn tcp_echo(tag: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut reply = tag.as_bytes().to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    if stream.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}
