//! How the agent tells a workload about a notice, through the real binaries: the
//! `checkpoint.signal` a workload chose instead of SIGTERM, the wait until the
//! deadline less the safety margin for a workload that does not exit, and a
//! `checkpoint.command` that runs instead of any signal. Each final checkpoint is
//! read back on the replacement.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::time::Duration;

/// Wraps the test workload server: the shell traps USR1 and TERM and records when
/// it heard them, and writes the time every 100 ms, all into `$CHECKPOINT_DIR`. It
/// never exits on a signal. On a replacement the restored tick is kept aside first.
const RECORDING_WRAPPER: &str = r#"
D="$CHECKPOINT_DIR"
if [ -e "$D/tick" ]; then mv "$D/tick" "$D/restored-tick"; fi
trap 'date +%s%3N > "$D/usr1-at"' USR1
trap 'date +%s%3N > "$D/term-at"' TERM
"$@" &
while :; do date +%s%3N > "$D/.tick"; mv "$D/.tick" "$D/tick"; sleep 0.1; done
"#;

fn recording_spec(name: &str, checkpoint: pb::CheckpointSpec) -> pb::WorkloadSpec {
    let mut spec = migrating_spec(&format!("{name}-{}", std::process::id()));
    spec.command = ["sh", "-c", RECORDING_WRAPPER, "wrapper"]
        .into_iter()
        .map(String::from)
        .chain(spec.command)
        .collect();
    spec.checkpoint = Some(checkpoint);
    spec
}

async fn files(client: &mut WorkloadsClient, id: &str) -> Vec<String> {
    let listing = exec_ok(client, id, "ls -A checkpoint").await;
    listing.lines().map(String::from).collect()
}

async fn number(client: &mut WorkloadsClient, id: &str, file: &str) -> i64 {
    let text = exec_ok(client, id, &format!("cat checkpoint/{file}")).await;
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{file} holds {text:?}: {e}"))
}

type WorkloadsClient = pb::workloads_client::WorkloadsClient<tonic::transport::Channel>;

#[tokio::test(flavor = "multi_thread")]
async fn a_notice_sends_the_chosen_signal_or_runs_the_checkpoint_command_and_waits_to_the_margin() {
    let dir = tempfile::tempdir().unwrap();
    // An 8 s window: the margin is a quarter of it (2 s), less than the 5 s default.
    let service = Service::start(
        dir.path(),
        &[
            ("COMPUTEARBITRAGE_WORKLOADS__INTERRUPTION_DELAY_MS", "8000"),
            ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300"),
        ],
    );
    let mut client = service.workloads().await;
    let signalled = recording_spec(
        "usr1",
        pb::CheckpointSpec {
            signal: "SIGUSR1".into(),
            ..Default::default()
        },
    );
    // On AWS, whose notice carries its deadline (GCP's says only that preemption has
    // begun, so the agent counts GCP's real 30 s, longer than this test's window).
    let mut signalled = signalled;
    signalled.requirements.as_mut().unwrap().clouds = vec!["aws".into()];
    let commanded = recording_spec(
        "command",
        pb::CheckpointSpec {
            command: vec![
                "sh".into(),
                "-c".into(),
                r#"date +%s%3N > "$CHECKPOINT_DIR/command-at""#.into(),
            ],
            ..Default::default()
        },
    );
    let mut workloads = Vec::new();
    for spec in [signalled, commanded] {
        let created = client
            .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
            .await
            .unwrap()
            .into_inner();
        workloads.push(created.id);
    }
    let mut before = Vec::new();
    for id in &workloads {
        let running = wait_status(&mut client, id, &["RUNNING"], Duration::from_secs(30)).await;
        before.push(running.instance_id);
    }
    let mut admin = service.admin().await;
    for id in &workloads {
        admin
            .inject_interruption(authed(pb::InjectInterruptionRequest {
                workload_id: id.clone(),
                delay_ms: 0,
            }))
            .await
            .unwrap();
    }
    for (id, from) in workloads.iter().zip(&before) {
        wait_moved(&mut client, &service, id, from, Duration::from_secs(60)).await;
    }

    // The chosen signal, not SIGTERM; and since the workload did not exit, the agent
    // waited most of the window (deadline less the margin) before it copied.
    let usr1 = &workloads[0];
    let seen = files(&mut client, usr1).await;
    assert!(
        seen.iter().any(|f| f == "usr1-at"),
        "{seen:?}; {:?}\n{}",
        notifications(&mut client, usr1).await,
        instance_logs(dir.path())
    );
    assert!(!seen.iter().any(|f| f == "term-at"), "{seen:?}");
    let heard = number(&mut client, usr1, "usr1-at").await;
    let last_tick = number(&mut client, usr1, "restored-tick").await;
    let waited = last_tick - heard;
    assert!(
        (3_000..8_000).contains(&waited),
        "the copy came {waited} ms after the signal; expected most of the 8 s window, less its 2 s margin"
    );

    // The command ran instead of any signal, and the copy followed it at once.
    let commanded = &workloads[1];
    let seen = files(&mut client, commanded).await;
    assert!(seen.iter().any(|f| f == "command-at"), "{seen:?}");
    assert!(
        !seen.iter().any(|f| f == "usr1-at" || f == "term-at"),
        "a workload with a checkpoint command got a signal: {seen:?}"
    );
    let ran = number(&mut client, commanded, "command-at").await;
    let last_tick = number(&mut client, commanded, "restored-tick").await;
    assert!(
        last_tick - ran < 3_000,
        "the copy came {} ms after the command; it should follow the command, not wait for the deadline",
        last_tick - ran
    );
    service.stop();
    kill_workloads(dir.path());
}
