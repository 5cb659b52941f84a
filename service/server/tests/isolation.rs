//! What a tenant's workload can reach on the service's machine, with the defaults: the
//! real service binary, the local driver, a workload that tries to read the service's
//! secrets, and the files the service leaves behind.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

/// A workload that reports, over HTTP, what it could see.
const PROBE: &str = r#"
import http.server, json, os
def probe(path):
    try:
        open(path, "rb").read(1)
        return "read"
    except Exception as e:
        return type(e).__name__
data = os.environ["DATA_DIR"]
info = {
    "env": sorted(os.environ),
    "uid": os.getuid(),
    "groups": os.getgroups(),
    "cwd": os.getcwd(),
    "token_key": probe(data + "/workload-token-key"),
    "storage_key": probe(data + "/storage-url-key"),
    "admin_token": probe(data + "/admin-token"),
    "state_db": probe(data + "/state.db"),
    "service_environ": probe("/proc/%d/environ" % os.getppid()),
}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(info).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"#;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_reaches_none_of_the_service_and_its_files_are_private() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // Files an older version (or an operator) left too open.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = data.join("workload-token-key");
    std::fs::write(&key, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let admin = data.join("admin-token");
    std::fs::write(&admin, "ca_left_over_token\n").unwrap();
    std::fs::set_permissions(&admin, std::fs::Permissions::from_mode(0o644)).unwrap();

    let work = root.path().join("work");
    let work_dir = work.to_str().unwrap();
    let service = Service::start(
        &data,
        &[
            // The defaults: each workload its own user when the service runs as root.
            ("COMPUTEARBITRAGE_WORKLOADS__LOCAL__RUN_AS", "per-workload"),
            ("COMPUTEARBITRAGE_WORKLOADS__LOCAL__WORK_DIR", work_dir),
        ],
    );
    let pid = service.pid();

    // The bootstrap token is gone from the service's own environment.
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains(TOKEN),
        "the bootstrap token is still in /proc/{pid}/environ"
    );
    // Private files, also those that existed before.
    assert_eq!(mode(&data), 0o700);
    for file in [
        "state.db",
        "workload-token-key",
        "storage-url-key",
        "admin-token",
    ] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }

    let mut client = service.workloads().await;
    let mut spec = spec("probe", &[("DATA_DIR", data.to_str().unwrap())]);
    spec.command = vec!["python3".into(), "-c".into(), PROBE.into()];
    spec.health_check = Some(pb::HealthCheck {
        path: "/".into(),
        interval_seconds: 1,
        timeout_seconds: 1,
        unhealthy_threshold: 2,
    });
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    let running = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    let body = reqwest::get(format!("http://{}/", running.backend_endpoint))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();

    let env: Vec<String> = seen["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for name in &env {
        assert!(
            [
                "DATA_DIR",
                "WORKLOAD_NAME",
                // Where the agent restores checkpoints and the workload writes them.
                "CHECKPOINT_DIR",
                "PORT",
                "PATH",
                "HOME",
                "COMPUTEARBITRAGE_INSTANCE_ID",
                "LC_CTYPE"
            ]
            .contains(&name.as_str()),
            "{name} leaked into the workload's environment: {env:?}"
        );
    }
    let cwd = seen["cwd"].as_str().unwrap();
    assert!(
        cwd.starts_with(work_dir) && !cwd.starts_with(data.to_str().unwrap()),
        "{cwd}"
    );
    if computearbitrage_driver_local::isolation::is_root() {
        let uid = seen["uid"].as_u64().unwrap();
        assert!(uid >= 200_000, "runs as its own user, not {uid}");
        assert_eq!(
            seen["groups"],
            serde_json::json!([]),
            "no supplementary groups"
        );
        for secret in [
            "token_key",
            "storage_key",
            "admin_token",
            "state_db",
            "service_environ",
        ] {
            assert_eq!(seen[secret], "PermissionError", "{secret}: {seen}");
        }
        // Its working directory is its own.
        let dir = std::path::Path::new(cwd);
        assert_eq!(mode(dir), 0o700);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(u64::from(std::fs::metadata(dir).unwrap().uid()), uid);
    } else {
        eprintln!("not root: per-workload users are not checked");
    }
    let logs: Vec<_> = std::fs::read_dir(data.join("local-driver"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(!logs.is_empty());
    for file in logs {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }

    client
        .delete_workload(authed(pb::DeleteWorkloadRequest {
            id: created.id.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    wait_status(
        &mut client,
        &created.id,
        &["TERMINATED"],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        !std::path::Path::new(cwd).exists(),
        "the working directory went with it"
    );
    service.stop();
}

#[test]
fn a_work_dir_inside_the_data_dir_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let inside = root.path().join("data/work");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(root.path().join("data"))
        .env("COMPUTEARBITRAGE_WORKLOADS__LOCAL__WORK_DIR", &inside)
        .env("COMPUTEARBITRAGE_ROUTER__LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`workloads.local.work_dir`") && stderr.contains("inside data_dir"),
        "{stderr}"
    );
}
