//! Policy model directories. Owns what a policy *is* on disk — the files
//! mistral.rs loads, the checks that catch a broken directory at start-up (with
//! the file and the fix in the message), the tiny Llama `mrrec model init`
//! builds, the agent protocol's fixed text and chat template, reading a turn
//! of it and escaping user text into it (both fuzzed: fuzz/), and the
//! versioned registry `policy.dir/vNNNN/`. Serving the model is `mrrec-llm`'s job.

pub mod check;
pub mod escape;
pub mod init;
pub mod protocol;
pub mod registry;
pub mod turn;

pub use check::{check_model_dir, ModelInfo};
pub use init::{init_model, InitReport, ModelSpec};
pub use registry::{PolicyRegistry, PolicyVersion};

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Weights of a policy directory (mistral.rs finds `*.safetensors`; ours is one file).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// mrrec's own metadata about a policy directory.
pub const META_FILE: &str = "policy.json";

/// Why a policy directory could not be built, read or published.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file of a model directory is missing or unusable.
    #[error("{path}: {problem}. Fix: {fix}")]
    BadFile {
        path: PathBuf,
        problem: String,
        fix: String,
    },
    #[error("invalid model sizes: {}", .0.join("; "))]
    Spec(Vec<String>),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("weights: {0}")]
    Weights(String),
    #[error("{0} already exists and is not empty; choose another --out or remove it")]
    NotEmpty(PathBuf),
    #[error("policy registry {dir}: {problem}")]
    Registry { dir: PathBuf, problem: String },
}

impl PolicyError {
    pub fn io(path: &Path, source: impl Into<std::io::Error>) -> Self {
        PolicyError::Io {
            path: path.to_owned(),
            source: source.into(),
        }
    }

    pub(crate) fn bad_file(
        path: &Path,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        PolicyError::BadFile {
            path: path.to_owned(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

/// `policy.json`: where a version came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyMeta {
    /// The registry version, when the directory is one (`vNNNN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    /// How it was made: `init`, `sft`, `grpo`, …
    pub origin: String,
    pub created_ts: i64,
    #[serde(default)]
    pub metrics: std::collections::BTreeMap<String, f64>,
    /// The trainer's round that made this version: every buffered reward at
    /// or below these `topic:partition` offsets went into it. A trainer that
    /// restarts (or retries) after publishing finds its round done here and
    /// re-announces instead of training the same rewards again.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub trained_on: std::collections::BTreeMap<String, i64>,
}

impl PolicyMeta {
    /// Metadata of a version made by `origin` now, with no metrics yet.
    pub fn new(version: Option<u32>, parent: Option<u32>, origin: &str) -> Self {
        Self {
            version,
            parent,
            origin: origin.to_owned(),
            created_ts: now_ms(),
            metrics: Default::default(),
            trained_on: Default::default(),
        }
    }
}

/// Creates `dir` if needed and fails if it holds anything: a policy is never overwritten.
pub fn ensure_empty_dir(dir: &Path) -> Result<(), PolicyError> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| PolicyError::io(dir, e))?;
        if entries.next().is_some() {
            return Err(PolicyError::NotEmpty(dir.to_owned()));
        }
    } else {
        std::fs::create_dir_all(dir).map_err(|e| PolicyError::io(dir, e))?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
