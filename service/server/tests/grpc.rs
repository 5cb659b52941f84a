//! The real `computearbitrage` binary, spoken to over gRPC on loopback.

use computearbitrage_api::pb::pricing_client::PricingClient;
use computearbitrage_api::pb::system_client::SystemClient;
use computearbitrage_api::{pb, ERROR_FIELD_METADATA};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;

const TOKEN: &str = "integration-test-token-0123456789";

struct Service {
    child: Child,
    endpoint: String,
}

impl Service {
    fn start(data_dir: &Path) -> Service {
        let mut child = Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("COMPUTEARBITRAGE_BOOTSTRAP_TOKEN", TOKEN)
            .env("COMPUTEARBITRAGE_SHUTDOWN_GRACE_SECONDS", "1")
            .env("COMPUTEARBITRAGE_ROUTER__LISTEN", "127.0.0.1:0")
            .env("COMPUTEARBITRAGE_ROUTER__METRICS_LISTEN", "")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("service starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let endpoint = loop {
            let line = lines.next().expect("service printed its endpoint").unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_string();
            }
        };
        Service { child, endpoint }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill().unwrap();
        panic!("service did not stop within 10 s of SIGTERM");
    }
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn serves_authenticated_pricing_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path());
    let channel = service.channel().await;
    let mut pricing = PricingClient::new(channel.clone());
    let mut system = SystemClient::new(channel);

    // No token, and a wrong token: rejected without echoing it.
    let err = pricing
        .list_offers(pb::ListOffersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let wrong = "definitely-not-the-token-42";
    let err = pricing
        .list_offers(authed(pb::ListOffersRequest::default(), wrong))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    assert!(!err.message().contains(wrong));

    // Health and version.
    let health = system
        .health(authed(pb::HealthRequest {}, TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, "ok");
    assert_eq!(health.catalog_offers, 9_820);
    assert_eq!(health.collectors[0].source, "snapshot");
    assert!(!health.collectors[0].last_success_at.is_empty());
    let version = system
        .version(authed(pb::VersionRequest {}, TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.tenant, "default");
    assert_eq!(version.api_version, "computearbitrage.v1");

    // Paging returns every matching offer once, in order.
    let filter = pb::OfferFilter {
        clouds: vec!["azure".into()],
        ..Default::default()
    };
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = pricing
            .list_offers(authed(
                pb::ListOffersRequest {
                    filter: Some(filter.clone()),
                    page_size: 700,
                    page_token: token.clone(),
                },
                TOKEN,
            ))
            .await
            .unwrap()
            .into_inner();
        all.extend(page.offers);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(all.len(), 1_588, "azure rows with a spot price");
    assert!(all.windows(2).all(|w| w[0].spot_price <= w[1].spot_price));

    // Invalid input: INVALID_ARGUMENT naming the field.
    let err = pricing
        .list_offers(authed(
            pb::ListOffersRequest {
                filter: Some(pb::OfferFilter {
                    clouds: vec!["awz".into()],
                    ..Default::default()
                }),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        err.metadata()
            .get(ERROR_FIELD_METADATA)
            .unwrap()
            .to_str()
            .unwrap(),
        "filter.clouds[0]"
    );
    assert!(err.message().contains("did you mean \"aws\"?"));
    let err = pricing
        .list_offers(authed(
            pb::ListOffersRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("start the listing again"));

    // Nothing matches: FAILED_PRECONDITION with the explanation.
    let err = pricing
        .find_placement(authed(
            pb::FindPlacementRequest {
                requirements: Some(pb::Requirements {
                    gpu_name: "B200".into(),
                    ..Default::default()
                }),
                alternatives: 3,
            },
            TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(
        err.message()
            .contains("gpu_name = \"B200\" excluded all 9,820 offers"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("GPUs in the catalog: "),
        "{}",
        err.message()
    );

    let status = service.stop();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");

    // A restart serves the stored catalog and keeps the token.
    let service = Service::start(dir.path());
    let mut pricing = PricingClient::new(service.channel().await);
    let placement = pricing
        .find_placement(authed(
            pb::FindPlacementRequest {
                requirements: Some(pb::Requirements {
                    min_vcpus: Some(4.0),
                    min_memory_gib: Some(16.0),
                    ..Default::default()
                }),
                alternatives: 2,
            },
            TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(placement.alternatives.len(), 2);
    let best = placement.best.unwrap().offer.unwrap();
    assert!(best.vcpus >= 4.0 && best.memory_gib >= 16.0);
    assert!(service.stop().success());
}

#[test]
fn a_bad_config_value_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .env(
            "COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS",
            "often",
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`pricing.snapshot.interval_seconds`"),
        "{stderr}"
    );
    assert!(
        stderr.contains("COMPUTEARBITRAGE_PRICING__SNAPSHOT__INTERVAL_SECONDS"),
        "{stderr}"
    );
}

#[test]
fn first_start_without_bootstrap_prints_a_token_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .env_remove("COMPUTEARBITRAGE_BOOTSTRAP_TOKEN")
            .env("COMPUTEARBITRAGE_ROUTER__LISTEN", "127.0.0.1:0")
            .env("COMPUTEARBITRAGE_ROUTER__METRICS_LISTEN", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut banner = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let done = line.contains("COMPUTEARBITRAGE_TOKEN");
            banner.push(line);
            if done {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        banner.join("\n")
    };
    let first = run();
    let token = std::fs::read_to_string(dir.path().join("admin-token")).unwrap();
    assert!(first.contains(token.trim()), "{first}");
    assert!(first.contains("admin-token"));
    let second = run();
    assert!(
        !second.contains(token.trim()),
        "printed only once: {second}"
    );
}
