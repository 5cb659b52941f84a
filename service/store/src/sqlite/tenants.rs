//! The SQLite queries of tenants, tokens and the audit log.

use super::{classify, ENGINE};
use crate::{AuditRecord, Scopes, StoreError, Tenant, TokenRecord};
use rusqlite::{params, Connection, OptionalExtension};

const TOKEN_COLUMNS: &str =
    "id, token_hash, tenant_id, label, scopes, created_at, expires_at, revoked_at";

fn token_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<TokenRecord, String>> {
    let scopes: String = row.get(4)?;
    let id: String = row.get(0)?;
    let Ok(scopes) = Scopes::parse(&scopes) else {
        return Ok(Err(format!("token {id} has unknown scopes {scopes:?}")));
    };
    Ok(Ok(TokenRecord {
        id,
        token_hash: row.get(1)?,
        tenant_id: row.get(2)?,
        label: row.get(3)?,
        scopes,
        created_at: row.get(5)?,
        expires_at: row.get(6)?,
        revoked_at: row.get(7)?,
    }))
}

fn tokens_where(
    conn: &Connection,
    clause: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<TokenRecord>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens {clause} ORDER BY created_at, id"
        ))
        .map_err(classify)?;
    let rows = stmt.query_map(args, token_from_row).map_err(classify)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(
            row.map_err(classify)?
                .map_err(|message| StoreError::Corrupt {
                    engine: ENGINE,
                    message,
                })?,
        );
    }
    Ok(out)
}

pub(super) fn add_token(conn: &mut Connection, record: &TokenRecord) -> Result<(), StoreError> {
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
        &format!(
            "INSERT INTO api_tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ),
        params![
            record.id,
            record.token_hash,
            record.tenant_id,
            record.label,
            record.scopes.to_string(),
            record.created_at,
            record.expires_at,
            record.revoked_at
        ],
    )
    .map_err(classify)?;
    tx.commit().map_err(classify)
}

pub(super) fn list_tokens(conn: &Connection) -> Result<Vec<TokenRecord>, StoreError> {
    tokens_where(conn, "", &[])
}

pub(super) fn revoke_token(
    conn: &mut Connection,
    id: &str,
    at: i64,
) -> Result<Option<TokenRecord>, StoreError> {
    conn.execute(
        "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        params![id, at],
    )
    .map_err(classify)?;
    Ok(tokens_where(conn, "WHERE id = ?1", &[&id])?
        .into_iter()
        .next())
}

pub(super) fn tenants(conn: &Connection) -> Result<Vec<Tenant>, StoreError> {
    let mut stmt = conn
        .prepare("SELECT id, created_at FROM tenants ORDER BY created_at, id")
        .map_err(classify)?;
    let rows = stmt
        .query_map([], |row| {
            Ok(Tenant {
                id: row.get(0)?,
                created_at: row.get(1)?,
            })
        })
        .map_err(classify)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(classify)
}

pub(super) fn record_audit(conn: &Connection, r: &AuditRecord) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO audit_log (tenant_id, token_id, action, target, outcome, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![r.tenant_id, r.token_id, r.action, r.target, r.outcome, r.at],
    )
    .map(|_| ())
    .map_err(classify)
}

pub(super) fn audit_log(
    conn: &Connection,
    tenant_id: Option<&str>,
    limit: u32,
) -> Result<Vec<AuditRecord>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT id, tenant_id, token_id, action, target, outcome, at FROM audit_log
             WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY id DESC LIMIT ?2",
        )
        .map_err(classify)?;
    let rows = stmt
        .query_map(params![tenant_id, limit], |row| {
            Ok(AuditRecord {
                id: row.get(0)?,
                tenant_id: row.get(1)?,
                token_id: row.get(2)?,
                action: row.get(3)?,
                target: row.get(4)?,
                outcome: row.get(5)?,
                at: row.get(6)?,
            })
        })
        .map_err(classify)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(classify)
}
