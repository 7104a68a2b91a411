//! The recommend stage running in this process: the configured policy,
//! the stage over the request topics, and the follower that hot-swaps the
//! policy when `mrrec.policy` announces a new version. What `mrrec run
//! --stage recommend`, a pipeline, `mrrec recommend`, the in-process loop
//! and `bench recommend` start.

use mrrec_config::Config;
use mrrec_memory::MemoryStore;
use mrrec_store::KvStore;
use mrrec_stream::{KafkaClients, Shutdown, StageRunner};

/// Why the running stage could not start, or how it stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunningError {
    #[error(transparent)]
    Llm(#[from] mrrec_llm::OpenLlmError),
    #[error(transparent)]
    Open(#[from] crate::OpenError),
    #[error("{0}")]
    Run(#[from] mrrec_stream::StreamError),
    #[error("{0} panicked")]
    Panicked(&'static str),
}

fn panicked() -> RunningError {
    RunningError::Panicked("the recommend stage")
}

/// A running recommend stage (and its policy follower) in this process.
pub struct RunningRecommend {
    pub shutdown: Shutdown,
    runner: tokio::task::JoinHandle<Result<mrrec_stream::RunReport, mrrec_stream::StreamError>>,
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl RunningRecommend {
    /// Runs until `stop` is triggered (then drains) or until the stage
    /// stops by itself.
    pub async fn until(mut self, stop: Shutdown) -> Result<mrrec_stream::RunReport, RunningError> {
        let finished = tokio::select! {
            _ = stop.wait() => None,
            result = &mut self.runner => Some(result),
        };
        self.shutdown.trigger();
        join(self.follower).await?;
        match finished {
            Some(result) => Ok(result.map_err(|_| panicked())??),
            None => Ok(self.runner.await.map_err(|_| panicked())??),
        }
    }

    pub async fn stop(self) -> Result<mrrec_stream::RunReport, RunningError> {
        self.shutdown.trigger();
        join(self.follower).await?;
        Ok(self.runner.await.map_err(|_| panicked())??)
    }
}

/// Waits for the follower (if any) after its shutdown.
async fn join(follower: Option<tokio::task::JoinHandle<()>>) -> Result<(), RunningError> {
    match follower {
        Some(follower) => follower
            .await
            .map_err(|_| RunningError::Panicked("the policy follower")),
        None => Ok(()),
    }
}

/// Starts the stage over `memory` on `clients`.
pub async fn start<S: KvStore + 'static>(
    config: &Config,
    clients: &KafkaClients,
    memory: MemoryStore<S>,
    follow: bool,
) -> Result<RunningRecommend, RunningError> {
    let (llm, target) = mrrec_llm::open_configured(config).await?;
    // Polling every few ms costs CPU that the in-process broker shares with
    // the policy on the same cores; only a real broker gets the fast path.
    let request_path = if config.kafka.is_embedded() {
        clients.clone()
    } else {
        crate::low_latency(clients)
    };
    let stage = crate::open_stage(config, &request_path, llm, memory).await?;
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
                    crate::STAGE,
                    &policy_dir,
                    target,
                    stop,
                )
                .await
            }))
        }
        _ => None,
    };
    let runner = StageRunner::new(request_path, crate::runner_settings(config), stage)
        .spawn(shutdown.clone())
        .task;
    Ok(RunningRecommend {
        shutdown,
        runner,
        follower,
    })
}
