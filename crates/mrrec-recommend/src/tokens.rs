//! Token ids of trajectory segments under the tokenizer of the policy
//! version that wrote them (the trainer trains on exactly these ids).

use mrrec_messages::Segment;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokenizers::Tokenizer;

/// Where a version's `tokenizer.json` lives.
pub type TokenizerLocator = Arc<dyn Fn(u32) -> Option<PathBuf> + Send + Sync>;

/// Tokenizers by policy version, loaded on first use.
#[derive(Clone)]
pub struct Tokenizers {
    locate: TokenizerLocator,
    loaded: Arc<Mutex<HashMap<u32, Option<Arc<Tokenizer>>>>>,
}

impl Tokenizers {
    pub fn new(locate: TokenizerLocator) -> Self {
        Self {
            locate,
            loaded: Arc::default(),
        }
    }

    /// No token ids (segments carry text only; the trainer tokenizes).
    pub fn none() -> Self {
        Self::new(Arc::new(|_| None))
    }

    /// Tokenizers of `policy.dir/vNNNN/`, with `model_dir` (when set) for its own version.
    pub fn from_dirs(model_dir: Option<PathBuf>, policy_dir: PathBuf) -> Self {
        Self::new(Arc::new(move |version| {
            let registry = mrrec_policy::PolicyRegistry::new(&policy_dir).path(version);
            let candidates = [
                model_dir.clone().filter(|d| {
                    mrrec_policy::check::version_from_dir_name(d).unwrap_or(0) == version
                }),
                Some(registry),
            ];
            candidates
                .into_iter()
                .flatten()
                .map(|d| d.join("tokenizer.json"))
                .find(|p| p.is_file())
        }))
    }

    fn get(&self, version: u32) -> Option<Arc<Tokenizer>> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        loaded
            .entry(version)
            .or_insert_with(|| {
                let path = (self.locate)(version)?;
                match Tokenizer::from_file(&path) {
                    Ok(t) => Some(Arc::new(t)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "tokenizer does not load; trajectories carry text only");
                        None
                    }
                }
            })
            .clone()
    }

    /// Sets each segment's token ids (left empty when the tokenizer is unknown).
    pub fn fill_tokens(&self, version: u32, segments: &mut [Segment]) {
        let Some(tokenizer) = self.get(version) else {
            return;
        };
        for segment in segments {
            match tokenizer.encode(segment.text.as_str(), false) {
                Ok(encoding) => segment.tokens = encoding.get_ids().to_vec(),
                Err(e) => {
                    tracing::warn!(error = %e, "segment does not tokenize");
                    segment.tokens.clear();
                }
            }
        }
    }
}
