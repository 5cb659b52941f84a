//! `computearbitrage-agent`, the program on every instance:
//!
//! - `run --service URL --credential-file FILE --instance-id ID --cloud aws|gcp|azure
//!   --work-dir DIR --port N [--tcp-port N] [--owner UID:GID] [--metadata-url URL]
//!   [--resource VM_NAME] [--poll-ms MS] [--service-advertised URL]`: registers,
//!   restores, runs the workload and checkpoints it on a notice. `--service-advertised`
//!   is where the service's signed URLs say it is, when this machine reaches it at
//!   `--service` instead (the local driver's per-instance network). Exits with the workload's code, 0 once checkpointed
//!   after a notice, 70 when it cannot restore or start, 75 when the service refuses
//!   this instance.
//! - `watch --cloud aws|gcp|azure [--metadata-url URL] [--resource VM_NAME] [--poll-ms
//!   MS]`: prints each notice as a JSON line and exits 0 after the first interruption
//!   notice (a rebalance recommendation is printed and watching goes on).
//!
//! - `snapshot --dir DIR --name MS --trigger periodic|task`: the agent's own helper,
//!   started by `run` as the workload's user to copy `$CHECKPOINT_DIR` while the
//!   workload runs (a JSON line protocol on stdin and stdout; see `snapshot.rs`).
//!
//! Exit 2 on bad arguments.

use computearbitrage_agent::notice::Signal;
use computearbitrage_agent::run::{run, RunArgs};
use computearbitrage_agent::watch::{Cloud, Watcher};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "usage: computearbitrage-agent run --service URL --credential-file FILE --instance-id ID --cloud aws|gcp|azure --work-dir DIR --port N [--tcp-port N] [--owner UID:GID] [--metadata-url URL] [--resource VM_NAME] [--poll-ms MS] [--service-advertised URL]
       computearbitrage-agent watch --cloud aws|gcp|azure [--metadata-url URL] [--resource VM_NAME] [--poll-ms MS]";

fn fail(message: &str) -> ! {
    eprintln!("computearbitrage-agent: {message}\n{USAGE}");
    std::process::exit(2)
}

/// `--flag value` and `--flag=value` pairs; every flag takes a value.
fn flags(args: impl Iterator<Item = String>, known: &[&str]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), v.to_string()),
            _ => {
                let value = args
                    .next()
                    .unwrap_or_else(|| fail(&format!("{arg} needs a value")));
                (arg, value)
            }
        };
        if !known.contains(&flag.as_str()) {
            fail(&format!("unknown argument {flag:?}"));
        }
        out.insert(flag, value);
    }
    out
}

fn cloud_of(flags: &HashMap<String, String>) -> Cloud {
    let text = flags
        .get("--cloud")
        .unwrap_or_else(|| fail("--cloud is required"));
    Cloud::parse(text)
        .unwrap_or_else(|| fail(&format!("--cloud {text:?} is not aws, gcp or azure")))
}

fn poll_of(flags: &HashMap<String, String>) -> Duration {
    let ms = match flags.get("--poll-ms") {
        None => 1000,
        Some(text) => text
            .parse()
            .ok()
            .filter(|ms| *ms > 0)
            .unwrap_or_else(|| fail(&format!("--poll-ms {text:?} is not a positive number"))),
    };
    Duration::from_millis(ms)
}

fn required<'a>(flags: &'a HashMap<String, String>, name: &str) -> &'a str {
    flags
        .get(name)
        .map(String::as_str)
        .unwrap_or_else(|| fail(&format!("{name} is required")))
}

fn port(text: &str, name: &str) -> u16 {
    text.parse()
        .ok()
        .filter(|p| *p > 0)
        .unwrap_or_else(|| fail(&format!("{name} {text:?} is not a port")))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let command = args.next();
    match command.as_deref() {
        Some("run") => {
            let flags = flags(
                args,
                &[
                    "--service",
                    "--service-advertised",
                    "--credential-file",
                    "--instance-id",
                    "--cloud",
                    "--metadata-url",
                    "--resource",
                    "--work-dir",
                    "--port",
                    "--tcp-port",
                    "--owner",
                    "--poll-ms",
                ],
            );
            let cloud = cloud_of(&flags);
            let instance_id = required(&flags, "--instance-id").to_string();
            let owner = flags.get("--owner").map(|text| {
                text.split_once(':')
                    .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)))
                    .unwrap_or_else(|| fail(&format!("--owner {text:?} is not UID:GID")))
            });
            let exit = run(RunArgs {
                service_url: required(&flags, "--service").to_string(),
                service_advertised: flags.get("--service-advertised").cloned(),
                credential_file: PathBuf::from(required(&flags, "--credential-file")),
                cloud,
                metadata_url: flags
                    .get("--metadata-url")
                    .cloned()
                    .unwrap_or_else(|| "http://169.254.169.254".into()),
                resource: flags
                    .get("--resource")
                    .cloned()
                    .unwrap_or_else(|| instance_id.clone()),
                instance_id,
                work_dir: PathBuf::from(required(&flags, "--work-dir")),
                port: port(required(&flags, "--port"), "--port"),
                tcp_port: flags.get("--tcp-port").map(|t| port(t, "--tcp-port")),
                owner,
                poll: poll_of(&flags),
                local_api: None,
            })
            .await;
            match &exit {
                computearbitrage_agent::run::Exit::Refused(m)
                | computearbitrage_agent::run::Exit::Failed(m) => {
                    eprintln!("computearbitrage-agent: {m}")
                }
                _ => {}
            }
            std::process::exit(exit.code());
        }
        Some("watch") => {
            let flags = flags(
                args,
                &["--cloud", "--metadata-url", "--resource", "--poll-ms"],
            );
            let cloud = cloud_of(&flags);
            let resource = flags.get("--resource").cloned().unwrap_or_default();
            if cloud == Cloud::Azure && resource.is_empty() {
                fail("--resource (this VM's name in Scheduled Events) is required for azure");
            }
            let url = flags
                .get("--metadata-url")
                .cloned()
                .unwrap_or_else(|| "http://169.254.169.254".into());
            let mut watcher = Watcher::new(cloud, &url, &resource, poll_of(&flags));
            loop {
                let notice = watcher.next().await;
                println!(
                    "{}",
                    serde_json::json!({
                        "signal": match notice.signal { Signal::Interruption => "interruption", Signal::Rebalance => "rebalance" },
                        "action": notice.action,
                        "deadline": notice.deadline,
                        "event_id": notice.event_id,
                    })
                );
                if notice.signal == Signal::Interruption {
                    return;
                }
            }
        }
        Some("snapshot") => {
            let flags = flags(args, &["--dir", "--name", "--trigger"]);
            let code = computearbitrage_agent::snapshot::child_main(
                std::path::Path::new(required(&flags, "--dir")),
                required(&flags, "--name"),
                required(&flags, "--trigger"),
            )
            .await;
            std::process::exit(code);
        }
        _ => fail("the commands are `run`, `watch` and `snapshot`"),
    }
}
