//! `mrrec bench ingest --duration D`: a soak. Synthetic ratings from a fixed
//! population of users stream into the distill stage for `D`; the producer
//! stays at most [`AHEAD`] records in front of what distill has stored, so
//! the load is as fast as distill sustains and no backlog builds up in the
//! process. The process's resident memory is sampled every 5 s: bounded
//! memory means the end is not far above the start once warm.

use super::{peak_rss_mb, rss_anon_mb, rss_mb, Measured};
use crate::LoopError;
use mrrec_config::Config;
use mrrec_datasets::synthetic::Rng;
use mrrec_messages::{Event, EventKind};
use mrrec_stream::{Progress, Publisher, SpawnedRunner};
use std::time::{Duration, Instant};

/// Most records produced but not yet stored.
const AHEAD: u64 = 100_000;
/// Events per produced chunk.
const CHUNK: usize = 10_000;
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Streams ratings of `users` users (returning users, as in a real stream)
/// into distill for `duration`.
pub async fn run(
    config: &Config,
    duration: Duration,
    users: usize,
    seed: u64,
) -> Result<Measured, LoopError> {
    let (run, topics, clients) = crate::bench::bench_topics(config, "soak").await?;
    let publisher = Publisher::new(&clients, "bench")?;
    let (items, _) = mrrec_datasets::synthetic::bench_world(seed, 0);
    let item_count = items.len();
    publisher
        .publish_all(crate::produce::records(&topics.prefix, &items, &[])?)
        .await
        .map_err(|(source, _)| LoopError::Publish {
            what: "the bench catalog".into(),
            source,
        })?;

    let super::BenchDistill {
        runner: SpawnedRunner {
            progress,
            task: running,
        },
        shutdown,
        index_dir,
    } = super::start_distill(config, &clients, &topics, &run).await?;

    let mut rng = Rng(seed.max(1));
    let mut produced = item_count as u64;
    let mut events = 0u64;
    let mut samples: Vec<(f64, f64, f64)> = Vec::new();
    let started = Instant::now();
    let mut next_sample = started;
    eprintln!(
        "soak: {}s of ratings from {users} users into distill ({:?} store)",
        duration.as_secs(),
        config.store.backend
    );
    while started.elapsed() < duration {
        if running.is_finished() {
            shutdown.trigger();
            return Err(LoopError::Bench(format!(
                "distill stopped during the soak: {:?}",
                running.await?
            )));
        }
        if Instant::now() >= next_sample {
            let t = started.elapsed().as_secs_f64();
            let processed = Progress::get(&progress.processed);
            let (rss, anon) = (rss_mb(), rss_anon_mb());
            samples.push((t, rss, anon));
            eprintln!("  {t:>6.0}s  stored {processed:>10}  rss {rss:>7.1} MiB (anon {anon:>7.1})");
            next_sample += SAMPLE_EVERY;
        }
        if produced.saturating_sub(Progress::get(&progress.processed)) > AHEAD {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let chunk: Vec<Event> = (0..CHUNK)
            .map(|_| {
                let i = events;
                events += 1;
                Event {
                    event_id: format!("s{i}"),
                    user_id: format!("u{}", rng.below(users)),
                    kind: EventKind::Rate,
                    item_id: Some(format!("i{}", rng.below(item_count))),
                    value: Some(1.0 + rng.below(5) as f64),
                    text: None,
                    attrs: None,
                    ts: 1_700_000_000_000 + i as i64 * 100,
                }
            })
            .collect();
        publisher
            .publish_all(crate::produce::records(&topics.prefix, &[], &chunk)?)
            .await
            .map_err(|(source, _)| LoopError::Publish {
                what: "the soak's ratings".into(),
                source,
            })?;
        produced += CHUNK as u64;
    }
    let soaked_s = started.elapsed().as_secs_f64();
    let stored_at_end = Progress::get(&progress.processed);
    shutdown.trigger();
    running.await??;
    let _ = std::fs::remove_dir_all(&index_dir);

    // Warm: the first sample after a tenth of the run (caches filled).
    let warm_at = soaked_s / 10.0;
    let warm = samples
        .iter()
        .find(|s| s.0 >= warm_at)
        .or(samples.first())
        .copied()
        .unwrap_or_default();
    let end = samples.last().copied().unwrap_or_default();
    let max = samples.iter().map(|s| s.1).fold(0.0, f64::max);
    let round = |mb: f64| (mb * 10.0).round() / 10.0;
    let ratio = |end: f64, start: f64| {
        if start > 0.0 {
            (end / start * 1000.0).round() / 1000.0
        } else {
            0.0
        }
    };
    let every = (samples.len() / 20).max(1);
    let curve: Vec<[f64; 3]> = samples
        .iter()
        .step_by(every)
        .map(|(t, rss, anon)| [t.round(), round(*rss), round(*anon)])
        .collect();
    Ok(Measured {
        summary: format!(
            "soaked {soaked_s:.0} s: {stored_at_end} records stored; rss {:.1} MiB warm, {:.1} MiB at the end",
            warm.1, end.1
        ),
        figures: serde_json::json!({
            "duration_s": soaked_s.round(),
            "events_produced": events,
            "records_stored": stored_at_end,
            "stored_per_s": (stored_at_end as f64 / soaked_s).round(),
            "users": users,
            "rss_mb_warm": round(warm.1),
            "rss_mb_end": round(end.1),
            "rss_anon_mb_warm": round(warm.2),
            "rss_anon_mb_end": round(end.2),
            "rss_mb_max": round(max),
            "peak_rss_mb": round(peak_rss_mb()),
            "rss_end_over_warm": ratio(end.1, warm.1),
            "rss_anon_end_over_warm": ratio(end.2, warm.2),
            "rss_samples_t_rss_anon": curve,
            "store": format!("{:?}", config.store.backend).to_lowercase(),
            "cache_mb": config.distill.cache_mb,
            "batch_max_users": config.distill.batch_max_users,
        }),
    })
}
