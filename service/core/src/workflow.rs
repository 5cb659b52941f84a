//! The two workflows as data: their steps in order, and each step's retry policy. The
//! service's engine executes them and keeps a ledger per run, so a step completed
//! before a crash is never run again.

use crate::retry::RetryPolicy;
use std::time::Duration;

/// One step of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct StepDef {
    pub name: &'static str,
    pub retry: RetryPolicy,
}

/// For steps that only touch the store: retried on transient store errors.
const STORE_STEP: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    initial_delay: Duration::from_millis(200),
    backoff_coefficient: 2.0,
    max_delay: Duration::from_secs(2),
    jitter: 0.2,
};

/// For cloud side effects (create, terminate): the seed's "3 retries, exponential".
const CLOUD_STEP: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    initial_delay: Duration::from_millis(500),
    backoff_coefficient: 2.0,
    max_delay: Duration::from_secs(10),
    jitter: 0.2,
};

pub const QUOTA_CHECK: &str = "quota-check";
pub const PLACEMENT: &str = "placement";
pub const MARK_PROVISIONING: &str = "mark-provisioning";
pub const PROVISION: &str = "provision";
pub const WAIT_RUNNING: &str = "wait-running";
pub const WAIT_HEALTHY: &str = "wait-healthy";
pub const REGISTER_ROUTING: &str = "register-routing";
pub const STORAGE_INIT: &str = "storage-init";
pub const START_MONITORING: &str = "start-monitoring";
pub const NOTIFY: &str = "notify";

pub const RECORD_INTERRUPTION: &str = "record-interruption";
pub const MARK_MIGRATING: &str = "mark-migrating";
pub const AWAIT_CHECKPOINT: &str = "await-checkpoint";
pub const SWITCH_ROUTE: &str = "switch-route";
pub const TERMINATE_REPLACED: &str = "terminate-replaced";

pub const MARK_STOPPING: &str = "mark-stopping";
pub const STOP_MONITORING: &str = "stop-monitoring";
pub const TERMINATE_INSTANCE: &str = "terminate-instance";
pub const STORAGE_RETENTION: &str = "storage-retention";
pub const REMOVE_ROUTING: &str = "remove-routing";
pub const MARK_TERMINATED: &str = "mark-terminated";
pub const RECORD_BILLING: &str = "record-billing";

fn step(name: &'static str, retry: RetryPolicy) -> StepDef {
    StepDef { name, retry }
}

/// The ten provisioning steps, in order.
pub fn provision_steps() -> Vec<StepDef> {
    vec![
        step(QUOTA_CHECK, STORE_STEP),
        step(PLACEMENT, STORE_STEP),
        step(MARK_PROVISIONING, STORE_STEP),
        step(PROVISION, CLOUD_STEP),
        // Waits carry their own deadlines; a retry would only extend them.
        step(WAIT_RUNNING, RetryPolicy::once()),
        step(WAIT_HEALTHY, RetryPolicy::once()),
        step(REGISTER_ROUTING, STORE_STEP),
        step(STORAGE_INIT, STORE_STEP),
        step(START_MONITORING, STORE_STEP),
        step(NOTIFY, STORE_STEP),
    ]
}

/// The migration steps, in order. `placement`, `provision`, `wait-running` and
/// `wait-healthy` are the provisioning steps applied to the replacement; the final
/// checkpoint of the reclaimed instance is awaited while the replacement boots.
pub fn migrate_steps() -> Vec<StepDef> {
    vec![
        step(RECORD_INTERRUPTION, STORE_STEP),
        step(PLACEMENT, STORE_STEP),
        step(MARK_MIGRATING, STORE_STEP),
        step(PROVISION, CLOUD_STEP),
        step(AWAIT_CHECKPOINT, RetryPolicy::once()),
        step(WAIT_RUNNING, RetryPolicy::once()),
        step(WAIT_HEALTHY, RetryPolicy::once()),
        step(SWITCH_ROUTE, STORE_STEP),
        step(TERMINATE_REPLACED, CLOUD_STEP),
        step(NOTIFY, STORE_STEP),
    ]
}

/// The termination steps, in order.
pub fn terminate_steps() -> Vec<StepDef> {
    vec![
        step(MARK_STOPPING, STORE_STEP),
        step(STOP_MONITORING, STORE_STEP),
        step(TERMINATE_INSTANCE, CLOUD_STEP),
        step(STORAGE_RETENTION, STORE_STEP),
        step(REMOVE_ROUTING, STORE_STEP),
        step(MARK_TERMINATED, STORE_STEP),
        step(RECORD_BILLING, STORE_STEP),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workflows_have_unique_step_names_in_the_seed_order() {
        let names: Vec<&str> = provision_steps().iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 10);
        assert_eq!(names[0], QUOTA_CHECK);
        assert_eq!(names[3], PROVISION);
        assert_eq!(names[9], NOTIFY);
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        let t: Vec<&str> = terminate_steps().iter().map(|s| s.name).collect();
        assert_eq!(t.first(), Some(&MARK_STOPPING));
        assert_eq!(t.last(), Some(&RECORD_BILLING));
        let m: Vec<&str> = migrate_steps().iter().map(|s| s.name).collect();
        let mut unique = m.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), m.len());
        // The replacement is started before the final checkpoint is awaited, and the
        // route switches only once it is healthy.
        let at = |n: &str| m.iter().position(|s| *s == n).unwrap();
        assert!(at(PROVISION) < at(AWAIT_CHECKPOINT));
        assert!(at(WAIT_HEALTHY) < at(SWITCH_ROUTE) && at(SWITCH_ROUTE) < at(TERMINATE_REPLACED));
        assert!(
            provision_steps()
                .iter()
                .find(|s| s.name == PROVISION)
                .unwrap()
                .retry
                .max_attempts
                > 1
        );
    }
}
