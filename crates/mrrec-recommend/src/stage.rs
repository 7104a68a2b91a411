//! The recommend stage over `mrrec.requests`: a batch's requests are
//! answered concurrently (at most `recommend.concurrency` at once), then the
//! responses, trajectories and dead letters are published and acknowledged
//! before the batch's offsets are committed — a crash replays the batch, so
//! every request gets an answer (maybe twice, with the same request_id).

use crate::recommender::{Answer, Recommender};
use crate::STAGE;
use futures::StreamExt;
use mrrec_messages::{encode, Request, Response, Topic};
use mrrec_store::KvStore;
use mrrec_stream::events::DeadLettered;
use mrrec_stream::{
    decode_message, now_ms, Batch, OutgoingRecord, Poison, Publisher, RecordMeta, Stage, StageError,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Process-wide totals of the recommend stages in this process (what
/// `mrrec bench recommend` reads; Prometheus gets the same as metrics).
#[derive(Debug)]
pub struct StageTotals {
    pub answered: AtomicU64,
    pub fallback: AtomicU64,
    pub errors: AtomicU64,
    /// Time waiting for the LLM, summed over requests (µs).
    pub llm_micros: AtomicU64,
    /// Time inside the stage, summed over requests (µs).
    pub stage_micros: AtomicU64,
}

pub static TOTALS: StageTotals = StageTotals {
    answered: AtomicU64::new(0),
    fallback: AtomicU64::new(0),
    errors: AtomicU64::new(0),
    llm_micros: AtomicU64::new(0),
    stage_micros: AtomicU64::new(0),
};

pub const REQUESTS: &str = "mrrec_recommend_requests_total";
pub const SHARD_USERS: &str = "mrrec_recommend_shard_users";
pub const SHARD_PARTITIONS: &str = "mrrec_recommend_shard_partitions";
pub const SHARD_REFRESHED: &str = "mrrec_recommend_shard_refreshed_total";
/// Requests whose user the murmur2 partitioner puts on another partition
/// than the one they came from (a producer with another partitioner): still
/// answered with full memory (the refresh loads the user), but worth fixing.
pub const SHARD_MISROUTED: &str = "mrrec_recommend_shard_misrouted_total";
pub const LATENCY: &str = "mrrec_recommend_latency_seconds";
pub const LLM_SECONDS: &str = "mrrec_recommend_llm_seconds";

/// Registers the HELP text of the recommend stage's own metrics.
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        REQUESTS,
        "Requests by outcome: answered by the policy, fallback (deterministic ranking), error, invalid"
    );
    describe_histogram!(LATENCY, Unit::Seconds, "Time a request spent in the stage");
    describe_histogram!(
        LLM_SECONDS,
        Unit::Seconds,
        "Time a request waited for the policy"
    );
    describe_gauge!(
        SHARD_USERS,
        "Users in this instance's memory shard (recommend.memory_index = partitions)"
    );
    describe_gauge!(
        SHARD_PARTITIONS,
        "Request partitions this instance's shard covers"
    );
    describe_counter!(
        SHARD_REFRESHED,
        "Users the shard reloaded because distill changed their memory"
    );
    describe_counter!(
        SHARD_MISROUTED,
        "Requests whose user murmur2 puts on another partition than the one they came from"
    );
    describe_counter!(
        crate::shard::CORRUPT_ENTRIES,
        "Stored memory entries that do not parse, left out of the shard"
    );
}

/// A batch's records to publish, and the dead letters among them (counted
/// once they are published).
#[derive(Default)]
struct Outgoing {
    records: Vec<OutgoingRecord>,
    dead_letters: Vec<DeadLettered>,
}

/// A record of `mrrec.requests` as the stage sees it.
#[derive(Debug, Clone)]
pub enum Incoming {
    Request(Request),
    /// Not a valid request, but it names who asked: it is answered with
    /// `error` (and dead-lettered), so the caller is not left waiting.
    Invalid {
        request_id: String,
        user_id: String,
        poison: Poison,
        payload: Vec<u8>,
    },
}

/// `request_id` and `user_id` of a payload that failed to decode, if both
/// are usable ids.
fn addressable(payload: &[u8]) -> Option<(String, String)> {
    if payload.len() > mrrec_messages::limits::MAX_PAYLOAD_BYTES {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let id = |field: &str| -> Option<String> {
        let text = value.get(field)?.as_str()?;
        let usable = !text.is_empty()
            && text.len() <= mrrec_messages::limits::MAX_ID_BYTES
            && !text.chars().any(char::is_control);
        usable.then(|| text.to_owned())
    };
    Some((id("request_id")?, id("user_id")?))
}

/// The stage: a [`Recommender`] and the publisher of its output.
pub struct RecommendStage<S> {
    recommender: Recommender<S>,
    publisher: Publisher,
    prefix: String,
    /// Output of a batch whose publication failed, kept for the retry (so a
    /// retry does not answer the requests again).
    unsent: Option<((String, i32, i64), Outgoing)>,
}

impl<S: KvStore> RecommendStage<S> {
    pub fn new(recommender: Recommender<S>, publisher: Publisher, topic_prefix: &str) -> Self {
        Self {
            recommender,
            publisher,
            prefix: topic_prefix.to_owned(),
            unsent: None,
        }
    }

    fn response_record(&self, response: &Response) -> Option<OutgoingRecord> {
        match encode(response) {
            Ok(payload) => Some(OutgoingRecord {
                topic: Topic::Responses.name(&self.prefix),
                key: Some(response.user_id.clone().into_bytes()),
                payload,
            }),
            Err(e) => {
                tracing::error!(error = %e, "a response does not encode; answering with the error");
                let fallback = Response {
                    items: Vec::new(),
                    profile: String::new(),
                    memory_ids: Vec::new(),
                    steps: Vec::new(),
                    error: Some(format!("the response could not be encoded: {e}")),
                    ..response.clone()
                };
                encode(&fallback).ok().map(|payload| OutgoingRecord {
                    topic: Topic::Responses.name(&self.prefix),
                    key: Some(response.user_id.clone().into_bytes()),
                    payload,
                })
            }
        }
    }

    /// Adds a request's records to `out`: its response and trajectories,
    /// or, for an invalid request, its error response and dead letter.
    fn outgoing(
        &self,
        meta: &RecordMeta,
        incoming: &Incoming,
        answer: Option<Answer>,
        out: &mut Outgoing,
    ) {
        let Outgoing {
            records: out,
            dead_letters,
        } = out;
        match (incoming, answer) {
            (Incoming::Request(_), Some(answer)) => {
                let outcome = if answer.response.error.is_some() {
                    "error"
                } else if answer.fallback {
                    "fallback"
                } else {
                    "answered"
                };
                metrics::counter!(REQUESTS, "stage" => STAGE, "outcome" => outcome).increment(1);
                let counter = match outcome {
                    "error" => &TOTALS.errors,
                    "fallback" => &TOTALS.fallback,
                    _ => &TOTALS.answered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                TOTALS
                    .llm_micros
                    .fetch_add(answer.llm_time.as_micros() as u64, Ordering::Relaxed);
                TOTALS.stage_micros.fetch_add(
                    (answer.response.latency_ms * 1000.0) as u64,
                    Ordering::Relaxed,
                );
                metrics::histogram!(LATENCY, "stage" => STAGE)
                    .record(answer.response.latency_ms / 1000.0);
                metrics::histogram!(LLM_SECONDS, "stage" => STAGE)
                    .record(answer.llm_time.as_secs_f64());
                out.extend(self.response_record(&answer.response));
                for trajectory in &answer.trajectories {
                    match encode(trajectory) {
                        Ok(payload) => out.push(OutgoingRecord {
                            topic: Topic::Trajectories.name(&self.prefix),
                            key: Some(trajectory.request_id.clone().into_bytes()),
                            payload,
                        }),
                        Err(e) => {
                            tracing::warn!(error = %e, "a trajectory does not encode; not logged")
                        }
                    }
                }
            }
            (
                Incoming::Invalid {
                    request_id,
                    user_id,
                    poison,
                    payload,
                },
                _,
            ) => {
                metrics::counter!(REQUESTS, "stage" => STAGE, "outcome" => "invalid").increment(1);
                let response = Response {
                    request_id: request_id.clone(),
                    user_id: user_id.clone(),
                    items: Vec::new(),
                    profile: String::new(),
                    memory_ids: Vec::new(),
                    steps: Vec::new(),
                    policy_version: self.recommender.llm().serving_version().unwrap_or(0),
                    latency_ms: 0.0,
                    error: Some(format!("invalid request: {}", poison.reason)),
                    ts: now_ms(),
                };
                out.extend(self.response_record(&response));
                let event = DeadLettered {
                    stage: STAGE.to_owned(),
                    topic: meta.topic.to_string(),
                    partition: meta.partition,
                    offset: meta.offset,
                    kind: poison.kind,
                    reason: poison.reason.clone(),
                };
                let dlq = Topic::Dlq.name(&self.prefix);
                if let Ok(record) =
                    OutgoingRecord::dead_letter(&dlq, &event, meta.key.clone(), payload)
                {
                    out.push(record);
                    dead_letters.push(event);
                }
            }
            (Incoming::Request(_), None) => {}
        }
    }
}

impl<S: KvStore + 'static> Stage for RecommendStage<S> {
    type Message = Incoming;

    fn name(&self) -> &str {
        STAGE
    }

    fn decode(&self, record: &RecordMeta, payload: Option<&[u8]>) -> Result<Incoming, Poison> {
        match decode_message::<Request>(record, payload) {
            Ok(request) => Ok(Incoming::Request(request)),
            Err(poison) => match payload.and_then(addressable) {
                Some((request_id, user_id)) => Ok(Incoming::Invalid {
                    request_id,
                    user_id,
                    poison,
                    payload: payload.unwrap_or_default().to_vec(),
                }),
                None => Err(poison),
            },
        }
    }

    async fn on_assign(&mut self, partitions: &[(String, i32)]) {
        let Some(shard) = self.recommender.shard().cloned() else {
            return;
        };
        let requests = Topic::Requests.name(&self.prefix);
        let mine: Vec<i32> = partitions
            .iter()
            .filter(|(topic, _)| *topic == requests)
            .map(|(_, p)| *p)
            .collect();
        let started = Instant::now();
        match shard.assign(self.recommender.memory(), &mine).await {
            Ok(report) => {
                metrics::gauge!(SHARD_USERS, "stage" => STAGE).set(report.users as f64);
                metrics::gauge!(SHARD_PARTITIONS, "stage" => STAGE).set(mine.len() as f64);
                tracing::info!(
                    partitions = ?mine,
                    users = report.users,
                    entries = report.entries,
                    ms = started.elapsed().as_millis() as u64,
                    "memory shard rebuilt from the store"
                );
            }
            // Not fatal: every batch refreshes the users it answers, so an
            // empty shard only makes the first batches slower.
            Err(e) => {
                tracing::warn!(error = %e, partitions = ?mine, "memory shard rebuild failed; users load as their requests arrive")
            }
        }
    }

    async fn on_revoke(&mut self, _partitions: &[(String, i32)]) {
        if let Some(shard) = self.recommender.shard() {
            if let Err(e) = shard.revoke() {
                tracing::warn!(error = %e, "clearing the memory shard");
            }
            metrics::gauge!(SHARD_USERS, "stage" => STAGE).set(0.0);
            metrics::gauge!(SHARD_PARTITIONS, "stage" => STAGE).set(0.0);
        }
    }

    async fn process(&mut self, batch: &Batch<Incoming>) -> Result<(), StageError> {
        let Some(first) = batch.records.first() else {
            return Ok(());
        };
        if let Some(shard) = self.recommender.shard() {
            // The users about to be answered, as the store has them now.
            let users: Vec<String> = batch
                .records
                .iter()
                .filter_map(|r| match &r.message {
                    Incoming::Request(request) => {
                        let expected = mrrec_stream::partition_for_key(
                            request.user_id.as_bytes(),
                            shard.partitions(),
                        );
                        if expected != r.meta.partition {
                            metrics::counter!(SHARD_MISROUTED, "stage" => STAGE).increment(1);
                        }
                        Some(request.user_id.clone())
                    }
                    Incoming::Invalid { .. } => None,
                })
                .collect();
            let refreshed = shard
                .refresh(self.recommender.memory(), &users)
                .await
                .map_err(|e| {
                    if e.is_retryable() {
                        StageError::retryable_from("refreshing the memory shard", e)
                    } else {
                        StageError::fatal_from("refreshing the memory shard", e)
                    }
                })?;
            metrics::counter!(SHARD_REFRESHED, "stage" => STAGE).increment(refreshed as u64);
            metrics::gauge!(SHARD_USERS, "stage" => STAGE).set(shard.users() as f64);
        }
        let batch_id = (
            first.meta.topic.to_string(),
            first.meta.partition,
            first.meta.offset,
        );
        let outgoing = match self.unsent.take() {
            Some((id, outgoing)) if id == batch_id => outgoing,
            _ => {
                let started = Instant::now();
                let recommender = &self.recommender;
                let concurrency = recommender.settings().concurrency.max(1);
                let answers: Vec<_> = futures::stream::iter(&batch.records)
                    .map(|decoded| async move {
                        match &decoded.message {
                            Incoming::Request(request) => {
                                recommender.answer(request).await.map(Some)
                            }
                            Incoming::Invalid { .. } => Ok(None),
                        }
                    })
                    .buffered(concurrency)
                    .collect()
                    .await;
                let mut outgoing = Outgoing::default();
                for (decoded, answer) in batch.records.iter().zip(answers) {
                    let answer = answer.map_err(|e| {
                        if e.is_retryable() {
                            StageError::retryable_from("answering a request", e)
                        } else {
                            StageError::fatal_from("answering a request", e)
                        }
                    })?;
                    self.outgoing(&decoded.meta, &decoded.message, answer, &mut outgoing);
                }
                tracing::debug!(
                    requests = batch.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "batch answered"
                );
                outgoing
            }
        };
        let Outgoing {
            records,
            dead_letters,
        } = outgoing;
        if let Err((e, unsent)) = self.publisher.publish_all(records).await {
            let outgoing = Outgoing {
                records: unsent,
                dead_letters,
            };
            self.unsent = Some((batch_id, outgoing));
            return Err(StageError::retryable_from("publishing answers", e));
        }
        dead_letters.iter().for_each(DeadLettered::emit);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::addressable;

    #[test]
    fn only_payloads_naming_a_request_and_a_user_are_answerable() {
        assert_eq!(
            addressable(br#"{"request_id":"r1","user_id":"u1","k":0}"#),
            Some(("r1".into(), "u1".into()))
        );
        assert_eq!(addressable(br#"{"request_id":"r1"}"#), None);
        assert_eq!(addressable(br#"{"request_id":"","user_id":"u1"}"#), None);
        assert_eq!(
            addressable(br#"{"request_id":"r\n1","user_id":"u1"}"#),
            None
        );
        assert_eq!(addressable(br#"{"request_id":1,"user_id":"u1"}"#), None);
        assert_eq!(addressable(b"not json"), None);
    }
}
