//! The price snapshot collector: CSV files in the public catalog layout shared by the
//! three clouds, plus a `manifest.toml` naming each file's cloud and observation date,
//! and the interruption-rate feeds to join onto a cloud's offers by region and
//! instance type (with their source and date). The snapshot compiled into the binary
//! is the embedded default; a directory in the same layout can replace it and is
//! re-read on every run.

use computearbitrage_core::fmt::parse_rfc3339;
use computearbitrage_core::gpu::canonical_name;
use computearbitrage_core::offer::Gpu;
use computearbitrage_core::{Architecture, Cloud, Error, InterruptionRate, Offer, PriceCollector};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The `source` of every snapshot offer.
pub const SOURCE: &str = "snapshot";

const BUNDLED_MANIFEST: &str = include_str!("../../data/prices/manifest.toml");
const BUNDLED_FILES: &[(&str, &str)] = &[
    (
        "aws_vms_sample.csv",
        include_str!("../../data/prices/aws_vms_sample.csv"),
    ),
    (
        "azure_vms_sample.csv",
        include_str!("../../data/prices/azure_vms_sample.csv"),
    ),
    (
        "gcp_vms_sample.csv",
        include_str!("../../data/prices/gcp_vms_sample.csv"),
    ),
    (
        "aws-spot-advisor-data.json",
        include_str!("../../data/prices/aws-spot-advisor-data.json"),
    ),
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    files: Vec<ManifestFile>,
    #[serde(default)]
    interruption: Vec<ManifestRates>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    file: String,
    #[serde(alias = "provider")]
    cloud: String,
    observed_at: String,
}

/// An interruption-rate feed and the offers it applies to.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestRates {
    file: String,
    /// The feed's format; only `aws-spot-advisor` exists.
    format: String,
    cloud: String,
    /// Who publishes the rates, shown with each rate.
    source: String,
    /// When the feed was last changed (RFC 3339 date or time).
    observed_at: String,
}

/// Where the snapshot comes from.
#[derive(Debug, Clone)]
pub enum SnapshotSource {
    Bundled,
    Directory(PathBuf),
}

pub struct SnapshotCollector {
    source: SnapshotSource,
    interval: Duration,
}

impl SnapshotCollector {
    pub fn new(source: SnapshotSource, interval: Duration) -> Self {
        SnapshotCollector { source, interval }
    }
}

fn failure(message: String, retryable: bool) -> Error {
    Error::Collect {
        source_name: SOURCE.into(),
        message,
        retryable,
    }
}

#[async_trait::async_trait]
impl PriceCollector for SnapshotCollector {
    fn source(&self) -> &str {
        SOURCE
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn collect(&self) -> Result<Vec<Offer>, Error> {
        match &self.source {
            SnapshotSource::Bundled => bundled_offers(),
            SnapshotSource::Directory(dir) => {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || {
                    let manifest_path = dir.join("manifest.toml");
                    let manifest = std::fs::read_to_string(&manifest_path).map_err(|e| {
                        failure(
                            format!("cannot read {}: {e}", manifest_path.display()),
                            true,
                        )
                    })?;
                    parse_snapshot(&manifest, &manifest_path.display().to_string(), |name| {
                        let path = dir.join(name);
                        std::fs::read_to_string(&path).map_err(|e| {
                            failure(format!("cannot read {}: {e}", path.display()), true)
                        })
                    })
                })
                .await
                .map_err(|e| failure(format!("snapshot task failed: {e}"), true))?
            }
        }
    }
}

/// The offers of the snapshot compiled into the binary.
pub fn bundled_offers() -> Result<Vec<Offer>, Error> {
    parse_snapshot(BUNDLED_MANIFEST, "bundled manifest.toml", |name| {
        BUNDLED_FILES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, text)| Ok(text.to_string()))
            .unwrap_or_else(|| {
                Err(failure(
                    format!("bundled snapshot has no file {name}"),
                    false,
                ))
            })
    })
}

/// Parses a manifest and the files it names into offers.
pub fn parse_snapshot(
    manifest: &str,
    manifest_name: &str,
    mut read: impl FnMut(&str) -> Result<String, Error>,
) -> Result<Vec<Offer>, Error> {
    let manifest: Manifest = toml::from_str(manifest)
        .map_err(|e| failure(format!("{manifest_name} is invalid: {e}"), false))?;
    let mut offers = Vec::new();
    let cloud_of = |name: &str, file: &str| {
        Cloud::parse(name).ok_or_else(|| {
            failure(
                format!("{manifest_name}: cloud {name:?} of {file} is not aws, gcp or azure"),
                false,
            )
        })
    };
    for entry in &manifest.files {
        let cloud = cloud_of(&entry.cloud, &entry.file)?;
        let observed_at = parse_rfc3339(&entry.observed_at).ok_or_else(|| {
            failure(
                format!(
                    "{manifest_name}: observed_at {:?} of {} is not an RFC 3339 time such as 2026-11-01T00:00:00Z",
                    entry.observed_at, entry.file
                ),
                false,
            )
        })?;
        let text = read(&entry.file)?;
        parse_csv(&text, &entry.file, cloud, observed_at, &mut offers)?;
    }
    for feed in &manifest.interruption {
        let cloud = cloud_of(&feed.cloud, &feed.file)?;
        if feed.format != "aws-spot-advisor" {
            return Err(failure(
                format!(
                    "{manifest_name}: format {:?} of {} is not known; the only format is \"aws-spot-advisor\"",
                    feed.format, feed.file
                ),
                false,
            ));
        }
        let date = feed.observed_at.get(..10).unwrap_or(&feed.observed_at);
        if parse_rfc3339(&format!("{date}T00:00:00Z")).is_none() {
            return Err(failure(
                format!(
                    "{manifest_name}: observed_at {:?} of {} is not a date such as 2025-06-28",
                    feed.observed_at, feed.file
                ),
                false,
            ));
        }
        let text = read(&feed.file)?;
        let rates = computearbitrage_core::spot_advisor::parse(text.as_bytes())
            .map_err(|e| failure(format!("{}: {e}", feed.file), false))?;
        let label = format!("{}, {date}", feed.source);
        for offer in offers.iter_mut().filter(|o| o.cloud == cloud) {
            if let Some(rate) = rates.get(&offer.region, &offer.instance_type) {
                offer.interruption_rate = rate;
                offer.interruption_source = label.clone();
            }
        }
    }
    Ok(offers)
}

/// Parses one CSV file in the shared layout. Rows without a spot price are not offers.
fn parse_csv(
    text: &str,
    file: &str,
    cloud: Cloud,
    observed_at: i64,
    out: &mut Vec<Offer>,
) -> Result<(), Error> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| failure(format!("{file}: cannot read the header: {e}"), false))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| failure(format!("{file}: missing column {name}"), false))
    };
    let c_type = column("InstanceType")?;
    let c_gpu = column("AcceleratorName")?;
    let c_gpu_count = column("AcceleratorCount")?;
    let c_vcpus = column("vCPUs")?;
    let c_mem = column("MemoryGiB")?;
    let c_price = column("Price")?;
    let c_spot = column("SpotPrice")?;
    let c_region = column("Region")?;
    // Azure's files have `Generation` in this place, which is not a zone.
    let c_zone = headers.iter().position(|h| h == "AvailabilityZone");

    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record =
            record.map_err(|e| failure(format!("{file}:{line}: malformed row: {e}"), false))?;
        let field = |c: usize| record.get(c).unwrap_or("").trim();
        if field(c_spot).is_empty() {
            continue;
        }
        let number = |c: usize, name: &str| -> Result<f64, Error> {
            field(c)
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| {
                    failure(
                        format!(
                            "{file}:{line}: {name} {:?} is not a non-negative number",
                            field(c)
                        ),
                        false,
                    )
                })
        };
        let instance_type = field(c_type).to_string();
        let gpu = match field(c_gpu) {
            "" => None,
            name => {
                let count = number(c_gpu_count, "AcceleratorCount")?;
                Some(Gpu {
                    name: canonical_name(name),
                    original_name: name.to_string(),
                    count: count.round().clamp(1.0, f64::from(u16::MAX)) as u16,
                })
            }
        };
        let on_demand_price = if field(c_price).is_empty() {
            None
        } else {
            Some(number(c_price, "Price")?)
        };
        out.push(Offer {
            cloud,
            region: field(c_region).to_string(),
            zone: c_zone.map(|c| field(c).to_string()).unwrap_or_default(),
            architecture: Architecture::of_instance_type(cloud, &instance_type),
            instance_type,
            vcpus: number(c_vcpus, "vCPUs")?,
            memory_gib: number(c_mem, "MemoryGiB")?,
            gpu,
            on_demand_price,
            spot_price: number(c_spot, "SpotPrice")?,
            interruption_rate: InterruptionRate::Unknown,
            interruption_source: String::new(),
            observed_at,
            source: SOURCE.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bundled_snapshot_loads_every_spot_row() {
        let collector = SnapshotCollector::new(SnapshotSource::Bundled, Duration::from_secs(60));
        let offers = collector.collect().await.unwrap();
        // 1,806 + 1,721 + 6,441 rows, less 15 AWS and 133 Azure rows without a spot price.
        assert_eq!(offers.len(), 9_820);
        let a100 = offers
            .iter()
            .find(|o| o.instance_type == "a2-highgpu-1g")
            .unwrap();
        let gpu = a100.gpu.as_ref().unwrap();
        assert_eq!(
            (gpu.name.as_str(), gpu.original_name.as_str(), gpu.count),
            ("A100", "nvidia-tesla-a100", 1)
        );
        assert_eq!(a100.cloud, Cloud::Gcp);
        assert_eq!(a100.zone, "");
        let aws = offers.iter().find(|o| o.cloud == Cloud::Aws).unwrap();
        assert!(
            aws.zone.contains("-az"),
            "AWS rows carry zone ids: {}",
            aws.zone
        );
        let azure = offers.iter().find(|o| o.cloud == Cloud::Azure).unwrap();
        assert_eq!(azure.zone, "", "Azure's Generation column is not a zone");
        assert!(offers.iter().all(|o| o.source == "snapshot"));
        // Every AWS offer has its Spot Instance Advisor rate; the other clouds publish none here.
        for o in &offers {
            let known = o.interruption_rate != InterruptionRate::Unknown;
            assert_eq!(known, o.cloud == Cloud::Aws, "{}", o.describe());
            assert_eq!(
                o.interruption_source.is_empty(),
                !known,
                "{}: {:?}",
                o.describe(),
                o.interruption_source
            );
        }
        let rated = offers.iter().find(|o| o.cloud == Cloud::Aws).unwrap();
        assert_eq!(
            rated.interruption_source,
            "AWS Spot Instance Advisor, 2025-06-28"
        );
    }

    #[test]
    fn an_interruption_feed_joins_by_region_and_type_and_bad_feeds_are_named() {
        let manifest = "[[files]]\nfile = \"x.csv\"\ncloud = \"aws\"\nobserved_at = \"2026-11-01T00:00:00Z\"\n\
                        [[interruption]]\nfile = \"r.json\"\nformat = \"aws-spot-advisor\"\ncloud = \"aws\"\nsource = \"Advisor\"\nobserved_at = \"2025-06-28\"\n";
        let csv = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n\
                   m5.large,,,2,8,,0.096,0.03,us-east-1,use1-az1\n\
                   m5.large,,,2,8,,0.096,0.03,eu-west-1,euw1-az1\n";
        let feed = r#"{"spot_advisor": {"us-east-1": {"Linux": {"m5.large": {"s": 60, "r": 1}}}}}"#;
        let offers = parse_snapshot(manifest, "m", |name| {
            Ok(if name == "x.csv" { csv } else { feed }.to_string())
        })
        .unwrap();
        assert_eq!(offers[0].interruption_rate.to_string(), "5-10%");
        assert_eq!(offers[0].interruption_source, "Advisor, 2025-06-28");
        assert_eq!(
            offers[1].interruption_rate,
            InterruptionRate::Unknown,
            "no rate for that region"
        );
        let err = parse_snapshot(manifest, "m", |name| {
            Ok(if name == "x.csv" { csv } else { "[1, 2" }.to_string())
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("r.json: not a Spot Instance Advisor feed"),
            "{err}"
        );
    }

    #[test]
    fn malformed_rows_name_the_file_and_line() {
        let manifest = "[[files]]\nfile = \"x.csv\"\nprovider = \"aws\"\nobserved_at = \"2026-11-01T00:00:00Z\"\n";
        let csv = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n\
                   m5.large,,,2,8,,0.096,0.03,us-east-1,use1-az1\n\
                   m5.xlarge,,,four,16,,0.192,0.06,us-east-1,use1-az1\n";
        let err = parse_snapshot(manifest, "m", |_| Ok(csv.to_string())).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("x.csv:3") && text.contains("vCPUs"), "{text}");
        assert!(!err.is_retryable());
    }

    #[test]
    fn a_manifest_with_an_unknown_provider_is_refused() {
        let manifest = "[[files]]\nfile = \"x.csv\"\ncloud = \"oci\"\nobserved_at = \"2026-11-01T00:00:00Z\"\n";
        let err = parse_snapshot(manifest, "m", |_| Ok(String::new())).unwrap_err();
        assert!(err.to_string().contains("\"oci\""));
    }
}
