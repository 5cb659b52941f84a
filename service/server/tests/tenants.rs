//! Two tenants on one service, through the real binary: neither can read, change,
//! route to or list the other's workloads, runs, billing, notifications, connections
//! or audit log; tokens carry scopes, expire and are revoked at once; every write is
//! audited with its token; each token is rate limited.

mod common;

use common::*;
use computearbitrage_api::pb;
use computearbitrage_api::Reason;
use std::time::Duration;

fn as_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

async fn issue(
    service: &Service,
    tenant: &str,
    scopes: &str,
    expires_in_seconds: u64,
) -> (String, String) {
    let created = service
        .admin()
        .await
        .create_token(authed(pb::CreateTokenRequest {
            tenant: tenant.into(),
            scopes: scopes.into(),
            label: format!("{tenant}-{scopes}"),
            expires_in_seconds,
        }))
        .await
        .unwrap()
        .into_inner();
    (created.token, created.info.unwrap().id)
}

async fn router_status(url: &str, token: &str) -> u16 {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn reason<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Option<Reason> {
    Reason::of(&result.unwrap_err())
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_cannot_see_or_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let mut admin = service.admin().await;
    for (id, quota) in [("acme", Some(3)), ("globex", None)] {
        admin
            .create_tenant(authed(pb::CreateTenantRequest {
                id: id.into(),
                max_concurrent_workloads: quota,
            }))
            .await
            .unwrap();
    }
    let tenants = admin
        .list_tenants(authed(pb::ListTenantsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tenants;
    // In creation order, ties (same second) by id; so compared as a set here.
    let mut listed: Vec<_> = tenants
        .iter()
        .map(|t| (t.id.as_str(), t.max_concurrent_workloads))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![("acme", Some(3)), ("default", None), ("globex", None)]
    );
    let (acme, acme_id) = issue(&service, "acme", "write", 0).await;
    let (acme_read, acme_read_id) = issue(&service, "acme", "read", 0).await;
    let (acme_route, _) = issue(&service, "acme", "route", 0).await;
    let (globex, _) = issue(&service, "globex", "write", 0).await;
    let (globex_route, _) = issue(&service, "globex", "route", 0).await;

    // Only the operator's tenant may hold admin.
    let refused = admin
        .create_token(authed(pb::CreateTokenRequest {
            tenant: "acme".into(),
            scopes: "admin".into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(reason(refused), Some(Reason::InvalidArgument));

    // Each tenant runs a workload of the same name.
    let mut client = service.workloads().await;
    let mut ids = Vec::new();
    for token in [&acme, &globex] {
        let created = client
            .apply_workload(as_token(
                pb::ApplyWorkloadRequest {
                    spec: Some(spec("shared-name", &[])),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        ids.push(created.id);
    }
    let (acme_wl, globex_wl) = (ids[0].clone(), ids[1].clone());
    assert_ne!(acme_wl, globex_wl, "names are per tenant");
    let mut running = Vec::new();
    for (token, id) in [(&acme, &acme_wl), (&globex, &globex_wl)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let w = client
                .get_workload(as_token(pb::GetWorkloadRequest { id: id.clone() }, token))
                .await
                .unwrap()
                .into_inner();
            if w.status == "RUNNING" {
                running.push(w);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{id} is {}", w.status);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let acme_run = client
        .list_runs(as_token(
            pb::ListRunsRequest {
                workload_id: acme_wl.clone(),
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner()
        .runs[0]
        .id
        .clone();

    // globex asks about acme's workload every way there is: it does not exist.
    let g = |m| as_token(m, &globex);
    assert_eq!(
        reason(
            client
                .get_workload(g(pb::GetWorkloadRequest {
                    id: acme_wl.clone()
                }))
                .await
        ),
        Some(Reason::NotFound)
    );
    assert_eq!(
        reason(
            client
                .update_workload(as_token(
                    pb::UpdateWorkloadRequest {
                        id: acme_wl.clone(),
                        ..Default::default()
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::NotFound)
    );
    assert_eq!(
        reason(
            client
                .delete_workload(as_token(
                    pb::DeleteWorkloadRequest {
                        id: acme_wl.clone(),
                        reason: "x".into()
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::NotFound)
    );
    assert_eq!(
        reason(
            client
                .list_runs(as_token(
                    pb::ListRunsRequest {
                        workload_id: acme_wl.clone()
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::NotFound)
    );
    assert_eq!(
        reason(
            client
                .get_billing(as_token(
                    pb::GetBillingRequest {
                        workload_id: acme_wl.clone()
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::NotFound)
    );
    assert_eq!(
        reason(
            client
                .get_logs(as_token(
                    pb::GetLogsRequest {
                        workload_id: acme_wl.clone(),
                        after_seq: 0,
                        limit: 0,
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::NotFound),
        "another tenant's logs are not even known to exist"
    );
    assert_eq!(
        reason(
            client
                .list_connections(as_token(
                    pb::ListConnectionsRequest {
                        workload_id: acme_wl.clone()
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::NotFound)
    );
    assert_eq!(
        reason(
            client
                .replay_dead_letter(as_token(
                    pb::ReplayDeadLetterRequest {
                        run_id: acme_run.clone()
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::NotFound)
    );
    assert_eq!(
        reason(
            admin
                .inject_interruption(as_token(
                    pb::InjectInterruptionRequest {
                        workload_id: acme_wl.clone(),
                        delay_ms: 0
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::NotFound)
    );
    let theirs = client
        .list_notifications(as_token(
            pb::ListNotificationsRequest {
                workload_id: acme_wl.clone(),
            },
            &globex,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(theirs.notifications.is_empty());
    let mine = client
        .list_notifications(as_token(
            pb::ListNotificationsRequest {
                workload_id: acme_wl.clone(),
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        !mine.notifications.is_empty(),
        "acme sees its own (the ready notice)"
    );
    // Listings that span tenants need admin.
    assert_eq!(
        reason(
            admin
                .list_audit(as_token(
                    pb::ListAuditRequest {
                        tenant: "acme".into(),
                        limit: 10
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::PermissionDenied)
    );
    assert_eq!(
        reason(
            admin
                .list_tokens(as_token(pb::ListTokensRequest::default(), &globex))
                .await
        ),
        Some(Reason::PermissionDenied)
    );
    assert_eq!(
        reason(
            admin
                .create_tenant(as_token(
                    pb::CreateTenantRequest {
                        id: "evil".into(),
                        max_concurrent_workloads: None
                    },
                    &globex
                ))
                .await
        ),
        Some(Reason::PermissionDenied)
    );
    // acme is still as it was.
    assert_eq!(
        client
            .get_workload(as_token(
                pb::GetWorkloadRequest {
                    id: acme_wl.clone()
                },
                &acme
            ))
            .await
            .unwrap()
            .into_inner()
            .status,
        "RUNNING"
    );

    // The router: each tenant's route token opens its own workload only, and a
    // foreign workload looks exactly like a missing one.
    let acme_endpoint = &running[0].endpoint;
    assert_eq!(router_status(acme_endpoint, &acme_route).await, 200);
    assert_eq!(router_status(acme_endpoint, &globex_route).await, 404);
    assert_eq!(
        router_status(acme_endpoint, &running[1].access_token).await,
        404
    );
    assert_eq!(
        router_status(&running[1].endpoint, &globex_route).await,
        200
    );
    // API tokens are no router credentials, not even the tenant's write token.
    assert_eq!(router_status(acme_endpoint, &acme).await, 401);

    // Scopes: read can read and not write; the refusal is audited.
    client
        .get_workload(as_token(
            pb::GetWorkloadRequest {
                id: acme_wl.clone(),
            },
            &acme_read,
        ))
        .await
        .unwrap();
    assert_eq!(
        reason(
            client
                .apply_workload(as_token(
                    pb::ApplyWorkloadRequest {
                        spec: Some(spec("other", &[]))
                    },
                    &acme_read
                ))
                .await
        ),
        Some(Reason::PermissionDenied)
    );
    let audit = admin
        .list_audit(as_token(
            pb::ListAuditRequest {
                tenant: String::new(),
                limit: 50,
            },
            &acme_read,
        ))
        .await
        .unwrap()
        .into_inner()
        .entries;
    let seen: Vec<(String, String, String, String)> = audit
        .iter()
        .map(|e| {
            (
                e.action.clone(),
                e.token_id.clone(),
                e.target.clone(),
                e.outcome.clone(),
            )
        })
        .collect();
    assert!(
        seen.contains(&(
            "ApplyWorkload".into(),
            acme_id.clone(),
            acme_wl.clone(),
            "ok".into()
        )),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(
            "ApplyWorkload".into(),
            acme_read_id.clone(),
            "other".into(),
            "permission-denied".into()
        )),
        "{seen:?}"
    );
    assert!(
        audit.iter().all(|e| e.tenant == "acme"),
        "only acme's own entries: {audit:?}"
    );
    let all = admin
        .list_audit(authed(pb::ListAuditRequest {
            tenant: "*".into(),
            limit: 100,
        }))
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert!(all
        .iter()
        .any(|e| e.tenant == "globex" && e.action == "DeleteWorkload" && e.outcome == "not-found"));
    assert!(all
        .iter()
        .any(|e| e.tenant == "default" && e.action == "CreateTenant" && e.target == "acme"));

    // Revoked: refused at once. Expired: refused once its time is up.
    admin
        .revoke_token(authed(pb::RevokeTokenRequest {
            id: acme_read_id.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(
        reason(
            client
                .get_workload(as_token(
                    pb::GetWorkloadRequest {
                        id: acme_wl.clone()
                    },
                    &acme_read
                ))
                .await
        ),
        Some(Reason::Unauthenticated)
    );
    let (short, _) = issue(&service, "acme", "read", 1).await;
    client
        .get_workload(as_token(
            pb::GetWorkloadRequest {
                id: acme_wl.clone(),
            },
            &short,
        ))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        reason(
            client
                .get_workload(as_token(
                    pb::GetWorkloadRequest {
                        id: acme_wl.clone()
                    },
                    &short
                ))
                .await
        ),
        Some(Reason::Unauthenticated)
    );
    let listed = admin
        .list_tokens(authed(pb::ListTokensRequest {
            tenant: "acme".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert!(listed
        .iter()
        .any(|t| t.id == acme_read_id && !t.revoked_at.is_empty()));
    assert!(listed.iter().all(|t| t.tenant == "acme"));
    let stored = std::fs::read(dir.path().join("state.db")).unwrap();
    for token in [&acme, &acme_read, &globex] {
        assert!(
            !stored.windows(token.len()).any(|w| w == token.as_bytes()),
            "a token is stored in plain text"
        );
    }

    for (token, id) in [(&acme, &acme_wl), (&globex, &globex_wl)] {
        client
            .delete_workload(as_token(
                pb::DeleteWorkloadRequest {
                    id: id.clone(),
                    reason: "test".into(),
                },
                token,
            ))
            .await
            .unwrap();
    }
    for (token, id) in [(&acme, &acme_wl), (&globex, &globex_wl)] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while client
            .get_workload(as_token(pb::GetWorkloadRequest { id: id.clone() }, token))
            .await
            .unwrap()
            .into_inner()
            .status
            != "TERMINATED"
        {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    service.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn each_token_is_rate_limited_with_a_retry_delay() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(
        dir.path(),
        &[
            ("COMPUTEARBITRAGE_API__RATE_LIMIT_PER_SECOND", "2"),
            ("COMPUTEARBITRAGE_API__RATE_LIMIT_BURST", "3"),
        ],
    );
    let mut client = service.workloads().await;
    let mut limited = None;
    for _ in 0..6 {
        match client
            .list_dead_letters(authed(pb::ListDeadLettersRequest {}))
            .await
        {
            Ok(_) => {}
            Err(status) => {
                limited = Some(status);
                break;
            }
        }
    }
    let status = limited.expect("the fourth call in a burst of three is limited");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(Reason::of(&status), Some(Reason::RateLimited));
    assert!(computearbitrage_api::is_retryable(&status));
    let wait: u64 = status
        .metadata()
        .get("x-computearbitrage-retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=500).contains(&wait), "{wait} ms");
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    client
        .list_dead_letters(authed(pb::ListDeadLettersRequest {}))
        .await
        .expect("after the wait a call goes through");
    service.stop();
}
