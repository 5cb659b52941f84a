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

use super::{new_id, now_ms, steps::describe_http_error, Orchestrator};
use crate::error::ServiceError;
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
) -> Result<(), ServiceError> {
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

/// Delivers due notifications.
pub struct NotificationSender {
    pub store: Arc<dyn Store>,
    pub http: reqwest::Client,
    pub interval: Duration,
}

impl NotificationSender {
    async fn deliver(&self, mut n: NotificationRecord) -> Result<(), ServiceError> {
        let settings = self.store.tenant_settings(&n.tenant_id).await?;
        n.attempts += 1;
        let result = match (&settings.webhook_url, &settings.webhook_secret) {
            (Some(url), Some(secret)) => {
                let timestamp = now_ms() / 1000;
                let response = self
                    .http
                    .post(url)
                    .header("content-type", "application/json")
                    .header(SIGNATURE_HEADER, signature(secret, timestamp, &n.payload))
                    .body(n.payload.clone())
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("webhook answered HTTP {}", r.status())),
                    Err(e) => Err(format!("webhook unreachable: {}", describe_http_error(&e))),
                }
            }
            _ => Err("no webhook is set for this tenant (Admin.SetWebhook)".to_string()),
        };
        let now = now_ms();
        match result {
            Ok(()) => {
                n.status = NotificationStatus::Delivered;
                n.delivered_at = Some(now);
                n.last_error = None;
                tracing::info!(notification = %n.id, kind = %n.kind, attempts = n.attempts, "notification delivered");
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
                tracing::warn!(notification = %n.id, kind = %n.kind, attempts = n.attempts, error = %error, "notification delivery failed");
            }
        }
        self.store.save_notification(n).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Worker for NotificationSender {
    fn name(&self) -> String {
        "notification-sender".into()
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn tick(&mut self) -> Result<(), ServiceError> {
        for n in self.store.due_notifications(now_ms(), 50).await? {
            self.deliver(n).await?;
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
