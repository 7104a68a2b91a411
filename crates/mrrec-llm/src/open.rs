//! The policy of `llm.backend`: the embedded engine on the resolved policy
//! version, the http server, or the rule; and, for the embedded engine,
//! what follows `mrrec.policy` for it (an http server follows on its own;
//! the rule has no versions).

use crate::{EmbeddedLlm, EngineOptions, HttpLlm, Llm, LlmError, PolicyTarget, RuleLlm};
use mrrec_config::{Config, LlmBackend};
use std::path::PathBuf;
use std::sync::Arc;

/// Why the configured policy could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenLlmError {
    #[error("finding the policy to serve: {0}")]
    PolicyDir(#[from] mrrec_policy::PolicyError),
    #[error("opening the policy in {}: {source}", dir.display())]
    Policy { dir: PathBuf, source: LlmError },
    #[error("the policy backend: {0}")]
    Backend(#[from] LlmError),
}

/// The configured policy, and what follows `mrrec.policy` for it.
pub async fn open_configured(
    config: &Config,
) -> Result<(Arc<dyn Llm>, Option<Arc<dyn PolicyTarget>>), OpenLlmError> {
    match config.llm.backend {
        LlmBackend::Embedded => {
            let dir = mrrec_policy::registry::resolve_model_dir(
                &config.llm.model_dir,
                &config.policy.dir,
            )?;
            let llm = Arc::new(
                EmbeddedLlm::open(&dir, EngineOptions::from_config(config))
                    .await
                    .map_err(|source| OpenLlmError::Policy {
                        dir: dir.clone(),
                        source,
                    })?,
            );
            Ok((llm.clone(), Some(llm)))
        }
        LlmBackend::Http => Ok((
            Arc::new(HttpLlm::new(&config.llm.url)?.with_api_key(&config.llm.api_key)),
            None,
        )),
        LlmBackend::Rule => Ok((Arc::new(RuleLlm::default()), None)),
    }
}
