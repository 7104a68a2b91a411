//! The stream runtime every mrrec stage runs on.
//!
//! A stage implements [`Stage`]: it decodes records (poison goes to the DLQ with
//! the reason) and processes decoded batches, making their effects durable before
//! it returns. The [`StageRunner`] owns everything Kafka: a consumer group with
//! auto commit off, count- and time-bounded batches, offsets committed only after
//! a batch (and its dead letters) are durable, flush-then-commit on revoke,
//! exponential backoff on retryable errors, and a bounded drain on SIGINT/SIGTERM.
//! The same code runs against a Kafka cluster, tansu, or the in-process
//! [`EmbeddedBroker`]; only the bootstrap address differs.

mod admin;
mod backoff;
mod client;
mod embedded;
pub mod events;
pub mod metrics;
mod partition;
mod publish;
mod record;
mod runner;
mod shutdown;
mod stage;
mod tail;

pub use admin::{create_topics, partition_count, TopicStatus};
pub use backoff::Backoff;
pub use client::{Bootstrap, KafkaClients};
pub use embedded::EmbeddedBroker;
pub use partition::partition_for_key;
pub use publish::{OutgoingRecord, Publisher};
pub use record::{Batch, Decoded, PartitionRange, RecordMeta};
pub use runner::{Progress, RunReport, RunnerSettings, SpawnedRunner, StageRunner};
pub use shutdown::Shutdown;
pub use stage::{decode_message, Poison, Stage, StageError};
pub use tail::{TailError, TailFrom, Tailed, TopicTail};

/// Errors of the runtime itself (as opposed to a stage's own errors).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("embedded broker: {0}")]
    Embedded(String),
    #[error("stage `{stage}` failed: {message}")]
    StageFailed { stage: String, message: String },
    #[error("{0}")]
    Other(String),
}

impl StreamError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StreamError::Kafka(e) => publish::is_retryable_kafka(e),
            _ => false,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
