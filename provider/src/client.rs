//! The connection to the service, shared by every data source and resource, and the
//! translation of service errors into diagnostics a Terraform user can act on.

use computearbitrage_api::pb::pricing_client::PricingClient;
use computearbitrage_api::pb::workloads_client::WorkloadsClient;
use computearbitrage_api::validate::{PathStep, Violation};
use computearbitrage_api::ERROR_FIELD_METADATA;
use std::sync::Arc;
use std::time::Duration;
use tf_provider::{AttributePath, Diagnostics};
use tokio::sync::RwLock;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7070";

pub type AuthInterceptor =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;
pub type Pricing = PricingClient<InterceptedService<Channel, AuthInterceptor>>;
pub type Workloads = WorkloadsClient<InterceptedService<Channel, AuthInterceptor>>;

/// A configured connection.
#[derive(Clone)]
pub struct Connection {
    pub endpoint: String,
    channel: Channel,
    authorization: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Connection {
    /// Validates the endpoint and prepares a lazily connecting channel.
    pub fn new(endpoint: &str, token: &str) -> Result<Connection, String> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "{endpoint:?} is not a URL; write it as http://HOST:PORT, for example {DEFAULT_ENDPOINT:?}"
            ));
        }
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| {
                format!("{endpoint:?} is not a valid URL ({e}); write it as http://HOST:PORT")
            })?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .connect_lazy();
        let authorization = format!("Bearer {token}")
            .parse()
            .map_err(|_| "the token contains characters that cannot be sent in a header; use the token exactly as the service printed it".to_string())?;
        Ok(Connection {
            endpoint: endpoint.to_string(),
            channel,
            authorization,
        })
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

/// Adds a diagnostic for a failed call. `subject` names what was asked
/// ("listing spot prices"); `requirements_path` is where a "nothing matches" belongs.
pub fn report_status(
    diags: &mut Diagnostics,
    endpoint: &str,
    subject: &str,
    status: &tonic::Status,
    requirements_path: AttributePath,
) {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            if is_transport_failure(status) =>
        {
            diags.root_error(
                format!("Cannot reach the computearbitrage service at {endpoint}"),
                format!(
                    "{subject} failed: {}.\n\nStart the service with `computearbitrage serve` (see the project README), or point the provider at the running service with its `endpoint` argument or COMPUTEARBITRAGE_ENDPOINT.",
                    transport_reason(status)
                ),
            );
        }
        Code::Unauthenticated => diags.root_error(
            format!("The computearbitrage service at {endpoint} rejected the token"),
            format!(
                "{}\n\nSet the provider's `token` argument or COMPUTEARBITRAGE_TOKEN to a token of this service. At its first start the service prints one and saves it in <data_dir>/admin-token; COMPUTEARBITRAGE_BOOTSTRAP_TOKEN sets one explicitly.",
                status.message()
            ),
        ),
        Code::InvalidArgument => {
            let field = status
                .metadata()
                .get(ERROR_FIELD_METADATA)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let summary = match &field {
                Some(f) => format!("Invalid value for {f}"),
                None => "Invalid request".to_string(),
            };
            diags.root_error(summary, status.message().to_string());
        }
        Code::FailedPrecondition => diags.error(
            "No spot offer matches the requirements",
            status.message().to_string(),
            requirements_path,
        ),
        code => diags.root_error(
            format!("The computearbitrage service failed while {subject}"),
            format!("{code:?}: {}", status.message()),
        ),
    }
}

fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        || status.message().contains("transport")
        || status.message().contains("connect")
}

/// The innermost cause of a transport error ("Connection refused (os error 111)").
fn transport_reason(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = status.source();
    let mut reason = status.message().to_string();
    while let Some(err) = source {
        reason = err.to_string();
        source = err.source();
    }
    reason
}
