//! What one client or one workload may take of the router: slow and oversized
//! request heads, connections per client, requests per workload, and who may reach
//! a TCP endpoint. Real router, real SQLite, real sockets on 127.0.0.1.

mod routing;

use computearbitrage_core::WorkloadStatus;
use computearbitrage_store::WorkloadChanges;
use routing::*;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the router closes the connection; `None` if it is still open after `wait`.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut out = Vec::new();
    match tokio::time::timeout(wait, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).to_string()),
        Err(_) => None,
    }
}

fn request(workload: &str, extra_headers: &str) -> String {
    format!("GET /w/{workload}/ HTTP/1.1\r\nHost: router\r\nAuthorization: Bearer {TOKEN_A}\r\n{extra_headers}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_oversized_request_heads_are_cut_off() {
    let fx = Fixture::start_with(|c| {
        c.header_read_timeout_ms = 300;
        c.idle_timeout_ms = 600;
        c.max_header_bytes = 2048;
    })
    .await;
    let backend = Backend::start("b").await;
    fx.workload(
        TENANT_A,
        "wl-slow",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let address = fx.router().http_address;

    // A head started and never finished: closed once header_read_timeout passes.
    let mut slow = TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /w/wl-slow/ HTTP/1.1\r\nHost: router\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        read_until_closed(&mut slow, Duration::from_secs(10))
            .await
            .is_some(),
        "a half-sent head holds its connection open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "closed before the timeout"
    );

    // A head trickled a byte at a time does not earn more time: the deadline counts
    // from its first byte.
    let mut trickle = TcpStream::connect(address).await.unwrap();
    let head = request(
        "wl-slow",
        "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
    );
    let started = Instant::now();
    let mut cut = false;
    for byte in head.as_bytes() {
        if trickle.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        let mut probe = [0u8; 256];
        match tokio::time::timeout(Duration::from_millis(50), trickle.read(&mut probe)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(_)) => panic!("a trickled head was answered"),
            Err(_) => {}
        }
    }
    assert!(
        cut,
        "a head trickled over {:?} was still read",
        started.elapsed()
    );
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // A connection that never sends anything: closed after idle_timeout.
    let mut idle = TcpStream::connect(address).await.unwrap();
    let started = Instant::now();
    assert_eq!(
        read_until_closed(&mut idle, Duration::from_secs(10))
            .await
            .as_deref(),
        Some(""),
        "an idle connection is closed without an answer"
    );
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A kept-alive connection is served, then closed when it idles.
    let mut kept = TcpStream::connect(address).await.unwrap();
    kept.write_all(request("wl-slow", "").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut kept, Duration::from_secs(10)).await;
    let answer = answer.expect("an idle kept-alive connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A head over max_header_bytes: 431, and nothing reaches the backend.
    let mut big = TcpStream::connect(address).await.unwrap();
    let pad = format!("X-Pad: {}\r\n", "a".repeat(3000));
    big.write_all(request("wl-slow", &pad).as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut big, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hold_every_connection() {
    let fx = Fixture::start_with(|c| {
        // One thread, so connections are accepted in the order they were made.
        c.threads = 1;
        c.max_connections_per_client = 3;
        c.max_connections = 5;
    })
    .await;
    let backend = Backend::start("b").await;
    fx.workload(
        TENANT_A,
        "wl-conn",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let address = fx.router().http_address;

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(address).await.unwrap();
        assert!(one_exchange(&mut stream, &request("wl-conn", ""))
            .await
            .starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    // The fourth from the same address: 503 and closed, before anything is read.
    let mut fourth = TcpStream::connect(address).await.unwrap();
    let answer = read_until_closed(&mut fourth, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );

    // Another client address still gets in (127.0.0.2 is loopback too).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut elsewhere = socket.connect(address).await.unwrap();
    assert!(one_exchange(&mut elsewhere, &request("wl-conn", ""))
        .await
        .starts_with("HTTP/1.1 200"));

    // A connection given back makes room.
    drop(held.pop());
    let mut admitted = None;
    for _ in 0..100 {
        let mut stream = TcpStream::connect(address).await.unwrap();
        let answer = one_exchange(&mut stream, &request("wl-conn", "")).await;
        if answer.starts_with("HTTP/1.1 200") {
            admitted = Some(stream);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        admitted.is_some(),
        "the closed connection's place was never given back"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_over_its_request_rate_gets_429_and_others_do_not() {
    let fx = Fixture::start_with(|c| {
        c.rate_limit_per_workload = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    let backend = Backend::start("b").await;
    fx.workload(
        TENANT_A,
        "wl-busy",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    fx.workload(
        TENANT_A,
        "wl-quiet",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let http = client();
    let get = |id: &str| {
        http.get(format!("{}/w/{id}/", fx.url))
            .header("authorization", bearer(TOKEN_A))
            .send()
    };
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let r = get("wl-busy").await.unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body = r.text().await.unwrap();
            assert!(
                body.contains("wl-busy") && body.contains("1 per second"),
                "{body}"
            );
        }
    }
    // The burst passes, the rest is refused (1 per second refills too slowly to matter).
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(&statuses[3..], &[429, 429], "{statuses:?}");
    let wait: u64 = retry_after
        .expect("a 429 says when to retry")
        .parse()
        .unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    // Another workload's budget is its own.
    assert_eq!(get("wl-quiet").await.unwrap().status(), 200);
    // And the bucket refills.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get("wl-busy").await.unwrap().status(), 200);

    let metrics = fx.router().metrics.render();
    assert!(
        metrics.contains(
            "computearbitrage_router_refused_total{workload=\"wl-busy\",reason=\"rate_limit\"} 2"
        ),
        "{metrics}"
    );
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_a_client_could_forge_or_leak_never_reach_the_backend() {
    let fx = Fixture::start().await;
    let backend = Backend::start("b").await;
    fx.workload(
        TENANT_A,
        "wl-hdr",
        WorkloadStatus::Running,
        Some(&backend.addr()),
    )
    .await;
    let token = workload_token("wl-hdr");
    let address = fx.router().http_address;
    let forged = "Forwarded: for=6.6.6.6;proto=https\r\nX-Real-IP: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 1\r\n";
    // Through the fast path (a plain GET) and through hyper (an Expect header is not
    // the fast path's to answer).
    for extra in ["", "Expect: 100-continue\r\nContent-Length: 0\r\n"] {
        let referer = format!("Referer: http://router/w/wl-hdr/page?token={token}&tab=2\r\n");
        let head = format!(
            "GET /w/wl-hdr/?token={token}&q=1 HTTP/1.1\r\nHost: router\r\n{forged}{referer}{extra}Connection: close\r\n\r\n"
        );
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let answer = read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let seen = backend.last();
        for name in ["forwarded", "x-real-ip", "x-forwarded-port"] {
            assert_eq!(
                seen.header(name),
                None,
                "{name} reached the backend ({extra:?})"
            );
        }
        assert_eq!(seen.header("x-forwarded-host"), Some("router"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(seen.path_and_query, "/?q=1");
        let referer = seen.header("referer").expect("the Referer is kept");
        assert!(!referer.contains(&token), "{referer}");
        assert!(referer.contains("tab=2"), "{referer}");
    }
    fx.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_endpoints_admit_only_their_ranges_and_up_to_their_cap() {
    let fx = Fixture::start_with(|c| c.tcp_max_connections_per_workload = 2).await;
    let port = fx.config.tcp_port_min;
    let echo = tcp_echo("").await;
    fx.workload_with(
        TENANT_A,
        "wl-tcp",
        WorkloadStatus::Running,
        None,
        Some(&echo),
        Some(port),
    )
    .await;
    let router = fx.router();
    for _ in 0..300 {
        if router.tcp.listening().iter().any(|(p, _)| *p == port) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The default: this machine may connect. Up to the cap.
    let mut one = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut two = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(echo_once(&mut one, "a").await.as_deref(), Some("a"));
    assert_eq!(echo_once(&mut two, "b").await.as_deref(), Some("b"));
    let mut three = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert_eq!(echo_once(&mut three, "c").await, None, "past the cap");
    // The cap counts open connections: one closed makes room.
    drop(two);
    let mut admitted = false;
    for _ in 0..100 {
        let mut again = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        if echo_once(&mut again, "d").await.as_deref() == Some("d") {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "a closed connection's place was never given back");

    // Narrowed to a range this machine is not in: new connections are closed at once,
    // and none of them is recorded.
    let mut narrowed = spec("wl-tcp");
    narrowed.tcp_port = Some(9000);
    narrowed.tcp_allowed_cidrs = vec!["10.0.0.0/8".into()];
    fx.store
        .update_workload(
            TENANT_A,
            "wl-tcp",
            WorkloadChanges {
                spec: Some(narrowed),
                ..Default::default()
            },
            3,
        )
        .await
        .unwrap();
    fx.wait_for_route_where("wl-tcp", "the narrowed range", |r| {
        !r.tcp_admits("127.0.0.1".parse().unwrap())
    })
    .await;
    drop(one);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = fx
        .store
        .connections(TENANT_A, "wl-tcp")
        .await
        .unwrap()
        .len();
    let refused_before = refused_tcp(&router.metrics.render());
    for _ in 0..5 {
        let mut refused = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        assert_eq!(
            echo_once(&mut refused, "e").await,
            None,
            "outside the allowed ranges"
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        fx.store
            .connections(TENANT_A, "wl-tcp")
            .await
            .unwrap()
            .len(),
        before
    );
    assert_eq!(refused_tcp(&router.metrics.render()) - refused_before, 5);
    fx.shutdown().await;
}

fn refused_tcp(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "computearbitrage_router_refused_total{workload=\"wl-tcp\",reason=\"tcp\"} ",
            )
        })
        .expect("the refused counter is exported")
        .parse()
        .unwrap()
}

/// Sends `text` and reads the echo; `None` when the router closed the connection.
async fn echo_once(stream: &mut TcpStream, text: &str) -> Option<String> {
    if stream.write_all(text.as_bytes()).await.is_err() {
        return None;
    }
    let mut buf = vec![0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).to_string()),
        _ => None,
    }
}
