//! `computearbitrage-agent watch --cloud aws|gcp|azure [--metadata-url URL]
//! [--resource VM_NAME] [--poll-ms MS]`: prints each notice as a JSON line and exits 0
//! after the first interruption notice (a rebalance recommendation is printed and
//! watching goes on). Exit 2 on bad arguments.

use computearbitrage_agent::notice::Signal;
use computearbitrage_agent::watch::{Cloud, Watcher};
use std::time::Duration;

const USAGE: &str = "usage: computearbitrage-agent watch --cloud aws|gcp|azure [--metadata-url URL] [--resource VM_NAME] [--poll-ms MS]";

fn fail(message: &str) -> ! {
    eprintln!("computearbitrage-agent: {message}\n{USAGE}");
    std::process::exit(2)
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
    if args.next().as_deref() != Some("watch") {
        fail("the only command is `watch`");
    }
    let (mut cloud, mut url, mut resource, mut poll_ms) = (
        None,
        "http://169.254.169.254".to_string(),
        String::new(),
        1000u64,
    );
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--cloud" => {
                let text = value();
                cloud = Some(Cloud::parse(&text).unwrap_or_else(|| {
                    fail(&format!("--cloud {text:?} is not aws, gcp or azure"))
                }));
            }
            "--metadata-url" => url = value(),
            "--resource" => resource = value(),
            "--poll-ms" => {
                let text = value();
                poll_ms = text.parse().ok().filter(|ms| *ms > 0).unwrap_or_else(|| {
                    fail(&format!("--poll-ms {text:?} is not a positive number"))
                });
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    let cloud = cloud.unwrap_or_else(|| fail("--cloud is required"));
    if cloud == Cloud::Azure && resource.is_empty() {
        fail("--resource (this VM's name in Scheduled Events) is required for azure");
    }
    let mut watcher = Watcher::new(cloud, &url, &resource, Duration::from_millis(poll_ms));
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
