//! Where webhooks may go, through the real service: internal targets are refused when
//! set and at connect time, redirects are not followed, https deliveries verify the
//! receiver, and one tenant's dead endpoint does not hold up another's deliveries.

mod common;

use common::*;
use computearbitrage_api::pb;
use computearbitrage_api::Reason;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "webhook-secret-for-tests-0123";

fn as_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Reads one request head (enough for these tests) and answers `reply`.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut socket: S,
    reply: &[u8],
) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = socket.write_all(reply).await;
    let _ = socket.shutdown().await;
    String::from_utf8_lossy(&buf).to_string()
}

/// A plain HTTP server answering `reply` to every request; returns its port and the
/// request heads it saw.
async fn serve(reply: &'static [u8]) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let head = answer(socket, reply).await;
                log.lock().unwrap().push(head);
            });
        }
    });
    (port, seen)
}

async fn notifications(
    client: &mut pb::workloads_client::WorkloadsClient<tonic::transport::Channel>,
    id: &str,
    token: &str,
) -> Vec<pb::Notification> {
    client
        .list_notifications(as_token(
            pb::ListNotificationsRequest {
                workload_id: id.into(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
        .notifications
}

async fn wait_notification(
    client: &mut pb::workloads_client::WorkloadsClient<tonic::transport::Channel>,
    id: &str,
    token: &str,
    done: impl Fn(&pb::Notification) -> bool,
) -> pb::Notification {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(n) = notifications(client, id, token)
            .await
            .into_iter()
            .find(|n| done(n))
        {
            return n;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            notifications(client, id, token).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn running_workload(service: &Service, name: &str, token: &str) -> String {
    let mut client = service.workloads().await;
    let created = client
        .apply_workload(as_token(
            pb::ApplyWorkloadRequest {
                spec: Some(spec(name, &[])),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    created.id
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_targets_are_refused_when_set_and_when_resolved() {
    let dir = tempfile::tempdir().unwrap();
    // The default: private targets are not allowed.
    let service = Service::start(
        dir.path(),
        &[(
            "COMPUTEARBITRAGE_NOTIFICATIONS__ALLOW_PRIVATE_TARGETS",
            "false",
        )],
    );
    let (port, seen) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    let mut admin = service.admin().await;
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]/hook".to_string(),
    ] {
        let err = admin
            .set_webhook(authed(pb::SetWebhookRequest {
                url: url.clone(),
                secret: SECRET.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(Reason::of(&err), Some(Reason::InvalidArgument), "{url}");
        assert!(
            err.message()
                .contains("loopback, private, link-local or metadata"),
            "{}",
            err.message()
        );
    }
    // A name is only resolved at connect time, and refused there.
    admin
        .set_webhook(authed(pb::SetWebhookRequest {
            url: format!("http://localhost:{port}/hook"),
            secret: SECRET.into(),
        }))
        .await
        .unwrap();
    let id = running_workload(&service, "guarded", TOKEN).await;
    let mut client = service.workloads().await;
    let refused = wait_notification(&mut client, &id, TOKEN, |n| n.attempts > 0).await;
    assert!(
        refused
            .last_error
            .contains("refused: localhost resolves only to addresses webhooks may not reach"),
        "{refused:?}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the internal address"
    );
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed_and_errors_do_not_map_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let (target, reached) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    let redirect: &'static [u8] = Box::leak(
        format!("HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:{target}/elsewhere\r\ncontent-length: 0\r\n\r\n").into_bytes().into_boxed_slice(),
    );
    let (port, _) = serve(redirect).await;
    let mut admin = service.admin().await;
    admin
        .set_webhook(authed(pb::SetWebhookRequest {
            url: format!("http://127.0.0.1:{port}/hook"),
            secret: SECRET.into(),
        }))
        .await
        .unwrap();
    let id = running_workload(&service, "redirected", TOKEN).await;
    let mut client = service.workloads().await;
    let failed = wait_notification(&mut client, &id, TOKEN, |n| n.attempts > 0).await;
    assert!(
        failed
            .last_error
            .contains("answered HTTP 302 (redirects are not followed"),
        "{failed:?}"
    );
    assert!(
        reached.lock().unwrap().is_empty(),
        "the redirect's target was never asked"
    );

    // Nothing listening and a closed port read alike: no detail of the network.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    admin
        .set_webhook(authed(pb::SetWebhookRequest {
            url: format!("http://127.0.0.1:{free}/hook"),
            secret: SECRET.into(),
        }))
        .await
        .unwrap();
    let second = running_workload(&service, "unanswered", TOKEN).await;
    let failed = wait_notification(&mut client, &second, TOKEN, |n| n.attempts > 0).await;
    assert_eq!(
        failed.last_error,
        "no HTTP answer from the webhook (connection, TLS or a 10 s timeout)"
    );
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn https_webhooks_deliver_to_a_receiver_the_service_trusts() {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    // A CA and a certificate for localhost it signs, made here.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();

    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let log = bodies.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(socket).await {
                    let head = answer(tls, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
                    log.lock().unwrap().push(head);
                }
            });
        }
    });

    let data = dir.path().join("data");
    let service = Service::start(
        &data,
        &[(
            "COMPUTEARBITRAGE_NOTIFICATIONS__CA_FILE",
            ca_file.to_str().unwrap(),
        )],
    );
    service
        .admin()
        .await
        .set_webhook(authed(pb::SetWebhookRequest {
            url: format!("https://localhost:{port}/hook"),
            secret: SECRET.into(),
        }))
        .await
        .unwrap();
    let id = running_workload(&service, "tls-hook", TOKEN).await;
    let mut client = service.workloads().await;
    let delivered = wait_notification(&mut client, &id, TOKEN, |n| n.status == "delivered").await;
    assert_eq!(delivered.kind, "workload.ready");
    assert!(bodies
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.starts_with("POST /hook")));
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_dead_endpoint_does_not_delay_another_tenants_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut admin = service.admin().await;
    let mut tokens = Vec::new();
    for tenant in ["slow", "fast"] {
        admin
            .create_tenant(authed(pb::CreateTenantRequest {
                id: tenant.into(),
                max_concurrent_workloads: None,
            }))
            .await
            .unwrap();
        let token = admin
            .create_token(authed(pb::CreateTokenRequest {
                tenant: tenant.into(),
                scopes: "write".into(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .token;
        tokens.push(token);
    }
    // slow's endpoint accepts and never answers (each delivery waits its 10 s).
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_port = hang.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let holder = held.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = hang.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let (fast_port, fast_seen) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
    for (token, port) in [(&tokens[0], hang_port), (&tokens[1], fast_port)] {
        admin
            .set_webhook(as_token(
                pb::SetWebhookRequest {
                    url: format!("http://127.0.0.1:{port}/hook"),
                    secret: SECRET.into(),
                },
                token,
            ))
            .await
            .unwrap();
    }
    let slow = running_workload(&service, "slow-wl", &tokens[0]).await;
    let fast = running_workload(&service, "fast-wl", &tokens[1]).await;
    let mut client = service.workloads().await;
    // fast's notice is delivered while slow's first attempt is still hanging.
    let delivered =
        wait_notification(&mut client, &fast, &tokens[1], |n| n.status == "delivered").await;
    assert_eq!(delivered.kind, "workload.ready");
    let stuck = notifications(&mut client, &slow, &tokens[0]).await;
    assert!(
        stuck
            .iter()
            .all(|n| n.status == "pending" && n.attempts == 0),
        "slow's delivery is still in its first attempt: {stuck:?}"
    );
    // The slow attempt may still be connecting on a loaded machine: its connection
    // shows up, and is held.
    let connected = std::time::Instant::now() + Duration::from_secs(10);
    while held.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < connected,
            "slow's endpoint holds a connection"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!fast_seen.lock().unwrap().is_empty());
    service.stop();
}
