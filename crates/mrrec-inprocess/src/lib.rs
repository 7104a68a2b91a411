//! The whole loop in one process, below the binary: what `mrrec demo`,
//! `mrrec eval` and `mrrec bench …` do, reachable by their tests without
//! the binary (which only parses arguments and prints).
//!
//! - [`produce`]: a catalog and events as records on the input topics,
//!   produced with progress.
//! - [`warm`]: a fresh policy's warm start (DESIGN §7): [`ensure_policy`],
//!   synthetic teacher trajectories, imitation.
//! - [`bench`]: the benches (DESIGN §12), each measuring and returning
//!   [`bench::Measured`], and what they share (their topics, a distill
//!   stage, the policy to measure, memory figures).
//! - [`eval`]: `mrrec eval`'s protocol (DESIGN §11–§14): the data, the
//!   baselines, the replay in time, the rule's validation pass (warm start
//!   and ranker choice), RL rounds, the test rows against the rule.
//! - [`running`]: the running loop ([`InProcess`]): distill (once, or live
//!   for a replay in time), the recommend stage and its tiers, the reward
//!   stage, the rewards it emits, and the trainer whose rounds the caller
//!   drives.
//!
//! Every failure is a [`LoopError`] that names what failed.

pub mod bench;
pub mod eval;
pub mod produce;
pub mod running;
pub mod warm;

pub use running::{
    demo_config, heldout_and_training, mean, means, shadow_tier_config, tier_config, InProcess,
};
pub use warm::{ensure_policy, imitate, item_text, synthetic_trajectories, warm_start, WarmStart};

use std::path::PathBuf;

/// Why the loop, or a step of it, failed.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("starting the broker connection: {0}")]
    Broker(mrrec_stream::StreamError),
    #[error("creating the topics: {0}")]
    Topics(mrrec_stream::StreamError),
    #[error("{0}")]
    Service(#[from] mrrec_service::ServiceError),
    #[error("a stage runner: {0}")]
    Run(#[from] mrrec_stream::StreamError),
    #[error("encoding a record: {0}")]
    Encode(#[from] mrrec_messages::MessageError),
    #[error("{what}: {source}")]
    Publish {
        what: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("a Kafka client: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Tail(#[from] mrrec_stream::TailError),
    #[error("the recommend stage: {0}")]
    Recommend(#[from] mrrec_recommend::RunningError),
    #[error("the request client: {0}")]
    Client(#[from] mrrec_recommend::ClientError),
    #[error("the reward stage: {0}")]
    Reward(#[from] mrrec_reward::OpenError),
    #[error("the distill stage: {0}")]
    Distill(#[from] mrrec_distill::OpenStageError),
    #[error("the trainer: {0}")]
    Train(#[from] mrrec_train::TrainStageError),
    #[error("training: {0}")]
    Training(#[from] mrrec_train::TrainError),
    #[error("the policy registry: {0}")]
    Policy(#[from] mrrec_policy::PolicyError),
    #[error("the teacher's agent loop: {0}")]
    Agent(#[from] mrrec_agent::AgentError),
    #[error("the warm start: {0}")]
    WarmStart(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Bench(String),
    #[error("a task of this process: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Dataset(#[from] mrrec_datasets::DatasetError),
    #[error("the distill stage stopped after {done} of {total} records")]
    DistillStopped { done: u64, total: u64 },
    #[error("distill stored {done} of {total} records in ten minutes")]
    DistillTooSlow { done: u64, total: u64 },
    #[error("no response to {0} within ten minutes")]
    NoResponse(String),
    #[error("feeding needs an InProcess started live (InProcess::start_tiers)")]
    NotLive,
    #[error("{lists} request lists for {stages} recommend stages")]
    TooManyRequestLists { lists: usize, stages: usize },
    #[error("the recommend stage did not switch to v{version:04} within two minutes")]
    NoSwitch { version: u32 },
    #[error("{0} measures a real broker: set kafka.brokers (or MRREC__KAFKA__BROKERS)")]
    RealBrokerNeeded(String),
    #[error("a memory index: {0}")]
    Index(#[from] mrrec_index::IndexError),
    #[error("opening the indexes: {0}")]
    Indexes(#[from] mrrec_distill::OpenError),
    #[error("{0} panicked")]
    Panicked(String),
}
