//! The route cache: what the router knows of every active workload, kept equal to the
//! store by [`RouteTable::reload`] at start and [`RouteTable::refresh`] on each change
//! the store announces. Lookups never touch the store.

use crate::error::RouterError;
use computearbitrage_core::conventions::cidr::Cidr;
use computearbitrage_core::WorkloadStatus;
use computearbitrage_store::{Scope, Store, WorkloadRecord};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

/// SHA-256 of a token: the key the table looks credentials up by (no hex, no
/// allocation on the request path).
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A stored hex hash as a lookup key; `None` for a malformed one (never matches).
fn key_of(hex_hash: &str) -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_hash, &mut key).ok()?;
    Some(key)
}

/// One workload's route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub workload_id: String,
    pub tenant_id: String,
    pub status: WorkloadStatus,
    /// `host:port` of the workload's HTTP port, once it has an instance.
    pub backend: Option<String>,
    /// `host:port` of the workload's TCP port, when it exposes one.
    pub tcp_backend: Option<String>,
    /// The router listener port of its TCP exposure.
    pub tcp_listen_port: Option<u16>,
    pub access_token_hash: Option<String>,
    /// Who may connect to the TCP listener.
    pub tcp_allowed: Vec<Cidr>,
}

impl Route {
    /// The route of a stored workload; `None` once it can never serve again.
    pub fn from_record(w: &WorkloadRecord) -> Option<Route> {
        if !w.status.is_active() {
            return None;
        }
        Some(Route {
            workload_id: w.id.clone(),
            tenant_id: w.tenant_id.clone(),
            status: w.status,
            backend: w.endpoint.clone(),
            tcp_backend: w.tcp_endpoint.clone(),
            tcp_listen_port: w.tcp_listen_port,
            access_token_hash: w.access_token_hash.clone(),
            // Stored ranges were validated; one that no longer parses admits nobody.
            tcp_allowed: w
                .spec
                .tcp_allowed()
                .iter()
                .filter_map(|c| Cidr::parse(c).ok())
                .collect(),
        })
    }

    /// Whether a TCP client at `ip` may connect.
    pub fn tcp_admits(&self, ip: std::net::IpAddr) -> bool {
        self.tcp_allowed.iter().any(|c| c.contains(ip))
    }

    /// Where requests go now, or `None` while the workload cannot take them (it is
    /// starting, stopping or being moved): the router answers 503.
    pub fn serving_backend(&self) -> Option<&str> {
        match self.status {
            WorkloadStatus::Running | WorkloadStatus::Unhealthy => self.backend.as_deref(),
            _ => None,
        }
    }

    pub fn serving_tcp_backend(&self) -> Option<&str> {
        match self.status {
            WorkloadStatus::Running | WorkloadStatus::Unhealthy => self.tcp_backend.as_deref(),
            _ => None,
        }
    }
}

/// The answer to "may this credential reach this workload?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// No credential, or one the router does not know.
    Unauthenticated,
    /// Unknown workload, or one the credential may not see: the two look the same.
    NotFound,
    Granted(Arc<Route>),
}

#[derive(Default)]
struct Tables {
    routes: HashMap<String, Arc<Route>>,
    /// Route-scoped tenant token hash → (tenant, expiry in unix seconds).
    tenant_tokens: HashMap<[u8; 32], (String, Option<i64>)>,
    /// Workload access-token hash → workload id.
    workload_tokens: HashMap<[u8; 32], String>,
}

/// The in-memory route table.
pub struct RouteTable {
    tables: RwLock<Tables>,
    /// Bumped on every change, for the TCP listener manager and tests.
    version: watch::Sender<u64>,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            tables: RwLock::new(Tables::default()),
            version: watch::channel(0).0,
        }
    }
}

impl RouteTable {
    pub fn new() -> Arc<RouteTable> {
        Arc::new(RouteTable::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        // A poisoned lock means a panic mid-update of plain maps; they stay usable.
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// Replaces everything with the store's current routes and tokens.
    pub async fn reload(&self, store: &dyn Store) -> Result<usize, RouterError> {
        let workloads = store.workloads_in(&WorkloadStatus::active()).await?;
        let tokens = store.list_tokens().await?;
        let mut fresh = Tables::default();
        for record in &workloads {
            if let Some(route) = Route::from_record(record) {
                if let Some(key) = route.access_token_hash.as_deref().and_then(key_of) {
                    fresh.workload_tokens.insert(key, route.workload_id.clone());
                }
                fresh
                    .routes
                    .insert(route.workload_id.clone(), Arc::new(route));
            }
        }
        // Only tenant tokens with the `route` scope open workloads: the tenant's API
        // tokens (which can change things) never travel in browser URLs.
        fresh.tenant_tokens = tokens
            .into_iter()
            .filter(|t| t.scopes.contains(Scope::Route) && t.revoked_at.is_none())
            .filter_map(|t| key_of(&t.token_hash).map(|k| (k, (t.tenant_id, t.expires_at))))
            .collect();
        let count = fresh.routes.len();
        *self.write() = fresh;
        self.bump();
        Ok(count)
    }

    /// Re-reads one workload from the store and updates or drops its route.
    pub async fn refresh(&self, store: &dyn Store, workload_id: &str) -> Result<(), RouterError> {
        let record = store.workload_for_routing(workload_id).await?;
        let route = record.as_ref().and_then(Route::from_record);
        self.set(workload_id, route);
        Ok(())
    }

    /// Sets (or with `None` removes) one route.
    pub fn set(&self, workload_id: &str, route: Option<Route>) {
        {
            let mut t = self.write();
            if let Some(old) = t.routes.remove(workload_id) {
                if let Some(key) = old.access_token_hash.as_deref().and_then(key_of) {
                    t.workload_tokens.remove(&key);
                }
            }
            if let Some(route) = route {
                if let Some(key) = route.access_token_hash.as_deref().and_then(key_of) {
                    t.workload_tokens.insert(key, route.workload_id.clone());
                }
                t.routes.insert(workload_id.to_string(), Arc::new(route));
            }
        }
        self.bump();
    }

    pub fn get(&self, workload_id: &str) -> Option<Arc<Route>> {
        self.read().routes.get(workload_id).cloned()
    }

    /// Every route with a TCP listener port.
    pub fn tcp_routes(&self) -> Vec<Arc<Route>> {
        self.read()
            .routes
            .values()
            .filter(|r| r.tcp_listen_port.is_some())
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.read().routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver that sees the table's version change after every update.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Decides access with one read of the table. Whether the workload does not exist
    /// or belongs to someone else, the answer is the same [`Access::NotFound`].
    pub fn authorize(&self, token: Option<&str>, workload_id: &str) -> Access {
        self.authorize_until(token, workload_id).0
    }

    /// [`RouteTable::authorize`], and until when a grant holds (unix seconds) when the
    /// credential expires: a remembered grant must not outlive it.
    pub fn authorize_until(&self, token: Option<&str>, workload_id: &str) -> (Access, Option<i64>) {
        let Some(token) = token else {
            return (Access::Unauthenticated, None);
        };
        let key = digest(token);
        // One read of the table for the whole decision.
        let t = self.read();
        let (allowed_tenant, expires) =
            match (t.tenant_tokens.get(&key), t.workload_tokens.get(&key)) {
                (Some((_, Some(expires))), None) if unix_now() >= *expires => {
                    return (Access::Unauthenticated, None)
                }
                (Some((tenant, expires)), _) => (Some(tenant.as_str()), *expires),
                (None, Some(_)) => (None, None),
                (None, None) => return (Access::Unauthenticated, None),
            };
        let Some(route) = t.routes.get(workload_id) else {
            return (Access::NotFound, None);
        };
        let allowed = match allowed_tenant {
            Some(tenant) => tenant == route.tenant_id,
            None => t.workload_tokens.get(&key).map(String::as_str) == Some(workload_id),
        };
        if allowed {
            (Access::Granted(route.clone()), expires)
        } else {
            (Access::NotFound, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, tenant: &str, status: WorkloadStatus, token: &str) -> Route {
        Route {
            workload_id: id.into(),
            tenant_id: tenant.into(),
            status,
            backend: Some("127.0.0.1:1".into()),
            tcp_backend: None,
            tcp_listen_port: None,
            access_token_hash: Some(hex::encode(digest(token))),
            tcp_allowed: Vec::new(),
        }
    }

    #[test]
    fn access_is_decided_by_tenant_or_workload_token() {
        let table = RouteTable::default();
        table
            .write()
            .tenant_tokens
            .insert(digest("tenant-a"), ("a".into(), None));
        table
            .write()
            .tenant_tokens
            .insert(digest("tenant-b"), ("b".into(), None));
        // A route token that has expired opens nothing.
        table
            .write()
            .tenant_tokens
            .insert(digest("tenant-a-old"), ("a".into(), Some(1)));
        table.set(
            "wl-1",
            Some(route("wl-1", "a", WorkloadStatus::Running, "wl-1-token")),
        );
        table.set(
            "wl-2",
            Some(route("wl-2", "a", WorkloadStatus::Running, "wl-2-token")),
        );

        assert_eq!(table.authorize(None, "wl-1"), Access::Unauthenticated);
        assert_eq!(
            table.authorize(Some("tenant-a-old"), "wl-1"),
            Access::Unauthenticated
        );
        assert_eq!(
            table.authorize(Some("nope"), "wl-1"),
            Access::Unauthenticated
        );
        assert_eq!(
            table.authorize(Some("nope"), "wl-missing"),
            Access::Unauthenticated
        );
        assert!(matches!(
            table.authorize(Some("tenant-a"), "wl-1"),
            Access::Granted(_)
        ));
        assert!(matches!(
            table.authorize(Some("wl-1-token"), "wl-1"),
            Access::Granted(_)
        ));
        // Another tenant's workload, another workload's token and a missing workload
        // all look the same.
        assert_eq!(table.authorize(Some("tenant-b"), "wl-1"), Access::NotFound);
        assert_eq!(
            table.authorize(Some("wl-2-token"), "wl-1"),
            Access::NotFound
        );
        assert_eq!(
            table.authorize(Some("tenant-b"), "wl-missing"),
            Access::NotFound
        );

        // Removing a route forgets its token too.
        table.set("wl-2", None);
        assert_eq!(
            table.authorize(Some("wl-2-token"), "wl-1"),
            Access::Unauthenticated
        );
    }

    #[test]
    fn only_running_or_unhealthy_routes_serve() {
        for status in WorkloadStatus::ALL {
            let r = route("wl-1", "a", status, "t");
            let serves = r.serving_backend().is_some();
            assert_eq!(
                serves,
                matches!(status, WorkloadStatus::Running | WorkloadStatus::Unhealthy),
                "{status}"
            );
        }
    }
}
