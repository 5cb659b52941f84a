//! [`Storage`]: one object store (the local filesystem, S3, GCS or Azure Blob, chosen
//! by [`StorageConfig`]) seen through workload namespaces, with signed URLs, quota
//! checks and namespace deletion. Cloud backends sign with `object_store`'s signers
//! (SigV4, GCS V4, Azure SAS); the local backend signs with [`UrlSigner`] and the
//! service serves those URLs itself ([`crate::http`]).

use crate::error::StorageError;
use crate::key::{ObjectKey, Prefix};
use crate::signed::{Grant, Method, Scope, UrlSigner};
use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as StorePath;
use object_store::signer::Signer;
use object_store::ObjectStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Which object store holds workload storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Local,
    S3,
    Gcs,
    Azure,
}

/// The `[storage]` section of the service configuration. Credentials are never part
/// of it: cloud backends read them from their usual environment variables
/// (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `GOOGLE_SERVICE_ACCOUNT`,
/// `AZURE_STORAGE_ACCOUNT_KEY`, …), as `object_store`'s builders do.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Where workload objects live: `local` (a directory of the service), `s3`
    /// (or any S3-compatible store), `gcs` or `azure`.
    pub backend: BackendKind,
    /// Directory of the `local` backend; empty is `storage/` in the data dir.
    pub local_root: PathBuf,
    /// Bucket (`s3`, `gcs`) or container (`azure`) holding every workload's namespace.
    pub bucket: String,
    /// `s3`: the bucket's region.
    pub region: String,
    /// `s3`: the endpoint of an S3-compatible store (MinIO, moto); empty is AWS's.
    pub endpoint: String,
    /// `azure`: the storage account.
    pub account: String,
    /// Allow a plain-HTTP `endpoint` (S3-compatible stores on a private network).
    pub allow_http: bool,
    /// How long a signed upload or download URL stays valid, in seconds.
    pub url_expiry_seconds: u64,
    /// `local`: the base URL instances reach the service's signed URLs at (the
    /// service's own address as they see it); empty is the API's listen address, with
    /// `https` when `tls` is set.
    pub public_url: String,
    /// Minutes between runs of the retention cleaner, which deletes the objects of
    /// workloads that ended (terminated or failed) more than their `retention_days` ago.
    pub retention_sweep_interval_minutes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: BackendKind::Local,
            local_root: PathBuf::new(),
            bucket: String::new(),
            region: "us-east-1".into(),
            endpoint: String::new(),
            account: String::new(),
            allow_http: false,
            url_expiry_seconds: 3600,
            public_url: String::new(),
            retention_sweep_interval_minutes: 60,
        }
    }
}

impl StorageConfig {
    /// What is wrong with the settings, naming the key and the fix.
    pub fn validate(&self) -> Result<(), StorageError> {
        match self.problem() {
            Some((_, message)) => Err(StorageError::config(message)),
            None => Ok(()),
        }
    }

    /// The first wrong setting: its key (`storage.bucket`) and what to do.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.url_expiry_seconds == 0 || self.url_expiry_seconds > 7 * 24 * 3600 {
            return Some((
                "storage.url_expiry_seconds",
                format!(
                    "storage.url_expiry_seconds is {}; use 1 to 604800 (7 days, the longest GCS and S3 allow)",
                    self.url_expiry_seconds
                ),
            ));
        }
        if self.retention_sweep_interval_minutes == 0 {
            return Some((
                "storage.retention_sweep_interval_minutes",
                "storage.retention_sweep_interval_minutes is 0; use 1 or more".into(),
            ));
        }
        let scheme_ok = ["http://", "https://"]
            .iter()
            .any(|scheme| self.public_url.starts_with(scheme));
        if !self.public_url.is_empty() && !scheme_ok {
            return Some((
                "storage.public_url",
                format!(
                    "storage.public_url {:?} is not an http:// or https:// URL",
                    self.public_url
                ),
            ));
        }
        if self.backend != BackendKind::Local && self.bucket.is_empty() {
            return Some((
                "storage.bucket",
                format!(
                    "storage.backend is {:?} but storage.bucket is empty; set the bucket (or container) name",
                    self.backend
                ),
            ));
        }
        if self.backend == BackendKind::Azure && self.account.is_empty() {
            return Some((
                "storage.account",
                "storage.backend is \"azure\" but storage.account is empty; set the storage account name".into(),
            ));
        }
        None
    }
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: ObjectKey,
    pub size: u64,
    /// Last modified, unix milliseconds.
    pub modified_ms: i64,
}

/// A signed URL and when it stops working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedUrl {
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

enum Signing {
    /// The service's own signatures, served at `base_url`.
    Local {
        signer: UrlSigner,
        base_url: String,
    },
    Cloud(Arc<dyn Signer>),
}

/// Workload storage on one backend.
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    signing: Signing,
    kind: BackendKind,
    url_expiry: Duration,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn store_path(key: &ObjectKey) -> StorePath {
    // Keys are checked (no empty, `.` or `..` segments), so parsing them keeps them as
    // they are; `from` would percent-encode what object_store considers special.
    StorePath::parse(key.to_string()).unwrap_or_else(|_| StorePath::from(key.to_string()))
}

fn prefix_path(prefix: &Prefix) -> StorePath {
    let text = prefix.to_string();
    StorePath::parse(text.trim_end_matches('/')).unwrap_or_else(|_| StorePath::from(text))
}

impl Storage {
    /// The backend `config` names. `data_dir` holds the local backend's default root;
    /// `local_base_url` is where the service serves local signed URLs (its HTTP side).
    pub fn open(
        config: &StorageConfig,
        data_dir: &Path,
        signer: UrlSigner,
        local_base_url: &str,
    ) -> Result<Storage, StorageError> {
        config.validate()?;
        let url_expiry = Duration::from_secs(config.url_expiry_seconds);
        let built = |e: object_store::Error| {
            StorageError::config(format!(
                "storage.backend {:?} cannot be set up: {e}",
                config.backend
            ))
        };
        match config.backend {
            BackendKind::Local => {
                let root = if config.local_root.as_os_str().is_empty() {
                    data_dir.join("storage")
                } else {
                    config.local_root.clone()
                };
                Storage::local(&root, signer, local_base_url, url_expiry)
            }
            BackendKind::S3 => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(&config.bucket)
                    .with_region(&config.region)
                    .with_allow_http(config.allow_http);
                if !config.endpoint.is_empty() {
                    builder = builder.with_endpoint(&config.endpoint);
                }
                let s3 = Arc::new(builder.build().map_err(built)?);
                Ok(Storage::cloud(s3.clone(), s3, BackendKind::S3, url_expiry))
            }
            BackendKind::Gcs => {
                let gcs = Arc::new(
                    object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_bucket_name(&config.bucket)
                        .build()
                        .map_err(built)?,
                );
                Ok(Storage::cloud(
                    gcs.clone(),
                    gcs,
                    BackendKind::Gcs,
                    url_expiry,
                ))
            }
            BackendKind::Azure => {
                let azure = Arc::new(
                    object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_account(&config.account)
                        .with_container_name(&config.bucket)
                        .with_allow_http(config.allow_http)
                        .build()
                        .map_err(built)?,
                );
                Ok(Storage::cloud(
                    azure.clone(),
                    azure,
                    BackendKind::Azure,
                    url_expiry,
                ))
            }
        }
    }

    /// The local filesystem under `root` (created 0700).
    pub fn local(
        root: &Path,
        signer: UrlSigner,
        base_url: &str,
        url_expiry: Duration,
    ) -> Result<Storage, StorageError> {
        std::fs::create_dir_all(root).map_err(|e| {
            StorageError::config(format!(
                "cannot create the storage directory {}: {e}",
                root.display()
            ))
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700)).map_err(
                |e| StorageError::config(format!("cannot make {} private: {e}", root.display())),
            )?;
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(root).map_err(|e| {
            StorageError::config(format!("storage directory {}: {e}", root.display()))
        })?;
        Ok(Storage {
            store: Arc::new(store),
            signing: Signing::Local {
                signer,
                base_url: base_url.trim_end_matches('/').to_string(),
            },
            kind: BackendKind::Local,
            url_expiry,
        })
    }

    /// A cloud store that signs its own URLs.
    pub fn cloud(
        store: Arc<dyn ObjectStore>,
        signer: Arc<dyn Signer>,
        kind: BackendKind,
        url_expiry: Duration,
    ) -> Storage {
        Storage {
            store,
            signing: Signing::Cloud(signer),
            kind,
            url_expiry,
        }
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The local backend's signer (the service's HTTP side verifies with it).
    /// How long a signed URL works (`storage.url_expiry_seconds`).
    pub fn url_expiry(&self) -> Duration {
        self.url_expiry
    }

    pub fn local_signer(&self) -> Option<&UrlSigner> {
        match &self.signing {
            Signing::Local { signer, .. } => Some(signer),
            Signing::Cloud(_) => None,
        }
    }

    pub async fn put(&self, key: &ObjectKey, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&store_path(key), bytes.into())
            .await
            .map(|_| ())
            .map_err(|e| StorageError::backend(format!("cannot write {key}"), e))
    }

    pub async fn get(&self, key: &ObjectKey) -> Result<Bytes, StorageError> {
        let result = self
            .store
            .get(&store_path(key))
            .await
            .map_err(|e| StorageError::backend(format!("cannot read {key}"), e))?;
        result
            .bytes()
            .await
            .map_err(|e| StorageError::backend(format!("cannot read {key}"), e))
    }

    /// The object's bytes as a stream (downloads of any size).
    pub async fn get_stream(
        &self,
        key: &ObjectKey,
    ) -> Result<
        (
            u64,
            futures::stream::BoxStream<'static, Result<Bytes, StorageError>>,
        ),
        StorageError,
    > {
        let result = self
            .store
            .get(&store_path(key))
            .await
            .map_err(|e| StorageError::backend(format!("cannot read {key}"), e))?;
        let size = result.meta.size;
        let context = format!("cannot read {key}");
        let range = result.range.clone();
        match result.payload {
            // A local file: read it in large chunks (see `chunks`).
            object_store::GetResultPayload::File(file, _) => {
                let stream = crate::chunks::file_chunks(file, range).map(move |chunk| {
                    chunk.map_err(|e| {
                        let source = object_store::Error::Generic {
                            store: "LocalFileSystem",
                            source: Box::new(e),
                        };
                        StorageError::backend(context.clone(), source)
                    })
                });
                Ok((size, stream.boxed()))
            }
            payload @ object_store::GetResultPayload::Stream(_) => {
                let result = object_store::GetResult { payload, ..result };
                let stream = result
                    .into_stream()
                    .map(move |chunk| chunk.map_err(|e| StorageError::backend(context.clone(), e)))
                    .boxed();
                Ok((size, stream))
            }
        }
    }

    /// Writes a stream to `key`, refusing it (and keeping nothing of it) once the
    /// workload's objects would pass `limit_bytes`. The object appears whole or not at
    /// all. Returns the bytes written.
    pub async fn put_stream<S, E>(
        &self,
        key: &ObjectKey,
        mut body: S,
        limit_bytes: Option<u64>,
    ) -> Result<u64, StorageError>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let used = match limit_bytes {
            // What the upload replaces does not count against it.
            Some(_) => self
                .list(&Prefix::workload(key.workload_id())?)
                .await?
                .iter()
                .filter(|o| &o.key != key)
                .map(|o| o.size)
                .sum(),
            None => 0,
        };
        let path = store_path(key);
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| StorageError::backend(format!("cannot write {key}"), e))?;
        let mut writer = object_store::WriteMultipart::new(upload);
        let mut written: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(StorageError::denied(format!(
                        "the upload of {key} broke off: {e}"
                    )));
                }
            };
            written += chunk.len() as u64;
            if let Some(limit) = limit_bytes {
                if used + written > limit {
                    let _ = writer.abort().await;
                    return Err(StorageError::QuotaExceeded {
                        workload_id: key.workload_id().to_string(),
                        used,
                        adding: written,
                        limit,
                    });
                }
            }
            if let Err(e) = writer.wait_for_capacity(4).await {
                return Err(StorageError::backend(format!("cannot write {key}"), e));
            }
            writer.put(chunk);
        }
        writer
            .finish()
            .await
            .map_err(|e| StorageError::backend(format!("cannot write {key}"), e))?;
        Ok(written)
    }

    /// The size of `key`, `None` when there is no such object.
    pub async fn size_of(&self, key: &ObjectKey) -> Result<Option<u64>, StorageError> {
        match self.store.head(&store_path(key)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(StorageError::backend(format!("cannot read {key}"), e)),
        }
    }

    /// Every object under `prefix`, in key order.
    pub async fn list(&self, prefix: &Prefix) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut stream = self.store.list(Some(&prefix_path(prefix)));
        let mut objects = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta =
                meta.map_err(|e| StorageError::backend(format!("cannot list {prefix}"), e))?;
            let location = meta.location.to_string();
            // Anything that is not a well-formed key (written around the service) is
            // not the workload's to see.
            let Ok(key) = ObjectKey::parse(&location) else {
                continue;
            };
            if !prefix.contains(&key) {
                continue;
            }
            objects.push(ObjectInfo {
                key,
                size: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            });
        }
        objects.sort_by_cached_key(|o| o.key.to_string());
        Ok(objects)
    }

    /// The objects under `prefix`, and the bytes its whole workload holds: one listing
    /// of the namespace gives both.
    pub async fn list_with_usage(
        &self,
        prefix: &Prefix,
    ) -> Result<(Vec<ObjectInfo>, u64), StorageError> {
        let everything = self.list(&Prefix::workload(prefix.workload_id())?).await?;
        let used = everything.iter().map(|o| o.size).sum();
        let under = everything
            .into_iter()
            .filter(|o| prefix.contains(&o.key))
            .collect();
        Ok((under, used))
    }

    /// Bytes a workload's objects hold.
    pub async fn usage(&self, workload_id: &str) -> Result<u64, StorageError> {
        Ok(self
            .list(&Prefix::workload(workload_id)?)
            .await?
            .iter()
            .map(|o| o.size)
            .sum())
    }

    /// Deletes every object under `prefix`; returns how many there were.
    pub async fn delete_prefix(&self, prefix: &Prefix) -> Result<usize, StorageError> {
        let objects = self.list(prefix).await?;
        for object in &objects {
            match self.store.delete(&store_path(&object.key)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(StorageError::backend(
                        format!("cannot delete {}", object.key),
                        e,
                    ))
                }
            }
        }
        Ok(objects.len())
    }

    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match self.store.delete(&store_path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::backend(format!("cannot delete {key}"), e)),
        }
    }

    /// A URL for one request on `key`. An upload is refused here already when the
    /// workload's objects plus `declared_bytes` would pass `quota_bytes`; the local
    /// backend checks the quota again while the body streams in.
    pub async fn signed_url(
        &self,
        method: Method,
        key: &ObjectKey,
        quota_bytes: Option<u64>,
        declared_bytes: u64,
    ) -> Result<SignedUrl, StorageError> {
        self.sign(
            method,
            Scope::Key(key.clone()),
            key,
            quota_bytes,
            declared_bytes,
        )
        .await
    }

    /// A URL for `key` under a grant for the whole `scope`. Only the local backend
    /// has prefix grants (cloud signers sign one object); elsewhere a prefix scope is
    /// narrowed to the key.
    pub async fn sign(
        &self,
        method: Method,
        scope: Scope,
        key: &ObjectKey,
        quota_bytes: Option<u64>,
        declared_bytes: u64,
    ) -> Result<SignedUrl, StorageError> {
        if method == Method::Put {
            if let Some(limit) = quota_bytes {
                let used = self.usage(key.workload_id()).await?;
                if used + declared_bytes > limit {
                    return Err(StorageError::QuotaExceeded {
                        workload_id: key.workload_id().to_string(),
                        used,
                        adding: declared_bytes,
                        limit,
                    });
                }
            }
        }
        let limit_bytes = if method == Method::Put {
            quota_bytes
        } else {
            None
        };
        self.sign_within(method, scope, key, limit_bytes).await
    }

    /// A URL like [`Storage::sign`]'s, without listing the namespace for the quota:
    /// for a caller that checked a whole batch against it once (a checkpoint's chunks).
    /// On the local backend an upload through it still stops at `limit_bytes`.
    pub async fn sign_within(
        &self,
        method: Method,
        scope: Scope,
        key: &ObjectKey,
        limit_bytes: Option<u64>,
    ) -> Result<SignedUrl, StorageError> {
        let expires_at = unix_now() + self.url_expiry.as_secs() as i64;
        match &self.signing {
            Signing::Local { signer, base_url } => {
                let grant = Grant {
                    method,
                    scope,
                    expires_at,
                    limit_bytes,
                };
                Ok(SignedUrl {
                    url: format!("{base_url}{}", signer.sign(&grant, key)?),
                    expires_at,
                })
            }
            Signing::Cloud(signer) => {
                let http_method = match method {
                    Method::Get => http::Method::GET,
                    Method::Put => http::Method::PUT,
                };
                let url = signer
                    .signed_url(http_method, &store_path(key), self.url_expiry)
                    .await
                    .map_err(|e| {
                        StorageError::backend(format!("cannot sign a URL for {key}"), e)
                    })?;
                Ok(SignedUrl {
                    url: url.to_string(),
                    expires_at,
                })
            }
        }
    }
}
