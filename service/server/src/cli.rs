//! The operator commands of `computearbitrage` that talk to a running service:
//! `workload get|update|delete|runs|billing|notifications|interrupt`, `dead-letters`,
//! `replay`, `webhook`. They read COMPUTEARBITRAGE_ENDPOINT, COMPUTEARBITRAGE_TOKEN and
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
    /// Local driver: a spot interruption notice now, the kill after --delay-ms.
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
    /// Set the tenant's notification webhook (empty URL removes it).
    Webhook { url: String, secret: String },
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

/// Runs one command; the error is what to print.
pub async fn run(target: Target, command: ClientCommand) -> Result<(), String> {
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
    let mut workloads = WorkloadsClient::with_interceptor(channel.clone(), auth.clone());
    let mut admin = AdminClient::with_interceptor(channel, auth);
    let fail = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
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
                health_path,
                health_interval,
                storage_quota_gb,
                storage_retention_days,
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
                    env: spec.env,
                    storage: spec.storage,
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
                print(&workloads.update_workload(request).await.map_err(fail)?.into_inner())
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
            WorkloadCommand::Notifications { id } => print(
                &workloads
                    .list_notifications(pb::ListNotificationsRequest { workload_id: id })
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
        ClientCommand::Webhook { url, secret } => {
            admin
                .set_webhook(pb::SetWebhookRequest { url, secret })
                .await
                .map_err(fail)?;
            println!("{{}}");
        }
    }
    Ok(())
}
