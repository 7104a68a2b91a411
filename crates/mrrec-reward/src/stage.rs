//! `mrrec run --stage reward`: joins `mrrec.trajectories` (keyed by
//! request_id) with `mrrec.outcomes` (keyed by user_id) and emits one
//! `mrrec.rewards` record per trajectory of a request that got a target.
//!
//! The two topics are keyed differently, so a request's records may reach
//! different instances: the join state lives in the store, one entry per
//! request (`reward:open`, field = request id), updated under guards, with
//! the input offsets it reflects (`reward:offsets`) in the same atomic write
//! (the offset-in-state rule: a restart skips what the state already holds).
//!
//! Deterministic whatever the interleaving of the two topics:
//! - the target is the first positive outcome, in the outcomes topic's
//!   order, whose `ts` is at most the request's `ts + reward.window_ms`;
//!   later positives are duplicates, later-than-window ones are late;
//! - a trajectory is rewarded once (its id is remembered), with the target
//!   fixed when the first one was;
//! - entries expire by event time: once the largest `ts` seen passes an
//!   entry's first `ts` by two windows, it is dropped, without a record.
//!
//! Time cannot be forged: a record whose `ts` is beyond the stage's clock
//! plus one window is dead-lettered (`ts_in_future`) before it can move
//! anything. Watermarks are kept per input partition
//! (`reward:watermarks`, field `topic:partition`), each written under a
//! guard by the one instance that owns the partition, so concurrent reward
//! instances never contend on one key; expiry reads the largest of them,
//! which the clock bound keeps within a window of real time.
//!
//! Replays of the recommend stage sample again (mistral.rs takes no seed
//! per request), so a replayed batch may log different trajectories under
//! the same ids: the join keeps the first one in topic order — what was
//! served — and ignores the rest (`known`).
//!
//! Rewards are published (and acknowledged) before the state is written:
//! a crash in between replays the batch and publishes the same rewards
//! again (same trajectory ids and values); consumers dedupe by trajectory id.

use crate::{is_positive, reward, DEEPEST_RANK};
use mrrec_config::Config;
use mrrec_memory::{Keyspace, MemoryStore};
use mrrec_messages::{encode, Outcome, Topic, Trajectory};
use mrrec_rank::{Cited, RankSettings, Ranker};
use mrrec_store::{escape, Batch as StoreBatch, KvStore, OffsetGuard, Range as OffsetRange};
use mrrec_stream::{
    decode_message, Batch, OutgoingRecord, Poison, Publisher, RecordMeta, Stage, StageError,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const STAGE: &str = "reward";

/// Outcomes kept per request while its trajectories have not arrived.
const MAX_PENDING_OUTCOMES: usize = 32;

const REWARDS: &str = "mrrec_reward_rewards_total";
const OUTCOMES: &str = "mrrec_reward_outcomes_total";
const EXPIRED: &str = "mrrec_reward_expired_total";

/// Registers the HELP text of the reward stage's own metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        REWARDS,
        "Rewards written to mrrec.rewards (one per trajectory)"
    );
    metrics::describe_counter!(
        OUTCOMES,
        "Outcomes read, by kind: target (the first positive outcome in the window), duplicate (a later one), late (after reward.window_ms), not_positive"
    );
    metrics::describe_counter!(
        EXPIRED,
        "Open join entries (a request waiting for its outcome, or an outcome for its request) dropped once their window expired"
    );
}

/// A positive outcome as the join keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Positive {
    item_id: String,
    ts: i64,
}

/// The join state of one request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct JoinEntry {
    /// The request's time (its first trajectory's `ts`), once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    request_ts: Option<i64>,
    /// Event time of the first record seen: what expiry counts from.
    first_ts: i64,
    /// Trajectories waiting for a target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    waiting: Vec<Trajectory>,
    /// Positive outcomes, in order, while the request's time is unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    outcomes: Vec<Positive>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<Positive>,
    /// Trajectory ids already rewarded or waiting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    known: Vec<String>,
}

impl JoinEntry {
    /// Only outcomes that can never be a target reached it: nothing to keep.
    fn holds_nothing(&self) -> bool {
        self.request_ts.is_none() && self.outcomes.is_empty() && self.target.is_none()
    }
}

/// Decoded input.
#[derive(Debug, Clone)]
pub enum Joined {
    Trajectory(Trajectory),
    Outcome(Outcome),
}

impl Joined {
    fn request_id(&self) -> &str {
        match self {
            Joined::Trajectory(t) => &t.request_id,
            Joined::Outcome(o) => &o.request_id,
        }
    }

    fn ts(&self) -> i64 {
        match self {
            Joined::Trajectory(t) => t.ts,
            Joined::Outcome(o) => o.event.ts,
        }
    }
}

/// The reward stage over a memory store and the catalog ranking.
pub struct RewardStage<S> {
    ranker: Ranker<S>,
    publisher: Publisher,
    window_ms: i64,
    trajectories_topic: String,
    rewards_topic: String,
}

/// Store keys of the join.
struct Keys {
    open: String,
    offsets: String,
    meta: String,
    watermarks: String,
}

fn keys<S: KvStore>(memory: &MemoryStore<S>) -> Keys {
    let prefix = memory.keys().prefix();
    Keys {
        open: format!("{prefix}reward:open"),
        offsets: format!("{prefix}reward:offsets"),
        meta: format!("{prefix}reward:meta"),
        watermarks: format!("{prefix}reward:watermarks"),
    }
}

fn expiry_key(prefix: &str, bucket: i64) -> String {
    format!("{prefix}reward:expiry:{bucket}")
}

fn corrupt(what: &str, e: serde_json::Error) -> StageError {
    StageError::fatal_from(format!("reward state {what} is corrupt"), e)
}

impl<S: KvStore> RewardStage<S> {
    pub fn new(ranker: Ranker<S>, publisher: Publisher, window_ms: u64, prefix: &str) -> Self {
        Self {
            ranker,
            publisher,
            window_ms: window_ms.min(i64::MAX as u64 / 4) as i64,
            trajectories_topic: Topic::Trajectories.name(prefix),
            rewards_topic: Topic::Rewards.name(prefix),
        }
    }

    fn bucket(&self, ts: i64) -> i64 {
        ts.div_euclid(self.window_ms)
    }

    /// The reward records of `due`: the users' states are read in one
    /// round trip, then each trajectory's profile ranks the catalog.
    async fn reward_records(
        &self,
        due: &[(Trajectory, Positive)],
        ts: i64,
    ) -> Result<Vec<OutgoingRecord>, StageError> {
        let mut users: Vec<String> = due.iter().map(|(t, _)| t.user_id.clone()).collect();
        users.sort();
        users.dedup();
        let states = self
            .ranker
            .memory()
            .load_users(&users)
            .await
            .map_err(StageError::from)?;
        let mut records = Vec::with_capacity(due.len());
        for (trajectory, target) in due {
            let state = states.get(&trajectory.user_id).map(|u| &u.state);
            let rank = self
                .ranker
                .target_rank(
                    Cited::new(&trajectory.profile, &trajectory.memory_ids),
                    state,
                    &target.item_id,
                    DEEPEST_RANK as usize,
                )
                .await
                .map_err(StageError::from)?;
            let record = reward(trajectory, &target.item_id, rank, ts);
            metrics::counter!(REWARDS, "stage" => STAGE).increment(1);
            let payload =
                encode(&record).map_err(|e| StageError::fatal_from("reward does not encode", e))?;
            records.push(OutgoingRecord {
                topic: self.rewards_topic.clone(),
                key: Some(record.request_id.clone().into_bytes()),
                payload,
            });
        }
        Ok(records)
    }
}

/// Applies one record to its request's entry; returns the trajectories now
/// due a reward, with their target.
fn join_record(
    entry: &mut JoinEntry,
    joined: &Joined,
    window_ms: i64,
) -> Vec<(Trajectory, Positive)> {
    match joined {
        Joined::Trajectory(t) => {
            if entry.known.contains(&t.trajectory_id) {
                return Vec::new();
            }
            entry.known.push(t.trajectory_id.clone());
            let request_ts = *entry.request_ts.get_or_insert(t.ts);
            if entry.target.is_none() {
                let window_end = request_ts.saturating_add(window_ms);
                let (in_window, late): (Vec<Positive>, Vec<Positive>) =
                    entry.outcomes.drain(..).partition(|o| o.ts <= window_end);
                count_outcomes("late", late.len());
                entry.target = in_window.first().cloned();
                count_outcomes("duplicate", in_window.len().saturating_sub(1));
            }
            match &entry.target {
                Some(target) => vec![(t.clone(), target.clone())],
                None => {
                    entry.waiting.push(t.clone());
                    Vec::new()
                }
            }
        }
        Joined::Outcome(o) => {
            if !is_positive(o) {
                count_outcomes("not_positive", 1);
                return Vec::new();
            }
            let positive = Positive {
                item_id: o.event.item_id.clone().unwrap_or_default(),
                ts: o.event.ts,
            };
            if entry.target.is_some() {
                count_outcomes("duplicate", 1);
                return Vec::new();
            }
            match entry.request_ts {
                None => {
                    if entry.outcomes.len() < MAX_PENDING_OUTCOMES {
                        entry.outcomes.push(positive);
                    } else {
                        count_outcomes("duplicate", 1);
                    }
                    Vec::new()
                }
                Some(request_ts) if positive.ts > request_ts.saturating_add(window_ms) => {
                    count_outcomes("late", 1);
                    Vec::new()
                }
                Some(_) => {
                    count_outcomes("target", 1);
                    entry.target = Some(positive.clone());
                    entry
                        .waiting
                        .drain(..)
                        .map(|t| (t, positive.clone()))
                        .collect()
                }
            }
        }
    }
}

/// Refuses a `ts` beyond `now + window_ms`: a record from the future would
/// move the watermark past every open join and expire them all.
fn check_time(ts: i64, now: i64, window_ms: i64) -> Result<(), Poison> {
    let limit = now.saturating_add(window_ms);
    if ts > limit {
        return Err(Poison {
            kind: "ts_in_future",
            reason: format!("ts {ts} is beyond this stage's clock plus reward.window_ms ({limit})"),
        });
    }
    Ok(())
}

fn count_outcomes(kind: &'static str, n: usize) {
    if n == 0 {
        return;
    }
    metrics::counter!(OUTCOMES, "stage" => STAGE, "kind" => kind).increment(n as u64);
}

impl<S: KvStore> RewardStage<S> {
    /// Each touched join entry, guarded by the value read: written when it
    /// changed (and registered in its expiry bucket when new), deleted
    /// when it holds nothing any more.
    fn write_entries(
        &self,
        write: &mut StoreBatch,
        keys: &Keys,
        prefix: &str,
        ids: &[String],
        before: &[Option<String>],
        entries: &BTreeMap<String, JoinEntry>,
    ) -> Result<(), StageError> {
        for (id, before) in ids.iter().zip(before) {
            let field = escape(id);
            write.guard(keys.open.clone(), field.clone(), before.clone());
            if let Some(entry) = entries.get(id).filter(|e| !e.holds_nothing()) {
                let json = serde_json::to_string(entry).map_err(|e| corrupt("entry", e))?;
                if before.as_deref() != Some(json.as_str()) {
                    if before.is_none() {
                        write.set(
                            expiry_key(prefix, self.bucket(entry.first_ts)),
                            field.clone(),
                            "1",
                        );
                    }
                    write.set(keys.open.clone(), field, json);
                }
            }
        }
        Ok(())
    }

    /// Expiry by event time: deletes the entries of the buckets two
    /// windows behind the largest partition watermark, a bounded sweep per
    /// batch (the rest goes with later ones).
    async fn expire(
        &self,
        memory: &MemoryStore<S>,
        keys: &Keys,
        watermarks_before: &BTreeMap<String, String>,
        partition_marks: &BTreeMap<String, i64>,
        oldest_value: Option<String>,
        write: &mut StoreBatch,
    ) -> Result<(), StageError> {
        let prefix = memory.keys().prefix();
        let watermark = watermarks_before
            .values()
            .filter_map(|v| v.parse::<i64>().ok())
            .chain(partition_marks.values().copied())
            .max();
        let Some(watermark) = watermark else {
            return Ok(());
        };
        let last_expired = self.bucket(watermark) - 2;
        let oldest: i64 = oldest_value
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(last_expired + 1);
        let mut expired = 0u64;
        let sweep_end = last_expired.min(oldest + 64);
        for bucket in oldest..=sweep_end {
            let key = expiry_key(prefix, bucket);
            let members = memory.kv().get_all(&key).await.map_err(StageError::from)?;
            for field in members.keys() {
                write.delete(keys.open.clone(), field.clone());
                write.delete(key.clone(), field.clone());
                expired += 1;
            }
        }
        let next_oldest = oldest.max(sweep_end + 1);
        write.set(keys.meta.clone(), "oldest_bucket", next_oldest.to_string());
        if expired > 0 {
            metrics::counter!(EXPIRED, "stage" => STAGE).increment(expired);
        }
        Ok(())
    }
}

/// This batch's partitions' watermarks (largest event time seen), each
/// moved forward under a guard on the value read.
fn move_watermarks(
    write: &mut StoreBatch,
    keys: &Keys,
    watermarks_before: &BTreeMap<String, String>,
    partition_marks: &BTreeMap<String, i64>,
) {
    for (field, mark) in partition_marks {
        let before = watermarks_before.get(field);
        let moved = before
            .and_then(|b| b.parse::<i64>().ok())
            .is_none_or(|b| b < *mark);
        if moved {
            write.guard(keys.watermarks.clone(), field.clone(), before.cloned());
            write.set(keys.watermarks.clone(), field.clone(), mark.to_string());
        }
    }
}

impl<S: KvStore + 'static> Stage for RewardStage<S> {
    type Message = Joined;

    fn name(&self) -> &str {
        STAGE
    }

    fn decode(&self, record: &RecordMeta, payload: Option<&[u8]>) -> Result<Joined, Poison> {
        let joined = if *record.topic == *self.trajectories_topic {
            decode_message::<Trajectory>(record, payload).map(Joined::Trajectory)
        } else {
            decode_message::<Outcome>(record, payload).map(Joined::Outcome)
        }?;
        check_time(joined.ts(), mrrec_stream::now_ms(), self.window_ms)?;
        Ok(joined)
    }

    async fn process(&mut self, batch: &Batch<Joined>) -> Result<(), StageError> {
        if batch.records.is_empty() {
            return Ok(());
        }
        let memory = self.ranker.memory().clone();
        let keys = keys(&memory);
        let prefix = memory.keys().prefix().to_owned();

        // One read: stored offsets, the watermark, and every touched entry.
        let ids: Vec<String> = {
            let mut ids: Vec<String> = batch
                .records
                .iter()
                .map(|r| r.message.request_id().to_owned())
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let ranges: Vec<OffsetRange<'_>> = batch
            .ranges
            .iter()
            .map(|r| OffsetRange {
                topic: &r.topic,
                partition: r.partition,
                last_offset: r.last_offset,
            })
            .collect();
        let mut pairs = OffsetGuard::fields(&keys.offsets, &ranges);
        pairs.push((keys.meta.clone(), "oldest_bucket".into()));
        pairs.extend(ids.iter().map(|id| (keys.open.clone(), escape(id))));
        let values = memory
            .kv()
            .get_fields(&pairs)
            .await
            .map_err(StageError::from)?;
        let (offset_values, rest) = values.split_at(ranges.len());
        let offsets = OffsetGuard::from_values(&keys.offsets, &ranges, offset_values)
            .map_err(StageError::from)?;
        let oldest_value = rest[0].clone();
        let entry_values = &rest[1..];
        // Every partition's watermark: this batch's are guarded and moved,
        // the others (other instances') only read.
        let watermarks_before = memory
            .kv()
            .get_all(&keys.watermarks)
            .await
            .map_err(StageError::from)?;

        let mut entries: BTreeMap<String, JoinEntry> = BTreeMap::new();
        for (id, value) in ids.iter().zip(entry_values) {
            if let Some(json) = value {
                entries.insert(
                    id.clone(),
                    serde_json::from_str(json).map_err(|e| corrupt("entry", e))?,
                );
            }
        }
        let mut partition_marks: BTreeMap<String, i64> = BTreeMap::new();

        // The join, record by record in the batch's order.
        let mut due: Vec<(Trajectory, Positive)> = Vec::new();
        for record in &batch.records {
            if !offsets.is_fresh(
                &record.meta.topic,
                record.meta.partition,
                record.meta.offset,
            ) {
                continue;
            }
            let id = record.message.request_id();
            let entry = entries.entry(id.to_owned()).or_insert_with(|| JoinEntry {
                first_ts: record.message.ts(),
                ..JoinEntry::default()
            });
            due.extend(join_record(entry, &record.message, self.window_ms));
            let field = Keyspace::offset_field(&record.meta.topic, record.meta.partition);
            let mark = partition_marks.entry(field).or_insert(i64::MIN);
            *mark = (*mark).max(record.message.ts());
        }

        // Rewards first (acknowledged), then the state.
        let records = self.reward_records(&due, mrrec_stream::now_ms()).await?;
        if let Err((e, _)) = self.publisher.publish_all(records).await {
            return Err(StageError::retryable_from("publishing rewards", e));
        }

        let mut write = StoreBatch::default();
        offsets.advance(&mut write);
        self.write_entries(&mut write, &keys, &prefix, &ids, entry_values, &entries)?;
        move_watermarks(&mut write, &keys, &watermarks_before, &partition_marks);
        self.expire(
            &memory,
            &keys,
            &watermarks_before,
            &partition_marks,
            oldest_value,
            &mut write,
        )
        .await?;
        match memory.apply(&write).await.map_err(StageError::from)? {
            true => Ok(()),
            false => {
                // Another instance moved an entry first: re-read and redo
                // (rewards already published are published again, unchanged).
                Err(StageError::retryable(
                    "reward state changed under this batch",
                ))
            }
        }
    }

    async fn stored_offset(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StageError> {
        let memory = self.ranker.memory();
        OffsetGuard::stored(memory.kv(), &keys(memory).offsets, topic, partition)
            .await
            .map_err(StageError::from)
    }
}

/// How the reward stage consumes: trajectories and outcomes in one group.
pub fn runner_settings(config: &Config) -> mrrec_stream::RunnerSettings {
    mrrec_stream::RunnerSettings::from_config(
        config,
        STAGE,
        &[Topic::Trajectories, Topic::Outcomes],
    )
}

/// Opening the stage failed (both permanent: fix the setup and restart).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the item index in {path}: {source}")]
    Index {
        path: String,
        source: mrrec_index::IndexError,
    },
    #[error("creating the producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// The reward stage from the configuration.
pub fn open_stage<S: KvStore>(
    config: &Config,
    clients: &mrrec_stream::KafkaClients,
    memory: MemoryStore<S>,
) -> Result<RewardStage<S>, OpenError> {
    let items_dir = config.index.path.join("items");
    let items =
        mrrec_index::ItemIndex::open_read_only(&items_dir).map_err(|source| OpenError::Index {
            path: items_dir.display().to_string(),
            source,
        })?;
    let settings = RankSettings::from_config(config);
    let ranker = Ranker::new(memory, std::sync::Arc::new(items), &settings);
    let publisher = Publisher::new(clients, STAGE)?;
    Ok(RewardStage::new(
        ranker,
        publisher,
        config.reward.window_ms,
        &config.topics.prefix,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrrec_messages::{Event, EventKind};
    use proptest::prelude::*;

    const WINDOW: i64 = 1_000;

    fn trajectory(index: u32, ts: i64) -> Joined {
        Joined::Trajectory(Trajectory {
            trajectory_id: format!("r1/{index}"),
            request_id: "r1".into(),
            user_id: "u1".into(),
            index,
            group_size: 3,
            served: index == 0,
            policy_version: 0,
            prompt: "p".into(),
            segments: Vec::new(),
            profile: "x".into(),
            memory_ids: Vec::new(),
            format_ok: true,
            ts,
        })
    }

    fn outcome(item: &str, kind: EventKind, value: Option<f64>, ts: i64) -> Joined {
        Joined::Outcome(Outcome {
            request_id: "r1".into(),
            event: Event {
                event_id: format!("e-{item}-{ts}"),
                user_id: "u1".into(),
                kind,
                item_id: Some(item.into()),
                value,
                text: None,
                attrs: None,
                ts,
            },
        })
    }

    /// Every (trajectory id, target) pair the join emits for `records`.
    fn run(records: &[Joined]) -> Vec<(String, String)> {
        let mut entry = JoinEntry::default();
        let mut out: Vec<(String, String)> = records
            .iter()
            .flat_map(|r| join_record(&mut entry, r, WINDOW))
            .map(|(t, p)| (t.trajectory_id, p.item_id))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_first_positive_outcome_within_the_window_is_the_target() {
        let records = vec![
            trajectory(0, 100),
            outcome("late", EventKind::Click, None, 100 + WINDOW + 1),
            outcome("meh", EventKind::Rate, Some(3.0), 200),
            outcome("first", EventKind::Rate, Some(5.0), 300),
            outcome("second", EventKind::Purchase, None, 400),
            trajectory(1, 100),
            trajectory(0, 100),
        ];
        assert_eq!(
            run(&records),
            vec![
                ("r1/0".to_owned(), "first".to_owned()),
                ("r1/1".to_owned(), "first".to_owned())
            ]
        );
        // No positive outcome within the window: no reward at all.
        assert!(run(&[
            trajectory(0, 100),
            outcome("late", EventKind::Click, None, 5_000)
        ])
        .is_empty());
    }

    proptest! {
        /// The two topics interleave arbitrarily (each keeps its own order):
        /// the rewards are the same whatever the interleaving, and no
        /// trajectory is rewarded twice even when it is delivered twice.
        #[test]
        fn any_interleaving_gives_the_same_rewards(
            picks in proptest::collection::vec(any::<bool>(), 0..12),
            outcome_ts in proptest::collection::vec((0i64..3_000, 0u8..4), 1..5),
            repeat in any::<bool>(),
        ) {
            let mut trajectories: Vec<Joined> = (0..3).map(|i| trajectory(i, 100)).collect();
            if repeat {
                trajectories.push(trajectory(1, 100));
            }
            let outcomes: Vec<Joined> = outcome_ts
                .iter()
                .enumerate()
                .map(|(i, (ts, kind))| match kind {
                    0 => outcome(&format!("c{i}"), EventKind::Click, None, *ts),
                    1 => outcome(&format!("r{i}"), EventKind::Rate, Some(2.0), *ts),
                    2 => outcome(&format!("p{i}"), EventKind::Purchase, None, *ts),
                    _ => outcome(&format!("v{i}"), EventKind::View, None, *ts),
                })
                .collect();
            let sequential: Vec<Joined> =
                trajectories.iter().chain(outcomes.iter()).cloned().collect();
            let expected = run(&sequential);
            let (mut t, mut o) = (trajectories.iter(), outcomes.iter());
            let mut merged = Vec::new();
            for pick in picks {
                let next = if pick { t.next() } else { o.next() };
                merged.extend(next.cloned());
            }
            merged.extend(t.cloned());
            merged.extend(o.cloned());
            prop_assert_eq!(run(&merged), expected.clone());
            let ids: std::collections::BTreeSet<_> = expected.iter().map(|(id, _)| id).collect();
            prop_assert_eq!(ids.len(), expected.len());
        }
    }

    /// Issue 19, point 9: a replayed recommend batch samples again and may
    /// log a different trajectory under the same id; the join keeps the
    /// first one (what the user was served), whichever side arrives first.
    #[test]
    fn a_replayed_trajectory_with_other_content_does_not_replace_the_first() {
        let mut replayed = trajectory(0, 100);
        if let Joined::Trajectory(t) = &mut replayed {
            t.profile = "sampled again".into();
        }
        for records in [
            vec![
                trajectory(0, 100),
                replayed.clone(),
                outcome("hit", EventKind::Purchase, None, 150),
            ],
            vec![
                trajectory(0, 100),
                outcome("hit", EventKind::Purchase, None, 150),
                replayed.clone(),
            ],
        ] {
            let mut entry = JoinEntry::default();
            let due: Vec<(Trajectory, Positive)> = records
                .iter()
                .flat_map(|r| join_record(&mut entry, r, WINDOW))
                .collect();
            assert_eq!(due.len(), 1);
            assert_eq!(due[0].0.profile, "x");
        }
    }

    #[test]
    fn a_ts_beyond_the_clock_plus_a_window_is_refused() {
        assert!(check_time(1_000 + WINDOW, 1_000, WINDOW).is_ok());
        assert!(check_time(i64::MIN, 1_000, WINDOW).is_ok());
        let poison = check_time(1_001 + WINDOW, 1_000, WINDOW).unwrap_err();
        assert_eq!(poison.kind, "ts_in_future");
        // No overflow at the ends of time.
        assert!(check_time(i64::MAX, i64::MAX, WINDOW).is_ok());
    }

    /// Issue 19, point 4, through the stage itself (embedded store, the
    /// in-process broker): an outcome from year 9999 is refused at decode
    /// (so the runner dead-letters it), the open join survives and gets its
    /// reward, and watermarks are one guarded field per input partition —
    /// no key that two instances would both guard.
    #[tokio::test]
    async fn an_outcome_from_the_far_future_is_refused_and_no_join_is_lost() {
        use mrrec_stream::{Decoded, PartitionRange, RecordMeta};
        use std::sync::Arc;

        let tmp = tempfile::tempdir().unwrap();
        let store = mrrec_store::EmbeddedStore::open(&tmp.path().join("store")).unwrap();
        let memory = MemoryStore::new(store, Keyspace::new("t:"));
        let items = Arc::new(mrrec_index::ItemIndex::open(None).unwrap());
        let config = Config::defaults();
        let settings = RankSettings::from_config(&config);
        let ranker = Ranker::new(memory.clone(), items, &settings);
        let broker = mrrec_stream::EmbeddedBroker::start("mrrec.", 1).unwrap();
        let clients =
            mrrec_stream::KafkaClients::new(broker.bootstrap_servers(), &Default::default());
        let publisher = Publisher::new(&clients, STAGE).unwrap();
        let window = 60_000u64;
        let mut stage = RewardStage::new(ranker, publisher, window, "mrrec.");

        let now = mrrec_stream::now_ms();
        let meta = |topic: &str, offset: i64| RecordMeta {
            topic: Arc::from(topic),
            partition: 0,
            offset,
            key: None,
            timestamp_ms: None,
        };
        let batch = |topic: &str, offset: i64, message: Joined| Batch {
            records: vec![Decoded {
                meta: meta(topic, offset),
                message,
            }],
            ranges: vec![PartitionRange {
                topic: Arc::from(topic),
                partition: 0,
                first_offset: offset,
                last_offset: offset,
            }],
        };
        let trajectories = "mrrec.trajectories";
        let outcomes = "mrrec.outcomes";
        stage
            .process(&batch(trajectories, 0, trajectory(0, now)))
            .await
            .unwrap();

        // Year 9999: refused before it can move any watermark.
        let forged = outcome("x", EventKind::Purchase, None, 253_402_300_799_000);
        let Joined::Outcome(forged) = forged else {
            unreachable!()
        };
        let payload = mrrec_messages::encode(&forged).unwrap();
        let poison = stage
            .decode(&meta(outcomes, 0), Some(&payload))
            .unwrap_err();
        assert_eq!(poison.kind, "ts_in_future", "{}", poison.reason);
        // An outcome of now is accepted, and joins the open request.
        let honest = outcome("hit", EventKind::Purchase, None, now + 1);
        let Joined::Outcome(honest) = honest else {
            unreachable!()
        };
        let payload = mrrec_messages::encode(&honest).unwrap();
        let decoded = stage.decode(&meta(outcomes, 1), Some(&payload)).unwrap();
        stage.process(&batch(outcomes, 1, decoded)).await.unwrap();

        let open = memory.kv().get_all("t:reward:open").await.unwrap();
        let entry: JoinEntry = serde_json::from_str(&open["r1"]).unwrap();
        assert_eq!(entry.target.map(|t| t.item_id).as_deref(), Some("hit"));
        assert!(entry.known.contains(&"r1/0".to_owned()));

        let marks = memory.kv().get_all("t:reward:watermarks").await.unwrap();
        assert_eq!(marks.len(), 2, "{marks:?}");
        assert_eq!(marks["mrrec.trajectories:0"], now.to_string());
        assert_eq!(marks["mrrec.outcomes:0"], (now + 1).to_string());
        let meta_fields = memory.kv().get_all("t:reward:meta").await.unwrap();
        assert!(!meta_fields.contains_key("watermark"), "{meta_fields:?}");
    }
}
