//! Engine tests with a scripted driver: retry and backoff under paused time, dead
//! letters, and replay from the first unfinished step.

use super::*;
use computearbitrage_core::driver::WORKLOAD_TAG;
use computearbitrage_core::{
    Architecture, DriverEvent, Error, HealthCheck, Instance, InstanceSpec, InstanceState, Offer,
    OnInterruption, Requirements, StorageSpec,
};
use computearbitrage_store::{RunKind, SqliteStore, WorkloadChanges};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// A driver whose create fails as scripted and whose terminate fails while `broken`.
#[derive(Default)]
struct ScriptedDriver {
    create_failures: Mutex<Vec<Error>>,
    creates: AtomicU32,
    terminate_broken: AtomicBool,
    instances: Mutex<Vec<Instance>>,
}

#[async_trait::async_trait]
impl Driver for ScriptedDriver {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn create_spot_instance(&self, spec: &InstanceSpec) -> Result<Instance, Error> {
        self.creates.fetch_add(1, Ordering::SeqCst);
        let mut failures = self.create_failures.lock().unwrap();
        if !failures.is_empty() {
            return Err(failures.remove(0));
        }
        let instance = Instance {
            instance_id: format!("i-{}", spec.idempotency_token),
            state: InstanceState::Running,
            address: Some("127.0.0.1:9".into()),
            tcp_address: None,
            tags: spec.tags.clone(),
            created_at: 0,
        };
        self.instances.lock().unwrap().push(instance.clone());
        Ok(instance)
    }
    async fn instance(&self, id: &str) -> Result<Instance, Error> {
        self.instances
            .lock()
            .unwrap()
            .iter()
            .find(|i| i.instance_id == id)
            .cloned()
            .ok_or_else(|| Error::Driver {
                driver: "scripted".into(),
                message: format!("DescribeInstances failed for {id}"),
                retryable: true,
            })
    }
    async fn terminate(&self, id: &str) -> Result<(), Error> {
        if self.terminate_broken.load(Ordering::SeqCst) {
            return Err(Error::Driver {
                driver: "scripted".into(),
                message: "permission denied".into(),
                retryable: false,
            });
        }
        for i in self
            .instances
            .lock()
            .unwrap()
            .iter_mut()
            .filter(|i| i.instance_id == id)
        {
            i.state = InstanceState::Terminated {
                reason: "terminated".into(),
            };
        }
        Ok(())
    }
    async fn list_by_tag(&self, key: &str, value: Option<&str>) -> Result<Vec<Instance>, Error> {
        Ok(self
            .instances
            .lock()
            .unwrap()
            .iter()
            .filter(|i| {
                i.tags
                    .get(key)
                    .is_some_and(|v| value.is_none_or(|w| v == w))
            })
            .cloned()
            .collect())
    }
    async fn next_event(&self, wait: Duration) -> Option<DriverEvent> {
        tokio::time::sleep(wait).await;
        None
    }
}

fn throttled() -> Error {
    Error::Driver {
        driver: "scripted".into(),
        message: "throttled".into(),
        retryable: true,
    }
}

async fn setup(driver: Arc<ScriptedDriver>) -> Arc<Orchestrator> {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    store.ensure_tenant("default", 0).await.unwrap();
    store
        .replace_offers(
            "test",
            vec![Offer {
                cloud: Cloud::Aws,
                region: "us-east-1".into(),
                zone: "use1-az1".into(),
                instance_type: "m5.large".into(),
                vcpus: 2.0,
                memory_gib: 8.0,
                architecture: Architecture::X86_64,
                gpu: None,
                on_demand_price: Some(0.096),
                spot_price: 0.036,
                interruption_rate: computearbitrage_core::InterruptionRate::Unknown,
                interruption_source: String::new(),
                observed_at: 0,
                source: "test".into(),
            }],
        )
        .await
        .unwrap();
    let book = Arc::new(PriceBook::default());
    book.reload(store.as_ref()).await.unwrap();
    let shared: Arc<dyn Driver> = driver;
    let drivers = Cloud::ALL
        .into_iter()
        .map(|c| (c, shared.clone()))
        .collect();
    Orchestrator::new(
        store,
        book,
        ScoringPolicy::default(),
        drivers,
        monitor::Monitor::new(4),
        Settings {
            max_concurrent_workloads: 10,
            wait_running_timeout: Duration::from_secs(5),
            interruption_delay: Duration::from_secs(2),
            pause_at: None,
            access_tokens: crate::tokens::AccessTokenKey::random(),
            tcp_ports: 20000..=20999,
            agent_heartbeat: Duration::from_secs(1),
            migration_cooldown: Duration::from_secs(600),
            drain: Duration::from_millis(100),
        },
    )
}

fn workload_spec(name: &str) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        requirements: Requirements::default(),
        command: vec!["server".into()],
        image: None,
        env: BTreeMap::new(),
        port: 8080,
        health_check: HealthCheck::default(),
        on_interruption: OnInterruption::Terminate,
        on_unhealthy: Default::default(),
        replace_unhealthy_after: std::time::Duration::from_secs(300),
        fallback: Default::default(),
        rebalance: None,
        storage: StorageSpec::default(),
        checkpoint: Default::default(),
        tags: BTreeMap::new(),
        create_timeout: Duration::from_secs(60),
        tcp_port: None,
        tcp_listen_port: None,
        tcp_allowed_cidrs: Vec::new(),
        written: None,
    }
}

async fn wait_for_run(orch: &Orchestrator, workload_id: &str, kind: RunKind) -> RunRecord {
    loop {
        let runs = orch.store.runs_of("default", workload_id).await.unwrap();
        if let Some(run) = runs
            .into_iter()
            .find(|r| r.kind == kind && r.status != RunStatus::Running)
        {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_errors_back_off_exponentially_then_the_run_is_a_dead_letter() {
    let driver = Arc::new(ScriptedDriver::default());
    *driver.create_failures.lock().unwrap() =
        vec![throttled(), throttled(), throttled(), throttled()];
    let orch = setup(driver.clone()).await;
    let start = tokio::time::Instant::now();
    let workload = orch.apply("default", workload_spec("retry")).await.unwrap();
    let run = wait_for_run(&orch, &workload.id, RunKind::Provision).await;
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(
        driver.creates.load(Ordering::SeqCst),
        4,
        "the policy allows 4 attempts"
    );
    // Pauses of 0.5, 1 and 2 s, each ±20 %.
    assert!(
        (2.8..=4.2).contains(&elapsed),
        "virtual time spent backing off: {elapsed}"
    );
    assert_eq!(run.status, RunStatus::Dead);
    assert_eq!(run.failed_step.as_deref(), Some("provision"));
    let failed = orch.get("default", &workload.id).await.unwrap();
    assert_eq!(failed.status, WorkloadStatus::Failed);
    assert!(
        failed
            .status_reason
            .contains("step provision failed after 4 attempts"),
        "{}",
        failed.status_reason
    );
    let ledger = orch.store.steps(&run.id).await.unwrap();
    let provision = ledger.iter().find(|s| s.step == "provision").unwrap();
    assert_eq!((provision.attempts, provision.completed), (4, false));
    assert_eq!(
        provision.last_error.as_deref(),
        Some("driver `scripted` failed: throttled")
    );
}

#[tokio::test(start_paused = true)]
async fn a_permanent_error_fails_at_once_without_backoff() {
    let driver = Arc::new(ScriptedDriver::default());
    *driver.create_failures.lock().unwrap() = vec![Error::Driver {
        driver: "scripted".into(),
        message: "bad image".into(),
        retryable: false,
    }];
    let orch = setup(driver.clone()).await;
    let start = tokio::time::Instant::now();
    let workload = orch
        .apply("default", workload_spec("permanent"))
        .await
        .unwrap();
    let run = wait_for_run(&orch, &workload.id, RunKind::Provision).await;
    assert_eq!(run.status, RunStatus::Dead);
    assert_eq!(driver.creates.load(Ordering::SeqCst), 1);
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "no backoff for a permanent error"
    );
    assert!(run
        .error
        .unwrap()
        .contains("after 1 attempt: driver `scripted` failed: bad image"));
}

#[tokio::test]
async fn a_dead_termination_is_replayed_from_its_failed_step() {
    let driver = Arc::new(ScriptedDriver::default());
    let orch = setup(driver.clone()).await;
    // A workload whose provisioning failed (nothing answers on its address), with a
    // live instance left behind that termination must remove.
    let mut spec = workload_spec("stuck");
    spec.create_timeout = Duration::from_secs(2);
    let workload = orch.apply("default", spec).await.unwrap();
    wait_for_run(&orch, &workload.id, RunKind::Provision).await;
    let mut tags = BTreeMap::new();
    tags.insert(WORKLOAD_TAG.to_string(), workload.id.clone());
    driver.instances.lock().unwrap().push(Instance {
        instance_id: "i-live".into(),
        state: InstanceState::Running,
        address: None,
        tcp_address: None,
        tags,
        created_at: 0,
    });
    driver.terminate_broken.store(true, Ordering::SeqCst);
    let current = orch.get("default", &workload.id).await.unwrap();
    orch.store
        .update_workload(
            "default",
            &workload.id,
            WorkloadChanges {
                instance_id: Some(Some("i-live".into())),
                ..Default::default()
            },
            1,
        )
        .await
        .unwrap();
    orch.start_termination(&current, "test").await.unwrap();
    let dead = wait_for_run(&orch, &workload.id, RunKind::Terminate).await;
    assert_eq!(dead.status, RunStatus::Dead);
    assert_eq!(dead.failed_step.as_deref(), Some("terminate-instance"));
    assert_eq!(
        orch.store
            .dead_runs("default")
            .await
            .unwrap()
            .iter()
            .filter(|r| r.kind == RunKind::Terminate)
            .count(),
        1
    );

    driver.terminate_broken.store(false, Ordering::SeqCst);
    orch.replay("default", &dead.id).await.unwrap();
    loop {
        if orch.store.run(&dead.id).await.unwrap().unwrap().status == RunStatus::Completed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        orch.get("default", &workload.id).await.unwrap().status,
        WorkloadStatus::Terminated
    );
    let ledger = orch.store.steps(&dead.id).await.unwrap();
    let attempts: Vec<(&str, u32)> = ledger
        .iter()
        .map(|s| (s.step.as_str(), s.attempts))
        .collect();
    assert_eq!(
        attempts[0],
        ("mark-stopping", 1),
        "completed steps are not redone on replay"
    );
    assert_eq!(
        attempts[2],
        ("terminate-instance", 1),
        "the failed step gets fresh attempts"
    );
    assert!(ledger.iter().all(|s| s.completed));
    assert!(driver
        .instances
        .lock()
        .unwrap()
        .iter()
        .all(|i| matches!(i.state, InstanceState::Terminated { .. })));
}

#[tokio::test]
async fn terminated_workloads_keep_their_storage_for_retention_days_only() {
    use computearbitrage_storage::{Area, ObjectKey, Storage, UrlSigner};
    let driver = Arc::new(ScriptedDriver::default());
    let orch = setup(driver.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(
        Storage::local(
            dir.path(),
            UrlSigner::new([5; 32]),
            "http://127.0.0.1:1",
            Duration::from_secs(60),
        )
        .unwrap(),
    );
    let cleaner = retention::RetentionCleaner::new(
        orch.store.clone(),
        storage.clone(),
        Duration::from_secs(60),
    );
    // Terminated workloads kept 2 days and 0 days, one still running, and (below) one
    // FAILED.
    let mut ids = Vec::new();
    for (name, days) in [("kept", 2), ("gone", 0)] {
        let mut spec = workload_spec(name);
        spec.create_timeout = Duration::from_secs(2);
        spec.storage = StorageSpec {
            enabled: true,
            quota_gb: 1,
            retention_days: days,
        };
        let workload = orch.apply("default", spec).await.unwrap();
        wait_for_run(&orch, &workload.id, RunKind::Provision).await;
        let key = ObjectKey::new(&workload.id, Area::Artifacts, "logs/app.log").unwrap();
        storage.put(&key, bytes_of("log")).await.unwrap();
        ids.push(workload.id);
    }
    let storage_for_days = |days| StorageSpec {
        enabled: true,
        quota_gb: 1,
        retention_days: days,
    };
    let (live, _) = launched_with(&orch, "i-live", |spec| spec.storage = storage_for_days(0)).await;
    let key = ObjectKey::new(&live.id, Area::Artifacts, "logs/app.log").unwrap();
    storage.put(&key, bytes_of("log")).await.unwrap();
    ids.push(live.id);
    for id in &ids[..2] {
        let current = orch.get("default", id).await.unwrap();
        orch.start_termination(&current, "test").await.unwrap();
        wait_for_run(&orch, id, RunKind::Terminate).await;
        assert_eq!(
            orch.get("default", id).await.unwrap().status,
            WorkloadStatus::Terminated
        );
    }
    // A fourth whose provisioning failed for good: FAILED, kept 1 day.
    *driver.create_failures.lock().unwrap() = vec![Error::Driver {
        driver: "scripted".into(),
        message: "bad image".into(),
        retryable: false,
    }];
    let mut spec = workload_spec("failed");
    spec.storage = storage_for_days(1);
    let failed = orch.apply("default", spec).await.unwrap();
    wait_for_run(&orch, &failed.id, RunKind::Provision).await;
    assert_eq!(
        orch.get("default", &failed.id).await.unwrap().status,
        WorkloadStatus::Failed
    );
    let key = ObjectKey::new(&failed.id, Area::Artifacts, "logs/app.log").unwrap();
    storage.put(&key, bytes_of("log")).await.unwrap();
    let now = now_ms();
    let cleaned = cleaner.clean(now).await.unwrap();
    assert_eq!(
        cleaned,
        vec![(ids[1].clone(), 1)],
        "only the 0-day workload is due now"
    );
    // An upload through a URL granted before the end lands after the cleaning; it is
    // deleted too while such a URL can still be valid (60 s here).
    let late = ObjectKey::new(&ids[1], Area::State, "late.bin").unwrap();
    storage.put(&late, bytes_of("late")).await.unwrap();
    assert_eq!(
        cleaner.clean(now + 30_000).await.unwrap(),
        vec![(ids[1].clone(), 1)]
    );
    for (id, left) in [(&ids[0], 1), (&ids[1], 0), (&ids[2], 1), (&failed.id, 1)] {
        let listed = storage
            .list(&computearbitrage_storage::Prefix::workload(id).unwrap())
            .await
            .unwrap();
        assert_eq!(listed.len(), left, "{id}");
    }
    // A day and a bit later the failed workload's storage goes; two days later the
    // 2-day one's too; the running one's never.
    let day = 24 * 3600 * 1000;
    assert_eq!(
        cleaner.clean(now + day + 1000).await.unwrap(),
        vec![(failed.id.clone(), 1)]
    );
    let later = cleaner.clean(now + 2 * day + 1000).await.unwrap();
    assert_eq!(later, vec![(ids[0].clone(), 1)]);
    assert_eq!(storage.usage(&ids[2]).await.unwrap(), 3);
    // Nothing left to do is not an error.
    assert!(cleaner
        .clean(now + 10 * 24 * 3600 * 1000)
        .await
        .unwrap()
        .is_empty());
}

fn bytes_of(text: &'static str) -> bytes::Bytes {
    bytes::Bytes::from_static(text.as_bytes())
}

/// A workload as provisioning leaves it: the run that launched `instance` recorded it.
async fn launched(orch: &Orchestrator, instance: &str) -> (WorkloadRecord, RunRecord) {
    launched_with(orch, instance, |_| {}).await
}

async fn launched_with(
    orch: &Orchestrator,
    instance: &str,
    edit: impl FnOnce(&mut WorkloadSpec),
) -> (WorkloadRecord, RunRecord) {
    let now = now_ms();
    let id = new_id("wl");
    let mut spec = workload_spec(&format!("agents-{id}"));
    edit(&mut spec);
    let record = WorkloadRecord {
        id: id.clone(),
        tenant_id: "default".into(),
        name: format!("agents-{id}"),
        spec,
        status: WorkloadStatus::Running,
        status_reason: String::new(),
        failed_step: None,
        placement: None,
        instance_id: Some(instance.into()),
        endpoint: Some("127.0.0.1:9".into()),
        instance_started_at: Some(now),
        access_token_hash: None,
        tcp_endpoint: None,
        tcp_listen_port: None,
        created_at: now,
        updated_at: now,
    };
    let run = run_of(&id, RunKind::Provision);
    orch.store
        .create_workload(record.clone(), run.clone())
        .await
        .unwrap();
    record_launch(orch, &run.id, instance).await;
    (record, run)
}

fn run_of(workload_id: &str, kind: RunKind) -> RunRecord {
    let now = now_ms();
    RunRecord {
        id: new_id("run"),
        tenant_id: "default".into(),
        workload_id: workload_id.into(),
        kind,
        status: RunStatus::Running,
        reason: "test".into(),
        error: None,
        failed_step: None,
        replays: 0,
        created_at: now,
        updated_at: now,
    }
}

async fn record_launch(orch: &Orchestrator, run_id: &str, instance: &str) {
    orch.store
        .save_step(computearbitrage_store::StepRecord {
            run_id: run_id.into(),
            step: "provision".into(),
            attempts: 1,
            completed: true,
            output: Some(format!("{{\"instance_id\":\"{instance}\"}}")),
            last_error: None,
            started_at: now_ms(),
            finished_at: Some(now_ms()),
        })
        .await
        .unwrap();
}

fn beat() -> computearbitrage_agent_protocol::Heartbeat {
    computearbitrage_agent_protocol::Heartbeat {
        phase: "running".into(),
    }
}

#[tokio::test]
async fn agents_are_current_replacement_or_fenced_and_tokens_cannot_be_stretched() {
    use crate::tokens::AgentTokenKind::{Registration, Session};
    use agents::AgentError;
    let orch = setup(Arc::new(ScriptedDriver::default())).await;
    let key = orch.access_tokens().clone();
    let later = now_ms() / 1000 + 600;
    let (workload, first) = launched(&orch, "i-old").await;
    let old = key.agent_token(Session, &first.id, later);
    orch.agent_heartbeat(&old, beat()).await.unwrap();

    // A migration's replacement may heartbeat, and registers only once the final
    // checkpoint is settled. Its notice concerns only itself (the move goes on to
    // another offer): the workload's own instance is not interrupted by it.
    let migration = run_of(&workload.id, RunKind::Migrate);
    orch.store.create_run(migration.clone()).await.unwrap();
    record_launch(&orch, &migration.id, "i-new").await;
    let new = key.agent_token(Session, &migration.id, later);
    orch.agent_heartbeat(&new, beat()).await.unwrap();
    orch.agent_notice(
        &new,
        computearbitrage_agent_protocol::NoticeReport {
            signal: "interruption".into(),
            deadline: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        orch.get("default", &workload.id).await.unwrap().status,
        WorkloadStatus::Running
    );
    let waiting = orch
        .agent_register(
            &key.agent_token(Registration, &migration.id, later),
            computearbitrage_agent_protocol::Register {
                instance_id: "i-new".into(),
                agent_version: "test".into(),
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(
            waiting,
            computearbitrage_agent_protocol::RegisterReply::Wait { .. }
        ),
        "{waiting:?}"
    );

    // The route switches: the old agent is fenced, the new one is current.
    orch.store
        .update_workload(
            "default",
            &workload.id,
            WorkloadChanges {
                instance_id: Some(Some("i-new".into())),
                ..Default::default()
            },
            now_ms(),
        )
        .await
        .unwrap();
    orch.store
        .finish_run(&migration.id, RunStatus::Completed, None, None, now_ms())
        .await
        .unwrap();
    let fenced = orch.agent_heartbeat(&old, beat()).await;
    assert!(
        matches!(&fenced, Err(AgentError::Fenced(m)) if m.contains("i-old") && m.contains("i-new")),
        "{fenced:?}"
    );
    orch.agent_heartbeat(&new, beat()).await.unwrap();

    // Tokens: expired beyond the grace, forged, another kind: refused.
    let long_ago = now_ms() / 1000 - agents::REFRESH_GRACE.as_secs() as i64 - 1;
    for token in [
        key.agent_token(Session, &migration.id, long_ago),
        key.agent_token(Registration, &migration.id, later),
        crate::tokens::AccessTokenKey::random().agent_token(Session, &migration.id, later),
        format!("{new}x"),
    ] {
        let result = orch.agent_heartbeat(&token, beat()).await;
        assert!(
            matches!(result, Err(AgentError::Unauthorized(_))),
            "{result:?}"
        );
    }
    // Recently expired: a heartbeat still refreshes it (the service was down).
    let recently = key.agent_token(Session, &migration.id, now_ms() / 1000 - 60);
    let refreshed = orch.agent_heartbeat(&recently, beat()).await.unwrap();
    assert!(refreshed.token_expires_at > now_ms() / 1000);
    // Registration credentials get no grace.
    let stale = key.agent_token(Registration, &migration.id, now_ms() / 1000 - 1);
    let register = orch
        .agent_register(
            &stale,
            computearbitrage_agent_protocol::Register {
                instance_id: "i-new".into(),
                agent_version: "test".into(),
            },
        )
        .await;
    assert!(matches!(register, Err(AgentError::Unauthorized(_))));

    // A workload that ended fences everyone.
    let current = orch.get("default", &workload.id).await.unwrap();
    orch.transition(
        &current,
        WorkloadStatus::Running,
        WorkloadStatus::Stopping,
        "test",
        WorkloadChanges::default(),
    )
    .await
    .unwrap();
    let ended = orch.agent_heartbeat(&new, beat()).await;
    assert!(matches!(ended, Err(AgentError::Fenced(_))), "{ended:?}");
}

#[tokio::test]
async fn one_failing_driver_call_does_not_stop_the_lost_instance_sweep() {
    let driver = Arc::new(ScriptedDriver::default());
    let orch = setup(driver.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let storage = computearbitrage_storage::Storage::local(
        dir.path(),
        computearbitrage_storage::UrlSigner::new([5; 32]),
        "http://127.0.0.1:1",
        Duration::from_secs(60),
    )
    .unwrap();
    orch.attach_agents(agents::AgentLink {
        service_url: "http://127.0.0.1:1".into(),
        storage: Arc::new(storage),
    });
    // Two silent agents: the driver cannot describe the first instance, and reports
    // the second ended.
    driver.instances.lock().unwrap().push(Instance {
        instance_id: "i-gone".into(),
        state: InstanceState::Terminated {
            reason: "reclaimed".into(),
        },
        address: None,
        tcp_address: None,
        tags: BTreeMap::new(),
        created_at: 0,
    });
    let mut ids = Vec::new();
    for instance in ["i-undescribable", "i-gone"] {
        let (workload, _) = launched(&orch, instance).await;
        let placed = computearbitrage_store::PlacementRecord {
            cloud: "aws".into(),
            region: "us-east-1".into(),
            zone: "use1-az1".into(),
            instance_type: "m5.large".into(),
            price_per_hour: 0.036,
            on_demand_price_per_hour: Some(0.096),
            on_demand: false,
            env_fingerprint: None,
        };
        orch.store
            .update_workload(
                "default",
                &workload.id,
                WorkloadChanges {
                    placement: Some(Some(placed)),
                    ..Default::default()
                },
                now_ms(),
            )
            .await
            .unwrap();
        let long_ago = std::time::Instant::now() - Duration::from_secs(60);
        orch.heard_from
            .lock()
            .unwrap()
            .insert(workload.id.clone(), long_ago);
        ids.push(workload.id);
    }
    let error = orch.find_lost_instances().await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("DescribeInstances failed for i-undescribable"),
        "{error}"
    );
    assert_eq!(
        orch.get("default", &ids[0]).await.unwrap().status,
        WorkloadStatus::Running,
        "not lost on a failed look"
    );
    let gone = orch.get("default", &ids[1]).await.unwrap();
    assert_ne!(
        gone.status,
        WorkloadStatus::Running,
        "the other was still handled"
    );
    assert!(
        gone.status_reason.contains("i-gone lost"),
        "{}",
        gone.status_reason
    );
}
