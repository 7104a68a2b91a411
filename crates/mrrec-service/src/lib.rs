//! The one place that opens and runs stages, below the binary.
//!
//! - [`open_store`]: the memory store of `store.backend`; [`start_metrics`]:
//!   the Prometheus endpoint.
//! - [`pipeline::run`]: several stages in one process over one broker
//!   connection, one store and one shutdown; `mrrec run --stage X` is a
//!   pipeline of one. [`pipeline::start_stage`] is the only match from a
//!   stage to its constructor; each stage crate owns its stage
//!   (`mrrec_distill::open_stage`, `mrrec_recommend::start` — the stage
//!   with its policy and the policy's follower —, `mrrec_reward::open_stage`,
//!   `mrrec_train::stage::open_stage`).
//!
//! Errors are [`ServiceError`]: every variant names what could not be
//! opened or run, and keeps its source.

pub mod pipeline;

use mrrec_config::{Config, StoreBackend};
use mrrec_memory::{Keyspace, MemoryStore};
use mrrec_store::{AnyStore, EmbeddedStore, RedisStore, StoreError};
use std::path::{Path, PathBuf};

/// Why a service could not be opened or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("connecting to {url}: {source}")]
    StoreConnect { url: String, source: StoreError },
    #[error("opening {}: {source}", path.display())]
    StoreOpen { path: PathBuf, source: StoreError },
    #[error("starting the broker connection: {0}")]
    Broker(mrrec_stream::StreamError),
    #[error("the distill stage: {0}")]
    Distill(#[from] mrrec_distill::OpenStageError),
    #[error("the recommend stage: {0}")]
    Recommend(#[from] mrrec_recommend::RunningError),
    #[error("the reward stage: {0}")]
    Reward(#[from] mrrec_reward::OpenError),
    #[error("the train stage: {0}")]
    Train(#[from] mrrec_train::TrainStageError),
    #[error("{0}")]
    Run(#[from] mrrec_stream::StreamError),
    #[error("{0} panicked")]
    Panicked(String),
    #[error("serving metrics on {listen}: {problem}")]
    Metrics { listen: String, problem: String },
    #[error("the {0} stage needs the memory store, and none was opened")]
    NoStore(mrrec_config::StageKind),
}

/// Starts the Prometheus endpoint at `metrics.listen` (if set).
pub fn start_metrics(config: &Config) -> Result<(), ServiceError> {
    let listen = &config.metrics.listen;
    let installed = mrrec_stream::metrics::install_prometheus(listen).map_err(|problem| {
        ServiceError::Metrics {
            listen: listen.clone(),
            problem,
        }
    })?;
    if let Some(addr) = installed {
        // Every stage's own metrics get their HELP text (the runtime's
        // are registered by the exporter).
        mrrec_distill::describe_metrics();
        mrrec_recommend::describe_metrics();
        mrrec_reward::describe_metrics();
        mrrec_train::describe_metrics();
        mrrec_llm::describe_metrics();
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
    }
    Ok(())
}

/// The store of `store.backend`, with the default keyspace.
pub async fn open_store(config: &Config) -> Result<MemoryStore<AnyStore>, ServiceError> {
    let store = match config.store.backend {
        StoreBackend::Redis => AnyStore::Redis(
            RedisStore::connect(
                &config.store.url,
                (!config.store.ca_file.is_empty()).then(|| Path::new(&config.store.ca_file)),
            )
            .await
            .map_err(|source| ServiceError::StoreConnect {
                url: mrrec_config::redact_url(&config.store.url),
                source,
            })?,
        ),
        StoreBackend::Embedded => {
            AnyStore::Embedded(EmbeddedStore::open(&config.store.path).map_err(|source| {
                ServiceError::StoreOpen {
                    path: config.store.path.clone(),
                    source,
                }
            })?)
        }
    };
    Ok(MemoryStore::new(store, Keyspace::default()))
}
