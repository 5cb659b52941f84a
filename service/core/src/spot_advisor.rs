//! The AWS Spot Instance Advisor feed (`spot-advisor-data.json`): each instance
//! type's interruption-rate bucket per region and operating system. The snapshot joins
//! it onto AWS offers; a live collector will read the same shape. Parsing is pure (bytes
//! in, rates out) and never panics: the fuzz target `spot_advisor` feeds it arbitrary
//! bytes.

use crate::offer::InterruptionRate;
use serde::Deserialize;
use std::collections::HashMap;

/// The rates of one feed: (region, instance type) → rate, for Linux.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AdvisorRates {
    rates: HashMap<(String, String), InterruptionRate>,
}

impl AdvisorRates {
    pub fn get(&self, region: &str, instance_type: &str) -> Option<InterruptionRate> {
        // Keys are owned; a lookup allocates two short strings, once per offer at load.
        self.rates
            .get(&(region.to_string(), instance_type.to_string()))
            .copied()
    }

    pub fn len(&self) -> usize {
        self.rates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rates.is_empty()
    }

    /// Every rate, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = InterruptionRate> + '_ {
        self.rates.values().copied()
    }
}

#[derive(Deserialize)]
struct Feed {
    spot_advisor: HashMap<String, HashMap<String, HashMap<String, Entry>>>,
}

#[derive(Deserialize)]
struct Entry {
    /// The bucket index: 0 `<5%`, 1 `5-10%`, 2 `10-15%`, 3 `15-20%`, 4 `>20%`.
    r: u8,
}

/// Parses the feed. The error says what is wrong, for the file's name to be added.
pub fn parse(json: &[u8]) -> Result<AdvisorRates, String> {
    let feed: Feed = serde_json::from_slice(json)
        .map_err(|e| format!("not a Spot Instance Advisor feed: {e}"))?;
    let mut rates = HashMap::new();
    for (region, systems) in feed.spot_advisor {
        let Some(linux) = systems.get("Linux") else {
            continue;
        };
        for (instance_type, entry) in linux {
            if entry.r > 4 {
                return Err(format!(
                    "{region} {instance_type}: bucket {} is not one of 0..=4",
                    entry.r
                ));
            }
            rates.insert(
                (region.clone(), instance_type.clone()),
                InterruptionRate::from_aws_bucket(entry.r),
            );
        }
    }
    Ok(AdvisorRates { rates })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_feed_parses_and_buckets_map_to_ranges() {
        let rates = parse(include_bytes!(
            "../../orchestrator/data/prices/aws-spot-advisor-data.json"
        ))
        .unwrap();
        // Every Linux entry of the file (counted independently with Python).
        assert_eq!(rates.len(), 14_962);
        // Spot-checked against the file: m6i.2xlarge in us-east-1 is bucket 4.
        assert_eq!(
            rates.get("us-east-1", "m6i.2xlarge"),
            Some(InterruptionRate::from_aws_bucket(4))
        );
        assert_eq!(rates.get("us-east-1", "no-such.type"), None);
    }

    #[test]
    fn bad_feeds_are_errors_not_panics() {
        assert!(parse(b"").is_err());
        assert!(parse(b"{}").is_err());
        assert!(
            parse(br#"{"spot_advisor": {"r": {"Linux": {"t": {"s": 1, "r": 9}}}}}"#)
                .unwrap_err()
                .contains("bucket 9")
        );
        assert!(parse(br#"{"spot_advisor": {"r": {"Windows": {}}}}"#)
            .unwrap()
            .is_empty());
    }
}
