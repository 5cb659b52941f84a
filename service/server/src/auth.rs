//! Ingress authentication: bearer tokens mapped to tenants.
//!
//! Tokens are stored and compared as SHA-256 hashes (they are 256-bit random values or
//! operator-chosen secrets, so a fast hash suffices), held in memory for the
//! synchronous gRPC interceptor, and never logged or echoed.

use crate::error::ServiceError;
use computearbitrage_api::Reason;
use computearbitrage_store::{Store, TokenRecord};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The tenant every bootstrap token belongs to.
pub const DEFAULT_TENANT: &str = "default";

/// File, inside the data dir, holding the token generated at first start.
pub const GENERATED_TOKEN_FILE: &str = "admin-token";

/// The tenant a request was authenticated as, put in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantId(pub String);

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Token hash → tenant, loaded from the store.
#[derive(Default)]
pub struct Authenticator {
    tokens: RwLock<HashMap<String, String>>,
}

impl Authenticator {
    pub async fn load(store: &dyn Store) -> Result<Arc<Authenticator>, ServiceError> {
        let tokens = store
            .list_tokens()
            .await?
            .into_iter()
            .map(|r| (r.token_hash, r.tenant_id))
            .collect();
        Ok(Arc::new(Authenticator {
            tokens: RwLock::new(tokens),
        }))
    }

    /// The tenant of an `authorization` header value, if it holds a known bearer token.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<TenantId> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        if token.is_empty() {
            return None;
        }
        let hash = hash_token(token);
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .map(|t| TenantId(t.clone()))
    }

    /// A tonic interceptor that rejects unauthenticated calls and tags the rest with
    /// their tenant.
    pub fn interceptor(
        self: Arc<Self>,
    ) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
        move |mut request: tonic::Request<()>| {
            let header = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            match self.authenticate(header) {
                Some(tenant) => {
                    request.extensions_mut().insert(tenant);
                    Ok(request)
                }
                None if header.is_none() => Err(Reason::Unauthenticated.status(
                    false,
                    "no bearer token: send `authorization: Bearer <token>` (the provider's `token` argument or COMPUTEARBITRAGE_TOKEN)",
                )),
                None => Err(Reason::Unauthenticated.status(
                    false,
                    "the token was rejected: it is not a token of this service; check the provider's `token` argument or COMPUTEARBITRAGE_TOKEN",
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

/// Makes sure a tenant `default` exists and that someone can authenticate:
/// with `bootstrap_token`, that token; otherwise, at the very first start, a generated
/// one written (mode 0600) to `data_dir/admin-token`.
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
            .add_token(TokenRecord {
                token_hash: hash_token(token.trim()),
                tenant_id: DEFAULT_TENANT.into(),
                label: "bootstrap-env".into(),
                created_at: now,
            })
            .await?;
        return Ok(Bootstrap::FromEnvironment);
    }
    if !store.list_tokens().await?.is_empty() {
        return Ok(Bootstrap::Existing);
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("ca_{}", hex::encode(bytes));
    let file = data_dir.join(GENERATED_TOKEN_FILE);
    write_private(&file, &format!("{token}\n"))?;
    store
        .add_token(TokenRecord {
            token_hash: hash_token(&token),
            tenant_id: DEFAULT_TENANT.into(),
            label: "generated-at-first-start".into(),
            created_at: now,
        })
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

#[cfg(test)]
mod tests {
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
        let auth = Authenticator::load(&store).await.unwrap();
        assert_eq!(
            auth.authenticate(Some(&format!("Bearer {secret}"))),
            Some(TenantId("default".into()))
        );
        assert_eq!(auth.authenticate(Some("Bearer wrong-token-value")), None);
        assert_eq!(auth.authenticate(Some(secret)), None, "scheme is required");
        assert_eq!(auth.authenticate(None), None);
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
        let auth = Authenticator::load(&store).await.unwrap();
        assert!(auth
            .authenticate(Some(&format!("Bearer {token}")))
            .is_some());
        assert_eq!(
            bootstrap(&store, None, dir.path(), 2).await.unwrap(),
            Bootstrap::Existing
        );
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

/// File, inside the data dir, holding the key workload access tokens derive from.
pub const ACCESS_TOKEN_KEY_FILE: &str = "workload-token-key";

/// Derives each workload's router access token as HMAC-SHA256(key, workload id). The
/// service can show the owner the token at any time (create, adopt, refresh, import)
/// while the store keeps only its SHA-256, like every other token.
#[derive(Clone)]
pub struct AccessTokenKey(Arc<[u8; 32]>);

impl std::fmt::Debug for AccessTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessTokenKey(<secret>)")
    }
}

impl AccessTokenKey {
    /// A fresh random key (tests, and a first start).
    pub fn random() -> AccessTokenKey {
        let mut key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        AccessTokenKey(Arc::new(key))
    }

    /// The key in `data_dir`, created (mode 0600) on first use.
    pub fn load_or_create(data_dir: &Path) -> Result<AccessTokenKey, ServiceError> {
        let path = data_dir.join(ACCESS_TOKEN_KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                // Private even if it was created wider (by hand, or a restore).
                crate::server::set_private(&path)?;
                let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32).ok_or_else(|| {
                    ServiceError::config(format!(
                        "{} is not 64 hex characters; restore it from a backup (deleting it invalidates every workload access token)",
                        path.display()
                    ))
                })?;
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                Ok(AccessTokenKey(Arc::new(key)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = AccessTokenKey::random();
                write_private(&path, &hex::encode(*key.0))?;
                Ok(key)
            }
            Err(e) => Err(ServiceError::io(
                format!("cannot read {}", path.display()),
                e,
            )),
        }
    }

    /// The access token of a workload.
    pub fn token_for(&self, workload_id: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.0.as_slice())
            .expect("HMAC takes a key of any length");
        mac.update(b"workload-access-token:");
        mac.update(workload_id.as_bytes());
        format!("caw_{}", hex::encode(mac.finalize().into_bytes()))
    }

    /// What the store keeps of it.
    pub fn hash_for(&self, workload_id: &str) -> String {
        hash_token(&self.token_for(workload_id))
    }
}
