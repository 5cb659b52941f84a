//! `on_unhealthy = "replace"` through the real binaries: a workload that stays
//! UNHEALTHY moves to a fresh instance under the same id, endpoint and token, restored
//! from its newest periodic checkpoint; a replacement that cannot become healthy is
//! given up, and the workload stays on its instance.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::time::{Duration, Instant};

type Client = pb::workloads_client::WorkloadsClient<tonic::transport::Channel>;

fn replacing_spec(name: &str, health_file: &str) -> pb::WorkloadSpec {
    let mut spec = spec(
        name,
        &[
            ("SAVE_EVERY_COUNT", "1"),
            ("HEALTH_STATUS_FILE", health_file),
        ],
    );
    spec.storage = test_storage();
    spec.checkpoint = Some(pb::CheckpointSpec {
        interval_seconds: 1,
        ..Default::default()
    });
    spec.on_unhealthy = "replace".into();
    spec.replace_unhealthy_after_seconds = 2;
    spec
}

/// Polls the workload until `done` holds, keeping every status it passed through.
async fn watch_until(
    client: &mut Client,
    id: &str,
    within: Duration,
    done: impl Fn(&pb::Workload) -> bool,
) -> (pb::Workload, Vec<String>) {
    let started = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let w = get(client, id).await;
        if seen.last() != Some(&w.status) {
            seen.push(w.status.clone());
        }
        if done(&w) {
            return (w, seen);
        }
        assert!(
            started.elapsed() < within,
            "workload {id} went {seen:?}, last {}: {}",
            w.status,
            w.status_reason
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_workload_moves_to_a_fresh_instance_with_its_state_and_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300")],
    );
    let mut client = service.workloads().await;
    // Relative: each instance reads the file in its own working directory, so only
    // the one it is written for fails.
    let spec = replacing_spec(&format!("unhealthy-{}", std::process::id()), "health");
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    let stored = created.spec.clone().unwrap();
    assert_eq!(
        (
            stored.on_unhealthy.as_str(),
            stored.replace_unhealthy_after_seconds
        ),
        ("replace", 2)
    );
    let before = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    let count_url = format!("{}/count", before.endpoint.trim_end_matches('/'));
    for _ in 0..3 {
        assert_eq!(get_json(&count_url, &before.access_token).await.0, 200);
    }
    // A periodic copy holding count 3 (each /count saves the state, a copy a second).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!complete_checkpoints(&service, &created.id).await.is_empty());

    let task = queue_task(
        &mut client,
        &created.id,
        "exec",
        &["sh", "-c", "echo fail > health"],
        10,
    )
    .await;
    assert_eq!(
        wait_task(&mut client, &task, Duration::from_secs(20))
            .await
            .exit_code,
        Some(0)
    );
    let (after, seen) = watch_until(&mut client, &created.id, Duration::from_secs(60), |w| {
        w.status == "RUNNING" && w.instance_id != before.instance_id
    })
    .await;
    // Never INTERRUPTED: nothing was reclaimed.
    assert_eq!(
        seen,
        ["RUNNING", "UNHEALTHY", "PROVISIONING", "RUNNING"],
        "{seen:?}"
    );
    assert_eq!(
        (
            after.id.as_str(),
            after.endpoint.as_str(),
            after.access_token.as_str()
        ),
        (
            before.id.as_str(),
            before.endpoint.as_str(),
            before.access_token.as_str()
        )
    );
    let state_url = format!("{}/state", before.endpoint.trim_end_matches('/'));
    let (status, state) = get_json(&state_url, &before.access_token).await;
    assert_eq!(status, 200);
    assert_eq!(state["restored"], true, "{state}");
    assert_eq!(
        state["count"], 3,
        "restored from the periodic copy: {state}"
    );
    // The old instance is gone.
    let old_gone = Instant::now() + Duration::from_secs(15);
    while !processes_with_env("COMPUTEARBITRAGE_INSTANCE_ID", &before.instance_id).is_empty() {
        assert!(
            Instant::now() < old_gone,
            "instance {} still runs",
            before.instance_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The last step of the move, a moment after the switch.
    let notified = Instant::now() + Duration::from_secs(15);
    let (told, migrated) = loop {
        let told = notifications(&mut client, &created.id).await;
        if let Some(m) = told.iter().find(|n| n.kind == "workload.migrated").cloned() {
            break (told, m);
        }
        assert!(
            Instant::now() < notified,
            "no workload.migrated notification"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        migrated.payload.contains("\"cause\":\"unhealthy\""),
        "{}",
        migrated.payload
    );
    assert!(
        !told
            .iter()
            .any(|n| n.kind == "workload.interrupted" || n.kind == "workload.checkpoint_failed"),
        "{:?}",
        told.iter().map(|n| &n.kind).collect::<Vec<_>>()
    );
    // It is watched on its new instance: healthy, it stays RUNNING.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get(&mut client, &created.id).await.status, "RUNNING");
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replacement_that_cannot_become_healthy_leaves_the_workload_on_its_instance() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300")],
    );
    let mut client = service.workloads().await;
    // Absolute: every instance fails while it says so, the replacement too.
    let health = dir.path().join("health");
    std::fs::write(&health, "ok").unwrap();
    let name = format!("unhealthy-stuck-{}", std::process::id());
    let mut spec = replacing_spec(&name, health.to_str().unwrap());
    spec.create_timeout_seconds = 8;
    spec.replace_unhealthy_after_seconds = 1;
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
    std::fs::write(&health, "fail").unwrap();
    wait_status(
        &mut client,
        &created.id,
        &["PROVISIONING"],
        Duration::from_secs(30),
    )
    .await;
    // The replacement never passes its health check; within the create timeout it is
    // given up and the workload is back on its own instance.
    let (back, _) = watch_until(&mut client, &created.id, Duration::from_secs(40), |w| {
        w.status_reason
            .contains("replacing the unhealthy instance failed")
    })
    .await;
    assert_eq!(back.instance_id, before.instance_id, "{back:?}");
    assert!(
        back.status == "RUNNING" || back.status == "UNHEALTHY",
        "{back:?}"
    );
    // The failed replacement is terminated; the workload's own process is left.
    let one_left = Instant::now() + Duration::from_secs(15);
    while processes_with_env("WORKLOAD_NAME", &name).len() != 1 {
        assert!(
            Instant::now() < one_left,
            "{} workload processes",
            processes_with_env("WORKLOAD_NAME", &name).len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Told right after the workload is back.
    let notified = Instant::now() + Duration::from_secs(15);
    let told = loop {
        let told = notifications(&mut client, &created.id).await;
        if told.iter().any(|n| n.kind == "workload.replacement_failed") {
            break told;
        }
        assert!(
            Instant::now() < notified,
            "no workload.replacement_failed: {told:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(!told.iter().any(|n| n.kind == "workload.failed"));
    // Healthy again, it stays where it is.
    std::fs::write(&health, "ok").unwrap();
    let (settled, _) = watch_until(&mut client, &created.id, Duration::from_secs(30), |w| {
        w.status == "RUNNING"
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let now = get(&mut client, &created.id).await;
    assert_eq!(
        (now.status.as_str(), now.instance_id.as_str()),
        ("RUNNING", settled.instance_id.as_str())
    );
    assert_eq!(now.instance_id, before.instance_id);
    service.stop();
}
