//! Notifications to a tenant's webhook.
//!
//! Each event is stored first (so none is lost to a crash), then POSTed as JSON by the
//! [`NotificationSender`] worker with an HMAC-SHA256 signature:
//!
//! ```text
//! X-ComputeArbitrage-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
//! ```
//!
//! Receivers recompute the HMAC over the timestamp, a dot and the raw body, compare in
//! constant time, and may reject old timestamps to stop replays. Failed deliveries are
//! retried with exponential backoff; after the last attempt the notification is kept
//! as `failed` with its last error.

use super::{new_id, now_ms, webhook_target, Orchestrator};
use crate::error::OrchestratorError;
use crate::worker::Worker;
use computearbitrage_core::RetryPolicy;
use computearbitrage_store::{NotificationRecord, NotificationStatus, Store, WorkloadRecord};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

pub const SIGNATURE_HEADER: &str = "X-ComputeArbitrage-Signature";

/// Delivery retries: 8 attempts, 1 s doubling to at most 5 min, ±20 %.
pub const DELIVERY_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 8,
    initial_delay: Duration::from_secs(1),
    backoff_coefficient: 2.0,
    max_delay: Duration::from_secs(300),
    jitter: 0.2,
};

/// `t=…,v1=…` for `body` signed with `secret` at `timestamp`.
pub fn signature(secret: &str, timestamp: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// Verifies a signature header (for receivers and tests), in constant time.
pub fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut timestamp = None;
    let mut given = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => timestamp = v.parse::<i64>().ok(),
            Some(("v1", v)) => given = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(timestamp), Some(given)) = (timestamp, given) else {
        return false;
    };
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// Stores a notification for the workload's tenant. Without a webhook it is kept as
/// `failed` with the reason, so the event is still visible.
pub async fn enqueue(
    orch: &Orchestrator,
    workload: &WorkloadRecord,
    kind: &str,
    details: serde_json::Value,
) -> Result<(), OrchestratorError> {
    let now = now_ms();
    let id = new_id("ntf");
    let payload = serde_json::json!({
        "id": id,
        "type": kind,
        "tenant": workload.tenant_id,
        "workload_id": workload.id,
        "workload_name": workload.name,
        "at": computearbitrage_core::fmt::rfc3339(now / 1000),
        "details": details,
    })
    .to_string();
    let settings = orch.store.tenant_settings(&workload.tenant_id).await?;
    let configured = settings.webhook_url.is_some();
    orch.store
        .enqueue_notification(NotificationRecord {
            id,
            tenant_id: workload.tenant_id.clone(),
            workload_id: workload.id.clone(),
            kind: kind.to_string(),
            payload,
            status: if configured {
                NotificationStatus::Pending
            } else {
                NotificationStatus::Failed
            },
            attempts: 0,
            next_attempt_at: now,
            last_error: (!configured)
                .then(|| "no webhook is set for this tenant (Admin.SetWebhook)".to_string()),
            created_at: now,
            delivered_at: None,
        })
        .await?;
    tracing::info!(tenant = %workload.tenant_id, workload_id = %workload.id, kind, "notification queued");
    Ok(())
}

/// Checks a webhook URL as `SetWebhook` receives it (see [`webhook_target`]).
pub fn check_webhook_url(url: &str, allow_private: bool) -> Result<(), String> {
    webhook_target::check_url(url, allow_private).map(|_| ())
}

/// Delivers due notifications. Each tenant's deliveries run in a task of their own,
/// one at a time per tenant, so one tenant's slow or dead endpoint delays only that
/// tenant's notifications.
pub struct NotificationSender {
    pub store: Arc<dyn Store>,
    /// Built by [`webhook_target::client`]: guarded resolution, no redirects, TLS.
    pub http: reqwest::Client,
    pub interval: Duration,
    /// Whether webhooks may reach loopback, private and link-local addresses.
    pub allow_private: bool,
    /// Tenants whose deliveries are in flight.
    pub busy: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// One delivery attempt of `n`, with its outcome saved.
async fn deliver(
    store: &dyn Store,
    http: &reqwest::Client,
    allow_private: bool,
    mut n: NotificationRecord,
) -> Result<(), OrchestratorError> {
    let settings = store.tenant_settings(&n.tenant_id).await?;
    n.attempts += 1;
    let result = match (&settings.webhook_url, &settings.webhook_secret) {
        (Some(url), Some(secret)) => match webhook_target::check_url(url, allow_private) {
            // Checked again: the setting (or the operator's policy) may be older.
            Err(refused) => Err(format!("refused: {refused}")),
            Ok(url) => {
                let timestamp = now_ms() / 1000;
                let response = http
                    .post(url)
                    .header("content-type", "application/json")
                    .header(SIGNATURE_HEADER, signature(secret, timestamp, &n.payload))
                    .body(n.payload.clone())
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) if r.status().is_redirection() => Err(format!(
                        "the webhook answered HTTP {} (redirects are not followed; set the final URL)",
                        r.status().as_u16()
                    )),
                    Ok(r) => Err(format!("the webhook answered HTTP {}", r.status().as_u16())),
                    Err(e) => Err(webhook_target::describe_failure(&e)),
                }
            }
        },
        _ => Err("no webhook is set for this tenant (Admin.SetWebhook)".to_string()),
    };
    let now = now_ms();
    match result {
        Ok(()) => {
            n.status = NotificationStatus::Delivered;
            n.delivered_at = Some(now);
            n.last_error = None;
            tracing::info!(tenant = %n.tenant_id, notification = %n.id, kind = %n.kind, attempts = n.attempts, "notification delivered");
        }
        Err(error) => {
            n.last_error = Some(error.clone());
            if DELIVERY_RETRY.allows_another(n.attempts) {
                let jitter: f64 = rand::Rng::gen(&mut rand::thread_rng());
                n.next_attempt_at =
                    now + DELIVERY_RETRY.delay_after(n.attempts, jitter).as_millis() as i64;
            } else {
                n.status = NotificationStatus::Failed;
            }
            tracing::warn!(tenant = %n.tenant_id, notification = %n.id, kind = %n.kind, attempts = n.attempts, error = %error, "notification delivery failed");
        }
    }
    store.save_notification(n).await?;
    Ok(())
}

#[async_trait::async_trait]
impl Worker for NotificationSender {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        "notification-sender".into()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        let mut by_tenant: std::collections::BTreeMap<String, Vec<NotificationRecord>> =
            Default::default();
        for n in self.store.due_notifications(now_ms(), 200).await? {
            by_tenant.entry(n.tenant_id.clone()).or_default().push(n);
        }
        for (tenant, due) in by_tenant {
            if !self
                .busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(tenant.clone())
            {
                continue; // its earlier deliveries are still going
            }
            let (store, http, busy, allow_private) = (
                self.store.clone(),
                self.http.clone(),
                self.busy.clone(),
                self.allow_private,
            );
            tokio::spawn(async move {
                for n in due {
                    if let Err(e) = deliver(store.as_ref(), &http, allow_private, n).await {
                        tracing::warn!(tenant = %tenant, error = %e, origin = ?e.origin(), retryable = e.is_retryable(), "cannot save a delivery");
                    }
                }
                busy.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&tenant);
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_is_detected() {
        let body = r#"{"type":"workload.ready"}"#;
        let header = signature("a-shared-secret-123", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert!(verify("a-shared-secret-123", &header, body));
        assert!(!verify("another-secret-456", &header, body));
        assert!(!verify(
            "a-shared-secret-123",
            &header,
            r#"{"type":"workload.failed"}"#
        ));
        let replayed = header.replace("t=1700000000", "t=1700000001");
        assert!(!verify("a-shared-secret-123", &replayed, body));
        assert!(!verify("a-shared-secret-123", "garbage", body));
    }

    #[test]
    fn delivery_backoff_grows_and_ends() {
        assert_eq!(DELIVERY_RETRY.delay_after(1, 0.5), Duration::from_secs(1));
        assert_eq!(DELIVERY_RETRY.delay_after(3, 0.5), Duration::from_secs(4));
        assert_eq!(
            DELIVERY_RETRY.delay_after(12, 0.5),
            Duration::from_secs(300)
        );
        assert!(!DELIVERY_RETRY.allows_another(8));
    }
}
