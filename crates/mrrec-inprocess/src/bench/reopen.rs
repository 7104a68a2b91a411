//! `mrrec bench reopen`: what a distill restart costs when its indexes are
//! behind the store because another instance moved on while it was away.
//! One run, one synthetic store: the instance's own index directory is
//! caught up (the users whose stored version moved, the items whose indexed
//! text differs), and a fresh directory is rebuilt from scratch from the
//! same store, for the ratio. The last stdout line is one JSON object.

use super::Measured;
use crate::LoopError;
use mrrec_distill::{Distill, Indexes, Input};
use mrrec_memory::{Keyspace, MemoryStore};
use mrrec_messages::{Event, EventKind};
use mrrec_store::EmbeddedStore;
use mrrec_stream::{Batch, Decoded, PartitionRange, RecordMeta, Stage};
use std::sync::Arc;
use std::time::Instant;

/// Records per batch while filling the store.
const BATCH: usize = 1000;
/// One user in this many gets a new rating from the other instance.
const CHANGED_ONE_IN: usize = 20;

/// `inputs` as batches of one partition of `topic`, offsets from `first`.
async fn feed(
    stage: &mut Distill<EmbeddedStore>,
    topic: &str,
    partition: i32,
    inputs: Vec<Input>,
) -> Result<(), LoopError> {
    let topic: Arc<str> = Arc::from(topic);
    let mut offset = 0i64;
    let mut inputs = inputs.into_iter().peekable();
    while inputs.peek().is_some() {
        let records: Vec<Decoded<Input>> = inputs
            .by_ref()
            .take(BATCH)
            .map(|message| {
                offset += 1;
                Decoded {
                    meta: RecordMeta {
                        topic: topic.clone(),
                        partition,
                        offset: offset - 1,
                        key: None,
                        timestamp_ms: None,
                    },
                    message,
                }
            })
            .collect();
        let range = PartitionRange {
            topic: topic.clone(),
            partition,
            first_offset: records[0].meta.offset,
            last_offset: offset - 1,
        };
        let batch = Batch {
            records,
            ranges: vec![range],
        };
        stage
            .process(&batch)
            .await
            .map_err(|e| LoopError::Bench(format!("distill: {e}")))?;
    }
    Ok(())
}

pub async fn run(events: usize, seed: u64) -> Result<Measured, LoopError> {
    let dir = tempfile::tempdir().map_err(|source| LoopError::Io {
        path: std::env::temp_dir(),
        source,
    })?;
    let store = EmbeddedStore::open(&dir.path().join("store"))
        .map_err(|e| LoopError::Bench(format!("opening the bench store: {e}")))?;
    let memory = MemoryStore::new(store, Keyspace::default());
    let (items, ratings) = mrrec_datasets::synthetic::bench_world(seed, events);
    let users: std::collections::BTreeSet<String> =
        ratings.iter().map(|e| e.user_id.clone()).collect();

    eprintln!("distilling {events} ratings of {} users…", users.len());
    let indexes = Indexes::open(Some(&dir.path().join("index")), &memory).await?;
    let mut stage = Distill::new(memory.clone(), "bench.").with_indexes(indexes);
    feed(
        &mut stage,
        "bench.items",
        0,
        items.iter().cloned().map(Input::Item).collect(),
    )
    .await?;
    feed(
        &mut stage,
        "bench.events",
        0,
        ratings.into_iter().map(Input::Event).collect(),
    )
    .await?;
    drop(stage);

    // The other instance: one new rating for one user in CHANGED_ONE_IN.
    let changed: Vec<Input> = users
        .iter()
        .step_by(CHANGED_ONE_IN)
        .enumerate()
        .map(|(i, user)| {
            Input::Event(Event {
                event_id: format!("other-{i}"),
                user_id: user.clone(),
                kind: EventKind::Rate,
                item_id: Some(items[i % items.len()].item_id.clone()),
                value: Some(5.0),
                text: None,
                attrs: None,
                ts: 1_800_000_000_000 + i as i64,
            })
        })
        .collect();
    let changed_users = changed.len();
    let mut other = Distill::new(memory.clone(), "bench.");
    feed(&mut other, "bench.events", 1, changed).await?;
    drop(other);

    eprintln!("reopening the instance's indexes, then building a fresh pair…");
    let started = Instant::now();
    let caught_up = Indexes::open(Some(&dir.path().join("index")), &memory).await?;
    let catch_up_s = started.elapsed().as_secs_f64();
    let caught_up_report = caught_up.opened();
    drop(caught_up);
    let started = Instant::now();
    let rebuilt = Indexes::open(Some(&dir.path().join("fresh")), &memory).await?;
    let rebuild_s = started.elapsed().as_secs_f64();
    let rebuilt_report = rebuilt.opened();
    drop(rebuilt);
    let round = |s: f64| (s * 1000.0).round() / 1000.0;
    Ok(Measured {
        summary: format!(
            "caught up in {catch_up_s:.2} s ({:?}); rebuilt in {rebuild_s:.2} s ({:?})",
            caught_up_report.memory, rebuilt_report.memory
        ),
        figures: serde_json::json!({
            "events": events,
            "users": users.len(),
            "items": items.len(),
            "changed_users": changed_users,
            "store": "embedded",
            "catch_up_s": round(catch_up_s),
            "rebuild_s": round(rebuild_s),
            "catch_up_over_rebuild": round(catch_up_s / rebuild_s.max(1e-9)),
            "catch_up": format!("{:?}", caught_up_report),
            "rebuild": format!("{:?}", rebuilt_report),
        }),
    })
}
