//! The `requirements` block: what a workload needs. Shared by the placement data
//! source and the workload resource so both accept exactly the same constraints.
//!
//! Attributes with a canonical "unset" value (the lists, `allow_unknown_interruption_rate`)
//! are Optional+Computed: the workload plans that value when they are left out, so a
//! state read back from the service (which always has it) plans clean whichever way
//! the user wrote it. `providers` is the deprecated spelling of `clouds`.

use crate::canonical::{self, StringList};
use crate::number::Number;
use crate::schema::{optional, optional_computed, string_list};
use computearbitrage_api::pb;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tf_provider::schema::{AttributeType, Block, NestedBlock};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics};

pub const BLOCK_NAME: &str = "requirements";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequirementsBlock {
    pub min_vcpus: Value<Number>,
    pub min_memory_gib: Value<Number>,
    pub gpu_name: Value<String>,
    pub min_gpus: Value<Number>,
    pub architecture: Value<String>,
    pub clouds: StringList,
    /// Deprecated: `clouds`.
    pub providers: StringList,
    pub regions: StringList,
    pub exclude_regions: StringList,
    pub preferred_regions: StringList,
    pub max_interruption_rate: Value<Number>,
    pub allow_unknown_interruption_rate: Value<bool>,
    pub max_price_per_hour: Value<Number>,
}

pub fn block() -> NestedBlock {
    let mut providers = optional_computed(
        string_list(),
        "Deprecated: use `clouds`. The same list, kept for one release.",
    );
    providers.deprecated = true;
    let attributes = HashMap::from([
        ("min_vcpus".to_string(), optional(AttributeType::Number, "Minimum vCPUs. Unset for any.")),
        ("min_memory_gib".to_string(), optional(AttributeType::Number, "Minimum memory in GiB. Unset for any.")),
        ("gpu_name".to_string(), optional(AttributeType::String, "GPU model, case-insensitive: a canonical name (`A100`, `A100-80GB`, `H100`, `H200`, `L4`, `T4`, `V100`, `A10G`, `A10`, `K80`, `M60`) or a cloud's own (`nvidia-tesla-a100`). Implies at least one GPU. The service stores the canonical name; either spelling plans clean.")),
        ("min_gpus".to_string(), optional(AttributeType::Number, "Minimum number of GPUs. With `gpu_name`, of that model.")),
        ("architecture".to_string(), optional(AttributeType::String, "CPU architecture: `x86_64` (also written `amd64`) or `arm64` (also `aarch64`). Unset for any.")),
        ("clouds".to_string(), optional_computed(string_list(), "Clouds to consider: any of `aws`, `gcp`, `azure`. Unset or empty for all.")),
        ("providers".to_string(), providers),
        ("regions".to_string(), optional_computed(string_list(), "Regions to consider, as each cloud writes them (`us-east-1`, `eastus`, `us-central1`). Unset for all. A region no offer has gets a warning naming the closest known ones.")),
        ("exclude_regions".to_string(), optional_computed(string_list(), "Regions never to use.")),
        ("preferred_regions".to_string(), optional_computed(string_list(), "Regions that win unless another offer is more than the preference bonus (10 % by default) cheaper.")),
        ("max_interruption_rate".to_string(), optional(AttributeType::Number, "Highest acceptable interruption rate in percent (0–100). An offer passes when the top of its published range is at or below it; offers without a published rate do not pass unless `allow_unknown_interruption_rate` is true. AWS publishes rates (the Spot Instance Advisor); the bundled GCP and Azure prices have none.")),
        ("allow_unknown_interruption_rate".to_string(), optional_computed(AttributeType::Bool, "Whether offers without a published interruption rate pass `max_interruption_rate`. Default `false`. When true and such an offer is chosen, the plan warns that its rate is unknown.")),
        ("max_price_per_hour".to_string(), optional(AttributeType::Number, "Highest acceptable spot price in USD per hour.")),
    ]);
    NestedBlock::Single(Block {
        attributes,
        description: "What the workload needs. Every constraint is optional; unset means any."
            .into(),
        ..Default::default()
    })
}

/// The known elements of a list of strings.
pub fn strings(list: &Value<Vec<Value<String>>>) -> Vec<String> {
    list.as_ref_option()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_ref_option().cloned())
                .collect()
        })
        .unwrap_or_default()
}

/// A count for the wire: fractional values round toward zero after [`check_whole`]
/// has reported them.
pub fn whole(n: &Number) -> i64 {
    n.as_integer().unwrap_or(n.value() as i64)
}

/// Reports a fractional value where a count is expected.
pub fn check_whole(
    diags: &mut tf_provider::Diagnostics,
    value: &Value<Number>,
    path: tf_provider::AttributePath,
) -> bool {
    match value {
        Value::Value(n) if n.as_integer().is_none() => {
            diags.error(
                format!("Invalid value for {path}"),
                format!(
                    "{} is not a whole number; write a count such as 2",
                    n.value()
                ),
                path,
            );
            false
        }
        _ => true,
    }
}

/// Reports `clouds` and `providers` set to different lists, and warns about the
/// deprecated `providers`, under the attribute path `root`.
pub fn check_cloud_alias(
    diags: &mut Diagnostics,
    clouds: &StringList,
    providers: &StringList,
    root: AttributePath,
    mirrored: bool,
) -> bool {
    if providers.is_null() || providers.is_unknown() {
        return true;
    }
    // In a state both hold the same list; only a configuration that sets `providers`
    // itself is warned about.
    if !mirrored {
        diags.warning(
            "Argument is deprecated: providers",
            "`providers` is now `clouds` (the same list); write `clouds`. `providers` will be removed in the next release.",
            root.clone().attribute("providers"),
        );
    }
    if clouds.is_value() && canonical::list(clouds) != canonical::list(providers) {
        diags.error(
            "Conflicting values for clouds and providers",
            "`providers` is the deprecated name of `clouds`; set only `clouds`.",
            root.attribute("providers"),
        );
        return false;
    }
    true
}

/// `violations` with the wire field `clouds` renamed to the attribute the user wrote.
pub fn rename_clouds(
    mut violations: Vec<computearbitrage_api::validate::Violation>,
    written: &'static str,
) -> Vec<computearbitrage_api::validate::Violation> {
    use computearbitrage_api::validate::PathStep;
    for v in &mut violations {
        if v.path.first() == Some(&PathStep::Field("clouds")) {
            v.path[0] = PathStep::Field(written);
        }
    }
    violations
}

impl RequirementsBlock {
    /// Reports every invalid known value on its path under `root`; `mirrored` is true
    /// for a planned state, where `providers` mirrors `clouds`.
    pub fn check(&self, diags: &mut Diagnostics, root: AttributePath, mirrored: bool) -> bool {
        let mut ok =
            check_cloud_alias(diags, &self.clouds, &self.providers, root.clone(), mirrored);
        let written = if strings(&self.clouds).is_empty() && !strings(&self.providers).is_empty() {
            "providers"
        } else {
            "clouds"
        };
        let violations = rename_clouds(
            computearbitrage_api::validate::requirements(&self.to_pb()),
            written,
        );
        crate::client::report_violations(diags, root.clone(), &violations);
        ok &= violations.is_empty();
        ok &= check_whole(diags, &self.min_gpus, root.attribute("min_gpus"));
        ok
    }

    /// The clouds asked for, by either name.
    pub fn cloud_names(&self) -> Vec<String> {
        if self.clouds.is_value() && !strings(&self.clouds).is_empty() {
            strings(&self.clouds)
        } else {
            strings(&self.providers)
        }
    }

    /// The wire message. Null and unknown values are absent.
    pub fn to_pb(&self) -> pb::Requirements {
        pb::Requirements {
            min_vcpus: self.min_vcpus.as_ref_option().map(Number::value),
            min_memory_gib: self.min_memory_gib.as_ref_option().map(Number::value),
            gpu_name: self.gpu_name.as_ref_option().cloned().unwrap_or_default(),
            min_gpus: self.min_gpus.as_ref_option().map(whole),
            architecture: self
                .architecture
                .as_ref_option()
                .cloned()
                .unwrap_or_default(),
            clouds: self.cloud_names(),
            regions: strings(&self.regions),
            exclude_regions: strings(&self.exclude_regions),
            preferred_regions: strings(&self.preferred_regions),
            max_interruption_rate: self
                .max_interruption_rate
                .as_ref_option()
                .map(Number::value),
            allow_unknown_interruption_rate: self
                .allow_unknown_interruption_rate
                .as_ref_option()
                .copied(),
            max_price_per_hour: self.max_price_per_hour.as_ref_option().map(Number::value),
        }
    }

    /// The block as the service stores it (canonical spellings, every list and flag
    /// explicit), for import.
    pub fn from_pb(r: &pb::Requirements) -> RequirementsBlock {
        let number = |v: Option<f64>| v.map(Number::from).into();
        let text = |s: &str| -> Value<String> {
            if s.is_empty() {
                Value::Null
            } else {
                Value::Value(s.to_string())
            }
        };
        let clouds = canonical::list_value(&r.clouds);
        RequirementsBlock {
            min_vcpus: number(r.min_vcpus),
            min_memory_gib: number(r.min_memory_gib),
            gpu_name: text(&r.gpu_name),
            min_gpus: r.min_gpus.map(Number::from).into(),
            architecture: text(&r.architecture),
            providers: clouds.clone(),
            clouds,
            regions: canonical::list_value(&r.regions),
            exclude_regions: canonical::list_value(&r.exclude_regions),
            preferred_regions: canonical::list_value(&r.preferred_regions),
            max_interruption_rate: number(r.max_interruption_rate),
            allow_unknown_interruption_rate: Value::Value(
                r.allow_unknown_interruption_rate.unwrap_or(false),
            ),
            max_price_per_hour: number(r.max_price_per_hour),
        }
    }

    /// Whether two blocks ask for the same thing (canonical spellings compared).
    pub fn same_as(&self, other: &RequirementsBlock) -> bool {
        canonical::requirements(&self.to_pb()) == canonical::requirements(&other.to_pb())
    }

    /// The block to plan: `config`'s values, in `prior`'s spelling wherever they mean
    /// the same, with the canonical values of unset Optional+Computed attributes.
    pub fn planned(
        config: &RequirementsBlock,
        prior: Option<&RequirementsBlock>,
    ) -> RequirementsBlock {
        use canonical::planned;
        let none = RequirementsBlock::default();
        let prior = prior.unwrap_or(&none);
        let empty = || Some(Value::Value(Vec::new()));
        let clouds_config = if config.clouds.is_null() {
            config.providers.clone()
        } else {
            config.clouds.clone()
        };
        let clouds = planned(&clouds_config, &prior.clouds, empty(), canonical::list);
        RequirementsBlock {
            min_vcpus: planned(&config.min_vcpus, &prior.min_vcpus, None, canonical::number),
            min_memory_gib: planned(
                &config.min_memory_gib,
                &prior.min_memory_gib,
                None,
                canonical::number,
            ),
            gpu_name: planned(&config.gpu_name, &prior.gpu_name, None, canonical::gpu),
            min_gpus: planned(&config.min_gpus, &prior.min_gpus, None, canonical::number),
            architecture: planned(
                &config.architecture,
                &prior.architecture,
                None,
                canonical::architecture,
            ),
            // The deprecated name mirrors `clouds` unless it is what the user wrote.
            providers: if config.providers.is_null() {
                planned(
                    &Value::Null,
                    &prior.providers,
                    Some(clouds.clone()),
                    canonical::list,
                )
            } else {
                planned(&config.providers, &prior.providers, None, canonical::list)
            },
            clouds,
            regions: planned(&config.regions, &prior.regions, empty(), canonical::list),
            exclude_regions: planned(
                &config.exclude_regions,
                &prior.exclude_regions,
                empty(),
                canonical::list,
            ),
            preferred_regions: planned(
                &config.preferred_regions,
                &prior.preferred_regions,
                empty(),
                canonical::list,
            ),
            max_interruption_rate: planned(
                &config.max_interruption_rate,
                &prior.max_interruption_rate,
                None,
                canonical::number,
            ),
            allow_unknown_interruption_rate: planned(
                &config.allow_unknown_interruption_rate,
                &prior.allow_unknown_interruption_rate,
                Some(Value::Value(false)),
                canonical::flag,
            ),
            max_price_per_hour: planned(
                &config.max_price_per_hour,
                &prior.max_price_per_hour,
                None,
                canonical::number,
            ),
        }
    }

    /// The block after a refresh: the service's values, in `prior`'s spelling wherever
    /// they mean the same, so only a real change is a diff.
    pub fn refreshed(prior: &RequirementsBlock, actual: &RequirementsBlock) -> RequirementsBlock {
        use canonical::refreshed;
        RequirementsBlock {
            min_vcpus: refreshed(&prior.min_vcpus, &actual.min_vcpus, canonical::number),
            min_memory_gib: refreshed(
                &prior.min_memory_gib,
                &actual.min_memory_gib,
                canonical::number,
            ),
            gpu_name: refreshed(&prior.gpu_name, &actual.gpu_name, canonical::gpu),
            min_gpus: refreshed(&prior.min_gpus, &actual.min_gpus, canonical::number),
            architecture: refreshed(
                &prior.architecture,
                &actual.architecture,
                canonical::architecture,
            ),
            clouds: refreshed(&prior.clouds, &actual.clouds, canonical::list),
            providers: refreshed(&prior.providers, &actual.providers, canonical::list),
            regions: refreshed(&prior.regions, &actual.regions, canonical::list),
            exclude_regions: refreshed(
                &prior.exclude_regions,
                &actual.exclude_regions,
                canonical::list,
            ),
            preferred_regions: refreshed(
                &prior.preferred_regions,
                &actual.preferred_regions,
                canonical::list,
            ),
            max_interruption_rate: refreshed(
                &prior.max_interruption_rate,
                &actual.max_interruption_rate,
                canonical::number,
            ),
            allow_unknown_interruption_rate: refreshed(
                &prior.allow_unknown_interruption_rate,
                &actual.allow_unknown_interruption_rate,
                canonical::flag,
            ),
            max_price_per_hour: refreshed(
                &prior.max_price_per_hour,
                &actual.max_price_per_hour,
                canonical::number,
            ),
        }
    }
}
