//! Tailing a topic outside the runner: a reader that sees every record of a
//! topic, from its beginning or from its current end, in no shared consumer
//! group and committing nothing. The policy follower (every announcement,
//! from the start), the recommend client (responses from now on) and the
//! in-process loop's reward collector each read this way.
//!
//! One rule for a record that cannot be used: it goes to the DLQ with the
//! reason ([`DeadLettered`]) and the tail goes on. A record that does not
//! decode is dead-lettered by [`TopicTail::next`]; one that decodes but is
//! refused by its reader is dead-lettered by [`TopicTail::dead_letter`].
//! Once open, read errors are retried with backoff, never returned: a tail
//! waits out a broker that is away. Opening can fail (the broker does not
//! answer, the topic does not exist); [`TopicTail::open`] says why, and a
//! reader that must not give up retries it. Each reader dead-letters what
//! it cannot use: a record every reader of a topic refuses (every request
//! client reads every response) is dead-lettered once per reader.

use crate::events::{DeadLetterLost, DeadLettered};
use crate::metrics as m;
use crate::{Backoff, KafkaClients, OutgoingRecord, Poison, Publisher, RecordMeta};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where a tail starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TailFrom {
    /// Every record the topic still holds.
    Beginning,
    /// Only records written after the tail opened.
    End,
}

/// A record that decoded, where it came from and its bytes.
#[derive(Debug, Clone)]
pub struct Tailed<M> {
    pub meta: RecordMeta,
    pub message: M,
    pub payload: Vec<u8>,
}

/// Why a tail could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("tailing {topic}: {source}")]
    Kafka { topic: String, source: KafkaError },
    #[error("tailing {topic}: the broker reports no partitions for it (is the topic created?)")]
    NoPartitions { topic: String },
}

/// How long [`TopicTail::dead_letter`] retries the DLQ before it reports
/// the dead letter lost.
const DLQ_PATIENCE: Duration = Duration::from_secs(30);

/// A reader of one topic; see the module docs.
pub struct TopicTail {
    consumer: StreamConsumer,
    topic: String,
    name: String,
    dlq_topic: String,
    dlq: Publisher,
}

impl TopicTail {
    /// Opens a tail of `topic` from `from`. `name` names the reader in its
    /// dead letters and metrics; bad records go to `dlq_topic`. Asks the
    /// broker for the topic's partitions (and, from the end, their
    /// watermarks), waiting up to 10 s for each answer, on a blocking thread.
    pub async fn open(
        clients: &KafkaClients,
        topic: &str,
        dlq_topic: &str,
        name: &str,
        from: TailFrom,
    ) -> Result<Self, TailError> {
        let (clients, topic, dlq_topic, name) = (
            clients.clone(),
            topic.to_owned(),
            dlq_topic.to_owned(),
            name.to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            Self::open_blocking(&clients, &topic, &dlq_topic, &name, from)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn open_blocking(
        clients: &KafkaClients,
        topic: &str,
        dlq_topic: &str,
        name: &str,
        from: TailFrom,
    ) -> Result<Self, TailError> {
        let kafka = |source| TailError::Kafka {
            topic: topic.to_owned(),
            source,
        };
        let group = format!(
            "mrrec-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let consumer: StreamConsumer = clients.reader(&group).create().map_err(kafka)?;
        let assignment = Self::assignment(&consumer, topic, from).map_err(kafka)?;
        if assignment.count() == 0 {
            return Err(TailError::NoPartitions {
                topic: topic.to_owned(),
            });
        }
        consumer.assign(&assignment).map_err(kafka)?;
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            name: name.to_owned(),
            dlq_topic: dlq_topic.to_owned(),
            dlq: Publisher::new(clients, name).map_err(kafka)?,
        })
    }

    /// Every partition of `topic`, each at `from`.
    fn assignment(
        consumer: &StreamConsumer,
        topic: &str,
        from: TailFrom,
    ) -> Result<TopicPartitionList, KafkaError> {
        let timeout = Duration::from_secs(10);
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let mut assignment = TopicPartitionList::new();
        for partition in metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        {
            let offset = match from {
                TailFrom::Beginning => Offset::Beginning,
                TailFrom::End => {
                    Offset::Offset(consumer.fetch_watermarks(topic, partition, timeout)?.1)
                }
            };
            assignment.add_partition_offset(topic, partition, offset)?;
        }
        Ok(assignment)
    }

    /// The next record that decodes as `M` (its key checked, DESIGN §2).
    /// Records that do not are dead-lettered on the way.
    pub async fn next<M: mrrec_messages::Message>(&self) -> Tailed<M> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let message = match self.consumer.recv().await {
                Ok(message) => message,
                Err(e) => {
                    metrics::counter!(m::KAFKA_ERRORS, "stage" => self.name.clone()).increment(1);
                    tracing::warn!(topic = %self.topic, error = %e, "reading; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            let meta = RecordMeta {
                topic: Arc::from(message.topic()),
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                timestamp_ms: message.timestamp().to_millis(),
            };
            let payload = message.payload().unwrap_or_default().to_vec();
            match crate::decode_message::<M>(&meta, Some(&payload)) {
                Ok(decoded) => {
                    return Tailed {
                        meta,
                        message: decoded,
                        payload,
                    }
                }
                Err(poison) => self.dead_letter(&meta, &payload, poison).await,
            }
        }
    }

    /// Sends a record this tail read to the DLQ with `poison`'s reason,
    /// retrying retryable failures for up to 30 s; a dead letter that still
    /// cannot be written (or fails for good) is logged and counted as lost.
    /// The write runs on a task of its own: dropping this future (a reader
    /// stopping) does not drop the dead letter.
    pub async fn dead_letter(&self, meta: &RecordMeta, payload: &[u8], poison: Poison) {
        let event = DeadLettered {
            stage: self.name.clone(),
            topic: meta.topic.to_string(),
            partition: meta.partition,
            offset: meta.offset,
            kind: poison.kind,
            reason: poison.reason,
        };
        let key = meta.key.clone();
        let record = match OutgoingRecord::dead_letter(&self.dlq_topic, &event, key, payload) {
            Ok(record) => record,
            Err(error) => {
                return DeadLetterLost {
                    event: &event,
                    error: error.to_string(),
                }
                .emit()
            }
        };
        let dlq = self.dlq.clone();
        let write = tokio::spawn(async move {
            let started = Instant::now();
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            let mut records = vec![record];
            loop {
                match dlq.publish_all(records).await {
                    Ok(()) => return event.emit(),
                    Err((error, unsent))
                        if crate::publish::is_retryable_kafka(&error)
                            && started.elapsed() < DLQ_PATIENCE =>
                    {
                        records = unsent;
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                    Err((error, _)) => {
                        return DeadLetterLost {
                            event: &event,
                            error: error.to_string(),
                        }
                        .emit()
                    }
                }
            }
        });
        if let Err(e) = write.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}
