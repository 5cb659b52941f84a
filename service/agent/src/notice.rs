//! The clouds' interruption signals as their metadata endpoints answer them, parsed
//! into one [`Notice`]. Pure: no I/O, no clock (the caller passes "now"); fuzzed.
//!
//! - AWS IMDS `latest/meta-data/spot/instance-action`: `{"action": "terminate"|"stop"|
//!   "hibernate", "time": RFC 3339}`, 404 while there is none; the deadline is `time`
//!   (two minutes after the notice).
//! - AWS `latest/meta-data/events/recommendations/rebalance`: `{"noticeTime": RFC 3339}`,
//!   an early warning with no deadline.
//! - GCP `computeMetadata/v1/instance/preempted`: plain `TRUE`/`FALSE`; the deadline is
//!   30 s after the change is seen.
//! - Azure Scheduled Events: `{"DocumentIncarnation", "Events": [{"EventId",
//!   "EventType", "Resources", "EventStatus", "NotBefore": RFC 1123, …}]}`; a `Preempt`
//!   (or `Terminate`) event naming this VM in `Resources` is a notice, due at `NotBefore`.

use serde::Deserialize;

/// Which signal a notice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The instance will be reclaimed at the deadline.
    Interruption,
    /// The cloud expects to reclaim it soon (AWS rebalance recommendation); no deadline.
    Rebalance,
}

/// An interruption signal, in one shape whatever the cloud.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub signal: Signal,
    /// Unix seconds the instance may be gone by; `None` for a rebalance recommendation.
    pub deadline: Option<i64>,
    /// What the cloud said it will do (`terminate`, `stop`, `Preempt`, …).
    pub action: String,
    /// The cloud's id for the event, when it has one (Azure's `EventId`, needed to
    /// approve it early).
    pub event_id: Option<String>,
}

/// A body that is not the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct ParseError {
    pub source_name: &'static str,
    pub message: String,
}

fn error(source_name: &'static str, message: impl Into<String>) -> ParseError {
    ParseError {
        source_name,
        message: message.into(),
    }
}

fn rfc3339(text: &str, source_name: &'static str) -> Result<i64, ParseError> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|e| {
            error(
                source_name,
                format!("{text:?} is not an RFC 3339 time: {e}"),
            )
        })
}

/// Seconds between GCP's preemption signal and the VM's end.
pub const GCP_NOTICE_SECONDS: i64 = 30;

/// AWS `spot/instance-action`.
pub fn aws_instance_action(body: &[u8]) -> Result<Notice, ParseError> {
    const NAME: &str = "aws spot/instance-action";
    #[derive(Deserialize)]
    struct Action {
        action: String,
        time: String,
    }
    let parsed: Action = serde_json::from_slice(body).map_err(|e| error(NAME, e.to_string()))?;
    if !matches!(parsed.action.as_str(), "terminate" | "stop" | "hibernate") {
        return Err(error(NAME, format!("unknown action {:?}", parsed.action)));
    }
    Ok(Notice {
        signal: Signal::Interruption,
        deadline: Some(rfc3339(&parsed.time, NAME)?),
        action: parsed.action,
        event_id: None,
    })
}

/// AWS `events/recommendations/rebalance`.
pub fn aws_rebalance(body: &[u8]) -> Result<Notice, ParseError> {
    const NAME: &str = "aws events/recommendations/rebalance";
    #[derive(Deserialize)]
    struct Rebalance {
        #[serde(rename = "noticeTime")]
        notice_time: String,
    }
    let parsed: Rebalance = serde_json::from_slice(body).map_err(|e| error(NAME, e.to_string()))?;
    rfc3339(&parsed.notice_time, NAME)?;
    Ok(Notice {
        signal: Signal::Rebalance,
        deadline: None,
        action: "rebalance".into(),
        event_id: None,
    })
}

/// GCP `instance/preempted`: whether preemption has begun.
pub fn gcp_preempted(body: &[u8]) -> Result<bool, ParseError> {
    match std::str::from_utf8(body).map(str::trim) {
        Ok("TRUE") => Ok(true),
        Ok("FALSE") => Ok(false),
        _ => Err(error(
            "gcp instance/preempted",
            format!(
                "{:?} is neither TRUE nor FALSE",
                String::from_utf8_lossy(body)
            ),
        )),
    }
}

/// The GCP notice once `preempted` turned `TRUE` at `seen_at`.
pub fn gcp_notice(seen_at: i64) -> Notice {
    Notice {
        signal: Signal::Interruption,
        deadline: Some(seen_at + GCP_NOTICE_SECONDS),
        action: "preempted".into(),
        event_id: None,
    }
}

/// An Azure Scheduled Events document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureDocument {
    pub incarnation: i64,
    /// Notices for `resource` (Preempt and Terminate events naming it).
    pub notices: Vec<Notice>,
}

/// Azure Scheduled Events, keeping only events that reclaim `resource` (this VM's
/// name, as `Resources` lists it).
pub fn azure_scheduled_events(body: &[u8], resource: &str) -> Result<AzureDocument, ParseError> {
    const NAME: &str = "azure scheduled events";
    #[derive(Deserialize)]
    struct Document {
        #[serde(rename = "DocumentIncarnation")]
        incarnation: i64,
        #[serde(rename = "Events", default)]
        events: Vec<Event>,
    }
    #[derive(Deserialize)]
    struct Event {
        #[serde(rename = "EventId")]
        id: String,
        #[serde(rename = "EventType")]
        kind: String,
        #[serde(rename = "Resources", default)]
        resources: Vec<String>,
        #[serde(rename = "NotBefore", default)]
        not_before: String,
    }
    let document: Document =
        serde_json::from_slice(body).map_err(|e| error(NAME, e.to_string()))?;
    let mut notices = Vec::new();
    for event in document.events {
        if !matches!(event.kind.as_str(), "Preempt" | "Terminate")
            || !event.resources.iter().any(|r| r == resource)
        {
            continue;
        }
        // An empty NotBefore means the event has started: no time is left.
        let deadline = if event.not_before.is_empty() {
            None
        } else {
            let at = httpdate::parse_http_date(&event.not_before).map_err(|_| {
                error(
                    NAME,
                    format!("NotBefore {:?} is not an HTTP date", event.not_before),
                )
            })?;
            Some(
                at.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            )
        };
        notices.push(Notice {
            signal: Signal::Interruption,
            deadline,
            action: event.kind,
            event_id: Some(event.id),
        });
    }
    Ok(AzureDocument {
        incarnation: document.incarnation,
        notices,
    })
}

/// The body that approves `event_id` at once (`StartRequests`), once the checkpoint is done.
pub fn azure_start_request(event_id: &str) -> String {
    serde_json::json!({ "StartRequests": [{ "EventId": event_id }] }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/reference/cloud-api"
    );

    fn fixture(path: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{path}"))
            .unwrap_or_else(|e| panic!("{path}: {e} (is ../shared beside the checkout?)"))
    }

    #[test]
    fn the_real_aws_notices_parse() {
        let terminate =
            aws_instance_action(&fixture("aws/imds/spot-instance-action.terminate.json")).unwrap();
        assert_eq!(terminate.action, "terminate");
        assert_eq!(terminate.deadline, Some(1_505_722_920)); // 2017-09-18T08:22:00Z
        let stop =
            aws_instance_action(&fixture("aws/imds/spot-instance-action.stop.json")).unwrap();
        assert_eq!(stop.action, "stop");
        let rebalance =
            aws_rebalance(&fixture("aws/imds/events-recommendations-rebalance.json")).unwrap();
        assert_eq!(
            (rebalance.signal, rebalance.deadline),
            (Signal::Rebalance, None)
        );
        assert!(
            aws_instance_action(br#"{"action":"dance","time":"2017-09-18T08:22:00Z"}"#).is_err()
        );
        assert!(aws_instance_action(br#"{"action":"terminate","time":"soon"}"#).is_err());
        assert!(aws_instance_action(b"<html>404</html>").is_err());
    }

    #[test]
    fn the_real_azure_preempt_event_parses_for_its_vm_only() {
        let body =
            fixture("azure/scheduled-events/scheduledevents.preempt.mspnp-readme-excerpt.json");
        let mine = azure_scheduled_events(&body, "vm-spot").unwrap();
        assert_eq!(mine.incarnation, 1);
        assert_eq!(mine.notices.len(), 1);
        assert_eq!(
            mine.notices[0].event_id.as_deref(),
            Some("C1BF8322-4CBF-4FC4-9C45-B40CF3106D0E")
        );
        assert_eq!(mine.notices[0].deadline, Some(1_660_064_852)); // Tue, 09 Aug 2022 17:07:32 GMT
        assert!(azure_scheduled_events(&body, "another-vm")
            .unwrap()
            .notices
            .is_empty());
        // A Reboot naming this VM is not a reclamation.
        let reboot =
            fixture("azure/scheduled-events/aks-node-termination-handler.ScheduledEventsType.json");
        assert!(azure_scheduled_events(&reboot, "FrontEnd_IN_0")
            .unwrap()
            .notices
            .is_empty());
        let approval: serde_json::Value = serde_json::from_str(&azure_start_request("E1")).unwrap();
        assert_eq!(
            approval,
            serde_json::json!({"StartRequests": [{"EventId": "E1"}]})
        );
    }

    #[test]
    fn gcp_preempted_is_true_or_false() {
        assert_eq!(gcp_preempted(b"TRUE"), Ok(true));
        assert_eq!(gcp_preempted(b"FALSE\n"), Ok(false));
        assert!(gcp_preempted(b"true?").is_err());
        assert_eq!(gcp_notice(100).deadline, Some(130));
    }
}
