//! One small trait for every background loop (price collectors now; the health
//! monitor, webhook sender and sweepers later) and one [`Supervisor`] that starts them
//! and stops them together.
//!
//! Shutdown is graceful: a worker never has a unit of work cut in half by the signal;
//! it finishes the current [`Worker::tick`] and stops before the next one. A worker
//! still busy when the grace period ends is aborted.

use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What a failed tick reports: the crate's own error type, classified.
pub trait TickError: std::fmt::Display + Send + 'static {
    fn origin(&self) -> crate::error::Origin;
    fn is_retryable(&self) -> bool;
}

impl TickError for crate::OrchestratorError {
    fn origin(&self) -> crate::error::Origin {
        crate::OrchestratorError::origin(self)
    }
    fn is_retryable(&self) -> bool {
        crate::OrchestratorError::is_retryable(self)
    }
}

#[async_trait::async_trait]
pub trait Worker: Send + 'static {
    /// The error type of the crate the worker lives in.
    type Error: TickError;

    /// Name for logs (`collector:snapshot`).
    fn name(&self) -> String;

    /// Pause between the end of one tick and the start of the next.
    fn interval(&self) -> Duration;

    /// One unit of work. Errors are logged with their retryability; the loop goes on.
    async fn tick(&mut self) -> Result<(), Self::Error>;
}

/// Starts workers and stops them all on [`Supervisor::shutdown`].
pub struct Supervisor {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Supervisor {
            stop: watch::channel(false).0,
            tasks: JoinSet::new(),
        }
    }

    /// Runs `worker` now and then every interval until shutdown.
    pub fn spawn(&mut self, mut worker: impl Worker) {
        let mut stop = self.stop.subscribe();
        self.tasks.spawn(async move {
            let name = worker.name();
            tracing::debug!(worker = %name, "worker started");
            loop {
                if *stop.borrow() {
                    break;
                }
                if let Err(error) = worker.tick().await {
                    tracing::warn!(
                        worker = %name,
                        %error,
                        origin = error.origin().as_str(),
                        retryable = error.is_retryable(),
                        "worker tick failed"
                    );
                }
                tokio::select! {
                    _ = tokio::time::sleep(worker.interval()) => {}
                    _ = stop.changed() => break,
                }
            }
            tracing::debug!(worker = %name, "worker stopped");
        });
    }

    /// Signals every worker to stop and waits up to `grace` for them.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let drained = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = self.tasks.len(),
                "workers did not stop within the grace period; aborting them"
            );
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Counter {
        ticks: Arc<AtomicUsize>,
        finished: Arc<AtomicUsize>,
        tick_length: Duration,
    }

    #[async_trait::async_trait]
    impl Worker for Counter {
        type Error = crate::OrchestratorError;
        fn name(&self) -> String {
            "counter".into()
        }
        fn interval(&self) -> Duration {
            Duration::from_secs(60)
        }
        async fn tick(&mut self) -> Result<(), crate::OrchestratorError> {
            self.ticks.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.tick_length).await;
            self.finished.fetch_add(1, Ordering::SeqCst);
            Err(crate::OrchestratorError::config(
                "every tick fails; the loop must go on",
            ))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_on_interval_and_finishes_the_current_tick_at_shutdown() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let mut supervisor = Supervisor::new();
        supervisor.spawn(Counter {
            ticks: ticks.clone(),
            finished: finished.clone(),
            tick_length: Duration::from_secs(1),
        });
        // t=0 first tick, t=61 second, t=122 third (tick 1 s + interval 60 s).
        tokio::time::sleep(Duration::from_millis(122_500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 3);
        // The third tick is in progress; shutdown lets it finish.
        supervisor.shutdown(Duration::from_secs(10)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_worker_is_aborted_after_the_grace_period() {
        let ticks = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let mut supervisor = Supervisor::new();
        supervisor.spawn(Counter {
            ticks: ticks.clone(),
            finished: finished.clone(),
            tick_length: Duration::from_secs(3600),
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = tokio::time::Instant::now();
        supervisor.shutdown(Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(finished.load(Ordering::SeqCst), 0);
    }
}
