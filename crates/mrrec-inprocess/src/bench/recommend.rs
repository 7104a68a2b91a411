//! `mrrec bench recommend`: sustained requests through the real topics. A
//! synthetic world (the `bench ingest` catalog and ratings) is distilled into
//! a private store and index; then the recommend stage runs on the policy
//! while requests are sent open-loop at `--rate` (each at its scheduled time,
//! whether or not earlier ones were answered). Reports end-to-end latency
//! (scheduled send → response received) and the share of it spent waiting
//! for the LLM (DESIGN §12).

use super::Measured;
use crate::LoopError;
use mrrec_config::{Config, StoreBackend};
use mrrec_memory::{Keyspace, MemoryStore};
use mrrec_messages::Request;
use mrrec_recommend::{RecommendClient, TOTALS};
use mrrec_store::{AnyStore, EmbeddedStore};
use mrrec_stream::{create_topics, Bootstrap, KafkaClients, Publisher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the bench is asked to do.
#[derive(Debug, Clone)]
pub struct RecommendBench {
    pub rate: f64,
    pub requests: usize,
    pub warmup: usize,
    pub events: usize,
    pub seed: u64,
    pub max_steps: Option<u32>,
}

const QUERIES: [&str; 6] = [
    "a funny movie for tonight",
    "something with action",
    "a drama to watch",
    "Any good Sci-Fi films?",
    "I'm in the mood for something romantic",
    "",
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn run(config: &Config, bench: RecommendBench) -> Result<Measured, LoopError> {
    if !(bench.rate > 0.0 && bench.rate.is_finite()) || bench.requests == 0 {
        return Err(LoopError::Bench(
            "--rate must be positive and --requests at least 1".into(),
        ));
    }
    let run = format!("bench-{}-", mrrec_stream::now_ms());
    let mut config = config.clone();
    if let Some(steps) = bench.max_steps {
        config.agent.max_steps = steps;
    }
    config.topics.prefix = format!("{}{run}", config.topics.prefix);
    let bootstrap = Bootstrap::resolve(&config).map_err(LoopError::Broker)?;
    let clients = KafkaClients::from_config(&config, &bootstrap);
    if !config.kafka.is_embedded() {
        create_topics(&clients, &config.topics)
            .await
            .map_err(LoopError::Topics)?;
    }
    let tmp = tempfile::tempdir().map_err(|source| LoopError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    config.index.path = tmp.path().join("index");

    // The world, distilled into a private store.
    let (items, events) = mrrec_datasets::synthetic::bench_world(bench.seed, bench.events);
    let memory = match config.store.backend {
        StoreBackend::Embedded => MemoryStore::new(
            AnyStore::Embedded(
                EmbeddedStore::open(&tmp.path().join("store"))
                    .map_err(|e| LoopError::Bench(format!("opening the bench store: {e}")))?,
            ),
            Keyspace::default(),
        ),
        StoreBackend::Redis => {
            let memory = mrrec_service::open_store(&config).await?;
            MemoryStore::new(memory.kv().clone(), Keyspace::new(&format!("mrrec-{run}")))
        }
    };
    let records = crate::produce::records(&config.topics.prefix, &items, &events)?;
    let total = records.len() as u64;
    let publisher = Publisher::new(&clients, "bench")?;
    crate::produce::publish_with_progress(&publisher, records, "producing the world").await?;
    let distill = super::start_distill_into(
        &config,
        &clients,
        &config.topics,
        &run,
        memory.clone(),
        config.index.path.clone(),
    )
    .await?;
    let bar = crate::produce::progress_bar(total, "distilling");
    let patience = Some(Duration::from_secs(600));
    let runners = std::slice::from_ref(&distill.runner);
    let settled = crate::running::settle(runners, total, Some(&bar), patience).await;
    bar.finish_and_clear();
    distill.shutdown.trigger();
    // The stage's own error says more than "it stopped".
    distill.runner.task.await??;
    settled?;

    // The policy: the configured one, else a fresh default model.
    let titles: Vec<String> = items
        .iter()
        .map(|i| format!("{} | {}", i.title, i.categories.join(", ")))
        .collect();
    let (model_dir, _model_tmp) = crate::bench::model_dir_for(&config, &titles)?;
    config.llm.model_dir = model_dir.display().to_string();
    let running = mrrec_recommend::start(&config, &clients, memory.clone(), false).await?;
    let client = Arc::new(RecommendClient::connect(&clients, &config.topics.prefix).await?);
    let users = (bench.events / 50).max(1);
    let request = |i: usize| Request {
        request_id: format!("{run}{i}"),
        user_id: format!("u{}", (i * 7919) % users),
        query: Some(QUERIES[i % QUERIES.len()].to_owned()).filter(|q| !q.is_empty()),
        k: 10,
        exclude_seen: true,
        ts: mrrec_stream::now_ms(),
    };

    // Warm-up (not measured), one at a time.
    for i in 0..bench.warmup {
        client
            .ask(&request(bench.requests + i), Duration::from_secs(60))
            .await?;
    }
    let baseline = (
        TOTALS.llm_micros.load(Ordering::Relaxed),
        TOTALS.stage_micros.load(Ordering::Relaxed),
        TOTALS.fallback.load(Ordering::Relaxed),
        TOTALS.errors.load(Ordering::Relaxed),
    );

    let bar = crate::produce::progress_bar(bench.requests as u64, "requests");
    let interval = Duration::from_secs_f64(1.0 / bench.rate);
    let started = Instant::now();
    let mut waiting = Vec::with_capacity(bench.requests);
    for i in 0..bench.requests {
        let scheduled = started + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let request = request(i);
        waiting.push(tokio::spawn(async move {
            let rx = client.send(&request).await?;
            let received = tokio::time::timeout(Duration::from_secs(60), rx)
                .await
                .map_err(|_| LoopError::NoResponse(format!("{} in 60 s", request.request_id)))?
                .map_err(|_| LoopError::NoResponse(request.request_id.clone()))?;
            let error = received.response.error.clone();
            Ok::<_, LoopError>((received.at.duration_since(scheduled), error))
        }));
        bar.inc(1);
    }
    let mut latencies = Vec::with_capacity(bench.requests);
    let mut errors = 0usize;
    for handle in waiting {
        let (latency, error) = handle.await??;
        latencies.push(latency.as_secs_f64() * 1000.0);
        errors += usize::from(error.is_some());
    }
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    running.stop().await?;

    let llm_ms = (TOTALS.llm_micros.load(Ordering::Relaxed) - baseline.0) as f64 / 1000.0;
    let stage_ms = (TOTALS.stage_micros.load(Ordering::Relaxed) - baseline.1) as f64 / 1000.0;
    let fallbacks = TOTALS.fallback.load(Ordering::Relaxed) - baseline.2;
    let error_count = TOTALS.errors.load(Ordering::Relaxed) - baseline.3;
    let total_ms: f64 = latencies.iter().sum();
    let mut sorted = latencies.clone();
    sorted.sort_by(f64::total_cmp);
    let llm_share = if total_ms > 0.0 {
        llm_ms / total_ms
    } else {
        0.0
    };
    let result = serde_json::json!({
        "rate_per_s": bench.requests as f64 / elapsed,
        "target_rate_per_s": bench.rate,
        "requests": bench.requests,
        "p50_ms": percentile(&sorted, 50.0),
        "p95_ms": percentile(&sorted, 95.0),
        "p99_ms": percentile(&sorted, 99.0),
        "max_ms": sorted.last().copied().unwrap_or(0.0),
        "mean_ms": total_ms / sorted.len() as f64,
        "llm_share": llm_share,
        "non_llm_share": 1.0 - llm_share,
        // Inside the stage only (what our code adds around the policy), and
        // the rest: broker transit (produce, fetch) both ways.
        "stage_llm_share": if stage_ms > 0.0 { llm_ms / stage_ms } else { 0.0 },
        "transit_share": if total_ms > 0.0 { 1.0 - stage_ms / total_ms } else { 0.0 },
        "stage_mean_ms": stage_ms / bench.requests as f64,
        "llm_mean_ms": llm_ms / bench.requests as f64,
        "fallbacks": fallbacks,
        "errors": errors.max(error_count as usize),
        "max_steps": config.agent.max_steps,
        "group_size": config.agent.group_size,
        "concurrency": config.recommend.concurrency,
        "broker": if config.kafka.is_embedded() { "embedded" } else { "kafka" },
    });
    Ok(Measured {
        summary: format!(
            "{} requests at {:.1}/s: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms; LLM {:.0}% of the time",
            bench.requests,
            bench.requests as f64 / elapsed,
            percentile(&sorted, 50.0),
            percentile(&sorted, 95.0),
            percentile(&sorted, 99.0),
            llm_share * 100.0
        ),
        figures: result,
    })
}
