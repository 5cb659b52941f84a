//! Resource `computearbitrage_workload`: a workload on the cheapest matching spot
//! capacity, kept running by the service.
//!
//! - Create returns when the workload is RUNNING (its health check passed) or fails
//!   with the failed step and its last error. It is adoptable: the service keys
//!   workloads by tenant and name, so re-applying after an interrupted create picks up
//!   the workload that create started instead of making a second one.
//! - `command`, `image`, `port`, `requirements` and `name` force replacement; `tags`,
//!   `env`, `health_check` and `on_interruption` change in place.
//! - Placement attributes are computed and keep their prior values in plans, so a
//!   workload the service moved shows no diff and never a replacement.
//! - A workload terminated out of band (or FAILED) is removed from state on refresh.

use crate::client::{report_status, report_violations, Connection, SharedConnection};
use crate::duration;
use crate::number::Number;
use crate::requirements::{self, check_whole, strings, whole, RequirementsBlock};
use crate::schema::{attribute, computed, optional, optional_computed, sensitive, string_list};
use computearbitrage_api::ERROR_FIELD_METADATA;
use computearbitrage_api::{pb, validate};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tf_provider::schema::{AttributeConstraint, AttributeType, Block, NestedBlock, Schema};
use tf_provider::value::{serde_as_vec, Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, Resource};

pub const DEFAULT_CREATE_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_DELETE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_PORT: i64 = 8080;
const POLL: Duration = Duration::from_millis(500);

pub struct WorkloadResource {
    connection: SharedConnection,
}

impl WorkloadResource {
    pub fn new(connection: SharedConnection) -> Self {
        WorkloadResource { connection }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HealthCheckBlock {
    pub path: Value<String>,
    pub interval_seconds: Value<Number>,
    pub timeout_seconds: Value<Number>,
    pub unhealthy_threshold: Value<Number>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StorageBlock {
    pub enabled: Value<bool>,
    pub quota_gb: Value<Number>,
    pub retention_days: Value<Number>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TimeoutsBlock {
    pub create: Value<String>,
    pub delete: Value<String>,
}

type StringMap = Value<BTreeMap<String, Value<String>>>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkloadState {
    pub id: Value<String>,
    pub name: Value<String>,
    pub requirements: Value<RequirementsBlock>,
    pub command: Value<Vec<Value<String>>>,
    pub image: Value<String>,
    pub env: StringMap,
    pub port: Value<Number>,
    pub tcp_port: Value<Number>,
    pub tcp_listen_port: Value<Number>,
    #[serde(with = "serde_as_vec")]
    pub health_check: Value<HealthCheckBlock>,
    pub on_interruption: Value<String>,
    #[serde(with = "serde_as_vec")]
    pub storage: Value<StorageBlock>,
    pub tags: StringMap,
    #[serde(with = "serde_as_vec")]
    pub timeouts: Value<TimeoutsBlock>,
    pub status: Value<String>,
    pub provider: Value<String>,
    pub region: Value<String>,
    pub zone: Value<String>,
    pub instance_type: Value<String>,
    pub instance_id: Value<String>,
    pub endpoint: Value<String>,
    pub access_token: Value<String>,
    pub tcp_endpoint: Value<String>,
    pub backend_endpoint: Value<String>,
    pub price_per_hour: Value<Number>,
    pub on_demand_price_per_hour: Value<Number>,
    pub created_at: Value<String>,
}

fn port_of(value: &Value<Number>) -> Option<u32> {
    value
        .as_ref_option()
        .map(|n| whole(n).clamp(0, 65_536) as u32)
}

fn non_empty(text: &str) -> Value<String> {
    if text.is_empty() {
        Value::Null
    } else {
        Value::Value(text.to_string())
    }
}

fn map_of(value: &StringMap) -> HashMap<String, String> {
    value
        .as_ref_option()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_ref_option().map(|v| (k.clone(), v.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// The new value, but in the prior representation when it is the same number:
/// Terraform compares decimals exactly, and the state's `0.00688` is not float64's.
fn same_number(prior: &Value<Number>, new: Option<f64>) -> Value<Number> {
    match (prior, new) {
        (Value::Value(p), Some(n)) if p.value() == n => prior.clone(),
        (_, new) => new.map(Number::from).into(),
    }
}

fn count(value: &Value<Number>) -> u32 {
    value
        .as_ref_option()
        .map(whole)
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32
}

impl WorkloadState {
    fn health_check_pb(&self) -> Option<pb::HealthCheck> {
        self.health_check.as_ref_option().map(|h| pb::HealthCheck {
            path: h.path.as_ref_option().cloned().unwrap_or_default(),
            interval_seconds: count(&h.interval_seconds),
            timeout_seconds: count(&h.timeout_seconds),
            unhealthy_threshold: count(&h.unhealthy_threshold),
        })
    }

    fn timeout(&self, pick: fn(&TimeoutsBlock) -> &Value<String>, default: Duration) -> Duration {
        self.timeouts
            .as_ref_option()
            .and_then(|t| pick(t).as_ref_option().and_then(|d| duration::parse(d)))
            .unwrap_or(default)
    }

    fn spec_pb(&self) -> pb::WorkloadSpec {
        pb::WorkloadSpec {
            name: self.name.as_ref_option().cloned().unwrap_or_default(),
            requirements: Some(
                self.requirements
                    .as_ref_option()
                    .map(RequirementsBlock::to_pb)
                    .unwrap_or_default(),
            ),
            command: strings(&self.command),
            image: self.image.as_ref_option().cloned().unwrap_or_default(),
            env: map_of(&self.env),
            port: self
                .port
                .as_ref_option()
                .map(whole)
                .unwrap_or(DEFAULT_PORT)
                .clamp(0, 65_536) as u32,
            health_check: self.health_check_pb(),
            on_interruption: self
                .on_interruption
                .as_ref_option()
                .cloned()
                .unwrap_or_default(),
            storage: self.storage.as_ref_option().map(|s| pb::StorageSpec {
                enabled: s.enabled.as_ref_option().copied().unwrap_or(false),
                quota_gb: count(&s.quota_gb),
                retention_days: count(&s.retention_days),
            }),
            tags: map_of(&self.tags),
            create_timeout_seconds: self
                .timeout(|t| &t.create, DEFAULT_CREATE_TIMEOUT)
                .as_secs() as u32,
            tcp_port: port_of(&self.tcp_port),
            tcp_listen_port: port_of(&self.tcp_listen_port),
        }
    }

    /// Plans `tcp_listen_port` when the configuration leaves it to the service: null
    /// without `tcp_port`, kept from `prior` while `tcp_port` is unchanged, otherwise
    /// known only after apply.
    fn plan_tcp_listen_port(&mut self, config: &WorkloadState, prior: Option<&WorkloadState>) {
        if !config.tcp_listen_port.is_null() {
            return;
        }
        self.tcp_listen_port = if self.tcp_port.is_null() {
            Value::Null
        } else {
            match prior {
                Some(prior) if prior.tcp_port == self.tcp_port => prior.tcp_listen_port.clone(),
                _ => Value::Unknown,
            }
        };
    }

    /// Reports every invalid known value on its attribute path.
    fn check(&self, diags: &mut Diagnostics) -> bool {
        let spec = self.spec_pb();
        let mut ok = true;
        let mut top = validate::workload_fields(&spec);
        // Unknown values are checked when they become known.
        top.retain(|v| match v.path.first() {
            Some(validate::PathStep::Field("name")) => self.name.is_value(),
            Some(validate::PathStep::Field("command")) => self.command.is_value(),
            Some(validate::PathStep::Field("port")) => self.port.is_value(),
            Some(validate::PathStep::Field("tcp_port")) => self.tcp_port.is_value(),
            Some(validate::PathStep::Field("tcp_listen_port")) => {
                self.tcp_listen_port.is_value() && !self.tcp_port.is_unknown()
            }
            _ => true,
        });
        if self.port.is_null() {
            top.retain(|v| v.path.first() != Some(&validate::PathStep::Field("port")));
        }
        report_violations(diags, AttributePath::root(), &top);
        ok &= top.is_empty();
        ok &= check_whole(diags, &self.port, AttributePath::new("port"));
        ok &= check_whole(diags, &self.tcp_port, AttributePath::new("tcp_port"));
        ok &= check_whole(
            diags,
            &self.tcp_listen_port,
            AttributePath::new("tcp_listen_port"),
        );
        if let Some(block) = self.requirements.as_ref_option() {
            let v = validate::requirements(&block.to_pb());
            report_violations(diags, AttributePath::new(requirements::BLOCK_NAME), &v);
            ok &= v.is_empty();
            ok &= check_whole(
                diags,
                &block.min_gpus,
                AttributePath::new(requirements::BLOCK_NAME).attribute("min_gpus"),
            );
        }
        if let (Some(block), Some(check)) =
            (self.health_check.as_ref_option(), self.health_check_pb())
        {
            let root = AttributePath::new("health_check").index(0);
            for (name, value) in [
                ("interval_seconds", &block.interval_seconds),
                ("timeout_seconds", &block.timeout_seconds),
                ("unhealthy_threshold", &block.unhealthy_threshold),
            ] {
                ok &= check_whole(diags, value, root.clone().attribute(name));
                if let Some(n) = value.as_ref_option().and_then(Number::as_integer) {
                    if n < 1 {
                        diags.error(
                            format!("Invalid value for health_check.{name}"),
                            format!("{n} is less than 1; use 1 or more, or leave it unset for the default"),
                            root.clone().attribute(name),
                        );
                        ok = false;
                    }
                }
            }
            let v = validate::health_check(&check);
            report_violations(diags, root, &v);
            ok &= v.is_empty();
        }
        if let Some(block) = self.storage.as_ref_option() {
            let root = AttributePath::new("storage").index(0);
            ok &= check_whole(diags, &block.quota_gb, root.clone().attribute("quota_gb"));
            ok &= check_whole(
                diags,
                &block.retention_days,
                root.clone().attribute("retention_days"),
            );
            for (name, value) in [
                ("quota_gb", &block.quota_gb),
                ("retention_days", &block.retention_days),
            ] {
                if let Some(n) = value.as_ref_option().and_then(Number::as_integer) {
                    if n < 0 {
                        diags.error(
                            format!("Invalid value for storage.{name}"),
                            format!("{n} is negative; use 0 or more"),
                            root.clone().attribute(name),
                        );
                        ok = false;
                    }
                }
            }
        }
        if let Some(t) = self.timeouts.as_ref_option() {
            for (name, value) in [("create", &t.create), ("delete", &t.delete)] {
                if let Value::Value(text) = value {
                    if duration::parse(text).is_none() {
                        diags.error(
                            format!("Invalid value for timeouts.{name}"),
                            format!("{text:?} is not a duration; write it like \"10m\", \"90s\" or \"1h30m\""),
                            AttributePath::new("timeouts").index(0).attribute(name),
                        );
                        ok = false;
                    }
                }
            }
        }
        ok
    }

    /// Fills unset Optional+Computed attributes with the defaults the service applies,
    /// so the state always says what is in effect (and an import plans clean).
    fn fill_defaults(&mut self) {
        if self.port.is_null() {
            self.port = Value::Value(Number::from(DEFAULT_PORT));
        }
        if self.on_interruption.is_null() {
            self.on_interruption = Value::Value("migrate".into());
        }
        if let Value::Value(check) = &mut self.health_check {
            if check.path.is_null() {
                check.path = Value::Value("/health".into());
            }
            for (value, default) in [
                (&mut check.interval_seconds, 30),
                (&mut check.timeout_seconds, 5),
                (&mut check.unhealthy_threshold, 3),
            ] {
                if value.is_null() {
                    *value = Value::Value(Number::from(default));
                }
            }
        }
    }

    fn set_computed_unknown(&mut self) {
        self.id = Value::Unknown;
        self.status = Value::Unknown;
        self.provider = Value::Unknown;
        self.region = Value::Unknown;
        self.zone = Value::Unknown;
        self.instance_type = Value::Unknown;
        self.instance_id = Value::Unknown;
        self.endpoint = Value::Unknown;
        self.access_token = Value::Unknown;
        self.tcp_endpoint = if self.tcp_port.is_null() {
            Value::Null
        } else {
            Value::Unknown
        };
        self.backend_endpoint = Value::Unknown;
        self.price_per_hour = Value::Unknown;
        self.on_demand_price_per_hour = Value::Unknown;
        self.created_at = Value::Unknown;
    }

    fn copy_computed(&mut self, from: &WorkloadState) {
        self.id = from.id.clone();
        self.status = from.status.clone();
        self.provider = from.provider.clone();
        self.region = from.region.clone();
        self.zone = from.zone.clone();
        self.instance_type = from.instance_type.clone();
        self.instance_id = from.instance_id.clone();
        self.endpoint = from.endpoint.clone();
        self.access_token = from.access_token.clone();
        self.tcp_endpoint = from.tcp_endpoint.clone();
        self.backend_endpoint = from.backend_endpoint.clone();
        self.price_per_hour = from.price_per_hour.clone();
        self.on_demand_price_per_hour = from.on_demand_price_per_hour.clone();
        self.created_at = from.created_at.clone();
    }

    fn set_computed(&mut self, w: &pb::Workload) {
        self.id = Value::Value(w.id.clone());
        self.status = Value::Value(w.status.clone());
        self.provider = Value::Value(w.provider.clone());
        self.region = Value::Value(w.region.clone());
        self.zone = Value::Value(w.zone.clone());
        self.instance_type = Value::Value(w.instance_type.clone());
        self.instance_id = Value::Value(w.instance_id.clone());
        self.endpoint = Value::Value(w.endpoint.clone());
        self.access_token = Value::Value(w.access_token.clone());
        self.tcp_endpoint = non_empty(&w.tcp_endpoint);
        self.tcp_listen_port = w.tcp_listen_port.map(|p| Number::from(i64::from(p))).into();
        self.backend_endpoint = non_empty(&w.backend_endpoint);
        self.price_per_hour = same_number(&self.price_per_hour, w.price_per_hour);
        self.on_demand_price_per_hour =
            same_number(&self.on_demand_price_per_hour, w.on_demand_price_per_hour);
        self.created_at = Value::Value(w.created_at.clone());
    }

    /// The whole state of an existing workload, for import.
    fn from_workload(w: &pb::Workload) -> WorkloadState {
        let spec = w.spec.clone().unwrap_or_default();
        let strings_value = |items: &[String]| {
            Value::Value(items.iter().cloned().map(Value::Value).collect::<Vec<_>>())
        };
        let list_or_null = |items: &[String]| {
            if items.is_empty() {
                Value::Null
            } else {
                strings_value(items)
            }
        };
        let map_or_null = |m: &HashMap<String, String>| {
            if m.is_empty() {
                Value::Null
            } else {
                Value::Value(
                    m.iter()
                        .map(|(k, v)| (k.clone(), Value::Value(v.clone())))
                        .collect(),
                )
            }
        };
        let r = spec.requirements.clone().unwrap_or_default();
        let number = |v: Option<f64>| v.map(Number::from).into();
        let requirements = RequirementsBlock {
            min_vcpus: number(r.min_vcpus),
            min_memory_gib: number(r.min_memory_gib),
            gpu_name: Some(r.gpu_name.clone()).filter(|g| !g.is_empty()).into(),
            min_gpus: r.min_gpus.map(Number::from).into(),
            architecture: Some(r.architecture.clone())
                .filter(|a| !a.is_empty())
                .into(),
            providers: list_or_null(&r.providers),
            regions: list_or_null(&r.regions),
            exclude_regions: list_or_null(&r.exclude_regions),
            preferred_regions: list_or_null(&r.preferred_regions),
            max_interruption_rate: number(r.max_interruption_rate),
            allow_unknown_interruption_rate: r
                .allow_unknown_interruption_rate
                .filter(|a| !a)
                .into(),
            max_price_per_hour: number(r.max_price_per_hour),
        };
        let check = spec.health_check.clone().unwrap_or_default();
        let default_check = check.path == "/health"
            && check.interval_seconds == 30
            && check.timeout_seconds == 5
            && check.unhealthy_threshold == 3;
        let storage = spec.storage.clone().unwrap_or_default();
        let mut state = WorkloadState {
            id: Value::Null,
            name: Value::Value(spec.name.clone()),
            requirements: Value::Value(requirements),
            command: strings_value(&spec.command),
            image: Some(spec.image.clone()).filter(|i| !i.is_empty()).into(),
            env: map_or_null(&spec.env),
            port: Value::Value(Number::from(i64::from(spec.port))),
            tcp_port: spec.tcp_port.map(|p| Number::from(i64::from(p))).into(),
            tcp_listen_port: Value::Null,
            health_check: if default_check {
                Value::Null
            } else {
                Value::Value(HealthCheckBlock {
                    path: Value::Value(check.path),
                    interval_seconds: Value::Value(Number::from(i64::from(check.interval_seconds))),
                    timeout_seconds: Value::Value(Number::from(i64::from(check.timeout_seconds))),
                    unhealthy_threshold: Value::Value(Number::from(i64::from(
                        check.unhealthy_threshold,
                    ))),
                })
            },
            on_interruption: Value::Value(if spec.on_interruption.is_empty() {
                "migrate".into()
            } else {
                spec.on_interruption.clone()
            }),
            storage: if storage.enabled {
                Value::Value(StorageBlock {
                    enabled: Value::Value(true),
                    quota_gb: Value::Value(Number::from(i64::from(storage.quota_gb))),
                    retention_days: Value::Value(Number::from(i64::from(storage.retention_days))),
                })
            } else {
                Value::Null
            },
            tags: map_or_null(&spec.tags),
            timeouts: Value::Null,
            status: Value::Null,
            provider: Value::Null,
            region: Value::Null,
            zone: Value::Null,
            instance_type: Value::Null,
            instance_id: Value::Null,
            endpoint: Value::Null,
            access_token: Value::Null,
            tcp_endpoint: Value::Null,
            backend_endpoint: Value::Null,
            price_per_hour: Value::Null,
            on_demand_price_per_hour: Value::Null,
            created_at: Value::Null,
        };
        state.set_computed(w);
        state
    }
}

/// Polls until the workload reaches one of `done`, or FAILED, or the deadline.
async fn wait_for(
    connection: &Connection,
    id: &str,
    done: &[&str],
    timeout: Duration,
) -> Result<Option<pb::Workload>, tonic::Status> {
    let mut client = connection.workloads();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match client
            .get_workload(pb::GetWorkloadRequest { id: id.to_string() })
            .await
        {
            Ok(w) => {
                let w = w.into_inner();
                if done.contains(&w.status.as_str()) || w.status == "FAILED" {
                    return Ok(Some(w));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(Some(w));
                }
            }
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(status),
        }
        tokio::time::sleep(POLL).await;
    }
}

#[async_trait::async_trait]
impl Resource for WorkloadResource {
    type State<'a> = WorkloadState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let string_map = AttributeType::Map(Box::new(AttributeType::String));
        let attributes = HashMap::from([
            ("id".to_string(), computed(AttributeType::String, "The workload id assigned by the service (`wl-…`). Use it to import.")),
            ("name".to_string(), attribute(AttributeType::String, AttributeConstraint::Required, "Name, unique among the tenant's active workloads: 1 to 63 lower-case letters, digits and dashes. Changing it replaces the workload.")),
            ("command".to_string(), attribute(string_list(), AttributeConstraint::Required, "The program and its arguments, run on the instance. The local driver runs it as a process with `PORT` set. Changing it replaces the workload.")),
            ("image".to_string(), optional(AttributeType::String, "Container image for real clouds; the local driver ignores it. Changing it replaces the workload.")),
            ("env".to_string(), optional(string_map.clone(), "Environment variables of the workload. Changes are stored in place and apply when the workload is next provisioned.")),
            ("port".to_string(), optional_computed(AttributeType::Number, "The port the workload serves on, passed as `PORT` (the local driver picks a free port instead). Default 8080. Changing it replaces the workload.")),
            ("on_interruption".to_string(), optional_computed(AttributeType::String, "What to do when the cloud reclaims the capacity: `migrate` (default) or `terminate`. Until migration ships, both terminate the workload.")),
            ("tags".to_string(), optional(string_map, "Tags for the instance and the workload; changed in place.")),
            ("status".to_string(), computed(AttributeType::String, "Lifecycle status: `RUNNING` after create; `UNHEALTHY`, `INTERRUPTED`, … as the service observes.")),
            ("provider".to_string(), computed(AttributeType::String, "Cloud the workload runs on. May change when the service moves it; never a diff.")),
            ("region".to_string(), computed(AttributeType::String, "Region the workload runs in.")),
            ("zone".to_string(), computed(AttributeType::String, "Zone, empty where the cloud prices per region.")),
            ("instance_type".to_string(), computed(AttributeType::String, "Instance type the workload runs on.")),
            ("instance_id".to_string(), computed(AttributeType::String, "The driver's instance id.")),
            ("endpoint".to_string(), computed(AttributeType::String, "The workload's stable URL through the router (`http://router/w/<id>/`, or `http://<id>.<base domain>/` with host routing). It stays the same when the workload moves. Requests need `access_token` or the tenant's token, as `Authorization: Bearer …` or `?token=…`.")),
            ("access_token".to_string(), sensitive(computed(AttributeType::String, "A token that reaches this workload, and only it, through the router. Sensitive."))),
            ("backend_endpoint".to_string(), computed(AttributeType::String, "The current instance's own `host:port`; changes when the workload moves, so use `endpoint` instead.")),
            ("tcp_port".to_string(), optional(AttributeType::Number, "A raw TCP port the workload serves on (the local driver sets `TCP_PORT` to a free port instead). When set, the router exposes it on `tcp_endpoint`. Changing it replaces the workload.")),
            ("tcp_listen_port".to_string(), optional_computed(AttributeType::Number, "The router's stable TCP listener port for `tcp_port`: the one requested (within the router's TCP port range, default 20000-20999), or allocated when unset. Changing it replaces the workload.")),
            ("tcp_endpoint".to_string(), computed(AttributeType::String, "`host:port` of the router's TCP listener for this workload, when `tcp_port` is set. Null otherwise.")),
            ("price_per_hour".to_string(), computed(AttributeType::Number, "Spot price paid, USD per hour.")),
            ("on_demand_price_per_hour".to_string(), computed(AttributeType::Number, "On-demand price of the same offer, USD per hour; null when unknown.")),
            ("created_at".to_string(), computed(AttributeType::String, "When the service accepted the workload (RFC 3339).")),
        ]);
        let health_check = Block {
            attributes: HashMap::from([
                (
                    "path".to_string(),
                    optional_computed(
                        AttributeType::String,
                        "HTTP path checked with GET; 2xx is healthy. Default `/health`.",
                    ),
                ),
                (
                    "interval_seconds".to_string(),
                    optional_computed(AttributeType::Number, "Seconds between checks. Default 30."),
                ),
                (
                    "timeout_seconds".to_string(),
                    optional_computed(
                        AttributeType::Number,
                        "Seconds before a check counts as failed; at most the interval. Default 5.",
                    ),
                ),
                (
                    "unhealthy_threshold".to_string(),
                    optional_computed(
                        AttributeType::Number,
                        "Consecutive failures before the workload is UNHEALTHY. Default 3.",
                    ),
                ),
            ]),
            description: "Health check of the workload; changed in place.".into(),
            ..Default::default()
        };
        let storage = Block {
            attributes: HashMap::from([
                ("enabled".to_string(), optional(AttributeType::Bool, "Whether the workload gets a storage namespace for checkpoints and artifacts.")),
                ("quota_gb".to_string(), optional(AttributeType::Number, "Storage quota in GB.")),
                ("retention_days".to_string(), optional(AttributeType::Number, "Days objects are kept after the workload terminates.")),
            ]),
            description: "Workload state storage (recorded now; used by migration).".into(),
            ..Default::default()
        };
        let timeouts = Block {
            attributes: HashMap::from([
                (
                    "create".to_string(),
                    optional(
                        AttributeType::String,
                        "How long create may take, such as `10m` (default) or `1h30m`.",
                    ),
                ),
                (
                    "delete".to_string(),
                    optional(
                        AttributeType::String,
                        "How long destroy may take. Default `5m`.",
                    ),
                ),
            ]),
            description: "Operation timeouts.".into(),
            ..Default::default()
        };
        Some(Schema {
            version: 1,
            block: Block {
                attributes,
                blocks: HashMap::from([
                    (requirements::BLOCK_NAME.to_string(), requirements::block()),
                    ("health_check".to_string(), NestedBlock::Optional(health_check)),
                    ("storage".to_string(), NestedBlock::Optional(storage)),
                    ("timeouts".to_string(), NestedBlock::Optional(timeouts)),
                ]),
                description: "A workload on the cheapest matching spot capacity across clouds, kept running by the computearbitrage service.".into(),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: WorkloadState) -> Option<()> {
        config.check(diags);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        mut state: WorkloadState,
        private: ValueEmpty,
        _meta: ValueEmpty,
    ) -> Option<(WorkloadState, ValueEmpty)> {
        let connection = self.connection.get(diags).await?;
        let id = state.id.as_ref_option().cloned().unwrap_or_default();
        match connection
            .workloads()
            .get_workload(pb::GetWorkloadRequest { id })
            .await
        {
            Ok(w) => {
                let w = w.into_inner();
                // Gone for good: drop it from state so the next plan re-creates it.
                if w.status == "TERMINATED" || w.status == "FAILED" {
                    return None;
                }
                state.set_computed(&w);
                Some((state, private))
            }
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => {
                report_status(
                    diags,
                    &connection.endpoint,
                    "reading a workload",
                    &status,
                    AttributePath::root(),
                );
                None
            }
        }
    }

    async fn plan_create<'a>(
        &self,
        diags: &mut Diagnostics,
        mut proposed: WorkloadState,
        config: WorkloadState,
        _meta: ValueEmpty,
    ) -> Option<(WorkloadState, ValueEmpty)> {
        proposed.plan_tcp_listen_port(&config, None);
        proposed.check(diags);
        proposed.fill_defaults();
        proposed.set_computed_unknown();
        Some((proposed, ValueEmpty::default()))
    }

    async fn plan_update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: WorkloadState,
        mut proposed: WorkloadState,
        config: WorkloadState,
        private: ValueEmpty,
        _meta: ValueEmpty,
    ) -> Option<(WorkloadState, ValueEmpty, Vec<AttributePath>)> {
        proposed.plan_tcp_listen_port(&config, Some(&prior));
        proposed.check(diags);
        proposed.fill_defaults();
        // Placement may change under Terraform when the service moves the workload:
        // keep what refresh saw, so it is never a diff.
        proposed.copy_computed(&prior);
        let mut replace = Vec::new();
        if proposed.name != prior.name {
            replace.push(AttributePath::new("name"));
        }
        if proposed.command != prior.command {
            replace.push(AttributePath::new("command"));
        }
        if proposed.image != prior.image {
            replace.push(AttributePath::new("image"));
        }
        let port = |s: &WorkloadState| s.port.as_ref_option().map(whole).unwrap_or(DEFAULT_PORT);
        if proposed.port.is_unknown() || port(&proposed) != port(&prior) {
            replace.push(AttributePath::new("port"));
        }
        if proposed.tcp_port.is_unknown() || port_of(&proposed.tcp_port) != port_of(&prior.tcp_port)
        {
            replace.push(AttributePath::new("tcp_port"));
        }
        if proposed.tcp_listen_port.is_value()
            && port_of(&proposed.tcp_listen_port) != port_of(&prior.tcp_listen_port)
        {
            replace.push(AttributePath::new("tcp_listen_port"));
        }

        let requirements =
            |s: &WorkloadState| s.requirements.as_ref_option().map(RequirementsBlock::to_pb);
        if proposed.requirements != prior.requirements
            && requirements(&proposed) != requirements(&prior)
        {
            replace.push(AttributePath::new(requirements::BLOCK_NAME));
        }
        Some((proposed, private, replace))
    }

    async fn plan_destroy<'a>(
        &self,
        _diags: &mut Diagnostics,
        _prior: WorkloadState,
        private: ValueEmpty,
        _meta: ValueEmpty,
    ) -> Option<ValueEmpty> {
        Some(private)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        mut planned: WorkloadState,
        _config: WorkloadState,
        private: ValueEmpty,
        _meta: ValueEmpty,
    ) -> Option<(WorkloadState, ValueEmpty)> {
        if !planned.check(diags) {
            return None;
        }
        let connection = self.connection.get(diags).await?;
        let spec = planned.spec_pb();
        let name = spec.name.clone();
        let timeout = planned.timeout(|t| &t.create, DEFAULT_CREATE_TIMEOUT);
        let accepted = match connection
            .workloads()
            .apply_workload(pb::ApplyWorkloadRequest { spec: Some(spec) })
            .await
        {
            Ok(w) => w.into_inner(),
            Err(status) if status.code() == tonic::Code::AlreadyExists => {
                diags.error(
                    format!("A workload named {name:?} already exists"),
                    status.message().to_string(),
                    AttributePath::new("name"),
                );
                return None;
            }
            // What only the service can check (the router's TCP ports) lands on the
            // attribute like plan-time validation does.
            Err(status)
                if status.code() == tonic::Code::InvalidArgument
                    && status
                        .metadata()
                        .get(ERROR_FIELD_METADATA)
                        .and_then(|v| v.to_str().ok())
                        == Some("tcp_listen_port") =>
            {
                diags.error(
                    "Invalid value for tcp_listen_port",
                    status.message().to_string(),
                    AttributePath::new("tcp_listen_port"),
                );
                return None;
            }
            Err(status) => {
                report_status(
                    diags,
                    &connection.endpoint,
                    "creating a workload",
                    &status,
                    AttributePath::new(requirements::BLOCK_NAME),
                );
                return None;
            }
        };
        let finished = match wait_for(&connection, &accepted.id, &["RUNNING"], timeout).await {
            Ok(Some(w)) => w,
            Ok(None) => {
                diags.root_error(
                    format!("Workload {name:?} disappeared while it was being created"),
                    "It was deleted out of band. Apply again to create it.",
                );
                return None;
            }
            Err(status) => {
                report_status(
                    diags,
                    &connection.endpoint,
                    "waiting for a workload",
                    &status,
                    AttributePath::root(),
                );
                return None;
            }
        };
        match finished.status.as_str() {
            "RUNNING" => {
                planned.set_computed(&finished);
                Some((planned, private))
            }
            "FAILED" => {
                diags.root_error(
                    format!("Workload {name:?} failed to start: step {} failed", finished.failed_step),
                    format!(
                        "{}\n\nThe service released what it had created. Fix the cause and apply again; the run's steps are listed by `computearbitrage workload runs {}`.",
                        finished.status_reason, finished.id
                    ),
                );
                None
            }
            other => {
                diags.root_error(
                    format!("Workload {name:?} was not RUNNING within {} s", timeout.as_secs()),
                    format!(
                        "It is {other}: {}. The service keeps working on it; apply again to adopt it, or raise timeouts.create.",
                        finished.status_reason
                    ),
                );
                None
            }
        }
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        _prior: WorkloadState,
        mut planned: WorkloadState,
        _config: WorkloadState,
        private: ValueEmpty,
        _meta: ValueEmpty,
    ) -> Option<(WorkloadState, ValueEmpty)> {
        if !planned.check(diags) {
            return None;
        }
        let connection = self.connection.get(diags).await?;
        let spec = planned.spec_pb();
        let request = pb::UpdateWorkloadRequest {
            id: planned.id.as_ref_option().cloned().unwrap_or_default(),
            tags: spec.tags,
            health_check: spec.health_check,
            on_interruption: spec.on_interruption,
            env: spec.env,
        };
        match connection.workloads().update_workload(request).await {
            Ok(w) => {
                planned.set_computed(&w.into_inner());
                Some((planned, private))
            }
            Err(status) => {
                report_status(
                    diags,
                    &connection.endpoint,
                    "updating a workload",
                    &status,
                    AttributePath::root(),
                );
                None
            }
        }
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        state: WorkloadState,
        _private: ValueEmpty,
        _meta: ValueEmpty,
    ) -> Option<()> {
        let connection = self.connection.get(diags).await?;
        let id = state.id.as_ref_option().cloned().unwrap_or_default();
        let timeout = state.timeout(|t| &t.delete, DEFAULT_DELETE_TIMEOUT);
        let request = pb::DeleteWorkloadRequest {
            id: id.clone(),
            reason: "terraform destroy".into(),
        };
        match connection.workloads().delete_workload(request).await {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => return Some(()),
            Err(status) => {
                report_status(
                    diags,
                    &connection.endpoint,
                    "deleting a workload",
                    &status,
                    AttributePath::root(),
                );
                return None;
            }
        }
        match wait_for(&connection, &id, &["TERMINATED"], timeout).await {
            Ok(None) => Some(()),
            Ok(Some(w)) if w.status == "TERMINATED" => Some(()),
            Ok(Some(w)) => {
                diags.root_error(
                    format!("Workload {id} was not TERMINATED within {} s", timeout.as_secs()),
                    format!("It is {}: {}. Its termination run keeps going; see `computearbitrage workload runs {id}`, then destroy again.", w.status, w.status_reason),
                );
                None
            }
            Err(status) => {
                report_status(
                    diags,
                    &connection.endpoint,
                    "waiting for termination",
                    &status,
                    AttributePath::root(),
                );
                None
            }
        }
    }

    async fn import<'a>(
        &self,
        diags: &mut Diagnostics,
        id: String,
    ) -> Option<(WorkloadState, ValueEmpty)> {
        let connection = self.connection.get(diags).await?;
        match connection
            .workloads()
            .get_workload(pb::GetWorkloadRequest { id: id.clone() })
            .await
        {
            Ok(w) => {
                let w = w.into_inner();
                if w.status == "TERMINATED" || w.status == "FAILED" {
                    diags.root_error(
                        format!("Workload {id} is {} and cannot be imported", w.status),
                        "Import a workload that is running, or create a new one.",
                    );
                    return None;
                }
                Some((WorkloadState::from_workload(&w), ValueEmpty::default()))
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                diags.root_error(format!("No workload {id:?} to import"), "Workload ids look like `wl-…`; list them from the service. A workload of another tenant is not visible.");
                None
            }
            Err(status) => {
                report_status(
                    diags,
                    &connection.endpoint,
                    "importing a workload",
                    &status,
                    AttributePath::root(),
                );
                None
            }
        }
    }
}
