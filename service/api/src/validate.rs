//! Request validation shared by the provider and the service.
//!
//! Each rule yields a [`Violation`] with the field's path relative to the message and a
//! message that says what is wrong and how to fix it. The provider prefixes the path
//! with the Terraform block it came from; the service returns it in
//! [`crate::ERROR_FIELD_METADATA`].

use crate::pb;
use std::fmt;

/// One step of a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Field(&'static str),
    Index(usize),
}

/// One invalid value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: Vec<PathStep>,
    pub message: String,
}

impl Violation {
    /// A violation of one top-level field.
    pub fn field(name: &'static str, message: impl Into<String>) -> Self {
        Violation {
            path: vec![PathStep::Field(name)],
            message: message.into(),
        }
    }

    pub fn element(name: &'static str, index: usize, message: impl Into<String>) -> Self {
        Violation {
            path: vec![PathStep::Field(name), PathStep::Index(index)],
            message: message.into(),
        }
    }

    /// The path as `requirements.clouds[1]`.
    pub fn dotted_path(&self) -> String {
        let mut out = String::new();
        for step in &self.path {
            match step {
                PathStep::Field(name) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(name);
                }
                PathStep::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        out
    }

    /// Prefixes the path with an enclosing field.
    pub fn within(mut self, parent: &'static str) -> Self {
        self.path.insert(0, PathStep::Field(parent));
        self
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.dotted_path(), self.message)
    }
}

/// Rules for `ListOffers`' filter.
pub fn offer_filter(filter: &pb::OfferFilter) -> Vec<Violation> {
    let mut out = Vec::new();
    clouds(&filter.clouds, &mut out);
    names(
        "regions",
        &filter.regions,
        "a region such as \"us-east-1\"",
        &mut out,
    );
    names(
        "instance_types",
        &filter.instance_types,
        "an instance type such as \"m5.xlarge\"",
        &mut out,
    );
    non_negative("min_vcpus", filter.min_vcpus, &mut out);
    non_negative("min_memory_gib", filter.min_memory_gib, &mut out);
    gpu(&filter.gpu_name, filter.min_gpus, &mut out);
    non_negative("max_spot_price", filter.max_spot_price, &mut out);
    out
}

/// Rules for placement requirements (the data source's and the workload's block).
pub fn requirements(req: &pb::Requirements) -> Vec<Violation> {
    let mut out = Vec::new();
    non_negative("min_vcpus", req.min_vcpus, &mut out);
    non_negative("min_memory_gib", req.min_memory_gib, &mut out);
    gpu(&req.gpu_name, req.min_gpus, &mut out);
    if !req.architecture.is_empty()
        && computearbitrage_conventions::architecture(&req.architecture).is_none()
    {
        out.push(Violation::field(
            "architecture",
            format!(
                "{:?} is not an architecture; use \"x86_64\" or \"arm64\", or leave it unset for any",
                req.architecture
            ),
        ));
    }
    clouds(&req.clouds, &mut out);
    let region_hint = "a region such as \"us-east-1\", \"eastus\" or \"us-central1\"";
    names("regions", &req.regions, region_hint, &mut out);
    names(
        "exclude_regions",
        &req.exclude_regions,
        region_hint,
        &mut out,
    );
    names(
        "preferred_regions",
        &req.preferred_regions,
        region_hint,
        &mut out,
    );
    for (i, region) in req.regions.iter().enumerate() {
        if req.exclude_regions.contains(region) {
            out.push(Violation::element(
                "regions",
                i,
                format!("{region:?} is both in regions and in exclude_regions; remove it from one of them"),
            ));
        }
    }
    if let Some(rate) = req.max_interruption_rate {
        if !rate.is_finite() || !(0.0..=100.0).contains(&rate) {
            out.push(Violation::field(
                "max_interruption_rate",
                format!("{rate} is not a percentage; use a value from 0 to 100, such as 10 for \"at most 10 %\""),
            ));
        }
    }
    non_negative("max_price_per_hour", req.max_price_per_hour, &mut out);
    out
}

/// Rules for `FindPlacement`.
pub fn find_placement(req: &pb::FindPlacementRequest) -> Vec<Violation> {
    let mut out: Vec<Violation> = match &req.requirements {
        Some(r) => requirements(r)
            .into_iter()
            .map(|v| v.within("requirements"))
            .collect(),
        None => vec![Violation::field(
            "requirements",
            "requirements are missing; send at least an empty requirements message",
        )],
    };
    if req.alternatives > crate::MAX_ALTERNATIVES {
        out.push(Violation::field(
            "alternatives",
            format!(
                "{} alternatives is more than the maximum of {}; ask for fewer",
                req.alternatives,
                crate::MAX_ALTERNATIVES
            ),
        ));
    }
    out
}

/// Rules for `ListOffers`.
pub fn list_offers(req: &pb::ListOffersRequest) -> Vec<Violation> {
    let mut out: Vec<Violation> = req
        .filter
        .as_ref()
        .map(|f| {
            offer_filter(f)
                .into_iter()
                .map(|v| v.within("filter"))
                .collect()
        })
        .unwrap_or_default();
    if req.page_size > crate::MAX_PAGE_SIZE {
        out.push(Violation::field(
            "page_size",
            format!(
                "{} is more than the maximum page size of {}; page through the results instead",
                req.page_size,
                crate::MAX_PAGE_SIZE
            ),
        ));
    }
    out
}

/// 1 to 63 lower-case letters, digits and dashes, starting and ending with a letter or
/// digit: usable as a host label.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !name.ends_with('-')
}

/// Rules for `CreateTenant`.
pub fn tenant(req: &pb::CreateTenantRequest) -> Vec<Violation> {
    let mut out = Vec::new();
    if !is_dns_label(&req.id) {
        out.push(Violation::field(
            "id",
            format!("{:?} is not a valid tenant id; use 1 to 63 lower-case letters, digits and dashes, such as \"team-ml\"", req.id),
        ));
    }
    if req.max_concurrent_workloads == Some(0) {
        out.push(Violation::field(
            "max_concurrent_workloads",
            "0 would allow no workload; use 1 or more, or leave it unset for the service's default",
        ));
    }
    out
}

/// Rules for a workload's name, command, port, env, tags, on_interruption and timeout
/// (the blocks have their own functions, so callers can place their paths).
pub fn workload_fields(spec: &pb::WorkloadSpec) -> Vec<Violation> {
    let mut out = Vec::new();
    let name = &spec.name;
    if !is_dns_label(name) {
        out.push(Violation::field(
            "name",
            format!("{name:?} is not a valid workload name; use 1 to 63 lower-case letters, digits and dashes, starting and ending with a letter or digit, such as \"web-api\""),
        ));
    }
    if spec.command.is_empty() {
        out.push(Violation::field(
            "command",
            "the command is empty; give the program and its arguments, such as [\"python3\", \"server.py\"]",
        ));
    }
    for (i, arg) in spec.command.iter().enumerate().take(1) {
        if arg.trim().is_empty() {
            out.push(Violation::element(
                "command",
                i,
                "the program is an empty string; name the program to run",
            ));
        }
    }
    if spec.port == 0 || spec.port > 65_535 {
        out.push(Violation::field(
            "port",
            format!(
                "{} is not a TCP port; use 1 to 65535, the port the workload serves on",
                spec.port
            ),
        ));
    }
    if let Some(port) = spec.tcp_port {
        if port == 0 || port > 65_535 {
            out.push(Violation::field(
                "tcp_port",
                format!("{port} is not a TCP port; use 1 to 65535, the raw TCP port the workload serves on"),
            ));
        }
    }
    if let Some(port) = spec.tcp_listen_port {
        if spec.tcp_port.is_none() {
            out.push(Violation::field(
                "tcp_listen_port",
                "only means something with tcp_port; set tcp_port to expose a TCP port, or remove tcp_listen_port",
            ));
        } else if port == 0 || port > 65_535 {
            out.push(Violation::field(
                "tcp_listen_port",
                format!("{port} is not a TCP port; use a port of the router's TCP range (default 20000-20999), or leave it unset to get one"),
            ));
        }
    }
    env(&spec.env, &mut out);
    tags(&spec.tags, &mut out);
    on_interruption(&spec.on_interruption, &mut out);
    on_unhealthy(
        &spec.on_unhealthy,
        spec.replace_unhealthy_after_seconds,
        &mut out,
    );
    fallback(&spec.fallback, &mut out);
    tcp_allowed_cidrs(&spec.tcp_allowed_cidrs, &mut out);
    out
}

/// Most environment variables, and the longest name and value, a workload may set.
pub const MAX_ENV_VARS: usize = 128;
pub const MAX_ENV_NAME_BYTES: usize = 256;
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// All names and values together.
pub const MAX_ENV_BYTES: usize = 128 * 1024;
/// Names the product sets itself.
pub const RESERVED_ENV: [&str; 3] = ["PORT", "TCP_PORT", "CHECKPOINT_DIR"];
/// A prefix of names and tag keys the product keeps for itself.
pub const RESERVED_ENV_PREFIX: &str = "COMPUTEARBITRAGE_";
pub const RESERVED_TAG_PREFIX: &str = "computearbitrage-";
/// Tag limits, those of the strictest cloud (AWS).
pub const MAX_TAGS: usize = 50;
pub const MAX_TAG_KEY_CHARS: usize = 128;
pub const MAX_TAG_VALUE_CHARS: usize = 256;

/// Rules for a workload's environment.
pub fn env(env: &std::collections::HashMap<String, String>, out: &mut Vec<Violation>) {
    if env.len() > MAX_ENV_VARS {
        out.push(Violation::field(
            "env",
            format!("{} variables is more than the {MAX_ENV_VARS} allowed; pass bulk configuration in a file or through storage", env.len()),
        ));
    }
    let total: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ENV_BYTES {
        out.push(Violation::field(
            "env",
            format!("the variables take {total} bytes, more than the {MAX_ENV_BYTES} allowed; pass bulk configuration in a file or through storage"),
        ));
    }
    let mut keys: Vec<&String> = env.keys().collect();
    keys.sort();
    for key in keys {
        let value = &env[key];
        let portable = key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if key.is_empty() || !portable || key.starts_with(|c: char| c.is_ascii_digit()) {
            out.push(Violation::field(
                "env",
                format!("{key:?} is not an environment variable name; use letters, digits and underscores, not starting with a digit"),
            ));
        } else if key.len() > MAX_ENV_NAME_BYTES {
            out.push(Violation::field(
                "env",
                format!(
                    "the name {}… is longer than {MAX_ENV_NAME_BYTES} bytes; use a shorter name",
                    &key[..32]
                ),
            ));
        }
        match key.as_str() {
            "PORT" => out.push(Violation::field(
                "env",
                "PORT is set by the driver to the port the workload must serve on; remove it from env and use `port`",
            )),
            "TCP_PORT" => out.push(Violation::field(
                "env",
                "TCP_PORT is set by the driver to the TCP port the workload must serve on; remove it from env and use `tcp_port`",
            )),
            "CHECKPOINT_DIR" => out.push(Violation::field(
                "env",
                "CHECKPOINT_DIR is set by the service to the directory checkpoints are restored into; remove it from env",
            )),
            _ if key.to_ascii_uppercase().starts_with(RESERVED_ENV_PREFIX) => out.push(Violation::field(
                "env",
                format!("{key:?}: names starting with {RESERVED_ENV_PREFIX} are the service's own; choose another name"),
            )),
            _ => {}
        }
        if value.contains('\0') {
            out.push(Violation::field(
                "env",
                format!("the value of {key} contains a NUL character, which no environment can hold; remove it"),
            ));
        }
        if value.len() > MAX_ENV_VALUE_BYTES {
            out.push(Violation::field(
                "env",
                format!("the value of {key} is {} bytes, more than the {MAX_ENV_VALUE_BYTES} allowed; pass it in a file or through storage", value.len()),
            ));
        }
    }
}

/// Rules for a workload's tags.
pub fn tags(tags: &std::collections::HashMap<String, String>, out: &mut Vec<Violation>) {
    if tags.len() > MAX_TAGS {
        out.push(Violation::field(
            "tags",
            format!(
                "{} tags is more than the {MAX_TAGS} allowed; merge some",
                tags.len()
            ),
        ));
    }
    let mut keys: Vec<&String> = tags.keys().collect();
    keys.sort();
    for key in keys {
        let value = &tags[key];
        if key.trim().is_empty() {
            out.push(Violation::field(
                "tags",
                "a tag key is empty; give every tag a name",
            ));
        } else if key.chars().count() > MAX_TAG_KEY_CHARS {
            out.push(Violation::field(
                "tags",
                format!("a tag key is longer than {MAX_TAG_KEY_CHARS} characters; shorten it"),
            ));
        }
        if key.to_ascii_lowercase().starts_with(RESERVED_TAG_PREFIX) {
            out.push(Violation::field(
                "tags",
                format!("{key:?}: tag keys starting with {RESERVED_TAG_PREFIX} are set by the service on every instance; choose another key"),
            ));
        }
        if value.chars().count() > MAX_TAG_VALUE_CHARS {
            out.push(Violation::field(
                "tags",
                format!("the value of tag {key:?} is longer than {MAX_TAG_VALUE_CHARS} characters; shorten it"),
            ));
        }
        if key.chars().chain(value.chars()).any(char::is_control) {
            out.push(Violation::field(
                "tags",
                format!("tag {key:?} contains control characters; remove them"),
            ));
        }
    }
}

/// Most ranges a TCP endpoint may list.
pub const MAX_TCP_ALLOWED_CIDRS: usize = 64;

fn tcp_allowed_cidrs(list: &[String], out: &mut Vec<Violation>) {
    if list.len() > MAX_TCP_ALLOWED_CIDRS {
        out.push(Violation::field(
            "tcp_allowed_cidrs",
            format!("{} ranges is more than the {MAX_TCP_ALLOWED_CIDRS} allowed; merge some into wider ones", list.len()),
        ));
    }
    for (i, text) in list.iter().enumerate() {
        if let Err(message) = computearbitrage_conventions::cidr::Cidr::parse(text) {
            out.push(Violation::element("tcp_allowed_cidrs", i, message));
        }
    }
}

fn on_interruption(value: &str, out: &mut Vec<Violation>) {
    if !["", "migrate", "terminate"].contains(&value) {
        out.push(Violation::field(
            "on_interruption",
            format!(
                "{value:?} is not a choice; use \"migrate\" (move the workload) or \"terminate\""
            ),
        ));
    }
}

fn fallback(value: &str, out: &mut Vec<Violation>) {
    if !["", "none", "on_demand"].contains(&value) {
        out.push(Violation::field(
            "fallback",
            format!("{value:?} is not a choice; use \"none\" (spot only) or \"on_demand\" (on-demand capacity when spot has none)"),
        ));
    }
}

fn on_unhealthy(value: &str, after_seconds: u32, out: &mut Vec<Violation>) {
    if !["", "keep", "replace"].contains(&value) {
        out.push(Violation::field(
            "on_unhealthy",
            format!(
                "{value:?} is not a choice; use \"keep\" (stay on the instance) or \"replace\" (move to a fresh one after replace_unhealthy_after_seconds)"
            ),
        ));
    }
    use computearbitrage_conventions::defaults;
    let (min, max) = (
        defaults::REPLACE_UNHEALTHY_AFTER_MIN_SECONDS,
        defaults::REPLACE_UNHEALTHY_AFTER_MAX_SECONDS,
    );
    if after_seconds != 0 && !(min..=max).contains(&after_seconds) {
        out.push(Violation::field(
            "replace_unhealthy_after_seconds",
            format!("{after_seconds} is outside {min} to {max} seconds; leave it out for the default, {}", defaults::REPLACE_UNHEALTHY_AFTER_SECONDS),
        ));
    }
}

/// The rules of a `rebalance` block, on its own field names.
pub fn rebalance(spec: &pb::RebalanceSpec) -> Vec<Violation> {
    use computearbitrage_conventions::defaults;
    let mut out = Vec::new();
    let (low, high) = defaults::REBALANCE_MIN_SAVINGS_PERCENT_RANGE;
    let percent = spec.min_savings_percent;
    if percent != 0.0 && !(low..=high).contains(&percent) {
        out.push(Violation::field(
            "min_savings_percent",
            format!(
                "{percent} is outside {low} to {high} percent; leave it out for the default, {}",
                defaults::REBALANCE_MIN_SAVINGS_PERCENT
            ),
        ));
    }
    let max = defaults::REBALANCE_MIN_DURATION_MAX_SECONDS;
    if let Some(seconds) = spec.min_duration_seconds.filter(|s| *s > max) {
        out.push(Violation::field(
            "min_duration_seconds",
            format!("{seconds} seconds is more than a week; use up to {max}, or leave it out for the default, {}", defaults::REBALANCE_MIN_DURATION_SECONDS),
        ));
    }
    out
}

/// Every rule of `UpdateWorkload`: the same as for the fields of a new workload.
pub fn update_workload(req: &pb::UpdateWorkloadRequest) -> Vec<Violation> {
    let mut out = Vec::new();
    if req.id.trim().is_empty() {
        out.push(Violation::field(
            "id",
            "the workload id is empty; give the id of the workload to change (`wl-…`)",
        ));
    }
    env(&req.env, &mut out);
    tags(&req.tags, &mut out);
    on_interruption(&req.on_interruption, &mut out);
    on_unhealthy(
        &req.on_unhealthy,
        req.replace_unhealthy_after_seconds,
        &mut out,
    );
    fallback(&req.fallback, &mut out);
    if let Some(r) = &req.rebalance {
        out.extend(rebalance(r).into_iter().map(|v| v.within("rebalance")));
    }
    tcp_allowed_cidrs(&req.tcp_allowed_cidrs, &mut out);
    if let Some(check) = &req.health_check {
        out.extend(
            health_check(check)
                .into_iter()
                .map(|v| v.within("health_check")),
        );
    }
    if let Some(s) = &req.storage {
        out.extend(storage(s).into_iter().map(|v| v.within("storage")));
    }
    if let Some(c) = &req.checkpoint {
        out.extend(checkpoint(c).into_iter().map(|v| v.within("checkpoint")));
    }
    out
}

/// Rules for the `checkpoint` block (paths relative to the block). Whether periodic
/// checkpoints have storage to go to is the caller's check: an update may leave
/// storage as it is.
pub fn checkpoint(spec: &pb::CheckpointSpec) -> Vec<Violation> {
    use computearbitrage_conventions::{defaults, signals};
    let mut out = Vec::new();
    if !spec.signal.is_empty() && signals::number(&spec.signal).is_none() {
        let upper = spec.signal.to_ascii_uppercase();
        let hint = match signals::number(&upper)
            .map(|_| upper.clone())
            .or_else(|| signals::number(&format!("SIG{upper}")).map(|_| format!("SIG{upper}")))
        {
            Some(name) => format!("; did you mean {name:?}?"),
            None => String::new(),
        };
        out.push(Violation::field(
            "signal",
            format!(
                "{:?} is not a signal the workload can be told by; use one of {}{hint}",
                spec.signal,
                signals::names()
            ),
        ));
    }
    for (i, part) in spec.command.iter().enumerate() {
        if part.is_empty() || part.contains('\0') || (i == 0 && part.trim().is_empty()) {
            out.push(Violation::element(
                "command",
                i,
                "an empty argument or one with a NUL byte; give the program and its arguments",
            ));
        }
    }
    if spec.interval_seconds > defaults::CHECKPOINT_INTERVAL_MAX_SECONDS {
        out.push(Violation::field(
            "interval_seconds",
            format!(
                "more than a week between checkpoints; use 0 (only on a notice) to {}",
                defaults::CHECKPOINT_INTERVAL_MAX_SECONDS
            ),
        ));
    }
    if spec.keep > defaults::CHECKPOINTS_KEPT_MAX {
        out.push(Violation::field(
            "keep",
            format!(
                "more than {} checkpoints; use 1 to {}",
                defaults::CHECKPOINTS_KEPT_MAX,
                defaults::CHECKPOINTS_KEPT_MAX
            ),
        ));
    }
    out
}

/// Rules for the `health_check` block (paths relative to the block).
pub fn health_check(check: &pb::HealthCheck) -> Vec<Violation> {
    let mut out = Vec::new();
    if !check.path.is_empty() && !check.path.starts_with('/') {
        out.push(Violation::field(
            "path",
            format!(
                "{:?} must start with \"/\", such as \"/health\"",
                check.path
            ),
        ));
    }
    if check.path.chars().any(|c| c.is_control() || c == ' ') {
        out.push(Violation::field(
            "path",
            "the path contains spaces or control characters; percent-encode them",
        ));
    }
    use computearbitrage_conventions::defaults;
    let interval = if check.interval_seconds == 0 {
        defaults::HEALTH_INTERVAL_SECONDS
    } else {
        check.interval_seconds
    };
    if check.interval_seconds > 86_400 {
        out.push(Violation::field(
            "interval_seconds",
            "more than a day between checks; use 1 to 86400",
        ));
    }
    // An unset timeout defaults to one that fits the interval, so only a written one
    // can be too long.
    if check.timeout_seconds > interval {
        out.push(Violation::field(
            "timeout_seconds",
            format!(
                "{} s is longer than the {} s interval; a check must end before the next starts",
                check.timeout_seconds, interval
            ),
        ));
    }
    if check.unhealthy_threshold > 100 {
        out.push(Violation::field(
            "unhealthy_threshold",
            "more than 100 failures; use 1 to 100",
        ));
    }
    out
}

/// Rules for the `storage` block (paths relative to the block).
pub fn storage(storage: &pb::StorageSpec) -> Vec<Violation> {
    let mut out = Vec::new();
    if storage.quota_gb > 1_000_000 {
        out.push(Violation::field(
            "quota_gb",
            "more than 1,000,000 GB; use a realistic quota",
        ));
    }
    if storage.retention_days > 3_650 {
        out.push(Violation::field(
            "retention_days",
            "more than ten years; use 0 to 3650 days",
        ));
    }
    out
}

/// Every rule of a workload spec, with paths as the API message nests them.
pub fn workload_spec(spec: &pb::WorkloadSpec) -> Vec<Violation> {
    let mut out = workload_fields(spec);
    match &spec.requirements {
        Some(r) => out.extend(
            requirements(r)
                .into_iter()
                .map(|v| v.within("requirements")),
        ),
        None => out.push(Violation::field(
            "requirements",
            "requirements are missing; send at least an empty message",
        )),
    }
    if let Some(check) = &spec.health_check {
        out.extend(
            health_check(check)
                .into_iter()
                .map(|v| v.within("health_check")),
        );
    }
    if let Some(s) = &spec.storage {
        out.extend(storage(s).into_iter().map(|v| v.within("storage")));
    }
    if let Some(r) = &spec.rebalance {
        out.extend(rebalance(r).into_iter().map(|v| v.within("rebalance")));
    }
    if let Some(c) = &spec.checkpoint {
        out.extend(checkpoint(c).into_iter().map(|v| v.within("checkpoint")));
        let storage_on = spec.storage.as_ref().is_some_and(|s| s.enabled);
        if c.interval_seconds > 0 && !storage_on {
            out.push(
                Violation::field(
                    "interval_seconds",
                    "periodic checkpoints need somewhere to go; add `storage { enabled = true }` or set 0",
                )
                .within("checkpoint"),
            );
        }
    }
    out
}

fn clouds(list: &[String], out: &mut Vec<Violation>) {
    for (i, name) in list.iter().enumerate() {
        if computearbitrage_conventions::cloud(name).is_some() {
            continue;
        }
        let suggestion = computearbitrage_conventions::nearest(name, crate::CLOUDS, 1)
            .first()
            .copied();
        let message = match suggestion {
            Some(s) if s == name.to_ascii_lowercase() => {
                format!("{name:?} must be written in lower case: did you mean {s:?}?")
            }
            Some(s) => format!("{name:?} is not a supported cloud: did you mean {s:?}? Supported: \"aws\", \"gcp\", \"azure\""),
            None => format!("{name:?} is not a supported cloud; use \"aws\", \"gcp\" or \"azure\""),
        };
        out.push(Violation::element("clouds", i, message));
    }
}

fn names(field: &'static str, list: &[String], example: &str, out: &mut Vec<Violation>) {
    for (i, name) in list.iter().enumerate() {
        if name.trim().is_empty() {
            out.push(Violation::element(
                field,
                i,
                format!(
                    "an empty string is not allowed here; write {example} or remove the element"
                ),
            ));
        } else if name.trim() != name {
            out.push(Violation::element(
                field,
                i,
                format!("{name:?} has leading or trailing spaces; remove them"),
            ));
        }
    }
}

fn non_negative(field: &'static str, value: Option<f64>, out: &mut Vec<Violation>) {
    if let Some(v) = value {
        if !v.is_finite() || v < 0.0 {
            out.push(Violation::field(
                field,
                format!("{v} is negative; use 0 or more, or leave it unset for no limit"),
            ));
        }
    }
}

fn gpu(name: &str, min_gpus: Option<i64>, out: &mut Vec<Violation>) {
    if !name.is_empty() && name.trim().is_empty() {
        out.push(Violation::field(
            "gpu_name",
            "a blank GPU name is not allowed; write a name such as \"A100\" or leave it unset",
        ));
    }
    if let Some(n) = min_gpus {
        if n < 0 {
            out.push(Violation::field(
                "min_gpus",
                format!("{n} is negative; use 0 or more, or leave it unset"),
            ));
        } else if n > i64::from(u16::MAX) {
            out.push(Violation::field(
                "min_gpus",
                format!("{n} GPUs is more than any instance has; use a realistic count such as 8"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_cloud_gets_a_suggestion_on_its_index() {
        let req = pb::Requirements {
            clouds: vec!["aws".into(), "awz".into()],
            ..Default::default()
        };
        let v = requirements(&req);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].dotted_path(), "clouds[1]");
        assert!(
            v[0].message.contains("did you mean \"aws\"?"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn upper_case_cloud_is_told_to_lower_case() {
        let req = pb::Requirements {
            clouds: vec!["GCP".into()],
            ..Default::default()
        };
        assert!(requirements(&req)[0].message.contains("lower case"));
    }

    #[test]
    fn negative_numbers_and_empty_regions_are_rejected() {
        let req = pb::FindPlacementRequest {
            requirements: Some(pb::Requirements {
                min_vcpus: Some(-1.0),
                regions: vec!["".into()],
                min_gpus: Some(-2),
                max_interruption_rate: Some(150.0),
                ..Default::default()
            }),
            alternatives: 51,
        };
        let paths: Vec<String> = find_placement(&req)
            .iter()
            .map(|v| v.dotted_path())
            .collect();
        assert_eq!(
            paths,
            vec![
                "requirements.min_vcpus",
                "requirements.min_gpus",
                "requirements.regions[0]",
                "requirements.max_interruption_rate",
                "alternatives"
            ]
        );
    }

    fn valid_spec() -> pb::WorkloadSpec {
        pb::WorkloadSpec {
            name: "web-api".into(),
            requirements: Some(pb::Requirements::default()),
            command: vec!["python3".into(), "server.py".into()],
            port: 8080,
            on_interruption: "migrate".into(),
            health_check: Some(pb::HealthCheck {
                path: "/health".into(),
                interval_seconds: 10,
                timeout_seconds: 2,
                unhealthy_threshold: 3,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn workload_specs_are_checked_field_by_field() {
        assert!(workload_spec(&valid_spec()).is_empty());
        let mut bad = valid_spec();
        bad.name = "Web_API".into();
        bad.command = vec![];
        bad.port = 0;
        bad.on_interruption = "pause".into();
        bad.on_unhealthy = "restart".into();
        bad.replace_unhealthy_after_seconds = 86_401;
        bad.fallback = "ondemand".into();
        bad.env.insert("PORT".into(), "1".into());
        bad.health_check = Some(pb::HealthCheck {
            path: "health".into(),
            interval_seconds: 5,
            timeout_seconds: 10,
            unhealthy_threshold: 3,
        });
        let paths: Vec<String> = workload_spec(&bad)
            .iter()
            .map(|v| v.dotted_path())
            .collect();
        assert_eq!(
            paths,
            vec![
                "name",
                "command",
                "port",
                "env",
                "on_interruption",
                "on_unhealthy",
                "replace_unhealthy_after_seconds",
                "fallback",
                "health_check.path",
                "health_check.timeout_seconds"
            ]
        );
        let messages: Vec<String> = workload_spec(&bad)
            .iter()
            .map(|v| v.message.clone())
            .collect();
        assert!(messages[4].contains("\"migrate\""), "{}", messages[4]);
        assert!(messages[5].contains("\"replace\""), "{}", messages[5]);
        assert!(messages[6].contains("default, 300"), "{}", messages[6]);
    }

    #[test]
    fn checkpoint_blocks_name_their_bad_fields_and_need_storage_for_periodic_copies() {
        let mut spec = valid_spec();
        spec.checkpoint = Some(pb::CheckpointSpec {
            signal: "SIGUSR1".into(),
            command: vec!["dump".into(), "--to".into(), "dir".into()],
            interval_seconds: 0,
            keep: 5,
        });
        assert!(workload_spec(&spec).is_empty());
        spec.checkpoint = Some(pb::CheckpointSpec {
            signal: "usr1".into(),
            command: vec!["dump".into(), String::new()],
            interval_seconds: 700_000,
            keep: 101,
        });
        let found = workload_spec(&spec);
        let paths: Vec<String> = found.iter().map(|v| v.dotted_path()).collect();
        assert_eq!(
            paths,
            vec![
                "checkpoint.signal",
                "checkpoint.command[1]",
                "checkpoint.interval_seconds",
                "checkpoint.keep",
                "checkpoint.interval_seconds"
            ]
        );
        assert!(
            found[0].message.contains("did you mean \"SIGUSR1\""),
            "{}",
            found[0].message
        );
        assert!(
            found[4].message.contains("storage { enabled = true }"),
            "{}",
            found[4].message
        );
        spec.checkpoint = Some(pb::CheckpointSpec {
            interval_seconds: 600,
            ..Default::default()
        });
        spec.storage = Some(pb::StorageSpec {
            enabled: true,
            quota_gb: 1,
            retention_days: 0,
        });
        assert!(workload_spec(&spec).is_empty());
        let update = pb::UpdateWorkloadRequest {
            id: "wl-1".into(),
            checkpoint: Some(pb::CheckpointSpec {
                signal: "SIGKILL".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let found = update_workload(&update);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].dotted_path(), "checkpoint.signal");
        assert!(
            found[0].message.contains("SIGTERM, SIGINT"),
            "{}",
            found[0].message
        );
    }

    #[test]
    fn an_update_gets_the_same_env_and_tag_rules_as_a_create() {
        let mut update = pb::UpdateWorkloadRequest {
            id: "wl-1".into(),
            ..Default::default()
        };
        assert!(update_workload(&update).is_empty());
        update.env.insert("PORT".into(), "1".into());
        update.env.insert("A=B".into(), "x".into());
        update.env.insert("NUL".into(), "a\0b".into());
        update
            .env
            .insert("BIG".into(), "x".repeat(MAX_ENV_VALUE_BYTES + 1));
        update
            .env
            .insert("COMPUTEARBITRAGE_INSTANCE_ID".into(), "spoof".into());
        update
            .tags
            .insert("computearbitrage-tenant".into(), "other".into());
        update
            .tags
            .insert("k".into(), "v".repeat(MAX_TAG_VALUE_CHARS + 1));
        update.on_interruption = "pause".into();
        let messages: Vec<String> = update_workload(&update)
            .iter()
            .map(|v| v.to_string())
            .collect();
        let all = messages.join("\n");
        for expected in [
            "\"A=B\" is not an environment variable name",
            "the value of BIG is",
            "\"COMPUTEARBITRAGE_INSTANCE_ID\": names starting with COMPUTEARBITRAGE_",
            "the value of NUL contains a NUL",
            "PORT is set by the driver",
            "\"computearbitrage-tenant\": tag keys starting with computearbitrage-",
            "the value of tag \"k\" is longer than 256",
            "on_interruption: \"pause\" is not a choice",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in\n{all}");
        }
        // The create path says the same words.
        let mut spec = valid_spec();
        spec.env = update.env.clone();
        spec.tags = update.tags.clone();
        let create: Vec<String> = workload_spec(&spec)
            .iter()
            .map(|v| v.message.clone())
            .collect();
        for v in update_workload(&update)
            .iter()
            .filter(|v| v.dotted_path() != "on_interruption")
        {
            assert!(create.contains(&v.message), "{}", v.message);
        }
    }

    #[test]
    fn an_unset_timeout_never_conflicts_with_a_short_interval() {
        let check = pb::HealthCheck {
            interval_seconds: 2,
            ..Default::default()
        };
        assert!(health_check(&check).is_empty());
        let written = pb::HealthCheck {
            interval_seconds: 2,
            timeout_seconds: 5,
            ..Default::default()
        };
        assert_eq!(health_check(&written)[0].dotted_path(), "timeout_seconds");
    }

    #[test]
    fn valid_requests_pass() {
        let req = pb::Requirements {
            min_vcpus: Some(4.0),
            min_memory_gib: Some(16.0),
            clouds: vec!["aws".into(), "gcp".into(), "azure".into()],
            regions: vec!["us-east-1".into()],
            architecture: "arm64".into(),
            max_interruption_rate: Some(10.0),
            ..Default::default()
        };
        assert!(requirements(&req).is_empty());
        assert!(list_offers(&pb::ListOffersRequest::default()).is_empty());
    }

    #[test]
    fn a_rebalance_block_is_bounded_and_names_its_fields() {
        let ok = pb::RebalanceSpec {
            min_savings_percent: 0.0,
            min_duration_seconds: Some(0),
        };
        assert!(
            rebalance(&ok).is_empty(),
            "0 % is the default, 0 s moves at once"
        );
        let bad = pb::RebalanceSpec {
            min_savings_percent: f64::NAN,
            min_duration_seconds: Some(604_801),
        };
        let v = rebalance(&bad);
        assert_eq!(
            v.iter().map(|v| v.path.clone()).collect::<Vec<_>>(),
            vec![
                vec![PathStep::Field("min_savings_percent")],
                vec![PathStep::Field("min_duration_seconds")]
            ]
        );
        assert!(
            v[1].message.contains("more than a week"),
            "{}",
            v[1].message
        );
        let mut spec = pb::WorkloadSpec {
            rebalance: Some(pb::RebalanceSpec {
                min_savings_percent: 96.0,
                ..Default::default()
            }),
            ..Default::default()
        };
        let within = workload_spec(&spec);
        assert!(
            within.iter().any(|v| v.path
                == vec![
                    PathStep::Field("rebalance"),
                    PathStep::Field("min_savings_percent")
                ]
                && v.message.contains("1 to 95")),
            "{within:?}"
        );
        spec.rebalance = None;
        assert!(!workload_spec(&spec)
            .iter()
            .any(|v| v.path.first() == Some(&PathStep::Field("rebalance"))));
    }
}
