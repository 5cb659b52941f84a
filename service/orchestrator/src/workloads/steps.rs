//! What each workflow step does. Steps are written to be safe to run again: a step
//! redone after a crash between its effect and its ledger entry finds its effect
//! already there (idempotency tokens for the driver, "already in the target status"
//! for transitions).

use super::engine::{StepContext, StepError};
use super::{notify, now_ms, Orchestrator};
use computearbitrage_core::driver::{TENANT_TAG, WORKLOAD_TAG};
use computearbitrage_core::workflow::*;
use computearbitrage_core::{
    place, place_on_demand, Fallback, InstanceSpec, InstanceState, WorkloadStatus,
};
use computearbitrage_store::{BillingRecord, PlacementRecord, WorkloadChanges, WorkloadRecord};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Runs one step.
pub async fn execute(
    orch: &Arc<Orchestrator>,
    step: &str,
    ctx: &StepContext<'_>,
) -> Result<Value, StepError> {
    if ctx.run.kind == computearbitrage_store::RunKind::Migrate {
        if let Some(result) = super::migration::execute(orch, step, ctx).await {
            return result;
        }
    }
    match step {
        QUOTA_CHECK => quota_check(orch, ctx).await,
        PLACEMENT => placement(orch, ctx).await,
        MARK_PROVISIONING => mark_provisioning(orch, ctx).await,
        PROVISION => provision(orch, ctx).await,
        WAIT_RUNNING => wait_running(orch, ctx).await,
        WAIT_HEALTHY => wait_healthy(orch, ctx).await,
        REGISTER_ROUTING => register_routing(orch, ctx).await,
        STORAGE_INIT => Ok(storage_init(ctx)),
        START_MONITORING => {
            let current = orch
                .get(&ctx.workload.tenant_id, &ctx.workload.id)
                .await
                .map_err(|e| StepError::transient(e.to_string()))?;
            orch.monitor.watch(&current);
            Ok(json!({ "watching": current.endpoint }))
        }
        NOTIFY => {
            let current = orch
                .get(&ctx.workload.tenant_id, &ctx.workload.id)
                .await
                .map_err(|e| StepError::transient(e.to_string()))?;
            notify::enqueue(
                orch,
                &current,
                "workload.ready",
                json!({ "endpoint": current.endpoint }),
            )
            .await?;
            Ok(json!({ "notified": "workload.ready" }))
        }
        MARK_STOPPING => mark_stopping(orch, ctx).await,
        STOP_MONITORING => {
            orch.monitor.unwatch(&ctx.workload.id);
            Ok(json!({}))
        }
        TERMINATE_INSTANCE => terminate_instance(orch, ctx).await,
        STORAGE_RETENTION => Ok(storage_retention(ctx)),
        REMOVE_ROUTING => {
            orch.store
                .update_workload(
                    &ctx.workload.tenant_id,
                    &ctx.workload.id,
                    WorkloadChanges {
                        endpoint: Some(None),
                        tcp_endpoint: Some(None),
                        ..Default::default()
                    },
                    now_ms(),
                )
                .await?;
            Ok(json!({}))
        }
        MARK_TERMINATED => mark_terminated(orch, ctx).await,
        RECORD_BILLING => record_billing(orch, ctx).await,
        other => Err(StepError::permanent(format!("unknown step {other}"))),
    }
}

async fn quota_check(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let tenant = &ctx.workload.tenant_id;
    let settings = orch.store.tenant_settings(tenant).await?;
    let max = settings
        .max_concurrent_workloads
        .unwrap_or(orch.settings.max_concurrent_workloads);
    // The count includes this workload.
    let active = orch.store.count_active_workloads(tenant).await?;
    if active > u64::from(max) {
        return Err(StepError::permanent(format!(
            "quota exceeded: tenant {tenant:?} may run {max} concurrent workloads (max_concurrent_workloads) and this would be number {active}; destroy a workload or raise the quota"
        )));
    }
    Ok(json!({ "active": active, "max": max }))
}

async fn placement(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let catalog = orch.book.catalog();
    let excluded = super::migration::excluded_offers(orch, ctx)?;
    let alternatives = if excluded.is_empty() {
        0
    } else {
        computearbitrage_core::placement::MAX_ALTERNATIVES
    };
    let spec = &ctx.workload.spec;
    let why_not_spot = match place(&catalog, &spec.requirements, alternatives, &orch.policy) {
        Ok(placed) => match std::iter::once(placed.best)
            .chain(placed.alternatives)
            .find(|c| !excluded.iter().any(|x| x.matches(&c.offer)))
        {
            Some(best) => {
                if rebalancing(ctx) {
                    still_worth_it(orch, ctx, &best.offer)?;
                }
                return Ok(placement_output(&best.offer, &best.reason, false));
            }
            None => format!(
                "no offer matches the workload's requirements except the {} excluded after interruptions ({}); widen the requirements, or wait for the cooldown (workloads.migration_cooldown_seconds)",
                excluded.len(),
                excluded.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
            ),
        },
        Err(e @ computearbitrage_core::Error::NoMatch(_)) => e.to_string(),
        Err(e) => return Err(e.into()),
    };
    // A move to a cheaper offer is on spot or not at all.
    if spec.fallback != Fallback::OnDemand || rebalancing(ctx) {
        return Err(StepError::permanent(why_not_spot));
    }
    // On-demand is never reclaimed: the excluded offers' capacity is not the problem.
    let od = place_on_demand(&catalog, &spec.requirements, &orch.policy).map_err(|e| {
        StepError::permanent(format!(
            "no spot offer matches ({why_not_spot}), and no on-demand capacity either (fallback = \"on_demand\"): {e}"
        ))
    })?;
    let mut output = placement_output(&od.offer, &od.reason, true);
    output["fallback"] = json!(format!("no spot offer matches: {why_not_spot}"));
    notify::enqueue(
        orch,
        ctx.workload,
        "workload.fallback",
        json!({ "to": od.offer.describe(), "price_per_hour": od.offer.on_demand_price, "why": output["fallback"] }),
    )
    .await?;
    tracing::warn!(workload_id = %ctx.workload.id, offer = %od.offer.describe(), "no spot offer matches: placed on on-demand capacity");
    Ok(output)
}

/// Whether this run is a price-driven move (make-before-break).
fn rebalancing(ctx: &StepContext<'_>) -> bool {
    ctx.run.kind == computearbitrage_store::RunKind::Migrate
        && super::migration::Cause::of(ctx.run) == super::migration::Cause::Rebalance
}

/// A rebalance decided on the prices of its check; by the time it places, they may
/// have moved back. Then it is abandoned before anything starts.
fn still_worth_it(
    orch: &Orchestrator,
    ctx: &StepContext<'_>,
    to: &computearbitrage_core::Offer,
) -> Result<(), StepError> {
    let w = ctx.workload;
    let (Some(policy), Some(placed)) = (super::rebalance::policy_of(w), &w.placement) else {
        return Err(StepError::permanent("the workload no longer rebalances"));
    };
    let catalog = orch.book.catalog();
    let offers = super::rebalance::current_offers(&catalog, std::iter::once(placed));
    let paid = super::rebalance::price_now(&offers, placed).unwrap_or(f64::INFINITY);
    if policy.worth_it(paid, to.spot_price) {
        return Ok(());
    }
    Err(StepError::permanent(format!(
        "the saving went away: {} costs {:.4}/h against {paid:.4}/h now, less than the {} % the rebalance block asks for",
        to.describe(),
        to.spot_price,
        policy.min_savings_percent
    )))
}

/// The placement step's record of an offer, and the market it is taken on.
fn placement_output(offer: &computearbitrage_core::Offer, reason: &str, on_demand: bool) -> Value {
    let paid = if on_demand {
        offer.on_demand_price.unwrap_or(offer.spot_price)
    } else {
        offer.spot_price
    };
    json!({
        "provider": offer.cloud.as_str(),
        "region": offer.region,
        "zone": offer.zone,
        "instance_type": offer.instance_type,
        "spot_price": offer.spot_price,
        "on_demand_price": offer.on_demand_price,
        "market": if on_demand { "on_demand" } else { "spot" },
        "price_per_hour": paid,
        "reason": reason,
    })
}

/// The placement a run's instance really has: the placement step's, unless the
/// provision step fell back to on-demand capacity after spot capacity errors.
pub(crate) fn provisioned_placement(ctx: &StepContext<'_>) -> Result<PlacementRecord, StepError> {
    let mut placed = placement_record(ctx.output(PLACEMENT)?);
    apply_market(&mut placed, ctx.output(PROVISION)?);
    Ok(placed)
}

/// Applies a provision step's `market` and `price_per_hour` to a placement.
pub(crate) fn apply_market(placed: &mut PlacementRecord, provisioned: &Value) {
    placed.env_fingerprint = provisioned
        .get("env_fingerprint")
        .and_then(Value::as_str)
        .map(str::to_string);
    if provisioned.get("market").and_then(Value::as_str) == Some("on_demand") {
        placed.on_demand = true;
        if let Some(price) = provisioned.get("price_per_hour").and_then(Value::as_f64) {
            placed.price_per_hour = price;
        }
    }
}

pub(crate) fn placement_record(output: &Value) -> PlacementRecord {
    let s = |k: &str| {
        output
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    PlacementRecord {
        cloud: s("provider"),
        region: s("region"),
        zone: s("zone"),
        instance_type: s("instance_type"),
        // Ledgers from before the market was recorded have only the spot price.
        price_per_hour: output
            .get("price_per_hour")
            .or_else(|| output.get("spot_price"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        on_demand_price_per_hour: output.get("on_demand_price").and_then(Value::as_f64),
        on_demand: output.get("market").and_then(Value::as_str) == Some("on_demand"),
        env_fingerprint: None,
    }
}

/// A digest of a workload's env: equal exactly when the env is. It goes into the
/// store with the instance's placement (never onto the API), so a changed env is seen
/// to need a rolling replacement.
pub(crate) fn env_fingerprint(env: &std::collections::BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let canonical = serde_json::to_vec(env).unwrap_or_default();
    hex::encode(&Sha256::digest(&canonical)[..16])
}

async fn mark_provisioning(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let placed = placement_record(ctx.output(PLACEMENT)?);
    let reason = format!(
        "placed on {} {} in {}",
        placed.cloud, placed.instance_type, placed.region
    );
    orch.transition(
        ctx.workload,
        WorkloadStatus::Pending,
        WorkloadStatus::Provisioning,
        &reason,
        WorkloadChanges {
            placement: Some(Some(placed)),
            ..Default::default()
        },
    )
    .await?;
    Ok(json!({}))
}

/// Spot capacity errors this many times in a row (within the step, backing off from
/// [`CAPACITY_RETRY`]) count as persisting: `fallback = "on_demand"` then takes
/// on-demand capacity of the same offer; without it the step fails, retryable.
const CAPACITY_ATTEMPTS: u32 = 3;
const CAPACITY_RETRY: Duration = Duration::from_millis(500);

async fn provision(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let mut placed = placement_record(ctx.output(PLACEMENT)?);
    let spec = &ctx.workload.spec;
    let mut tags = spec.tags.clone();
    tags.insert(WORKLOAD_TAG.into(), ctx.workload.id.clone());
    tags.insert(TENANT_TAG.into(), ctx.workload.tenant_id.clone());
    let driver = orch.driver(&placed.cloud)?;
    let base = InstanceSpec {
        idempotency_token: ctx.token(PROVISION),
        cloud: placed.cloud.clone(),
        region: placed.region.clone(),
        zone: placed.zone.clone(),
        instance_type: placed.instance_type.clone(),
        // The seed's 10 % buffer over the spot price.
        max_price: placed.price_per_hour * 1.1,
        on_demand: false,
        command: spec.command.clone(),
        image: spec.image.clone(),
        env: spec.env.clone(),
        port: spec.port,
        tcp_port: spec.tcp_port,
        tags,
        agent: orch.agent_boot(&ctx.run.id),
    };
    let launch = |on_demand: bool, token: String| {
        let instance = InstanceSpec {
            idempotency_token: token,
            on_demand,
            ..base.clone()
        };
        let driver = driver.clone();
        async move { driver.create_spot_instance(&instance).await }
    };
    // Its own token: a redo after a crash finds the on-demand instance it made.
    let on_demand_token = format!("{}-on-demand", ctx.token(PROVISION));
    let mut fell_back = None;
    let instance = if placed.on_demand {
        launch(true, on_demand_token).await?
    } else {
        let mut attempt = 1;
        let mut delay = CAPACITY_RETRY;
        loop {
            match launch(false, ctx.token(PROVISION)).await {
                Ok(instance) => break instance,
                Err(computearbitrage_core::Error::Capacity { message, .. })
                    if attempt < CAPACITY_ATTEMPTS =>
                {
                    tracing::warn!(workload_id = %ctx.workload.id, attempt, error = %message, "no spot capacity; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(computearbitrage_core::Error::Capacity { message, .. })
                    if spec.fallback == Fallback::OnDemand
                        && placed.on_demand_price_per_hour.is_some()
                        && !rebalancing(ctx) =>
                {
                    placed.on_demand = true;
                    placed.price_per_hour = placed.on_demand_price_per_hour.unwrap_or_default();
                    tracing::warn!(workload_id = %ctx.workload.id, error = %message, "spot capacity errors persist: taking on-demand capacity");
                    fell_back = Some(message);
                    break launch(true, on_demand_token).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if let Some(why) = &fell_back {
        notify::enqueue(
            orch,
            ctx.workload,
            "workload.fallback",
            json!({ "to": format!("on-demand {} {} in {}", placed.cloud, placed.instance_type, placed.region), "price_per_hour": placed.price_per_hour, "why": format!("spot capacity errors persist: {why}") }),
        )
        .await?;
    }
    let started_ms = now_ms();
    placed.env_fingerprint = Some(env_fingerprint(&spec.env));
    let output = json!({
        "instance_id": instance.instance_id,
        "started_at_ms": started_ms,
        "driver": driver.name(),
        "market": if placed.on_demand { "on_demand" } else { "spot" },
        "price_per_hour": placed.price_per_hour,
        "env_fingerprint": placed.env_fingerprint,
    });
    // A replacement becomes the workload's instance only when the route switches.
    if ctx.run.kind == computearbitrage_store::RunKind::Migrate {
        return Ok(output);
    }
    orch.store
        .update_workload(
            &ctx.workload.tenant_id,
            &ctx.workload.id,
            WorkloadChanges {
                instance_id: Some(Some(instance.instance_id.clone())),
                instance_started_at: Some(Some(started_ms)),
                // What is paid (the market may have changed here), and the env the
                // instance runs with.
                placement: Some(Some(placed.clone())),
                ..Default::default()
            },
            started_ms,
        )
        .await?;
    Ok(output)
}

pub(crate) fn instance_id(ctx: &StepContext<'_>) -> Result<String, StepError> {
    ctx.output(PROVISION)?
        .get("instance_id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| StepError::permanent("the provision step recorded no instance id"))
}

async fn wait_running(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let placed = placement_record(ctx.output(PLACEMENT)?);
    let driver = orch.driver(&placed.cloud)?;
    let id = instance_id(ctx)?;
    let deadline = tokio::time::Instant::now() + orch.settings.wait_running_timeout;
    loop {
        let instance = driver.instance(&id).await?;
        match instance.state {
            InstanceState::Running => {
                let address = instance
                    .address
                    .ok_or_else(|| StepError::transient("running but no address yet"))?;
                return Ok(json!({ "address": address, "tcp_address": instance.tcp_address }));
            }
            InstanceState::Terminated { reason } => {
                return Err(StepError::permanent(format!(
                    "instance {id} stopped before running: {reason}{}",
                    last_output_suffix(orch, ctx)
                )));
            }
            InstanceState::Interrupted { .. } => {
                return Err(StepError::permanent(format!(
                    "instance {id} was interrupted before running"
                )));
            }
            InstanceState::Pending if orch.reclaim_announced(&id) => {
                return Err(StepError::permanent(format!(
                    "instance {id} is reclaimed by its cloud before it ran"
                )));
            }
            InstanceState::Pending => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::permanent(format!(
                "instance {id} did not report running within {} s",
                orch.settings.wait_running_timeout.as_secs()
            )));
        }
        if orch.is_cancelled(&ctx.workload.id) {
            return Err(StepError::permanent("cancelled"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_healthy(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let address = ctx
        .output(WAIT_RUNNING)?
        .get("address")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let check = &ctx.workload.spec.health_check;
    let url = format!("http://{address}{}", check.path);
    let placed = placement_record(ctx.output(PLACEMENT)?);
    let driver = orch.driver(&placed.cloud)?;
    let id = instance_id(ctx)?;
    // The whole create may take create_timeout, counted from when it was accepted. The
    // run gives up a margin before that (10 %, at least 1 s), so a caller waiting
    // exactly create_timeout sees FAILED with this step's error, not a timeout.
    let total_ms = ctx.workload.spec.create_timeout.as_millis() as i64;
    let margin_ms = (total_ms / 10).max(1_000);
    // A migration's replacement gets the same budget, counted from the notice.
    let since = if ctx.run.kind == computearbitrage_store::RunKind::Migrate {
        ctx.run.created_at
    } else {
        ctx.workload.created_at
    };
    let budget_ms = total_ms - margin_ms - (now_ms() - since);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(budget_ms.max(1_000) as u64);
    let mut last_error: String;
    loop {
        match orch.http.get(&url).timeout(check.timeout).send().await {
            Ok(response) if response.status().is_success() => {
                return Ok(json!({ "url": url, "status": response.status().as_u16() }));
            }
            Ok(response) => last_error = format!("HTTP {}", response.status()),
            Err(e) => last_error = describe_http_error(&e),
        }
        let state = driver.instance(&id).await?.state;
        if matches!(state, InstanceState::Interrupted { .. }) || orch.reclaim_announced(&id) {
            return Err(StepError::permanent(format!(
                "instance {id} is reclaimed by its cloud before its health check passed"
            )));
        }
        if let InstanceState::Terminated { reason } = state {
            if let Some(report) = orch.exit_report(&ctx.run.id).filter(|r| r.not_started) {
                // No health check could pass; the check's error would only mislead.
                return Err(StepError::permanent(format!(
                    "the agent on instance {id} did not start the workload: {}",
                    report.status
                )));
            }
            let output = last_output_suffix(orch, ctx);
            return Err(StepError::permanent(format!("the workload exited before its health check passed ({reason}); last check of {url}: {last_error}{output}")));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::permanent(format!(
                "health check GET {url} did not succeed within the create timeout ({} s); last error: {last_error}",
                ctx.workload.spec.create_timeout.as_secs()
            )));
        }
        if orch.is_cancelled(&ctx.workload.id) {
            return Err(StepError::permanent("cancelled"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The last lines an exited workload wrote, as its agent reported them, for the error.
fn last_output_suffix(orch: &Orchestrator, ctx: &StepContext<'_>) -> String {
    // The agent's report names the exit status even when the driver saw only that the
    // instance's process ended.
    match orch.exit_report(&ctx.run.id) {
        Some(report) if report.not_started => {
            format!("; its agent did not start the workload: {}", report.status)
        }
        Some(report) if !report.last_output.is_empty() => format!(
            "; the workload ended with {}; its last output:\n{}",
            report.status,
            report.last_output.join("\n")
        ),
        Some(report) => format!("; the workload ended with {}", report.status),
        None => String::new(),
    }
}

/// A short, useful description of a failed request ("connection refused").
pub fn describe_http_error(e: &reqwest::Error) -> String {
    use std::error::Error;
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut source: Option<&(dyn Error + 'static)> = e.source();
    let mut text = e.to_string();
    while let Some(s) = source {
        text = s.to_string();
        source = s.source();
    }
    // The usual cause on a VM (and a namespaced local instance): a server bound to
    // 127.0.0.1, which is the instance's own loopback.
    if e.is_connect() && text.to_ascii_lowercase().contains("refused") {
        text.push_str(" (nothing listens on the instance's address at that port: the workload must listen on 0.0.0.0:$PORT, not 127.0.0.1, which is the instance's own loopback)");
    }
    text
}

/// Publishes the backend to the router: the RUNNING transition and the addresses are
/// one store write, which the router's cache follows.
async fn register_routing(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let running = ctx.output(WAIT_RUNNING)?;
    let address = running
        .get("address")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let tcp_address = running
        .get("tcp_address")
        .and_then(Value::as_str)
        .map(str::to_string);
    orch.transition(
        ctx.workload,
        WorkloadStatus::Provisioning,
        WorkloadStatus::Running,
        "health check passed",
        WorkloadChanges {
            endpoint: Some(Some(address.clone())),
            tcp_endpoint: Some(tcp_address.clone()),
            ..Default::default()
        },
    )
    .await?;
    Ok(json!({ "endpoint": address, "tcp_endpoint": tcp_address }))
}

fn storage_init(ctx: &StepContext<'_>) -> Value {
    let storage = &ctx.workload.spec.storage;
    json!({
        "enabled": storage.enabled,
        "quota_gb": storage.quota_gb,
        "retention_days": storage.retention_days,
        "namespace": format!("workloads/{}/", ctx.workload.id),
    })
}

async fn mark_stopping(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    // Provisioning of this workload stops at its next step boundary; wait for it, so
    // it cannot start an instance after this run has looked for instances.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let provisioning = orch
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|(run, workload)| workload == &ctx.workload.id && run != &ctx.run.id);
        if !provisioning {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StepError::transient(
                "provisioning of this workload has not stopped yet",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let current = orch
        .get(&ctx.workload.tenant_id, &ctx.workload.id)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?;
    match current.status {
        // Cleanup after an interruption or failed health goes straight to TERMINATED.
        WorkloadStatus::Interrupted
        | WorkloadStatus::Unhealthy
        | WorkloadStatus::Stopping
        | WorkloadStatus::Terminated => {}
        from => {
            orch.transition(
                &current,
                from,
                WorkloadStatus::Stopping,
                &ctx.run.reason,
                WorkloadChanges::default(),
            )
            .await?;
        }
    }
    Ok(json!({ "from": current.status.as_str() }))
}

/// Terminates every live instance of the workload; returns their ids.
pub async fn release_instances(
    orch: &Orchestrator,
    workload: &WorkloadRecord,
) -> Result<Vec<String>, StepError> {
    let mut released = Vec::new();
    for driver in orch.distinct_drivers() {
        for instance in driver.list_by_tag(WORKLOAD_TAG, Some(&workload.id)).await? {
            if !matches!(instance.state, InstanceState::Terminated { .. }) {
                driver.terminate(&instance.instance_id).await?;
                released.push(instance.instance_id);
            }
        }
    }
    Ok(released)
}

async fn terminate_instance(
    orch: &Orchestrator,
    ctx: &StepContext<'_>,
) -> Result<Value, StepError> {
    let released = release_instances(orch, ctx.workload).await?;
    Ok(json!({ "terminated": released, "ended_at_ms": now_ms() }))
}

fn storage_retention(ctx: &StepContext<'_>) -> Value {
    let storage = &ctx.workload.spec.storage;
    if storage.enabled {
        json!({ "expires_at_ms": now_ms() + i64::from(storage.retention_days) * 86_400_000 })
    } else {
        json!({ "enabled": false })
    }
}

async fn mark_terminated(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let current = orch
        .get(&ctx.workload.tenant_id, &ctx.workload.id)
        .await
        .map_err(|e| StepError::transient(e.to_string()))?;
    if current.status != WorkloadStatus::Terminated {
        orch.transition(
            &current,
            current.status,
            WorkloadStatus::Terminated,
            &ctx.run.reason,
            WorkloadChanges::default(),
        )
        .await?;
        notify::enqueue(
            orch,
            &current,
            "workload.terminated",
            json!({ "reason": ctx.run.reason }),
        )
        .await?;
    }
    orch.forget(&ctx.workload.id);
    Ok(json!({}))
}

async fn record_billing(orch: &Orchestrator, ctx: &StepContext<'_>) -> Result<Value, StepError> {
    let workload = &ctx.workload;
    let ended = ctx
        .output(TERMINATE_INSTANCE)?
        .get("ended_at_ms")
        .and_then(Value::as_i64)
        .unwrap_or_else(now_ms);
    let (Some(placed), Some(started), Some(instance_id)) = (
        &workload.placement,
        workload.instance_started_at,
        &workload.instance_id,
    ) else {
        return Ok(json!({ "billed": false, "why": "no instance was started" }));
    };
    let record = bill(workload, placed, instance_id, started, ended);
    let cost = record.cost;
    orch.store.add_billing(record).await?;
    Ok(json!({ "billed": true, "cost": cost }))
}

/// The cost of one instance segment: duration × the price paid for it.
pub fn bill(
    workload: &WorkloadRecord,
    placed: &PlacementRecord,
    instance_id: &str,
    started_ms: i64,
    ended_ms: i64,
) -> BillingRecord {
    let seconds = (ended_ms - started_ms).max(0) as f64 / 1000.0;
    BillingRecord {
        tenant_id: workload.tenant_id.clone(),
        workload_id: workload.id.clone(),
        instance_id: instance_id.to_string(),
        cloud: placed.cloud.clone(),
        region: placed.region.clone(),
        instance_type: placed.instance_type.clone(),
        price_per_hour: placed.price_per_hour,
        started_at: started_ms,
        ended_at: ended_ms,
        cost: placed.price_per_hour * seconds / 3600.0,
    }
}
