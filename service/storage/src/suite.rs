//! The behaviour every storage backend must show, run by each backend's tests
//! (`tests/local.rs` on the filesystem, `tests/s3.rs` on moto's S3) with real HTTP
//! clients for the signed URLs. Each function takes a fresh workload id, so runs
//! against a shared store cannot collide.

use crate::backend::Storage;
use crate::error::StorageError;
use crate::key::{Area, ObjectKey, Prefix};
use crate::signed::Method;
use bytes::Bytes;

fn key(workload: &str, area: Area, path: &str) -> ObjectKey {
    ObjectKey::new(workload, area, path).expect("suite keys are valid")
}

/// A workload id no other run uses.
pub fn fresh_workload_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "wl-{}-{nanos:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Objects written are read back whole; listing stays inside its prefix (`wl-1` never
/// lists `wl-10`'s objects); deletion removes exactly the prefix.
pub async fn objects_round_trip_and_list_within_their_prefix(storage: &Storage) {
    let a = fresh_workload_id();
    let b = format!("{a}0"); // a's id is a string prefix of b's
    let state = key(&a, Area::State, "config.json");
    let chunk = key(&a, Area::Checkpoints, "100/data/chunk-001.bin");
    let manifest = key(&a, Area::Checkpoints, "100/manifest.json");
    let other = key(&b, Area::State, "config.json");
    storage
        .put(&state, Bytes::from_static(b"{\"a\":1}"))
        .await
        .unwrap();
    storage
        .put(&chunk, Bytes::from(vec![7u8; 3000]))
        .await
        .unwrap();
    storage
        .put(&manifest, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    storage
        .put(&other, Bytes::from_static(b"other tenant"))
        .await
        .unwrap();

    assert_eq!(
        storage.get(&state).await.unwrap(),
        Bytes::from_static(b"{\"a\":1}")
    );
    assert_eq!(storage.get(&chunk).await.unwrap().len(), 3000);
    assert_eq!(storage.size_of(&chunk).await.unwrap(), Some(3000));
    assert_eq!(
        storage
            .size_of(&key(&a, Area::State, "nothing"))
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        storage.get(&key(&a, Area::State, "nothing")).await,
        Err(StorageError::NotFound(_))
    ));

    let all: Vec<String> = storage
        .list(&Prefix::workload(&a).unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.to_string())
        .collect();
    assert_eq!(
        all,
        vec![chunk.to_string(), manifest.to_string(), state.to_string()]
    );
    let checkpoints = storage
        .list(&Prefix::area(&a, Area::Checkpoints, Some("100")).unwrap())
        .await
        .unwrap();
    assert_eq!(checkpoints.len(), 2);
    assert_eq!(storage.usage(&a).await.unwrap(), 7 + 3000 + 2);

    // Overwriting replaces.
    storage
        .put(&state, Bytes::from_static(b"{}"))
        .await
        .unwrap();
    assert_eq!(
        storage.get(&state).await.unwrap(),
        Bytes::from_static(b"{}")
    );

    let deleted = storage
        .delete_prefix(&Prefix::area(&a, Area::Checkpoints, None).unwrap())
        .await
        .unwrap();
    assert_eq!(deleted, 2);
    assert_eq!(storage.usage(&a).await.unwrap(), 2);
    assert_eq!(
        storage
            .delete_prefix(&Prefix::workload(&a).unwrap())
            .await
            .unwrap(),
        1
    );
    assert_eq!(storage.usage(&a).await.unwrap(), 0);
    // The neighbour with the longer id is untouched.
    assert_eq!(
        storage.get(&other).await.unwrap(),
        Bytes::from_static(b"other tenant")
    );
}

/// A signed PUT URL uploads with a plain HTTP client holding no credential, and a
/// signed GET URL downloads the same bytes.
pub async fn signed_urls_upload_and_download(storage: &Storage, client: &reqwest::Client) {
    let workload = fresh_workload_id();
    let object = key(&workload, Area::Artifacts, "results/output 001.csv");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();

    let put = storage
        .signed_url(Method::Put, &object, Some(1 << 20), payload.len() as u64)
        .await
        .unwrap();
    let response = client
        .put(&put.url)
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "PUT {}: {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    assert_eq!(
        storage.get(&object).await.unwrap().as_ref(),
        payload.as_slice()
    );

    let get = storage
        .signed_url(Method::Get, &object, None, 0)
        .await
        .unwrap();
    let response = client.get(&get.url).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), payload.as_slice());
    assert!(get.expires_at > put.expires_at - 5);

    let missing = storage
        .signed_url(
            Method::Get,
            &key(&workload, Area::Artifacts, "missing"),
            None,
            0,
        )
        .await
        .unwrap();
    assert_eq!(
        client.get(&missing.url).send().await.unwrap().status(),
        reqwest::StatusCode::NOT_FOUND
    );
    storage
        .delete_prefix(&Prefix::workload(&workload).unwrap())
        .await
        .unwrap();
}

/// An upload URL is refused when the workload's objects plus the declared size would
/// pass the quota, and granted up to it.
pub async fn upload_urls_respect_the_quota(storage: &Storage) {
    let workload = fresh_workload_id();
    storage
        .put(
            &key(&workload, Area::State, "big"),
            Bytes::from(vec![0u8; 1000]),
        )
        .await
        .unwrap();
    let next = key(&workload, Area::State, "next");
    let refused = storage
        .signed_url(Method::Put, &next, Some(1500), 600)
        .await
        .unwrap_err();
    match &refused {
        StorageError::QuotaExceeded {
            used,
            adding,
            limit,
            ..
        } => {
            assert_eq!((*used, *adding, *limit), (1000, 600, 1500))
        }
        other => panic!("expected QuotaExceeded, got {other}"),
    }
    assert!(!refused.is_retryable());
    storage
        .signed_url(Method::Put, &next, Some(1500), 500)
        .await
        .unwrap();
    // Downloads need no quota.
    storage
        .signed_url(Method::Get, &next, Some(1), 0)
        .await
        .unwrap();
    storage
        .delete_prefix(&Prefix::workload(&workload).unwrap())
        .await
        .unwrap();
}

/// A stream larger than one part goes up whole (multipart where the store has it).
pub async fn large_streams_are_stored_whole(storage: &Storage) {
    let workload = fresh_workload_id();
    let object = key(&workload, Area::Checkpoints, "200/data/chunk-000.bin");
    let part = Bytes::from(vec![3u8; 1 << 20]);
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..12).map(|_| Ok(part.clone())).collect();
    let written = storage
        .put_stream(&object, futures::stream::iter(chunks), Some(64 << 20))
        .await
        .unwrap();
    assert_eq!(written, 12 << 20);
    assert_eq!(storage.size_of(&object).await.unwrap(), Some(12 << 20));
    let (size, _) = storage.get_stream(&object).await.unwrap();
    assert_eq!(size, 12 << 20);

    // Over the limit: refused, and nothing of it is kept.
    let refused = key(&workload, Area::Checkpoints, "201/data/chunk-000.bin");
    let chunks: Vec<Result<Bytes, std::io::Error>> = (0..12).map(|_| Ok(part.clone())).collect();
    let err = storage
        .put_stream(&refused, futures::stream::iter(chunks), Some(16 << 20))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::QuotaExceeded { .. }), "{err}");
    assert_eq!(storage.size_of(&refused).await.unwrap(), None);
    assert_eq!(storage.usage(&workload).await.unwrap(), 12 << 20);
    storage
        .delete_prefix(&Prefix::workload(&workload).unwrap())
        .await
        .unwrap();
}

/// moto's S3 server (`moto_server`) on a free loopback port, for the S3 runs of the
/// suite and the service's end-to-end tests; killed when dropped. `MOTO_SERVER`
/// names another program than `default_program` (`.tools/venv/bin/moto_server`,
/// installed by `scripts/install-test-tools.sh`).
pub struct Moto {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Moto {
    pub fn start(default_program: &std::path::Path) -> Moto {
        use std::time::{Duration, Instant};
        let program = std::env::var_os("MOTO_SERVER")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| default_program.to_path_buf());
        assert!(
            program.exists(),
            "moto_server not found at {}; run ./scripts/install-test-tools.sh (or set MOTO_SERVER)",
            program.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Creates `bucket` (moto takes any credentials).
    pub async fn create_bucket(&self, bucket: &str) {
        let created = reqwest::Client::new()
            .put(format!("{}/{bucket}", self.endpoint))
            .send()
            .await
            .expect("moto answers");
        assert!(
            created.status().is_success(),
            "create bucket {bucket}: {}",
            created.status()
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
