//! `computearbitrage serve`: opens the store, makes sure a token exists, loads the
//! catalog, starts the collectors and serves gRPC until SIGINT/SIGTERM.

use crate::auth::{self, Authenticator, Bootstrap};
use crate::config::{Config, StoreEngine};
use crate::error::ServiceError;
use crate::grpc::admin::AdminApi;
use crate::grpc::pricing::{PricingApi, SystemApi};
use crate::grpc::workloads::WorkloadsApi;
use crate::routing::{Feed, PublicAddress, RunningRouter};
use computearbitrage_api::pb::admin_server::AdminServer;
use computearbitrage_api::pb::pricing_server::PricingServer;
use computearbitrage_api::pb::system_server::SystemServer;
use computearbitrage_api::pb::workloads_server::WorkloadsServer;
use computearbitrage_core::WorkloadStatus;
use computearbitrage_driver_local::LocalDriver;
use computearbitrage_orchestrator::pricing::collect::{unix_now, CollectorWorker};
use computearbitrage_orchestrator::pricing::snapshot::{
    SnapshotCollector, SnapshotSource, SOURCE as SNAPSHOT_SOURCE,
};
use computearbitrage_orchestrator::pricing::PriceBook;
use computearbitrage_orchestrator::worker::Supervisor;
use computearbitrage_orchestrator::workloads::background::{
    DriverEventListener, LostInstanceWatch, OrphanSweeper, Rebalancer, RunResumer,
    UnhealthyReplacer,
};
use computearbitrage_orchestrator::workloads::monitor::{Monitor, MonitorWorker};
use computearbitrage_orchestrator::workloads::notify::NotificationSender;
use computearbitrage_orchestrator::workloads::retention::RetentionCleaner;
use computearbitrage_orchestrator::workloads::{Orchestrator, Settings};
use computearbitrage_store::{SqliteStore, Store};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::wrappers::TcpListenerStream;

/// Runs the service until `shutdown` resolves.
pub async fn serve(
    config: Config,
    bootstrap_token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    // The data directory holds the secrets and the database: the service's alone,
    // also when an earlier version or an operator made it wider.
    computearbitrage_driver_local::isolation::private_dir(&config.data_dir, 0o700).map_err(
        |e| {
            ServiceError::io(
                format!("cannot create data_dir {}", config.data_dir.display()),
                e,
            )
        },
    )?;
    let mut local_options = config.workloads.local.options(&config.data_dir)?;
    let store: Arc<dyn Store> = match config.store.engine {
        StoreEngine::Sqlite => Arc::new(SqliteStore::open(&config.sqlite_file())?),
    };
    for suffix in ["", "-wal", "-shm"] {
        let mut path = config.sqlite_file().into_os_string();
        path.push(suffix);
        set_private(std::path::Path::new(&path))?;
    }
    tracing::info!(engine = store.engine(), path = %config.sqlite_file().display(), "store opened");

    let bootstrap = auth::bootstrap(
        store.as_ref(),
        bootstrap_token.as_deref(),
        &config.data_dir,
        unix_now(),
    )
    .await?;
    let authenticator = Authenticator::load(store.as_ref(), config.api.rate_limit()).await?;

    // Serve the last stored prices at once; collectors refresh them in the background.
    let book = Arc::new(PriceBook::default());
    let warm = book.reload(store.as_ref()).await?;
    tracing::info!(offers = warm, "catalog loaded from store");

    let mut supervisor = Supervisor::new();
    if config.pricing.snapshot.enabled {
        let source = if config.pricing.snapshot.dir.as_os_str().is_empty() {
            SnapshotSource::Bundled
        } else {
            SnapshotSource::Directory(config.pricing.snapshot.dir.clone())
        };
        let collector = SnapshotCollector::new(
            source,
            Duration::from_secs(config.pricing.snapshot.interval_seconds),
        );
        let stored = store
            .collector_statuses()
            .await?
            .into_iter()
            .find(|s| s.source == SNAPSHOT_SOURCE)
            .and_then(|s| s.fingerprint);
        // A first start has no catalog to serve: load the snapshot before listening.
        let mut worker =
            CollectorWorker::new(Arc::new(collector), store.clone(), book.clone(), stored);
        if warm == 0 {
            use computearbitrage_orchestrator::worker::Worker;
            worker.tick().await?;
        }
        supervisor.spawn(worker);
    }

    // Before listening: every secret file exists (0600) once the service says it is up.
    let storage_signer = auth::load_or_create_storage_url_key(&config.data_dir)?;
    let access_tokens = auth::load_or_create_access_token_key(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| {
            ServiceError::io(
                format!("cannot listen on {} (config key `listen`)", config.listen),
                e,
            )
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| ServiceError::io("cannot read the listening address", e))?;
    let scheme = if config.tls.enabled() {
        "https"
    } else {
        "http"
    };
    // Workload storage. The local backend's signed URLs are served on this port too,
    // so instances need to reach only the service.
    let storage_base = if !config.storage.public_url.is_empty() {
        config.storage.public_url.clone()
    } else if address.ip().is_unspecified() {
        tracing::warn!(%address, "listening on every address; local storage URLs use 127.0.0.1 (set storage.public_url for instances elsewhere)");
        format!("{scheme}://127.0.0.1:{}", address.port())
    } else {
        format!("{scheme}://{address}")
    };
    let storage = Arc::new(computearbitrage_storage::Storage::open(
        &config.storage,
        &config.data_dir,
        storage_signer,
        &storage_base,
    )?);
    tracing::info!(backend = ?storage.kind(), url = %storage_base, "workload storage");
    // An instance with its own network reaches only the service, through a forwarded
    // plain-TCP port at its pair's address: URLs that name the service over TLS (the
    // certificate does not name that address), or another host (a cloud's object
    // store, with no route from the namespace), cannot work there.
    if let computearbitrage_driver_local::Network::Namespace(_) = local_options.network {
        let why = if !storage_base.starts_with("http://") {
            Some(format!(
                "the service's URLs for agents are {storage_base}, not plain http://"
            ))
        } else if storage.kind() != computearbitrage_storage::BackendKind::Local {
            Some(format!(
                "storage is {:?}, whose signed URLs point at another host",
                storage.kind()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            if config.workloads.local.network == "namespace" {
                return Err(ServiceError::config(format!(
                    "invalid value for config key `workloads.local.network`: `namespace` cannot work here: {why}, and an instance with its own network reaches only the service, over a forwarded plain-TCP port; use `auto` or `loopback`"
                )));
            }
            tracing::warn!(reason = %why, "local instances use the loopback interface, not a network namespace each");
            local_options.network = computearbitrage_driver_local::Network::Loopback;
        }
    }

    // Workloads: the local driver stands in for every cloud on embedded defaults.
    if local_options.run_as == computearbitrage_driver_local::RunAs::Service
        && computearbitrage_driver_local::isolation::is_root()
    {
        tracing::warn!("workloads.local.run_as is `service`: local workloads run as root, with the service's rights");
    }
    tracing::info!(work_root = %local_options.work_root.display(), run_as = ?local_options.run_as, network = ?local_options.network, "local driver isolation");
    if local_options.network == computearbitrage_driver_local::Network::Loopback {
        tracing::warn!("local instances share the loopback interface: any local process can reach a workload without the router (a network namespace each needs root and iproute2; workloads.local.network)");
    }
    let local = LocalDriver::open(&config.data_dir.join("local-driver"), local_options)?;
    let monitor = Monitor::new(config.monitor.max_concurrent_checks as usize);
    let orchestrator = Orchestrator::with_one_driver(
        store.clone(),
        book.clone(),
        config.pricing.scoring.policy(),
        Arc::new(local.clone()),
        monitor.clone(),
        Settings {
            max_concurrent_workloads: config.workloads.max_concurrent_workloads,
            wait_running_timeout: Duration::from_secs(
                config.workloads.wait_running_timeout_seconds,
            ),
            interruption_delay: Duration::from_millis(config.workloads.interruption_delay_ms),
            pause_at: std::env::var("CA_TEST_PAUSE_AT")
                .ok()
                .filter(|v| !v.is_empty()),
            access_tokens,
            tcp_ports: config.router.tcp_port_min..=config.router.tcp_port_max,
            agent_heartbeat: Duration::from_millis(config.workloads.agent_heartbeat_ms),
            migration_cooldown: Duration::from_secs(config.workloads.migration_cooldown_seconds),
            drain: Duration::from_millis(config.workloads.drain_ms),
        },
    );
    // Agents reach the service where storage URLs point: its own HTTP side.
    orchestrator.attach_agents(
        computearbitrage_orchestrator::workloads::agents::AgentLink {
            service_url: storage_base.clone(),
            storage: storage.clone(),
        },
    );
    local.resume(&storage_base).await;
    for workload in store
        .workloads_in(&[WorkloadStatus::Running, WorkloadStatus::Unhealthy])
        .await?
    {
        monitor.watch(&workload);
    }
    tracing::info!(watched = monitor.watched(), "health monitor loaded");
    supervisor.spawn(RunResumer {
        orchestrator: orchestrator.clone(),
        interval: Duration::from_secs(5),
    });
    supervisor.spawn(UnhealthyReplacer {
        orchestrator: orchestrator.clone(),
        interval: Duration::from_secs(1),
    });
    supervisor.spawn(Rebalancer {
        orchestrator: orchestrator.clone(),
        interval: Duration::from_millis(config.workloads.rebalance_check_ms),
    });
    supervisor.spawn(LostInstanceWatch {
        orchestrator: orchestrator.clone(),
        interval: Duration::from_millis(config.workloads.agent_heartbeat_ms.max(100)),
    });
    supervisor.spawn(DriverEventListener {
        orchestrator: orchestrator.clone(),
        driver: Arc::new(local),
    });
    supervisor.spawn(MonitorWorker {
        monitor: monitor.clone(),
        handler: orchestrator.clone(),
        tick: Duration::from_millis(config.monitor.tick_ms),
    });
    supervisor.spawn(OrphanSweeper {
        orchestrator: orchestrator.clone(),
        interval: Duration::from_secs(config.workloads.orphan_sweep_interval_seconds),
    });
    let webhook_ca = if config.notifications.ca_file.as_os_str().is_empty() {
        None
    } else {
        Some(std::fs::read(&config.notifications.ca_file).map_err(|e| {
            ServiceError::config(format!(
                "cannot read notifications.ca_file {}: {e}",
                config.notifications.ca_file.display()
            ))
        })?)
    };
    let allow_private = config.notifications.allow_private_targets;
    supervisor.spawn(NotificationSender {
        store: store.clone(),
        http: computearbitrage_orchestrator::workloads::webhook_target::client(
            allow_private,
            webhook_ca.as_deref(),
        )
        .map_err(ServiceError::config)?,
        interval: Duration::from_millis(500),
        allow_private,
        busy: Default::default(),
    });

    let grace = Duration::from_secs(config.shutdown_grace_seconds);
    let router = if config.router.enabled {
        Some(RunningRouter::start(store.clone(), &config.router, grace, Feed::Local).await?)
    } else {
        None
    };
    let public = PublicAddress::new(
        &config.router,
        router
            .as_ref()
            .map(|r| r.http_address)
            .unwrap_or(config.router.listen),
    );

    print_banner(&format!("{scheme}://{address}"), &bootstrap);
    let router_line = match &router {
        Some(router) => format!(
            "Workloads are reachable through the router at {}",
            router.describe()
        ),
        None => format!(
            "Workloads are reachable through the router at {} (router.enabled is false: run `computearbitrage router` there)",
            public.base_url()
        ),
    };
    say(&router_line);
    tracing::info!(%address, "serving gRPC");

    supervisor.spawn(RetentionCleaner::new(
        store.clone(),
        storage.clone(),
        Duration::from_secs(config.storage.retention_sweep_interval_minutes * 60),
    ));

    let interceptor = authenticator.clone().interceptor();
    let pricing = PricingServer::with_interceptor(
        PricingApi {
            book: book.clone(),
            policy: config.pricing.scoring.policy(),
        },
        interceptor.clone(),
    );
    let system = SystemServer::with_interceptor(
        SystemApi {
            book: book.clone(),
            store: store.clone(),
        },
        interceptor.clone(),
    );
    let workloads = WorkloadsServer::with_interceptor(
        WorkloadsApi {
            orchestrator: orchestrator.clone(),
            public,
            storage: storage.clone(),
        },
        interceptor.clone(),
    );
    let admin = AdminServer::with_interceptor(
        AdminApi {
            orchestrator: orchestrator.clone(),
            authenticator: authenticator.clone(),
            allow_private_webhooks: allow_private,
        },
        interceptor,
    );
    // Stop accepting on the signal, let in-flight calls finish, and close connections
    // still open after the grace period (an idle client must not hold shutdown hostage).
    let (signalled_tx, signalled_rx) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        let _ = signalled_tx.send(());
    };
    let mut builder = tonic::transport::Server::builder();
    if config.tls.enabled() {
        builder = builder.tls_config(server_tls(&config.tls)?).map_err(|e| {
            ServiceError::config(format!(
                "cannot serve TLS with tls.cert_file and tls.key_file: {e}"
            ))
        })?;
        tracing::info!(cert = %config.tls.cert_file.display(), "gRPC API serves TLS");
    }
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(pricing)
        .add_service(system)
        .add_service(workloads)
        .add_service(admin);
    let agents = orchestrator.clone();
    let routes = routes
        .routes()
        .into_axum_router()
        .route(
            "/agent/v1/*call",
            axum::routing::any(move |request: axum::extract::Request| {
                crate::agent_api::handle(agents.clone(), request)
            }),
        )
        .route(
            "/storage/v1/*key",
            axum::routing::any(move |request: axum::extract::Request| {
                let storage = storage.clone();
                async move {
                    computearbitrage_storage::http::handle(&storage, request)
                        .await
                        .map(axum::body::Body::new)
                }
            }),
        );
    // HTTP/1.1 too: signed storage URLs are fetched by plain HTTP clients.
    let server = builder
        .accept_http1(true)
        .add_routes(tonic::service::Routes::from(routes))
        .serve_with_incoming_shutdown(nodelay_incoming(listener), signal);
    let deadline = async move {
        if signalled_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(grace_seconds = grace.as_secs(), "connections still open after the grace period; closing them");
            Ok(())
        }
    };
    tracing::info!("shutting down");
    if let Some(router) = router {
        router.shutdown().await;
    }
    supervisor.shutdown(grace).await;
    result.map_err(|e| ServiceError::io("gRPC server failed", std::io::Error::other(e)))
}

/// Mode 0600 on a file of the service's, if it exists.
pub(crate) fn set_private(path: &std::path::Path) -> Result<(), ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ServiceError::io(
            format!("cannot make {} private", path.display()),
            e,
        )),
    }
}

/// The TLS identity of the gRPC API, read from the configured PEM files.
fn server_tls(
    tls: &crate::config::TlsConfig,
) -> Result<tonic::transport::ServerTlsConfig, ServiceError> {
    let read = |path: &std::path::Path, key: &str| {
        std::fs::read(path)
            .map_err(|e| ServiceError::config(format!("cannot read {key} {}: {e}", path.display())))
    };
    let cert = read(&tls.cert_file, "tls.cert_file")?;
    let key = read(&tls.key_file, "tls.key_file")?;
    if !String::from_utf8_lossy(&cert).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ServiceError::config(format!(
            "tls.cert_file {} holds no PEM certificate; give the certificate chain in PEM",
            tls.cert_file.display()
        )));
    }
    if !String::from_utf8_lossy(&key).contains("PRIVATE KEY-----") {
        return Err(ServiceError::config(format!(
            "tls.key_file {} holds no PEM private key; give the certificate's key in PEM",
            tls.key_file.display()
        )));
    }
    Ok(tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key)))
}

/// The accepted connections of `listener`, with TCP_NODELAY set on each: gRPC
/// writes a response as several small frames, and with Nagle on each one after the
/// first waits for the client's delayed ACK (about 40 ms per call on Linux).
pub fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        if let Ok(stream) = &accepted {
            if let Err(e) = stream.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY on a gRPC connection");
            }
        }
        accepted
    })
}

/// One line on stdout. A closed stdout (the reader went away) is not a reason to stop
/// serving, so write errors are ignored, never panicked on as `println!` would.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What a person starting the service needs to know, on stdout.
fn print_banner(endpoint: &str, bootstrap: &Bootstrap) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "computearbitrage listening on {endpoint}");
    match bootstrap {
        Bootstrap::Generated { token, file } => {
            let _ = writeln!(
                out,
                "Generated an API token for tenant \"default\" (printed only this once):\n  {token}\nIt is saved, readable only by you, in {}; the service keeps only its hash.",
                file.display()
            );
            let _ = writeln!(
                out,
                "Point Terraform at this service:\n  export COMPUTEARBITRAGE_ENDPOINT={endpoint}\n  export COMPUTEARBITRAGE_TOKEN=$(cat {})",
                file.display()
            );
        }
        Bootstrap::FromEnvironment => {
            let _ = writeln!(
                out,
                "Token: the value of COMPUTEARBITRAGE_BOOTSTRAP_TOKEN (tenant \"default\").\nPoint Terraform at this service:\n  export COMPUTEARBITRAGE_ENDPOINT={endpoint}\n  export COMPUTEARBITRAGE_TOKEN=<your bootstrap token>"
            );
        }
        Bootstrap::Existing => {
            let _ = writeln!(
                out,
                "Point Terraform at this service:\n  export COMPUTEARBITRAGE_ENDPOINT={endpoint}\n  export COMPUTEARBITRAGE_TOKEN=<a token of this service, e.g. $(cat <data_dir>/{})>",
                auth::GENERATED_TOKEN_FILE
            );
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn grpc_connections_are_accepted_with_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = Box::pin(nodelay_incoming(listener));
        let _client = tokio::net::TcpStream::connect(address).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
