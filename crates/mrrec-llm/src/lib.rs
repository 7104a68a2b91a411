//! The policy LLM behind one trait. Owns how the recommender talks to a model:
//! [`Llm`] (chat with a Lark grammar, sampling, n samples, token counts,
//! timing), its backends — [`EmbeddedLlm`] (mistral.rs in process, with
//! versioned hot swap), [`HttpLlm`] (an OpenAI-compatible mistral.rs
//! server) and [`RuleLlm`] (the `rule` policy: no model) — the follower
//! that applies `mrrec.policy` announcements, the policy of `llm.backend`
//! ([`open_configured`]), and `mrrec llm serve` ([`serve`]).

pub mod bench;
pub mod conformance;
pub mod embedded;
pub mod events;
pub mod follow;
pub mod http;
mod open;
pub mod rule;
pub mod serve;

pub use embedded::{EmbeddedLlm, EngineOptions};
pub use events::describe_metrics;
pub use follow::{follow_policy_topic, trusted_dir, FollowError, PolicyTarget};
pub use open::{open_configured, OpenLlmError};

pub use http::HttpLlm;
pub use mrrec_policy::protocol::{ChatMessage, Role};
pub use rule::RuleLlm;

use async_trait::async_trait;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How to sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    /// 0 means greedy (always the most likely token).
    pub temperature: f64,
    /// Nucleus sampling; 1 disables it.
    pub top_p: f64,
    /// Most tokens per completion.
    pub max_tokens: usize,
}

impl Sampling {
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            max_tokens,
        }
    }
}

/// One call: a chat, an optional Lark grammar the completion must match, and
/// `n` independent samples.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub messages: Vec<ChatMessage>,
    pub grammar: Option<String>,
    pub sampling: Sampling,
    pub n: usize,
}

/// One sampled completion.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    /// `stop` (EOS or grammar end), `length` (max_tokens), …, as the engine says.
    pub finish_reason: String,
}

/// The answer to a [`GenerationRequest`].
#[derive(Debug, Clone)]
pub struct Generation {
    pub completions: Vec<Completion>,
    /// Registry version of the policy that produced every completion
    /// (0 for a model directory outside the registry).
    pub policy_version: u32,
    /// The engine's name for the model (its directory).
    pub model: String,
    pub prompt_tokens: usize,
    /// Tokens over all `n` completions.
    pub completion_tokens: usize,
    /// Wall time of the call as the caller saw it.
    pub elapsed: Duration,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The model directory failed its start-up checks.
    #[error(transparent)]
    Model(#[from] mrrec_policy::PolicyError),
    /// mistral.rs could not load a directory that passed the checks.
    #[error("loading {dir}: {message}")]
    Load { dir: PathBuf, message: String },
    /// The engine failed this request (the stage goes on).
    #[error("engine: {0}")]
    Engine(String),
    /// The request itself is unusable (bad grammar, empty chat, …).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The server answered with an error status.
    #[error("LLM server answered {status}: {body}")]
    Status { status: u16, body: String },
    /// The server could not be reached or its answer not read.
    #[error("LLM server unreachable: {0}")]
    Transport(String),
}

impl LlmError {
    /// Worth trying again later (server down or overloaded); a poison request is not.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Transport(_) => true,
            LlmError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A policy LLM.
#[async_trait]
pub trait Llm: Send + Sync {
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError>;
    /// `embedded`, `http` or `rule`.
    fn backend(&self) -> &'static str;
    /// The policy version new calls go to, when the backend knows it without
    /// a call (for answers that never reached the LLM).
    fn serving_version(&self) -> Option<u32> {
        None
    }
}

/// Checks a request before it reaches an engine.
pub(crate) fn validate_request(request: &GenerationRequest) -> Result<(), LlmError> {
    if request.messages.is_empty() {
        return Err(LlmError::BadRequest("no messages".into()));
    }
    if request.n == 0 {
        return Err(LlmError::BadRequest("n must be at least 1".into()));
    }
    if request.sampling.max_tokens == 0 {
        return Err(LlmError::BadRequest("max_tokens must be at least 1".into()));
    }
    let s = &request.sampling;
    if !(s.temperature.is_finite() && s.temperature >= 0.0) {
        return Err(LlmError::BadRequest(format!(
            "temperature {} must be a number ≥ 0",
            s.temperature
        )));
    }
    if !(s.top_p > 0.0 && s.top_p <= 1.0) {
        return Err(LlmError::BadRequest(format!(
            "top_p {} must be in (0, 1]",
            s.top_p
        )));
    }
    Ok(())
}

/// The registry version named by an engine's model name (a path ending in `vNNNN`).
pub fn version_from_model_name(model: &str) -> u32 {
    let trimmed = model.trim_end_matches(['/', '\\']);
    let last = trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed);
    mrrec_policy::check::version_from_dir_name(std::path::Path::new(last)).unwrap_or(0)
}

/// The backend `config` asks for: in-process mistral.rs on the policy from
/// `llm.model_dir` / `policy.dir`, the server at `llm.url`, or the rule.
pub async fn from_config(config: &mrrec_config::Config) -> Result<Arc<dyn Llm>, LlmError> {
    match config.llm.backend {
        mrrec_config::LlmBackend::Embedded => {
            let dir = mrrec_policy::registry::resolve_model_dir(
                &config.llm.model_dir,
                &config.policy.dir,
            )?;
            Ok(Arc::new(
                EmbeddedLlm::open(&dir, EngineOptions::from_config(config)).await?,
            ))
        }
        mrrec_config::LlmBackend::Http => Ok(Arc::new(
            HttpLlm::new(&config.llm.url)?.with_api_key(&config.llm.api_key),
        )),
        mrrec_config::LlmBackend::Rule => Ok(Arc::new(RuleLlm::default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_the_directory_name() {
        assert_eq!(version_from_model_name("/var/policy/v0007"), 7);
        assert_eq!(version_from_model_name("/var/policy/v0012/"), 12);
        assert_eq!(version_from_model_name("models/llama"), 0);
        assert_eq!(version_from_model_name("v3"), 3);
    }

    #[test]
    fn bad_requests_are_refused_before_the_engine() {
        let ok = GenerationRequest {
            messages: vec![ChatMessage::user("hi")],
            grammar: None,
            sampling: Sampling::greedy(8),
            n: 1,
        };
        validate_request(&ok).unwrap();
        for bad in [
            GenerationRequest {
                messages: vec![],
                ..ok.clone()
            },
            GenerationRequest { n: 0, ..ok.clone() },
            GenerationRequest {
                sampling: Sampling {
                    temperature: f64::NAN,
                    ..Sampling::greedy(8)
                },
                ..ok.clone()
            },
            GenerationRequest {
                sampling: Sampling {
                    top_p: 0.0,
                    ..Sampling::greedy(8)
                },
                ..ok.clone()
            },
        ] {
            assert!(matches!(
                validate_request(&bad),
                Err(LlmError::BadRequest(_))
            ));
        }
    }
}
