//! The S3 backend against moto's S3 (`moto_server`, installed into `.tools/venv` by
//! `scripts/install-test-tools.sh`; `MOTO_SERVER` names another), configured the way
//! an operator would: `storage.backend = "s3"` with an endpoint, credentials from the
//! environment. Moto accepts any signature, so the refusals of tampered URLs are
//! tested on the local backend (`tests/local.rs`); here the shared suite shows that
//! S3's own signed URLs carry real uploads and downloads.

use computearbitrage_storage::suite::{self, Moto};
use computearbitrage_storage::{BackendKind, Storage, StorageConfig, UrlSigner};
use std::path::PathBuf;

fn start_moto() -> Moto {
    Moto::start(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/venv/bin/moto_server"),
    )
}

#[tokio::test]
async fn the_shared_suite_passes_on_s3() {
    let moto = start_moto();
    let client = reqwest::Client::new();
    let bucket = "computearbitrage-test";
    moto.create_bucket(bucket).await;

    // Credentials come from the environment, as in production; moto takes any.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let config = StorageConfig {
        backend: BackendKind::S3,
        bucket: bucket.into(),
        region: "us-east-1".into(),
        endpoint: moto.endpoint.clone(),
        allow_http: true,
        ..StorageConfig::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(
        &config,
        dir.path(),
        UrlSigner::new([1; 32]),
        "http://unused",
    )
    .unwrap();
    assert_eq!(storage.kind(), BackendKind::S3);
    assert!(storage.local_signer().is_none());

    suite::objects_round_trip_and_list_within_their_prefix(&storage).await;
    suite::signed_urls_upload_and_download(&storage, &client).await;
    suite::upload_urls_respect_the_quota(&storage).await;
    suite::large_streams_are_stored_whole(&storage).await;

    // The URLs are S3's own (SigV4 in the query), not the local scheme.
    let key = computearbitrage_storage::ObjectKey::new(
        "wl-s3",
        computearbitrage_storage::Area::State,
        "x",
    )
    .unwrap();
    let url = storage
        .signed_url(computearbitrage_storage::Method::Get, &key, None, 0)
        .await
        .unwrap()
        .url;
    assert!(
        url.starts_with(&moto.endpoint) && url.contains("X-Amz-Signature="),
        "{url}"
    );
    // Nothing was written to the local directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
