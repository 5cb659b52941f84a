//! Operator tasks (`exec`, `checkpoint`, `stop`, `pause`, `resume`): pulled from the
//! service and run side by side (at most [`CONCURRENT`] at once), so a `pause` or a
//! second `exec` never waits behind a long `exec`.
//!
//! - Delivered at least once: a task id that already ran to a result is not run
//!   again; its kept result is reported again (the first report may have been lost).
//!   A failed attempt is run again when it is redelivered.
//! - `exec` runs as the workload does (its user, directory and environment, plus
//!   `COMPUTEARBITRAGE_TASK_ID`), stdout and stderr together, killed at its timeout.
//!   A command that cannot start is exit code 127, like a shell says it.
//! - `pause` / `resume` stop and continue the workload and every process it started.
//! - `stop` is handed to the agent's main loop ([`StopRequest`]): the workload is the
//!   main loop's to end.

use crate::run::{self, CallError, Client, RunArgs, Settings};
use computearbitrage_agent_protocol::{self as protocol, paths};
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// The end of a command's output that is reported (the service keeps as much).
const OUTPUT_MAX: usize = 64 << 10;
/// Results kept to answer a repeated delivery without running the task again.
const REMEMBERED: usize = 64;
/// Tasks run at once; a further one waits for a slot before it is pulled.
pub(crate) const CONCURRENT: usize = 8;
/// How long the service may hold a request for the next task.
const WAIT_MS: u64 = 5_000;

/// A `stop` task for the main loop, which reports its result.
pub(crate) struct StopRequest {
    pub task: protocol::AgentTask,
}

/// What the task loop needs of the running workload.
#[derive(Clone)]
pub(crate) struct Context {
    pub client: Arc<Client>,
    pub args: Arc<RunArgs>,
    pub env: BTreeMap<String, String>,
    pub checkpoint_dir: PathBuf,
    pub settings: Settings,
    pub storage: bool,
    /// The workload's main process.
    pub pid: i32,
    pub stops: mpsc::Sender<StopRequest>,
}

/// Pulls and runs tasks until the agent ends it. Dropping this future (the agent
/// aborts it on a notice or a stop) ends the tasks under way with it.
pub(crate) async fn task_loop(context: Context) {
    let done: Arc<Mutex<VecDeque<protocol::TaskResult>>> = Arc::default();
    let running: Arc<Mutex<std::collections::HashSet<String>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let mut under_way = tokio::task::JoinSet::new();
    loop {
        while under_way.try_join_next().is_some() {}
        // A slot first, so no task is pulled (and leased) that cannot start.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let reply = context
            .client
            .call::<_, protocol::NextTaskReply>(
                paths::TASK_NEXT,
                &protocol::NextTask { wait_ms: WAIT_MS },
            )
            .await;
        let task = match reply {
            Ok(protocol::NextTaskReply { task: Some(task) }) => task,
            Ok(protocol::NextTaskReply { task: None }) => continue,
            Err(e) => {
                // Fencing is the heartbeat's to act on; a replacement gets tasks once
                // it is switched to.
                if !matches!(e, CallError::Transient(_)) {
                    tracing::debug!(error = ?e, "no tasks for this instance now");
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        tracing::info!(task_id = %task.id, kind = %task.kind, attempt = task.attempt, "task");
        let kept = lock(&done).iter().find(|r| r.id == task.id).cloned();
        if let Some(mut again) = kept {
            again.attempt = task.attempt;
            report(&context.client, &again).await;
            continue;
        }
        if task.kind == "stop" {
            // The main loop reports it as it ends the workload.
            let _ = context.stops.send(StopRequest { task }).await;
            continue;
        }
        // Delivered again while it still runs (its lease ran out): it reports once done.
        if !lock(&running).insert(task.id.clone()) {
            continue;
        }
        let (context, done, running) = (context.clone(), done.clone(), running.clone());
        under_way.spawn(async move {
            let result = run_task(&context, &task).await;
            report(&context.client, &result).await;
            lock(&running).remove(&task.id);
            // A failed attempt is not remembered: its redelivery is the retry.
            if result.error.is_none() {
                let mut done = lock(&done);
                if done.len() == REMEMBERED {
                    done.pop_front();
                }
                done.push_back(result);
            }
            drop(slot);
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reports one result, retrying a while; a result that does not get through is
/// reported again on the task's next delivery.
pub(crate) async fn report(client: &Client, result: &protocol::TaskResult) {
    tracing::info!(task_id = %result.id, exit_code = ?result.exit_code, error = ?result.error, "task result");
    if let Err(e) = client
        .call_patiently::<_, serde_json::Value>(paths::TASK_RESULT, result, Duration::from_secs(30))
        .await
    {
        tracing::warn!(task_id = %result.id, error = ?e, "cannot report the task's result; it goes again on redelivery");
    }
}

fn finished(task: &protocol::AgentTask, code: i32, output: String) -> protocol::TaskResult {
    protocol::TaskResult {
        id: task.id.clone(),
        attempt: task.attempt,
        exit_code: Some(code),
        output,
        error: None,
    }
}

fn failed(task: &protocol::AgentTask, error: String, output: String) -> protocol::TaskResult {
    protocol::TaskResult {
        id: task.id.clone(),
        attempt: task.attempt,
        exit_code: None,
        output,
        error: Some(error),
    }
}

async fn run_task(context: &Context, task: &protocol::AgentTask) -> protocol::TaskResult {
    match task.kind.as_str() {
        "exec" => exec(context, task).await,
        "checkpoint" => checkpoint(context, task).await,
        "pause" => {
            let count = signal_tree(context.pid, libc::SIGSTOP);
            finished(task, 0, format!("paused {count} processes"))
        }
        "resume" => {
            let count = signal_tree(context.pid, libc::SIGCONT);
            finished(task, 0, format!("resumed {count} processes"))
        }
        other => failed(
            task,
            format!(
                "this agent ({}) does not know the task kind {other:?}; upgrade the agent",
                env!("CARGO_PKG_VERSION")
            ),
            String::new(),
        ),
    }
}

async fn exec(context: &Context, task: &protocol::AgentTask) -> protocol::TaskResult {
    if task.command.is_empty() {
        return failed(task, "an exec task without a command".into(), String::new());
    }
    let mut command = run::as_workload(
        &context.args,
        &context.env,
        &task.command,
        &context.checkpoint_dir,
    );
    command
        .env("COMPUTEARBITRAGE_TASK_ID", &task.id)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return finished(
                task,
                127,
                format!("cannot start {:?}: {e}\n", task.command[0]),
            )
        }
    };
    let output = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child
            .stdout
            .take()
            .map(|out| tokio::spawn(collect(out, output.clone()))),
        child
            .stderr
            .take()
            .map(|err| tokio::spawn(collect(err, output.clone()))),
    ];
    let timeout = Duration::from_secs(u64::from(task.timeout_seconds.max(1)));
    let status = tokio::time::timeout(timeout, child.wait()).await;
    if status.is_err() {
        // What the command started goes with it, not only its first process.
        if let Some(pid) = child.id() {
            signal_tree(pid as i32, libc::SIGKILL);
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    // What the command wrote last; a child of it that keeps the pipes open is not
    // waited for.
    for reader in readers.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), reader).await;
    }
    let text = {
        let bytes = output.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    };
    match status {
        Ok(Ok(status)) => finished(task, run::exit_code(status), text),
        Ok(Err(e)) => failed(task, format!("the command was lost: {e}"), text),
        Err(_) => failed(
            task,
            format!(
                "the command did not finish within {} s and was killed",
                timeout.as_secs()
            ),
            text,
        ),
    }
}

/// Appends what `from` gives to `output`, keeping about its last [`OUTPUT_MAX`] bytes.
async fn collect<R: tokio::io::AsyncRead + Unpin>(mut from: R, output: Arc<Mutex<Vec<u8>>>) {
    let mut buffer = vec![0u8; 16 << 10];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut output = output.lock().unwrap_or_else(|p| p.into_inner());
        output.extend_from_slice(&buffer[..read]);
        if output.len() > 2 * OUTPUT_MAX {
            let cut = output.len() - OUTPUT_MAX;
            output.drain(..cut);
        }
    }
}

async fn checkpoint(context: &Context, task: &protocol::AgentTask) -> protocol::TaskResult {
    if !context.storage {
        return failed(
            task,
            "the workload has no storage, so it cannot checkpoint".into(),
            String::new(),
        );
    }
    let settings = run::current(&context.settings);
    let name = run::unix_ms().to_string();
    let started = Instant::now();
    let budget = Duration::from_secs(u64::from(task.timeout_seconds.max(1)));
    let outcome = run::copy_checkpoint(
        &context.client,
        &context.args,
        &context.env,
        &settings,
        &context.checkpoint_dir,
        &name,
        "task",
        budget,
    )
    .await;
    let result = match &outcome {
        Ok((bytes, files)) => finished(
            task,
            0,
            format!("checkpoint {name}: {files} files, {bytes} bytes\n"),
        ),
        Err(e) => failed(
            task,
            format!("checkpoint {name} failed: {e}"),
            String::new(),
        ),
    };
    run::report_checkpoint(&context.client, name, "task", outcome, started).await;
    result
}

/// Sends `signal` to `pid` and every process descended from it; how many.
pub fn signal_tree(pid: i32, signal: i32) -> usize {
    let tree = descendants(pid);
    for &member in &tree {
        run::signal(member, signal);
    }
    tree.len()
}

/// `pid` and its descendants, parents before children, from `/proc`.
fn descendants(pid: i32) -> Vec<i32> {
    if pid <= 0 {
        return Vec::new();
    }
    let mut parents: Vec<(i32, i32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(parent) = parent_of(&stat) {
                parents.push((child, parent));
            }
        }
    }
    let mut tree = vec![pid];
    let mut next = 0;
    while next < tree.len() {
        let parent = tree[next];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        next += 1;
    }
    tree
}

/// The parent pid in a `/proc/PID/stat` line: the field after the state, which
/// follows the command name's closing parenthesis (the name may hold spaces).
fn parent_of(stat: &str) -> Option<i32> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_a_command_name_with_spaces_and_parentheses() {
        assert_eq!(parent_of("42 (my (odd) name) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("42 (sh) R 1 42"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn a_process_tree_holds_the_children_of_a_real_process() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mut tree = Vec::new();
        for _ in 0..100 {
            tree = descendants(pid);
            if tree.len() >= 2 {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(tree[0], pid);
        assert!(tree.len() >= 2, "sh and its sleep: {tree:?}");
        signal_tree(pid, libc::SIGKILL);
        let _ = child.wait();
    }
}
