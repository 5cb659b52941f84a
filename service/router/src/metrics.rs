//! Per-workload Prometheus metrics, kept in atomics and rendered in the text format.
//! Requests that never reach a workload (401, 404, bad input) count under the
//! workload label `-`, so a client cannot grow the label set with made-up ids.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The label of requests that were not routed to a workload.
pub const UNROUTED: &str = "-";

/// Counter shards per workload. Router threads add to their own shard, so a request
/// does not bounce a shared cache line between cores; rendering sums the shards.
const SHARDS: usize = 8;

/// The shard of the calling thread, assigned round-robin on first use.
fn shard_index() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// One shard of a workload's counters, on cache lines of its own.
#[derive(Default)]
#[repr(align(128))]
pub struct Counters {
    /// By status class: 1xx … 5xx.
    responses: [AtomicU64; 5],
    /// Per bucket, not cumulative: a request increments one counter, and rendering
    /// sums them.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_from_backend: AtomicU64,
    pub active_http: AtomicI64,
    pub active_tcp: AtomicI64,
    pub tcp_connections: AtomicU64,
    /// TCP connections refused: outside `tcp_allowed_cidrs`, or past the cap.
    pub tcp_refused: AtomicU64,
    /// HTTP requests answered 429 by the per-workload rate limit.
    pub rate_limited: AtomicU64,
}

#[derive(Default)]
pub struct WorkloadMetrics {
    shards: [Counters; SHARDS],
    /// The workload's request bucket, when the router limits requests per workload.
    bucket: std::sync::Mutex<Option<crate::limits::Bucket>>,
}

impl WorkloadMetrics {
    /// Takes one request from the workload's bucket under `limit`; the wait when it is
    /// empty.
    pub fn admit(&self, limit: crate::limits::RateLimit) -> Result<(), Duration> {
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        bucket
            .get_or_insert_with(|| crate::limits::Bucket::full(limit))
            .take(limit, std::time::Instant::now())
    }

    /// The calling thread's shard, to count on.
    pub fn local(&self) -> &Counters {
        &self.shards[shard_index()]
    }

    /// Counts a response and the time to its headers.
    pub fn observe(&self, status: u16, elapsed: Duration) {
        let local = self.local();
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        local.responses[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .map(|i| &local.latency_buckets[i])
        {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        local.latency_count.fetch_add(1, Ordering::Relaxed);
        local
            .latency_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The sum of one counter over every shard.
    fn total(&self, counter: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }

    fn gauge(&self, gauge: impl Fn(&Counters) -> &AtomicI64) -> i64 {
        self.shards
            .iter()
            .map(|s| gauge(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Requests answered, all status classes together.
    #[cfg(test)]
    fn requests(&self) -> u64 {
        (0..5)
            .map(|class| self.total(|s| &s.responses[class]))
            .sum()
    }
}

/// Every workload's metrics.
#[derive(Default)]
pub struct Metrics {
    workloads: RwLock<BTreeMap<String, Arc<WorkloadMetrics>>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    /// The metrics of a workload (only called for routed workloads, or [`UNROUTED`]).
    pub fn workload(&self, workload_id: &str) -> Arc<WorkloadMetrics> {
        // The hot path: a shared read, no allocation.
        if let Some(found) = self
            .workloads
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(workload_id)
        {
            return found.clone();
        }
        let mut map = self.workloads.write().unwrap_or_else(|p| p.into_inner());
        map.entry(workload_id.to_string()).or_default().clone()
    }

    /// Drops the series of workloads that are gone for good (`routed` says no) and have
    /// nothing open any more, so the label set does not grow with every workload ever
    /// run.
    pub fn prune(&self, routed: impl Fn(&str) -> bool) -> usize {
        let mut map = self.workloads.write().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|id, m| {
            id == UNROUTED
                || routed(id)
                || m.gauge(|s| &s.active_http) > 0
                || m.gauge(|s| &s.active_tcp) > 0
        });
        before - map.len()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let snapshot: Vec<(String, Arc<WorkloadMetrics>)> = self
            .workloads
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = String::new();
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        header(
            &mut out,
            "computearbitrage_router_requests_total",
            "counter",
            "HTTP responses by workload and status class.",
        );
        for (w, m) in &snapshot {
            for class in 0..5 {
                let _ = writeln!(
                    out,
                    "computearbitrage_router_requests_total{{workload=\"{w}\",class=\"{}xx\"}} {}",
                    class + 1,
                    m.total(|s| &s.responses[class])
                );
            }
        }
        header(
            &mut out,
            "computearbitrage_router_request_duration_seconds",
            "histogram",
            "Time from request to response headers.",
        );
        for (w, m) in &snapshot {
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += m.total(|s| &s.latency_buckets[i]);
                let _ = writeln!(out, "computearbitrage_router_request_duration_seconds_bucket{{workload=\"{w}\",le=\"{bound}\"}} {cumulative}");
            }
            let count = m.total(|s| &s.latency_count);
            let _ = writeln!(out, "computearbitrage_router_request_duration_seconds_bucket{{workload=\"{w}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "computearbitrage_router_request_duration_seconds_sum{{workload=\"{w}\"}} {}",
                m.total(|s| &s.latency_sum_micros) as f64 / 1e6
            );
            let _ = writeln!(out, "computearbitrage_router_request_duration_seconds_count{{workload=\"{w}\"}} {count}");
        }
        header(
            &mut out,
            "computearbitrage_router_bytes_total",
            "counter",
            "Body and stream bytes moved, by direction.",
        );
        for (w, m) in &snapshot {
            let _ = writeln!(out, "computearbitrage_router_bytes_total{{workload=\"{w}\",direction=\"to_backend\"}} {}", m.total(|s| &s.bytes_to_backend));
            let _ = writeln!(out, "computearbitrage_router_bytes_total{{workload=\"{w}\",direction=\"from_backend\"}} {}", m.total(|s| &s.bytes_from_backend));
        }
        header(
            &mut out,
            "computearbitrage_router_active_connections",
            "gauge",
            "Requests in flight (http) and open TCP connections (tcp).",
        );
        for (w, m) in &snapshot {
            let _ = writeln!(out, "computearbitrage_router_active_connections{{workload=\"{w}\",protocol=\"http\"}} {}", m.gauge(|s| &s.active_http));
            let _ = writeln!(out, "computearbitrage_router_active_connections{{workload=\"{w}\",protocol=\"tcp\"}} {}", m.gauge(|s| &s.active_tcp));
        }
        header(
            &mut out,
            "computearbitrage_router_tcp_connections_total",
            "counter",
            "TCP connections forwarded.",
        );
        for (w, m) in &snapshot {
            let _ = writeln!(
                out,
                "computearbitrage_router_tcp_connections_total{{workload=\"{w}\"}} {}",
                m.total(|s| &s.tcp_connections)
            );
        }
        header(
            &mut out,
            "computearbitrage_router_refused_total",
            "counter",
            "Connections and requests the router refused: TCP from outside tcp_allowed_cidrs or past the per-workload cap (tcp), HTTP over the per-workload rate limit (rate_limit).",
        );
        for (w, m) in &snapshot {
            let _ = writeln!(
                out,
                "computearbitrage_router_refused_total{{workload=\"{w}\",reason=\"tcp\"}} {}",
                m.total(|s| &s.tcp_refused)
            );
            let _ = writeln!(out, "computearbitrage_router_refused_total{{workload=\"{w}\",reason=\"rate_limit\"}} {}", m.total(|s| &s.rate_limited));
        }
        out
    }
}

/// Decrements a gauge when dropped, so every exit path (errors, cancellations) counts.
/// The decrement may land on another shard than the increment; the sum is what counts.
pub struct GaugeGuard<M: Deref<Target = WorkloadMetrics> = Arc<WorkloadMetrics>>(
    M,
    fn(&Counters) -> &AtomicI64,
);

impl<M: Deref<Target = WorkloadMetrics>> GaugeGuard<M> {
    pub fn new(metrics: M, gauge: fn(&Counters) -> &AtomicI64) -> Self {
        gauge(metrics.local()).fetch_add(1, Ordering::Relaxed);
        GaugeGuard(metrics, gauge)
    }
}

impl<M: Deref<Target = WorkloadMetrics>> Drop for GaugeGuard<M> {
    fn drop(&mut self) {
        (self.1)(self.0.local()).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `GET /metrics` (any path, in fact) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        let body = metrics.render();
                        async move {
                            let mut response = http::Response::new(Full::new(Bytes::from(body)));
                            response.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("text/plain; version=0.0.4"),
                            );
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            () = &mut shutdown => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_classes_histogram_bytes_and_gauges() {
        let metrics = Metrics::default();
        let m = metrics.workload("wl-1");
        m.observe(200, Duration::from_millis(2));
        m.observe(503, Duration::from_millis(700));
        m.local().bytes_to_backend.fetch_add(10, Ordering::Relaxed);
        let guard = GaugeGuard::new(m.clone(), |m| &m.active_tcp);
        let text = metrics.render();
        assert!(
            text.contains(
                "computearbitrage_router_requests_total{workload=\"wl-1\",class=\"2xx\"} 1"
            ),
            "{text}"
        );
        assert!(text
            .contains("computearbitrage_router_requests_total{workload=\"wl-1\",class=\"5xx\"} 1"));
        assert!(text.contains("computearbitrage_router_request_duration_seconds_bucket{workload=\"wl-1\",le=\"0.0025\"} 1"));
        assert!(text.contains(
            "computearbitrage_router_request_duration_seconds_bucket{workload=\"wl-1\",le=\"1\"} 2"
        ));
        assert!(text.contains(
            "computearbitrage_router_request_duration_seconds_count{workload=\"wl-1\"} 2"
        ));
        assert!(text.contains(
            "computearbitrage_router_bytes_total{workload=\"wl-1\",direction=\"to_backend\"} 10"
        ));
        assert!(text.contains(
            "computearbitrage_router_active_connections{workload=\"wl-1\",protocol=\"tcp\"} 1"
        ));
        drop(guard);
        assert!(metrics.render().contains(
            "computearbitrage_router_active_connections{workload=\"wl-1\",protocol=\"tcp\"} 0"
        ));
    }

    #[test]
    fn counts_from_every_thread_add_up_across_shards() {
        let metrics = Metrics::default();
        let m = metrics.workload("wl-1");
        // More threads than shards, so some share one.
        std::thread::scope(|scope| {
            for _ in 0..SHARDS + 4 {
                scope.spawn(|| {
                    m.observe(200, Duration::from_millis(1));
                    m.local().bytes_from_backend.fetch_add(5, Ordering::Relaxed);
                    // A gauge raised on one thread and lowered on another still sums to 0.
                    std::mem::forget(GaugeGuard::new(&*m, |c| &c.active_http));
                });
            }
        });
        std::thread::scope(|scope| {
            for _ in 0..SHARDS + 4 {
                scope.spawn(|| m.local().active_http.fetch_sub(1, Ordering::Relaxed));
            }
        });
        assert_eq!(m.requests(), (SHARDS + 4) as u64);
        let text = metrics.render();
        assert!(text.contains(&format!(
            "computearbitrage_router_bytes_total{{workload=\"wl-1\",direction=\"from_backend\"}} {}",
            5 * (SHARDS + 4)
        )));
        assert!(text.contains(
            "computearbitrage_router_active_connections{workload=\"wl-1\",protocol=\"http\"} 0"
        ));
    }
}
