//! Pricing benchmarks: snapshot load, index memory, placement and listing over the
//! bundled snapshot and a synthetic 1,000,000-offer catalog, and the naive approach of
//! the first design (SQL `ORDER BY spot_price LIMIT 10`) over the same rows.
//!
//! `cargo bench -p computearbitrage-orchestrator --bench placement` runs the full set and prints a
//! Markdown table (docs/benchmarks.md holds a run). Under `cargo test` (no `--bench`
//! argument) it runs a quick smoke pass with a 20,000-offer synthetic catalog.

use computearbitrage_core::offer::Gpu;
use computearbitrage_core::{
    place, Architecture, Catalog, Cloud, InterruptionRate, Offer, OfferFilter, Requirements,
    ScoringPolicy,
};
use computearbitrage_orchestrator::pricing::snapshot::bundled_offers;
use computearbitrage_store::{SqliteStore, Store};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live heap bytes, to measure what the index retains.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Stats {
    p50: Duration,
    p99: Duration,
}

/// Runs `f` until `budget` is spent (at least 20 times), after a short warm-up.
fn measure(budget: Duration, mut f: impl FnMut()) -> Stats {
    for _ in 0..3 {
        f();
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    while samples.len() < 20 || (start.elapsed() < budget && samples.len() < 100_000) {
        let t = Instant::now();
        f();
        samples.push(t.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// A deterministic synthetic catalog: `n` unique (cloud, region, zone, type) offers
/// with realistic size, GPU and price spread.
fn synthetic(n: usize) -> impl Iterator<Item = Offer> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n).map(move |i| {
        let cloud = Cloud::ALL[i % 3];
        let type_id = (i / 3) % 1000;
        let region_id = (i / 3000) % 100;
        let zone_id = i / 300_000;
        let vcpus = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 96.0][type_id % 8];
        let memory = vcpus * [1.0, 2.0, 4.0, 8.0][(type_id / 8) % 4];
        let gpu = (type_id % 20 == 0).then(|| Gpu {
            name: ["T4", "L4", "A100", "H100"][(type_id / 20) % 4].to_string(),
            original_name: ["T4", "nvidia-l4", "nvidia-tesla-a100", "nvidia-h100-80gb"]
                [(type_id / 20) % 4]
                .to_string(),
            count: [1, 2, 4, 8][(type_id / 80) % 4],
        });
        let jitter = 0.5 + (next() % 1000) as f64 / 1000.0;
        let gpu_price = gpu
            .as_ref()
            .map(|g| f64::from(g.count) * 0.8)
            .unwrap_or(0.0);
        let spot = (vcpus * 0.012 + memory * 0.001 + gpu_price) * jitter;
        Offer {
            cloud,
            region: format!("{}-region-{region_id}", cloud.as_str()),
            zone: format!("z{zone_id}"),
            instance_type: format!("type-{type_id}"),
            vcpus,
            memory_gib: memory,
            architecture: if type_id % 7 == 0 {
                Architecture::Arm64
            } else {
                Architecture::X86_64
            },
            gpu,
            on_demand_price: Some(spot * 3.0),
            spot_price: spot,
            interruption_rate: if cloud == Cloud::Aws {
                InterruptionRate::from_aws_bucket((next() % 5) as u8)
            } else {
                InterruptionRate::Unknown
            },
            interruption_source: if cloud == Cloud::Aws {
                "synthetic advisor".into()
            } else {
                String::new()
            },
            observed_at: 1_790_000_000,
            source: "synthetic".into(),
        }
    })
}

fn typical() -> Requirements {
    Requirements {
        filter: OfferFilter {
            min_vcpus: Some(4.0),
            min_memory_gib: Some(16.0),
            ..Default::default()
        },
        preferred_regions: Vec::new(),
    }
}

fn selective() -> Requirements {
    Requirements {
        filter: OfferFilter {
            gpu_name: Some("H100".into()),
            min_gpus: Some(8),
            max_interruption_rate: Some(10.0),
            ..Default::default()
        },
        preferred_regions: vec!["aws-region-7".into()],
    }
}

struct Row {
    name: String,
    p50: String,
    p99: String,
}

fn bench_catalog(label: &str, catalog: &Catalog, budget: Duration, rows: &mut Vec<Row>) {
    let policy = ScoringPolicy::default();
    for (what, req) in [
        ("typical (≥4 vCPU, ≥16 GiB)", typical()),
        ("selective (8×H100, ≤10 %, preferred region)", selective()),
    ] {
        let s = measure(budget, || {
            let p = place(catalog, &req, 5, &policy);
            std::hint::black_box(&p);
        });
        rows.push(Row {
            name: format!("{label}: placement, {what}"),
            p50: fmt(s.p50),
            p99: fmt(s.p99),
        });
    }
    let filter = OfferFilter {
        min_vcpus: Some(4.0),
        ..Default::default()
    };
    let s = measure(budget, || {
        let page = catalog.list(&filter, None, 100).unwrap();
        std::hint::black_box(&page);
    });
    rows.push(Row {
        name: format!("{label}: ListOffers first page of 100 (≥4 vCPU)"),
        p50: fmt(s.p50),
        p99: fmt(s.p99),
    });
}

fn bench_naive_sql(
    label: &str,
    offers: Vec<Offer>,
    budget: Duration,
    rows: &mut Vec<Row>,
) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("naive.db");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = SqliteStore::open(&path).unwrap();
    runtime
        .block_on(store.replace_offers("bench", offers))
        .unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT provider, region, zone, instance_type, spot_price FROM offers
             WHERE vcpus >= ?1 AND memory_gib >= ?2 ORDER BY spot_price LIMIT 10",
        )
        .unwrap();
    let s = measure(budget, || {
        let rows: Vec<(String, f64)> = stmt
            .query_map((4.0, 16.0), |r| {
                Ok((r.get::<_, String>(3)?, r.get::<_, f64>(4)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        std::hint::black_box(rows);
    });
    rows.push(Row {
        name: format!("{label}: naive SQLite `ORDER BY spot_price LIMIT 10` (≥4 vCPU, ≥16 GiB)"),
        p50: fmt(s.p50),
        p99: fmt(s.p99),
    });
    s.p50
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let budget = if full {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(50)
    };
    let synthetic_size = if full { 1_000_000 } else { 20_000 };
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    // Snapshot load at start: parse the bundled CSVs and build the index.
    let load = measure(if full { Duration::from_secs(5) } else { budget }, || {
        let catalog = Catalog::build(bundled_offers().unwrap());
        std::hint::black_box(&catalog);
    });
    rows.push(Row {
        name: "bundled snapshot: parse CSV + build index".into(),
        p50: fmt(load.p50),
        p99: fmt(load.p99),
    });

    let snapshot_offers = bundled_offers().unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    let snapshot = Catalog::build(snapshot_offers.clone());
    let snapshot_bytes = LIVE.load(Ordering::Relaxed) - before;
    notes.push(format!(
        "bundled snapshot index: {} offers, {} bytes/offer",
        snapshot.len(),
        snapshot_bytes / snapshot.len() as isize
    ));
    bench_catalog("snapshot", &snapshot, budget, &mut rows);
    let typical_best = place(&snapshot, &typical(), 9, &ScoringPolicy::default()).unwrap();
    let snapshot_place = measure(budget, || {
        std::hint::black_box(place(&snapshot, &typical(), 9, &ScoringPolicy::default()).unwrap());
    });
    let naive = bench_naive_sql("snapshot", snapshot_offers, budget, &mut rows);
    notes.push(format!(
        "snapshot: top-10 placement p50 {} vs naive SQL p50 {}: {:.0}× faster (best: {})",
        fmt(snapshot_place.p50),
        fmt(naive),
        naive.as_secs_f64() / snapshot_place.p50.as_secs_f64(),
        typical_best.best.offer.describe()
    ));

    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let big = Catalog::build(synthetic(synthetic_size));
    let build_time = started.elapsed();
    let big_bytes = LIVE.load(Ordering::Relaxed) - before;
    notes.push(format!(
        "synthetic index: {} offers built in {}, {} bytes/offer",
        big.len(),
        fmt(build_time),
        big_bytes / big.len() as isize
    ));
    let label = format!("synthetic {}", big.len());
    bench_catalog(&label, &big, budget, &mut rows);
    let big_place = measure(budget, || {
        std::hint::black_box(place(&big, &typical(), 9, &ScoringPolicy::default()).unwrap());
    });
    let naive = bench_naive_sql(
        &label,
        synthetic(synthetic_size).collect(),
        budget,
        &mut rows,
    );
    notes.push(format!(
        "{label}: top-10 placement p50 {} vs naive SQL p50 {}: {:.0}× faster",
        fmt(big_place.p50),
        fmt(naive),
        naive.as_secs_f64() / big_place.p50.as_secs_f64()
    ));

    println!("| benchmark | p50 | p99 |\n|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.name, r.p50, r.p99);
    }
    println!();
    for n in &notes {
        println!("- {n}");
    }
    // Sanity: the benchmark measured real answers.
    assert!(snapshot.len() > 9_000);
    assert_eq!(big.len(), synthetic_size, "synthetic offers are unique");
}
