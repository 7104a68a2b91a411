//! `mrrec bench learn --data-dir D`: does the RL loop improve the policy on
//! MovieLens-100K, through the real topics? DESIGN §11's split: the history
//! before each user's validation target is distilled, then the distill stage
//! stops (so outcomes never leak into memory). Users are split into training
//! and held-out users. Each round: held-out users' validation requests are
//! answered by the serving version and their validation targets sent as
//! outcomes (measured, never trained on); then the training users' requests
//! and outcomes produce the rewards one trainer round learns from; the new
//! version is announced and the recommend stage switches to it. The last
//! line is JSON: held-out mean reward per version.

use super::train::{Buffered, Trainer};
use anyhow::{bail, Context, Result};
use mrrec_config::Config;
use mrrec_datasets::UserTargets;
use mrrec_messages::{encode, Event, EventKind, Outcome, Request, Reward, Topic};
use mrrec_recommend::RecommendClient;
use mrrec_stream::{Bootstrap, KafkaClients, OutgoingRecord, Publisher, Shutdown, StageRunner};
use mrrec_train::Decision;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct LearnBench<'a> {
    pub data_dir: &'a Path,
    pub rounds: usize,
    pub train_users: usize,
    pub heldout_users: usize,
}

/// Rewards read from `mrrec.rewards`, by trajectory id.
type Collected = Arc<Mutex<BTreeMap<String, Buffered>>>;

fn collect_rewards(clients: &KafkaClients, prefix: &str, stop: Shutdown) -> Result<Collected> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message as _;
    let topic = Topic::Rewards.name(prefix);
    let consumer: StreamConsumer = clients
        .reader(&format!("mrrec-bench-learn-{}", mrrec_stream::now_ms()))
        .create()?;
    consumer.subscribe(&[&topic])?;
    let collected: Collected = Arc::default();
    let sink = collected.clone();
    tokio::spawn(async move {
        loop {
            let message = tokio::select! {
                _ = stop.wait() => return,
                m = consumer.recv() => m,
            };
            let Ok(message) = message else { continue };
            let Ok(reward) =
                serde_json::from_slice::<Reward>(message.payload().unwrap_or_default())
            else {
                continue;
            };
            sink.lock().unwrap_or_else(|p| p.into_inner()).insert(
                reward.trajectory_id.clone(),
                Buffered {
                    topic: message.topic().to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    reward,
                },
            );
        }
    });
    Ok(collected)
}

/// Sends one validation request per user (ids `{tag}-{user}`), waits for the
/// answers, then sends each user's validation target as the outcome.
/// Returns the request ids that were answered without error.
async fn ask_and_reward(
    client: &RecommendClient,
    publisher: &Publisher,
    prefix: &str,
    users: &[&UserTargets],
    genres: &HashMap<String, Vec<String>>,
    tag: &str,
) -> Result<Vec<String>> {
    let bar = super::load::progress_bar(users.len() as u64, tag);
    let mut waiting = Vec::new();
    for u in users {
        let request = Request {
            request_id: format!("{tag}-{}", u.user_id),
            user_id: u.user_id.clone(),
            query: Some(mrrec_datasets::query_for(
                &u.user_id,
                genres.get(&u.valid.item_id).map_or(&[][..], Vec::as_slice),
            )),
            k: 10,
            exclude_seen: true,
            ts: mrrec_stream::now_ms(),
        };
        waiting.push((request.clone(), client.send(&request).await?));
    }
    let mut answered = Vec::new();
    let mut outcomes = Vec::new();
    for ((request, rx), u) in waiting.into_iter().zip(users) {
        let received = tokio::time::timeout(Duration::from_secs(600), rx)
            .await
            .with_context(|| format!("no response to {}", request.request_id))?
            .context("the response channel closed")?;
        bar.inc(1);
        if received.response.error.is_some() {
            continue;
        }
        answered.push(request.request_id.clone());
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
        outcomes.push(OutgoingRecord {
            topic: Topic::Outcomes.name(prefix),
            key: Some(u.user_id.clone().into_bytes()),
            payload: encode(&outcome)?,
        });
    }
    bar.finish_and_clear();
    if let Err((e, _)) = publisher.publish_all(outcomes).await {
        bail!("publishing outcomes: {e}");
    }
    Ok(answered)
}

/// Rewards of requests whose id starts with `tag-`, once they stop arriving.
async fn rewards_of(collected: &Collected, tag: &str, requests: usize) -> Vec<Buffered> {
    let prefix = format!("{tag}-");
    let select = || -> Vec<Buffered> {
        collected
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

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// Mean reward of the served trajectories, and of all of them.
fn means(rewards: &[Buffered]) -> (f64, f64) {
    let served = mean(
        rewards
            .iter()
            .filter(|b| b.reward.trajectory.as_ref().is_some_and(|t| t.served))
            .map(|b| b.reward.total),
    );
    (served, mean(rewards.iter().map(|b| b.reward.total)))
}

pub async fn run(config: &Config, bench: LearnBench<'_>) -> Result<()> {
    if config.agent.group_size < 2 {
        bail!("learning needs agent.group_size ≥ 2 (and agent.temperature > 0)");
    }
    let dataset = mrrec_datasets::ml100k(bench.data_dir)?;
    let split = mrrec_datasets::split(&dataset);
    let genres: HashMap<String, Vec<String>> = dataset
        .items
        .iter()
        .map(|i| (i.item_id.clone(), i.categories.clone()))
        .collect();
    // Held-out users: every fifth (by position), the rest train.
    let heldout: Vec<&UserTargets> = split
        .users
        .iter()
        .step_by(5)
        .take(bench.heldout_users)
        .collect();
    let training: Vec<&UserTargets> = split
        .users
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 5 != 0)
        .map(|(_, u)| u)
        .take(bench.train_users)
        .collect();
    eprintln!(
        "{} users with validation targets: {} held out, {} training; group size {}",
        split.users.len(),
        heldout.len(),
        training.len(),
        config.agent.group_size
    );
    let registry = mrrec_policy::PolicyRegistry::new(&config.policy.dir);
    if registry.latest()?.is_none() && config.llm.model_dir.is_empty() {
        let texts: Vec<String> = dataset.items.iter().map(super::model::item_text).collect();
        let staging = registry.staging_dir(0)?;
        let meta = mrrec_policy::PolicyMeta::new(Some(0), None, "init");
        mrrec_policy::init_model(&staging, &mrrec_policy::ModelSpec::default(), &texts, &meta)?;
        registry.publish(&staging, 0)?;
        eprintln!("initialised policy v0000 in {}", registry.dir().display());
    }

    let bootstrap = Bootstrap::resolve(config).context("starting the broker connection")?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    if !config.kafka.is_embedded() {
        super::topics::create(config).await?;
    }
    let prefix = config.topics.prefix.clone();
    let memory = super::store::open(config).await?;

    // History before the validation targets, distilled; then distill stops.
    let publisher = Publisher::new(&clients, "bench-learn")?;
    let records = super::load::records(&prefix, &dataset.items, &split.valid_history)?;
    let total = records.len() as u64;
    super::load::publish_with_progress(&publisher, records, "producing history").await?;
    let distill = super::run::distill_stage(config, memory.clone()).await?;
    let runner = StageRunner::new(
        clients.clone(),
        mrrec_distill::runner_settings(config, mrrec_distill::STAGE),
        distill,
    );
    let progress = runner.progress();
    let stop_distill = Shutdown::new();
    let distilling = tokio::spawn(runner.run(stop_distill.clone()));
    let bar = super::load::progress_bar(total, "distilling");
    loop {
        let done = progress.processed.load(Ordering::Relaxed)
            + progress.dead_lettered.load(Ordering::Relaxed)
            + progress.skipped.load(Ordering::Relaxed);
        bar.set_position(done);
        if done >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bar.finish_and_clear();
    stop_distill.trigger();
    distilling.await??;

    let recommend = super::recommend::start(config, &clients, memory.clone(), true).await?;
    let reward_stage = mrrec_reward::open_stage(config, &clients, memory.clone())?;
    let reward_settings = mrrec_reward::runner_settings(config);
    let stop = Shutdown::new();
    let rewarding = tokio::spawn(
        StageRunner::new(clients.clone(), reward_settings, reward_stage).run(stop.clone()),
    );
    let collected = collect_rewards(&clients, &prefix, stop.clone())?;
    let client = RecommendClient::connect(&clients, &prefix).await?;
    let trainer = Trainer::new(config, &clients)?;

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut version = registry.latest()?.map_or(0, |v| v.version);
    let mut published = 0usize;
    for round in 0..=bench.rounds {
        let tag = format!("learn-h{round}");
        let answered =
            ask_and_reward(&client, &publisher, &prefix, &heldout, &genres, &tag).await?;
        let held = rewards_of(&collected, &tag, answered.len()).await;
        let (heldout_served, heldout_all) = means(&held);
        let mut row = serde_json::json!({
            "version": version,
            "heldout_requests": answered.len(),
            "heldout_rewards": held.len(),
            "heldout_reward": heldout_served,
            "heldout_reward_all": heldout_all,
        });
        eprintln!(
            "v{version:04}: held-out mean reward {heldout_served:.4} (served), {heldout_all:.4} (all {} trajectories)",
            held.len()
        );
        if round < bench.rounds {
            let tag = format!("learn-t{round}");
            let answered =
                ask_and_reward(&client, &publisher, &prefix, &training, &genres, &tag).await?;
            let rewards = rewards_of(&collected, &tag, answered.len()).await;
            let (train_served, train_all) = means(&rewards);
            row["train_reward"] = serde_json::json!(train_served);
            row["train_reward_all"] = serde_json::json!(train_all);
            eprintln!(
                "v{version:04}: training mean reward {train_served:.4} (served), {train_all:.4} (all {}); training…",
                rewards.len()
            );
            let report = trainer.round(&rewards).await?;
            row["round_metrics"] = serde_json::json!(report.metrics);
            match &report.decision {
                Decision::Published(v) => {
                    eprintln!("published v{:04}", v.version);
                    version = v.version;
                    published += 1;
                    wait_for_version(&client, &training, version).await?;
                }
                Decision::Rejected(reason) | Decision::NothingToLearn(reason) => {
                    eprintln!("round {round}: nothing published: {reason}");
                    row["round_decision"] = serde_json::json!(reason);
                }
            }
        }
        rows.push(row);
    }
    stop.trigger();
    rewarding.await??;
    recommend.stop().await?;
    let first = rows.first().and_then(|r| r["heldout_reward"].as_f64());
    let last = rows.last().and_then(|r| r["heldout_reward"].as_f64());
    println!(
        "| version | held-out reward (served) | held-out reward (all) | training reward (served) |"
    );
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| v{:04} | {:.4} | {:.4} | {} |",
            r["version"].as_u64().unwrap_or(0),
            r["heldout_reward"].as_f64().unwrap_or(f64::NAN),
            r["heldout_reward_all"].as_f64().unwrap_or(f64::NAN),
            r["train_reward"]
                .as_f64()
                .map_or("—".to_owned(), |v| format!("{v:.4}"))
        );
    }
    let summary = serde_json::json!({
        "dataset": "ml-100k",
        "heldout_users": heldout.len(),
        "train_users": training.len(),
        "group_size": config.agent.group_size,
        "rounds": bench.rounds,
        "versions_published": published,
        "first_version_reward": first,
        "last_version_reward": last,
        "seconds": started.elapsed().as_secs_f64(),
        "rows": rows,
    });
    println!("{summary}");
    Ok(())
}

/// Waits until the recommend stage serves `version` (probe requests for a
/// training user, with no outcome: they earn no reward).
async fn wait_for_version(
    client: &RecommendClient,
    users: &[&UserTargets],
    version: u32,
) -> Result<()> {
    let user = users.first().map_or("1", |u| u.user_id.as_str());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let request = Request {
            request_id: format!("learn-probe-{}", mrrec_stream::now_ms()),
            user_id: user.to_owned(),
            query: None,
            k: 1,
            exclude_seen: true,
            ts: mrrec_stream::now_ms(),
        };
        let received = client.ask(&request, Duration::from_secs(120)).await?;
        if received.response.policy_version >= version {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the recommend stage did not switch to v{version:04} within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
