//! The resource's state, its wire conversions, and the rules that turn a
//! configuration and a prior state into a plan or a refreshed state.

use crate::canonical::{self, planned, refreshed};
use crate::duration;
use crate::number::Number;
use crate::requirements::{strings, whole, RequirementsBlock};
use computearbitrage_api::{defaults, pb};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tf_provider::value::{serde_as_vec, Value};

pub const DEFAULT_CREATE_TIMEOUT: Duration =
    Duration::from_secs(defaults::CREATE_TIMEOUT_SECONDS as u64);
pub const DEFAULT_DELETE_TIMEOUT: Duration = Duration::from_secs(300);

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
pub struct CheckpointBlock {
    pub signal: Value<String>,
    pub command: canonical::StringList,
    pub interval: Value<String>,
    pub keep: Value<Number>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RebalanceBlock {
    pub min_savings_percent: Value<Number>,
    pub min_duration: Value<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TimeoutsBlock {
    pub create: Value<String>,
    pub delete: Value<String>,
}

pub type StringMap = Value<BTreeMap<String, Value<String>>>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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
    pub tcp_allowed_cidrs: canonical::StringList,
    #[serde(with = "serde_as_vec")]
    pub health_check: Value<HealthCheckBlock>,
    pub on_interruption: Value<String>,
    pub on_unhealthy: Value<String>,
    pub replace_unhealthy_after_seconds: Value<Number>,
    pub fallback: Value<String>,
    #[serde(with = "serde_as_vec")]
    pub storage: Value<StorageBlock>,
    #[serde(with = "serde_as_vec")]
    pub checkpoint: Value<CheckpointBlock>,
    #[serde(with = "serde_as_vec")]
    pub rebalance: Value<RebalanceBlock>,
    pub tags: StringMap,
    #[serde(with = "serde_as_vec")]
    pub timeouts: Value<TimeoutsBlock>,
    pub status: Value<String>,
    pub cloud: Value<String>,
    /// Deprecated: `cloud`.
    pub provider: Value<String>,
    pub region: Value<String>,
    pub zone: Value<String>,
    pub instance_type: Value<String>,
    pub instance_id: Value<String>,
    pub endpoint: Value<String>,
    pub access_token: Value<String>,
    pub tcp_endpoint: Value<String>,
    pub storage_prefix: Value<String>,
    pub backend_endpoint: Value<String>,
    pub price_per_hour: Value<Number>,
    pub on_demand_price_per_hour: Value<Number>,
    pub market: Value<String>,
    pub cost_to_date: Value<Number>,
    pub created_at: Value<String>,
}

pub fn port_of(value: &Value<Number>) -> Option<u32> {
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

fn map_value(m: &HashMap<String, String>) -> StringMap {
    Value::Value(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::Value(v.clone())))
            .collect(),
    )
}

/// The new value, but in the prior representation when it is the same number:
/// Terraform compares decimals exactly, and the state's `0.00688` is not float64's.
fn same_number(prior: &Value<Number>, new: Option<f64>) -> Value<Number> {
    match (prior, new) {
        (Value::Value(p), Some(n)) if p.value() == n => prior.clone(),
        (_, new) => new.map(Number::from).into(),
    }
}

pub fn count(value: &Value<Number>) -> u32 {
    value
        .as_ref_option()
        .map(whole)
        .unwrap_or(0)
        .clamp(0, i64::from(u32::MAX)) as u32
}

fn integer(n: u32) -> Value<Number> {
    Value::Value(Number::from(i64::from(n)))
}

impl HealthCheckBlock {
    pub fn to_pb(&self) -> pb::HealthCheck {
        pb::HealthCheck {
            path: self.path.as_ref_option().cloned().unwrap_or_default(),
            interval_seconds: count(&self.interval_seconds),
            timeout_seconds: count(&self.timeout_seconds),
            unhealthy_threshold: count(&self.unhealthy_threshold),
        }
    }

    fn from_pb(c: &pb::HealthCheck) -> HealthCheckBlock {
        HealthCheckBlock {
            path: Value::Value(c.path.clone()),
            interval_seconds: integer(c.interval_seconds),
            timeout_seconds: integer(c.timeout_seconds),
            unhealthy_threshold: integer(c.unhealthy_threshold),
        }
    }

    /// The block with the defaults the service applies; the default timeout fits the
    /// interval, so it is unknown while the interval is.
    fn planned(config: &HealthCheckBlock, prior: Option<&HealthCheckBlock>) -> HealthCheckBlock {
        let none = HealthCheckBlock::default();
        let prior = prior.unwrap_or(&none);
        let number = |n: u32| Some(integer(n));
        let interval = planned(
            &config.interval_seconds,
            &prior.interval_seconds,
            number(defaults::HEALTH_INTERVAL_SECONDS),
            canonical::number,
        );
        let default_timeout = match &interval {
            Value::Value(i) => number(defaults::health_timeout_seconds(
                whole(i).clamp(0, i64::from(u32::MAX)) as u32,
            )),
            _ => Some(Value::Unknown),
        };
        HealthCheckBlock {
            path: planned(
                &config.path,
                &prior.path,
                Some(Value::Value(defaults::HEALTH_PATH.to_string())),
                canonical::text,
            ),
            timeout_seconds: planned(
                &config.timeout_seconds,
                &prior.timeout_seconds,
                default_timeout,
                canonical::number,
            ),
            interval_seconds: interval,
            unhealthy_threshold: planned(
                &config.unhealthy_threshold,
                &prior.unhealthy_threshold,
                number(defaults::HEALTH_UNHEALTHY_THRESHOLD),
                canonical::number,
            ),
        }
    }

    fn refreshed(prior: &HealthCheckBlock, actual: &HealthCheckBlock) -> HealthCheckBlock {
        HealthCheckBlock {
            path: refreshed(&prior.path, &actual.path, canonical::text),
            interval_seconds: refreshed(
                &prior.interval_seconds,
                &actual.interval_seconds,
                canonical::number,
            ),
            timeout_seconds: refreshed(
                &prior.timeout_seconds,
                &actual.timeout_seconds,
                canonical::number,
            ),
            unhealthy_threshold: refreshed(
                &prior.unhealthy_threshold,
                &actual.unhealthy_threshold,
                canonical::number,
            ),
        }
    }
}

impl StorageBlock {
    pub fn to_pb(&self) -> pb::StorageSpec {
        pb::StorageSpec {
            enabled: self.enabled.as_ref_option().copied().unwrap_or(false),
            quota_gb: count(&self.quota_gb),
            retention_days: count(&self.retention_days),
        }
    }

    fn from_pb(s: &pb::StorageSpec) -> StorageBlock {
        StorageBlock {
            enabled: Value::Value(s.enabled),
            quota_gb: integer(s.quota_gb),
            retention_days: integer(s.retention_days),
        }
    }

    /// Left out, each attribute means what the service stores for it: off, 0, 0.
    fn planned(config: &StorageBlock, prior: Option<&StorageBlock>) -> StorageBlock {
        let none = StorageBlock::default();
        let prior = prior.unwrap_or(&none);
        let zero = || Some(integer(0));
        StorageBlock {
            enabled: planned(
                &config.enabled,
                &prior.enabled,
                Some(Value::Value(false)),
                canonical::flag,
            ),
            quota_gb: planned(&config.quota_gb, &prior.quota_gb, zero(), canonical::number),
            retention_days: planned(
                &config.retention_days,
                &prior.retention_days,
                zero(),
                canonical::number,
            ),
        }
    }

    fn refreshed(prior: &StorageBlock, actual: &StorageBlock) -> StorageBlock {
        StorageBlock {
            enabled: refreshed(&prior.enabled, &actual.enabled, canonical::flag),
            quota_gb: refreshed(&prior.quota_gb, &actual.quota_gb, canonical::number),
            retention_days: refreshed(
                &prior.retention_days,
                &actual.retention_days,
                canonical::number,
            ),
        }
    }

    /// Whether storage is on (an unset `enabled` is off).
    pub fn enabled(block: &Value<StorageBlock>) -> bool {
        block
            .as_ref_option()
            .and_then(|s| s.enabled.as_ref_option().copied())
            .unwrap_or(false)
    }
}

/// A duration attribute by its length in seconds: `10m` is `600s`, unset is 0.
fn seconds(value: &Value<String>) -> Option<u64> {
    match value {
        Value::Value(text) => duration::parse(text).map(|d| d.as_secs()),
        _ => Some(0),
    }
}

impl CheckpointBlock {
    pub fn to_pb(&self) -> pb::CheckpointSpec {
        pb::CheckpointSpec {
            signal: self.signal.as_ref_option().cloned().unwrap_or_default(),
            command: strings(&self.command),
            interval_seconds: seconds(&self.interval)
                .unwrap_or(0)
                .min(u64::from(u32::MAX)) as u32,
            keep: count(&self.keep),
        }
    }

    fn from_pb(c: &pb::CheckpointSpec) -> CheckpointBlock {
        CheckpointBlock {
            signal: Value::Value(c.signal.clone()),
            command: if c.command.is_empty() {
                Value::Null
            } else {
                canonical::list_value(&c.command)
            },
            interval: if c.interval_seconds == 0 {
                Value::Null
            } else {
                Value::Value(duration::format(Duration::from_secs(
                    c.interval_seconds.into(),
                )))
            },
            keep: integer(c.keep),
        }
    }

    /// Left out, each attribute means what the service stores for it: SIGTERM, no
    /// command, no periodic copies, 3 kept.
    fn planned(config: &CheckpointBlock, prior: Option<&CheckpointBlock>) -> CheckpointBlock {
        let none = CheckpointBlock::default();
        let prior = prior.unwrap_or(&none);
        CheckpointBlock {
            signal: planned(
                &config.signal,
                &prior.signal,
                Some(Value::Value(defaults::CHECKPOINT_SIGNAL.to_string())),
                canonical::text,
            ),
            command: planned(&config.command, &prior.command, None, canonical::list),
            interval: planned(&config.interval, &prior.interval, None, seconds),
            keep: planned(
                &config.keep,
                &prior.keep,
                Some(integer(defaults::CHECKPOINTS_KEPT)),
                canonical::number,
            ),
        }
    }

    fn refreshed(prior: &CheckpointBlock, actual: &CheckpointBlock) -> CheckpointBlock {
        CheckpointBlock {
            signal: refreshed(&prior.signal, &actual.signal, canonical::text),
            command: refreshed(&prior.command, &actual.command, canonical::list),
            interval: refreshed(&prior.interval, &actual.interval, seconds),
            keep: refreshed(&prior.keep, &actual.keep, canonical::number),
        }
    }
}

impl RebalanceBlock {
    pub fn to_pb(&self) -> pb::RebalanceSpec {
        pb::RebalanceSpec {
            min_savings_percent: self
                .min_savings_percent
                .as_ref_option()
                .map(Number::value)
                .unwrap_or(0.0),
            min_duration_seconds: match &self.min_duration {
                Value::Value(text) => Some(
                    duration::parse(text)
                        .map(|d| d.as_secs())
                        // Unparseable: past the limit, so validation names it.
                        .unwrap_or(u64::MAX)
                        .min(u64::from(u32::MAX)) as u32,
                ),
                _ => None,
            },
        }
    }

    fn from_pb(r: &pb::RebalanceSpec) -> RebalanceBlock {
        RebalanceBlock {
            min_savings_percent: Value::Value(Number::from(r.min_savings_percent)),
            min_duration: Value::Value(duration::format(Duration::from_secs(
                r.min_duration_seconds
                    .unwrap_or(defaults::REBALANCE_MIN_DURATION_SECONDS)
                    .into(),
            ))),
        }
    }

    /// Left out, each attribute means the service's default: 20 %, for an hour.
    fn planned(config: &RebalanceBlock, prior: Option<&RebalanceBlock>) -> RebalanceBlock {
        let none = RebalanceBlock::default();
        let prior = prior.unwrap_or(&none);
        RebalanceBlock {
            min_savings_percent: planned(
                &config.min_savings_percent,
                &prior.min_savings_percent,
                Some(Value::Value(Number::from(
                    defaults::REBALANCE_MIN_SAVINGS_PERCENT,
                ))),
                canonical::number,
            ),
            min_duration: planned(
                &config.min_duration,
                &prior.min_duration,
                Some(Value::Value(duration::format(Duration::from_secs(
                    defaults::REBALANCE_MIN_DURATION_SECONDS.into(),
                )))),
                seconds,
            ),
        }
    }

    fn refreshed(prior: &RebalanceBlock, actual: &RebalanceBlock) -> RebalanceBlock {
        RebalanceBlock {
            min_savings_percent: refreshed(
                &prior.min_savings_percent,
                &actual.min_savings_percent,
                canonical::number,
            ),
            min_duration: refreshed(&prior.min_duration, &actual.min_duration, seconds),
        }
    }
}

/// A block planned from its configuration: present exactly when configured.
fn planned_block<T: Clone>(
    config: &Value<T>,
    prior: &Value<T>,
    plan: impl Fn(&T, Option<&T>) -> T,
) -> Value<T> {
    match config {
        Value::Value(c) => Value::Value(plan(c, prior.as_ref_option())),
        other => other.clone(),
    }
}

impl WorkloadState {
    pub fn timeout(
        &self,
        pick: fn(&TimeoutsBlock) -> &Value<String>,
        default: Duration,
    ) -> Duration {
        self.timeouts
            .as_ref_option()
            .and_then(|t| pick(t).as_ref_option().and_then(|d| duration::parse(d)))
            .unwrap_or(default)
    }

    pub fn spec_pb(&self) -> pb::WorkloadSpec {
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
            env: canonical::map(&self.env).into_iter().collect(),
            port: self
                .port
                .as_ref_option()
                .map(whole)
                .unwrap_or(i64::from(defaults::PORT))
                .clamp(0, 65_536) as u32,
            health_check: self
                .health_check
                .as_ref_option()
                .map(HealthCheckBlock::to_pb),
            on_interruption: self
                .on_interruption
                .as_ref_option()
                .cloned()
                .unwrap_or_default(),
            on_unhealthy: self
                .on_unhealthy
                .as_ref_option()
                .cloned()
                .unwrap_or_default(),
            replace_unhealthy_after_seconds: self
                .replace_unhealthy_after_seconds
                .as_ref_option()
                .map(whole)
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX)) as u32,
            fallback: self.fallback.as_ref_option().cloned().unwrap_or_default(),
            storage: self.storage.as_ref_option().map(StorageBlock::to_pb),
            checkpoint: self.checkpoint.as_ref_option().map(CheckpointBlock::to_pb),
            rebalance: self.rebalance.as_ref_option().map(RebalanceBlock::to_pb),
            tags: canonical::map(&self.tags).into_iter().collect(),
            create_timeout_seconds: self
                .timeout(|t| &t.create, DEFAULT_CREATE_TIMEOUT)
                .as_secs() as u32,
            tcp_port: port_of(&self.tcp_port),
            tcp_listen_port: port_of(&self.tcp_listen_port),
            tcp_allowed_cidrs: strings(&self.tcp_allowed_cidrs),
        }
    }

    /// Plans the attributes a user writes: their configured values (in the prior's
    /// spelling wherever they mean the same) and, for those left out, what the
    /// service will use. Computed attributes are left as they are.
    pub fn plan_configured(&mut self, config: &WorkloadState, prior: Option<&WorkloadState>) {
        let nothing = WorkloadState::empty();
        let prior = prior.unwrap_or(&nothing);
        let empty_map = || Some(Value::Value(BTreeMap::new()));
        self.name = planned(&config.name, &prior.name, None, canonical::text);
        self.image = planned(&config.image, &prior.image, None, canonical::text);
        self.command = config.command.clone();
        self.env = planned(&config.env, &prior.env, empty_map(), canonical::map);
        self.tags = planned(&config.tags, &prior.tags, empty_map(), canonical::map);
        self.port = planned(
            &config.port,
            &prior.port,
            Some(integer(u32::from(defaults::PORT))),
            canonical::number,
        );
        self.on_interruption = planned(
            &config.on_interruption,
            &prior.on_interruption,
            Some(Value::Value(defaults::ON_INTERRUPTION.to_string())),
            canonical::text,
        );
        self.on_unhealthy = planned(
            &config.on_unhealthy,
            &prior.on_unhealthy,
            Some(Value::Value(defaults::ON_UNHEALTHY.to_string())),
            canonical::text,
        );
        self.replace_unhealthy_after_seconds = planned(
            &config.replace_unhealthy_after_seconds,
            &prior.replace_unhealthy_after_seconds,
            Some(integer(defaults::REPLACE_UNHEALTHY_AFTER_SECONDS)),
            canonical::number,
        );
        self.fallback = planned(
            &config.fallback,
            &prior.fallback,
            Some(Value::Value(defaults::FALLBACK.to_string())),
            canonical::text,
        );
        self.tcp_port = planned(&config.tcp_port, &prior.tcp_port, None, canonical::number);
        self.tcp_allowed_cidrs = planned(
            &config.tcp_allowed_cidrs,
            &prior.tcp_allowed_cidrs,
            Some(canonical::list_value(&canonical::default_tcp_allowed())),
            canonical::cidrs,
        );
        self.requirements = planned_block(&config.requirements, &prior.requirements, |c, p| {
            RequirementsBlock::planned(c, p)
        });
        self.health_check = planned_block(&config.health_check, &prior.health_check, |c, p| {
            HealthCheckBlock::planned(c, p)
        });
        self.storage = planned_block(&config.storage, &prior.storage, |c, p| {
            StorageBlock::planned(c, p)
        });
        self.checkpoint = planned_block(&config.checkpoint, &prior.checkpoint, |c, p| {
            CheckpointBlock::planned(c, p)
        });
        self.rebalance = planned_block(&config.rebalance, &prior.rebalance, |c, p| {
            RebalanceBlock::planned(c, p)
        });
        // Durations compare by length: `5m` and `300s` are one timeout.
        self.timeouts = planned_block(&config.timeouts, &prior.timeouts, |c, p| {
            let seconds = |v: &Value<String>| v.as_ref_option().and_then(|d| duration::parse(d));
            let keep = |c: &Value<String>, p: Option<&Value<String>>| match p {
                Some(p) if p.is_value() && seconds(c).is_some() && seconds(c) == seconds(p) => {
                    p.clone()
                }
                _ => c.clone(),
            };
            TimeoutsBlock {
                create: keep(&c.create, p.map(|p| &p.create)),
                delete: keep(&c.delete, p.map(|p| &p.delete)),
            }
        });
        // The router's TCP listener port: as written; else kept while tcp_port is
        // unchanged; else chosen by the service at apply.
        self.tcp_listen_port = if !config.tcp_listen_port.is_null() {
            planned(
                &config.tcp_listen_port,
                &prior.tcp_listen_port,
                None,
                canonical::number,
            )
        } else if self.tcp_port.is_null() {
            Value::Null
        } else if prior.id.is_value()
            && canonical::number(&prior.tcp_port) == canonical::number(&self.tcp_port)
        {
            prior.tcp_listen_port.clone()
        } else {
            Value::Unknown
        };
    }

    /// Whether the attributes a user writes differ from `other`'s.
    pub fn configured_differs(&self, other: &WorkloadState) -> bool {
        self.name != other.name
            || self.requirements != other.requirements
            || self.command != other.command
            || self.image != other.image
            || self.env != other.env
            || self.port != other.port
            || self.tcp_port != other.tcp_port
            || self.tcp_listen_port != other.tcp_listen_port
            || self.tcp_allowed_cidrs != other.tcp_allowed_cidrs
            || self.health_check != other.health_check
            || self.on_interruption != other.on_interruption
            || self.on_unhealthy != other.on_unhealthy
            || self.replace_unhealthy_after_seconds != other.replace_unhealthy_after_seconds
            || self.fallback != other.fallback
            || self.storage != other.storage
            || self.checkpoint != other.checkpoint
            || self.rebalance != other.rebalance
            || self.tags != other.tags
            || self.timeouts != other.timeouts
    }

    /// Marks every computed attribute unknown, as for a new workload.
    pub fn set_computed_unknown(&mut self) {
        self.id = Value::Unknown;
        self.endpoint = Value::Unknown;
        self.access_token = Value::Unknown;
        self.created_at = Value::Unknown;
        self.tcp_endpoint = if self.tcp_port.is_null() {
            Value::Null
        } else {
            Value::Unknown
        };
        let storage_enabled = match &self.storage {
            Value::Value(storage) => !matches!(storage.enabled, Value::Value(false) | Value::Null),
            _ => false,
        };
        self.storage_prefix = if storage_enabled {
            Value::Unknown
        } else {
            Value::Null
        };
        self.set_volatile_unknown();
    }

    /// Marks unknown what the service may change on its own between a plan and its
    /// apply: status, placement, prices, the instance and its address. An update's
    /// apply reports them as they are then, so a saved plan never disagrees.
    pub fn set_volatile_unknown(&mut self) {
        self.status = Value::Unknown;
        self.cloud = Value::Unknown;
        self.provider = Value::Unknown;
        self.region = Value::Unknown;
        self.zone = Value::Unknown;
        self.instance_type = Value::Unknown;
        self.instance_id = Value::Unknown;
        self.backend_endpoint = Value::Unknown;
        self.price_per_hour = Value::Unknown;
        self.on_demand_price_per_hour = Value::Unknown;
        self.market = Value::Unknown;
        self.cost_to_date = Value::Unknown;
    }

    pub fn copy_computed(&mut self, from: &WorkloadState) {
        self.id = from.id.clone();
        self.status = from.status.clone();
        self.cloud = from.cloud.clone();
        self.provider = from.provider.clone();
        self.region = from.region.clone();
        self.zone = from.zone.clone();
        self.instance_type = from.instance_type.clone();
        self.instance_id = from.instance_id.clone();
        self.endpoint = from.endpoint.clone();
        self.access_token = from.access_token.clone();
        self.tcp_endpoint = from.tcp_endpoint.clone();
        self.storage_prefix = from.storage_prefix.clone();
        self.backend_endpoint = from.backend_endpoint.clone();
        self.price_per_hour = from.price_per_hour.clone();
        self.on_demand_price_per_hour = from.on_demand_price_per_hour.clone();
        self.market = from.market.clone();
        self.cost_to_date = from.cost_to_date.clone();
        self.created_at = from.created_at.clone();
    }

    /// Sets every computed attribute from the service's answer.
    pub fn set_computed(&mut self, w: &pb::Workload) {
        self.id = Value::Value(w.id.clone());
        self.status = Value::Value(w.status.clone());
        self.cloud = non_empty(&w.cloud);
        self.provider = self.cloud.clone();
        self.region = non_empty(&w.region);
        self.zone = Value::Value(w.zone.clone());
        self.instance_type = non_empty(&w.instance_type);
        self.instance_id = non_empty(&w.instance_id);
        self.endpoint = Value::Value(w.endpoint.clone());
        self.access_token = Value::Value(w.access_token.clone());
        self.tcp_endpoint = non_empty(&w.tcp_endpoint);
        self.storage_prefix = non_empty(&w.storage_prefix);
        if let Some(port) = w.tcp_listen_port {
            self.tcp_listen_port = same_number(&self.tcp_listen_port, Some(f64::from(port)));
        } else if self.tcp_port.is_null() {
            self.tcp_listen_port = Value::Null;
        }
        self.backend_endpoint = non_empty(&w.backend_endpoint);
        self.price_per_hour = same_number(&self.price_per_hour, w.price_per_hour);
        self.on_demand_price_per_hour =
            same_number(&self.on_demand_price_per_hour, w.on_demand_price_per_hour);
        self.market = non_empty(&w.market);
        self.cost_to_date = same_number(&self.cost_to_date, w.cost_to_date);
        self.created_at = Value::Value(w.created_at.clone());
    }

    /// No unknown value left: what an apply that failed half-way returns, so the
    /// workload it started is in the state (tainted) instead of lost.
    pub fn unknowns_to_null(&mut self) {
        fn clear<T>(value: &mut Value<T>) {
            if value.is_unknown() {
                *value = Value::Null;
            }
        }
        clear(&mut self.status);
        clear(&mut self.cloud);
        clear(&mut self.provider);
        clear(&mut self.region);
        clear(&mut self.zone);
        clear(&mut self.instance_type);
        clear(&mut self.instance_id);
        clear(&mut self.endpoint);
        clear(&mut self.access_token);
        clear(&mut self.tcp_endpoint);
        clear(&mut self.storage_prefix);
        clear(&mut self.tcp_listen_port);
        clear(&mut self.backend_endpoint);
        clear(&mut self.price_per_hour);
        clear(&mut self.on_demand_price_per_hour);
        clear(&mut self.market);
        clear(&mut self.cost_to_date);
        clear(&mut self.created_at);
        if let Value::Value(check) = &mut self.health_check {
            clear(&mut check.timeout_seconds);
        }
    }

    /// A state with every attribute null.
    pub fn empty() -> WorkloadState {
        WorkloadState {
            id: Value::Null,
            name: Value::Null,
            requirements: Value::Null,
            command: Value::Null,
            image: Value::Null,
            env: Value::Null,
            port: Value::Null,
            tcp_port: Value::Null,
            tcp_listen_port: Value::Null,
            tcp_allowed_cidrs: Value::Null,
            health_check: Value::Null,
            on_interruption: Value::Null,
            on_unhealthy: Value::Null,
            replace_unhealthy_after_seconds: Value::Null,
            fallback: Value::Null,
            storage: Value::Null,
            checkpoint: Value::Null,
            rebalance: Value::Null,
            tags: Value::Null,
            timeouts: Value::Null,
            status: Value::Null,
            cloud: Value::Null,
            provider: Value::Null,
            region: Value::Null,
            zone: Value::Null,
            instance_type: Value::Null,
            instance_id: Value::Null,
            endpoint: Value::Null,
            access_token: Value::Null,
            tcp_endpoint: Value::Null,
            storage_prefix: Value::Null,
            backend_endpoint: Value::Null,
            price_per_hour: Value::Null,
            on_demand_price_per_hour: Value::Null,
            market: Value::Null,
            cost_to_date: Value::Null,
            created_at: Value::Null,
        }
    }

    /// The whole state of an existing workload, in canonical form, for import.
    pub fn from_workload(w: &pb::Workload) -> WorkloadState {
        let spec = w.spec.clone().unwrap_or_default();
        let mut state = WorkloadState::empty();
        state.name = Value::Value(spec.name.clone());
        state.requirements = Value::Value(RequirementsBlock::from_pb(
            &spec.requirements.clone().unwrap_or_default(),
        ));
        state.command = canonical::list_value(&spec.command);
        state.image = non_empty(&spec.image);
        state.env = map_value(&spec.env);
        state.tags = map_value(&spec.tags);
        state.port = integer(spec.port);
        state.tcp_port = spec.tcp_port.map(integer).unwrap_or(Value::Null);
        state.tcp_listen_port = spec.tcp_listen_port.map(integer).unwrap_or(Value::Null);
        state.tcp_allowed_cidrs = canonical::list_value(&spec.tcp_allowed_cidrs);
        state.health_check = spec
            .health_check
            .as_ref()
            .map(HealthCheckBlock::from_pb)
            .into();
        state.on_interruption = Value::Value(spec.on_interruption.clone());
        state.on_unhealthy = Value::Value(spec.on_unhealthy.clone());
        state.replace_unhealthy_after_seconds = integer(spec.replace_unhealthy_after_seconds);
        state.fallback = Value::Value(spec.fallback.clone());
        state.storage = spec.storage.as_ref().map(StorageBlock::from_pb).into();
        state.checkpoint = spec
            .checkpoint
            .as_ref()
            .map(CheckpointBlock::from_pb)
            .into();
        state.rebalance = spec.rebalance.as_ref().map(RebalanceBlock::from_pb).into();
        // The service keeps the create timeout; one other than the default was written.
        if spec.create_timeout_seconds != 0
            && spec.create_timeout_seconds != defaults::CREATE_TIMEOUT_SECONDS
        {
            state.timeouts = Value::Value(TimeoutsBlock {
                create: Value::Value(duration::format(Duration::from_secs(
                    spec.create_timeout_seconds.into(),
                ))),
                delete: Value::Null,
            });
        }
        state.set_computed(w);
        state
    }

    /// The state after a refresh: what the service has now, in the prior state's
    /// spelling wherever it means the same, so a change made outside Terraform (tags,
    /// env, health check, on_interruption, on_unhealthy, storage, checkpoint, set through the
    /// API or the CLI) is
    /// a diff in the next plan, and nothing else is.
    pub fn refreshed(prior: &WorkloadState, w: &pb::Workload) -> WorkloadState {
        let actual = WorkloadState::from_workload(w);
        let mut state = prior.clone();
        state.name = refreshed(&prior.name, &actual.name, canonical::text);
        state.command = refreshed(&prior.command, &actual.command, canonical::list);
        state.image = refreshed(&prior.image, &actual.image, canonical::text);
        state.env = refreshed(&prior.env, &actual.env, canonical::map);
        state.tags = refreshed(&prior.tags, &actual.tags, canonical::map);
        state.port = refreshed(&prior.port, &actual.port, canonical::number);
        state.tcp_port = refreshed(&prior.tcp_port, &actual.tcp_port, canonical::number);
        state.tcp_allowed_cidrs = refreshed(
            &prior.tcp_allowed_cidrs,
            &actual.tcp_allowed_cidrs,
            canonical::cidrs,
        );
        state.on_interruption = refreshed(
            &prior.on_interruption,
            &actual.on_interruption,
            canonical::text,
        );
        state.on_unhealthy = refreshed(&prior.on_unhealthy, &actual.on_unhealthy, canonical::text);
        state.replace_unhealthy_after_seconds = refreshed(
            &prior.replace_unhealthy_after_seconds,
            &actual.replace_unhealthy_after_seconds,
            canonical::number,
        );
        state.fallback = refreshed(&prior.fallback, &actual.fallback, canonical::text);
        state.requirements = match (&prior.requirements, &actual.requirements) {
            (Value::Value(p), Value::Value(a)) => Value::Value(RequirementsBlock::refreshed(p, a)),
            (_, a) => a.clone(),
        };
        state.health_check = match (&prior.health_check, &actual.health_check) {
            (Value::Value(p), Value::Value(a)) => Value::Value(HealthCheckBlock::refreshed(p, a)),
            (_, a) => a.clone(),
        };
        state.storage = match (&prior.storage, &actual.storage) {
            (Value::Value(p), Value::Value(a)) => Value::Value(StorageBlock::refreshed(p, a)),
            (_, a) => a.clone(),
        };
        state.checkpoint = match (&prior.checkpoint, &actual.checkpoint) {
            (Value::Value(p), Value::Value(a)) => Value::Value(CheckpointBlock::refreshed(p, a)),
            (_, a) => a.clone(),
        };
        state.rebalance = match (&prior.rebalance, &actual.rebalance) {
            (Value::Value(p), Value::Value(a)) => Value::Value(RebalanceBlock::refreshed(p, a)),
            (_, a) => a.clone(),
        };
        state.set_computed(w);
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(spec: pb::WorkloadSpec) -> pb::Workload {
        pb::Workload {
            id: "wl-1".into(),
            spec: Some(spec),
            status: "RUNNING".into(),
            cloud: "gcp".into(),
            region: "us-central1".into(),
            instance_type: "e2-small".into(),
            instance_id: "i-1".into(),
            endpoint: "http://r/w/wl-1/".into(),
            access_token: "caw_x".into(),
            price_per_hour: Some(0.01),
            created_at: "2026-12-01T00:00:00Z".into(),
            ..Default::default()
        }
    }

    fn stored_spec() -> pb::WorkloadSpec {
        pb::WorkloadSpec {
            name: "web".into(),
            requirements: Some(pb::Requirements {
                architecture: "x86_64".into(),
                allow_unknown_interruption_rate: Some(true),
                ..Default::default()
            }),
            command: vec!["serve".into()],
            port: 8080,
            on_interruption: "migrate".into(),
            on_unhealthy: "keep".into(),
            replace_unhealthy_after_seconds: 300,
            fallback: "none".into(),
            tags: HashMap::from([("team".into(), "ml".into())]),
            ..Default::default()
        }
    }

    /// A configuration as Terraform decodes it: only what the user wrote.
    fn config(architecture: &str, allow_unknown: Value<bool>, tags: StringMap) -> WorkloadState {
        let mut c = WorkloadState::empty();
        c.name = Value::Value("web".into());
        c.command = canonical::list_value(&["serve".into()]);
        c.tags = tags;
        c.requirements = Value::Value(RequirementsBlock {
            architecture: Value::Value(architecture.into()),
            allow_unknown_interruption_rate: allow_unknown,
            ..Default::default()
        });
        c
    }

    fn plan(prior: &WorkloadState, config: &WorkloadState) -> WorkloadState {
        let mut planned = config.clone();
        planned.plan_configured(config, Some(prior));
        planned
    }

    #[test]
    fn an_import_plans_clean_for_every_accepted_spelling() {
        let imported = WorkloadState::from_workload(&workload(stored_spec()));
        let tags = map_value(&HashMap::from([("team".into(), "ml".into())]));
        for written in ["amd64", "x86_64", "X86_64"] {
            let c = config(written, Value::Value(true), tags.clone());
            let planned = plan(&imported, &c);
            assert!(
                !planned.configured_differs(&imported),
                "{written}: {planned:#?}"
            );
        }
    }

    #[test]
    fn a_change_made_outside_terraform_reads_back_as_a_diff() {
        let c = config(
            "amd64",
            Value::Value(true),
            map_value(&HashMap::from([("team".into(), "ml".into())])),
        );
        let mut prior = c.clone();
        prior.plan_configured(&c, None);
        prior.set_computed(&workload(stored_spec()));
        // Unchanged on the service: the refresh keeps the user's spelling, no diff.
        let same = WorkloadState::refreshed(&prior, &workload(stored_spec()));
        assert_eq!(same.requirements, prior.requirements);
        assert!(!plan(&same, &c).configured_differs(&same));
        // Tags changed through the CLI: the refresh shows them, so the plan has a diff.
        let mut drifted = stored_spec();
        drifted.tags.insert("owner".into(), "someone".into());
        let refreshed = WorkloadState::refreshed(&prior, &workload(drifted));
        assert!(plan(&refreshed, &c).configured_differs(&refreshed));
        // So is a replacement policy changed through the CLI.
        for (policy, after) in [("replace", 300), ("keep", 60)] {
            let mut drifted = stored_spec();
            drifted.on_unhealthy = policy.into();
            drifted.replace_unhealthy_after_seconds = after;
            let refreshed = WorkloadState::refreshed(&prior, &workload(drifted));
            assert!(
                plan(&refreshed, &c).configured_differs(&refreshed),
                "{policy} after {after} s"
            );
        }
    }

    #[test]
    fn a_checkpoint_block_plans_its_defaults_and_reads_back_in_the_written_spelling() {
        let tags = map_value(&HashMap::from([("team".into(), "ml".into())]));
        let mut c = config("x86_64", Value::Value(true), tags);
        c.checkpoint = Value::Value(CheckpointBlock {
            interval: Value::Value("10m".into()),
            ..Default::default()
        });
        let planned = plan(&WorkloadState::empty(), &c);
        let block = planned.checkpoint.as_ref_option().unwrap();
        assert_eq!(block.signal, Value::Value("SIGTERM".into()));
        assert_eq!(
            canonical::number(&block.keep),
            canonical::number(&integer(3))
        );
        assert!(block.command.is_null());
        assert_eq!(block.to_pb().interval_seconds, 600);
        // The service answers in seconds; "10m" stays as written, so the plan is clean.
        let mut stored = stored_spec();
        stored.checkpoint = Some(pb::CheckpointSpec {
            signal: "SIGTERM".into(),
            command: Vec::new(),
            interval_seconds: 600,
            keep: 3,
        });
        let refreshed = WorkloadState::refreshed(&planned, &workload(stored.clone()));
        assert_eq!(refreshed.checkpoint, planned.checkpoint);
        assert!(!plan(&refreshed, &c).configured_differs(&refreshed));
        // Imported, "600s" is "10m": no diff either.
        let imported = WorkloadState::from_workload(&workload(stored.clone()));
        assert!(!plan(&imported, &c).configured_differs(&imported));
        // The interval changed through the API: a diff.
        stored.checkpoint.as_mut().unwrap().interval_seconds = 60;
        let drifted = WorkloadState::refreshed(&planned, &workload(stored));
        assert!(plan(&drifted, &c).configured_differs(&drifted));
    }

    #[test]
    fn a_rebalance_block_plans_its_defaults_and_reads_back_in_the_written_spelling() {
        let tags = map_value(&HashMap::from([("team".into(), "ml".into())]));
        let mut c = config("x86_64", Value::Value(true), tags);
        c.rebalance = Value::Value(RebalanceBlock {
            min_duration: Value::Value("90m".into()),
            ..Default::default()
        });
        let planned = plan(&WorkloadState::empty(), &c);
        let block = planned.rebalance.as_ref_option().unwrap();
        assert_eq!(
            block.to_pb(),
            pb::RebalanceSpec {
                min_savings_percent: 20.0,
                min_duration_seconds: Some(5400)
            }
        );
        // The service answers 20.0 and 5400 s: "1h30m" is "90m", so no diff.
        let mut stored = stored_spec();
        stored.rebalance = Some(block.to_pb());
        let refreshed = WorkloadState::refreshed(&planned, &workload(stored.clone()));
        assert_eq!(refreshed.rebalance, planned.rebalance);
        assert!(!plan(&refreshed, &c).configured_differs(&refreshed));
        let imported = WorkloadState::from_workload(&workload(stored.clone()));
        assert!(!plan(&imported, &c).configured_differs(&imported));
        // Changed or removed through the API: a diff either way.
        stored.rebalance.as_mut().unwrap().min_savings_percent = 35.0;
        let drifted = WorkloadState::refreshed(&planned, &workload(stored.clone()));
        assert!(plan(&drifted, &c).configured_differs(&drifted));
        stored.rebalance = None;
        let removed = WorkloadState::refreshed(&planned, &workload(stored));
        assert!(removed.rebalance.is_null());
        assert!(plan(&removed, &c).configured_differs(&removed));
    }

    #[test]
    fn the_default_timeout_follows_the_interval_the_user_wrote() {
        let mut c = config("x86_64", Value::Null, Value::Null);
        c.health_check = Value::Value(HealthCheckBlock {
            interval_seconds: Value::Value(Number::from(2)),
            ..Default::default()
        });
        let planned = plan(&WorkloadState::empty(), &c);
        let check = planned.health_check.as_ref_option().unwrap();
        assert_eq!(
            canonical::number(&check.timeout_seconds),
            canonical::number(&integer(2))
        );
        assert_eq!(check.path, Value::Value("/health".into()));
        c.health_check = Value::Value(HealthCheckBlock {
            interval_seconds: Value::Unknown,
            ..Default::default()
        });
        let planned = plan(&WorkloadState::empty(), &c);
        assert!(planned
            .health_check
            .as_ref_option()
            .unwrap()
            .timeout_seconds
            .is_unknown());
    }

    #[test]
    fn tcp_ranges_compare_as_sets_of_canonical_ranges() {
        let ranges = |items: &[&str]| {
            canonical::list_value(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        // Left out: the plan says what the service will use.
        let planned = plan(
            &WorkloadState::empty(),
            &config("x86_64", Value::Null, Value::Null),
        );
        assert_eq!(
            canonical::list(&planned.tcp_allowed_cidrs),
            vec!["127.0.0.0/8", "::1/128"]
        );

        let tags = map_value(&HashMap::from([("team".into(), "ml".into())]));
        let mut c = config("x86_64", Value::Value(true), tags);
        c.tcp_allowed_cidrs = ranges(&["10.0.0.7", "192.168.0.0/16"]);
        let mut prior = plan(&WorkloadState::empty(), &c);
        prior.set_computed(&workload(stored_spec()));
        // The service answers in canonical form and keeps the order; no diff.
        let mut stored = stored_spec();
        stored.tcp_allowed_cidrs = vec!["10.0.0.7/32".into(), "192.168.0.0/16".into()];
        let same = WorkloadState::refreshed(&prior, &workload(stored.clone()));
        assert_eq!(same.tcp_allowed_cidrs, c.tcp_allowed_cidrs);
        // Reordered in the configuration: the same set, so no diff either.
        let mut reordered = c.clone();
        reordered.tcp_allowed_cidrs = ranges(&["192.168.0.0/16", "10.0.0.7/32", "10.0.0.7"]);
        assert!(!plan(&same, &reordered).configured_differs(&same));
        // Narrowed through the CLI: a diff that puts the configured ranges back.
        stored.tcp_allowed_cidrs = vec!["10.0.0.7/32".into()];
        let drifted = WorkloadState::refreshed(&prior, &workload(stored));
        let replan = plan(&drifted, &c);
        assert!(replan.configured_differs(&drifted));
        assert_eq!(
            replan.spec_pb().tcp_allowed_cidrs,
            vec!["10.0.0.7", "192.168.0.0/16"]
        );
    }
}
