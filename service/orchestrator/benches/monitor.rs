//! Health-monitor benchmark: 1,000 workloads checked every second against one local
//! HTTP server (one of them hanging past its timeout), for 10 s. Reports checks
//! started versus the schedule, and the worst lateness of a check. The monitor keeps
//! up if every workload is checked on every interval and no check starts late by more
//! than a poll tick.
//!
//! `cargo bench -p computearbitrage-orchestrator --bench monitor`; under `cargo test` a 2-second,
//! 200-workload smoke pass.

use computearbitrage_orchestrator::workloads::monitor::Monitor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP server: 200 on every path except /slow, which never answers.
async fn serve(requests: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                loop {
                    let n = match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    requests.fetch_add(1, Ordering::Relaxed);
                    if buf[..n].starts_with(b"GET /slow") {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    if socket
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    address
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (workloads, seconds) = if full { (1_000, 10) } else { (200, 2) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let requests = Arc::new(AtomicU64::new(0));
        let address = serve(requests.clone()).await;
        let monitor = Monitor::new(256);
        let interval = Duration::from_secs(1);
        for i in 0..workloads {
            let path = if i == 0 { "/slow" } else { "/health" };
            monitor.watch_url("bench", &format!("w{i}"), &format!("http://{address}{path}"), interval, Duration::from_millis(800), 3);
        }
        let tick = Duration::from_millis(100);
        let start = Instant::now();
        let mut unhealthy = 0;
        while start.elapsed() < Duration::from_secs(seconds) {
            unhealthy += monitor
                .poll()
                .iter()
                .filter(|e| matches!(e, computearbitrage_orchestrator::workloads::monitor::HealthEvent::Unhealthy { .. }))
                .count();
            tokio::time::sleep(tick).await;
        }
        let stats = monitor.stats();
        // Each workload is first due after one interval, then every interval.
        let expected = workloads as u64 * (seconds - 1);
        println!("| workloads | interval | run | checks started | expected at least | max lateness | failed checks | unhealthy |");
        println!("|---|---|---|---|---|---|---|---|");
        println!(
            "| {workloads} | {} s | {seconds} s | {} | {expected} | {:.1} ms | {} | {unhealthy} |",
            interval.as_secs(),
            stats.checks_started,
            stats.max_lateness.as_secs_f64() * 1000.0,
            stats.checks_failed,
        );
        assert!(stats.checks_started >= expected, "the monitor fell behind its schedule");
        assert!(stats.max_lateness < interval, "a check started a whole interval late");
        assert!(stats.checks_failed >= 1, "the hanging workload's checks time out");
    });
}
