//! Watching the metadata endpoint of the instance's cloud for an interruption signal,
//! the way each cloud documents it: AWS IMDSv2 (a session token, then polling
//! `spot/instance-action`, and the rebalance recommendation once), GCP's hanging GET on
//! `instance/preempted` with `Metadata-Flavor: Google`, Azure Scheduled Events polled
//! every second with `Metadata: true`, and approved with `StartRequests`.
//!
//! The base URL is configuration (`http://169.254.169.254` on a real instance, the
//! local driver's stand-in in tests), never hard-wired. A failed poll is logged and
//! retried: a watcher only ever returns a notice.

use crate::notice::{self, Notice, Signal};
use std::collections::HashSet;
use std::time::Duration;

/// Which cloud's metadata shape to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    pub fn parse(text: &str) -> Option<Cloud> {
        match text {
            "aws" => Some(Cloud::Aws),
            "gcp" => Some(Cloud::Gcp),
            "azure" => Some(Cloud::Azure),
            _ => None,
        }
    }
}

/// How long an IMDSv2 session token lives (the documented maximum is 6 h).
const AWS_TOKEN_TTL_SECONDS: u32 = 21_600;
/// Azure's Scheduled Events API version that has `Preempt` events.
pub const AZURE_API_VERSION: &str = "2020-07-01";
/// The longest a GCP hanging GET is held before it answers with the same value.
const GCP_WAIT_SECONDS: u32 = 60;

pub struct Watcher {
    cloud: Cloud,
    base: String,
    /// Azure: this VM's name as `Resources` lists it.
    resource: String,
    poll: Duration,
    client: reqwest::Client,
    aws_token: Option<String>,
    rebalance_seen: bool,
    gcp_etag: Option<String>,
    azure_seen: HashSet<String>,
    now: fn() -> i64,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Why one poll failed (logged, then retried).
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error("{0}")]
    Http(String),
    #[error(transparent)]
    Parse(#[from] notice::ParseError),
    #[error("the IMDSv2 session token was refused")]
    TokenExpired,
}

impl From<reqwest::Error> for PollError {
    fn from(e: reqwest::Error) -> Self {
        PollError::Http(e.without_url().to_string())
    }
}

impl Watcher {
    /// A watcher of `base` (no trailing `/`), polling every `poll` where the cloud
    /// is polled (AWS, Azure).
    pub fn new(cloud: Cloud, base: &str, resource: &str, poll: Duration) -> Watcher {
        Watcher {
            cloud,
            base: base.trim_end_matches('/').to_string(),
            resource: resource.to_string(),
            poll,
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(u64::from(GCP_WAIT_SECONDS) + 10))
                .build()
                .expect("an HTTP client with default settings builds"),
            aws_token: None,
            rebalance_seen: false,
            gcp_etag: None,
            azure_seen: HashSet::new(),
            now: unix_now,
        }
    }

    /// Waits for the next notice. A rebalance recommendation is returned once; an
    /// interruption is what the agent acts on.
    pub async fn next(&mut self) -> Notice {
        loop {
            let polled = match self.cloud {
                Cloud::Aws => self.poll_aws().await,
                Cloud::Gcp => self.poll_gcp().await,
                Cloud::Azure => self.poll_azure().await,
            };
            match polled {
                Ok(Some(notice)) => return notice,
                Ok(None) => {}
                Err(PollError::TokenExpired) => {
                    self.aws_token = None;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(cloud = ?self.cloud, %error, "metadata poll failed; retrying")
                }
            }
            // GCP's GET already waited for a change.
            if self.cloud != Cloud::Gcp {
                tokio::time::sleep(self.poll).await;
            } else {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    async fn aws_token(&mut self) -> Result<String, PollError> {
        if let Some(token) = &self.aws_token {
            return Ok(token.clone());
        }
        let response = self
            .client
            .put(format!("{}/latest/api/token", self.base))
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                AWS_TOKEN_TTL_SECONDS.to_string(),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(PollError::Http(format!(
                "IMDSv2 token request answered {}",
                response.status()
            )));
        }
        let token = response.text().await?.trim().to_string();
        self.aws_token = Some(token.clone());
        Ok(token)
    }

    async fn aws_get(&mut self, path: &str) -> Result<Option<Vec<u8>>, PollError> {
        let token = self.aws_token().await?;
        let response = self
            .client
            .get(format!("{}/latest/meta-data/{path}", self.base))
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await?;
        match response.status().as_u16() {
            200 => Ok(Some(response.bytes().await?.to_vec())),
            404 => Ok(None),
            401 => Err(PollError::TokenExpired),
            other => Err(PollError::Http(format!("{path} answered {other}"))),
        }
    }

    async fn poll_aws(&mut self) -> Result<Option<Notice>, PollError> {
        if let Some(body) = self.aws_get("spot/instance-action").await? {
            return Ok(Some(notice::aws_instance_action(&body)?));
        }
        if !self.rebalance_seen {
            if let Some(body) = self.aws_get("events/recommendations/rebalance").await? {
                self.rebalance_seen = true;
                return Ok(Some(notice::aws_rebalance(&body)?));
            }
        }
        Ok(None)
    }

    async fn poll_gcp(&mut self) -> Result<Option<Notice>, PollError> {
        // The first read is plain: a hanging GET without `last_etag` waits for the next
        // change, so a preemption already under way would go unseen until the timeout.
        let url = match &self.gcp_etag {
            None => format!("{}/computeMetadata/v1/instance/preempted", self.base),
            Some(etag) => format!(
                "{}/computeMetadata/v1/instance/preempted?wait_for_change=true&timeout_sec={GCP_WAIT_SECONDS}&last_etag={etag}",
                self.base
            ),
        };
        let response = self
            .client
            .get(url)
            .header("Metadata-Flavor", "Google")
            .send()
            .await?;
        if response
            .headers()
            .get("Metadata-Flavor")
            .and_then(|v| v.to_str().ok())
            != Some("Google")
        {
            return Err(PollError::Http(
                "the answer lacks `Metadata-Flavor: Google`; not a GCP metadata server".into(),
            ));
        }
        if !response.status().is_success() {
            return Err(PollError::Http(format!(
                "instance/preempted answered {}",
                response.status()
            )));
        }
        self.gcp_etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let preempted = notice::gcp_preempted(&response.bytes().await?)?;
        Ok(preempted.then(|| notice::gcp_notice((self.now)())))
    }

    fn azure_url(&self) -> String {
        format!(
            "{}/metadata/scheduledevents?api-version={AZURE_API_VERSION}",
            self.base
        )
    }

    async fn poll_azure(&mut self) -> Result<Option<Notice>, PollError> {
        let response = self
            .client
            .get(self.azure_url())
            .header("Metadata", "true")
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(PollError::Http(format!(
                "scheduled events answered {}",
                response.status()
            )));
        }
        let document = notice::azure_scheduled_events(&response.bytes().await?, &self.resource)?;
        Ok(document.notices.into_iter().find(|n| {
            n.event_id
                .as_ref()
                .is_some_and(|id| self.azure_seen.insert(id.clone()))
        }))
    }

    /// Tells the cloud it may go ahead now (Azure's `StartRequests`; the others have
    /// nothing to approve). Called once the final checkpoint is done.
    pub async fn approve(&self, notice: &Notice) -> Result<(), String> {
        let (Cloud::Azure, Some(event_id), Signal::Interruption) =
            (self.cloud, &notice.event_id, &notice.signal)
        else {
            return Ok(());
        };
        let response = self
            .client
            .post(self.azure_url())
            .header("Metadata", "true")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(notice::azure_start_request(event_id))
            .send()
            .await
            .map_err(|e| e.without_url().to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "StartRequests for {event_id} answered {}",
                response.status()
            ))
        }
    }
}
