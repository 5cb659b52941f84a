//! What one client or one workload may take of the router: connections open at once
//! (in all, and per client address) and requests per second per workload. Shared by
//! every serving thread.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections the HTTP router holds open at once.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_client: usize,
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's place under the limits, given back when dropped.
pub struct ConnectionPermit {
    limits: Arc<ConnectionLimits>,
    client: IpAddr,
}

impl std::fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("max_total", &self.max_total)
            .field("max_per_client", &self.max_per_client)
            .field("open", &self.open())
            .finish()
    }
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            max_total: max_total.max(1),
            max_per_client: max_per_client.max(1),
            total: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for a new connection from `client`, or `None` past a limit.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Option<ConnectionPermit> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let mut per = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let open = per.entry(client).or_default();
        if *open >= self.max_per_client {
            drop(per);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        *open += 1;
        Some(ConnectionPermit {
            limits: self.clone(),
            client,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per = self
            .limits
            .per_client
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(open) = per.get_mut(&self.client) {
            *open -= 1;
            if *open == 0 {
                per.remove(&self.client);
            }
        }
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Requests per second of one workload, as a token bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// A token bucket.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(limit: RateLimit) -> Bucket {
        Bucket {
            tokens: limit.burst,
            at: Instant::now(),
        }
    }

    /// Takes one request; the wait until one is allowed when the bucket is empty.
    pub fn take(&mut self, limit: RateLimit, now: Instant) -> Result<(), Duration> {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * limit.per_second;
        self.tokens = (self.tokens + refill).min(limit.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / limit.per_second,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_hold_in_all_and_per_client_and_come_back() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = limits.admit(a).unwrap();
        let _second = limits.admit(a).unwrap();
        assert!(limits.admit(a).is_none(), "two per client");
        let _third = limits.admit(b).unwrap();
        assert!(limits.admit(b).is_none(), "three in all");
        drop(first);
        assert!(
            limits.admit(a).is_some(),
            "a closed connection gives its place back"
        );
    }

    #[test]
    fn a_bucket_refills_at_its_rate() {
        let limit = RateLimit {
            per_second: 10.0,
            burst: 2.0,
        };
        let start = Instant::now();
        let mut bucket = Bucket::full(limit);
        assert!(bucket.take(limit, start).is_ok() && bucket.take(limit, start).is_ok());
        let wait = bucket.take(limit, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        assert!(bucket
            .take(limit, start + Duration::from_millis(100))
            .is_ok());
    }
}
