//! The router end to end, in process: real SQLite store, real backends, real sockets on
//! 127.0.0.1, real HTTP clients.

mod routing;

use computearbitrage_core::WorkloadStatus;
use computearbitrage_store::{ConnectionRecord, WorkloadChanges};
use routing::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_decide_401_and_404_looks_the_same_for_missing_and_foreign() {
    let fx = Fixture::start().await;
    let backend = Backend::start("a").await;
    fx.workload(
        TENANT_A,
        "wl-aaaa",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let http = client();
    let url = |id: &str| format!("{}/w/{id}/hello", fx.url);

    let none = http.get(url("wl-aaaa")).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.headers()["www-authenticate"],
        "Bearer realm=\"computearbitrage\""
    );
    let wrong = http
        .get(url("wl-aaaa"))
        .header("authorization", bearer("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // A credential that is not valid anywhere gets 401 even for a missing workload.
    let wrong_missing = http
        .get(url("wl-zzzz"))
        .header("authorization", bearer("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_missing.status(), 401);

    // Tenant B: another tenant's workload and a missing one look the same.
    let foreign = http
        .get(url("wl-aaaa"))
        .header("authorization", bearer(TOKEN_B))
        .send()
        .await
        .unwrap();
    let missing = http
        .get(url("wl-zzzz"))
        .header("authorization", bearer(TOKEN_B))
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 404);
    assert_eq!(missing.status(), 404);
    let shape = |r: &reqwest::Response| {
        let mut h: Vec<(String, String)> = r
            .headers()
            .iter()
            .filter(|(k, _)| *k != "date")
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        h.sort();
        h
    };
    assert_eq!(shape(&foreign), shape(&missing), "same headers");
    let foreign_body = foreign.text().await.unwrap().replace("wl-aaaa", "ID");
    let missing_body = missing.text().await.unwrap().replace("wl-zzzz", "ID");
    assert_eq!(foreign_body, missing_body, "same body");
    // Another workload's token (same tenant even) does not open this one.
    fx.workload(
        TENANT_A,
        "wl-bbbb",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let other = http
        .get(url("wl-aaaa"))
        .header("authorization", bearer(&workload_token("wl-bbbb")))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "nothing reached the backend"
    );

    // The tenant token and the workload's own token both work; bearer or ?token=.
    let ok = http
        .get(url("wl-aaaa"))
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "a");
    assert_eq!(
        backend.last().header("authorization"),
        None,
        "the router's credential is not forwarded"
    );
    let by_query = http
        .get(format!(
            "{}?a=1&token={}&b=2",
            url("wl-aaaa"),
            workload_token("wl-aaaa")
        ))
        .header("authorization", "Basic YXBwOnNlY3JldA==")
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
    let seen = backend.last();
    assert_eq!(
        seen.path_and_query, "/hello?a=1&b=2",
        "the token is taken out of the query"
    );
    assert_eq!(
        seen.header("authorization"),
        Some("Basic YXBwOnNlY3JldA=="),
        "the app's own credential passes"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_and_path_prefix_all_find_the_workload() {
    let fx = Fixture::start().await;
    let backend = Backend::start("b").await;
    fx.workload(
        TENANT_A,
        "wl-host",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let http = client();
    let port = fx.router().http_address.port();

    for host in [
        format!("wl-host.{BASE_DOMAIN}"),
        format!("WL-HOST.{BASE_DOMAIN}:{port}"),
        format!("wl-host.{BASE_DOMAIN}."),
    ] {
        let r = http
            .get(format!("{}/api/x?y=1", fx.url))
            .header("host", &host)
            .header("authorization", bearer(TOKEN_A))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "Host {host}");
        assert_eq!(backend.last().path_and_query, "/api/x?y=1");
        assert_eq!(
            backend.last().header("x-forwarded-host"),
            Some(host.as_str())
        );
    }
    let r = http
        .get(format!("{}/api/y", fx.url))
        .header("x-workload-id", "wl-host")
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        backend.last().path_and_query,
        "/api/y",
        "header lookup keeps the path"
    );
    let r = http
        .get(format!("{}/w/wl-host/api/z?q=2", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        backend.last().path_and_query,
        "/api/z?q=2",
        "the prefix is stripped"
    );
    let r = http
        .get(format!("{}/w/wl-host", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(backend.last().path_and_query, "/");

    // Nothing names a workload; two names disagree; a malformed header.
    let r = http
        .get(format!("{}/", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("X-Workload-Id"));
    let r = http
        .get(format!("{}/", fx.url))
        .header("host", format!("wl-host.{BASE_DOMAIN}"))
        .header("x-workload-id", "wl-other")
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .get(format!("{}/", fx.url))
        .header("x-workload-id", "WL HOST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // HTTP/2 from the client (h2c prior knowledge).
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2
        .get(format!("{}/w/wl-host/h2", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "b");
    assert_eq!(backend.last().path_and_query, "/h2");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_that_are_not_serving_get_503_with_retry_after() {
    let fx = Fixture::start().await;
    let backend = Backend::start("c").await;
    let http = client();
    let get = |id: &'static str| {
        http.get(format!("{}/w/{id}/", fx.url))
            .header("authorization", bearer(TOKEN_A))
            .send()
    };
    fx.workload(TENANT_A, "wl-pending", WorkloadStatus::Pending, None)
        .await;
    fx.workload(TENANT_A, "wl-prov", WorkloadStatus::Provisioning, None)
        .await;
    fx.workload(
        TENANT_A,
        "wl-intr",
        WorkloadStatus::Interrupted,
        Some(&backend.addr()),
    )
    .await;
    fx.workload(
        TENANT_A,
        "wl-stop",
        WorkloadStatus::Stopping,
        Some(&backend.addr()),
    )
    .await;
    for id in ["wl-pending", "wl-prov", "wl-intr", "wl-stop"] {
        let r = get(id).await.unwrap();
        assert_eq!(r.status(), 503, "{id}");
        assert_eq!(r.headers()["retry-after"], "2", "{id}");
    }
    // Another tenant still sees 404, not the status.
    let r = http
        .get(format!("{}/w/wl-prov/", fx.url))
        .header("authorization", bearer(TOKEN_B))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // Terminated: gone.
    fx.move_to(
        TENANT_A,
        "wl-stop",
        WorkloadStatus::Stopping,
        WorkloadStatus::Terminated,
        WorkloadChanges::default(),
    )
    .await;
    fx.wait_for_route("wl-stop", WorkloadStatus::Terminated)
        .await;
    assert_eq!(get("wl-stop").await.unwrap().status(), 404);
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_backend_gets_502_and_idempotent_requests_are_retried_once() {
    let fx = Fixture::start().await;
    let port = refused_port();
    let addr = format!("127.0.0.1:{port}");
    fx.workload(TENANT_A, "wl-down", WorkloadStatus::Running, Some(&addr))
        .await;
    let http = client();
    let post = http
        .post(format!("{}/w/wl-down/", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 502);
    assert!(post
        .text()
        .await
        .unwrap()
        .contains("did not accept the connection"));

    // The backend comes up just after the first attempt: a GET's retry reaches it.
    let started = Instant::now();
    let request = http
        .get(format!("{}/w/wl-down/late", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .send();
    let late = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        Backend::serve(listener, "late")
    };
    let (response, backend) = tokio::join!(request, late);
    let response = response.unwrap();
    assert_eq!(
        response.status(),
        200,
        "retried after {:?}",
        started.elapsed()
    );
    assert_eq!(response.text().await.unwrap(), "late");
    assert_eq!(backend.last().path_and_query, "/late");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_trace_context() {
    let fx = Fixture::start().await;
    let backend = Backend::start("d").await;
    fx.workload(
        TENANT_A,
        "wl-hdr",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let http = client();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http
        .get(format!("{}/w/wl-hdr/", fx.url))
        .header("authorization", bearer(TOKEN_A))
        .header("traceparent", incoming)
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = backend.last();
    assert_eq!(
        seen.header("traceparent"),
        Some(incoming),
        "a valid traceparent is kept"
    );
    assert_eq!(seen.header("x-workload-id"), Some("wl-hdr"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("127.0.0.1"),
        "a client cannot spoof it"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(fx.url.trim_start_matches("http://"))
    );
    assert_eq!(seen.header("x-custom"), Some("kept"));

    for bad in [
        None,
        Some("garbage"),
        Some("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
    ] {
        let mut request = http
            .get(format!("{}/w/wl-hdr/", fx.url))
            .header("authorization", bearer(TOKEN_A));
        if let Some(bad) = bad {
            request = request
                .header("traceparent", bad)
                .header("tracestate", "vendor=1");
        }
        assert_eq!(request.send().await.unwrap().status(), 200);
        let seen = backend.last();
        let started = seen
            .header("traceparent")
            .expect("a traceparent is started")
            .to_string();
        assert_ne!(Some(started.as_str()), bad);
        let parts: Vec<&str> = started.split('-').collect();
        assert_eq!(parts.len(), 4, "{started}");
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert_eq!(
            seen.header("tracestate"),
            None,
            "state of a dropped trace is dropped too"
        );
    }
    fx.shutdown().await;
}

/// Sends raw bytes and returns what came back (until the server closes or 2 s pass).
async fn raw(address: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_injection_attempts_are_refused_or_harmless() {
    let fx = Fixture::start().await;
    let backend = Backend::start("e").await;
    fx.workload(
        TENANT_A,
        "wl-inj",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let address = fx.router().http_address;
    let auth = format!("Authorization: Bearer {TOKEN_A}\r\n");

    // A bare CR or a NUL inside a header value is not HTTP: refused, nothing forwarded.
    // (A bare LF is a line end that HTTP/1.1 allows, so it cannot smuggle a header.)
    for bad in [
        format!("GET /w/wl-inj/ HTTP/1.1\r\nHost: x\rX-Evil: 1\r\n{auth}Connection: close\r\n\r\n"),
        format!("GET /w/wl-inj/ HTTP/1.1\r\nHost: x\r\nX-Workload-Id: wl-inj\rX-Evil: 1\r\n{auth}Connection: close\r\n\r\n"),
        format!("GET /w/wl-inj/ HTTP/1.1\r\nHost: x\r\nX-A: a\0X-Evil: 1\r\n{auth}Connection: close\r\n\r\n"),
    ] {
        let answer = raw(address, bad.as_bytes()).await;
        assert!(!answer.starts_with("HTTP/1.1 200"), "{bad:?} -> {answer}");
    }
    assert!(backend
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|s| s.header("x-evil").is_none()));

    // Encoded CRLF in the path stays encoded; it never becomes a header.
    let answer = raw(
        address,
        format!("GET /w/wl-inj/a%0d%0aX-Evil:%201 HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = backend.last();
    assert_eq!(seen.path_and_query, "/a%0d%0aX-Evil:%201");
    assert_eq!(seen.header("x-evil"), None);

    // Hosts with a port, a trailing dot or mixed case find the workload; hosts with
    // userinfo, spaces or a second label in front do not.
    for (host, expect) in [
        (format!("wl-inj.{BASE_DOMAIN}:80"), "200"),
        (format!("wl-inj.{BASE_DOMAIN}."), "200"),
        (format!("Wl-Inj.{BASE_DOMAIN}"), "200"),
        (format!("user@wl-inj.{BASE_DOMAIN}"), "404"),
        (format!("x.wl-inj.{BASE_DOMAIN}"), "404"),
        (format!("wl-inj.{BASE_DOMAIN} .evil"), "40"),
    ] {
        let answer = raw(
            address,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {expect}")),
            "Host {host:?} -> {answer}"
        );
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let fx = Fixture::start().await;
    let backend = Backend::start("k").await;
    fx.workload(
        TENANT_A,
        "wl-keep",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(fx.router().http_address)
        .await
        .unwrap();
    let request =
        format!("GET /w/wl-keep/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n\r\n");
    let mut answers = String::new();
    for _ in 0..3 {
        stream.write_all(request.as_bytes()).await.unwrap();
    }
    // Read until all three answers arrived on this one connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while answers.matches("HTTP/1.1 200").count() < 3 || !answers.ends_with('k') {
        assert!(Instant::now() < deadline, "{answers}");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "the router closed a keep-alive connection: {answers}"
        );
        answers.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(answers.matches("HTTP/1.1 200").count(), 3, "{answers}");
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    fx.shutdown().await;
}

/// The fast path remembers the last access decision of a connection; every request
/// must still be decided on its own credential, workload and the current table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_keep_alive_connection_is_authorized_on_its_own() {
    let fx = Fixture::start().await;
    let one = Backend::start("one").await;
    let two = Backend::start("two").await;
    let moved = Backend::start("moved").await;
    fx.workload(
        TENANT_A,
        "wl-ka1",
        WorkloadStatus::Running,
        Some(&one.addr()),
    )
    .await;
    fx.workload(
        TENANT_A,
        "wl-ka2",
        WorkloadStatus::Running,
        Some(&two.addr()),
    )
    .await;
    fx.workload(
        TENANT_B,
        "wl-kb",
        WorkloadStatus::Running,
        Some(&two.addr()),
    )
    .await;
    let address = fx.router().http_address;
    let get = |id: &str, token: &str| {
        format!("GET /w/{id}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n")
    };
    let status = |answer: &str| answer.get(9..12).unwrap_or_default().to_string();

    // A workload token, after the tenant token, on one connection: each reaches only
    // what it may.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let answer = one_exchange(&mut stream, &get("wl-ka1", TOKEN_A)).await;
    assert!(
        status(&answer) == "200" && answer.ends_with("one"),
        "{answer}"
    );
    let token_2 = workload_token("wl-ka2");
    let answer = one_exchange(&mut stream, &get("wl-ka2", &token_2)).await;
    assert!(
        status(&answer) == "200" && answer.ends_with("two"),
        "{answer}"
    );
    let answer = one_exchange(&mut stream, &get("wl-ka1", &token_2)).await;
    assert_eq!(status(&answer), "404", "{answer}");

    // The tenant token, then a token that differs in its last character only, then a
    // workload of another tenant.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let answer = one_exchange(&mut stream, &get("wl-ka1", TOKEN_A)).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let mut near = TOKEN_A.to_string();
    near.pop();
    near.push('X');
    let answer = one_exchange(&mut stream, &get("wl-ka1", &near)).await;
    assert_eq!(status(&answer), "401", "{answer}");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let answer = one_exchange(&mut stream, &get("wl-ka1", TOKEN_A)).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let answer = one_exchange(&mut stream, &get("wl-kb", TOKEN_A)).await;
    assert_eq!(status(&answer), "404", "{answer}");

    // Route changes reach a connection that is already open: a new endpoint, then a
    // status that does not serve.
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let answer = one_exchange(&mut stream, &get("wl-ka1", TOKEN_A)).await;
    assert!(answer.ends_with("one"), "{answer}");
    fx.store
        .update_workload(
            TENANT_A,
            "wl-ka1",
            WorkloadChanges {
                endpoint: Some(Some(moved.addr())),
                ..Default::default()
            },
            3,
        )
        .await
        .unwrap();
    let moved_to = moved.addr();
    fx.wait_for_route_where("wl-ka1", "the new backend", |r| {
        r.backend.as_deref() == Some(moved_to.as_str())
    })
    .await;
    let answer = one_exchange(&mut stream, &get("wl-ka1", TOKEN_A)).await;
    assert!(
        status(&answer) == "200" && answer.ends_with("moved"),
        "{answer}"
    );
    fx.move_to(
        TENANT_A,
        "wl-ka1",
        WorkloadStatus::Running,
        WorkloadStatus::Interrupted,
        WorkloadChanges::default(),
    )
    .await;
    fx.wait_for_route("wl-ka1", WorkloadStatus::Interrupted)
        .await;
    let answer = one_exchange(&mut stream, &get("wl-ka1", TOKEN_A)).await;
    assert_eq!(status(&answer), "503", "{answer}");
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_echoes_through_the_router() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let fx = Fixture::start().await;
    let ws_backend = websocket_echo_backend().await;
    fx.workload(
        TENANT_A,
        "wl-ws",
        WorkloadStatus::Running,
        Some(&ws_backend),
    )
    .await;
    let url = format!("ws://{}/w/wl-ws/socket", fx.router().http_address);
    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", bearer(TOKEN_A).parse().unwrap());
    let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    for text in ["hello", "through the router"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(2), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap(), text);
    }
    let big = vec![7u8; 256 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(2), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed.into_data(), big);
    // Without a credential, no upgrade.
    let mut anonymous = url.as_str().into_client_request().unwrap();
    anonymous.headers_mut().remove("authorization");
    assert!(tokio_tungstenite::connect_async(anonymous).await.is_err());
    fx.shutdown().await;
}

/// A WebSocket echo backend on 127.0.0.1; returns its address.
async fn websocket_echo_backend() -> String {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(message)) = ws.next().await {
                    if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Shutdown drains WebSocket tunnels like requests: they keep working until they close,
/// and the ones still open at the deadline are cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_websocket_tunnels_until_the_deadline() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let fx = Fixture::start().await;
    let backend = websocket_echo_backend().await;
    fx.workload(TENANT_A, "wl-wsd", WorkloadStatus::Running, Some(&backend))
        .await;
    let url = format!("ws://{}/w/wl-wsd/", fx.router().http_address);
    let connect = || async {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", bearer(TOKEN_A).parse().unwrap());
        tokio_tungstenite::connect_async(request).await.unwrap().0
    };
    let (mut closing, mut lingering) = (connect().await, connect().await);
    async fn echo<S>(ws: &mut S, text: &str) -> bool
    where
        S: futures_util::Sink<Message>
            + futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        if ws.send(Message::text(text)).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_secs(2), ws.next()).await,
            Ok(Some(Ok(m))) if m.to_text().ok() == Some(text)
        )
    }
    assert!(echo(&mut closing, "before").await && echo(&mut lingering, "before").await);

    let started = Instant::now();
    let stopping = tokio::spawn(fx.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        echo(&mut closing, "while draining").await,
        "a tunnel was cut before the deadline"
    );
    assert!(echo(&mut lingering, "while draining").await);
    closing.close(None).await.unwrap();
    drop(closing);

    // The other tunnel stays open, so the router waits for the deadline (2 s here),
    // then cuts it.
    stopping.await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(6),
        "shutdown took {waited:?}"
    );
    let after = tokio::time::timeout(Duration::from_secs(2), lingering.next()).await;
    assert!(
        matches!(
            after,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_))))
        ),
        "the tunnel still open at the deadline is cut: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_changes_under_load_never_answer_with_a_connection_error() {
    let fx = std::sync::Arc::new(Fixture::start().await);
    let first = Backend::start("first").await;
    let second = Backend::start("second").await;
    let third = Backend::start("third").await;
    fx.workload(
        TENANT_A,
        "wl-move",
        WorkloadStatus::Running,
        Some(&first.addr()),
    )
    .await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (fx, stop) = (fx.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let http = client();
            let mut answers: Vec<(Instant, Instant, u16, String)> = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sent = Instant::now();
                match http
                    .get(format!("{}/w/wl-move/", fx.url))
                    .header("authorization", bearer(TOKEN_A))
                    .send()
                    .await
                {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let body = r.text().await.unwrap_or_default();
                        answers.push((sent, Instant::now(), status, body));
                    }
                    Err(e) => answers.push((sent, Instant::now(), 0, e.to_string())),
                }
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 1. A new endpoint on the same RUNNING workload.
    let switched = Instant::now();
    fx.store
        .update_workload(
            TENANT_A,
            "wl-move",
            WorkloadChanges {
                endpoint: Some(Some(second.addr())),
                ..Default::default()
            },
            3,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 2. An interruption: the 503 window, then a move to a third backend.
    let window_opened = Instant::now();
    fx.move_to(
        TENANT_A,
        "wl-move",
        WorkloadStatus::Running,
        WorkloadStatus::Interrupted,
        WorkloadChanges {
            endpoint: Some(None),
            ..Default::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    fx.move_to(
        TENANT_A,
        "wl-move",
        WorkloadStatus::Interrupted,
        WorkloadStatus::Provisioning,
        WorkloadChanges::default(),
    )
    .await;
    fx.move_to(
        TENANT_A,
        "wl-move",
        WorkloadStatus::Provisioning,
        WorkloadStatus::Running,
        WorkloadChanges {
            endpoint: Some(Some(third.addr())),
            ..Default::default()
        },
    )
    .await;
    let window_closed = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    assert!(
        answers.len() > 50,
        "load was applied: {} requests",
        answers.len()
    );
    let errors: Vec<_> = answers
        .iter()
        .filter(|(_, _, s, _)| *s != 200 && *s != 503)
        .collect();
    assert!(
        errors.is_empty(),
        "connection errors or 5xx other than 503: {errors:?}"
    );
    for (sent, received, status, body) in &answers {
        // The window opens with the INTERRUPTED commit (after `window_opened`) and
        // closes at most 100 ms after the RUNNING commit.
        if *status == 503 {
            assert!(
                *received >= window_opened && *sent <= window_closed + Duration::from_millis(100),
                "503 outside the window"
            );
        }
        // Requests sent 100 ms after a change reach the new backend.
        if *status == 200 && *sent > switched + Duration::from_millis(100) && *sent < window_opened
        {
            assert_eq!(body, "second");
        }
        if *status == 200 && *sent > window_closed + Duration::from_millis(100) {
            assert_eq!(body, "third");
        }
    }
    assert!(answers.iter().any(|(_, _, _, b)| b == "first"));
    assert!(answers.iter().any(|(_, _, _, b)| b == "second"));
    assert!(answers.iter().any(|(_, _, _, b)| b == "third"));
    assert!(
        answers.iter().any(|(_, _, s, _)| *s == 503),
        "the window was observed"
    );
}

async fn exchange(stream: &mut tokio::net::TcpStream, text: &str) -> String {
    stream.write_all(text.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// The connection rows of `id` once there are `count` of them.
async fn connection_rows(fx: &Fixture, id: &str, count: usize) -> Vec<ConnectionRecord> {
    for _ in 0..300 {
        let rows = fx.store.connections(TENANT_A, id).await.unwrap();
        if rows.len() == count {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{id} never had {count} connection rows");
}

async fn wait_until<
    F: Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>,
>(
    what: &str,
    check: F,
) {
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_connection_records_and_drain_on_backend_change() {
    // A row left by a previous run of this router is cleared at start.
    let fx = Fixture::start_with(|_| {}).await;
    let port = fx.config.tcp_port_min;
    let one = tcp_echo("1:").await;
    let two = tcp_echo("2:").await;
    fx.workload_with(
        TENANT_A,
        "wl-tcp",
        WorkloadStatus::Running,
        None,
        Some(&one),
        Some(port),
    )
    .await;
    let router = fx.router();
    wait_until("the TCP listener", || {
        let listening = router.tcp.listening();
        Box::pin(async move { listening.iter().any(|(p, _)| *p == port) })
    })
    .await;

    let mut first = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert_eq!(exchange(&mut first, "ping").await, "1:ping");
    // Rows are written in batches, within a flush interval.
    let rows = connection_rows(&fx, "wl-tcp", 1).await;
    assert_eq!(rows[0].backend, one);
    assert_eq!(rows[0].router_id, "embedded");
    // Byte counts reach the row within a flush interval.
    let store = fx.store.clone();
    wait_until("byte counts", || {
        let store = store.clone();
        Box::pin(async move {
            store
                .connections(TENANT_A, "wl-tcp")
                .await
                .unwrap()
                .first()
                .map(|r| (r.bytes_to_backend, r.bytes_from_backend))
                == Some((4, 6))
        })
    })
    .await;

    // The backend changes: the open connection drains on the old one, new ones go to the new.
    fx.store
        .update_workload(
            TENANT_A,
            "wl-tcp",
            WorkloadChanges {
                tcp_endpoint: Some(Some(two.clone())),
                ..Default::default()
            },
            3,
        )
        .await
        .unwrap();
    fx.wait_for_route_where("wl-tcp", "the new TCP backend", |r| {
        r.tcp_backend.as_deref() == Some(two.as_str())
    })
    .await;
    let mut second = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert_eq!(exchange(&mut second, "pong").await, "2:pong");
    assert_eq!(
        exchange(&mut first, "again").await,
        "1:again",
        "the old connection drains on its backend"
    );
    let backends: Vec<String> = connection_rows(&fx, "wl-tcp", 2)
        .await
        .into_iter()
        .map(|r| r.backend)
        .collect();
    assert_eq!(backends.len(), 2);
    assert!(
        backends.contains(&one) && backends.contains(&two),
        "{backends:?}"
    );

    drop(first);
    drop(second);
    let store = fx.store.clone();
    wait_until("rows removed on close", || {
        let store = store.clone();
        Box::pin(async move {
            store
                .connections(TENANT_A, "wl-tcp")
                .await
                .unwrap()
                .is_empty()
        })
    })
    .await;

    // A restart of this router leaves no stale rows.
    fx.store
        .apply_connection_batch(computearbitrage_store::ConnectionBatch {
            opened: vec![ConnectionRecord {
                id: "conn-stale".into(),
                router_id: "embedded".into(),
                tenant_id: TENANT_A.into(),
                workload_id: "wl-tcp".into(),
                backend: one.clone(),
                client: "127.0.0.1:1".into(),
                started_at: 1,
                bytes_to_backend: 0,
                bytes_from_backend: 0,
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let store = fx.store.clone();
    let config = fx.config.clone();
    fx.shutdown().await;
    let restarted = computearbitrage::routing::RunningRouter::start(
        store.clone(),
        &config,
        Duration::from_secs(1),
        computearbitrage::routing::Feed::Local,
    )
    .await
    .unwrap();
    let s = store.clone();
    wait_until("stale rows cleared", || {
        let s = s.clone();
        Box::pin(async move { s.connections(TENANT_A, "wl-tcp").await.unwrap().is_empty() })
    })
    .await;
    // And it serves the same stable port again.
    let mut again = None;
    for _ in 0..300 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = again.expect("the restarted router listens on the same TCP port");
    assert_eq!(exchange(&mut again, "x").await, "2:x");
    drop(again);
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_classes_bytes_and_latency_per_workload() {
    let fx = Fixture::start().await;
    let backend = Backend::start("metrics").await;
    fx.workload(
        TENANT_A,
        "wl-met",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let http = client();
    for _ in 0..3 {
        let r = http
            .post(format!("{}/w/wl-met/", fx.url))
            .header("authorization", bearer(TOKEN_A))
            .body("12345")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let r = http
        .get(format!("{}/w/wl-met/", fx.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let metrics_url = format!("http://{}/metrics", fx.router().metrics_address.unwrap());
    let text = http
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "computearbitrage_router_requests_total{workload=\"wl-met\",class=\"2xx\"} 3",
        "computearbitrage_router_requests_total{workload=\"-\",class=\"4xx\"} 1",
        "computearbitrage_router_request_duration_seconds_count{workload=\"wl-met\"} 3",
        "computearbitrage_router_bytes_total{workload=\"wl-met\",direction=\"to_backend\"} 15",
        "computearbitrage_router_bytes_total{workload=\"wl-met\",direction=\"from_backend\"} 21",
        "computearbitrage_router_active_connections{workload=\"wl-met\",protocol=\"http\"} 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_and_lets_requests_in_flight_finish() {
    let fx = Fixture::start().await;
    let backend = Backend::start("slow").await;
    fx.workload(
        TENANT_A,
        "wl-slow",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let http = client();
    let url = fx.url.clone();
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = url.clone();
        async move {
            http.get(format!("{url}/w/wl-slow/slow"))
                .header("authorization", bearer(TOKEN_A))
                .send()
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    fx.shutdown().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "slow");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "drained before the deadline"
    );
    let refused = reqwest::Client::new()
        .get(format!("{url}/w/wl-slow/"))
        .send()
        .await;
    assert!(refused.is_err(), "no longer accepting");
}

/// A backend speaking raw HTTP/1.1: answers each request on a connection with
/// `reply(n)` (n = requests seen on it), closing the connection after `per_connection`.
async fn raw_backend(per_connection: usize, reply: fn(usize, &str) -> String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = 0;
                let mut buf = Vec::new();
                while seen < per_connection {
                    let mut chunk = [0u8; 4096];
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end + 4);
                        seen += 1;
                        if stream
                            .write_all(reply(seen, &head).as_bytes())
                            .await
                            .is_err()
                        {
                            return;
                        }
                        if seen >= per_connection {
                            return; // closes without saying so
                        }
                    }
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_heads_lengths_chunks_and_backends_that_close() {
    let fx = Fixture::start().await;
    // One answer per connection, then a silent close: the next request on the same
    // client connection must still be answered.
    let closing = raw_backend(1, |_, _| {
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()
    })
    .await;
    fx.workload(
        TENANT_A,
        "wl-closing",
        WorkloadStatus::Running,
        Some(&closing),
    )
    .await;
    let chunked = raw_backend(100, |_, head| {
        if head.starts_with("HEAD ") {
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".into()
        } else if !head.starts_with("GET /empty") {
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nx-trailer: t\r\n\r\n".into()
        } else {
            "HTTP/1.1 204 No Content\r\n\r\n".into()
        }
    })
    .await;
    fx.workload(
        TENANT_A,
        "wl-chunked",
        WorkloadStatus::Running,
        Some(&chunked),
    )
    .await;
    let until_close = raw_backend(1, |_, _| "HTTP/1.1 200 OK\r\n\r\nuntil close".into()).await;
    fx.workload(
        TENANT_A,
        "wl-eof",
        WorkloadStatus::Running,
        Some(&until_close),
    )
    .await;

    let http = client();
    let get = |id: &str, method: reqwest::Method, path: &str| {
        http.request(method, format!("{}/w/{id}/{path}", fx.url))
            .header("authorization", bearer(TOKEN_A))
            .send()
    };
    for _ in 0..3 {
        let r = get("wl-closing", reqwest::Method::GET, "").await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    let r = get("wl-chunked", reqwest::Method::GET, "").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "abcde");
    let r = get("wl-chunked", reqwest::Method::GET, "empty")
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = get("wl-chunked", reqwest::Method::HEAD, "").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], "5");
    let r = get("wl-chunked", reqwest::Method::GET, "").await.unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "abcde",
        "the connection survived a HEAD and a 204"
    );
    let r = get("wl-eof", reqwest::Method::GET, "").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "until close");
    let r = get("wl-eof", reqwest::Method::GET, "").await.unwrap();
    assert_eq!(r.text().await.unwrap(), "until close");

    // Ambiguous framing is never relayed (RFC 9112 §6.3): two different lengths get a
    // 502; a length beside a transfer coding is dropped, the chunks are relayed.
    let ambiguous = raw_backend(100, |_, head| {
        if head.starts_with("GET /two") {
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\nhello".into()
        } else {
            "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n".into()
        }
    })
    .await;
    fx.workload(
        TENANT_A,
        "wl-ambiguous",
        WorkloadStatus::Running,
        Some(&ambiguous),
    )
    .await;
    // On a new connection the fast path answers, after the 502 hyper does: both must
    // agree.
    let fresh = client();
    let ambiguous_get = |http: &reqwest::Client, path: &str| {
        http.get(format!("{}/w/wl-ambiguous/{path}", fx.url))
            .header("authorization", bearer(TOKEN_A))
            .send()
    };
    for (path, expect) in [("both", 200), ("two", 502), ("both", 200)] {
        let r = ambiguous_get(&fresh, path).await.unwrap();
        assert_eq!(r.status(), expect, "{path}");
        if expect == 200 {
            assert!(r.headers().get("content-length").is_none(), "{path}");
            assert_eq!(r.text().await.unwrap(), "hi");
        }
    }
    fx.shutdown().await;
}

/// A request that may have taken effect is never sent twice: when the backend takes a
/// POST and closes without answering, the client gets a 502 and the backend saw it
/// once. (A GET may be sent once more.) A keep-alive backend connection that the
/// backend closed while idle is replaced before a POST goes out on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_may_have_taken_effect_are_never_sent_twice() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static SWALLOWED: [AtomicUsize; 2] = [AtomicUsize::new(0), AtomicUsize::new(0)];
    static ANSWERED_POSTS: AtomicUsize = AtomicUsize::new(0);
    let fx = Fixture::start().await;
    // Takes one request per connection and closes without a word.
    let swallowing = raw_backend(1, |_, head| {
        SWALLOWED[usize::from(head.starts_with("GET "))].fetch_add(1, Ordering::SeqCst);
        String::new()
    })
    .await;
    fx.workload(
        TENANT_A,
        "wl-swallow",
        WorkloadStatus::Running,
        Some(&swallowing),
    )
    .await;
    let post = |id: &str| {
        format!("POST /w/{id}/order HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\ncontent-length: 3\r\n\r\nx=1")
    };
    let get = |id: &str| {
        format!("GET /w/{id}/ HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n\r\n")
    };
    let status = |answer: &str| answer.get(9..12).unwrap_or_default().to_string();
    let mut stream = tokio::net::TcpStream::connect(fx.router().http_address)
        .await
        .unwrap();
    let answer = one_exchange(&mut stream, &post("wl-swallow")).await;
    assert_eq!(status(&answer), "502", "{answer}");
    assert_eq!(
        SWALLOWED[0].load(Ordering::SeqCst),
        1,
        "the POST was sent once"
    );

    let mut stream = tokio::net::TcpStream::connect(fx.router().http_address)
        .await
        .unwrap();
    let answer = one_exchange(&mut stream, &get("wl-swallow")).await;
    assert_eq!(status(&answer), "502", "{answer}");
    assert_eq!(
        SWALLOWED[1].load(Ordering::SeqCst),
        2,
        "a GET is sent once more"
    );

    // One answer per backend connection, then a silent close while idle.
    let closing = raw_backend(1, |_, head| {
        if head.starts_with("POST ") {
            ANSWERED_POSTS.fetch_add(1, Ordering::SeqCst);
        }
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".into()
    })
    .await;
    fx.workload(
        TENANT_A,
        "wl-idle-close",
        WorkloadStatus::Running,
        Some(&closing),
    )
    .await;
    let mut stream = tokio::net::TcpStream::connect(fx.router().http_address)
        .await
        .unwrap();
    for round in 1..=3 {
        let answer = one_exchange(&mut stream, &post("wl-idle-close")).await;
        assert_eq!(status(&answer), "200", "round {round}: {answer}");
        assert_eq!(ANSWERED_POSTS.load(Ordering::SeqCst), round);
        // The backend's close reaches the router while the connection is idle.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fx.shutdown().await;
}
