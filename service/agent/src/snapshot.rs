//! A checkpoint taken while the agent still runs as root: the copy is made by a
//! child process of the agent running as the workload's user
//! (`computearbitrage-agent snapshot`), so it reads only what the workload could
//! read itself, whatever links the workload leaves in `$CHECKPOINT_DIR`.
//!
//! The child never sees the agent's token. It scans and hashes, asks its parent for
//! the upload grant, uploads, and says how it went, one JSON line each way:
//!
//! ```text
//! child  → parent   {"kind":"grant_request", ...CheckpointGrantRequest}
//! parent → child    CheckpointGrant (the signed URLs of this checkpoint only)
//! child  → parent   {"kind":"done","bytes":…,"files":…} | {"kind":"failed","error":"…"}
//! ```

use crate::checkpoint;
use computearbitrage_agent_protocol::{CheckpointGrant, CheckpointGrantRequest};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::path::Path;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// What the child says.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum FromChild {
    GrantRequest(CheckpointGrantRequest),
    Done { bytes: u64, files: u64 },
    Failed { error: String },
}

/// Scans `dir`, gets a grant from `grant`, uploads: checkpoint `name`, as the
/// process's own user. Returns (bytes, files).
pub async fn take<G, F>(
    http: &reqwest::Client,
    dir: &Path,
    name: &str,
    trigger: &str,
    grant: G,
) -> Result<(u64, u64), String>
where
    G: FnOnce(CheckpointGrantRequest) -> F,
    F: Future<Output = Result<CheckpointGrant, String>>,
{
    let scan_dir = dir.to_path_buf();
    let created = name.parse::<i64>().unwrap_or(0);
    let mut packed = tokio::task::spawn_blocking(move || checkpoint::scan(&scan_dir, created))
        .await
        .map_err(|e| format!("the scan did not finish: {e}"))?
        .map_err(|e| e.to_string())?;
    packed.manifest.trigger = trigger.to_string();
    let request = CheckpointGrantRequest {
        name: name.to_string(),
        chunks: packed.chunk_sizes(),
        manifest_bytes: packed.manifest_json().len() as u64,
        reuse_stored: true,
    };
    let grant = grant(request).await?;
    let bytes = checkpoint::upload(http, &packed, &grant, checkpoint::UPLOAD_PATIENCE)
        .await
        .map_err(|e| e.to_string())?;
    Ok((bytes, packed.manifest.files.len() as u64))
}

/// The same as [`take`], done by a child process running as `owner` (uid, gid).
pub async fn take_as<G, F>(
    owner: (u32, u32),
    dir: &Path,
    name: &str,
    trigger: &str,
    grant: G,
) -> Result<(u64, u64), String>
where
    G: FnOnce(CheckpointGrantRequest) -> F,
    F: Future<Output = Result<CheckpointGrant, String>>,
{
    let program = std::env::current_exe().map_err(|e| {
        format!("cannot find the agent's own program to copy as the workload's user: {e}")
    })?;
    let mut child = tokio::process::Command::new(&program)
        .arg("snapshot")
        .arg("--dir")
        .arg(dir)
        .arg("--name")
        .arg(name)
        .arg("--trigger")
        .arg(trigger)
        .env_clear()
        .envs(std::env::var("RUST_LOG").ok().map(|v| ("RUST_LOG", v)))
        .uid(owner.0)
        .gid(owner.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // A notice aborts a periodic copy: the child goes with it.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {} as uid {} for the copy: {e}; the agent's program must be readable and executable by all users",
                program.display(),
                owner.0
            )
        })?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("the copy's pipes are missing".into());
    };
    let mut lines = BufReader::new(stdout).lines();
    let mut next = async || -> Result<FromChild, String> {
        let line = lines
            .next_line()
            .await
            .map_err(|e| format!("the copy's output: {e}"))?
            .ok_or("the copy ended without a word")?;
        serde_json::from_str(&line).map_err(|e| format!("the copy said something unreadable: {e}"))
    };
    let outcome = match next().await? {
        FromChild::GrantRequest(request) => {
            let grant = grant(request).await?;
            let mut line = serde_json::to_vec(&grant).map_err(|e| e.to_string())?;
            line.push(b'\n');
            stdin
                .write_all(&line)
                .await
                .map_err(|e| format!("cannot hand the grant to the copy: {e}"))?;
            drop(stdin);
            match next().await? {
                FromChild::Done { bytes, files } => Ok((bytes, files)),
                FromChild::Failed { error } => Err(error),
                FromChild::GrantRequest(_) => Err("the copy asked for a second grant".into()),
            }
        }
        FromChild::Failed { error } => Err(error),
        FromChild::Done { .. } => Err("the copy finished without a grant".into()),
    };
    let _ = child.wait().await;
    outcome
}

/// `computearbitrage-agent snapshot`: the child's side. Exits 0 whenever it could
/// say how it went (the parent reads the outcome, not the exit code).
pub async fn child_main(dir: &Path, name: &str, trigger: &str) -> i32 {
    let http = crate::run::http_client();
    let say = |message: &FromChild| {
        // One line per message on stdout; tracing goes to stderr.
        println!("{}", serde_json::to_string(message).unwrap_or_default());
    };
    let outcome = take(&http, dir, name, trigger, |request| async move {
        say(&FromChild::GrantRequest(request));
        let mut line = String::new();
        BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await
            .map_err(|e| format!("no grant from the agent: {e}"))?;
        serde_json::from_str::<CheckpointGrant>(&line)
            .map_err(|e| format!("the agent's grant is unreadable: {e}"))
    })
    .await;
    match outcome {
        Ok((bytes, files)) => say(&FromChild::Done { bytes, files }),
        Err(error) => say(&FromChild::Failed { error }),
    }
    0
}
