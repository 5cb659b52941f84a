//! Simulated spot capacity errors: offers the local driver has no spot capacity for
//! (`workloads.local.no_spot_capacity`), so fallback to on-demand can be exercised
//! as a cloud's `InsufficientInstanceCapacity` would.

/// One `cloud/region/zone/instance_type` pattern; `*` matches any value of a segment
/// (an empty zone too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferPattern([String; 4]);

impl OfferPattern {
    /// Parses a comma-separated list; the error says which entry is wrong and how.
    pub fn parse_list(text: &str) -> Result<Vec<OfferPattern>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let parts: Vec<&str> = entry.split('/').collect();
                match parts.as_slice() {
                    [cloud, region, zone, instance_type]
                        if parts.iter().all(|p| !p.is_empty()) =>
                    {
                        Ok(OfferPattern([
                            cloud.to_string(),
                            region.to_string(),
                            zone.to_string(),
                            instance_type.to_string(),
                        ]))
                    }
                    _ => Err(format!(
                        "{entry:?} is not `cloud/region/zone/instance_type` (use `*` for any, e.g. `aws/*/*/m5.large` or `*/*/*/*`)"
                    )),
                }
            })
            .collect()
    }

    pub fn matches(&self, cloud: &str, region: &str, zone: &str, instance_type: &str) -> bool {
        self.0
            .iter()
            .zip([cloud, region, zone, instance_type])
            .all(|(pattern, value)| pattern == "*" || pattern == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_by_segment_with_wildcards() {
        let list = OfferPattern::parse_list(" aws/*/*/m5.large , gcp/us-central1/*/* ").unwrap();
        assert!(list[0].matches("aws", "us-east-1", "us-east-1a", "m5.large"));
        assert!(!list[0].matches("aws", "us-east-1", "us-east-1a", "m5.xlarge"));
        assert!(list[1].matches("gcp", "us-central1", "", "e2-small"));
        assert!(!list[1].matches("gcp", "europe-west1", "", "e2-small"));
        assert!(OfferPattern::parse_list("").unwrap().is_empty());
        for bad in ["aws/m5.large", "aws/*/*/m5.large/x", "aws//*/m5.large"] {
            let e = OfferPattern::parse_list(bad).unwrap_err();
            assert!(e.contains("cloud/region/zone/instance_type"), "{e}");
        }
    }
}
