//! The workload lifecycle state machine. Every status change in the service goes
//! through [`check_transition`]; the allowed edges are the table below.
//!
//! ```text
//! PENDING ──► PROVISIONING ──► RUNNING ──► STOPPING ──────► TERMINATED
//!    │          ▲  │              ├──────► INTERRUPTED ───► TERMINATED
//!    │          │  │              └──────► UNHEALTHY ─────► TERMINATED
//!    └──► FAILED ◄─┘                          │    ▲
//!               └── INTERRUPTED (migration)   └────┘ (health recovered)
//! ```
//!
//! Also allowed: a destroy from any non-terminal state goes through STOPPING (from
//! PENDING, PROVISIONING, FAILED, INTERRUPTED and UNHEALTHY too); UNHEALTHY →
//! INTERRUPTED (a notice while unhealthy); and migration's INTERRUPTED →
//! PROVISIONING (the replacement boots) and INTERRUPTED → FAILED (no replacement).

use crate::error::Error;
use std::fmt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadStatus {
    Pending,
    Provisioning,
    Running,
    Failed,
    Stopping,
    Interrupted,
    Unhealthy,
    Terminated,
}

impl WorkloadStatus {
    pub const ALL: [WorkloadStatus; 8] = [
        WorkloadStatus::Pending,
        WorkloadStatus::Provisioning,
        WorkloadStatus::Running,
        WorkloadStatus::Failed,
        WorkloadStatus::Stopping,
        WorkloadStatus::Interrupted,
        WorkloadStatus::Unhealthy,
        WorkloadStatus::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadStatus::Pending => "PENDING",
            WorkloadStatus::Provisioning => "PROVISIONING",
            WorkloadStatus::Running => "RUNNING",
            WorkloadStatus::Failed => "FAILED",
            WorkloadStatus::Stopping => "STOPPING",
            WorkloadStatus::Interrupted => "INTERRUPTED",
            WorkloadStatus::Unhealthy => "UNHEALTHY",
            WorkloadStatus::Terminated => "TERMINATED",
        }
    }

    pub fn parse(text: &str) -> Option<WorkloadStatus> {
        WorkloadStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The statuses of workloads that hold (or may hold) capacity and their name.
    pub fn active() -> Vec<WorkloadStatus> {
        WorkloadStatus::ALL
            .into_iter()
            .filter(|s| s.is_active())
            .collect()
    }

    /// Whether the workload holds (or may hold) capacity and its name.
    pub fn is_active(self) -> bool {
        !matches!(self, WorkloadStatus::Failed | WorkloadStatus::Terminated)
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        self == WorkloadStatus::Terminated
    }
}

impl fmt::Display for WorkloadStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `from → to` is an edge of the state machine.
pub fn is_allowed(from: WorkloadStatus, to: WorkloadStatus) -> bool {
    use WorkloadStatus::*;
    matches!(
        (from, to),
        (Pending, Provisioning)
            | (Pending, Failed)
            | (Pending, Stopping)
            | (Provisioning, Running)
            | (Provisioning, Failed)
            | (Provisioning, Stopping)
            | (Running, Stopping)
            | (Running, Interrupted)
            | (Running, Unhealthy)
            | (Unhealthy, Interrupted)
            | (Interrupted, Failed)
            | (Failed, Stopping)
            | (Stopping, Terminated)
            | (Interrupted, Terminated)
            | (Interrupted, Stopping)
            | (Interrupted, Provisioning)
            | (Unhealthy, Terminated)
            | (Unhealthy, Stopping)
            | (Unhealthy, Running)
            | (Unhealthy, Provisioning)
    )
}

/// Checks a transition; the error names both states.
pub fn check_transition(from: WorkloadStatus, to: WorkloadStatus) -> Result<(), Error> {
    Transition::new(from, to).map(|_| ())
}

/// A transition the state machine allows. The only way to build one is
/// [`Transition::new`], and the store only applies these, so no status change can
/// bypass the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    from: WorkloadStatus,
    to: WorkloadStatus,
}

impl Transition {
    pub fn new(from: WorkloadStatus, to: WorkloadStatus) -> Result<Transition, Error> {
        if is_allowed(from, to) {
            Ok(Transition { from, to })
        } else {
            Err(Error::InvalidTransition { from, to })
        }
    }

    pub fn from(self) -> WorkloadStatus {
        self.from
    }

    pub fn to(self) -> WorkloadStatus {
        self.to
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkloadStatus::*;

    /// The full 8 × 8 table; `true` exactly where the state machine has an edge.
    #[test]
    fn every_state_pair_is_allowed_or_rejected_as_specified() {
        let allowed = [
            (Pending, Provisioning),
            (Pending, Failed),
            (Pending, Stopping),
            (Provisioning, Running),
            (Provisioning, Failed),
            (Provisioning, Stopping),
            (Running, Stopping),
            (Running, Interrupted),
            (Running, Unhealthy),
            (Unhealthy, Interrupted),
            (Interrupted, Failed),
            (Failed, Stopping),
            (Stopping, Terminated),
            (Interrupted, Terminated),
            (Interrupted, Stopping),
            (Interrupted, Provisioning),
            (Unhealthy, Terminated),
            (Unhealthy, Stopping),
            (Unhealthy, Running),
            (Unhealthy, Provisioning),
        ];
        let mut checked = 0;
        for from in WorkloadStatus::ALL {
            for to in WorkloadStatus::ALL {
                let want = allowed.contains(&(from, to));
                let got = check_transition(from, to);
                assert_eq!(got.is_ok(), want, "{from} → {to}");
                if let Err(e) = got {
                    assert!(
                        e.to_string().contains(from.as_str())
                            && e.to_string().contains(to.as_str())
                    );
                    assert!(!e.is_retryable());
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 64);
    }

    #[test]
    fn terminated_is_a_sink_and_names_round_trip() {
        for to in WorkloadStatus::ALL {
            assert!(!is_allowed(Terminated, to));
        }
        for s in WorkloadStatus::ALL {
            assert_eq!(WorkloadStatus::parse(s.as_str()), Some(s));
        }
        assert!(Running.is_active() && !Failed.is_active() && !Terminated.is_active());
    }
}
