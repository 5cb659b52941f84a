//! The workload's local API through the real binaries: a workload (here, commands run
//! as it by `exec` tasks, with `curl`) asks its agent's unix socket for signed URLs to
//! its own `state/` and `artifacts/`, uploads and downloads through them, and lists
//! them; what is the agent's, outside its namespace or past its quota is refused with
//! what to do; another workload's user cannot open the socket.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::time::Duration;

type Client = pb::workloads_client::WorkloadsClient<tonic::transport::Channel>;

/// Runs `script` with `sh -c` as the workload; its exit code and output.
async fn sh(client: &mut Client, workload_id: &str, script: &str) -> (i32, String) {
    let task = queue_task(client, workload_id, "exec", &["sh", "-c", script], 30).await;
    let done = wait_task(client, &task, Duration::from_secs(40)).await;
    assert_eq!(done.state, "COMPLETED", "{done:?}");
    (done.exit_code.unwrap_or(-1), done.output)
}

/// One call of the local API: the HTTP status and the JSON answer.
async fn api(
    client: &mut Client,
    workload_id: &str,
    path: &str,
    body: &str,
) -> (u16, serde_json::Value) {
    let script = format!(
        "curl -s -w '\\n%{{http_code}}' --unix-socket \"$COMPUTEARBITRAGE_AGENT_SOCKET\" -X POST --data-binary '{body}' http://agent{path}"
    );
    let (code, output) = sh(client, workload_id, &script).await;
    assert_eq!(code, 0, "curl failed: {output}");
    let (json, status) = output.trim_end().rsplit_once('\n').unwrap_or(("", &output));
    let value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {output}"));
    (status.trim().parse().unwrap(), value)
}

fn error_of(value: &serde_json::Value) -> String {
    value["error"].as_str().unwrap_or_default().to_string()
}

async fn start_workload(client: &mut Client, name: &str) -> pb::Workload {
    let mut spec = spec(name, &[]);
    spec.storage = test_storage();
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    wait_status(client, &created.id, &["RUNNING"], Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_reaches_its_own_storage_through_its_agent_and_nothing_else() {
    assert!(
        std::path::Path::new("/usr/bin/curl").exists(),
        "this test runs /usr/bin/curl as the workload; install curl (Debian: apt-get install curl)"
    );
    let dir = tempfile::tempdir().unwrap();
    // Each workload its own uid (when root), as the service runs by default.
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__LOCAL__RUN_AS", "per-workload")],
    );
    let mut client = service.workloads().await;
    let pid = std::process::id();
    let workload = start_workload(&mut client, &format!("wls-{pid}")).await;
    let id = workload.id.clone();

    // The socket is in the workload's directory, and only its user may open it.
    let (code, output) = sh(
        &mut client,
        &id,
        "echo \"$COMPUTEARBITRAGE_AGENT_SOCKET\"; stat -c '%a %u' \"$COMPUTEARBITRAGE_AGENT_SOCKET\"; id -u",
    )
    .await;
    assert_eq!(code, 0, "{output}");
    let lines: Vec<&str> = output.lines().collect();
    let socket = lines[0].to_string();
    assert!(socket.ends_with("/agent.sock"), "{output}");
    let (mode, owner) = lines[1].split_once(' ').unwrap();
    assert_eq!(mode, "600", "{output}");
    assert_eq!(
        owner, lines[2],
        "the socket is the workload user's: {output}"
    );
    if nix_is_root() {
        assert_ne!(owner, "0", "the workload runs as its own user: {output}");
    }
    // The workload itself was started with it too, not only the commands run as it.
    assert!(
        !processes_with_env("COMPUTEARBITRAGE_AGENT_SOCKET", &socket).is_empty(),
        "no process has COMPUTEARBITRAGE_AGENT_SOCKET={socket}"
    );

    // Upload through a signed URL, download it back, list it.
    let content = format!("model weights {pid}\n");
    let (status, put) = api(
        &mut client,
        &id,
        "/v1/storage/url",
        &format!(
            r#"{{"method":"PUT","key":"state/model.bin","size_bytes":{}}}"#,
            content.len()
        ),
    )
    .await;
    assert_eq!(status, 200, "{put}");
    assert_eq!(
        (put["method"].as_str(), put["key"].as_str()),
        (Some("PUT"), Some("state/model.bin"))
    );
    assert!(put["expires_at"].as_i64().unwrap() > 0);
    let url = put["url"].as_str().unwrap().to_string();
    let (code, output) = sh(
        &mut client,
        &id,
        &format!("printf '%s' '{content}' > upload && curl -sf -o /dev/null -X PUT --data-binary @upload '{url}' && echo uploaded"),
    )
    .await;
    assert_eq!((code, output.trim()), (0, "uploaded"), "{output}");
    let (status, get) = api(
        &mut client,
        &id,
        "/v1/storage/url",
        r#"{"method":"GET","key":"state/model.bin"}"#,
    )
    .await;
    assert_eq!(status, 200, "{get}");
    let (code, downloaded) = sh(
        &mut client,
        &id,
        &format!("curl -sf '{}'", get["url"].as_str().unwrap()),
    )
    .await;
    assert_eq!((code, downloaded.as_str()), (0, content.as_str()));
    // The URL is for that one object.
    let other = url.replace("model.bin", "other.bin");
    let (code, _) = sh(
        &mut client,
        &id,
        &format!("curl -sf -X PUT --data-binary x '{other}'"),
    )
    .await;
    assert_ne!(code, 0, "a URL for state/model.bin wrote state/other.bin");
    // The tenant sees what the workload stored.
    let listed = client
        .list_objects(authed(pb::ListObjectsRequest {
            workload_id: id.clone(),
            prefix: "state/".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .objects
            .iter()
            .map(|o| (o.key.as_str(), o.size_bytes))
            .collect::<Vec<_>>(),
        vec![("state/model.bin", content.len() as u64)]
    );
    let (status, list) = api(
        &mut client,
        &id,
        "/v1/storage/list",
        r#"{"prefix":"state/"}"#,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["objects"][0]["key"], "state/model.bin");
    assert_eq!(list["objects"][0]["size_bytes"], content.len() as u64);
    assert_eq!(list["quota_bytes"], 1u64 << 30);
    assert!(list["used_bytes"].as_u64().unwrap() >= content.len() as u64);
    // An empty body lists state/ and artifacts/, never the agent's checkpoints.
    let (status, all) = api(&mut client, &id, "/v1/storage/list", "").await;
    assert_eq!(status, 200, "{all}");
    assert!(all["objects"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| !o["key"].as_str().unwrap().starts_with("checkpoints/")));

    // Refusals say what was wrong and what to do; none of them signs anything.
    for (path, body, status, says) in [
        (
            "/v1/storage/url",
            r#"{"method":"PUT","key":"checkpoints/1/manifest.json","size_bytes":2}"#,
            400,
            "only the agent writes",
        ),
        (
            "/v1/storage/url",
            r#"{"method":"PUT","key":"artifacts/logs/i/1.log","size_bytes":2}"#,
            400,
            "artifacts/logs/",
        ),
        (
            "/v1/storage/url",
            r#"{"method":"GET","key":"state/../../wl-0/state/x"}"#,
            400,
            "..",
        ),
        (
            "/v1/storage/url",
            r#"{"method":"GET","key":"secrets/x"}"#,
            400,
            "a key starts with `state/`",
        ),
        (
            "/v1/storage/url",
            r#"{"method":"DELETE","key":"state/x"}"#,
            400,
            "is not \"GET\"",
        ),
        (
            "/v1/storage/url",
            r#"{"method":"PUT","key":"state/huge","size_bytes":2147483648}"#,
            400,
            "quota",
        ),
        (
            "/v1/storage/url",
            r#"{"method":"GET","path":"state/x"}"#,
            400,
            "unknown field `path`",
        ),
        (
            "/v1/storage/list",
            r#"{"prefix":"checkpoints/"}"#,
            400,
            "checkpoints/ is the agent's",
        ),
        ("/v1/nothing", "{}", 404, "POST /v1/storage/url"),
    ] {
        let (got, answer) = api(&mut client, &id, path, body).await;
        assert_eq!(got, status, "{path} {body}: {answer}");
        assert!(error_of(&answer).contains(says), "{path} {body}: {answer}");
        assert!(answer.get("url").is_none());
    }
    let (code, output) = sh(
        &mut client,
        &id,
        "curl -s -w '\\n%{http_code}' --unix-socket \"$COMPUTEARBITRAGE_AGENT_SOCKET\" http://agent/v1/storage/url",
    )
    .await;
    assert!(code == 0 && output.trim_end().ends_with("405"), "{output}");

    // Another workload's user cannot open this one's socket.
    let neighbour = start_workload(&mut client, &format!("wls-other-{pid}")).await;
    let (code, output) = sh(
        &mut client,
        &neighbour.id,
        &format!("curl -s --unix-socket '{socket}' -X POST --data-binary '{{\"method\":\"GET\",\"key\":\"state/model.bin\"}}' http://agent/v1/storage/url"),
    )
    .await;
    if nix_is_root() {
        assert_ne!(
            code, 0,
            "another workload reached this one's agent: {output}"
        );
        assert!(!output.contains("\"url\""), "{output}");
    }
    service.stop();
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
