//! The local driver: the embedded default for every cloud. It "provisions" an offer by
//! running the workload's command as a local process with `PORT` set to a free port
//! (and `TCP_PORT` to another when it asked for TCP exposure). The instance's address
//! is its own network namespace's ([`network`]) when the service runs as root, else
//! `127.0.0.1`.
//!
//! Module map:
//! - [`LocalDriver`] (this file): the [`Driver`] implementation.
//! - [`isolation`]: what a workload can reach: a cleared environment, its own working
//!   directory, its own uid when the service runs as root; private files for the rest.
//! - [`process`]: telling our processes from pid reuse, finding and stopping them.
//! - [`network`]: each instance's own network namespace and address when the service
//!   runs as root (a veth pair, the agent's one forwarded way to the service), or the
//!   shared loopback interface.
//! - [`metadata`]: each instance's metadata endpoint in its cloud's shape (AWS IMDSv2,
//!   the GCP metadata server, Azure Scheduled Events), where interruptions are raised.
//! - agent boot: with [`LocalOptions::agent`] set and an [`computearbitrage_core::AgentBoot`]
//!   in the spec, the instance runs `computearbitrage-agent run` (which runs the
//!   workload), as a cloud instance boots it from user-data; the boot credential goes
//!   in a private file, never in an environment.
//! - records: one JSON file per instance under the driver's directory, written before
//!   the process starts and updated after, so a restarted service finds every process
//!   it started, even one spawned just before a crash (processes carry
//!   `COMPUTEARBITRAGE_INSTANCE_ID` in their environment, found again through `/proc`).
//! - [`LocalDriver::inject_interruption`]: a spot interruption on demand, for tests and
//!   demos: a notice now, the process killed after a delay.
//!
//! Processes run in their own process group, so the service's own signals (Ctrl-C, a
//! kill -9 of the service) do not reach them, and termination reaches their children.

pub mod capacity;
pub mod isolation;
pub mod metadata;
pub mod network;
mod process;

use computearbitrage_core::{Driver, DriverEvent, Error, Instance, InstanceSpec, InstanceState};
pub use isolation::{LocalOptions, RunAs};
use metadata::{MetadataCloud, MetadataServer};
use network::{Forwarder, InstanceNetwork};
pub use network::{Network, Subnet};
use process::{alive, find_by_marker, proc_stat, stop_process};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, Mutex};

const DRIVER: &str = "local";
/// Environment variable that marks a process as one of ours.
pub const INSTANCE_ENV: &str = "COMPUTEARBITRAGE_INSTANCE_ID";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
enum RecordState {
    Starting,
    Running,
    Interrupted { deadline: i64 },
    Terminated { reason: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    instance_id: String,
    idempotency_token: String,
    pid: Option<u32>,
    /// Process start time in clock ticks since boot (`/proc/PID/stat` field 22): tells
    /// our process from a later one that reused its pid.
    start_ticks: Option<u64>,
    port: u16,
    /// The `TCP_PORT` given to a workload that asked for TCP exposure.
    #[serde(default)]
    tcp_port: Option<u16>,
    tags: BTreeMap<String, String>,
    created_at: i64,
    state: RecordState,
    command: Vec<String>,
    /// The uid the process runs as when it is not the service's.
    #[serde(default)]
    uid: Option<u32>,
    /// The instance's working directory, removed when it ends.
    #[serde(default)]
    work_dir: Option<PathBuf>,
    /// The offer's cloud: the shape of its metadata endpoint and its notice window.
    #[serde(default)]
    cloud: String,
    /// On-demand capacity: never reclaimed, so no notice can be injected.
    #[serde(default)]
    on_demand: bool,
    /// The port of its metadata endpoint, kept so a restarted service serves it again
    /// where the agent looks.
    #[serde(default)]
    metadata_port: Option<u16>,
    /// Its own network namespace and address; `None` on the loopback interface.
    #[serde(default)]
    network: Option<InstanceNetwork>,
}

impl Record {
    fn to_instance(&self) -> Instance {
        Instance {
            instance_id: self.instance_id.clone(),
            state: match &self.state {
                RecordState::Starting => InstanceState::Pending,
                RecordState::Running => InstanceState::Running,
                RecordState::Interrupted { deadline } => InstanceState::Interrupted {
                    deadline: *deadline,
                },
                RecordState::Terminated { reason } => InstanceState::Terminated {
                    reason: reason.clone(),
                },
            },
            address: Some(format!("{}:{}", self.ip(), self.port)),
            tcp_address: self.tcp_port.map(|p| format!("{}:{p}", self.ip())),
            tags: self.tags.clone(),
            created_at: self.created_at,
        }
    }

    fn ip(&self) -> std::net::Ipv4Addr {
        self.network
            .as_ref()
            .map(|n| n.address)
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST)
    }

    fn is_live(&self) -> bool {
        matches!(
            self.state,
            RecordState::Running | RecordState::Interrupted { .. } | RecordState::Starting
        )
    }
}

struct Inner {
    records: BTreeMap<String, Record>,
    next_serial: u64,
    /// The metadata endpoints of live instances that boot an agent.
    metadata: BTreeMap<String, MetadataServer>,
    /// Each namespaced instance's way to the service.
    forwarders: BTreeMap<String, Forwarder>,
}

/// The local driver. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct LocalDriver {
    dir: PathBuf,
    options: Arc<LocalOptions>,
    inner: Arc<Mutex<Inner>>,
    events_tx: mpsc::UnboundedSender<DriverEvent>,
    events_rx: Arc<Mutex<mpsc::UnboundedReceiver<DriverEvent>>>,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn failure(message: impl Into<String>, retryable: bool) -> Error {
    Error::Driver {
        driver: DRIVER.into(),
        message: message.into(),
        retryable,
    }
}

/// Eight hex digits from the clock and the process id.
fn unique_part() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

fn free_port() -> Result<u16, Error> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| failure(format!("cannot find a free port: {e}"), true))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| failure(format!("cannot find a free port: {e}"), true))
}

impl LocalDriver {
    /// Opens the driver's directory (mode 0700), reloading every record and re-checking
    /// each process it names: processes that survived a restart are adopted.
    pub fn open(dir: &Path, options: LocalOptions) -> Result<LocalDriver, Error> {
        isolation::private_dir(dir, 0o700)
            .map_err(|e| failure(format!("cannot create {}: {e}", dir.display()), false))?;
        let mut records = BTreeMap::new();
        let mut next_serial = 0;
        let entries = std::fs::read_dir(dir)
            .map_err(|e| failure(format!("cannot read {}: {e}", dir.display()), false))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| failure(format!("cannot read {}: {e}", path.display()), false))?;
            let mut record: Record = serde_json::from_str(&text).map_err(|e| {
                failure(
                    format!("corrupt instance record {}: {e}", path.display()),
                    false,
                )
            })?;
            if record.is_live() {
                if record.pid.is_none() {
                    // Spawned (or not) just before a crash: look for its marker.
                    if let Some(pid) = find_by_marker(&record.instance_id) {
                        record.pid = Some(pid);
                        record.start_ticks = proc_stat(pid).map(|(_, s)| s);
                        record.state = RecordState::Running;
                    }
                }
                let survives = record.pid.is_some_and(|pid| alive(pid, record.start_ticks));
                if !survives {
                    record.state = RecordState::Terminated {
                        reason: "process not found after a service restart".into(),
                    };
                    remove_work_dir(&record);
                }
            }
            if !record.is_live() {
                if let Some(network) = &record.network {
                    network::destroy_blocking(network);
                }
            }
            // Rewritten, live or not, so records of older versions get mode 0600 too.
            write_record(dir, &record)?;
            if let Some(serial) = record
                .instance_id
                .rsplit('-')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
            {
                next_serial = next_serial.max(serial + 1);
            }
            records.insert(record.instance_id.clone(), record);
        }
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        // Logs are private too, even those an older version wrote.
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().extension().and_then(|e| e.to_str()) == Some("log") {
                use std::os::unix::fs::PermissionsExt;
                let _ =
                    std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
            }
        }
        Ok(LocalDriver {
            dir: dir.to_path_buf(),
            options: Arc::new(options),
            inner: Arc::new(Mutex::new(Inner {
                records,
                next_serial,
                metadata: BTreeMap::new(),
                forwarders: BTreeMap::new(),
            })),
            events_tx,
            events_rx: Arc::new(Mutex::new(events_rx)),
        })
    }

    /// Serves the metadata endpoints of live instances again (after a restart), on the
    /// ports their agents know, with any notice already raised; and forwards each
    /// namespaced instance's control port to `service_url`, where the service is now.
    pub async fn resume(&self, service_url: &str) {
        let mut inner = self.inner.lock().await;
        let live: Vec<Record> = inner
            .records
            .values()
            .filter(|r| r.is_live())
            .cloned()
            .collect();
        for record in live {
            let id = &record.instance_id;
            if let (Some(network), Some(port)) = (
                &record.network,
                record.network.as_ref().and_then(|n| n.control_port),
            ) {
                match control_forwarder(network, port, service_url).await {
                    Ok(forwarder) => {
                        inner.forwarders.insert(id.clone(), forwarder);
                    }
                    Err(e) => {
                        tracing::warn!(instance_id = %id, port, error = %e, "cannot forward the instance's control port again; its agent cannot reach the service");
                    }
                }
            }
            let (Some(cloud), Some(port)) =
                (MetadataCloud::parse(&record.cloud), record.metadata_port)
            else {
                continue;
            };
            match start_metadata(cloud, id, record.network.as_ref(), port).await {
                Ok(server) => {
                    if let RecordState::Interrupted { deadline } = record.state {
                        server.raise_interruption(deadline);
                    }
                    inner.metadata.insert(id.clone(), server);
                }
                Err(e) => {
                    tracing::warn!(instance_id = %id, port, error = %e, "cannot serve the instance's metadata endpoint again; its agent will not see a notice");
                }
            }
        }
    }

    /// Cuts a namespaced instance off the network (its veth pair down), or connects it
    /// again: the router's traffic and its agent's stop alike, the process runs on.
    pub async fn set_connected(&self, instance_id: &str, connected: bool) -> Result<(), Error> {
        let network = {
            let inner = self.inner.lock().await;
            let record = inner
                .records
                .get(instance_id)
                .ok_or_else(|| failure(format!("no instance {instance_id}"), false))?;
            record.network.clone().ok_or_else(|| {
                failure(
                    format!("instance {instance_id} is on the loopback interface; only an instance with its own network (workloads.local.network) can be cut off"),
                    false,
                )
            })?
        };
        network::set_connected(&network, connected).await?;
        tracing::info!(instance_id, connected, interface = %network.host_interface, "instance network switched");
        Ok(())
    }

    /// Announces a spot interruption now, on the instance's metadata endpoint and as a
    /// driver event, and kills the instance after `delay`; a zero `delay` is the real
    /// notice window of the instance's cloud (2 min on AWS, 30 s on GCP and Azure).
    pub async fn inject_interruption(
        &self,
        instance_id: &str,
        delay: Duration,
    ) -> Result<i64, Error> {
        let (pid, start_ticks, deadline, delay) = {
            let mut inner = self.inner.lock().await;
            let record = inner
                .records
                .get_mut(instance_id)
                .ok_or_else(|| failure(format!("no instance {instance_id}"), false))?;
            if record.on_demand {
                return Err(failure(
                    format!("instance {instance_id} is on-demand capacity, which the cloud never reclaims; only spot instances get interruption notices"),
                    false,
                ));
            }
            let delay = if delay.is_zero() {
                MetadataCloud::parse(&record.cloud)
                    .map(MetadataCloud::notice_window)
                    .unwrap_or(Duration::from_secs(30))
            } else {
                delay
            };
            // Rounded up: a deadline is whole seconds in every cloud's notice.
            let deadline = now() + delay.as_millis().div_ceil(1000) as i64;
            if record.state != RecordState::Running {
                return Err(failure(
                    format!("instance {instance_id} is not running ({:?}); only a running instance can be interrupted", record.state),
                    false,
                ));
            }
            record.state = RecordState::Interrupted { deadline };
            write_record(&self.dir, record)?;
            let target = (record.pid, record.start_ticks, deadline, delay);
            if let Some(server) = inner.metadata.get(instance_id) {
                server.raise_interruption(deadline);
            }
            target
        };
        tracing::info!(
            instance_id,
            delay_ms = delay.as_millis() as u64,
            "spot interruption notice injected"
        );
        let _ = self.events_tx.send(DriverEvent::InterruptionNotice {
            instance_id: instance_id.to_string(),
            deadline,
        });
        let driver = self.clone();
        let id = instance_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(pid) = pid {
                stop_process(pid, start_ticks, Duration::from_secs(2)).await;
            }
            driver
                .mark_terminated(&id, "reclaimed by a spot interruption")
                .await;
        });
        Ok(deadline)
    }

    async fn mark_terminated(&self, instance_id: &str, reason: &str) {
        let mut inner = self.inner.lock().await;
        if let Some(record) = inner.records.get_mut(instance_id) {
            if record.is_live() {
                // Whatever is left of the instance's process group goes with it.
                if let Some(pid) = record.pid {
                    process::signal_group(pid, libc::SIGKILL);
                }
                record.state = RecordState::Terminated {
                    reason: reason.to_string(),
                };
                remove_work_dir(record);
                let _ = std::fs::remove_file(self.dir.join(format!("{instance_id}.credential")));
                if let Err(e) = write_record(&self.dir, record) {
                    tracing::warn!(instance_id, error = %e, "cannot persist instance record");
                }
                let _ = self.events_tx.send(DriverEvent::Exited {
                    instance_id: instance_id.to_string(),
                    reason: reason.to_string(),
                });
            }
        }
        if let Some(server) = inner.metadata.remove(instance_id) {
            server.shutdown();
        }
        inner.forwarders.remove(instance_id);
        let network = inner
            .records
            .get(instance_id)
            .filter(|r| !r.is_live())
            .and_then(|r| r.network.clone());
        // Before returning: a service that stops right after must not leave it.
        if let Some(network) = network {
            network::destroy(&network).await;
        }
    }

    /// Re-checks a live record against its process.
    fn refresh(&self, record: &mut Record) {
        if matches!(
            record.state,
            RecordState::Running | RecordState::Interrupted { .. }
        ) {
            let ok = record.pid.is_some_and(|pid| alive(pid, record.start_ticks));
            if !ok {
                record.state = RecordState::Terminated {
                    reason: "process exited".into(),
                };
                let _ = write_record(&self.dir, record);
                let _ = self.events_tx.send(DriverEvent::Exited {
                    instance_id: record.instance_id.clone(),
                    reason: "process exited".into(),
                });
            }
        }
    }
}

/// Removes a network made for an instance whose create then failed.
struct NetworkGuard(Option<InstanceNetwork>);

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        if let Some(network) = self.0.take() {
            tokio::spawn(async move { network::destroy(&network).await });
        }
    }
}

/// The metadata endpoint of an instance: inside its namespace when it has one.
async fn start_metadata(
    cloud: MetadataCloud,
    instance_id: &str,
    network: Option<&InstanceNetwork>,
    port: u16,
) -> std::io::Result<MetadataServer> {
    match network {
        Some(network) => {
            let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
            let listener = network::listen_in(&network.namespace, address)?;
            MetadataServer::serve(cloud, instance_id, instance_id, listener)
        }
        None => MetadataServer::start(cloud, instance_id, instance_id, port).await,
    }
}

/// Where `url` (`http://HOST:PORT/...`) listens, for forwarding to it.
async fn service_address(url: &str) -> Result<std::net::SocketAddr, Error> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        failure(
            format!("the agent's service URL {url:?} is not plain http://; an instance with its own network reaches the service through a forwarded port, which cannot carry the service's TLS name: set workloads.local.network = \"loopback\" with TLS"),
            false,
        )
    })?;
    let authority = rest.split('/').next().unwrap_or(rest);
    tokio::net::lookup_host(authority)
        .await
        .ok()
        .and_then(|mut found| found.find(|a| a.is_ipv4()))
        .ok_or_else(|| {
            failure(
                format!("cannot resolve the service's address {authority:?}"),
                false,
            )
        })
}

/// Forwards `network`'s control port (on the service's end of its pair) to the service.
async fn control_forwarder(
    network: &InstanceNetwork,
    port: u16,
    service_url: &str,
) -> Result<Forwarder, Error> {
    let target = service_address(service_url).await?;
    let listen = std::net::SocketAddr::from((network.host_address, port));
    Forwarder::start(listen, target)
        .await
        .map_err(|e| failure(format!("cannot forward {listen} to the service: {e}"), true))
}

fn write_record(dir: &Path, record: &Record) -> Result<(), Error> {
    let path = dir.join(format!("{}.json", record.instance_id));
    let text = serde_json::to_string_pretty(record).map_err(|e| failure(e.to_string(), false))?;
    isolation::write_private(&path, text.as_bytes())
        .map_err(|e| failure(format!("cannot write {}: {e}", path.display()), true))
}

/// The working directory of an instance that has ended goes with it.
fn remove_work_dir(record: &Record) {
    if let Some(dir) = &record.work_dir {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(instance_id = %record.instance_id, dir = %dir.display(), error = %e, "cannot remove a work directory");
            }
        }
    }
}

#[async_trait::async_trait]
impl Driver for LocalDriver {
    fn name(&self) -> &str {
        DRIVER
    }

    async fn inject_interruption(&self, instance_id: &str, delay: Duration) -> Result<i64, Error> {
        LocalDriver::inject_interruption(self, instance_id, delay).await
    }

    async fn create_spot_instance(&self, spec: &InstanceSpec) -> Result<Instance, Error> {
        let mut inner = self.inner.lock().await;
        if let Some(existing) = inner
            .records
            .values_mut()
            .find(|r| r.idempotency_token == spec.idempotency_token)
        {
            self.refresh(existing);
            return Ok(existing.to_instance());
        }
        let Some(program) = spec.command.first() else {
            return Err(failure(
                "the command is empty; give at least the program to run",
                false,
            ));
        };
        if !spec.on_demand
            && self
                .options
                .no_spot_capacity
                .iter()
                .any(|p| p.matches(&spec.cloud, &spec.region, &spec.zone, &spec.instance_type))
        {
            return Err(Error::Capacity {
                driver: "local".into(),
                message: format!(
                    "InsufficientInstanceCapacity: there is no spot capacity for {} {} in {}{} now (workloads.local.no_spot_capacity)",
                    spec.cloud,
                    spec.instance_type,
                    spec.region,
                    if spec.zone.is_empty() { String::new() } else { format!("/{}", spec.zone) }
                ),
            });
        }
        let serial = inner.next_serial;
        inner.next_serial += 1;
        // Unique across services on one machine, since the id marks the process.
        let instance_id = format!("local-{}-{serial}", unique_part());
        let port = free_port()?;
        let tcp_port = match spec.tcp_port {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let owner = match &self.options.run_as {
            RunAs::Service => None,
            RunAs::User { uid, gid } => Some((*uid, *gid)),
            RunAs::PerWorkload { first, last } => {
                let taken: std::collections::HashSet<u32> = inner
                    .records
                    .values()
                    .filter(|r| r.is_live())
                    .filter_map(|r| r.uid)
                    .collect();
                let uid = (*first..=*last).find(|u| !taken.contains(u)).ok_or_else(|| {
                    failure(
                        format!("every uid of workloads.local.uid_range ({first}-{last}) is in use by a live workload; widen the range"),
                        true,
                    )
                })?;
                Some((uid, uid))
            }
        };
        let work_dir = isolation::work_dir(&self.options.work_root, &instance_id, owner).map_err(|e| {
            failure(
                format!(
                    "cannot make the working directory under {}: {e}; check workloads.local.work_dir",
                    self.options.work_root.display()
                ),
                false,
            )
        })?;
        let mut record = Record {
            instance_id: instance_id.clone(),
            idempotency_token: spec.idempotency_token.clone(),
            pid: None,
            start_ticks: None,
            port,
            tcp_port,
            tags: spec.tags.clone(),
            created_at: now(),
            state: RecordState::Starting,
            command: spec.command.clone(),
            uid: owner.map(|(uid, _)| uid),
            work_dir: Some(work_dir.clone()),
            on_demand: spec.on_demand,
            cloud: spec.cloud.clone(),
            metadata_port: None,
            network: None,
        };
        // Its own network first: the metadata endpoint and the control port live there.
        let mut network_guard = NetworkGuard(None);
        if let Network::Namespace(subnet) = &self.options.network {
            // Before the instance has an address: nothing reaches it around the router.
            // SAFETY: geteuid has no preconditions.
            let service_uid = unsafe { libc::geteuid() };
            if let Err(e) = network::guard_from_machine(*subnet, service_uid).await {
                remove_work_dir(&record);
                return Err(e);
            }
            match network::create(&instance_id, *subnet).await {
                Ok(network) => {
                    record.network = Some(network.clone());
                    network_guard.0 = Some(network);
                }
                Err(e) => {
                    remove_work_dir(&record);
                    return Err(e);
                }
            }
        }
        // Entered in the maps only once the process runs; dropped (stopped) otherwise.
        let mut pending_metadata = None;
        let mut pending_forwarder = None;
        // The agent, when there is one, watches its cloud's metadata endpoint.
        let booted = match (&spec.agent, &self.options.agent) {
            (Some(boot), Some(agent)) => {
                let cloud = MetadataCloud::parse(&spec.cloud).unwrap_or(MetadataCloud::Aws);
                let server = start_metadata(cloud, &instance_id, record.network.as_ref(), 0)
                    .await
                    .map_err(|e| failure(format!("cannot serve a metadata endpoint: {e}"), true))?;
                record.metadata_port = Some(server.port());
                // A namespaced agent reaches the service through its forwarded port,
                // and is told so, since the service's URLs name where it listens.
                let reachable_url = match record.network.as_mut() {
                    Some(network) => {
                        let target = service_address(&boot.service_url).await?;
                        let forwarder =
                            control_forwarder(network, target.port(), &boot.service_url).await?;
                        network.control_port = Some(target.port());
                        pending_forwarder = Some(forwarder);
                        format!("http://{}:{}", network.host_address, target.port())
                    }
                    None => boot.service_url.clone(),
                };
                let credential = self.dir.join(format!("{instance_id}.credential"));
                isolation::write_private(&credential, boot.credential.as_bytes()).map_err(|e| {
                    failure(format!("cannot write {}: {e}", credential.display()), true)
                })?;
                let url = server.url();
                pending_metadata = Some(server);
                Some((
                    agent.clone(),
                    reachable_url,
                    boot.service_url.clone(),
                    credential,
                    cloud,
                    url,
                ))
            }
            _ => None,
        };
        if let Some(network) = &record.network {
            if !network::filter(network).await? {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!("nft (nftables) is not installed: a namespaced workload can reach the machine's services that listen on all addresses through its pair, and the machine's other users can reach workloads around the router; install nftables for the packet filters");
                });
            }
        }
        // Recorded before the spawn, so a crash in between leaves a trace to follow.
        write_record(&self.dir, &record)?;
        let log_path = self.dir.join(format!("{instance_id}.log"));
        let log = isolation::create_private(&log_path)
            .map_err(|e| failure(format!("cannot create {}: {e}", log_path.display()), true))?;
        let log_err = log.try_clone().map_err(|e| failure(e.to_string(), true))?;
        // Opened here: the child enters it between fork and exec.
        let namespace = match &record.network {
            Some(network) => Some(network::open_namespace(&network.namespace).map_err(|e| {
                failure(
                    format!("cannot open the namespace {}: {e}", network.namespace),
                    true,
                )
            })?),
            None => None,
        };
        let namespace_fd = namespace.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        // Entering a namespace needs root, so a workload started directly drops to its
        // own user after that, in the same place.
        let mut identity_after_namespace = None;
        let mut command = match &booted {
            Some((agent, service_url, advertised_url, credential, cloud, metadata_url)) => {
                // The agent runs as the service's user and starts the workload as
                // the workload's own; it gets the workload's spec from the service.
                let mut command = tokio::process::Command::new(agent);
                command
                    .env_clear()
                    .env("PATH", isolation::DEFAULT_PATH)
                    .env("HOME", &work_dir)
                    .env(INSTANCE_ENV, &instance_id)
                    .env("RUST_LOG", "info")
                    .arg("run")
                    .arg("--service")
                    .arg(service_url)
                    .args(
                        (service_url != advertised_url)
                            .then(|| format!("--service-advertised={advertised_url}")),
                    )
                    .arg("--credential-file")
                    .arg(credential)
                    .arg("--instance-id")
                    .arg(&instance_id)
                    .arg("--cloud")
                    .arg(cloud.as_str())
                    .arg("--metadata-url")
                    .arg(metadata_url)
                    .arg("--resource")
                    .arg(&instance_id)
                    .arg("--work-dir")
                    .arg(&work_dir)
                    .arg("--port")
                    .arg(port.to_string())
                    .args(tcp_port.map(|p| format!("--tcp-port={p}")))
                    .args(owner.map(|(uid, gid)| format!("--owner={uid}:{gid}")));
                command
            }
            None => {
                let mut command = tokio::process::Command::new(program);
                // Nothing of the service's environment: only what the workload is given.
                command
                    .env_clear()
                    .env("PATH", isolation::DEFAULT_PATH)
                    .env("HOME", &work_dir)
                    .envs(&spec.env)
                    .env("PORT", port.to_string())
                    .env(INSTANCE_ENV, &instance_id)
                    .envs(tcp_port.map(|p| ("TCP_PORT", p.to_string())))
                    .args(&spec.command[1..]);
                match owner {
                    Some(ids) if namespace_fd.is_some() => identity_after_namespace = Some(ids),
                    // std drops the supplementary groups when root sets a uid.
                    Some((uid, gid)) => {
                        command.uid(uid).gid(gid);
                    }
                    None => {}
                }
                command
            }
        };
        command
            .current_dir(&work_dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(false);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if let Some(fd) = namespace_fd {
                    network::enter(fd)?;
                }
                if let Some((uid, gid)) = identity_after_namespace {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The service's umask is 077; the workload gets the usual one.
                libc::umask(0o022);
                // Nothing it runs can gain privileges (setuid binaries, file caps).
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                record.state = RecordState::Terminated {
                    reason: format!("cannot start: {e}"),
                };
                remove_work_dir(&record);
                write_record(&self.dir, &record)?;
                if let Some(server) = pending_metadata {
                    server.shutdown();
                }
                inner.records.insert(instance_id, record);
                let hint = match owner {
                    Some((uid, _)) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
                        "; the workload runs as its own user (uid {uid}, workloads.local.run_as), so the program and every file it reads must be readable by all users"
                    ),
                    _ => String::new(),
                };
                return Err(failure(
                    format!("cannot start {program:?}: {e}; check the workload's `command`{hint}"),
                    false,
                ));
            }
        };
        drop(namespace);
        network_guard.0 = None;
        if let Some(server) = pending_metadata {
            inner.metadata.insert(instance_id.clone(), server);
        }
        if let Some(forwarder) = pending_forwarder {
            inner.forwarders.insert(instance_id.clone(), forwarder);
        }
        let pid = child.id().unwrap_or(0);
        record.pid = Some(pid);
        record.start_ticks = proc_stat(pid).map(|(_, s)| s);
        record.state = RecordState::Running;
        write_record(&self.dir, &record)?;
        let instance = record.to_instance();
        inner.records.insert(instance_id.clone(), record);
        drop(inner);
        tracing::info!(instance_id = %instance_id, pid, port, uid = ?owner.map(|(u, _)| u), "local instance started");

        // Reap the child so it never lingers as a zombie, and report its exit.
        let driver = self.clone();
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => format!("process exited ({status})"),
                Err(e) => format!("process lost: {e}"),
            };
            driver.mark_terminated(&instance_id, &reason).await;
        });
        Ok(instance)
    }

    async fn instance(&self, instance_id: &str) -> Result<Instance, Error> {
        let mut inner = self.inner.lock().await;
        match inner.records.get_mut(instance_id) {
            Some(record) => {
                self.refresh(record);
                Ok(record.to_instance())
            }
            None => Ok(Instance {
                instance_id: instance_id.to_string(),
                state: InstanceState::Terminated {
                    reason: "unknown instance".into(),
                },
                address: None,
                tcp_address: None,
                tags: BTreeMap::new(),
                created_at: 0,
            }),
        }
    }

    async fn terminate(&self, instance_id: &str) -> Result<(), Error> {
        let target = {
            let inner = self.inner.lock().await;
            inner
                .records
                .get(instance_id)
                .map(|r| (r.pid, r.start_ticks))
        };
        if let Some((Some(pid), start_ticks)) = target {
            stop_process(pid, start_ticks, Duration::from_secs(5)).await;
            if alive(pid, start_ticks) {
                return Err(failure(
                    format!("process {pid} of {instance_id} survived SIGKILL"),
                    true,
                ));
            }
        }
        self.mark_terminated(instance_id, "terminated on request")
            .await;
        Ok(())
    }

    async fn list_by_tag(&self, key: &str, value: Option<&str>) -> Result<Vec<Instance>, Error> {
        let mut inner = self.inner.lock().await;
        let mut out = Vec::new();
        for record in inner.records.values_mut() {
            if record
                .tags
                .get(key)
                .is_some_and(|v| value.is_none_or(|want| v == want))
            {
                self.refresh(record);
                out.push(record.to_instance());
            }
        }
        Ok(out)
    }

    async fn next_event(&self, wait: Duration) -> Option<DriverEvent> {
        let mut rx = self.events_rx.lock().await;
        tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> LocalOptions {
        LocalOptions::same_user(&dir.join("work"))
    }

    fn spec(token: &str, script: &str) -> InstanceSpec {
        InstanceSpec {
            idempotency_token: token.into(),
            cloud: "aws".into(),
            region: "local".into(),
            zone: String::new(),
            instance_type: "local".into(),
            max_price: 1.0,
            on_demand: false,
            command: vec!["sh".into(), "-c".into(), script.into()],
            image: None,
            env: BTreeMap::from([("GREETING".into(), "hi".into())]),
            port: 8080,
            tcp_port: None,
            tags: BTreeMap::from([("computearbitrage-workload".into(), "w1".into())]),
            agent: None,
        }
    }

    #[tokio::test]
    async fn the_same_token_never_starts_a_second_process() {
        let dir = tempfile::tempdir().unwrap();
        let driver = LocalDriver::open(dir.path(), options(dir.path())).unwrap();
        let a = driver
            .create_spot_instance(&spec("run-1:provision", "sleep 30"))
            .await
            .unwrap();
        let b = driver
            .create_spot_instance(&spec("run-1:provision", "sleep 30"))
            .await
            .unwrap();
        assert_eq!(a.instance_id, b.instance_id);
        assert_eq!(a.state, InstanceState::Running);
        assert_eq!(
            driver
                .list_by_tag("computearbitrage-workload", Some("w1"))
                .await
                .unwrap()
                .len(),
            1
        );
        driver.terminate(&a.instance_id).await.unwrap();
        assert!(matches!(
            driver.instance(&a.instance_id).await.unwrap().state,
            InstanceState::Terminated { .. }
        ));
    }

    #[tokio::test]
    async fn offers_without_spot_capacity_refuse_spot_and_take_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(dir.path());
        options.no_spot_capacity = capacity::OfferPattern::parse_list("aws/*/*/local").unwrap();
        let driver = LocalDriver::open(dir.path(), options).unwrap();
        let refused = driver
            .create_spot_instance(&spec("run-2:provision", "sleep 30"))
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::Capacity { .. }), "{refused}");
        assert!(refused.is_retryable());
        assert!(refused.to_string().contains("InsufficientInstanceCapacity"));
        let mut on_demand = spec("run-2:provision-on-demand", "sleep 30");
        on_demand.on_demand = true;
        let inst = driver.create_spot_instance(&on_demand).await.unwrap();
        assert_eq!(inst.state, InstanceState::Running);
        // On-demand capacity is never reclaimed.
        let e = driver
            .inject_interruption(&inst.instance_id, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("on-demand"), "{e}");
        driver.terminate(&inst.instance_id).await.unwrap();
    }

    #[tokio::test]
    async fn port_and_env_reach_the_process_and_exit_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let driver = LocalDriver::open(dir.path(), options(dir.path())).unwrap();
        let out = dir.path().join("seen");
        let script = format!("echo \"$PORT $GREETING\" > {}; exit 3", out.display());
        let inst = driver
            .create_spot_instance(&spec("t", &script))
            .await
            .unwrap();
        let event = driver.next_event(Duration::from_secs(10)).await.unwrap();
        assert!(
            matches!(event, DriverEvent::Exited { ref reason, .. } if reason.contains("exit status: 3")),
            "{event:?}"
        );
        let port = inst
            .address
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(
            std::fs::read_to_string(out).unwrap().trim(),
            format!("{port} hi")
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_a_clear_non_retryable_error() {
        let dir = tempfile::tempdir().unwrap();
        let driver = LocalDriver::open(dir.path(), options(dir.path())).unwrap();
        let mut s = spec("t", "");
        s.command = vec!["/no/such/program".into()];
        let err = driver.create_spot_instance(&s).await.unwrap_err();
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("/no/such/program"));
    }

    #[tokio::test]
    async fn an_injected_interruption_notifies_then_kills() {
        let dir = tempfile::tempdir().unwrap();
        let driver = LocalDriver::open(dir.path(), options(dir.path())).unwrap();
        let inst = driver
            .create_spot_instance(&spec("t", "sleep 30"))
            .await
            .unwrap();
        driver
            .inject_interruption(&inst.instance_id, Duration::from_millis(300))
            .await
            .unwrap();
        let notice = driver.next_event(Duration::from_secs(5)).await.unwrap();
        assert!(matches!(notice, DriverEvent::InterruptionNotice { .. }));
        assert!(matches!(
            driver.instance(&inst.instance_id).await.unwrap().state,
            InstanceState::Interrupted { .. }
        ));
        let exited = driver.next_event(Duration::from_secs(10)).await.unwrap();
        assert!(matches!(exited, DriverEvent::Exited { .. }), "{exited:?}");
        assert!(matches!(
            driver.instance(&inst.instance_id).await.unwrap().state,
            InstanceState::Terminated { .. }
        ));
    }

    #[tokio::test]
    async fn a_reopened_driver_adopts_surviving_processes_and_can_kill_them() {
        let dir = tempfile::tempdir().unwrap();
        let inst = {
            let driver = LocalDriver::open(dir.path(), options(dir.path())).unwrap();
            driver
                .create_spot_instance(&spec("t", "sleep 30"))
                .await
                .unwrap()
        };
        // A new driver over the same directory, as after a service restart.
        let driver = LocalDriver::open(dir.path(), options(dir.path())).unwrap();
        assert_eq!(
            driver.instance(&inst.instance_id).await.unwrap().state,
            InstanceState::Running
        );
        let again = driver
            .create_spot_instance(&spec("t", "sleep 30"))
            .await
            .unwrap();
        assert_eq!(
            again.instance_id, inst.instance_id,
            "the token still finds it"
        );
        driver.terminate(&inst.instance_id).await.unwrap();
        assert!(matches!(
            driver.instance(&inst.instance_id).await.unwrap().state,
            InstanceState::Terminated { .. }
        ));
    }

    #[tokio::test]
    async fn a_record_left_mid_spawn_is_resolved_through_the_environment_marker() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        // Unique per run: a process left by an interrupted earlier run must not answer.
        let id = format!("local-test{}-7", std::process::id());
        // Simulate a crash between spawn and the record update: the process runs with
        // its marker, the record has no pid.
        let record = Record {
            instance_id: id.clone(),
            idempotency_token: "tok".into(),
            pid: None,
            start_ticks: None,
            port: 1,
            tcp_port: None,
            tags: BTreeMap::new(),
            created_at: 1,
            state: RecordState::Starting,
            command: vec!["sleep".into(), "30".into()],
            uid: None,
            work_dir: None,
            cloud: String::new(),
            on_demand: false,
            metadata_port: None,
            network: None,
        };
        write_record(dir.path(), &record).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env(INSTANCE_ENV, &id)
            .process_group(0)
            .spawn()
            .unwrap();
        // Until the child has exec'd, its environment is still this test's (no marker);
        // a restarted service only ever sees processes long past that point.
        let environ = format!("/proc/{}/environ", child.id());
        let marker = format!("{INSTANCE_ENV}={id}");
        for _ in 0..500 {
            let seen = std::fs::read(&environ).unwrap_or_default();
            if seen.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let driver = LocalDriver::open(dir.path(), options(dir.path())).unwrap();
        assert_eq!(
            driver.instance(&id).await.unwrap().state,
            InstanceState::Running
        );
        driver.terminate(&id).await.unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "the adopted process was killed");
        let next = driver
            .create_spot_instance(&spec("other", "sleep 1"))
            .await
            .unwrap();
        assert!(
            next.instance_id.ends_with("-8"),
            "serials continue after reloaded records: {}",
            next.instance_id
        );
        driver.terminate(&next.instance_id).await.unwrap();
    }

    /// Waits for a file the workload writes.
    async fn read_when_written(path: &Path) -> String {
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(path) {
                if text.ends_with('\n') {
                    return text;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{} was never written", path.display());
    }

    #[tokio::test]
    async fn a_workload_sees_only_its_own_environment_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let driver = LocalDriver::open(dir.path(), options(dir.path())).unwrap();
        let inst = driver
            .create_spot_instance(&spec(
                "t",
                "env | cut -d= -f1 | sort > seen; pwd >> seen; echo >> seen; sleep 30",
            ))
            .await
            .unwrap();
        let work = dir.path().join("work").join(&inst.instance_id);
        let seen = read_when_written(&work.join("seen")).await;
        let names: Vec<&str> = seen.lines().take_while(|l| !l.starts_with('/')).collect();
        // The test runner's environment (CARGO_*, RUST_*, the real HOME) is not there.
        for name in &names {
            assert!(
                [
                    "GREETING",
                    "HOME",
                    "PATH",
                    "PORT",
                    "PWD",
                    "SHLVL",
                    "_",
                    INSTANCE_ENV
                ]
                .contains(name),
                "unexpected {name} in the workload's environment: {names:?}"
            );
        }
        assert!(names.contains(&"GREETING") && names.contains(&"PORT"));
        assert!(
            seen.contains(&work.display().to_string()),
            "runs in its own directory: {seen}"
        );
        use std::os::unix::fs::PermissionsExt;
        let log = dir.path().join(format!("{}.log", inst.instance_id));
        let record = dir.path().join(format!("{}.json", inst.instance_id));
        for private in [&log, &record] {
            assert_eq!(
                std::fs::metadata(private).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert_eq!(
            std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
        driver.terminate(&inst.instance_id).await.unwrap();
        assert!(
            !work.exists(),
            "the working directory ends with the instance"
        );
    }

    #[tokio::test]
    async fn as_root_each_workload_runs_as_its_own_user_and_cannot_read_the_service() {
        if !isolation::is_root() {
            eprintln!("skipped: switching users needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // As the service keeps its data directory.
        isolation::private_dir(dir.path(), 0o700).unwrap();
        let secret = dir.path().join("admin-token");
        std::fs::write(&secret, "secret\n").unwrap();
        let work_root = tempfile::tempdir().unwrap();
        let options = LocalOptions {
            work_root: work_root.path().to_path_buf(),
            run_as: RunAs::PerWorkload {
                first: 250_000,
                last: 250_010,
            },
            agent: None,
            no_spot_capacity: Vec::new(),
            network: Network::Loopback,
        };
        let driver = LocalDriver::open(&dir.path().join("driver"), options).unwrap();
        let script = format!(
            "{{ id -u; id -G; cat {} 2>&1 || echo denied; ls .. 2>&1 | head -1; }} > who.tmp; mv who.tmp who; sleep 30",
            secret.display()
        );
        let a = driver
            .create_spot_instance(&spec("a", &script))
            .await
            .unwrap();
        let b = driver
            .create_spot_instance(&spec("b", &script))
            .await
            .unwrap();
        let who_a = read_when_written(&work_root.path().join(&a.instance_id).join("who")).await;
        let who_b = read_when_written(&work_root.path().join(&b.instance_id).join("who")).await;
        let lines_a: Vec<&str> = who_a.lines().collect();
        let lines_b: Vec<&str> = who_b.lines().collect();
        assert_eq!(lines_a[0], "250000");
        assert_eq!(lines_b[0], "250001", "two live workloads never share a uid");
        assert_eq!(lines_a[1], "250000", "only its own group: {who_a}");
        assert!(
            lines_a[2].contains("Permission denied"),
            "the service's files: {who_a}"
        );
        assert!(
            lines_a[4].contains("Permission denied"),
            "other workloads' directories: {who_a}"
        );
        assert!(!who_a.contains("secret") && !who_b.contains("secret"));
        driver.terminate(&a.instance_id).await.unwrap();
        driver.terminate(&b.instance_id).await.unwrap();
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;

    const SERVE: &str = r#"
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["NAME"].encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

    const PROBE: &str = r#"
import os, socket, time
def attempt(host, port):
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return "reached"
    except OSError as e:
        return "failed " + type(e).__name__
# The far end of its own pair is known once it runs: the test writes it here.
while not os.path.exists("service-side"):
    time.sleep(0.05)
service_side = open("service-side").read().strip()
lines = [attempt(os.environ["OTHER"], os.environ["OTHER_PORT"]), attempt(service_side, os.environ["HOST_PORT"]), attempt(service_side, open("open-port").read().strip())]
open("seen.tmp", "w").write("\n".join(lines) + "\n"); os.rename("seen.tmp", "seen")
time.sleep(30)
"#;

    fn python(token: &str, script: &str, env: &[(&str, String)]) -> InstanceSpec {
        let mut spec = InstanceSpec {
            idempotency_token: token.into(),
            cloud: "aws".into(),
            region: "local".into(),
            zone: String::new(),
            instance_type: "local".into(),
            max_price: 1.0,
            on_demand: false,
            command: vec!["python3".into(), "-c".into(), script.into()],
            image: None,
            env: BTreeMap::new(),
            port: 8080,
            tcp_port: None,
            tags: BTreeMap::new(),
            agent: None,
        };
        for (k, v) in env {
            spec.env.insert(k.to_string(), v.clone());
        }
        spec
    }

    /// GET / at `address`, or why not, within 2 s.
    fn get(address: &str) -> Result<String, String> {
        let addr: std::net::SocketAddr = address.parse().map_err(|e| format!("{e}"))?;
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok();
        stream
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .map_err(|e| e.to_string())?;
        Ok(answer)
    }

    async fn get_eventually(address: &str) -> String {
        for _ in 0..100 {
            let a = address.to_string();
            if let Ok(answer) = tokio::task::spawn_blocking(move || get(&a)).await.unwrap() {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{address} never answered");
    }

    fn network_of(dir: &Path, instance_id: &str) -> InstanceNetwork {
        let text = std::fs::read_to_string(dir.join(format!("{instance_id}.json"))).unwrap();
        let record: Record = serde_json::from_str(&text).unwrap();
        record
            .network
            .expect("a namespaced instance records its network")
    }

    fn interface_exists(name: &str) -> bool {
        std::path::Path::new("/sys/class/net").join(name).exists()
    }

    #[tokio::test]
    async fn as_root_each_instance_has_an_address_of_its_own_that_other_instances_cannot_reach() {
        if !network::namespaces_available() {
            eprintln!("skipped: network namespaces need root and iproute2");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut options = LocalOptions::same_user(&dir.path().join("work"));
        options.network = Network::Namespace(Subnet::DEFAULT);
        let driver = LocalDriver::open(dir.path(), options).unwrap();
        let a = driver
            .create_spot_instance(&python("a", SERVE, &[("NAME", "instance-a".into())]))
            .await
            .unwrap();
        let a_address = a.address.clone().unwrap();
        assert!(a_address.starts_with("10.213."), "{a_address}");
        // The service's side (the router) reaches it at its own address.
        let answer = get_eventually(&a_address).await;
        assert!(answer.ends_with("instance-a"), "{answer}");
        // Another user of the machine cannot go around the router.
        let (a_ip, a_port) = a_address.rsplit_once(':').unwrap();
        let other_user = std::process::Command::new("python3")
            .args(["-c", "import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1).close(); print('reached')\nexcept OSError as e:\n    print('failed', type(e).__name__)", a_ip, a_port])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let other_user = String::from_utf8_lossy(&other_user.stdout)
            .trim()
            .to_string();
        if network::packet_filter_available() {
            assert!(
                other_user.starts_with("failed"),
                "another user of the machine reached the instance: {other_user}"
            );
        } else {
            assert_eq!(other_user, "reached", "without nftables there is no filter");
        }

        // A listener of the service's machine on its loopback, as every local service
        // (the service's own, PostgreSQL) listens.
        let host_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let b = driver
            .create_spot_instance(&python(
                "b",
                PROBE,
                &[
                    ("OTHER", a_ip.to_string()),
                    ("OTHER_PORT", a_port.to_string()),
                    (
                        "HOST_PORT",
                        host_listener.local_addr().unwrap().port().to_string(),
                    ),
                ],
            ))
            .await
            .unwrap();
        assert_ne!(b.address, a.address);
        let b_work = dir.path().join("work").join(&b.instance_id);
        let b_network = network_of(dir.path(), &b.instance_id);
        // A service of the machine that listens on every address, as sshd does: here
        // bound to the service's end of B's pair only, which only B can reach.
        let open_listener = std::net::TcpListener::bind((b_network.host_address, 0)).unwrap();
        std::fs::write(
            b_work.join("open-port"),
            open_listener.local_addr().unwrap().port().to_string(),
        )
        .unwrap();
        std::fs::write(
            b_work.join("service-side"),
            b_network.host_address.to_string(),
        )
        .unwrap();
        let seen = read_seen(
            &b_work.join("seen"),
            &dir.path().join(format!("{}.log", b.instance_id)),
        )
        .await;
        let lines: Vec<&str> = seen.lines().collect();
        assert!(
            lines[0].starts_with("failed"),
            "another instance is out of reach: {seen}"
        );
        assert!(
            lines[1].starts_with("failed"),
            "the machine's loopback services are out of reach: {seen}"
        );
        if network::packet_filter_available() {
            assert!(
                lines[2].starts_with("failed"),
                "with nftables, nor its services on every address: {seen}"
            );
        } else {
            assert_eq!(
                lines[2], "reached",
                "without nftables there is no filter, as the docs say: {seen}"
            );
        }

        // Cut off, it answers nobody; connected again, it answers as before.
        let a_network = network_of(dir.path(), &a.instance_id);
        driver.set_connected(&a.instance_id, false).await.unwrap();
        let a2 = a_address.clone();
        let cut = tokio::task::spawn_blocking(move || get(&a2)).await.unwrap();
        assert!(cut.is_err(), "a cut-off instance answered: {cut:?}");
        driver.set_connected(&a.instance_id, true).await.unwrap();
        assert!(get_eventually(&a_address).await.ends_with("instance-a"));

        // Its network ends with it.
        for (instance, network) in [(&a, &a_network), (&b, &b_network)] {
            driver.terminate(&instance.instance_id).await.unwrap();
            let mut gone = false;
            for _ in 0..100 {
                gone = !Path::new("/run/netns").join(&network.namespace).exists()
                    && !interface_exists(&network.host_interface);
                if gone {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(gone, "{network:?} outlived its instance");
        }
        let e = driver.set_connected("no-such", false).await.unwrap_err();
        assert!(e.to_string().contains("no instance"), "{e}");
    }

    async fn read_seen(path: &Path, log: &Path) -> String {
        for _ in 0..300 {
            if let Ok(text) = std::fs::read_to_string(path) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} was never written; the probe's output: {}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}
