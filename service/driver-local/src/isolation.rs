//! What a local workload can reach. A workload is a tenant's code running on the
//! service's machine, so it gets nothing of the service's by default:
//!
//! - a cleared environment: its spec's `env`, `PORT`, `TCP_PORT`, the instance marker,
//!   and a default `PATH` and `HOME` (its working directory);
//! - its own working directory under [`LocalOptions::work_root`], outside the data
//!   directory, mode 0700, removed when the instance ends;
//! - when the service runs as root, its own unprivileged uid and gid (from
//!   [`RunAs::PerWorkload`]'s range, never shared by two live instances), with no
//!   supplementary groups and `no_new_privs`, so it can read neither the service's
//!   files (the data directory is 0700) nor another workload's, nor signal them.
//!
//! Files the driver writes itself (instance records, logs) are 0600.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `10.213.0.0/16`: the addresses of namespaced instances unless configured.
pub const DEFAULT_SUBNET: crate::network::Subnet = crate::network::Subnet::DEFAULT;

/// The `PATH` a workload gets unless its spec sets one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Whose identity workloads run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// The service's own user: no isolation from the service or each other. For a
    /// service that does not run as root (it cannot switch users), and for tests whose
    /// workloads must read the test's private files.
    Service,
    /// One user for every workload.
    User { uid: u32, gid: u32 },
    /// A uid (and the same gid) of its own for every live instance, from this range.
    /// Needs no passwd entries: the kernel accepts any uid from root.
    PerWorkload { first: u32, last: u32 },
}

/// How the driver isolates workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// Where each instance's working directory is made (`<work_root>/<instance id>`).
    pub work_root: PathBuf,
    pub run_as: RunAs,
    /// The agent binary each instance boots, as a cloud instance would through its
    /// user-data. `None`: instances run their command directly (no checkpoints).
    pub agent: Option<PathBuf>,
    /// Offers with no spot capacity: a spot create for one fails as a capacity error.
    pub no_spot_capacity: Vec<crate::capacity::OfferPattern>,
    /// Where instances get their addresses: a namespace each, or the loopback.
    pub network: crate::network::Network,
}

impl LocalOptions {
    /// Per-workload users from 200000–299999 when running as root, else the service's
    /// user; working directories under the system temporary directory.
    pub fn defaults() -> LocalOptions {
        LocalOptions {
            work_root: std::env::temp_dir().join("computearbitrage-workloads"),
            run_as: if is_root() {
                RunAs::PerWorkload {
                    first: 200_000,
                    last: 299_999,
                }
            } else {
                RunAs::Service
            },
            agent: None,
            no_spot_capacity: Vec::new(),
            network: if crate::network::namespaces_available() {
                crate::network::Network::Namespace(DEFAULT_SUBNET)
            } else {
                crate::network::Network::Loopback
            },
        }
    }

    /// No isolation of identity (files and environment are still the workload's own),
    /// under `work_root`: for tests.
    pub fn same_user(work_root: &Path) -> LocalOptions {
        LocalOptions {
            work_root: work_root.to_path_buf(),
            run_as: RunAs::Service,
            agent: None,
            no_spot_capacity: Vec::new(),
            network: crate::network::Network::Loopback,
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of a user name, from the system's user database.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let c_name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns null or a pointer to static storage, read at once; the
    // service calls it once at start, before any other thread uses the database.
    unsafe {
        let entry = libc::getpwnam(c_name.as_ptr());
        if entry.is_null() {
            None
        } else {
            Some(((*entry).pw_uid, (*entry).pw_gid))
        }
    }
}

/// Creates `path` (and parents) with `mode`, and sets `mode` if it already existed.
pub fn private_dir(path: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Writes `contents` to `path` atomically (through `<path>.tmp`), mode 0600.
pub fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    // A file left by an older version keeps its mode on open; set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

/// Creates (truncating) a file only the service can read.
pub fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Makes an instance's working directory, owned by `owner` when given.
pub fn work_dir(
    root: &Path,
    instance_id: &str,
    owner: Option<(u32, u32)>,
) -> std::io::Result<PathBuf> {
    // Others may enter the root to reach their own directory, but not list it.
    private_dir(root, 0o711)?;
    let dir = root.join(instance_id);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    private_dir(&dir, 0o700)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_files_and_directories_get_their_modes_even_when_they_existed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("record.json");
        std::fs::write(&file, "old").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&file, b"new").unwrap();
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "new");
        let log = dir.path().join("x.log");
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        create_private(&log).unwrap();
        assert_eq!(mode(&log), 0o600);
        let sub = dir.path().join("a/b");
        private_dir(&sub, 0o700).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&sub, 0o700).unwrap();
        assert_eq!(mode(&sub), 0o700);
    }

    #[test]
    fn a_work_dir_is_private_and_starts_empty() {
        let root = tempfile::tempdir().unwrap();
        let dir = work_dir(root.path(), "local-1", None).unwrap();
        std::fs::write(dir.join("left-over"), "x").unwrap();
        let again = work_dir(root.path(), "local-1", None).unwrap();
        assert_eq!(std::fs::read_dir(&again).unwrap().count(), 0);
        assert_eq!(mode(&again), 0o700);
        assert_eq!(mode(root.path()), 0o711);
    }
}
