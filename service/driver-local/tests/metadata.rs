//! The local metadata endpoints against the agent's own `Watcher`, over real sockets:
//! each cloud's interruption reaches the agent with the raised deadline, Azure's
//! approval reaches the server, the endpoints refuse what the real ones refuse, and a
//! server restarted on its port serves again. Shapes are compared with the reference
//! payloads in `../shared/reference/cloud-api/`.

use computearbitrage_agent::notice::Signal;
use computearbitrage_agent::watch::{Cloud, Watcher};
use computearbitrage_driver_local::metadata::{MetadataCloud, MetadataServer};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/reference/cloud-api"
);

fn fixture(path: &str) -> String {
    std::fs::read_to_string(format!("{FIXTURES}/{path}")).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Answer {
    status: u16,
    headers: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// One HTTP/1.1 request on its own connection.
async fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    Answer {
        status: status_line.split(' ').nth(1).unwrap().parse().unwrap(),
        headers: headers.to_string(),
        body: body.to_string(),
    }
}

async fn aws_token(port: u16) -> String {
    let answer = http(
        port,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
        "",
    )
    .await;
    assert_eq!(answer.status, 200);
    answer.body
}

/// Raises an interruption after ~200 ms, `window` from then; gives the deadline.
fn raise_soon(server: &MetadataServer, window: Duration) -> tokio::task::JoinHandle<i64> {
    let server = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let deadline = now() + window.as_secs() as i64;
        server.raise_interruption(deadline);
        deadline
    })
}

#[tokio::test]
async fn aws_interruption_reaches_the_agent_with_its_deadline() {
    let cloud = MetadataCloud::Aws;
    let server = MetadataServer::start(cloud, "i-0123456789abcdef0", "vm", 0)
        .await
        .unwrap();
    let mut watcher = Watcher::new(Cloud::Aws, &server.url(), "", Duration::from_millis(20));
    let raised = raise_soon(&server, cloud.notice_window());
    let notice = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    let deadline = raised.await.unwrap();
    assert_eq!(
        (notice.signal, notice.action.as_str(), notice.deadline),
        (Signal::Interruption, "terminate", Some(deadline))
    );
}

#[tokio::test]
async fn aws_rebalance_is_seen_as_a_rebalance() {
    let server = MetadataServer::start(MetadataCloud::Aws, "i-1", "vm", 0)
        .await
        .unwrap();
    let mut watcher = Watcher::new(Cloud::Aws, &server.url(), "", Duration::from_millis(20));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watcher.next())
            .await
            .is_err()
    );
    assert!(server.raise_rebalance());
    let notice = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    assert_eq!((notice.signal, notice.deadline), (Signal::Rebalance, None));
    assert!(!server.approved());
}

#[tokio::test]
async fn aws_imdsv2_tokens_and_the_reference_shapes() {
    let server = MetadataServer::start(MetadataCloud::Aws, "i-0123456789abcdef0", "vm", 0)
        .await
        .unwrap();
    let port = server.port();
    // No token, a made-up token: 401, whatever the path.
    for headers in [&[][..], &[("X-aws-ec2-metadata-token", "guess")]] {
        for path in ["/latest/meta-data/instance-id", "/latest/meta-data/nothing"] {
            assert_eq!(http(port, "GET", path, headers, "").await.status, 401);
        }
    }
    // The TTL header is required, 1..=21600.
    for ttl in [None, Some("0"), Some("21601"), Some("six hours")] {
        let headers: Vec<_> = ttl
            .map(|t| ("X-aws-ec2-metadata-token-ttl-seconds", t))
            .into_iter()
            .collect();
        let answer = http(port, "PUT", "/latest/api/token", &headers, "").await;
        assert_eq!(answer.status, 400, "{ttl:?}");
    }
    let token = aws_token(port).await;
    let with = [("X-aws-ec2-metadata-token", token.as_str())];
    let id = http(port, "GET", "/latest/meta-data/instance-id", &with, "").await;
    assert_eq!((id.status, id.body.as_str()), (200, "i-0123456789abcdef0"));
    for path in [
        "/latest/meta-data/spot/instance-action",
        "/latest/meta-data/events/recommendations/rebalance",
        "/latest/meta-data/nothing",
    ] {
        assert_eq!(
            http(port, "GET", path, &with, "").await.status,
            404,
            "{path}"
        );
    }
    // The reference's own instant gives the reference's own bytes.
    server.raise_interruption(1_505_722_920);
    let action = http(
        port,
        "GET",
        "/latest/meta-data/spot/instance-action",
        &with,
        "",
    )
    .await;
    assert_eq!(action.status, 200);
    assert_eq!(
        action.body,
        fixture("aws/imds/spot-instance-action.terminate.json").trim()
    );
    let time = http(
        port,
        "GET",
        "/latest/meta-data/spot/termination-time",
        &with,
        "",
    )
    .await;
    assert_eq!(time.body, "2017-09-18T08:22:00Z");
    server.raise_rebalance();
    let rebalance = http(
        port,
        "GET",
        "/latest/meta-data/events/recommendations/rebalance",
        &with,
        "",
    )
    .await;
    let parsed: serde_json::Value = serde_json::from_str(&rebalance.body).unwrap();
    let notice_time = parsed["noticeTime"].as_str().unwrap();
    assert_eq!(
        (notice_time.len(), notice_time.ends_with('Z')),
        (20, true),
        "{notice_time}"
    );
    // A token expires with its TTL.
    let short = http(
        port,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "1")],
        "",
    )
    .await;
    let with = [("X-aws-ec2-metadata-token", short.body.as_str())];
    assert_eq!(
        http(port, "GET", "/latest/meta-data/instance-id", &with, "")
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        http(port, "GET", "/latest/meta-data/instance-id", &with, "")
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn gcp_preemption_wakes_the_agents_hanging_get() {
    let cloud = MetadataCloud::Gcp;
    let server = MetadataServer::start(cloud, "4520031799277581759", "vm", 0)
        .await
        .unwrap();
    let mut watcher = Watcher::new(Cloud::Gcp, &server.url(), "", Duration::from_millis(20));
    let raised = raise_soon(&server, cloud.notice_window());
    let started = Instant::now();
    let notice = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    let deadline = raised.await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "woken promptly: {:?}",
        started.elapsed()
    );
    assert_eq!(notice.signal, Signal::Interruption);
    // GCP says only TRUE: the agent adds the 30 s to the moment it saw it, which may
    // be in the second after the one the deadline was raised in.
    let seen = notice.deadline.unwrap();
    assert!(
        (deadline..=deadline + 1).contains(&seen),
        "{seen} vs {deadline}"
    );
}

#[tokio::test]
async fn gcp_a_preemption_already_under_way_is_seen_at_once() {
    // The agent starts (or restarts) after `preempted` turned TRUE: its first read must
    // not be a hanging GET that waits for the next change.
    let server = MetadataServer::start(MetadataCloud::Gcp, "1", "vm", 0)
        .await
        .unwrap();
    server.raise_interruption(now() + 30);
    let mut watcher = Watcher::new(Cloud::Gcp, &server.url(), "", Duration::from_millis(20));
    let started = Instant::now();
    let notice = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .expect("seen before the hanging GET's timeout");
    assert_eq!(notice.signal, Signal::Interruption);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn gcp_requires_metadata_flavor_and_honours_etags() {
    let server = MetadataServer::start(MetadataCloud::Gcp, "4520031799277581759", "vm-a", 0)
        .await
        .unwrap();
    let port = server.port();
    let google = [("Metadata-Flavor", "Google")];
    let refused = http(port, "GET", "/computeMetadata/v1/instance/id", &[], "").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("Metadata-Flavor"), Some("Google"));
    let wrong = [("Metadata-Flavor", "google")];
    assert_eq!(
        http(port, "GET", "/computeMetadata/v1/instance/id", &wrong, "")
            .await
            .status,
        403
    );
    let id = http(port, "GET", "/computeMetadata/v1/instance/id", &google, "").await;
    assert_eq!((id.status, id.body.as_str()), (200, "4520031799277581759"));
    assert_eq!(id.header("Metadata-Flavor"), Some("Google"));
    let name = http(
        port,
        "GET",
        "/computeMetadata/v1/instance/name",
        &google,
        "",
    )
    .await;
    assert_eq!(name.body, "vm-a");
    assert_eq!(
        http(
            port,
            "GET",
            "/computeMetadata/v1/instance/nothing",
            &google,
            ""
        )
        .await
        .status,
        404
    );

    let preempted = "/computeMetadata/v1/instance/preempted";
    let before = http(port, "GET", preempted, &google, "").await;
    assert_eq!((before.status, before.body.as_str()), (200, "FALSE"));
    let etag = before.header("ETag").unwrap().to_string();
    // An ETag other than the current one answers at once.
    let started = Instant::now();
    let stale = format!("{preempted}?wait_for_change=true&last_etag=0000000000000000");
    assert_eq!(http(port, "GET", &stale, &google, "").await.body, "FALSE");
    assert!(started.elapsed() < Duration::from_millis(500));
    // The current one waits, here until its timeout_sec, then gives the same value.
    let current = format!("{preempted}?wait_for_change=true&last_etag={etag}&timeout_sec=1");
    let started = Instant::now();
    let same = http(port, "GET", &current, &google, "").await;
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(
        (same.body.as_str(), same.header("ETag")),
        ("FALSE", Some(etag.as_str()))
    );
    let bad = format!("{preempted}?wait_for_change=true&timeout_sec=soon");
    assert_eq!(http(port, "GET", &bad, &google, "").await.status, 400);
    // ... or until the value changes.
    let waiting = format!("{preempted}?wait_for_change=true&last_etag={etag}");
    let raiser = server.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        raiser.raise_interruption(now() + 30);
    });
    let after = http(port, "GET", &waiting, &google, "").await;
    assert_eq!(after.body, "TRUE");
    assert_ne!(after.header("ETag"), Some(etag.as_str()));
    assert!(!server.raise_rebalance());
}

#[tokio::test]
async fn azure_preempt_reaches_the_agent_and_its_approval_the_server() {
    let cloud = MetadataCloud::Azure;
    let server = MetadataServer::start(cloud, "vm-id-1", "vm-spot", 0)
        .await
        .unwrap();
    let mut watcher = Watcher::new(
        Cloud::Azure,
        &server.url(),
        "vm-spot",
        Duration::from_millis(20),
    );
    let raised = raise_soon(&server, cloud.notice_window());
    let notice = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    let deadline = raised.await.unwrap();
    assert_eq!(
        (
            notice.signal.clone(),
            notice.action.as_str(),
            notice.deadline
        ),
        (Signal::Interruption, "Preempt", Some(deadline))
    );
    assert!(notice.event_id.is_some());
    assert!(!server.approved());
    watcher.approve(&notice).await.unwrap();
    assert!(server.approved());
}

#[tokio::test]
async fn azure_scheduled_events_in_the_reference_shape() {
    let server = MetadataServer::start(MetadataCloud::Azure, "vm-id-1", "vm-spot", 0)
        .await
        .unwrap();
    let port = server.port();
    let url = "/metadata/scheduledevents?api-version=2020-07-01";
    let meta = [("Metadata", "true")];
    assert_eq!(http(port, "GET", url, &[], "").await.status, 400);
    assert_eq!(
        http(port, "GET", "/metadata/scheduledevents", &meta, "")
            .await
            .status,
        400,
        "api-version is required"
    );
    let empty = http(port, "GET", url, &meta, "").await;
    let empty: serde_json::Value = serde_json::from_str(&empty.body).unwrap();
    assert_eq!(
        empty,
        serde_json::json!({"DocumentIncarnation": 0, "Events": []})
    );

    // The reference event's own instant: the document is the reference one but for the id.
    server.raise_interruption(1_660_064_852);
    let document: serde_json::Value =
        serde_json::from_str(&http(port, "GET", url, &meta, "").await.body).unwrap();
    let mut reference: serde_json::Value = serde_json::from_str(&fixture(
        "azure/scheduled-events/scheduledevents.preempt.mspnp-readme-excerpt.json",
    ))
    .unwrap();
    let id = document["Events"][0]["EventId"]
        .as_str()
        .unwrap()
        .to_string();
    reference["Events"][0]["EventId"] = id.clone().into();
    assert_eq!(document, reference);

    let approve = |id: &str| serde_json::json!({"StartRequests": [{"EventId": id}]}).to_string();
    for body in [
        approve("C1BF8322-4CBF-4FC4-9C45-B40CF3106D0E"),
        "{".into(),
        r#"{"StartRequests":[]}"#.into(),
    ] {
        assert_eq!(
            http(port, "POST", url, &meta, &body).await.status,
            400,
            "{body}"
        );
    }
    assert_eq!(
        http(port, "POST", url, &[], &approve(&id)).await.status,
        400
    );
    assert!(!server.approved());
    assert_eq!(
        http(port, "POST", url, &meta, &approve(&id)).await.status,
        200
    );
    assert!(server.approved());
    let started: serde_json::Value =
        serde_json::from_str(&http(port, "GET", url, &meta, "").await.body).unwrap();
    assert_eq!(started["DocumentIncarnation"], 2);
    assert_eq!(started["Events"][0]["EventStatus"], "Started");

    let name = http(
        port,
        "GET",
        "/metadata/instance/compute/name?api-version=2021-02-01&format=text",
        &meta,
        "",
    )
    .await;
    assert_eq!((name.status, name.body.as_str()), (200, "vm-spot"));
    assert_eq!(
        http(
            port,
            "GET",
            "/metadata/nothing?api-version=2021-02-01",
            &meta,
            ""
        )
        .await
        .status,
        404
    );
}

async fn refuses(port: u16) -> bool {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn a_server_restarted_on_its_port_serves_the_same_agent() {
    let first = MetadataServer::start(MetadataCloud::Aws, "i-1", "vm", 0)
        .await
        .unwrap();
    let port = first.port();
    let mut watcher = Watcher::new(Cloud::Aws, &first.url(), "", Duration::from_millis(20));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watcher.next())
            .await
            .is_err()
    );
    first.shutdown();
    assert!(refuses(port).await, "shut down");

    // As after a service restart: the same port, new state, the agent's old token refused.
    let second = MetadataServer::start(MetadataCloud::Aws, "i-1", "vm", port)
        .await
        .unwrap();
    assert_eq!(second.url(), first.url());
    let deadline = now() + 120;
    second.raise_interruption(deadline);
    let notice = tokio::time::timeout(Duration::from_secs(5), watcher.next())
        .await
        .unwrap();
    assert_eq!(notice.deadline, Some(deadline));

    // Restarted at once, even while connections of the old one linger.
    second.shutdown();
    let third = MetadataServer::start(MetadataCloud::Gcp, "i-1", "vm", port)
        .await
        .unwrap();
    let id = http(
        port,
        "GET",
        "/computeMetadata/v1/instance/id",
        &[("Metadata-Flavor", "Google")],
        "",
    )
    .await;
    assert_eq!(id.body, "i-1");
    // Dropping the last handle stops it too.
    let clone = third.clone();
    drop(third);
    assert!(!refuses_now(port).await);
    drop(clone);
    assert!(refuses(port).await, "dropped");
}

async fn refuses_now(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
}
