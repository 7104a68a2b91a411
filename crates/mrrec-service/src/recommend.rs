//! The recommend stage running in this process: the configured policy,
//! the stage over the request topics, and the follower that hot-swaps the
//! policy when `mrrec.policy` announces a new version.

use crate::ServiceError;
use mrrec_config::{Config, LlmBackend};
use mrrec_llm::{EmbeddedLlm, EngineOptions, HttpLlm, Llm, PolicyTarget, RuleLlm};
use mrrec_memory::MemoryStore;
use mrrec_store::KvStore;
use mrrec_stream::{KafkaClients, Shutdown, StageRunner};
use std::sync::Arc;

fn panicked() -> ServiceError {
    ServiceError::Panicked("the recommend stage".into())
}

/// The configured policy backend, and what follows `mrrec.policy` for it
/// (the embedded engine; an http tier follows on its own).
pub async fn open_llm(
    config: &Config,
) -> Result<(Arc<dyn Llm>, Option<Arc<dyn PolicyTarget>>), ServiceError> {
    match config.llm.backend {
        LlmBackend::Embedded => {
            let dir = mrrec_policy::registry::resolve_model_dir(
                &config.llm.model_dir,
                &config.policy.dir,
            )?;
            let llm = Arc::new(
                EmbeddedLlm::open(&dir, EngineOptions::from_config(config))
                    .await
                    .map_err(|source| ServiceError::Policy {
                        dir: dir.clone(),
                        source,
                    })?,
            );
            tracing::info!(version = llm.serving_version(), dir = %dir.display(), "policy loaded");
            Ok((llm.clone(), Some(llm)))
        }
        LlmBackend::Http => Ok((
            Arc::new(HttpLlm::new(&config.llm.url)?.with_api_key(&config.llm.api_key)),
            None,
        )),
        // The rule has no versions to follow.
        LlmBackend::Rule => Ok((Arc::new(RuleLlm::default()), None)),
    }
}

/// A running recommend stage (and its policy follower) in this process.
pub struct RunningRecommend {
    pub shutdown: Shutdown,
    runner: tokio::task::JoinHandle<Result<mrrec_stream::RunReport, mrrec_stream::StreamError>>,
    follower: Option<tokio::task::JoinHandle<Result<(), ServiceError>>>,
}

impl RunningRecommend {
    /// Runs until `stop` is triggered (then drains) or until the stage
    /// stops by itself.
    pub async fn until(mut self, stop: Shutdown) -> Result<mrrec_stream::RunReport, ServiceError> {
        let finished = tokio::select! {
            _ = stop.wait() => None,
            result = &mut self.runner => Some(result),
        };
        self.shutdown.trigger();
        if let Some(follower) = self.follower {
            follower
                .await
                .map_err(|_| ServiceError::Panicked("the policy follower".into()))??;
        }
        match finished {
            Some(result) => Ok(result.map_err(|_| panicked())??),
            None => Ok(self.runner.await.map_err(|_| panicked())??),
        }
    }

    pub async fn stop(self) -> Result<mrrec_stream::RunReport, ServiceError> {
        self.shutdown.trigger();
        if let Some(follower) = self.follower {
            follower
                .await
                .map_err(|_| ServiceError::Panicked("the policy follower".into()))??;
        }
        Ok(self.runner.await.map_err(|_| panicked())??)
    }
}

/// Starts the stage over `memory` on `clients`.
pub async fn start_recommend<S: KvStore + 'static>(
    config: &Config,
    clients: &KafkaClients,
    memory: MemoryStore<S>,
    follow: bool,
) -> Result<RunningRecommend, ServiceError> {
    let (llm, target) = open_llm(config).await?;
    // Polling every few ms costs CPU that the in-process broker shares with
    // the policy on the same cores; only a real broker gets the fast path.
    let request_path = if config.kafka.is_embedded() {
        clients.clone()
    } else {
        mrrec_recommend::low_latency(clients)
    };
    let stage = mrrec_recommend::open_stage(config, &request_path, llm, memory).await?;
    let shutdown = Shutdown::new();
    // A pinned version (llm.model_dir, a rollback) stays pinned.
    let pinned = !config.llm.model_dir.is_empty();
    let follower = match target {
        Some(target) if follow && !pinned => {
            let clients = clients.clone();
            let prefix = config.topics.prefix.clone();
            let stop = shutdown.clone();
            let policy_dir = config.policy.dir.clone();
            Some(tokio::spawn(async move {
                mrrec_llm::follow_policy_topic(
                    &clients,
                    &prefix,
                    mrrec_recommend::STAGE,
                    &policy_dir,
                    target,
                    stop,
                )
                .await
                .map_err(ServiceError::Follower)
            }))
        }
        _ => None,
    };
    let runner = StageRunner::new(
        request_path,
        mrrec_recommend::runner_settings(config),
        stage,
    )
    .spawn(shutdown.clone())
    .task;
    Ok(RunningRecommend {
        shutdown,
        runner,
        follower,
    })
}
