//! Following `mrrec.policy`: every process that serves the policy (each
//! recommender with the embedded backend, `mrrec llm serve`) reads the whole
//! announcement topic itself — no consumer group, so every instance sees every
//! announcement — and switches when a newer version than the one it serves is
//! announced. A version that fails to load is logged and skipped: the
//! serving version stays. An unreadable announcement goes to the DLQ.

use crate::{EmbeddedLlm, LlmError};
use async_trait::async_trait;
use mrrec_messages::{DeadLetter, PolicyAnnouncement, Topic};
use mrrec_stream::{KafkaClients, OutgoingRecord, Publisher, Shutdown};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use std::path::Path;
use std::sync::Arc;

/// Something that serves a policy and can switch versions.
#[async_trait]
pub trait PolicyTarget: Send + Sync {
    fn serving_version(&self) -> u32;
    async fn switch_to(&self, dir: &Path) -> Result<u32, LlmError>;
}

#[async_trait]
impl PolicyTarget for EmbeddedLlm {
    fn serving_version(&self) -> u32 {
        EmbeddedLlm::serving_version(self)
    }
    async fn switch_to(&self, dir: &Path) -> Result<u32, LlmError> {
        EmbeddedLlm::switch_to(self, dir).await
    }
}

/// Applies one announcement: switches if it is newer than what `target` serves.
pub async fn apply_announcement(
    target: &dyn PolicyTarget,
    announcement: &PolicyAnnouncement,
) -> Result<bool, LlmError> {
    let serving = target.serving_version();
    if announcement.version <= serving {
        tracing::debug!(
            announced = announcement.version,
            serving,
            "policy announcement is not newer; ignored"
        );
        return Ok(false);
    }
    target.switch_to(Path::new(&announcement.path)).await?;
    Ok(true)
}

/// Reads `mrrec.policy` from the beginning until `shutdown`, switching
/// `target` to each newer announced version. `stage` names this process in
/// DLQ records.
pub async fn follow_policy_topic(
    clients: &KafkaClients,
    prefix: &str,
    stage: &str,
    target: Arc<dyn PolicyTarget>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let topic = Topic::Policy.name(prefix);
    let group = format!(
        "mrrec-policy-follower-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let consumer: StreamConsumer = clients.reader(&group).create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, 0, Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let publisher = Publisher::new(clients, stage)?;
    let dlq = Topic::Dlq.name(prefix);
    tracing::info!(%topic, "following policy announcements");
    loop {
        let message = tokio::select! {
            _ = shutdown.wait() => return Ok(()),
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                tracing::warn!(error = %e, "reading {topic}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
        };
        let payload = message.payload().unwrap_or_default();
        match mrrec_messages::decode_record::<PolicyAnnouncement>(message.key(), payload) {
            Ok(announcement) => {
                if let Err(e) = apply_announcement(target.as_ref(), &announcement).await {
                    metrics::counter!("mrrec_policy_load_failures_total").increment(1);
                    tracing::error!(
                        version = announcement.version,
                        path = %announcement.path,
                        error = %e,
                        "announced policy failed to load; still serving version {}",
                        target.serving_version()
                    );
                }
            }
            Err(e) => {
                let letter = DeadLetter::new(
                    stage,
                    &topic,
                    message.partition(),
                    message.offset(),
                    &e.to_string(),
                    payload,
                    mrrec_stream::now_ms(),
                );
                tracing::warn!(offset = message.offset(), error = %e, "bad policy announcement sent to the DLQ");
                let record = OutgoingRecord {
                    topic: dlq.clone(),
                    key: message.key().map(<[u8]>::to_vec),
                    payload: mrrec_messages::encode(&letter)?,
                };
                if let Err((e, _)) = publisher.publish_all(vec![record]).await {
                    tracing::error!(error = %e, "could not write the DLQ record");
                }
            }
        }
    }
}
