//! Runs the router: inside `serve` (following the store's in-process change feed), or
//! alone as `computearbitrage router` (following the service's `WatchRoutes` stream,
//! reading routes and writing connection records through its own store handle). Also
//! builds the addresses users are given: each workload's `endpoint` and
//! `tcp_endpoint`.

use crate::config::RouterConfig;
use crate::error::ServiceError;
use computearbitrage_orchestrator::worker::{Supervisor, Worker};
use computearbitrage_router::follow::Follower;
use computearbitrage_router::http::{self, HttpRouter, HttpSettings};
use computearbitrage_router::limits::{ConnectionLimits, RateLimit};
use computearbitrage_router::metrics::{self, Metrics};
use computearbitrage_router::tcp::{TcpRouter, TcpSettings};
use computearbitrage_router::RouteTable;
use computearbitrage_store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Where the route table hears about changes.
#[derive(Debug, Clone)]
pub enum Feed {
    /// The store's in-process change feed (the router runs inside `serve`).
    Local,
    /// A running service's `Admin/WatchRoutes` stream (a separate router process).
    Remote {
        target: computearbitrage_api::connect::Target,
        token: String,
    },
}

/// The addresses users reach workloads at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicAddress {
    /// `http://host:port` without a trailing slash.
    base_url: String,
    base_domain: String,
    /// Host of TCP endpoints.
    tcp_host: String,
}

impl PublicAddress {
    /// From the config and the address the router actually bound.
    pub fn new(config: &RouterConfig, bound: SocketAddr) -> PublicAddress {
        let base_url = if config.public_url.is_empty() {
            format!("http://{bound}")
        } else {
            config.public_url.trim_end_matches('/').to_string()
        };
        let authority = base_url.split("://").nth(1).unwrap_or_default();
        let host = match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => authority,
        };
        PublicAddress {
            tcp_host: host.to_string(),
            base_url,
            base_domain: config.base_domain.trim_end_matches('.').to_string(),
        }
    }

    /// The router's own URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The stable HTTP endpoint of a workload, ending in `/`.
    pub fn endpoint(&self, workload_id: &str) -> String {
        if self.base_domain.is_empty() {
            return format!("{}/w/{workload_id}/", self.base_url);
        }
        let (scheme, authority) = self.base_url.split_once("://").unwrap_or(("http", ""));
        let port = match authority.rsplit_once(':') {
            Some((_, port)) if port.bytes().all(|b| b.is_ascii_digit()) => format!(":{port}"),
            _ => String::new(),
        };
        format!("{scheme}://{workload_id}.{}{port}/", self.base_domain)
    }

    /// `host:port` of a workload's TCP listener.
    pub fn tcp_endpoint(&self, port: u16) -> String {
        format!("{}:{port}", self.tcp_host)
    }
}

/// A started router.
pub struct RunningRouter {
    pub http_address: SocketAddr,
    pub metrics_address: Option<SocketAddr>,
    pub table: Arc<RouteTable>,
    pub tcp: Arc<TcpRouter>,
    pub metrics: Arc<Metrics>,
    stop: watch::Sender<bool>,
    servers: JoinSet<()>,
    supervisor: Supervisor,
    grace: Duration,
}

impl RunningRouter {
    /// Where it listens, for the start-up line: `http://…` and the metrics address.
    pub fn describe(&self) -> String {
        let metrics = self
            .metrics_address
            .map(|m| format!(" (metrics: http://{m}/metrics)"))
            .unwrap_or_default();
        format!("http://{}{metrics}", self.http_address)
    }

    /// Loads the routes, binds the listeners and starts serving.
    pub async fn start(
        store: Arc<dyn Store>,
        config: &RouterConfig,
        grace: Duration,
        feed: Feed,
    ) -> Result<RunningRouter, ServiceError> {
        let table = RouteTable::new();
        let metrics = Metrics::new();
        let mut supervisor = Supervisor::new();
        match feed {
            Feed::Local => {
                let follower = Follower::start(table.clone(), store.clone()).await?;
                supervisor.spawn(RouteFollower { follower });
            }
            Feed::Remote { target, token } => {
                table.reload(store.as_ref()).await?;
                supervisor.spawn(crate::routing_remote::RemoteFollower::new(
                    table.clone(),
                    store.clone(),
                    target,
                    token,
                ));
            }
        }

        let connect_timeout = Duration::from_millis(config.connect_timeout_ms);
        let settings = HttpSettings {
            base_domain: config.base_domain.clone(),
            retry_after_seconds: config.retry_after_seconds,
            connect_timeout,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms.max(1)),
            max_header_bytes: config.max_header_bytes as usize,
            connection_limits: ConnectionLimits::new(
                config.max_connections as usize,
                config.max_connections_per_client as usize,
            ),
            rate_limit: (config.rate_limit_per_workload > 0).then(|| RateLimit {
                per_second: f64::from(config.rate_limit_per_workload),
                burst: f64::from(config.rate_limit_burst.max(1)),
            }),
        };
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n as usize,
        };
        let (stop, _) = watch::channel(false);
        let per_core = http::serve_per_core(
            config.listen,
            threads,
            || HttpRouter::new(table.clone(), metrics.clone(), settings.clone()),
            stop.subscribe(),
            grace,
        )
        .map_err(|e| {
            ServiceError::io(
                format!(
                    "cannot listen on {} (config key `router.listen`)",
                    config.listen
                ),
                e,
            )
        })?;
        let http_address = per_core.address;
        let mut servers = JoinSet::new();
        let http_threads = per_core.threads;
        servers.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || {
                for thread in http_threads {
                    let _ = thread.join();
                }
            })
            .await;
        });

        let metrics_address = if config.metrics_listen.is_empty() {
            None
        } else {
            let address: SocketAddr = config.metrics_listen.parse().map_err(|_| {
                ServiceError::config(format!(
                    "router.metrics_listen {:?} is not an address",
                    config.metrics_listen
                ))
            })?;
            let listener = tokio::net::TcpListener::bind(address).await.map_err(|e| {
                ServiceError::io(
                    format!("cannot listen on {address} (config key `router.metrics_listen`)"),
                    e,
                )
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| ServiceError::io("cannot read the metrics address", e))?;
            servers.spawn(metrics::serve(
                listener,
                metrics.clone(),
                stopped(stop.subscribe()),
            ));
            Some(bound)
        };

        let tcp = TcpRouter::new(
            table.clone(),
            metrics.clone(),
            store,
            TcpSettings {
                bind: config.tcp_bind,
                router_id: config.id.clone(),
                connect_timeout,
                max_connections_per_workload: config.tcp_max_connections_per_workload as usize,
            },
        );
        let tcp_run = tcp.clone().run(stopped(stop.subscribe()), grace);
        servers.spawn(async move {
            if let Err(e) = tcp_run.await {
                tracing::error!(error = %e, retryable = e.is_retryable(), "TCP router stopped");
            }
        });
        supervisor.spawn(ConnectionFlusher {
            tcp: tcp.clone(),
            table: table.clone(),
            metrics: metrics.clone(),
        });
        tracing::info!(address = %http_address, metrics = ?metrics_address, routes = table.len(), "router serving");
        Ok(RunningRouter {
            http_address,
            metrics_address,
            table,
            tcp,
            metrics,
            stop,
            servers,
            supervisor,
            grace,
        })
    }

    /// Stops accepting, drains HTTP and TCP for up to the grace period, stops workers.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(self.grace + Duration::from_secs(3), async {
            while self.servers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.servers.abort_all();
        }
        self.supervisor.shutdown(self.grace).await;
    }
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Applies the store's announced changes to the route table.
struct RouteFollower {
    follower: Follower,
}

#[async_trait::async_trait]
impl Worker for RouteFollower {
    type Error = ServiceError;
    fn name(&self) -> String {
        "router:follow".into()
    }

    fn interval(&self) -> Duration {
        Duration::ZERO
    }

    async fn tick(&mut self) -> Result<(), ServiceError> {
        // Bounded, so a shutdown is seen within this wait.
        self.follower.next(Duration::from_millis(250)).await?;
        Ok(())
    }
}

/// Writes the byte counts of open TCP connections to their rows, and drops the
/// metric series of workloads that are gone.
struct ConnectionFlusher {
    tcp: Arc<TcpRouter>,
    table: Arc<RouteTable>,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl Worker for ConnectionFlusher {
    type Error = ServiceError;
    fn name(&self) -> String {
        "router:connection-bytes".into()
    }

    fn interval(&self) -> Duration {
        // Connection rows appear and go within this; one transaction each time.
        Duration::from_millis(250)
    }

    async fn tick(&mut self) -> Result<(), ServiceError> {
        self.metrics.prune(|id| self.table.get(id).is_some());
        Ok(self.tcp.flush().await?)
    }
}

/// `computearbitrage router`: the router as its own process. It opens the same store
/// as the service (the route table and connection records live there) and follows the
/// service's route changes at `service_endpoint`.
pub async fn run_standalone(
    config: crate::config::Config,
    service: computearbitrage_api::connect::Target,
    token: String,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServiceError> {
    let store: Arc<dyn Store> = match config.store.engine {
        crate::config::StoreEngine::Sqlite => {
            let path = config.sqlite_file();
            if !path.exists() {
                return Err(ServiceError::config(format!(
                    "no database at {}; point `data_dir` (or --data-dir) at the service's data directory",
                    path.display()
                )));
            }
            Arc::new(computearbitrage_store::SqliteStore::open(&path)?)
        }
    };
    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let router = RunningRouter::start(
        store,
        &config.router,
        grace,
        Feed::Remote {
            target: service,
            token,
        },
    )
    .await?;
    crate::server::say(&format!(
        "computearbitrage router listening on {}",
        router.describe()
    ));
    shutdown.await;
    tracing::info!("router shutting down");
    router.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_use_the_path_form_or_the_host_form() {
        let mut config = RouterConfig::default();
        let bound: SocketAddr = "127.0.0.1:7080".parse().unwrap();
        let public = PublicAddress::new(&config, bound);
        assert_eq!(public.endpoint("wl-1"), "http://127.0.0.1:7080/w/wl-1/");
        assert_eq!(public.tcp_endpoint(20000), "127.0.0.1:20000");

        config.public_url = "https://run.example.com/".into();
        config.base_domain = "run.example.com.".into();
        let public = PublicAddress::new(&config, bound);
        assert_eq!(public.endpoint("wl-1"), "https://wl-1.run.example.com/");
        assert_eq!(public.tcp_endpoint(20001), "run.example.com:20001");

        config.public_url = "http://edge:8080".into();
        let public = PublicAddress::new(&config, bound);
        assert_eq!(public.endpoint("wl-1"), "http://wl-1.run.example.com:8080/");
    }
}
