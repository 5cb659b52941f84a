//! Wire ↔ core conversions. Requests become canonical core values (names in canonical
//! spelling, defaults filled in); core values become the canonical wire form the API
//! documents, so what a client reads back compares equal to what it meant.

use crate::auth::AccessTokenKey;
use crate::routing::PublicAddress;
use computearbitrage_api::pb;
use computearbitrage_core::conventions::defaults;
use computearbitrage_core::fmt::rfc3339;
use computearbitrage_core::hints::UnknownName;
use computearbitrage_core::workload::WrittenBlocks;
use computearbitrage_core::{
    gpu, Architecture, Candidate, CheckpointSpec, Cloud, Fallback, HealthCheck, Offer, OfferFilter,
    OnInterruption, OnUnhealthy, RebalancePolicy, Requirements, StorageSpec, WorkloadSpec,
};
use computearbitrage_store::WorkloadRecord;
use std::time::Duration;

/// Validated cloud names → clouds. Validation has already rejected unknown names.
fn clouds(names: &[String]) -> Vec<Cloud> {
    names.iter().filter_map(|n| Cloud::parse(n)).collect()
}

fn optional_count(value: Option<i64>) -> Option<u32> {
    value.map(|v| u32::try_from(v.max(0)).unwrap_or(u32::MAX))
}

fn gpu_name(name: &str) -> Option<String> {
    Some(name)
        .filter(|g| !g.trim().is_empty())
        .map(gpu::canonical_name)
}

pub fn filter_from_pb(f: &pb::OfferFilter) -> OfferFilter {
    OfferFilter {
        clouds: clouds(&f.clouds),
        regions: f.regions.clone(),
        instance_types: f.instance_types.clone(),
        min_vcpus: f.min_vcpus,
        min_memory_gib: f.min_memory_gib,
        gpu_name: gpu_name(&f.gpu_name),
        min_gpus: optional_count(f.min_gpus),
        max_spot_price: f.max_spot_price,
        ..OfferFilter::default()
    }
}

pub fn requirements_from_pb(r: &pb::Requirements) -> Requirements {
    Requirements {
        filter: OfferFilter {
            clouds: clouds(&r.clouds),
            regions: r.regions.clone(),
            exclude_regions: r.exclude_regions.clone(),
            instance_types: Vec::new(),
            min_vcpus: r.min_vcpus,
            min_memory_gib: r.min_memory_gib,
            gpu_name: gpu_name(&r.gpu_name),
            min_gpus: optional_count(r.min_gpus),
            architecture: Architecture::parse(&r.architecture),
            max_interruption_rate: r.max_interruption_rate,
            allow_unknown_interruption_rate: r.allow_unknown_interruption_rate.unwrap_or(false),
            max_spot_price: r.max_price_per_hour,
        },
        preferred_regions: r.preferred_regions.clone(),
    }
}

/// The canonical wire form: every field explicit, names in canonical spelling.
pub fn requirements_to_pb(r: &Requirements) -> pb::Requirements {
    let f = &r.filter;
    pb::Requirements {
        min_vcpus: f.min_vcpus,
        min_memory_gib: f.min_memory_gib,
        gpu_name: f.gpu_name.clone().unwrap_or_default(),
        min_gpus: f.min_gpus.map(i64::from),
        architecture: f.architecture.map(|a| a.to_string()).unwrap_or_default(),
        clouds: f.clouds.iter().map(|c| c.to_string()).collect(),
        regions: f.regions.clone(),
        exclude_regions: f.exclude_regions.clone(),
        preferred_regions: r.preferred_regions.clone(),
        max_interruption_rate: f.max_interruption_rate,
        allow_unknown_interruption_rate: Some(f.allow_unknown_interruption_rate),
        max_price_per_hour: f.max_spot_price,
    }
}

pub fn offer_to_pb(o: &Offer) -> pb::Offer {
    let (gpu_name, gpu_name_original, gpu_count) = match &o.gpu {
        Some(g) => (g.name.clone(), g.original_name.clone(), u32::from(g.count)),
        None => (String::new(), String::new(), 0),
    };
    pb::Offer {
        cloud: o.cloud.to_string(),
        region: o.region.clone(),
        zone: o.zone.clone(),
        instance_type: o.instance_type.clone(),
        vcpus: o.vcpus,
        memory_gib: o.memory_gib,
        architecture: o.architecture.to_string(),
        gpu_name,
        gpu_name_original,
        gpu_count,
        on_demand_price: o.on_demand_price,
        spot_price: o.spot_price,
        interruption_rate: o.interruption_rate.to_string(),
        observed_at: rfc3339(o.observed_at),
        source: o.source.clone(),
        interruption_rate_source: o.interruption_source.clone(),
    }
}

pub fn candidate_to_pb(c: &Candidate) -> pb::PlacementCandidate {
    pb::PlacementCandidate {
        offer: Some(offer_to_pb(&c.offer)),
        savings_percent: c.savings_percent,
        score: c.score,
        reason: c.reason.clone(),
    }
}

/// A name no offer has, as a warning on its request field under `parent`.
pub fn unknown_name_warning(parent: &str, unknown: &UnknownName) -> pb::Warning {
    let mut field = format!("{parent}.{}", unknown.field);
    if let Some(i) = unknown.index {
        field.push_str(&format!("[{i}]"));
    }
    pb::Warning {
        field,
        message: unknown.message(),
    }
}

/// The check in effect for a written block; unset fields get their defaults, and the
/// default timeout fits the interval.
pub fn health_check_from_pb(check: Option<&pb::HealthCheck>) -> HealthCheck {
    let Some(c) = check else {
        return HealthCheck::default();
    };
    let interval = if c.interval_seconds == 0 {
        defaults::HEALTH_INTERVAL_SECONDS
    } else {
        c.interval_seconds
    };
    HealthCheck {
        path: if c.path.is_empty() {
            defaults::HEALTH_PATH.to_string()
        } else {
            c.path.clone()
        },
        interval: Duration::from_secs(interval.into()),
        timeout: Duration::from_secs(u64::from(if c.timeout_seconds == 0 {
            defaults::health_timeout_seconds(interval)
        } else {
            c.timeout_seconds
        })),
        unhealthy_threshold: if c.unhealthy_threshold == 0 {
            defaults::HEALTH_UNHEALTHY_THRESHOLD
        } else {
            c.unhealthy_threshold
        },
    }
}

pub fn health_check_to_pb(check: &HealthCheck) -> pb::HealthCheck {
    pb::HealthCheck {
        path: check.path.clone(),
        interval_seconds: check.interval.as_secs() as u32,
        timeout_seconds: check.timeout.as_secs() as u32,
        unhealthy_threshold: check.unhealthy_threshold,
    }
}

pub fn storage_from_pb(storage: Option<&pb::StorageSpec>) -> StorageSpec {
    storage
        .map(|s| StorageSpec {
            enabled: s.enabled,
            quota_gb: s.quota_gb,
            retention_days: s.retention_days,
        })
        .unwrap_or_default()
}

pub fn storage_to_pb(storage: &StorageSpec) -> pb::StorageSpec {
    pb::StorageSpec {
        enabled: storage.enabled,
        quota_gb: storage.quota_gb,
        retention_days: storage.retention_days,
    }
}

/// A validated block in canonical form; absent is the defaults.
pub fn checkpoint_from_pb(c: Option<&pb::CheckpointSpec>) -> CheckpointSpec {
    let default = CheckpointSpec::default();
    let Some(c) = c else { return default };
    CheckpointSpec {
        signal: if c.signal.is_empty() {
            default.signal
        } else {
            c.signal.clone()
        },
        command: c.command.clone(),
        interval: Duration::from_secs(c.interval_seconds.into()),
        keep: if c.keep == 0 { default.keep } else { c.keep },
    }
}

pub fn checkpoint_to_pb(c: &CheckpointSpec) -> pb::CheckpointSpec {
    pb::CheckpointSpec {
        signal: c.signal.clone(),
        command: c.command.clone(),
        interval_seconds: c.interval.as_secs() as u32,
        keep: c.keep,
    }
}

/// Validated text → choice; the empty string is the default.
pub fn on_interruption(text: &str) -> OnInterruption {
    OnInterruption::parse(text).unwrap_or(OnInterruption::Migrate)
}

/// Validated text → choice; the empty string is the default.
pub fn on_unhealthy(text: &str) -> OnUnhealthy {
    OnUnhealthy::parse(text).unwrap_or_default()
}

/// Validated text → choice; the empty string is the default.
pub fn fallback(text: &str) -> Fallback {
    Fallback::parse(text).unwrap_or_default()
}

/// Validated seconds → the wait before `replace`; 0 is the default.
pub fn replace_unhealthy_after(seconds: u32) -> Duration {
    Duration::from_secs(u64::from(if seconds == 0 {
        defaults::REPLACE_UNHEALTHY_AFTER_SECONDS
    } else {
        seconds
    }))
}

/// A validated `rebalance` block with its defaults filled in.
pub fn rebalance_from_pb(spec: Option<&pb::RebalanceSpec>) -> Option<RebalancePolicy> {
    spec.map(|r| RebalancePolicy {
        min_savings_percent: if r.min_savings_percent == 0.0 {
            defaults::REBALANCE_MIN_SAVINGS_PERCENT
        } else {
            r.min_savings_percent
        },
        min_duration: Duration::from_secs(u64::from(
            r.min_duration_seconds
                .unwrap_or(defaults::REBALANCE_MIN_DURATION_SECONDS),
        )),
    })
}

pub fn rebalance_to_pb(policy: &RebalancePolicy) -> pb::RebalanceSpec {
    pb::RebalanceSpec {
        min_savings_percent: policy.min_savings_percent,
        min_duration_seconds: Some(policy.min_duration.as_secs() as u32),
    }
}

/// A validated request spec in canonical form.
pub fn spec_from_pb(spec: &pb::WorkloadSpec) -> WorkloadSpec {
    WorkloadSpec {
        name: spec.name.clone(),
        requirements: requirements_from_pb(
            spec.requirements.as_ref().unwrap_or(&Default::default()),
        ),
        command: spec.command.clone(),
        image: Some(spec.image.clone()).filter(|i| !i.is_empty()),
        env: spec.env.clone().into_iter().collect(),
        port: if spec.port == 0 {
            defaults::PORT
        } else {
            spec.port as u16
        },
        health_check: health_check_from_pb(spec.health_check.as_ref()),
        on_interruption: on_interruption(&spec.on_interruption),
        on_unhealthy: on_unhealthy(&spec.on_unhealthy),
        replace_unhealthy_after: replace_unhealthy_after(spec.replace_unhealthy_after_seconds),
        fallback: fallback(&spec.fallback),
        rebalance: rebalance_from_pb(spec.rebalance.as_ref()),
        storage: storage_from_pb(spec.storage.as_ref()),
        checkpoint: checkpoint_from_pb(spec.checkpoint.as_ref()),
        tags: spec.tags.clone().into_iter().collect(),
        create_timeout: Duration::from_secs(u64::from(if spec.create_timeout_seconds == 0 {
            defaults::CREATE_TIMEOUT_SECONDS
        } else {
            spec.create_timeout_seconds
        })),
        // Validation has checked both are ports.
        tcp_port: spec.tcp_port.map(|p| p as u16),
        tcp_listen_port: spec.tcp_listen_port.map(|p| p as u16),
        tcp_allowed_cidrs: canonical_cidrs(&spec.tcp_allowed_cidrs),
        written: Some(WrittenBlocks {
            requirements: spec.requirements.is_some(),
            health_check: spec.health_check.is_some(),
            storage: spec.storage.is_some(),
            checkpoint: spec.checkpoint.is_some(),
        }),
    }
}

/// The canonical wire form of a stored spec: blocks present as they were written,
/// every field of a present block explicit.
pub fn spec_to_pb(s: &WorkloadSpec) -> pb::WorkloadSpec {
    let written = s.written_blocks();
    pb::WorkloadSpec {
        name: s.name.clone(),
        requirements: written
            .requirements
            .then(|| requirements_to_pb(&s.requirements)),
        command: s.command.clone(),
        image: s.image.clone().unwrap_or_default(),
        env: s.env.clone().into_iter().collect(),
        port: u32::from(s.port),
        health_check: written
            .health_check
            .then(|| health_check_to_pb(&s.health_check)),
        on_interruption: s.on_interruption.as_str().into(),
        storage: written.storage.then(|| storage_to_pb(&s.storage)),
        tags: s.tags.clone().into_iter().collect(),
        create_timeout_seconds: s.create_timeout.as_secs() as u32,
        tcp_port: s.tcp_port.map(u32::from),
        tcp_listen_port: s.tcp_listen_port.map(u32::from),
        tcp_allowed_cidrs: s.tcp_allowed(),
        checkpoint: written.checkpoint.then(|| checkpoint_to_pb(&s.checkpoint)),
        on_unhealthy: s.on_unhealthy.as_str().into(),
        replace_unhealthy_after_seconds: s.replace_unhealthy_after.as_secs() as u32,
        fallback: s.fallback.as_str().into(),
        rebalance: s.rebalance.as_ref().map(rebalance_to_pb),
    }
}

/// Validated ranges in canonical spelling (`2001:DB8::/32` → `2001:db8::/32`).
pub fn canonical_cidrs(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|c| computearbitrage_core::conventions::cidr::canonical(c))
        .collect()
}

/// The wire form of a workload, as its owner sees it: with its router endpoints and
/// access token.
pub fn workload_to_pb(
    w: &WorkloadRecord,
    public: &PublicAddress,
    tokens: &AccessTokenKey,
) -> pb::Workload {
    let placement = w.placement.as_ref();
    let placed = |pick: fn(&computearbitrage_store::PlacementRecord) -> &String| {
        placement.map(|p| pick(p).clone()).unwrap_or_default()
    };
    pb::Workload {
        id: w.id.clone(),
        spec: Some(spec_to_pb(&w.spec)),
        status: w.status.to_string(),
        status_reason: w.status_reason.clone(),
        failed_step: w.failed_step.clone().unwrap_or_default(),
        cloud: placed(|p| &p.cloud),
        region: placed(|p| &p.region),
        zone: placed(|p| &p.zone),
        instance_type: placed(|p| &p.instance_type),
        instance_id: w.instance_id.clone().unwrap_or_default(),
        endpoint: public.endpoint(&w.id),
        backend_endpoint: w.endpoint.clone().unwrap_or_default(),
        access_token: if w.access_token_hash.is_some() {
            tokens.token_for(&w.id)
        } else {
            String::new()
        },
        tcp_listen_port: w.tcp_listen_port.map(u32::from),
        tcp_endpoint: w
            .tcp_listen_port
            .map(|p| public.tcp_endpoint(p))
            .unwrap_or_default(),
        // Filled in by the handlers, which read the billing.
        cost_to_date: None,
        storage_prefix: if w.spec.storage.enabled {
            format!("workloads/{}/", w.id)
        } else {
            String::new()
        },
        price_per_hour: placement.map(|p| p.price_per_hour),
        on_demand_price_per_hour: placement.and_then(|p| p.on_demand_price_per_hour),
        market: placement
            .map(|p| if p.on_demand { "on_demand" } else { "spot" })
            .unwrap_or_default()
            .into(),
        env_applied: !computearbitrage_orchestrator::workloads::rebalance::env_is_stale(w),
        created_at: rfc3339(w.created_at / 1000),
        updated_at: rfc3339(w.updated_at / 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_spelling_becomes_the_canonical_form() {
        let request = pb::Requirements {
            architecture: "AMD64".into(),
            gpu_name: "nvidia-tesla-a100".into(),
            ..Default::default()
        };
        let canonical = requirements_to_pb(&requirements_from_pb(&request));
        assert_eq!(canonical.architecture, "x86_64");
        assert_eq!(canonical.gpu_name, "A100");
        assert_eq!(canonical.allow_unknown_interruption_rate, Some(false));
        // Canonical forms are fixed points.
        assert_eq!(
            requirements_to_pb(&requirements_from_pb(&canonical)),
            canonical
        );
    }

    #[test]
    fn a_spec_reads_back_with_the_blocks_it_was_written_with() {
        let without = pb::WorkloadSpec {
            name: "web".into(),
            command: vec!["x".into()],
            ..Default::default()
        };
        let back = spec_to_pb(&spec_from_pb(&without));
        assert!(
            back.requirements.is_none() && back.health_check.is_none() && back.storage.is_none()
        );
        assert_eq!(back.port, 8080);
        assert_eq!(back.on_interruption, "migrate");
        assert_eq!(
            (
                back.on_unhealthy.as_str(),
                back.replace_unhealthy_after_seconds
            ),
            ("keep", 300)
        );
        assert_eq!(back.fallback, "none");

        let with = pb::WorkloadSpec {
            health_check: Some(pb::HealthCheck {
                interval_seconds: 2,
                ..Default::default()
            }),
            storage: Some(pb::StorageSpec::default()),
            requirements: Some(pb::Requirements::default()),
            ..without
        };
        let back = spec_to_pb(&spec_from_pb(&with));
        let check = back.health_check.unwrap();
        assert_eq!(
            (
                check.path.as_str(),
                check.interval_seconds,
                check.timeout_seconds,
                check.unhealthy_threshold
            ),
            ("/health", 2, 2, 3),
            "the default timeout fits the interval"
        );
        assert_eq!(back.storage, Some(pb::StorageSpec::default()));
        assert!(back.requirements.is_some());
    }
}
