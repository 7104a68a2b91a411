//! Offline probe of the fused ranking on MovieLens-100K: distills DESIGN §11's
//! validation history into an embedded store (no broker), then scores each
//! user's validation target under several profile strategies and fusion
//! weights (and candidate counts: PROBE_CANDIDATES=200,1000). A tuning aid, not a measurement of the pipeline (that is
//! `mrrec eval`): `cargo run --release --example rank_probe -- D [users]`.

use anyhow::{Context, Result};
use mrrec_distill::{Distill, Input};
use mrrec_index::ItemIndex;
use mrrec_memory::{Keyspace, MemoryStore};
use mrrec_messages::Topic;
use mrrec_rank::{FusionWeights, RankSettings, Ranker};
use mrrec_store::EmbeddedStore;
use mrrec_stream::{Batch, Decoded, PartitionRange, RecordMeta, Stage};
use std::collections::HashMap;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(args.get(1).context("usage: rank_probe DATA_DIR [users]")?);
    let limit: usize = args.get(2).map_or(Ok(usize::MAX), |s| s.parse())?;
    let dataset = mrrec_datasets::ml100k(&dir)?;
    let split = mrrec_datasets::split(&dataset);
    let tmp = tempfile::tempdir()?;
    let store = EmbeddedStore::open(tmp.path())?;
    let memory = MemoryStore::new(store, Keyspace::new("probe:"));
    let config = mrrec_config::Config::defaults();
    let prefix = config.topics.prefix.clone();
    let mut distill = Distill::new(memory.clone(), &prefix).with_cache(2000);
    let started = std::time::Instant::now();
    let mut offset = 0i64;
    let items_topic: Arc<str> = Topic::Items.name(&prefix).into();
    let events_topic: Arc<str> = Topic::Events.name(&prefix).into();
    let inputs: Vec<(Arc<str>, Input)> = dataset
        .items
        .iter()
        .map(|i| (items_topic.clone(), Input::Item(i.clone())))
        .chain(
            split
                .valid_history
                .iter()
                .map(|e| (events_topic.clone(), Input::Event(e.clone()))),
        )
        .collect();
    for chunk in inputs.chunks(2000) {
        let mut records = Vec::new();
        let mut ranges: HashMap<Arc<str>, (i64, i64)> = HashMap::new();
        for (topic, input) in chunk {
            offset += 1;
            let r = ranges.entry(topic.clone()).or_insert((offset, offset));
            r.1 = offset;
            records.push(Decoded {
                meta: RecordMeta {
                    topic: topic.clone(),
                    partition: 0,
                    offset,
                    key: None,
                    timestamp_ms: None,
                },
                message: input.clone(),
            });
        }
        let batch = Batch {
            records,
            ranges: ranges
                .into_iter()
                .map(|(topic, (first, last))| PartitionRange {
                    topic,
                    partition: 0,
                    first_offset: first,
                    last_offset: last,
                })
                .collect(),
        };
        distill
            .process(&batch)
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    eprintln!(
        "distilled {} inputs in {:.1}s",
        inputs.len(),
        started.elapsed().as_secs_f64()
    );
    let mut index = ItemIndex::open(None)?;
    index.upsert(&dataset.items)?;
    index.commit()?;
    let index = Arc::new(index);
    let genres: HashMap<String, Vec<String>> = dataset
        .items
        .iter()
        .map(|i| (i.item_id.clone(), i.categories.clone()))
        .collect();
    let users: Vec<_> = split.users.iter().take(limit).collect();
    let ids: Vec<String> = users.iter().map(|u| u.user_id.clone()).collect();
    let states = memory.load_users(&ids).await?;
    let base = RankSettings::from_config(&config);
    let grid: Vec<FusionWeights> = [
        (1.0, 1.0, 0.5),
        (1.5, 1.0, 0.5),
        (2.0, 1.0, 0.5),
        (1.0, 1.5, 0.5),
        (1.0, 1.0, 0.3),
        (1.0, 0.7, 0.3),
        (1.0, 1.0, 0.7),
    ]
    .into_iter()
    .map(|(bm25, collaborative, popularity)| FusionWeights {
        bm25,
        category: 0.0,
        collaborative,
        popularity,
        scaling: mrrec_rank::Scaling::Max,
    })
    .collect();
    type Strategy = fn(&str, &str, &mrrec_memory::UserState) -> String;
    let strategies: Vec<(&str, Strategy)> = vec![
        ("empty", |_, _, _| String::new()),
        ("genre", |_, g, _| g.to_owned()),
        ("query", |q, _, _| q.to_owned()),
        ("genre+top2", |_, g, s| {
            let mut p = g.to_owned();
            for (c, _) in s.ranked_categories().into_iter().take(2) {
                p.push(' ');
                p.push_str(c);
            }
            p
        }),
    ];
    let candidate_counts: Vec<usize> = std::env::var("PROBE_CANDIDATES")
        .unwrap_or_else(|_| base.candidates.to_string())
        .split(',')
        .map(|c| c.trim().parse())
        .collect::<Result<_, _>>()
        .context("PROBE_CANDIDATES: comma-separated counts")?;
    for (candidates, weights) in candidate_counts
        .iter()
        .flat_map(|c| grid.iter().map(move |w| (*c, w)))
    {
        let mut settings = base.clone();
        settings.weights = *weights;
        settings.candidates = candidates;
        let ranker = Ranker::new(memory.clone(), index.clone(), &settings);
        for (name, strategy) in &strategies {
            let (mut ndcg10, mut recall10, mut ndcg100) = (0.0, 0.0, 0.0);
            for u in &users {
                let state = &states[&u.user_id].state;
                let g = genres.get(&u.valid.item_id).map_or(&[][..], Vec::as_slice);
                let query = mrrec_datasets::query_for(&u.user_id, g);
                let n: usize = u.user_id.parse().unwrap_or(0);
                let genre = if g.is_empty() {
                    "good".to_owned()
                } else {
                    g[n % g.len()].to_lowercase()
                };
                let profile = strategy(&query, &genre, state);
                let rank = ranker
                    .target_rank(
                        mrrec_recommend::Cited::profile(&profile),
                        Some(state),
                        &u.valid.item_id,
                        100,
                    )
                    .await?;
                if let Some(r) = rank {
                    let gain = 1.0 / ((r as f64) + 1.0).log2();
                    ndcg100 += gain;
                    if r <= 10 {
                        ndcg10 += gain;
                        recall10 += 1.0;
                    }
                }
            }
            let n = users.len() as f64;
            println!(
                "c={candidates} w={:.1}/{:.1}/{:.1} {name:12} ndcg@10 {:.4} recall@10 {:.4} ndcg@100 {:.4}",
                weights.bm25,
                weights.collaborative,
                weights.popularity,
                ndcg10 / n,
                recall10 / n,
                ndcg100 / n
            );
        }
    }
    Ok(())
}
