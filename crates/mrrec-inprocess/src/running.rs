//! The whole loop in one process, over the configured broker and store:
//! a catalog and history are produced and distilled (then distill stops, so
//! outcomes never leak into memory), the recommend and reward stages run,
//! rewards are collected from `mrrec.rewards`, and the trainer's rounds are
//! driven by the caller. `bench learn` and `demo` are built on it.
//!
//! [`InProcess::start_tiers`] keeps distill running instead, for a replay in
//! time (`mrrec eval`, DESIGN §13): the caller feeds events
//! ([`InProcess::feed`]), asks requests between them
//! ([`InProcess::ask_tiers`]) and sends outcomes, and each feed returns
//! once distill has stored everything sent so far. [`InProcess::start_tiers`]
//! adds recommend tiers: more recommend stages over the same memory, each
//! with its own config (policy, memory use) on topics of its own, the way
//! a shadow tier runs next to production; one replay then answers every
//! request once per tier, from memory that is the same for all of them.

use crate::LoopError;
use mrrec_config::Config;
use mrrec_datasets::UserTargets;
use mrrec_messages::{encode, Event, EventKind, Item, Outcome, Request, Response, Reward, Topic};
use mrrec_recommend::RecommendClient;
use mrrec_stream::{
    Bootstrap, KafkaClients, OutgoingRecord, Publisher, Shutdown, SpawnedRunner, StageRunner,
    TailFrom, TopicTail,
};
use mrrec_train::{Buffered, Trainer};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A memory store, the loop's or a shadow tier's.
type Memory = mrrec_memory::MemoryStore<mrrec_store::AnyStore>;

/// Rewards read from `mrrec.rewards`, by trajectory id.
type Collected = Arc<Mutex<BTreeMap<String, Buffered>>>;

/// The running loop.
pub struct InProcess {
    pub prefix: String,
    pub publisher: Publisher,
    pub client: RecommendClient,
    pub trainer: Trainer,
    /// History events distilled, and how long that took.
    pub distilled: usize,
    pub distill_seconds: f64,
    collected: Collected,
    /// A distill stage that keeps running (live mode only).
    live: Option<LiveDistill>,
    recommend: mrrec_recommend::RunningRecommend,
    /// Recommend stages of their own beside the loop's (see [`Tier`]).
    tiers: Vec<Tier>,
    rewarding: tokio::task::JoinHandle<Result<mrrec_stream::RunReport, mrrec_stream::StreamError>>,
    stop: Shutdown,
    /// What tiers are started on.
    clients: KafkaClients,
    memory: Memory,
    /// The embedded broker lives as long as the loop.
    bootstrap: Bootstrap,
}

impl InProcess {
    /// Produces `items` and `history`, distills them, then starts the
    /// recommend and reward stages, the reward collector and the trainer.
    pub async fn start(
        config: &Config,
        items: &[Item],
        history: &[Event],
    ) -> Result<Self, LoopError> {
        let opened = Opened::open(config, &[]).await?;
        let records = crate::produce::records(&opened.prefix, items, history)?;
        let total = records.len() as u64;
        crate::produce::publish_with_progress(&opened.publisher, records, "producing history")
            .await?;
        let stop_distill = Shutdown::new();
        let started = Instant::now();
        let distill = opened
            .distill_runner(config, &opened.memory)
            .await?
            .spawn(stop_distill.clone());
        let bar = crate::produce::progress_bar(total, "distilling");
        let settled = settle(std::slice::from_ref(&distill), total, Some(&bar), None).await;
        let distill_seconds = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        stop_distill.trigger();
        // The stage's own error says more than "it stopped".
        distill
            .task
            .await
            .map_err(|_| LoopError::Panicked("the distill stage".into()))??;
        settled?;

        opened
            .serve(config, total as usize, distill_seconds, None)
            .await
    }

    /// Produces `items` and starts every stage, distill included, which
    /// keeps running: memory then grows only by what [`Self::feed`] and
    /// [`Self::send_outcomes`] send, and each returns once it is stored.
    /// Beside the loop's recommend stage, a recommend tier per config in
    /// `tiers` (see [`tier_config`]), asked with [`Self::ask_tiers`].
    /// A tier with memory of its own (see [`shadow_tier_config`]) gets it
    /// filled by a distill stage of its own, which every feed waits for too.
    pub async fn start_tiers(
        config: &Config,
        items: &[Item],
        tiers: &[Config],
    ) -> Result<Self, LoopError> {
        let opened = Opened::open(config, tiers).await?;
        let mut live = LiveDistill {
            stop: Shutdown::new(),
            runners: Vec::new(),
            sent: 0,
        };
        live.start(opened.distill_runner(config, &opened.memory).await?);
        // Each shadow memory once, however many tiers read it.
        let mut memories: Vec<(PathBuf, Memory)> = Vec::new();
        for tier in tiers.iter().filter(|t| t.store.path != config.store.path) {
            if memories.iter().any(|(path, _)| *path == tier.store.path) {
                continue;
            }
            let memory = mrrec_service::open_store(tier).await?;
            // It reads the loop's topics, in the consumer group of the
            // first tier that reads it (its distill group).
            let mut shadow = tier.clone();
            shadow.topics = config.topics.clone();
            live.start(opened.distill_runner(&shadow, &memory).await?);
            memories.push((tier.store.path.clone(), memory));
        }
        let started = Instant::now();
        let records = crate::produce::records(&opened.prefix, items, &[])?;
        live.sent += records.len() as u64;
        crate::produce::publish_with_progress(&opened.publisher, records, "producing the catalog")
            .await?;
        live.wait().await?;
        let distill_seconds = started.elapsed().as_secs_f64();
        let mut running = opened
            .serve(config, items.len(), distill_seconds, Some(live))
            .await?;
        for tier in tiers {
            let memory = memories
                .iter()
                .find(|(path, _)| *path == tier.store.path)
                .map_or_else(|| running.memory.clone(), |(_, memory)| memory.clone());
            running
                .tiers
                .push(Tier::start(tier, &running, memory).await?);
        }
        Ok(running)
    }

    /// Live mode: produces `events` and returns once distill has stored
    /// them (and everything sent before).
    pub async fn feed(&mut self, events: &[Event]) -> Result<(), LoopError> {
        if events.is_empty() {
            return Ok(());
        }
        let records = crate::produce::records(&self.prefix, &[], events)?;
        self.distilled += events.len();
        self.send_to_distill(records).await
    }

    /// Live mode: produces `outcomes` (which distill stores as the user's
    /// events and the reward stage joins with their requests) and returns
    /// once distill has stored them.
    pub async fn send_outcomes(&mut self, outcomes: &[Outcome]) -> Result<(), LoopError> {
        let mut records = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            records.push(OutgoingRecord {
                topic: Topic::Outcomes.name(&self.prefix),
                key: Some(outcome.event.user_id.clone().into_bytes()),
                payload: encode(outcome)?,
            });
        }
        self.send_to_distill(records).await
    }

    async fn send_to_distill(&mut self, records: Vec<OutgoingRecord>) -> Result<(), LoopError> {
        let live = self.live.as_mut().ok_or(LoopError::NotLive)?;
        live.sent += records.len() as u64;
        if let Err((source, _)) = self.publisher.publish_all(records).await {
            return Err(LoopError::Publish {
                what: "publishing to distill".into(),
                source,
            });
        }
        live.wait().await
    }

    /// Sends requests as they are (ids, `k`, `exclude_seen`, `ts`):
    /// `requests[0]` to the loop's own recommend stage and
    /// `requests[i]` to tier `i - 1`, all before waiting for any answer (so
    /// the tiers answer side by side), and returns every response in the
    /// same shape, errors included.
    pub async fn ask_tiers(
        &self,
        requests: &[Vec<Request>],
    ) -> Result<Vec<Vec<Response>>, LoopError> {
        if requests.len() > self.tiers.len() + 1 {
            return Err(LoopError::TooManyRequestLists {
                lists: requests.len(),
                stages: self.tiers.len() + 1,
            });
        }
        let clients = std::iter::once(&self.client).chain(self.tiers.iter().map(|t| &t.client));
        let mut waiting = Vec::with_capacity(requests.len());
        for (client, requests) in clients.zip(requests) {
            let mut sent = Vec::with_capacity(requests.len());
            for request in requests {
                sent.push((request, client.send(request).await?));
            }
            waiting.push(sent);
        }
        let mut answers = Vec::with_capacity(waiting.len());
        for sent in waiting {
            let mut responses = Vec::with_capacity(sent.len());
            for (request, rx) in sent {
                let received = answer(&request.request_id, rx).await?;
                responses.push(received.response);
            }
            answers.push(responses);
        }
        Ok(answers)
    }

    /// Sends one request per user (ids `{tag}-{user}`, query from `query`),
    /// waits for the answers, then — with `outcomes` — sends each user's
    /// validation target as the request's outcome. Returns the responses
    /// answered without error, in `users`' order.
    pub async fn ask(
        &self,
        users: &[&UserTargets],
        query: impl Fn(&UserTargets) -> String,
        tag: &str,
        outcomes: bool,
    ) -> Result<Vec<Response>, LoopError> {
        self.ask_k(users, query, tag, outcomes, 10).await
    }

    /// [`Self::ask`] for the top `k`.
    pub async fn ask_k(
        &self,
        users: &[&UserTargets],
        query: impl Fn(&UserTargets) -> String,
        tag: &str,
        outcomes: bool,
        k: u32,
    ) -> Result<Vec<Response>, LoopError> {
        let bar = crate::produce::progress_bar(users.len() as u64, tag);
        let mut waiting = Vec::new();
        for u in users {
            let request = Request {
                request_id: format!("{tag}-{}", u.user_id),
                user_id: u.user_id.clone(),
                query: Some(query(u)),
                k,
                exclude_seen: true,
                ts: mrrec_stream::now_ms(),
            };
            waiting.push((request.clone(), self.client.send(&request).await?));
        }
        let mut answered = Vec::new();
        let mut records = Vec::new();
        for ((request, rx), u) in waiting.into_iter().zip(users) {
            let received = answer(&request.request_id, rx).await?;
            bar.inc(1);
            if received.response.error.is_some() {
                continue;
            }
            answered.push(received.response);
            let outcome = Outcome {
                request_id: request.request_id.clone(),
                event: Event {
                    event_id: format!("{}-outcome", request.request_id),
                    user_id: u.user_id.clone(),
                    kind: EventKind::Rate,
                    item_id: Some(u.valid.item_id.clone()),
                    value: Some(u.valid.rating),
                    text: None,
                    attrs: None,
                    ts: request.ts + 1,
                },
            };
            records.push(OutgoingRecord {
                topic: Topic::Outcomes.name(&self.prefix),
                key: Some(u.user_id.clone().into_bytes()),
                payload: encode(&outcome)?,
            });
        }
        bar.finish_and_clear();
        if outcomes {
            if let Err((source, _)) = self.publisher.publish_all(records).await {
                return Err(LoopError::Publish {
                    what: "publishing outcomes".into(),
                    source,
                });
            }
        }
        Ok(answered)
    }

    /// Rewards of requests whose id starts with `tag-`, once `requests` of
    /// them have arrived and no more come for 5 s (or after 5 minutes).
    pub async fn rewards(&self, tag: &str, requests: usize) -> Vec<Buffered> {
        let prefix = format!("{tag}-");
        let select = || -> Vec<Buffered> {
            self.collected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .filter(|b| b.reward.request_id.starts_with(&prefix))
                .cloned()
                .collect()
        };
        let started = Instant::now();
        let mut last = (0, Instant::now());
        loop {
            let n = select().len();
            if n != last.0 {
                last = (n, Instant::now());
            }
            let quiet = last.1.elapsed() > Duration::from_secs(5);
            if (n >= requests && quiet) || started.elapsed() > Duration::from_secs(300) {
                return select();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the recommend stage serves `version` (probe requests for
    /// `user`, with no outcome: they earn no reward).
    pub async fn wait_for_version(&self, user: &str, version: u32) -> Result<(), LoopError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let request = Request {
                request_id: format!("probe-{}", mrrec_stream::now_ms()),
                user_id: user.to_owned(),
                query: None,
                k: 1,
                exclude_seen: true,
                ts: mrrec_stream::now_ms(),
            };
            let received = self.client.ask(&request, Duration::from_secs(120)).await?;
            if received.response.policy_version >= version {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(LoopError::NoSwitch { version });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the stages, then drops every client before the broker they
    /// talk to (an embedded broker going first makes librdkafka log errors).
    pub async fn stop(self) -> Result<(), LoopError> {
        self.stop.trigger();
        self.rewarding
            .await
            .map_err(|_| LoopError::Panicked("the reward stage".into()))??;
        self.recommend.stop().await?;
        for tier in self.tiers {
            tier.stage.stop().await?;
            drop(tier.client);
        }
        if let Some(live) = self.live {
            live.stop.trigger();
            for runner in live.runners {
                runner
                    .task
                    .await
                    .map_err(|_| LoopError::Panicked("a distill stage".into()))??;
            }
        }
        drop(self.client);
        drop(self.trainer);
        drop(self.publisher);
        // The reward collector's consumer closes once it sees the stop.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(self.bootstrap);
        Ok(())
    }
}

/// A recommend stage beside the loop's own: its config's policy and
/// agent settings, the loop's memory and index (or a shadow memory, see
/// [`shadow_tier_config`]), and topics of its own.
struct Tier {
    client: RecommendClient,
    stage: mrrec_recommend::RunningRecommend,
}

/// `row` as a tier named `name` of a loop running `base`: the same store
/// and index, its own topics (`{prefix}{name}.requests`, …, one partition
/// each) and consumer groups (`{group_prefix}{name}-…`).
pub fn tier_config(base: &Config, row: &Config, name: &str) -> Config {
    let mut tier = row.clone();
    tier.store = base.store.clone();
    tier.index = base.index.clone();
    tier.kafka = base.kafka.clone();
    tier.topics.prefix = format!("{}{name}.", base.topics.prefix);
    tier.topics.partitions = 1;
    tier.kafka.group_prefix = format!("{}{name}-", base.kafka.group_prefix);
    tier
}

/// `row` as a tier named `name` with memory of its own, kept the way
/// `row`'s distill settings say: [`tier_config`], but an embedded store and
/// an index named `memory` beside the loop's (tiers that name the same
/// `memory` share it). A distill stage of its own fills it from the loop's
/// topics, so it holds what the loop's memory holds, distilled another way.
pub fn shadow_tier_config(base: &Config, row: &Config, name: &str, memory: &str) -> Config {
    let beside = |path: &Path| {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(format!("-{memory}"));
        path.with_file_name(name)
    };
    let mut tier = tier_config(base, row, name);
    tier.store.path = beside(&base.store.path);
    tier.index.path = beside(&base.index.path);
    tier
}

impl Tier {
    async fn start(
        config: &Config,
        running: &InProcess,
        memory: Memory,
    ) -> Result<Self, LoopError> {
        let clients = running.clients.clone();
        let stage = mrrec_recommend::start(config, &clients, memory, false).await?;
        let client = RecommendClient::connect(&clients, &config.topics.prefix).await?;
        Ok(Self { client, stage })
    }
}

/// What both ways of starting open first: the broker connection (with the
/// topics on a real cluster), the store and a producer.
struct Opened {
    bootstrap: Bootstrap,
    clients: KafkaClients,
    prefix: String,
    memory: Memory,
    publisher: Publisher,
}

impl Opened {
    async fn open(config: &Config, tiers: &[Config]) -> Result<Self, LoopError> {
        let bootstrap = Bootstrap::resolve_with(config, tiers).map_err(LoopError::Broker)?;
        let clients = KafkaClients::from_config(config, &bootstrap);
        if !config.kafka.is_embedded() {
            for config in std::iter::once(config).chain(tiers) {
                mrrec_stream::create_topics(&clients, &config.topics)
                    .await
                    .map_err(LoopError::Topics)?;
            }
        }
        Ok(Self {
            prefix: config.topics.prefix.clone(),
            memory: mrrec_service::open_store(config).await?,
            publisher: Publisher::new(&clients, "in-process")?,
            clients,
            bootstrap,
        })
    }

    /// A distill stage over `memory`, not yet running.
    async fn distill_runner(
        &self,
        config: &Config,
        memory: &Memory,
    ) -> Result<StageRunner<mrrec_distill::Distill<mrrec_store::AnyStore>>, LoopError> {
        let distill = mrrec_distill::open_stage(config, memory.clone()).await?;
        Ok(StageRunner::new(
            self.clients.clone(),
            mrrec_distill::runner_settings(config, mrrec_distill::STAGE),
            distill,
        ))
    }

    /// Starts the recommend and reward stages, the reward collector, the
    /// client and the trainer.
    async fn serve(
        self,
        config: &Config,
        distilled: usize,
        distill_seconds: f64,
        live: Option<LiveDistill>,
    ) -> Result<InProcess, LoopError> {
        let Self {
            bootstrap,
            clients,
            prefix,
            memory,
            publisher,
        } = self;
        let recommend = mrrec_recommend::start(config, &clients, memory.clone(), true).await?;
        let reward_stage = mrrec_reward::open_stage(config, &clients, memory.clone())?;
        let stop = Shutdown::new();
        let rewarding = StageRunner::new(
            clients.clone(),
            mrrec_reward::runner_settings(config),
            reward_stage,
        )
        .spawn(stop.clone())
        .task;
        let collected = collect_rewards(&clients, &prefix, stop.clone()).await?;
        let client = RecommendClient::connect(&clients, &prefix).await?;
        let trainer = Trainer::new(config, &clients)?;
        Ok(InProcess {
            prefix,
            publisher,
            client,
            trainer,
            distilled,
            distill_seconds,
            collected,
            live,
            recommend,
            tiers: Vec::new(),
            clients,
            memory,
            rewarding,
            stop,
            bootstrap,
        })
    }
}

/// Returns once every runner of `runners` has settled (stored,
/// dead-lettered or skipped) `total` records; `bar` shows the slowest.
/// Fails when one stops, or once `patience` (if any) has passed.
pub(crate) async fn settle(
    runners: &[SpawnedRunner],
    total: u64,
    bar: Option<&indicatif::ProgressBar>,
    patience: Option<Duration>,
) -> Result<(), LoopError> {
    let deadline = patience.map(|p| Instant::now() + p);
    loop {
        let done = runners
            .iter()
            .map(|r| r.progress.settled())
            .min()
            .unwrap_or(0);
        if let Some(bar) = bar {
            bar.set_position(done);
        }
        if done >= total {
            return Ok(());
        }
        if runners.iter().any(|r| r.task.is_finished()) {
            return Err(LoopError::DistillStopped { done, total });
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(LoopError::DistillTooSlow { done, total });
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// How long a feed of the live loop may take to be stored.
const LIVE_PATIENCE: Duration = Duration::from_secs(600);

/// Distill stages that keep running (the loop's, then one per shadow
/// memory, all reading the same topics), and how much was sent to them.
struct LiveDistill {
    stop: Shutdown,
    runners: Vec<SpawnedRunner>,
    /// Records produced to their topics so far.
    sent: u64,
}

impl LiveDistill {
    fn start(&mut self, runner: StageRunner<mrrec_distill::Distill<mrrec_store::AnyStore>>) {
        self.runners.push(runner.spawn(self.stop.clone()));
    }

    /// Returns once every distill stage has stored (or dead-lettered)
    /// every record sent.
    async fn wait(&mut self) -> Result<(), LoopError> {
        settle(&self.runners, self.sent, None, Some(LIVE_PATIENCE)).await
    }
}

async fn collect_rewards(
    clients: &KafkaClients,
    prefix: &str,
    stop: Shutdown,
) -> Result<Collected, LoopError> {
    let tail = TopicTail::open(
        clients,
        &Topic::Rewards.name(prefix),
        &Topic::Dlq.name(prefix),
        "in-process",
        TailFrom::Beginning,
    )
    .await?;
    let collected: Collected = Arc::default();
    let sink = collected.clone();
    tokio::spawn(async move {
        loop {
            let tailed = tokio::select! {
                _ = stop.wait() => return,
                tailed = tail.next::<Reward>() => tailed,
            };
            let reward = tailed.message;
            sink.lock().unwrap_or_else(|p| p.into_inner()).insert(
                reward.trajectory_id.clone(),
                Buffered {
                    topic: tailed.meta.topic.to_string(),
                    partition: tailed.meta.partition,
                    offset: tailed.meta.offset,
                    reward,
                },
            );
        }
    });
    Ok(collected)
}

/// DESIGN §11 users split for measuring learning: every fifth user (by
/// position) held out, up to `heldout`; the others train, up to `training`.
pub fn heldout_and_training(
    users: &[UserTargets],
    heldout: usize,
    training: usize,
) -> (Vec<&UserTargets>, Vec<&UserTargets>) {
    let held = users.iter().step_by(5).take(heldout).collect();
    let train = users
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 0)
        .map(|(_, u)| u)
        .take(training)
        .collect();
    (held, train)
}

pub fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// Mean reward of the served trajectories, and of all of them.
pub fn means(rewards: &[Buffered]) -> (f64, f64) {
    let served = mean(
        rewards
            .iter()
            .filter(|b| b.reward.trajectory.as_ref().is_some_and(|t| t.served))
            .map(|b| b.reward.total),
    );
    (served, mean(rewards.iter().map(|b| b.reward.total)))
}

/// The answer to a sent request, waited for at most ten minutes.
async fn answer(
    request_id: &str,
    rx: tokio::sync::oneshot::Receiver<mrrec_recommend::Received>,
) -> Result<mrrec_recommend::Received, LoopError> {
    tokio::time::timeout(Duration::from_secs(600), rx)
        .await
        .map_err(|_| LoopError::NoResponse(request_id.to_owned()))?
        .map_err(|_| LoopError::NoResponse(format!("{request_id} (the response channel closed)")))
}

/// Sampling temperature of the demo's policy (at most).
const DEMO_TEMPERATURE: f64 = 0.7;
/// How far below the logged reward the demo's gate lets a candidate be.
const DEMO_MAX_REGRESSION: f64 = 0.5;

/// The demo's configuration: embedded parts from `config`, state under
/// `dir` (store and index reset, policy kept), G ≥ 2 sampled trajectories.
pub fn demo_config(config: &Config, dir: &Path) -> Result<Config, LoopError> {
    let mut config = config.clone();
    for sub in ["store", "index"] {
        let path = dir.join(sub);
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|source| LoopError::Io {
                path: path.clone(),
                source,
            })?;
        }
    }
    config.store.path = dir.join("store");
    config.index.path = dir.join("index");
    config.policy.dir = dir.join("policy");
    if config.agent.group_size < 2 {
        config.agent.group_size = 4;
    }
    // Sampled answers are what users see: 0.7 keeps a freshly warm-started
    // policy's served answer mostly on its mode while the G samples still
    // differ enough for GRPO.
    if config.agent.temperature <= 0.0 || config.agent.temperature > DEMO_TEMPERATURE {
        config.agent.temperature = DEMO_TEMPERATURE;
    }
    config.recommend.timeout_ms = config.recommend.timeout_ms.max(30_000);
    config.train.max_regression = config.train.max_regression.max(DEMO_MAX_REGRESSION);
    Ok(config)
}
