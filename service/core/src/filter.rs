//! Constraints on offers. [`OfferFilter`] is what a listing accepts; [`Requirements`]
//! is what placement accepts (the same constraints plus region preference). Both
//! compile against one catalog into a [`CompiledFilter`] that tests a row with integer
//! and float comparisons only.

use crate::catalog::{Catalog, Row, UNKNOWN_RATE};
use crate::cloud::{Architecture, Cloud};
use crate::fmt::number;

/// Constraints shared by listing and placement. Empty lists and `None` mean "any".
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct OfferFilter {
    pub clouds: Vec<Cloud>,
    pub regions: Vec<String>,
    pub exclude_regions: Vec<String>,
    pub instance_types: Vec<String>,
    pub min_vcpus: Option<f64>,
    pub min_memory_gib: Option<f64>,
    /// Canonical or cloud-specific GPU name, case-insensitive. Implies at least one GPU.
    pub gpu_name: Option<String>,
    pub min_gpus: Option<u32>,
    pub architecture: Option<Architecture>,
    /// Upper bound on the interruption rate, in percent. An offer passes when the top of
    /// its published range is at or below it.
    pub max_interruption_rate: Option<f64>,
    /// Whether offers with no published interruption rate pass `max_interruption_rate`.
    /// False by default: a limit means a published rate within it.
    pub allow_unknown_interruption_rate: bool,
    pub max_spot_price: Option<f64>,
}

/// What a workload needs, for placement.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Requirements {
    /// The hard constraints. `max_spot_price` is the user's `max_price_per_hour`.
    pub filter: OfferFilter,
    /// Regions that win over others unless those are more than the preference cheaper.
    pub preferred_regions: Vec<String>,
}

/// Which API the constraint names in messages should follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Context {
    Listing,
    Placement,
}

/// What a constraint tests.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    Clouds([bool; 3]),
    /// Membership by interned symbol; a name the catalog does not know matches nothing.
    Regions(Vec<bool>),
    ExcludeRegions(Vec<bool>),
    InstanceTypes(Vec<bool>),
    MinVcpus(f64),
    MinMemory(f64),
    /// GPU names (canonical or original) that match, and the minimum count.
    Gpu {
        names: Vec<bool>,
        min_count: u16,
    },
    MinGpus(u16),
    Architecture(Architecture),
    MaxInterruption {
        max_percent: f64,
        allow_unknown: bool,
    },
    MaxSpotPrice(f64),
}

/// One constraint with the words messages use for it.
#[derive(Debug, Clone)]
pub(crate) struct Constraint {
    /// The attribute name the user wrote (`min_memory_gib`).
    pub field: &'static str,
    /// `min_memory_gib = 2048`.
    pub label: String,
    pub test: Test,
}

impl Constraint {
    pub(crate) fn accepts(&self, row: &Row) -> bool {
        match &self.test {
            Test::Clouds(allowed) => allowed[row.cloud as usize],
            Test::Regions(set) => set[row.region as usize],
            Test::ExcludeRegions(set) => !set[row.region as usize],
            Test::InstanceTypes(set) => set[row.instance_type as usize],
            Test::MinVcpus(min) => row.vcpus >= *min,
            Test::MinMemory(min) => row.memory_gib >= *min,
            Test::Gpu { names, min_count } => {
                row.gpu_count >= *min_count
                    && row.has_gpu()
                    && (names[row.gpu_name as usize] || names[row.gpu_original_name as usize])
            }
            Test::MinGpus(min) => row.gpu_count >= *min,
            Test::Architecture(arch) => row.architecture == *arch,
            Test::MaxInterruption {
                max_percent,
                allow_unknown,
            } => {
                if row.interruption_max == UNKNOWN_RATE {
                    *allow_unknown
                } else {
                    f64::from(row.interruption_max) <= *max_percent
                }
            }
            Test::MaxSpotPrice(max) => row.spot_price <= *max,
        }
    }
}

/// A filter bound to one catalog's symbols.
#[derive(Debug, Clone)]
pub(crate) struct CompiledFilter {
    pub constraints: Vec<Constraint>,
}

impl CompiledFilter {
    #[inline]
    pub(crate) fn accepts(&self, row: &Row) -> bool {
        self.constraints.iter().all(|c| c.accepts(row))
    }

    /// Bit `i` is set when constraint `i` rejects the row.
    pub(crate) fn failures(&self, row: &Row) -> u64 {
        self.constraints
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.accepts(row))
            .fold(0, |bits, (i, _)| bits | (1 << i))
    }
}

fn list_label(field: &str, values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("{field} = [{}]", quoted.join(", "))
}

impl OfferFilter {
    pub(crate) fn compile(&self, catalog: &Catalog, context: Context) -> CompiledFilter {
        let symbols = catalog.strings.len();
        let set_of = |names: &[String]| {
            let mut set = vec![false; symbols];
            for name in names {
                if let Some(sym) = catalog.strings.lookup(name) {
                    set[sym as usize] = true;
                }
            }
            set
        };
        let mut constraints = Vec::new();
        let mut push = |field: &'static str, label: String, test: Test| {
            constraints.push(Constraint { field, label, test })
        };
        if !self.clouds.is_empty() {
            let mut allowed = [false; 3];
            for cloud in &self.clouds {
                allowed[*cloud as usize] = true;
            }
            let names: Vec<String> = self.clouds.iter().map(|c| c.to_string()).collect();
            push(
                "providers",
                list_label("providers", &names),
                Test::Clouds(allowed),
            );
        }
        if !self.regions.is_empty() {
            push(
                "regions",
                list_label("regions", &self.regions),
                Test::Regions(set_of(&self.regions)),
            );
        }
        if !self.exclude_regions.is_empty() {
            push(
                "exclude_regions",
                list_label("exclude_regions", &self.exclude_regions),
                Test::ExcludeRegions(set_of(&self.exclude_regions)),
            );
        }
        if !self.instance_types.is_empty() {
            push(
                "instance_types",
                list_label("instance_types", &self.instance_types),
                Test::InstanceTypes(set_of(&self.instance_types)),
            );
        }
        if let Some(min) = self.min_vcpus.filter(|v| *v > 0.0) {
            push(
                "min_vcpus",
                format!("min_vcpus = {}", number(min)),
                Test::MinVcpus(min),
            );
        }
        if let Some(min) = self.min_memory_gib.filter(|v| *v > 0.0) {
            push(
                "min_memory_gib",
                format!("min_memory_gib = {}", number(min)),
                Test::MinMemory(min),
            );
        }
        let min_gpus = self.min_gpus.unwrap_or(0).min(u32::from(u16::MAX)) as u16;
        match self
            .gpu_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            Some(gpu) => {
                let mut names = vec![false; symbols];
                for (sym, name) in catalog.strings.iter() {
                    if sym != catalog.empty_sym() && name.eq_ignore_ascii_case(gpu) {
                        names[sym as usize] = true;
                    }
                }
                let canonical = crate::gpu::canonical_name(gpu);
                if let Some(sym) = catalog.strings.lookup(&canonical) {
                    names[sym as usize] = true;
                }
                let label = if min_gpus > 1 {
                    format!("gpu_name = {gpu:?} with min_gpus = {min_gpus}")
                } else {
                    format!("gpu_name = {gpu:?}")
                };
                push(
                    "gpu_name",
                    label,
                    Test::Gpu {
                        names,
                        min_count: min_gpus.max(1),
                    },
                );
            }
            None if min_gpus > 0 => {
                push(
                    "min_gpus",
                    format!("min_gpus = {min_gpus}"),
                    Test::MinGpus(min_gpus),
                );
            }
            None => {}
        }
        if let Some(arch) = self.architecture {
            push(
                "architecture",
                format!("architecture = {:?}", arch.as_str()),
                Test::Architecture(arch),
            );
        }
        if let Some(max) = self.max_interruption_rate {
            push(
                "max_interruption_rate",
                format!("max_interruption_rate = {}", number(max)),
                Test::MaxInterruption {
                    max_percent: max,
                    allow_unknown: self.allow_unknown_interruption_rate,
                },
            );
        }
        if let Some(max) = self.max_spot_price {
            let field = match context {
                Context::Listing => "max_spot_price",
                Context::Placement => "max_price_per_hour",
            };
            push(
                field,
                format!("{field} = {}", number(max)),
                Test::MaxSpotPrice(max),
            );
        }
        CompiledFilter { constraints }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::offer;
    use crate::offer::{Gpu, InterruptionRate, Offer};

    fn gpu_offer(original: &str, count: u16, spot: f64) -> Offer {
        let mut o = offer(
            Cloud::Gcp,
            "us-central1",
            &format!("{original}-{count}"),
            12.0,
            85.0,
            spot,
        );
        o.gpu = Some(Gpu {
            name: crate::gpu::canonical_name(original),
            original_name: original.into(),
            count,
        });
        o
    }

    fn listed(catalog: &Catalog, filter: &OfferFilter) -> Vec<String> {
        catalog
            .list(filter, None, 1000)
            .unwrap()
            .offers
            .into_iter()
            .map(|o| o.instance_type)
            .collect()
    }

    #[test]
    fn gpu_names_match_canonical_and_original_in_any_case() {
        let catalog = Catalog::build(vec![
            gpu_offer("nvidia-tesla-a100", 1, 1.0),
            gpu_offer("nvidia-tesla-a100", 4, 4.0),
            gpu_offer("nvidia-l4", 1, 0.5),
            offer(Cloud::Aws, "us-east-1", "m5.large", 2.0, 8.0, 0.03),
        ]);
        for name in ["A100", "a100", "nvidia-tesla-a100", "NVIDIA-TESLA-A100"] {
            let filter = OfferFilter {
                gpu_name: Some(name.into()),
                ..Default::default()
            };
            assert_eq!(
                listed(&catalog, &filter),
                vec!["nvidia-tesla-a100-1", "nvidia-tesla-a100-4"],
                "{name}"
            );
        }
        let filter = OfferFilter {
            gpu_name: Some("A100".into()),
            min_gpus: Some(2),
            ..Default::default()
        };
        assert_eq!(listed(&catalog, &filter), vec!["nvidia-tesla-a100-4"]);
        let any_gpu = OfferFilter {
            min_gpus: Some(1),
            ..Default::default()
        };
        assert_eq!(listed(&catalog, &any_gpu).len(), 3);
    }

    #[test]
    fn unknown_region_names_match_nothing() {
        let catalog = Catalog::build(vec![offer(
            Cloud::Aws,
            "us-east-1",
            "m5.large",
            2.0,
            8.0,
            0.03,
        )]);
        let filter = OfferFilter {
            regions: vec!["us-east-9".into()],
            ..Default::default()
        };
        assert!(listed(&catalog, &filter).is_empty());
        let exclude = OfferFilter {
            exclude_regions: vec!["us-east-1".into()],
            ..Default::default()
        };
        assert!(listed(&catalog, &exclude).is_empty());
    }

    #[test]
    fn interruption_bound_uses_the_top_of_the_range() {
        let mut low = offer(Cloud::Aws, "us-east-1", "low", 2.0, 8.0, 0.03);
        low.interruption_rate = InterruptionRate::from_aws_bucket(1); // 5-10%
        let mut high = offer(Cloud::Aws, "us-east-1", "high", 2.0, 8.0, 0.02);
        high.interruption_rate = InterruptionRate::from_aws_bucket(2); // 10-15%
        let unknown = offer(Cloud::Gcp, "us-central1", "unknown", 2.0, 8.0, 0.01);
        let catalog = Catalog::build(vec![low, high, unknown]);
        let mut filter = OfferFilter {
            max_interruption_rate: Some(10.0),
            ..Default::default()
        };
        // By default a limit means a published rate within it.
        assert_eq!(listed(&catalog, &filter), vec!["low"]);
        filter.allow_unknown_interruption_rate = true;
        assert_eq!(listed(&catalog, &filter), vec!["unknown", "low"]);
    }
}
