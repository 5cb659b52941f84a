//! The operator commands of `computearbitrage` that talk to a running service:
//! `workload get|delete|runs|billing|notifications|interrupt`, `dead-letters`,
//! `replay`, `webhook`. They read COMPUTEARBITRAGE_ENDPOINT and COMPUTEARBITRAGE_TOKEN
//! (or `--endpoint`/`--token`) and print JSON.

use clap::Subcommand;
use computearbitrage_api::pb;
use computearbitrage_api::pb::admin_client::AdminClient;
use computearbitrage_api::pb::workloads_client::WorkloadsClient;
use tonic::transport::Channel;

#[derive(Subcommand, Debug)]
pub enum WorkloadCommand {
    /// Show a workload.
    Get { id: String },
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
    pub endpoint: String,
    pub token: String,
}

fn print<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// Runs one command; the error is what to print.
pub async fn run(target: Target, command: ClientCommand) -> Result<(), String> {
    let channel = Channel::from_shared(target.endpoint.clone())
        .map_err(|e| format!("{:?} is not a URL: {e}", target.endpoint))?
        .connect()
        .await
        .map_err(|e| {
            format!(
                "cannot reach the service at {}: {e}; start it with `computearbitrage serve`",
                target.endpoint
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
