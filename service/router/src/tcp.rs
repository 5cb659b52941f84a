//! The TCP router: one listener per workload that asked for TCP exposure, on its
//! stable port, forwarding each connection to the workload's backend of the moment.
//! A backend change sends new connections to the new backend while existing ones
//! drain on the old one. Every open connection has a row in the store with its byte
//! counts; the row is removed on close, and a restarting router removes the rows its
//! previous run left.
//!
//! A connection from outside the workload's `tcp_allowed_cidrs`, or past its
//! per-workload cap, is closed at once, before anything is recorded. Rows are written
//! in batches (every flush, one transaction for all opens, counters and closes), so a
//! flood of connections costs the store one write per flush, not one per connection.

use crate::error::RouterError;
use crate::metrics::{GaugeGuard, Metrics};
use crate::table::RouteTable;
use computearbitrage_store::{ConnectionBatch, ConnectionRecord, Store};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes per read: large enough for bulk transfers, small enough per connection.
const PUMP_BUFFER: usize = 64 * 1024;

/// How often listeners that failed to bind are tried again.
const REBIND_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Address the workload listeners bind.
    pub bind: IpAddr,
    /// Names this router's rows in the connection table.
    pub router_id: String,
    pub connect_timeout: Duration,
    /// Most connections open at once to one workload.
    pub max_connections_per_workload: usize,
}

#[derive(Default)]
struct Counters {
    to_backend: AtomicU64,
    from_backend: AtomicU64,
    /// What the store was last told, to write only what changed.
    flushed: Mutex<(u64, u64)>,
}

struct Listener {
    workload_id: String,
    accept: JoinHandle<()>,
}

pub struct TcpRouter {
    table: Arc<RouteTable>,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    settings: TcpSettings,
    listeners: Mutex<HashMap<u16, Listener>>,
    open: Mutex<HashMap<String, Arc<Counters>>>,
    /// Open connections per workload, for the cap.
    per_workload: Mutex<HashMap<String, usize>>,
    /// Rows not written yet: opened connections, and closed ones whose row exists.
    pending: Mutex<ConnectionBatch>,
    /// Set at the end of the drain period: connections still open are cut.
    cut: watch::Sender<bool>,
}

impl TcpRouter {
    pub fn new(
        table: Arc<RouteTable>,
        metrics: Arc<Metrics>,
        store: Arc<dyn Store>,
        settings: TcpSettings,
    ) -> Arc<TcpRouter> {
        Arc::new(TcpRouter {
            table,
            metrics,
            store,
            settings,
            listeners: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            per_workload: Mutex::new(HashMap::new()),
            pending: Mutex::new(ConnectionBatch::default()),
            cut: watch::channel(false).0,
        })
    }

    /// Ports with a running listener, and their workloads.
    pub fn listening(&self) -> Vec<(u16, String)> {
        let mut out: Vec<(u16, String)> = lock(&self.listeners)
            .iter()
            .map(|(port, l)| (*port, l.workload_id.clone()))
            .collect();
        out.sort();
        out
    }

    /// Open connections right now.
    pub fn open_connections(&self) -> usize {
        lock(&self.open).len()
    }

    /// Clears the rows of this router's previous run, then keeps listeners equal to
    /// the route table until `shutdown`, then drains open connections for up to
    /// `grace`.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> Result<(), RouterError> {
        let stale = self
            .store
            .close_router_connections(&self.settings.router_id)
            .await?;
        if stale > 0 {
            tracing::info!(router = %self.settings.router_id, rows = stale, "closed connection rows left by the previous run");
        }
        let mut changes = self.table.changes();
        tokio::pin!(shutdown);
        loop {
            self.reconcile().await;
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = tokio::time::sleep(REBIND_INTERVAL) => {}
                () = &mut shutdown => break,
            }
        }
        // Stop accepting, then drain.
        for (_, listener) in lock(&self.listeners).drain() {
            listener.accept.abort();
        }
        let drained = tokio::time::timeout(grace, async {
            while self.open_connections() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = self.open_connections(),
                "TCP connections still open after the grace period; closing them"
            );
            let _ = self.cut.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while self.open_connections() > 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await;
        }
        self.flush().await?;
        Ok(())
    }

    /// Opens listeners for new TCP routes and closes those of routes that are gone.
    async fn reconcile(self: &Arc<Self>) {
        let wanted: HashMap<u16, String> = self
            .table
            .tcp_routes()
            .into_iter()
            .filter_map(|r| r.tcp_listen_port.map(|p| (p, r.workload_id.clone())))
            .collect();
        {
            let mut listeners = lock(&self.listeners);
            listeners.retain(|port, listener| {
                let keep = wanted.get(port) == Some(&listener.workload_id);
                if !keep {
                    // Existing connections are separate tasks and drain on their own.
                    listener.accept.abort();
                    tracing::info!(port, workload = %listener.workload_id, "TCP listener closed");
                }
                keep
            });
        }
        for (port, workload_id) in wanted {
            if lock(&self.listeners).contains_key(&port) {
                continue;
            }
            let address = SocketAddr::new(self.settings.bind, port);
            match TcpListener::bind(address).await {
                Ok(listener) => {
                    tracing::info!(%address, workload = %workload_id, "TCP listener open");
                    let accept =
                        tokio::spawn(self.clone().accept_loop(listener, workload_id.clone()));
                    lock(&self.listeners).insert(
                        port,
                        Listener {
                            workload_id,
                            accept,
                        },
                    );
                }
                Err(e) => {
                    tracing::warn!(%address, workload = %workload_id, error = %e, "cannot open the TCP listener; will retry");
                }
            }
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener, workload_id: String) {
        loop {
            match listener.accept().await {
                Ok((client, peer)) => {
                    tokio::spawn(self.clone().forward(client, peer, workload_id.clone()));
                }
                Err(e) => {
                    tracing::warn!(workload = %workload_id, error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    async fn forward(self: Arc<Self>, client: TcpStream, peer: SocketAddr, workload_id: String) {
        // The backend of the moment: a moved workload's new connections go to the
        // new backend.
        let Some(route) = self.table.get(&workload_id) else {
            return;
        };
        let metrics = self.metrics.workload(&workload_id);
        if !route.tcp_admits(peer.ip()) {
            metrics.local().tcp_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(workload = %workload_id, %peer, "TCP connection refused: not in tcp_allowed_cidrs");
            return;
        }
        // Counted from here; the guard gives the slot back however the task ends.
        let Some(_slot) = Slot::take(
            &self.per_workload,
            &workload_id,
            self.settings.max_connections_per_workload,
        ) else {
            metrics.local().tcp_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(workload = %workload_id, %peer, cap = self.settings.max_connections_per_workload, "TCP connection refused: the workload's connection cap is reached");
            return;
        };
        let Some(backend) = route.serving_tcp_backend().map(str::to_owned) else {
            tracing::debug!(workload = %workload_id, status = %route.status, "TCP connection refused: workload not serving");
            return;
        };
        let server = match tokio::time::timeout(
            self.settings.connect_timeout,
            TcpStream::connect(&backend),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::warn!(workload = %workload_id, %backend, error = %e, "TCP backend refused the connection");
                return;
            }
            Err(_) => {
                tracing::warn!(workload = %workload_id, %backend, "TCP backend connect timed out");
                return;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = connection_id();
        let record = ConnectionRecord {
            id: id.clone(),
            router_id: self.settings.router_id.clone(),
            tenant_id: route.tenant_id.clone(),
            workload_id: workload_id.clone(),
            backend: backend.clone(),
            client: peer.to_string(),
            started_at: unix_now(),
            bytes_to_backend: 0,
            bytes_from_backend: 0,
        };
        // Written with the next flush.
        lock(&self.pending).opened.push(record);
        let counters = Arc::new(Counters::default());
        lock(&self.open).insert(id.clone(), counters.clone());
        metrics
            .local()
            .tcp_connections
            .fetch_add(1, Ordering::Relaxed);
        let gauge = GaugeGuard::new(metrics.clone(), |m| &m.active_tcp);
        tracing::debug!(connection = %id, workload = %workload_id, %backend, %peer, "TCP connection open");

        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        let up = pump(
            client_read,
            server_write,
            &counters.to_backend,
            &metrics.local().bytes_to_backend,
        );
        let down = pump(
            server_read,
            client_write,
            &counters.from_backend,
            &metrics.local().bytes_from_backend,
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut cut = self.cut.subscribe();
        while !(up_done && down_done) {
            tokio::select! {
                result = &mut up, if !up_done => {
                    up_done = true;
                    if result.is_err() { break }
                }
                result = &mut down, if !down_done => {
                    down_done = true;
                    if result.is_err() { break }
                }
                _ = cut.wait_for(|cut| *cut) => break,
            }
        }
        drop(gauge);
        lock(&self.open).remove(&id);
        {
            // Never written: forget it; written: remove its row with the next flush.
            let mut pending = lock(&self.pending);
            let before = pending.opened.len();
            pending.opened.retain(|r| r.id != id);
            if pending.opened.len() == before {
                pending.closed.push(id.clone());
            }
        }
        tracing::debug!(
            connection = %id,
            to_backend = counters.to_backend.load(Ordering::Relaxed),
            from_backend = counters.from_backend.load(Ordering::Relaxed),
            "TCP connection closed"
        );
    }

    /// Writes what changed since the last flush in one transaction: opened
    /// connections, the byte counts of open ones that moved data, closed ones.
    pub async fn flush(&self) -> Result<(), RouterError> {
        let changed: Vec<(String, u64, u64)> = lock(&self.open)
            .iter()
            .filter_map(|(id, c)| {
                let now = (
                    c.to_backend.load(Ordering::Relaxed),
                    c.from_backend.load(Ordering::Relaxed),
                );
                let mut flushed = lock(&c.flushed);
                (*flushed != now).then(|| {
                    *flushed = now;
                    (id.clone(), now.0, now.1)
                })
            })
            .collect();
        let mut batch = std::mem::take(&mut *lock(&self.pending));
        batch.bytes = changed;
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.apply_connection_batch(batch.clone()).await {
            // Kept for the next flush, so a store blip loses no row.
            let mut pending = lock(&self.pending);
            let newer = std::mem::take(&mut *pending);
            batch.opened.extend(newer.opened);
            batch.closed.extend(newer.closed);
            batch.bytes.clear();
            *pending = batch;
            return Err(e.into());
        }
        Ok(())
    }
}

/// Copies one direction until EOF (then half-closes the other side) or an error.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    connection: &AtomicU64,
    workload: &AtomicU64,
) -> std::io::Result<()> {
    let mut buffer = vec![0u8; PUMP_BUFFER];
    loop {
        let n = from.read(&mut buffer).await?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buffer[..n]).await?;
        connection.fetch_add(n as u64, Ordering::Relaxed);
        workload.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A workload's connection slot while a connection is open.
struct Slot<'a> {
    counts: &'a Mutex<HashMap<String, usize>>,
    workload_id: String,
}

impl<'a> Slot<'a> {
    fn take(
        counts: &'a Mutex<HashMap<String, usize>>,
        workload_id: &str,
        cap: usize,
    ) -> Option<Slot<'a>> {
        let mut map = lock(counts);
        let open = map.entry(workload_id.to_string()).or_default();
        if *open >= cap {
            return None;
        }
        *open += 1;
        Some(Slot {
            counts,
            workload_id: workload_id.to_string(),
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.counts);
        if let Some(open) = map.get_mut(&self.workload_id) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.workload_id);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn connection_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("conn-{}", hex::encode(bytes))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
