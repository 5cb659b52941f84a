//! The connection to the service, shared by every data source and resource; retries
//! of calls that may succeed later; and the translation of service errors into
//! diagnostics a Terraform user can act on, one summary and fix per cause.

use computearbitrage_api::connect::{self, Target};
use computearbitrage_api::pb::pricing_client::PricingClient;
use computearbitrage_api::pb::workloads_client::WorkloadsClient;
use computearbitrage_api::validate::{PathStep, Violation};
use computearbitrage_api::{is_retryable, Reason, ERROR_FIELD_METADATA};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tf_provider::{AttributePath, Diagnostics};
use tokio::sync::RwLock;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";

/// How long a single call is retried while the service says a retry may help.
pub const CALL_RETRY_BUDGET: Duration = Duration::from_secs(20);

pub type AuthInterceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;
pub type Pricing = PricingClient<InterceptedService<Channel, AuthInterceptor>>;
pub type Workloads = WorkloadsClient<InterceptedService<Channel, AuthInterceptor>>;

/// A configured connection.
#[derive(Clone)]
pub struct Connection {
    pub target: Target,
    channel: Channel,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    /// Whether the service has answered this process once: after that a failed
    /// connection is a blip worth retrying, before it the service is likely not there.
    answered: Arc<AtomicBool>,
}

impl Connection {
    /// Validates the endpoint and prepares a lazily connecting channel.
    pub fn new(target: Target, token: &str) -> Result<Connection, String> {
        let channel = connect::endpoint(&target)?.connect_lazy();
        let authorization = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token contains characters that cannot be sent in a header; use the token exactly as the service printed it".to_string())?;
        Ok(Connection {
            target,
            channel,
            authorization,
            answered: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.target.url
    }

    fn interceptor(&self) -> AuthInterceptor {
        let authorization = self.authorization.clone();
        Box::new(move |mut request: tonic::Request<()>| {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
            Ok(request)
        })
    }

    pub fn pricing(&self) -> Pricing {
        PricingClient::with_interceptor(self.channel.clone(), self.interceptor())
    }

    pub fn workloads(&self) -> Workloads {
        WorkloadsClient::with_interceptor(self.channel.clone(), self.interceptor())
    }

    /// Runs `call` until it succeeds, fails for good, or `budget` has passed, backing
    /// off between tries (0.25 s doubling to 4 s). A status is retried when the
    /// service flagged it retryable, or when the connection failed after the service
    /// had answered before (so a service that is simply not running fails at once).
    pub async fn retrying<T, F, Fut>(
        &self,
        budget: Duration,
        mut call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + budget;
        let mut pause = Duration::from_millis(250);
        loop {
            match call().await {
                Ok(value) => {
                    self.answered.store(true, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(status) => {
                    let from_service = Reason::of(&status).is_some();
                    if from_service {
                        self.answered.store(true, Ordering::Relaxed);
                    }
                    let worth_retrying = is_retryable(&status)
                        && (from_service || self.answered.load(Ordering::Relaxed));
                    // A rate limit says how long to wait; otherwise back off.
                    let wait = computearbitrage_api::retry_after(&status)
                        .map(|w| w.min(Duration::from_secs(30)))
                        .unwrap_or(pause);
                    if !worth_retrying || tokio::time::Instant::now() + wait > deadline {
                        return Err(status);
                    }
                    tokio::time::sleep(wait).await;
                    pause = (pause * 2).min(Duration::from_secs(4));
                }
            }
        }
    }
}

/// The connection the provider block configured; data sources read it at call time
/// because Terraform configures the provider after it has asked for their schemas.
#[derive(Clone, Default)]
pub struct SharedConnection(Arc<RwLock<Option<Connection>>>);

impl SharedConnection {
    pub async fn set(&self, connection: Connection) {
        *self.0.write().await = Some(connection);
    }

    pub async fn get(&self, diags: &mut Diagnostics) -> Option<Connection> {
        let connection = self.0.read().await.clone();
        if connection.is_none() {
            diags.root_error(
                "The computearbitrage provider is not configured",
                "Terraform called the provider before configuring it. Add a `provider \"computearbitrage\" {}` block, or set COMPUTEARBITRAGE_ENDPOINT and COMPUTEARBITRAGE_TOKEN.",
            );
        }
        connection
    }

    /// The connection if the provider is configured, without a diagnostic.
    pub async fn peek(&self) -> Option<Connection> {
        self.0.read().await.clone()
    }
}

/// Turns a violation path into a Terraform attribute path under `root`.
pub fn attribute_path(root: AttributePath, violation: &Violation) -> AttributePath {
    let mut path = root;
    for step in &violation.path {
        match step {
            PathStep::Field(name) => path.add_attribute(*name),
            PathStep::Index(i) => path.add_index(*i as i64),
        };
    }
    path
}

/// Adds one error diagnostic per violation, on the attribute's path.
pub fn report_violations(diags: &mut Diagnostics, root: AttributePath, violations: &[Violation]) {
    for v in violations {
        let path = attribute_path(root.clone(), v);
        diags.error(format!("Invalid value for {path}"), v.message.clone(), path);
    }
}

/// A dotted wire path (`filter.regions[1]`) under `root`, with its first `strip`
/// segment removed (the request message the block stands for).
pub fn wire_path(root: AttributePath, dotted: &str, strip: Option<&str>) -> AttributePath {
    let mut path = root;
    let mut rest = dotted;
    if let Some(prefix) = strip {
        rest = rest
            .strip_prefix(prefix)
            .map(|r| r.trim_start_matches('.'))
            .unwrap_or(rest);
    }
    for segment in rest.split('.').filter(|s| !s.is_empty()) {
        let (name, indexes) = segment.split_once('[').unwrap_or((segment, ""));
        path.add_attribute(name.to_string());
        for index in indexes.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse::<i64>() {
                path.add_index(i);
            }
        }
    }
    path
}

/// Adds a diagnostic for a failed call. `subject` names what was asked
/// ("listing spot prices"); `requirements_path` is where a "nothing matches" belongs.
pub fn report_status(
    diags: &mut Diagnostics,
    connection: &Connection,
    subject: &str,
    status: &tonic::Status,
    requirements_path: AttributePath,
) {
    let endpoint = connection.endpoint();
    let message = status.message();
    let Some(reason) = Reason::of(status) else {
        // Nothing the service said: the connection itself failed.
        diags.root_error(
            format!("Cannot reach the computearbitrage service at {endpoint}"),
            format!(
                "{subject} failed: {}\n\nStart the service with `computearbitrage serve` (see the project README), or point the provider at the running service with its `endpoint` argument or COMPUTEARBITRAGE_ENDPOINT.",
                connect::explain_transport_failure(status, &connection.target)
            ),
        );
        return;
    };
    match reason {
        Reason::InvalidArgument => {
            let field = status
                .metadata()
                .get(ERROR_FIELD_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let summary = match &field {
                Some(f) => format!("Invalid value for {f}"),
                None => "Invalid request".to_string(),
            };
            diags.root_error(summary, message.to_string());
        }
        Reason::Unauthenticated => diags.root_error(
            format!("The computearbitrage service at {endpoint} rejected the token"),
            format!(
                "{message}\n\nSet the provider's `token` argument or COMPUTEARBITRAGE_TOKEN to a token of this service. At its first start the service prints one and saves it in <data_dir>/admin-token; COMPUTEARBITRAGE_BOOTSTRAP_TOKEN sets one explicitly."
            ),
        ),
        Reason::PermissionDenied => diags.root_error(
            format!("The token may not do this: {subject}"),
            format!("{message}\n\nUse a token with the scope the call needs (`read` for data sources and refresh, `write` for apply and destroy); an operator issues them with `computearbitrage token create`."),
        ),
        Reason::NotFound => diags.root_error(
            format!("Not found while {subject}"),
            message.to_string(),
        ),
        Reason::NoMatchingOffer => diags.error(
            "No spot offer matches the requirements",
            message.to_string(),
            requirements_path,
        ),
        Reason::WorkloadTerminated => diags.root_error(
            "The workload has ended and cannot change",
            format!("{message}\n\nIt was stopped outside this apply. Run `terraform apply` again: the refresh drops it from the state and the plan creates a new one."),
        ),
        Reason::WrongWorkloadState => diags.root_error(
            format!("The workload cannot do this now: {subject}"),
            message.to_string(),
        ),
        Reason::NeedsReplacement => diags.root_error(
            "This change needs a new workload",
            format!("{message}\n\nReplace it with `terraform apply -replace=<resource address>`."),
        ),
        Reason::NameTaken => diags.error(
            "A workload with this name already exists",
            message.to_string(),
            AttributePath::new("name"),
        ),
        Reason::QuotaExceeded => diags.root_error(
            "The tenant's workload quota is used up",
            format!("{message}\n\nDestroy a workload you no longer need, or ask the operator to raise the quota."),
        ),
        Reason::RateLimited => diags.root_error(
            "Too many calls to the computearbitrage service",
            format!("{message}\n\nThe token's rate limit was hit; run again in a moment, or ask the operator for a higher limit."),
        ),
        Reason::Exhausted => diags.root_error(
            format!("The computearbitrage service ran out of a resource while {subject}"),
            message.to_string(),
        ),
        Reason::StoreUnavailable => diags.root_error(
            format!("The computearbitrage service's database was unavailable while {subject}"),
            format!("{message}\n\nThe service at {endpoint} is running but could not reach its database, even after retries. Run Terraform again; if it persists, check the service's log and its database."),
        ),
        Reason::DriverUnavailable => diags.root_error(
            format!("A cloud was unavailable while {subject}"),
            format!("{message}\n\nThe cloud's API failed in a way that may pass. Run Terraform again shortly."),
        ),
        Reason::StorageUnavailable => diags.root_error(
            format!("Workload storage was unavailable while {subject}"),
            format!("{message}\n\nThe service at {endpoint} is running but its object store failed, even after retries. Run Terraform again; if it persists, check the service's storage settings and the store itself."),
        ),
        Reason::Internal => diags.root_error(
            format!("The computearbitrage service failed while {subject}"),
            format!("{message}\n\nThis is a fault in the service, not in the configuration; its log at {endpoint} has the details."),
        ),
    }
}

/// Adds the service's warnings as Terraform warnings on their attributes. `parent` is
/// the request message the root stands for (`filter`, `requirements`), stripped from
/// the wire path; `root` is where that message lives in the configuration.
pub fn report_warnings(
    diags: &mut Diagnostics,
    warnings: &[computearbitrage_api::pb::Warning],
    root: AttributePath,
    parent: &str,
    rename: impl Fn(&str) -> String,
) {
    for w in warnings {
        let field = w
            .field
            .strip_prefix(parent)
            .map(|r| r.trim_start_matches('.'))
            .unwrap_or(&w.field);
        let path = wire_path(root.clone(), &rename(field), None);
        let summary = if w.field.contains("interruption") {
            "The chosen offer's interruption rate is unknown".to_string()
        } else {
            format!("No offer has this name: {path}")
        };
        diags.warning(summary, w.message.clone(), path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection() -> Connection {
        Connection::new(
            Target {
                url: "http://127.0.0.1:9".into(),
                ca_file: None,
            },
            "t",
        )
        .unwrap()
    }

    #[tokio::test]
    async fn each_cause_gets_its_own_summary() {
        let connection = connection();
        let mut summaries = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let mut diags = Diagnostics::default();
            let status = reason.status(false, "the service's words");
            report_status(
                &mut diags,
                &connection,
                "doing it",
                &status,
                AttributePath::root(),
            );
            let d = &diags.errors[0];
            assert!(d.detail.contains("the service's words"), "{reason:?}");
            assert!(
                !d.summary.contains("Cannot reach"),
                "{reason:?} came from the service"
            );
            summaries.insert(d.summary.to_string());
        }
        assert_eq!(summaries.len(), Reason::ALL.len(), "{summaries:?}");
        // A retryable store error inside a running service is not "cannot reach".
        let mut diags = Diagnostics::default();
        report_status(
            &mut diags,
            &connection,
            "doing it",
            &Reason::StoreUnavailable.status(true, "db busy"),
            AttributePath::root(),
        );
        assert!(diags.errors[0].summary.contains("database was unavailable"));
        // A status without a reason is the transport's.
        let mut diags = Diagnostics::default();
        report_status(
            &mut diags,
            &connection,
            "doing it",
            &tonic::Status::unavailable("tcp connect error"),
            AttributePath::root(),
        );
        assert!(diags.errors[0].summary.contains("Cannot reach"));
        assert!(diags.errors[0].detail.contains("computearbitrage serve"));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_flag_and_a_service_never_reached_fails_at_once() {
        let connection = connection();
        let mut calls = 0;
        let result: Result<(), _> = connection
            .retrying(CALL_RETRY_BUDGET, || {
                calls += 1;
                async { Err(tonic::Status::unavailable("connection refused")) }
            })
            .await;
        assert!(result.is_err());
        assert_eq!(calls, 1, "nothing answered yet: not retried");

        let mut calls = 0;
        let result = connection
            .retrying(CALL_RETRY_BUDGET, || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 3 {
                        Err(Reason::StoreUnavailable.status(true, "busy"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await;
        assert_eq!(result.unwrap(), 3, "retryable service errors are retried");

        // Once the service has answered, a lost connection is retried too.
        let mut calls = 0;
        let _ = connection
            .retrying(Duration::from_secs(5), || {
                calls += 1;
                async { Err::<(), _>(tonic::Status::unavailable("connection refused")) }
            })
            .await;
        assert!(calls > 2, "{calls}");

        let mut calls = 0;
        let _ = connection
            .retrying(CALL_RETRY_BUDGET, || {
                calls += 1;
                async { Err::<(), _>(Reason::NameTaken.status(false, "taken")) }
            })
            .await;
        assert_eq!(calls, 1, "not retryable: not retried");

        // A rate limit is waited out for exactly the time it names.
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let result = connection
            .retrying(CALL_RETRY_BUDGET, || {
                calls += 1;
                let first = calls == 1;
                async move {
                    if first {
                        let mut status = Reason::RateLimited.status(true, "slow down");
                        status.metadata_mut().insert(
                            computearbitrage_api::RETRY_AFTER_METADATA,
                            "1500".parse().unwrap(),
                        );
                        Err(status)
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
        assert!(result.is_ok());
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
    }
}
