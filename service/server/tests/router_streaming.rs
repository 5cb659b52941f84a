//! 100 MB each way through the router, with a counting allocator: the heap of the whole
//! process (client, router and backend) must not grow by anything near the body size,
//! so no part buffers a body whole. Its own test binary, so no other test's
//! allocations count.

mod routing;

use bytes::Bytes;
use computearbitrage_core::WorkloadStatus;
use futures_util::StreamExt;
use http_body_util::StreamBody;
use routing::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const TOTAL: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// Far below the 100 MB moved: buffers, pools and windows, not bodies.
const ALLOWED_GROWTH: usize = 16 * 1024 * 1024;

fn chunks() -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let chunk = Bytes::from(vec![42u8; CHUNK]);
    futures_util::stream::iter(0..TOTAL / CHUNK as u64).map(move |_| Ok(chunk.clone()))
}

/// Serves `TOTAL` bytes, streamed, on every request; counts what uploads send.
async fn download_backend() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |_req: hyper::Request<hyper::body::Incoming>| async {
                        let body =
                            StreamBody::new(chunks().map(|c| c.map(hyper::body::Frame::data)));
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_body_streams_both_ways_without_the_heap_growing_by_it() {
    let fx = Fixture::start().await;
    let upload_backend = Backend::start("up").await;
    fx.workload(
        TENANT_A,
        "wl-up",
        WorkloadStatus::Running,
        Some(&upload_backend.addr()),
    )
    .await;
    let down = download_backend().await;
    fx.workload(TENANT_A, "wl-down", WorkloadStatus::Running, Some(&down))
        .await;
    let http = client();
    // Warm the pools so they are part of the baseline.
    let _ = http
        .get(format!("{}/w/wl-up/", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap()
        .bytes()
        .await;

    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let response = http
        .post(format!("{}/w/wl-up/upload", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .body(reqwest::Body::wrap_stream(chunks()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        upload_backend.last().body_bytes,
        TOTAL,
        "every byte arrived"
    );
    let upload_growth = PEAK.load(Ordering::Relaxed) - baseline;

    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let response = http
        .get(format!("{}/w/wl-down/file", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = 0u64;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len() as u64;
    }
    assert_eq!(received, TOTAL);
    let download_growth = PEAK.load(Ordering::Relaxed) - baseline;
    eprintln!("peak heap growth: upload {upload_growth} B, download {download_growth} B");
    assert!(
        upload_growth < ALLOWED_GROWTH,
        "upload grew the heap by {upload_growth} B"
    );
    assert!(
        download_growth < ALLOWED_GROWTH,
        "download grew the heap by {download_growth} B"
    );

    let metrics = fx.router().metrics.render();
    assert!(metrics.contains(&format!("computearbitrage_router_bytes_total{{workload=\"wl-up\",direction=\"to_backend\"}} {TOTAL}")));
    assert!(metrics.contains(&format!("computearbitrage_router_bytes_total{{workload=\"wl-down\",direction=\"from_backend\"}} {TOTAL}")));
    fx.shutdown().await;
}
