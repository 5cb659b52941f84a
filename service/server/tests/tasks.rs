//! Operator tasks through the real binary: queued over gRPC (and the CLI), pulled by
//! the workload's agent, run on its instance, their results reported back; failed
//! attempts retried with backoff into the dead tasks, replayed; tenants kept apart.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::time::{Duration, Instant};

async fn answers(url: &str, token: &str) -> bool {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_millis(1500))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_run_on_the_instance_report_back_retry_into_the_dead_and_stay_in_their_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300")],
    );
    let mut client = service.workloads().await;
    let name = format!("tasks-{}", std::process::id());
    let mut spec = spec(&name, &[]);
    spec.storage = test_storage();
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
    let id = running.id.clone();

    // exec: the exit code is the command's, stdout and stderr both come back, and the
    // command sees the workload's environment but nothing of the agent's.
    let task = queue_task(
        &mut client,
        &id,
        "exec",
        &["sh", "-c", "echo out; echo err >&2; echo task=$COMPUTEARBITRAGE_TASK_ID name=$WORKLOAD_NAME; env; exit 3"],
        0,
    )
    .await;
    assert_eq!(task.state, "QUEUED");
    assert_eq!(task.timeout_seconds, 60, "the default timeout");
    let done = wait_task(&mut client, &task, Duration::from_secs(20)).await;
    assert_eq!(done.state, "COMPLETED", "{done:?}");
    assert_eq!(done.exit_code, Some(3));
    assert_eq!(done.attempts, 1);
    assert_eq!(done.instance_id, running.instance_id);
    assert!(
        done.output.contains("out\n") && done.output.contains("err\n"),
        "{}",
        done.output
    );
    assert!(
        done.output
            .contains(&format!("task={} name={name}", task.id)),
        "{}",
        done.output
    );
    assert!(
        !done.output.contains(TOKEN),
        "the service's token reached a task"
    );
    assert!(
        !done.output.contains("agt-")
            && !done
                .output
                .lines()
                .any(|l| l.contains("AGENT") && !l.starts_with("COMPUTEARBITRAGE_AGENT_SOCKET=")),
        "the agent's credentials reached a task: {}",
        done.output
    );

    // A program that does not exist is what a shell says: 127, and no retries.
    let missing = queue_task(&mut client, &id, "exec", &["/no/such/program"], 0).await;
    let missing = wait_task(&mut client, &missing, Duration::from_secs(20)).await;
    assert_eq!(
        (missing.state.as_str(), missing.exit_code, missing.attempts),
        ("COMPLETED", Some(127), 1)
    );
    assert!(
        missing.output.contains("/no/such/program"),
        "{}",
        missing.output
    );

    // Bad requests are refused with the field and the fix.
    let refused = client
        .create_task(authed(pb::CreateTaskRequest {
            workload_id: id.clone(),
            kind: "reboot".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused
            .message()
            .contains("exec, checkpoint, stop, pause, resume"),
        "{}",
        refused.message()
    );
    let refused = client
        .create_task(authed(pb::CreateTaskRequest {
            workload_id: id.clone(),
            kind: "exec".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("command"),
        "{}",
        refused.message()
    );
    let refused = client
        .create_task(authed(pb::CreateTaskRequest {
            workload_id: id.clone(),
            kind: "pause".into(),
            timeout_seconds: 7200,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let bare = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            // The test server's spec has no storage.
            spec: Some(common::spec(&format!("{name}-bare"), &[])),
        }))
        .await
        .unwrap()
        .into_inner();
    let refused = client
        .create_task(authed(pb::CreateTaskRequest {
            workload_id: bare.id.clone(),
            kind: "checkpoint".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("storage { enabled = true }"),
        "{}",
        refused.message()
    );

    // checkpoint now: a complete checkpoint in storage, named in the output.
    let checkpoint = queue_task(&mut client, &id, "checkpoint", &[], 0).await;
    let checkpoint = wait_task(&mut client, &checkpoint, Duration::from_secs(30)).await;
    assert_eq!(
        (checkpoint.state.as_str(), checkpoint.exit_code),
        ("COMPLETED", Some(0)),
        "{checkpoint:?}"
    );
    let name_of = checkpoint
        .output
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let objects = client
        .list_objects(authed(pb::ListObjectsRequest {
            workload_id: id.clone(),
            prefix: "checkpoints/".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(
        objects
            .objects
            .iter()
            .any(|o| o.key == format!("checkpoints/{name_of}/manifest.json")),
        "{name_of}: {:?}",
        objects.objects.iter().map(|o| &o.key).collect::<Vec<_>>()
    );

    // pause freezes the workload: its endpoint stops answering until resume. It runs
    // beside a long exec, not after it.
    let url = format!("{}/count", running.endpoint.trim_end_matches('/'));
    assert!(answers(&url, &running.access_token).await);
    let long = queue_task(&mut client, &id, "exec", &["sleep", "15"], 30).await;
    let pause = queue_task(&mut client, &id, "pause", &[], 0).await;
    let pause = wait_task(&mut client, &pause, Duration::from_secs(10)).await;
    assert_eq!(pause.exit_code, Some(0), "{pause:?}");
    let still = client
        .get_task(authed(pb::GetTaskRequest {
            id: long.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        still.state, "DELIVERED",
        "the long exec still runs: {still:?}"
    );
    assert!(
        !answers(&url, &running.access_token).await,
        "a paused workload answered"
    );
    let resume = queue_task(&mut client, &id, "resume", &[], 0).await;
    let resume = wait_task(&mut client, &resume, Duration::from_secs(20)).await;
    assert_eq!(resume.exit_code, Some(0), "{resume:?}");
    let started = Instant::now();
    while !answers(&url, &running.access_token).await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the resumed workload does not answer"
        );
    }

    // An exec past its timeout is a failed attempt: retried with backoff, then dead,
    // listed, and replayed with its attempts reset.
    // It counts its tries in the workload's directory and finishes from the fourth on.
    let counting = "n=$(cat tries 2>/dev/null || echo 0); echo $((n+1)) > tries; [ $n -ge 3 ] || sleep 30; echo try $((n+1))";
    let slow = queue_task(&mut client, &id, "exec", &["sh", "-c", counting], 1).await;
    let slow = wait_task(&mut client, &slow, Duration::from_secs(40)).await;
    assert_eq!(slow.state, "DEAD", "{slow:?}");
    assert_eq!(slow.attempts, 3);
    assert!(
        slow.error.contains("within 1 s") && slow.error.contains("replay"),
        "{}",
        slow.error
    );
    let dead = client
        .list_dead_tasks(authed(pb::ListDeadTasksRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dead.tasks.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(),
        [slow.id.as_str()]
    );
    let replayed = client
        .replay_task(authed(pb::ReplayTaskRequest {
            id: slow.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((replayed.state.as_str(), replayed.attempts), ("QUEUED", 0));
    let replayed = wait_task(&mut client, &replayed, Duration::from_secs(20)).await;
    assert_eq!(
        (
            replayed.state.as_str(),
            replayed.exit_code,
            replayed.attempts
        ),
        ("COMPLETED", Some(0), 1),
        "{replayed:?}"
    );
    assert_eq!(
        replayed.output, "try 4\n",
        "run again, not answered from the failed tries"
    );
    let again = client
        .replay_task(authed(pb::ReplayTaskRequest {
            id: missing.id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(
        again.code(),
        tonic::Code::FailedPrecondition,
        "only a dead task replays"
    );

    // Another tenant sees none of it.
    service
        .admin()
        .await
        .create_tenant(authed(pb::CreateTenantRequest {
            id: "other-tenant".into(),
            max_concurrent_workloads: None,
        }))
        .await
        .unwrap();
    let other = service
        .admin()
        .await
        .create_token(authed(pb::CreateTokenRequest {
            tenant: "other-tenant".into(),
            scopes: "read,write".into(),
            label: "other".into(),
            expires_in_seconds: 3600,
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    let as_other = |message| {
        let mut request = tonic::Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {other}").parse().unwrap());
        request
    };
    let hidden = client
        .get_task(as_other(pb::GetTaskRequest {
            id: task.id.clone(),
        }))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), tonic::Code::NotFound);
    let mut request = tonic::Request::new(pb::CreateTaskRequest {
        workload_id: id.clone(),
        kind: "stop".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {other}").parse().unwrap());
    assert_eq!(
        client.create_task(request).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let mut request = tonic::Request::new(pb::ListDeadTasksRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {other}").parse().unwrap());
    assert!(client
        .list_dead_tasks(request)
        .await
        .unwrap()
        .into_inner()
        .tasks
        .is_empty());

    // The CLI: exec prints the output and exits with the command's code.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
        .args([
            "workload",
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo from-cli; exit 7",
        ])
        .env("COMPUTEARBITRAGE_ENDPOINT", &service.endpoint)
        .env("COMPUTEARBITRAGE_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert_eq!(
        cli.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&cli.stdout), "from-cli\n");
    // What an operator waits for `exec -- true`, end to end (reported, not asserted).
    let mut took = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
            .args(["workload", "exec", &id, "--", "true"])
            .env("COMPUTEARBITRAGE_ENDPOINT", &service.endpoint)
            .env("COMPUTEARBITRAGE_TOKEN", TOKEN)
            .status()
            .unwrap();
        assert!(status.success());
        took.push(started.elapsed().as_millis());
    }
    took.sort();
    eprintln!("`workload exec -- true` through the CLI: {took:?} ms");

    // A read-only token may look but not queue.
    let reader = service
        .admin()
        .await
        .create_token(authed(pb::CreateTokenRequest {
            tenant: "default".into(),
            scopes: "read".into(),
            label: "reader".into(),
            expires_in_seconds: 3600,
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut request = tonic::Request::new(pb::CreateTaskRequest {
        workload_id: id.clone(),
        kind: "pause".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {reader}").parse().unwrap());
    assert_eq!(
        client.create_task(request).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    let mut request = tonic::Request::new(pb::ListTasksRequest {
        workload_id: id.clone(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {reader}").parse().unwrap());
    assert!(
        client
            .list_tasks(request)
            .await
            .unwrap()
            .into_inner()
            .tasks
            .len()
            >= 8
    );

    // stop ends the workload with its signal; what is queued after is refused.
    let stop = queue_task(&mut client, &id, "stop", &[], 10).await;
    let stop = wait_task(&mut client, &stop, Duration::from_secs(30)).await;
    assert_eq!(stop.state, "COMPLETED", "{stop:?}");
    assert!(stop.exit_code.is_some());
    let ended = wait_status(
        &mut client,
        &id,
        &["FAILED", "TERMINATED", "UNHEALTHY", "COMPLETED"],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        !answers(&url, &running.access_token).await,
        "a stopped workload answered ({})",
        ended.status
    );
    if ended.status != "UNHEALTHY" {
        let late = client
            .create_task(authed(pb::CreateTaskRequest {
                workload_id: id.clone(),
                kind: "pause".into(),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert!(
            late.message().contains("only on an active workload"),
            "{late:?}"
        );
    }
}
