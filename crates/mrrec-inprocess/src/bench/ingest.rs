//! `mrrec bench ingest`: produce a synthetic world, then measure in one run
//! a plain group consumer and the distill stage reading the same records.

use super::{BenchDistill, Measured};
use crate::LoopError;
use mrrec_config::Config;
use mrrec_messages::Topic;
use mrrec_stream::{Progress, Publisher, SpawnedRunner};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::{Duration, Instant};

/// Produces `events` synthetic ratings (plus a catalog), then measures in one
/// run (a) a plain group consumer reading the events topic and (b) the distill
/// stage consuming the same records into the configured store and tantivy.
pub async fn run(config: &Config, events: usize, seed: u64) -> Result<Measured, LoopError> {
    let (run, topics, clients) = crate::bench::bench_topics(config, "bench").await?;

    let (items, events_data) = mrrec_datasets::synthetic::bench_world(seed, events);
    let users = (events / 50).max(1) as u64;
    let records = crate::produce::records(&topics.prefix, &items, &events_data)?;
    let total = records.len() as u64;
    let publisher = Publisher::new(&clients, "bench")?;
    let started = Instant::now();
    crate::produce::publish_with_progress(&publisher, records, "producing").await?;
    let produce_s = started.elapsed().as_secs_f64();

    // (a) Raw: a plain group consumer reading every event.
    let events_topic = Topic::Events.name(&topics.prefix);
    let raw_s = {
        let topic = events_topic.clone();
        let clients = clients.clone();
        let group = format!("{}{run}raw", config.kafka.group_prefix);
        tokio::task::spawn_blocking(move || -> Result<f64, LoopError> {
            let consumer: BaseConsumer = clients.consumer(&group).create()?;
            consumer.subscribe(&[&topic])?;
            let reading = crate::produce::progress_bar(events as u64, "raw consume");
            let mut seen = 0usize;
            let mut started = None;
            let deadline = Instant::now() + Duration::from_secs(600);
            while seen < events {
                if Instant::now() > deadline {
                    return Err(LoopError::Bench(format!(
                        "raw consume: only {seen} of {events} records in 10 minutes"
                    )));
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
        runner: SpawnedRunner {
            progress,
            task: running,
        },
        shutdown,
        index_dir,
    } = crate::bench::start_distill(config, &clients, &topics, &run).await?;
    let distilling = crate::produce::progress_bar(total, "distill");
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
            return Err(LoopError::Bench(format!(
                "distill stopped after {done} of {total} records ({} received, {} skipped as already stored){}: {outcome:?}",
                Progress::get(&progress.polled),
                Progress::get(&progress.skipped),
                if stalled { ", no progress for 60 s" } else { "" }
            )));
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
    Ok(Measured {
        summary: format!(
            "produced {total} records in {produce_s:.1}s; raw consume {raw_per_s:.0}/s; distill {distill_per_s:.0}/s into {:?} + tantivy",
            config.store.backend
        ),
        figures: serde_json::json!({
            "events": events,
            "items": items.len(),
            "users": users,
            "raw_consume_per_s": raw_per_s.round(),
            "distill_per_s": distill_per_s.round(),
            "ratio": (distill_per_s / raw_per_s * 1000.0).round() / 1000.0,
            "store": format!("{:?}", config.store.backend).to_lowercase(),
            "brokers": config.kafka.brokers,
            "produce_per_s": (total as f64 / produce_s).round(),
        }),
    })
}
