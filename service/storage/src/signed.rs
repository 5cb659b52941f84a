//! The local backend's signed URLs: the service's own HMAC-SHA256 signature over the
//! method, the scope (one key, or a prefix), the expiry and the byte limit, so a URL
//! grants exactly one kind of request on exactly what it names until it expires.
//!
//! Form: `/storage/v1/{key}?method=PUT&expires=UNIX&limit=BYTES&signature=HEX`, with
//! `prefix={prefix}` added when the grant covers every key under a prefix (the path
//! is then the concrete key). Cloud backends sign with their own schemes instead
//! (`object_store`'s signer); this module is only for the local filesystem.

use crate::error::StorageError;
use crate::key::{ObjectKey, Prefix};
use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::Sha256;
use std::sync::Arc;

/// Where signed URLs are served on the service's HTTP side.
pub const URL_PATH_PREFIX: &str = "/storage/v1/";

/// Bytes kept as they are in a URL path segment or query value (RFC 3986 unreserved).
const KEEP: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The request a URL grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
        }
    }

    pub fn parse(text: &str) -> Option<Method> {
        match text {
            "GET" => Some(Method::Get),
            "PUT" => Some(Method::Put),
            _ => None,
        }
    }
}

/// What a URL covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Key(ObjectKey),
    Prefix(Prefix),
}

impl Scope {
    pub fn workload_id(&self) -> &str {
        match self {
            Scope::Key(k) => k.workload_id(),
            Scope::Prefix(p) => p.workload_id(),
        }
    }
}

/// A grant to sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub method: Method,
    pub scope: Scope,
    /// Unix seconds after which the URL is refused.
    pub expires_at: i64,
    /// For uploads: the most the workload's objects may hold after this one (its
    /// quota), checked while the body streams in.
    pub limit_bytes: Option<u64>,
}

/// What a verified request may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorized {
    pub method: Method,
    pub key: ObjectKey,
    pub limit_bytes: Option<u64>,
}

/// Signs and verifies local URLs with a 32-byte key the service keeps private.
#[derive(Clone)]
pub struct UrlSigner(Arc<[u8; 32]>);

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(<secret>)")
    }
}

fn encode_path(text: &str) -> String {
    text.split('/')
        .map(|segment| utf8_percent_encode(segment, KEEP).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

fn encode_value(text: &str) -> String {
    utf8_percent_encode(text, KEEP).to_string()
}

fn decode(text: &str, what: &str) -> Result<String, StorageError> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| {
            StorageError::invalid_key(text, format!("the {what} is not UTF-8 once decoded"))
        })
}

impl UrlSigner {
    pub fn new(key: [u8; 32]) -> UrlSigner {
        UrlSigner(Arc::new(key))
    }

    fn mac(
        &self,
        method: Method,
        scope: &str,
        scope_kind: &str,
        expires_at: i64,
        limit: Option<u64>,
    ) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .expect("HMAC takes a key of any length");
        let limit = limit.map_or_else(|| "-".to_string(), |l| l.to_string());
        // Fields are newline-separated and none can contain a newline (keys refuse
        // control characters), so no two grants share a string.
        mac.update(
            format!(
                "computearbitrage-storage-url-v1\n{}\n{scope_kind}\n{scope}\n{expires_at}\n{limit}",
                method.as_str()
            )
            .as_bytes(),
        );
        mac
    }

    /// The path and query of a URL granting `grant`; for a prefix grant, `key` is the
    /// object the URL is for (it must lie under the prefix).
    pub fn sign(&self, grant: &Grant, key: &ObjectKey) -> Result<String, StorageError> {
        let (kind, scope) = match &grant.scope {
            Scope::Key(k) if k == key => ("key", k.to_string()),
            Scope::Key(k) => {
                return Err(StorageError::invalid_key(
                    &key.to_string(),
                    format!("the grant is for {k}"),
                ))
            }
            Scope::Prefix(p) if p.contains(key) => ("prefix", p.to_string()),
            Scope::Prefix(p) => {
                return Err(StorageError::invalid_key(
                    &key.to_string(),
                    format!("the key is not under {p}"),
                ))
            }
        };
        let signature = hex::encode(
            self.mac(
                grant.method,
                &scope,
                kind,
                grant.expires_at,
                grant.limit_bytes,
            )
            .finalize()
            .into_bytes(),
        );
        let mut url = format!(
            "{URL_PATH_PREFIX}{}?method={}&expires={}",
            encode_path(&key.to_string()),
            grant.method.as_str(),
            grant.expires_at
        );
        if let Some(limit) = grant.limit_bytes {
            url.push_str(&format!("&limit={limit}"));
        }
        if kind == "prefix" {
            url.push_str(&format!("&prefix={}", encode_value(&scope)));
        }
        url.push_str(&format!("&signature={signature}"));
        Ok(url)
    }

    /// Checks a request against its URL: `path` from `/storage/v1/` on, `query`
    /// without the `?`. Refuses a malformed or traversing key, another method, an
    /// expired URL, another key or prefix, and a changed limit.
    pub fn verify(
        &self,
        method: Method,
        path: &str,
        query: &str,
        now: i64,
    ) -> Result<Authorized, StorageError> {
        let encoded = path.strip_prefix(URL_PATH_PREFIX).ok_or_else(|| {
            StorageError::invalid_key(path, format!("signed URLs start with {URL_PATH_PREFIX}"))
        })?;
        let key = ObjectKey::parse(&decode(encoded, "key")?)?;
        let (mut granted, mut expires, mut limit, mut prefix, mut signature) =
            (None, None, None, None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "method" => &mut granted,
                "expires" => &mut expires,
                "limit" => &mut limit,
                "prefix" => &mut prefix,
                "signature" => &mut signature,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(StorageError::denied(format!(
                    "the signed URL has `{name}` twice"
                )));
            }
        }
        let (Some(granted), Some(expires), Some(signature)) = (granted, expires, signature) else {
            return Err(StorageError::denied(
                "the URL is not signed: it needs method, expires and signature; ask the service for a new one",
            ));
        };
        let granted = Method::parse(granted).ok_or_else(|| {
            StorageError::denied(format!(
                "the signed URL grants an unknown method {granted:?}"
            ))
        })?;
        if granted != method {
            return Err(StorageError::denied(format!(
                "the signed URL grants {} and the request is {}; ask for a URL for {}",
                granted.as_str(),
                method.as_str(),
                method.as_str()
            )));
        }
        let expires_at: i64 = expires
            .parse()
            .map_err(|_| StorageError::denied("the signed URL's expiry is not a number"))?;
        let limit_bytes = limit
            .map(|l| {
                l.parse::<u64>()
                    .map_err(|_| StorageError::denied("the signed URL's limit is not a number"))
            })
            .transpose()?;
        let (kind, scope) = match prefix {
            Some(prefix) => {
                let prefix = Prefix::parse(&decode(prefix, "prefix")?)?;
                if !prefix.contains(&key) {
                    return Err(StorageError::denied(format!(
                        "{key} is not under the URL's prefix {prefix}"
                    )));
                }
                ("prefix", prefix.to_string())
            }
            None => ("key", key.to_string()),
        };
        let signature = hex::decode(signature)
            .map_err(|_| StorageError::denied("the signed URL's signature is not hex"))?;
        self.mac(granted, &scope, kind, expires_at, limit_bytes)
            .verify_slice(&signature)
            .map_err(|_| {
                StorageError::denied(format!(
                    "the signature does not match this request ({} {key}); the URL was changed or is for another object",
                    method.as_str()
                ))
            })?;
        if now > expires_at {
            return Err(StorageError::denied(format!(
                "the signed URL expired {} s ago; ask the service for a new one",
                now - expires_at
            )));
        }
        Ok(Authorized {
            method,
            key,
            limit_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Area;

    fn signer() -> UrlSigner {
        UrlSigner::new([7; 32])
    }

    fn key(path: &str) -> ObjectKey {
        ObjectKey::new("wl-1", Area::Checkpoints, path).unwrap()
    }

    fn split(url: &str) -> (&str, &str) {
        url.split_once('?').unwrap()
    }

    fn grant(scope: Scope) -> Grant {
        Grant {
            method: Method::Put,
            scope,
            expires_at: 1_000,
            limit_bytes: Some(5 << 30),
        }
    }

    #[test]
    fn a_key_grant_admits_exactly_its_request() {
        let k = key("100/chunk 0.bin");
        let url = signer().sign(&grant(Scope::Key(k.clone())), &k).unwrap();
        assert!(url.contains("chunk%200.bin"), "{url}");
        let (path, query) = split(&url);
        let ok = signer().verify(Method::Put, path, query, 999).unwrap();
        assert_eq!(
            ok,
            Authorized {
                method: Method::Put,
                key: k,
                limit_bytes: Some(5 << 30)
            }
        );
        // Same URL: another method, too late, another signing key.
        assert!(matches!(
            signer().verify(Method::Get, path, query, 999),
            Err(StorageError::Denied(_))
        ));
        let late = signer()
            .verify(Method::Put, path, query, 1_001)
            .unwrap_err();
        assert!(late.to_string().contains("expired"), "{late}");
        assert!(UrlSigner::new([8; 32])
            .verify(Method::Put, path, query, 999)
            .is_err());
    }

    #[test]
    fn tampered_and_replayed_urls_are_refused() {
        let k = key("100/manifest.json");
        let url = signer().sign(&grant(Scope::Key(k.clone())), &k).unwrap();
        let (path, query) = split(&url);
        let cases = [
            // Another key with the same query (replay for another object).
            (
                path.replace("manifest.json", "other.json"),
                query.to_string(),
            ),
            (path.replace("wl-1", "wl-2"), query.to_string()),
            // A later expiry, a higher limit, a flipped signature character.
            (
                path.to_string(),
                query.replace("expires=1000", "expires=9999"),
            ),
            (
                path.to_string(),
                query.replace("limit=5368709120", "limit=99368709120"),
            ),
            (path.to_string(), {
                let (head, sig) = query.rsplit_once('=').unwrap();
                let flipped = if sig.starts_with('0') { "1" } else { "0" };
                format!("{head}={flipped}{}", &sig[1..])
            }),
            // The limit dropped, or the grant widened to a prefix.
            (path.to_string(), query.replace("&limit=5368709120", "")),
            (
                path.to_string(),
                format!("{query}&prefix=workloads%2Fwl-1%2F"),
            ),
        ];
        for (path, query) in cases {
            let err = signer()
                .verify(Method::Put, &path, &query, 999)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    StorageError::Denied(_) | StorageError::InvalidKey { .. }
                ),
                "{path}?{query}: {err}"
            );
        }
    }

    #[test]
    fn traversal_in_any_spelling_is_refused_before_the_signature() {
        for path in [
            "/storage/v1/workloads/wl-1/checkpoints/../../wl-2/state/x",
            "/storage/v1/workloads/wl-1/checkpoints/%2e%2e/%2e%2e/wl-2/state/x",
            "/storage/v1/workloads/wl-1/checkpoints/a%2F..%2F..%2Fx",
            "/storage/v1/workloads/wl-1/checkpoints/%00",
            "/storage/v1/workloads/wl-1/checkpoints/a%5C..%5Cb",
            "/storage/v1/..%2Fdata%2Fstate.db",
        ] {
            let err = signer()
                .verify(Method::Get, path, "method=GET&expires=1&signature=00", 0)
                .unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidKey { .. }),
                "{path}: {err}"
            );
        }
    }

    #[test]
    fn a_prefix_grant_admits_keys_under_it_only() {
        let prefix = Prefix::area("wl-1", Area::Checkpoints, Some("100")).unwrap();
        let g = grant(Scope::Prefix(prefix));
        let inside = key("100/chunk-7");
        let url = signer().sign(&g, &inside).unwrap();
        let (path, query) = split(&url);
        assert_eq!(
            signer().verify(Method::Put, path, query, 0).unwrap().key,
            inside
        );
        // The same grant moved to another key under the prefix still holds ...
        let moved = path.replace("chunk-7", "chunk-8");
        assert_eq!(
            signer().verify(Method::Put, &moved, query, 0).unwrap().key,
            key("100/chunk-8")
        );
        // ... and never outside it.
        for outside in ["1000/chunk-7", "101/chunk-7"] {
            let elsewhere = path.replace("100/chunk-7", outside);
            assert!(
                signer().verify(Method::Put, &elsewhere, query, 0).is_err(),
                "{outside}"
            );
        }
        assert!(signer().sign(&g, &key("200/x")).is_err());
    }
}
