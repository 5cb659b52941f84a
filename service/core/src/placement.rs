//! Placement: the best offer for a set of requirements, ranked alternatives, and, when
//! nothing matches, an explanation of which constraint removed what.
//!
//! # Scoring
//! Each matching offer gets an *effective hourly price*, lower is better:
//!
//! ```text
//! score = spot_price × (1 + interruption_weight × expected_rate / 100)
//!                    × (1 − preferred_region_bonus   if the region is preferred)
//! ```
//!
//! `expected_rate` is the midpoint of the offer's published interruption range in percent
//! (`5-10%` → 7.5), or `unknown_interruption_percent` when the cloud publishes none
//! (scoring only: an offer without a rate passes `max_interruption_rate` only with
//! `allow_unknown_interruption_rate`, and then its reason and a warning say so). So
//! when no offer has interruption data and no region is preferred, every score is the
//! spot price times one constant and the best offer is the cheapest matching one.
//!
//! Ties on score are broken by catalog order (spot price, cloud, region, zone, instance
//! type), so the same catalog and requirements always give the same answer.
//!
//! Because the catalog is sorted by spot price and every multiplier is bounded below,
//! the scan stops as soon as no later offer can enter the top N.

use crate::catalog::{Catalog, Row};
use crate::error::Error;
use crate::filter::{CompiledFilter, Context, Requirements, Test};
use crate::fmt::{number, price, thousands};
use crate::offer::Offer;
use std::fmt;

/// The weights of the score. See the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringPolicy {
    /// How much one percentage point of expected interruption raises the score, as a
    /// fraction of a percent of price. 1.0: a 10 % rate costs like a 10 % higher price.
    pub interruption_weight: f64,
    /// Expected interruption rate, in percent, assumed where none is published.
    pub unknown_interruption_percent: f64,
    /// Fractional discount given to offers in a preferred region (0.10 = 10 %).
    pub preferred_region_bonus: f64,
}

impl Default for ScoringPolicy {
    fn default() -> Self {
        ScoringPolicy {
            interruption_weight: 1.0,
            unknown_interruption_percent: 10.0,
            preferred_region_bonus: 0.10,
        }
    }
}

/// One ranked offer.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub offer: Offer,
    /// Effective hourly price, see the module documentation.
    pub score: f64,
    pub savings_percent: Option<f64>,
    /// A short, human-readable reason for the rank.
    pub reason: String,
}

/// The answer of [`place`].
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub best: Candidate,
    pub alternatives: Vec<Candidate>,
    /// What the caller should know about the best offer, such as an interruption
    /// limit it passed only because its rate is unknown and unknown rates are allowed.
    pub warnings: Vec<String>,
}

/// Most alternatives a caller may ask for.
pub const MAX_ALTERNATIVES: usize = 50;

/// Finds the best offer and up to `alternatives` runners-up.
pub fn place(
    catalog: &Catalog,
    requirements: &Requirements,
    alternatives: usize,
    policy: &ScoringPolicy,
) -> Result<Placement, Error> {
    let filter = requirements.filter.compile(catalog, Context::Placement);
    let preferred: Vec<bool> = {
        let mut set = vec![false; catalog.strings.len()];
        for name in &requirements.preferred_regions {
            if let Some(sym) = catalog.strings.lookup(name) {
                set[sym as usize] = true;
            }
        }
        set
    };
    let any_preferred = preferred.iter().any(|p| *p);
    let lowest_multiplier = if any_preferred {
        1.0 - policy.preferred_region_bonus
    } else {
        1.0
    };
    let wanted = alternatives.min(MAX_ALTERNATIVES) + 1;
    let score = |row: &Row| {
        let rate = row
            .interruption()
            .expected_percent()
            .unwrap_or(policy.unknown_interruption_percent);
        let mut s = row.spot_price * (1.0 + policy.interruption_weight * rate / 100.0);
        if preferred[row.region as usize] {
            s *= 1.0 - policy.preferred_region_bonus;
        }
        s
    };

    // Top `wanted` by (score, position), kept sorted; `wanted` is small.
    let mut top: Vec<(f64, usize)> = Vec::with_capacity(wanted + 1);
    for (position, row) in catalog.rows.iter().enumerate() {
        if top.len() == wanted {
            let worst = top[wanted - 1].0;
            if row.spot_price * lowest_multiplier > worst {
                break;
            }
        }
        if !filter.accepts(row) {
            continue;
        }
        let s = score(row);
        let at = top.partition_point(|&(ts, tp)| ts < s || (ts == s && tp < position));
        if at < wanted {
            top.insert(at, (s, position));
            top.truncate(wanted);
        }
    }

    if top.is_empty() {
        return Err(Error::NoMatch(Box::new(explain(catalog, &filter))));
    }

    let best_score = top[0].0;
    let mut ranked = top.into_iter().enumerate().map(|(rank, (s, position))| {
        let row = &catalog.rows[position];
        let offer = catalog.materialize(row);
        let reason = reason(
            rank,
            s,
            best_score,
            &offer,
            preferred[row.region as usize],
            requirements.filter.max_interruption_rate,
            policy,
        );
        Candidate {
            savings_percent: offer.savings_percent(),
            score: s,
            offer,
            reason,
        }
    });
    let best = ranked.next().expect("top is not empty");
    let mut warnings = Vec::new();
    if let (Some(limit), None) = (
        requirements.filter.max_interruption_rate,
        best.offer.interruption_rate.max_percent(),
    ) {
        warnings.push(format!(
            "The chosen offer, {}, has no published interruption rate: it passed max_interruption_rate = {} only because allow_unknown_interruption_rate = true, and its real rate may be higher. Remove allow_unknown_interruption_rate (or set it to false) to keep to offers whose published rate is within the limit.",
            best.offer.describe(),
            number(limit)
        ));
    }
    Ok(Placement {
        best,
        alternatives: ranked.collect(),
        warnings,
    })
}

/// The cheapest on-demand capacity for `requirements`, for `fallback = "on_demand"`.
/// On-demand is never reclaimed, so `max_interruption_rate` does not apply;
/// `max_price_per_hour` does, to the on-demand price (what is paid). Offers without an
/// on-demand price are skipped. Ties are broken by catalog order.
pub fn place_on_demand(
    catalog: &Catalog,
    requirements: &Requirements,
    policy: &ScoringPolicy,
) -> Result<Candidate, Error> {
    let mut relaxed = requirements.filter.clone();
    relaxed.max_interruption_rate = None;
    relaxed.allow_unknown_interruption_rate = false;
    let limit = relaxed.max_spot_price.take();
    let filter = relaxed.compile(catalog, Context::Placement);
    let preferred = |row: &Row| {
        requirements
            .preferred_regions
            .iter()
            .any(|r| catalog.strings.lookup(r) == Some(row.region))
    };
    let mut best: Option<(f64, usize)> = None;
    for (position, row) in catalog.rows.iter().enumerate() {
        let price = row.on_demand_price;
        if price.is_nan() || limit.is_some_and(|l| price > l) || !filter.accepts(row) {
            continue;
        }
        let score = if preferred(row) {
            price * (1.0 - policy.preferred_region_bonus)
        } else {
            price
        };
        if best.is_none_or(|(b, _)| score < b) {
            best = Some((score, position));
        }
    }
    let Some((score, position)) = best else {
        return Err(Error::NoMatch(Box::new(explain(catalog, &filter))));
    };
    let offer = catalog.materialize(&catalog.rows[position]);
    let reason = format!(
        "on-demand {} at {}/h: the cheapest on-demand capacity that meets the requirements",
        offer.describe(),
        price(offer.on_demand_price.unwrap_or(score))
    );
    Ok(Candidate {
        savings_percent: Some(0.0),
        score,
        offer,
        reason,
    })
}

fn reason(
    rank: usize,
    score: f64,
    best_score: f64,
    offer: &Offer,
    preferred: bool,
    interruption_limit: Option<f64>,
    policy: &ScoringPolicy,
) -> String {
    let mut parts = Vec::new();
    if rank == 0 {
        parts.push(format!("lowest effective price {}", price(score)));
    } else {
        let above = if best_score > 0.0 {
            (score / best_score - 1.0) * 100.0
        } else {
            0.0
        };
        parts.push(format!(
            "rank {}: effective price {} ({:.1}% above the best)",
            rank + 1,
            price(score),
            above
        ));
    }
    match (offer.interruption_rate.expected_percent(), interruption_limit) {
        (Some(_), _) => parts.push(format!("interruption rate {}", offer.interruption_rate)),
        (None, None) => parts.push(format!(
            "interruption rate unknown (scored as {}%)",
            number(policy.unknown_interruption_percent)
        )),
        (None, Some(limit)) => parts.push(format!(
            "interruption rate unknown (scored as {}%): within max_interruption_rate = {} only because allow_unknown_interruption_rate = true",
            number(policy.unknown_interruption_percent),
            number(limit)
        )),
    }
    if preferred {
        parts.push(format!(
            "preferred region ({}% bonus)",
            number(policy.preferred_region_bonus * 100.0)
        ));
    }
    parts.join("; ")
}

/// Why nothing matched.
#[derive(Debug, Clone, PartialEq)]
pub struct NoMatch {
    pub catalog_size: usize,
    /// Each constraint on its own, in the order the user wrote the fields.
    pub exclusions: Vec<Exclusion>,
    /// Constraints whose removal alone would let offers match.
    pub near_misses: Vec<NearMiss>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Exclusion {
    pub field: String,
    pub label: String,
    /// How many catalog offers this constraint rejects on its own.
    pub excluded: usize,
    /// What the catalog offers instead (`the largest is 1,360 GiB`), when useful.
    pub hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NearMiss {
    pub field: String,
    /// Offers that would match without this constraint.
    pub would_match: usize,
    /// The closest of them (`gcp m1-ultramem-160 in us-central1 with 3,844 GiB at $…/h`).
    pub closest: String,
}

impl fmt::Display for NoMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.catalog_size == 0 {
            return f.write_str(
                "no offer matches: the price catalog is empty; no price source has succeeded yet (see the service's collector status)",
            );
        }
        write!(
            f,
            "no spot offer matches these requirements ({} offers in the catalog)",
            thousands(self.catalog_size)
        )?;
        for e in &self.exclusions {
            let amount = if e.excluded == self.catalog_size {
                format!("all {}", thousands(e.excluded))
            } else {
                thousands(e.excluded)
            };
            write!(f, "\n- {} excluded {} offers", e.label, amount)?;
            if let Some(hint) = &e.hint {
                write!(f, "; {hint}")?;
            }
        }
        if self.near_misses.is_empty() {
            write!(
                f,
                "\nNo single constraint is to blame: relax at least two of them."
            )?;
        }
        for m in &self.near_misses {
            write!(
                f,
                "\nNearest miss: without {}, {} offers would match; the closest is {}.",
                m.field,
                thousands(m.would_match),
                m.closest
            )?;
        }
        Ok(())
    }
}

fn explain(catalog: &Catalog, filter: &CompiledFilter) -> NoMatch {
    let n = filter.constraints.len();
    let mut excluded = vec![0usize; n];
    // Best row (by each constraint's own closeness) among rows failing only that constraint.
    let mut only: Vec<Option<usize>> = vec![None; n];
    let mut only_count = vec![0usize; n];
    for (position, row) in catalog.rows.iter().enumerate() {
        let failures = filter.failures(row);
        for (i, count) in excluded.iter_mut().enumerate() {
            if failures & (1 << i) != 0 {
                *count += 1;
            }
        }
        if failures.count_ones() == 1 {
            let i = failures.trailing_zeros() as usize;
            only_count[i] += 1;
            let test = &filter.constraints[i].test;
            let better = match only[i] {
                None => true,
                Some(current) => closer(test, row, &catalog.rows[current]),
            };
            if better {
                only[i] = Some(position);
            }
        }
    }
    let exclusions = filter
        .constraints
        .iter()
        .zip(&excluded)
        .filter(|(_, count)| **count > 0)
        .map(|(c, count)| Exclusion {
            field: c.field.to_string(),
            label: c.label.clone(),
            excluded: *count,
            hint: hint(catalog, &c.test),
        })
        .collect();
    let near_misses = filter
        .constraints
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let position = only[i]?;
            let offer = catalog.offer(position);
            Some(NearMiss {
                field: c.field.to_string(),
                would_match: only_count[i],
                closest: format!(
                    "{}{} at {}",
                    offer.describe(),
                    closeness_detail(&c.test, &offer),
                    price(offer.spot_price)
                ),
            })
        })
        .collect();
    NoMatch {
        catalog_size: catalog.len(),
        exclusions,
        near_misses,
    }
}

/// Whether `a` is closer than `b` to satisfying the constraint. Rows arrive in catalog
/// order, so on equal closeness the cheaper one, already kept, stays.
fn closer(test: &Test, a: &Row, b: &Row) -> bool {
    match test {
        Test::MinVcpus(_) => a.vcpus > b.vcpus,
        Test::MinMemory(_) => a.memory_gib > b.memory_gib,
        Test::MinGpus(_) => a.gpu_count > b.gpu_count,
        Test::MaxInterruption { .. } => a.interruption_max < b.interruption_max,
        // Cheapest, which is the first seen.
        _ => false,
    }
}

fn closeness_detail(test: &Test, offer: &Offer) -> String {
    match test {
        Test::MinVcpus(_) => format!(" with {} vCPUs", number(offer.vcpus)),
        Test::MinMemory(_) => format!(" with {} GiB", thousands_f(offer.memory_gib)),
        Test::MinGpus(_) | Test::Gpu { .. } => match &offer.gpu {
            Some(gpu) => format!(" with {} × {}", gpu.count, gpu.name),
            None => " with no GPU".to_string(),
        },
        Test::MaxInterruption { .. } => format!(" (interruption rate {})", offer.interruption_rate),
        _ => String::new(),
    }
}

fn thousands_f(value: f64) -> String {
    if value.fract() == 0.0 && value >= 0.0 {
        thousands(value as usize)
    } else {
        number(value)
    }
}

/// What the whole catalog offers for this constraint.
fn hint(catalog: &Catalog, test: &Test) -> Option<String> {
    let rows = &catalog.rows;
    match test {
        Test::MinVcpus(_) => rows
            .iter()
            .map(|r| r.vcpus)
            .reduce(f64::max)
            .map(|v| format!("the largest has {} vCPUs", number(v))),
        Test::MinMemory(_) => rows
            .iter()
            .map(|r| r.memory_gib)
            .reduce(f64::max)
            .map(|v| format!("the largest is {} GiB", thousands_f(v))),
        Test::MinGpus(_) => rows
            .iter()
            .map(|r| r.gpu_count)
            .max()
            .map(|v| format!("the most GPUs on one offer is {v}")),
        Test::Gpu { .. } => {
            let mut names: Vec<&str> = rows
                .iter()
                .filter(|r| r.has_gpu())
                .map(|r| catalog.strings.get(r.gpu_name))
                .collect();
            names.sort_unstable();
            names.dedup();
            Some(format!("GPUs in the catalog: {}", names.join(", ")))
        }
        Test::MaxSpotPrice(_) => rows
            .first()
            .map(|r| format!("the cheapest is {}", price(r.spot_price))),
        Test::MaxInterruption { allow_unknown, .. } => {
            let lowest = rows
                .iter()
                .filter(|r| r.interruption_max != crate::catalog::UNKNOWN_RATE)
                .min_by_key(|r| r.interruption_max);
            match lowest {
                Some(r) => Some(format!("the lowest published rate is {}", r.interruption())),
                None if !allow_unknown => Some(
                    "no offer has a published interruption rate; set allow_unknown_interruption_rate = true to accept them".to_string(),
                ),
                None => None,
            }
        }
        Test::Regions(set) => unknown_names_hint(catalog, set, |r| r.region, "region"),
        Test::InstanceTypes(set) => {
            unknown_names_hint(catalog, set, |r| r.instance_type, "instance type")
        }
        Test::ExcludeRegions(_) | Test::Clouds(_) | Test::Architecture(_) => None,
    }
}

/// For name lists where no requested name exists in the catalog: say so.
fn unknown_names_hint(
    catalog: &Catalog,
    set: &[bool],
    key: impl Fn(&Row) -> u32,
    what: &str,
) -> Option<String> {
    let any_known = catalog.rows.iter().any(|r| set[key(r) as usize]);
    (!any_known).then(|| format!("none of these names is a {what} in the catalog"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::tests::offer;
    use crate::cloud::Cloud;
    use crate::filter::OfferFilter;
    use crate::offer::InterruptionRate;

    fn sample() -> Catalog {
        Catalog::build(vec![
            offer(Cloud::Aws, "us-east-1", "m5.xlarge", 4.0, 16.0, 0.060),
            offer(Cloud::Aws, "eu-west-1", "m5.xlarge", 4.0, 16.0, 0.050),
            offer(Cloud::Gcp, "us-central1", "n2-standard-4", 4.0, 16.0, 0.045),
            offer(Cloud::Azure, "eastus", "Standard_D4s_v5", 4.0, 16.0, 0.045),
            offer(Cloud::Gcp, "us-central1", "e2-small", 2.0, 2.0, 0.005),
            offer(
                Cloud::Gcp,
                "us-central1",
                "m1-ultramem-40",
                40.0,
                961.0,
                1.9,
            ),
        ])
    }

    fn needs(min_vcpus: f64, min_memory_gib: f64) -> Requirements {
        Requirements {
            filter: OfferFilter {
                min_vcpus: Some(min_vcpus),
                min_memory_gib: Some(min_memory_gib),
                ..Default::default()
            },
            preferred_regions: vec![],
        }
    }

    #[test]
    fn without_interruption_data_the_cheapest_match_wins_with_deterministic_ties() {
        let placement = place(&sample(), &needs(4.0, 16.0), 5, &ScoringPolicy::default()).unwrap();
        // Two offers tie at 0.045: azure sorts before gcp in catalog order.
        assert_eq!(placement.best.offer.instance_type, "Standard_D4s_v5");
        let order: Vec<&str> = placement
            .alternatives
            .iter()
            .map(|c| c.offer.instance_type.as_str())
            .collect();
        assert_eq!(
            order,
            vec!["n2-standard-4", "m5.xlarge", "m5.xlarge", "m1-ultramem-40"]
        );
        assert_eq!(placement.alternatives[1].offer.region, "eu-west-1");
        assert!((placement.best.savings_percent.unwrap() - 66.666).abs() < 0.01);
    }

    #[test]
    fn on_demand_placement_ignores_the_interruption_limit_and_prices_on_demand() {
        let mut cheap_spot = offer(Cloud::Aws, "us-east-1", "cheap-spot", 4.0, 16.0, 0.010);
        cheap_spot.on_demand_price = Some(0.200);
        cheap_spot.interruption_rate = InterruptionRate::from_aws_bucket(4);
        let mut cheap_od = offer(Cloud::Gcp, "us-central1", "cheap-od", 4.0, 16.0, 0.050);
        cheap_od.on_demand_price = Some(0.150);
        cheap_od.interruption_rate = InterruptionRate::from_aws_bucket(4);
        let mut unpriced = offer(Cloud::Azure, "eastus", "unpriced", 4.0, 16.0, 0.001);
        unpriced.on_demand_price = None;
        let catalog = Catalog::build(vec![cheap_spot, cheap_od, unpriced]);
        let mut req = needs(4.0, 16.0);
        // No spot offer passes a 1 % limit.
        req.filter.max_interruption_rate = Some(1.0);
        assert!(place(&catalog, &req, 0, &ScoringPolicy::default()).is_err());
        let od = place_on_demand(&catalog, &req, &ScoringPolicy::default()).unwrap();
        assert_eq!(od.offer.instance_type, "cheap-od");
        assert!((od.score - 0.150).abs() < 1e-12);
        assert!(od.reason.contains("on-demand"), "{}", od.reason);
        // The price limit is on what is paid: the on-demand price.
        req.filter.max_spot_price = Some(0.10);
        assert!(matches!(
            place_on_demand(&catalog, &req, &ScoringPolicy::default()),
            Err(Error::NoMatch(_))
        ));
    }

    #[test]
    fn alternatives_are_capped_by_the_request() {
        let placement = place(&sample(), &needs(1.0, 1.0), 2, &ScoringPolicy::default()).unwrap();
        assert_eq!(placement.alternatives.len(), 2);
        assert_eq!(placement.best.offer.instance_type, "e2-small");
    }

    #[test]
    fn a_preferred_region_wins_within_the_bonus_only() {
        let mut req = needs(4.0, 16.0);
        req.preferred_regions = vec!["eu-west-1".into()];
        let placement = place(&sample(), &req, 0, &ScoringPolicy::default()).unwrap();
        // 0.050 × 0.9 = 0.045 ties with 0.045 and sorts later in catalog order: it must
        // not win on the tie; with a 12 % bonus it wins.
        assert_eq!(placement.best.offer.instance_type, "Standard_D4s_v5");
        let policy = ScoringPolicy {
            preferred_region_bonus: 0.12,
            ..Default::default()
        };
        let placement = place(&sample(), &req, 0, &policy).unwrap();
        assert_eq!(placement.best.offer.region, "eu-west-1");
        assert!(placement.best.reason.contains("preferred region"));
    }

    #[test]
    fn interruption_risk_raises_the_effective_price() {
        let mut risky = offer(Cloud::Aws, "us-east-1", "cheap-risky", 4.0, 16.0, 0.040);
        risky.interruption_rate = InterruptionRate::from_aws_bucket(4); // >20%, expected 60
        let mut safe = offer(Cloud::Aws, "us-east-1", "safe", 4.0, 16.0, 0.044);
        safe.interruption_rate = InterruptionRate::from_aws_bucket(0); // <5%, expected 2.5
        let catalog = Catalog::build(vec![risky, safe]);
        let placement = place(&catalog, &needs(4.0, 16.0), 1, &ScoringPolicy::default()).unwrap();
        assert_eq!(placement.best.offer.instance_type, "safe");
        assert!((placement.best.score - 0.044 * 1.025).abs() < 1e-12);
        assert!((placement.alternatives[0].score - 0.040 * 1.6).abs() < 1e-12);
    }

    #[test]
    fn an_interruption_limit_means_what_the_user_wrote() {
        let mut rated = offer(Cloud::Aws, "us-east-1", "rated", 4.0, 16.0, 0.050);
        rated.interruption_rate = InterruptionRate::from_aws_bucket(0); // <5%
        let unrated = offer(Cloud::Gcp, "us-central1", "unrated", 4.0, 16.0, 0.030);
        let catalog = Catalog::build(vec![rated, unrated]);
        let mut req = needs(4.0, 16.0);
        req.filter.max_interruption_rate = Some(5.0);

        // By default an unknown rate does not pass a limit, and nothing needs a warning.
        let strict = place(&catalog, &req, 5, &ScoringPolicy::default()).unwrap();
        assert_eq!(strict.best.offer.instance_type, "rated");
        assert!(strict.alternatives.is_empty());
        assert!(
            strict.best.reason.contains("interruption rate <5%"),
            "{}",
            strict.best.reason
        );
        assert!(strict.warnings.is_empty());

        // Allowed explicitly, the cheaper unrated offer wins, and both its reason and a
        // warning say it is within the limit only because unknown rates are allowed.
        req.filter.allow_unknown_interruption_rate = true;
        let allowed = place(&catalog, &req, 5, &ScoringPolicy::default()).unwrap();
        assert_eq!(allowed.best.offer.instance_type, "unrated");
        assert!(
            allowed.best.reason.contains("within max_interruption_rate = 5 only because allow_unknown_interruption_rate = true"),
            "{}",
            allowed.best.reason
        );
        assert!(!allowed.best.reason.contains("assumed"));
        assert_eq!(allowed.warnings.len(), 1);
        assert!(
            allowed.warnings[0].contains("gcp unrated in us-central1"),
            "{}",
            allowed.warnings[0]
        );

        // Without a limit there is nothing to warn about.
        req.filter.max_interruption_rate = None;
        let free = place(&catalog, &req, 5, &ScoringPolicy::default()).unwrap();
        assert!(free.warnings.is_empty());
        assert!(free
            .best
            .reason
            .contains("interruption rate unknown (scored as 10%)"));
    }

    #[test]
    fn early_exit_matches_a_full_scan() {
        // Scores that invert price order only within the bonus must still be found.
        let offers: Vec<_> = (0..500)
            .map(|i| {
                let region = if i % 7 == 0 { "pref" } else { "other" };
                offer(
                    Cloud::Aws,
                    region,
                    &format!("t{i}"),
                    4.0,
                    16.0,
                    1.0 + f64::from(i) * 0.001,
                )
            })
            .collect();
        let catalog = Catalog::build(offers);
        let mut req = needs(1.0, 1.0);
        req.preferred_regions = vec!["pref".into()];
        let policy = ScoringPolicy::default();
        let placement = place(&catalog, &req, 10, &policy).unwrap();
        let mut all: Vec<(f64, String)> = catalog
            .iter()
            .map(|o| {
                let bonus = if o.region == "pref" { 0.9 } else { 1.0 };
                (o.spot_price * 1.1 * bonus, o.instance_type)
            })
            .collect();
        all.sort_by(|a, b| a.0.total_cmp(&b.0));
        let got: Vec<String> = std::iter::once(&placement.best)
            .chain(&placement.alternatives)
            .map(|c| c.offer.instance_type.clone())
            .collect();
        let want: Vec<String> = all.into_iter().take(11).map(|(_, t)| t).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn no_match_names_the_constraint_count_and_nearest_miss() {
        let err = place(&sample(), &needs(4.0, 2048.0), 5, &ScoringPolicy::default()).unwrap_err();
        let Error::NoMatch(explanation) = err else {
            panic!("expected NoMatch");
        };
        let text = explanation.to_string();
        assert!(
            text.contains("min_memory_gib = 2048 excluded all 6 offers; the largest is 961 GiB"),
            "{text}"
        );
        assert_eq!(explanation.near_misses.len(), 1);
        assert_eq!(explanation.near_misses[0].field, "min_memory_gib");
        assert_eq!(explanation.near_misses[0].would_match, 5);
        assert!(
            text.contains("gcp m1-ultramem-40 in us-central1 with 961 GiB"),
            "{text}"
        );
    }

    #[test]
    fn no_match_with_two_binding_constraints_says_so() {
        let mut req = needs(100.0, 2048.0);
        req.filter.clouds = vec![Cloud::Aws];
        let Error::NoMatch(explanation) =
            place(&sample(), &req, 5, &ScoringPolicy::default()).unwrap_err()
        else {
            panic!("expected NoMatch");
        };
        assert!(explanation.near_misses.is_empty());
        assert_eq!(explanation.exclusions.len(), 3);
        assert!(explanation.to_string().contains("relax at least two"));
    }

    #[test]
    fn an_empty_catalog_is_explained() {
        let err = place(
            &Catalog::default(),
            &needs(1.0, 1.0),
            5,
            &ScoringPolicy::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("catalog is empty"));
    }
}
