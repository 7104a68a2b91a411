//! The trainer stage (`mrrec run --stage train`, `mrrec train --once`).
//!
//! Rewards from `mrrec.rewards` go into a durable buffer file next to the
//! registry (`policy.dir/train-buffer.jsonl`, with the offsets it holds, so
//! a restart neither loses nor repeats one). A round starts once
//! `train.every_rewards` are buffered or `train.every_ms` has passed since
//! the first (checked as rewards arrive: a quiet stream has nothing new to
//! learn from). The round (mrrec-train) writes `policy/vN+1/` only if it
//! loads here in mistral.rs and does not regress; then it is announced on
//! `mrrec.policy`. Every round is logged to `policy.dir/train-log.jsonl`;
//! every reward left out goes to the DLQ with its reason.
//!
//! A round happens once. The version it publishes records the buffer
//! offsets its rewards came from (`policy.json`'s `trained_on`). If the
//! announcement then fails (a broker outage) or the process dies before
//! the buffer is cleared, the next attempt finds the newest version trained
//! on those rewards, announces it again (followers ignore a version they
//! already serve) and drops the rewards from the buffer — it never trains
//! them into a second version. A round that fails on its input (an error
//! that would recur on every retry) is logged, its rewards dead-lettered
//! with the reason and the buffer cleared, instead of being retried forever.

use crate::events::RoundEnded;
use crate::{Decision, Rewarded, RoundReport, TrainError, TrainSettings};
use mrrec_config::Config;
use mrrec_llm::{EmbeddedLlm, EngineOptions};
use mrrec_messages::{encode, MessageError, Reward, Topic};
use mrrec_policy::{PolicyError, PolicyRegistry};
use mrrec_stream::events::DeadLettered;
use mrrec_stream::{
    decode_message, Batch, KafkaClients, OutgoingRecord, Poison, Publisher, RecordMeta,
    RunnerSettings, Stage, StageError,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the train stage, or one of its rounds, failed. [`Self::is_input`]
/// tells a round that would fail the same way on every retry (its rewards
/// go to the DLQ) from one that can be retried.
#[derive(Debug, thiserror::Error)]
pub enum TrainStageError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the reward buffer: {0}")]
    Buffer(#[from] serde_json::Error),
    #[error("encoding a message: {0}")]
    Encode(#[from] MessageError),
    #[error("creating the producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{what}: {source}")]
    Publish {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("{0}")]
    Round(#[from] TrainError),
    #[error("the training round panicked: {0}")]
    Panicked(String),
    #[error("reading the policy registry: {0}")]
    Registry(#[from] PolicyError),
}

impl TrainStageError {
    /// Whether the error comes from the round's input (the same rewards
    /// fail the same way on every retry) rather than from the disk or the
    /// broker.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            TrainStageError::Round(TrainError::Input(_) | TrainError::Tensor(_))
        )
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| TrainStageError::Io { what, path, source }
    }
}

type Result<T, E = TrainStageError> = std::result::Result<T, E>;

/// Stage name (group id suffix, metric label, dead-letter stage).
pub const STAGE: &str = "train";

/// The trainer's settings from `[train]`.
pub fn settings(config: &Config) -> TrainSettings {
    let t = &config.train;
    TrainSettings {
        grpo: crate::GrpoSettings {
            learning_rate: t.learning_rate,
            clip_epsilon: t.clip_epsilon,
            kl_coef: t.kl_coef,
            weight_decay: t.weight_decay,
            max_grad_norm: t.max_grad_norm,
            epochs: t.epochs as usize,
            minibatch: t.minibatch as usize,
            chunk_tokens: t.chunk_tokens as usize,
            seed: 0,
        },
        holdout_fraction: t.holdout_fraction,
        max_regression: t.max_regression,
        max_tokens: t.max_tokens as usize,
    }
}

/// A reward and where it came from (for its DLQ entry if it is left out).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Buffered {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reward: Reward,
}

/// One appended line of the buffer file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct BufferLine {
    /// `topic:partition` → last offset this line (and every earlier one) holds.
    offsets: BTreeMap<String, i64>,
    rewards: Vec<Buffered>,
}

/// The durable buffer of rewards not yet trained on.
pub struct RewardBuffer {
    path: PathBuf,
    offsets: BTreeMap<String, i64>,
    rewards: Vec<Buffered>,
    first_at: Option<Instant>,
}

impl RewardBuffer {
    /// Reads the buffer file; a torn last line (a crash mid-append) is
    /// dropped, and its rewards are read again from the topic.
    pub fn open(path: PathBuf) -> Result<Self> {
        let mut buffer = Self {
            path,
            offsets: BTreeMap::new(),
            rewards: Vec::new(),
            first_at: None,
        };
        if let Ok(text) = std::fs::read_to_string(&buffer.path) {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match serde_json::from_str::<BufferLine>(line) {
                    Ok(parsed) => {
                        buffer.offsets.extend(parsed.offsets);
                        buffer.rewards.extend(parsed.rewards);
                    }
                    Err(e) => {
                        tracing::warn!(path = %buffer.path.display(), error = %e, "dropping a torn buffer line; its rewards are read again");
                        break;
                    }
                }
            }
        }
        if !buffer.rewards.is_empty() {
            buffer.first_at = Some(Instant::now());
        }
        Ok(buffer)
    }

    fn append(&mut self, line: BufferLine) -> Result<()> {
        let io = || TrainStageError::io("appending to", &self.path);
        let mut file = open_append(&self.path)?;
        let mut text = serde_json::to_string(&line)?;
        text.push('\n');
        file.write_all(text.as_bytes()).map_err(io())?;
        file.sync_data().map_err(io())?;
        if self.first_at.is_none() && !line.rewards.is_empty() {
            self.first_at = Some(Instant::now());
        }
        self.offsets.extend(line.offsets);
        self.rewards.extend(line.rewards);
        Ok(())
    }

    /// Empties the buffer, keeping its offsets (written as one fresh line,
    /// then renamed over the file).
    pub fn clear(&mut self) -> Result<()> {
        self.retain(|_| false)
    }

    /// Keeps only the rewards `keep` accepts, and the offsets (written as
    /// one fresh line, then renamed over the file).
    pub fn retain(&mut self, keep: impl Fn(&Buffered) -> bool) -> Result<()> {
        let mut kept = std::mem::take(&mut self.rewards);
        kept.retain(|b| keep(b));
        let line = BufferLine {
            offsets: self.offsets.clone(),
            rewards: kept,
        };
        let tmp = self.path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, serde_json::to_string(&line)? + "\n")
            .map_err(TrainStageError::io("writing", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(TrainStageError::io("replacing", &self.path))?;
        self.rewards = line.rewards;
        if self.rewards.is_empty() {
            self.first_at = None;
        }
        Ok(())
    }
}

/// `path` opened for appending, its directory created if needed.
fn open_append(path: &Path) -> Result<std::fs::File> {
    let io = || TrainStageError::io("appending to", path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io())?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io())
}

/// Whether `trained_on` (a version's `topic:partition` → offset) covers `b`.
pub fn covered(trained_on: &BTreeMap<String, i64>, b: &Buffered) -> bool {
    trained_on
        .get(&format!("{}:{}", b.topic, b.partition))
        .is_some_and(|o| b.offset <= *o)
}

/// What a round needs besides the rewards.
pub struct Trainer {
    registry: PolicyRegistry,
    settings: TrainSettings,
    publisher: Publisher,
    prefix: String,
    log_path: PathBuf,
}

impl Trainer {
    pub fn new(config: &Config, clients: &KafkaClients) -> Result<Self> {
        Ok(Self {
            registry: PolicyRegistry::new(&config.policy.dir),
            settings: settings(config),
            publisher: Publisher::new(clients, STAGE)?,
            prefix: config.topics.prefix.clone(),
            log_path: config.policy.dir.join("train-log.jsonl"),
        })
    }

    /// One round over `rewards`; publishes the announcement and the DLQ
    /// entries. `trained_on` (the buffer's offsets; empty outside the
    /// stage) goes into the new version's metadata.
    pub async fn round(
        &self,
        rewards: &[Buffered],
        trained_on: &BTreeMap<String, i64>,
    ) -> Result<RoundReport> {
        let mut rewarded = Vec::new();
        let mut dead = Vec::new();
        let mut origin: BTreeMap<String, &Buffered> = BTreeMap::new();
        for b in rewards {
            match &b.reward.trajectory {
                Some(trajectory) => {
                    origin.insert(b.reward.trajectory_id.clone(), b);
                    rewarded.push(Rewarded {
                        trajectory: trajectory.clone(),
                        reward: b.reward.total,
                    });
                }
                None => dead.push((b, "the reward carries no trajectory".to_owned())),
            }
        }
        let registry = self.registry.clone();
        let settings = self.settings.clone();
        let trained_on = trained_on.clone();
        let handle = tokio::runtime::Handle::current();
        let report = tokio::task::spawn_blocking(move || {
            let verify = |dir: &Path| -> Result<(), String> {
                handle
                    .block_on(EmbeddedLlm::open(dir, EngineOptions::default()))
                    .map(drop)
                    .map_err(|e| format!("mistral.rs does not load it: {e}"))
            };
            crate::train_round_on(&registry, &rewarded, &settings, &verify, &trained_on)
        })
        .await
        .map_err(|e| TrainStageError::Panicked(e.to_string()))??;
        for (trajectory_id, reason) in &report.skipped {
            if let Some(b) = origin.get(trajectory_id) {
                dead.push((b, reason.clone()));
            }
        }
        let letters = dead
            .iter()
            .map(|(b, reason)| self.dead_letter(b, "skipped", reason.clone()))
            .collect::<Result<Vec<_>>>()?;
        let (mut records, dead_events): (Vec<_>, Vec<_>) = letters.into_iter().unzip();
        if let Decision::Published(version) = &report.decision {
            let announcement =
                self.registry
                    .announcement(version, Some(report.parent), report.metrics.clone());
            records.push(OutgoingRecord {
                topic: Topic::Policy.name(&self.prefix),
                key: None,
                payload: encode(&announcement)?,
            });
        }
        self.publish(
            records,
            "publishing the round's announcement and dead letters",
        )
        .await?;
        dead_events.iter().for_each(DeadLettered::emit);
        let ended = RoundEnded::Decided {
            report: &report,
            rewards: rewards.len(),
            dead_lettered: dead.len(),
        };
        ended.emit();
        self.append_log(&ended.log_line())?;
        Ok(report)
    }

    /// Publishes `records` and waits for the broker's acknowledgement.
    async fn publish(&self, records: Vec<OutgoingRecord>, what: &'static str) -> Result<()> {
        self.publisher
            .publish_all(records)
            .await
            .map_err(|(source, _)| TrainStageError::Publish { what, source })
    }

    /// The dead letter of a buffered reward the trainer could not use.
    fn dead_letter(
        &self,
        b: &Buffered,
        kind: &'static str,
        reason: String,
    ) -> Result<(OutgoingRecord, DeadLettered)> {
        let event = DeadLettered {
            stage: STAGE.to_owned(),
            topic: b.topic.clone(),
            partition: b.partition,
            offset: b.offset,
            kind,
            reason,
        };
        let payload = serde_json::to_vec(&b.reward)?;
        let key = Some(b.reward.request_id.clone().into_bytes());
        let record =
            OutgoingRecord::dead_letter(&Topic::Dlq.name(&self.prefix), &event, key, &payload)?;
        Ok((record, event))
    }

    /// The newest version when its metadata says it was trained on rewards
    /// in `rewards` (a round that published but was not finished).
    pub fn finished_round(
        &self,
        rewards: &[Buffered],
    ) -> Result<Option<(mrrec_policy::PolicyVersion, mrrec_policy::PolicyMeta)>> {
        let Some(latest) = self.registry.latest()? else {
            return Ok(None);
        };
        let Some(meta) = self.registry.meta(&latest)? else {
            return Ok(None);
        };
        let done =
            !meta.trained_on.is_empty() && rewards.iter().any(|b| covered(&meta.trained_on, b));
        Ok(done.then_some((latest, meta)))
    }

    /// Announces `version` again (its round published it, and the
    /// announcement may never have gone out).
    pub async fn reannounce(
        &self,
        version: &mrrec_policy::PolicyVersion,
        meta: &mrrec_policy::PolicyMeta,
        dropped: usize,
    ) -> Result<()> {
        let announcement = self
            .registry
            .announcement(version, meta.parent, meta.metrics.clone());
        let record = OutgoingRecord {
            topic: Topic::Policy.name(&self.prefix),
            key: None,
            payload: encode(&announcement)?,
        };
        self.publish(
            vec![record],
            "announcing the finished round's version again",
        )
        .await?;
        let ended = RoundEnded::Reannounced {
            version: version.version,
            parent: meta.parent,
            dropped,
        };
        ended.emit();
        self.append_log(&ended.log_line())
    }

    /// A round that failed on its input: every reward goes to the DLQ with
    /// the reason, and the round is logged as failed.
    async fn fail_round(&self, rewards: &[Buffered], reason: &str) -> Result<()> {
        let letter_reason = format!("training round failed on its input: {reason}");
        let (records, events): (Vec<_>, Vec<_>) = rewards
            .iter()
            .map(|b| self.dead_letter(b, "round_failed", letter_reason.clone()))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .unzip();
        self.publish(records, "dead-lettering a failed round's rewards")
            .await?;
        events.iter().for_each(DeadLettered::emit);
        let ended = RoundEnded::Failed {
            reason,
            rewards: rewards.len(),
        };
        ended.emit();
        self.append_log(&ended.log_line())
    }

    fn append_log(&self, line: &serde_json::Value) -> Result<()> {
        let mut file = open_append(&self.log_path)?;
        writeln!(file, "{line}").map_err(TrainStageError::io("appending to", &self.log_path))
    }
}

/// The stage: buffer rewards, run a round when due.
pub struct TrainStage {
    trainer: Trainer,
    buffer: RewardBuffer,
    every_rewards: usize,
    every: Duration,
    /// `train --once`: only buffer; the round runs after the stream drains.
    hold: bool,
    last_batch_ms: Arc<AtomicI64>,
}

impl TrainStage {
    /// A round that published a version but did not finish (no
    /// announcement, or the buffer not cleared): announce that version
    /// again and drop the rewards it was trained on.
    async fn settle_finished_round(&mut self) -> Result<(), StageError> {
        let finished = self
            .trainer
            .finished_round(&self.buffer.rewards)
            .map_err(|e| StageError::retryable_from("reading the policy registry", e))?;
        let Some((version, meta)) = finished else {
            return Ok(());
        };
        let dropped = self
            .buffer
            .rewards
            .iter()
            .filter(|b| covered(&meta.trained_on, b))
            .count();
        self.trainer
            .reannounce(&version, &meta, dropped)
            .await
            .map_err(|e| {
                StageError::retryable_from("announcing a finished round's version again", e)
            })?;
        self.buffer
            .retain(|b| !covered(&meta.trained_on, b))
            .map_err(|e| StageError::fatal_from("rewriting the reward buffer", e))
    }

    fn clear_buffer(&mut self) -> Result<(), StageError> {
        self.buffer
            .clear()
            .map_err(|e| StageError::fatal_from("clearing the reward buffer", e))
    }
}

impl Stage for TrainStage {
    type Message = Reward;

    fn name(&self) -> &str {
        STAGE
    }

    fn decode(&self, record: &RecordMeta, payload: Option<&[u8]>) -> Result<Reward, Poison> {
        decode_message(record, payload)
    }

    async fn process(&mut self, batch: &Batch<Reward>) -> Result<(), StageError> {
        self.last_batch_ms
            .store(mrrec_stream::now_ms(), Ordering::Relaxed);
        let line = BufferLine {
            offsets: batch
                .ranges
                .iter()
                .map(|r| (format!("{}:{}", r.topic, r.partition), r.last_offset))
                .collect(),
            rewards: batch
                .records
                .iter()
                .filter(|r| {
                    let key = format!("{}:{}", r.meta.topic, r.meta.partition);
                    self.buffer
                        .offsets
                        .get(&key)
                        .is_none_or(|o| r.meta.offset > *o)
                })
                .map(|r| Buffered {
                    topic: r.meta.topic.to_string(),
                    partition: r.meta.partition,
                    offset: r.meta.offset,
                    reward: r.message.clone(),
                })
                .collect(),
        };
        self.buffer
            .append(line)
            .map_err(|e| StageError::retryable_from("writing the reward buffer", e))?;
        let due = self.buffer.rewards.len() >= self.every_rewards
            || self
                .buffer
                .first_at
                .is_some_and(|t| t.elapsed() >= self.every);
        if self.hold || !due {
            return Ok(());
        }
        self.settle_finished_round().await?;
        if self.buffer.rewards.is_empty() {
            return Ok(());
        }
        let rewards = self.buffer.rewards.clone();
        let trained_on = self.buffer.offsets.clone();
        match self.trainer.round(&rewards, &trained_on).await {
            Ok(_) => self.clear_buffer(),
            Err(e) if e.is_input() => {
                self.trainer
                    .fail_round(&rewards, &format!("{e:#}"))
                    .await
                    .map_err(|e| StageError::retryable_from("dead-lettering a failed round", e))?;
                self.clear_buffer()
            }
            Err(e) => Err(StageError::retryable_from("training round", e)),
        }
    }

    async fn stored_offset(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StageError> {
        Ok(self
            .buffer
            .offsets
            .get(&format!("{topic}:{partition}"))
            .copied())
    }
}

/// The stage from the configuration. `hold` (`train --once`): only buffer;
/// the caller runs the round after the stream drains.
pub fn open_stage(config: &Config, clients: &KafkaClients, hold: bool) -> Result<TrainStage> {
    let buffer = RewardBuffer::open(config.policy.dir.join("train-buffer.jsonl"))?;
    Ok(TrainStage {
        trainer: Trainer::new(config, clients)?,
        buffer,
        every_rewards: config.train.every_rewards as usize,
        every: Duration::from_millis(config.train.every_ms),
        hold,
        last_batch_ms: Arc::new(AtomicI64::new(0)),
    })
}

/// Runner settings of the stage: it reads `mrrec.rewards`.
pub fn runner_settings(config: &Config) -> RunnerSettings {
    RunnerSettings::from_config(config, STAGE, &[Topic::Rewards])
}

/// The train stage and its runner settings, for a pipeline.
pub fn stage_and_settings(
    config: &Config,
    clients: &KafkaClients,
) -> Result<(TrainStage, RunnerSettings)> {
    Ok((open_stage(config, clients, false)?, runner_settings(config)))
}

/// What `mrrec train --once` did.
#[derive(Debug)]
pub enum Once {
    /// The topic held no reward that was not trained on yet.
    NothingNew,
    /// Rewards were read; `reannounced` is the version (and how many of
    /// the rewards it was trained on) of a round that had published but
    /// not finished, announced again; `round` is the round over the rest,
    /// if any were left.
    Trained {
        rewards: usize,
        reannounced: Option<(u32, usize)>,
        round: Option<RoundReport>,
    },
}

/// `mrrec train --once`: reads the rewards not yet trained on until the
/// topic has been quiet for a few seconds, runs one round over them, and
/// returns. `shutdown` also ends the reading early (a signal).
pub async fn once(
    config: &Config,
    clients: &KafkaClients,
    shutdown: mrrec_stream::Shutdown,
) -> std::result::Result<Once, OnceError> {
    let stage = open_stage(config, clients, true)?;
    let last_batch = stage.last_batch_ms();
    let quiet_ms = 2 * config.stream.batch_max_ms as i64 + 5_000;
    let started = mrrec_stream::now_ms();
    let watcher = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let last = last_batch.load(Ordering::Relaxed).max(started);
                if mrrec_stream::now_ms() - last > quiet_ms {
                    shutdown.trigger();
                    return;
                }
            }
        })
    };
    let run = mrrec_stream::StageRunner::new(clients.clone(), runner_settings(config), stage)
        .run(shutdown)
        .await;
    watcher.abort();
    run?;
    let mut buffer = RewardBuffer::open(config.policy.dir.join("train-buffer.jsonl"))?;
    if buffer.rewards.is_empty() {
        return Ok(Once::NothingNew);
    }
    let rewards = buffer.rewards.len();
    tracing::info!(rewards, "training one round");
    let trainer = Trainer::new(config, clients)?;
    let mut reannounced = None;
    if let Some((version, meta)) = trainer.finished_round(&buffer.rewards)? {
        buffer.retain(|b| !covered(&meta.trained_on, b))?;
        let dropped = rewards - buffer.rewards.len();
        trainer.reannounce(&version, &meta, dropped).await?;
        reannounced = Some((version.version, dropped));
    }
    let round = if buffer.rewards.is_empty() {
        None
    } else {
        let trained_on = buffer.offsets.clone();
        let report = trainer.round(&buffer.rewards, &trained_on).await?;
        buffer.clear()?;
        Some(report)
    };
    Ok(Once::Trained {
        rewards,
        reannounced,
        round,
    })
}

/// Why `train --once` failed: reading the topic, or the round.
#[derive(Debug, thiserror::Error)]
pub enum OnceError {
    #[error("reading mrrec.rewards: {0}")]
    Read(#[from] mrrec_stream::StreamError),
    #[error("{0}")]
    Train(#[from] TrainStageError),
}

impl TrainStage {
    /// When the stage last received a batch (ms since the epoch; 0 before
    /// the first): `train --once` stops once the topic has been quiet.
    pub fn last_batch_ms(&self) -> Arc<AtomicI64> {
        self.last_batch_ms.clone()
    }
}

impl RewardBuffer {
    /// The buffered rewards not yet trained on.
    pub fn rewards(&self) -> &[Buffered] {
        &self.rewards
    }

    /// `topic:partition` → the last offset the buffer holds.
    pub fn offsets(&self) -> &BTreeMap<String, i64> {
        &self.offsets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffered(offset: i64) -> Buffered {
        Buffered {
            topic: "mrrec.rewards".into(),
            partition: 0,
            offset,
            reward: Reward {
                trajectory_id: format!("r{offset}/0"),
                request_id: format!("r{offset}"),
                user_id: "u1".into(),
                policy_version: 0,
                target_item_id: "i1".into(),
                target_rank: Some(3),
                components: mrrec_messages::RewardComponents {
                    format_ok: 1.0,
                    ndcg_100: 0.5,
                    ndcg_1000: 0.5,
                    used_memory: 0.0,
                },
                total: 5.1,
                ts: 1,
                trajectory: None,
            },
        }
    }

    #[test]
    fn the_buffer_survives_a_torn_append_and_keeps_offsets_when_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("train-buffer.jsonl");
        let mut buffer = RewardBuffer::open(path.clone()).unwrap();
        buffer
            .append(BufferLine {
                offsets: [("mrrec.rewards:0".to_owned(), 1)].into(),
                rewards: vec![buffered(0), buffered(1)],
            })
            .unwrap();
        // A crash in the middle of the next append leaves half a line.
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(br#"{"offsets":{"mrrec.rewards:0":5},"rewa"#)
            .unwrap();
        let reopened = RewardBuffer::open(path.clone()).unwrap();
        assert_eq!(reopened.rewards.len(), 2);
        assert_eq!(
            reopened.offsets["mrrec.rewards:0"], 1,
            "the torn line's offsets are not trusted"
        );

        let mut reopened = reopened;
        reopened.clear().unwrap();
        let cleared = RewardBuffer::open(path).unwrap();
        assert!(cleared.rewards.is_empty());
        assert_eq!(cleared.offsets["mrrec.rewards:0"], 1);
    }

    /// Issue 19, point 3: a round published v0001 (trained on offsets 0 and
    /// 1) and died before announcing it and clearing the buffer. The next
    /// batch announces v0001 again, drops those two rewards and trains only
    /// what is new: no second version from the same rewards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_that_published_is_announced_again_never_trained_again() {
        use mrrec_stream::{Decoded, PartitionRange};
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::Message as _;

        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::defaults();
        config.policy.dir = tmp.path().join("policy");
        config.train.every_rewards = 1;
        let registry = PolicyRegistry::new(&config.policy.dir);
        let catalog = vec!["Toy Story (1995) | Animation, Comedy".to_owned()];
        for version in 0..2u32 {
            let staging = registry.staging_dir(version).unwrap();
            let mut meta =
                mrrec_policy::PolicyMeta::new(Some(version), version.checked_sub(1), "test");
            if version == 1 {
                meta.trained_on = [("mrrec.rewards:0".to_owned(), 1)].into();
            }
            mrrec_policy::init_model(&staging, &mrrec_policy::ModelSpec::tiny(0), &catalog, &meta)
                .unwrap();
            registry.publish(&staging, version).unwrap();
        }
        // The unfinished round's buffer: rewards 0 and 1, offsets up to 1.
        let mut buffer = RewardBuffer::open(config.policy.dir.join("train-buffer.jsonl")).unwrap();
        buffer
            .append(BufferLine {
                offsets: [("mrrec.rewards:0".to_owned(), 1)].into(),
                rewards: vec![buffered(0), buffered(1)],
            })
            .unwrap();

        let broker = mrrec_stream::EmbeddedBroker::start("mrrec.", 1).unwrap();
        let clients = KafkaClients::new(broker.bootstrap_servers(), &Default::default());
        let mut stage = open_stage(&config, &clients, false).unwrap();
        assert_eq!(stage.buffer.rewards.len(), 2);
        let next = buffered(2);
        let meta = RecordMeta {
            topic: Arc::from("mrrec.rewards"),
            partition: 0,
            offset: 2,
            key: None,
            timestamp_ms: None,
        };
        let batch = Batch {
            records: vec![Decoded {
                meta,
                message: next.reward.clone(),
            }],
            ranges: vec![PartitionRange {
                topic: Arc::from("mrrec.rewards"),
                partition: 0,
                first_offset: 2,
                last_offset: 2,
            }],
        };
        stage.process(&batch).await.unwrap();

        assert_eq!(
            registry.latest().unwrap().unwrap().version,
            1,
            "no second version"
        );
        assert!(stage.buffer.rewards.is_empty());
        let reader: StreamConsumer = clients.reader("policy-check").create().unwrap();
        reader.subscribe(&["mrrec.policy"]).unwrap();
        let record = tokio::time::timeout(Duration::from_secs(20), reader.recv())
            .await
            .expect("an announcement")
            .unwrap();
        let announced: mrrec_messages::PolicyAnnouncement =
            mrrec_messages::decode(record.payload().unwrap()).unwrap();
        assert_eq!(announced.version, 1);
        let log = std::fs::read_to_string(config.policy.dir.join("train-log.jsonl")).unwrap();
        let lines: Vec<serde_json::Value> = log
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["decision"], "reannounced", "{log}");
        assert_eq!(lines[0]["rewards"], 2, "{log}");
        // Only the new reward went into a round (it has no trajectory:
        // nothing to learn, and it is dead-lettered with that reason).
        assert_eq!(lines[1]["rewards"], 1, "{log}");
        assert_eq!(lines.len(), 2, "{log}");

        // A round that fails on its input dead-letters every reward with
        // the reason, and logs itself as failed.
        stage
            .trainer
            .fail_round(&[buffered(5), buffered(6)], "bad input")
            .await
            .unwrap();
        let dlq: StreamConsumer = clients.reader("dlq-check").create().unwrap();
        dlq.subscribe(&["mrrec.dlq"]).unwrap();
        let mut letters = Vec::new();
        for _ in 0..3 {
            let record = tokio::time::timeout(Duration::from_secs(20), dlq.recv())
                .await
                .expect("a dead letter")
                .unwrap();
            let letter: mrrec_messages::DeadLetter =
                mrrec_messages::decode(record.payload().unwrap()).unwrap();
            letters.push(letter);
        }
        letters.sort_by_key(|l| l.offset);
        assert!(letters
            .iter()
            .all(|l| l.stage == "train" && l.source_topic == "mrrec.rewards"));
        assert_eq!(
            letters.iter().map(|l| l.offset).collect::<Vec<_>>(),
            [2, 5, 6]
        );
        assert!(
            letters[1]
                .error
                .contains("training round failed on its input: bad input"),
            "{}",
            letters[1].error
        );
        let log = std::fs::read_to_string(config.policy.dir.join("train-log.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert_eq!(last["decision"], "failed", "{log}");
        assert_eq!(last["reason"], "bad input", "{log}");
    }
}
