//! Names a request uses that no offer has, with the closest names that exist: the
//! difference between "no offer matches" and "there is no region `us-eest-1`; did you
//! mean `us-east-1`?". Listing and placement both report them as warnings.

use crate::catalog::{Catalog, Row, Sym};
use crate::filter::{OfferFilter, Requirements};
use std::collections::BTreeSet;

/// One name that no offer in the catalog has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownName {
    /// The request field (`regions`, `instance_types`, `gpu_name`, …).
    pub field: &'static str,
    /// The element of a list field; `None` for a single value.
    pub index: Option<usize>,
    pub name: String,
    /// Up to three known names closest to it, nearest first.
    pub nearest: Vec<String>,
}

impl UnknownName {
    /// "no offer has the region \"us-eest-1\"; the closest known are \"us-east-1\", …".
    pub fn message(&self) -> String {
        let what = match self.field {
            "instance_types" => "instance type",
            "gpu_name" => "GPU",
            _ => "region",
        };
        let mut text = format!("no offer has the {what} {:?}", self.name);
        match self.nearest.as_slice() {
            [] => text.push_str("; check the spelling: names are as each cloud writes them"),
            [one] => text.push_str(&format!("; did you mean {one:?}?")),
            many => text.push_str(&format!(
                "; the closest known are {}",
                many.iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
        text
    }
}

const SUGGESTIONS: usize = 3;

fn check_list(
    catalog: &Catalog,
    field: &'static str,
    names: &[String],
    key: fn(&Row) -> Sym,
    out: &mut Vec<UnknownName>,
) {
    let mut known: Option<BTreeSet<&str>> = None;
    for (index, name) in names.iter().enumerate() {
        let present = catalog
            .strings
            .lookup(name)
            .is_some_and(|sym| catalog.rows.iter().any(|r| key(r) == sym));
        if present {
            continue;
        }
        let known = known.get_or_insert_with(|| {
            catalog
                .rows
                .iter()
                .map(|r| catalog.strings.get(key(r)))
                .collect()
        });
        out.push(UnknownName {
            field,
            index: Some(index),
            name: name.clone(),
            nearest: computearbitrage_conventions::nearest(
                name,
                known.iter().copied(),
                SUGGESTIONS,
            )
            .into_iter()
            .map(str::to_string)
            .collect(),
        });
    }
}

fn check_gpu(catalog: &Catalog, name: Option<&str>, out: &mut Vec<UnknownName>) {
    let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
        return;
    };
    let canonical = crate::gpu::canonical_name(name);
    let gpus: BTreeSet<&str> = catalog
        .rows
        .iter()
        .filter(|r| r.has_gpu())
        .flat_map(|r| {
            [
                catalog.strings.get(r.gpu_name),
                catalog.strings.get(r.gpu_original_name),
            ]
        })
        .collect();
    let present = gpus
        .iter()
        .any(|g| g.eq_ignore_ascii_case(name) || g.eq_ignore_ascii_case(&canonical));
    if !present {
        out.push(UnknownName {
            field: "gpu_name",
            index: None,
            name: name.to_string(),
            nearest: computearbitrage_conventions::nearest(name, gpus.iter().copied(), SUGGESTIONS)
                .into_iter()
                .map(str::to_string)
                .collect(),
        });
    }
}

/// Unknown names of a listing filter.
pub fn unknown_in_filter(catalog: &Catalog, filter: &OfferFilter) -> Vec<UnknownName> {
    let mut out = Vec::new();
    check_list(catalog, "regions", &filter.regions, |r| r.region, &mut out);
    check_list(
        catalog,
        "instance_types",
        &filter.instance_types,
        |r| r.instance_type,
        &mut out,
    );
    check_gpu(catalog, filter.gpu_name.as_deref(), &mut out);
    out
}

/// Unknown names of placement requirements (regions to use, avoid and prefer).
pub fn unknown_in_requirements(catalog: &Catalog, requirements: &Requirements) -> Vec<UnknownName> {
    let filter = &requirements.filter;
    let mut out = Vec::new();
    check_list(catalog, "regions", &filter.regions, |r| r.region, &mut out);
    check_list(
        catalog,
        "exclude_regions",
        &filter.exclude_regions,
        |r| r.region,
        &mut out,
    );
    check_list(
        catalog,
        "preferred_regions",
        &requirements.preferred_regions,
        |r| r.region,
        &mut out,
    );
    check_gpu(catalog, filter.gpu_name.as_deref(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::offer;
    use crate::cloud::Cloud;
    use crate::offer::Gpu;

    fn catalog() -> Catalog {
        let mut gpu = offer(Cloud::Gcp, "us-central1", "a2-highgpu-1g", 12.0, 85.0, 1.0);
        gpu.gpu = Some(Gpu {
            name: "A100".into(),
            original_name: "nvidia-tesla-a100".into(),
            count: 1,
        });
        Catalog::build(vec![
            offer(Cloud::Aws, "us-east-1", "m5.xlarge", 4.0, 16.0, 0.05),
            offer(Cloud::Aws, "us-east-2", "m5.large", 2.0, 8.0, 0.03),
            offer(Cloud::Aws, "us-west-1", "c5.xlarge", 4.0, 8.0, 0.04),
            gpu,
        ])
    }

    #[test]
    fn a_misspelt_region_names_the_closest_known_regions() {
        let filter = OfferFilter {
            regions: vec!["us-east-1".into(), "us-eest-1".into()],
            ..Default::default()
        };
        let unknown = unknown_in_filter(&catalog(), &filter);
        assert_eq!(unknown.len(), 1);
        assert_eq!(unknown[0].index, Some(1));
        assert_eq!(
            unknown[0].nearest,
            vec!["us-east-1", "us-west-1", "us-east-2"]
        );
        assert!(unknown[0].message().contains(
            "no offer has the region \"us-eest-1\"; the closest known are \"us-east-1\""
        ));
    }

    #[test]
    fn instance_types_and_gpus_are_checked_and_known_names_pass() {
        let filter = OfferFilter {
            instance_types: vec!["m5.xlarg".into(), "c5.xlarge".into()],
            gpu_name: Some("A10O".into()),
            ..Default::default()
        };
        let unknown = unknown_in_filter(&catalog(), &filter);
        let fields: Vec<_> = unknown
            .iter()
            .map(|u| (u.field, u.nearest.first().cloned()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("instance_types", Some("m5.xlarge".into())),
                ("gpu_name", Some("A100".into()))
            ]
        );
        let fine = OfferFilter {
            gpu_name: Some("NVIDIA-TESLA-A100".into()),
            regions: vec!["us-central1".into()],
            ..Default::default()
        };
        assert!(unknown_in_filter(&catalog(), &fine).is_empty());
        // A region spelt like an instance type is still unknown as a region.
        let confused = OfferFilter {
            regions: vec!["m5.xlarge".into()],
            ..Default::default()
        };
        assert_eq!(unknown_in_filter(&catalog(), &confused).len(), 1);
    }
}
