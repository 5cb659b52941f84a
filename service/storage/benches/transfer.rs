//! Checkpoint-sized transfers through the local backend's signed URLs, as an agent
//! would make them: a real HTTP client (reqwest) streaming a file to a signed PUT URL
//! and a signed GET URL back to a file, over loopback to a hyper server running
//! `storage::http::handle`, against `cp` of the same file on the same disk.
//!
//! None of the three fsyncs (object_store's local store does not), so all three are
//! measured into the page cache alike.
//!
//! `cargo bench -p computearbitrage-storage --bench transfer` moves 1 GiB three times
//! each way and prints a Markdown table (docs/benchmarks.md holds a run). Under
//! `cargo test` it moves 16 MiB once, as a smoke test. `TRANSFER_MIB` overrides the size.

use computearbitrage_storage::{Area, Method, ObjectKey, Storage, UrlSigner};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn rate(bytes: u64, took: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / took.as_secs_f64()
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let mib: u64 = std::env::var("TRANSFER_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1024 } else { 16 });
    let rounds = if full { 3 } else { 1 };
    let bytes = mib << 20;
    // On the disk the service's data dir would be on, not tmpfs.
    let base = std::env::var_os("TRANSFER_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::current_dir().unwrap().join("target"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let source = dir.path().join("checkpoint.bin");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&source).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for i in 0..mib {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i as usize).wrapping_mul(31).wrapping_add(j) as u8;
            }
            out.write_all(&block).unwrap();
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let storage = Arc::new(
        Storage::local(
            &dir.path().join("storage"),
            UrlSigner::new([3; 32]),
            &url,
            Duration::from_secs(3600),
        )
        .unwrap(),
    );
    tokio::spawn(computearbitrage_storage::http::serve(
        storage.clone(),
        listener,
    ));
    let client = reqwest::Client::new();

    let (mut cp, mut up, mut down) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let copy = dir.path().join(format!("cp-{round}.bin"));
        let start = Instant::now();
        std::fs::copy(&source, &copy).unwrap();
        cp.push(start.elapsed());
        std::fs::remove_file(&copy).unwrap();

        let key = ObjectKey::new(
            "wl-bench",
            Area::Checkpoints,
            &format!("{round}/data/chunk-000.bin"),
        )
        .unwrap();
        let put = storage
            .signed_url(Method::Put, &key, Some(bytes * 4), bytes)
            .await
            .unwrap();
        let start = Instant::now();
        let file = std::fs::File::open(&source).unwrap();
        let response = client
            .put(&put.url)
            .header(reqwest::header::CONTENT_LENGTH, bytes)
            .body(reqwest::Body::wrap_stream(
                computearbitrage_storage::chunks::file_chunks(file, 0..bytes),
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
        up.push(start.elapsed());

        let get = storage
            .signed_url(Method::Get, &key, None, 0)
            .await
            .unwrap();
        let target = dir.path().join(format!("restored-{round}.bin"));
        let start = Instant::now();
        let mut response = client.get(&get.url).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut out = tokio::fs::File::create(&target).await.unwrap();
        use tokio::io::AsyncWriteExt;
        while let Some(chunk) = response.chunk().await.unwrap() {
            out.write_all(&chunk).await.unwrap();
        }
        out.flush().await.unwrap();
        down.push(start.elapsed());
        assert_eq!(std::fs::metadata(&target).unwrap().len(), bytes);
        std::fs::remove_file(&target).unwrap();
        storage.delete(&key).await.unwrap();
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (cp, up, down) = (median(&mut cp), median(&mut up), median(&mut down));
    println!("### Local backend: {mib} MiB through signed URLs (median of {rounds})\n");
    println!("| transfer | time | MiB/s | × `cp` |\n|---|---:|---:|---:|");
    println!(
        "| `cp` (std::fs::copy) | {:.2} s | {:.0} | 1.00 |",
        cp.as_secs_f64(),
        rate(bytes, cp)
    );
    for (what, took) in [
        ("upload (signed PUT, streamed)", up),
        ("restore (signed GET, to a file)", down),
    ] {
        println!(
            "| {what} | {:.2} s | {:.0} | {:.2} |",
            took.as_secs_f64(),
            rate(bytes, took),
            rate(bytes, took) / rate(bytes, cp)
        );
    }
}
