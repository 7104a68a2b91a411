//! The policy registry: versions live in `policy.dir/vNNNN/`, are written
//! under a staging name and renamed into place (so a reader never sees half a
//! version), and are never overwritten.

use crate::check::version_from_dir_name;
use crate::PolicyError;
use mrrec_messages::PolicyAnnouncement;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One published version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVersion {
    pub version: u32,
    pub path: PathBuf,
}

/// The versions under one directory.
#[derive(Debug, Clone)]
pub struct PolicyRegistry {
    dir: PathBuf,
}

impl PolicyRegistry {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of `version` (whether or not it exists).
    pub fn path(&self, version: u32) -> PathBuf {
        self.dir.join(format!("v{version:04}"))
    }

    /// Complete versions (a `vNNNN` directory holding a config.json), oldest first.
    pub fn versions(&self) -> Result<Vec<PolicyVersion>, PolicyError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let mut versions: Vec<PolicyVersion> = std::fs::read_dir(&self.dir)
            .map_err(|e| PolicyError::io(&self.dir, e))?
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let version = version_from_dir_name(&path)?;
                path.join("config.json")
                    .is_file()
                    .then_some(PolicyVersion { version, path })
            })
            .collect();
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    pub fn latest(&self) -> Result<Option<PolicyVersion>, PolicyError> {
        Ok(self.versions()?.pop())
    }

    /// The number the next published version gets (0 for an empty registry).
    pub fn next_version(&self) -> Result<u32, PolicyError> {
        Ok(self.latest()?.map_or(0, |v| v.version + 1))
    }

    /// A fresh, empty staging directory to build `version` in (inside the
    /// registry, so that publishing is a rename on one file system).
    pub fn staging_dir(&self, version: u32) -> Result<PathBuf, PolicyError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| PolicyError::io(&self.dir, e))?;
        let path = self.dir.join(format!(
            ".staging-v{version:04}-{}-{}",
            std::process::id(),
            crate::now_ms()
        ));
        crate::ensure_empty_dir(&path)?;
        Ok(path)
    }

    /// Moves a finished staging directory into place as `version`. Fails,
    /// leaving everything as it was, if that version already exists.
    pub fn publish(&self, staging: &Path, version: u32) -> Result<PolicyVersion, PolicyError> {
        let path = self.path(version);
        if path.exists() {
            return Err(PolicyError::Registry {
                dir: self.dir.clone(),
                problem: format!("version {version} already exists at {}", path.display()),
            });
        }
        std::fs::rename(staging, &path).map_err(|e| PolicyError::io(&path, e))?;
        Ok(PolicyVersion { version, path })
    }

    /// The metadata (`policy.json`) of a published version; `None` when it
    /// has none.
    pub fn meta(&self, version: &PolicyVersion) -> Result<Option<crate::PolicyMeta>, PolicyError> {
        Ok(crate::check_model_dir(&version.path)?.meta)
    }

    /// The `mrrec.policy` message announcing `version`.
    pub fn announcement(
        &self,
        version: &PolicyVersion,
        parent: Option<u32>,
        metrics: BTreeMap<String, f64>,
    ) -> PolicyAnnouncement {
        PolicyAnnouncement {
            version: version.version,
            path: version.path.display().to_string(),
            parent,
            metrics,
            ts: crate::now_ms(),
        }
    }
}

/// The directory a stage serves at start-up: `llm.model_dir` when set,
/// otherwise the newest version under `policy.dir`.
pub fn resolve_model_dir(model_dir: &str, policy_dir: &Path) -> Result<PathBuf, PolicyError> {
    if !model_dir.trim().is_empty() {
        return Ok(PathBuf::from(model_dir));
    }
    let registry = PolicyRegistry::new(policy_dir);
    registry
        .latest()?
        .map(|v| v.path)
        .ok_or_else(|| PolicyError::Registry {
            dir: policy_dir.to_owned(),
            problem: format!(
                "no policy version found; create the first with `mrrec model init --out {}` or set llm.model_dir",
                registry.path(0).display()
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_published_once_and_found_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let registry = PolicyRegistry::new(tmp.path().join("policy"));
        assert_eq!(registry.next_version().unwrap(), 0);
        for version in [0, 1, 2] {
            let staging = registry.staging_dir(version).unwrap();
            std::fs::write(staging.join("config.json"), "{}").unwrap();
            registry.publish(&staging, version).unwrap();
        }
        // An unfinished staging directory and a stray file are not versions.
        registry.staging_dir(3).unwrap();
        std::fs::write(registry.dir().join("notes.txt"), "x").unwrap();
        let found: Vec<u32> = registry
            .versions()
            .unwrap()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(found, vec![0, 1, 2]);
        assert_eq!(registry.next_version().unwrap(), 3);

        let staging = registry.staging_dir(1).unwrap();
        let err = registry.publish(&staging, 1).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        assert!(
            staging.exists(),
            "a refused publish leaves the staging directory"
        );
    }

    #[test]
    fn an_empty_registry_says_how_to_create_a_policy() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve_model_dir("", tmp.path()).unwrap_err().to_string();
        assert!(err.contains("mrrec model init --out"), "{err}");
        assert_eq!(
            resolve_model_dir("/models/x", tmp.path()).unwrap(),
            PathBuf::from("/models/x")
        );
    }
}
