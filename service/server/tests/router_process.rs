//! The router with real processes: a workload created through the API is reached at
//! its `endpoint` (HTTP) and `tcp_endpoint` (TCP) with its access token, and a
//! separate `computearbitrage router` process follows the service's route changes.

mod common;

use common::*;
use computearbitrage_api::pb;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

async fn http_get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(5));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn wait_for_http(url: &str, token: &str, want: u16) -> String {
    let start = std::time::Instant::now();
    loop {
        let (status, body) = http_get(url, Some(token)).await;
        if status == want {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{url} answered {status}, not {want}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_is_reached_through_its_router_endpoints_with_its_access_token() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut client = service.workloads().await;
    let mut spec = spec("routed", &[]);
    spec.tcp_port = Some(9000);
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest { spec: Some(spec) }))
        .await
        .unwrap()
        .into_inner();
    let running = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        running.endpoint,
        format!("{}/w/{}/", service.router, running.id)
    );
    assert!(
        running.access_token.starts_with("caw_"),
        "{}",
        running.access_token
    );
    assert_eq!(
        created.access_token, running.access_token,
        "the same token at create and read"
    );
    assert_ne!(running.backend_endpoint, "");
    assert!(!running.endpoint.contains(&running.backend_endpoint));

    let (status, _) = http_get(&running.endpoint, None).await;
    assert_eq!(status, 401);
    let body = wait_for_http(
        &format!("{}hello?x=1", running.endpoint),
        &running.access_token,
        200,
    )
    .await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["workload"], "routed");
    assert_eq!(answer["path"], "/hello?x=1");
    assert_eq!(answer["headers"]["x-workload-id"], running.id.as_str());
    assert!(answer["headers"]["traceparent"]
        .as_str()
        .unwrap()
        .starts_with("00-"));
    // A tenant token opens the tenant's workloads only with the `route` scope: the
    // operator's admin token does not (401), a route token issued by it does.
    assert_eq!(http_get(&running.endpoint, Some(TOKEN)).await.0, 401);
    let route_token = service
        .admin()
        .await
        .create_token(authed(pb::CreateTokenRequest {
            tenant: "default".into(),
            scopes: "route".into(),
            label: "browser".into(),
            expires_in_seconds: 3600,
        }))
        .await
        .unwrap()
        .into_inner();
    let body = wait_for_http(&running.endpoint, &route_token.token, 200).await;
    assert!(body.contains("routed"));
    // Revoked, it opens nothing again, at once.
    service
        .admin()
        .await
        .revoke_token(authed(pb::RevokeTokenRequest {
            id: route_token.info.unwrap().id,
        }))
        .await
        .unwrap();
    wait_for_http(&running.endpoint, &route_token.token, 401).await;

    // TCP: the stable listener forwards to the workload's TCP_PORT.
    let tcp = running.tcp_endpoint.clone();
    assert_eq!(
        Some(tcp.rsplit(':').next().unwrap().parse::<u32>().unwrap()),
        running.tcp_listen_port
    );
    let echoed = tokio::task::spawn_blocking(move || {
        let mut stream = (0..250)
            .find_map(|_| {
                let connected = std::net::TcpStream::connect(&tcp).ok();
                if connected.is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                connected
            })
            .expect("the router's TCP listener accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"ping").unwrap();
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
    .await
    .unwrap();
    assert_eq!(echoed, "routed: ping");

    let metrics = reqwest::get(&service.metrics)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "computearbitrage_router_tcp_connections_total{{workload=\"{}\"}} 1",
            running.id
        )),
        "{metrics}"
    );

    client
        .delete_workload(authed(pb::DeleteWorkloadRequest {
            id: running.id.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    wait_status(
        &mut client,
        &running.id,
        &["TERMINATED"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        http_get(&running.endpoint, Some(&running.access_token))
            .await
            .0,
        401,
        "the token died with its workload"
    );
    assert_eq!(
        http_get(&running.endpoint, Some(TOKEN)).await.0,
        401,
        "an admin token is no router credential"
    );
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_separate_router_process_follows_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let public = format!("http://127.0.0.1:{port}");
    let service = Service::start(
        dir.path(),
        &[
            ("COMPUTEARBITRAGE_ROUTER__ENABLED", "false"),
            ("COMPUTEARBITRAGE_ROUTER__PUBLIC_URL", &public),
        ],
    );
    assert_eq!(service.router, public);
    let (tcp_min, tcp_max) = free_port_range();
    let mut router = ChildGuard(
        Command::new(env!("CARGO_BIN_EXE_computearbitrage"))
            .args(["router", "--data-dir"])
            .arg(dir.path())
            .env("COMPUTEARBITRAGE_ENDPOINT", &service.endpoint)
            .env("COMPUTEARBITRAGE_TOKEN", TOKEN)
            .env(
                "COMPUTEARBITRAGE_ROUTER__LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .env("COMPUTEARBITRAGE_ROUTER__METRICS_LISTEN", "127.0.0.1:0")
            .env("COMPUTEARBITRAGE_ROUTER__TCP_PORT_MIN", tcp_min.to_string())
            .env("COMPUTEARBITRAGE_ROUTER__TCP_PORT_MAX", tcp_max.to_string())
            .env("COMPUTEARBITRAGE_ROUTER__ID", "edge-1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(router.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    assert!(
        line.contains(&format!("router listening on {public}")),
        "{line}"
    );

    let mut client = service.workloads().await;
    let created = client
        .apply_workload(authed(pb::ApplyWorkloadRequest {
            spec: Some(spec("edge", &[])),
        }))
        .await
        .unwrap()
        .into_inner();
    // Before it runs, the separate router learns of it from the watch stream (a few
    // milliseconds after the apply returns): 503, then 200, never 404 from then on.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let status = loop {
        let (status, _) = http_get(&created.endpoint, Some(&created.access_token)).await;
        if status != 404 || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(status == 503 || status == 200, "{status}");
    let running = wait_status(
        &mut client,
        &created.id,
        &["RUNNING"],
        Duration::from_secs(30),
    )
    .await;
    assert!(running.endpoint.starts_with(&public));
    let body = wait_for_http(&running.endpoint, &running.access_token, 200).await;
    assert!(body.contains("\"workload\": \"edge\""), "{body}");

    client
        .delete_workload(authed(pb::DeleteWorkloadRequest {
            id: running.id.clone(),
            reason: "test".into(),
        }))
        .await
        .unwrap();
    wait_status(
        &mut client,
        &running.id,
        &["TERMINATED"],
        Duration::from_secs(30),
    )
    .await;
    // A route token made after the separate router started reaches it through the
    // watch stream; with it, the gone workload is a 404.
    let route = service
        .admin()
        .await
        .create_token(authed(pb::CreateTokenRequest {
            tenant: "default".into(),
            scopes: "route".into(),
            label: "late".into(),
            expires_in_seconds: 0,
        }))
        .await
        .unwrap()
        .into_inner()
        .token;
    wait_for_http(&running.endpoint, &route, 404).await;

    // Only an admin token subscribes to every tenant's routes.
    let mut admin = pb::admin_client::AdminClient::new(service.channel().await);
    let mut request = tonic::Request::new(pb::WatchRoutesRequest {});
    request
        .metadata_mut()
        .insert("authorization", "Bearer not-a-token".parse().unwrap());
    assert_eq!(
        admin.watch_routes(request).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut request = tonic::Request::new(pb::WatchRoutesRequest {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {route}").parse().unwrap());
    assert_eq!(
        admin.watch_routes(request).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );

    Command::new("kill")
        .args(["-TERM", &router.id().to_string()])
        .status()
        .unwrap();
    let status = router.wait().unwrap();
    assert!(
        status.success(),
        "the router exits cleanly on SIGTERM: {status}"
    );
    service.stop();
}
