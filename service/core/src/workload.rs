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

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/health".into(),
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            unhealthy_threshold: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StorageSpec {
    pub enabled: bool,
    pub quota_gb: u32,
    pub retention_days: u32,
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
    pub storage: StorageSpec,
    pub tags: BTreeMap<String, String>,
    /// How long provisioning may take before the run fails.
    pub create_timeout: Duration,
    /// The port the workload serves raw TCP on, when it asks the router to expose one.
    #[serde(default)]
    pub tcp_port: Option<u16>,
    /// The router listener port the user asked for; allocated when `None`.
    #[serde(default)]
    pub tcp_listen_port: Option<u16>,
}

impl WorkloadSpec {
    /// Whether `other` asks for the same workload: equal in every part that cannot
    /// change in place (`command`, `image`, `port`, `tcp_port`, `tcp_listen_port`,
    /// `requirements`). A re-apply with the
    /// same name and identity adopts the existing workload instead of making another.
    pub fn same_identity(&self, other: &WorkloadSpec) -> bool {
        self.command == other.command
            && self.image == other.image
            && self.port == other.port
            && self.tcp_port == other.tcp_port
            && self.tcp_listen_port == other.tcp_listen_port
            && self.requirements == other.requirements
    }
}
