//! Producing records and waiting until the broker has them.

use crate::KafkaClients;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use std::time::Duration;

/// A record to produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl OutgoingRecord {
    /// The DLQ record (DESIGN §2 dead letter) of the record `event` names
    /// (who refused it and why), keyed by `key` (the record's own key).
    /// Every dead letter mrrec writes is built here.
    pub fn dead_letter(
        dlq_topic: &str,
        event: &crate::events::DeadLettered,
        key: Option<Vec<u8>>,
        payload: &[u8],
    ) -> Result<Self, serde_json::Error> {
        let letter = mrrec_messages::DeadLetter::new(
            &event.stage,
            &event.topic,
            event.partition,
            event.offset,
            &event.reason,
            payload,
            crate::now_ms(),
        );
        // A letter the DESIGN checks refuse (a reason over its limit) is
        // still written: losing the record would be worse.
        let payload = match mrrec_messages::encode(&letter) {
            Ok(payload) => payload,
            Err(_) => serde_json::to_vec(&letter)?,
        };
        Ok(Self {
            topic: dlq_topic.to_owned(),
            key,
            payload,
        })
    }
}

/// A producer whose sends resolve only once the broker acknowledged them.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    stage: String,
}

impl Publisher {
    pub fn new(clients: &KafkaClients, stage: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: clients.producer().create()?,
            stage: stage.to_owned(),
        })
    }

    /// Produces every record and waits for all acknowledgements. On failure
    /// returns the first error and the records that were not acknowledged (the
    /// acknowledged ones are not repeated by a retry with the rest).
    pub async fn publish_all(
        &self,
        records: Vec<OutgoingRecord>,
    ) -> Result<(), (KafkaError, Vec<OutgoingRecord>)> {
        let mut waiting: Vec<(OutgoingRecord, DeliveryFuture)> = Vec::with_capacity(records.len());
        let mut unsent = Vec::new();
        let mut first_error = None;
        for record in records {
            match self.enqueue(&record).await {
                Ok(delivery) => waiting.push((record, delivery)),
                Err(e) => {
                    first_error.get_or_insert(e);
                    unsent.push(record);
                }
            }
        }
        let mut delivered: std::collections::HashMap<String, u64> = Default::default();
        for (record, delivery) in waiting {
            match delivery.await {
                Ok(Ok(_)) => *delivered.entry(record.topic).or_default() += 1,
                Ok(Err((e, _))) => {
                    first_error.get_or_insert(e);
                    unsent.push(record);
                }
                Err(_) => {
                    first_error.get_or_insert(KafkaError::Canceled);
                    unsent.push(record);
                }
            }
        }
        for (topic, n) in delivered {
            metrics::counter!(crate::metrics::PRODUCED, "stage" => self.stage.clone(), "topic" => topic)
                .increment(n);
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err((e, unsent)),
        }
    }

    async fn enqueue(&self, record: &OutgoingRecord) -> Result<DeliveryFuture, KafkaError> {
        let mut waited = Duration::ZERO;
        loop {
            let mut future_record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&record.topic).payload(&record.payload);
            if let Some(key) = &record.key {
                future_record = future_record.key(key.as_slice());
            }
            match self.producer.send_result(future_record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if waited < Duration::from_secs(30) =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    waited += Duration::from_millis(10);
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Waits until everything produced so far is acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

/// Whether a Kafka error may go away by itself (a broker down, a leader moving).
pub(crate) fn is_retryable_kafka(error: &KafkaError) -> bool {
    let Some(code) = error.rdkafka_error_code() else {
        return !matches!(
            error,
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_)
        );
    };
    !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::InvalidArgument
            | RDKafkaErrorCode::Fatal
    )
}
