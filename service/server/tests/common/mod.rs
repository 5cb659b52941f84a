//! Shared helpers of the integration tests: a real service process, an authenticated
//! gRPC client, a webhook receiver, and process inspection.
#![allow(dead_code)]

use computearbitrage_api::pb;
use computearbitrage_api::pb::admin_client::AdminClient;
use computearbitrage_api::pb::workloads_client::WorkloadsClient;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

pub const TOKEN: &str = "integration-test-token-0123456789";

pub struct Service {
    pub child: Child,
    pub endpoint: String,
    /// `http://host:port` of the router.
    pub router: String,
    /// `http://host:port/metrics` of the router's metrics.
    pub metrics: String,
    pub data_dir: PathBuf,
    pub stderr: Arc<Mutex<String>>,
    /// Whether the workloads (their agents) outlive this handle: a crash test kills the
    /// service and restarts it over running instances.
    keep_workloads: bool,
}

impl Service {
    /// Starts `computearbitrage serve` with extra environment variables.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> Service {
        Service::start_on(data_dir, "127.0.0.1:0", env)
    }

    /// The `host:port` the service listens on.
    pub fn address(&self) -> String {
        self.endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .to_string()
    }

    /// Starts the service on `listen`: a restart after a crash listens where the
    /// agents of its instances call it, as a real deployment does.
    pub fn start_on(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Service {
        let tcp_range = free_port_range();
        let mut command = Command::new(env!("CARGO_BIN_EXE_computearbitrage"));
        command
            .args(["serve", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .env("COMPUTEARBITRAGE_BOOTSTRAP_TOKEN", TOKEN)
            .env("COMPUTEARBITRAGE_SHUTDOWN_GRACE_SECONDS", "1")
            .env("RUST_LOG", "info")
            .env_remove("CA_TEST_PAUSE_AT")
            // The test workloads read files in the test's private temporary directories
            // (and the checkout may be private): run them as the service's user. The
            // isolation itself is tested in tests/isolation.rs with the defaults.
            .env("COMPUTEARBITRAGE_WORKLOADS__LOCAL__RUN_AS", "service")
            // Test webhook receivers listen on loopback; tests/webhooks.rs checks the
            // default, which refuses it.
            .env(
                "COMPUTEARBITRAGE_NOTIFICATIONS__ALLOW_PRIVATE_TARGETS",
                "true",
            )
            // Many services run at once: free ports, and a TCP range of their own.
            .env("COMPUTEARBITRAGE_ROUTER__LISTEN", "127.0.0.1:0")
            .env("COMPUTEARBITRAGE_ROUTER__METRICS_LISTEN", "127.0.0.1:0")
            .env(
                "COMPUTEARBITRAGE_ROUTER__TCP_PORT_MIN",
                tcp_range.0.to_string(),
            )
            .env(
                "COMPUTEARBITRAGE_ROUTER__TCP_PORT_MAX",
                tcp_range.1.to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("service starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let endpoint = loop {
            let line = lines
                .next()
                .expect("the service printed its endpoint")
                .unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_string();
            }
        };
        let (router, metrics) = loop {
            let line = lines
                .next()
                .expect("the service printed its router address")
                .unwrap();
            if let Some(rest) = line.split("through the router at ").nth(1) {
                let router = rest.split_whitespace().next().unwrap().to_string();
                let metrics = rest
                    .split("(metrics: ")
                    .nth(1)
                    .map(|m| m.trim_end_matches(')').to_string())
                    .unwrap_or_default();
                break (router, metrics);
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Service {
            child,
            endpoint,
            router,
            metrics,
            data_dir: data_dir.to_path_buf(),
            stderr,
            keep_workloads: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn workloads(&self) -> WorkloadsClient<Channel> {
        WorkloadsClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    /// Waits until stderr contains `text`.
    pub fn wait_for_log(&self, text: &str, timeout: Duration) {
        let start = Instant::now();
        while !self.stderr.lock().unwrap().contains(text) {
            assert!(
                start.elapsed() < timeout,
                "no {text:?} in the log within {timeout:?}:\n{}",
                self.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9, leaving its instances running (as a crash does).
    pub fn kill(mut self) {
        self.keep_workloads = true;
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let _ = self.child.wait();
    }
}

/// A test that fails still stops its service, and, unless it crashed it on purpose,
/// the instances it started: no process outlives the test run (an agent left behind
/// would keep calling a port another test may have bound since).
impl Drop for Service {
    fn drop(&mut self) {
        stop_if_running(&mut self.child);
        if !self.keep_workloads {
            kill_workloads(&self.data_dir);
        }
    }
}

/// A child process killed when dropped (a failing test must not leave it running).
pub struct ChildGuard(pub Child);

impl std::ops::Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        stop_if_running(&mut self.0);
    }
}

fn stop_if_running(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

pub fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

pub fn workload_server() -> String {
    format!(
        "{}/../../tests/workloads/http_server.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// A spec running the test HTTP server, with fast health checks.
pub fn spec(name: &str, env: &[(&str, &str)]) -> pb::WorkloadSpec {
    let mut vars: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vars.insert("WORKLOAD_NAME".into(), name.into());
    pb::WorkloadSpec {
        name: name.into(),
        requirements: Some(pb::Requirements {
            min_vcpus: Some(2.0),
            min_memory_gib: Some(4.0),
            ..Default::default()
        }),
        command: vec!["python3".into(), workload_server()],
        env: vars,
        port: 8080,
        health_check: Some(pb::HealthCheck {
            path: "/health".into(),
            interval_seconds: 1,
            timeout_seconds: 1,
            unhealthy_threshold: 2,
        }),
        on_interruption: "terminate".into(),
        create_timeout_seconds: 60,
        ..Default::default()
    }
}

pub async fn get(client: &mut WorkloadsClient<Channel>, id: &str) -> pb::Workload {
    client
        .get_workload(authed(pb::GetWorkloadRequest { id: id.into() }))
        .await
        .unwrap()
        .into_inner()
}

/// Polls until the workload's status is one of `want`.
pub async fn wait_status(
    client: &mut WorkloadsClient<Channel>,
    id: &str,
    want: &[&str],
    timeout: Duration,
) -> pb::Workload {
    let start = Instant::now();
    loop {
        let w = get(client, id).await;
        if want.contains(&w.status.as_str()) {
            return w;
        }
        assert!(
            start.elapsed() < timeout,
            "workload {id} stayed {} ({}) instead of {want:?}",
            w.status,
            w.status_reason
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the workload is RUNNING on another instance than `from` (it moved);
/// a FAILED workload, or one still moving after `timeout`, fails the test with the
/// instances' logs.
pub async fn wait_moved(
    client: &mut WorkloadsClient<Channel>,
    service: &Service,
    id: &str,
    from: &str,
    timeout: Duration,
) -> pb::Workload {
    let start = Instant::now();
    loop {
        let w = get(client, id).await;
        if w.status == "RUNNING" && w.instance_id != from {
            return w;
        }
        assert!(
            start.elapsed() < timeout && w.status != "FAILED",
            "workload {id} did not move off {from}: {} ({}){}",
            w.status,
            w.status_reason,
            instance_logs(&service.data_dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GET through the router with a token: the status and the JSON body (null if none).
pub async fn get_json(url: &str, token: &str) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body =
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// The names of the workload's complete checkpoints, oldest first.
pub async fn complete_checkpoints(service: &Service, workload_id: &str) -> Vec<String> {
    let mut client = service.workloads().await;
    let listed = client
        .list_objects(authed(pb::ListObjectsRequest {
            workload_id: workload_id.into(),
            prefix: "checkpoints/".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = listed
        .objects
        .iter()
        .filter_map(|o| {
            o.key
                .strip_prefix("checkpoints/")?
                .strip_suffix("/manifest.json")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// A storage block for tests: enabled, 1 GB, kept a day.
pub fn test_storage() -> Option<pb::StorageSpec> {
    Some(pb::StorageSpec {
        enabled: true,
        quota_gb: 1,
        retention_days: 1,
    })
}

/// A workload that migrates on a notice, with storage for its checkpoints.
pub fn migrating_spec(name: &str) -> pb::WorkloadSpec {
    let mut spec = spec(name, &[]);
    spec.on_interruption = "migrate".into();
    spec.storage = test_storage();
    spec
}

/// The notifications the service holds for a workload.
pub async fn notifications(
    client: &mut WorkloadsClient<Channel>,
    workload_id: &str,
) -> Vec<pb::Notification> {
    client
        .list_notifications(authed(pb::ListNotificationsRequest {
            workload_id: workload_id.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .notifications
}

/// Queues an operator task.
pub async fn queue_task(
    client: &mut WorkloadsClient<Channel>,
    workload_id: &str,
    kind: &str,
    command: &[&str],
    timeout: u32,
) -> pb::Task {
    client
        .create_task(authed(pb::CreateTaskRequest {
            workload_id: workload_id.into(),
            kind: kind.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout_seconds: timeout,
        }))
        .await
        .unwrap()
        .into_inner()
}

/// Polls a task until it is COMPLETED or DEAD.
pub async fn wait_task(
    client: &mut WorkloadsClient<Channel>,
    task: &pb::Task,
    within: Duration,
) -> pb::Task {
    let started = Instant::now();
    loop {
        let now = client
            .get_task(authed(pb::GetTaskRequest {
                id: task.id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        if now.state == "COMPLETED" || now.state == "DEAD" {
            return now;
        }
        assert!(
            started.elapsed() < within,
            "task {} stayed {}: {:?}",
            now.id,
            now.state,
            now
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` in the workload (an `exec` task) and returns its output; it must exit 0.
pub async fn exec_ok(client: &mut WorkloadsClient<Channel>, id: &str, script: &str) -> String {
    let task = queue_task(client, id, "exec", &["sh", "-c", script], 30).await;
    let done = wait_task(client, &task, Duration::from_secs(30)).await;
    assert_eq!(done.exit_code, Some(0), "{script}: {}", done.output);
    done.output
}

/// Live processes whose environment has `KEY=VALUE`.
pub fn processes_with_env(key: &str, value: &str) -> Vec<u32> {
    let marker = format!("{key}={value}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| s.rsplit(')').next().unwrap_or("").split_whitespace().next() == Some("Z"))
            .unwrap_or(true);
        if !zombie && environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every workload process started under `data_dir` (they outlive the service).
/// Only processes still carrying their instance's marker: pids are reused quickly.
pub fn kill_workloads(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("local-driver")) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Some(id) = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["instance_id"].as_str().map(str::to_string))
        else {
            continue;
        };
        for pid in processes_with_env("COMPUTEARBITRAGE_INSTANCE_ID", &id) {
            if pid > 1 {
                // The instance's whole process group (agent and workload). `kill -KILL
                // -PID` from procps reads `-PID` as an option and kills nothing.
                // SAFETY: kill(2) on a process group this test's service started.
                unsafe {
                    libc::kill(-(pid as i32), libc::SIGKILL);
                }
            }
        }
        // Its network namespace, when it had one, goes too.
        if let Some(namespace) = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["network"]["namespace"].as_str().map(str::to_string))
        {
            let _ = Command::new("ip")
                .args(["netns", "del", &namespace])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The last lines of every instance's log under `data_dir`, for a failing assertion's
/// message (an agent's exit reason is there and nowhere else once its process is gone).
pub fn instance_logs(data_dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(data_dir.join("local-driver")) else {
        return "no instance logs".into();
    };
    let mut logs: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("log"))
        .collect();
    logs.sort();
    let mut out = String::new();
    for path in logs {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(15)..];
        out.push_str(&format!(
            "\n--- {} ---\n{}",
            path.display(),
            tail.join("\n")
        ));
    }
    out
}

/// The local driver's record of an instance, as it keeps it on disk.
pub fn instance_record(data_dir: &Path, instance_id: &str) -> serde_json::Value {
    let path = data_dir
        .join("local-driver")
        .join(format!("{instance_id}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// A webhook receiver on loopback that records every request.
#[derive(Clone, Default)]
pub struct Receiver {
    pub requests: Arc<Mutex<Vec<(Vec<(String, String)>, String)>>>,
}

impl Receiver {
    /// Starts the receiver; returns its URL.
    pub async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let requests = self.requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let requests = requests.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, length) = loop {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
                            let length = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            break (pos + 4, length);
                        }
                    };
                    while buf.len() < head_end + length {
                        let n = socket.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let headers = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| {
                            l.split_once(':')
                                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        })
                        .collect();
                    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
                    requests.lock().unwrap().push((headers, body));
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        url
    }

    pub fn bodies(&self) -> Vec<(Vec<(String, String)>, String)> {
        self.requests.lock().unwrap().clone()
    }

    pub async fn wait_for_type(
        &self,
        kind: &str,
        timeout: Duration,
    ) -> (Vec<(String, String)>, String) {
        let start = Instant::now();
        loop {
            if let Some(found) = self
                .bodies()
                .into_iter()
                .find(|(_, body)| body.contains(&format!("\"type\":\"{kind}\"")))
            {
                return found;
            }
            assert!(
                start.elapsed() < timeout,
                "no {kind} notification within {timeout:?}; got {:?}",
                self.bodies()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Ten ports no other test service uses: a block starting at a port that is free now,
/// chosen from a per-process range so concurrent services do not collide.
pub fn free_port_range() -> (u16, u16) {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 30_000 + (std::process::id() % 2_000) as u16 * 10;
    loop {
        let offset = NEXT.fetch_add(10, Ordering::Relaxed);
        let start = base.wrapping_add(offset);
        if (1024..60_000).contains(&start)
            && (start..start + 10).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        {
            return (start, start + 9);
        }
    }
}

/// An update that changes nothing: the workload's spec as it is, to edit.
pub fn update_request(w: &pb::Workload) -> pb::UpdateWorkloadRequest {
    let spec = w.spec.clone().unwrap();
    pb::UpdateWorkloadRequest {
        id: w.id.clone(),
        tags: spec.tags,
        health_check: spec.health_check,
        on_interruption: spec.on_interruption,
        on_unhealthy: spec.on_unhealthy,
        replace_unhealthy_after_seconds: spec.replace_unhealthy_after_seconds,
        fallback: spec.fallback,
        rebalance: spec.rebalance,
        env: spec.env,
        storage: spec.storage,
        tcp_allowed_cidrs: spec.tcp_allowed_cidrs,
        checkpoint: spec.checkpoint,
    }
}
