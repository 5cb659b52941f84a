//! Workloads end to end through the real service binary and the local driver:
//! interruption with signed webhooks, health failure and recovery, quota, dead letters.

mod common;

use common::*;
use computearbitrage_api::pb;
use computearbitrage_orchestrator::workloads::notify::{verify, SIGNATURE_HEADER};
use std::time::{Duration, Instant};

const SECRET: &str = "webhook-secret-for-tests-0123";

#[tokio::test(flavor = "multi_thread")]
async fn an_interruption_notice_terminates_the_workload_and_signed_notifications_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let receiver = Receiver::default();
    let url = receiver.start().await;
    service
        .admin()
        .await
        .set_webhook(authed(pb::SetWebhookRequest {
            url,
            secret: SECRET.into(),
        }))
        .await
        .unwrap();
    let mut client = service.workloads().await;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(spec("spot", &[])),
        }))
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
    assert_eq!(processes_with_env("WORKLOAD_NAME", "spot").len(), 1);

    let (headers, body) = receiver
        .wait_for_type("workload.ready", Duration::from_secs(10))
        .await;
    let signature = headers
        .iter()
        .find(|(k, _)| k == &SIGNATURE_HEADER.to_ascii_lowercase())
        .map(|(_, v)| v.clone())
        .unwrap();
    assert!(
        verify(SECRET, &signature, &body),
        "the receiver verifies the HMAC"
    );
    assert!(!verify("some-other-secret-000", &signature, &body));
    assert!(body.contains(&running.id));

    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 3000,
        }))
        .await
        .unwrap();
    let (_, interrupted) = receiver
        .wait_for_type("workload.interrupted", Duration::from_secs(5))
        .await;
    assert!(interrupted.contains("\"on_interruption\":\"terminate\""));
    let done = wait_status(
        &mut client,
        &created.id,
        &["TERMINATED"],
        Duration::from_secs(20),
    )
    .await;
    assert!(
        done.status_reason.contains("spot interruption"),
        "{}",
        done.status_reason
    );
    receiver
        .wait_for_type("workload.terminated", Duration::from_secs(5))
        .await;
    assert!(
        processes_with_env("WORKLOAD_NAME", "spot").is_empty(),
        "the process is gone"
    );

    // The ledger shows RUNNING → INTERRUPTED → TERMINATED through the runs.
    let runs = client
        .list_runs(authed(pb::ListRunsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[1].kind, "terminate");
    assert!(runs[1].reason.contains("on_interruption = \"terminate\""));
    assert_eq!(runs[1].steps[0].output, "{\"from\":\"INTERRUPTED\"}");
    let billing = client
        .get_billing(authed(pb::GetBillingRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(billing.total_cost > 0.0);

    // Every notification was delivered and recorded.
    let sent = client
        .list_notifications(authed(pb::ListNotificationsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = sent.notifications.iter().map(|n| n.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "workload.ready",
            "workload.interrupted",
            "workload.terminated"
        ]
    );
    assert!(sent.notifications.iter().all(|n| n.status == "delivered"));
    // The secret never reaches the log.
    assert!(!service.stderr.lock().unwrap().contains(SECRET));
    kill_workloads(dir.path());
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_health_checks_make_a_workload_unhealthy_and_a_success_recovers_it() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let status_file = dir.path().join("health-status");
    std::fs::write(&status_file, "ok").unwrap();
    let mut client = service.workloads().await;
    let spec = spec(
        "flaky",
        &[("HEALTH_STATUS_FILE", status_file.to_str().unwrap())],
    );
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;

    std::fs::write(&status_file, "fail").unwrap();
    let sick = wait_status(
        &mut client,
        &created.id,
        &["UNHEALTHY"],
        Duration::from_secs(10),
    )
    .await;
    assert!(
        sick.status_reason
            .contains("2 consecutive health checks failed"),
        "{}",
        sick.status_reason
    );
    assert!(
        sick.status_reason.contains("HTTP 503"),
        "{}",
        sick.status_reason
    );

    std::fs::write(&status_file, "ok").unwrap();
    wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(10),
    )
    .await;
    let sent = client
        .list_notifications(authed(pb::ListNotificationsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let kinds: Vec<&str> = sent.notifications.iter().map(|n| n.kind.as_str()).collect();
    assert_eq!(
        kinds,
        vec!["workload.ready", "workload.unhealthy", "workload.recovered"]
    );
    // No webhook is set: the failures are recorded, not lost.
    assert!(sent
        .notifications
        .iter()
        .all(|n| n.status == "failed" && n.last_error.contains("no webhook")));

    client
        .delete_workload(authed(pb::DeleteWorkloadRequest {
            id: created.id.clone(),
            reason: "test done".into(),
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
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_quota_check_fails_provisioning_with_the_quota_named_and_leaves_a_dead_letter() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__MAX_CONCURRENT_WORKLOADS", "1")],
    );
    let mut client = service.workloads().await;
    let first = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(spec("one", &[])),
        }))
        .await
        .unwrap()
        .into_inner();
    wait_status(
        &mut client,
        &first.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    let second = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(spec("two", &[])),
        }))
        .await
        .unwrap()
        .into_inner();
    let failed = wait_status(
        &mut client,
        &second.id,
        &["FAILED"],
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(failed.failed_step, "quota-check");
    assert!(
        failed.status_reason.contains("max_concurrent_workloads")
            && failed.status_reason.contains("may run 1"),
        "{}",
        failed.status_reason
    );

    // The run is marked dead a moment after the workload FAILED: two store writes.
    let listed = Instant::now() + Duration::from_secs(10);
    let dead = loop {
        let dead = client
            .list_dead_letters(authed(pb::ListDeadLettersRequest {}))
            .await
            .unwrap()
            .into_inner()
            .runs;
        if !dead.is_empty() || Instant::now() > listed {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].workload_id, second.id);
    assert_eq!(dead[0].failed_step, "quota-check");
    let refused = client
        .replay_dead_letter(authed(pb::ReplayDeadLetterRequest {
            run_id: dead[0].id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(refused.message().contains("apply the workload again"));

    // The name of a FAILED workload is free again; a different spec under an active name is refused.
    let mut changed = spec("one", &[]);
    changed.command.push("--other".into());
    let conflict = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(changed),
        }))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), tonic::Code::AlreadyExists);
    // The same spec adopts the existing workload.
    let adopted = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(spec("one", &[])),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(adopted.id, first.id);
    assert_eq!(processes_with_env("WORKLOAD_NAME", "one").len(), 1);

    client
        .delete_workload(authed(pb::DeleteWorkloadRequest {
            id: first.id.clone(),
            reason: String::new(),
        }))
        .await
        .unwrap();
    wait_status(
        &mut client,
        &first.id,
        &["TERMINATED"],
        Duration::from_secs(20),
    )
    .await;
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_specs_are_rejected_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut client = service.workloads().await;
    let mut bad = spec("bad", &[]);
    bad.health_check = Some(pb::HealthCheck {
        path: "health".into(),
        interval_seconds: 5,
        timeout_seconds: 1,
        unhealthy_threshold: 1,
    });
    let err = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(bad) }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.metadata()
            .get(computearbitrage_api::ERROR_FIELD_METADATA)
            .unwrap()
            .to_str()
            .unwrap(),
        "health_check.path"
    );
    let err = client
        .get_workload(authed(pb::GetWorkloadRequest {
            id: "wl-nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rpc_applies_the_shared_rules_and_names_its_reason() {
    use computearbitrage_api::{is_retryable, Reason, ERROR_FIELD_METADATA};
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut client = service.workloads().await;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(spec("rules", &[])),
        }))
        .await
        .unwrap()
        .into_inner();
    wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;

    // UpdateWorkload refuses what ApplyWorkload refuses, in the same words.
    for (key, value, words) in [
        ("PORT", "1", "PORT is set by the driver"),
        ("A=B", "x", "is not an environment variable name"),
        ("NUL", "a\0b", "contains a NUL character"),
        (
            "COMPUTEARBITRAGE_BOOTSTRAP_TOKEN",
            "x",
            "are the service's own",
        ),
        ("BIG", &"x".repeat(40_000), "more than the 32768 allowed"),
    ] {
        let mut env = std::collections::HashMap::new();
        env.insert(key.to_string(), value.to_string());
        let err = client
            .update_workload(authed(pb::UpdateWorkloadRequest {
                id: created.id.clone(),
                env: env.clone(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(Reason::of(&err), Some(Reason::InvalidArgument), "{key}");
        assert_eq!(err.metadata().get(ERROR_FIELD_METADATA).unwrap(), "env");
        assert!(err.message().contains(words), "{key}: {}", err.message());
        let mut create = spec("rules-create", &[]);
        create.env.extend(env);
        let on_create = client
            .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(create) }))
            .await
            .unwrap_err();
        assert!(
            on_create.message().contains(words),
            "{key}: {}",
            on_create.message()
        );
    }
    let mut tags = std::collections::HashMap::new();
    tags.insert("computearbitrage-tenant".to_string(), "other".to_string());
    let err = client
        .update_workload(authed(pb::UpdateWorkloadRequest {
            id: created.id.clone(),
            tags,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("set by the service on every instance"),
        "{}",
        err.message()
    );

    // Storage: the quota changes in place, `enabled` does not.
    let updated = client
        .update_workload(authed(pb::UpdateWorkloadRequest {
            id: created.id.clone(),
            storage: Some(pb::StorageSpec {
                enabled: false,
                quota_gb: 7,
                retention_days: 3,
            }),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.spec.unwrap().storage.unwrap().quota_gb, 7);
    let err = client
        .update_workload(authed(pb::UpdateWorkloadRequest {
            id: created.id.clone(),
            storage: Some(pb::StorageSpec {
                enabled: true,
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(Reason::of(&err), Some(Reason::NeedsReplacement));
    assert!(!is_retryable(&err));

    // Same name, a different spec: refused, naming the existing workload, what differs
    // (the updates above replaced env, tags and the rest too) and the import.
    let mut other = spec("rules", &[]);
    other.tags.insert("team".into(), "other".into());
    let err = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(other) }))
        .await
        .unwrap_err();
    assert_eq!(Reason::of(&err), Some(Reason::NameTaken));
    assert!(err.message().contains(&created.id) && err.message().contains("terraform import"));
    assert!(
        err.message()
            .contains("differs in env, health_check, on_interruption, storage, tags"),
        "{}",
        err.message()
    );

    // An update of a terminated workload says so, not "no offer matches".
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
    let err = client
        .update_workload(authed(pb::UpdateWorkloadRequest {
            id: created.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(Reason::of(&err), Some(Reason::WorkloadTerminated));
    let err = client
        .get_workload(authed(pb::GetWorkloadRequest {
            id: "wl-nope".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(Reason::of(&err), Some(Reason::NotFound));
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_that_exits_at_start_fails_with_its_own_last_words() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut client = service.workloads().await;
    let mut spec = spec("exits", &[]);
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        "echo starting; echo 'config file /etc/app.toml not found' >&2; exit 3".into(),
    ];
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    let failed = wait_status(
        &mut client,
        &created.id,
        &["FAILED"],
        Duration::from_secs(30),
    )
    .await;
    // The agent reported the workload's output, so the reason says what went wrong,
    // not only "exit status: 3".
    assert!(
        failed
            .status_reason
            .contains("config file /etc/app.toml not found")
            && failed.status_reason.contains("starting")
            && failed.status_reason.contains("exit status: 3"),
        "{}",
        failed.status_reason
    );
    service.stop();
    kill_workloads(dir.path());
}
