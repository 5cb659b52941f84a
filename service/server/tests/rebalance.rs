//! Price-driven rebalancing through the real binaries: a price snapshot the test
//! rewrites makes another offer cheaper, and a workload with a `rebalance` block moves
//! there make-before-break: RUNNING throughout, restored from a checkpoint taken for
//! the move, and not one failed request through the router while clients keep
//! calling it. A workload on on-demand capacity returns to spot the same way.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Client = pb::workloads_client::WorkloadsClient<tonic::transport::Channel>;

/// Writes a two-offer catalog: AWS m5.large and GCP n2-standard-2, both 2 vCPU / 8 GiB.
/// Each file is written whole and renamed, so the collector never reads half of one.
fn write_prices(dir: &Path, aws: (f64, f64), gcp: (f64, f64)) {
    let write = |name: &str, text: String| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    };
    write(
        "manifest.toml",
        "[[files]]\nfile = \"aws.csv\"\ncloud = \"aws\"\nobserved_at = \"2026-12-01T00:00:00Z\"\n\n\
         [[files]]\nfile = \"gcp.csv\"\ncloud = \"gcp\"\nobserved_at = \"2026-12-01T00:00:00Z\"\n"
            .into(),
    );
    let header = "InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone\n";
    write(
        "aws.csv",
        format!(
            "{header}m5.large,,,2.0,8.0,,{},{},us-east-1,use1-az1\n",
            aws.0, aws.1
        ),
    );
    write(
        "gcp.csv",
        format!(
            "{header}n2-standard-2,,,2.0,8.0,,{},{},us-central1,\n",
            gcp.0, gcp.1
        ),
    );
}

fn settings(prices: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "COMPUTEARBITRAGE_PRICING__SNAPSHOT__DIR",
            prices.to_str().unwrap().to_string(),
        ),
        (
            "COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS",
            "1".into(),
        ),
        (
            "COMPUTEARBITRAGE_WORKLOADS__REBALANCE_CHECK_MS",
            "200".into(),
        ),
        ("COMPUTEARBITRAGE_WORKLOADS__DRAIN_MS", "1500".into()),
        (
            "COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS",
            "300".into(),
        ),
    ]
}

fn start(dir: &Path, prices: &Path) -> Service {
    let env = settings(prices);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Service::start(dir, &env)
}

/// What the clients saw: status codes, and requests that got no answer at all.
#[derive(Default, Debug)]
struct Seen {
    statuses: std::collections::BTreeMap<u16, usize>,
    errors: Vec<String>,
    served_by: std::collections::BTreeSet<String>,
}

/// `clients` keep-alive clients calling the workload through the router until `stop`.
fn load(
    url: String,
    token: String,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Seen>>, Vec<tokio::task::JoinHandle<()>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let handles = (0..clients)
        .map(|_| {
            let (url, token, stop, seen) = (url.clone(), token.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let answer = http
                        .get(&url)
                        .bearer_auth(&token)
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    match answer {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let body: serde_json::Value = match response.bytes().await {
                                Ok(bytes) => serde_json::from_slice(&bytes)
                                    .unwrap_or(serde_json::Value::Null),
                                Err(e) => {
                                    seen.lock().unwrap().errors.push(format!("body: {e}"));
                                    continue;
                                }
                            };
                            let mut seen = seen.lock().unwrap();
                            *seen.statuses.entry(status).or_default() += 1;
                            if let Some(pid) = body.get("pid") {
                                seen.served_by.insert(pid.to_string());
                            }
                        }
                        Err(e) => seen.lock().unwrap().errors.push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    (seen, handles)
}

async fn wait_notification(
    client: &mut Client,
    id: &str,
    kind: &str,
    within: Duration,
) -> serde_json::Value {
    let started = Instant::now();
    loop {
        if let Some(n) = notifications(client, id)
            .await
            .into_iter()
            .find(|n| n.kind == kind)
        {
            let payload: serde_json::Value = serde_json::from_str(&n.payload).unwrap();
            return payload["details"].clone();
        }
        assert!(
            started.elapsed() < within,
            "no {kind} for {id} within {within:?}; it is {:?}",
            get(client, id).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cheaper_offer_moves_the_workload_make_before_break_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let prices = tempfile::tempdir().unwrap();
    write_prices(prices.path(), (0.096, 0.050), (0.097, 0.080));
    let service = start(dir.path(), prices.path());
    let mut client = service.workloads().await;
    let mut spec = spec(
        &format!("rebalance-{}", std::process::id()),
        &[("SAVE_EVERY_COUNT", "1")],
    );
    if let Some(r) = spec.requirements.as_mut() {
        r.allow_unknown_interruption_rate = Some(true);
    }
    spec.storage = test_storage();
    spec.rebalance = Some(pb::RebalanceSpec {
        min_savings_percent: 30.0,
        min_duration_seconds: Some(2),
    });
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        created.spec.as_ref().unwrap().rebalance,
        Some(pb::RebalanceSpec {
            min_savings_percent: 30.0,
            min_duration_seconds: Some(2)
        })
    );
    let before = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (before.cloud.as_str(), before.instance_type.as_str()),
        ("aws", "m5.large")
    );
    let base = before.endpoint.trim_end_matches('/').to_string();
    for _ in 0..5 {
        assert_eq!(
            get_json(&format!("{base}/count"), &before.access_token)
                .await
                .0,
            200
        );
    }

    // GCP drops to 0.02: 60 % under AWS's 0.05, more than the 30 % asked for.
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, clients) = load(
        format!("{base}/"),
        before.access_token.clone(),
        4,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    write_prices(prices.path(), (0.096, 0.050), (0.097, 0.020));
    let moved_at = Instant::now();

    // RUNNING at every look until the workload is on GCP.
    let mut statuses = Vec::new();
    let after = loop {
        let w = get(&mut client, &created.id).await;
        if statuses.last() != Some(&w.status) {
            statuses.push(w.status.clone());
        }
        if w.cloud == "gcp" {
            break w;
        }
        assert!(moved_at.elapsed() < Duration::from_secs(60), "still {w:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let migrated = wait_notification(
        &mut client,
        &created.id,
        "workload.migrated",
        Duration::from_secs(30),
    )
    .await;
    // The old instance drained and was terminated while the clients kept calling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let seen = seen.lock().unwrap();
    assert!(
        seen.errors.is_empty(),
        "requests without an answer: {:?}",
        seen.errors
    );
    assert_eq!(
        seen.statuses.keys().collect::<Vec<_>>(),
        vec![&200],
        "{:?}",
        seen.statuses
    );
    assert!(
        seen.statuses[&200] > 50,
        "too few requests to mean anything: {:?}",
        seen.statuses
    );
    assert_eq!(
        statuses,
        ["RUNNING"],
        "make-before-break never leaves RUNNING"
    );
    assert_eq!(
        seen.served_by.len(),
        2,
        "the clients were served by the old instance and then the new one: {:?}",
        seen.served_by
    );

    assert_eq!(
        (after.status.as_str(), after.instance_type.as_str()),
        ("RUNNING", "n2-standard-2")
    );
    assert_eq!(after.price_per_hour, Some(0.02));
    assert_ne!(after.instance_id, before.instance_id);
    assert_eq!(
        (after.endpoint.as_str(), after.access_token.as_str()),
        (before.endpoint.as_str(), before.access_token.as_str())
    );
    assert_eq!(migrated["cause"], "rebalance", "{migrated}");
    assert_eq!(migrated["downtime_ms"], 0, "{migrated}");
    assert_eq!(migrated["final_checkpoint"], true, "{migrated}");
    let checkpoint: i64 = migrated["checkpoint"].as_str().unwrap().parse().unwrap();
    // The state came with it, from the checkpoint taken for the move.
    let (_, state) = get_json(&format!("{base}/state"), &after.access_token).await;
    assert_eq!(
        (state["count"].as_i64(), state["restored"].as_bool()),
        (Some(5), Some(true)),
        "{state}"
    );
    let tasks = client
        .list_tasks(authed(pb::ListTasksRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .tasks;
    assert!(
        tasks
            .iter()
            .any(|t| t.kind == "checkpoint" && t.state == "COMPLETED"),
        "{tasks:?}"
    );
    assert!(checkpoint > 0);

    // The old instance is gone; billing has its segment and the new one's.
    let billing = client
        .get_billing(authed(pb::GetBillingRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let types: Vec<&str> = billing
        .records
        .iter()
        .map(|r| r.instance_type.as_str())
        .collect();
    assert_eq!(types, ["m5.large", "n2-standard-2"], "{billing:?}");
    assert_eq!(billing.downtime_seconds, 0.0, "{billing:?}");

    // AWS coming back by less than 30 % does not move it again.
    write_prices(prices.path(), (0.096, 0.016), (0.097, 0.020));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(get(&mut client, &created.id).await.cloud, "gcp");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_on_on_demand_capacity_returns_to_spot_when_spot_comes_back() {
    returns_to_spot((0.045, 0.050), (0.097, 0.030), ("gcp", 0.03)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_on_on_demand_capacity_returns_to_spot_on_its_own_offer() {
    // The spot side of the offer it runs on comes back under the limit.
    returns_to_spot((0.045, 0.020), (0.097, 0.080), ("aws", 0.02)).await;
}

/// Starts a workload on AWS's on-demand capacity (no spot price under its limit), then
/// writes these prices and waits for the rebalance to spot on `expected` (cloud, price).
async fn returns_to_spot(aws: (f64, f64), gcp: (f64, f64), expected: (&str, f64)) {
    let dir = tempfile::tempdir().unwrap();
    let prices = tempfile::tempdir().unwrap();
    // Spot is above the price limit everywhere; AWS's on-demand price is under it.
    write_prices(prices.path(), (0.045, 0.050), (0.097, 0.080));
    let service = start(dir.path(), prices.path());
    let mut client = service.workloads().await;
    let mut spec = spec(&format!("back-to-spot-{}", std::process::id()), &[]);
    if let Some(r) = spec.requirements.as_mut() {
        r.allow_unknown_interruption_rate = Some(true);
        r.max_price_per_hour = Some(0.046);
    }
    spec.fallback = "on_demand".into();
    spec.rebalance = Some(pb::RebalanceSpec {
        min_savings_percent: 10.0,
        min_duration_seconds: Some(1),
    });
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
    assert_eq!(
        (before.market.as_str(), before.cloud.as_str()),
        ("on_demand", "aws"),
        "{before:?}"
    );

    write_prices(prices.path(), aws, gcp);
    let migrated = wait_notification(
        &mut client,
        &created.id,
        "workload.migrated",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(migrated["cause"], "rebalance", "{migrated}");
    let after = get(&mut client, &created.id).await;
    assert_eq!(
        (
            after.status.as_str(),
            after.market.as_str(),
            after.cloud.as_str(),
            after.price_per_hour
        ),
        ("RUNNING", "spot", expected.0, Some(expected.1)),
        "{after:?}"
    );
    assert_eq!(after.endpoint, before.endpoint);
    let (status, _) = get_json(&after.endpoint, &after.access_token).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_env_change_is_a_rolling_replacement_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let prices = tempfile::tempdir().unwrap();
    write_prices(prices.path(), (0.096, 0.050), (0.097, 0.080));
    let service = start(dir.path(), prices.path());
    let mut client = service.workloads().await;
    let name = format!("rolling-{}", std::process::id());
    let mut spec = spec(&name, &[("SAVE_EVERY_COUNT", "1")]);
    if let Some(r) = spec.requirements.as_mut() {
        r.allow_unknown_interruption_rate = Some(true);
    }
    spec.storage = test_storage();
    spec.create_timeout_seconds = 8;
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
    // RUNNING comes at the health check; the provisioning run finishes just after, and
    // only then is the env applied (no run of the workload is unfinished).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let before = loop {
        let w = get(&mut client, &created.id).await;
        if w.env_applied || std::time::Instant::now() > deadline {
            break w;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(before.env_applied, "{before:?}");
    let base = before.endpoint.trim_end_matches('/').to_string();
    for _ in 0..3 {
        assert_eq!(
            get_json(&format!("{base}/count"), &before.access_token)
                .await
                .0,
            200
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (seen, clients) = load(
        format!("{base}/"),
        before.access_token.clone(),
        4,
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut request = update_request(&before);
    request
        .env
        .insert("WORKLOAD_NAME".into(), format!("{name}-v2"));
    let updated = client
        .update_workload(authed(request))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !updated.env_applied,
        "the instance still runs the old env: {updated:?}"
    );
    assert_eq!(updated.status, "RUNNING");
    let mut statuses = Vec::new();
    let after = loop {
        let w = get(&mut client, &created.id).await;
        if statuses.last() != Some(&w.status) {
            statuses.push(w.status.clone());
        }
        if w.env_applied {
            break w;
        }
        assert!(statuses.len() < 5, "{statuses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    wait_notification(
        &mut client,
        &created.id,
        "workload.migrated",
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.errors.is_empty(),
            "requests without an answer: {:?}",
            seen.errors
        );
        assert_eq!(
            seen.statuses.keys().collect::<Vec<_>>(),
            vec![&200],
            "{:?}",
            seen.statuses
        );
        assert_eq!(seen.served_by.len(), 2, "{:?}", seen.served_by);
    }
    assert_eq!(statuses, ["RUNNING"]);
    assert_ne!(after.instance_id, before.instance_id);
    assert_eq!(
        (after.endpoint.as_str(), after.access_token.as_str()),
        (before.endpoint.as_str(), before.access_token.as_str())
    );
    let (_, body) = get_json(&format!("{base}/"), &after.access_token).await;
    assert_eq!(
        body["workload"],
        format!("{name}-v2"),
        "the new env is in effect"
    );
    let (_, state) = get_json(&format!("{base}/state"), &after.access_token).await;
    assert_eq!(
        (state["count"].as_i64(), state["restored"].as_bool()),
        (Some(3), Some(true)),
        "{state}"
    );

    // An env the workload cannot serve with: the replacement never passes its health
    // check, is given up, and the workload goes on serving with the env before.
    let failing = dir.path().join("failing");
    std::fs::write(&failing, "fail").unwrap();
    let mut request = update_request(&after);
    request.env.insert(
        "HEALTH_STATUS_FILE".into(),
        failing.to_str().unwrap().into(),
    );
    client.update_workload(authed(request)).await.unwrap();
    let failed = wait_notification(
        &mut client,
        &created.id,
        "workload.replacement_failed",
        Duration::from_secs(40),
    )
    .await;
    assert_eq!(failed["cause"], "restart", "{failed}");
    let now = get(&mut client, &created.id).await;
    assert_eq!(
        (
            now.status.as_str(),
            now.instance_id.as_str(),
            now.env_applied
        ),
        ("RUNNING", after.instance_id.as_str(), false),
        "{now:?}"
    );
    let (status, body) = get_json(&format!("{base}/"), &now.access_token).await;
    assert_eq!(
        (status, body["workload"].as_str()),
        (200, Some(format!("{name}-v2").as_str()))
    );
}

/// kill -9 the service at a step of a rebalance, restart it where the agents call it,
/// and check the move completes once: RUNNING at every look after the restart, the
/// state restored on the cheaper offer, one live workload, the crashed step redone and
/// no completed step redone.
async fn crash_during_rebalance(step: &str, when: &str) {
    let dir = tempfile::tempdir().unwrap();
    let prices = tempfile::tempdir().unwrap();
    write_prices(prices.path(), (0.096, 0.050), (0.097, 0.080));
    let name = format!("rcrash-{step}-{when}-{}", std::process::id());
    let pause = format!("migrate.{step}:{when}");
    let env = settings(prices.path());
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let service = {
        let mut paused = env.clone();
        paused.push(("CA_TEST_PAUSE_AT", pause.as_str()));
        Service::start(dir.path(), &paused)
    };
    let mut client = service.workloads().await;
    let mut spec = spec(&name, &[("SAVE_EVERY_COUNT", "1")]);
    if let Some(r) = spec.requirements.as_mut() {
        r.allow_unknown_interruption_rate = Some(true);
    }
    spec.storage = test_storage();
    spec.rebalance = Some(pb::RebalanceSpec {
        min_savings_percent: 30.0,
        min_duration_seconds: Some(0),
    });
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
    assert_eq!(before.cloud, "aws");
    let count_url = format!("{}/count", before.endpoint.trim_end_matches('/'));
    for _ in 0..3 {
        assert_eq!(get_json(&count_url, &before.access_token).await.0, 200);
    }
    write_prices(prices.path(), (0.096, 0.050), (0.097, 0.020));
    service.wait_for_log(&format!("paused at {pause}"), Duration::from_secs(30));
    let address = service.address();
    service.kill();

    env.retain(|(k, _)| *k != "CA_TEST_PAUSE_AT");
    let service = Service::start_on(dir.path(), &address, &env);
    let mut client = service.workloads().await;
    let deadline = Instant::now() + Duration::from_secs(40);
    let migration = loop {
        let w = get(&mut client, &created.id).await;
        assert_eq!(
            w.status, "RUNNING",
            "a rebalance never leaves RUNNING, even across a crash at {pause}: {}",
            w.status_reason
        );
        let runs = client
            .list_runs(authed(pb::ListRunsRequest {
                workload_id: created.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .runs;
        if let Some(m) = runs.into_iter().find(|r| r.kind == "migrate") {
            if m.status != "running" {
                break m;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the rebalance did not finish after a crash at {pause}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(migration.status, "completed", "{migration:?}");
    for s in &migration.steps {
        let expected = if s.name == step && when != "after" {
            2
        } else {
            1
        };
        assert_eq!(
            (s.completed, s.attempts),
            (true, expected),
            "{} after a crash at {pause}",
            s.name
        );
    }
    let after = get(&mut client, &created.id).await;
    assert_eq!(
        (after.cloud.as_str(), after.status.as_str()),
        ("gcp", "RUNNING")
    );
    assert_ne!(after.instance_id, before.instance_id);
    let state_url = format!("{}/state", after.endpoint.trim_end_matches('/'));
    let (_, state) = get_json(&state_url, &after.access_token).await;
    assert_eq!(
        (state["restored"].clone(), state["count"].clone()),
        (serde_json::json!(true), serde_json::json!(3)),
        "after a crash at {pause}: {state}"
    );
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
        (
            billing.records.len(),
            billing.records.iter().filter(|r| r.open).count()
        ),
        (2, 1),
        "one closed segment and the open one: {billing:?}"
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
async fn crash_at_each_step_of_a_rebalance_resumes_it_once() {
    for step in [
        "placement",
        "provision",
        "await-checkpoint",
        "wait-healthy",
        "switch-route",
        "terminate-replaced",
        "notify",
    ] {
        crash_during_rebalance(step, "uncommitted").await;
    }
    crash_during_rebalance("switch-route", "after").await;
}
