//! Object keys inside a workload's namespace: `workloads/{id}/{area}/{path}`.
//!
//! Everything a workload (or its agent, or a signed URL) names is checked here before
//! it reaches a backend: a key is relative, has no empty, `.` or `..` segment, no
//! backslash, `#` and no control character, so no spelling escapes its namespace.

use crate::error::StorageError;
use std::fmt;

/// Longest key path (within an area) accepted; S3 allows 1024 bytes for the whole key.
pub const MAX_PATH_BYTES: usize = 900;

/// The three areas of a workload's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    /// Application state the workload keeps between runs.
    State,
    /// Complete snapshots: `checkpoints/{ts}/…` with `manifest.json` written last.
    Checkpoints,
    /// Outputs and logs, for the user to list and download.
    Artifacts,
}

impl Area {
    pub const ALL: [Area; 3] = [Area::State, Area::Checkpoints, Area::Artifacts];

    pub fn as_str(self) -> &'static str {
        match self {
            Area::State => "state",
            Area::Checkpoints => "checkpoints",
            Area::Artifacts => "artifacts",
        }
    }

    pub fn parse(text: &str) -> Option<Area> {
        Area::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// A workload id as it may appear in a key: the service's `wl-<hex>` shape, or any
/// DNS-label-safe id (lowercase letters, digits, `-`).
fn check_workload_id(id: &str) -> Result<(), StorageError> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(StorageError::invalid_key(
            id,
            "a workload id is lowercase letters, digits and `-`",
        ))
    }
}

/// Checks a path within an area (`results/out.csv`, `1733100000/manifest.json`).
pub fn check_path(path: &str) -> Result<(), StorageError> {
    if path.is_empty() {
        return Err(StorageError::invalid_key(path, "the path is empty"));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(StorageError::invalid_key(
            &path.chars().take(40).collect::<String>(),
            format!("the path is longer than {MAX_PATH_BYTES} bytes"),
        ));
    }
    if path.starts_with('/') {
        return Err(StorageError::invalid_key(
            path,
            "the path must be relative (no leading `/`)",
        ));
    }
    if path.contains('#') {
        // The local backend stages uploads as `name#N`; no backend gets a key it cannot hold.
        return Err(StorageError::invalid_key(
            path,
            "the path may not contain `#`",
        ));
    }
    if let Some(c) = path.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(StorageError::invalid_key(
            path,
            format!(
                "the path contains {c:?}; use `/` to separate segments and no control characters"
            ),
        ));
    }
    for segment in path.split('/') {
        match segment {
            "" => {
                return Err(StorageError::invalid_key(
                    path,
                    "the path has an empty segment (`//` or a trailing `/`)",
                ))
            }
            "." | ".." => {
                return Err(StorageError::invalid_key(
                    path,
                    "the path may not contain `.` or `..` segments",
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// A checked key: one object of one workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    workload_id: String,
    area: Area,
    path: String,
}

impl ObjectKey {
    pub fn new(workload_id: &str, area: Area, path: &str) -> Result<ObjectKey, StorageError> {
        check_workload_id(workload_id)?;
        check_path(path)?;
        Ok(ObjectKey {
            workload_id: workload_id.to_string(),
            area,
            path: path.to_string(),
        })
    }

    /// Parses a full key (`workloads/{id}/{area}/{path}`), as a signed URL carries it.
    pub fn parse(full: &str) -> Result<ObjectKey, StorageError> {
        let mut parts = full.splitn(4, '/');
        let (Some("workloads"), Some(id), Some(area), Some(path)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(StorageError::invalid_key(
                full,
                "a key is `workloads/{id}/{state|checkpoints|artifacts}/{path}`",
            ));
        };
        let area = Area::parse(area).ok_or_else(|| {
            StorageError::invalid_key(
                full,
                "the area is one of `state`, `checkpoints`, `artifacts`",
            )
        })?;
        ObjectKey::new(id, area, path)
    }

    /// A key relative to a workload's namespace (`{state|checkpoints|artifacts}/{path}`),
    /// as tenants and workloads name objects: the workload comes from the caller, so no
    /// spelling reaches another's.
    pub fn in_namespace(workload_id: &str, relative: &str) -> Result<ObjectKey, StorageError> {
        let (area, path) = relative.split_once('/').unwrap_or((relative, ""));
        let area = Area::parse(area).ok_or_else(|| {
            StorageError::invalid_key(
                relative,
                "a key starts with `state/`, `checkpoints/` or `artifacts/`",
            )
        })?;
        ObjectKey::new(workload_id, area, path)
    }

    /// The key relative to its workload's namespace, the inverse of [`Self::in_namespace`].
    pub fn relative(&self) -> String {
        format!("{}/{}", self.area.as_str(), self.path)
    }

    pub fn workload_id(&self) -> &str {
        &self.workload_id
    }

    pub fn area(&self) -> Area {
        self.area
    }

    /// The path within the area.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workloads/{}/{}/{}",
            self.workload_id,
            self.area.as_str(),
            self.path
        )
    }
}

/// A checked prefix: a workload's namespace, one area of it, or a directory in an area.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix {
    workload_id: String,
    area: Option<Area>,
    /// A directory within the area (no trailing `/`), when narrower than the area.
    dir: Option<String>,
}

impl Prefix {
    /// Everything of one workload.
    pub fn workload(workload_id: &str) -> Result<Prefix, StorageError> {
        check_workload_id(workload_id)?;
        Ok(Prefix {
            workload_id: workload_id.into(),
            area: None,
            dir: None,
        })
    }

    /// One area, or a directory in it (`dir` without a trailing `/`).
    pub fn area(workload_id: &str, area: Area, dir: Option<&str>) -> Result<Prefix, StorageError> {
        check_workload_id(workload_id)?;
        if let Some(dir) = dir {
            check_path(dir)?;
        }
        Ok(Prefix {
            workload_id: workload_id.into(),
            area: Some(area),
            dir: dir.map(str::to_string),
        })
    }

    /// Parses a full prefix (`workloads/{id}/`, `workloads/{id}/{area}/`, `…/{dir}/`).
    pub fn parse(full: &str) -> Result<Prefix, StorageError> {
        let Some(trimmed) = full.strip_suffix('/') else {
            return Err(StorageError::invalid_key(full, "a prefix ends with `/`"));
        };
        let mut parts = trimmed.splitn(4, '/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("workloads"), Some(id), None, None) => Prefix::workload(id),
            (Some("workloads"), Some(id), Some(area), dir) => {
                let area = Area::parse(area).ok_or_else(|| {
                    StorageError::invalid_key(
                        full,
                        "the area is one of `state`, `checkpoints`, `artifacts`",
                    )
                })?;
                Prefix::area(id, area, dir)
            }
            _ => Err(StorageError::invalid_key(
                full,
                "a prefix is `workloads/{id}/` or `workloads/{id}/{area}/…/`",
            )),
        }
    }

    /// A prefix relative to a workload's namespace (`""` is all of it, else `{area}/`
    /// or `{area}/{dir}/`).
    pub fn in_namespace(workload_id: &str, relative: &str) -> Result<Prefix, StorageError> {
        if relative.is_empty() {
            return Prefix::workload(workload_id);
        }
        Prefix::parse(&format!("workloads/{workload_id}/{relative}"))
    }

    pub fn workload_id(&self) -> &str {
        &self.workload_id
    }

    /// The area, when the prefix is narrower than the whole namespace.
    pub fn area_of(&self) -> Option<Area> {
        self.area
    }

    /// Whether `key` lies under this prefix.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        key.workload_id == self.workload_id
            && self.area.is_none_or(|a| a == key.area)
            && self.dir.as_deref().is_none_or(|d| {
                key.path
                    .strip_prefix(d)
                    .is_some_and(|rest| rest.starts_with('/'))
            })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workloads/{}/", self.workload_id)?;
        if let Some(area) = self.area {
            write!(f, "{}/", area.as_str())?;
        }
        if let Some(dir) = &self.dir {
            write!(f, "{dir}/")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_their_full_form() {
        let key = ObjectKey::new("wl-0a1b", Area::Checkpoints, "1733100000/manifest.json").unwrap();
        assert_eq!(
            key.to_string(),
            "workloads/wl-0a1b/checkpoints/1733100000/manifest.json"
        );
        assert_eq!(ObjectKey::parse(&key.to_string()).unwrap(), key);
    }

    #[test]
    fn no_spelling_escapes_the_namespace() {
        for bad in [
            "../x",
            "a/../b",
            "a/./b",
            "/etc/passwd",
            "a//b",
            "a/",
            "",
            "a\\..\\b",
            "a\0b",
            "a\nb",
            "..",
            "chunk#1",
        ] {
            let err = ObjectKey::new("wl-1", Area::State, bad).unwrap_err();
            assert!(
                matches!(err, StorageError::InvalidKey { .. }),
                "{bad:?} gave {err}"
            );
        }
        for bad in [
            "workloads/wl-1/secrets/x",
            "workloads/../state/x",
            "workloads/WL/state/x",
            "other/wl-1/state/x",
            "workloads/wl-1/state",
        ] {
            assert!(ObjectKey::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(ObjectKey::new("wl-1", Area::State, &"a".repeat(MAX_PATH_BYTES + 1)).is_err());
    }

    #[test]
    fn a_prefix_contains_only_what_lies_under_it() {
        let dir = Prefix::area("wl-1", Area::Checkpoints, Some("100")).unwrap();
        assert_eq!(dir.to_string(), "workloads/wl-1/checkpoints/100/");
        assert!(dir.contains(&ObjectKey::new("wl-1", Area::Checkpoints, "100/chunk-0").unwrap()));
        assert!(!dir.contains(&ObjectKey::new("wl-1", Area::Checkpoints, "1000/chunk-0").unwrap()));
        assert!(!dir.contains(&ObjectKey::new("wl-2", Area::Checkpoints, "100/chunk-0").unwrap()));
        assert!(!dir.contains(&ObjectKey::new("wl-1", Area::State, "100/chunk-0").unwrap()));
        let all = Prefix::workload("wl-1").unwrap();
        assert!(all.contains(&ObjectKey::new("wl-1", Area::Artifacts, "logs/app.log").unwrap()));
        assert!(!all.contains(&ObjectKey::new("wl-10", Area::Artifacts, "logs/app.log").unwrap()));
        for text in [
            "workloads/wl-1/",
            "workloads/wl-1/state/",
            "workloads/wl-1/checkpoints/100/",
        ] {
            assert_eq!(Prefix::parse(text).unwrap().to_string(), text);
        }
        assert!(Prefix::parse("workloads/wl-1").is_err());
        assert!(Prefix::parse("workloads/wl-1/state/../").is_err());
    }

    #[test]
    fn keys_relative_to_a_namespace_are_checked_and_round_trip() {
        let key = ObjectKey::in_namespace("wl-1", "artifacts/results/out.csv").unwrap();
        assert_eq!(key.to_string(), "workloads/wl-1/artifacts/results/out.csv");
        assert_eq!(key.relative(), "artifacts/results/out.csv");
        for bad in [
            "secrets/x",
            "artifacts",
            "artifacts/",
            "artifacts/../../wl-2/state/x",
            "/state/x",
        ] {
            assert!(ObjectKey::in_namespace("wl-1", bad).is_err(), "{bad}");
        }
        assert_eq!(
            Prefix::in_namespace("wl-1", "").unwrap().to_string(),
            "workloads/wl-1/"
        );
        assert_eq!(
            Prefix::in_namespace("wl-1", "checkpoints/100/")
                .unwrap()
                .to_string(),
            "workloads/wl-1/checkpoints/100/"
        );
        assert!(Prefix::in_namespace("wl-1", "checkpoints").is_err());
        assert!(Prefix::in_namespace("wl-1", "../wl-2/").is_err());
    }
}
