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

    fn element(name: &'static str, index: usize, message: impl Into<String>) -> Self {
        Violation {
            path: vec![PathStep::Field(name), PathStep::Index(index)],
            message: message.into(),
        }
    }

    /// The path as `requirements.providers[1]`.
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
    providers(&filter.providers, &mut out);
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
        && !["x86_64", "amd64", "arm64", "aarch64"]
            .contains(&req.architecture.to_ascii_lowercase().as_str())
    {
        out.push(Violation::field(
            "architecture",
            format!(
                "{:?} is not an architecture; use \"x86_64\" or \"arm64\", or leave it unset for any",
                req.architecture
            ),
        ));
    }
    providers(&req.providers, &mut out);
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

/// Rules for a workload's name, command, port, env, tags, on_interruption and timeout
/// (the blocks have their own functions, so callers can place their paths).
pub fn workload_fields(spec: &pb::WorkloadSpec) -> Vec<Violation> {
    let mut out = Vec::new();
    let name = &spec.name;
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !name.ends_with('-');
    if !name_ok {
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
    for key in spec.env.keys() {
        let ok = !key.is_empty()
            && !key.contains('=')
            && !key.contains('\0')
            && !key.starts_with(|c: char| c.is_ascii_digit());
        if !ok {
            out.push(Violation::field(
                "env",
                format!("{key:?} is not an environment variable name; use letters, digits and underscores, not starting with a digit"),
            ));
        }
        if key == "PORT" {
            out.push(Violation::field(
                "env",
                "PORT is set by the driver to the port the workload must serve on; remove it from env and use `port`",
            ));
        }
        if key == "TCP_PORT" {
            out.push(Violation::field(
                "env",
                "TCP_PORT is set by the driver to the TCP port the workload must serve on; remove it from env and use `tcp_port`",
            ));
        }
    }
    for key in spec.tags.keys() {
        if key.trim().is_empty() {
            out.push(Violation::field(
                "tags",
                "a tag key is empty; give every tag a name",
            ));
        }
    }
    if !["", "migrate", "terminate"].contains(&spec.on_interruption.as_str()) {
        out.push(Violation::field(
            "on_interruption",
            format!(
                "{:?} is not a choice; use \"migrate\" (move the workload) or \"terminate\"",
                spec.on_interruption
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
    let interval = if check.interval_seconds == 0 {
        30
    } else {
        check.interval_seconds
    };
    if check.interval_seconds > 86_400 {
        out.push(Violation::field(
            "interval_seconds",
            "more than a day between checks; use 1 to 86400",
        ));
    }
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
    out
}

fn providers(list: &[String], out: &mut Vec<Violation>) {
    for (i, name) in list.iter().enumerate() {
        if crate::PROVIDERS.contains(&name.as_str()) {
            continue;
        }
        let message = match suggest_provider(name) {
            Some(s) if s == name.to_ascii_lowercase() => {
                format!("{name:?} must be written in lower case: did you mean {s:?}?")
            }
            Some(s) => format!("{name:?} is not a supported provider: did you mean {s:?}? Supported: \"aws\", \"gcp\", \"azure\""),
            None => format!("{name:?} is not a supported provider; use \"aws\", \"gcp\" or \"azure\""),
        };
        out.push(Violation::element("providers", i, message));
    }
}

fn suggest_provider(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    crate::PROVIDERS
        .iter()
        .map(|p| (edit_distance(&lower, p), *p))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, p)| p)
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

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspelt_provider_gets_a_suggestion_on_its_index() {
        let req = pb::Requirements {
            providers: vec!["aws".into(), "awz".into()],
            ..Default::default()
        };
        let v = requirements(&req);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].dotted_path(), "providers[1]");
        assert!(
            v[0].message.contains("did you mean \"aws\"?"),
            "{}",
            v[0].message
        );
    }

    #[test]
    fn upper_case_provider_is_told_to_lower_case() {
        let req = pb::Requirements {
            providers: vec!["GCP".into()],
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
                "health_check.path",
                "health_check.timeout_seconds"
            ]
        );
        let messages: Vec<String> = workload_spec(&bad)
            .iter()
            .map(|v| v.message.clone())
            .collect();
        assert!(messages[4].contains("\"migrate\""), "{}", messages[4]);
    }

    #[test]
    fn valid_requests_pass() {
        let req = pb::Requirements {
            min_vcpus: Some(4.0),
            min_memory_gib: Some(16.0),
            providers: vec!["aws".into(), "gcp".into(), "azure".into()],
            regions: vec!["us-east-1".into()],
            architecture: "arm64".into(),
            max_interruption_rate: Some(10.0),
            ..Default::default()
        };
        assert!(requirements(&req).is_empty());
        assert!(list_offers(&pb::ListOffersRequest::default()).is_empty());
    }
}
