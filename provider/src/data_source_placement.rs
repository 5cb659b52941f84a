//! Data source `computearbitrage_placement`: where a workload with given requirements
//! would run now, and the runners-up.

use crate::client::{report_status, report_warnings, SharedConnection};
use crate::number::Number;
use crate::requirements::{self, check_whole, whole, RequirementsBlock};
use crate::schema::{computed, optional};
use computearbitrage_api::{pb, MAX_ALTERNATIVES};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tf_provider::schema::{AttributeType, Block, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, DataSource, Diagnostics};

pub const DEFAULT_ALTERNATIVES: i64 = 5;

pub struct PlacementDataSource {
    connection: SharedConnection,
}

impl PlacementDataSource {
    pub fn new(connection: SharedConnection) -> Self {
        PlacementDataSource { connection }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PlacementState {
    pub requirements: Value<RequirementsBlock>,
    pub max_alternatives: Value<Number>,
    pub cloud: Value<String>,
    /// Deprecated: `cloud`.
    pub provider: Value<String>,
    pub region: Value<String>,
    pub zone: Value<String>,
    pub instance_type: Value<String>,
    pub spot_price: Value<f64>,
    pub on_demand_price: Value<f64>,
    pub savings_percent: Value<f64>,
    pub reason: Value<String>,
    pub alternatives: Value<Vec<CandidateObject>>,
}

/// One ranked offer, as the top-level result and in `alternatives`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateObject {
    pub cloud: Value<String>,
    /// Deprecated: `cloud`.
    pub provider: Value<String>,
    pub region: Value<String>,
    pub zone: Value<String>,
    pub instance_type: Value<String>,
    pub spot_price: Value<f64>,
    pub on_demand_price: Value<f64>,
    pub savings_percent: Value<f64>,
    pub reason: Value<String>,
}

impl From<&pb::PlacementCandidate> for CandidateObject {
    fn from(c: &pb::PlacementCandidate) -> Self {
        let offer = c.offer.clone().unwrap_or_default();
        CandidateObject {
            provider: Value::Value(offer.cloud.clone()),
            cloud: Value::Value(offer.cloud),
            region: Value::Value(offer.region),
            zone: Value::Value(offer.zone),
            instance_type: Value::Value(offer.instance_type),
            spot_price: Value::Value(offer.spot_price),
            on_demand_price: offer.on_demand_price.into(),
            savings_percent: c.savings_percent.into(),
            reason: Value::Value(c.reason.clone()),
        }
    }
}

/// Names and descriptions of a candidate's fields, shared by the top level and the list.
const CANDIDATE_FIELDS: [(&str, &str, bool); 9] = [
    (
        "cloud",
        "Cloud of the chosen offer: `aws`, `gcp` or `azure`.",
        false,
    ),
    (
        "provider",
        "Deprecated: use `cloud`. The same value, kept for one release.",
        false,
    ),
    ("region", "Region of the chosen offer.", false),
    (
        "zone",
        "Availability zone, empty where the cloud prices per region.",
        false,
    ),
    ("instance_type", "Instance type of the chosen offer.", false),
    ("spot_price", "Spot price in USD per hour.", true),
    (
        "on_demand_price",
        "On-demand price in USD per hour; null when unknown.",
        true,
    ),
    (
        "savings_percent",
        "Percent saved against on-demand; null when on-demand is unknown.",
        true,
    ),
    (
        "reason",
        "Why this offer ranks where it does (effective price, interruption rate, preference).",
        false,
    ),
];

fn candidate_type() -> AttributeType {
    AttributeType::Object(
        CANDIDATE_FIELDS
            .iter()
            .map(|(name, _, number)| {
                let t = if *number {
                    AttributeType::Number
                } else {
                    AttributeType::String
                };
                (name.to_string(), t)
            })
            .collect(),
    )
}

impl PlacementState {
    fn request(&self) -> pb::FindPlacementRequest {
        pb::FindPlacementRequest {
            requirements: Some(
                self.requirements
                    .as_ref_option()
                    .map(RequirementsBlock::to_pb)
                    .unwrap_or_default(),
            ),
            alternatives: self
                .max_alternatives
                .as_ref_option()
                .map(whole)
                .unwrap_or(DEFAULT_ALTERNATIVES)
                .clamp(0, i64::from(u32::MAX)) as u32,
        }
    }

    fn check(&self, diags: &mut Diagnostics) -> bool {
        let mut ok = true;
        if let Some(block) = self.requirements.as_ref_option() {
            ok &= block.check(diags, AttributePath::new(requirements::BLOCK_NAME), false);
        }
        ok &= check_whole(
            diags,
            &self.max_alternatives,
            AttributePath::new("max_alternatives"),
        );
        if let Some(n) = self
            .max_alternatives
            .as_ref_option()
            .and_then(Number::as_integer)
        {
            if !(0..=i64::from(MAX_ALTERNATIVES)).contains(&n) {
                diags.error(
                    "Invalid value for max_alternatives",
                    format!("{n} is outside 0..={MAX_ALTERNATIVES}; ask for at most {MAX_ALTERNATIVES} alternatives, or leave it unset for {DEFAULT_ALTERNATIVES}"),
                    AttributePath::new("max_alternatives"),
                );
                ok = false;
            }
        }
        ok
    }
}

#[async_trait::async_trait]
impl DataSource for PlacementDataSource {
    type State<'a> = PlacementState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let mut attributes: HashMap<String, tf_provider::schema::Attribute> = CANDIDATE_FIELDS
            .iter()
            .map(|(name, description, number)| {
                let t = if *number {
                    AttributeType::Number
                } else {
                    AttributeType::String
                };
                let mut attribute = computed(t, description);
                attribute.deprecated = *name == "provider";
                (name.to_string(), attribute)
            })
            .collect();
        attributes.insert(
            "max_alternatives".into(),
            optional(
                AttributeType::Number,
                "How many ranked alternatives to return besides the best, 0 to 50. Default 5.",
            ),
        );
        attributes.insert(
            "alternatives".into(),
            computed(
                AttributeType::List(Box::new(candidate_type())),
                "Runners-up, best first, each with the same fields as the top-level result.",
            ),
        );
        Some(Schema {
            version: 1,
            block: Block {
                attributes,
                blocks: HashMap::from([(requirements::BLOCK_NAME.to_string(), requirements::block())]),
                description: "The best spot offer across clouds for a set of requirements, with ranked alternatives. Fails with an explanation when nothing matches.".into(),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: PlacementState) -> Option<()> {
        config.check(diags);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        mut config: PlacementState,
        _meta: ValueEmpty,
    ) -> Option<PlacementState> {
        // Validation already warned; only errors matter again here.
        let mut checked = Diagnostics::default();
        let ok = config.check(&mut checked);
        diags.errors.extend(checked.errors);
        if !ok {
            return None;
        }
        let connection = self.connection.get(diags).await?;
        let request = config.request();
        let response = connection
            .retrying(crate::client::CALL_RETRY_BUDGET, || {
                let mut client = connection.pricing();
                let request = request.clone();
                async move { client.find_placement(request).await }
            })
            .await;
        let placement = match response {
            Ok(r) => r.into_inner(),
            Err(status) => {
                report_status(
                    diags,
                    &connection,
                    "finding a placement",
                    &status,
                    AttributePath::new(requirements::BLOCK_NAME),
                );
                return None;
            }
        };
        report_warnings(
            diags,
            &placement.warnings,
            AttributePath::new(requirements::BLOCK_NAME),
            "requirements",
            |f| f.to_string(),
        );
        let best = CandidateObject::from(&placement.best.unwrap_or_default());
        config.cloud = best.cloud;
        config.provider = best.provider;
        config.region = best.region;
        config.zone = best.zone;
        config.instance_type = best.instance_type;
        config.spot_price = best.spot_price;
        config.on_demand_price = best.on_demand_price;
        config.savings_percent = best.savings_percent;
        config.reason = best.reason;
        config.alternatives = Value::Value(
            placement
                .alternatives
                .iter()
                .map(CandidateObject::from)
                .collect(),
        );
        Some(config)
    }
}
