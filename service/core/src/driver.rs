//! The contract every compute driver implements (the local driver now; AWS, GCP and
//! Azure later). A driver creates spot instances, reports their status and address,
//! terminates them, lists them by tag for sweeping, and streams interruption notices
//! as the cloud announces them, so the service acts on the notice rather than
//! discovering the loss afterwards.

use crate::error::Error;
use std::collections::BTreeMap;
use std::time::Duration;

/// Tag every driver puts on the instances it creates, with the workload id as value.
pub const WORKLOAD_TAG: &str = "computearbitrage-workload";
/// Tag naming the tenant.
pub const TENANT_TAG: &str = "computearbitrage-tenant";

/// What to start.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceSpec {
    /// Derived from (run id, step): a retried create with the same token returns the
    /// instance the first attempt made instead of making another.
    pub idempotency_token: String,
    /// The offer's cloud (`aws`, `gcp`, `azure`): the local driver gives the instance
    /// that cloud's metadata endpoint and notice window.
    pub cloud: String,
    pub region: String,
    pub zone: String,
    pub instance_type: String,
    /// Highest hourly price to pay; the cloud reclaims the instance above it.
    pub max_price: f64,
    /// On-demand capacity instead of spot (`fallback = "on_demand"`): never reclaimed,
    /// paid at the on-demand price, `max_price` ignored.
    pub on_demand: bool,
    /// What runs on the instance.
    pub command: Vec<String>,
    /// Container image for real clouds; the local driver ignores it.
    pub image: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The port the workload serves on, passed as `PORT` where the driver chooses it.
    pub port: u16,
    /// The raw TCP port the workload serves on, when it asked for TCP exposure;
    /// passed as `TCP_PORT` where the driver chooses it.
    pub tcp_port: Option<u16>,
    pub tags: BTreeMap<String, String>,
    /// How the instance's agent reaches the service. `None`: the instance runs the
    /// command itself, with no agent (drivers and tests that do not need one).
    pub agent: Option<AgentBoot>,
}

/// What an instance's agent is booted with (user-data on a cloud): where the service
/// is and a registration credential scoped to this one launch. Nothing else secret.
#[derive(Clone, PartialEq)]
pub struct AgentBoot {
    pub service_url: String,
    pub credential: String,
}

impl std::fmt::Debug for AgentBoot {
    // The credential is a secret: never in a log line or an error.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentBoot")
            .field("service_url", &self.service_url)
            .field("credential", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InstanceState {
    Pending,
    Running,
    /// The cloud announced it will reclaim the instance at `deadline` (unix seconds).
    Interrupted {
        deadline: i64,
    },
    /// The instance is gone or its process exited.
    Terminated {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub instance_id: String,
    pub state: InstanceState,
    /// `host:port` the workload answers on, once known.
    pub address: Option<String>,
    /// `host:port` of the workload's TCP port, when it asked for one.
    pub tcp_address: Option<String>,
    pub tags: BTreeMap<String, String>,
    /// When the instance was created, unix seconds.
    pub created_at: i64,
}

/// Something the cloud told us about an instance, as soon as it told us.
#[derive(Debug, Clone, PartialEq)]
pub enum DriverEvent {
    InterruptionNotice { instance_id: String, deadline: i64 },
    Exited { instance_id: String, reason: String },
}

#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    /// `local`, `aws`, …
    fn name(&self) -> &str;

    /// Creates a spot instance (on-demand with `spec.on_demand`), or returns the one an
    /// earlier call with the same idempotency token created. No capacity for the offer
    /// now is [`Error::Capacity`], which the orchestrator may answer with on-demand.
    async fn create_spot_instance(&self, spec: &InstanceSpec) -> Result<Instance, Error>;

    /// Current state of an instance. An unknown id is `Terminated`, not an error.
    async fn instance(&self, instance_id: &str) -> Result<Instance, Error>;

    /// Terminates an instance; terminating a gone instance succeeds.
    async fn terminate(&self, instance_id: &str) -> Result<(), Error>;

    /// Instances carrying tag `key` (with `value`, or any value when `None`), for
    /// sweeping orphans.
    async fn list_by_tag(&self, key: &str, value: Option<&str>) -> Result<Vec<Instance>, Error>;

    /// Waits up to `wait` for the next event; `None` when there was none.
    async fn next_event(&self, wait: Duration) -> Option<DriverEvent>;

    /// Raises an interruption notice on a running instance, with the kill `delay`
    /// later; returns the deadline (unix seconds). For drills and tests: a driver that
    /// cannot (a real cloud without a fault-injection service) says so.
    async fn inject_interruption(&self, instance_id: &str, delay: Duration) -> Result<i64, Error> {
        let _ = (instance_id, delay);
        Err(Error::Driver {
            driver: self.name().to_string(),
            message: "this driver cannot inject interruptions; use the local driver for drills"
                .into(),
            retryable: false,
        })
    }
}
