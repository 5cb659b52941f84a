//! `fallback = "on_demand"` through the real binaries: a workload no spot offer can
//! hold, and one whose spot capacity errors persist (the local driver's
//! `no_spot_capacity`), run on on-demand capacity and are billed at the on-demand
//! price; without fallback the first fails with what to change. A migration that meets
//! persistent spot capacity errors moves to on-demand capacity too.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::time::Duration;

type Client = pb::workloads_client::WorkloadsClient<tonic::transport::Channel>;

async fn create(client: &mut Client, spec: pb::WorkloadSpec) -> pb::Workload {
    client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner()
}

fn assert_paid_on_demand(w: &pb::Workload) {
    assert_eq!(w.market, "on_demand", "{w:?}");
    let od = w.on_demand_price_per_hour.expect("an on-demand price");
    assert_eq!(
        w.price_per_hour,
        Some(od),
        "what is paid is the on-demand price"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_matching_spot_offer_takes_on_demand_capacity_only_with_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut client = service.workloads().await;
    let pid = std::process::id();
    // No spot offer publishes a rate under 1 %: AWS's lowest bucket is "< 5 %".
    let strict = |name: &str, fallback: &str| {
        let mut spec = spec(name, &[]);
        if let Some(r) = spec.requirements.as_mut() {
            r.max_interruption_rate = Some(1.0);
        }
        spec.fallback = fallback.into();
        spec
    };

    let spot_only = create(&mut client, strict(&format!("spot-only-{pid}"), "")).await;
    let failed = wait_status(
        &mut client,
        &spot_only.id,
        &["FAILED"],
        Duration::from_secs(30),
    )
    .await;
    assert!(
        failed.status_reason.contains("max_interruption_rate"),
        "{}",
        failed.status_reason
    );

    let created = create(&mut client, strict(&format!("od-{pid}"), "on_demand")).await;
    assert_eq!(created.spec.as_ref().unwrap().fallback, "on_demand");
    let running = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    assert_paid_on_demand(&running);
    // It serves through the router like any other.
    let (status, _) = get_json(&running.endpoint, &running.access_token).await;
    assert_eq!(status, 200);
    let told = notifications(&mut client, &created.id).await;
    let fallback = told
        .iter()
        .find(|n| n.kind == "workload.fallback")
        .expect("a workload.fallback notification");
    assert!(
        fallback.payload.contains("no spot offer matches"),
        "{}",
        fallback.payload
    );
    // On-demand capacity is never reclaimed: no notice can be raised on it.
    let refused = service
        .admin()
        .await
        .inject_interruption(authed(pb::InjectInterruptionRequest {
            workload_id: created.id.clone(),
            delay_ms: 1000,
        }))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("on-demand"),
        "{}",
        refused.message()
    );

    // Billed at what was paid.
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
    let billing = client
        .get_billing(authed(pb::GetBillingRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(billing.records.len(), 1, "{billing:?}");
    assert_eq!(
        Some(billing.records[0].price_per_hour),
        running.price_per_hour
    );
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_spot_capacity_errors_move_to_on_demand_of_the_same_offer() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[(
            "COMPUTEARBITRAGE_WORKLOADS__LOCAL__NO_SPOT_CAPACITY",
            "*/*/*/*",
        )],
    );
    let mut client = service.workloads().await;
    let pid = std::process::id();
    let mut spec = spec(&format!("capacity-{pid}"), &[]);
    spec.fallback = "on_demand".into();
    let created = create(&mut client, spec.clone()).await;
    let running = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    assert_paid_on_demand(&running);
    // The offer placement chose (the best spot offer), taken on demand.
    let placed = client
        .list_runs(authed(pb::ListRunsRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .runs
        .remove(0)
        .steps
        .into_iter()
        .find(|s| s.name == "placement")
        .unwrap();
    let placement: serde_json::Value = serde_json::from_str(&placed.output).unwrap();
    assert_eq!(placement["market"], "spot");
    assert_eq!(placement["instance_type"], running.instance_type.as_str());
    let told = notifications(&mut client, &created.id).await;
    let fallback = told.iter().find(|n| n.kind == "workload.fallback").unwrap();
    assert!(
        fallback.payload.contains("InsufficientInstanceCapacity"),
        "{}",
        fallback.payload
    );

    // Without fallback the capacity errors are retried, never paid around.
    let mut spot_only = spec;
    spot_only.name = format!("capacity-spot-{pid}");
    spot_only
        .env
        .insert("WORKLOAD_NAME".into(), spot_only.name.clone());
    spot_only.fallback = "none".into();
    let waiting = create(&mut client, spot_only).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let now = get(&mut client, &waiting.id).await;
    assert!(
        now.status == "PROVISIONING" || now.status == "FAILED",
        "{now:?}"
    );
    assert_ne!(now.market, "on_demand");
    assert!(processes_with_env("WORKLOAD_NAME", &now.spec.unwrap().name).is_empty());
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_migration_without_spot_capacity_moves_to_on_demand_with_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let heartbeat = ("COMPUTEARBITRAGE_WORKLOADS__AGENT_HEARTBEAT_MS", "300");
    let service = Service::start(dir.path(), &[heartbeat]);
    let mut client = service.workloads().await;
    let mut spec = spec(&format!("od-mover-{}", std::process::id()), &[]);
    spec.on_interruption = "migrate".into();
    spec.storage = test_storage();
    spec.fallback = "on_demand".into();
    let created = create(&mut client, spec).await;
    let before = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(before.market, "spot");
    // The clouds run out of spot capacity: the service restarts into that world (the
    // workload keeps running, its agent reconnects).
    let address = service.address();
    service.kill();
    let service = Service::start_on(
        dir.path(),
        &address,
        &[
            heartbeat,
            (
                "COMPUTEARBITRAGE_WORKLOADS__LOCAL__NO_SPOT_CAPACITY",
                "*/*/*/*",
            ),
        ],
    );
    let mut client = service.workloads().await;
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
    assert_paid_on_demand(&after);
    // The same route and token (the test's router listens on a new port per start).
    assert!(after.endpoint.ends_with(&format!("/w/{}/", created.id)));
    assert_eq!(after.access_token, before.access_token);
    let (status, _) = get_json(&after.endpoint, &after.access_token).await;
    assert_eq!(status, 200);
    let told = notifications(&mut client, &created.id).await;
    assert!(
        told.iter()
            .any(|n| n.kind == "workload.fallback"
                && n.payload.contains("InsufficientInstanceCapacity")),
        "{told:?}"
    );
    // Billed per instance at what each cost: spot, then on-demand.
    let billing = client
        .get_billing(authed(pb::GetBillingRequest {
            workload_id: created.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    let paid: Vec<f64> = billing.records.iter().map(|r| r.price_per_hour).collect();
    assert_eq!(
        paid,
        vec![
            before.price_per_hour.unwrap(),
            after.price_per_hour.unwrap()
        ],
        "{billing:?}"
    );
    service.stop();
    kill_workloads(dir.path());
}
