//! The embedded SQLite adapter. One connection behind a mutex: SQLite serialises
//! writers anyway, and every call runs on tokio's blocking pool so it never stalls the
//! async workers.

mod tasks;
mod tenants;

use crate::workloads::*;
use crate::{
    AuditRecord, CollectorOutcome, CollectorStatus, Store, StoreError, TaskRecord, Tenant,
    TokenRecord,
};
use computearbitrage_core::offer::Gpu;
use computearbitrage_core::{Architecture, Cloud, InterruptionRate, Offer};
use computearbitrage_core::{Transition, WorkloadStatus};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

const ENGINE: &str = "sqlite";

/// Changes buffered per subscriber before it lags and must reload.
const CHANGE_FEED_CAPACITY: usize = 4096;

/// Ordered schema migrations; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    created_at  INTEGER NOT NULL
);
CREATE TABLE api_tokens (
    token_hash  TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    label       TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE offers (
    source            TEXT NOT NULL,
    provider          TEXT NOT NULL,
    region            TEXT NOT NULL,
    zone              TEXT NOT NULL,
    instance_type     TEXT NOT NULL,
    vcpus             REAL NOT NULL,
    memory_gib        REAL NOT NULL,
    architecture      TEXT NOT NULL,
    gpu_name          TEXT NOT NULL,
    gpu_name_original TEXT NOT NULL,
    gpu_count         INTEGER NOT NULL,
    on_demand_price   REAL,
    spot_price        REAL NOT NULL,
    interruption_rate TEXT NOT NULL,
    observed_at       INTEGER NOT NULL,
    PRIMARY KEY (source, provider, region, zone, instance_type)
);
CREATE INDEX offers_by_spot_price ON offers (spot_price);
CREATE TABLE collector_status (
    source           TEXT PRIMARY KEY,
    last_success_at  INTEGER,
    last_failure_at  INTEGER,
    last_error       TEXT,
    offers           INTEGER NOT NULL DEFAULT 0,
    fingerprint      TEXT
);
"#,
    r#"
CREATE TABLE tenant_settings (
    tenant_id                 TEXT PRIMARY KEY REFERENCES tenants(id),
    webhook_url               TEXT,
    webhook_secret            TEXT,
    max_concurrent_workloads  INTEGER
);
CREATE TABLE workloads (
    id                   TEXT PRIMARY KEY,
    tenant_id            TEXT NOT NULL REFERENCES tenants(id),
    name                 TEXT NOT NULL,
    spec                 TEXT NOT NULL,
    status               TEXT NOT NULL,
    status_reason        TEXT NOT NULL,
    failed_step          TEXT,
    placement            TEXT,
    instance_id          TEXT,
    endpoint             TEXT,
    instance_started_at  INTEGER,
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL
);
-- One active workload per (tenant, name): the key of idempotent, adoptable creates.
CREATE UNIQUE INDEX workloads_active_name ON workloads (tenant_id, name)
    WHERE status NOT IN ('FAILED', 'TERMINATED');
CREATE INDEX workloads_by_status ON workloads (status);
CREATE TABLE workload_transitions (
    workload_id  TEXT NOT NULL REFERENCES workloads(id),
    tenant_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    from_status  TEXT NOT NULL,
    to_status    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    at           INTEGER NOT NULL,
    PRIMARY KEY (workload_id, seq)
);
CREATE TABLE runs (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants(id),
    workload_id  TEXT NOT NULL REFERENCES workloads(id),
    kind         TEXT NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    error        TEXT,
    failed_step  TEXT,
    replays      INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX runs_by_status ON runs (status);
CREATE INDEX runs_by_workload ON runs (workload_id);
CREATE TABLE run_steps (
    run_id       TEXT NOT NULL REFERENCES runs(id),
    step         TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    completed    INTEGER NOT NULL,
    output       TEXT,
    last_error   TEXT,
    started_at   INTEGER NOT NULL,
    finished_at  INTEGER,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE billing (
    tenant_id      TEXT NOT NULL REFERENCES tenants(id),
    workload_id    TEXT NOT NULL REFERENCES workloads(id),
    instance_id    TEXT NOT NULL,
    provider       TEXT NOT NULL,
    region         TEXT NOT NULL,
    instance_type  TEXT NOT NULL,
    price_per_hour REAL NOT NULL,
    started_at     INTEGER NOT NULL,
    ended_at       INTEGER NOT NULL,
    cost           REAL NOT NULL,
    PRIMARY KEY (workload_id, instance_id)
);
CREATE TABLE notifications (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    workload_id      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER
);
CREATE INDEX notifications_due ON notifications (status, next_attempt_at);
"#,
    r#"
ALTER TABLE workloads ADD COLUMN access_token_hash TEXT;
ALTER TABLE workloads ADD COLUMN tcp_endpoint TEXT;
ALTER TABLE workloads ADD COLUMN tcp_listen_port INTEGER;
-- A router TCP port belongs to one active workload at a time.
CREATE UNIQUE INDEX workloads_active_tcp_port ON workloads (tcp_listen_port)
    WHERE tcp_listen_port IS NOT NULL AND status NOT IN ('FAILED', 'TERMINATED');
CREATE TABLE router_connections (
    id                  TEXT PRIMARY KEY,
    router_id           TEXT NOT NULL,
    tenant_id           TEXT NOT NULL,
    workload_id         TEXT NOT NULL,
    backend             TEXT NOT NULL,
    client              TEXT NOT NULL,
    started_at          INTEGER NOT NULL,
    bytes_to_backend    INTEGER NOT NULL DEFAULT 0,
    bytes_from_backend  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX router_connections_by_workload ON router_connections (workload_id);
CREATE INDEX router_connections_by_router ON router_connections (router_id);
"#,
    r#"
ALTER TABLE offers ADD COLUMN interruption_source TEXT NOT NULL DEFAULT '';
"#,
    r#"
-- Tokens get a public id, scopes (the tokens made before scopes existed were the
-- operator's, so they are admin), an expiry and a revocation time.
ALTER TABLE api_tokens ADD COLUMN id TEXT;
ALTER TABLE api_tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT 'admin';
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER;
ALTER TABLE api_tokens ADD COLUMN revoked_at INTEGER;
UPDATE api_tokens SET id = 'tok-' || substr(token_hash, 1, 20) WHERE id IS NULL;
CREATE UNIQUE INDEX api_tokens_by_id ON api_tokens (id);
CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT NOT NULL,
    token_id   TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, id);
"#,
    r#"
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    tenant_id        TEXT NOT NULL REFERENCES tenants(id),
    workload_id      TEXT NOT NULL,
    kind             TEXT NOT NULL,
    command          TEXT NOT NULL,
    timeout_seconds  INTEGER NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    lease_until      INTEGER,
    instance_id      TEXT,
    exit_code        INTEGER,
    output           TEXT NOT NULL,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX tasks_by_workload ON tasks (workload_id, state, created_at);
CREATE INDEX tasks_by_tenant ON tasks (tenant_id, state, created_at);
"#,
];

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    changes: tokio::sync::broadcast::Sender<WorkloadChange>,
}

fn classify(err: rusqlite::Error) -> StoreError {
    let message = err.to_string();
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Unavailable {
            engine: ENGINE,
            message,
        },
        Some(ErrorCode::ConstraintViolation) => StoreError::Conflict {
            engine: ENGINE,
            message,
        },
        _ => StoreError::Corrupt {
            engine: ENGINE,
            message,
        },
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies pending migrations.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let open_err = |e: rusqlite::Error| StoreError::Open {
            engine: ENGINE,
            message: format!("{}: {e}", path.display()),
        };
        let conn = Connection::open(path).map_err(open_err)?;
        Self::init(conn).map_err(|e| match e {
            StoreError::Corrupt { message, .. } => StoreError::Open {
                engine: ENGINE,
                message: format!("{}: {message}", path.display()),
            },
            other => other,
        })
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().map_err(classify)?;
        Self::init(conn)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(classify)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(classify)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(classify)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(classify)?;
        let version: usize = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(classify)?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::Open {
                engine: ENGINE,
                message: format!(
                    "schema version {version} is newer than this binary knows ({}); run a newer computearbitrage",
                    MIGRATIONS.len()
                ),
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(classify)?;
            tx.execute_batch(sql).map_err(classify)?;
            tx.pragma_update(None, "user_version", i + 1)
                .map_err(classify)?;
            tx.commit().map_err(classify)?;
        }
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
            changes: tokio::sync::broadcast::channel(CHANGE_FEED_CAPACITY).0,
        })
    }

    /// Tells change-feed subscribers (if any) that a workload row changed.
    fn announce(&self, tenant_id: &str, workload_id: &str) {
        let _ = self.changes.send(WorkloadChange {
            tenant_id: tenant_id.to_string(),
            workload_id: workload_id.to_string(),
            kind: ChangeKind::Workload,
        });
    }

    /// Tells subscribers that a token was added or revoked.
    fn announce_credentials(&self, tenant_id: &str) {
        let _ = self.changes.send(WorkloadChange {
            tenant_id: tenant_id.to_string(),
            workload_id: String::new(),
            kind: ChangeKind::Credentials,
        });
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A poisoned lock only means another call panicked mid-way; SQLite's own
            // transaction rolled that call back, so the connection is still sound.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable {
            engine: ENGINE,
            message: format!("blocking task failed: {e}"),
        })?
    }
}

fn offer_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Offer, String>> {
    let provider: String = row.get("provider")?;
    let architecture: String = row.get("architecture")?;
    let rate: String = row.get("interruption_rate")?;
    let gpu_name: String = row.get("gpu_name")?;
    let gpu_count: i64 = row.get("gpu_count")?;
    let Some(cloud) = Cloud::parse(&provider) else {
        return Ok(Err(format!("unknown provider {provider:?} in offers")));
    };
    let Some(architecture) = Architecture::parse(&architecture) else {
        return Ok(Err(format!(
            "unknown architecture {architecture:?} in offers"
        )));
    };
    let Some(interruption_rate) = InterruptionRate::parse(&rate) else {
        return Ok(Err(format!("unknown interruption rate {rate:?} in offers")));
    };
    Ok(Ok(Offer {
        cloud,
        region: row.get("region")?,
        zone: row.get("zone")?,
        instance_type: row.get("instance_type")?,
        vcpus: row.get("vcpus")?,
        memory_gib: row.get("memory_gib")?,
        architecture,
        gpu: if gpu_count > 0 {
            Some(Gpu {
                name: gpu_name,
                original_name: row.get("gpu_name_original")?,
                count: u16::try_from(gpu_count).unwrap_or(u16::MAX),
            })
        } else {
            None
        },
        on_demand_price: row.get("on_demand_price")?,
        spot_price: row.get("spot_price")?,
        interruption_rate,
        interruption_source: row.get("interruption_source")?,
        observed_at: row.get("observed_at")?,
        source: row.get("source")?,
    }))
}

fn corrupt(message: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        engine: ENGINE,
        message: message.into(),
    }
}

fn placement_json(p: &PlacementRecord) -> String {
    serde_json::json!({
        "provider": p.cloud,
        "region": p.region,
        "zone": p.zone,
        "instance_type": p.instance_type,
        "price_per_hour": p.price_per_hour,
        "on_demand_price_per_hour": p.on_demand_price_per_hour,
        "market": if p.on_demand { "on_demand" } else { "spot" },
        "env_fingerprint": p.env_fingerprint,
    })
    .to_string()
}

fn placement_from_json(text: &str) -> Result<PlacementRecord, StoreError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| corrupt(format!("placement: {e}")))?;
    let s = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Ok(PlacementRecord {
        cloud: s("provider"),
        region: s("region"),
        zone: s("zone"),
        instance_type: s("instance_type"),
        price_per_hour: v
            .get("price_per_hour")
            .and_then(|x| x.as_f64())
            .unwrap_or(0.0),
        on_demand_price_per_hour: v.get("on_demand_price_per_hour").and_then(|x| x.as_f64()),
        // Stored before fallback existed: spot.
        on_demand: v.get("market").and_then(|x| x.as_str()) == Some("on_demand"),
        env_fingerprint: v
            .get("env_fingerprint")
            .and_then(|x| x.as_str())
            .map(str::to_string),
    })
}

const WORKLOAD_COLUMNS: &str = "id, tenant_id, name, spec, status, status_reason, failed_step, placement, instance_id, endpoint, instance_started_at, created_at, updated_at, access_token_hash, tcp_endpoint, tcp_listen_port";

fn workload_from_row(
    row: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<WorkloadRecord, StoreError>> {
    let spec: String = row.get(3)?;
    let status: String = row.get(4)?;
    let placement: Option<String> = row.get(7)?;
    let build = || -> Result<WorkloadRecord, StoreError> {
        Ok(WorkloadRecord {
            id: row.get(0).map_err(classify)?,
            tenant_id: row.get(1).map_err(classify)?,
            name: row.get(2).map_err(classify)?,
            spec: serde_json::from_str(&spec)
                .map_err(|e| corrupt(format!("workload spec: {e}")))?,
            status: WorkloadStatus::parse(&status)
                .ok_or_else(|| corrupt(format!("unknown status {status:?}")))?,
            status_reason: row.get(5).map_err(classify)?,
            failed_step: row.get(6).map_err(classify)?,
            placement: placement.as_deref().map(placement_from_json).transpose()?,
            instance_id: row.get(8).map_err(classify)?,
            endpoint: row.get(9).map_err(classify)?,
            instance_started_at: row.get(10).map_err(classify)?,
            created_at: row.get(11).map_err(classify)?,
            updated_at: row.get(12).map_err(classify)?,
            access_token_hash: row.get(13).map_err(classify)?,
            tcp_endpoint: row.get(14).map_err(classify)?,
            tcp_listen_port: row.get(15).map_err(classify)?,
        })
    };
    Ok(build())
}

fn query_workloads(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<WorkloadRecord>, StoreError> {
    let mut stmt = conn.prepare(sql).map_err(classify)?;
    let rows = stmt
        .query_map(params, workload_from_row)
        .map_err(classify)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(classify)??);
    }
    Ok(out)
}

const RUN_COLUMNS: &str = "id, tenant_id, workload_id, kind, status, reason, error, failed_step, replays, created_at, updated_at";

fn run_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RunRecord, StoreError>> {
    let kind: String = row.get(3)?;
    let status: String = row.get(4)?;
    let (Some(kind), Some(status)) = (RunKind::parse(&kind), RunStatus::parse(&status)) else {
        return Ok(Err(corrupt(format!(
            "run kind {kind:?} / status {status:?}"
        ))));
    };
    Ok(Ok(RunRecord {
        id: row.get(0)?,
        tenant_id: row.get(1)?,
        workload_id: row.get(2)?,
        kind,
        status,
        reason: row.get(5)?,
        error: row.get(6)?,
        failed_step: row.get(7)?,
        replays: row.get(8)?,
        created_at: row.get(9)?,
        updated_at: row.get(10)?,
    }))
}

fn query_runs(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RunRecord>, StoreError> {
    let mut stmt = conn.prepare(sql).map_err(classify)?;
    let rows = stmt.query_map(params, run_from_row).map_err(classify)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(classify)??);
    }
    Ok(out)
}

const NOTIFICATION_COLUMNS: &str = "id, tenant_id, workload_id, kind, payload, status, attempts, next_attempt_at, last_error, created_at, delivered_at";

fn query_notifications(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<NotificationRecord>, StoreError> {
    let mut stmt = conn.prepare(sql).map_err(classify)?;
    let rows = stmt
        .query_map(params, |row| {
            let status: String = row.get(5)?;
            Ok((
                status,
                NotificationRecord {
                    id: row.get(0)?,
                    tenant_id: row.get(1)?,
                    workload_id: row.get(2)?,
                    kind: row.get(3)?,
                    payload: row.get(4)?,
                    status: NotificationStatus::Pending,
                    attempts: row.get(6)?,
                    next_attempt_at: row.get(7)?,
                    last_error: row.get(8)?,
                    created_at: row.get(9)?,
                    delivered_at: row.get(10)?,
                },
            ))
        })
        .map_err(classify)?;
    let mut out = Vec::new();
    for row in rows {
        let (status, mut record) = row.map_err(classify)?;
        record.status = NotificationStatus::parse(&status)
            .ok_or_else(|| corrupt(format!("notification status {status:?}")))?;
        out.push(record);
    }
    Ok(out)
}

/// Applies `changes` to a workload row inside an open transaction.
fn apply_changes(
    tx: &rusqlite::Transaction<'_>,
    id: &str,
    changes: &WorkloadChanges,
    at: i64,
) -> Result<(), StoreError> {
    if let Some(p) = &changes.placement {
        tx.execute(
            "UPDATE workloads SET placement = ?1 WHERE id = ?2",
            params![p.as_ref().map(placement_json), id],
        )
        .map_err(classify)?;
    }
    if let Some(v) = &changes.instance_id {
        tx.execute(
            "UPDATE workloads SET instance_id = ?1 WHERE id = ?2",
            params![v, id],
        )
        .map_err(classify)?;
    }
    if let Some(v) = &changes.endpoint {
        tx.execute(
            "UPDATE workloads SET endpoint = ?1 WHERE id = ?2",
            params![v, id],
        )
        .map_err(classify)?;
    }
    if let Some(v) = &changes.instance_started_at {
        tx.execute(
            "UPDATE workloads SET instance_started_at = ?1 WHERE id = ?2",
            params![v, id],
        )
        .map_err(classify)?;
    }
    if let Some(v) = &changes.tcp_endpoint {
        tx.execute(
            "UPDATE workloads SET tcp_endpoint = ?1 WHERE id = ?2",
            params![v, id],
        )
        .map_err(classify)?;
    }
    if let Some(v) = &changes.failed_step {
        tx.execute(
            "UPDATE workloads SET failed_step = ?1 WHERE id = ?2",
            params![v, id],
        )
        .map_err(classify)?;
    }
    if let Some(spec) = &changes.spec {
        let text = serde_json::to_string(spec).map_err(|e| corrupt(e.to_string()))?;
        tx.execute(
            "UPDATE workloads SET spec = ?1 WHERE id = ?2",
            params![text, id],
        )
        .map_err(classify)?;
    }
    tx.execute(
        "UPDATE workloads SET updated_at = ?1 WHERE id = ?2",
        params![at, id],
    )
    .map_err(classify)?;
    Ok(())
}

#[async_trait::async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    async fn replace_offers(&self, source: &str, offers: Vec<Offer>) -> Result<(), StoreError> {
        let source = source.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(classify)?;
            tx.execute("DELETE FROM offers WHERE source = ?1", [&source])
                .map_err(classify)?;
            {
                let mut insert = tx
                    .prepare(
                        "INSERT OR IGNORE INTO offers (source, provider, region, zone, instance_type, vcpus, memory_gib,
                            architecture, gpu_name, gpu_name_original, gpu_count, on_demand_price, spot_price,
                            interruption_rate, observed_at, interruption_source)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                    )
                    .map_err(classify)?;
                for o in &offers {
                    let (gpu_name, gpu_original, gpu_count) = match &o.gpu {
                        Some(g) => (g.name.as_str(), g.original_name.as_str(), i64::from(g.count)),
                        None => ("", "", 0),
                    };
                    insert
                        .execute(params![
                            source,
                            o.cloud.as_str(),
                            o.region,
                            o.zone,
                            o.instance_type,
                            o.vcpus,
                            o.memory_gib,
                            o.architecture.as_str(),
                            gpu_name,
                            gpu_original,
                            gpu_count,
                            o.on_demand_price,
                            o.spot_price,
                            o.interruption_rate.to_string(),
                            o.observed_at,
                            o.interruption_source,
                        ])
                        .map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
        .await
    }

    async fn load_offers(&self) -> Result<Vec<Offer>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare("SELECT * FROM offers").map_err(classify)?;
            let rows = stmt.query_map([], offer_from_row).map_err(classify)?;
            let mut out = Vec::new();
            for row in rows {
                let offer = row
                    .map_err(classify)?
                    .map_err(|message| StoreError::Corrupt {
                        engine: ENGINE,
                        message,
                    })?;
                out.push(offer);
            }
            Ok(out)
        })
        .await
    }

    async fn record_collector_run(
        &self,
        source: &str,
        at: i64,
        outcome: CollectorOutcome,
    ) -> Result<(), StoreError> {
        let source = source.to_string();
        self.with_conn(move |conn| {
            match outcome {
                CollectorOutcome::Succeeded {
                    offers,
                    fingerprint,
                } => conn.execute(
                    "INSERT INTO collector_status (source, last_success_at, last_error, offers, fingerprint)
                     VALUES (?1, ?2, NULL, ?3, ?4)
                     ON CONFLICT (source) DO UPDATE SET last_success_at = excluded.last_success_at,
                        last_error = NULL, offers = excluded.offers, fingerprint = excluded.fingerprint",
                    params![source, at, i64::try_from(offers).unwrap_or(i64::MAX), fingerprint],
                ),
                CollectorOutcome::Failed { error } => conn.execute(
                    "INSERT INTO collector_status (source, last_failure_at, last_error)
                     VALUES (?1, ?2, ?3)
                     ON CONFLICT (source) DO UPDATE SET last_failure_at = excluded.last_failure_at,
                        last_error = excluded.last_error",
                    params![source, at, error],
                ),
            }
            .map(|_| ())
            .map_err(classify)
        })
        .await
    }

    async fn collector_statuses(&self) -> Result<Vec<CollectorStatus>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT source, last_success_at, last_failure_at, last_error, offers, fingerprint
                     FROM collector_status ORDER BY source",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok(CollectorStatus {
                        source: row.get(0)?,
                        last_success_at: row.get(1)?,
                        last_failure_at: row.get(2)?,
                        last_error: row.get(3)?,
                        offers: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                        fingerprint: row.get(5)?,
                    })
                })
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
        .await
    }

    async fn ensure_tenant(&self, id: &str, now: i64) -> Result<Tenant, StoreError> {
        let id = id.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO tenants (id, created_at) VALUES (?1, ?2) ON CONFLICT (id) DO NOTHING",
                params![id, now],
            )
            .map_err(classify)?;
            conn.query_row(
                "SELECT id, created_at FROM tenants WHERE id = ?1",
                [&id],
                |row| {
                    Ok(Tenant {
                        id: row.get(0)?,
                        created_at: row.get(1)?,
                    })
                },
            )
            .map_err(classify)
        })
        .await
    }

    async fn add_token(&self, record: TokenRecord) -> Result<(), StoreError> {
        let tenant_id = record.tenant_id.clone();
        self.with_conn(move |conn| tenants::add_token(conn, &record))
            .await?;
        self.announce_credentials(&tenant_id);
        Ok(())
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with_conn(|conn| tenants::list_tokens(conn)).await
    }

    async fn revoke_token(&self, id: &str, at: i64) -> Result<Option<TokenRecord>, StoreError> {
        let id = id.to_string();
        let revoked = self
            .with_conn(move |conn| tenants::revoke_token(conn, &id, at))
            .await?;
        if let Some(token) = &revoked {
            self.announce_credentials(&token.tenant_id);
        }
        Ok(revoked)
    }

    async fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.with_conn(|conn| tenants::tenants(conn)).await
    }

    async fn record_audit(&self, record: AuditRecord) -> Result<(), StoreError> {
        self.with_conn(move |conn| tenants::record_audit(conn, &record))
            .await
    }

    async fn audit_log(
        &self,
        tenant_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let tenant_id = tenant_id.map(str::to_string);
        self.with_conn(move |conn| tenants::audit_log(conn, tenant_id.as_deref(), limit))
            .await
    }

    async fn tenant_settings(&self, tenant_id: &str) -> Result<TenantSettings, StoreError> {
        let tenant_id = tenant_id.to_string();
        self.with_conn(move |conn| {
            let found = conn
                .query_row(
                    "SELECT webhook_url, webhook_secret, max_concurrent_workloads FROM tenant_settings WHERE tenant_id = ?1",
                    [&tenant_id],
                    |row| {
                        Ok(TenantSettings {
                            tenant_id: tenant_id.clone(),
                            webhook_url: row.get(0)?,
                            webhook_secret: row.get(1)?,
                            max_concurrent_workloads: row.get(2)?,
                        })
                    },
                )
                .optional()
                .map_err(classify)?;
            Ok(found.unwrap_or(TenantSettings {
                tenant_id,
                ..Default::default()
            }))
        })
        .await
    }

    async fn set_tenant_settings(&self, settings: TenantSettings) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO tenant_settings (tenant_id, webhook_url, webhook_secret, max_concurrent_workloads)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (tenant_id) DO UPDATE SET webhook_url = excluded.webhook_url,
                    webhook_secret = excluded.webhook_secret,
                    max_concurrent_workloads = excluded.max_concurrent_workloads",
                params![settings.tenant_id, settings.webhook_url, settings.webhook_secret, settings.max_concurrent_workloads],
            )
            .map(|_| ())
            .map_err(classify)
        })
        .await
    }

    async fn create_workload(
        &self,
        workload: WorkloadRecord,
        run: RunRecord,
    ) -> Result<CreateOutcome, StoreError> {
        let (tenant_id, workload_id) = (workload.tenant_id.clone(), workload.id.clone());
        let outcome = self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(classify)?;
            let existing = query_workloads(
                &tx,
                &format!("SELECT {WORKLOAD_COLUMNS} FROM workloads WHERE tenant_id = ?1 AND name = ?2 AND status NOT IN ('FAILED', 'TERMINATED')"),
                params![workload.tenant_id, workload.name],
            )?;
            if let Some(found) = existing.into_iter().next() {
                return Ok(CreateOutcome::Existing(Box::new(found)));
            }
            let spec = serde_json::to_string(&workload.spec).map_err(|e| corrupt(e.to_string()))?;
            tx.execute(
                &format!("INSERT INTO workloads ({WORKLOAD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"),
                params![
                    workload.id,
                    workload.tenant_id,
                    workload.name,
                    spec,
                    workload.status.as_str(),
                    workload.status_reason,
                    workload.failed_step,
                    workload.placement.as_ref().map(placement_json),
                    workload.instance_id,
                    workload.endpoint,
                    workload.instance_started_at,
                    workload.created_at,
                    workload.updated_at,
                    workload.access_token_hash,
                    workload.tcp_endpoint,
                    workload.tcp_listen_port,
                ],
            )
            .map_err(classify)?;
            insert_run(&tx, &run)?;
            tx.commit().map_err(classify)?;
            Ok(CreateOutcome::Created)
        })
        .await?;
        if outcome == CreateOutcome::Created {
            self.announce(&tenant_id, &workload_id);
        }
        Ok(outcome)
    }

    async fn workload(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Option<WorkloadRecord>, StoreError> {
        let (tenant_id, id) = (tenant_id.to_string(), id.to_string());
        self.with_conn(move |conn| {
            Ok(query_workloads(
                conn,
                &format!(
                    "SELECT {WORKLOAD_COLUMNS} FROM workloads WHERE tenant_id = ?1 AND id = ?2"
                ),
                params![tenant_id, id],
            )?
            .into_iter()
            .next())
        })
        .await
    }

    async fn active_workload_named(
        &self,
        tenant_id: &str,
        name: &str,
    ) -> Result<Option<WorkloadRecord>, StoreError> {
        let (tenant_id, name) = (tenant_id.to_string(), name.to_string());
        self.with_conn(move |conn| {
            Ok(query_workloads(
                conn,
                &format!("SELECT {WORKLOAD_COLUMNS} FROM workloads WHERE tenant_id = ?1 AND name = ?2 AND status NOT IN ('FAILED', 'TERMINATED')"),
                params![tenant_id, name],
            )?
            .into_iter()
            .next())
        })
        .await
    }

    async fn count_active_workloads(&self, tenant_id: &str) -> Result<u64, StoreError> {
        let tenant_id = tenant_id.to_string();
        self.with_conn(move |conn| {
            conn.query_row(
                "SELECT COUNT(*) FROM workloads WHERE tenant_id = ?1 AND status NOT IN ('FAILED', 'TERMINATED')",
                [&tenant_id],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(classify)
        })
        .await
    }

    async fn workloads_in(
        &self,
        statuses: &[WorkloadStatus],
    ) -> Result<Vec<WorkloadRecord>, StoreError> {
        let names: Vec<String> = statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        self.with_conn(move |conn| {
            query_workloads(
                conn,
                &format!("SELECT {WORKLOAD_COLUMNS} FROM workloads WHERE status IN ({}) ORDER BY created_at, id", names.join(", ")),
                [],
            )
        })
        .await
    }

    async fn transition_workload(
        &self,
        tenant_id: &str,
        id: &str,
        transition: Transition,
        reason: &str,
        at: i64,
        changes: WorkloadChanges,
    ) -> Result<bool, StoreError> {
        let (tenant_id, id, reason) = (tenant_id.to_string(), id.to_string(), reason.to_string());
        let (tenant, workload) = (tenant_id.clone(), id.clone());
        let applied = self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(classify)?;
            let updated = tx
                .execute(
                    "UPDATE workloads SET status = ?1, status_reason = ?2, updated_at = ?3
                     WHERE tenant_id = ?4 AND id = ?5 AND status = ?6",
                    params![transition.to().as_str(), reason, at, tenant_id, id, transition.from().as_str()],
                )
                .map_err(classify)?;
            if updated == 0 {
                return Ok(false);
            }
            apply_changes(&tx, &id, &changes, at)?;
            tx.execute(
                "INSERT INTO workload_transitions (workload_id, tenant_id, seq, from_status, to_status, reason, at)
                 VALUES (?1, ?2, (SELECT COALESCE(MAX(seq), 0) + 1 FROM workload_transitions WHERE workload_id = ?1), ?3, ?4, ?5, ?6)",
                params![id, tenant_id, transition.from().as_str(), transition.to().as_str(), reason, at],
            )
            .map_err(classify)?;
            tx.commit().map_err(classify)?;
            Ok(true)
        })
        .await?;
        if applied {
            self.announce(&tenant, &workload);
        }
        Ok(applied)
    }

    async fn update_workload(
        &self,
        tenant_id: &str,
        id: &str,
        changes: WorkloadChanges,
        at: i64,
    ) -> Result<(), StoreError> {
        let (tenant_id, id) = (tenant_id.to_string(), id.to_string());
        let (tenant, workload) = (tenant_id.clone(), id.clone());
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(classify)?;
            let owned: Option<String> = tx
                .query_row(
                    "SELECT id FROM workloads WHERE tenant_id = ?1 AND id = ?2",
                    params![tenant_id, id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(classify)?;
            if owned.is_none() {
                return Err(StoreError::Conflict {
                    engine: ENGINE,
                    message: format!("no workload {id} in tenant {tenant_id}"),
                });
            }
            apply_changes(&tx, &id, &changes, at)?;
            tx.commit().map_err(classify)
        })
        .await?;
        self.announce(&tenant, &workload);
        Ok(())
    }

    async fn transitions(
        &self,
        tenant_id: &str,
        id: &str,
    ) -> Result<Vec<TransitionRecord>, StoreError> {
        let (tenant_id, id) = (tenant_id.to_string(), id.to_string());
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare("SELECT from_status, to_status, reason, at FROM workload_transitions WHERE tenant_id = ?1 AND workload_id = ?2 ORDER BY seq")
                .map_err(classify)?;
            let rows = stmt
                .query_map(params![tenant_id, id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get::<_, String>(2)?, row.get::<_, i64>(3)?))
                })
                .map_err(classify)?;
            let mut out = Vec::new();
            for row in rows {
                let (from, to, reason, at) = row.map_err(classify)?;
                out.push(TransitionRecord {
                    from: WorkloadStatus::parse(&from).ok_or_else(|| corrupt(format!("status {from:?}")))?,
                    to: WorkloadStatus::parse(&to).ok_or_else(|| corrupt(format!("status {to:?}")))?,
                    reason,
                    at,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn create_run(&self, run: RunRecord) -> Result<(), StoreError> {
        self.with_conn(move |conn| insert_run(conn, &run)).await
    }

    async fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let run_id = run_id.to_string();
        self.with_conn(move |conn| {
            Ok(query_runs(
                conn,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                [&run_id],
            )?
            .into_iter()
            .next())
        })
        .await
    }

    async fn runs_of(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let (tenant_id, workload_id) = (tenant_id.to_string(), workload_id.to_string());
        self.with_conn(move |conn| {
            query_runs(
                conn,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = ?1 AND workload_id = ?2 ORDER BY created_at, id"),
                params![tenant_id, workload_id],
            )
        })
        .await
    }

    async fn unfinished_runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        self.with_conn(|conn| {
            query_runs(conn, &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY created_at, id"), [])
        })
        .await
    }

    async fn dead_runs(&self, tenant_id: &str) -> Result<Vec<RunRecord>, StoreError> {
        let tenant_id = tenant_id.to_string();
        self.with_conn(move |conn| {
            query_runs(
                conn,
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE tenant_id = ?1 AND status = 'dead' ORDER BY updated_at, id"),
                [&tenant_id],
            )
        })
        .await
    }

    async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<String>,
        failed_step: Option<String>,
        at: i64,
    ) -> Result<(), StoreError> {
        let run_id = run_id.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "UPDATE runs SET status = ?1, error = ?2, failed_step = ?3, updated_at = ?4 WHERE id = ?5",
                params![status.as_str(), error, failed_step, at, run_id],
            )
            .map(|_| ())
            .map_err(classify)
        })
        .await
    }

    async fn revive_run(&self, run_id: &str, at: i64) -> Result<bool, StoreError> {
        let run_id = run_id.to_string();
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(classify)?;
            let n = tx
                .execute(
                    "UPDATE runs SET status = 'running', error = NULL, failed_step = NULL, replays = replays + 1, updated_at = ?1
                     WHERE id = ?2 AND status = 'dead'",
                    params![at, run_id],
                )
                .map_err(classify)?;
            // A replay gives the failed step a fresh set of attempts; completed steps stay done.
            tx.execute("UPDATE run_steps SET attempts = 0, last_error = NULL WHERE run_id = ?1 AND completed = 0", [&run_id])
                .map_err(classify)?;
            tx.commit().map_err(classify)?;
            Ok(n == 1)
        })
        .await
    }

    async fn save_step(&self, step: StepRecord) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO run_steps (run_id, step, attempts, completed, output, last_error, started_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (run_id, step) DO UPDATE SET attempts = excluded.attempts, completed = excluded.completed,
                    output = excluded.output, last_error = excluded.last_error, finished_at = excluded.finished_at",
                params![step.run_id, step.step, step.attempts, step.completed, step.output, step.last_error, step.started_at, step.finished_at],
            )
            .map(|_| ())
            .map_err(classify)
        })
        .await
    }

    async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let run_id = run_id.to_string();
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT run_id, step, attempts, completed, output, last_error, started_at, finished_at
                     FROM run_steps WHERE run_id = ?1 ORDER BY started_at, rowid",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map([&run_id], |row| {
                    Ok(StepRecord {
                        run_id: row.get(0)?,
                        step: row.get(1)?,
                        attempts: row.get(2)?,
                        completed: row.get(3)?,
                        output: row.get(4)?,
                        last_error: row.get(5)?,
                        started_at: row.get(6)?,
                        finished_at: row.get(7)?,
                    })
                })
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
        .await
    }

    async fn add_billing(&self, r: BillingRecord) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            conn.execute(
                "INSERT INTO billing (tenant_id, workload_id, instance_id, provider, region, instance_type, price_per_hour, started_at, ended_at, cost)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (workload_id, instance_id) DO NOTHING",
                params![r.tenant_id, r.workload_id, r.instance_id, r.cloud, r.region, r.instance_type, r.price_per_hour, r.started_at, r.ended_at, r.cost],
            )
            .map(|_| ())
            .map_err(classify)
        })
        .await
    }

    async fn billing(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<BillingRecord>, StoreError> {
        let (tenant_id, workload_id) = (tenant_id.to_string(), workload_id.to_string());
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT tenant_id, workload_id, instance_id, provider, region, instance_type, price_per_hour, started_at, ended_at, cost
                     FROM billing WHERE tenant_id = ?1 AND workload_id = ?2 ORDER BY started_at",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map(params![tenant_id, workload_id], |row| {
                    Ok(BillingRecord {
                        tenant_id: row.get(0)?,
                        workload_id: row.get(1)?,
                        instance_id: row.get(2)?,
                        cloud: row.get(3)?,
                        region: row.get(4)?,
                        instance_type: row.get(5)?,
                        price_per_hour: row.get(6)?,
                        started_at: row.get(7)?,
                        ended_at: row.get(8)?,
                        cost: row.get(9)?,
                    })
                })
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
        .await
    }

    async fn enqueue_notification(&self, n: NotificationRecord) -> Result<(), StoreError> {
        self.save_notification(n).await
    }

    async fn due_notifications(
        &self,
        now: i64,
        limit: u32,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        self.with_conn(move |conn| {
            query_notifications(
                conn,
                &format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY next_attempt_at, created_at LIMIT ?2"),
                params![now, limit],
            )
        })
        .await
    }

    async fn save_notification(&self, n: NotificationRecord) -> Result<(), StoreError> {
        self.with_conn(move |conn| {
            conn.execute(
                &format!("INSERT OR REPLACE INTO notifications ({NOTIFICATION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![n.id, n.tenant_id, n.workload_id, n.kind, n.payload, n.status.as_str(), n.attempts, n.next_attempt_at, n.last_error, n.created_at, n.delivered_at],
            )
            .map(|_| ())
            .map_err(classify)
        })
        .await
    }

    async fn notifications(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        let (tenant_id, workload_id) = (tenant_id.to_string(), workload_id.to_string());
        self.with_conn(move |conn| {
            query_notifications(
                conn,
                &format!("SELECT {NOTIFICATION_COLUMNS} FROM notifications WHERE tenant_id = ?1 AND workload_id = ?2 ORDER BY created_at, id"),
                params![tenant_id, workload_id],
            )
        })
        .await
    }

    async fn save_task(&self, task: TaskRecord) -> Result<(), StoreError> {
        self.with_conn(move |conn| tasks::save(conn, &task)).await
    }

    async fn task(&self, tenant_id: &str, id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let (tenant_id, id) = (tenant_id.to_string(), id.to_string());
        self.with_conn(move |conn| {
            Ok(tasks::select(
                conn,
                "WHERE tenant_id = ?1 AND id = ?2",
                params![tenant_id, id],
            )?
            .pop())
        })
        .await
    }

    async fn tasks_of(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let (tenant_id, workload_id) = (tenant_id.to_string(), workload_id.to_string());
        self.with_conn(move |conn| {
            tasks::select(
                conn,
                "WHERE tenant_id = ?1 AND workload_id = ?2",
                params![tenant_id, workload_id],
            )
        })
        .await
    }

    async fn dead_tasks(&self, tenant_id: &str) -> Result<Vec<TaskRecord>, StoreError> {
        let tenant_id = tenant_id.to_string();
        self.with_conn(move |conn| {
            tasks::select(
                conn,
                "WHERE tenant_id = ?1 AND state = 'dead'",
                params![tenant_id],
            )
        })
        .await
    }

    async fn next_task(
        &self,
        workload_id: &str,
        now_ms: i64,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let workload_id = workload_id.to_string();
        self.with_conn(move |conn| {
            Ok(tasks::select(
                conn,
                "WHERE workload_id = ?1 AND ((state = 'queued' AND next_attempt_at <= ?2) OR (state = 'delivered' AND lease_until < ?2))",
                params![workload_id, now_ms],
            )?
            .into_iter()
            .next())
        })
        .await
    }

    fn workload_changes(&self) -> tokio::sync::broadcast::Receiver<WorkloadChange> {
        self.changes.subscribe()
    }

    async fn workload_for_routing(&self, id: &str) -> Result<Option<WorkloadRecord>, StoreError> {
        let id = id.to_string();
        self.with_conn(move |conn| {
            Ok(query_workloads(
                conn,
                &format!("SELECT {WORKLOAD_COLUMNS} FROM workloads WHERE id = ?1"),
                params![id],
            )?
            .into_iter()
            .next())
        })
        .await
    }

    async fn apply_connection_batch(&self, batch: ConnectionBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(classify)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO router_connections (id, router_id, tenant_id, workload_id, backend, client, started_at, bytes_to_backend, bytes_from_backend)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    )
                    .map_err(classify)?;
                for c in &batch.opened {
                    insert
                        .execute(params![c.id, c.router_id, c.tenant_id, c.workload_id, c.backend, c.client, c.started_at, c.bytes_to_backend as i64, c.bytes_from_backend as i64])
                        .map_err(classify)?;
                }
                let mut bytes = tx
                    .prepare_cached("UPDATE router_connections SET bytes_to_backend = ?2, bytes_from_backend = ?3 WHERE id = ?1")
                    .map_err(classify)?;
                for (id, to_backend, from_backend) in &batch.bytes {
                    bytes
                        .execute(params![id, *to_backend as i64, *from_backend as i64])
                        .map_err(classify)?;
                }
                let mut delete = tx
                    .prepare_cached("DELETE FROM router_connections WHERE id = ?1")
                    .map_err(classify)?;
                for id in &batch.closed {
                    delete.execute(params![id]).map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
        .await
    }

    async fn close_router_connections(&self, router_id: &str) -> Result<u64, StoreError> {
        let router_id = router_id.to_string();
        self.with_conn(move |conn| {
            conn.execute(
                "DELETE FROM router_connections WHERE router_id = ?1",
                params![router_id],
            )
            .map(|n| n as u64)
            .map_err(classify)
        })
        .await
    }

    async fn connections(
        &self,
        tenant_id: &str,
        workload_id: &str,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        let (tenant_id, workload_id) = (tenant_id.to_string(), workload_id.to_string());
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare("SELECT id, router_id, tenant_id, workload_id, backend, client, started_at, bytes_to_backend, bytes_from_backend
                          FROM router_connections WHERE tenant_id = ?1 AND workload_id = ?2 ORDER BY started_at, id")
                .map_err(classify)?;
            let rows = stmt
                .query_map(params![tenant_id, workload_id], |row| {
                    Ok(ConnectionRecord {
                        id: row.get(0)?,
                        router_id: row.get(1)?,
                        tenant_id: row.get(2)?,
                        workload_id: row.get(3)?,
                        backend: row.get(4)?,
                        client: row.get(5)?,
                        started_at: row.get(6)?,
                        bytes_to_backend: row.get::<_, i64>(7)? as u64,
                        bytes_from_backend: row.get::<_, i64>(8)? as u64,
                    })
                })
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
        .await
    }
}

fn insert_run(conn: &Connection, run: &RunRecord) -> Result<(), StoreError> {
    conn.execute(
        &format!("INSERT INTO runs ({RUN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            run.id,
            run.tenant_id,
            run.workload_id,
            run.kind.as_str(),
            run.status.as_str(),
            run.reason,
            run.error,
            run.failed_step,
            run.replays,
            run.created_at,
            run.updated_at
        ],
    )
    .map(|_| ())
    .map_err(classify)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_passes_the_suite() {
        let store = SqliteStore::in_memory().unwrap();
        crate::suite::run_all(&store).await;
    }

    #[tokio::test]
    async fn file_database_passes_the_suite_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            crate::suite::run_all(&store).await;
        }
        let reopened = SqliteStore::open(&path).unwrap();
        crate::suite::check_persisted(&reopened).await;
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let err = SqliteStore::open(&path).err().expect("must fail");
        assert!(err.to_string().contains("newer than this binary"), "{err}");
        assert!(!err.is_retryable());
    }
}
