//! Workload storage through the real binary: the API signs URLs for a tenant's own
//! workloads only, with the scope the method needs; the URLs work with a plain HTTP
//! client on the service's own port (the local backend), carry no token, and respect
//! the quota; a listing shows what was uploaded.

mod common;

use common::*;
use computearbitrage_api::pb;
use computearbitrage_api::Reason;

fn as_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn token(service: &Service, tenant: &str, scopes: &str) -> String {
    service
        .admin()
        .await
        .create_token(authed(pb::CreateTokenRequest {
            tenant: tenant.into(),
            scopes: scopes.into(),
            label: format!("{tenant}-{scopes}"),
            expires_in_seconds: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .token
}

fn reason<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Option<Reason>, String) {
    let status = result.unwrap_err();
    (Reason::of(&status), status.message().to_string())
}

fn sign(workload_id: &str, key: &str, method: &str, size_bytes: u64) -> pb::SignStorageUrlRequest {
    pb::SignStorageUrlRequest {
        workload_id: workload_id.into(),
        key: key.into(),
        method: method.into(),
        size_bytes,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_upload_list_and_download_their_own_storage_through_signed_urls() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut admin = service.admin().await;
    for id in ["acme", "globex"] {
        admin
            .create_tenant(authed(pb::CreateTenantRequest {
                id: id.into(),
                max_concurrent_workloads: None,
            }))
            .await
            .unwrap();
    }
    let acme = token(&service, "acme", "write").await;
    let acme_read = token(&service, "acme", "read").await;
    let globex = token(&service, "globex", "write").await;
    let mut client = service.workloads().await;

    let mut with_storage = spec("with-storage", &[]);
    with_storage.storage = Some(pb::StorageSpec {
        enabled: true,
        quota_gb: 1,
        retention_days: 7,
    });
    let workload = client
        .apply_workload(as_token(
            pb::ApplyWorkloadRequest {
                spec: Some(with_storage),
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    let id = workload.id.clone();
    assert_eq!(workload.storage_prefix, format!("workloads/{id}/"));
    let plain = client
        .apply_workload(as_token(
            pb::ApplyWorkloadRequest {
                spec: Some(spec("no-storage", &[])),
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plain.storage_prefix, "");

    // Upload with a write token, through the URL only.
    let http = reqwest::Client::new();
    let payload = b"a,b\n1,2\n".to_vec();
    let put = client
        .sign_storage_url(as_token(
            sign(
                &id,
                "artifacts/results/out.csv",
                "PUT",
                payload.len() as u64,
            ),
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        put.url.starts_with(&service.endpoint),
        "{} is not on the service's port",
        put.url
    );
    assert!(
        !put.url.contains(&acme) && !put.url.contains(TOKEN),
        "the URL carries a token"
    );
    let uploaded = http
        .put(&put.url)
        .body(payload.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201, "{}", uploaded.text().await.unwrap());

    // List and download with a read token.
    let listed = client
        .list_objects(as_token(
            pb::ListObjectsRequest {
                workload_id: id.clone(),
                prefix: "artifacts/".into(),
            },
            &acme_read,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.storage_prefix, format!("workloads/{id}/"));
    let keys: Vec<_> = listed
        .objects
        .iter()
        .map(|o| (o.key.as_str(), o.size_bytes))
        .collect();
    assert_eq!(
        keys,
        vec![("artifacts/results/out.csv", payload.len() as u64)]
    );
    assert_eq!(
        (listed.used_bytes, listed.quota_bytes),
        (payload.len() as u64, 1 << 30)
    );
    let download = client
        .sign_storage_url(as_token(
            sign(&id, "artifacts/results/out.csv", "GET", 0),
            &acme_read,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        http.get(&download.url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .as_ref(),
        payload.as_slice()
    );
    // gRPC still answers on the same port after HTTP/1.1 traffic.
    client
        .get_workload(as_token(
            pb::GetWorkloadRequest {
                id: plain.id.clone(),
            },
            &acme,
        ))
        .await
        .unwrap();

    // A read token cannot upload; another tenant sees no such workload.
    let (why, _) = reason(
        client
            .sign_storage_url(as_token(sign(&id, "state/x", "PUT", 1), &acme_read))
            .await,
    );
    assert_eq!(why, Some(Reason::PermissionDenied));
    for result in [
        client
            .list_objects(as_token(
                pb::ListObjectsRequest {
                    workload_id: id.clone(),
                    prefix: String::new(),
                },
                &globex,
            ))
            .await
            .map(|_| ()),
        client
            .sign_storage_url(as_token(
                sign(&id, "artifacts/results/out.csv", "GET", 0),
                &globex,
            ))
            .await
            .map(|_| ()),
    ] {
        assert_eq!(reason(result).0, Some(Reason::NotFound));
    }

    // Bad keys name the field; the quota and a workload without storage have their own reasons.
    for bad in ["../other/state/x", "secrets/x", "state/a/../../b", "state/"] {
        let status = client
            .sign_storage_url(as_token(sign(&id, bad, "GET", 0), &acme))
            .await
            .unwrap_err();
        assert_eq!(Reason::of(&status), Some(Reason::InvalidArgument), "{bad}");
        assert_eq!(
            status
                .metadata()
                .get("x-computearbitrage-field")
                .map(|v| v.to_str().unwrap()),
            Some("key"),
            "{bad}"
        );
    }
    let (why, message) = reason(
        client
            .sign_storage_url(as_token(sign(&id, "state/big", "PUT", 2 << 30), &acme))
            .await,
    );
    assert_eq!(why, Some(Reason::Exhausted));
    assert!(message.contains("quota"), "{message}");
    let (why, message) = reason(
        client
            .sign_storage_url(as_token(sign(&plain.id, "state/x", "GET", 0), &acme))
            .await,
    );
    assert_eq!(why, Some(Reason::WrongWorkloadState));
    assert!(message.contains("storage"), "{message}");
    let (why, _) = reason(
        client
            .sign_storage_url(as_token(sign(&id, "state/x", "DELETE", 0), &acme))
            .await,
    );
    assert_eq!(why, Some(Reason::InvalidArgument));

    // The upload grant is audited with the object, never the URL.
    let audit = admin
        .list_audit(as_token(
            pb::ListAuditRequest {
                tenant: String::new(),
                limit: 100,
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    let entry = audit
        .entries
        .iter()
        .find(|e| e.action == "SignStorageUrl PUT" && e.outcome == "ok")
        .expect("the upload grant is audited");
    assert_eq!(
        entry.target,
        format!("workloads/{id}/artifacts/results/out.csv")
    );

    // The operator CLI: upload a file, list it, download it back; an upload past the
    // quota is refused by name without printing the URL.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
            .args(args)
            .env("COMPUTEARBITRAGE_ENDPOINT", &service.endpoint)
            .env("COMPUTEARBITRAGE_TOKEN", &acme)
            .output()
            .unwrap()
    };
    let local = dir.path().join("config.json");
    std::fs::write(&local, "{\"threads\": 4}").unwrap();
    let uploaded = cli(&[
        "workload",
        "upload",
        &id,
        "state/config.json",
        local.to_str().unwrap(),
    ]);
    assert!(
        uploaded.status.success(),
        "{}",
        String::from_utf8_lossy(&uploaded.stderr)
    );
    let objects = cli(&["workload", "objects", &id, "--prefix", "state/"]);
    let objects: serde_json::Value = serde_json::from_slice(&objects.stdout).unwrap();
    assert_eq!(objects["objects"][0]["key"], "state/config.json");
    let back = dir.path().join("back.json");
    let downloaded = cli(&[
        "workload",
        "download",
        &id,
        "state/config.json",
        "-o",
        back.to_str().unwrap(),
    ]);
    assert!(
        downloaded.status.success(),
        "{}",
        String::from_utf8_lossy(&downloaded.stderr)
    );
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "{\"threads\": 4}");
    let missing = cli(&["workload", "download", &id, "state/none.json"]);
    assert!(!missing.status.success());
    let said = String::from_utf8_lossy(&missing.stderr);
    assert!(
        said.contains("404") && said.contains("state/none.json"),
        "{said}"
    );
    assert!(
        !said.contains("signature="),
        "the CLI printed the signed URL: {said}"
    );

    // The objects live under the data dir's storage root, private to the service.
    use std::os::unix::fs::PermissionsExt;
    let root = dir.path().join("storage");
    assert_eq!(
        std::fs::metadata(&root).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert!(root
        .join(format!("workloads/{id}/artifacts/results/out.csv"))
        .exists());
    service.stop();
}
