//! Ingress authentication: bearer tokens mapped to a tenant and scopes, with expiry,
//! revocation and a per-token rate limit.
//!
//! Tokens are stored and compared as SHA-256 hashes (they are 256-bit random values or
//! operator-chosen secrets, so a fast hash suffices), held in memory for the
//! synchronous gRPC interceptor, and never logged or echoed. A request that passes gets
//! a [`Caller`]: its tenant, its token's public id (for the audit log) and its scopes,
//! which every handler checks with [`Caller::require`].

use crate::error::ServiceError;
use computearbitrage_api::Reason;
use computearbitrage_store::{Scope, Scopes, Store, TokenRecord};
use rand::RngCore;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// The operator's tenant: every bootstrap token belongs to it, and only its tokens may
/// hold the `admin` scope.
pub const DEFAULT_TENANT: &str = "default";

/// File, inside the data dir, holding the token generated at first start.
pub const GENERATED_TOKEN_FILE: &str = "admin-token";

use computearbitrage_api::RETRY_AFTER_METADATA;

/// Who made a request, put in the request's extensions by the interceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    /// The token's public id (`tok-…`).
    pub token_id: String,
    pub scopes: Scopes,
}

impl Caller {
    /// PERMISSION_DENIED unless the token's scopes allow `scope`.
    pub fn require(&self, scope: Scope, call: &str) -> Result<(), tonic::Status> {
        if self.scopes.allows(scope) {
            Ok(())
        } else {
            Err(Reason::PermissionDenied.status(
                false,
                format!(
                    "{call} needs a token with the `{}` scope, and token {} has `{}`; use a token with `{}` (an operator issues them with `computearbitrage token create`)",
                    scope.as_str(),
                    self.token_id,
                    self.scopes,
                    scope.as_str()
                ),
            ))
        }
    }
}

pub use computearbitrage_orchestrator::tokens::{hash_token, AccessTokenKey};

/// A new random token, as shown once to whoever asked for it.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("ca_{}", hex::encode(bytes))
}

/// A token's public id.
pub fn new_token_id() -> String {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("tok-{}", hex::encode(bytes))
}

/// Calls per second and burst of each token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token hash → token, loaded from the store and reloaded when tokens change.
pub struct Authenticator {
    tokens: RwLock<HashMap<String, TokenRecord>>,
    limit: Option<RateLimit>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Authenticator {
    pub async fn load(
        store: &dyn Store,
        limit: Option<RateLimit>,
    ) -> Result<Arc<Authenticator>, ServiceError> {
        let authenticator = Arc::new(Authenticator {
            tokens: RwLock::new(HashMap::new()),
            limit,
            buckets: Mutex::new(HashMap::new()),
        });
        authenticator.reload(store).await?;
        Ok(authenticator)
    }

    /// Re-reads every token (after one was created or revoked).
    pub async fn reload(&self, store: &dyn Store) -> Result<(), ServiceError> {
        let tokens = store
            .list_tokens()
            .await?
            .into_iter()
            .map(|r| (r.token_hash.clone(), r))
            .collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = tokens;
        Ok(())
    }

    /// The caller of an `authorization` header value at `now`, if it holds a valid
    /// bearer token.
    pub fn authenticate(&self, authorization: Option<&str>, now: i64) -> Option<Caller> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        let hash = hash_token(token);
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let record = tokens.get(&hash).filter(|r| r.is_valid_at(now))?;
        Some(Caller {
            tenant: record.tenant_id.clone(),
            token_id: record.id.clone(),
            scopes: record.scopes,
        })
    }

    /// Takes one call from the token's bucket; the wait until the next is allowed when
    /// it is empty.
    fn admit(&self, token_id: &str) -> Result<(), std::time::Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = buckets.entry(token_id.to_string()).or_insert(Bucket {
            tokens: limit.burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * limit.per_second;
        bucket.tokens = (bucket.tokens + refill).min(limit.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64(
                (1.0 - bucket.tokens) / limit.per_second,
            ))
        }
    }

    /// A tonic interceptor that rejects unauthenticated and over-limit calls and tags
    /// the rest with their [`Caller`].
    pub fn interceptor(
        self: Arc<Self>,
    ) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
        move |mut request: tonic::Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            match self.authenticate(header, unix_now()) {
                Some(caller) => {
                    if let Err(wait) = self.admit(&caller.token_id) {
                        let millis = wait.as_millis().max(1) as u64;
                        let mut status = Reason::RateLimited.status(
                            true,
                            format!(
                                "token {} made more calls than its limit ({} per second); retry in {millis} ms",
                                caller.token_id,
                                self.limit.map(|l| l.per_second).unwrap_or_default()
                            ),
                        );
                        if let Ok(value) = millis.to_string().parse() {
                            status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
                        }
                        tracing::warn!(tenant = %caller.tenant, token_id = %caller.token_id, "rate limited");
                        return Err(status);
                    }
                    request.extensions_mut().insert(caller);
                    Ok(request)
                }
                None if header.is_none() => Err(Reason::Unauthenticated.status(
                    false,
                    "no bearer token: send `authorization: Bearer <token>` (the provider's `token` argument or COMPUTEARBITRAGE_TOKEN)",
                )),
                None => Err(Reason::Unauthenticated.status(
                    false,
                    "the token was rejected: it is not a token of this service, or it expired or was revoked; check the provider's `token` argument or COMPUTEARBITRAGE_TOKEN",
                )),
            }
        }
    }
}

/// What [`bootstrap`] did, for the start-up banner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// `COMPUTEARBITRAGE_BOOTSTRAP_TOKEN` was given and now belongs to tenant `default`.
    FromEnvironment,
    /// No token existed; one was generated and written to the file.
    Generated { token: String, file: PathBuf },
    /// Tokens already exist and none was given.
    Existing,
}

/// An admin token of the operator tenant.
fn operator_token(token: &str, label: &str, now: i64) -> TokenRecord {
    let hash = hash_token(token);
    TokenRecord {
        // Derived from the hash, so the same bootstrap token keeps its id.
        id: format!("tok-{}", &hash[..20]),
        token_hash: hash,
        tenant_id: DEFAULT_TENANT.into(),
        label: label.into(),
        scopes: Scopes::of(&[Scope::Admin]),
        created_at: now,
        expires_at: None,
        revoked_at: None,
    }
}

/// Makes sure a tenant `default` exists and that someone can authenticate:
/// with `bootstrap_token`, that token; otherwise, at the very first start, a generated
/// one written (mode 0600) to `data_dir/admin-token`. Both are `admin` tokens.
pub async fn bootstrap(
    store: &dyn Store,
    bootstrap_token: Option<&str>,
    data_dir: &Path,
    now: i64,
) -> Result<Bootstrap, ServiceError> {
    store.ensure_tenant(DEFAULT_TENANT, now).await?;
    crate::server::set_private(&data_dir.join(GENERATED_TOKEN_FILE))?;
    if let Some(token) = bootstrap_token {
        if token.trim().len() < 16 {
            return Err(ServiceError::config(
                "COMPUTEARBITRAGE_BOOTSTRAP_TOKEN is shorter than 16 characters; use a longer random secret (e.g. `openssl rand -hex 32`)",
            ));
        }
        store
            .add_token(operator_token(token.trim(), "bootstrap-env", now))
            .await?;
        return Ok(Bootstrap::FromEnvironment);
    }
    if !store.list_tokens().await?.is_empty() {
        return Ok(Bootstrap::Existing);
    }
    let token = new_token();
    let file = data_dir.join(GENERATED_TOKEN_FILE);
    write_private(&file, &format!("{token}\n"))?;
    store
        .add_token(operator_token(&token, "generated-at-first-start", now))
        .await?;
    Ok(Bootstrap::Generated { token, file })
}

fn write_private(path: &Path, contents: &str) -> Result<(), ServiceError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|e| ServiceError::io(format!("cannot write {}", path.display()), e))?;
    // An existing file keeps its mode on open: set it.
    crate::server::set_private(path)?;
    file.write_all(contents.as_bytes())
        .map_err(|e| ServiceError::io(format!("cannot write {}", path.display()), e))
}

/// File, inside the data dir, holding the key workload access tokens derive from.
pub const ACCESS_TOKEN_KEY_FILE: &str = "workload-token-key";

/// File, inside the data dir, holding the key the local storage backend signs URLs with.
pub const STORAGE_URL_KEY_FILE: &str = "storage-url-key";

/// A 32-byte secret kept as hex in `data_dir/file`, created (mode 0600) on first use.
/// `lost` says what deleting it breaks, for the error on a damaged file.
fn load_or_create_secret(
    data_dir: &Path,
    file: &str,
    lost: &str,
) -> Result<[u8; 32], ServiceError> {
    let path = data_dir.join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            // Private even if it was created wider (by hand, or a restore).
            crate::server::set_private(&path)?;
            hex::decode(text.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
                .ok_or_else(|| {
                    ServiceError::config(format!(
                        "{} is not 64 hex characters; restore it from a backup (deleting it {lost})",
                        path.display()
                    ))
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            write_private(&path, &hex::encode(key))?;
            Ok(key)
        }
        Err(e) => Err(ServiceError::io(
            format!("cannot read {}", path.display()),
            e,
        )),
    }
}

/// The key in `data_dir` that workload access tokens derive from.
pub fn load_or_create_access_token_key(data_dir: &Path) -> Result<AccessTokenKey, ServiceError> {
    let key = load_or_create_secret(
        data_dir,
        ACCESS_TOKEN_KEY_FILE,
        "invalidates every workload access token",
    )?;
    Ok(AccessTokenKey::from_bytes(key))
}

/// The key in `data_dir` the local storage backend signs its URLs with.
pub fn load_or_create_storage_url_key(
    data_dir: &Path,
) -> Result<computearbitrage_storage::UrlSigner, ServiceError> {
    let key = load_or_create_secret(
        data_dir,
        STORAGE_URL_KEY_FILE,
        "invalidates every signed storage URL handed out",
    )?;
    Ok(computearbitrage_storage::UrlSigner::new(key))
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_key_files_read_back_and_a_damaged_one_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::load_or_create_access_token_key(dir.path()).unwrap();
        let again = super::load_or_create_access_token_key(dir.path()).unwrap();
        assert_eq!(first.token_for("wl-1"), again.token_for("wl-1"));
        for damaged in ["abc", &"zz".repeat(32), &"ab".repeat(31)] {
            std::fs::write(dir.path().join(super::STORAGE_URL_KEY_FILE), damaged).unwrap();
            let err = super::load_or_create_storage_url_key(dir.path())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("storage-url-key") && err.contains("restore it from a backup"),
                "{err}"
            );
        }
    }

    use super::*;
    use computearbitrage_store::SqliteStore;

    #[tokio::test]
    async fn bootstrap_token_authenticates_as_default_and_others_do_not() {
        let store = SqliteStore::in_memory().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secret = "a-long-enough-test-secret";
        let outcome = bootstrap(&store, Some(secret), dir.path(), 1)
            .await
            .unwrap();
        assert_eq!(outcome, Bootstrap::FromEnvironment);
        let auth = Authenticator::load(&store, None).await.unwrap();
        let caller = auth
            .authenticate(Some(&format!("Bearer {secret}")), 1)
            .unwrap();
        assert_eq!(caller.tenant, "default");
        assert!(caller.scopes.allows(Scope::Admin));
        assert_eq!(auth.authenticate(Some("Bearer wrong-token-value"), 1), None);
        assert_eq!(
            auth.authenticate(Some(secret), 1),
            None,
            "scheme is required"
        );
        assert_eq!(auth.authenticate(None, 1), None);
        // The store never sees the token itself.
        let stored = store.list_tokens().await.unwrap();
        assert!(stored
            .iter()
            .all(|r| r.token_hash != secret && r.token_hash.len() == 64));
    }

    #[tokio::test]
    async fn first_start_generates_a_token_once_into_a_private_file() {
        let store = SqliteStore::in_memory().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let Bootstrap::Generated { token, file } =
            bootstrap(&store, None, dir.path(), 1).await.unwrap()
        else {
            panic!("expected a generated token");
        };
        assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let auth = Authenticator::load(&store, None).await.unwrap();
        assert!(auth
            .authenticate(Some(&format!("Bearer {token}")), 2)
            .is_some());
        assert_eq!(
            bootstrap(&store, None, dir.path(), 2).await.unwrap(),
            Bootstrap::Existing
        );
    }

    #[tokio::test]
    async fn expired_and_revoked_tokens_are_refused_and_limits_refill() {
        let store = SqliteStore::in_memory().unwrap();
        store.ensure_tenant("acme", 1).await.unwrap();
        let token = new_token();
        let mut record = operator_token(&token, "ci", 1);
        record.tenant_id = "acme".into();
        record.scopes = Scopes::of(&[Scope::Read]);
        record.expires_at = Some(100);
        store.add_token(record.clone()).await.unwrap();
        let auth = Authenticator::load(
            &store,
            Some(RateLimit {
                per_second: 1000.0,
                burst: 2.0,
            }),
        )
        .await
        .unwrap();
        let header = format!("Bearer {token}");
        let caller = auth.authenticate(Some(&header), 99).unwrap();
        assert!(caller.require(Scope::Read, "GetWorkload").is_ok());
        let denied = caller.require(Scope::Write, "ApplyWorkload").unwrap_err();
        assert_eq!(Reason::of(&denied), Some(Reason::PermissionDenied));
        assert!(denied.message().contains("`write` scope"));
        assert_eq!(auth.authenticate(Some(&header), 100), None, "expired");
        store.revoke_token(&record.id, 50).await.unwrap();
        auth.reload(&store).await.unwrap();
        assert_eq!(auth.authenticate(Some(&header), 60), None, "revoked");
        // Two calls of burst, then a wait, then more.
        assert!(auth.admit("t").is_ok() && auth.admit("t").is_ok());
        let wait = auth.admit("t").unwrap_err();
        assert!(wait <= std::time::Duration::from_millis(2), "{wait:?}");
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert!(auth.admit("t").is_ok());
        assert!(auth.admit("other").is_ok(), "each token has its own bucket");
    }

    #[tokio::test]
    async fn short_bootstrap_tokens_are_refused() {
        let store = SqliteStore::in_memory().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = bootstrap(&store, Some("short"), dir.path(), 1)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("COMPUTEARBITRAGE_BOOTSTRAP_TOKEN"));
    }
}
