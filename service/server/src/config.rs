//! Service configuration: defaults, then a TOML file, then `COMPUTEARBITRAGE_*`
//! environment variables, then command-line flags. Every key is documented in
//! `docs/configuration.md`; a test keeps that table complete.
//!
//! Environment variables name a key by upper-casing its dotted path and writing `__`
//! for each dot: `pricing.snapshot.interval_seconds` is
//! `COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS`.

use crate::error::ServiceError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Environment variables with the prefix that are not config keys.
const NON_CONFIG_ENV: &[&str] = &[
    "COMPUTEARBITRAGE_BOOTSTRAP_TOKEN",
    "COMPUTEARBITRAGE_CA_FILE",
    "COMPUTEARBITRAGE_CONFIG",
    "COMPUTEARBITRAGE_ENDPOINT",
    "COMPUTEARBITRAGE_TOKEN",
];
const ENV_PREFIX: &str = "COMPUTEARBITRAGE_";

/// The whole service configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC API listens on. Port 0 picks a free port and prints it.
    pub listen: SocketAddr,
    /// Directory for the state database and the generated admin token. Created if missing.
    pub data_dir: PathBuf,
    /// Log filter in `tracing` syntax (`info`, `computearbitrage=debug`). `RUST_LOG` wins if set.
    pub log_level: String,
    /// Log line format on stderr: `text` or `json`.
    pub log_format: LogFormat,
    /// Seconds that in-flight calls and background workers get to finish at shutdown before connections are closed.
    pub shutdown_grace_seconds: u64,
    /// TLS of the gRPC API.
    pub tls: TlsConfig,
    /// Limits of the gRPC API.
    pub api: ApiConfig,
    /// Where state is kept.
    pub store: StoreConfig,
    /// Price collection and placement scoring.
    pub pricing: PricingConfig,
    /// Workload orchestration.
    pub workloads: WorkloadsConfig,
    /// The health monitor.
    pub monitor: MonitorConfig,
    /// Webhook notifications.
    pub notifications: NotificationsConfig,
    /// The HTTP/TCP router that gives every workload one stable endpoint.
    pub router: RouterConfig,
    /// Workload storage: where namespaces live and how instances reach them.
    pub storage: computearbitrage_storage::StorageConfig,
}

/// Limits of the gRPC API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Calls per second each token may make on average; beyond it calls get RESOURCE_EXHAUSTED with the wait in `x-computearbitrage-retry-after-ms`. 0 turns the limit off.
    pub rate_limit_per_second: f64,
    /// Calls a token may make at once before the average applies.
    pub rate_limit_burst: u32,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            rate_limit_per_second: 50.0,
            rate_limit_burst: 200,
        }
    }
}

impl ApiConfig {
    pub fn rate_limit(&self) -> Option<crate::auth::RateLimit> {
        (self.rate_limit_per_second > 0.0).then(|| crate::auth::RateLimit {
            per_second: self.rate_limit_per_second,
            burst: f64::from(self.rate_limit_burst.max(1)),
        })
    }
}

/// TLS of the gRPC API. Both files set: the API serves TLS only (clients use
/// `https://`); neither: plain gRPC, for loopback or behind a TLS-terminating proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate (chain) the gRPC API presents. Empty: no TLS.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate; keep it readable by the service only.
    pub key_file: PathBuf,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

/// The router (see docs/routing.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouterConfig {
    /// Whether `serve` runs the router in the same process. Turn it off when a separate `computearbitrage router` process serves the routes.
    pub enabled: bool,
    /// Address the HTTP router listens on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The router's URL as users reach it, used to build each workload's `endpoint`. Empty: `http://` + the listen address.
    pub public_url: String,
    /// Base domain of host routing: `{workload-id}.{base_domain}` names a workload, and endpoints use that form. Empty: host routing is off and endpoints use the `/w/{workload-id}/` path form.
    pub base_domain: String,
    /// Address of the Prometheus `/metrics` endpoint. Empty turns it off.
    pub metrics_listen: String,
    /// Address the per-workload TCP listeners bind.
    pub tcp_bind: std::net::IpAddr,
    /// First port of the range TCP listener ports are allocated from.
    pub tcp_port_min: u16,
    /// Last port of that range (inclusive).
    pub tcp_port_max: u16,
    /// Most TCP connections open at once to one workload; more are closed at once.
    pub tcp_max_connections_per_workload: u32,
    /// Names this router's rows in the connection table; its rows are cleared when a router with this id starts.
    pub id: String,
    /// `Retry-After` seconds of the 503 answer for a workload that is starting, stopping or moving.
    pub retry_after_seconds: u32,
    /// Milliseconds to wait for a backend to accept a connection.
    pub connect_timeout_ms: u64,
    /// HTTP router threads, each a single-thread runtime with its own listener (SO_REUSEPORT) and backend pool. 0: one per CPU.
    pub threads: u32,
    /// Milliseconds a client has to send a whole request head once it started one; a slower client is closed.
    pub header_read_timeout_ms: u64,
    /// Milliseconds a kept-alive HTTP connection may stay idle between requests before it is closed.
    pub idle_timeout_ms: u64,
    /// Longest request head (request line and headers) in bytes; a longer one is answered 431.
    pub max_header_bytes: u32,
    /// HTTP connections the router holds open at once; past it a new connection gets 503 and is closed.
    pub max_connections: u32,
    /// HTTP connections one client address may hold open at once; past it a new connection gets 503 and is closed.
    pub max_connections_per_client: u32,
    /// Requests per second one workload may receive through the router, as a sustained rate; more are answered 429 with `Retry-After`. 0: no limit.
    pub rate_limit_per_workload: u32,
    /// Requests one workload may receive in a burst above `rate_limit_per_workload`.
    pub rate_limit_burst: u32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            public_url: String::new(),
            base_domain: String::new(),
            metrics_listen: "127.0.0.1:7081".into(),
            tcp_bind: std::net::IpAddr::from([127, 0, 0, 1]),
            tcp_port_min: 20000,
            tcp_port_max: 20999,
            tcp_max_connections_per_workload: 1024,
            id: "embedded".into(),
            retry_after_seconds: 2,
            connect_timeout_ms: 2000,
            threads: 0,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_header_bytes: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_client: 256,
            rate_limit_per_workload: 0,
            rate_limit_burst: 100,
        }
    }
}

/// Workload orchestration settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadsConfig {
    /// Active workloads a tenant may have at once, unless its own settings say otherwise.
    pub max_concurrent_workloads: u32,
    /// Seconds a new instance may take to report running.
    pub wait_running_timeout_seconds: u64,
    /// Milliseconds between an injected interruption notice and the kill (local driver). 0: the real notice window of the instance's cloud (AWS 120 s, GCP and Azure 30 s); shorten it for tests and drills.
    pub interruption_delay_ms: u64,
    /// Milliseconds between an agent's heartbeats.
    pub agent_heartbeat_ms: u64,
    /// Seconds placement skips an offer (cloud, region, zone, type) after one of its instances was reclaimed.
    pub migration_cooldown_seconds: u64,
    /// Milliseconds the old instance of a make-before-break move (rebalance) keeps running after the route switched, so the requests it was sent before the switch finish there.
    pub drain_ms: u64,
    /// Milliseconds between rebalancing checks: each RUNNING workload with a `rebalance` block (or on on-demand capacity) compares its price with the best other offer.
    pub rebalance_check_ms: u64,
    /// Seconds between sweeps for instances no workload owns.
    pub orphan_sweep_interval_seconds: u64,
    /// What the local driver's workloads can reach.
    pub local: LocalWorkloadsConfig,
}

/// Isolation of the local driver's workloads (see docs/lifecycle.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalWorkloadsConfig {
    /// Directory under which each instance gets its own working directory (0700). Empty: `computearbitrage-workloads` in the system temporary directory. Never inside `data_dir`.
    pub work_dir: PathBuf,
    /// Whose identity workloads run with when the service runs as root: `per-workload` (each live workload its own uid and gid from `uid_range`), `service` (the service's own user: no isolation), or a user name. A service not running as root always uses its own user.
    pub run_as: String,
    /// The uids (and gids) `per-workload` gives out, as `FIRST-LAST`.
    pub uid_range: String,
    /// The agent binary every local instance boots (it runs the workload). Empty: `computearbitrage-agent` beside this executable.
    pub agent_path: PathBuf,
    /// Offers the local driver has no spot capacity for, as a cloud's capacity errors: comma-separated `cloud/region/zone/instance_type`, `*` for any segment (`aws/*/*/m5.large`). For drills of `fallback = "on_demand"`. Empty: capacity everywhere.
    pub no_spot_capacity: String,
    /// Where local instances get their addresses: `auto` (a network namespace each when the service runs as root with iproute2, else the loopback interface), `namespace` (required: the service refuses to start without root and `ip`), or `loopback` (every instance on 127.0.0.1, reachable by every local process).
    pub network: String,
    /// The IPv4 subnet namespaced instances are addressed from, one /30 each (the service's end of its veth pair, then the instance). Choose one no network of this machine uses.
    pub subnet: String,
}

impl Default for LocalWorkloadsConfig {
    fn default() -> Self {
        LocalWorkloadsConfig {
            work_dir: PathBuf::new(),
            run_as: "per-workload".into(),
            uid_range: "200000-299999".into(),
            agent_path: PathBuf::new(),
            no_spot_capacity: String::new(),
            network: "auto".into(),
            subnet: "10.213.0.0/16".into(),
        }
    }
}

impl LocalWorkloadsConfig {
    /// The driver's options, or what is wrong with the settings.
    pub fn options(
        &self,
        data_dir: &Path,
    ) -> Result<computearbitrage_driver_local::LocalOptions, ServiceError> {
        use computearbitrage_driver_local::{isolation, LocalOptions, RunAs};
        let defaults = LocalOptions::defaults();
        let work_root = if self.work_dir.as_os_str().is_empty() {
            defaults.work_root
        } else {
            self.work_dir.clone()
        };
        let inside = |a: &Path, b: &Path| {
            let (a, b) = (
                std::path::absolute(a).unwrap_or(a.to_path_buf()),
                std::path::absolute(b).unwrap_or(b.to_path_buf()),
            );
            a.starts_with(&b)
        };
        if inside(&work_root, data_dir) {
            return Err(ServiceError::config(format!(
                "invalid value for config key `workloads.local.work_dir`: {} is inside data_dir, where the service keeps its secrets; choose a directory outside it",
                work_root.display()
            )));
        }
        let run_as = if !isolation::is_root() {
            RunAs::Service
        } else {
            match self.run_as.as_str() {
                "service" => RunAs::Service,
                "per-workload" => {
                    let parsed = self.uid_range.split_once('-').and_then(|(a, b)| {
                        Some((a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?))
                    });
                    match parsed {
                        Some((first, last)) if first >= 1000 && first <= last => RunAs::PerWorkload { first, last },
                        _ => {
                            return Err(ServiceError::config(format!(
                                "invalid value for config key `workloads.local.uid_range`: {:?} is not FIRST-LAST with 1000 <= FIRST <= LAST, such as 200000-299999",
                                self.uid_range
                            )))
                        }
                    }
                }
                name => match isolation::lookup_user(name) {
                    Some((0, _)) => {
                        return Err(ServiceError::config(format!(
                            "invalid value for config key `workloads.local.run_as`: {name:?} is root; use `per-workload`, an unprivileged user, or `service`"
                        )))
                    }
                    Some((uid, gid)) => RunAs::User { uid, gid },
                    None => {
                        return Err(ServiceError::config(format!(
                            "invalid value for config key `workloads.local.run_as`: no user {name:?} on this machine; use `per-workload`, `service`, or an existing user"
                        )))
                    }
                },
            }
        };
        let agent = if self.agent_path.as_os_str().is_empty() {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|dir| dir.join("computearbitrage-agent")))
                .unwrap_or_else(|| PathBuf::from("computearbitrage-agent"))
        } else {
            self.agent_path.clone()
        };
        if !agent.is_file() {
            return Err(ServiceError::config(format!(
                "invalid value for config key `workloads.local.agent_path`: no agent binary at {}; build it (`cargo build --release -p computearbitrage-agent` puts it beside the service) or set the path",
                agent.display()
            )));
        }
        let no_spot_capacity = computearbitrage_driver_local::capacity::OfferPattern::parse_list(
            &self.no_spot_capacity,
        )
        .map_err(|e| {
            ServiceError::config(format!(
                "invalid value for config key `workloads.local.no_spot_capacity`: {e}"
            ))
        })?;
        use computearbitrage_driver_local::{network, Network};
        let subnet = network::Subnet::parse(&self.subnet).map_err(|e| {
            ServiceError::config(format!(
                "invalid value for config key `workloads.local.subnet`: {e}"
            ))
        })?;
        let network = match self.network.as_str() {
            "loopback" => Network::Loopback,
            "auto" if network::namespaces_available() => Network::Namespace(subnet),
            "auto" => Network::Loopback,
            "namespace" if network::namespaces_available() => Network::Namespace(subnet),
            "namespace" => {
                return Err(ServiceError::config(
                    "invalid value for config key `workloads.local.network`: `namespace` needs the service to run as root with iproute2's `ip` on the PATH; run it so, or use `auto` or `loopback`".to_string(),
                ))
            }
            other => {
                return Err(ServiceError::config(format!(
                    "invalid value for config key `workloads.local.network`: {other:?}; use `auto`, `namespace` or `loopback`"
                )))
            }
        };
        Ok(LocalOptions {
            work_root,
            run_as,
            agent: Some(agent),
            no_spot_capacity,
            network,
        })
    }
}

impl Default for WorkloadsConfig {
    fn default() -> Self {
        WorkloadsConfig {
            max_concurrent_workloads: 10,
            wait_running_timeout_seconds: 120,
            interruption_delay_ms: 0,
            agent_heartbeat_ms: 2000,
            migration_cooldown_seconds: 1800,
            drain_ms: 10_000,
            rebalance_check_ms: 10_000,
            orphan_sweep_interval_seconds: 60,
            local: LocalWorkloadsConfig::default(),
        }
    }
}

/// Webhook notifications.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Whether webhooks may go to loopback, private, link-local and metadata addresses (checked after DNS resolution). Off: a tenant's webhook cannot reach the service's network.
    pub allow_private_targets: bool,
    /// A PEM file of CA certificates to trust for https webhooks, besides the system's. Empty: the system's only.
    pub ca_file: PathBuf,
}

/// Health monitor settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Milliseconds between monitor polls; a check starts at most this late.
    pub tick_ms: u64,
    /// Most health checks in flight at once.
    pub max_concurrent_checks: u32,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            tick_ms: 100,
            max_concurrent_checks: 256,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Storage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Database engine. Only `sqlite` exists so far.
    pub engine: StoreEngine,
    /// SQLite database file; a relative path is inside `data_dir`.
    pub sqlite_path: PathBuf,
}

/// Supported database engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreEngine {
    Sqlite,
}

/// Pricing settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PricingConfig {
    /// The bundled (or a local) price snapshot collector.
    pub snapshot: SnapshotConfig,
    /// How placement ranks offers.
    pub scoring: ScoringConfig,
}

/// The snapshot collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Whether the snapshot collector runs.
    pub enabled: bool,
    /// Seconds between runs. Unchanged data is not rewritten.
    pub interval_seconds: u64,
    /// A directory with a `manifest.toml` and the CSV files it names, used instead of the
    /// snapshot compiled into the binary. Empty for the bundled snapshot.
    pub dir: PathBuf,
}

/// Placement scoring weights (see docs/placement.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoringConfig {
    /// Price penalty per percentage point of expected interruption rate (1.0: a 10 % rate costs like a 10 % higher price).
    pub interruption_weight: f64,
    /// Interruption rate, in percent, assumed for offers whose cloud publishes none.
    pub unknown_interruption_percent: f64,
    /// Discount, as a fraction, that offers in a preferred region get (0.10 = 10 %).
    pub preferred_region_bonus: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("computearbitrage-data"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            shutdown_grace_seconds: 10,
            tls: TlsConfig::default(),
            api: ApiConfig::default(),
            store: StoreConfig::default(),
            pricing: PricingConfig::default(),
            workloads: WorkloadsConfig::default(),
            monitor: MonitorConfig::default(),
            notifications: NotificationsConfig::default(),
            router: RouterConfig::default(),
            storage: computearbitrage_storage::StorageConfig::default(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: StoreEngine::Sqlite,
            sqlite_path: PathBuf::from("state.db"),
        }
    }
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: true,
            interval_seconds: 60,
            dir: PathBuf::new(),
        }
    }
}

impl Default for ScoringConfig {
    fn default() -> Self {
        let policy = computearbitrage_core::ScoringPolicy::default();
        ScoringConfig {
            interruption_weight: policy.interruption_weight,
            unknown_interruption_percent: policy.unknown_interruption_percent,
            preferred_region_bonus: policy.preferred_region_bonus,
        }
    }
}

impl ScoringConfig {
    pub fn policy(&self) -> computearbitrage_core::ScoringPolicy {
        computearbitrage_core::ScoringPolicy {
            interruption_weight: self.interruption_weight,
            unknown_interruption_percent: self.unknown_interruption_percent,
            preferred_region_bonus: self.preferred_region_bonus,
        }
    }
}

impl Config {
    /// The SQLite file, resolved against `data_dir`.
    pub fn sqlite_file(&self) -> PathBuf {
        self.data_dir.join(&self.store.sqlite_path)
    }
}

/// Command-line values that override everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
}

/// Loads the configuration from an optional file, the given environment, and flags.
pub fn load(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ServiceError> {
    let mut tree = toml::Value::try_from(Config::default()).expect("defaults serialize");
    // Where each key's value came from, for error messages.
    let mut origin: BTreeMap<String, String> = BTreeMap::new();

    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ServiceError::config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        let from_file: toml::Value = text
            .parse::<toml::Table>()
            .map(toml::Value::Table)
            .map_err(|e| {
                ServiceError::config(format!(
                    "config file {} is not valid TOML: {e}",
                    path.display()
                ))
            })?;
        merge(
            &mut tree,
            from_file,
            "",
            &mut origin,
            &format!("file {}", path.display()),
        );
    }

    let mut env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && !NON_CONFIG_ENV.contains(&k.as_str()))
        .collect();
    env.sort();
    for (name, raw) in env {
        let key = name[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .replace("__", ".");
        if !has_key(&tree, &key) {
            return Err(ServiceError::config(format!(
                "environment variable {name} does not name a config key (`{key}`); see docs/configuration.md for the keys"
            )));
        }
        set_key(&mut tree, &key, env_value(&raw));
        origin.insert(key, format!("environment variable {name}"));
    }

    if let Some(listen) = &overrides.listen {
        set_key(&mut tree, "listen", toml::Value::String(listen.clone()));
        origin.insert("listen".into(), "flag --listen".into());
    }
    if let Some(dir) = &overrides.data_dir {
        set_key(
            &mut tree,
            "data_dir",
            toml::Value::String(dir.display().to_string()),
        );
        origin.insert("data_dir".into(), "flag --data-dir".into());
    }

    let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
        let key = e.path().to_string();
        let from = origin
            .iter()
            .find(|(k, _)| key == **k || key.starts_with(&format!("{k}.")))
            .map(|(_, o)| format!(" (set by {o})"))
            .unwrap_or_default();
        ServiceError::config(format!(
            "invalid value for config key `{key}`{from}: {}",
            e.inner()
        ))
    })?;
    validate(&config, &origin)?;
    Ok(config)
}

fn validate(config: &Config, origin: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    let fail = |key: &str, message: String| {
        let from = origin
            .get(key)
            .map(|o| format!(" (set by {o})"))
            .unwrap_or_default();
        Err(ServiceError::config(format!(
            "invalid value for config key `{key}`{from}: {message}"
        )))
    };
    if let Some((key, message)) = config.storage.problem() {
        return fail(key, message);
    }
    if config.pricing.snapshot.interval_seconds == 0 {
        return fail(
            "pricing.snapshot.interval_seconds",
            "must be at least 1 second".into(),
        );
    }
    let scoring = &config.pricing.scoring;
    if !(0.0..=100.0).contains(&scoring.interruption_weight) {
        return fail(
            "pricing.scoring.interruption_weight",
            format!("{} is outside 0..=100", scoring.interruption_weight),
        );
    }
    if !(0.0..=100.0).contains(&scoring.unknown_interruption_percent) {
        return fail(
            "pricing.scoring.unknown_interruption_percent",
            format!(
                "{} is not a percentage (0..=100)",
                scoring.unknown_interruption_percent
            ),
        );
    }
    if !(0.0..1.0).contains(&scoring.preferred_region_bonus) {
        return fail(
            "pricing.scoring.preferred_region_bonus",
            format!(
                "{} must be a fraction from 0 up to (not including) 1, such as 0.1",
                scoring.preferred_region_bonus
            ),
        );
    }
    if config.workloads.max_concurrent_workloads == 0 {
        return fail(
            "workloads.max_concurrent_workloads",
            "must be at least 1".into(),
        );
    }
    if config.monitor.tick_ms == 0 || config.monitor.tick_ms > 10_000 {
        return fail(
            "monitor.tick_ms",
            format!("{} is outside 1..=10000 ms", config.monitor.tick_ms),
        );
    }
    if config.monitor.max_concurrent_checks == 0 {
        return fail("monitor.max_concurrent_checks", "must be at least 1".into());
    }
    if config.workloads.orphan_sweep_interval_seconds == 0 {
        return fail(
            "workloads.orphan_sweep_interval_seconds",
            "must be at least 1 second".into(),
        );
    }
    if !(100..=3_600_000).contains(&config.workloads.rebalance_check_ms) {
        return fail(
            "workloads.rebalance_check_ms",
            format!(
                "{} is outside 100..=3600000 ms (a tenth of a second to an hour)",
                config.workloads.rebalance_check_ms
            ),
        );
    }
    if config.workloads.drain_ms > 600_000 {
        return fail(
            "workloads.drain_ms",
            format!(
                "{} ms is more than 10 minutes of two instances billed for one workload; use up to 600000",
                config.workloads.drain_ms
            ),
        );
    }
    let router = &config.router;
    if router.tcp_port_min == 0 || router.tcp_port_min > router.tcp_port_max {
        return fail(
            "router.tcp_port_min",
            format!(
                "the range {}..={} is empty or starts at 0; set router.tcp_port_min <= router.tcp_port_max, both >= 1",
                router.tcp_port_min, router.tcp_port_max
            ),
        );
    }
    for (key, value, least) in [
        (
            "router.header_read_timeout_ms",
            router.header_read_timeout_ms,
            1,
        ),
        ("router.idle_timeout_ms", router.idle_timeout_ms, 1),
        (
            "router.max_header_bytes",
            u64::from(router.max_header_bytes),
            1024,
        ),
        (
            "router.max_connections",
            u64::from(router.max_connections),
            1,
        ),
        (
            "router.max_connections_per_client",
            u64::from(router.max_connections_per_client),
            1,
        ),
        (
            "router.tcp_max_connections_per_workload",
            u64::from(router.tcp_max_connections_per_workload),
            1,
        ),
        (
            "router.rate_limit_burst",
            u64::from(router.rate_limit_burst),
            1,
        ),
    ] {
        if value < least {
            return fail(key, format!("{value} is less than {least}"));
        }
    }
    let scheme_ok = ["http://", "https://"]
        .iter()
        .any(|scheme| router.public_url.starts_with(scheme));
    if !router.public_url.is_empty() && !scheme_ok {
        return fail(
            "router.public_url",
            format!(
                "{:?} must start with http:// or https://",
                router.public_url
            ),
        );
    }
    if !router.base_domain.is_empty()
        && computearbitrage_router::parse::normalize_host(&router.base_domain).is_none()
    {
        return fail(
            "router.base_domain",
            format!(
                "{:?} is not a DNS name such as run.example.com",
                router.base_domain
            ),
        );
    }
    if !router.metrics_listen.is_empty() && router.metrics_listen.parse::<SocketAddr>().is_err() {
        return fail(
            "router.metrics_listen",
            format!(
                "{:?} is not an address such as 127.0.0.1:7081 (empty turns metrics off)",
                router.metrics_listen
            ),
        );
    }
    if router.id.is_empty() {
        return fail("router.id", "must not be empty".into());
    }
    if router.connect_timeout_ms == 0 {
        return fail("router.connect_timeout_ms", "must be at least 1".into());
    }
    if config.data_dir.as_os_str().is_empty() {
        return fail("data_dir", "must not be empty".into());
    }
    if !config.api.rate_limit_per_second.is_finite() || config.api.rate_limit_per_second < 0.0 {
        return fail(
            "api.rate_limit_per_second",
            format!(
                "{} is not a rate; use 0 (no limit) or more",
                config.api.rate_limit_per_second
            ),
        );
    }
    let (cert, key) = (&config.tls.cert_file, &config.tls.key_file);
    if cert.as_os_str().is_empty() != key.as_os_str().is_empty() {
        let (set, missing) = if cert.as_os_str().is_empty() {
            ("tls.key_file", "tls.cert_file")
        } else {
            ("tls.cert_file", "tls.key_file")
        };
        return fail(
            missing,
            format!("{set} is set but {missing} is not; TLS needs both the certificate and its key, or neither"),
        );
    }
    Ok(())
}

/// An environment value is read as a TOML value when it is one (`60`, `true`, `0.5`),
/// otherwise as a string (`127.0.0.1:7070`).
fn env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn merge(
    base: &mut toml::Value,
    overlay: toml::Value,
    prefix: &str,
    origin: &mut BTreeMap<String, String>,
    from: &str,
) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (k, v) in overlay {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match base.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => {
                        merge(existing, v, &path, origin, from)
                    }
                    _ => {
                        origin.insert(path, from.to_string());
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn has_key(tree: &toml::Value, dotted: &str) -> bool {
    let mut node = tree;
    for part in dotted.split('.') {
        match node.get(part) {
            Some(next) => node = next,
            None => return false,
        }
    }
    !node.is_table()
}

fn set_key(tree: &mut toml::Value, dotted: &str, value: toml::Value) {
    let mut node = tree;
    let parts: Vec<&str> = dotted.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = node
            .as_table_mut()
            .expect("parent is a table")
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    if let Some(table) = node.as_table_mut() {
        table.insert(parts[parts.len() - 1].to_string(), value);
    }
}

/// Every leaf key of the configuration, dotted, for the documentation check.
pub fn all_keys() -> Vec<String> {
    fn walk(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                if v.is_table() {
                    walk(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let tree = toml::Value::try_from(Config::default()).expect("defaults serialize");
    let mut out = Vec::new();
    walk(&tree, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_without_any_source() {
        let config = load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn file_then_env_then_flags_take_precedence_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\n[pricing.snapshot]\ninterval_seconds = 5\n",
        )
        .unwrap();
        let config = load(
            Some(&file),
            env(&[
                ("COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS", "7"),
                ("COMPUTEARBITRAGE_LISTEN", "127.0.0.1:2"),
                ("COMPUTEARBITRAGE_BOOTSTRAP_TOKEN", "ignored-here"),
                ("UNRELATED", "x"),
            ]),
            &Overrides {
                listen: Some("127.0.0.1:3".into()),
                data_dir: None,
            },
        )
        .unwrap();
        assert_eq!(config.pricing.snapshot.interval_seconds, 7);
        assert_eq!(config.listen.port(), 3);
    }

    #[test]
    fn bad_router_settings_name_their_key_and_the_fix() {
        for (vars, key, hint) in [
            (
                vec![
                    ("COMPUTEARBITRAGE_ROUTER__TCP_PORT_MIN", "30000"),
                    ("COMPUTEARBITRAGE_ROUTER__TCP_PORT_MAX", "29999"),
                ],
                "router.tcp_port_min",
                "<=",
            ),
            (
                vec![("COMPUTEARBITRAGE_ROUTER__PUBLIC_URL", "router.example.com")],
                "router.public_url",
                "http://",
            ),
            (
                vec![("COMPUTEARBITRAGE_ROUTER__BASE_DOMAIN", "bad domain")],
                "router.base_domain",
                "DNS name",
            ),
            (
                vec![("COMPUTEARBITRAGE_ROUTER__METRICS_LISTEN", "everywhere")],
                "router.metrics_listen",
                "empty turns metrics off",
            ),
            (
                vec![("COMPUTEARBITRAGE_ROUTER__LISTEN", "7080")],
                "router.listen",
                "COMPUTEARBITRAGE_ROUTER__LISTEN",
            ),
        ] {
            let err = load(None, env(&vars), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("`{key}`")) && err.contains(hint),
                "{err}"
            );
        }
        let ok = load(
            None,
            env(&[
                ("COMPUTEARBITRAGE_ROUTER__BASE_DOMAIN", "run.example.com"),
                ("COMPUTEARBITRAGE_ROUTER__ENABLED", "false"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(ok.router.base_domain, "run.example.com");
        assert!(!ok.router.enabled);
    }

    #[test]
    fn a_bad_value_names_the_key_and_where_it_came_from() {
        let err = load(
            None,
            env(&[(
                "COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS",
                "soon",
            )]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`pricing.snapshot.interval_seconds`"), "{err}");
        assert!(
            err.contains("COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS"),
            "{err}"
        );

        let err = load(
            None,
            env(&[]),
            &Overrides {
                listen: Some("localhost".into()),
                data_dir: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`listen`") && err.contains("--listen"),
            "{err}"
        );

        let err = load(
            None,
            env(&[("COMPUTEARBITRAGE_LISTN", "x")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("COMPUTEARBITRAGE_LISTN") && err.contains("docs/configuration.md"),
            "{err}"
        );

        let err = load(
            None,
            env(&[(
                "COMPUTEARBITRAGE_PRICING__SCORING__PREFERRED_REGION_BONUS",
                "1.5",
            )]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`pricing.scoring.preferred_region_bonus`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_file_keys_are_rejected_with_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[pricing.snapshot]\nintervall = 5\n").unwrap();
        let err = load(Some(&file), env(&[]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pricing.snapshot") && err.contains("intervall"),
            "{err}"
        );
    }

    #[test]
    fn every_key_is_documented() {
        let docs = include_str!("../../../docs/configuration.md");
        for key in all_keys() {
            assert!(
                docs.contains(&format!("`{key}`")),
                "docs/configuration.md lacks `{key}`"
            );
        }
    }
}
