//! Data source `computearbitrage_spot_prices`: current spot offers across clouds,
//! cheapest first.

use crate::client::{report_status, report_violations, report_warnings, SharedConnection};
use crate::number::Number;
use crate::requirements::{check_whole, strings, whole};
use crate::schema::{computed, deprecated, offer_object_type, optional, string_list};
use computearbitrage_api::{pb, validate, MAX_PAGE_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tf_provider::schema::{AttributeType, Block, Schema};
use tf_provider::value::{Value, ValueEmpty};
use tf_provider::{AttributePath, DataSource, Diagnostics};

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 10_000;

pub struct SpotPricesDataSource {
    connection: SharedConnection,
}

impl SpotPricesDataSource {
    pub fn new(connection: SharedConnection) -> Self {
        SpotPricesDataSource { connection }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SpotPricesState {
    pub clouds: Value<Vec<Value<String>>>,
    /// Deprecated: `clouds`.
    pub providers: Value<Vec<Value<String>>>,
    pub regions: Value<Vec<Value<String>>>,
    pub instance_types: Value<Vec<Value<String>>>,
    pub min_vcpus: Value<Number>,
    pub min_memory_gib: Value<Number>,
    pub gpu_name: Value<String>,
    pub min_gpus: Value<Number>,
    pub max_spot_price: Value<Number>,
    pub limit: Value<Number>,
    pub offers: Value<Vec<OfferObject>>,
}

/// One offer as Terraform sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferObject {
    pub cloud: Value<String>,
    /// Deprecated: `cloud`.
    pub provider: Value<String>,
    pub region: Value<String>,
    pub zone: Value<String>,
    pub instance_type: Value<String>,
    pub vcpus: Value<f64>,
    pub memory_gib: Value<f64>,
    pub gpu_name: Value<String>,
    pub gpu_count: Value<i64>,
    pub on_demand_price: Value<f64>,
    pub spot_price: Value<f64>,
    pub interruption_rate: Value<String>,
    pub interruption_rate_source: Value<String>,
    pub observed_at: Value<String>,
    pub source: Value<String>,
}

impl From<&pb::Offer> for OfferObject {
    fn from(o: &pb::Offer) -> Self {
        OfferObject {
            cloud: Value::Value(o.cloud.clone()),
            provider: Value::Value(o.cloud.clone()),
            region: Value::Value(o.region.clone()),
            zone: Value::Value(o.zone.clone()),
            instance_type: Value::Value(o.instance_type.clone()),
            vcpus: Value::Value(o.vcpus),
            memory_gib: Value::Value(o.memory_gib),
            gpu_name: Value::Value(o.gpu_name.clone()),
            gpu_count: Value::Value(i64::from(o.gpu_count)),
            on_demand_price: o.on_demand_price.into(),
            spot_price: Value::Value(o.spot_price),
            interruption_rate: Value::Value(o.interruption_rate.clone()),
            interruption_rate_source: Value::Value(o.interruption_rate_source.clone()),
            observed_at: Value::Value(o.observed_at.clone()),
            source: Value::Value(o.source.clone()),
        }
    }
}

impl SpotPricesState {
    fn filter(&self) -> pb::OfferFilter {
        let clouds = if strings(&self.clouds).is_empty() {
            strings(&self.providers)
        } else {
            strings(&self.clouds)
        };
        pb::OfferFilter {
            clouds,
            regions: strings(&self.regions),
            instance_types: strings(&self.instance_types),
            min_vcpus: self.min_vcpus.as_ref_option().map(Number::value),
            min_memory_gib: self.min_memory_gib.as_ref_option().map(Number::value),
            gpu_name: self.gpu_name.as_ref_option().cloned().unwrap_or_default(),
            min_gpus: self.min_gpus.as_ref_option().map(whole),
            max_spot_price: self.max_spot_price.as_ref_option().map(Number::value),
        }
    }

    /// Reports every invalid known value; returns whether there were none.
    fn check(&self, diags: &mut Diagnostics) -> bool {
        let clouds_written = if strings(&self.clouds).is_empty() {
            "providers"
        } else {
            "clouds"
        };
        let violations = crate::requirements::rename_clouds(
            validate::offer_filter(&self.filter()),
            clouds_written,
        );
        report_violations(diags, AttributePath::root(), &violations);
        let mut ok = violations.is_empty();
        ok &= crate::requirements::check_cloud_alias(
            diags,
            &self.clouds,
            &self.providers,
            AttributePath::root(),
            false,
        );
        ok &= check_whole(diags, &self.min_gpus, AttributePath::new("min_gpus"));
        ok &= check_whole(diags, &self.limit, AttributePath::new("limit"));
        if let Some(limit) = self.limit.as_ref_option().and_then(Number::as_integer) {
            if !(1..=MAX_LIMIT).contains(&limit) {
                diags.error(
                    "Invalid value for limit",
                    format!("{limit} is outside 1..={MAX_LIMIT}; ask for at most {MAX_LIMIT} offers, or leave it unset for {DEFAULT_LIMIT}"),
                    AttributePath::new("limit"),
                );
                ok = false;
            }
        }
        ok
    }
}

#[async_trait::async_trait]
impl DataSource for SpotPricesDataSource {
    type State<'a> = SpotPricesState;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let attributes = HashMap::from([
            ("clouds".to_string(), optional(string_list(), "Clouds to list: any of `aws`, `gcp`, `azure`. Unset for all.")),
            ("providers".to_string(), deprecated(optional(string_list(), "Deprecated: use `clouds`. The same list, kept for one release."))),
            ("regions".to_string(), optional(string_list(), "Regions to list, as each cloud writes them. Unset for all. A region no offer has gets a warning naming the closest known ones.")),
            ("instance_types".to_string(), optional(string_list(), "Instance types to list (`m5.xlarge`, `n2-standard-4`, `Standard_D4s_v5`). Unset for all. An instance type no offer has gets a warning naming the closest known ones.")),
            ("min_vcpus".to_string(), optional(AttributeType::Number, "Minimum vCPUs.")),
            ("min_memory_gib".to_string(), optional(AttributeType::Number, "Minimum memory in GiB.")),
            ("gpu_name".to_string(), optional(AttributeType::String, "GPU model, case-insensitive, canonical (`A100`) or the cloud's own name (`nvidia-tesla-a100`). Implies at least one GPU.")),
            ("min_gpus".to_string(), optional(AttributeType::Number, "Minimum number of GPUs.")),
            ("max_spot_price".to_string(), optional(AttributeType::Number, "Highest spot price in USD per hour.")),
            ("limit".to_string(), optional(AttributeType::Number, "Most offers to return, 1 to 10000. Default 100.")),
            ("offers".to_string(), computed(AttributeType::List(Box::new(offer_object_type())), "Matching offers sorted by `spot_price` ascending; ties are ordered by cloud, region, zone and instance type. Each has `cloud` (and the deprecated `provider`, the same value), `region`, `zone` (empty where prices are per region), `instance_type`, `vcpus`, `memory_gib`, `gpu_name` (canonical, empty without GPU), `gpu_count`, `on_demand_price` and `spot_price` (USD per hour; on-demand null when unknown), `interruption_rate` (`<5%`, `5-10%`, … or `unknown`) with `interruption_rate_source` (who published it, and when; empty when unknown), `observed_at` (RFC 3339) and `source` (the collector).")),
        ]);
        Some(Schema {
            version: 1,
            block: Block {
                attributes,
                description: "Current spot offers of AWS, GCP and Azure, cheapest first.".into(),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: SpotPricesState) -> Option<()> {
        config.check(diags);
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        mut config: SpotPricesState,
        _meta: ValueEmpty,
    ) -> Option<SpotPricesState> {
        // Validation already warned; only errors matter again here.
        let mut checked = Diagnostics::default();
        let ok = config.check(&mut checked);
        diags.errors.extend(checked.errors);
        if !ok {
            return None;
        }
        let connection = self.connection.get(diags).await?;
        let limit = config
            .limit
            .as_ref_option()
            .map(whole)
            .unwrap_or(DEFAULT_LIMIT) as usize;
        let filter = config.filter();
        let mut offers: Vec<OfferObject> = Vec::new();
        let mut page_token = String::new();
        loop {
            let want = (limit - offers.len()).min(MAX_PAGE_SIZE as usize) as u32;
            let request = pb::ListOffersRequest {
                filter: Some(filter.clone()),
                page_size: want,
                page_token: page_token.clone(),
            };
            let response = connection
                .retrying(crate::client::CALL_RETRY_BUDGET, || {
                    let mut client = connection.pricing();
                    let request = request.clone();
                    async move { client.list_offers(request).await }
                })
                .await;
            let page = match response {
                Ok(r) => r.into_inner(),
                Err(status) => {
                    report_status(
                        diags,
                        &connection,
                        "listing spot prices",
                        &status,
                        AttributePath::root(),
                    );
                    return None;
                }
            };
            let clouds_written = if strings(&config.clouds).is_empty() {
                "providers"
            } else {
                "clouds"
            };
            report_warnings(
                diags,
                &page.warnings,
                AttributePath::root(),
                "filter",
                |field| {
                    if field.starts_with("clouds") {
                        field.replacen("clouds", clouds_written, 1)
                    } else {
                        field.to_string()
                    }
                },
            );
            offers.extend(page.offers.iter().map(OfferObject::from));
            if page.next_page_token.is_empty() || offers.len() >= limit {
                break;
            }
            page_token = page.next_page_token;
        }
        offers.truncate(limit);
        config.offers = Value::Value(offers);
        Some(config)
    }
}
