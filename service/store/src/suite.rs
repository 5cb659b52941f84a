//! Behaviour every [`Store`] adapter must have. Each adapter's tests call
//! [`run_all`] on a fresh, empty store (and [`check_persisted`] after reopening a
//! durable one), so engines cannot drift apart.

use crate::workloads::*;
use crate::{
    AuditRecord, CollectorOutcome, Scopes, Store, StoreError, TaskRecord, TaskState, TokenRecord,
};
use computearbitrage_core::offer::Gpu;
use computearbitrage_core::{Architecture, Cloud, InterruptionRate, Offer};
use computearbitrage_core::{
    HealthCheck, OnInterruption, Requirements, StorageSpec, Transition, WorkloadSpec,
    WorkloadStatus,
};
use std::collections::BTreeMap;
use std::time::Duration;

fn sample_offer(source: &str, instance_type: &str, spot: f64) -> Offer {
    Offer {
        cloud: Cloud::Gcp,
        region: "us-central1".into(),
        zone: String::new(),
        instance_type: instance_type.into(),
        vcpus: 12.0,
        memory_gib: 85.0,
        architecture: Architecture::X86_64,
        gpu: Some(Gpu {
            name: "A100".into(),
            original_name: "nvidia-tesla-a100".into(),
            count: 1,
        }),
        on_demand_price: Some(3.67),
        spot_price: spot,
        interruption_rate: InterruptionRate::from_aws_bucket(1),
        interruption_source: "AWS Spot Instance Advisor, 2025-06-28".into(),
        observed_at: 1_767_225_600,
        source: source.into(),
    }
}

fn sorted(mut offers: Vec<Offer>) -> Vec<Offer> {
    offers.sort_by(|a, b| (&a.source, &a.instance_type).cmp(&(&b.source, &b.instance_type)));
    offers
}

/// Runs every check on an empty store.
pub async fn run_all(store: &dyn Store) {
    offers_round_trip_and_replace_per_source(store).await;
    collector_runs_keep_last_success_and_failure(store).await;
    tenants_and_tokens(store).await;
    workloads_are_unique_per_active_name_and_isolated_by_tenant(store).await;
    transitions_are_compare_and_set_with_history(store).await;
    runs_keep_a_step_ledger_and_replay_dead_ones(store).await;
    billing_and_notifications(store).await;
    workload_changes_are_announced_after_commit(store).await;
    tcp_ports_are_unique_among_active_workloads(store).await;
    connection_records_open_count_and_close(store).await;
    tasks_are_delivered_when_due_or_their_lease_ran_out(store).await;
}

async fn workload_changes_are_announced_after_commit(store: &dyn Store) {
    store.ensure_tenant("feed", 1).await.unwrap();
    let mut changes = store.workload_changes();
    let mut w = workload("w-feed", "feed", "feed-api");
    w.access_token_hash = Some("ab".repeat(32));
    let created = store
        .create_workload(w, run("r-feed", "feed", "w-feed", RunKind::Provision))
        .await
        .unwrap();
    assert_eq!(created, CreateOutcome::Created);
    let expect = WorkloadChange {
        tenant_id: "feed".into(),
        workload_id: "w-feed".into(),
        kind: ChangeKind::Workload,
    };
    assert_eq!(changes.try_recv().unwrap(), expect, "create is announced");
    // The router reads the row as soon as it hears of it: it must be committed.
    let seen = store.workload_for_routing("w-feed").await.unwrap().unwrap();
    assert_eq!(seen.tenant_id, "feed");
    assert_eq!(seen.access_token_hash, Some("ab".repeat(32)));

    let applied = store
        .transition_workload(
            "feed",
            "w-feed",
            Transition::new(WorkloadStatus::Pending, WorkloadStatus::Provisioning).unwrap(),
            "placed",
            101,
            WorkloadChanges {
                endpoint: Some(Some("127.0.0.1:9".into())),
                tcp_endpoint: Some(Some("127.0.0.1:10".into())),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(applied);
    assert_eq!(
        changes.try_recv().unwrap(),
        expect,
        "transition is announced"
    );
    let seen = store.workload_for_routing("w-feed").await.unwrap().unwrap();
    assert_eq!(seen.tcp_endpoint.as_deref(), Some("127.0.0.1:10"));

    // A compare-and-set that loses changes nothing and announces nothing.
    let lost = store
        .transition_workload(
            "feed",
            "w-feed",
            Transition::new(WorkloadStatus::Pending, WorkloadStatus::Provisioning).unwrap(),
            "placed again",
            102,
            WorkloadChanges::default(),
        )
        .await
        .unwrap();
    assert!(!lost);
    assert!(changes.try_recv().is_err(), "a lost CAS is not announced");

    store
        .update_workload(
            "feed",
            "w-feed",
            WorkloadChanges {
                endpoint: Some(Some("127.0.0.1:11".into())),
                ..Default::default()
            },
            103,
        )
        .await
        .unwrap();
    assert_eq!(changes.try_recv().unwrap(), expect, "update is announced");
    assert!(store.workload_for_routing("nope").await.unwrap().is_none());
}

async fn tcp_ports_are_unique_among_active_workloads(store: &dyn Store) {
    store.ensure_tenant("tcp-a", 1).await.unwrap();
    store.ensure_tenant("tcp-b", 1).await.unwrap();
    let mut a = workload("w-tcp-a", "tcp-a", "db");
    a.tcp_listen_port = Some(21_000);
    store
        .create_workload(a, run("r-tcp-a", "tcp-a", "w-tcp-a", RunKind::Provision))
        .await
        .unwrap();
    let mut b = workload("w-tcp-b", "tcp-b", "db");
    b.tcp_listen_port = Some(21_000);
    let err = store
        .create_workload(
            b.clone(),
            run("r-tcp-b", "tcp-b", "w-tcp-b", RunKind::Provision),
        )
        .await
        .expect_err("the port is taken by an active workload of another tenant");
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(store
        .workload_for_routing("w-tcp-b")
        .await
        .unwrap()
        .is_none());

    // Once the first one has ended, the port is free again.
    for (from, to) in [(WorkloadStatus::Pending, WorkloadStatus::Failed)] {
        assert!(store
            .transition_workload(
                "tcp-a",
                "w-tcp-a",
                Transition::new(from, to).unwrap(),
                "gone",
                2,
                WorkloadChanges::default()
            )
            .await
            .unwrap());
    }
    store
        .create_workload(b, run("r-tcp-b", "tcp-b", "w-tcp-b", RunKind::Provision))
        .await
        .unwrap();
}

async fn connection_records_open_count_and_close(store: &dyn Store) {
    let record = |id: &str, router: &str| ConnectionRecord {
        id: id.into(),
        router_id: router.into(),
        tenant_id: "conn".into(),
        workload_id: "w-conn".into(),
        backend: "127.0.0.1:5000".into(),
        client: "127.0.0.1:40000".into(),
        started_at: 10,
        bytes_to_backend: 0,
        bytes_from_backend: 0,
    };
    store
        .apply_connection_batch(ConnectionBatch {
            opened: vec![record("c1", "r1"), record("c2", "r1"), record("c3", "r2")],
            // Counters of a row opened in the same batch apply after it.
            bytes: vec![("c1".into(), 5, 7), ("gone".into(), 1, 1)],
            closed: vec![],
        })
        .await
        .unwrap();
    let open = store.connections("conn", "w-conn").await.unwrap();
    assert_eq!(open.len(), 3);
    let c1 = open.iter().find(|c| c.id == "c1").unwrap();
    assert_eq!((c1.bytes_to_backend, c1.bytes_from_backend), (5, 7));
    assert!(
        store
            .connections("other", "w-conn")
            .await
            .unwrap()
            .is_empty(),
        "isolated by tenant"
    );

    store
        .apply_connection_batch(ConnectionBatch {
            closed: vec!["c1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(store.close_router_connections("r1").await.unwrap(), 1);
    let left: Vec<String> = store
        .connections("conn", "w-conn")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(left, vec!["c3".to_string()]);
    assert_eq!(store.close_router_connections("r2").await.unwrap(), 1);
}

fn spec(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        requirements: Requirements::default(),
        command: vec!["server".into()],
        image: None,
        env: BTreeMap::new(),
        port: 8080,
        health_check: HealthCheck::default(),
        on_interruption: OnInterruption::Migrate,
        // Not the defaults, so a store that drops them fails the round trip.
        on_unhealthy: computearbitrage_core::OnUnhealthy::Replace,
        replace_unhealthy_after: Duration::from_secs(42),
        fallback: Default::default(),
        rebalance: None,
        storage: StorageSpec::default(),
        checkpoint: Default::default(),
        tags: BTreeMap::from([("team".into(), "ml".into())]),
        create_timeout: Duration::from_secs(600),
        tcp_port: None,
        tcp_listen_port: None,
        tcp_allowed_cidrs: Vec::new(),
        written: None,
    }
}

fn workload(id: &str, tenant: &str, name: &str) -> WorkloadRecord {
    WorkloadRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        name: name.into(),
        spec: spec(name),
        status: WorkloadStatus::Pending,
        status_reason: "created".into(),
        failed_step: None,
        placement: None,
        instance_id: None,
        endpoint: None,
        instance_started_at: None,
        access_token_hash: None,
        tcp_endpoint: None,
        tcp_listen_port: None,
        created_at: 100,
        updated_at: 100,
    }
}

fn run(id: &str, tenant: &str, workload_id: &str, kind: RunKind) -> RunRecord {
    RunRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        workload_id: workload_id.into(),
        kind,
        status: RunStatus::Running,
        reason: "test".into(),
        error: None,
        failed_step: None,
        replays: 0,
        created_at: 100,
        updated_at: 100,
    }
}

async fn workloads_are_unique_per_active_name_and_isolated_by_tenant(store: &dyn Store) {
    store.ensure_tenant("default", 1).await.unwrap();
    store.ensure_tenant("other", 1).await.unwrap();
    let w = workload("w1", "default", "web");
    assert_eq!(
        store
            .create_workload(w.clone(), run("r1", "default", "w1", RunKind::Provision))
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(store.workload("default", "w1").await.unwrap().unwrap(), w);
    // Same name again: the existing one comes back and nothing is written.
    match store
        .create_workload(
            workload("w2", "default", "web"),
            run("r2", "default", "w2", RunKind::Provision),
        )
        .await
        .unwrap()
    {
        CreateOutcome::Existing(found) => assert_eq!(found.id, "w1"),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert!(
        store.run("r2").await.unwrap().is_none(),
        "the second run was not stored"
    );
    // Another tenant may use the name, and cannot see the first tenant's workload.
    assert_eq!(
        store
            .create_workload(
                workload("w3", "other", "web"),
                run("r3", "other", "w3", RunKind::Provision)
            )
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert!(store.workload("other", "w1").await.unwrap().is_none());
    assert_eq!(store.count_active_workloads("default").await.unwrap(), 1);
    // A FAILED workload frees its name.
    let t = Transition::new(WorkloadStatus::Pending, WorkloadStatus::Failed).unwrap();
    assert!(store
        .transition_workload("default", "w1", t, "quota", 101, WorkloadChanges::default())
        .await
        .unwrap());
    assert!(store
        .active_workload_named("default", "web")
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.count_active_workloads("default").await.unwrap(), 0);
    assert_eq!(
        store
            .create_workload(
                workload("w4", "default", "web"),
                run("r4", "default", "w4", RunKind::Provision)
            )
            .await
            .unwrap(),
        CreateOutcome::Created
    );
    assert_eq!(
        store
            .active_workload_named("default", "web")
            .await
            .unwrap()
            .unwrap()
            .id,
        "w4"
    );
}

async fn transitions_are_compare_and_set_with_history(store: &dyn Store) {
    let to_provisioning =
        Transition::new(WorkloadStatus::Pending, WorkloadStatus::Provisioning).unwrap();
    let placement = PlacementRecord {
        cloud: "gcp".into(),
        region: "us-central1".into(),
        zone: String::new(),
        instance_type: "e2-small".into(),
        price_per_hour: 0.005,
        on_demand_price_per_hour: Some(0.0168),
        on_demand: true,
        env_fingerprint: Some("0123abcd".into()),
    };
    let changes = WorkloadChanges {
        placement: Some(Some(placement.clone())),
        ..Default::default()
    };
    assert!(store
        .transition_workload(
            "default",
            "w4",
            to_provisioning,
            "placed",
            110,
            changes.clone()
        )
        .await
        .unwrap());
    // The same transition again finds the workload no longer PENDING.
    assert!(!store
        .transition_workload("default", "w4", to_provisioning, "placed", 111, changes)
        .await
        .unwrap());
    // Another tenant cannot move it.
    let to_running =
        Transition::new(WorkloadStatus::Provisioning, WorkloadStatus::Running).unwrap();
    assert!(!store
        .transition_workload(
            "other",
            "w4",
            to_running,
            "x",
            112,
            WorkloadChanges::default()
        )
        .await
        .unwrap());
    let running = WorkloadChanges {
        instance_id: Some(Some("local-1".into())),
        endpoint: Some(Some("127.0.0.1:9000".into())),
        instance_started_at: Some(Some(112)),
        ..Default::default()
    };
    assert!(store
        .transition_workload("default", "w4", to_running, "healthy", 113, running)
        .await
        .unwrap());
    let w = store.workload("default", "w4").await.unwrap().unwrap();
    assert_eq!(w.status, WorkloadStatus::Running);
    assert_eq!(w.placement, Some(placement));
    assert_eq!(w.endpoint.as_deref(), Some("127.0.0.1:9000"));
    let mut new_spec = w.spec.clone();
    new_spec.tags.insert("env".into(), "prod".into());
    store
        .update_workload(
            "default",
            "w4",
            WorkloadChanges {
                spec: Some(new_spec.clone()),
                endpoint: Some(None),
                ..Default::default()
            },
            120,
        )
        .await
        .unwrap();
    let w = store.workload("default", "w4").await.unwrap().unwrap();
    assert_eq!(w.spec, new_spec);
    assert_eq!(w.endpoint, None);
    assert_eq!(w.updated_at, 120);
    assert!(store
        .update_workload("other", "w4", WorkloadChanges::default(), 121)
        .await
        .is_err());
    let history = store.transitions("default", "w4").await.unwrap();
    let edges: Vec<(WorkloadStatus, WorkloadStatus)> =
        history.iter().map(|t| (t.from, t.to)).collect();
    assert_eq!(
        edges,
        vec![
            (WorkloadStatus::Pending, WorkloadStatus::Provisioning),
            (WorkloadStatus::Provisioning, WorkloadStatus::Running)
        ]
    );
    assert_eq!(history[1].reason, "healthy");
    assert_eq!(
        store
            .workloads_in(&[WorkloadStatus::Running])
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn runs_keep_a_step_ledger_and_replay_dead_ones(store: &dyn Store) {
    let unfinished: Vec<String> = store
        .unfinished_runs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(unfinished, vec!["r1", "r3", "r4"]);
    let step = |name: &str, attempts, completed, at| StepRecord {
        run_id: "r4".into(),
        step: name.into(),
        attempts,
        completed,
        output: completed.then(|| "{\"ok\":true}".to_string()),
        last_error: (!completed).then(|| "boom".to_string()),
        started_at: at,
        finished_at: completed.then_some(at + 1),
    };
    store
        .save_step(step("quota-check", 1, true, 200))
        .await
        .unwrap();
    store
        .save_step(step("provision", 1, false, 201))
        .await
        .unwrap();
    store
        .save_step(step("provision", 3, false, 201))
        .await
        .unwrap();
    let ledger = store.steps("r4").await.unwrap();
    assert_eq!(ledger.len(), 2);
    assert_eq!(
        (
            ledger[1].step.as_str(),
            ledger[1].attempts,
            ledger[1].completed
        ),
        ("provision", 3, false)
    );
    store
        .finish_run(
            "r4",
            RunStatus::Dead,
            Some("boom".into()),
            Some("provision".into()),
            210,
        )
        .await
        .unwrap();
    let dead = store.dead_runs("default").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].failed_step.as_deref(), Some("provision"));
    assert!(store.dead_runs("other").await.unwrap().is_empty());
    assert!(store.revive_run("r4", 220).await.unwrap());
    assert!(
        !store.revive_run("r4", 221).await.unwrap(),
        "only dead runs revive"
    );
    let revived = store.run("r4").await.unwrap().unwrap();
    assert_eq!((revived.status, revived.replays), (RunStatus::Running, 1));
    let ledger = store.steps("r4").await.unwrap();
    assert!(ledger[0].completed, "completed steps stay completed");
    assert_eq!(ledger[1].attempts, 0, "the failed step gets fresh attempts");
    store
        .create_run(run("r5", "default", "w4", RunKind::Terminate))
        .await
        .unwrap();
    let kinds: Vec<RunKind> = store
        .runs_of("default", "w4")
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, vec![RunKind::Provision, RunKind::Terminate]);
}

async fn billing_and_notifications(store: &dyn Store) {
    let bill = BillingRecord {
        tenant_id: "default".into(),
        workload_id: "w4".into(),
        instance_id: "local-1".into(),
        cloud: "gcp".into(),
        region: "us-central1".into(),
        instance_type: "e2-small".into(),
        price_per_hour: 0.005,
        started_at: 0,
        ended_at: 7200,
        cost: 0.01,
    };
    store.add_billing(bill.clone()).await.unwrap();
    store.add_billing(bill.clone()).await.unwrap();
    assert_eq!(store.billing("default", "w4").await.unwrap(), vec![bill]);
    assert!(store.billing("other", "w4").await.unwrap().is_empty());

    let n = NotificationRecord {
        id: "n1".into(),
        tenant_id: "default".into(),
        workload_id: "w4".into(),
        kind: "workload.ready".into(),
        payload: "{}".into(),
        status: NotificationStatus::Pending,
        attempts: 0,
        next_attempt_at: 300,
        last_error: None,
        created_at: 300,
        delivered_at: None,
    };
    store.enqueue_notification(n.clone()).await.unwrap();
    assert!(store.due_notifications(299, 10).await.unwrap().is_empty());
    assert_eq!(
        store.due_notifications(300, 10).await.unwrap(),
        vec![n.clone()]
    );
    let delivered = NotificationRecord {
        status: NotificationStatus::Delivered,
        attempts: 1,
        delivered_at: Some(301),
        ..n
    };
    store.save_notification(delivered.clone()).await.unwrap();
    assert!(store.due_notifications(1000, 10).await.unwrap().is_empty());
    assert_eq!(
        store.notifications("default", "w4").await.unwrap(),
        vec![delivered]
    );

    assert_eq!(
        store.tenant_settings("default").await.unwrap().webhook_url,
        None
    );
    let settings = TenantSettings {
        tenant_id: "default".into(),
        webhook_url: Some("http://127.0.0.1:1/hook".into()),
        webhook_secret: Some("s3cret".into()),
        max_concurrent_workloads: Some(3),
    };
    store.set_tenant_settings(settings.clone()).await.unwrap();
    assert_eq!(store.tenant_settings("default").await.unwrap(), settings);
}

/// Checks, after reopening a durable store that went through [`run_all`], that its
/// data survived.
pub async fn check_persisted(store: &dyn Store) {
    let offers = store.load_offers().await.unwrap();
    assert_eq!(offers.len(), 2, "offers must survive a reopen");
    assert_eq!(
        store.list_tokens().await.unwrap().len(),
        2,
        "the operator's token and the revoked ci token"
    );
    assert_eq!(
        store
            .workload("default", "w4")
            .await
            .unwrap()
            .unwrap()
            .status,
        WorkloadStatus::Running
    );
    assert_eq!(store.steps("r4").await.unwrap().len(), 2);
    assert_eq!(store.collector_statuses().await.unwrap().len(), 1);
}

async fn offers_round_trip_and_replace_per_source(store: &dyn Store) {
    assert!(store.load_offers().await.unwrap().is_empty());
    let mut plain = sample_offer("snapshot", "n2-standard-4", 0.05);
    plain.gpu = None;
    plain.on_demand_price = None;
    plain.interruption_rate = InterruptionRate::Unknown;
    plain.interruption_source = String::new();
    let first = vec![
        sample_offer("snapshot", "a2-highgpu-1g", 1.38),
        plain.clone(),
    ];
    store
        .replace_offers("snapshot", first.clone())
        .await
        .unwrap();
    assert_eq!(sorted(store.load_offers().await.unwrap()), sorted(first));

    let other = vec![sample_offer("live", "a2-highgpu-1g", 1.20)];
    store.replace_offers("live", other.clone()).await.unwrap();
    assert_eq!(store.load_offers().await.unwrap().len(), 3);

    // Replacing one source leaves the other untouched.
    let second = vec![sample_offer("snapshot", "a2-highgpu-1g", 1.40), plain];
    store
        .replace_offers("snapshot", second.clone())
        .await
        .unwrap();
    store.replace_offers("live", vec![]).await.unwrap();
    assert_eq!(sorted(store.load_offers().await.unwrap()), sorted(second));
}

async fn collector_runs_keep_last_success_and_failure(store: &dyn Store) {
    store
        .record_collector_run(
            "snapshot",
            100,
            CollectorOutcome::Succeeded {
                offers: 2,
                fingerprint: "abc".into(),
            },
        )
        .await
        .unwrap();
    store
        .record_collector_run(
            "snapshot",
            160,
            CollectorOutcome::Failed {
                error: "timeout".into(),
            },
        )
        .await
        .unwrap();
    let status = &store.collector_statuses().await.unwrap()[0];
    assert_eq!(status.source, "snapshot");
    assert_eq!(status.last_success_at, Some(100));
    assert_eq!(status.last_failure_at, Some(160));
    assert_eq!(status.last_error.as_deref(), Some("timeout"));
    assert_eq!(status.offers, 2);
    assert_eq!(status.fingerprint.as_deref(), Some("abc"));

    store
        .record_collector_run(
            "snapshot",
            220,
            CollectorOutcome::Succeeded {
                offers: 2,
                fingerprint: "abd".into(),
            },
        )
        .await
        .unwrap();
    let status = &store.collector_statuses().await.unwrap()[0];
    assert_eq!(status.last_success_at, Some(220));
    assert_eq!(status.last_failure_at, Some(160), "failure time is history");
    assert_eq!(status.last_error, None, "a success clears the error");
}

async fn tenants_and_tokens(store: &dyn Store) {
    let tenant = store.ensure_tenant("default", 10).await.unwrap();
    assert_eq!(tenant.id, "default");
    let again = store.ensure_tenant("default", 99).await.unwrap();
    assert_eq!(again.created_at, 10, "ensure_tenant must not recreate");

    let record = TokenRecord {
        id: "tok-boot".into(),
        token_hash: "ab".repeat(32),
        tenant_id: "default".into(),
        label: "bootstrap-env".into(),
        scopes: Scopes::parse("admin").unwrap(),
        created_at: 11,
        expires_at: None,
        revoked_at: None,
    };
    store.add_token(record.clone()).await.unwrap();
    store.add_token(record.clone()).await.unwrap();
    assert_eq!(store.list_tokens().await.unwrap(), vec![record.clone()]);

    store.ensure_tenant("other", 12).await.unwrap();
    let stolen = TokenRecord {
        id: "tok-stolen".into(),
        tenant_id: "other".into(),
        ..record.clone()
    };
    let err = store.add_token(stolen).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(!err.is_retryable());

    let orphan = TokenRecord {
        id: "tok-orphan".into(),
        token_hash: "cd".repeat(32),
        tenant_id: "no-such-tenant".into(),
        label: "x".into(),
        created_at: 13,
        ..record.clone()
    };
    assert!(
        store.add_token(orphan).await.is_err(),
        "tokens need an existing tenant"
    );

    // Scopes, expiry and revocation survive the store; revoking is announced and
    // keeps the first time.
    let mut changes = store.workload_changes();
    let ci = TokenRecord {
        id: "tok-ci".into(),
        token_hash: "ef".repeat(32),
        tenant_id: "other".into(),
        label: "ci".into(),
        scopes: Scopes::parse("read,route").unwrap(),
        created_at: 14,
        expires_at: Some(1_000),
        revoked_at: None,
    };
    store.add_token(ci.clone()).await.unwrap();
    assert_eq!(changes.try_recv().unwrap().kind, ChangeKind::Credentials);
    let listed = store.list_tokens().await.unwrap();
    assert_eq!(listed, vec![record.clone(), ci.clone()]);
    assert!(ci.is_valid_at(999) && !ci.is_valid_at(1_000));
    let revoked = store.revoke_token("tok-ci", 500).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(500));
    assert!(!revoked.is_valid_at(600));
    assert_eq!(changes.try_recv().unwrap().kind, ChangeKind::Credentials);
    let twice = store.revoke_token("tok-ci", 700).await.unwrap().unwrap();
    assert_eq!(twice.revoked_at, Some(500));
    assert_eq!(store.revoke_token("tok-none", 700).await.unwrap(), None);
    let tenants: Vec<String> = store
        .tenants()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(tenants, vec!["default", "other"]);

    // The audit log, newest first, per tenant or for all.
    for (tenant, action) in [
        ("default", "CreateTenant"),
        ("other", "ApplyWorkload"),
        ("other", "DeleteWorkload"),
    ] {
        store
            .record_audit(AuditRecord {
                id: 0,
                tenant_id: tenant.into(),
                token_id: "tok-ci".into(),
                action: action.into(),
                target: "wl-1".into(),
                outcome: "ok".into(),
                at: 1,
            })
            .await
            .unwrap();
    }
    let other: Vec<String> = store
        .audit_log(Some("other"), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.action)
        .collect();
    assert_eq!(other, vec!["DeleteWorkload", "ApplyWorkload"]);
    assert_eq!(store.audit_log(None, 2).await.unwrap().len(), 2);
}

fn task(id: &str, tenant: &str, workload_id: &str, created_at: i64) -> TaskRecord {
    TaskRecord {
        id: id.into(),
        tenant_id: tenant.into(),
        workload_id: workload_id.into(),
        kind: "exec".into(),
        command: vec!["sh".into(), "-c".into(), "echo 'a b'".into()],
        timeout_seconds: 60,
        state: TaskState::Queued,
        attempts: 0,
        max_attempts: 3,
        next_attempt_at: created_at,
        lease_until: None,
        instance_id: None,
        exit_code: None,
        output: String::new(),
        error: None,
        created_at,
        updated_at: created_at,
    }
}

async fn tasks_are_delivered_when_due_or_their_lease_ran_out(store: &dyn Store) {
    store.ensure_tenant("tasks-a", 1).await.unwrap();
    store.ensure_tenant("tasks-b", 1).await.unwrap();
    let first = task("tsk-1", "tasks-a", "w-tasks", 1_000);
    let mut second = task("tsk-2", "tasks-a", "w-tasks", 2_000);
    second.next_attempt_at = 5_000;
    store.save_task(first.clone()).await.unwrap();
    store.save_task(second.clone()).await.unwrap();
    store
        .save_task(task("tsk-other", "tasks-b", "w-other", 500))
        .await
        .unwrap();

    assert_eq!(
        store.task("tasks-a", "tsk-1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store.task("tasks-b", "tsk-1").await.unwrap(),
        None,
        "another tenant never sees a task"
    );
    let ids: Vec<String> = store
        .tasks_of("tasks-a", "w-tasks")
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(ids, ["tsk-1", "tsk-2"], "oldest first");
    assert!(store
        .tasks_of("tasks-b", "w-tasks")
        .await
        .unwrap()
        .is_empty());

    // Only the due one is offered; the backed-off one waits for its time.
    assert_eq!(
        store
            .next_task("w-tasks", 1_500)
            .await
            .unwrap()
            .map(|t| t.id),
        Some("tsk-1".into())
    );
    let mut delivered = first.clone();
    delivered.state = TaskState::Delivered;
    delivered.attempts = 1;
    delivered.lease_until = Some(10_000);
    delivered.instance_id = Some("i-1".into());
    store.save_task(delivered.clone()).await.unwrap();
    assert_eq!(store.next_task("w-tasks", 1_500).await.unwrap(), None);
    assert_eq!(
        store
            .next_task("w-tasks", 6_000)
            .await
            .unwrap()
            .map(|t| t.id),
        Some("tsk-2".into()),
        "due after its backoff"
    );
    let mut completed = second.clone();
    completed.state = TaskState::Completed;
    completed.exit_code = Some(-1);
    completed.output = "line\n".into();
    store.save_task(completed.clone()).await.unwrap();
    assert_eq!(
        store.next_task("w-tasks", 10_001).await.unwrap(),
        Some(delivered.clone()),
        "a lease that ran out is delivered again"
    );
    assert_eq!(
        store.task("tasks-a", "tsk-2").await.unwrap(),
        Some(completed)
    );

    let mut dead = delivered;
    dead.state = TaskState::Dead;
    dead.error = Some("three attempts failed".into());
    store.save_task(dead.clone()).await.unwrap();
    assert_eq!(store.dead_tasks("tasks-a").await.unwrap(), vec![dead]);
    assert!(store.dead_tasks("tasks-b").await.unwrap().is_empty());
    assert_eq!(store.next_task("w-tasks", i64::MAX).await.unwrap(), None);
}
