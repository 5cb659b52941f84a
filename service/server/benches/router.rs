//! Router benchmark: the pieces `scripts/bench-router.sh` runs, in one binary.
//!
//! Sub-modes (first argument):
//! - `backend --listen ADDR [--body TEXT] [--threads N]`: the tiny HTTP/1.1 backend
//!   (keep-alive, fixed small body, `hello\n` by default) behind every HTTP
//!   configuration.
//! - `tcp-sink --listen ADDR [--threads N]`: reads each connection to EOF, discards
//!   the bytes, answers the 8-byte big-endian count and closes.
//! - `tcp-send --connect ADDR [--streams K] [--seconds S]`: K connections each send
//!   for S seconds, then half-close and check the sink's count; prints MB/s.
//! - `router --backend ADDR --tcp-backend ADDR --listen ADDR --tcp-port P
//!   [--threads N]`: a temporary SQLite store with one tenant token and one RUNNING
//!   workload, served by `RunningRouter` following the store's in-process feed. Prints
//!   one JSON line (workload id, token, addresses), runs until SIGTERM or SIGINT.
//! - `route-change [--iterations N]`: store, router and two backends in this process;
//!   N times: switch the workload's backend in the store, then send requests through
//!   the router until the new backend answers. Prints p50/p99/max in ms.
//! - `probe --url URL [--header 'K: V']... [--expect TEXT]`: one GET, fails unless
//!   200 (and the body contains TEXT).
//! - `free-ports N`: N free loopback ports.
//! - `flood --wrk PATH [--seconds S] [--connectors C]`: store, router, an HTTP
//!   workload and a TCP workload in this process; wrk loads the HTTP workload while a
//!   `tcp-flood` process opens, uses and closes connections to the TCP one: at 1,000
//!   a second, then as fast as it can, then as fast as it can from outside the
//!   workload's `tcp_allowed_cidrs`. Prints wrk's latency, the flood's rate and the
//!   latency of store writes made meanwhile.
//! - `tcp-flood --connect ADDR --seconds S [--connectors C] [--rate R]`: C tasks
//!   that connect, send a byte, half-close and read the answer, R connections a
//!   second in all (0: as fast as they can); prints the answered and refused counts.
//! - `bare-proxy --backend ADDR --listen ADDR [--auto] [--paired] [--per-core N]`: the
//!   same HTTP stack with no routing, for diagnosis (see docs/benchmarks.md).
//!
//! Machine-readable results are printed on one line starting with `RESULT`.
//!
//! Without a sub-mode: under `cargo test` (no `--bench` argument) a quick smoke pass
//! that needs no external tool (a request and a TCP transfer through the router reach
//! their backends; route changes are observed); under `cargo bench` the smoke pass plus
//! a 200-iteration route-change measurement. The comparison with nginx and haproxy is
//! `scripts/bench-router.sh`; docs/benchmarks.md holds a run.

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
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
// The same allocator as the service binary, so the router measured is the one shipped.
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TENANT: &str = "bench";
const TOKEN: &str = "bench-tenant-token-0123456789abcdef";
const WORKLOAD: &str = "wl-bench";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let threads = opt(&args, "--threads").map(|t| t.parse::<usize>().expect("--threads N"));
    let result = match mode {
        "backend" => runtime(threads).block_on(backend_mode(&args)),
        "tcp-sink" => runtime(threads).block_on(sink_mode(&args)),
        "tcp-send" => runtime(threads).block_on(send_mode(&args)),
        "router" => runtime(threads).block_on(router_mode(&args)),
        "route-change" => runtime(threads).block_on(route_change_mode(&args)),
        "probe" => runtime(Some(1)).block_on(probe_mode(&args)),
        "bare-proxy" => runtime(threads).block_on(bare_proxy_mode(&args)),
        "free-ports" => free_ports_mode(&args),
        "flood" => runtime(threads).block_on(flood_mode(&args)),
        "tcp-flood" => runtime(threads).block_on(tcp_flood_mode(&args)),
        _ => {
            // `cargo bench` passes `--bench`; `cargo test` does not.
            let full = args.iter().any(|a| a == "--bench");
            runtime(None).block_on(in_process(full))
        }
    };
    if let Err(e) = result {
        eprintln!("router bench: {e}");
        std::process::exit(1);
    }
}

type Fallible<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn runtime(threads: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.max(1));
    }
    builder.enable_all().build().expect("tokio runtime")
}

/// The value after `name`, if given.
fn opt(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn required(args: &[String], name: &str) -> Fallible<String> {
    opt(args, name).ok_or_else(|| format!("missing {name}").into())
}

fn all(args: &[String], name: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

async fn until_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

// ---- the HTTP backend ----

/// Answers every request on `listener` with `body` (HTTP/1.1, keep-alive).
async fn serve_backend(listener: TcpListener, body: Bytes) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn start_backend(body: &str) -> Fallible<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(serve_backend(listener, Bytes::from(body.to_string())));
    Ok(address)
}

async fn backend_mode(args: &[String]) -> Fallible {
    let listen: SocketAddr = required(args, "--listen")?.parse()?;
    let body = opt(args, "--body").unwrap_or_else(|| "hello\n".into());
    let listener = TcpListener::bind(listen).await?;
    println!("backend listening on {}", listener.local_addr()?);
    tokio::select! {
        () = serve_backend(listener, Bytes::from(body)) => {}
        () = until_signal() => {}
    }
    Ok(())
}

// ---- TCP bulk transfer ----

/// Reads each connection to EOF, then answers the byte count and closes.
async fn serve_sink(listener: TcpListener) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 256 * 1024];
            let mut total = 0u64;
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(n) => total += n as u64,
                    Err(_) => return,
                }
            }
            let _ = stream.write_all(&total.to_be_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

async fn start_sink() -> Fallible<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(serve_sink(listener));
    Ok(address)
}

async fn sink_mode(args: &[String]) -> Fallible {
    let listen: SocketAddr = required(args, "--listen")?.parse()?;
    let listener = TcpListener::bind(listen).await?;
    println!("tcp sink listening on {}", listener.local_addr()?);
    tokio::select! {
        () = serve_sink(listener) => {}
        () = until_signal() => {}
    }
    Ok(())
}

struct Transfer {
    bytes: u64,
    seconds: f64,
}

impl Transfer {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

/// `streams` connections to `address`, each sending for `duration`, then checking
/// that the far end counted every byte. Time runs until the last count arrives.
async fn send_bulk(address: &str, streams: usize, duration: Duration) -> Fallible<Transfer> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let address = address.to_string();
        tasks.spawn(async move {
            let mut stream = TcpStream::connect(&address).await?;
            let buffer = vec![0x5au8; 256 * 1024];
            let mut sent = 0u64;
            while Instant::now() < deadline {
                stream.write_all(&buffer).await?;
                sent += buffer.len() as u64;
            }
            stream.shutdown().await?;
            let mut count = [0u8; 8];
            stream.read_exact(&mut count).await?;
            let counted = u64::from_be_bytes(count);
            if counted != sent {
                return Err(
                    format!("sent {sent} bytes to {address}, the sink counted {counted}").into(),
                );
            }
            Ok::<u64, Box<dyn std::error::Error + Send + Sync>>(sent)
        });
    }
    let mut bytes = 0;
    while let Some(result) = tasks.join_next().await {
        bytes += result??;
    }
    Ok(Transfer {
        bytes,
        seconds: start.elapsed().as_secs_f64(),
    })
}

async fn send_mode(args: &[String]) -> Fallible {
    let address = required(args, "--connect")?;
    let streams: usize = opt(args, "--streams")
        .unwrap_or_else(|| "1".into())
        .parse()?;
    let seconds: f64 = opt(args, "--seconds")
        .unwrap_or_else(|| "10".into())
        .parse()?;
    let t = send_bulk(&address, streams, Duration::from_secs_f64(seconds)).await?;
    println!(
        "tcp-send: {streams} stream(s) to {address}: {} bytes in {:.2} s = {:.1} MB/s",
        t.bytes,
        t.seconds,
        t.mb_per_s()
    );
    println!(
        "RESULT bytes={} seconds={:.3} mb_per_s={:.1}",
        t.bytes,
        t.seconds,
        t.mb_per_s()
    );
    Ok(())
}

// ---- the router over a store with one workload ----

fn spec(name: &str) -> WorkloadSpec {
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A router in this process over a temporary SQLite store holding one tenant token
/// and one RUNNING workload, [`WORKLOAD`].
struct Bench {
    store: Arc<dyn Store>,
    router: RunningRouter,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn start(
        listen: SocketAddr,
        backend: &str,
        tcp_backend: Option<&str>,
        tcp_port: Option<u16>,
    ) -> Fallible<Bench> {
        let port = tcp_port.unwrap_or(0);
        let bench = Bench::empty(listen, (port, port)).await?;
        bench
            .add_workload(WORKLOAD, Some(backend), tcp_backend, tcp_port)
            .await?;
        Ok(bench)
    }

    /// A router over a store with the bench tenant and its token and no workload yet;
    /// TCP listener ports come from `tcp_ports`.
    async fn empty(listen: SocketAddr, tcp_ports: (u16, u16)) -> Fallible<Bench> {
        let dir = tempfile::Builder::new().prefix("router-bench").tempdir()?;
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("state.db"))?);
        let now = unix_now();
        store.ensure_tenant(TENANT, now).await?;
        store
            .add_token(TokenRecord {
                id: "tok-bench".into(),
                token_hash: computearbitrage::auth::hash_token(TOKEN),
                tenant_id: TENANT.into(),
                label: "bench".into(),
                scopes: computearbitrage_store::Scopes::parse("route").unwrap(),
                created_at: now,
                expires_at: None,
                revoked_at: None,
            })
            .await?;
        let config = RouterConfig {
            listen,
            metrics_listen: String::new(),
            tcp_bind: std::net::IpAddr::from([127, 0, 0, 1]),
            tcp_port_min: tcp_ports.0,
            tcp_port_max: tcp_ports.1,
            id: "bench".into(),
            ..RouterConfig::default()
        };
        let router =
            RunningRouter::start(store.clone(), &config, Duration::from_secs(1), Feed::Local)
                .await?;
        Ok(Bench {
            store,
            router,
            _dir: dir,
        })
    }

    /// Stores a RUNNING workload `id` and waits until the router serves it.
    async fn add_workload(
        &self,
        id: &str,
        backend: Option<&str>,
        tcp_backend: Option<&str>,
        tcp_port: Option<u16>,
    ) -> Fallible {
        let now = unix_now();
        let record = WorkloadRecord {
            id: id.into(),
            tenant_id: TENANT.into(),
            name: id.into(),
            spec: spec(id),
            status: WorkloadStatus::Pending,
            status_reason: "bench".into(),
            failed_step: None,
            placement: None,
            instance_id: None,
            endpoint: None,
            instance_started_at: None,
            access_token_hash: None,
            tcp_endpoint: None,
            tcp_listen_port: tcp_port,
            created_at: now,
            updated_at: now,
        };
        let run = RunRecord {
            id: format!("run-{id}"),
            tenant_id: TENANT.into(),
            workload_id: id.into(),
            kind: RunKind::Provision,
            status: RunStatus::Completed,
            reason: "bench".into(),
            error: None,
            failed_step: None,
            replays: 0,
            created_at: now,
            updated_at: now,
        };
        self.store.create_workload(record, run).await?;
        let provisioning = Transition::new(WorkloadStatus::Pending, WorkloadStatus::Provisioning)?;
        let running = Transition::new(WorkloadStatus::Provisioning, WorkloadStatus::Running)?;
        self.store
            .transition_workload(
                TENANT,
                id,
                provisioning,
                "bench",
                now,
                WorkloadChanges::default(),
            )
            .await?;
        let changes = WorkloadChanges {
            endpoint: Some(backend.map(str::to_string)),
            tcp_endpoint: Some(tcp_backend.map(str::to_string)),
            ..Default::default()
        };
        self.store
            .transition_workload(TENANT, id, running, "bench", now, changes)
            .await?;
        let waited = Instant::now();
        loop {
            let routed = self
                .router
                .table
                .get(id)
                .is_some_and(|r| r.status == WorkloadStatus::Running);
            let listening = tcp_port
                .is_none_or(|port| self.router.tcp.listening().iter().any(|(p, _)| *p == port));
            if routed && listening {
                return Ok(());
            }
            if waited.elapsed() > Duration::from_secs(10) {
                return Err(format!(
                    "the router did not serve {id} (TCP port {tcp_port:?}) within 10 s"
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.router.http_address)
    }

    async fn shutdown(self) {
        self.router.shutdown().await;
    }
}

async fn router_mode(args: &[String]) -> Fallible {
    let backend = required(args, "--backend")?;
    let tcp_backend = opt(args, "--tcp-backend");
    let listen: SocketAddr = required(args, "--listen")?.parse()?;
    let tcp_port: Option<u16> = opt(args, "--tcp-port").map(|p| p.parse()).transpose()?;
    let bench = Bench::start(listen, &backend, tcp_backend.as_deref(), tcp_port).await?;
    let line = serde_json::json!({
        "workload_id": WORKLOAD,
        "token": TOKEN,
        "http": bench.router.http_address.to_string(),
        "tcp": tcp_port.map(|p| format!("127.0.0.1:{p}")),
        "backend": backend,
        "tcp_backend": tcp_backend,
    });
    println!("{line}");
    until_signal().await;
    bench.shutdown().await;
    Ok(())
}

// ---- route change ----

fn client() -> Fallible<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?)
}

async fn get_through(client: &reqwest::Client, url: &str) -> Fallible<(u16, String)> {
    let response = client
        .get(url)
        .header("x-workload-id", WORKLOAD)
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

struct RouteChanges {
    /// From just before the store update to the first answer of the new backend.
    served: Vec<Duration>,
    /// How long the store update (the committed transaction) took.
    committed: Vec<Duration>,
    /// Requests answered by the old backend after the update returned.
    stale_answers: u64,
}

/// Two backends answering `a` and `b`; the route switches between them `iterations`
/// times.
async fn route_changes(iterations: usize) -> Fallible<RouteChanges> {
    let a = start_backend("a").await?.to_string();
    let b = start_backend("b").await?.to_string();
    let bench = Bench::start("127.0.0.1:0".parse()?, &a, None, None).await?;
    let http = client()?;
    let url = bench.url();
    // Warm up: the route serves `a`, connections are pooled.
    for _ in 0..20 {
        let (status, body) = get_through(&http, &url).await?;
        if status != 200 || body != "a" {
            return Err(format!("before any change the router answered {status} {body:?}").into());
        }
    }
    let mut out = RouteChanges {
        served: Vec::with_capacity(iterations),
        committed: Vec::with_capacity(iterations),
        stale_answers: 0,
    };
    for i in 0..iterations {
        let (next, name) = if i % 2 == 0 { (&b, "b") } else { (&a, "a") };
        let started = Instant::now();
        bench
            .store
            .update_workload(
                TENANT,
                WORKLOAD,
                WorkloadChanges {
                    endpoint: Some(Some(next.clone())),
                    ..Default::default()
                },
                unix_now(),
            )
            .await?;
        out.committed.push(started.elapsed());
        loop {
            let (status, body) = get_through(&http, &url).await?;
            if status == 200 && body == name {
                out.served.push(started.elapsed());
                break;
            }
            if status != 200 {
                return Err(format!("change {i}: the router answered {status} {body:?}").into());
            }
            out.stale_answers += 1;
            if started.elapsed() > Duration::from_secs(10) {
                return Err(
                    format!("change {i}: backend {name} never answered within 10 s").into(),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bench.shutdown().await;
    Ok(out)
}

fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn report_route_changes(r: &RouteChanges) {
    let max = r.served.iter().max().copied().unwrap_or_default();
    println!(
        "route change: {} changes; store update to first answer of the new backend: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; store commit p50 {:.2} ms; {} stale answers in total",
        r.served.len(),
        ms(quantile(&r.served, 0.50)),
        ms(quantile(&r.served, 0.99)),
        ms(max),
        ms(quantile(&r.committed, 0.50)),
        r.stale_answers,
    );
    println!(
        "RESULT changes={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} commit_p50_ms={:.2} stale={}",
        r.served.len(),
        ms(quantile(&r.served, 0.50)),
        ms(quantile(&r.served, 0.99)),
        ms(max),
        ms(quantile(&r.committed, 0.50)),
        r.stale_answers,
    );
}

async fn route_change_mode(args: &[String]) -> Fallible {
    let iterations: usize = opt(args, "--iterations")
        .unwrap_or_else(|| "200".into())
        .parse()?;
    if iterations == 0 {
        return Err("--iterations must be at least 1".into());
    }
    let r = route_changes(iterations).await?;
    report_route_changes(&r);
    Ok(())
}

// ---- reference points: the same HTTP stack with no routing ----

/// How `bare-proxy` reaches the backend.
#[derive(Clone, Copy, PartialEq)]
enum BareKind {
    /// hyper-util's pooled client (as the router does): each backend connection is
    /// its own task, requests and responses cross a channel.
    Pool,
    /// Like `Pool`, with hyper-util's HTTP/1 + HTTP/2 server (as the router does).
    PoolAuto,
    /// One backend connection per client connection, driven in the client
    /// connection's own task.
    Paired,
}

/// Proxies every request to one backend with no route lookup, credential check or
/// header rewriting: the floor of the router's HTTP stack, for diagnosis (not part of
/// the report). `--auto` uses hyper-util's auto server, `--paired` one backend
/// connection per client connection in the same task, `--per-core N` N single-thread
/// runtimes each accepting on its own SO_REUSEPORT listener (nginx's model).
async fn bare_proxy_mode(args: &[String]) -> Fallible {
    let backend = required(args, "--backend")?;
    let listen: SocketAddr = required(args, "--listen")?.parse()?;
    let kind = if args.iter().any(|a| a == "--paired") {
        BareKind::Paired
    } else if args.iter().any(|a| a == "--auto") {
        BareKind::PoolAuto
    } else {
        BareKind::Pool
    };
    let per_core: Option<usize> = opt(args, "--per-core").map(|n| n.parse()).transpose()?;
    match per_core {
        None => {
            let listener = TcpListener::bind(listen).await?;
            println!("bare proxy listening on {}", listener.local_addr()?);
            tokio::select! {
                () = bare_serve(listener, backend, kind) => {}
                () = until_signal() => {}
            }
        }
        Some(n) => {
            for _ in 0..n.max(1) {
                let backend = backend.clone();
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.set_reuseaddr(true)?;
                socket.set_reuseport(true)?;
                socket.bind(listen)?;
                let listener = socket.listen(1024)?.into_std()?;
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    rt.block_on(async move {
                        let listener = TcpListener::from_std(listener).expect("listener");
                        bare_serve(listener, backend, kind).await
                    });
                });
            }
            println!("bare proxy listening on {listen} ({n} single-thread runtimes)");
            until_signal().await;
        }
    }
    Ok(())
}

async fn bare_serve(listener: TcpListener, backend: String, kind: BareKind) {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        if kind == BareKind::Paired {
            tokio::spawn(paired_connection(stream, backend.clone()));
            continue;
        }
        let client = client.clone();
        let backend = backend.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let client = client.clone();
            let uri = format!("http://{backend}{}", req.uri().path());
            async move {
                let (mut parts, body) = req.into_parts();
                parts.uri = uri.parse().expect("uri");
                parts.headers.remove(hyper::header::HOST);
                match client.request(Request::from_parts(parts, body)).await {
                    Ok(response) => Ok(response.map(|b| b.boxed())),
                    Err(e) => Err(e),
                }
            }
        });
        tokio::spawn(async move {
            if kind == BareKind::PoolAuto {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
    }
}

/// One client connection and its own backend connection, both driven by this task.
async fn paired_connection(stream: TcpStream, backend: String) {
    let Ok(upstream) = TcpStream::connect(&backend).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let Ok((sender, connection)) =
        hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(upstream)).await
    else {
        return;
    };
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let sender = sender.clone();
        async move {
            let mut sender = sender.lock().await;
            sender.ready().await?;
            sender.send_request(req).await
        }
    });
    let server =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = server => {}
        _ = connection => {}
    }
}

// ---- connection flood ----

/// One phase of the flood measurement.
struct FloodPhase {
    name: &'static str,
    wrk: WrkResult,
    /// Flood connections completed per second; admitted ones got the sink's answer.
    admitted_per_s: f64,
    refused_per_s: f64,
    /// Store writes (a workload update each) made during the phase.
    store_writes: Vec<Duration>,
    /// CPU seconds per second of the phase: this process (router, store, backends)
    /// and its children (wrk and the flood).
    cpu_router: f64,
    cpu_clients: f64,
}

/// CPU seconds used so far by this process and by its children that have been waited
/// for (`/proc/self/stat`, in USER_HZ = 100 ticks a second).
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect()
        })
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).copied().unwrap_or(0.0) / 100.0;
    // utime, stime, cutime, cstime are fields 14-17, so 11-14 after the name.
    (tick(11) + tick(12), tick(13) + tick(14))
}

struct WrkResult {
    requests_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// A wrk duration (`123.45us`, `1.20ms`, `1.00s`) in milliseconds.
fn wrk_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1e3,
        "ms" => number,
        "s" => number * 1e3,
        "m" => number * 60e3,
        _ => return None,
    })
}

fn parse_wrk(output: &str) -> Fallible<WrkResult> {
    let field = |prefix: &str| {
        output
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.trim().to_string())
            .ok_or_else(|| format!("wrk printed no {prefix:?} line:\n{output}"))
    };
    if output.contains("Non-2xx") || output.contains("Socket errors") {
        return Err(format!("wrk saw errors:\n{output}").into());
    }
    let latency = |prefix: &str| -> Fallible<f64> {
        let value = field(prefix)?;
        wrk_ms(&value).ok_or_else(|| format!("wrk latency {value:?} is not a duration").into())
    };
    Ok(WrkResult {
        requests_per_s: field("Requests/sec:")?.parse()?,
        p50_ms: latency("50%")?,
        p99_ms: latency("99%")?,
    })
}

/// Opens, uses (one byte, the sink's 8-byte answer) and closes connections to
/// `address` until `deadline`, one every `every` at most; counts those answered and
/// those closed unanswered.
async fn flood(address: String, deadline: Instant, every: Option<Duration>) -> (u64, u64) {
    let (mut admitted, mut refused) = (0, 0);
    let mut next = tokio::time::Instant::now();
    while Instant::now() < deadline {
        if let Some(every) = every {
            tokio::time::sleep_until(next).await;
            next += every;
        }
        let Ok(mut stream) = TcpStream::connect(&address).await else {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        };
        let _ = stream.write_all(b"x").await;
        let _ = stream.shutdown().await;
        let mut answer = Vec::with_capacity(8);
        match tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await {
            Ok(Ok(_)) if answer.len() == 8 => admitted += 1,
            _ => refused += 1,
        }
    }
    (admitted, refused)
}

async fn tcp_flood_mode(args: &[String]) -> Fallible {
    let address = required(args, "--connect")?;
    let seconds: f64 = required(args, "--seconds")?.parse()?;
    let connectors: usize = opt(args, "--connectors")
        .unwrap_or_else(|| "64".into())
        .parse()?;
    let rate: f64 = opt(args, "--rate").unwrap_or_else(|| "0".into()).parse()?;
    let every = (rate > 0.0).then(|| Duration::from_secs_f64(connectors as f64 / rate));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connectors.max(1) {
        tasks.spawn(flood(address.clone(), deadline, every));
    }
    let (mut admitted, mut refused) = (0u64, 0u64);
    while let Some(counts) = tasks.join_next().await {
        let (a, r) = counts?;
        admitted += a;
        refused += r;
    }
    println!(
        "RESULT admitted={admitted} refused={refused} seconds={:.3}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn flood_phase(
    bench: &Bench,
    name: &'static str,
    wrk: &str,
    seconds: u64,
    flood_target: Option<(&str, usize, u32)>,
) -> Fallible<FloodPhase> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (router_before, clients_before) = cpu_seconds();
    let started = Instant::now();
    // The flood comes from its own process, as it would from other machines: its
    // client work is not done by the router's runtime.
    let flooder = match flood_target {
        Some((address, connectors, rate)) => Some(
            tokio::process::Command::new(std::env::current_exe()?)
                .args(["tcp-flood", "--connect", address, "--threads", "1"])
                .args(["--seconds", &seconds.to_string()])
                .args(["--connectors", &connectors.to_string()])
                .args(["--rate", &rate.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()?,
        ),
        None => None,
    };
    // Store writes meanwhile: what the API and the orchestrator would wait on.
    let stop = Arc::new(AtomicBool::new(false));
    let store = bench.store.clone();
    let probe_stop = stop.clone();
    let probe = tokio::spawn(async move {
        let mut took = Vec::new();
        while !probe_stop.load(Ordering::Relaxed) {
            let started = Instant::now();
            let changes = WorkloadChanges {
                instance_id: Some(Some(format!("i-{}", took.len()))),
                ..Default::default()
            };
            if store
                .update_workload(TENANT, "wl-probe", changes, unix_now())
                .await
                .is_ok()
            {
                took.push(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        took
    });
    let output = tokio::process::Command::new(wrk)
        .args(["-t1", "-c16", &format!("-d{seconds}s"), "--latency"])
        .args(["-H", &format!("X-Workload-Id: {WORKLOAD}")])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(bench.url())
        .output()
        .await?;
    stop.store(true, Ordering::Relaxed);
    let store_writes = probe.await?;
    if !output.status.success() {
        return Err(format!("wrk failed: {}", String::from_utf8_lossy(&output.stderr)).into());
    }
    let (mut admitted_per_s, mut refused_per_s) = (0.0, 0.0);
    if let Some(flooder) = flooder {
        let out = flooder.wait_with_output().await?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .ok_or_else(|| format!("tcp-flood printed no result: {text}"))?;
        let value = |key: &str| -> Fallible<f64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .ok_or_else(|| format!("tcp-flood result without {key}").into())
                .and_then(|v| v.parse::<f64>().map_err(Into::into))
        };
        let elapsed = value("seconds=")?;
        admitted_per_s = value("admitted=")? / elapsed;
        refused_per_s = value("refused=")? / elapsed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (router_after, clients_after) = cpu_seconds();
    Ok(FloodPhase {
        name,
        wrk: parse_wrk(&String::from_utf8_lossy(&output.stdout))?,
        admitted_per_s,
        refused_per_s,
        store_writes,
        cpu_router: (router_after - router_before) / elapsed,
        cpu_clients: (clients_after - clients_before) / elapsed,
    })
}

async fn flood_mode(args: &[String]) -> Fallible {
    let wrk = required(args, "--wrk")?;
    let seconds: u64 = opt(args, "--seconds")
        .unwrap_or_else(|| "5".into())
        .parse()?;
    let connectors: usize = opt(args, "--connectors")
        .unwrap_or_else(|| "64".into())
        .parse()?;
    let backend = start_backend("hello\n").await?.to_string();
    let sink = start_sink().await?.to_string();
    let port = free_port()?;
    let bench = Bench::empty("127.0.0.1:0".parse()?, (port, port)).await?;
    bench
        .add_workload(WORKLOAD, Some(&backend), None, None)
        .await?;
    bench
        .add_workload("wl-flooded", None, Some(&sink), Some(port))
        .await?;
    bench.add_workload("wl-probe", None, None, None).await?;
    let target = format!("127.0.0.1:{port}");

    let mut phases = vec![flood_phase(&bench, "no flood", &wrk, seconds, None).await?];
    phases.push(
        flood_phase(
            &bench,
            "1,000 connections/s, allowed",
            &wrk,
            seconds,
            Some((&target, connectors, 1000)),
        )
        .await?,
    );
    phases.push(
        flood_phase(
            &bench,
            "flood, allowed",
            &wrk,
            seconds,
            Some((&target, connectors, 0)),
        )
        .await?,
    );
    // The flooded workload now admits only 10.0.0.0/8: the same flood is refused.
    let mut narrowed = spec("wl-flooded");
    narrowed.tcp_port = Some(9000);
    narrowed.tcp_allowed_cidrs = vec!["10.0.0.0/8".into()];
    bench
        .store
        .update_workload(
            TENANT,
            "wl-flooded",
            WorkloadChanges {
                spec: Some(narrowed),
                ..Default::default()
            },
            unix_now(),
        )
        .await?;
    let waited = Instant::now();
    while bench
        .router
        .table
        .get("wl-flooded")
        .is_some_and(|r| r.tcp_admits(std::net::IpAddr::from([127, 0, 0, 1])))
    {
        if waited.elapsed() > Duration::from_secs(10) {
            return Err("the router never saw the narrowed tcp_allowed_cidrs".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    phases.push(
        flood_phase(
            &bench,
            "flood from outside tcp_allowed_cidrs",
            &wrk,
            seconds,
            Some((&target, connectors, 0)),
        )
        .await?,
    );
    bench.shutdown().await;

    println!("| phase | HTTP req/s | HTTP p50 | HTTP p99 | flood connections/s (answered / refused) | store write p50 | store write p99 | store write max | CPU: router process / wrk + flood |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &phases {
        let max = p.store_writes.iter().max().copied().unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.2} ms | {:.2} ms | {:.0} / {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} / {:.2} cores |",
            p.name,
            p.wrk.requests_per_s,
            p.wrk.p50_ms,
            p.wrk.p99_ms,
            p.admitted_per_s,
            p.refused_per_s,
            ms(quantile(&p.store_writes, 0.50)),
            ms(quantile(&p.store_writes, 0.99)),
            ms(max),
            p.cpu_router,
            p.cpu_clients,
        );
    }
    for (i, p) in phases.iter().enumerate() {
        println!(
            "RESULT phase={i} rps={:.0} p50_ms={:.2} p99_ms={:.2} admitted_per_s={:.0} refused_per_s={:.0} store_p50_ms={:.2} store_p99_ms={:.2}",
            p.wrk.requests_per_s,
            p.wrk.p50_ms,
            p.wrk.p99_ms,
            p.admitted_per_s,
            p.refused_per_s,
            ms(quantile(&p.store_writes, 0.50)),
            ms(quantile(&p.store_writes, 0.99)),
        );
    }
    Ok(())
}

// ---- helpers for the script ----

async fn probe_mode(args: &[String]) -> Fallible {
    let url = required(args, "--url")?;
    let http = client()?;
    let mut request = http.get(&url);
    for header in all(args, "--header") {
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| format!("--header {header:?} is not `Name: value`"))?;
        request = request.header(name.trim(), value.trim());
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    if status != 200 {
        return Err(format!("{url} answered {status}: {body}").into());
    }
    if let Some(expect) = opt(args, "--expect") {
        if !body.contains(&expect) {
            return Err(format!("{url} answered 200 without {expect:?}: {body:?}").into());
        }
    }
    print!("{body}");
    Ok(())
}

fn free_ports_mode(args: &[String]) -> Fallible {
    let n: usize = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(1);
    // Held together, so the ports are distinct.
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port().to_string()))
        .collect::<Result<_, _>>()?;
    println!("{}", ports.join(" "));
    Ok(())
}

fn free_port() -> Fallible<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---- in-process: smoke (cargo test) and cargo bench ----

async fn in_process(full: bool) -> Fallible {
    // HTTP: a request through the router reaches the backend; the credential matters.
    let backend = start_backend("hello\n").await?.to_string();
    let sink = start_sink().await?.to_string();
    let tcp_port = free_port()?;
    let bench = Bench::start(
        "127.0.0.1:0".parse()?,
        &backend,
        Some(&sink),
        Some(tcp_port),
    )
    .await?;
    let http = client()?;
    for _ in 0..10 {
        let (status, body) = get_through(&http, &bench.url()).await?;
        assert_eq!(
            (status, body.as_str()),
            (200, "hello\n"),
            "through the router"
        );
    }
    let anonymous = http
        .get(bench.url())
        .header("x-workload-id", WORKLOAD)
        .send()
        .await?;
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "no credential, no backend"
    );
    println!("http: requests through the router reach the backend");

    // TCP: every byte sent through the router's listener reaches the sink.
    let seconds = if full { 2.0 } else { 0.3 };
    let through = send_bulk(
        &format!("127.0.0.1:{tcp_port}"),
        2,
        Duration::from_secs_f64(seconds),
    )
    .await?;
    assert!(through.bytes > 0);
    let direct = send_bulk(&sink, 2, Duration::from_secs_f64(seconds)).await?;
    println!(
        "tcp: {} bytes through the router ({:.0} MB/s), counted by the sink; direct {:.0} MB/s",
        through.bytes,
        through.mb_per_s(),
        direct.mb_per_s()
    );
    bench.shutdown().await;

    // Route changes are seen by the next requests.
    let iterations = if full { 200 } else { 10 };
    let r = route_changes(iterations).await?;
    assert_eq!(r.served.len(), iterations, "every change was observed");
    report_route_changes(&r);
    if full {
        println!("(the comparison with nginx and haproxy: scripts/bench-router.sh)");
    }
    Ok(())
}
