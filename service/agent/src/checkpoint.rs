//! Checkpoints: `$CHECKPOINT_DIR` packed into content-addressed chunks plus a manifest,
//! uploaded through pre-signed URLs, and restored from them.
//!
//! In the workload's storage a checkpoint is
//!
//! ```text
//! checkpoints/{name}/chunks/{sha256}   each distinct piece (at most CHUNK_BYTES) once
//! checkpoints/{name}/manifest.json     the table of contents, written LAST
//! ```
//!
//! so a checkpoint is complete exactly when its manifest exists: an upload cut short
//! leaves only chunks nobody reads. The grant's URLs already point at those keys; this
//! module never builds a key.
//!
//! - [`scan`]: walks the directory and hashes it (blocking; run it in `spawn_blocking`).
//! - [`upload`]: every chunk, four at a time, re-read and re-hashed, then the
//!   manifest.
//! - [`restore`]: checks every path before writing anything, then downloads, verifies
//!   and writes each file under a temporary name and renames it into place.
//!
//! Memory stays at about four chunks each way: chunks are read (or downloaded)
//! one piece at a time, never a whole file.

use computearbitrage_agent_protocol::{
    CheckpointGrant, Manifest, ManifestFile, Restore, CHUNK_BYTES,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

/// Chunks in flight at once, in either direction; bounds memory to about this many.
const PARALLEL: usize = 4;
/// How much of a refusal's body goes into [`CheckpointError::Http`].
const BODY_PREFIX: usize = 200;
const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("unsafe path in checkpoint: {0}")]
    UnsafePath(String),
    #[error("{what}: {message}")]
    Http {
        what: String,
        message: String,
        retryable: bool,
    },
    #[error("checkpoint corrupt: {0}")]
    Corrupt(String),
}

impl CheckpointError {
    /// Only the network is worth another try: local I/O, a bad path or a changed
    /// file fail the same way again.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CheckpointError::Http {
                retryable: true,
                ..
            }
        )
    }
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A scanned directory: its manifest and where each distinct chunk's bytes are.
#[derive(Debug, Clone)]
pub struct Packed {
    pub manifest: Manifest,
    chunks: BTreeMap<String, ChunkSource>,
}

/// The first place a chunk was seen; upload reads it again from there.
#[derive(Debug, Clone)]
struct ChunkSource {
    path: PathBuf,
    offset: u64,
    len: u64,
}

impl Packed {
    /// SHA-256 (hex) → size of each distinct chunk: what a grant request names.
    pub fn chunk_sizes(&self) -> BTreeMap<String, u64> {
        self.chunks
            .iter()
            .map(|(sha, source)| (sha.clone(), source.len))
            .collect()
    }

    pub fn manifest_json(&self) -> Vec<u8> {
        // Plain structs with string keys: serializing cannot fail.
        serde_json::to_vec(&self.manifest).expect("a manifest serializes")
    }
}

/// Walks `dir` (not following symlinks; a symlink is skipped with a warning), hashes
/// files in [`CHUNK_BYTES`] pieces. Directories listed (relative, '/'-separated,
/// sorted), files sorted by path, mode bits recorded (permissions & 0o7777).
///
/// A name that is not UTF-8 or holds a backslash is an error rather than a silent
/// gap: [`restore`] would refuse it, and a checkpoint missing files is worse than none.
pub fn scan(dir: &Path, created_at_ms: i64) -> Result<Packed, CheckpointError> {
    let mut directories = Vec::new();
    let mut found: Vec<(String, PathBuf, u32)> = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&abs).map_err(io_at(&abs))? {
            let entry = entry.map_err(io_at(&abs))?;
            let path = entry.path();
            let name = entry.file_name();
            let name = match name.to_str() {
                Some(name) if !name.contains('\\') => name,
                _ => {
                    return Err(CheckpointError::UnsafePath(format!(
                        "{}: names must be UTF-8 without backslashes",
                        path.display()
                    )))
                }
            };
            let child = if rel.is_empty() {
                name.to_string()
            } else {
                format!("{rel}/{name}")
            };
            let meta = std::fs::symlink_metadata(&path).map_err(io_at(&path))?;
            let kind = meta.file_type();
            if kind.is_dir() {
                directories.push(child.clone());
                stack.push((path, child));
            } else if kind.is_file() {
                found.push((child, path, meta.permissions().mode() & 0o7777));
            } else if kind.is_symlink() {
                tracing::warn!(path = %path.display(), "checkpoint skips a symlink");
            } else {
                tracing::warn!(path = %path.display(), "checkpoint skips a special file");
            }
        }
    }
    directories.sort();
    found.sort_by(|a, b| a.0.cmp(&b.0));

    let mut buffer = vec![0u8; CHUNK_BYTES as usize];
    let mut chunks = BTreeMap::new();
    let mut files = Vec::with_capacity(found.len());
    let mut total_bytes = 0u64;
    for (rel, path, mode) in found {
        let mut file = std::fs::File::open(&path).map_err(io_at(&path))?;
        let mut offset = 0u64;
        let mut hashes = Vec::new();
        loop {
            let n = fill(&mut file, &mut buffer).map_err(io_at(&path))?;
            if n == 0 {
                break;
            }
            let sha = hex::encode(Sha256::digest(&buffer[..n]));
            chunks.entry(sha.clone()).or_insert_with(|| ChunkSource {
                path: path.clone(),
                offset,
                len: n as u64,
            });
            hashes.push(sha);
            offset += n as u64;
            if n < buffer.len() {
                break;
            }
        }
        total_bytes += offset;
        files.push(ManifestFile {
            path: rel,
            size: offset,
            mode,
            chunks: hashes,
        });
    }
    Ok(Packed {
        manifest: Manifest {
            version: MANIFEST_VERSION,
            created_at_ms,
            directories,
            files,
            total_bytes,
            trigger: String::new(),
        },
        chunks,
    })
}

/// Reads until `buffer` is full or the file ends; how many bytes it holds.
fn fill(file: &mut std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buffer.len() {
        match file.read(&mut buffer[n..]) {
            Ok(0) => break,
            Ok(read) => n += read,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How long one chunk or manifest PUT is retried after failures of the network's (a
/// reset, a 5xx, a 429) before the checkpoint fails: a store or a link that blinks
/// must not cost a final checkpoint, and the machine's end bounds it anyway.
pub const UPLOAD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Uploads every chunk the grant names (PUT, four at a time), then, only
/// after all succeeded, the manifest. Returns the bytes uploaded. Each PUT that
/// fails retryably is sent again, with backoff, for up to `patience`; the objects are
/// named by content, so sending one twice is harmless.
///
/// Each chunk is read again from its file and hashed again: a file changed since
/// [`scan`] is a [`CheckpointError::Corrupt`] naming it (the workload must have
/// stopped writing). The grant must name exactly the scanned chunks; otherwise
/// nothing is sent, since a manifest naming a chunk that was never stored would
/// complete a broken checkpoint.
pub async fn upload(
    client: &reqwest::Client,
    packed: &Packed,
    grant: &CheckpointGrant,
    patience: std::time::Duration,
) -> Result<u64, CheckpointError> {
    if let Some(sha) = packed
        .chunks
        .keys()
        .find(|sha| !grant.chunk_urls.contains_key(*sha) && !grant.reused.contains(*sha))
    {
        return Err(CheckpointError::Corrupt(format!(
            "the grant has no URL for chunk {sha}, and it is not one already stored"
        )));
    }
    if let Some(sha) = grant
        .chunk_urls
        .keys()
        .chain(grant.reused.iter())
        .find(|sha| !packed.chunks.contains_key(*sha))
    {
        return Err(CheckpointError::Corrupt(format!(
            "the grant names chunk {sha}, which this checkpoint does not have"
        )));
    }

    // Dropping the set on an error aborts the uploads still running.
    let mut uploads = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    for (sha, url) in &grant.chunk_urls {
        let Some(source) = packed.chunks.get(sha) else {
            continue; // checked above
        };
        if uploads.len() >= PARALLEL {
            sent += joined(uploads.join_next().await)?;
        }
        uploads.spawn(put_chunk(
            client.clone(),
            url.clone(),
            sha.clone(),
            source.clone(),
            patience,
        ));
    }
    while let Some(done) = uploads.join_next().await {
        sent += joined(Some(done))?;
    }

    let manifest = packed.manifest_json();
    let manifest_len = manifest.len() as u64;
    put(
        client,
        &grant.manifest_url,
        manifest,
        "application/json",
        "PUT manifest",
        patience,
    )
    .await?;
    Ok(sent + manifest_len)
}

fn joined(
    done: Option<Result<Result<u64, CheckpointError>, tokio::task::JoinError>>,
) -> Result<u64, CheckpointError> {
    match done {
        None => Ok(0),
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(task_failed("PUT chunk", e)),
    }
}

fn task_failed(what: &str, e: tokio::task::JoinError) -> CheckpointError {
    CheckpointError::Http {
        what: what.to_string(),
        message: format!("the task failed: {e}"),
        retryable: false,
    }
}

async fn put_chunk(
    client: reqwest::Client,
    url: String,
    sha: String,
    source: ChunkSource,
    patience: std::time::Duration,
) -> Result<u64, CheckpointError> {
    let what = format!("PUT chunk {sha}");
    let bytes = tokio::task::spawn_blocking(move || read_chunk(&source, &sha))
        .await
        .map_err(|e| task_failed(&what, e))??;
    let len = bytes.len() as u64;
    put(
        &client,
        &url,
        bytes,
        "application/octet-stream",
        &what,
        patience,
    )
    .await?;
    Ok(len)
}

/// The chunk's bytes as they are now, if they still hash to `sha`.
fn read_chunk(source: &ChunkSource, sha: &str) -> Result<Vec<u8>, CheckpointError> {
    let changed = || {
        CheckpointError::Corrupt(format!(
            "{} changed since it was scanned (the workload must stop writing before a checkpoint)",
            source.path.display()
        ))
    };
    let mut file = std::fs::File::open(&source.path).map_err(io_at(&source.path))?;
    file.seek(SeekFrom::Start(source.offset))
        .map_err(io_at(&source.path))?;
    let len = usize::try_from(source.len).map_err(|_| changed())?;
    let mut bytes = vec![0u8; len];
    match file.read_exact(&mut bytes) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(changed()),
        Err(e) => return Err(io_at(&source.path)(e)),
    }
    if hex::encode(Sha256::digest(&bytes)) != sha {
        return Err(changed());
    }
    Ok(bytes)
}

async fn put(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    content_type: &str,
    what: &str,
    patience: std::time::Duration,
) -> Result<(), CheckpointError> {
    let body = bytes::Bytes::from(body);
    patiently(patience, what, || async {
        match client
            .put(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.clone())
            .send()
            .await
        {
            Ok(response) => successful(response, what).await.map(drop),
            Err(e) => Err(transport(what, e)),
        }
    })
    .await
}

/// `attempt`, made again after each failure of the network's (backoff from 100 ms
/// to 5 s) until `patience` has passed; any other failure, or one after that, is
/// returned at once.
async fn patiently<T, F, Fut>(
    patience: std::time::Duration,
    what: &str,
    mut attempt: F,
) -> Result<T, CheckpointError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CheckpointError>>,
{
    let started = std::time::Instant::now();
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match attempt().await {
            Err(e) if e.is_retryable() && started.elapsed() < patience => {
                tracing::warn!(what, error = %e, retry_in_ms = delay.as_millis() as u64, "failed; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// The response if it is a 2xx; otherwise its status and the start of its body.
async fn successful(
    mut response: reqwest::Response,
    what: &str,
) -> Result<reqwest::Response, CheckpointError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let mut prefix = Vec::new();
    while prefix.len() < BODY_PREFIX {
        match response.chunk().await {
            Ok(Some(piece)) => prefix.extend_from_slice(&piece),
            _ => break,
        }
    }
    prefix.truncate(BODY_PREFIX);
    Err(CheckpointError::Http {
        what: what.to_string(),
        message: format!("{status}: {}", String::from_utf8_lossy(&prefix).trim()),
        retryable: status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS,
    })
}

/// A request that got no answer. The URL is left out: it carries a signature.
fn transport(what: &str, e: reqwest::Error) -> CheckpointError {
    let retryable = e.is_connect() || e.is_timeout() || e.is_request() || e.is_body();
    let e = e.without_url();
    let mut message = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(inner) = cause {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        cause = inner.source();
    }
    CheckpointError::Http {
        what: what.to_string(),
        message,
        retryable,
    }
}

/// Restores `restore` into `dir` (created if missing); returns (files, bytes).
///
/// Every manifest path is checked before anything is written (absolute, empty
/// segment, `.`/`..`, backslash and NUL are refused), and an existing symlink or file
/// where a directory belongs is refused rather than written through. Chunks are
/// downloaded four ahead in manifest order, each checked against its SHA-256
/// and its file's size; a file is written under a temporary name in its directory
/// and renamed into place once complete, so a failure leaves no partial file under
/// its final name. With `owner`, every created file and directory is chowned to it.
/// Files in `dir` the manifest does not name are left alone.
pub async fn restore(
    client: &reqwest::Client,
    restore: &Restore,
    dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(u64, u64), CheckpointError> {
    check_manifest(restore)?;
    let manifest = &restore.manifest;

    let existed = tokio::fs::metadata(dir).await.is_ok();
    tokio::fs::create_dir_all(dir).await.map_err(io_at(dir))?;
    let mut tree = Tree {
        root: dir.to_path_buf(),
        owner,
        known: HashSet::new(),
    };
    if !existed {
        tree.chown(dir)?;
    }
    for directory in &manifest.directories {
        tree.ensure_dir(directory).await?;
    }

    let mut queue = manifest.files.iter().flat_map(|file| {
        file.chunks
            .iter()
            .map(move |sha| (file.path.as_str(), file.size, sha.as_str()))
    });
    let mut pending: VecDeque<Download> = VecDeque::new();
    let mut bytes = 0u64;
    for (index, file) in manifest.files.iter().enumerate() {
        let (parent, name) = match file.path.rsplit_once('/') {
            Some((parent, name)) => (parent, name),
            None => ("", file.path.as_str()),
        };
        let parent = tree.ensure_dir(parent).await?;
        let target = parent.join(name);
        let mut partial =
            Partial::create(parent.join(format!(".restore-{}-{index}", std::process::id())))
                .await?;

        let mut written = 0u64;
        for sha in &file.chunks {
            while pending.len() < PARALLEL {
                let Some((path, size, sha)) = queue.next() else {
                    break;
                };
                let Some(url) = restore.chunk_urls.get(sha) else {
                    break; // checked before anything was written
                };
                pending.push_back(Download::start(client, url, sha, path, size));
            }
            let Some(download) = pending.pop_front() else {
                return Err(CheckpointError::Corrupt(format!(
                    "{}: no URL for chunk {sha}",
                    file.path
                )));
            };
            let data = download.finish(sha).await?;
            written += data.len() as u64;
            if written > file.size {
                return Err(CheckpointError::Corrupt(format!(
                    "{}: its chunks hold more than its {} bytes",
                    file.path, file.size
                )));
            }
            partial.write(&data).await?;
        }
        if written != file.size {
            return Err(CheckpointError::Corrupt(format!(
                "{}: its chunks hold {written} bytes, the manifest says {}",
                file.path, file.size
            )));
        }
        partial.finish(&tree, file.mode, &target).await?;
        bytes += written;
    }
    Ok((manifest.files.len() as u64, bytes))
}

/// [`restore`], started over after each failure of the network's (a reset mid-chunk,
/// the service restarting, a 5xx) until `patience` has passed; any other failure, or
/// one after that, is returned at once.
pub async fn restore_patiently(
    client: &reqwest::Client,
    restore_of: &Restore,
    dir: &Path,
    owner: Option<(u32, u32)>,
    patience: std::time::Duration,
) -> Result<(u64, u64), CheckpointError> {
    let what = format!("restore of checkpoint {}", restore_of.name);
    patiently(patience, &what, || restore(client, restore_of, dir, owner)).await
}

/// Refuses a manifest that could write outside the directory, or could not be
/// restored whole, before anything is written.
pub fn check_manifest(restore: &Restore) -> Result<(), CheckpointError> {
    let manifest = &restore.manifest;
    let every_path = || {
        manifest
            .directories
            .iter()
            .map(String::as_str)
            .chain(manifest.files.iter().map(|f| f.path.as_str()))
    };
    for path in every_path() {
        check_path(path)?;
    }
    let mut files = HashSet::new();
    for file in &manifest.files {
        if !files.insert(file.path.as_str()) {
            return Err(CheckpointError::Corrupt(format!(
                "{} is listed twice",
                file.path
            )));
        }
    }
    for path in every_path() {
        let mut ancestors = path.match_indices('/').map(|(at, _)| &path[..at]);
        if let Some(file) = ancestors.find(|a| files.contains(a)) {
            return Err(CheckpointError::Corrupt(format!(
                "{path} is under {file}, which is a file"
            )));
        }
    }
    if let Some(directory) = manifest
        .directories
        .iter()
        .find(|d| files.contains(d.as_str()))
    {
        return Err(CheckpointError::Corrupt(format!(
            "{directory} is both a file and a directory"
        )));
    }
    for file in &manifest.files {
        if let Some(sha) = file
            .chunks
            .iter()
            .find(|sha| !restore.chunk_urls.contains_key(*sha))
        {
            return Err(CheckpointError::Corrupt(format!(
                "{}: no URL for chunk {sha}",
                file.path
            )));
        }
    }
    Ok(())
}

/// Relative, '/'-separated, every segment a plain name.
fn check_path(path: &str) -> Result<(), CheckpointError> {
    let refused = path.is_empty()
        || path.starts_with('/')
        || path.contains(['\\', '\0'])
        || path
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..");
    if refused {
        return Err(CheckpointError::UnsafePath(format!("{path:?}")));
    }
    Ok(())
}

/// The directory being restored into: which of its directories are known to be real
/// ones, and who should own what is created.
struct Tree {
    root: PathBuf,
    owner: Option<(u32, u32)>,
    known: HashSet<String>,
}

impl Tree {
    /// `root/rel` as a real directory, creating what is missing. A symlink (or file)
    /// in the way is refused: writing through it could land outside `root`.
    async fn ensure_dir(&mut self, rel: &str) -> Result<PathBuf, CheckpointError> {
        let mut path = self.root.clone();
        if rel.is_empty() {
            return Ok(path);
        }
        let mut so_far = String::new();
        for segment in rel.split('/') {
            path.push(segment);
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(segment);
            if self.known.contains(&so_far) {
                continue;
            }
            match tokio::fs::symlink_metadata(&path).await {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(CheckpointError::UnsafePath(format!(
                        "{so_far}: already in {} and not a directory",
                        self.root.display()
                    )))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    tokio::fs::create_dir(&path).await.map_err(io_at(&path))?;
                    self.chown(&path)?;
                }
                Err(e) => return Err(io_at(&path)(e)),
            }
            self.known.insert(so_far.clone());
        }
        Ok(path)
    }

    fn chown(&self, path: &Path) -> Result<(), CheckpointError> {
        match self.owner {
            Some((uid, gid)) => {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io_at(path))
            }
            None => Ok(()),
        }
    }
}

/// A file being restored under a temporary name; removed unless it was renamed into
/// place.
struct Partial {
    path: PathBuf,
    file: Option<tokio::fs::File>,
}

impl Partial {
    async fn create(path: PathBuf) -> Result<Partial, CheckpointError> {
        // A leftover of an earlier attempt goes; create_new never follows a symlink.
        let _ = tokio::fs::remove_file(&path).await;
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .await
            .map_err(io_at(&path))?;
        Ok(Partial {
            path,
            file: Some(file),
        })
    }

    async fn write(&mut self, data: &[u8]) -> Result<(), CheckpointError> {
        if let Some(file) = self.file.as_mut() {
            file.write_all(data).await.map_err(io_at(&self.path))?;
        }
        Ok(())
    }

    async fn finish(
        mut self,
        tree: &Tree,
        mode: u32,
        target: &Path,
    ) -> Result<(), CheckpointError> {
        if let Some(mut file) = self.file.take() {
            // tokio's writes finish in the background; flush surfaces their errors.
            file.flush().await.map_err(io_at(&self.path))?;
        }
        // chown before chmod: chown clears the setuid and setgid bits.
        tree.chown(&self.path)?;
        tokio::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(mode & 0o7777))
            .await
            .map_err(io_at(&self.path))?;
        tokio::fs::rename(&self.path, target)
            .await
            .map_err(io_at(target))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// One chunk being downloaded and verified; dropping it stops the download.
struct Download(tokio::task::JoinHandle<Result<Vec<u8>, CheckpointError>>);

impl Download {
    fn start(client: &reqwest::Client, url: &str, sha: &str, path: &str, size: u64) -> Download {
        Download(tokio::spawn(download(
            client.clone(),
            url.to_string(),
            sha.to_string(),
            path.to_string(),
            size.min(CHUNK_BYTES),
        )))
    }

    async fn finish(mut self, sha: &str) -> Result<Vec<u8>, CheckpointError> {
        (&mut self.0)
            .await
            .map_err(|e| task_failed(&format!("GET chunk {sha}"), e))?
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The chunk's bytes, at most `limit` of them, if they hash to `sha`.
async fn download(
    client: reqwest::Client,
    url: String,
    sha: String,
    path: String,
    limit: u64,
) -> Result<Vec<u8>, CheckpointError> {
    let what = format!("GET chunk {sha}");
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| transport(&what, e))?;
    let mut response = successful(response, &what).await?;
    let mut data = Vec::new();
    let mut hasher = Sha256::new();
    while let Some(piece) = response.chunk().await.map_err(|e| transport(&what, e))? {
        if (data.len() + piece.len()) as u64 > limit {
            return Err(CheckpointError::Corrupt(format!(
                "chunk {sha} of {path} is larger than {limit} bytes"
            )));
        }
        hasher.update(&piece);
        data.extend_from_slice(&piece);
    }
    if !hex::encode(hasher.finalize()).eq_ignore_ascii_case(&sha) {
        return Err(CheckpointError::Corrupt(format!(
            "chunk {sha} of {path} does not match its SHA-256"
        )));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    //! Against a tiny in-memory object server on a real socket: PUT stores the body
    //! under the path, GET returns it or 404, and the order of PUTs is recorded.

    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::{Request, Response};
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Objects {
        stored: HashMap<String, Vec<u8>>,
        puts: Vec<String>,
        /// Every chunk PUT is answered with this status instead.
        refuse_chunks: Option<u16>,
        /// The next this many GETs are answered with the status instead.
        refuse_gets: (usize, u16),
        /// The next this many PUTs are answered with the status instead.
        refuse_puts: (usize, u16),
        /// Every PUT received, refused or not.
        put_attempts: usize,
        gets: usize,
    }

    type Shared = Arc<Mutex<Objects>>;

    async fn object_server(objects: Shared) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let objects = objects.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: Request<hyper::body::Incoming>| {
                            let objects = objects.clone();
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let path = parts.uri.path().to_string();
                                let mut objects = objects.lock().unwrap();
                                if parts.method == "PUT" {
                                    objects.put_attempts += 1;
                                }
                                let (status, reply) = match parts.method.as_str() {
                                    "PUT" if objects.refuse_puts.0 > 0 => {
                                        objects.refuse_puts.0 -= 1;
                                        (objects.refuse_puts.1, Bytes::from("refused by the test"))
                                    }
                                    "PUT" => match objects.refuse_chunks {
                                        Some(status) if path.contains("/chunks/") => {
                                            (status, Bytes::from("refused by the test"))
                                        }
                                        _ => {
                                            objects.puts.push(path.clone());
                                            objects.stored.insert(path, body.to_vec());
                                            (201, Bytes::new())
                                        }
                                    },
                                    "GET" if objects.refuse_gets.0 > 0 => {
                                        objects.gets += 1;
                                        objects.refuse_gets.0 -= 1;
                                        (objects.refuse_gets.1, Bytes::from("refused by the test"))
                                    }
                                    "GET" => match objects.stored.get(&path).cloned() {
                                        Some(data) => {
                                            objects.gets += 1;
                                            (200, Bytes::from(data))
                                        }
                                        None => (404, Bytes::from("no such object")),
                                    },
                                    _ => (405, Bytes::new()),
                                };
                                Ok::<_, std::convert::Infallible>(
                                    Response::builder()
                                        .status(status)
                                        .body(Full::new(reply))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        base
    }

    const NO_RETRY: std::time::Duration = std::time::Duration::ZERO;

    fn chunk_key(sha: &str) -> String {
        format!("/checkpoints/t/chunks/{sha}")
    }

    const MANIFEST_KEY: &str = "/checkpoints/t/manifest.json";

    fn grant(base: &str, packed: &Packed) -> CheckpointGrant {
        CheckpointGrant {
            chunk_urls: packed
                .chunk_sizes()
                .into_keys()
                .map(|sha| {
                    let url = format!("{base}{}?signature=s", chunk_key(&sha));
                    (sha, url)
                })
                .collect(),
            reused: Default::default(),
            manifest_url: format!("{base}{MANIFEST_KEY}?signature=s"),
        }
    }

    fn restore_of(base: &str, manifest: &Manifest) -> Restore {
        Restore {
            name: "t".to_string(),
            manifest: manifest.clone(),
            chunk_urls: manifest
                .files
                .iter()
                .flat_map(|f| f.chunks.iter())
                .map(|sha| (sha.clone(), format!("{base}{}?signature=s", chunk_key(sha))))
                .collect(),
        }
    }

    /// Deterministic bytes that do not repeat within a chunk.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn write(root: &Path, rel: &str, data: &[u8], mode: u32) {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Every regular file under `root`: relative path → (bytes, mode).
    fn contents(root: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() {
                    let rel = path
                        .strip_prefix(root)
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .to_string();
                    out.insert(
                        rel,
                        (
                            std::fs::read(&path).unwrap(),
                            meta.permissions().mode() & 0o7777,
                        ),
                    );
                }
            }
        }
        out
    }

    /// Nested directories, an empty directory, an empty file, a 17 MiB file (three
    /// chunks), several modes and a symlink.
    fn sample_tree(root: &Path) {
        write(root, "a.txt", b"hello", 0o644);
        write(root, "run.sh", b"#!/bin/sh\necho hi\n", 0o755);
        write(root, "nested/empty.txt", b"", 0o640);
        write(root, "nested/deep/big.bin", &noise(17 << 20, 7), 0o600);
        std::fs::create_dir_all(root.join("empty_dir")).unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
    }

    fn client() -> reqwest::Client {
        reqwest::Client::new()
    }

    #[tokio::test]
    async fn round_trip_keeps_bytes_directories_and_modes() {
        let objects = Shared::default();
        let base = object_server(objects.clone()).await;
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("source");
        sample_tree(&source);

        let packed = scan(&source, 1_700_000_000_000).unwrap();
        let manifest = &packed.manifest;
        assert_eq!(manifest.version, 1);
        assert_eq!(manifest.created_at_ms, 1_700_000_000_000);
        assert_eq!(manifest.directories, ["empty_dir", "nested", "nested/deep"]);
        let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            ["a.txt", "nested/deep/big.bin", "nested/empty.txt", "run.sh"],
            "sorted, and the symlink skipped"
        );
        let big = &manifest.files[1];
        assert_eq!((big.size, big.chunks.len(), big.mode), (17 << 20, 3, 0o600));
        assert!(manifest.files[2].chunks.is_empty());
        assert_eq!(manifest.total_bytes, 5 + (17 << 20) + 18);
        let sizes = packed.chunk_sizes();
        assert_eq!(sizes[&big.chunks[0]], CHUNK_BYTES);
        assert_eq!(sizes[&big.chunks[2]], 1 << 20);

        let sent = upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
            .await
            .unwrap();
        assert_eq!(
            sent,
            manifest.total_bytes + packed.manifest_json().len() as u64
        );
        let stored: Manifest =
            serde_json::from_slice(&objects.lock().unwrap().stored[MANIFEST_KEY]).unwrap();
        assert_eq!(&stored, manifest);

        let target = temp.path().join("restored/here");
        let me = std::fs::metadata(temp.path()).unwrap();
        let (files, bytes) = restore(
            &client(),
            &restore_of(&base, &stored),
            &target,
            Some((me.uid(), me.gid())),
        )
        .await
        .unwrap();
        assert_eq!((files, bytes), (4, manifest.total_bytes));
        let mut expected = contents(&source);
        expected.remove("link");
        assert_eq!(contents(&target), expected);
        assert!(target.join("empty_dir").is_dir());
        assert_eq!(
            std::fs::metadata(target.join("run.sh"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o755
        );
    }

    #[tokio::test]
    async fn a_restore_is_started_over_after_network_failures_only() {
        let objects = Shared::default();
        let base = object_server(objects.clone()).await;
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("source");
        sample_tree(&source);
        let packed = scan(&source, 0).unwrap();
        upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
            .await
            .unwrap();
        let chunks = packed.chunk_sizes().len();
        let plan = restore_of(&base, &packed.manifest);
        let mut expected = contents(&source);
        expected.remove("link");
        let patience = std::time::Duration::from_secs(60);

        // The service answering 503 for a while (restarting): started over, restored whole.
        objects.lock().unwrap().refuse_gets = (3, 503);
        let target = temp.path().join("after-503");
        let (files, _) = restore_patiently(&client(), &plan, &target, None, patience)
            .await
            .unwrap();
        assert_eq!(files, 4);
        assert_eq!(contents(&target), expected);
        assert!(objects.lock().unwrap().gets > chunks, "it was retried");

        // Without patience left, the network's failure is returned as it is.
        objects.lock().unwrap().refuse_gets = (1, 503);
        let error = restore_patiently(
            &client(),
            &plan,
            &temp.path().join("impatient"),
            None,
            std::time::Duration::ZERO,
        )
        .await
        .unwrap_err();
        assert!(error.is_retryable(), "{error:?}");

        // A refusal (an expired URL) is not the network's: one pass, then the error.
        {
            let mut state = objects.lock().unwrap();
            state.refuse_gets = (1, 403);
            state.gets = 0;
        }
        let error = restore_patiently(
            &client(),
            &plan,
            &temp.path().join("refused"),
            None,
            patience,
        )
        .await
        .unwrap_err();
        assert!(!error.is_retryable(), "{error:?}");
        assert!(objects.lock().unwrap().gets <= chunks, "not started over");
    }

    #[tokio::test]
    async fn the_manifest_is_put_after_every_chunk() {
        let objects = Shared::default();
        let base = object_server(objects.clone()).await;
        let temp = tempfile::tempdir().unwrap();
        sample_tree(temp.path());
        for i in 0..10 {
            write(
                temp.path(),
                &format!("many/{i}"),
                &noise(1000, i + 100),
                0o644,
            );
        }
        let packed = scan(temp.path(), 0).unwrap();
        upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
            .await
            .unwrap();

        let puts = objects.lock().unwrap().puts.clone();
        assert_eq!(puts.len(), packed.chunk_sizes().len() + 1);
        assert_eq!(puts.last().map(String::as_str), Some(MANIFEST_KEY));
        assert!(puts[..puts.len() - 1]
            .iter()
            .all(|p| p.contains("/chunks/")));
    }

    #[tokio::test]
    async fn a_corrupted_chunk_fails_the_restore_and_leaves_no_partial_file() {
        let objects = Shared::default();
        let base = object_server(objects.clone()).await;
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("source");
        write(&source, "a.txt", b"first, intact", 0o644);
        write(&source, "b/big.bin", &noise(9 << 20, 3), 0o644);
        let packed = scan(&source, 0).unwrap();
        upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
            .await
            .unwrap();

        // The second chunk of big.bin: its first chunk is already written when it fails.
        let bad = packed.manifest.files[1].chunks[1].clone();
        objects
            .lock()
            .unwrap()
            .stored
            .get_mut(&chunk_key(&bad))
            .unwrap()[10] ^= 0x01;

        let target = temp.path().join("target");
        let error = restore(
            &client(),
            &restore_of(&base, &packed.manifest),
            &target,
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(error, CheckpointError::Corrupt(_)), "{error:?}");
        assert!(!error.is_retryable());
        assert!(error.to_string().contains(&bad), "{error}");
        assert!(!target.join("b/big.bin").exists());
        // Only the file completed before it; no temporary file is left behind.
        assert_eq!(contents(&target).into_keys().collect::<Vec<_>>(), ["a.txt"]);
    }

    #[tokio::test]
    async fn unsafe_paths_are_refused_before_anything_is_written() {
        let temp = tempfile::tempdir().unwrap();
        let sha = hex::encode(Sha256::digest(b"x"));
        let file = |path: &str| ManifestFile {
            path: path.to_string(),
            size: 1,
            mode: 0o644,
            chunks: vec![sha.clone()],
        };
        for bad in [
            "../x", "/etc/x", "a//b", "a/./b", "a\\b", "a\0b", "", "x/..",
        ] {
            for as_directory in [false, true] {
                let mut manifest = Manifest {
                    version: 1,
                    directories: vec!["fine".to_string()],
                    files: vec![file("ok.txt")],
                    ..Manifest::default()
                };
                if as_directory {
                    manifest.directories.push(bad.to_string());
                } else {
                    manifest.files.push(file(bad));
                }
                // Nothing listens there: the refusal comes before any request.
                let restore_this = restore_of("http://127.0.0.1:9", &manifest);
                let target = temp.path().join("target");
                let error = restore(&client(), &restore_this, &target, None)
                    .await
                    .unwrap_err();
                assert!(
                    matches!(error, CheckpointError::UnsafePath(_)),
                    "{bad:?}: {error:?}"
                );
                assert!(!target.exists(), "{bad:?}: nothing is written");
            }
        }
    }

    #[tokio::test]
    async fn a_symlink_in_the_target_is_not_written_through() {
        let objects = Shared::default();
        let base = object_server(objects.clone()).await;
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("source");
        write(&source, "nested/x", b"secret", 0o644);
        let packed = scan(&source, 0).unwrap();
        upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
            .await
            .unwrap();

        let target = temp.path().join("target");
        let outside = temp.path().join("outside");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("nested")).unwrap();
        let error = restore(
            &client(),
            &restore_of(&base, &packed.manifest),
            &target,
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(error, CheckpointError::UnsafePath(_)), "{error:?}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_refused_chunk_stops_the_upload_before_the_manifest() {
        let temp = tempfile::tempdir().unwrap();
        sample_tree(temp.path());
        let packed = scan(temp.path(), 0).unwrap();
        for (status, retryable) in [(500, true), (429, true), (403, false)] {
            let objects = Shared::default();
            objects.lock().unwrap().refuse_chunks = Some(status);
            let base = object_server(objects.clone()).await;
            let error = upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
                .await
                .unwrap_err();
            match &error {
                CheckpointError::Http { message, .. } => {
                    assert!(message.contains(&status.to_string()), "{message}");
                    assert!(message.contains("refused by the test"), "{message}");
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(error.is_retryable(), retryable, "{status}");
            assert!(
                !objects
                    .lock()
                    .unwrap()
                    .puts
                    .iter()
                    .any(|p| p == MANIFEST_KEY),
                "{status}: the manifest was never PUT"
            );
        }

        // Nothing listening: a connect error, worth retrying.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let error = upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
            .await
            .unwrap_err();
        assert!(error.is_retryable(), "{error:?}");
        assert!(!error.to_string().contains("signature"), "no URL: {error}");
    }

    #[tokio::test]
    async fn identical_chunks_are_uploaded_once() {
        let objects = Shared::default();
        let base = object_server(objects.clone()).await;
        let temp = tempfile::tempdir().unwrap();
        let source = temp.path().join("source");
        let same = noise(5000, 11);
        write(&source, "one", &same, 0o644);
        write(&source, "two/copy", &same, 0o600);
        // Two identical full chunks within one file, and a tail.
        let mut zeros = vec![0u8; (2 * CHUNK_BYTES) as usize];
        zeros.extend_from_slice(b"tail");
        write(&source, "zeros", &zeros, 0o644);

        let packed = scan(&source, 0).unwrap();
        let files = &packed.manifest.files;
        assert_eq!(files[0].chunks, files[1].chunks);
        assert_eq!(files[2].chunks[0], files[2].chunks[1]);
        assert_eq!(packed.chunk_sizes().len(), 3);

        let sent = upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
            .await
            .unwrap();
        assert_eq!(
            sent,
            5000 + CHUNK_BYTES + 4 + packed.manifest_json().len() as u64
        );
        let puts = objects.lock().unwrap().puts.clone();
        assert_eq!(
            puts.len(),
            4,
            "three distinct chunks and the manifest: {puts:?}"
        );

        let target = temp.path().join("target");
        restore(
            &client(),
            &restore_of(&base, &packed.manifest),
            &target,
            None,
        )
        .await
        .unwrap();
        assert_eq!(contents(&target), contents(&source));
    }

    #[tokio::test]
    async fn a_file_changed_after_the_scan_fails_the_upload() {
        let objects = Shared::default();
        let base = object_server(objects.clone()).await;
        let temp = tempfile::tempdir().unwrap();
        write(temp.path(), "state.db", b"before", 0o644);
        let packed = scan(temp.path(), 0).unwrap();
        write(temp.path(), "state.db", b"after!", 0o644);

        let error = upload(&client(), &packed, &grant(&base, &packed), NO_RETRY)
            .await
            .unwrap_err();
        assert!(matches!(error, CheckpointError::Corrupt(_)), "{error:?}");
        assert!(error.to_string().contains("state.db"), "{error}");
        assert!(objects.lock().unwrap().puts.is_empty());
    }

    #[tokio::test]
    async fn a_grant_missing_a_chunk_sends_nothing() {
        let objects = Shared::default();
        let base = object_server(objects.clone()).await;
        let temp = tempfile::tempdir().unwrap();
        write(temp.path(), "a", b"a", 0o644);
        write(temp.path(), "b", b"b", 0o644);
        let packed = scan(temp.path(), 0).unwrap();
        let mut partial = grant(&base, &packed);
        partial.chunk_urls.pop_first();
        let error = upload(&client(), &packed, &partial, NO_RETRY)
            .await
            .unwrap_err();
        assert!(matches!(error, CheckpointError::Corrupt(_)), "{error:?}");
        assert!(objects.lock().unwrap().puts.is_empty());
    }

    #[tokio::test]
    async fn an_upload_sends_a_put_again_after_a_failure_of_the_network_but_not_a_refusal() {
        let temp = tempfile::tempdir().unwrap();
        sample_tree(temp.path());
        let packed = scan(temp.path(), 0).unwrap();
        let puts = packed.chunks.len() + 1;

        // Three 503s (a store blinking): each is sent again, and the checkpoint completes.
        let objects = Shared::default();
        objects.lock().unwrap().refuse_puts = (3, 503);
        let base = object_server(objects.clone()).await;
        let patience = std::time::Duration::from_secs(30);
        upload(&client(), &packed, &grant(&base, &packed), patience)
            .await
            .unwrap();
        let state = objects.lock().unwrap();
        assert_eq!(state.put_attempts, puts + 3);
        assert!(state.stored.contains_key(MANIFEST_KEY));
        drop(state);
        let restored = tempfile::tempdir().unwrap();
        let manifest: Manifest = serde_json::from_slice(&packed.manifest_json()).unwrap();
        restore(
            &client(),
            &restore_of(&base, &manifest),
            restored.path(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(contents(temp.path()), contents(restored.path()));

        // A 403 is an answer, not a blink: no second try, whatever the patience.
        let objects = Shared::default();
        objects.lock().unwrap().refuse_puts = (usize::MAX, 403);
        let base = object_server(objects.clone()).await;
        let error = upload(&client(), &packed, &grant(&base, &packed), patience)
            .await
            .unwrap_err();
        assert!(!error.is_retryable(), "{error:?}");
        assert!(
            objects.lock().unwrap().put_attempts <= packed.chunks.len(),
            "each chunk PUT was tried once at most"
        );
    }
}
