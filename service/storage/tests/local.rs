//! The local backend: the shared suite over a real HTTP server serving its signed
//! URLs, and the refusals only a backend that checks its own signatures can show
//! (moto accepts any signature).

use computearbitrage_storage::signed::{Grant, URL_PATH_PREFIX};
use computearbitrage_storage::{suite, Area, Method, ObjectKey, Prefix, Scope, Storage, UrlSigner};
use std::sync::Arc;
use std::time::Duration;

struct Local {
    storage: Arc<Storage>,
    base: String,
    signer: UrlSigner,
    _dir: tempfile::TempDir,
}

/// A local backend and a hyper server on loopback answering its URLs.
async fn local() -> Local {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let signer = UrlSigner::new([42; 32]);
    let storage = Arc::new(
        Storage::local(
            &dir.path().join("storage"),
            signer.clone(),
            &base,
            Duration::from_secs(600),
        )
        .unwrap(),
    );
    tokio::spawn(computearbitrage_storage::http::serve(
        storage.clone(),
        listener,
    ));
    Local {
        storage,
        base,
        signer,
        _dir: dir,
    }
}

fn key(workload: &str, path: &str) -> ObjectKey {
    ObjectKey::new(workload, Area::Checkpoints, path).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn suite_objects_round_trip_and_list_within_their_prefix() {
    suite::objects_round_trip_and_list_within_their_prefix(&local().await.storage).await;
}

#[tokio::test]
async fn suite_signed_urls_upload_and_download() {
    suite::signed_urls_upload_and_download(&local().await.storage, &reqwest::Client::new()).await;
}

#[tokio::test]
async fn suite_upload_urls_respect_the_quota() {
    suite::upload_urls_respect_the_quota(&local().await.storage).await;
}

#[tokio::test]
async fn suite_large_streams_are_stored_whole() {
    suite::large_streams_are_stored_whole(&local().await.storage).await;
}

#[tokio::test]
async fn tampered_expired_replayed_and_wrong_method_urls_are_refused_over_http() {
    let local = local().await;
    let client = reqwest::Client::new();
    let workload = suite::fresh_workload_id();
    let target = key(&workload, "1/manifest.json");
    local
        .storage
        .put(&target, bytes::Bytes::from_static(b"secret state"))
        .await
        .unwrap();
    let get = local
        .storage
        .signed_url(Method::Get, &target, None, 0)
        .await
        .unwrap();
    assert_eq!(client.get(&get.url).send().await.unwrap().status(), 200);

    let (url, signature) = get.url.rsplit_once("signature=").unwrap();
    let flipped = format!(
        "{url}signature={}{}",
        if signature.starts_with('a') { "b" } else { "a" },
        &signature[1..]
    );
    let other_key = get.url.replace("1/manifest.json", "2/manifest.json");
    let other_workload = get.url.replace(&workload, &format!("{workload}x"));
    let later = get.url.replace(
        &format!("expires={}", get.expires_at),
        &format!("expires={}", get.expires_at + 3600),
    );
    let unsigned = format!("{}{URL_PATH_PREFIX}{target}", local.base);
    for (what, url) in [
        ("flipped signature", flipped),
        ("another key", other_key),
        ("another workload", other_workload),
        ("extended expiry", later),
        ("no signature", unsigned),
    ] {
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 403, "{what}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("secret state"), "{what}: {body}");
        assert!(
            !body.contains(signature),
            "{what}: the answer echoes the signature"
        );
    }
    // A download URL does not upload.
    let response = client.put(&get.url).body("overwrite").send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        local.storage.get(&target).await.unwrap().as_ref(),
        b"secret state"
    );
    // Expired: signed with the same key, an expiry in the past.
    let expired = Grant {
        method: Method::Get,
        scope: Scope::Key(target.clone()),
        expires_at: now() - 1,
        limit_bytes: None,
    };
    let url = format!(
        "{}{}",
        local.base,
        local.signer.sign(&expired, &target).unwrap()
    );
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("expired"));
    // Other methods.
    assert_eq!(client.delete(&get.url).send().await.unwrap().status(), 405);
}

#[tokio::test]
async fn traversal_urls_reach_nothing_outside_the_namespace() {
    let local = local().await;
    let client = reqwest::Client::new();
    let workload = suite::fresh_workload_id();
    // A file beside the storage root, as the service's own files are.
    std::fs::write(local._dir.path().join("state.db"), "service secrets").unwrap();
    let target = key(&workload, "1/x");
    let get = local
        .storage
        .signed_url(Method::Get, &target, None, 0)
        .await
        .unwrap();
    let query = get.url.split_once('?').unwrap().1;
    for path in [
        format!("{URL_PATH_PREFIX}workloads/{workload}/checkpoints/1/%2e%2e/%2e%2e/%2e%2e/%2e%2e/state.db"),
        format!("{URL_PATH_PREFIX}workloads/{workload}/checkpoints/1/..%2F..%2F..%2F..%2Fstate.db"),
        format!("{URL_PATH_PREFIX}..%2F..%2Fstate.db"),
        format!("{URL_PATH_PREFIX}workloads/{workload}/checkpoints/1/%5C..%5C..%5Cstate.db"),
    ] {
        // reqwest would normalise a literal `..`; raw bytes on a socket keep it.
        let response = raw_get(&local.base, &format!("{path}?{query}")).await;
        assert!(response.starts_with("HTTP/1.1 400") || response.starts_with("HTTP/1.1 403"), "{path}: {response}");
        assert!(!response.contains("service secrets"), "{path}");
    }
    let literal = raw_get(
        &local.base,
        &format!("{URL_PATH_PREFIX}workloads/{workload}/checkpoints/../../../../state.db?{query}"),
    )
    .await;
    assert!(literal.starts_with("HTTP/1.1 400"), "{literal}");
    assert!(!literal.contains("service secrets"));
    let _ = client;
}

async fn raw_get(base: &str, path_and_query: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            format!(
                "GET {path_and_query} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn an_upload_past_the_quota_is_refused_mid_stream_and_leaves_nothing() {
    let local = local().await;
    let client = reqwest::Client::new();
    let workload = suite::fresh_workload_id();
    local
        .storage
        .put(
            &key(&workload, "1/a"),
            bytes::Bytes::from(vec![0u8; 600_000]),
        )
        .await
        .unwrap();
    // Declared small, so signing grants it; the body is larger than what is left.
    let target = key(&workload, "1/b");
    let put = local
        .storage
        .signed_url(Method::Put, &target, Some(1_000_000), 1)
        .await
        .unwrap();
    let response = client
        .put(&put.url)
        .body(vec![1u8; 500_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert!(response.text().await.unwrap().contains("quota"));
    assert_eq!(local.storage.size_of(&target).await.unwrap(), None);
    assert_eq!(local.storage.usage(&workload).await.unwrap(), 600_000);
    // The limit is part of the signature: raising it in the URL is refused.
    let raised = put.url.replace("limit=1000000", "limit=9000000");
    assert_eq!(
        client
            .put(&raised)
            .body(vec![1u8; 500_000])
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // Within the quota it goes in.
    let response = client
        .put(&put.url)
        .body(vec![1u8; 300_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(local.storage.usage(&workload).await.unwrap(), 900_000);
}

#[tokio::test]
async fn a_prefix_grant_uploads_a_whole_checkpoint_and_nothing_beside_it() {
    let local = local().await;
    let client = reqwest::Client::new();
    let workload = suite::fresh_workload_id();
    let prefix = Prefix::area(&workload, Area::Checkpoints, Some("300")).unwrap();
    let first = key(&workload, "300/data/chunk-000.bin");
    let url = local
        .storage
        .sign(
            Method::Put,
            Scope::Prefix(prefix),
            &first,
            Some(10 << 20),
            0,
        )
        .await
        .unwrap()
        .url;
    for chunk in ["chunk-000.bin", "chunk-001.bin"] {
        let response = client
            .put(url.replace("chunk-000.bin", chunk))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{chunk}");
    }
    let beside = url.replace("300/data/chunk-000.bin", "301/data/chunk-000.bin");
    assert_eq!(
        client.put(beside).body("x").send().await.unwrap().status(),
        403
    );
    let listed = local
        .storage
        .list(&Prefix::workload(&workload).unwrap())
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
}

#[test]
fn storage_config_refuses_settings_that_cannot_work() {
    use computearbitrage_storage::{BackendKind, StorageConfig};
    let s3 = StorageConfig {
        backend: BackendKind::S3,
        ..StorageConfig::default()
    };
    assert!(s3
        .validate()
        .unwrap_err()
        .to_string()
        .contains("storage.bucket"));
    let expiry = StorageConfig {
        url_expiry_seconds: 0,
        ..StorageConfig::default()
    };
    assert!(expiry
        .validate()
        .unwrap_err()
        .to_string()
        .contains("storage.url_expiry_seconds"));
    let azure = StorageConfig {
        backend: BackendKind::Azure,
        bucket: "c".into(),
        ..StorageConfig::default()
    };
    assert!(azure
        .validate()
        .unwrap_err()
        .to_string()
        .contains("storage.account"));
    StorageConfig::default().validate().unwrap();
}
