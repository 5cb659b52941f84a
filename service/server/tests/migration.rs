//! Migration through the real binary: the agent runs the workload, an interruption
//! notice makes the agent checkpoint `$CHECKPOINT_DIR` (chunks, then the manifest),
//! the workload moves to another offer under the same id, endpoint, token and TCP
//! port, the replacement restores the checkpoint, and the old instance is fenced.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::time::{Duration, Instant};

type Client = pb::workloads_client::WorkloadsClient<tonic::transport::Channel>;

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_workload_checkpoints_and_moves_with_its_endpoint_and_state() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::default();
    let webhook = receiver.start().await;
    let service = Service::start(
        dir.path(),
        &[
            ("COMPUTEARBITRAGE_WORKLOADS__INTERRUPTION_DELAY_MS", "8000"),
            ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300"),
        ],
    );
    service
        .admin()
        .await
        .set_webhook(authed(pb::SetWebhookRequest {
            url: webhook,
            secret: "migration-webhook-secret".into(),
        }))
        .await
        .unwrap();
    let mut client = service.workloads().await;
    // Unique per test run: a run that failed may have left its processes behind.
    let name = format!("mover-{}", std::process::id());
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(migrating_spec(&name)),
        }))
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
    let count_url = format!("{}/count", before.endpoint.trim_end_matches('/'));
    let state_url = format!("{}/state", before.endpoint.trim_end_matches('/'));
    for expected in 1..=3 {
        let (status, body) = get_json(&count_url, &before.access_token).await;
        assert_eq!(status, 200);
        assert_eq!(body["count"], expected);
    }
    let (_, state) = get_json(&state_url, &before.access_token).await;
    assert_eq!(state["restored"], false, "a first start restores nothing");

    let notice_at = Instant::now();
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    // While the workload moves the route answers 503 with Retry-After (the call above
    // returns once the notice is raised; the route follows within milliseconds).
    let until = Instant::now() + Duration::from_secs(2);
    let response = loop {
        let response = reqwest::Client::new()
            .get(&count_url)
            .bearer_auth(&before.access_token)
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 503 || Instant::now() > until {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(response.status().as_u16(), 503, "the route answers 503");
    assert!(response.headers().contains_key("retry-after"));

    let (_, migrated) = receiver
        .wait_for_type("workload.migrated", Duration::from_secs(40))
        .await;
    let after = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(10),
    )
    .await;
    let moved_in = notice_at.elapsed();
    assert_eq!(after.id, before.id);
    assert_eq!(after.endpoint, before.endpoint, "the same endpoint");
    assert_eq!(after.access_token, before.access_token, "the same token");
    assert_ne!(after.instance_id, before.instance_id, "a new instance");
    let offer = |w: &pb::Workload| {
        (
            w.cloud.clone(),
            w.region.clone(),
            w.zone.clone(),
            w.instance_type.clone(),
        )
    };
    assert_ne!(
        offer(&before),
        offer(&after),
        "the reclaimed offer is excluded"
    );
    let migrated: serde_json::Value = serde_json::from_str(&migrated).unwrap();
    assert_eq!(migrated["details"]["final_checkpoint"], true, "{migrated}");

    // The replacement restored the checkpoint the old one wrote on SIGTERM.
    let (status, state) = get_json(&state_url, &after.access_token).await;
    assert_eq!(status, 200);
    assert_eq!(state["restored"], true, "{state}");
    assert_eq!(state["count"], 3, "{state}");
    assert_eq!(state["generation"], 1, "{state}");
    let (_, next) = get_json(&count_url, &after.access_token).await;
    assert_eq!(next["count"], 4);

    // One live process, the replacement's; the old instance is gone.
    assert_eq!(processes_with_env("WORKLOAD_NAME", &name).len(), 1);
    // The checkpoint is in storage: chunks and the manifest that completes it.
    let objects = client
        .list_objects(authed(pb::ListObjectsRequest {
            workload_id: created.id.clone(),
            prefix: "checkpoints/".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .objects;
    assert!(
        objects.iter().any(|o| o.key.ends_with("/manifest.json")),
        "{objects:?}"
    );
    assert!(objects.iter().any(|o| o.key.contains("/chunks/")));

    // Runs: the provisioning, then the migration, every step completed.
    let runs = client
        .list_runs(authed(pb::ListRunsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .runs;
    let kinds: Vec<&str> = runs.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, vec!["provision", "migrate"]);
    assert!(runs[1].steps.iter().all(|s| s.completed), "{:?}", runs[1]);
    // Billing: one segment per instance.
    let billing = client
        .get_billing(authed(pb::GetBillingRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(billing.records.len(), 2, "{billing:?}");
    assert_eq!(billing.records[0].instance_id, before.instance_id);
    assert!(
        !billing.records[0].open,
        "the old instance's segment is closed"
    );
    assert_eq!(billing.records[1].instance_id, after.instance_id);
    assert!(billing.records[1].open, "the replacement's runs on");
    assert_eq!(billing.migrations, 1);
    assert!(
        billing.downtime_seconds > 0.0 && billing.downtime_seconds < moved_in.as_secs_f64() + 1.0,
        "{billing:?}"
    );
    // The resource's cost_to_date is the closed segments': the old instance's.
    let now = get(&mut client, &created.id).await;
    assert_eq!(
        now.cost_to_date,
        Some(billing.records[0].cost),
        "{billing:?}"
    );
    assert!(billing.records[0].cost > 0.0);
    assert!(
        billing.total_cost > billing.records[0].cost,
        "the open segment counts in the total"
    );
    let kinds: Vec<String> = receiver
        .bodies()
        .iter()
        .filter_map(|(_, b)| serde_json::from_str::<serde_json::Value>(b).ok())
        .map(|b| b["type"].as_str().unwrap_or_default().to_string())
        .collect();
    for kind in [
        "workload.interrupted",
        "workload.migrating",
        "workload.migrated",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|k| k == "workload.checkpoint_failed"),
        "{kinds:?}"
    );
    eprintln!("notice → serving on the replacement: {moved_in:?}");

    // Logs: both instances' output, through the API and the CLI, across the move.
    let deadline = Instant::now() + Duration::from_secs(15);
    let lines = loop {
        let lines = client
            .get_logs(authed(pb::GetLogsRequest {
                workload_id: created.id.clone(),
                after_seq: 0,
                limit: 0,
            }))
            .await
            .unwrap()
            .into_inner()
            .lines;
        if lines
            .iter()
            .filter(|l| l.text.contains("serving on"))
            .count()
            == 2
        {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "logs of both instances: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let serving: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l.text.contains("serving on"))
        .map(|l| (l.instance_id.as_str(), l.text.as_str()))
        .collect();
    assert_eq!(serving[0].0, before.instance_id);
    assert!(serving[0].1.ends_with("restored=False"), "{serving:?}");
    assert_eq!(serving[1].0, after.instance_id);
    assert!(serving[1].1.ends_with("restored=True"), "{serving:?}");
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
        .args(["workload", "logs", &created.id])
        .env("COMPUTEARBITRAGE_ENDPOINT", &service.endpoint)
        .env("COMPUTEARBITRAGE_TOKEN", TOKEN)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(
        printed.contains("restored=False") && printed.contains("restored=True"),
        "{printed}"
    );
    // The reclaimed instance's log segment was stored before it went.
    let segments = client
        .list_objects(authed(pb::ListObjectsRequest {
            workload_id: created.id.clone(),
            prefix: "artifacts/logs/".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .objects;
    assert!(
        segments.iter().any(|o| o
            .key
            .starts_with(&format!("artifacts/logs/{}/", before.instance_id))),
        "{segments:?}"
    );

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
    kill_workloads(dir.path());
    service.stop();
}

/// kill -9 the service at a migration step, restart it where the agents call it, and
/// check the migration completes once: one live instance, the checkpoint restored,
/// the crashed step redone and no completed step redone.
async fn crash_during_migration(step: &str, when: &str) {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("mcrash-{step}-{when}-{}", std::process::id());
    let pause = format!("migrate.{step}:{when}");
    let env = [
        ("COMPUTEARBITRAGE_WORKLOADS__INTERRUPTION_DELAY_MS", "20000"),
        ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300"),
    ];
    let mut paused_env = env.to_vec();
    paused_env.push(("CA_TEST_PAUSE_AT", pause.as_str()));
    let service = Service::start(dir.path(), &paused_env);
    let mut client = service.workloads().await;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(migrating_spec(&name)),
        }))
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
    let count_url = format!("{}/count", before.endpoint.trim_end_matches('/'));
    for _ in 0..3 {
        get_json(&count_url, &before.access_token).await;
    }
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    service.wait_for_log(&format!("paused at {pause}"), Duration::from_secs(30));
    // The final checkpoint is complete before the crash (a crash during its upload is
    // the fallback path: the newest complete checkpoint, or none).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let objects = client
            .list_objects(authed(pb::ListObjectsRequest {
                workload_id: created.id.clone(),
                prefix: "checkpoints/".into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .objects;
        if objects.iter().any(|o| o.key.ends_with("/manifest.json")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no final checkpoint before the crash"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let address = service.address();
    service.kill();

    let service = Service::start_on(dir.path(), &address, &env);
    let mut client = service.workloads().await;
    let after = wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(40),
    )
    .await;
    // The router of the restarted test service listens elsewhere; the route is the same.
    let route = |e: &str| e.split_once("/w/").map(|(_, r)| r.to_string());
    assert_eq!(route(&after.endpoint), route(&before.endpoint));
    let state_url = format!("{}/state", after.endpoint.trim_end_matches('/'));
    let (_, state) = get_json(&state_url, &after.access_token).await;
    assert_eq!(state["restored"], true, "after a crash at {pause}: {state}");
    assert_eq!(state["count"], 3, "after a crash at {pause}: {state}");

    // The run finishes (its last steps may still be going once RUNNING shows).
    let deadline = Instant::now() + Duration::from_secs(20);
    let migration = loop {
        let runs = client
            .list_runs(authed(pb::ListRunsRequest {
                workload_id: created.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .runs;
        let migration = runs.into_iter().find(|r| r.kind == "migrate").unwrap();
        if migration.status != "running" || Instant::now() > deadline {
            break migration;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(migration.status, "completed", "{migration:?}");
    for s in &migration.steps {
        assert!(s.completed, "{} completed after a crash at {pause}", s.name);
        let expected = if s.name == step && when != "after" {
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
    assert_eq!(
        processes_with_env("WORKLOAD_NAME", &name).len(),
        1,
        "one live instance after a crash at {pause}"
    );
    let billing = client
        .get_billing(authed(pb::GetBillingRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        billing.records.iter().filter(|r| !r.open).count(),
        1,
        "one closed segment: {billing:?}"
    );
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
async fn crash_at_each_migration_step_resumes_it_once() {
    // One at a time: each crash restarts a service on its own port.
    for step in [
        "record-interruption",
        "placement",
        "mark-migrating",
        "provision",
        "await-checkpoint",
        "wait-running",
        "wait-healthy",
        "switch-route",
        "terminate-replaced",
        "notify",
    ] {
        crash_during_migration(step, "uncommitted").await;
    }
    crash_during_migration("switch-route", "after").await;
    crash_during_migration("provision", "before").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_destroy_during_a_migration_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut client = service.workloads().await;
    let name = format!("moving-destroyed-{}", std::process::id());
    // The replacement takes its time to serve after restoring: the destroy lands while
    // the migration waits for it to be healthy.
    let mut spec = migrating_spec(&name);
    spec.env.insert("SLOW_RESTORE_SECONDS".into(), "60".into());
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
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = client
            .list_runs(authed(pb::ListRunsRequest {
                workload_id: created.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .runs;
        let waiting = runs.iter().any(|r| {
            r.kind == "migrate"
                && r.steps
                    .iter()
                    .any(|s| s.name == "wait-healthy" && !s.completed)
        });
        if waiting {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the migration never waited for health: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The replacement restores, then starts (and takes its time to serve).
    while processes_with_env("WORKLOAD_NAME", &name).is_empty() {
        assert!(Instant::now() < deadline, "the replacement never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .delete_workload(authed(pb::DeleteWorkloadRequest {
            id: created.id.clone(),
            reason: "destroyed mid-migration".into(),
        }))
        .await
        .unwrap();
    let done = wait_status(
        &mut client,
        &created.id,
        &["TERMINATED"],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        done.status_reason.contains("destroyed mid-migration"),
        "{}",
        done.status_reason
    );
    assert!(
        processes_with_env("WORKLOAD_NAME", &name).is_empty(),
        "no instance survives"
    );
    let runs = client
        .list_runs(authed(pb::ListRunsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .runs;
    let migration = runs.iter().find(|r| r.kind == "migrate").unwrap();
    assert_eq!(
        migration.status, "completed",
        "stopped at a step boundary: {migration:?}"
    );
    assert!(migration.error.contains("cancelled"), "{migration:?}");
    service.stop();
    kill_workloads(dir.path());
}

fn signal_process(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process (or group) this test's service started.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_agent_is_not_lost_while_its_instance_lives_but_a_vanished_instance_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300")],
    );
    let mut client = service.workloads().await;
    let name = format!("vanishing-{}", std::process::id());
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(migrating_spec(&name)),
        }))
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
    let agent = processes_with_env("COMPUTEARBITRAGE_INSTANCE_ID", &before.instance_id);
    assert_eq!(agent.len(), 1, "one agent per instance: {agent:?}");
    let agent = agent[0];

    // A paused agent sends no heartbeats for 10 × the interval, but its instance is
    // alive: no loss is declared, nothing moves.
    signal_process(agent, libc::SIGSTOP);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = get(&mut client, &created.id).await;
    signal_process(agent, libc::SIGCONT);
    assert_eq!(still.status, "RUNNING", "{}", still.status_reason);
    assert_eq!(still.instance_id, before.instance_id);
    service.wait_for_log("not declared lost", Duration::from_secs(5));

    // The whole instance vanishes (its process group killed, no notice): the agent is
    // silent and the driver agrees it ended, so the workload moves.
    signal_process_group(agent);
    let after = wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(after.endpoint, before.endpoint);
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
        vec!["provision", "migrate"]
    );
    let (status, state) = get_json(
        &format!("{}/state", after.endpoint.trim_end_matches('/')),
        &after.access_token,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        state["restored"], false,
        "no checkpoint was ever taken: {state}"
    );
    assert_eq!(processes_with_env("WORKLOAD_NAME", &name).len(), 1);
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
    service.stop();
    kill_workloads(dir.path());
}

fn signal_process_group(leader: u32) {
    // The agent leads its instance's process group: the instance, as a VM, goes whole.
    // SAFETY: kill(2) on the process group of an instance this test's service started.
    unsafe {
        libc::kill(-(leader as i32), libc::SIGKILL);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_of_its_own_user_migrates_with_its_checkpoint() {
    // The default isolation: as root each workload runs as its own uid, the agent as
    // root until the notice, then as the workload's user while it checkpoints.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: per-workload users need root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    // The workload reads its script as its own user: a world-readable copy.
    let scripts = root.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    let script = scripts.join("http_server.py");
    std::fs::copy(workload_server(), &script).unwrap();
    for (path, mode) in [(root.path(), 0o755), (&scripts, 0o755), (&script, 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let work = root.path().join("work");
    let service = Service::start(
        &root.path().join("data"),
        &[
            ("COMPUTEARBITRAGE_WORKLOADS__LOCAL__RUN_AS", "per-workload"),
            (
                "COMPUTEARBITRAGE_WORKLOADS__LOCAL__WORK_DIR",
                work.to_str().unwrap(),
            ),
        ],
    );
    let mut client = service.workloads().await;
    let name = format!("own-user-{}", std::process::id());
    let mut spec = migrating_spec(&name);
    spec.command = vec!["/usr/bin/python3".into(), script.to_str().unwrap().into()];
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
    let count_url = format!("{}/count", before.endpoint.trim_end_matches('/'));
    for _ in 0..2 {
        get_json(&count_url, &before.access_token).await;
    }
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    let after = wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(40),
    )
    .await;
    let (_, state) = get_json(
        &format!("{}/state", after.endpoint.trim_end_matches('/')),
        &after.access_token,
    )
    .await;
    assert_eq!(state["restored"], true, "{state}");
    assert_eq!(state["count"], 2, "{state}");
    // The replacement runs as an unprivileged user of its own.
    let pids = processes_with_env("WORKLOAD_NAME", &name);
    assert_eq!(pids.len(), 1);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap();
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|u| u.parse().ok())
        .unwrap();
    assert!(uid >= 200_000, "runs as uid {uid}");
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
    service.stop();
}

/// The names of the complete checkpoints (those with a manifest), oldest first.
async fn set_checkpoint(
    client: &mut pb::workloads_client::WorkloadsClient<tonic::transport::Channel>,
    current: &pb::Workload,
    checkpoint: pb::CheckpointSpec,
) {
    let mut request = update_request(current);
    request.checkpoint = Some(checkpoint);
    client.update_workload(authed(request)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_checkpoints_keep_the_newest_change_in_place_and_bring_a_vanished_instance_back() {
    use std::os::unix::fs::PermissionsExt;
    // As root the workload runs as its own user, and so does the copy (the agent's
    // `snapshot` child); otherwise both run as this user.
    let root = tempfile::tempdir().unwrap();
    let scripts = root.path().join("scripts");
    std::fs::create_dir(&scripts).unwrap();
    let script = scripts.join("http_server.py");
    std::fs::copy(workload_server(), &script).unwrap();
    for (path, mode) in [(root.path(), 0o755), (&scripts, 0o755), (&script, 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let work = root.path().join("work");
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut env = vec![
        ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300"),
        (
            "COMPUTEARBITRAGE_WORKLOADS__LOCAL__WORK_DIR",
            work.to_str().unwrap(),
        ),
    ];
    if as_root {
        env.push(("COMPUTEARBITRAGE_WORKLOADS__LOCAL__RUN_AS", "per-workload"));
    }
    let service = Service::start(&root.path().join("data"), &env);
    let mut client = service.workloads().await;
    let name = format!("periodic-{}", std::process::id());
    let mut spec = migrating_spec(&name);
    spec.command = vec!["/usr/bin/python3".into(), script.to_str().unwrap().into()];
    spec.env.insert("SAVE_EVERY_COUNT".into(), "1".into());
    spec.checkpoint = Some(pb::CheckpointSpec {
        interval_seconds: 1,
        keep: 2,
        ..Default::default()
    });
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    let stored = created.spec.clone().unwrap().checkpoint.unwrap();
    assert_eq!(stored.signal, "SIGTERM", "the default is filled in");
    let before = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    let count_url = format!("{}/count", before.endpoint.trim_end_matches('/'));
    for _ in 0..3 {
        get_json(&count_url, &before.access_token).await;
    }

    // A copy a second: at least four complete ones come, and only the newest two stay.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 4 {
        seen.extend(complete_checkpoints(&service, &created.id).await);
        assert!(Instant::now() < deadline, "periodic checkpoints: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Changed in place: no more copies once the agent's next heartbeat has it.
    set_checkpoint(
        &mut client,
        &before,
        pb::CheckpointSpec {
            interval_seconds: 0,
            keep: 2,
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let kept = complete_checkpoints(&service, &created.id).await;
    seen.extend(kept.iter().cloned());
    let newest: Vec<String> = seen.iter().rev().take(2).rev().cloned().collect();
    assert_eq!(kept, newest, "the newest two of {seen:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        complete_checkpoints(&service, &created.id).await,
        kept,
        "no copy after the interval was turned off"
    );

    // A checkpoint command that fails: the tenant is told once, not every second.
    set_checkpoint(
        &mut client,
        &before,
        pb::CheckpointSpec {
            interval_seconds: 1,
            keep: 2,
            command: vec!["/bin/false".into()],
            ..Default::default()
        },
    )
    .await;
    let failed = |notifications: &[pb::Notification]| {
        notifications
            .iter()
            .filter(|n| n.kind == "workload.checkpoint_failed")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let notifications = loop {
        let notifications = client
            .list_notifications(authed(pb::ListNotificationsRequest {
                workload_id: created.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .notifications;
        if failed(&notifications) > 0 {
            break notifications;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint_failed notification"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let told = notifications
        .iter()
        .find(|n| n.kind == "workload.checkpoint_failed")
        .unwrap();
    assert!(told.payload.contains("periodic"), "{}", told.payload);
    assert!(
        told.payload.contains("checkpoint command failed"),
        "{}",
        told.payload
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = client
        .list_notifications(authed(pb::ListNotificationsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .notifications;
    assert_eq!(failed(&later), 1, "told once while it keeps failing");
    assert_eq!(complete_checkpoints(&service, &created.id).await, kept);

    // Copies again; the count moves on, and the instance then vanishes without a
    // notice: the replacement comes back from the newest periodic checkpoint.
    set_checkpoint(
        &mut client,
        &before,
        pb::CheckpointSpec {
            interval_seconds: 1,
            keep: 2,
            ..Default::default()
        },
    )
    .await;
    let (_, body) = get_json(&count_url, &before.access_token).await;
    assert_eq!(body["count"], 4);
    let newest_before = kept.last().cloned().unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = complete_checkpoints(&service, &created.id).await;
        if now.last().is_some_and(|n| *n > newest_before) {
            break;
        }
        assert!(Instant::now() < deadline, "no copy after re-enabling");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let agent = processes_with_env("COMPUTEARBITRAGE_INSTANCE_ID", &before.instance_id);
    assert_eq!(agent.len(), 1, "{agent:?}");
    signal_process_group(agent[0]);
    let after = wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(40),
    )
    .await;
    let (_, state) = get_json(
        &format!("{}/state", after.endpoint.trim_end_matches('/')),
        &after.access_token,
    )
    .await;
    assert_eq!(state["restored"], true, "{state}");
    assert_eq!(state["count"], 4, "the newest periodic copy: {state}");
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
    service.stop();
    kill_workloads(&root.path().join("data"));
}

/// The chunks stored under `checkpoints/chunks/`: (count, bytes).
async fn shared_chunks(service: &Service, workload_id: &str) -> (usize, u64) {
    let mut client = service.workloads().await;
    let objects = client
        .list_objects(authed(pb::ListObjectsRequest {
            workload_id: workload_id.into(),
            prefix: "checkpoints/chunks/".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .objects;
    (objects.len(), objects.iter().map(|o| o.size_bytes).sum())
}

async fn checkpoint_now(client: &mut Client, id: &str) {
    let task = queue_task(client, id, "checkpoint", &[], 60).await;
    let done = wait_task(client, &task, Duration::from_secs(60)).await;
    assert_eq!(done.state, "COMPLETED", "{done:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_uploads_only_the_chunks_no_earlier_one_stored() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300")],
    );
    let mut client = service.workloads().await;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(migrating_spec(&format!("chunks-{}", std::process::id()))),
        }))
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
    // 20 MiB: three chunks of at most 8 MiB.
    exec_ok(
        &mut client,
        &created.id,
        "head -c 20971520 /dev/urandom > checkpoint/big",
    )
    .await;
    checkpoint_now(&mut client, &created.id).await;
    let (count, bytes) = shared_chunks(&service, &created.id).await;
    assert_eq!(
        (count, bytes),
        (3, 20 << 20),
        "the first copy stores it all"
    );

    // Nothing changed: the next checkpoint stores only its manifest.
    checkpoint_now(&mut client, &created.id).await;
    assert_eq!(shared_chunks(&service, &created.id).await, (3, 20 << 20));
    assert_eq!(complete_checkpoints(&service, &created.id).await.len(), 2);

    // One byte of the last chunk changes: one new chunk of 4 MiB, not 20 MiB again.
    exec_ok(
        &mut client,
        &created.id,
        "printf x | dd of=checkpoint/big bs=1 seek=20971000 conv=notrunc 2>/dev/null",
    )
    .await;
    checkpoint_now(&mut client, &created.id).await;
    assert_eq!(
        shared_chunks(&service, &created.id).await,
        (4, (20 << 20) + (4 << 20))
    );
    let digest = exec_ok(&mut client, &created.id, "sha256sum checkpoint/big").await;

    // A migration restores the newest from the shared chunks, byte for byte.
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        exec_ok(&mut client, &created.id, "sha256sum checkpoint/big").await,
        digest
    );
    service.stop();
    kill_workloads(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replacement_that_cannot_restore_its_checkpoint_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300")],
    );
    let mut client = service.workloads().await;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(migrating_spec(&format!(
                "unrestorable-{}",
                std::process::id()
            ))),
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
    exec_ok(
        &mut client,
        &created.id,
        "head -c 65536 /dev/urandom > checkpoint/data",
    )
    .await;
    checkpoint_now(&mut client, &created.id).await;
    // Every stored chunk goes bad in place (same key, same size), as a disk or a
    // bucket could corrupt it. The final checkpoint reuses the chunk of `data`.
    let chunks = dir
        .path()
        .join("storage/workloads")
        .join(&created.id)
        .join("checkpoints/chunks");
    let mut corrupted = 0;
    for entry in std::fs::read_dir(&chunks).unwrap() {
        let path = entry.unwrap().path();
        let flipped: Vec<u8> = std::fs::read(&path).unwrap().iter().map(|b| !b).collect();
        std::fs::write(&path, flipped).unwrap();
        corrupted += 1;
    }
    assert!(corrupted > 0, "no chunk under {}", chunks.display());
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    let failed = wait_status(
        &mut client,
        &created.id,
        &["FAILED"],
        Duration::from_secs(60),
    )
    .await;
    // Not only "exited": the agent's own reason reaches the diagnostic.
    assert!(
        failed
            .status_reason
            .contains("did not start the workload: cannot restore checkpoint")
            && failed.status_reason.contains("does not match its SHA-256")
            && !failed.status_reason.contains("must listen on 0.0.0.0"),
        "{}",
        failed.status_reason
    );
    service.stop();
    kill_workloads(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_notice_signal_reaches_the_processes_a_shell_wrapper_started() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[
            ("COMPUTEARBITRAGE_WORKLOADS__INTERRUPTION_DELAY_MS", "8000"),
            ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300"),
        ],
    );
    let mut client = service.workloads().await;
    // A wrapper that, like most, does not pass SIGTERM on: it waits for its children.
    // A helper records that it heard the signal into $CHECKPOINT_DIR.
    let wrapper = r#"
trap 'wait "$helper"; wait "$server"; exit 0' TERM
(trap 'echo heard > "$CHECKPOINT_DIR/helper-heard"; exit 0' TERM
 while :; do sleep 0.1; done) &
helper=$!
"$@" &
server=$!
wait
"#;
    let mut spec = migrating_spec(&format!("wrapped-{}", std::process::id()));
    spec.command = [
        "sh".to_string(),
        "-c".into(),
        wrapper.into(),
        "wrapper".into(),
    ]
    .into_iter()
    .chain(spec.command)
    .collect();
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
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(60),
    )
    .await;
    // The final checkpoint, restored on the replacement, holds what the helper wrote.
    assert_eq!(
        exec_ok(&mut client, &created.id, "cat checkpoint/helper-heard").await,
        "heard\n"
    );
    service.stop();
    kill_workloads(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_on_s3_storage_migrates_with_its_checkpoint() {
    let moto = computearbitrage_storage::suite::Moto::start(
        &std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../.tools/venv/bin/moto_server"),
    );
    let bucket = "computearbitrage-e2e";
    moto.create_bucket(bucket).await;
    let dir = tempfile::tempdir().unwrap();
    // As an operator switches it: configuration only, credentials from the environment.
    let service = Service::start(
        dir.path(),
        &[
            ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300"),
            ("COMPUTEARBITRAGE_STORAGE__BACKEND", "s3"),
            ("COMPUTEARBITRAGE_STORAGE__BUCKET", bucket),
            ("COMPUTEARBITRAGE_STORAGE__REGION", "us-east-1"),
            ("COMPUTEARBITRAGE_STORAGE__ENDPOINT", &moto.endpoint),
            ("COMPUTEARBITRAGE_STORAGE__ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
        ],
    );
    let mut client = service.workloads().await;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(migrating_spec(&format!("on-s3-{}", std::process::id()))),
        }))
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
    let count_url = format!("{}/count", before.endpoint.trim_end_matches('/'));
    let state_url = format!("{}/state", before.endpoint.trim_end_matches('/'));
    for expected in 1..=2 {
        let (_, body) = get_json(&count_url, &before.access_token).await;
        assert_eq!(body["count"], expected);
    }
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    let after = wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(after.endpoint, before.endpoint);
    let (status, state) = get_json(&state_url, &after.access_token).await;
    assert_eq!(status, 200);
    assert_eq!(state["restored"], true, "{state}");
    assert_eq!(state["count"], 2, "{state}");
    // The checkpoint is in the bucket, and nothing went to the local directory.
    assert!(!complete_checkpoints(&service, &created.id).await.is_empty());
    let listing = reqwest::get(format!(
        "{}/{bucket}?list-type=2&prefix=workloads/{}/checkpoints/",
        moto.endpoint, created.id
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    assert!(listing.contains("manifest.json"), "{listing}");
    assert!(!dir.path().join("storage").join("workloads").exists());
    service.stop();
    kill_workloads(dir.path());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replacement_reclaimed_before_the_switch_gives_way_to_another_offer() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[
            ("COMPUTEARBITRAGE_WORKLOADS__INTERRUPTION_DELAY_MS", "8000"),
            ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300"),
        ],
    );
    let mut client = service.workloads().await;
    // A restored workload takes 4 s to serve: time for the cloud to reclaim the
    // replacement before the switch.
    let name = format!("twice-{}", std::process::id());
    let mut spec = migrating_spec(&name);
    spec.env.insert("SLOW_RESTORE_SECONDS".into(), "4".into());
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
    let count_url = format!("{}/count", before.endpoint.trim_end_matches('/'));
    for expected in 1..=2 {
        let (_, body) = get_json(&count_url, &before.access_token).await;
        assert_eq!(body["count"], expected);
    }
    let mut admin = service.admin().await;
    admin
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    // Once the replacement exists, the workload's notice goes to it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let replacement = loop {
        let w = get(&mut client, &created.id).await;
        if w.status != "RUNNING" {
            match admin
                .inject_interruption(authed(pb::InjectInterruptionRequest {
                    workload_id: created.id.clone(),
                    delay_ms: 1000,
                }))
                .await
            {
                Ok(reply) => break reply.into_inner().instance_id,
                Err(status) => {
                    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}")
                }
            }
        }
        assert!(Instant::now() < deadline, "no replacement: {}", w.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(replacement, before.instance_id);

    let after = wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(90),
    )
    .await;
    assert_ne!(after.instance_id, replacement, "a third instance");
    assert_eq!(after.endpoint, before.endpoint);
    assert_eq!(after.access_token, before.access_token);
    let state_url = format!("{}/state", after.endpoint.trim_end_matches('/'));
    let (_, state) = get_json(&state_url, &after.access_token).await;
    assert_eq!(state["restored"], true, "{state}");
    assert_eq!(state["count"], 2, "{state}");
    let runs = client
        .list_runs(authed(pb::ListRunsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .runs;
    let shape: Vec<(&str, &str)> = runs
        .iter()
        .map(|r| (r.kind.as_str(), r.status.as_str()))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("provision", "completed"),
            ("migrate", "dead"),
            ("migrate", "completed")
        ]
    );
    // Three instances, each billed; the reclaimed replacement is gone.
    let billing = client
        .get_billing(authed(pb::GetBillingRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(billing.records.len(), 3, "{billing:?}");
    // The third offer is neither the first's nor the reclaimed replacement's (which only
    // the cooldown excludes), as each run's placement step chose them.
    let placed = |run: &pb::Run| {
        let step = run.steps.iter().find(|s| s.name == "placement").unwrap();
        let output: serde_json::Value = serde_json::from_str(&step.output).unwrap();
        let offer = |key: &str| output[key].as_str().unwrap_or_default().to_string();
        let offer = (
            offer("provider"),
            offer("region"),
            offer("zone"),
            offer("instance_type"),
        );
        assert!(!offer.0.is_empty(), "{output}");
        offer
    };
    let third = placed(&runs[2]);
    assert_ne!(third, placed(&runs[1]), "the reclaimed replacement's offer");
    assert_eq!(third.3, after.instance_type);
    assert_ne!(
        third,
        (
            before.cloud.clone(),
            before.region.clone(),
            before.zone.clone(),
            before.instance_type.clone()
        )
    );
    assert_eq!(processes_with_env("WORKLOAD_NAME", &name).len(), 1);
    service.stop();
    kill_workloads(dir.path());
}

/// Sends `message` on a new connection to `address`; the echo. The router follows a
/// switch within milliseconds, so a refused or reset try is made again for 2 s.
async fn tcp_echo(address: &str, message: &'static str) -> String {
    let address = address.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let once = || -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(&address)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(message.as_bytes())?;
            let mut buf = [0u8; 256];
            let n = stream.read(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).to_string())
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match once() {
                Ok(echo) if !echo.is_empty() => return echo,
                other => assert!(Instant::now() < deadline, "{address}: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migrated_workload_keeps_its_tcp_listener() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300")],
    );
    let mut client = service.workloads().await;
    let name = format!("tcp-mover-{}", std::process::id());
    let mut spec = migrating_spec(&name);
    spec.tcp_port = Some(9000);
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
    assert!(!before.tcp_endpoint.is_empty());
    assert_eq!(
        tcp_echo(&before.tcp_endpoint, "before").await,
        format!("{name}: before")
    );
    service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 0,
        }))
        .await
        .unwrap();
    let after = wait_moved(
        &mut client,
        &service,
        &created.id,
        &before.instance_id,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(after.tcp_endpoint, before.tcp_endpoint, "the same listener");
    assert_eq!(after.tcp_listen_port, before.tcp_listen_port);
    assert_ne!(after.backend_endpoint, before.backend_endpoint);
    // The old instance is gone, so an echo through the same address is the new one's.
    assert_eq!(
        tcp_echo(&after.tcp_endpoint, "after").await,
        format!("{name}: after")
    );
    service.stop();
    kill_workloads(dir.path());
}
