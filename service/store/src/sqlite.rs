//! The embedded SQLite adapter. One connection behind a mutex: SQLite serialises
//! writers anyway, and every call runs on tokio's blocking pool so it never stalls the
//! async workers.

use crate::{CollectorOutcome, CollectorStatus, Store, StoreError, Tenant, TokenRecord};
use computearbitrage_core::offer::Gpu;
use computearbitrage_core::{Architecture, Cloud, InterruptionRate, Offer};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use std::path::Path;
use std::sync::{Arc, Mutex};

const ENGINE: &str = "sqlite";

/// Ordered schema migrations; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// SQLite-backed [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
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
        })
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
        observed_at: row.get("observed_at")?,
        source: row.get("source")?,
    }))
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
                            interruption_rate, observed_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
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
        self.with_conn(move |conn| {
            let tx = conn.transaction().map_err(classify)?;
            let owner: Option<String> = tx
                .query_row(
                    "SELECT tenant_id FROM api_tokens WHERE token_hash = ?1",
                    [&record.token_hash],
                    |row| row.get(0),
                )
                .optional()
                .map_err(classify)?;
            match owner {
                Some(owner) if owner == record.tenant_id => return Ok(()),
                Some(_) => {
                    return Err(StoreError::Conflict {
                        engine: ENGINE,
                        message: format!(
                            "this token already belongs to another tenant; choose a different token for tenant {:?}",
                            record.tenant_id
                        ),
                    })
                }
                None => {}
            }
            tx.execute(
                "INSERT INTO api_tokens (token_hash, tenant_id, label, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![record.token_hash, record.tenant_id, record.label, record.created_at],
            )
            .map_err(classify)?;
            tx.commit().map_err(classify)
        })
        .await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn
                .prepare("SELECT token_hash, tenant_id, label, created_at FROM api_tokens ORDER BY created_at, token_hash")
                .map_err(classify)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok(TokenRecord {
                        token_hash: row.get(0)?,
                        tenant_id: row.get(1)?,
                        label: row.get(2)?,
                        created_at: row.get(3)?,
                    })
                })
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
        .await
    }
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
