//! Resource `computearbitrage_workload`: a workload on the cheapest matching spot
//! capacity, kept running by the service.
//!
//! - [`state`]: the state, its wire form, and the planning and refresh rules.
//! - [`schema`]: the schema with a description on every attribute.
//! - this file: validation and the resource's operations.
//!
//! The rules it keeps (docs/resources/workload.md has them for users):
//! - Create returns when the workload is RUNNING (its health check passed). A create
//!   whose answer was lost is retried and adopted (the service adopts a workload of
//!   the same name and the same spec); one that still fails after the service
//!   accepted it returns the workload with the error, so Terraform taints it instead
//!   of losing it.
//! - `name`, `command`, `image`, `port`, `tcp_port`, `tcp_listen_port`, `requirements`
//!   and `storage.enabled` force replacement; `tags`, `env`, `health_check`,
//!   `on_interruption`, `tcp_allowed_cidrs` and storage's `quota_gb` and
//!   `retention_days` change in place.
//! - A plan that changes the workload in place marks unknown what the service may
//!   change before the apply (status, placement, prices, instance, backend address);
//!   what never changes (`id`, `endpoint`, `access_token`, `tcp_endpoint`,
//!   `created_at`) stays known. A plan that changes nothing keeps everything.
//! - A refresh reads every attribute back from the service, so changes made outside
//!   Terraform show as diffs; values that mean the same in another spelling do not.
//! - A workload terminated out of band (or FAILED) is removed from state on refresh.

mod schema;
pub mod state;

use crate::client::{
    report_status, report_violations, report_warnings, Connection, SharedConnection,
    CALL_RETRY_BUDGET,
};
use crate::duration;
use crate::number::Number;
use crate::requirements::{self, check_whole};
use computearbitrage_api::{pb, validate, Reason, ERROR_FIELD_METADATA};
use state::{
    port_of, CheckpointBlock, RebalanceBlock, StorageBlock, WorkloadState, DEFAULT_CREATE_TIMEOUT,
    DEFAULT_DELETE_TIMEOUT,
};
use std::time::Duration;
use tf_provider::schema::Schema;
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, Diagnostics, Resource};

const POLL: Duration = Duration::from_millis(500);

pub struct WorkloadResource {
    connection: SharedConnection,
}

impl WorkloadResource {
    pub fn new(connection: SharedConnection) -> Self {
        WorkloadResource { connection }
    }
}

/// The `checkpoint` block's rules, on its attributes' paths.
fn check_checkpoint(
    state: &WorkloadState,
    block: &CheckpointBlock,
    diags: &mut Diagnostics,
) -> bool {
    let root = AttributePath::new("checkpoint").index(0);
    let mut ok = check_whole(diags, &block.keep, root.clone().attribute("keep"));
    if let Some(n) = block.keep.as_ref_option().and_then(Number::as_integer) {
        if n < 1 {
            diags.error(
                "Invalid value for checkpoint.keep",
                format!(
                    "{n} keeps no checkpoint to restore; use 1 to 100, or leave it unset for 3"
                ),
                root.clone().attribute("keep"),
            );
            ok = false;
        }
    }
    // Unset `enabled` is off; an unknown one is checked when it is known.
    let storage_off = match &state.storage {
        Value::Null => true,
        Value::Value(s) => matches!(s.enabled, Value::Value(false) | Value::Null),
        Value::Unknown => false,
    };
    let max =
        Duration::from_secs(computearbitrage_api::defaults::CHECKPOINT_INTERVAL_MAX_SECONDS.into());
    if let Value::Value(text) = &block.interval {
        let problem = match duration::parse(text) {
            None => Some(("Invalid value for checkpoint.interval", format!("{text:?} is not a duration; write it like \"10m\", \"90s\" or \"1h30m\""))),
            Some(every) if every > max => Some(("Invalid value for checkpoint.interval", format!("{text:?} is more than a week between checkpoints; use up to \"168h\", or leave it unset to checkpoint only on a notice"))),
            Some(every) if !every.is_zero() && storage_off => Some(("Periodic checkpoints need storage", "checkpoints are kept in the workload's storage; add `storage { enabled = true }` (with a `quota_gb` that holds `keep` copies of $CHECKPOINT_DIR), or remove `interval`".to_string())),
            Some(_) => None,
        };
        if let Some((summary, detail)) = problem {
            diags.error(summary, detail, root.clone().attribute("interval"));
            ok = false;
        }
    }
    // The command's element indexes only line up once every element is known.
    let command_known = block
        .command
        .as_ref_option()
        .is_none_or(|items| items.iter().all(Value::is_value));
    let mut v = validate::checkpoint(&block.to_pb());
    v.retain(|v| match v.path.first() {
        Some(validate::PathStep::Field("signal")) => block.signal.is_value(),
        Some(validate::PathStep::Field("command")) => command_known,
        // The wire's seconds; checked above as the duration written.
        Some(validate::PathStep::Field("interval_seconds")) => false,
        _ => true,
    });
    report_violations(diags, root, &v);
    ok && v.is_empty()
}

/// The `rebalance` block's rules, on its attributes' paths.
fn check_rebalance(block: &RebalanceBlock, diags: &mut Diagnostics) -> bool {
    let root = AttributePath::new("rebalance").index(0);
    let mut ok = true;
    if let Value::Value(text) = &block.min_duration {
        let max = Duration::from_secs(
            computearbitrage_api::defaults::REBALANCE_MIN_DURATION_MAX_SECONDS.into(),
        );
        let problem = match duration::parse(text) {
            None => Some(format!(
                "{text:?} is not a duration; write it like \"30m\", \"90s\" or \"1h30m\""
            )),
            Some(d) if d > max => Some(format!(
                "{text:?} is more than a week; use up to \"168h\", or leave it unset for \"1h\""
            )),
            Some(_) => None,
        };
        if let Some(detail) = problem {
            diags.error(
                "Invalid value for rebalance.min_duration",
                detail,
                root.clone().attribute("min_duration"),
            );
            ok = false;
        }
    }
    let mut v = validate::rebalance(&block.to_pb());
    v.retain(|v| match v.path.first() {
        Some(validate::PathStep::Field("min_savings_percent")) => {
            block.min_savings_percent.is_value()
        }
        // The wire's seconds; checked above as the duration written.
        Some(validate::PathStep::Field("min_duration_seconds")) => false,
        _ => true,
    });
    crate::client::report_violations(diags, root, &v);
    ok && v.is_empty()
}

/// Reports every invalid known value on its attribute path.
fn check(state: &WorkloadState, diags: &mut Diagnostics, from_config: bool) -> bool {
    let spec = state.spec_pb();
    let mut ok = true;
    let mut top = validate::workload_fields(&spec);
    // Unknown values are checked when they become known.
    top.retain(|v| match v.path.first() {
        Some(validate::PathStep::Field("name")) => state.name.is_value(),
        Some(validate::PathStep::Field("command")) => state.command.is_value(),
        Some(validate::PathStep::Field("port")) => state.port.is_value(),
        Some(validate::PathStep::Field("tcp_port")) => state.tcp_port.is_value(),
        Some(validate::PathStep::Field("tcp_listen_port")) => {
            state.tcp_listen_port.is_value() && !state.tcp_port.is_unknown()
        }
        Some(validate::PathStep::Field("env")) => !state.env.is_unknown(),
        Some(validate::PathStep::Field("tags")) => !state.tags.is_unknown(),
        // Element indexes only line up once every element is known.
        Some(validate::PathStep::Field("tcp_allowed_cidrs")) => state
            .tcp_allowed_cidrs
            .as_ref_option()
            .is_some_and(|items| items.iter().all(Value::is_value)),
        _ => true,
    });
    if state.port.is_null() {
        top.retain(|v| v.path.first() != Some(&validate::PathStep::Field("port")));
    }
    report_violations(diags, AttributePath::root(), &top);
    ok &= top.is_empty();
    ok &= check_whole(diags, &state.port, AttributePath::new("port"));
    ok &= check_whole(diags, &state.tcp_port, AttributePath::new("tcp_port"));
    ok &= check_whole(
        diags,
        &state.tcp_listen_port,
        AttributePath::new("tcp_listen_port"),
    );
    let after = AttributePath::new("replace_unhealthy_after_seconds");
    ok &= check_whole(diags, &state.replace_unhealthy_after_seconds, after.clone());
    // 0 means the default on the wire; written, it is out of range like any other.
    if let Some(n) = state
        .replace_unhealthy_after_seconds
        .as_ref_option()
        .and_then(Number::as_integer)
        .filter(|n| *n < 1)
    {
        diags.error(
            "Invalid value for replace_unhealthy_after_seconds",
            format!("{n} is less than 1; use 1 to 86400 seconds, or leave it unset for the default, 300"),
            after,
        );
        ok = false;
    }
    if let Some(block) = state.requirements.as_ref_option() {
        ok &= block.check(
            diags,
            AttributePath::new(requirements::BLOCK_NAME),
            !from_config,
        );
    }
    if let Some(block) = state.health_check.as_ref_option() {
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
                        format!(
                            "{n} is less than 1; use 1 or more, or leave it unset for the default"
                        ),
                        root.clone().attribute(name),
                    );
                    ok = false;
                }
            }
        }
        let v = validate::health_check(&block.to_pb());
        report_violations(diags, root, &v);
        ok &= v.is_empty();
    }
    if let Some(block) = state.storage.as_ref_option() {
        let root = AttributePath::new("storage").index(0);
        for (name, value) in [
            ("quota_gb", &block.quota_gb),
            ("retention_days", &block.retention_days),
        ] {
            ok &= check_whole(diags, value, root.clone().attribute(name));
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
        // Unset, the quota is 0: every upload is refused, checkpoints included.
        let no_quota = matches!(&block.quota_gb, Value::Null)
            || block.quota_gb.as_ref_option().and_then(Number::as_integer) == Some(0);
        if from_config && StorageBlock::enabled(&state.storage) && no_quota {
            diags.warning(
                "Storage without a quota holds nothing",
                "storage.quota_gb is 0 (the default), so every upload is refused: checkpoints too, and a migration or a move then restores nothing. Set quota_gb to the GB the workload may keep (its checkpoints times checkpoint.keep, plus its state/ and artifacts/).",
                root.clone().attribute("quota_gb"),
            );
        }
        let v = validate::storage(&block.to_pb());
        report_violations(diags, root, &v);
        ok &= v.is_empty();
    }
    if let Some(block) = state.rebalance.as_ref_option() {
        ok &= check_rebalance(block, diags);
    }
    if let Some(block) = state.checkpoint.as_ref_option() {
        ok &= check_checkpoint(state, block, diags);
    }
    if let Some(t) = state.timeouts.as_ref_option() {
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

/// What happened to a workload being waited for.
enum Waited {
    /// It reached a wanted status, or FAILED.
    Done(pb::Workload),
    /// The deadline passed; the workload as last seen.
    TimedOut(pb::Workload),
    /// It no longer exists.
    Gone,
}

/// Polls until the workload reaches one of `done`, or FAILED, or the deadline. Polls
/// that fail in a way a retry may fix are retried until the deadline.
async fn wait_for(
    connection: &Connection,
    id: &str,
    done: &[&str],
    timeout: Duration,
) -> Result<Waited, tonic::Status> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let polled = connection
            .retrying(left.max(Duration::from_secs(1)), || {
                let mut client = connection.workloads();
                let request = pb::GetWorkloadRequest { id: id.to_string() };
                async move { client.get_workload(request).await }
            })
            .await;
        match polled {
            Ok(w) => {
                let w = w.into_inner();
                if done.contains(&w.status.as_str()) || w.status == "FAILED" {
                    return Ok(Waited::Done(w));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(Waited::TimedOut(w));
                }
            }
            Err(status) if Reason::of(&status) == Some(Reason::NotFound) => {
                return Ok(Waited::Gone)
            }
            Err(status) => return Err(status),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether a plan changes `env` of an existing workload (a rolling replacement).
fn env_changes(prior: &WorkloadState, planned: &WorkloadState) -> bool {
    prior.id.is_value()
        && (planned.env.is_unknown()
            || crate::canonical::map(&planned.env) != crate::canonical::map(&prior.env))
}

/// The ids of the workload's rolling replacements that failed (dead restart runs).
async fn failed_restarts(connection: &Connection, id: &str) -> Vec<String> {
    let mut client = connection.workloads();
    match client
        .list_runs(pb::ListRunsRequest {
            workload_id: id.to_string(),
        })
        .await
    {
        Ok(runs) => runs
            .into_inner()
            .runs
            .into_iter()
            .filter(|r| {
                r.kind == "migrate" && r.status == "dead" && r.reason.ends_with("cause=restart")
            })
            .map(|r| r.id)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits until the workload serves with its new env (`env_applied`), a rolling
/// replacement of this apply failed, or the timeout; the workload as last seen, with
/// an error diagnostic unless it got there.
async fn wait_for_env(
    diags: &mut Diagnostics,
    connection: &Connection,
    mut w: pb::Workload,
    failed_before: &[String],
    timeout: Duration,
) -> pb::Workload {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if w.env_applied && w.status == "RUNNING" {
            return w;
        }
        let mut client = connection.workloads();
        if let Ok(runs) = client
            .list_runs(pb::ListRunsRequest {
                workload_id: w.id.clone(),
            })
            .await
        {
            if let Some(failed) = runs.into_inner().runs.into_iter().find(|r| {
                r.kind == "migrate"
                    && r.status == "dead"
                    && r.reason.ends_with("cause=restart")
                    && !failed_before.contains(&r.id)
            }) {
                diags.error(
                    "The rolling replacement for the env change failed",
                    format!(
                        "At step {}: {}\n\nThe workload still serves from instance {} with its previous env; the service tries the replacement again every few minutes. Fix the cause (the workload's last output is in `computearbitrage workload logs {}`) and apply again.",
                        failed.failed_step, failed.error, w.instance_id, w.id
                    ),
                    AttributePath::new("env"),
                );
                return w;
            }
        }
        if matches!(w.status.as_str(), "FAILED" | "TERMINATED" | "STOPPING") {
            diags.error(
                "The workload ended during the rolling replacement",
                format!("It is {}: {}", w.status, w.status_reason),
                AttributePath::new("env"),
            );
            return w;
        }
        if tokio::time::Instant::now() >= deadline {
            diags.error(
                "The rolling replacement for the env change did not finish in time",
                format!(
                    "Workload {} is still {} on instance {} with its previous env after {} s (timeouts.create); the replacement goes on. `computearbitrage workload runs {}` shows its steps; the next apply or refresh sees the result.",
                    w.id,
                    w.status,
                    w.instance_id,
                    timeout.as_secs(),
                    w.id
                ),
                AttributePath::new("env"),
            );
            return w;
        }
        tokio::time::sleep(POLL).await;
        let id = w.id.clone();
        if let Ok(now) = connection
            .retrying(CALL_RETRY_BUDGET, || {
                let mut client = connection.workloads();
                let request = pb::GetWorkloadRequest { id: id.clone() };
                async move { client.get_workload(request).await }
            })
            .await
        {
            w = now.into_inner();
        }
    }
}

/// The last lines of a failure for a diagnostic.
fn failure_detail(w: &pb::Workload) -> String {
    format!(
        "{}\n\nThe service released what it had created. Fix the cause and apply again; the run's steps are listed by `computearbitrage workload runs {}`.",
        w.status_reason, w.id
    )
}

impl WorkloadResource {
    /// Warnings about the placement the service would choose now (an interruption
    /// limit passed only by an unknown rate, regions no offer has, nothing matching),
    /// so the plan says what the apply would meet. Best effort: if the service cannot
    /// be asked, the plan goes on without them.
    async fn preview_placement(&self, diags: &mut Diagnostics, planned: &WorkloadState) {
        let Some(block) = planned.requirements.as_ref_option() else {
            return;
        };
        let Some(connection) = self.connection.peek().await else {
            return;
        };
        let request = pb::FindPlacementRequest {
            requirements: Some(block.to_pb()),
            alternatives: 0,
        };
        let root = AttributePath::new(requirements::BLOCK_NAME);
        match connection.pricing().find_placement(request).await {
            Ok(answer) => report_warnings(
                diags,
                &answer.into_inner().warnings,
                root,
                "requirements",
                |f| f.to_string(),
            ),
            Err(status) if Reason::of(&status) == Some(Reason::NoMatchingOffer) => {
                let then = if planned.fallback.as_ref_option().map(String::as_str)
                    == Some("on_demand")
                {
                    "With fallback = \"on_demand\", the apply takes on-demand capacity at its on-demand price instead (max_interruption_rate does not apply to it)."
                } else {
                    "The apply will fail unless prices change first, or fallback = \"on_demand\" lets it take on-demand capacity."
                };
                diags.warning(
                    "No spot offer matches the requirements now",
                    format!("{}\n\n{then}", status.message()),
                    root,
                )
            }
            Err(_) => {}
        }
    }
}

#[async_trait::async_trait]
impl Resource for WorkloadResource {
    type State<'a> = WorkloadState;
    type PrivateState<'a> = ValueEmpty;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(schema::schema())
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: WorkloadState) -> Option<()> {
        check(&config, diags, true);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: WorkloadState,
        private: ValueEmpty,
        _meta: ValueEmpty,
    ) -> Option<(WorkloadState, ValueEmpty)> {
        let connection = self.connection.get(diags).await?;
        let id = state.id.as_ref_option().cloned().unwrap_or_default();
        let answer = connection
            .retrying(CALL_RETRY_BUDGET, || {
                let mut client = connection.workloads();
                let request = pb::GetWorkloadRequest { id: id.clone() };
                async move { client.get_workload(request).await }
            })
            .await;
        match answer {
            Ok(w) => {
                let w = w.into_inner();
                // Gone for good: drop it from state so the next plan re-creates it.
                if w.status == "TERMINATED" || w.status == "FAILED" {
                    return None;
                }
                Some((WorkloadState::refreshed(&state, &w), private))
            }
            Err(status) if Reason::of(&status) == Some(Reason::NotFound) => None,
            Err(status) => {
                report_status(
                    diags,
                    &connection,
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
        proposed.plan_configured(&config, None);
        if check(&proposed, diags, false) {
            self.preview_placement(diags, &proposed).await;
        }
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
        proposed.plan_configured(&config, Some(&prior));
        check(&proposed, diags, false);
        proposed.copy_computed(&prior);
        if proposed.configured_differs(&prior) {
            // Applied later (a saved plan), the update must accept whatever the
            // service has done in between.
            proposed.set_volatile_unknown();
        }
        let mut replace = Vec::new();
        let text_differs = |a: &Value<String>, b: &Value<String>| {
            a.is_unknown() || crate::canonical::text(a) != crate::canonical::text(b)
        };
        if text_differs(&proposed.name, &prior.name) {
            replace.push(AttributePath::new("name"));
        }
        if proposed.command.is_unknown()
            || crate::canonical::list(&proposed.command) != crate::canonical::list(&prior.command)
        {
            replace.push(AttributePath::new("command"));
        }
        if text_differs(&proposed.image, &prior.image) {
            replace.push(AttributePath::new("image"));
        }
        if proposed.port.is_unknown() || port_of(&proposed.port) != port_of(&prior.port) {
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
        let same_requirements = match (
            proposed.requirements.as_ref_option(),
            prior.requirements.as_ref_option(),
        ) {
            (Some(a), Some(b)) => a.same_as(b),
            (None, None) => true,
            _ => false,
        };
        if !same_requirements {
            replace.push(AttributePath::new(requirements::BLOCK_NAME));
        }
        if StorageBlock::enabled(&proposed.storage) != StorageBlock::enabled(&prior.storage) {
            replace.push(AttributePath::new("storage").index(0).attribute("enabled"));
        }
        if replace.is_empty() && env_changes(&prior, &proposed) {
            diags.warning(
                "Changing env replaces the workload's instance",
                "The new env reaches the workload on a new instance: a rolling replacement behind the same endpoint and token. The replacement starts with the new env (restored from a checkpoint taken for it, with storage) and passes its health check; then the route switches and the old instance drains and stops. The workload stays RUNNING, and the apply returns once the replacement serves.",
                AttributePath::new("env"),
            );
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
        if !check(&planned, diags, false) {
            return None;
        }
        let connection = self.connection.get(diags).await?;
        let spec = planned.spec_pb();
        let name = spec.name.clone();
        let timeout = planned.timeout(|t| &t.create, DEFAULT_CREATE_TIMEOUT);
        // Safe to retry: a second apply of the same spec adopts what the first made.
        let applied = connection
            .retrying(CALL_RETRY_BUDGET, || {
                let mut client = connection.workloads();
                let request = pb::ApplyWorkloadRequest {
                    spec: Some(spec.clone()),
                };
                async move { client.apply_workload(request).await }
            })
            .await;
        let accepted = match applied {
            Ok(w) => w.into_inner(),
            // What only the service can check (the router's TCP ports) lands on the
            // attribute like plan-time validation does.
            Err(status)
                if Reason::of(&status) == Some(Reason::InvalidArgument)
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
                    &connection,
                    "creating a workload",
                    &status,
                    AttributePath::new(requirements::BLOCK_NAME),
                );
                return None;
            }
        };
        planned.set_computed(&accepted);
        // From here the workload exists: every failure returns it, so Terraform keeps
        // it in the state (tainted) and the next apply replaces it; nothing is orphaned.
        let taint = |mut state: WorkloadState,
                     diags: &mut Diagnostics,
                     summary: String,
                     detail: String| {
            state.unknowns_to_null();
            diags.root_error(
                summary,
                format!("{detail}\n\nThe workload {} is kept in the state, marked tainted: the next apply replaces it. If it has become RUNNING meanwhile and you want to keep it, run `terraform untaint` on it first.", state.id.as_ref_option().cloned().unwrap_or_default()),
            );
            Some((state, ValueEmpty::default()))
        };
        match wait_for(&connection, &accepted.id, &["RUNNING"], timeout).await {
            Ok(Waited::Done(w)) if w.status == "RUNNING" => {
                planned.set_computed(&w);
                Some((planned, private))
            }
            Ok(Waited::Done(w)) => {
                diags.root_error(
                    format!(
                        "Workload {name:?} failed to start: step {} failed",
                        w.failed_step
                    ),
                    failure_detail(&w),
                );
                None
            }
            Ok(Waited::Gone) => {
                diags.root_error(
                    format!("Workload {name:?} disappeared while it was being created"),
                    "It was deleted out of band. Apply again to create it.",
                );
                None
            }
            Ok(Waited::TimedOut(w)) => {
                planned.set_computed(&w);
                taint(
                    planned,
                    diags,
                    format!("Workload {name:?} was not RUNNING within {} s", timeout.as_secs()),
                    format!(
                        "It is {}: {}. The service keeps working on it; raise timeouts.create if it needs longer.",
                        w.status, w.status_reason
                    ),
                )
            }
            Err(status) => {
                let mut waiting = Diagnostics::default();
                report_status(
                    &mut waiting,
                    &connection,
                    "waiting for the workload to start",
                    &status,
                    AttributePath::root(),
                );
                let detail = waiting
                    .errors
                    .first()
                    .map(|d| format!("{}: {}", d.summary, d.detail))
                    .unwrap_or_else(|| status.message().to_string());
                taint(
                    planned,
                    diags,
                    format!("Lost track of workload {name:?} while it was being created"),
                    detail,
                )
            }
        }
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior: WorkloadState,
        mut planned: WorkloadState,
        _config: WorkloadState,
        private: ValueEmpty,
        _meta: ValueEmpty,
    ) -> Option<(WorkloadState, ValueEmpty)> {
        if !check(&planned, diags, false) {
            return None;
        }
        let connection = self.connection.get(diags).await?;
        let id = planned.id.as_ref_option().cloned().unwrap_or_default();
        let restarts = env_changes(&prior, &planned);
        // Rolling replacements that failed before this apply are not its failure.
        let failed_before = if restarts {
            failed_restarts(&connection, &id).await
        } else {
            Vec::new()
        };
        let spec = planned.spec_pb();
        let request = pb::UpdateWorkloadRequest {
            id: planned.id.as_ref_option().cloned().unwrap_or_default(),
            tags: spec.tags,
            health_check: spec.health_check,
            on_interruption: spec.on_interruption,
            on_unhealthy: spec.on_unhealthy,
            replace_unhealthy_after_seconds: spec.replace_unhealthy_after_seconds,
            fallback: spec.fallback,
            rebalance: spec.rebalance,
            env: spec.env,
            storage: spec.storage,
            tcp_allowed_cidrs: spec.tcp_allowed_cidrs,
            checkpoint: spec.checkpoint,
        };
        // An update replaces every value it carries, so repeating it is harmless.
        let answer = connection
            .retrying(CALL_RETRY_BUDGET, || {
                let mut client = connection.workloads();
                let request = request.clone();
                async move { client.update_workload(request).await }
            })
            .await;
        match answer {
            Ok(w) => {
                let mut w = w.into_inner();
                if restarts && !w.env_applied {
                    let timeout = planned.timeout(|t| &t.create, DEFAULT_CREATE_TIMEOUT);
                    w = wait_for_env(diags, &connection, w, &failed_before, timeout).await;
                }
                planned.set_computed(&w);
                Some((planned, private))
            }
            Err(status) => {
                report_status(
                    diags,
                    &connection,
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
        let answer = connection
            .retrying(CALL_RETRY_BUDGET, || {
                let mut client = connection.workloads();
                let request = pb::DeleteWorkloadRequest {
                    id: id.clone(),
                    reason: "terraform destroy".into(),
                };
                async move { client.delete_workload(request).await }
            })
            .await;
        match answer {
            Ok(_) => {}
            Err(status) if Reason::of(&status) == Some(Reason::NotFound) => return Some(()),
            Err(status) => {
                report_status(
                    diags,
                    &connection,
                    "deleting a workload",
                    &status,
                    AttributePath::root(),
                );
                return None;
            }
        }
        match wait_for(&connection, &id, &["TERMINATED"], timeout).await {
            Ok(Waited::Gone) => Some(()),
            Ok(Waited::Done(w)) if w.status == "TERMINATED" => Some(()),
            Ok(Waited::Done(w)) | Ok(Waited::TimedOut(w)) => {
                diags.root_error(
                    format!("Workload {id} was not TERMINATED within {} s", timeout.as_secs()),
                    format!("It is {}: {}. Its termination run keeps going; see `computearbitrage workload runs {id}`, then destroy again.", w.status, w.status_reason),
                );
                None
            }
            Err(status) => {
                report_status(
                    diags,
                    &connection,
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
        let answer = connection
            .retrying(CALL_RETRY_BUDGET, || {
                let mut client = connection.workloads();
                let request = pb::GetWorkloadRequest { id: id.clone() };
                async move { client.get_workload(request).await }
            })
            .await;
        match answer {
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
            Err(status) if Reason::of(&status) == Some(Reason::NotFound) => {
                diags.root_error(format!("No workload {id:?} to import"), "Workload ids look like `wl-…`; list them from the service. A workload of another tenant is not visible.");
                None
            }
            Err(status) => {
                report_status(
                    diags,
                    &connection,
                    "importing a workload",
                    &status,
                    AttributePath::root(),
                );
                None
            }
        }
    }
}
