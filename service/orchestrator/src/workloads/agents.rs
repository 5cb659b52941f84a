//! What the orchestrator does for the agents on its instances: registration and the
//! assignment, heartbeats with token refresh, notices, checkpoint grants and reports,
//! and exit reports. The server maps these onto HTTP (`/agent/v1/…`).
//!
//! Who may call: an agent token names the run that launched its instance. An agent is
//! - **current** when the workload's instance is the one that run launched;
//! - the **replacement** while that run is the workload's unfinished migration;
//! - otherwise **fenced**: its instance was replaced (or its workload ended), and
//!   every call of it is refused, so a reclaimed or cut-off machine that comes back
//!   cannot report, take grants or upload over its successor.
//!
//! One exception: the instance a make-before-break move is leaving **drains** after
//! the switch. Its heartbeats are still answered (without a stop), so it serves the
//! requests it already has until `terminate-replaced` ends it; everything else it
//! asks is refused as fenced.

use super::{notify, now_ms, Orchestrator};
use crate::error::OrchestratorError;
use crate::tokens::{AgentClaims, AgentTokenKind};
use computearbitrage_agent_protocol as protocol;
use computearbitrage_core::workflow::{AWAIT_CHECKPOINT, PROVISION};
use computearbitrage_core::WorkloadStatus;
use computearbitrage_storage::{Area, Method, ObjectKey, Prefix, Storage};
use computearbitrage_store::{RunKind, RunRecord, RunStatus, WorkloadRecord};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// A registration credential outlives a slow boot.
pub const REGISTRATION_LIFETIME: Duration = Duration::from_secs(3600);
/// Session tokens are short-lived and refreshed by every heartbeat.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(900);
/// A heartbeat may still refresh a session token this long after it expired (the
/// service was down), as long as the instance is still the workload's.
pub const REFRESH_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Output lines the service keeps per workload for `GetLogs`.
pub const LOG_LINES_KEPT: usize = 5000;
/// A longer line is cut there.
pub const LOG_LINE_MAX: usize = 8 << 10;

/// A workload's recent output, numbered.
#[derive(Debug, Default)]
pub struct LogRing {
    lines: std::collections::VecDeque<LogLine>,
    next_seq: u64,
    /// Lines agents dropped before they could send them.
    dropped: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogLine {
    pub seq: u64,
    pub instance_id: String,
    /// Unix ms, when the service received it.
    pub at_ms: i64,
    pub text: String,
}

/// What `Orchestrator::logs` answers.
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    pub next_seq: u64,
    pub missed: u64,
}

impl LogRing {
    fn push(&mut self, instance_id: &str, text: String) {
        self.next_seq += 1;
        if self.lines.len() == LOG_LINES_KEPT {
            self.lines.pop_front();
        }
        let mut text = text;
        if text.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        self.lines.push_back(LogLine {
            seq: self.next_seq,
            instance_id: instance_id.to_string(),
            at_ms: now_ms(),
            text,
        });
    }

    fn page(&self, after: u64, limit: usize) -> LogPage {
        let oldest = self
            .lines
            .front()
            .map(|l| l.seq)
            .unwrap_or(self.next_seq + 1);
        let lines: Vec<LogLine> = self
            .lines
            .iter()
            .filter(|l| l.seq > after)
            .take(limit)
            .cloned()
            .collect();
        let next_seq = lines
            .last()
            .map(|l| l.seq)
            .unwrap_or(after.max(oldest.saturating_sub(1)));
        LogPage {
            next_seq,
            missed: oldest.saturating_sub(after + 1) + if after == 0 { self.dropped } else { 0 },
            lines,
        }
    }
}

fn log_segment_name_ok(name: &str) -> bool {
    name.strip_suffix(".log")
        .is_some_and(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Heartbeat intervals of silence after which the driver is asked whether an instance
/// is gone.
pub const LOST_AFTER_HEARTBEATS: u32 = 5;

/// Where agents reach the service and where checkpoints go; attached once the
/// service listens.
pub struct AgentLink {
    pub service_url: String,
    pub storage: Arc<Storage>,
}

/// A refused agent call.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The token is not one of ours, expired, or of the wrong kind.
    #[error("{0}")]
    Unauthorized(String),
    /// The instance was replaced or its workload ended: stop.
    #[error("{0}")]
    Fenced(String),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Service(#[from] OrchestratorError),
}

impl From<computearbitrage_store::StoreError> for AgentError {
    fn from(e: computearbitrage_store::StoreError) -> Self {
        AgentError::Service(e.into())
    }
}

impl From<computearbitrage_storage::StorageError> for AgentError {
    fn from(e: computearbitrage_storage::StorageError) -> Self {
        match e {
            computearbitrage_storage::StorageError::InvalidKey { .. }
            | computearbitrage_storage::StorageError::QuotaExceeded { .. } => {
                AgentError::Invalid(e.to_string())
            }
            other => AgentError::Service(other.into()),
        }
    }
}

/// The last checkpoint report of a workload's current instance (kept in memory: after
/// a restart the storage listing answers the same question).
#[derive(Debug, Clone)]
pub struct CheckpointOutcome {
    pub name: String,
    /// `notice`, `periodic`, `task`.
    pub trigger: String,
    pub error: Option<String>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Current,
    Replacement,
}

pub(super) struct Session {
    pub(super) workload: WorkloadRecord,
    pub(super) run: RunRecord,
    pub(super) role: Role,
    /// The instance the run launched, once the ledger has it.
    pub(super) instance: Option<String>,
}

/// A checkpoint's name is the unix milliseconds it was begun at.
pub fn checkpoint_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 20 && name.bytes().all(|b| b.is_ascii_digit())
}

fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Where a chunk is stored: once per workload, by content, shared by every checkpoint
/// that holds it (`checkpoints/chunks/SHA`), so a checkpoint uploads only the chunks
/// no earlier one stored.
fn chunk_key(workload_id: &str, sha: &str) -> Result<ObjectKey, AgentError> {
    Ok(ObjectKey::new(
        workload_id,
        Area::Checkpoints,
        &format!("{SHARED_CHUNKS}/{sha}"),
    )?)
}

/// Where checkpoints written before chunks were shared keep theirs.
fn own_chunk_key(workload_id: &str, name: &str, sha: &str) -> Result<ObjectKey, AgentError> {
    Ok(ObjectKey::new(
        workload_id,
        Area::Checkpoints,
        &format!("{name}/chunks/{sha}"),
    )?)
}

/// The directory of shared chunks under `checkpoints/`; never a checkpoint's name
/// (those are digits).
const SHARED_CHUNKS: &str = "chunks";

/// A chunk the collector finds unreferenced is still kept this long after it was
/// written (or twice the URL expiry, if longer): a checkpoint under way has uploaded
/// it, and its manifest is not there yet.
const CHUNK_GRACE_MS: i64 = 2 * 3600 * 1000;

/// Beside a checkpoint under way, the chunks it names (a JSON list of SHA-256s),
/// written at its grant. Kept in storage, not in memory: a service that restarts while
/// a checkpoint is under way must not collect a chunk that checkpoint reuses.
const HELD: &str = "held.json";

fn held_key(workload_id: &str, name: &str) -> Result<ObjectKey, AgentError> {
    Ok(ObjectKey::new(
        workload_id,
        Area::Checkpoints,
        &format!("{name}/{HELD}"),
    )?)
}

/// How long a checkpoint under way holds its chunks, and an unreferenced chunk is
/// kept: an upload goes on as long as its URLs work, and the grace outlasts them.
fn chunk_grace_ms(storage: &Storage) -> i64 {
    CHUNK_GRACE_MS.max(2 * storage.url_expiry().as_millis() as i64)
}

/// The checkpoints under way (a hold younger than `grace_ms`, no manifest yet), each
/// with the chunks it holds; `None` when a hold cannot be read, so nothing is deleted
/// on a guess.
async fn checkpoints_under_way(
    storage: &Storage,
    workload_id: &str,
    grace_ms: i64,
) -> Result<Option<BTreeMap<String, BTreeSet<String>>>, computearbitrage_storage::StorageError> {
    let prefix = Prefix::area(workload_id, Area::Checkpoints, None)?;
    let objects = storage.list(&prefix).await?;
    let complete: BTreeSet<&str> = objects
        .iter()
        .filter_map(|o| {
            o.key
                .path()
                .strip_suffix(&format!("/{}", protocol::MANIFEST))
        })
        .collect();
    let now = now_ms();
    let mut under_way = BTreeMap::new();
    for object in &objects {
        let Some(name) = object.key.path().strip_suffix(&format!("/{HELD}")) else {
            continue;
        };
        if !checkpoint_name_ok(name)
            || complete.contains(name)
            || now - object.modified_ms >= grace_ms
        {
            continue;
        }
        let bytes = storage.get(&object.key).await?;
        let Ok(chunks) = serde_json::from_slice::<BTreeSet<String>>(&bytes) else {
            tracing::warn!(workload_id, checkpoint = %name, "unreadable chunk hold; no chunk collected");
            return Ok(None);
        };
        under_way.insert(name.to_string(), chunks);
    }
    Ok(Some(under_way))
}

/// The shared chunks stored for a workload, with when each was written.
async fn stored_chunks(
    storage: &Storage,
    workload_id: &str,
) -> Result<BTreeMap<String, (u64, i64)>, computearbitrage_storage::StorageError> {
    let prefix = Prefix::area(workload_id, Area::Checkpoints, Some(SHARED_CHUNKS))?;
    Ok(storage
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| {
            let sha = o.key.path().strip_prefix("chunks/")?;
            is_sha256_hex(sha).then(|| (sha.to_string(), (o.size, o.modified_ms)))
        })
        .collect())
}

fn manifest_key(workload_id: &str, name: &str) -> Result<ObjectKey, AgentError> {
    Ok(ObjectKey::new(
        workload_id,
        Area::Checkpoints,
        &format!("{name}/{}", protocol::MANIFEST),
    )?)
}

/// The names of a workload's complete checkpoints (those with a manifest), oldest first.
pub async fn complete_checkpoints(
    storage: &Storage,
    workload_id: &str,
) -> Result<Vec<String>, computearbitrage_storage::StorageError> {
    let prefix = Prefix::area(workload_id, Area::Checkpoints, None)?;
    let mut names: Vec<String> = storage
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| {
            let (name, rest) = o.key.path().split_once('/')?;
            (rest == protocol::MANIFEST && checkpoint_name_ok(name)).then(|| name.to_string())
        })
        .collect();
    names.sort_by_key(|n| n.parse::<u64>().unwrap_or(0));
    Ok(names)
}

impl Orchestrator {
    /// Connects the agents' side once the service knows its own address.
    pub fn attach_agents(&self, link: AgentLink) {
        if self.agents.set(link).is_err() {
            tracing::warn!("agents were attached twice; keeping the first link");
        }
    }

    pub(crate) fn agent_link(&self) -> Option<&AgentLink> {
        self.agents.get()
    }

    /// The boot of an instance launched by `run_id`, when agents are attached.
    pub(crate) fn agent_boot(&self, run_id: &str) -> Option<computearbitrage_core::AgentBoot> {
        let link = self.agents.get()?;
        let expires = now_ms() / 1000 + REGISTRATION_LIFETIME.as_secs() as i64;
        Some(computearbitrage_core::AgentBoot {
            service_url: link.service_url.clone(),
            credential: self.settings.access_tokens.agent_token(
                AgentTokenKind::Registration,
                run_id,
                expires,
            ),
        })
    }

    fn session_token(&self, run_id: &str) -> (String, i64) {
        let expires = now_ms() / 1000 + SESSION_LIFETIME.as_secs() as i64;
        (
            self.settings
                .access_tokens
                .agent_token(AgentTokenKind::Session, run_id, expires),
            expires,
        )
    }

    /// The instance a run launched, once its provision step is in the ledger.
    async fn launched_instance(&self, run_id: &str) -> Result<Option<String>, AgentError> {
        Ok(self
            .store
            .steps(run_id)
            .await?
            .into_iter()
            .find(|s| s.step == PROVISION && s.completed)
            .and_then(|s| s.output)
            .and_then(|o| serde_json::from_str::<Value>(&o).ok())
            .and_then(|o| o.get("instance_id")?.as_str().map(str::to_string)))
    }

    /// Checks a token and places its agent: current, replacement, or fenced.
    pub(super) async fn agent_session(
        &self,
        token: &str,
        kind: AgentTokenKind,
        grace: Duration,
    ) -> Result<Session, AgentError> {
        let claims: AgentClaims = self
            .settings
            .access_tokens
            .verify_agent_token(token)
            .filter(|c| c.kind == kind)
            .ok_or_else(|| {
                AgentError::Unauthorized(match kind {
                    AgentTokenKind::Registration => "not a registration credential of this service; an agent registers with the credential its instance was booted with".into(),
                    AgentTokenKind::Session => "not a session token of this service; register again".into(),
                })
            })?;
        if claims.expires_at + grace.as_secs() as i64 <= now_ms() / 1000 {
            return Err(AgentError::Unauthorized(format!(
                "the agent token expired at {}; register again with a fresh credential",
                computearbitrage_core::fmt::rfc3339(claims.expires_at)
            )));
        }
        let run =
            self.store.run(&claims.run_id).await?.ok_or_else(|| {
                AgentError::Fenced(format!("run {} no longer exists", claims.run_id))
            })?;
        let workload = self
            .store
            .workload(&run.tenant_id, &run.workload_id)
            .await?
            .filter(|w| w.status.is_active() && w.status != WorkloadStatus::Stopping)
            .ok_or_else(|| {
                AgentError::Fenced(format!(
                    "workload {} has ended; this instance must stop",
                    run.workload_id
                ))
            })?;
        let launched = self.launched_instance(&run.id).await?;
        if launched.is_some() && launched == workload.instance_id {
            return Ok(Session {
                workload,
                run,
                role: Role::Current,
                instance: launched,
            });
        }
        if run.status == RunStatus::Running {
            if run.kind == RunKind::Migrate {
                return Ok(Session {
                    workload,
                    run,
                    role: Role::Replacement,
                    instance: launched,
                });
            }
            if launched.is_none() {
                // The first instance registers before its provision step is in the
                // ledger: it is the workload's, just not recorded yet.
                let instance = workload.instance_id.clone();
                return Ok(Session {
                    workload,
                    run,
                    role: Role::Current,
                    instance,
                });
            }
        }
        Err(AgentError::Fenced(format!(
            "instance {} was replaced; workload {} now runs on {}",
            launched.as_deref().unwrap_or("(never recorded)"),
            workload.id,
            workload.instance_id.as_deref().unwrap_or("no instance")
        )))
    }

    /// The checkpoints that unfinished moves of the workload chose to restore: pruning
    /// keeps them, or a replacement that registers late finds its manifest gone.
    async fn checkpoints_chosen_for_restore(
        &self,
        workload: &WorkloadRecord,
    ) -> Result<BTreeSet<String>, AgentError> {
        let mut chosen = BTreeSet::new();
        for run in self
            .store
            .runs_of(&workload.tenant_id, &workload.id)
            .await?
        {
            if run.status != RunStatus::Running {
                continue;
            }
            let awaited = self
                .store
                .steps(&run.id)
                .await?
                .into_iter()
                .find(|s| s.step == AWAIT_CHECKPOINT && s.completed)
                .and_then(|s| s.output)
                .and_then(|o| serde_json::from_str::<Value>(&o).ok());
            if let Some(name) = awaited
                .as_ref()
                .and_then(|a| a.get("checkpoint"))
                .and_then(Value::as_str)
            {
                chosen.insert(name.to_string());
            }
        }
        Ok(chosen)
    }

    /// Registration: the assignment, or "wait" while the final checkpoint of the
    /// instance this one replaces is still being written.
    pub async fn agent_register(
        &self,
        credential: &str,
        request: protocol::Register,
    ) -> Result<protocol::RegisterReply, AgentError> {
        let session = self
            .agent_session(credential, AgentTokenKind::Registration, Duration::ZERO)
            .await?;
        let workload = &session.workload;
        let restore_name = match session.role {
            Role::Replacement => {
                let awaited = self
                    .store
                    .steps(&session.run.id)
                    .await?
                    .into_iter()
                    .find(|s| s.step == AWAIT_CHECKPOINT && s.completed)
                    .and_then(|s| s.output)
                    .and_then(|o| serde_json::from_str::<Value>(&o).ok());
                let Some(awaited) = awaited else {
                    return Ok(protocol::RegisterReply::Wait {
                        retry_ms: 200,
                        why: "the instance this one replaces is writing its final checkpoint"
                            .into(),
                    });
                };
                awaited
                    .get("checkpoint")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }
            Role::Current => match self.agent_link() {
                Some(link) if workload.spec.storage.enabled => {
                    complete_checkpoints(&link.storage, &workload.id)
                        .await?
                        .pop()
                }
                _ => None,
            },
        };
        let restore = match restore_name {
            Some(name) => Some(self.restore_grant(workload, &name).await?),
            None => None,
        };
        if session.role == Role::Current {
            self.heard(&workload.id);
        }
        let (token, token_expires_at) = self.session_token(&session.run.id);
        tracing::info!(workload_id = %workload.id, run_id = %session.run.id, instance_id = %request.instance_id, role = ?session.role, restore = ?restore.as_ref().map(|r: &protocol::Restore| r.name.clone()), agent_version = %request.agent_version, "agent registered");
        Ok(protocol::RegisterReply::Run(Box::new(
            protocol::Assignment {
                workload_id: workload.id.clone(),
                token,
                token_expires_at,
                command: workload.spec.command.clone(),
                env: workload.spec.env.clone(),
                heartbeat_ms: self.settings.agent_heartbeat.as_millis() as u64,
                checkpointing: checkpointing(&workload.spec),
                storage: workload
                    .spec
                    .storage
                    .enabled
                    .then(|| protocol::StorageGrant {
                        prefix: format!("workloads/{}/", workload.id),
                        quota_bytes: workload.spec.storage.quota_bytes(),
                    }),
                restore,
            },
        )))
    }

    /// Signed GET URLs for every chunk of a complete checkpoint.
    async fn restore_grant(
        &self,
        workload: &WorkloadRecord,
        name: &str,
    ) -> Result<protocol::Restore, AgentError> {
        let link = self
            .agent_link()
            .ok_or_else(|| AgentError::Invalid("storage is not attached".into()))?;
        let bytes = link.storage.get(&manifest_key(&workload.id, name)?).await?;
        let manifest: protocol::Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            AgentError::Service(OrchestratorError::config(format!(
                "checkpoint {name} of {} has an unreadable manifest: {e}",
                workload.id
            )))
        })?;
        let shared = stored_chunks(&link.storage, &workload.id).await?;
        let mut chunk_urls = BTreeMap::new();
        for file in &manifest.files {
            for sha in &file.chunks {
                if chunk_urls.contains_key(sha) || !is_sha256_hex(sha) {
                    continue;
                }
                let key = if shared.contains_key(sha) {
                    chunk_key(&workload.id, sha)?
                } else {
                    own_chunk_key(&workload.id, name, sha)?
                };
                let signed = link.storage.signed_url(Method::Get, &key, None, 0).await?;
                chunk_urls.insert(sha.clone(), signed.url);
            }
        }
        Ok(protocol::Restore {
            name: name.to_string(),
            manifest,
            chunk_urls,
        })
    }

    /// A heartbeat refreshes the session token; a fenced agent is told to stop.
    pub async fn agent_heartbeat(
        &self,
        token: &str,
        heartbeat: protocol::Heartbeat,
    ) -> Result<protocol::HeartbeatReply, AgentError> {
        let session = match self
            .agent_session(token, AgentTokenKind::Session, REFRESH_GRACE)
            .await
        {
            Err(AgentError::Fenced(why)) => {
                return match self.draining(token).await? {
                    Some(reply) => Ok(reply),
                    None => Err(AgentError::Fenced(why)),
                }
            }
            other => other?,
        };
        tracing::debug!(workload_id = %session.workload.id, run_id = %session.run.id, phase = %heartbeat.phase, "agent heartbeat");
        if session.role == Role::Current {
            self.heard(&session.workload.id);
        }
        let (token, token_expires_at) = self.session_token(&session.run.id);
        Ok(protocol::HeartbeatReply {
            token,
            token_expires_at,
            checkpointing: checkpointing(&session.workload.spec),
        })
    }

    /// The heartbeat reply of an agent whose instance a running make-before-break move
    /// is leaving (it drains until the move terminates it); `None` for any other.
    async fn draining(&self, token: &str) -> Result<Option<protocol::HeartbeatReply>, AgentError> {
        use super::migration::Cause;
        let Some(claims) = self
            .settings
            .access_tokens
            .verify_agent_token(token)
            .filter(|c| c.kind == AgentTokenKind::Session)
            .filter(|c| c.expires_at + REFRESH_GRACE.as_secs() as i64 > now_ms() / 1000)
        else {
            return Ok(None);
        };
        let (Some(run), Some(launched)) = (
            self.store.run(&claims.run_id).await?,
            self.launched_instance(&claims.run_id).await?,
        ) else {
            return Ok(None);
        };
        let Some(workload) = self
            .store
            .workload(&run.tenant_id, &run.workload_id)
            .await?
        else {
            return Ok(None);
        };
        for moving in self.store.runs_of(&run.tenant_id, &run.workload_id).await? {
            if moving.status != RunStatus::Running
                || moving.kind != RunKind::Migrate
                || !Cause::of(&moving).keeps_serving()
            {
                continue;
            }
            let left = self
                .store
                .steps(&moving.id)
                .await?
                .into_iter()
                .find(|s| {
                    s.step == computearbitrage_core::workflow::RECORD_INTERRUPTION && s.completed
                })
                .and_then(|s| s.output)
                .and_then(|o| serde_json::from_str::<Value>(&o).ok());
            if left.as_ref().and_then(|l| l["instance_id"].as_str()) == Some(launched.as_str()) {
                tracing::debug!(workload_id = %workload.id, instance_id = %launched, "draining instance heartbeat");
                let (token, token_expires_at) = self.session_token(&claims.run_id);
                // Its checkpoints would be refused: the replacement's are the workload's.
                let mut settings = checkpointing(&workload.spec);
                settings.interval_ms = 0;
                return Ok(Some(protocol::HeartbeatReply {
                    token,
                    token_expires_at,
                    checkpointing: settings,
                }));
            }
        }
        Ok(None)
    }

    /// The agent saw its cloud's notice: act as on the driver's event (whichever comes
    /// first wins; the other finds the workload already interrupted).
    pub async fn agent_notice(
        self: &Arc<Self>,
        token: &str,
        notice: protocol::NoticeReport,
    ) -> Result<(), AgentError> {
        let session = self
            .agent_session(token, AgentTokenKind::Session, Duration::ZERO)
            .await?;
        if session.role == Role::Replacement {
            // The cloud reclaims the replacement before the switch: the move goes on
            // to another offer. A rebalance recommendation for it changes nothing.
            if notice.signal == "interruption" {
                if let Some((run, placed, id, _)) =
                    self.replacement_in_flight(&session.workload).await?
                {
                    if run.id == session.run.id {
                        self.replacement_is_reclaimed(&run, &placed, &id);
                    }
                }
            }
            return Ok(());
        }
        let Some(instance_id) = session.workload.instance_id.clone() else {
            return Ok(());
        };
        match notice.signal.as_str() {
            "interruption" => {
                let deadline = notice.deadline.unwrap_or(now_ms() / 1000 + 30);
                self.on_driver_event(computearbitrage_core::DriverEvent::InterruptionNotice {
                    instance_id,
                    deadline,
                })
                .await?;
            }
            "rebalance" => {
                tracing::info!(workload_id = %session.workload.id, instance_id, "rebalance recommendation reported by the agent");
            }
            other => {
                return Err(AgentError::Invalid(format!(
                    "signal {other:?} is not `interruption` or `rebalance`"
                )))
            }
        }
        Ok(())
    }

    pub(super) async fn current_session(&self, token: &str) -> Result<Session, AgentError> {
        let session = self
            .agent_session(token, AgentTokenKind::Session, Duration::ZERO)
            .await?;
        if session.role != Role::Current {
            return Err(AgentError::Invalid(
                "a replacement instance cannot report for the workload before it is switched to"
                    .into(),
            ));
        }
        Ok(session)
    }

    /// Upload URLs for one checkpoint, within the workload's quota.
    pub async fn agent_checkpoint_grant(
        &self,
        token: &str,
        request: protocol::CheckpointGrantRequest,
    ) -> Result<protocol::CheckpointGrant, AgentError> {
        let session = self.current_session(token).await?;
        let workload = &session.workload;
        let link = self.storage_for(workload, "it cannot checkpoint")?;
        if !checkpoint_name_ok(&request.name) {
            return Err(AgentError::Invalid(format!(
                "checkpoint name {:?} is not unix milliseconds",
                request.name
            )));
        }
        if let Some(bad) = request.chunks.keys().find(|sha| !is_sha256_hex(sha)) {
            return Err(AgentError::Invalid(format!(
                "chunk {bad:?} is not a lowercase hex SHA-256"
            )));
        }
        let quota = workload.spec.storage.quota_bytes();
        // Every chunk it names is held from the collector until this checkpoint
        // reports (or the grace ends), before the stored ones are listed: a collection
        // in between must not delete a chunk this checkpoint is then told to reuse.
        let held: Vec<&String> = request.chunks.keys().collect();
        link.storage
            .put(
                &held_key(&workload.id, &request.name)?,
                bytes::Bytes::from(serde_json::to_vec(&held).map_err(|e| {
                    AgentError::Invalid(format!("cannot encode the chunk list: {e}"))
                })?),
            )
            .await?;
        // Chunks an earlier checkpoint stored (same content, same size) are reused.
        let stored = if request.reuse_stored {
            stored_chunks(&link.storage, &workload.id).await?
        } else {
            BTreeMap::new()
        };
        let reused: BTreeSet<String> = request
            .chunks
            .iter()
            .filter(|(sha, size)| stored.get(*sha).is_some_and(|(s, _)| s == *size))
            .map(|(sha, _)| sha.clone())
            .collect();
        let declared = request
            .chunks
            .iter()
            .filter(|(sha, _)| !reused.contains(*sha))
            .try_fold(request.manifest_bytes, |sum, (_, size)| {
                sum.checked_add(*size)
            })
            .ok_or_else(|| AgentError::Invalid("the declared sizes overflow".into()))?;
        let used = link.storage.usage(&workload.id).await?;
        if used + declared > quota {
            return Err(AgentError::Invalid(format!(
                "checkpoint {} needs {declared} bytes and workload {} already stores {used} of its {quota} (storage.quota_gb); raise the quota or checkpoint less",
                request.name, workload.id
            )));
        }
        let mut chunk_urls = BTreeMap::new();
        for sha in request.chunks.keys().filter(|sha| !reused.contains(*sha)) {
            let key = chunk_key(&workload.id, sha)?;
            // Checked against the quota once, above, for the whole checkpoint.
            let signed = link
                .storage
                .sign_within(
                    Method::Put,
                    computearbitrage_storage::Scope::Key(key.clone()),
                    &key,
                    Some(quota),
                )
                .await?;
            chunk_urls.insert(sha.clone(), signed.url);
        }
        let manifest = link
            .storage
            .signed_url(
                Method::Put,
                &manifest_key(&workload.id, &request.name)?,
                Some(quota),
                request.manifest_bytes,
            )
            .await?;
        Ok(protocol::CheckpointGrant {
            chunk_urls,
            reused,
            manifest_url: manifest.url,
        })
    }

    /// A checkpoint finished (or failed): remember it for the migration waiting on it,
    /// keep the newest complete ones, and tell the tenant about a failure.
    pub async fn agent_checkpoint_report(
        &self,
        token: &str,
        report: protocol::CheckpointReport,
    ) -> Result<(), AgentError> {
        let session = self.current_session(token).await?;
        let workload = &session.workload;
        if !checkpoint_name_ok(&report.name) {
            return Err(AgentError::Invalid(format!(
                "checkpoint name {:?} is not unix milliseconds",
                report.name
            )));
        }
        if !matches!(report.trigger.as_str(), "notice" | "periodic" | "task") {
            return Err(AgentError::Invalid(format!(
                "checkpoint trigger {:?} is not `notice`, `periodic` or `task`",
                report.trigger
            )));
        }
        // A periodic copy that keeps failing is told once, not every interval.
        let failing_already = self.checkpoint_outcome(&workload.id).is_some_and(|last| {
            last.error.is_some() && last.trigger == "periodic" && report.trigger == "periodic"
        });
        match &report.error {
            None => {
                tracing::info!(workload_id = %workload.id, checkpoint = %report.name, trigger = %report.trigger, bytes = report.bytes, files = report.files, duration_ms = report.duration_ms, "checkpoint complete");
                if let Some(link) = self.agent_link() {
                    self.release_chunks(link, &workload.id, &report.name).await;
                    let keep = workload.spec.checkpoint.keep;
                    let pruned = match self.checkpoints_chosen_for_restore(workload).await {
                        Ok(chosen) => prune_checkpoints(&link.storage, &workload.id, keep, &chosen)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    if let Err(e) = pruned {
                        tracing::warn!(workload_id = %workload.id, error = %e, "cannot prune old checkpoints; will try after the next one");
                    }
                }
            }
            Some(error) => {
                if let Some(link) = self.agent_link() {
                    self.release_chunks(link, &workload.id, &report.name).await;
                }
                tracing::warn!(workload_id = %workload.id, checkpoint = %report.name, trigger = %report.trigger, error = %error, "checkpoint failed");
            }
        }
        if let (Some(error), false) = (&report.error, failing_already) {
            notify::enqueue(
                self,
                workload,
                "workload.checkpoint_failed",
                json!({ "checkpoint": report.name, "trigger": report.trigger, "error": error }),
            )
            .await?;
        }
        self.checkpoint_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                workload.id.clone(),
                CheckpointOutcome {
                    name: report.name,
                    trigger: report.trigger,
                    error: report.error,
                    at_ms: now_ms(),
                },
            );
        Ok(())
    }

    /// Checkpoint `name` reported: its hold goes (a complete one's manifest names its
    /// chunks). One that cannot be deleted lapses after the grace.
    async fn release_chunks(&self, link: &AgentLink, workload_id: &str, name: &str) {
        let deleted = match held_key(workload_id, name) {
            Ok(key) => link.storage.delete(&key).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = deleted {
            tracing::warn!(workload_id, checkpoint = %name, error = %e, "cannot release the checkpoint's chunk hold; it lapses after the grace");
        }
    }

    /// The workload exited: keep its last lines for the diagnostic of its run.
    pub async fn agent_exited(
        &self,
        token: &str,
        report: protocol::ExitReport,
    ) -> Result<(), AgentError> {
        let session = self
            .agent_session(token, AgentTokenKind::Session, Duration::ZERO)
            .await?;
        tracing::warn!(workload_id = %session.workload.id, run_id = %session.run.id, status = %report.status, "workload exited (agent report)");
        let mut report = report;
        let keep = report.last_output.len().saturating_sub(20);
        report.last_output.drain(..keep);
        self.exit_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.run.id.clone(), report);
        if let (Role::Current, Some(instance)) = (session.role, &session.workload.instance_id) {
            self.exited
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(session.workload.id.clone(), instance.clone());
        }
        Ok(())
    }

    /// A batch of the workload's output from its current instance or its replacement.
    pub async fn agent_logs(
        &self,
        token: &str,
        batch: protocol::LogBatch,
    ) -> Result<(), AgentError> {
        let session = self
            .agent_session(token, AgentTokenKind::Session, Duration::ZERO)
            .await?;
        let instance = session.instance.unwrap_or_default();
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let ring = logs.entry(session.workload.id.clone()).or_default();
        ring.dropped += batch.dropped;
        for line in batch.lines {
            ring.push(&instance, line);
        }
        Ok(())
    }

    /// The upload URL of one rotated log segment, `artifacts/logs/{instance}/{name}`.
    pub async fn agent_log_segment_grant(
        &self,
        token: &str,
        request: protocol::LogSegmentGrantRequest,
    ) -> Result<protocol::LogSegmentGrant, AgentError> {
        let session = self
            .agent_session(token, AgentTokenKind::Session, Duration::ZERO)
            .await?;
        let workload = &session.workload;
        let link = self.storage_for(workload, "its logs stay on the service only")?;
        if !log_segment_name_ok(&request.name) {
            return Err(AgentError::Invalid(format!(
                "log segment name {:?} is not `{{unix ms}}.log`",
                request.name
            )));
        }
        let instance = session
            .instance
            .ok_or_else(|| AgentError::Invalid("the instance is not recorded yet; retry".into()))?;
        let key = ObjectKey::new(
            &workload.id,
            Area::Artifacts,
            &format!("logs/{instance}/{}", request.name),
        )?;
        let quota = workload.spec.storage.quota_bytes();
        let signed = link
            .storage
            .signed_url(Method::Put, &key, Some(quota), request.size)
            .await?;
        Ok(protocol::LogSegmentGrant { url: signed.url })
    }

    /// The workload's output the service holds, after `after_seq`.
    pub fn logs(&self, workload_id: &str, after_seq: u64, limit: usize) -> LogPage {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        match logs.get(workload_id) {
            Some(ring) => ring.page(after_seq, limit.clamp(1, LOG_LINES_KEPT)),
            None => LogPage {
                lines: Vec::new(),
                next_seq: after_seq,
                missed: 0,
            },
        }
    }

    pub(crate) fn heard(&self, workload_id: &str) {
        self.heard_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(workload_id.to_string(), std::time::Instant::now());
    }

    /// Declares lost the instances whose agents fell silent **and** that their driver
    /// reports ended, never on silence alone: a control-plane blip or a paused agent on
    /// a live instance is not a loss. A lost instance is handled like a notice with no
    /// time left (migrate from the newest complete checkpoint, or terminate). An
    /// instance whose workload exited on its own (its agent said so) was not lost.
    pub async fn find_lost_instances(self: &Arc<Self>) -> Result<Vec<String>, OrchestratorError> {
        if self.agent_link().is_none() {
            return Ok(Vec::new());
        }
        let silence = self.settings.agent_heartbeat * LOST_AFTER_HEARTBEATS;
        let mut lost = Vec::new();
        let candidates = self
            .store
            .workloads_in(&[WorkloadStatus::Running, WorkloadStatus::Unhealthy])
            .await?;
        // One workload's failing driver or store call must not stop the sweep of the
        // others; the first error is returned once every workload was looked at.
        let mut first_error = None;
        for workload in candidates {
            match self.lost_instance_of(&workload, silence).await {
                Ok(Some(instance_id)) => lost.push(instance_id),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(workload_id = %workload.id, error = %e, "cannot check whether the workload's instance was lost; the next sweep tries again");
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(lost),
        }
    }

    /// The instance of `workload`, if it was lost and is now being handled.
    async fn lost_instance_of(
        self: &Arc<Self>,
        workload: &WorkloadRecord,
        silence: Duration,
    ) -> Result<Option<String>, OrchestratorError> {
        let Some(instance_id) = workload.instance_id.clone() else {
            return Ok(None);
        };
        let last = self
            .heard_from
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&workload.id)
            .copied()
            .unwrap_or(self.started);
        let quiet = last.elapsed();
        if quiet < silence {
            return Ok(None);
        }
        let exited_itself = self
            .exited
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&workload.id)
            == Some(&instance_id);
        if exited_itself {
            return Ok(None);
        }
        let Some(cloud) = workload.placement.as_ref().map(|p| p.cloud.clone()) else {
            return Ok(None);
        };
        let state = self.driver(&cloud)?.instance(&instance_id).await?.state;
        let computearbitrage_core::InstanceState::Terminated { reason } = state else {
            if self
                .silent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(instance_id.clone())
            {
                tracing::warn!(workload_id = %workload.id, instance_id, quiet_ms = quiet.as_millis() as u64, "no heartbeat from the agent, but the driver reports the instance alive: not declared lost");
            }
            return Ok(None);
        };
        tracing::warn!(workload_id = %workload.id, instance_id, quiet_ms = quiet.as_millis() as u64, reason, "instance lost: its agent is silent and the driver reports it ended");
        self.on_instance_lost(workload, &instance_id, &reason, quiet)
            .await?;
        Ok(Some(instance_id))
    }

    /// How the workload of the instance `run_id` launched ended (`exit status: 3`) and
    /// its last output lines, or why it never started, as its agent reported it.
    pub(crate) fn exit_report(&self, run_id: &str) -> Option<protocol::ExitReport> {
        self.exit_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned()
    }

    pub(crate) fn checkpoint_outcome(&self, workload_id: &str) -> Option<CheckpointOutcome> {
        self.checkpoint_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(workload_id)
            .cloned()
    }
}

/// Seconds before a notice's deadline by which the final upload must be under way.
const SAFETY_MARGIN_SECONDS: u64 = 5;

/// The spec's `checkpoint` block as its agent applies it. Periodic copies need
/// storage; without it the interval is dropped here too.
fn checkpointing(spec: &computearbitrage_core::WorkloadSpec) -> protocol::Checkpointing {
    let c = &spec.checkpoint;
    protocol::Checkpointing {
        // Validated on the way in; a record from before the table falls back to SIGTERM.
        signal: computearbitrage_core::conventions::signals::number(&c.signal).unwrap_or(15),
        command: c.command.clone(),
        interval_ms: if spec.storage.enabled {
            c.interval.as_millis() as u64
        } else {
            0
        },
        safety_margin_seconds: SAFETY_MARGIN_SECONDS,
    }
}

/// Keeps the newest `keep` complete checkpoints (the spec's); deletes older complete
/// ones and incomplete ones older than the newest complete one (an upload cut short).
/// A complete checkpoint newer than every kept one is never deleted. Then collects the
/// shared chunks no checkpoint needs any more.
async fn prune_checkpoints(
    storage: &Storage,
    workload_id: &str,
    keep: u32,
    chosen: &BTreeSet<String>,
) -> Result<(), computearbitrage_storage::StorageError> {
    let grace = chunk_grace_ms(storage);
    let Some(under_way) = checkpoints_under_way(storage, workload_id, grace).await? else {
        return Ok(());
    };
    let complete = complete_checkpoints(storage, workload_id).await?;
    let Some(newest) = complete.last().and_then(|n| n.parse::<u64>().ok()) else {
        return Ok(());
    };
    let kept: Vec<&String> = complete.iter().rev().take(keep.max(1) as usize).collect();
    let prefix = Prefix::area(workload_id, Area::Checkpoints, None)?;
    let mut names: Vec<String> = storage
        .list(&prefix)
        .await?
        .into_iter()
        .filter_map(|o| o.key.path().split_once('/').map(|(n, _)| n.to_string()))
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        let Ok(number) = name.parse::<u64>() else {
            continue;
        };
        // One still under way (older than the newest, as a long periodic one can be)
        // keeps its hold.
        // One a move chose to restore stays until its replacement has it.
        if kept.contains(&&name)
            || number >= newest
            || under_way.contains_key(&name)
            || chosen.contains(&name)
        {
            continue;
        }
        // The manifest first: a half-deleted checkpoint must not look complete.
        let manifest = ObjectKey::new(
            workload_id,
            Area::Checkpoints,
            &format!("{name}/{}", protocol::MANIFEST),
        )?;
        storage.delete(&manifest).await?;
        let dir = Prefix::area(workload_id, Area::Checkpoints, Some(&name))?;
        let removed = storage.delete_prefix(&dir).await?;
        tracing::info!(workload_id, checkpoint = %name, objects = removed, "old checkpoint deleted");
    }
    let held: BTreeSet<String> = under_way.into_values().flatten().collect();
    collect_chunks(storage, workload_id, &held, grace).await
}

/// Deletes the shared chunks that no complete checkpoint names and no checkpoint under
/// way reuses (`held`), once they are older than `grace_ms` ([`CHUNK_GRACE_MS`]): a
/// newer one may belong to an upload whose manifest is still to come.
async fn collect_chunks(
    storage: &Storage,
    workload_id: &str,
    held: &BTreeSet<String>,
    grace_ms: i64,
) -> Result<(), computearbitrage_storage::StorageError> {
    let mut referenced = held.clone();
    for name in complete_checkpoints(storage, workload_id).await? {
        let key = ObjectKey::new(
            workload_id,
            Area::Checkpoints,
            &format!("{name}/{}", protocol::MANIFEST),
        )?;
        let bytes = storage.get(&key).await?;
        // An unreadable manifest keeps everything: nothing is deleted on a guess.
        let Ok(manifest) = serde_json::from_slice::<protocol::Manifest>(&bytes) else {
            tracing::warn!(workload_id, checkpoint = %name, "unreadable manifest; no chunk collected");
            return Ok(());
        };
        referenced.extend(manifest.files.into_iter().flat_map(|f| f.chunks));
    }
    let now = now_ms();
    let mut removed = 0;
    for (sha, (_, modified_ms)) in stored_chunks(storage, workload_id).await? {
        if referenced.contains(&sha) || now - modified_ms < grace_ms {
            continue;
        }
        let key = ObjectKey::new(
            workload_id,
            Area::Checkpoints,
            &format!("{SHARED_CHUNKS}/{sha}"),
        )?;
        storage.delete(&key).await?;
        removed += 1;
    }
    if removed > 0 {
        tracing::info!(
            workload_id,
            chunks = removed,
            "unreferenced checkpoint chunks deleted"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_chunk_collector_keeps_what_a_manifest_names_what_is_held_and_what_is_new() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(
            dir.path(),
            computearbitrage_storage::UrlSigner::new([7; 32]),
            "http://127.0.0.1:1",
            Duration::from_secs(60),
        )
        .unwrap();
        let sha = |c: char| c.to_string().repeat(64);
        for c in ['a', 'b', 'c', 'd'] {
            storage
                .put(&chunk_key("w1", &sha(c)).unwrap(), bytes::Bytes::from("x"))
                .await
                .unwrap();
        }
        let manifest = protocol::Manifest {
            version: 1,
            created_at_ms: 1,
            directories: Vec::new(),
            files: vec![protocol::ManifestFile {
                path: "f".into(),
                size: 2,
                mode: 0o644,
                chunks: vec![sha('a'), sha('a')],
            }],
            total_bytes: 2,
            trigger: "task".into(),
        };
        storage
            .put(
                &manifest_key("w1", "100").unwrap(),
                bytes::Bytes::from(serde_json::to_vec(&manifest).unwrap()),
            )
            .await
            .unwrap();
        // A checkpoint under way holds the chunks it names, in storage; a complete one
        // needs no hold (its manifest names them).
        let hold = |chunks: &[String]| bytes::Bytes::from(serde_json::to_vec(chunks).unwrap());
        storage
            .put(&held_key("w1", "150").unwrap(), hold(&[sha('b')]))
            .await
            .unwrap();
        storage
            .put(&held_key("w1", "100").unwrap(), hold(&[sha('c')]))
            .await
            .unwrap();
        let under_way = checkpoints_under_way(&storage, "w1", 3_600_000)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            under_way,
            BTreeMap::from([("150".to_string(), BTreeSet::from([sha('b')]))])
        );
        let lapsed = checkpoints_under_way(&storage, "w1", -1)
            .await
            .unwrap()
            .unwrap();
        assert!(
            lapsed.is_empty(),
            "a hold lapses after the grace: {lapsed:?}"
        );
        let held: BTreeSet<String> = under_way.into_values().flatten().collect();
        // Every chunk is new: within the grace, nothing goes.
        collect_chunks(&storage, "w1", &held, 3_600_000)
            .await
            .unwrap();
        assert_eq!(stored_chunks(&storage, "w1").await.unwrap().len(), 4);
        // Past it: the named one and the held one stay.
        collect_chunks(&storage, "w1", &held, -1).await.unwrap();
        let left: Vec<String> = stored_chunks(&storage, "w1")
            .await
            .unwrap()
            .into_keys()
            .collect();
        assert_eq!(left, vec![sha('a'), sha('b')]);
        // A manifest that cannot be read keeps everything.
        storage
            .put(&manifest_key("w1", "200").unwrap(), bytes::Bytes::from("{"))
            .await
            .unwrap();
        collect_chunks(&storage, "w1", &BTreeSet::new(), -1)
            .await
            .unwrap();
        assert_eq!(stored_chunks(&storage, "w1").await.unwrap().len(), 2);
        // And so does a hold that cannot be read.
        storage
            .put(&held_key("w1", "250").unwrap(), bytes::Bytes::from("["))
            .await
            .unwrap();
        assert!(checkpoints_under_way(&storage, "w1", 3_600_000)
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_complete_checkpoints_and_those_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::local(
            dir.path(),
            computearbitrage_storage::UrlSigner::new([7; 32]),
            "http://127.0.0.1:1",
            Duration::from_secs(60),
        )
        .unwrap();
        let manifest = bytes::Bytes::from(
            serde_json::to_vec(&protocol::Manifest {
                version: 1,
                created_at_ms: 1,
                directories: Vec::new(),
                files: Vec::new(),
                total_bytes: 0,
                trigger: "periodic".into(),
            })
            .unwrap(),
        );
        for name in ["100", "200", "400"] {
            storage
                .put(&manifest_key("w1", name).unwrap(), manifest.clone())
                .await
                .unwrap();
        }
        // 300 started before 400 and is still uploading; 50 never finished (a chunk of
        // its own and no hold, as before holds were kept).
        storage
            .put(&held_key("w1", "300").unwrap(), bytes::Bytes::from("[]"))
            .await
            .unwrap();
        storage
            .put(
                &own_chunk_key("w1", "50", &"e".repeat(64)).unwrap(),
                bytes::Bytes::from("x"),
            )
            .await
            .unwrap();
        let chosen: BTreeSet<String> = ["100".to_string()].into();
        prune_checkpoints(&storage, "w1", 2, &chosen).await.unwrap();
        let mut left: Vec<String> = storage
            .list(&Prefix::area("w1", Area::Checkpoints, None).unwrap())
            .await
            .unwrap()
            .into_iter()
            .map(|o| o.key.path().to_string())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "100/manifest.json",
                "200/manifest.json",
                "300/held.json",
                "400/manifest.json"
            ],
            "the two newest complete ones, the one under way and the one a move chose stay"
        );
        prune_checkpoints(&storage, "w1", 2, &BTreeSet::new())
            .await
            .unwrap();
        assert!(
            storage
                .get(&manifest_key("w1", "100").unwrap())
                .await
                .is_err(),
            "once no move needs it, it goes"
        );
    }

    #[test]
    fn the_log_ring_keeps_the_newest_lines_and_says_what_was_missed() {
        let mut ring = LogRing::default();
        for i in 0..(LOG_LINES_KEPT + 10) {
            ring.push("i-1", format!("line {i}"));
        }
        let first = ring.page(0, 3);
        assert_eq!(first.missed, 10, "the 10 oldest are gone");
        assert_eq!(first.lines[0].seq, 11);
        assert_eq!(first.lines[0].text, "line 10");
        assert_eq!(first.next_seq, 13);
        let next = ring.page(first.next_seq, 2);
        assert_eq!(next.missed, 0);
        assert_eq!(
            next.lines.iter().map(|l| l.seq).collect::<Vec<_>>(),
            vec![14, 15]
        );
        // Following from the end: nothing new, the position holds.
        let end = ring.page(ring.next_seq, 100);
        assert!(end.lines.is_empty());
        assert_eq!(end.next_seq, ring.next_seq);
        // A long line is cut at a character boundary.
        ring.push("i-1", "é".repeat(LOG_LINE_MAX));
        let last = ring.page(ring.next_seq - 1, 1);
        assert!(last.lines[0].text.len() <= LOG_LINE_MAX);
        assert!(last.lines[0].text.chars().all(|c| c == 'é'));
    }

    #[test]
    fn names_of_checkpoints_and_log_segments_are_digits_only() {
        assert!(checkpoint_name_ok("1733100000000"));
        assert!(log_segment_name_ok("1733100000000.log"));
        for bad in ["", "12a", "../1", "1/2", "123456789012345678901"] {
            assert!(!checkpoint_name_ok(bad), "{bad}");
        }
        for bad in [".log", "1.txt", "../1.log", "1.log/x", "a.log"] {
            assert!(!log_segment_name_ok(bad), "{bad}");
        }
    }
}
