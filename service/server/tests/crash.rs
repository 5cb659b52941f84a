//! Crash safety: kill -9 the service at several points of provisioning, restart it,
//! and check that the workload reaches RUNNING with exactly one process and that no
//! completed step of the ledger was done twice.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::time::Duration;

const STEPS: [&str; 10] = [
    "quota-check",
    "placement",
    "mark-provisioning",
    "provision",
    "wait-running",
    "wait-healthy",
    "register-routing",
    "storage-init",
    "start-monitoring",
    "notify",
];

/// Crash at `step:when`, restart, and check the outcome.
async fn crash_and_recover(step: &str, when: &str) {
    let dir = tempfile::tempdir().unwrap();
    // Unique per test run: a run that failed may have left its processes behind.
    let name = format!("crash-{step}-{when}-{}", std::process::id());
    let pause = format!("{step}:{when}");
    let service = Service::start(dir.path(), &[("CA_TEST_PAUSE_AT", pause.as_str())]);
    let mut client = service.workloads().await;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(spec(&name, &[])),
        }))
        .await
        .unwrap()
        .into_inner();
    service.wait_for_log(&format!("paused at {pause}"), Duration::from_secs(30));
    let address = service.address();
    service.kill();

    // Where the instance's agent calls the service.
    let service = Service::start_on(dir.path(), &address, &[]);
    let mut client = service.workloads().await;
    let running = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        processes_with_env("WORKLOAD_NAME", &name).len(),
        1,
        "exactly one process after a crash at {pause}"
    );
    // Reached through the router, with the workload's own token.
    let answer = reqwest::Client::new()
        .get(&running.endpoint)
        .bearer_auth(&running.access_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(answer.contains(&name));

    // A crash after the step that marks it RUNNING leaves the rest of the run to the
    // restarted service: wait for the run, not only for the status.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let runs = loop {
        let runs = client
            .list_runs(authed(pb::ListRunsRequest {
                workload_id: created.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .runs;
        if runs.iter().all(|r| r.status != "running") || std::time::Instant::now() > deadline {
            break runs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.status, "completed");
    let crashed_at = STEPS.iter().position(|s| *s == step).unwrap();
    for (i, s) in run.steps.iter().enumerate() {
        assert_eq!(s.name, STEPS[i]);
        assert!(s.completed, "{} completed", s.name);
        // A step completed before the crash is never redone; the step the crash cut
        // short ran once more.
        let expected = if i == crashed_at && when != "after" {
            2
        } else {
            1
        };
        assert_eq!(
            s.attempts, expected,
            "attempts of {} after a crash at {pause}",
            s.name
        );
    }
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
    assert!(processes_with_env("WORKLOAD_NAME", &name).is_empty());
    service.stop();
    kill_workloads(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_quota_check() {
    crash_and_recover("quota-check", "after").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_the_instance_started_but_before_the_ledger_recorded_it() {
    crash_and_recover("provision", "uncommitted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_provisioning() {
    crash_and_recover("provision", "after").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_while_waiting_for_health() {
    crash_and_recover("wait-healthy", "before").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_after_routing_was_registered() {
    crash_and_recover("register-routing", "after").await;
}
