//! The provider block: where the service is and how to authenticate.

use crate::client::{Connection, SharedConnection, DEFAULT_ENDPOINT};
use crate::data_source_placement::PlacementDataSource;
use crate::data_source_spot_prices::SpotPricesDataSource;
use crate::resource_workload::WorkloadResource;
use crate::schema::optional;
use computearbitrage_api::connect::Target;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tf_provider::schema::{AttributeType, Block, Schema};
use tf_provider::value::Value;
use tf_provider::{AttributePath, Diagnostics, DynamicDataSource, DynamicResource, Provider};

#[derive(Default)]
pub struct ComputeArbitrageProvider {
    connection: SharedConnection,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ProviderConfig {
    pub endpoint: Value<String>,
    pub token: Value<String>,
    pub ca_file: Value<String>,
}

impl ProviderConfig {
    fn target(&self) -> Target {
        let url = setting(&self.endpoint, "COMPUTEARBITRAGE_ENDPOINT")
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Target {
            url,
            ca_file: setting(&self.ca_file, "COMPUTEARBITRAGE_CA_FILE").map(Into::into),
        }
    }
}

/// The configured value, else the environment variable, else `None`.
fn setting(value: &Value<String>, env: &str) -> Option<String> {
    match value {
        Value::Value(v) if !v.is_empty() => Some(v.clone()),
        _ => std::env::var(env).ok().filter(|v| !v.is_empty()),
    }
}

#[async_trait::async_trait]
impl Provider for ComputeArbitrageProvider {
    type Config<'a> = ProviderConfig;
    type MetaState<'a> = tf_provider::value::ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let mut token = optional(
            AttributeType::String,
            "API token of the service (tenant `default` unless issued otherwise). Falls back to `COMPUTEARBITRAGE_TOKEN`. At first start the service prints one and saves it in `<data_dir>/admin-token`.",
        );
        token.sensitive = true;
        Some(Schema {
            version: 1,
            block: Block {
                description: "Cross-cloud spot prices, placement and workloads, served by a computearbitrage service.".into(),
                attributes: HashMap::from([
                    (
                        "endpoint".to_string(),
                        optional(
                            AttributeType::String,
                            "URL of the computearbitrage service's gRPC API: `http://HOST:PORT`, or `https://HOST:PORT` when the service serves TLS (verified against the system's CA roots and `ca_file`). Falls back to `COMPUTEARBITRAGE_ENDPOINT`, then to `http://127.0.0.1:7070`.",
                        ),
                    ),
                    ("token".to_string(), token),
                    (
                        "ca_file".to_string(),
                        optional(
                            AttributeType::String,
                            "A PEM file of CA certificates to trust, besides the system's, for an `https://` endpoint, such as the CA of a private certificate. Falls back to `COMPUTEARBITRAGE_CA_FILE`.",
                        ),
                    ),
                ]),
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: ProviderConfig) -> Option<()> {
        if config.endpoint.is_unknown() || config.ca_file.is_unknown() {
            return Some(());
        }
        if let Err(message) = Connection::new(config.target(), "x") {
            let attribute = if message.contains("CA file") {
                "ca_file"
            } else {
                "endpoint"
            };
            diags.error(
                format!("Invalid provider {attribute}"),
                message,
                AttributePath::new(attribute),
            );
        }
        Some(())
    }

    async fn configure<'a>(
        &self,
        diags: &mut Diagnostics,
        _terraform_version: String,
        config: ProviderConfig,
    ) -> Option<()> {
        let target = config.target();
        let endpoint = target.url.clone();
        let Some(token) = setting(&config.token, "COMPUTEARBITRAGE_TOKEN") else {
            diags.error(
                "No API token for the computearbitrage service",
                format!(
                    "Set `token` in the provider block or the environment variable COMPUTEARBITRAGE_TOKEN. The service at {endpoint} printed a token at its first start and saved it in <data_dir>/admin-token; or start it with COMPUTEARBITRAGE_BOOTSTRAP_TOKEN=<secret>."
                ),
                AttributePath::new("token"),
            );
            return None;
        };
        match Connection::new(target, &token) {
            Ok(connection) => {
                self.connection.set(connection).await;
                Some(())
            }
            Err(message) => {
                let attribute = if message.contains("CA file") {
                    "ca_file"
                } else {
                    "endpoint"
                };
                diags.error(
                    format!("Invalid provider {attribute}"),
                    message,
                    AttributePath::new(attribute),
                );
                None
            }
        }
    }

    fn get_resources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        Some(HashMap::from([(
            "workload".to_string(),
            Box::new(WorkloadResource::new(self.connection.clone())) as Box<dyn DynamicResource>,
        )]))
    }

    fn get_data_sources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        Some(HashMap::from([
            (
                "spot_prices".to_string(),
                Box::new(SpotPricesDataSource::new(self.connection.clone()))
                    as Box<dyn DynamicDataSource>,
            ),
            (
                "placement".to_string(),
                Box::new(PlacementDataSource::new(self.connection.clone()))
                    as Box<dyn DynamicDataSource>,
            ),
        ]))
    }
}
