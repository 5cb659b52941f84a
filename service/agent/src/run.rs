//! `computearbitrage-agent run`: the agent's life on an instance.
//!
//! 1. Register with the boot credential (retried until the service answers, waiting
//!    while the instance this one replaces writes its final checkpoint).
//! 2. Restore the assigned checkpoint into `$CHECKPOINT_DIR`.
//! 3. Start the workload with its env, `PORT`, `TCP_PORT` and `CHECKPOINT_DIR`, its
//!    output passed through to the agent's and its last lines kept. With storage, the
//!    local API ([`crate::local_api`]) serves it signed URLs for its own objects.
//! 4. Heartbeat (refreshing the session token and the checkpoint settings) and watch
//!    the cloud's notice.
//! 5. Every `checkpoint.interval`, when set: run the checkpoint command if there is
//!    one, copy `$CHECKPOINT_DIR` as the workload's user ([`crate::snapshot`]), report.
//! 6. On a notice: stop the periodic copies, report the notice, tell the workload
//!    (the checkpoint command, or the signal and a wait up to the deadline minus the
//!    safety margin), upload the checkpoint (chunks, then the manifest), report the
//!    result, approve the event where the cloud has approval (Azure).
//! 7. Operator tasks ([`crate::tasks`]) run as they are pulled; a `stop` ends the
//!    workload here, with its signal and then a kill at the task's timeout.
//! 8. The workload exits on its own: report its status and last lines, exit with
//!    its code. A fenced agent (its instance was replaced) stops the workload.

use crate::checkpoint;
use crate::local_api;
use crate::notice::{Notice, Signal};
use crate::snapshot;
use crate::tasks;
use crate::watch::{Cloud, Watcher};
use computearbitrage_agent_protocol::{self as protocol, paths};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// Lines of output kept for the exit report.
const LAST_LINES: usize = 40;

/// What the machine (the driver's user-data) tells the agent.
#[derive(Debug, Clone)]
pub struct RunArgs {
    pub service_url: String,
    /// Where the service says it is in the URLs it signs, when this machine reaches it
    /// at `service_url` instead (through a forwarded port, a NAT): those URLs are
    /// read with `service_url`'s origin.
    pub service_advertised: Option<String>,
    pub credential_file: PathBuf,
    pub instance_id: String,
    pub cloud: Cloud,
    pub metadata_url: String,
    /// The VM name Azure's Scheduled Events use.
    pub resource: String,
    /// The workload's working directory; `$CHECKPOINT_DIR` is `checkpoint/` in it.
    pub work_dir: PathBuf,
    /// The ports the machine gives the workload.
    pub port: u16,
    pub tcp_port: Option<u16>,
    /// Who the workload runs as, when not the agent's user.
    pub owner: Option<(u32, u32)>,
    pub poll: Duration,
    /// The local API's socket once it is served (set by [`run`], not by the machine).
    pub local_api: Option<PathBuf>,
}

/// Why the agent stopped, as its exit code.
#[derive(Debug)]
pub enum Exit {
    /// The workload's own exit code.
    Workload(i32),
    /// Checkpointed after a notice.
    Reclaimed,
    /// The service refused this instance (fenced, or a bad credential).
    Refused(String),
    /// The checkpoint could not be restored, or the workload not started.
    Failed(String),
}

impl Exit {
    pub fn code(&self) -> i32 {
        match self {
            Exit::Workload(code) => *code,
            Exit::Reclaimed => 0,
            Exit::Refused(_) => 75,
            Exit::Failed(_) => 70,
        }
    }
}

#[derive(Debug)]
pub(crate) enum CallError {
    /// Told to stop.
    Fenced(String),
    /// The service said no; retrying the same call will not help.
    Refused(String),
    /// Unreachable, or a transient failure: retry.
    Transient(String),
}

pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    base: String,
    /// `"ADVERTISED/` and `"BASE/`: the service's own URLs as it writes them, and as
    /// this machine reaches them.
    rewrite: Option<(String, String)>,
    token: Mutex<String>,
}

impl Client {
    fn token(&self) -> String {
        self.token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_token(&self, token: String) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// One POST with the session token; the status and body as they came. Only an
    /// unreachable service is an error here.
    pub(crate) async fn send(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), CallError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| CallError::Transient(format!("POST {path}: {e}")))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| CallError::Transient(format!("POST {path}: {e}")))?;
        Ok((status, self.reachable(bytes)))
    }

    /// The answer with every URL of the service's that starts a JSON string read
    /// through the origin this machine reaches it at.
    fn reachable(&self, bytes: bytes::Bytes) -> bytes::Bytes {
        let Some((from, to)) = &self.rewrite else {
            return bytes;
        };
        match std::str::from_utf8(&bytes) {
            Ok(text) if text.contains(from.as_str()) => {
                bytes::Bytes::from(text.replace(from.as_str(), to))
            }
            _ => bytes,
        }
    }

    pub(crate) async fn call<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
    ) -> Result<A, CallError> {
        let (status, bytes) = self
            .send(path, serde_json::to_vec(body).unwrap_or_default())
            .await?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                CallError::Refused(format!(
                    "POST {path}: the service's answer is unreadable: {e}"
                ))
            });
        }
        let error: protocol::ErrorBody =
            serde_json::from_slice(&bytes).unwrap_or(protocol::ErrorBody {
                error: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                fenced: false,
                retryable: status.is_server_error() || status.as_u16() == 429,
            });
        let message = format!("POST {path}: HTTP {status}: {}", error.error);
        Err(if error.fenced {
            CallError::Fenced(message)
        } else if error.retryable {
            CallError::Transient(message)
        } else {
            CallError::Refused(message)
        })
    }

    /// Retries transient failures with backoff for up to `patience`.
    pub(crate) async fn call_patiently<Q: Serialize, A: DeserializeOwned>(
        &self,
        path: &str,
        body: &Q,
        patience: Duration,
    ) -> Result<A, CallError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            match self.call(path, body).await {
                Err(CallError::Transient(message)) if started.elapsed() < patience => {
                    tracing::warn!(path, error = %message, retry_in_ms = delay.as_millis() as u64, "service call failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }
}

/// The workload's output: the kept tail (for an exit report), the lines not yet
/// shipped to the service, and the log segment being filled for storage. All bounded.
#[derive(Default)]
struct Tail {
    /// Whether segments are kept for storage (the workload has storage).
    segments: bool,
    last: Mutex<VecDeque<String>>,
    /// Not yet sent to the service, and how many were dropped while it was away.
    pending: Mutex<(VecDeque<String>, u64)>,
    /// The segment for `artifacts/logs/`: when its first line came (unix ms), its bytes.
    segment: Mutex<(i64, Vec<u8>)>,
}

/// How long the agent keeps retrying a service that does not answer before it gives up
/// on starting the workload.
const SERVICE_PATIENCE: Duration = Duration::from_secs(3600);
/// A longer output line is kept cut to this many bytes.
const LINE_BYTES: usize = 8 << 10;
/// Lines per batch sent to the service (batches stay well under its 4 MiB body limit).
const BATCH_LINES: usize = 256;
/// Lines held for the service while it is unreachable; older ones are dropped.
const PENDING_LINES: usize = 10_000;
/// A log segment is uploaded at this size, or after [`SEGMENT_AGE`].
const SEGMENT_BYTES: usize = 1 << 20;
const SEGMENT_AGE: Duration = Duration::from_secs(60);

impl Tail {
    fn push(&self, line: String) {
        if self.segments {
            let mut segment = self.segment.lock().unwrap_or_else(|p| p.into_inner());
            if segment.1.is_empty() {
                segment.0 = unix_ms();
            }
            segment.1.extend_from_slice(line.as_bytes());
            segment.1.push(b'\n');
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.0.len() == PENDING_LINES {
                pending.0.pop_front();
                pending.1 += 1;
            }
            pending.0.push_back(line.clone());
        }
        let mut lines = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() == LAST_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn lines(&self) -> Vec<String> {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// Sends what is pending, in batches; on failure the rest stays pending (within
    /// the bound) for the next tick.
    async fn ship(&self, client: &Client) {
        loop {
            let (lines, dropped) = {
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let take = pending.0.len().min(BATCH_LINES);
                let lines: Vec<String> = pending.0.drain(..take).collect();
                (lines, std::mem::take(&mut pending.1))
            };
            if lines.is_empty() && dropped == 0 {
                return;
            }
            let batch = protocol::LogBatch { lines, dropped };
            if let Err(e) = client
                .call::<_, serde_json::Value>(paths::LOGS, &batch)
                .await
            {
                tracing::debug!(error = ?e, "cannot ship logs now; keeping them");
                let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                let mut kept: VecDeque<String> = batch.lines.into();
                kept.append(&mut pending.0);
                let over = kept.len().saturating_sub(PENDING_LINES);
                kept.drain(..over);
                pending.0 = kept;
                pending.1 += batch.dropped + over as u64;
                return;
            }
        }
    }

    /// Uploads the segment to `artifacts/logs/{instance}/{first ms}.log` when it is
    /// full, old, or `force`d (exit, notice).
    async fn rotate(&self, client: &Client, force: bool) {
        let (first_ms, bytes) = {
            let mut segment = self.segment.lock().unwrap_or_else(|p| p.into_inner());
            let old = unix_ms() - segment.0 >= SEGMENT_AGE.as_millis() as i64;
            if segment.1.is_empty() || !(force || old || segment.1.len() >= SEGMENT_BYTES) {
                return;
            }
            (segment.0, std::mem::take(&mut segment.1))
        };
        let request = protocol::LogSegmentGrantRequest {
            name: format!("{first_ms}.log"),
            size: bytes.len() as u64,
        };
        let result = async {
            let grant: protocol::LogSegmentGrant = client
                .call(paths::LOG_SEGMENT_GRANT, &request)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let response = client
                .http
                .put(&grant.url)
                .body(bytes)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| format!("upload: {}", e.without_url()))?;
            if !response.status().is_success() {
                return Err(format!("upload answered {}", response.status()));
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(segment = %request.name, error = %e, "cannot store a log segment; its lines are still on the service");
        }
    }
}

/// Ships logs every second and stores segments as they fill.
async fn ship_logs(client: Arc<Client>, tail: Arc<Tail>, storage: bool) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tail.ship(&client).await;
        if storage {
            tail.rotate(&client, false).await;
        }
    }
}

pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The agent's HTTP client. Every request has an end: a stalled upload or restore
/// must not hang the agent.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap_or_default()
}

/// The checkpoint settings in effect; heartbeat replies replace them.
pub(crate) type Settings = Arc<Mutex<protocol::Checkpointing>>;

pub(crate) fn current(settings: &Settings) -> protocol::Checkpointing {
    settings.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Runs the agent until its workload ends, it is reclaimed, or it is fenced.
pub async fn run(args: RunArgs) -> Exit {
    let credential = match std::fs::read_to_string(&args.credential_file) {
        Ok(text) => text.trim().to_string(),
        Err(e) => {
            return Exit::Failed(format!(
                "cannot read the boot credential {}: {e}",
                args.credential_file.display()
            ))
        }
    };
    // Spent on registration; nothing on the machine needs it afterwards.
    let _ = std::fs::remove_file(&args.credential_file);
    let base = args.service_url.trim_end_matches('/').to_string();
    let client = Arc::new(Client {
        http: http_client(),
        rewrite: args
            .service_advertised
            .as_deref()
            .map(|a| a.trim_end_matches('/'))
            .filter(|a| *a != base)
            .map(|a| (format!("\"{a}/"), format!("\"{base}/"))),
        base,
        token: Mutex::new(credential),
    });
    let assignment = match register(&client, &args).await {
        Ok(a) => a,
        Err(exit) => return exit,
    };
    client.set_token(assignment.token.clone());
    let checkpoint_dir = args.work_dir.join("checkpoint");
    if let Err(e) = prepare_dir(&checkpoint_dir, args.owner) {
        let message = format!("cannot create {}: {e}", checkpoint_dir.display());
        report_not_started(&client, &message).await;
        return Exit::Failed(message);
    }
    if let Some(restore) = &assignment.restore {
        // A control-plane blip (the service restarting) must not cost the instance.
        let started = Instant::now();
        let restored = checkpoint::restore_patiently(
            &client.http,
            restore,
            &checkpoint_dir,
            args.owner,
            SERVICE_PATIENCE,
        );
        match restored.await {
            Ok((files, bytes)) => {
                tracing::info!(checkpoint = %restore.name, files, bytes, duration_ms = started.elapsed().as_millis() as u64, "checkpoint restored");
            }
            Err(e) => {
                // The workload never starts; the service's diagnostic says why.
                let message = format!("cannot restore checkpoint {}: {e}", restore.name);
                report_not_started(&client, &message).await;
                return Exit::Failed(message);
            }
        }
    }
    let tail = Arc::new(Tail {
        segments: assignment.storage.is_some(),
        ..Tail::default()
    });
    let mut args = args;
    let local_api = match &assignment.storage {
        Some(_) => local_api::start(&args.work_dir, args.owner, client.clone()),
        None => None,
    };
    args.local_api = local_api.as_ref().map(|(path, _)| path.clone());
    let mut child = match spawn_workload(&args, &assignment, &checkpoint_dir, &tail) {
        Ok(child) => child,
        Err(message) => {
            report_not_started(&client, &message).await;
            return Exit::Failed(message);
        }
    };
    let pid = child.id().unwrap_or(0) as i32;
    tracing::info!(workload_id = %assignment.workload_id, pid, "workload started");

    let settings: Settings = Arc::new(Mutex::new(assignment.checkpointing.clone()));
    let heartbeat = tokio::spawn(heartbeats(
        client.clone(),
        Duration::from_millis(assignment.heartbeat_ms.max(100)),
        settings.clone(),
    ));
    let storage = assignment.storage.is_some();
    let shipper = tokio::spawn(ship_logs(client.clone(), tail.clone(), storage));
    let periodic = storage.then(|| {
        tokio::spawn(periodic_checkpoints(
            client.clone(),
            settings.clone(),
            Arc::new(args.clone()),
            assignment.env.clone(),
            checkpoint_dir.clone(),
        ))
    });
    let (stops_sender, mut stops) = tokio::sync::mpsc::channel::<tasks::StopRequest>(4);
    let task_runner = tokio::spawn(tasks::task_loop(tasks::Context {
        client: client.clone(),
        args: Arc::new(args.clone()),
        env: assignment.env.clone(),
        checkpoint_dir: checkpoint_dir.clone(),
        settings: settings.clone(),
        storage,
        pid,
        stops: stops_sender,
    }));
    let mut watcher = Watcher::new(args.cloud, &args.metadata_url, &args.resource, args.poll);
    let exit = loop {
        tokio::select! {
            Some(stop) = stops.recv() => {
                task_runner.abort();
                let code = stop_workload(&mut child, pid, &current(&settings), &stop.task).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let output = format!("the workload exited with code {code}\n");
                tasks::report(&client, &protocol::TaskResult {
                    id: stop.task.id.clone(),
                    attempt: stop.task.attempt,
                    exit_code: Some(code),
                    output,
                    error: None,
                }).await;
                report_exit(&client, &format!("stopped by task {}: exit code {code}", stop.task.id), tail.lines()).await;
                break Exit::Workload(code);
            }
            status = child.wait() => {
                let (text, code) = match status {
                    Ok(s) => (s.to_string(), exit_code(s)),
                    Err(e) => (format!("lost: {e}"), 70),
                };
                // Let the output readers drain the last lines first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                report_exit(&client, &text, tail.lines()).await;
                break Exit::Workload(code);
            }
            fenced = wait_fenced(&heartbeat) => {
                tracing::warn!(reason = %fenced, "this instance was replaced; stopping the workload");
                kill_workload(&mut child, pid).await;
                break Exit::Refused(fenced);
            }
            notice = watcher.next() => {
                match notice.signal {
                    Signal::Rebalance => {
                        let _ = client.call::<_, serde_json::Value>(paths::NOTICE, &protocol::NoticeReport {
                            signal: "rebalance".into(),
                            deadline: None,
                        }).await;
                    }
                    Signal::Interruption => {
                        task_runner.abort();
                        // A paused workload must be able to act on the notice.
                        tasks::signal_tree(pid, libc::SIGCONT);
                        // A copy under way is cut short (its child with it): the final
                        // checkpoint is the one that counts, and it needs the window.
                        if let Some(periodic) = &periodic {
                            periodic.abort();
                        }
                        let workload = Workload { child: &mut child, pid, env: &assignment.env };
                        on_notice(&client, &args, &current(&settings), assignment.storage.is_some(), &notice, &watcher, workload, &checkpoint_dir).await;
                        break Exit::Reclaimed;
                    }
                }
            }
        }
    };
    heartbeat.abort();
    shipper.abort();
    task_runner.abort();
    if let Some((path, server)) = local_api {
        server.abort();
        let _ = std::fs::remove_file(path);
    }
    if let Some(periodic) = periodic {
        periodic.abort();
    }
    // What the workload wrote last reaches the service and storage before the agent goes.
    tail.ship(&client).await;
    if storage && !matches!(exit, Exit::Refused(_)) {
        tail.rotate(&client, true).await;
    }
    exit
}

async fn register(client: &Client, args: &RunArgs) -> Result<protocol::Assignment, Exit> {
    let request = protocol::Register {
        instance_id: args.instance_id.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    loop {
        match client
            .call_patiently(paths::REGISTER, &request, SERVICE_PATIENCE)
            .await
        {
            Ok(protocol::RegisterReply::Run(assignment)) => return Ok(*assignment),
            Ok(protocol::RegisterReply::Wait { retry_ms, why }) => {
                tracing::info!(why, retry_ms, "registered; waiting for the assignment");
                tokio::time::sleep(Duration::from_millis(retry_ms.clamp(50, 5_000))).await;
            }
            Err(CallError::Fenced(m) | CallError::Refused(m) | CallError::Transient(m)) => {
                return Err(Exit::Refused(m))
            }
        }
    }
}

fn prepare_dir(dir: &std::path::Path, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

fn spawn_workload(
    args: &RunArgs,
    assignment: &protocol::Assignment,
    checkpoint_dir: &std::path::Path,
    tail: &Arc<Tail>,
) -> Result<tokio::process::Child, String> {
    let Some(program) = assignment.command.first() else {
        return Err("the command is empty; give at least the program to run".into());
    };
    let mut command = as_workload(args, &assignment.env, &assignment.command, checkpoint_dir);
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}; check the workload's `command`"))?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pass_through(out, tokio::io::stdout(), tail.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pass_through(err, tokio::io::stderr(), tail.clone()));
    }
    Ok(child)
}

/// A command run as the workload is: its user, directory and environment (`PORT`,
/// `TCP_PORT`, `CHECKPOINT_DIR`), nothing of the agent's.
pub(crate) fn as_workload(
    args: &RunArgs,
    env: &BTreeMap<String, String>,
    argv: &[String],
    checkpoint_dir: &std::path::Path,
) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(&argv[0]);
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &args.work_dir)
        .envs(env)
        .env("PORT", args.port.to_string())
        .env("CHECKPOINT_DIR", checkpoint_dir)
        .envs(args.tcp_port.map(|p| ("TCP_PORT", p.to_string())))
        .envs(args.local_api.as_ref().map(|p| (local_api::SOCKET_ENV, p)))
        .current_dir(&args.work_dir)
        .args(&argv[1..])
        .stdin(Stdio::null());
    if let Some((uid, gid)) = args.owner {
        // Also after the agent dropped to the same user: setting one's own ids is allowed.
        command.uid(uid).gid(gid);
    }
    command
}

/// Copies the workload's output line by line to the agent's own, keeping the tail.
async fn pass_through<R, W>(from: R, mut to: W, tail: Arc<Tail>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    // Passed through as it comes; kept line by line, each line at most LINE_BYTES (a
    // workload writing gigabytes without a newline costs the agent nothing).
    let mut from = from;
    let mut buffer = vec![0u8; 64 << 10];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let _ = to.write_all(&buffer[..read]).await;
        let _ = to.flush().await;
        for byte in &buffer[..read] {
            if *byte == b'\n' {
                tail.push(String::from_utf8_lossy(&line).into_owned());
                line.clear();
                cut = false;
            } else if line.len() < LINE_BYTES {
                line.push(*byte);
            } else if !cut {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        tail.push(String::from_utf8_lossy(&line).into_owned());
    }
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

pub(crate) fn signal(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill(2) on the workload's own pid.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Ends what is left of the workload: every process it started that is still its
/// descendant, then the main process (reaped). The workload stays in the agent's
/// process group, so the machine's end (the local driver kills that group) takes
/// whatever escaped the tree too.
async fn kill_workload(child: &mut tokio::process::Child, pid: i32) {
    if child.try_wait().ok().flatten().is_none() {
        crate::tasks::signal_tree(pid, libc::SIGKILL);
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

async fn report_exit(client: &Client, status: &str, last_output: Vec<String>) {
    send_exit_report(
        client,
        protocol::ExitReport {
            status: status.to_string(),
            last_output,
            not_started: false,
        },
    )
    .await
}

/// Tells the service why the workload was never started, for its diagnostic.
async fn report_not_started(client: &Client, why: &str) {
    send_exit_report(
        client,
        protocol::ExitReport {
            status: why.to_string(),
            last_output: Vec::new(),
            not_started: true,
        },
    )
    .await
}

async fn send_exit_report(client: &Client, report: protocol::ExitReport) {
    if let Err(e) = client
        .call_patiently::<_, serde_json::Value>(paths::EXITED, &report, Duration::from_secs(10))
        .await
    {
        tracing::warn!(error = ?e, "cannot report the workload's exit");
    }
}

/// Sends heartbeats; returns why the service fenced this instance.
async fn heartbeats(client: Arc<Client>, every: Duration, settings: Settings) -> String {
    loop {
        tokio::time::sleep(every).await;
        let beat = protocol::Heartbeat {
            phase: "running".into(),
        };
        match client
            .call::<_, protocol::HeartbeatReply>(paths::HEARTBEAT, &beat)
            .await
        {
            Ok(reply) => {
                client.set_token(reply.token);
                *settings.lock().unwrap_or_else(|p| p.into_inner()) = reply.checkpointing;
            }
            Err(CallError::Fenced(reason)) => return reason,
            // A control-plane blip is not a reason to stop a healthy workload.
            Err(e) => tracing::warn!(error = ?e, "heartbeat failed; the workload keeps running"),
        }
    }
}

async fn wait_fenced(heartbeat: &tokio::task::JoinHandle<String>) -> String {
    // Polled by reference inside select!: finish only when the task has.
    loop {
        if heartbeat.is_finished() {
            return "fenced by the service".into();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ends the workload for a `stop` task: it is continued (it may be paused), given
/// its notice signal, and killed if it has not exited within the task's timeout; its
/// exit code.
async fn stop_workload(
    child: &mut tokio::process::Child,
    pid: i32,
    settings: &protocol::Checkpointing,
    task: &protocol::AgentTask,
) -> i32 {
    crate::tasks::signal_tree(pid, libc::SIGCONT);
    crate::tasks::signal_tree(pid, settings.signal);
    let grace = Duration::from_secs(u64::from(task.timeout_seconds.max(1)));
    let code = match tokio::time::timeout(grace, child.wait()).await {
        Ok(Ok(status)) => exit_code(status),
        Ok(Err(_)) => 70,
        Err(_) => {
            tracing::warn!(task_id = %task.id, grace_s = grace.as_secs(), "the workload did not stop within the task's timeout; killed");
            crate::tasks::signal_tree(pid, libc::SIGKILL);
            child.wait().await.map(exit_code).unwrap_or(137)
        }
    };
    code
}

/// The running workload, as a notice needs it.
struct Workload<'a> {
    child: &'a mut tokio::process::Child,
    pid: i32,
    env: &'a BTreeMap<String, String>,
}

/// Acts on an interruption notice: report, tell the workload, checkpoint, approve.
#[allow(clippy::too_many_arguments)]
async fn on_notice(
    client: &Client,
    args: &RunArgs,
    settings: &protocol::Checkpointing,
    storage: bool,
    notice: &Notice,
    watcher: &Watcher,
    workload: Workload<'_>,
    checkpoint_dir: &std::path::Path,
) {
    let Workload { child, pid, env } = workload;
    tracing::warn!(deadline = ?notice.deadline, action = %notice.action, "interruption notice");
    // The workload is told first; the report goes alongside (the driver's own signal
    // reaches the service too), so a slow service never eats the notice window.
    let notice_report = protocol::NoticeReport {
        signal: "interruption".into(),
        deadline: notice.deadline,
    };
    let report = client.call_patiently::<_, serde_json::Value>(
        paths::NOTICE,
        &notice_report,
        Duration::from_secs(5),
    );
    let report = async {
        if let Err(e) = tokio::time::timeout(Duration::from_secs(10), report).await {
            tracing::warn!(error = ?e, "cannot report the notice; the driver's signal still reaches the service");
        }
    };
    // From here on the agent needs no more rights than the workload: it reads only
    // what the workload could read itself, whatever links the workload leaves in
    // $CHECKPOINT_DIR (the agent may run as root).
    if let Some((uid, gid)) = args.owner {
        if let Err(e) = drop_privileges(uid, gid) {
            tracing::error!(error = %e, "cannot drop to the workload's user; no checkpoint is taken");
            kill_workload(child, pid).await;
            report.await;
            return;
        }
    }
    let began_ms = unix_ms();
    let deadline_ms = notice
        .deadline
        .map(|d| d * 1000)
        .unwrap_or(began_ms + 30_000);
    let margin_ms = (settings.safety_margin_seconds as i64 * 1000)
        .min((deadline_ms - began_ms) / 4)
        .max(0);
    let wait_until = deadline_ms - margin_ms;
    let budget = || Duration::from_millis((wait_until - unix_ms()).max(0) as u64);
    // Tell the workload, then give it until the deadline minus the margin.
    let telling = async {
        if settings.command.is_empty() {
            // The whole tree: a shell wrapper does not pass the signal on.
            crate::tasks::signal_tree(pid, settings.signal);
            let budget = budget();
            match tokio::time::timeout(budget, child.wait()).await {
                Ok(_) => Ok(()),
                Err(_) => Err(format!(
                    "the workload did not exit within {} ms of signal {}; checkpointing what it wrote",
                    budget.as_millis(),
                    settings.signal
                )),
            }
        } else {
            let command = as_workload(args, env, &settings.command, checkpoint_dir);
            run_checkpoint_command(command, budget()).await
        }
    };
    let (told, ()) = tokio::join!(telling, report);
    if let Err(message) = &told {
        tracing::warn!(
            message,
            "the workload did not finish its checkpoint in time"
        );
    }
    if storage {
        // The agent is the workload's user now: the copy is made in-process.
        let name = began_ms.to_string();
        let started = Instant::now();
        let outcome = snapshot::take(&client.http, checkpoint_dir, &name, "notice", |r| {
            grant(client, r)
        })
        .await;
        report_checkpoint(client, name, "notice", outcome, started).await;
    }
    if let Err(e) = watcher.approve(notice).await {
        tracing::warn!(error = %e, "cannot approve the scheduled event");
    }
    // Whatever is left of the workload goes with the machine (`start_kill` knows
    // whether the child was already reaped, so no reused pid is hit).
    kill_workload(child, pid).await;
}

/// Takes a checkpoint every `interval_ms` of the settings in effect (none while it is
/// 0), as the workload's user; a failed one is reported and the next comes on time.
async fn periodic_checkpoints(
    client: Arc<Client>,
    settings: Settings,
    args: Arc<RunArgs>,
    env: BTreeMap<String, String>,
    checkpoint_dir: PathBuf,
) {
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = current(&settings);
        let interval = Duration::from_millis(now.interval_ms);
        if interval.is_zero() {
            last = Instant::now();
            continue;
        }
        if last.elapsed() < interval {
            continue;
        }
        last = Instant::now();
        let name = unix_ms().to_string();
        let started = Instant::now();
        // Bounded by the interval: a command slower than that is broken.
        let budget = interval.max(Duration::from_secs(10));
        let outcome = copy_checkpoint(
            &client,
            &args,
            &env,
            &now,
            &checkpoint_dir,
            &name,
            "periodic",
            budget,
        )
        .await;
        report_checkpoint(&client, name, "periodic", outcome, started).await;
    }
}

/// A checkpoint of the running workload: its checkpoint command (within `budget`) if
/// it has one, then `$CHECKPOINT_DIR` copied as the workload's user; bytes and files.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn copy_checkpoint(
    client: &Client,
    args: &RunArgs,
    env: &BTreeMap<String, String>,
    settings: &protocol::Checkpointing,
    checkpoint_dir: &std::path::Path,
    name: &str,
    trigger: &str,
    budget: Duration,
) -> Result<(u64, u64), String> {
    if !settings.command.is_empty() {
        let command = as_workload(args, env, &settings.command, checkpoint_dir);
        run_checkpoint_command(command, budget).await?;
    }
    let grant = |r| grant(client, r);
    match args.owner {
        Some(owner) => snapshot::take_as(owner, checkpoint_dir, name, trigger, grant).await,
        None => snapshot::take(&client.http, checkpoint_dir, name, trigger, grant).await,
    }
}

/// The upload URLs of one checkpoint.
pub(crate) async fn grant(
    client: &Client,
    request: protocol::CheckpointGrantRequest,
) -> Result<protocol::CheckpointGrant, String> {
    client
        .call_patiently(paths::CHECKPOINT_GRANT, &request, Duration::from_secs(5))
        .await
        .map_err(|e| format!("no upload grant: {e:?}"))
}

pub(crate) async fn report_checkpoint(
    client: &Client,
    name: String,
    trigger: &str,
    outcome: Result<(u64, u64), String>,
    started: Instant,
) {
    let (error, bytes, files) = match outcome {
        Ok((bytes, files)) => (None, bytes, files),
        Err(e) => (Some(e), 0, 0),
    };
    let report = protocol::CheckpointReport {
        name,
        trigger: trigger.into(),
        error,
        bytes,
        files,
        duration_ms: started.elapsed().as_millis() as u64,
    };
    tracing::info!(checkpoint = %report.name, trigger, bytes, files, error = ?report.error, duration_ms = report.duration_ms, "checkpoint");
    if let Err(e) = client
        .call_patiently::<_, serde_json::Value>(
            paths::CHECKPOINT_REPORT,
            &report,
            Duration::from_secs(5),
        )
        .await
    {
        tracing::warn!(error = ?e, "cannot report the checkpoint");
    }
}

/// Gives up root for the workload's user, for good and for every thread.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: plain system calls; glibc applies set*id to every thread of the process.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0 && libc::geteuid() == 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setgid(gid) != 0 {
            return Err(format!(
                "setgid({gid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(uid) != 0 {
            return Err(format!(
                "setuid({uid}): {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Runs the workload's checkpoint command; it must exit 0 within `budget`.
pub(crate) async fn run_checkpoint_command(
    mut command: tokio::process::Command,
    budget: Duration,
) -> Result<(), String> {
    let mut child = command
        .stdout(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the checkpoint command: {e}"))?;
    match tokio::time::timeout(budget, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("the checkpoint command failed: {status}")),
        Ok(Err(e)) => Err(format!("the checkpoint command was lost: {e}")),
        Err(_) => Err(format!(
            "the checkpoint command did not finish within {} ms",
            budget.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(rewrite: Option<(&str, &str)>) -> Client {
        Client {
            http: http_client(),
            base: "http://10.213.0.1:7070".into(),
            rewrite: rewrite.map(|(a, b)| (format!("\"{a}/"), format!("\"{b}/"))),
            token: Mutex::new(String::new()),
        }
    }

    #[test]
    fn the_services_own_urls_are_read_through_the_address_this_machine_reaches() {
        let c = client(Some(("http://127.0.0.1:7070", "http://10.213.0.1:7070")));
        let answer = br#"{"url":"http://127.0.0.1:7070/storage/x?sig=1","other":"http://127.0.0.1:70701/y","s3":"https://bucket.s3.amazonaws.com/http://127.0.0.1:7070/z"}"#;
        let read = c.reachable(bytes::Bytes::from_static(answer));
        let value: serde_json::Value = serde_json::from_slice(&read).unwrap();
        assert_eq!(value["url"], "http://10.213.0.1:7070/storage/x?sig=1");
        // Another port, and the origin inside another URL, are not the service's.
        assert_eq!(value["other"], "http://127.0.0.1:70701/y");
        assert_eq!(
            value["s3"],
            "https://bucket.s3.amazonaws.com/http://127.0.0.1:7070/z"
        );
        let plain = client(None);
        assert_eq!(
            plain.reachable(bytes::Bytes::from_static(answer)).as_ref(),
            answer
        );
    }
}
