//! Behaviour every [`Store`] adapter must have. Each adapter's tests call
//! [`run_all`] on a fresh, empty store (and [`check_persisted`] after reopening a
//! durable one), so engines cannot drift apart.

use crate::{CollectorOutcome, Store, StoreError, TokenRecord};
use computearbitrage_core::offer::Gpu;
use computearbitrage_core::{Architecture, Cloud, InterruptionRate, Offer};

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
}

/// Checks, after reopening a durable store that went through [`run_all`], that its
/// data survived.
pub async fn check_persisted(store: &dyn Store) {
    let offers = store.load_offers().await.unwrap();
    assert_eq!(offers.len(), 2, "offers must survive a reopen");
    assert_eq!(store.list_tokens().await.unwrap().len(), 1);
    assert_eq!(store.collector_statuses().await.unwrap().len(), 1);
}

async fn offers_round_trip_and_replace_per_source(store: &dyn Store) {
    assert!(store.load_offers().await.unwrap().is_empty());
    let mut plain = sample_offer("snapshot", "n2-standard-4", 0.05);
    plain.gpu = None;
    plain.on_demand_price = None;
    plain.interruption_rate = InterruptionRate::Unknown;
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
        token_hash: "ab".repeat(32),
        tenant_id: "default".into(),
        label: "bootstrap-env".into(),
        created_at: 11,
    };
    store.add_token(record.clone()).await.unwrap();
    store.add_token(record.clone()).await.unwrap();
    assert_eq!(store.list_tokens().await.unwrap(), vec![record.clone()]);

    store.ensure_tenant("other", 12).await.unwrap();
    let stolen = TokenRecord {
        tenant_id: "other".into(),
        ..record
    };
    let err = store.add_token(stolen).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(!err.is_retryable());

    let orphan = TokenRecord {
        token_hash: "cd".repeat(32),
        tenant_id: "no-such-tenant".into(),
        label: "x".into(),
        created_at: 13,
    };
    assert!(
        store.add_token(orphan).await.is_err(),
        "tokens need an existing tenant"
    );
}
