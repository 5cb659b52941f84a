//! Each local instance in its own network namespace (the default as root), cut off the
//! network by the test the way a partition cuts a VM off: its veth pair down. A cut-off
//! instance whose driver sees it alive is never declared lost; one that comes back
//! after it was replaced is fenced, and its agent stops its workload.
//!
//! Skipped without root: the service then puts instances on the loopback interface.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::path::Path;
use std::time::{Duration, Instant};

fn namespaces_available() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && std::process::Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Takes the instance's veth pair down (`false`) or up, as the driver would.
fn set_link(data_dir: &Path, instance_id: &str, up: bool) {
    let record = instance_record(data_dir, instance_id);
    let interface = record["network"]["host_interface"]
        .as_str()
        .expect("a namespaced instance records its interface")
        .to_string();
    let status = std::process::Command::new("ip")
        .args(["link", "set", &interface, if up { "up" } else { "down" }])
        .status()
        .unwrap();
    assert!(status.success(), "ip link set {interface}");
}

/// The workload's answer through the router: status, and the pid that served it.
async fn through_router(workload: &pb::Workload) -> (u16, Option<u64>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    match client
        .get(format!(
            "{}/whoami",
            workload.endpoint.trim_end_matches('/')
        ))
        .bearer_auth(&workload.access_token)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            (status, body["pid"].as_u64())
        }
        Err(_) => (0, None),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_instance_is_not_declared_lost_and_serves_again_when_connected() {
    if !namespaces_available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300")],
    );
    let mut client = service.workloads().await;
    let mut spec = spec(&format!("partitioned-{}", std::process::id()), &[]);
    spec.on_interruption = "migrate".into();
    spec.storage = test_storage();
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    let before = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        before.backend_endpoint.starts_with("10.213."),
        "an address of its own, not the loopback: {}",
        before.backend_endpoint
    );
    let (status, pid) = through_router(&before).await;
    assert_eq!(status, 200);
    let pid = pid.unwrap();

    // Cut off for 3 s: 10 heartbeats missed, and health checks fail. The driver sees
    // the instance alive, so it is not lost and nothing moves.
    set_link(dir.path(), &before.instance_id, false);
    let cut_at = Instant::now();
    let (status, _) = through_router(&before).await;
    assert_ne!(status, 200, "the router cannot reach a cut-off instance");
    service.wait_for_log("not declared lost", Duration::from_secs(10));
    while cut_at.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = get(&mut client, &created.id).await;
    assert_eq!(during.instance_id, before.instance_id);
    assert!(
        ["RUNNING", "UNHEALTHY"].contains(&during.status.as_str()),
        "{}: {}",
        during.status,
        during.status_reason
    );
    set_link(dir.path(), &before.instance_id, true);

    // Connected again: the same process serves, the workload is RUNNING, and it never
    // ran anything but its first provisioning.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = get(&mut client, &created.id).await;
        if now.status == "RUNNING" && through_router(&now).await == (200, Some(pid)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not back: {} ({})",
            now.status,
            now.status_reason
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let runs = client
        .list_runs(authed(pb::ListRunsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(
        runs.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(),
        ["provision"]
    );
    // Its agent talks to the service again: a task reaches it and comes back.
    let task = queue_task(&mut client, &created.id, "exec", &["echo", "back"], 10).await;
    let done = wait_task(&mut client, &task, Duration::from_secs(20)).await;
    assert_eq!(done.exit_code, Some(0));

    client
        .delete_workload(authed(pb::DeleteWorkloadRequest {
            id: created.id.clone(),
            reason: String::new(),
        }))
        .await
        .unwrap();
    wait_status(
        &mut client,
        &created.id,
        &["TERMINATED"],
        Duration::from_secs(20),
    )
    .await;
    let namespace = instance_record(dir.path(), &before.instance_id)["network"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new("/run/netns").join(&namespace).exists() {
        assert!(
            Instant::now() < deadline,
            "{namespace} outlived its instance"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.stop();
    kill_workloads(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_comes_back_after_its_replacement_is_fenced_and_stops() {
    if !namespaces_available() {
        eprintln!("skipped: network namespaces need root and iproute2");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The move is held before it terminates the old instance, so the old instance is
    // still there when it comes back, as a partitioned VM the cloud could not stop.
    let service = Service::start(
        dir.path(),
        &[
            ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300"),
            ("CA_TEST_PAUSE_AT", "migrate.terminate-replaced:before"),
        ],
    );
    let mut client = service.workloads().await;
    let name = format!("fenced-{}", std::process::id());
    let mut spec = spec(&name, &[]);
    spec.on_interruption = "migrate".into();
    spec.storage = test_storage();
    spec.on_unhealthy = "replace".into();
    spec.replace_unhealthy_after_seconds = 2;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    let before = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    let old_processes = processes_with_env("COMPUTEARBITRAGE_INSTANCE_ID", &before.instance_id);
    assert_eq!(old_processes.len(), 1, "{old_processes:?}");

    // Cut off: unhealthy, then replaced on a fresh instance behind the same endpoint.
    set_link(dir.path(), &before.instance_id, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let w = get(&mut client, &created.id).await;
        if w.status == "RUNNING" && w.instance_id != before.instance_id {
            break w;
        }
        assert!(
            Instant::now() < deadline,
            "not replaced: {} ({})",
            w.status,
            w.status_reason
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    service.wait_for_log(
        "paused at migrate.terminate-replaced",
        Duration::from_secs(10),
    );
    assert_eq!(after.endpoint, before.endpoint);
    let (status, new_pid) = through_router(&after).await;
    assert_eq!(status, 200);
    // The old instance is still running, cut off, with its workload.
    assert_eq!(
        processes_with_env("WORKLOAD_NAME", &name).len(),
        2,
        "old and new workload processes"
    );

    // Connected again: its agent's next heartbeat is refused as fenced, and the
    // agent stops its workload and exits by itself, with the move still held.
    set_link(dir.path(), &before.instance_id, true);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_with_env("COMPUTEARBITRAGE_INSTANCE_ID", &before.instance_id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the replaced instance's agent kept running after it came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_to_string(
        dir.path()
            .join("local-driver")
            .join(format!("{}.log", before.instance_id)),
    )
    .unwrap();
    assert!(log.contains("fenced"), "the old agent's log: {log}");
    assert_eq!(processes_with_env("WORKLOAD_NAME", &name).len(), 1);
    // The endpoint never stopped answering from the replacement.
    assert_eq!(through_router(&after).await, (200, new_pid));
    service.stop();
    kill_workloads(dir.path());
}
