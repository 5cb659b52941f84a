//! How clients reach the service: `http://` plainly, `https://` with TLS verified
//! against the system's roots plus an optional CA file (PEM). Shared by the provider,
//! the operator CLI and a separate router process, so every client accepts the same
//! endpoints and says the same things about them.

use std::path::Path;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    /// A PEM file of CA certificates to trust besides the system's (https only).
    pub ca_file: Option<std::path::PathBuf>,
}

/// A lazily connecting endpoint for `target`, or what is wrong with it and the fix.
pub fn endpoint(target: &Target) -> Result<Endpoint, String> {
    let url = target.url.as_str();
    let tls = if url.starts_with("https://") {
        true
    } else if url.starts_with("http://") {
        false
    } else {
        return Err(format!(
            "{url:?} is not a URL; write it as http://HOST:PORT, or https://HOST:PORT for a service that serves TLS"
        ));
    };
    if !tls && target.ca_file.is_some() {
        return Err(format!(
            "a CA file only applies to https:// endpoints, and {url:?} is http://; use https:// if the service serves TLS, or remove the CA file"
        ));
    }
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| format!("{url:?} is not a valid URL ({e}); write it as http://HOST:PORT"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(120))
        .tcp_nodelay(true);
    if tls {
        let mut config = ClientTlsConfig::new().with_native_roots();
        if let Some(path) = &target.ca_file {
            config = config.ca_certificate(read_ca(path)?);
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| format!("cannot set up TLS for {url}: {e}"))?;
    }
    Ok(endpoint)
}

fn read_ca(path: &Path) -> Result<Certificate, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{} holds no PEM certificate (no \"-----BEGIN CERTIFICATE-----\" line); give the CA certificate that signed the service's certificate",
            path.display()
        ));
    }
    Ok(Certificate::from_pem(pem))
}

/// Plain words for a failed connection: the innermost cause, and a hint when it is
/// about TLS.
pub fn explain_transport_failure(status: &tonic::Status, target: &Target) -> String {
    use std::error::Error;
    explain(status.message().to_string(), status.source(), target)
}

/// [`explain_transport_failure`] for a connection error.
pub fn explain_connect_error(error: &tonic::transport::Error, target: &Target) -> String {
    use std::error::Error;
    explain(error.to_string(), error.source(), target)
}

fn explain(
    message: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
    target: &Target,
) -> String {
    let mut reason = message;
    while let Some(err) = source {
        reason = err.to_string();
        source = err.source();
    }
    let lower = reason.to_ascii_lowercase();
    let tls = target.url.starts_with("https://");
    let hint = if tls && (lower.contains("certificate") || lower.contains("unknownissuer")) {
        " The service's certificate is not trusted: set the provider's ca_file (COMPUTEARBITRAGE_CA_FILE, or --ca-file) to the CA certificate that signed it."
    } else if tls
        && (lower.contains("corrupt message")
            || lower.contains("invalidcontenttype")
            || lower.contains("wrong version"))
    {
        " The service did not answer TLS: if it serves plain gRPC, use an http:// endpoint."
    } else if !tls
        && [
            "frame",
            "h2 protocol",
            "connection reset",
            "broken pipe",
            "stream closed",
            "connection closed",
        ]
        .iter()
        .any(|sign| lower.contains(sign))
    {
        " If the service serves TLS (tls.cert_file is set), use an https:// endpoint."
    } else {
        ""
    };
    format!("{reason}.{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(url: &str, ca: Option<&str>) -> Target {
        Target {
            url: url.into(),
            ca_file: ca.map(Into::into),
        }
    }

    #[tokio::test]
    async fn endpoints_are_checked_with_the_fix() {
        assert!(endpoint(&target("http://127.0.0.1:7070", None)).is_ok());
        assert!(endpoint(&target("https://127.0.0.1:7070", None)).is_ok());
        assert!(endpoint(&target("127.0.0.1:7070", None))
            .unwrap_err()
            .contains("https://HOST:PORT"));
        assert!(endpoint(&target("http://h:1", Some("/x.pem")))
            .unwrap_err()
            .contains("only applies to https://"));
        assert!(endpoint(&target("https://h:1", Some("/no/such.pem")))
            .unwrap_err()
            .contains("cannot read the CA file /no/such.pem"));
        let dir = std::env::temp_dir().join(format!("ca-test-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").unwrap();
        let err = endpoint(&target("https://h:1", Some(dir.to_str().unwrap()))).unwrap_err();
        std::fs::remove_file(&dir).unwrap();
        assert!(err.contains("holds no PEM certificate"), "{err}");
    }
}
