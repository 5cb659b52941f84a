//! The watchers against fake metadata endpoints answering in each cloud's documented
//! shape (the payloads are the real ones in `../shared/reference/cloud-api/`): AWS
//! IMDSv2 with its session token, GCP's hanging GET, Azure Scheduled Events and its
//! approval. Real sockets, real HTTP.

use bytes::Bytes;
use computearbitrage_agent::notice::Signal;
use computearbitrage_agent::watch::{Cloud, Watcher};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/reference/cloud-api"
);

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}")).unwrap()
}

/// What the fake saw: method, path and query, and the headers that matter.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
}

type Handler =
    Arc<dyn Fn(Seen) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync>;

async fn serve(handler: Handler, log: Arc<Mutex<Vec<Seen>>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (handler, log) = (handler.clone(), log.clone());
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let (handler, log) = (handler.clone(), log.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let seen = Seen {
                                method: parts.method.to_string(),
                                uri: parts.uri.to_string(),
                                headers: parts
                                    .headers
                                    .iter()
                                    .map(|(k, v)| {
                                        (k.to_string(), v.to_str().unwrap_or("").to_string())
                                    })
                                    .collect(),
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            log.lock().unwrap().push(seen.clone());
                            Ok::<_, std::convert::Infallible>(handler(seen).await)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    base
}

fn answer(status: u16, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Default)]
struct Imds {
    token: String,
    tokens_issued: u32,
    action: Option<String>,
    rebalance: Option<String>,
}

#[tokio::test]
async fn aws_imdsv2_rebalance_then_interruption_with_a_token_that_expires() {
    let state = Arc::new(Mutex::new(Imds::default()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = state.clone();
    let handler: Handler = Arc::new(move |seen: Seen| {
        let state = shared.clone();
        Box::pin(async move {
            let mut s = state.lock().unwrap();
            if seen.method == "PUT" && seen.uri == "/latest/api/token" {
                if header(&seen, "X-aws-ec2-metadata-token-ttl-seconds").is_none() {
                    return answer(400, "");
                }
                s.tokens_issued += 1;
                s.token = format!("token-{}", s.tokens_issued);
                return answer(200, &s.token.clone());
            }
            // IMDSv2 only: no token, or an old one, is 401.
            if header(&seen, "X-aws-ec2-metadata-token") != Some(s.token.as_str())
                || s.token.is_empty()
            {
                return answer(401, "");
            }
            match seen.uri.as_str() {
                "/latest/meta-data/spot/instance-action" => match &s.action {
                    Some(body) => answer(200, body),
                    None => answer(404, "<html>Not Found</html>"),
                },
                "/latest/meta-data/events/recommendations/rebalance" => match &s.rebalance {
                    Some(body) => answer(200, body),
                    None => answer(404, ""),
                },
                _ => answer(404, ""),
            }
        })
    });
    let base = serve(handler, log.clone()).await;
    let mut watcher = Watcher::new(Cloud::Aws, &base, "", Duration::from_millis(20));

    // Nothing yet: the watcher keeps polling.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watcher.next())
            .await
            .is_err()
    );
    state.lock().unwrap().rebalance =
        Some(fixture("aws/imds/events-recommendations-rebalance.json"));
    let rebalance = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    assert_eq!(
        (rebalance.signal, rebalance.deadline),
        (Signal::Rebalance, None)
    );
    let after_rebalance = log.lock().unwrap().len();

    // The session token is replaced under the watcher, then the notice comes.
    {
        let mut s = state.lock().unwrap();
        s.token = "rotated-away".into();
        s.action = Some(fixture("aws/imds/spot-instance-action.terminate.json"));
    }
    let notice = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    assert_eq!(notice.signal, Signal::Interruption);
    assert_eq!(notice.action, "terminate");
    assert_eq!(notice.deadline, Some(1_505_722_920));
    assert!(
        state.lock().unwrap().tokens_issued >= 2,
        "the watcher fetched a new token after a 401"
    );
    // The rebalance recommendation was reported once, not asked for again.
    let log = log.lock().unwrap();
    assert!(
        !log[after_rebalance..]
            .iter()
            .any(|s| s.uri.ends_with("/rebalance")),
        "{:?}",
        &log[after_rebalance..]
    );
    // Every metadata read carried a session token (IMDSv2).
    assert!(log.iter().filter(|s| s.method == "GET").all(|s| header(
        s,
        "X-aws-ec2-metadata-token"
    )
    .is_some()));
}

#[tokio::test]
async fn gcp_hanging_get_returns_when_preempted_turns_true() {
    let (flip, flipped) = tokio::sync::watch::channel(false);
    let log = Arc::new(Mutex::new(Vec::new()));
    let handler: Handler = Arc::new(move |seen: Seen| {
        let mut flipped = flipped.clone();
        Box::pin(async move {
            if header(&seen, "Metadata-Flavor") != Some("Google") {
                return answer(403, "Missing Metadata-Flavor:Google header.");
            }
            let path = seen.uri.split('?').next().unwrap_or_default();
            if path != "/computeMetadata/v1/instance/preempted" {
                return answer(404, "");
            }
            // As the real server: a hanging GET waits for a value other than the one
            // `last_etag` names, and without `last_etag` for the next change.
            let waiting = seen.uri.contains("wait_for_change=true")
                && !(seen.uri.contains("last_etag=etag-false") && *flipped.borrow());
            if waiting && !*flipped.borrow() {
                // Held open until the value changes (or the test ends).
                let _ = tokio::time::timeout(Duration::from_secs(30), flipped.changed()).await;
            }
            let value = if *flipped.borrow() { "TRUE" } else { "FALSE" };
            Response::builder()
                .status(200)
                .header("Metadata-Flavor", "Google")
                .header(
                    "ETag",
                    if value == "TRUE" {
                        "etag-true"
                    } else {
                        "etag-false"
                    },
                )
                .body(Full::new(Bytes::from(value)))
                .unwrap()
        })
    });
    let base = serve(handler, log.clone()).await;
    let mut watcher = Watcher::new(Cloud::Gcp, &base, "", Duration::from_millis(20));
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _ = flip.send(true);
    });
    let notice = tokio::time::timeout(Duration::from_secs(10), watcher.next())
        .await
        .unwrap();
    assert_eq!(
        (notice.signal, notice.action.as_str()),
        (Signal::Interruption, "preempted")
    );
    let deadline = notice.deadline.unwrap();
    assert!(
        (started + 30..=started + 32).contains(&deadline),
        "{deadline} vs {started}"
    );
    // The first GET was a plain read (so a preemption already under way is seen at
    // once); later ones waited on the last etag.
    let log = log.lock().unwrap();
    assert!(log.len() >= 2, "{log:?}");
    assert!(!log[0].uri.contains("wait_for_change"), "{:?}", log[0].uri);
    assert!(
        log[1].uri.contains("last_etag=etag-false"),
        "{:?}",
        log[1].uri
    );
    assert!(
        log.len() < 10,
        "a hanging GET, not a busy poll: {} requests",
        log.len()
    );
}

#[tokio::test]
async fn a_server_that_is_not_gcp_metadata_gives_no_notice() {
    let handler: Handler = Arc::new(|_seen: Seen| Box::pin(async { answer(200, "TRUE") }));
    let base = serve(handler, Arc::new(Mutex::new(Vec::new()))).await;
    let mut watcher = Watcher::new(Cloud::Gcp, &base, "", Duration::from_millis(20));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), watcher.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn azure_preempt_for_this_vm_is_noticed_once_and_approved() {
    let document = Arc::new(Mutex::new(
        r#"{"DocumentIncarnation": 0, "Events": []}"#.to_string(),
    ));
    let log = Arc::new(Mutex::new(Vec::new()));
    let shared = document.clone();
    let handler: Handler = Arc::new(move |seen: Seen| {
        let document = shared.clone();
        Box::pin(async move {
            if header(&seen, "Metadata") != Some("true") {
                return answer(400, "Bad request. Required metadata header not specified");
            }
            if !seen
                .uri
                .starts_with("/metadata/scheduledevents?api-version=")
            {
                return answer(404, "");
            }
            if seen.method == "POST" {
                return answer(200, "");
            }
            answer(200, &document.lock().unwrap().clone())
        })
    });
    let base = serve(handler, log.clone()).await;
    let mut watcher = Watcher::new(Cloud::Azure, &base, "vm-spot", Duration::from_millis(20));
    // An event for another VM first: not ours.
    let real = fixture("azure/scheduled-events/scheduledevents.preempt.mspnp-readme-excerpt.json");
    *document.lock().unwrap() = real.replace("\"vm-spot\"", "\"vm-other\"");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watcher.next())
            .await
            .is_err()
    );
    *document.lock().unwrap() = real;
    let notice = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    assert_eq!(notice.action, "Preempt");
    assert_eq!(
        notice.event_id.as_deref(),
        Some("C1BF8322-4CBF-4FC4-9C45-B40CF3106D0E")
    );
    // The same event is not reported twice.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watcher.next())
            .await
            .is_err()
    );

    watcher.approve(&notice).await.unwrap();
    let log = log.lock().unwrap();
    let post = log
        .iter()
        .find(|s| s.method == "POST")
        .expect("StartRequests was posted");
    let body: serde_json::Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"StartRequests": [{"EventId": "C1BF8322-4CBF-4FC4-9C45-B40CF3106D0E"}]})
    );
    assert!(log.iter().all(|s| s.uri.contains("api-version=2020-07-01")));
    let _ = StatusCode::OK;
}

#[tokio::test]
async fn the_binary_prints_the_notice_and_exits() {
    let handler: Handler = Arc::new(|seen: Seen| {
        Box::pin(async move {
            match (seen.method.as_str(), seen.uri.as_str()) {
                ("PUT", "/latest/api/token") => answer(200, "t"),
                ("GET", "/latest/meta-data/spot/instance-action") => answer(
                    200,
                    &fixture("aws/imds/spot-instance-action.terminate.json"),
                ),
                _ => answer(404, ""),
            }
        })
    });
    let base = serve(handler, Arc::new(Mutex::new(Vec::new()))).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_computearbitrage-agent"))
        .args([
            "watch",
            "--cloud",
            "aws",
            "--metadata-url",
            &base,
            "--poll-ms",
            "50",
        ])
        .output();
    let output = tokio::time::timeout(Duration::from_secs(20), output)
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        line,
        serde_json::json!({"signal": "interruption", "action": "terminate", "deadline": 1_505_722_920, "event_id": null})
    );
    for bad in [
        &["watch"][..],
        &["watch", "--cloud", "ibm"],
        &["watch", "--cloud", "azure"],
        &["run"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_computearbitrage-agent"))
            .args(bad)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("usage:"),
            "{bad:?}"
        );
    }
}
