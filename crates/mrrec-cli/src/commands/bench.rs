//! `mrrec bench ingest` and `mrrec bench retrieve`. Each prints progress on
//! stderr and, as its last stdout line, one JSON object (DESIGN §12).

use anyhow::{bail, Result};
use mrrec_config::Config;
use mrrec_inprocess::bench::BenchDistill;
use mrrec_messages::Topic;
use mrrec_stream::{Progress, Publisher};
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::{Duration, Instant};

/// Produces `events` synthetic ratings (plus a catalog), then measures in one
/// run (a) a plain group consumer reading the events topic and (b) the distill
/// stage consuming the same records into the configured store and tantivy.
pub async fn ingest(config: &Config, events: usize, seed: u64) -> Result<()> {
    let (run, topics, clients) = mrrec_inprocess::bench::bench_topics(config, "bench").await?;

    let (items, events_data) = mrrec_datasets::synthetic::bench_world(seed, events);
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
    } = mrrec_inprocess::bench::start_distill(config, &clients, &topics, &run).await?;
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

/// Builds a memory index of `entries` synthetic entries (100 per user), then
/// times `queries` searches of random users for one or two words.
pub fn retrieve(entries: usize, queries: usize, seed: u64) -> Result<()> {
    let figures = mrrec_inprocess::bench::retrieve(entries, queries, seed)?;
    eprintln!(
        "indexed {entries} entries in {:.1}s; {queries} searches: p50 {:.3} ms, p99 {:.3} ms",
        figures.build_s, figures.p50_ms, figures.p99_ms
    );
    println!("{}", serde_json::to_string(&figures)?);
    Ok(())
}
