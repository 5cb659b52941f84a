//! Health checks of running workloads.
//!
//! Every watched workload is checked on its own interval with its own timeout. A poll
//! (every `tick`, 100 ms by default) launches the checks that are due as independent
//! tasks (at most `max_concurrent` in flight) and applies the results that arrived,
//! so one slow or hanging workload never delays another. `unhealthy_threshold`
//! consecutive failures raise [`HealthEvent::Unhealthy`]; a success resets the count
//! and, for an unhealthy workload, raises [`HealthEvent::Recovered`].

use crate::error::OrchestratorError;
use crate::worker::Worker;
use computearbitrage_core::WorkloadStatus;
use computearbitrage_store::WorkloadRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq)]
pub enum HealthEvent {
    Unhealthy {
        tenant: String,
        workload_id: String,
        failures: u32,
        last_error: String,
    },
    Recovered {
        tenant: String,
        workload_id: String,
    },
}

/// Counters for operators and the benchmark.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonitorStats {
    pub checks_started: u64,
    pub checks_failed: u64,
    /// The largest delay between a check falling due and it starting.
    pub max_lateness: Duration,
}

struct Watch {
    tenant: String,
    url: String,
    interval: Duration,
    timeout: Duration,
    threshold: u32,
    failures: u32,
    unhealthy: bool,
    next_due: Instant,
    in_flight: bool,
    /// Bumped on every (re)watch so results of an older configuration are ignored.
    generation: u64,
}

struct CheckResult {
    workload_id: String,
    generation: u64,
    error: Option<String>,
}

pub struct Monitor {
    watches: Mutex<HashMap<String, Watch>>,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    results_tx: mpsc::UnboundedSender<CheckResult>,
    results_rx: Mutex<mpsc::UnboundedReceiver<CheckResult>>,
    stats: Mutex<MonitorStats>,
    next_generation: Mutex<u64>,
}

impl Monitor {
    pub fn new(max_concurrent: usize) -> Arc<Monitor> {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        Arc::new(Monitor {
            watches: Mutex::new(HashMap::new()),
            // A redirect is the workload's answer (not 2xx: unhealthy), never followed.
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(4)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client with default settings builds"),
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            results_tx,
            results_rx: Mutex::new(results_rx),
            stats: Mutex::new(MonitorStats::default()),
            next_generation: Mutex::new(0),
        })
    }

    /// Starts (or restarts, with a new configuration) watching a workload with an
    /// endpoint. The first check is due one interval from now.
    pub fn watch(&self, workload: &WorkloadRecord) {
        let Some(endpoint) = &workload.endpoint else {
            return;
        };
        let check = &workload.spec.health_check;
        let generation = {
            let mut next = self
                .next_generation
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let unhealthy = watches
            .get(&workload.id)
            .map(|w| w.unhealthy)
            .unwrap_or(workload.status == WorkloadStatus::Unhealthy);
        watches.insert(
            workload.id.clone(),
            Watch {
                tenant: workload.tenant_id.clone(),
                url: format!("http://{endpoint}{}", check.path),
                interval: check.interval,
                timeout: check.timeout,
                threshold: check.unhealthy_threshold.max(1),
                failures: 0,
                unhealthy,
                next_due: Instant::now() + check.interval,
                in_flight: false,
                generation,
            },
        );
    }

    /// Watches with an explicit URL, interval and timeout (for benchmarks and tests).
    pub fn watch_url(
        &self,
        tenant: &str,
        workload_id: &str,
        url: &str,
        interval: Duration,
        timeout: Duration,
        threshold: u32,
    ) {
        let generation = {
            let mut next = self
                .next_generation
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *next += 1;
            *next
        };
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                workload_id.to_string(),
                Watch {
                    tenant: tenant.to_string(),
                    url: url.to_string(),
                    interval,
                    timeout,
                    threshold,
                    failures: 0,
                    unhealthy: false,
                    next_due: Instant::now() + interval,
                    in_flight: false,
                    generation,
                },
            );
    }

    pub fn unwatch(&self, workload_id: &str) {
        self.watches
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(workload_id);
    }

    pub fn watched(&self) -> usize {
        self.watches.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn stats(&self) -> MonitorStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies finished checks, launches due ones, and returns status changes.
    pub fn poll(&self) -> Vec<HealthEvent> {
        let mut events = Vec::new();
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut results = self.results_rx.lock().unwrap_or_else(|p| p.into_inner());
            let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
            while let Ok(result) = results.try_recv() {
                let Some(watch) = watches.get_mut(&result.workload_id) else {
                    continue;
                };
                if watch.generation != result.generation {
                    continue;
                }
                watch.in_flight = false;
                match result.error {
                    None => {
                        watch.failures = 0;
                        if watch.unhealthy {
                            watch.unhealthy = false;
                            events.push(HealthEvent::Recovered {
                                tenant: watch.tenant.clone(),
                                workload_id: result.workload_id.clone(),
                            });
                        }
                    }
                    Some(error) => {
                        stats.checks_failed += 1;
                        watch.failures += 1;
                        if watch.failures >= watch.threshold && !watch.unhealthy {
                            watch.unhealthy = true;
                            events.push(HealthEvent::Unhealthy {
                                tenant: watch.tenant.clone(),
                                workload_id: result.workload_id.clone(),
                                failures: watch.failures,
                                last_error: error,
                            });
                        }
                    }
                }
            }
        }
        let now = Instant::now();
        let mut stats = self.stats.lock().unwrap_or_else(|p| p.into_inner());
        for (id, watch) in watches.iter_mut() {
            if watch.in_flight || watch.next_due > now {
                continue;
            }
            let lateness = now - watch.next_due;
            stats.max_lateness = stats.max_lateness.max(lateness);
            stats.checks_started += 1;
            watch.in_flight = true;
            watch.next_due += watch.interval;
            if watch.next_due <= now {
                watch.next_due = now + watch.interval;
            }
            let (tx, http, permits) = (
                self.results_tx.clone(),
                self.http.clone(),
                self.permits.clone(),
            );
            let (url, timeout, workload_id, generation) = (
                watch.url.clone(),
                watch.timeout,
                id.clone(),
                watch.generation,
            );
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                let error = match http.get(&url).timeout(timeout).send().await {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => Some(format!("GET {url} answered HTTP {}", r.status())),
                    Err(e) => Some(format!(
                        "GET {url}: {}",
                        super::steps::describe_http_error(&e)
                    )),
                };
                let _ = tx.send(CheckResult {
                    workload_id,
                    generation,
                    error,
                });
            });
        }
        events
    }
}

/// Receives health status changes (the orchestrator; a counter in benchmarks).
#[async_trait::async_trait]
pub trait HealthHandler: Send + Sync + 'static {
    async fn on_health_event(&self, event: HealthEvent) -> Result<(), OrchestratorError>;
}

/// The monitor as a background worker.
pub struct MonitorWorker<H: HealthHandler> {
    pub monitor: Arc<Monitor>,
    pub handler: Arc<H>,
    pub tick: Duration,
}

#[async_trait::async_trait]
impl<H: HealthHandler> Worker for MonitorWorker<H> {
    type Error = OrchestratorError;
    fn name(&self) -> String {
        "health-monitor".into()
    }

    fn interval(&self) -> Duration {
        self.tick
    }

    async fn tick(&mut self) -> Result<(), OrchestratorError> {
        for event in self.monitor.poll() {
            self.handler.on_health_event(event).await?;
        }
        Ok(())
    }
}
