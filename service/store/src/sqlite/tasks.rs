//! The SQLite queries of operator tasks.

use super::classify;
use crate::{StoreError, TaskRecord, TaskState};
use rusqlite::{params, Connection};

const TASK_COLUMNS: &str = "id, tenant_id, workload_id, kind, command, timeout_seconds, state, attempts, max_attempts, next_attempt_at, lease_until, instance_id, exit_code, output, error, created_at, updated_at";

pub(super) fn save(conn: &Connection, t: &TaskRecord) -> Result<(), StoreError> {
    let command = serde_json::to_string(&t.command).unwrap_or_else(|_| "[]".into());
    conn.execute(
        &format!("INSERT OR REPLACE INTO tasks ({TASK_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
        params![
            t.id, t.tenant_id, t.workload_id, t.kind, command, t.timeout_seconds,
            t.state.as_str(), t.attempts, t.max_attempts, t.next_attempt_at, t.lease_until,
            t.instance_id, t.exit_code, t.output, t.error, t.created_at, t.updated_at
        ],
    )
    .map(|_| ())
    .map_err(classify)
}

/// Tasks matching `clause`, oldest first.
pub(super) fn select(
    conn: &Connection,
    clause: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<TaskRecord>, StoreError> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks {clause} ORDER BY created_at, id"
        ))
        .map_err(classify)?;
    let rows = stmt
        .query_map(args, |row| {
            let command: String = row.get(4)?;
            let state: String = row.get(6)?;
            Ok((
                TaskRecord {
                    id: row.get(0)?,
                    tenant_id: row.get(1)?,
                    workload_id: row.get(2)?,
                    kind: row.get(3)?,
                    command: serde_json::from_str(&command).unwrap_or_default(),
                    timeout_seconds: row.get(5)?,
                    state: TaskState::Queued,
                    attempts: row.get(7)?,
                    max_attempts: row.get(8)?,
                    next_attempt_at: row.get(9)?,
                    lease_until: row.get(10)?,
                    instance_id: row.get(11)?,
                    exit_code: row.get(12)?,
                    output: row.get(13)?,
                    error: row.get(14)?,
                    created_at: row.get(15)?,
                    updated_at: row.get(16)?,
                },
                state,
            ))
        })
        .map_err(classify)?;
    let mut out = Vec::new();
    for row in rows {
        let (mut task, state) = row.map_err(classify)?;
        task.state = TaskState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            engine: super::ENGINE,
            message: format!("task {} has unknown state {state:?}", task.id),
        })?;
        out.push(task);
    }
    Ok(out)
}
