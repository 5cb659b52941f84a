//! What a user asks to run: the workload spec, its defaults and its validation, and
//! which parts can change in place.

use crate::filter::Requirements;
use std::collections::BTreeMap;
use std::time::Duration;

/// What to do when the cloud reclaims the instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnInterruption {
    /// Checkpoint and re-provision elsewhere (until migration lands: terminate).
    Migrate,
    Terminate,
}

impl OnInterruption {
    pub fn as_str(self) -> &'static str {
        match self {
            OnInterruption::Migrate => "migrate",
            OnInterruption::Terminate => "terminate",
        }
    }

    pub fn parse(text: &str) -> Option<OnInterruption> {
        match text {
            "migrate" => Some(OnInterruption::Migrate),
            "terminate" => Some(OnInterruption::Terminate),
            _ => None,
        }
    }
}

/// What happens to a workload that stays UNHEALTHY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnhealthy {
    /// Stay on the instance and wait for it to recover.
    #[default]
    Keep,
    /// Move to a fresh instance, restored from the newest complete checkpoint, once
    /// the workload has been UNHEALTHY for `replace_unhealthy_after`.
    Replace,
}

impl OnUnhealthy {
    pub fn as_str(self) -> &'static str {
        match self {
            OnUnhealthy::Keep => "keep",
            OnUnhealthy::Replace => "replace",
        }
    }

    pub fn parse(text: &str) -> Option<OnUnhealthy> {
        match text {
            "keep" => Some(OnUnhealthy::Keep),
            "replace" => Some(OnUnhealthy::Replace),
            _ => None,
        }
    }
}

/// What capacity a workload may run on when spot has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Spot only: no matching offer, or spot capacity errors that persist, fail it.
    #[default]
    None,
    /// On-demand capacity when no spot offer matches or spot capacity errors persist,
    /// paid at the offer's on-demand price.
    OnDemand,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::None => "none",
            Fallback::OnDemand => "on_demand",
        }
    }

    pub fn parse(text: &str) -> Option<Fallback> {
        match text {
            "none" => Some(Fallback::None),
            "on_demand" => Some(Fallback::OnDemand),
            _ => None,
        }
    }
}

fn default_replace_unhealthy_after() -> Duration {
    Duration::from_secs(
        computearbitrage_conventions::defaults::REPLACE_UNHEALTHY_AFTER_SECONDS.into(),
    )
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        use computearbitrage_conventions::defaults;
        HealthCheck {
            path: defaults::HEALTH_PATH.into(),
            interval: Duration::from_secs(defaults::HEALTH_INTERVAL_SECONDS.into()),
            timeout: Duration::from_secs(defaults::HEALTH_TIMEOUT_SECONDS.into()),
            unhealthy_threshold: defaults::HEALTH_UNHEALTHY_THRESHOLD,
        }
    }
}

/// Which optional blocks the request that set a spec had. `health_check {}` and no
/// block at all ask for the same check, but Terraform counts blocks, so the service
/// remembers which form was written and returns the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrittenBlocks {
    pub requirements: bool,
    pub health_check: bool,
    pub storage: bool,
    #[serde(default)]
    pub checkpoint: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StorageSpec {
    pub enabled: bool,
    pub quota_gb: u32,
    pub retention_days: u32,
}

impl StorageSpec {
    /// `quota_gb` in bytes, as uploads are counted.
    pub fn quota_bytes(&self) -> u64 {
        u64::from(self.quota_gb) << 30
    }
}

/// How the workload is checkpointed: what tells it a notice is here, and how often
/// `$CHECKPOINT_DIR` is copied while it runs. Checkpoints need storage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointSpec {
    /// The signal sent on a notice when `command` is empty (a name of
    /// `conventions::signals::SUPPORTED`).
    pub signal: String,
    /// Run on a notice (and before every periodic copy) instead of signalling;
    /// empty: signal on a notice, copy the directory as it is periodically.
    pub command: Vec<String>,
    /// Between periodic checkpoints; zero: only the final one on a notice.
    pub interval: Duration,
    /// Complete checkpoints kept.
    pub keep: u32,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        use computearbitrage_conventions::defaults;
        CheckpointSpec {
            signal: defaults::CHECKPOINT_SIGNAL.into(),
            command: Vec::new(),
            interval: Duration::ZERO,
            keep: defaults::CHECKPOINTS_KEPT,
        }
    }
}

/// A workload as requested.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadSpec {
    pub name: String,
    pub requirements: Requirements,
    pub command: Vec<String>,
    pub image: Option<String>,
    pub env: BTreeMap<String, String>,
    pub port: u16,
    pub health_check: HealthCheck,
    pub on_interruption: OnInterruption,
    /// Stored before this was configurable: keep.
    #[serde(default)]
    pub on_unhealthy: OnUnhealthy,
    #[serde(default = "default_replace_unhealthy_after")]
    pub replace_unhealthy_after: Duration,
    /// Stored before fallback existed: none.
    #[serde(default)]
    pub fallback: Fallback,
    /// Price-driven moves (make-before-break); `None`: the workload stays where it is
    /// placed while it runs.
    #[serde(default)]
    pub rebalance: Option<crate::rebalance::RebalancePolicy>,
    pub storage: StorageSpec,
    /// Stored before checkpoints were configurable: the defaults.
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    pub tags: BTreeMap<String, String>,
    /// How long provisioning may take before the run fails.
    pub create_timeout: Duration,
    /// The port the workload serves raw TCP on, when it asks the router to expose one.
    #[serde(default)]
    pub tcp_port: Option<u16>,
    /// The router listener port the user asked for; allocated when `None`.
    #[serde(default)]
    pub tcp_listen_port: Option<u16>,
    /// Who may connect to the router's TCP listener (canonical CIDR ranges); empty is
    /// this machine only.
    #[serde(default)]
    pub tcp_allowed_cidrs: Vec<String>,
    /// Which optional blocks were written; `None` in records stored before this was
    /// kept, see [`WorkloadSpec::written_blocks`].
    #[serde(default)]
    pub written: Option<WrittenBlocks>,
}

impl WorkloadSpec {
    /// The ranges that may reach the TCP endpoint, the default filled in.
    pub fn tcp_allowed(&self) -> Vec<String> {
        if self.tcp_allowed_cidrs.is_empty() {
            computearbitrage_conventions::cidr::DEFAULT_TCP_ALLOWED
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            self.tcp_allowed_cidrs.clone()
        }
    }

    /// Which blocks were written; for old records, those that differ from the defaults.
    pub fn written_blocks(&self) -> WrittenBlocks {
        self.written.unwrap_or(WrittenBlocks {
            requirements: true,
            health_check: self.health_check != HealthCheck::default(),
            storage: self.storage != StorageSpec::default(),
            checkpoint: self.checkpoint != CheckpointSpec::default(),
        })
    }

    /// The fields in which `other` asks for something else, by their API names. Every
    /// field counts but `create_timeout`, which bounds one operation and is not part of
    /// what runs. Both specs must be canonical (as the service stores them).
    pub fn differences(&self, other: &WorkloadSpec) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |name: &'static str, same: bool| {
            if !same {
                out.push(name);
            }
        };
        let (mine, theirs) = (self.written_blocks(), other.written_blocks());
        check("name", self.name == other.name);
        check(
            "requirements",
            self.requirements == other.requirements && mine.requirements == theirs.requirements,
        );
        check("command", self.command == other.command);
        check("image", self.image == other.image);
        check("env", self.env == other.env);
        check("port", self.port == other.port);
        check(
            "health_check",
            self.health_check == other.health_check && mine.health_check == theirs.health_check,
        );
        check(
            "on_interruption",
            self.on_interruption == other.on_interruption,
        );
        check("on_unhealthy", self.on_unhealthy == other.on_unhealthy);
        check("fallback", self.fallback == other.fallback);
        check("rebalance", self.rebalance == other.rebalance);
        check(
            "replace_unhealthy_after_seconds",
            self.replace_unhealthy_after == other.replace_unhealthy_after,
        );
        check(
            "storage",
            self.storage == other.storage && mine.storage == theirs.storage,
        );
        check(
            "checkpoint",
            self.checkpoint == other.checkpoint && mine.checkpoint == theirs.checkpoint,
        );
        check("tags", self.tags == other.tags);
        check("tcp_port", self.tcp_port == other.tcp_port);
        check(
            "tcp_listen_port",
            self.tcp_listen_port == other.tcp_listen_port,
        );
        check(
            "tcp_allowed_cidrs",
            self.tcp_allowed() == other.tcp_allowed(),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> WorkloadSpec {
        WorkloadSpec {
            name: "web".into(),
            requirements: Requirements::default(),
            command: vec!["serve".into()],
            image: None,
            env: BTreeMap::new(),
            port: 8080,
            health_check: HealthCheck::default(),
            on_interruption: OnInterruption::Migrate,
            on_unhealthy: OnUnhealthy::Keep,
            replace_unhealthy_after: default_replace_unhealthy_after(),
            fallback: Fallback::None,
            rebalance: None,
            storage: StorageSpec::default(),
            checkpoint: CheckpointSpec::default(),
            tags: BTreeMap::new(),
            create_timeout: Duration::from_secs(600),
            tcp_port: None,
            tcp_listen_port: None,
            tcp_allowed_cidrs: Vec::new(),
            written: Some(WrittenBlocks {
                requirements: true,
                health_check: false,
                storage: false,
                checkpoint: false,
            }),
        }
    }

    #[test]
    fn every_field_but_the_create_timeout_makes_a_difference() {
        let base = spec();
        let mut other = base.clone();
        other.create_timeout = Duration::from_secs(5);
        assert!(base.differences(&other).is_empty());
        other.tags.insert("team".into(), "ml".into());
        other.env.insert("MODE".into(), "x".into());
        other.storage.quota_gb = 5;
        other.health_check.path = "/ready".into();
        other.checkpoint.interval = Duration::from_secs(600);
        other.rebalance = Some(crate::RebalancePolicy::default());
        assert_eq!(
            base.differences(&other),
            vec![
                "env",
                "health_check",
                "rebalance",
                "storage",
                "checkpoint",
                "tags"
            ]
        );
        let mut written = base.clone();
        written.written = Some(WrittenBlocks {
            requirements: true,
            health_check: true,
            storage: false,
            checkpoint: false,
        });
        assert_eq!(base.differences(&written), vec!["health_check"]);
    }

    #[test]
    fn records_without_written_blocks_infer_them_from_values() {
        let mut old = spec();
        old.written = None;
        assert!(!old.written_blocks().health_check);
        old.health_check.interval = Duration::from_secs(2);
        assert!(old.written_blocks().health_check);
        assert!(!old.written_blocks().checkpoint);
        old.checkpoint.keep = 5;
        assert!(old.written_blocks().checkpoint);
    }
}
