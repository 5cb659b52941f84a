//! The `requirements` block: what a workload needs. Shared by the placement data
//! source and the workload resource so both accept exactly the same constraints.

use crate::number::Number;
use crate::schema::{optional, string_list};
use computearbitrage_api::pb;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tf_provider::schema::{AttributeType, Block, NestedBlock};
use tf_provider::value::Value;

pub const BLOCK_NAME: &str = "requirements";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RequirementsBlock {
    pub min_vcpus: Value<Number>,
    pub min_memory_gib: Value<Number>,
    pub gpu_name: Value<String>,
    pub min_gpus: Value<Number>,
    pub architecture: Value<String>,
    pub providers: Value<Vec<Value<String>>>,
    pub regions: Value<Vec<Value<String>>>,
    pub exclude_regions: Value<Vec<Value<String>>>,
    pub preferred_regions: Value<Vec<Value<String>>>,
    pub max_interruption_rate: Value<Number>,
    pub allow_unknown_interruption_rate: Value<bool>,
    pub max_price_per_hour: Value<Number>,
}

pub fn block() -> NestedBlock {
    let attributes = HashMap::from([
        ("min_vcpus".to_string(), optional(AttributeType::Number, "Minimum vCPUs. Unset for any.")),
        ("min_memory_gib".to_string(), optional(AttributeType::Number, "Minimum memory in GiB. Unset for any.")),
        ("gpu_name".to_string(), optional(AttributeType::String, "GPU model, case-insensitive: a canonical name (`A100`, `A100-80GB`, `H100`, `H200`, `L4`, `T4`, `V100`, `A10G`, `A10`, `K80`, `M60`) or a cloud's own (`nvidia-tesla-a100`). Implies at least one GPU.")),
        ("min_gpus".to_string(), optional(AttributeType::Number, "Minimum number of GPUs. With `gpu_name`, of that model.")),
        ("architecture".to_string(), optional(AttributeType::String, "CPU architecture: `x86_64` or `arm64`. Unset for any.")),
        ("providers".to_string(), optional(string_list(), "Clouds to consider: any of `aws`, `gcp`, `azure`. Unset or empty for all.")),
        ("regions".to_string(), optional(string_list(), "Regions to consider, as each cloud writes them (`us-east-1`, `eastus`, `us-central1`). Unset for all.")),
        ("exclude_regions".to_string(), optional(string_list(), "Regions never to use.")),
        ("preferred_regions".to_string(), optional(string_list(), "Regions that win unless another offer is more than the preference bonus (10 % by default) cheaper.")),
        ("max_interruption_rate".to_string(), optional(AttributeType::Number, "Highest acceptable interruption rate in percent (0–100). An offer passes when the top of its published range is at or below it.")),
        ("allow_unknown_interruption_rate".to_string(), optional(AttributeType::Bool, "Whether offers whose cloud publishes no interruption rate pass `max_interruption_rate`. Default `true`; the bundled snapshot has no rates.")),
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

impl RequirementsBlock {
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
            providers: strings(&self.providers),
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
}
