//! Processes of the local driver: whether a recorded pid is still the process we
//! started (pids are reused within minutes), finding one by its instance marker, and
//! stopping a process group. Nothing here signals a process it cannot prove is ours.

use crate::INSTANCE_ENV;
use std::time::Duration;

/// `/proc/PID/stat`: (state, start ticks), or `None` if there is no such process.
pub(crate) fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is still the process we started: alive, not a zombie, and started at
/// the recorded time. Without a recorded start time nothing is ours: pids are reused
/// quickly, and signalling a stranger's process group must never happen.
pub(crate) fn alive(pid: u32, start_ticks: Option<u64>) -> bool {
    match (proc_stat(pid), start_ticks) {
        (Some((state, start)), Some(expected)) => state != 'Z' && state != 'X' && start == expected,
        _ => false,
    }
}

/// Alive and not a zombie, whoever started it.
pub(crate) fn running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// A process whose environment carries `INSTANCE_ENV=instance_id`.
pub(crate) fn find_by_marker(instance_id: &str) -> Option<u32> {
    let marker = format!("{INSTANCE_ENV}={instance_id}");
    let entries = std::fs::read_dir("/proc").ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) {
            if environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes())
                && running(pid)
            {
                return Some(pid);
            }
        }
    }
    None
}

pub(crate) fn signal_group(pid: u32, signal: i32) {
    // kill(-1) and kill(-0) would reach every process, or our own group.
    if pid <= 1 {
        return;
    }
    // The process leads its own group (process_group(0) at spawn).
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

/// Whether a live process (not a zombie) is still in the group `pgid` leads or led: a
/// group outlives its leader while members remain. Zombies do not count: a workload
/// orphaned by its agent is reaped by init, which in a container may never reap.
pub(crate) fn group_alive(pgid: u32) -> bool {
    if pgid <= 1 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return false;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // After the command's closing parenthesis: state, ppid, pgrp, …
        let mut fields = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or("")
            .split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|g| g.parse::<u32>().ok());
        pgrp == Some(pgid) && !matches!(state, "Z" | "X")
    })
}

/// SIGTERM to the group, then SIGKILL if anything of it is still there after `grace`.
/// The group, not only its leader: a workload left behind by an agent that exited
/// must not outlive its instance (nor keep a uid the driver hands out again).
pub(crate) async fn stop_process(pid: u32, start_ticks: Option<u64>, grace: Duration) {
    let leader = alive(pid, start_ticks);
    if !leader && !group_alive(pid) {
        return;
    }
    signal_group(pid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !alive(pid, start_ticks) && !group_alive(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(pid, libc::SIGKILL);
    for _ in 0..40 {
        if !alive(pid, start_ticks) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
