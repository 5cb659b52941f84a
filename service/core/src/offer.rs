//! One spot offer: a price for an instance type in a place, at a time, from a source.

use crate::cloud::{Architecture, Cloud};
use std::fmt;

/// How often a cloud reclaims this kind of capacity, as a percentage range per month.
/// AWS publishes buckets (`<5%`, `5-10%`, …, `>20%`); Azure publishes ranges; GCP none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InterruptionRate {
    Unknown,
    /// Inclusive lower and upper bound in percent. `>20%` is `20..=100`.
    Range {
        min_percent: u8,
        max_percent: u8,
    },
}

impl InterruptionRate {
    /// The AWS Spot Instance Advisor bucket `r` (0..=4).
    pub fn from_aws_bucket(bucket: u8) -> InterruptionRate {
        let (min_percent, max_percent) = match bucket {
            0 => (0, 5),
            1 => (5, 10),
            2 => (10, 15),
            3 => (15, 20),
            _ => (20, 100),
        };
        InterruptionRate::Range {
            min_percent,
            max_percent,
        }
    }

    /// The upper bound in percent, if known.
    pub fn max_percent(self) -> Option<f64> {
        match self {
            InterruptionRate::Unknown => None,
            InterruptionRate::Range { max_percent, .. } => Some(f64::from(max_percent)),
        }
    }

    /// The midpoint in percent, used by scoring as the expected rate.
    pub fn expected_percent(self) -> Option<f64> {
        match self {
            InterruptionRate::Unknown => None,
            InterruptionRate::Range {
                min_percent,
                max_percent,
            } => Some((f64::from(min_percent) + f64::from(max_percent)) / 2.0),
        }
    }

    /// Parses the labels that [`fmt::Display`] writes.
    pub fn parse(label: &str) -> Option<InterruptionRate> {
        let label = label.trim();
        if label.is_empty() || label == "unknown" {
            return Some(InterruptionRate::Unknown);
        }
        let body = label.strip_suffix('%')?;
        if let Some(max) = body.strip_prefix('<') {
            return Some(InterruptionRate::Range {
                min_percent: 0,
                max_percent: max.parse().ok()?,
            });
        }
        if let Some(min) = body.strip_prefix('>') {
            return Some(InterruptionRate::Range {
                min_percent: min.parse().ok()?,
                max_percent: 100,
            });
        }
        let (min, max) = body.split_once('-')?;
        Some(InterruptionRate::Range {
            min_percent: min.parse().ok()?,
            max_percent: max.parse().ok()?,
        })
    }
}

impl fmt::Display for InterruptionRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InterruptionRate::Unknown => f.write_str("unknown"),
            InterruptionRate::Range {
                min_percent: 0,
                max_percent,
            } => write!(f, "<{max_percent}%"),
            InterruptionRate::Range {
                min_percent,
                max_percent: 100,
            } => write!(f, ">{min_percent}%"),
            InterruptionRate::Range {
                min_percent,
                max_percent,
            } => write!(f, "{min_percent}-{max_percent}%"),
        }
    }
}

/// An accelerator attached to an instance type.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    /// Canonical name (`A100`), see [`crate::gpu`].
    pub name: String,
    /// The name as the cloud wrote it (`nvidia-tesla-a100`).
    pub original_name: String,
    pub count: u16,
}

/// A spot offer as collectors produce it and the API returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub cloud: Cloud,
    /// The region as the cloud writes it (`us-east-1`, `eastus`, `us-central1`).
    pub region: String,
    /// Availability zone, or empty where the price is per region.
    pub zone: String,
    pub instance_type: String,
    pub vcpus: f64,
    pub memory_gib: f64,
    pub architecture: Architecture,
    pub gpu: Option<Gpu>,
    /// On-demand price in USD per hour, when the source has one.
    pub on_demand_price: Option<f64>,
    /// Spot price in USD per hour.
    pub spot_price: f64,
    pub interruption_rate: InterruptionRate,
    /// Where the interruption rate comes from, with its date ("AWS Spot Instance
    /// Advisor, 2025-06-28"); empty when the rate is unknown.
    pub interruption_source: String,
    /// When the price was observed, unix seconds.
    pub observed_at: i64,
    /// Which collector produced the offer (`snapshot`, `aws-spot-price-history`, …).
    pub source: String,
}

impl Offer {
    /// Savings of spot over on-demand, in percent, when on-demand is known and positive.
    pub fn savings_percent(&self) -> Option<f64> {
        let od = self.on_demand_price?;
        (od > 0.0).then(|| (1.0 - self.spot_price / od) * 100.0)
    }

    /// `aws c6i.xlarge in us-east-1 (use1-az2)`.
    pub fn describe(&self) -> String {
        if self.zone.is_empty() {
            format!("{} {} in {}", self.cloud, self.instance_type, self.region)
        } else {
            format!(
                "{} {} in {} ({})",
                self.cloud, self.instance_type, self.region, self.zone
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruption_labels_round_trip() {
        for bucket in 0..=4 {
            let rate = InterruptionRate::from_aws_bucket(bucket);
            assert_eq!(InterruptionRate::parse(&rate.to_string()), Some(rate));
        }
        assert_eq!(InterruptionRate::from_aws_bucket(0).to_string(), "<5%");
        assert_eq!(InterruptionRate::from_aws_bucket(2).to_string(), "10-15%");
        assert_eq!(InterruptionRate::from_aws_bucket(4).to_string(), ">20%");
        assert_eq!(
            InterruptionRate::parse("unknown"),
            Some(InterruptionRate::Unknown)
        );
        assert_eq!(InterruptionRate::parse("often"), None);
    }
}
