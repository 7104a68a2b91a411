//! The consumer loop that runs a [`Stage`].
//!
//! It runs on a dedicated thread with a `BaseConsumer`, so that the rebalance
//! callback (called inside `poll`) can flush and commit synchronously before a
//! partition is given away. Stage futures run on the caller's tokio runtime via
//! `Handle::block_on`.
//!
//! One batch at a time goes through: seal (skip records at or below the stage's
//! stored offset, decode, build dead letters) → publish dead letters and wait
//! for the acks → `Stage::process` → commit offsets. A retryable failure pauses
//! the assignment, backs off, and retries the same step; nothing is committed
//! until every step succeeded, so a crash at any point replays the batch.
//!
//! The runner never moves past a record it did not receive. When a partition
//! is assigned it learns the stage's stored offset and seeks to the record
//! after it (whatever the group's committed offset says), and from then on
//! each record must be the one after the last: a record further on, on a
//! topic that is not compacted, is a gap (tansu 0.6 answers a fetch that
//! starts inside a record batch with the next batch). The record is dropped,
//! the gap counted (`mrrec_stream_offset_gaps_total`) and the partition
//! re-fetched from further and further back, skipping what it already has,
//! until the missing records arrive. Records the broker deleted by retention
//! (below its low watermark) are skipped with a warning; a gap that seeking
//! back cannot close stops the stage loudly instead of storing offsets
//! beyond it.

use crate::events::DeadLettered;
use crate::metrics as m;
use crate::record::{Batch, Decoded, PartitionRange, RecordMeta};
use crate::{
    Backoff, KafkaClients, OutgoingRecord, Publisher, Shutdown, Stage, StageError, StreamError,
};
use mrrec_config::Config;
use mrrec_messages::Topic;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// How a runner consumes and batches.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    pub group_id: String,
    /// Full topic names to subscribe to.
    pub topics: Vec<String>,
    pub dlq_topic: String,
    pub batch_max_records: usize,
    /// A batch also closes once its records carry this many distinct keys
    /// (0: no limit; a record without a key counts as a key of its own).
    /// What a stage holds per key (distill: a user's state) then bounds a
    /// batch's memory, however many records it has.
    pub batch_max_keys: usize,
    /// A batch also closes once its payloads and keys reach this many bytes.
    pub batch_max_bytes: usize,
    pub batch_max_wait: Duration,
    pub shutdown_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Topics whose offsets may have holes (compacted ones): no gap check.
    pub compacted: Vec<String>,
}

impl RunnerSettings {
    /// Settings for `stage` consuming `topics`, from the configuration.
    pub fn from_config(config: &Config, stage: &str, topics: &[Topic]) -> Self {
        let s = &config.stream;
        Self {
            group_id: config.group_id(stage),
            topics: topics
                .iter()
                .map(|t| t.name(&config.topics.prefix))
                .collect(),
            dlq_topic: Topic::Dlq.name(&config.topics.prefix),
            batch_max_records: s.batch_max_records,
            batch_max_keys: 0,
            batch_max_bytes: s.batch_max_bytes,
            batch_max_wait: Duration::from_millis(s.batch_max_ms),
            shutdown_timeout: Duration::from_millis(s.shutdown_timeout_ms),
            backoff_initial: Duration::from_millis(s.backoff_initial_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
            compacted: topics
                .iter()
                .filter(|t| t.is_compacted())
                .map(|t| t.name(&config.topics.prefix))
                .collect(),
        }
    }
}

/// What a run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    pub consumed: u64,
    pub processed: u64,
    pub dead_lettered: u64,
    pub skipped: u64,
    pub batches: u64,
    pub retries: u64,
    pub rebalances: u64,
}

/// Live counters of a running stage, readable from any thread (progress
/// displays, tests, health checks).
#[derive(Debug, Default)]
pub struct Progress {
    /// Records received from Kafka (not necessarily processed yet).
    pub polled: AtomicU64,
    /// Records the stage processed (committed batches only).
    pub processed: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub skipped: AtomicU64,
    /// Batches committed.
    pub batches: AtomicU64,
    /// Partitions currently assigned to this instance.
    pub assigned: AtomicU64,
}

impl Progress {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records whose batch is committed: processed, dead-lettered, or
    /// skipped as already stored.
    pub fn settled(&self) -> u64 {
        Self::get(&self.processed) + Self::get(&self.dead_lettered) + Self::get(&self.skipped)
    }
}

/// A runner started on a task of its own ([`StageRunner::spawn`]).
pub struct SpawnedRunner {
    /// What it has done so far.
    pub progress: Arc<Progress>,
    /// Ends once the shutdown given to `spawn` is triggered (after the
    /// drain) with the run's report, or earlier with its fatal error.
    pub task: tokio::task::JoinHandle<Result<RunReport, StreamError>>,
}

/// Runs one stage in one consumer group until shutdown or a fatal error.
pub struct StageRunner<S: Stage> {
    clients: KafkaClients,
    settings: RunnerSettings,
    stage: S,
    progress: Arc<Progress>,
}

type PartitionKey = (Arc<str>, i32);

/// Where a partition's next record must be.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    /// The offset the next record must carry (None: wherever it lands —
    /// nothing is stored yet).
    next: Option<i64>,
    /// Seeks back since the last record that arrived in order.
    attempts: u32,
    /// When a record last arrived in order, or the partition was last
    /// positioned or checked (None: not yet).
    since: Option<Instant>,
}

impl Position {
    /// Whether a record at `offset` is the next one; moves past it if so.
    fn admit(&mut self, offset: i64, compacted: bool) -> Admit {
        match self.next {
            Some(next) if offset < next => Admit::Duplicate,
            Some(next) if offset > next && !compacted => Admit::Gap { expected: next },
            _ => {
                self.next = Some(offset + 1);
                self.attempts = 0;
                self.since = Some(Instant::now());
                Admit::Accept
            }
        }
    }
}

/// What to do with a record that arrived.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    Accept,
    /// Already received (after a seek back): dropped.
    Duplicate,
    /// Records from `expected` on are missing.
    Gap {
        expected: i64,
    },
}

/// What a record weighs in a batch: its payload and key.
fn record_bytes(record: &RawRecord) -> usize {
    record.payload.as_ref().map_or(0, Vec::len) + record.meta.key.as_ref().map_or(0, Vec::len)
}

/// Seeks back a gap may take before the stage stops: the distance doubles
/// each time, so this reaches the start of any partition.
const MAX_GAP_SEEKS: u32 = 64;

/// A partition with records beyond its position and none arriving for this
/// long is stalled (tansu 0.6 answers a fetch inside its last record batch
/// with nothing): it is fetched again from further back.
const STALL_AFTER: Duration = Duration::from_secs(5);
/// The same, right after a seek back (the records are due at once).
const STALL_AFTER_SEEK: Duration = Duration::from_secs(1);
/// The least a stalled partition steps back (doubling from there).
const STALL_STEP: i64 = 64;

struct RawRecord {
    meta: RecordMeta,
    payload: Option<Vec<u8>>,
}

/// A sealed batch on its way through dead letters → process → commit.
struct InFlight<M> {
    batch: Batch<M>,
    dead_letters: Vec<OutgoingRecord>,
    /// What each dead letter is, emitted once the batch is committed.
    dead: Vec<DeadLettered>,
    processed: bool,
    /// Next offset to commit per partition (last offset + 1, skipped records included).
    commit: HashMap<PartitionKey, i64>,
    consumed: HashMap<Arc<str>, u64>,
    skipped: u64,
    started: Instant,
}

impl<M> InFlight<M> {
    fn new(started: Instant) -> Self {
        Self {
            batch: Batch {
                records: Vec::new(),
                ranges: Vec::new(),
            },
            dead_letters: Vec::new(),
            dead: Vec::new(),
            processed: false,
            commit: HashMap::new(),
            consumed: HashMap::new(),
            skipped: 0,
            started,
        }
    }

    /// Counts a consumed record and moves its partition's commit past it.
    fn count(&mut self, meta: &RecordMeta) {
        *self.consumed.entry(meta.topic.clone()).or_default() += 1;
        let next = self
            .commit
            .entry((meta.topic.clone(), meta.partition))
            .or_insert(meta.offset + 1);
        *next = (*next).max(meta.offset + 1);
    }

    /// Widens the batch's range of the record's partition to cover it.
    fn cover(&mut self, meta: &RecordMeta) {
        let ranges = &mut self.batch.ranges;
        match ranges
            .iter_mut()
            .find(|r| r.topic == meta.topic && r.partition == meta.partition)
        {
            Some(range) => {
                range.first_offset = range.first_offset.min(meta.offset);
                range.last_offset = range.last_offset.max(meta.offset);
            }
            None => ranges.push(PartitionRange {
                topic: meta.topic.clone(),
                partition: meta.partition,
                first_offset: meta.offset,
                last_offset: meta.offset,
            }),
        }
    }

    /// Adds the dead letter for a record `stage` could not decode.
    fn dead_letter(
        &mut self,
        stage: &str,
        dlq_topic: &str,
        raw: RawRecord,
        poison: crate::Poison,
    ) -> Result<(), StageError> {
        let event = DeadLettered {
            stage: stage.to_owned(),
            topic: raw.meta.topic.to_string(),
            partition: raw.meta.partition,
            offset: raw.meta.offset,
            kind: poison.kind,
            reason: poison.reason,
        };
        let payload = raw.payload.as_deref().unwrap_or_default();
        let record = OutgoingRecord::dead_letter(dlq_topic, &event, raw.meta.key.clone(), payload)
            .map_err(|e| StageError::fatal_from("cannot encode a dead letter", e))?;
        self.dead_letters.push(record);
        self.dead.push(event);
        Ok(())
    }
}

struct LoopState<S: Stage> {
    stage: S,
    name: String,
    settings: RunnerSettings,
    handle: Handle,
    dlq: Publisher,
    pending: Vec<RawRecord>,
    /// Distinct keys of `pending` (kept only when `batch_max_keys` is set).
    pending_keys: HashSet<Vec<u8>>,
    /// Records of `pending` without a key (each counts as a key).
    pending_keyless: usize,
    /// Payload and key bytes of `pending`.
    pending_bytes: usize,
    batch_started: Option<Instant>,
    in_flight: Option<InFlight<S::Message>>,
    /// Last offset known to be in the stage's state (None: nothing stored).
    stored: HashMap<PartitionKey, Option<i64>>,
    /// Next offset to commit per partition, kept until the partition is revoked.
    to_commit: HashMap<PartitionKey, i64>,
    /// Where each positioned partition's next record must be.
    positions: HashMap<PartitionKey, Position>,
    /// Partitions assigned but not yet positioned at their stored offset.
    to_position: Vec<PartitionKey>,
    compacted: HashSet<String>,
    topics: HashMap<String, Arc<str>>,
    backoff: Backoff,
    paused: bool,
    progress: Arc<Progress>,
    /// Set after a fatal error: nothing is flushed or committed any more.
    abandoned: bool,
    /// A fatal error met inside a rebalance callback, for the loop to return.
    fatal: Option<String>,
    report: RunReport,
}

struct RunnerContext<S: Stage> {
    name: String,
    state: Mutex<LoopState<S>>,
}

impl<S: Stage> RunnerContext<S> {
    fn lock(&self) -> MutexGuard<'_, LoopState<S>> {
        // A panic inside a stage poisons the lock; the state itself stays consistent
        // (a batch stays in flight until committed, every step retried from
        // its own flags), so keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<S: Stage> ClientContext for RunnerContext<S> {
    fn stats(&self, statistics: Statistics) {
        for (topic, t) in statistics.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!(m::CONSUMER_LAG, "stage" => self.name.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        metrics::counter!(m::KAFKA_ERRORS, "stage" => self.name.clone()).increment(1);
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl<S: Stage> ConsumerContext for RunnerContext<S> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                let mut state = self.lock();
                state.report.rebalances += 1;
                state.on_revoke(consumer, partitions);
                state.progress.assigned.store(0, Ordering::Relaxed);
                metrics::gauge!(m::ASSIGNED_PARTITIONS, "stage" => self.name.clone()).set(0.0);
                metrics::counter!(m::REBALANCES, "stage" => self.name.clone(), "kind" => "revoke")
                    .increment(1);
            }
            Rebalance::Assign(partitions) => {
                let mut state = self.lock();
                state.report.rebalances += 1;
                state
                    .progress
                    .assigned
                    .store(partitions.count() as u64, Ordering::Relaxed);
                tracing::info!(partitions = partitions.count(), "partitions assigned");
                state.on_assign(partitions);
                metrics::gauge!(m::ASSIGNED_PARTITIONS, "stage" => self.name.clone())
                    .set(partitions.count() as f64);
                metrics::counter!(m::REBALANCES, "stage" => self.name.clone(), "kind" => "assign")
                    .increment(1);
            }
            Rebalance::Error(e) => {
                tracing::warn!(error = %e, "rebalance error")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            metrics::counter!(m::COMMIT_FAILURES, "stage" => self.name.clone()).increment(1);
            tracing::warn!(error = %e, "offset commit failed; the next commit covers it");
        }
    }
}

impl<S: Stage> StageRunner<S> {
    pub fn new(clients: KafkaClients, settings: RunnerSettings, stage: S) -> Self {
        Self {
            clients,
            settings,
            stage,
            progress: Arc::default(),
        }
    }

    /// Live counters, shared with the running stage.
    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Starts [`Self::run`] on a task of its own.
    pub fn spawn(self, shutdown: Shutdown) -> SpawnedRunner {
        SpawnedRunner {
            progress: self.progress(),
            task: tokio::spawn(self.run(shutdown)),
        }
    }

    /// Runs on a dedicated thread until `shutdown` (then drains within the
    /// shutdown timeout) or a fatal error. Needs a multi-threaded tokio runtime.
    pub async fn run(self, shutdown: Shutdown) -> Result<RunReport, StreamError> {
        let handle = Handle::current();
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return Err(StreamError::Other(
                "the stage runner needs a multi-threaded tokio runtime".into(),
            ));
        }
        let name = self.stage.name().to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("mrrec-{name}"))
            .spawn(move || {
                let _ = tx.send(self.run_blocking(handle, shutdown));
            })
            .map_err(|e| StreamError::Other(format!("cannot start the {name} thread: {e}")))?;
        rx.await.map_err(|_| StreamError::StageFailed {
            stage: name,
            message: "the stage thread panicked".into(),
        })?
    }

    fn run_blocking(self, handle: Handle, shutdown: Shutdown) -> Result<RunReport, StreamError> {
        let name = self.stage.name().to_owned();
        // The stage's thread runs inside its span: every event below it,
        // the stage's own included, carries `stage`.
        let span = tracing::info_span!("stage", stage = %name);
        let _entered = span.enter();
        let dlq = Publisher::new(&self.clients, &name)?;
        let settings = self.settings.clone();
        let context = RunnerContext {
            name: name.clone(),
            state: Mutex::new(LoopState {
                stage: self.stage,
                name: name.clone(),
                backoff: Backoff::new(settings.backoff_initial, settings.backoff_max),
                settings: settings.clone(),
                handle,
                dlq,
                pending: Vec::new(),
                pending_keys: HashSet::new(),
                pending_keyless: 0,
                pending_bytes: 0,
                batch_started: None,
                in_flight: None,
                stored: HashMap::new(),
                to_commit: HashMap::new(),
                positions: HashMap::new(),
                to_position: Vec::new(),
                compacted: settings.compacted.iter().cloned().collect(),
                topics: HashMap::new(),
                paused: false,
                progress: self.progress.clone(),
                abandoned: false,
                fatal: None,
                report: RunReport::default(),
            }),
        };
        let consumer: BaseConsumer<RunnerContext<S>> = self
            .clients
            .consumer(&settings.group_id)
            .create_with_context(context)?;
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        tracing::info!(group = %settings.group_id, ?topics, "stage started");

        let result = run_loop(&consumer, &settings, &shutdown);
        let report = consumer.context().lock().report.clone();
        // Dropping the consumer leaves the group (its revoke finds nothing pending).
        drop(consumer);
        tracing::info!(?report, "stage stopped");
        result.map(|()| report)
    }
}

fn run_loop<S: Stage>(
    consumer: &BaseConsumer<RunnerContext<S>>,
    settings: &RunnerSettings,
    shutdown: &Shutdown,
) -> Result<(), StreamError> {
    let idle_poll = Duration::from_millis(100);
    loop {
        if shutdown.is_triggered() {
            let mut state = consumer.context().lock();
            let deadline = Instant::now() + settings.shutdown_timeout;
            match state.finish_all(consumer, deadline) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("shutdown timeout: uncommitted records will be replayed");
                }
                Err(e) => {
                    state.abandon();
                    return Err(e);
                }
            }
            state.commit_sync(consumer, None);
            return Ok(());
        }

        let wait = {
            let mut state = consumer.context().lock();
            if let Some(message) = state.fatal.take() {
                return Err(StreamError::StageFailed {
                    stage: state.name.clone(),
                    message,
                });
            }
            match state.step(consumer) {
                Ok(()) => state.poll_wait(idle_poll),
                Err(e @ StageError::Retryable { .. }) => {
                    let message = e.describe();
                    let delay = state.backoff.next_delay();
                    state.report.retries += 1;
                    metrics::gauge!(m::BACKING_OFF, "stage" => state.name.clone()).set(1.0);
                    tracing::warn!(
                        attempt = state.backoff.attempts(),
                        ?delay,
                        "{message}; retrying"
                    );
                    state.pause(consumer);
                    delay
                }
                Err(e @ StageError::Fatal { .. }) => {
                    // Nothing more may be processed or committed: leaving the
                    // group must not flush what the failed stage has not finished.
                    state.abandon();
                    return Err(StreamError::StageFailed {
                        stage: state.name.clone(),
                        message: e.describe(),
                    });
                }
            }
        };
        poll_for(consumer, wait, shutdown);
    }
}

/// Polls for up to `wait` (in slices, to notice shutdown), buffering records.
fn poll_for<S: Stage>(
    consumer: &BaseConsumer<RunnerContext<S>>,
    wait: Duration,
    shutdown: &Shutdown,
) {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match consumer.poll(left.min(Duration::from_millis(100))) {
            Some(Ok(message)) => {
                let mut state = consumer.context().lock();
                if state.abandoned {
                    return;
                }
                let topic = state.intern(message.topic());
                let key = (topic.clone(), message.partition());
                match state.admit(&key, message.offset()) {
                    Admit::Accept => {}
                    Admit::Duplicate => continue,
                    Admit::Gap { expected } => {
                        state.recover_gap(consumer, &key, expected, message.offset());
                        continue;
                    }
                }
                state.push(RawRecord {
                    meta: RecordMeta {
                        topic,
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        timestamp_ms: message.timestamp().to_millis(),
                    },
                    payload: message.payload().map(<[u8]>::to_vec),
                });
                if state.batch_full() {
                    return;
                }
            }
            Some(Err(e)) => {
                let state = consumer.context().lock();
                metrics::counter!(m::KAFKA_ERRORS, "stage" => state.name.clone()).increment(1);
                tracing::warn!(error = %e, "consume error");
            }
            None => {}
        }
        if Instant::now() >= until || shutdown.is_triggered() {
            return;
        }
    }
}

impl<S: Stage> LoopState<S> {
    fn intern(&mut self, topic: &str) -> Arc<str> {
        if let Some(name) = self.topics.get(topic) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(topic);
        self.topics.insert(topic.to_owned(), name.clone());
        name
    }

    /// Checks that a record is the next of its partition (see the module
    /// comment), and moves the partition's position past it if so.
    fn admit(&mut self, key: &PartitionKey, offset: i64) -> Admit {
        let compacted = self.compacted.contains(&*key.0);
        match self.positions.get_mut(key) {
            Some(position) => position.admit(offset, compacted),
            // Not positioned yet: checked when it is (`position_assigned`).
            None => Admit::Accept,
        }
    }

    /// Records from `expected` on did not arrive (`got` did): skip them if
    /// the broker deleted them by retention, else fetch again from further
    /// back, or stop the stage when seeking back cannot close the gap.
    fn recover_gap(
        &mut self,
        consumer: &BaseConsumer<RunnerContext<S>>,
        key: &PartitionKey,
        expected: i64,
        got: i64,
    ) {
        let (topic, partition) = (key.0.clone(), key.1);
        metrics::counter!(m::OFFSET_GAPS, "stage" => self.name.clone(), "topic" => topic.to_string())
            .increment(1);
        if let Ok((low, _)) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(5)) {
            if got == low {
                tracing::warn!(%topic, partition, expected, low, "records below the broker's low watermark were deleted by retention; going on from it");
                if let Some(position) = self.positions.get_mut(key) {
                    *position = Position {
                        next: Some(got),
                        attempts: 0,
                        since: Some(Instant::now()),
                    };
                }
                return;
            }
        }
        let Some(position) = self.positions.get_mut(key) else {
            return;
        };
        position.attempts += 1;
        position.since = Some(Instant::now());
        let attempts = position.attempts;
        if attempts > MAX_GAP_SEEKS {
            let message = format!(
                "{topic}:{partition}: records from offset {expected} on never arrived (the broker sends {got} on); stopping before storing anything beyond them"
            );
            tracing::error!("{message}");
            self.abandon();
            self.fatal = Some(message);
            return;
        }
        // The records skipped are about one producer batch: step back by as
        // much (a fetch inside the batch before returns the one that holds
        // `expected`), doubling while it does not.
        let step = got.saturating_sub(expected).max(1);
        let back = step.saturating_mul(1i64 << (attempts - 1).min(40));
        let from = expected.saturating_sub(back).max(0);
        tracing::warn!(%topic, partition, expected, got, from, attempts, "gap in the offsets the broker returned; fetching again from further back");
        if let Err(e) = consumer.seek(
            &topic,
            partition,
            Offset::Offset(from),
            Duration::from_secs(5),
        ) {
            tracing::warn!(%topic, partition, error = %e, "seek failed; the next record tries again");
        }
    }

    /// Positions newly assigned partitions: learns each one's stored offset,
    /// seeks to the record after it, and checks the records that arrived
    /// before (in order) against that position.
    fn position_assigned(
        &mut self,
        consumer: &BaseConsumer<RunnerContext<S>>,
    ) -> Result<(), StageError> {
        while let Some(key) = self.to_position.last().cloned() {
            let stored = match self.stored.get(&key) {
                Some(stored) => *stored,
                None => {
                    let stored = self
                        .handle
                        .block_on(self.stage.stored_offset(&key.0, key.1))?;
                    self.stored.insert(key.clone(), stored);
                    stored
                }
            };
            self.to_position.pop();
            let next = stored.map(|s| s + 1);
            tracing::debug!(topic = %key.0, partition = key.1, ?next, "positioning an assigned partition");
            self.positions.insert(
                key.clone(),
                Position {
                    next,
                    attempts: 0,
                    since: Some(Instant::now()),
                },
            );
            if let Some(next) = next {
                if let Err(e) =
                    consumer.seek(&key.0, key.1, Offset::Offset(next), Duration::from_secs(5))
                {
                    tracing::debug!(topic = %key.0, partition = key.1, error = %e, "seek to the stored offset failed; the gap check covers it");
                }
            }
            // Records of this partition that arrived before it was positioned.
            let pending = self.take_pending();
            for record in pending {
                let mine = record.meta.topic == key.0 && record.meta.partition == key.1;
                if !mine {
                    self.repush(record);
                    continue;
                }
                match self.admit(&key, record.meta.offset) {
                    Admit::Accept => self.repush(record),
                    Admit::Duplicate => {}
                    Admit::Gap { expected } => {
                        let got = record.meta.offset;
                        // Everything after it in this partition goes too: it
                        // comes again once the gap is closed.
                        self.drop_pending_after(&key, got);
                        self.recover_gap(consumer, &key, expected, got);
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Partitions whose next record has not come for [`STALL_AFTER`] while
    /// the broker holds records beyond it are fetched again from further
    /// back (counted as gaps).
    fn check_stalls(&mut self, consumer: &BaseConsumer<RunnerContext<S>>) {
        if self.paused {
            return;
        }
        let stalled: Vec<(PartitionKey, i64, u32)> = self
            .positions
            .iter()
            .filter(|(_, p)| {
                // Right after a seek back the records are due at once.
                let after = if p.attempts > 0 {
                    STALL_AFTER_SEEK
                } else {
                    STALL_AFTER
                };
                p.since.is_some_and(|t| t.elapsed() >= after)
            })
            .filter_map(|(k, p)| p.next.map(|n| (k.clone(), n, p.attempts)))
            .collect();
        for (key, next, attempts) in stalled {
            tracing::debug!(topic = %key.0, partition = key.1, next, attempts, "no record for a while: checking the broker's watermarks");
            let high = consumer
                .fetch_watermarks(&key.0, key.1, Duration::from_secs(5))
                .map(|(_, high)| high);
            match high {
                // More records than arrived; or a high watermark below
                // what the stage already has, which a correct broker never
                // reports (tansu's memory engine reports the last batch's
                // start while a fetch inside that batch returns nothing).
                Ok(high) if high != next => {
                    tracing::warn!(topic = %key.0, partition = key.1, next, high, "no record arrives although the broker should have more");
                    // How far back the batch that holds `next` starts is
                    // unknown here: step back by at least STALL_STEP.
                    self.recover_gap(consumer, &key, next, high.max(next + STALL_STEP));
                }
                Err(e) if attempts > 0 => {
                    // Recovering a gap, and nothing came back: go further.
                    tracing::warn!(topic = %key.0, partition = key.1, next, error = %e, "no record since the last seek back (watermarks unknown)");
                    self.recover_gap(consumer, &key, next, next + STALL_STEP);
                }
                other => {
                    if let Err(e) = other {
                        tracing::debug!(topic = %key.0, partition = key.1, error = %e, "watermarks unknown");
                    }
                    if let Some(p) = self.positions.get_mut(&key) {
                        p.since = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// Puts a record back into `pending` (keys recounted, not re-counted as polled).
    fn repush(&mut self, record: RawRecord) {
        self.pending_bytes += record_bytes(&record);
        if self.settings.batch_max_keys > 0 {
            match record.meta.key.as_deref() {
                Some(key) => {
                    self.pending_keys.insert(key.to_vec());
                }
                None => self.pending_keyless += 1,
            }
        }
        self.batch_started.get_or_insert_with(Instant::now);
        self.pending.push(record);
    }

    /// Drops the pending records of `key` at or after `offset`.
    fn drop_pending_after(&mut self, key: &PartitionKey, offset: i64) {
        let pending = self.take_pending();
        for record in pending {
            let mine = record.meta.topic == key.0 && record.meta.partition == key.1;
            if !(mine && record.meta.offset >= offset) {
                self.repush(record);
            }
        }
    }

    fn push(&mut self, record: RawRecord) {
        self.progress.polled.fetch_add(1, Ordering::Relaxed);
        self.pending_bytes += record_bytes(&record);
        self.batch_started.get_or_insert_with(Instant::now);
        if self.settings.batch_max_keys > 0 {
            match record.meta.key.as_deref() {
                Some(key) if !self.pending_keys.contains(key) => {
                    self.pending_keys.insert(key.to_vec());
                }
                Some(_) => {}
                None => self.pending_keyless += 1,
            }
        }
        self.pending.push(record);
    }

    /// Takes the pending records (for a batch, or to drop them).
    fn take_pending(&mut self) -> Vec<RawRecord> {
        self.pending_keys.clear();
        self.pending_keyless = 0;
        self.pending_bytes = 0;
        std::mem::take(&mut self.pending)
    }

    fn batch_full(&self) -> bool {
        self.pending.len() >= self.settings.batch_max_records
            || self.pending_bytes >= self.settings.batch_max_bytes
            || (self.settings.batch_max_keys > 0
                && self.pending_keys.len() + self.pending_keyless >= self.settings.batch_max_keys)
    }

    fn batch_due(&self) -> bool {
        !self.pending.is_empty()
            && (self.batch_full()
                || self
                    .batch_started
                    .is_some_and(|t| t.elapsed() >= self.settings.batch_max_wait))
    }

    /// How long to poll before the next step.
    fn poll_wait(&self, idle: Duration) -> Duration {
        match self.batch_started {
            Some(started) if !self.pending.is_empty() => self
                .settings
                .batch_max_wait
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1)),
            _ => idle,
        }
    }

    /// Advances the in-flight batch, or seals and advances a due one.
    fn step(&mut self, consumer: &BaseConsumer<RunnerContext<S>>) -> Result<(), StageError> {
        self.position_assigned(consumer)?;
        self.check_stalls(consumer);
        if self.in_flight.is_none() {
            if !self.batch_due() {
                return Ok(());
            }
            self.seal()?;
        }
        self.advance(consumer)?;
        if self.backoff.attempts() > 0 {
            tracing::info!("recovered after {} retries", self.backoff.attempts());
            self.backoff.reset();
            metrics::gauge!(m::BACKING_OFF, "stage" => self.name.clone()).set(0.0);
        }
        self.resume(consumer);
        Ok(())
    }

    /// Turns the pending records into an in-flight batch: records at or
    /// below the stage's stored offset are skipped, the rest decoded, and
    /// those that do not decode become dead letters.
    fn seal(&mut self) -> Result<(), StageError> {
        // Learn stored offsets first, so a failure leaves `pending` untouched.
        self.learn_stored_offsets()?;
        let mut flight = InFlight::new(self.batch_started.take().unwrap_or_else(Instant::now));
        for raw in self.take_pending() {
            let meta = &raw.meta;
            flight.count(meta);
            let stored = self.stored.get(&(meta.topic.clone(), meta.partition));
            if stored.copied().flatten().is_some_and(|s| meta.offset <= s) {
                flight.skipped += 1;
                continue;
            }
            flight.cover(meta);
            match self.stage.decode(meta, raw.payload.as_deref()) {
                Ok(message) => flight.batch.records.push(Decoded {
                    meta: raw.meta,
                    message,
                }),
                Err(poison) => {
                    flight.dead_letter(&self.name, &self.settings.dlq_topic, raw, poison)?
                }
            }
        }
        tracing::debug!(
            records = flight.batch.len(),
            skipped = flight.skipped,
            dead = flight.dead.len(),
            "sealed a batch"
        );
        self.in_flight = Some(flight);
        Ok(())
    }

    /// Asks the stage for the stored offset of every partition in `pending`
    /// it has not been asked about yet.
    fn learn_stored_offsets(&mut self) -> Result<(), StageError> {
        let unknown: std::collections::BTreeSet<PartitionKey> = self
            .pending
            .iter()
            .map(|r| (r.meta.topic.clone(), r.meta.partition))
            .filter(|key| !self.stored.contains_key(key))
            .collect();
        for key in unknown {
            let stored = self
                .handle
                .block_on(self.stage.stored_offset(&key.0, key.1))?;
            self.stored.insert(key, stored);
        }
        Ok(())
    }

    /// Dead letters, then the stage, then the commit — each step at most
    /// once. The batch stays in flight until its commit (also through an
    /// error or a panic in the stage), its finished steps remembered.
    fn advance(&mut self, consumer: &BaseConsumer<RunnerContext<S>>) -> Result<(), StageError> {
        let Some(flight) = self.in_flight.as_mut() else {
            return Ok(());
        };
        send_dead_letters(&self.handle, &self.dlq, &self.name, flight)?;
        process(&self.handle, &mut self.stage, &self.name, flight)?;
        let flight = self.in_flight.take().expect("checked above");
        self.commit(consumer, &flight);
        // Time spent processing is not time the partitions were fetched.
        self.restart_stall_clocks();
        self.record(flight);
        Ok(())
    }

    /// Remembers the batch's offsets as stored and commits past them
    /// (asynchronously; a failed commit is covered by the next one).
    fn commit(&mut self, consumer: &BaseConsumer<RunnerContext<S>>, flight: &InFlight<S::Message>) {
        for range in &flight.batch.ranges {
            let stored = self
                .stored
                .entry((range.topic.clone(), range.partition))
                .or_insert(None);
            *stored = Some(stored.map_or(range.last_offset, |s| s.max(range.last_offset)));
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &flight.commit {
            let entry = self
                .to_commit
                .entry((topic.clone(), *partition))
                .or_insert(*next);
            *entry = (*entry).max(*next);
            let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*entry));
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
            metrics::counter!(m::COMMIT_FAILURES, "stage" => self.name.clone()).increment(1);
            tracing::warn!(error = %e, "offset commit failed; the next commit covers it");
        }
    }

    /// Counts a finished batch in the metrics, the report and the progress.
    fn record(&mut self, flight: InFlight<S::Message>) {
        let stage = self.name.clone();
        let processed = flight.batch.len() as u64;
        let dead = flight.dead.len() as u64;
        for (topic, n) in &flight.consumed {
            metrics::counter!(m::CONSUMED, "stage" => stage.clone(), "topic" => topic.to_string())
                .increment(*n);
            self.report.consumed += n;
        }
        for event in &flight.dead {
            event.emit();
        }
        metrics::counter!(m::PROCESSED, "stage" => stage.clone()).increment(processed);
        if flight.skipped > 0 {
            metrics::counter!(m::SKIPPED, "stage" => stage.clone()).increment(flight.skipped);
        }
        metrics::histogram!(m::BATCH_SECONDS, "stage" => stage.clone())
            .record(flight.started.elapsed().as_secs_f64());
        metrics::histogram!(m::BATCH_RECORDS, "stage" => stage)
            .record((processed + dead + flight.skipped) as f64);
        self.report.processed += processed;
        self.report.dead_lettered += dead;
        self.report.skipped += flight.skipped;
        self.report.batches += 1;
        let progress = &self.progress;
        progress.processed.fetch_add(processed, Ordering::Relaxed);
        progress.dead_lettered.fetch_add(dead, Ordering::Relaxed);
        progress
            .skipped
            .fetch_add(flight.skipped, Ordering::Relaxed);
        progress.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Finishes the in-flight batch and everything pending, retrying until
    /// `deadline`. Returns whether all of it was finished.
    fn finish_all(
        &mut self,
        consumer: &BaseConsumer<RunnerContext<S>>,
        deadline: Instant,
    ) -> Result<bool, StreamError> {
        loop {
            if self.in_flight.is_none() && self.pending.is_empty() {
                return Ok(true);
            }
            let result = match self.in_flight {
                Some(_) => self.advance(consumer),
                None => self.seal().and_then(|()| self.advance(consumer)),
            };
            match result {
                Ok(()) => self.backoff.reset(),
                Err(e @ StageError::Fatal { .. }) => {
                    return Err(StreamError::StageFailed {
                        stage: self.name.clone(),
                        message: e.describe(),
                    })
                }
                Err(e @ StageError::Retryable { .. }) => {
                    let message = e.describe();
                    let delay = self.backoff.next_delay();
                    self.report.retries += 1;
                    if Instant::now() + delay >= deadline {
                        tracing::warn!("{message}; giving up at the deadline");
                        return Ok(false);
                    }
                    tracing::warn!(?delay, "{message}; retrying before the deadline");
                    std::thread::sleep(delay);
                }
            }
        }
    }

    /// Flush, then commit, then let the partitions go. What cannot be flushed in
    /// time is dropped here and replayed by the partitions' next owner.
    fn on_revoke(
        &mut self,
        consumer: &BaseConsumer<RunnerContext<S>>,
        partitions: &TopicPartitionList,
    ) {
        if self.abandoned {
            return;
        }
        let deadline = Instant::now() + self.settings.shutdown_timeout;
        match self.finish_all(consumer, deadline) {
            Ok(true) => {}
            Err(StreamError::StageFailed { message, .. }) => {
                tracing::error!("revoke: the stage failed: {message}");
                self.abandon();
                self.fatal = Some(message);
                return;
            }
            Ok(false) | Err(_) => {
                let dropped =
                    self.pending.len() + self.in_flight.as_ref().map_or(0, |f| f.batch.len());
                tracing::warn!(
                    dropped,
                    "revoke: could not flush; the next owner replays these records"
                );
                self.take_pending();
                self.in_flight = None;
                self.batch_started = None;
            }
        }
        let revoked: Vec<(String, i32)> = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        self.commit_sync(consumer, Some(&revoked));
        for (topic, partition) in &revoked {
            let key: PartitionKey = (Arc::from(topic.as_str()), *partition);
            self.stored.remove(&key);
            self.to_commit.remove(&key);
            self.positions.remove(&key);
            self.to_position.retain(|k| *k != key);
        }
        self.paused = false;
        self.backoff.reset();
        tracing::info!(partitions = revoked.len(), "partitions revoked");
        self.handle.block_on(self.stage.on_revoke(&revoked));
    }

    /// Tells the stage which partitions it now owns.
    fn on_assign(&mut self, partitions: &TopicPartitionList) {
        if self.abandoned {
            return;
        }
        let assigned: Vec<(String, i32)> = partitions
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        for (topic, partition) in &assigned {
            let key: PartitionKey = (self.intern(topic), *partition);
            self.positions.remove(&key);
            self.stored.remove(&key);
            if !self.to_position.contains(&key) {
                self.to_position.push(key);
            }
        }
        self.handle.block_on(self.stage.on_assign(&assigned));
    }

    /// Commits the processed offsets of `only` (or of every partition) synchronously.
    fn commit_sync(
        &mut self,
        consumer: &BaseConsumer<RunnerContext<S>>,
        only: Option<&[(String, i32)]>,
    ) {
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), next) in &self.to_commit {
            let wanted =
                only.is_none_or(|list| list.iter().any(|(t, p)| **t == **topic && p == partition));
            if wanted {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, CommitMode::Sync) {
            metrics::counter!(m::COMMIT_FAILURES, "stage" => self.name.clone()).increment(1);
            tracing::warn!(error = %e, "synchronous commit failed; stored offsets still guard against replays");
        }
    }

    /// Forgets everything not yet committed (after a fatal error).
    fn abandon(&mut self) {
        self.abandoned = true;
        self.take_pending();
        self.in_flight = None;
        self.batch_started = None;
    }

    fn pause(&mut self, consumer: &BaseConsumer<RunnerContext<S>>) {
        if self.paused {
            return;
        }
        if let Ok(assignment) = consumer.assignment() {
            if consumer.pause(&assignment).is_ok() {
                self.paused = true;
            }
        }
    }

    fn restart_stall_clocks(&mut self) {
        let now = Instant::now();
        for position in self.positions.values_mut() {
            position.since = Some(now);
        }
    }

    fn resume(&mut self, consumer: &BaseConsumer<RunnerContext<S>>) {
        if !self.paused {
            return;
        }
        self.restart_stall_clocks();
        if let Ok(assignment) = consumer.assignment() {
            let _ = consumer.resume(&assignment);
        }
        self.paused = false;
    }
}

/// Writes the batch's dead letters; those not acknowledged stay for a retry.
fn send_dead_letters<M>(
    handle: &Handle,
    dlq: &Publisher,
    stage: &str,
    flight: &mut InFlight<M>,
) -> Result<(), StageError> {
    if flight.dead_letters.is_empty() {
        return Ok(());
    }
    let letters = std::mem::take(&mut flight.dead_letters);
    let Err((error, unsent)) = handle.block_on(dlq.publish_all(letters)) else {
        return Ok(());
    };
    flight.dead_letters = unsent;
    metrics::counter!(m::RETRIES, "stage" => stage.to_owned(), "phase" => "dlq").increment(1);
    Err(if crate::publish::is_retryable_kafka(&error) {
        StageError::retryable_from("writing to the DLQ", error)
    } else {
        StageError::fatal_from("writing to the DLQ", error)
    })
}

/// Hands the batch to the stage, once, in a `batch` span.
fn process<S: Stage>(
    handle: &Handle,
    stage: &mut S,
    name: &str,
    flight: &mut InFlight<S::Message>,
) -> Result<(), StageError> {
    if flight.processed || flight.batch.is_empty() {
        flight.processed = true;
        return Ok(());
    }
    let span = tracing::info_span!(
        "batch",
        records = flight.batch.records.len(),
        ranges = %ranges_field(&flight.batch.ranges),
    );
    let _entered = span.enter();
    if let Err(e) = handle.block_on(stage.process(&flight.batch)) {
        if e.is_retryable() {
            metrics::counter!(m::RETRIES, "stage" => name.to_owned(), "phase" => "process")
                .increment(1);
        }
        return Err(e);
    }
    flight.processed = true;
    Ok(())
}

/// A batch's partition ranges as one span field: `topic:partition first..=last`, comma-separated.
fn ranges_field(ranges: &[crate::PartitionRange]) -> String {
    ranges
        .iter()
        .map(|r| {
            format!(
                "{}:{} {}..={}",
                r.topic, r.partition, r.first_offset, r.last_offset
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::{Admit, Position};

    #[test]
    fn records_must_come_in_order_after_the_stored_offset() {
        let mut at = Position {
            next: Some(10),
            attempts: 3,
            since: None,
        };
        assert_eq!(at.admit(9, false), Admit::Duplicate);
        assert_eq!(at.admit(12, false), Admit::Gap { expected: 10 });
        assert_eq!(at.next, Some(10), "a gap does not move the position");
        assert_eq!(at.admit(10, false), Admit::Accept);
        assert_eq!((at.next, at.attempts), (Some(11), 0));
        assert_eq!(at.admit(11, false), Admit::Accept);
        // Compacted topics have holes by design.
        assert_eq!(at.admit(20, true), Admit::Accept);
        assert_eq!(at.next, Some(21));
        // Nothing stored: the first record sets the position.
        let mut fresh = Position::default();
        assert_eq!(fresh.admit(500, false), Admit::Accept);
        assert_eq!(fresh.admit(502, false), Admit::Gap { expected: 501 });
    }
}
