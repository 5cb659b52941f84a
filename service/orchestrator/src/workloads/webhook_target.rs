//! Where webhooks may go. A tenant chooses the URL, and the service makes the request
//! from inside its network, so a webhook could otherwise reach the service's own
//! neighbours: loopback, private networks, link-local and the clouds' metadata
//! endpoints (169.254.169.254, fd00:ec2::254). Those are refused when the URL is set,
//! and again at connect time, after DNS resolution, since a name can resolve anywhere
//! and change. Redirects are never followed. An operator setting
//! (`notifications.allow_private_targets`) allows private targets, for tests and for
//! receivers on the same network.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// Whether a webhook may connect to `ip`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // Carrier-grade NAT 100.64/10, benchmarking 198.18/15, 0/8, 240/4.
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a == 0
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                // Unique local fc00::/7 (which holds AWS's fd00:ec2::254), link-local fe80::/10.
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                // Documentation 2001:db8::/32.
                || (first == 0x2001 && v6.segments()[1] == 0x0db8))
        }
    }
}

/// Checks a webhook URL when it is set: http(s), a host, no credentials in it, and,
/// for an address literal, a public one unless `allow_private`.
pub fn check_url(url: &str, allow_private: bool) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| format!("{url:?} is not a URL ({e}); write it as https://HOST/PATH"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?} is not an http(s) URL; write it as https://HOST/PATH"
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the URL carries credentials; remove them: the receiver verifies the X-ComputeArbitrage-Signature header instead".into());
    }
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Err(format!(
            "{url:?} has no host; write it as https://HOST/PATH"
        ));
    };
    let literal = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .ok();
    if let Some(ip) = literal {
        if !allow_private && !is_public(ip) {
            return Err(format!(
                "{ip} is a loopback, private, link-local or metadata address; webhooks go to public addresses (an operator can allow private ones with notifications.allow_private_targets)"
            ));
        }
    }
    Ok(parsed)
}

/// A DNS resolver that drops addresses webhooks may not reach; a name with none left
/// fails to resolve, so reqwest never connects to it.
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A name that resolves only to addresses webhooks may not reach.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} resolves only to addresses webhooks may not reach",
            self.0
        )
    }
}

impl std::error::Error for Refused {}

/// The HTTP client of webhook deliveries: guarded resolution, no redirects, TLS with
/// the system's roots plus `extra_ca` (PEM), a 10 s limit per delivery.
pub fn client(allow_private: bool, extra_ca: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("computearbitrage/", env!("CARGO_PKG_VERSION")));
    if let Some(pem) = extra_ca {
        let cert = reqwest::Certificate::from_pem(pem)
            .map_err(|e| format!("notifications.ca_file holds no PEM certificate: {e}"))?;
        builder = builder.add_root_certificate(cert);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
}

/// What a tenant is told about a failed delivery: whether the webhook answered and
/// with what, never how a connection failed (that would map the network).
pub fn describe_failure(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut source: Option<&(dyn Error + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<Refused>() {
            return format!("refused: {refused}");
        }
        source = s.source();
    }
    "no HTTP answer from the webhook (connection, TLS or a 10 s timeout)".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked_when_set() {
        assert!(check_url("https://hooks.example.com/x", false).is_ok());
        for (url, words) in [
            ("http://127.0.0.1:9/x", "loopback, private"),
            ("http://169.254.169.254/latest/meta-data", "metadata"),
            ("http://[::1]/x", "loopback"),
            ("https://user:pw@hooks.example.com/", "credentials"),
            ("ftp://hooks.example.com/", "not an http(s) URL"),
            ("not a url", "is not a URL"),
        ] {
            let err = check_url(url, false).unwrap_err();
            assert!(err.contains(words), "{url}: {err}");
        }
        assert!(
            check_url("http://127.0.0.1:9/x", true).is_ok(),
            "the operator may allow it"
        );
    }

    #[tokio::test]
    async fn a_name_of_a_private_address_is_refused_at_connect_time() {
        use reqwest::dns::Resolve;
        let guarded = GuardedResolver {
            allow_private: false,
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        let err = match guarded.resolve(name).await {
            Ok(_) => panic!("localhost resolved"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("resolves only to addresses webhooks may not reach"),
            "{err}"
        );
        let open = GuardedResolver {
            allow_private: true,
        };
        assert!(open.resolve("localhost".parse().unwrap()).await.is_ok());
    }
}
