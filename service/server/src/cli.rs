//! The operator commands of `computearbitrage` that talk to a running service:
//! `workload get|update|delete|runs|billing|notifications|logs|connections|objects|download|upload|exec|checkpoint|stop|pause|resume|tasks|task|interrupt`,
//! `dead-letters`, `replay`, `dead-tasks`, `replay-task`, `webhook`, `tenant create|list`, `token create|list|revoke`, `audit`. They read COMPUTEARBITRAGE_ENDPOINT, COMPUTEARBITRAGE_TOKEN and
//! COMPUTEARBITRAGE_CA_FILE (or `--endpoint`/`--token`/`--ca-file`) and print JSON.

use clap::Subcommand;
use computearbitrage_api::connect;
use computearbitrage_api::pb;
use computearbitrage_api::pb::admin_client::AdminClient;
use computearbitrage_api::pb::workloads_client::WorkloadsClient;

#[derive(Subcommand, Debug)]
pub enum WorkloadCommand {
    /// Show a workload.
    Get { id: String },
    /// Change what can change in place, outside Terraform: the next `terraform plan`
    /// shows the difference. Unnamed settings keep their current values.
    Update {
        id: String,
        /// Set a tag (repeatable): KEY=VALUE.
        #[arg(long = "tag", value_name = "KEY=VALUE")]
        tags: Vec<String>,
        /// Remove a tag (repeatable).
        #[arg(long = "remove-tag", value_name = "KEY")]
        remove_tags: Vec<String>,
        /// Set an environment variable (repeatable): NAME=VALUE.
        #[arg(long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Remove an environment variable (repeatable).
        #[arg(long = "remove-env", value_name = "NAME")]
        remove_env: Vec<String>,
        /// `migrate` or `terminate`.
        #[arg(long)]
        on_interruption: Option<String>,
        /// `keep` or `replace` (a workload that stays UNHEALTHY).
        #[arg(long)]
        on_unhealthy: Option<String>,
        /// Seconds UNHEALTHY before `replace` acts.
        #[arg(long)]
        replace_unhealthy_after: Option<u32>,
        /// `none` or `on_demand` (capacity when spot has none).
        #[arg(long)]
        fallback: Option<String>,
        /// Rebalance: move once another offer is this many percent cheaper (1 to 95).
        #[arg(long, value_name = "PERCENT")]
        rebalance_min_savings: Option<f64>,
        /// Rebalance: ... for this many seconds (0 to 604800).
        #[arg(long, value_name = "SECONDS")]
        rebalance_min_duration: Option<u32>,
        /// Stop rebalancing (remove the `rebalance` block).
        #[arg(long, conflicts_with_all = ["rebalance_min_savings", "rebalance_min_duration"])]
        no_rebalance: bool,
        /// The health check's path.
        #[arg(long)]
        health_path: Option<String>,
        /// Seconds between health checks.
        #[arg(long)]
        health_interval: Option<u32>,
        /// Storage quota in GB.
        #[arg(long)]
        storage_quota_gb: Option<u32>,
        /// Days storage is kept after the workload ends.
        #[arg(long)]
        storage_retention_days: Option<u32>,
        /// Seconds between periodic checkpoints; 0 stops them.
        #[arg(long)]
        checkpoint_interval: Option<u32>,
        /// Complete checkpoints kept.
        #[arg(long)]
        checkpoint_keep: Option<u32>,
        /// The signal sent on a notice (SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2).
        #[arg(long)]
        checkpoint_signal: Option<String>,
    },
    /// Terminate a workload (outside Terraform).
    Delete {
        id: String,
        #[arg(long, default_value = "deleted by an operator")]
        reason: String,
    },
    /// The workflow runs of a workload, with their step ledger.
    Runs { id: String },
    /// What the workload cost, segment by segment.
    Billing { id: String },
    /// Notifications sent about the workload.
    Notifications { id: String },
    /// The workload's recent output (stdout and stderr), as plain lines; `--follow`
    /// keeps printing new lines, across migrations, until interrupted.
    Logs {
        id: String,
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Open TCP connections through the router to the workload.
    Connections { id: String },
    /// Objects in the workload's storage, with its usage and quota.
    Objects {
        id: String,
        /// Only keys under this prefix of the namespace (`artifacts/`, `checkpoints/…/`).
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Download one object of the workload's storage (`artifacts/results/out.csv`).
    Download {
        id: String,
        key: String,
        /// Where to write it; `-` or absent: standard output.
        #[arg(long, short = 'o')]
        output: Option<std::path::PathBuf>,
    },
    /// Upload a file into the workload's storage (`state/config.json`); counts against
    /// its quota.
    Upload {
        id: String,
        key: String,
        file: std::path::PathBuf,
    },
    /// Run a command on the workload's instance, as the workload runs (its user,
    /// directory and environment): prints its output and exits with its exit code.
    /// `computearbitrage workload exec ID -- sh -c 'ls $CHECKPOINT_DIR'`.
    Exec {
        id: String,
        /// Seconds before the command is killed (at most 3600).
        #[arg(long, default_value_t = 60)]
        timeout: u32,
        /// Queue it and print the task without waiting for its result.
        #[arg(long)]
        no_wait: bool,
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Checkpoint the workload now (it needs storage), waiting for the result.
    Checkpoint {
        id: String,
        /// Seconds the checkpoint command may take.
        #[arg(long, default_value_t = 60)]
        timeout: u32,
    },
    /// Stop the workload: its notice signal, then a kill after --timeout seconds.
    Stop {
        id: String,
        #[arg(long, default_value_t = 60)]
        timeout: u32,
    },
    /// Freeze the workload and every process it started (SIGSTOP).
    Pause { id: String },
    /// Continue a paused workload (SIGCONT).
    Resume { id: String },
    /// The workload's operator tasks, oldest first.
    Tasks { id: String },
    /// One operator task.
    Task { task_id: String },
    /// Local driver: a spot interruption notice now, on the instance's metadata endpoint in
    /// its cloud's shape; the instance is reclaimed after --delay-ms (0: the service's
    /// `workloads.interruption_delay_ms`, by default the cloud's real notice window).
    Interrupt {
        id: String,
        #[arg(long, default_value_t = 0)]
        delay_ms: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Inspect and act on workloads.
    #[command(subcommand)]
    Workload(WorkloadCommand),
    /// List runs that exhausted their retries.
    DeadLetters,
    /// Replay a dead run from its first unfinished step.
    Replay { run_id: String },
    /// List operator tasks that failed every attempt or whose workload ended first.
    DeadTasks,
    /// Queue a dead operator task again, its attempts reset.
    ReplayTask { task_id: String },
    /// Set the tenant's notification webhook (empty URL removes it).
    Webhook { url: String, secret: String },
    /// Tenants (admin token).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// API tokens (admin token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The audit log: every write through the API and the token that made it, newest
    /// first.
    Audit {
        /// Another tenant's log, or `*` for every tenant's (admin token).
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant (or change its quota).
    Create {
        id: String,
        /// Active workloads it may have; the service's default when unset.
        #[arg(long)]
        max_workloads: Option<u32>,
    },
    List,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a token; it is printed once, only its hash is kept.
    Create {
        #[arg(long)]
        tenant: String,
        /// Comma-separated: read, write, admin (operator tenant only), route.
        #[arg(long)]
        scopes: String,
        #[arg(long, default_value = "")]
        label: String,
        /// Lifetime, such as `30d`, `12h`, `90m`; never expires when unset.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// Tokens of a tenant (`*` for every tenant); never the tokens themselves.
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Revoke a token by its id (`tok-…`).
    Revoke { id: String },
}

/// `30d`, `12h`, `90m`, `45s` → seconds.
fn lifetime(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a lifetime; write it like 30d, 12h, 90m or 45s"))?;
    let per = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => {
            return Err(format!(
                "{text:?} is not a lifetime; write it like 30d, 12h, 90m or 45s"
            ))
        }
    };
    Ok(n.saturating_mul(per))
}

pub struct Target {
    pub service: connect::Target,
    pub token: String,
}

/// `KEY=VALUE` → (key, value).
fn pair(text: &str, what: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not {what}=VALUE"))
}

fn print<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// An HTTP client for signed storage URLs: the system roots, plus the CA file the
/// service's own (local-backend) URLs may need.
fn storage_client(service: &connect::Target) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &service.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("cannot read the CA file {}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("the CA file {} is not PEM: {e}", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
}

/// What a refused storage request answered, without the URL (it is a credential).
async fn storage_refusal(response: reqwest::Response, what: &str, key: &str) -> String {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    format!("{what} of {key} refused ({status}): {}", body.trim())
}

async fn download(
    service: &connect::Target,
    url: &str,
    key: &str,
    output: Option<&std::path::Path>,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut response = storage_client(service)?
        .get(url)
        .send()
        .await
        .map_err(|e| format!("cannot download {key}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(storage_refusal(response, "the download", key).await);
    }
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin> = match output {
        Some(path) if path.as_os_str() != "-" => Box::new(
            tokio::fs::File::create(path)
                .await
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        _ => Box::new(tokio::io::stdout()),
    };
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the download of {key} broke off: {}", e.without_url()))?
    {
        sink.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {key}: {e}"))?;
    }
    sink.flush()
        .await
        .map_err(|e| format!("cannot write {key}: {e}"))
}

async fn upload(
    service: &connect::Target,
    url: &str,
    key: &str,
    file: &std::path::Path,
) -> Result<(), String> {
    let opened =
        std::fs::File::open(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let size = opened
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?
        .len();
    // Streamed, so an upload of any size is never read whole.
    let body = reqwest::Body::wrap_stream(computearbitrage_storage::chunks::file_chunks(
        opened,
        0..size,
    ));
    let response = storage_client(service)?
        .put(url)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("cannot upload {key}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(storage_refusal(response, "the upload", key).await);
    }
    Ok(())
}

type WorkloadsAuth =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Workloads = WorkloadsClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, WorkloadsAuth>,
>;

fn status_text(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

async fn queue_task(
    workloads: &mut Workloads,
    workload_id: String,
    kind: &str,
    command: Vec<String>,
    timeout_seconds: u32,
) -> Result<pb::Task, String> {
    workloads
        .create_task(pb::CreateTaskRequest {
            workload_id,
            kind: kind.into(),
            command,
            timeout_seconds,
        })
        .await
        .map(|r| r.into_inner())
        .map_err(status_text)
}

/// Polls a task until it is completed or dead.
async fn wait_for_task(workloads: &mut Workloads, task: pb::Task) -> Result<pb::Task, String> {
    let mut task = task;
    // Short first: most tasks finish within milliseconds of being queued.
    let mut delay = std::time::Duration::from_millis(10);
    while task.state != "COMPLETED" && task.state != "DEAD" {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_millis(200));
        task = workloads
            .get_task(pb::GetTaskRequest {
                id: task.id.clone(),
            })
            .await
            .map_err(status_text)?
            .into_inner();
    }
    Ok(task)
}

/// A finished task as the CLI's exit: its exit code, or the error of a dead one.
fn task_exit(task: &pb::Task) -> Result<i32, String> {
    match task.exit_code {
        Some(code) if task.state == "COMPLETED" => Ok(code),
        _ => Err(format!(
            "task {} is dead: {} (`computearbitrage replay-task {}` tries again)",
            task.id, task.error, task.id
        )),
    }
}

/// Runs one command; its exit code (an exec'd command's own), or what to print.
pub async fn run(target: Target, command: ClientCommand) -> Result<i32, String> {
    let channel = connect::endpoint(&target.service)?
        .connect()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the service at {}: {} Start it with `computearbitrage serve`, or pass --endpoint.",
                target.service.url,
                connect::explain_connect_error(&e, &target.service)
            )
        })?;
    let authorization: tonic::metadata::MetadataValue<_> = format!("Bearer {}", target.token)
        .parse()
        .map_err(|_| "the token cannot be sent in a header".to_string())?;
    let auth = move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", authorization.clone());
        Ok(request)
    };
    let boxed: WorkloadsAuth = Box::new(auth.clone());
    let mut workloads: Workloads = WorkloadsClient::with_interceptor(channel.clone(), boxed);
    let mut admin = AdminClient::with_interceptor(channel, auth);
    let fail = status_text;
    match command {
        ClientCommand::Workload(command) => match command {
            WorkloadCommand::Get { id } => print(
                &workloads
                    .get_workload(pb::GetWorkloadRequest { id })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Update {
                id,
                tags,
                remove_tags,
                env,
                remove_env,
                on_interruption,
                on_unhealthy,
                replace_unhealthy_after,
                fallback,
                rebalance_min_savings,
                rebalance_min_duration,
                no_rebalance,
                health_path,
                health_interval,
                storage_quota_gb,
                storage_retention_days,
                checkpoint_interval,
                checkpoint_keep,
                checkpoint_signal,
            } => {
                let current = workloads
                    .get_workload(pb::GetWorkloadRequest { id: id.clone() })
                    .await
                    .map_err(fail)?
                    .into_inner();
                let spec = current.spec.unwrap_or_default();
                let mut request = pb::UpdateWorkloadRequest {
                    id,
                    tags: spec.tags,
                    health_check: spec.health_check,
                    on_interruption: spec.on_interruption,
                    on_unhealthy: spec.on_unhealthy,
                    replace_unhealthy_after_seconds: spec.replace_unhealthy_after_seconds,
                    fallback: spec.fallback,
                    rebalance: spec.rebalance,
                    env: spec.env,
                    storage: spec.storage,
                    tcp_allowed_cidrs: spec.tcp_allowed_cidrs,
                    checkpoint: spec.checkpoint,
                };
                for text in &tags {
                    let (k, v) = pair(text, "KEY")?;
                    request.tags.insert(k, v);
                }
                for key in &remove_tags {
                    request.tags.remove(key);
                }
                for text in &env {
                    let (k, v) = pair(text, "NAME")?;
                    request.env.insert(k, v);
                }
                for key in &remove_env {
                    request.env.remove(key);
                }
                if let Some(choice) = on_interruption {
                    request.on_interruption = choice;
                }
                if let Some(choice) = on_unhealthy {
                    request.on_unhealthy = choice;
                }
                if let Some(seconds) = replace_unhealthy_after {
                    request.replace_unhealthy_after_seconds = seconds;
                }
                if let Some(choice) = fallback {
                    request.fallback = choice;
                }
                if no_rebalance {
                    request.rebalance = None;
                } else if rebalance_min_savings.is_some() || rebalance_min_duration.is_some() {
                    let rebalance = request.rebalance.get_or_insert_with(Default::default);
                    if let Some(percent) = rebalance_min_savings {
                        rebalance.min_savings_percent = percent;
                    }
                    if let Some(seconds) = rebalance_min_duration {
                        rebalance.min_duration_seconds = Some(seconds);
                    }
                }
                if health_path.is_some() || health_interval.is_some() {
                    let check = request.health_check.get_or_insert_with(Default::default);
                    if let Some(path) = health_path {
                        check.path = path;
                    }
                    if let Some(interval) = health_interval {
                        check.interval_seconds = interval;
                        // Let the service fit the default timeout to the new interval.
                        check.timeout_seconds = check.timeout_seconds.min(interval);
                    }
                }
                if storage_quota_gb.is_some() || storage_retention_days.is_some() {
                    let storage = request.storage.get_or_insert_with(Default::default);
                    if let Some(quota) = storage_quota_gb {
                        storage.quota_gb = quota;
                    }
                    if let Some(days) = storage_retention_days {
                        storage.retention_days = days;
                    }
                }
                if checkpoint_interval.is_some()
                    || checkpoint_keep.is_some()
                    || checkpoint_signal.is_some()
                {
                    let checkpoint = request.checkpoint.get_or_insert_with(Default::default);
                    if let Some(seconds) = checkpoint_interval {
                        checkpoint.interval_seconds = seconds;
                    }
                    if let Some(keep) = checkpoint_keep {
                        checkpoint.keep = keep;
                    }
                    if let Some(signal) = checkpoint_signal {
                        checkpoint.signal = signal;
                    }
                }
                print(
                    &workloads
                        .update_workload(request)
                        .await
                        .map_err(fail)?
                        .into_inner(),
                )
            }
            WorkloadCommand::Delete { id, reason } => print(
                &workloads
                    .delete_workload(pb::DeleteWorkloadRequest { id, reason })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Runs { id } => print(
                &workloads
                    .list_runs(pb::ListRunsRequest { workload_id: id })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Billing { id } => print(
                &workloads
                    .get_billing(pb::GetBillingRequest { workload_id: id })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Logs { id, follow } => {
                use std::io::Write;
                let mut after = 0;
                loop {
                    let page = workloads
                        .get_logs(pb::GetLogsRequest {
                            workload_id: id.clone(),
                            after_seq: after,
                            limit: 1000,
                        })
                        .await
                        .map_err(fail)?
                        .into_inner();
                    let mut out = std::io::stdout().lock();
                    if page.missed > 0 {
                        let _ = writeln!(out, "[{} earlier lines are no longer held]", page.missed);
                    }
                    for line in &page.lines {
                        let _ = writeln!(out, "{}", line.text);
                    }
                    let _ = out.flush();
                    drop(out);
                    let more = page.next_seq > after && page.lines.len() == 1000;
                    after = page.next_seq;
                    if more {
                        continue;
                    }
                    if !follow {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            WorkloadCommand::Notifications { id } => print(
                &workloads
                    .list_notifications(pb::ListNotificationsRequest { workload_id: id })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Connections { id } => print(
                &workloads
                    .list_connections(pb::ListConnectionsRequest { workload_id: id })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Objects { id, prefix } => print(
                &workloads
                    .list_objects(pb::ListObjectsRequest {
                        workload_id: id,
                        prefix,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Download { id, key, output } => {
                let signed = workloads
                    .sign_storage_url(pb::SignStorageUrlRequest {
                        workload_id: id,
                        key: key.clone(),
                        method: "GET".into(),
                        size_bytes: 0,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                download(&target.service, &signed.url, &key, output.as_deref()).await?
            }
            WorkloadCommand::Upload { id, key, file } => {
                let size = std::fs::metadata(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?
                    .len();
                let signed = workloads
                    .sign_storage_url(pb::SignStorageUrlRequest {
                        workload_id: id,
                        key: key.clone(),
                        method: "PUT".into(),
                        size_bytes: size,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner();
                upload(&target.service, &signed.url, &key, &file).await?;
                print(&serde_json::json!({ "key": key, "size_bytes": size }));
            }
            WorkloadCommand::Exec {
                id,
                timeout,
                no_wait,
                command,
            } => {
                let task = queue_task(&mut workloads, id, "exec", command, timeout).await?;
                if no_wait {
                    print(&task);
                    return Ok(0);
                }
                let task = wait_for_task(&mut workloads, task).await?;
                use std::io::Write;
                let mut out = std::io::stdout();
                let _ = out.write_all(task.output.as_bytes());
                let _ = out.flush();
                return task_exit(&task);
            }
            WorkloadCommand::Checkpoint { id, timeout } => {
                let task = queue_task(&mut workloads, id, "checkpoint", vec![], timeout).await?;
                let task = wait_for_task(&mut workloads, task).await?;
                print(&task);
                task_exit(&task)?;
            }
            WorkloadCommand::Stop { id, timeout } => {
                let task = queue_task(&mut workloads, id, "stop", vec![], timeout).await?;
                let task = wait_for_task(&mut workloads, task).await?;
                print(&task);
                task_exit(&task)?;
            }
            command @ (WorkloadCommand::Pause { .. } | WorkloadCommand::Resume { .. }) => {
                let (kind, id) = match command {
                    WorkloadCommand::Pause { id } => ("pause", id),
                    WorkloadCommand::Resume { id } => ("resume", id),
                    _ => unreachable!("matched above"),
                };
                let task = queue_task(&mut workloads, id, kind, vec![], 0).await?;
                let task = wait_for_task(&mut workloads, task).await?;
                print(&task);
                task_exit(&task)?;
            }
            WorkloadCommand::Tasks { id } => print(
                &workloads
                    .list_tasks(pb::ListTasksRequest { workload_id: id })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Task { task_id } => print(
                &workloads
                    .get_task(pb::GetTaskRequest { id: task_id })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
            WorkloadCommand::Interrupt { id, delay_ms } => print(
                &admin
                    .inject_interruption(pb::InjectInterruptionRequest {
                        workload_id: id,
                        delay_ms,
                    })
                    .await
                    .map_err(fail)?
                    .into_inner(),
            ),
        },
        ClientCommand::DeadLetters => print(
            &workloads
                .list_dead_letters(pb::ListDeadLettersRequest {})
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::Replay { run_id } => print(
            &workloads
                .replay_dead_letter(pb::ReplayDeadLetterRequest { run_id })
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::DeadTasks => print(
            &workloads
                .list_dead_tasks(pb::ListDeadTasksRequest {})
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::ReplayTask { task_id } => print(
            &workloads
                .replay_task(pb::ReplayTaskRequest { id: task_id })
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::Tenant(TenantCommand::Create { id, max_workloads }) => print(
            &admin
                .create_tenant(pb::CreateTenantRequest {
                    id,
                    max_concurrent_workloads: max_workloads,
                })
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::Tenant(TenantCommand::List) => print(
            &admin
                .list_tenants(pb::ListTenantsRequest {})
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::Token(TokenCommand::Create {
            tenant,
            scopes,
            label,
            expires_in,
        }) => print(
            &admin
                .create_token(pb::CreateTokenRequest {
                    tenant,
                    scopes,
                    label,
                    expires_in_seconds: expires_in
                        .as_deref()
                        .map(lifetime)
                        .transpose()?
                        .unwrap_or(0),
                })
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::Token(TokenCommand::List { tenant }) => print(
            &admin
                .list_tokens(pb::ListTokensRequest { tenant })
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::Token(TokenCommand::Revoke { id }) => print(
            &admin
                .revoke_token(pb::RevokeTokenRequest { id })
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::Audit { tenant, limit } => print(
            &admin
                .list_audit(pb::ListAuditRequest { tenant, limit })
                .await
                .map_err(fail)?
                .into_inner(),
        ),
        ClientCommand::Webhook { url, secret } => {
            admin
                .set_webhook(pb::SetWebhookRequest { url, secret })
                .await
                .map_err(fail)?;
            println!("{{}}");
        }
    }
    Ok(0)
}
