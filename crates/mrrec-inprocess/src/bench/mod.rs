//! The benches (`mrrec bench …`, DESIGN §12), each a module whose `run`
//! measures and returns [`Measured`] (progress goes to stderr meanwhile; the
//! binary prints the summary and the JSON line), and what they share: topics
//! and a distill stage of their own on the configured broker, the policy to
//! measure, this process's memory, and the memory-search measurement of
//! `bench retrieve`. `bench recommend --llm-only` is `mrrec_llm::bench`
//! (it calls mistral.rs directly).

pub mod ingest;
pub mod learn;
pub mod recommend;
pub mod reopen;
pub mod soak;
pub mod train;

/// What a bench measured: a line for people and the JSON object (DESIGN §12).
#[derive(Debug, Clone)]
pub struct Measured {
    pub summary: String,
    pub figures: serde_json::Value,
}

use crate::LoopError;
use mrrec_config::Config;
use mrrec_datasets::synthetic::{Rng, BENCH_CATEGORIES};
use mrrec_distill::{Distill, Indexes};
use mrrec_index::MemoryIndex;
use mrrec_memory::{entry_id, Level, MemoryEntry};
use mrrec_memory::{Keyspace, MemoryStore};
use mrrec_policy::{init_model, ModelSpec, PolicyMeta};
use mrrec_store::AnyStore;
use mrrec_stream::{create_topics, KafkaClients, Shutdown, SpawnedRunner, StageRunner};
use std::time::Instant;

/// Fresh topics for one bench run on the configured (real) broker:
/// `{topics.prefix}{kind}-{now}-…`; returns the run's name, the topics and
/// the clients.
pub async fn bench_topics(
    config: &Config,
    kind: &str,
) -> Result<(String, mrrec_config::TopicsConfig, KafkaClients), LoopError> {
    if config.kafka.is_embedded() {
        return Err(LoopError::RealBrokerNeeded(format!("bench {kind}")));
    }
    let run = format!("{kind}-{}-", mrrec_stream::now_ms());
    let mut topics = config.topics.clone();
    topics.prefix = format!("{}{run}", config.topics.prefix);
    let clients = KafkaClients::new(&config.kafka.brokers, &config.kafka.properties);
    create_topics(&clients, &topics)
        .await
        .map_err(LoopError::Topics)?;
    Ok((run, topics, clients))
}

/// A distill stage on a bench's own topics, running.
pub struct BenchDistill {
    pub runner: SpawnedRunner,
    pub shutdown: Shutdown,
    /// Remove it when done.
    pub index_dir: std::path::PathBuf,
}

/// A distill stage on the bench's own `topics`, into the configured store
/// under a keyspace of its own and a fresh index directory, in a group of
/// its own (`run` names all three): what `bench ingest` and its soak measure.
pub async fn start_distill(
    config: &Config,
    clients: &KafkaClients,
    topics: &mrrec_config::TopicsConfig,
    run: &str,
) -> Result<BenchDistill, LoopError> {
    let memory = mrrec_service::open_store(config).await?;
    let memory = MemoryStore::new(memory.kv().clone(), Keyspace::new(&format!("mrrec-{run}")));
    let index_dir = std::env::temp_dir().join(format!("mrrec-{run}index"));
    start_distill_into(config, clients, topics, run, memory, index_dir).await
}

/// [`start_distill`] into `memory` and `index_dir`.
pub async fn start_distill_into(
    config: &Config,
    clients: &KafkaClients,
    topics: &mrrec_config::TopicsConfig,
    run: &str,
    memory: MemoryStore<AnyStore>,
    index_dir: std::path::PathBuf,
) -> Result<BenchDistill, LoopError> {
    let indexes = Indexes::open(Some(&index_dir), &memory).await?;
    let stage = Distill::new(memory, &topics.prefix)
        .with_indexes(indexes)
        .with_cache(config.distill.cache_bytes());
    let mut bench_config = config.clone();
    bench_config.topics = topics.clone();
    let settings = mrrec_distill::runner_settings(&bench_config, &format!("{run}distill"));
    let shutdown = Shutdown::new();
    let runner = StageRunner::new(clients.clone(), settings, stage).spawn(shutdown.clone());
    Ok(BenchDistill {
        runner,
        shutdown,
        index_dir,
    })
}

/// The policy to measure: the configured one, else a fresh default model
/// (tokenizer trained on `catalog`) in a temp dir.
pub fn model_dir_for(
    config: &Config,
    catalog: &[String],
) -> Result<(std::path::PathBuf, Option<tempfile::TempDir>), LoopError> {
    if let Ok(dir) =
        mrrec_policy::registry::resolve_model_dir(&config.llm.model_dir, &config.policy.dir)
    {
        return Ok((dir, None));
    }
    let tmp = tempfile::tempdir().map_err(|source| LoopError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let dir = tmp.path().join("v0000");
    let meta = PolicyMeta::new(Some(0), None, "init");
    init_model(&dir, &ModelSpec::default(), catalog, &meta)?;
    eprintln!(
        "no policy configured: measuring a fresh default model ({})",
        dir.display()
    );
    Ok((dir, Some(tmp)))
}

/// Peak resident memory of this process (Linux `VmHWM`), in MiB.
pub fn peak_rss_mb() -> f64 {
    proc_status_mb("VmHWM:")
}

/// Resident memory of this process now (Linux `VmRSS`), in MiB.
pub fn rss_mb() -> f64 {
    proc_status_mb("VmRSS:")
}

/// The part of [`rss_mb`] that is heap and stacks (`RssAnon`), in MiB; the
/// rest is mostly mapped files (tantivy's segments, in the page cache).
pub fn rss_anon_mb() -> f64 {
    proc_status_mb("RssAnon:")
}

/// A kB field of `/proc/self/status` in MiB (0 where there is none).
fn proc_status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// What `bench retrieve` measured (its JSON line, DESIGN §12).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RetrieveFigures {
    pub entries: usize,
    pub users: u64,
    pub queries: usize,
    pub k: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub build_s: f64,
}

/// Builds a memory index of `entries` synthetic entries (100 per user), then
/// times `queries` searches of random users for one or two words.
pub fn retrieve(entries: usize, queries: usize, seed: u64) -> Result<RetrieveFigures, LoopError> {
    let dir = std::env::temp_dir().join(format!("mrrec-bench-retrieve-{}", mrrec_stream::now_ms()));
    let mut index = MemoryIndex::open(Some(&dir))?;
    let mut rng = Rng(seed.max(1));
    let users = (entries / 100).max(1) as u64;
    let words = [
        "rated",
        "liked",
        "comedy",
        "drama",
        "action",
        "horror",
        "romance",
        "thriller",
        "classic",
        "recent",
        "favourite",
        "documentary",
        "animation",
        "crime",
        "western",
        "musical",
        "story",
        "night",
        "love",
        "war",
        "space",
        "family",
        "music",
        "city",
    ];
    let building = crate::produce::progress_bar(entries as u64, "indexing");
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(10_000);
    for i in 0..entries {
        let user = format!("u{}", i as u64 % users);
        let level = [
            Level::Behavior,
            Level::Behavior,
            Level::Behavior,
            Level::Preference,
        ][rng.below(4)];
        let category = BENCH_CATEGORIES[rng.below(BENCH_CATEGORIES.len())];
        let text: Vec<&str> = (0..8).map(|_| words[rng.below(words.len())]).collect();
        chunk.push(MemoryEntry {
            id: entry_id(level, &user, &i.to_string()),
            user,
            level,
            category: Some(category.to_owned()),
            text: format!("{category}: {}", text.join(" ")),
            ts: i as i64,
            items: Vec::new(),
        });
        if chunk.len() == chunk.capacity() {
            index.upsert(&chunk)?;
            building.inc(chunk.len() as u64);
            chunk.clear();
        }
    }
    index.upsert(&chunk)?;
    index.commit("bench")?;
    building.finish_and_clear();
    let build_s = started.elapsed().as_secs_f64();

    let mut latencies = Vec::with_capacity(queries);
    for _ in 0..queries {
        let user = format!("u{}", rng.below(users as usize));
        let query = if rng.below(2) == 0 {
            words[rng.below(words.len())].to_owned()
        } else {
            format!(
                "{} {}",
                words[rng.below(words.len())],
                words[rng.below(words.len())]
            )
        };
        let t = Instant::now();
        let hits = index.search(&user, &query, &[], None, 3)?;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(hits);
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RetrieveFigures {
        entries,
        users,
        queries,
        k: 3,
        p50_ms: (pct(0.5) * 1000.0).round() / 1000.0,
        p99_ms: (pct(0.99) * 1000.0).round() / 1000.0,
        build_s: (build_s * 10.0).round() / 10.0,
    })
}
