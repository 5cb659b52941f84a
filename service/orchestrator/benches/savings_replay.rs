//! The savings replay: a deterministic simulation over real price histories
//! (`../shared/data/price-history/`) with interruptions drawn per offer from AWS's real
//! Spot Instance Advisor buckets (`../shared/data/interruption/`), for a 24 h job and a
//! 30-day service. It compares what a workload pays and loses here (checkpoint on the
//! notice, move at once, `core::rebalance` on price moves) with always-on-demand and
//! with restart-from-scratch (SkyPilot's default). The assumptions are constants below
//! and in docs/benchmarks.md; the numbers are printed, not asserted.
//!
//! `cargo bench -p computearbitrage-orchestrator --bench savings_replay` (as a test,
//! `cargo test --benches`, it runs the same replay once).

use computearbitrage_core::offer::InterruptionRate;
use computearbitrage_core::rebalance::{RebalancePolicy, RebalanceWatch};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A replacement VM takes this long to boot and start the workload (real clouds: about
/// a minute and a half).
const BOOT_SECONDS: f64 = 90.0;
/// Restoring the checkpoint on the replacement.
const RESTORE_SECONDS: f64 = 10.0;
/// The final checkpoint fits the notice window (it takes well under the shortest
/// window, GCP's and Azure's 30 s, less the 5 s safety margin), so no work is lost.
const CHECKPOINT_SECONDS: f64 = 20.0;
/// GCP publishes no interruption rate: every GCP pool is assumed in AWS's "10-15 %"
/// bucket (12.5 % a month expected).
const ASSUMED_BUCKET: u8 = 2;
/// A reclaimed pool is avoided this long (`migration.cooldown_seconds`).
const COOLDOWN_SECONDS: i64 = 3600;
const REBALANCE: RebalancePolicy = RebalancePolicy {
    min_savings_percent: 20.0,
    min_duration: Duration::from_secs(6 * 3600),
};
const HOURS_PER_MONTH: f64 = 730.0;

/// A stepwise price series: each price holds until the next point.
#[derive(Clone, Default)]
struct Series(Vec<(i64, f64)>);

impl Series {
    fn at(&self, t: i64) -> f64 {
        let i = self.0.partition_point(|(at, _)| *at <= t);
        self.0[i.saturating_sub(1)].1
    }
    fn sort(&mut self) {
        self.0.sort_by_key(|(t, _)| *t);
    }
}

struct Pool {
    spot: Series,
    on_demand: Series,
    /// Interruptions per hour (from the monthly rate).
    hazard: f64,
    notice_seconds: f64,
}

struct Scenario {
    name: &'static str,
    pools: Vec<Pool>,
    from: i64,
    to: i64,
}

/// SplitMix64: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Unix seconds of `YYYY-MM-DD[T ]HH:MM:SS…` (UTC).
fn unix(text: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| text.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn hazard(rate: InterruptionRate) -> f64 {
    let monthly = rate.expected_percent().unwrap_or(12.5) / 100.0;
    -(1.0 - monthly).ln() / HOURS_PER_MONTH
}

fn rows(path: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

/// GCP: the 4 vCPU / 16 GiB x86 machine types in three regions, 2023-05 → 2026-07.
fn gcp(dir: &Path) -> Scenario {
    const TYPES: [&str; 9] = [
        "e2-standard-4",
        "n2-standard-4",
        "n2d-standard-4",
        "n4-standard-4",
        "t2d-standard-4",
        "c2-standard-4",
        "c2d-standard-4",
        "c3-standard-4",
        "c3d-standard-4",
    ];
    let mut pools: std::collections::BTreeMap<String, Pool> = Default::default();
    let (mut from, mut to) = (i64::MAX, i64::MIN);
    for r in rows(&dir.join("gcp_spot_changepoints_us-central1_us-east1_europe-west4.csv")) {
        if !TYPES.contains(&r[1].as_str()) {
            continue;
        }
        let (Some(t), Ok(od), Ok(spot)) = (unix(&r[0]), r[3].parse(), r[4].parse()) else {
            continue;
        };
        let pool = pools
            .entry(format!("gcp {} {}", r[1], r[2]))
            .or_insert_with(|| Pool {
                spot: Series::default(),
                on_demand: Series::default(),
                hazard: hazard(InterruptionRate::from_aws_bucket(ASSUMED_BUCKET)),
                notice_seconds: 30.0,
            });
        pool.spot.0.push((t, spot));
        pool.on_demand.0.push((t, od));
        from = from.min(t);
        to = to.max(t);
    }
    let mut pools: Vec<Pool> = pools.into_values().collect();
    for p in &mut pools {
        p.spot.sort();
        p.on_demand.sort();
        // Pools that appear later in the history start from their first price.
        from = from.max(p.spot.0[0].0.min(from));
    }
    // Only pools priced from the start take part (one requirement, one choice set).
    let start = pools.iter().map(|p| p.spot.0[0].0).min().unwrap_or(from);
    pools.retain(|p| p.spot.0[0].0 == start);
    Scenario {
        name: "GCP, 4 vCPU / 16 GiB, us-central1 + us-east1 + europe-west4 (2023-05 → 2026-07)",
        pools,
        from: start,
        to,
    }
}

/// AWS: c5a.2xlarge in five us-east-1 zones, 2023-11-11 → 2023-12-30, interruption rate
/// from the real advisor bucket, on-demand from the bundled snapshot's list price.
fn aws(dir: &Path, advisor: &Path) -> Scenario {
    let rates = computearbitrage_core::spot_advisor::parse(&std::fs::read(advisor).unwrap())
        .expect("the advisor feed parses");
    let rate = rates
        .get("us-east-1", "c5a.2xlarge")
        .unwrap_or(InterruptionRate::from_aws_bucket(ASSUMED_BUCKET));
    // us-east-1 Linux on-demand list price of c5a.2xlarge (USD per hour).
    const ON_DEMAND: f64 = 0.308;
    let mut pools: std::collections::BTreeMap<String, Pool> = Default::default();
    for r in rows(&dir.join("aws_c5a.2xlarge_us-east-1_2023-11-11_2023-12-30.csv")) {
        let (Some(t), Ok(spot)) = (unix(&r[0]), r[3].parse()) else {
            continue;
        };
        let pool = pools.entry(r[4].clone()).or_insert_with(|| Pool {
            spot: Series::default(),
            on_demand: Series(vec![(0, ON_DEMAND)]),
            hazard: hazard(rate),
            notice_seconds: 120.0,
        });
        pool.spot.0.push((t, spot));
    }
    let mut pools: Vec<Pool> = pools.into_values().collect();
    for p in &mut pools {
        p.spot.sort();
    }
    let from = pools.iter().map(|p| p.spot.0[0].0).max().unwrap();
    let to = pools
        .iter()
        .map(|p| p.spot.0.last().unwrap().0)
        .min()
        .unwrap();
    Scenario {
        name: "AWS, c5a.2xlarge (8 vCPU / 16 GiB), five us-east-1 zones (2023-11 → 2023-12)",
        pools,
        from,
        to,
    }
}

#[derive(Default, Clone, Copy)]
struct Outcome {
    cost: f64,
    on_demand_cost: f64,
    lost_hours: f64,
    interruptions: u32,
    downtime_seconds: f64,
    moves: u32,
    hours: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Checkpoint on the notice, move at once, rebalance on price moves.
    Ours,
    /// The same, without rebalancing.
    NoRebalance,
    /// Restart from scratch on every interruption (SkyPilot's default).
    Scratch,
}

const STEP: i64 = 300;

/// One run from `start`: a job of `work_hours`, or a service for `service_hours`.
fn simulate(
    s: &Scenario,
    start: i64,
    work: Option<f64>,
    service_hours: f64,
    mode: Mode,
    seed: u64,
) -> Outcome {
    let mut rng = Rng(seed);
    let cheapest = |t: i64, avoid: &[(usize, i64)]| {
        (0..s.pools.len())
            .filter(|i| !avoid.iter().any(|(a, until)| a == i && *until > t))
            .min_by(|a, b| s.pools[*a].spot.at(t).total_cmp(&s.pools[*b].spot.at(t)))
            .unwrap()
    };
    let od = (0..s.pools.len())
        .min_by(|a, b| {
            s.pools[*a]
                .on_demand
                .at(start)
                .total_cmp(&s.pools[*b].on_demand.at(start))
        })
        .unwrap();
    let mut out = Outcome::default();
    let mut cooldown: Vec<(usize, i64)> = Vec::new();
    let mut on = cheapest(start, &cooldown);
    let mut watch = RebalanceWatch::new();
    let mut progress = 0.0_f64;
    let mut down_until = start;
    let mut t = start;
    let dt_h = STEP as f64 / 3600.0;
    loop {
        let done = match work {
            Some(w) => progress >= w,
            None => (t - start) as f64 / 3600.0 >= service_hours,
        };
        if done || t >= s.to {
            break;
        }
        let pool = &s.pools[on];
        out.cost += pool.spot.at(t) * dt_h;
        if t >= down_until {
            progress += dt_h;
        }
        if rng.next() < 1.0 - (-pool.hazard * dt_h).exp() {
            out.interruptions += 1;
            cooldown.push((on, t + COOLDOWN_SECONDS));
            let next = cheapest(t, &cooldown);
            // The replacement is started at the notice: both run through the window.
            out.cost += s.pools[next].spot.at(t) * pool.notice_seconds.min(BOOT_SECONDS) / 3600.0;
            let gap = (BOOT_SECONDS - pool.notice_seconds).max(0.0) + RESTORE_SECONDS;
            if mode == Mode::Scratch {
                out.lost_hours += progress;
                progress = 0.0;
            } else {
                assert!(CHECKPOINT_SECONDS <= pool.notice_seconds - 5.0);
            }
            out.downtime_seconds += gap;
            down_until = t + gap as i64;
            on = next;
            watch.reset();
        } else if mode == Mode::Ours {
            let best = cheapest(t, &cooldown);
            let offer = (best != on).then(|| (best, s.pools[best].spot.at(t)));
            if let Some(to) = watch.observe(&REBALANCE, t, pool.spot.at(t), offer) {
                // Make-before-break: the new one boots while the old one serves.
                out.cost += s.pools[to].spot.at(t) * BOOT_SECONDS / 3600.0;
                out.moves += 1;
                on = to;
            }
        }
        out.on_demand_cost += s.pools[od].on_demand.at(t) * dt_h;
        t += STEP;
    }
    out.hours = (t - start) as f64 / 3600.0;
    // The job on on-demand takes exactly its work; the service the same hours.
    if let Some(w) = work {
        let mut c = 0.0;
        let mut u = start;
        while ((u - start) as f64 / 3600.0) < w {
            c += s.pools[od].on_demand.at(u) * dt_h;
            u += STEP;
        }
        out.on_demand_cost = c;
    }
    out
}

fn report(s: &Scenario, label: &str, work: Option<f64>, hours: f64, starts: usize) {
    let span = s.to - s.from - (hours * 3600.0 * 1.5) as i64;
    if span <= 0 {
        println!("| {} | {label} | (history too short) |", s.name);
        return;
    }
    for mode in [Mode::Ours, Mode::NoRebalance, Mode::Scratch] {
        let mut sum = Outcome::default();
        for i in 0..starts {
            let start = s.from + span * i as i64 / starts as i64;
            let o = simulate(s, start, work, hours, mode, 0x5EED + i as u64);
            sum.cost += o.cost;
            sum.on_demand_cost += o.on_demand_cost;
            sum.lost_hours += o.lost_hours;
            sum.interruptions += o.interruptions;
            sum.downtime_seconds += o.downtime_seconds;
            sum.moves += o.moves;
            sum.hours += o.hours;
        }
        let n = starts as f64;
        let per = |x: f64| x / n;
        println!(
            "| {label} | {} | ${:.2} | ${:.2} | {:.1} % | {:.2} | {:.2} | {:.2} | {:.0} s | {:.1} h |",
            match mode {
                Mode::Ours => "checkpoint + move + rebalance",
                Mode::NoRebalance => "checkpoint + move",
                Mode::Scratch => "restart from scratch",
            },
            per(sum.cost),
            per(sum.on_demand_cost),
            (1.0 - sum.cost / sum.on_demand_cost) * 100.0,
            per(f64::from(sum.interruptions)),
            per(f64::from(sum.moves)),
            per(sum.lost_hours),
            if sum.interruptions == 0 { 0.0 } else { sum.downtime_seconds / f64::from(sum.interruptions) },
            per(sum.hours),
        );
    }
}

fn shared() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    dir.join("price-history").is_dir().then_some(dir)
}

fn main() {
    let Some(data) = shared() else {
        println!("savings replay: ../shared/data is not beside the repository; skipped");
        return;
    };
    let history = data.join("price-history");
    let advisor = data.join("interruption/aws-spot-advisor-data.json");
    let mut stress = aws(&history, &advisor);
    // The same prices with every pool in AWS's worst bucket, "> 20 %" a month: where
    // checkpoints against restarting from scratch show.
    stress.name = "AWS stress: the same prices, every pool in the \"> 20 %\" bucket";
    for p in &mut stress.pools {
        p.hazard = hazard(InterruptionRate::from_aws_bucket(4));
    }
    let scenarios = [gcp(&history), aws(&history, &advisor), stress];
    for s in &scenarios {
        println!("\n{} ({} pools)\n", s.name, s.pools.len());
        println!("| run | policy | paid | always on-demand | cheaper | interruptions | rebalancing moves | work lost | downtime per interruption | wall time |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        report(s, "24 h job", Some(24.0), 24.0, 200);
        report(s, "30-day service", None, 720.0, 20);
    }
    println!("\nComplete checkpoints lost: 0 (every final checkpoint fits its notice window: {CHECKPOINT_SECONDS} s ≤ window − 5 s).");
}
