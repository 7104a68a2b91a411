//! `mrrec bench ingest` and `mrrec bench retrieve`. Each prints progress on
//! stderr and, as its last stdout line, one JSON object (DESIGN §12).

use anyhow::{bail, Context, Result};
use mrrec_config::Config;
use mrrec_distill::{Distill, Indexes};
use mrrec_index::MemoryIndex;
use mrrec_memory::{entry_id, Keyspace, Level, MemoryEntry, MemoryStore};
use mrrec_messages::{Event, EventKind, Item, Topic};
use mrrec_stream::{create_topics, KafkaClients, Progress, Publisher, Shutdown, StageRunner};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::{Duration, Instant};

// A deterministic generator, so runs are comparable.
use mrrec_datasets::synthetic::Rng;

const CATEGORIES: [&str; 12] = [
    "Action",
    "Comedy",
    "Drama",
    "Horror",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "Documentary",
    "Animation",
    "Crime",
    "Western",
    "Musical",
];

/// Produces `events` synthetic ratings (plus a catalog), then measures in one
/// run (a) a plain group consumer reading the events topic and (b) the distill
/// stage consuming the same records into the configured store and tantivy.
pub async fn ingest(config: &Config, events: usize, seed: u64) -> Result<()> {
    let (run, topics, clients) = bench_topics(config, "bench").await?;

    let (items, events_data) = synthetic_world(seed, events);
    let users = (events / 50).max(1) as u64;
    let records = mrrec_inprocess::produce::records(&topics.prefix, &items, &events_data)?;
    let total = records.len() as u64;
    let publisher = Publisher::new(&clients, "bench")?;
    let started = Instant::now();
    mrrec_inprocess::produce::publish_with_progress(&publisher, records, "producing").await?;
    let produce_s = started.elapsed().as_secs_f64();

    // (a) Raw: a plain group consumer reading every event.
    let events_topic = Topic::Events.name(&topics.prefix);
    let raw_s = {
        let topic = events_topic.clone();
        let clients = clients.clone();
        let group = format!("{}{run}raw", config.kafka.group_prefix);
        tokio::task::spawn_blocking(move || -> Result<f64> {
            let consumer: BaseConsumer = clients.consumer(&group).create()?;
            consumer.subscribe(&[&topic])?;
            let reading = mrrec_inprocess::produce::progress_bar(events as u64, "raw consume");
            let mut seen = 0usize;
            let mut started = None;
            let deadline = Instant::now() + Duration::from_secs(600);
            while seen < events {
                if Instant::now() > deadline {
                    bail!("raw consume: only {seen} of {events} records in 10 minutes");
                }
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    message?;
                    started.get_or_insert_with(Instant::now);
                    seen += 1;
                    if seen.is_multiple_of(10_000) {
                        reading.set_position(seen as u64);
                    }
                }
            }
            reading.finish_and_clear();
            Ok(started.map_or(0.0, |s| s.elapsed().as_secs_f64()))
        })
        .await??
    };

    // (b) Distill into the configured store and tantivy.
    let BenchDistill {
        progress,
        shutdown,
        running,
        index_dir,
    } = start_distill(config, &clients, &topics, &run).await?;
    let distilling = mrrec_inprocess::produce::progress_bar(total, "distill");
    let mut started = None;
    let (mut last_done, mut last_change) = (0, Instant::now());
    loop {
        // The clock starts with the first record received, as the raw consumer's does.
        if Progress::get(&progress.polled) > 0 {
            started.get_or_insert_with(Instant::now);
        }
        let done = Progress::get(&progress.processed);
        distilling.set_position(done);
        if done >= total {
            break;
        }
        if done != last_done {
            (last_done, last_change) = (done, Instant::now());
        }
        let stalled = last_change.elapsed() > Duration::from_secs(60);
        if running.is_finished() || stalled {
            shutdown.trigger();
            let outcome = running.await?;
            bail!(
                "distill stopped after {done} of {total} records ({} received, {} skipped as already stored){}: {outcome:?}",
                Progress::get(&progress.polled),
                Progress::get(&progress.skipped),
                if stalled { ", no progress for 60 s" } else { "" }
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The stage indexes on a worker thread: the clock stops once it has
    // stopped and the worker has indexed and committed everything.
    distilling.finish_and_clear();
    shutdown.trigger();
    running.await??;
    let distill_s = started.map_or(0.0, |s: Instant| s.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&index_dir);

    let raw_per_s = events as f64 / raw_s.max(1e-9);
    let distill_per_s = total as f64 / distill_s.max(1e-9);
    eprintln!(
        "produced {total} records in {produce_s:.1}s; raw consume {raw_per_s:.0}/s; distill {distill_per_s:.0}/s into {:?} + tantivy",
        config.store.backend
    );
    println!(
        "{}",
        serde_json::json!({
            "events": events,
            "items": items.len(),
            "users": users,
            "raw_consume_per_s": raw_per_s.round(),
            "distill_per_s": distill_per_s.round(),
            "ratio": (distill_per_s / raw_per_s * 1000.0).round() / 1000.0,
            "store": format!("{:?}", config.store.backend).to_lowercase(),
            "brokers": config.kafka.brokers,
            "produce_per_s": (total as f64 / produce_s).round(),
        })
    );
    Ok(())
}

/// Fresh topics for one bench run on the configured (real) broker:
/// `{topics.prefix}{kind}-{now}-…`; returns the run's name, the topics and
/// the clients.
pub(crate) async fn bench_topics(
    config: &Config,
    kind: &str,
) -> Result<(String, mrrec_config::TopicsConfig, KafkaClients)> {
    if config.kafka.is_embedded() {
        bail!("bench ingest measures a real broker: set kafka.brokers (or MRREC__KAFKA__BROKERS)");
    }
    let run = format!("{kind}-{}-", mrrec_stream::now_ms());
    let mut topics = config.topics.clone();
    topics.prefix = format!("{}{run}", config.topics.prefix);
    let clients = KafkaClients::new(&config.kafka.brokers, &config.kafka.properties);
    create_topics(&clients, &topics)
        .await
        .with_context(|| format!("creating the {kind} topics"))?;
    Ok((run, topics, clients))
}

/// A distill stage on the bench's own `topics`, into the configured store
/// under a keyspace of its own and a fresh index directory, in a group of
/// its own (`run` names all three): what `bench ingest` and its soak measure.
pub(crate) struct BenchDistill {
    pub progress: std::sync::Arc<Progress>,
    pub shutdown: Shutdown,
    pub running:
        tokio::task::JoinHandle<Result<mrrec_stream::RunReport, mrrec_stream::StreamError>>,
    /// Remove it when done.
    pub index_dir: std::path::PathBuf,
}

pub(crate) async fn start_distill(
    config: &Config,
    clients: &KafkaClients,
    topics: &mrrec_config::TopicsConfig,
    run: &str,
) -> Result<BenchDistill> {
    let memory = mrrec_service::open_store(config).await?;
    let memory = MemoryStore::new(memory.kv().clone(), Keyspace::new(&format!("mrrec-{run}")));
    let index_dir = std::env::temp_dir().join(format!("mrrec-{run}index"));
    let indexes = Indexes::open(Some(&index_dir), &memory).await?;
    let stage = Distill::new(memory, &topics.prefix)
        .with_indexes(indexes)
        .with_cache(config.distill.cache_bytes());
    let mut bench_config = config.clone();
    bench_config.topics = topics.clone();
    let settings = mrrec_distill::runner_settings(&bench_config, &format!("{run}distill"));
    let runner = StageRunner::new(clients.clone(), settings, stage);
    let progress = runner.progress();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(runner.run(shutdown.clone()));
    Ok(BenchDistill {
        progress,
        shutdown,
        running,
        index_dir,
    })
}

/// Builds a memory index of `entries` synthetic entries (100 per user), then
/// times `queries` searches of random users for one or two words.
pub fn retrieve(entries: usize, queries: usize, seed: u64) -> Result<()> {
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
    let building = mrrec_inprocess::produce::progress_bar(entries as u64, "indexing");
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
        let category = CATEGORIES[rng.below(CATEGORIES.len())];
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
    eprintln!(
        "indexed {entries} entries in {build_s:.1}s; {queries} searches: p50 {:.3} ms, p99 {:.3} ms",
        pct(0.5),
        pct(0.99)
    );
    println!(
        "{}",
        serde_json::json!({
            "entries": entries,
            "users": users,
            "queries": queries,
            "k": 3,
            "p50_ms": (pct(0.5) * 1000.0).round() / 1000.0,
            "p99_ms": (pct(0.99) * 1000.0).round() / 1000.0,
            "build_s": (build_s * 10.0).round() / 10.0,
        })
    );
    Ok(())
}

/// A synthetic catalog (2,000 items in 1–3 of 12 categories) and `events`
/// ratings 1–5 by ~events/50 users, deterministic in `seed`.
pub(crate) fn synthetic_world(seed: u64, events: usize) -> (Vec<Item>, Vec<Event>) {
    let mut rng = Rng(seed.max(1));
    let items: Vec<Item> = (0..2000)
        .map(|i| {
            let n = 1 + rng.below(3);
            let categories: Vec<String> = (0..n)
                .map(|_| CATEGORIES[rng.below(CATEGORIES.len())].to_owned())
                .collect();
            let mut categories = categories;
            categories.sort();
            categories.dedup();
            Item {
                item_id: format!("i{i}"),
                title: format!("Item {i} ({})", 1950 + rng.below(70)),
                categories,
                description: None,
                attrs: serde_json::json!({"year": 1950 + rng.below(70)})
                    .as_object()
                    .cloned(),
            }
        })
        .collect();
    let users = (events / 50).max(1) as u64;
    let events = (0..events)
        .map(|i| {
            let user = format!("u{}", rng.below(users as usize));
            Event {
                event_id: format!("e{i}"),
                user_id: user,
                kind: EventKind::Rate,
                item_id: Some(format!("i{}", rng.below(items.len()))),
                value: Some(1.0 + rng.below(5) as f64),
                text: None,
                attrs: None,
                ts: 1_700_000_000_000 + i as i64 * 1000,
            }
        })
        .collect();
    (items, events)
}
