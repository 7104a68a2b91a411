//! `mrrec demo [--data-dir D]`: the whole loop on embedded defaults, in one
//! process — the in-process broker, the embedded store and tantivy index, a
//! policy built (and warm-started) on first use. A catalog and history
//! (MovieLens-100K from `D`, else a seeded synthetic world with taste
//! structure) are streamed into memory; a few users' requests are answered
//! with titles, profile and trace; validation targets come back as
//! outcomes and become rewards; one training round runs and the recommend
//! stage switches to the new version; a summary closes.

use anyhow::Result;
use mrrec_config::Config;
use mrrec_datasets::{Dataset, UserTargets};
use mrrec_inprocess::{ensure_policy, heldout_and_training, means, InProcess, WarmStart};
use mrrec_messages::Response;
use mrrec_train::Decision;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Teacher trajectories × epochs of the warm start a new demo policy gets.
const WARM_START: (usize, usize) = (1000, 3);
/// Users whose recommendations are printed.
const SHOWN: usize = 3;
/// Held-out users (rewards measured before and after the round, never trained on).
const HELD_OUT: usize = 40;
/// Users whose rewards the round learns from.
const TRAINING: usize = 120;

pub async fn run(config: &Config, data_dir: Option<&Path>, dir: &Path, seed: u64) -> Result<()> {
    let started = Instant::now();
    let config = mrrec_inprocess::demo_config(config, dir)?;
    let (dataset, name) = match data_dir {
        Some(d) => (mrrec_datasets::ml100k(d)?, "MovieLens-100K".to_owned()),
        None => (
            mrrec_datasets::synthetic::world(seed, Default::default()),
            format!("synthetic world (seed {seed})"),
        ),
    };
    let split = mrrec_datasets::split(&dataset);
    println!(
        "mrrec demo · {name}: {} items, {} events, {} users with a validation target",
        dataset.items.len(),
        dataset.events.len(),
        split.users.len()
    );
    println!(
        "state in {} (broker: in-process; store: embedded; LLM: mistral.rs in-process)",
        dir.display()
    );
    let (trajectories, epochs) = WARM_START;
    let warm = WarmStart::Synthetic {
        trajectories,
        epochs,
    };
    ensure_policy(
        &config,
        &dataset.items,
        &mrrec_policy::ModelSpec::default(),
        Some(warm),
    )
    .await?;
    let pipeline = InProcess::start(&config, &dataset.items, &split.valid_history).await?;
    let events_per_s = pipeline.distilled as f64 / pipeline.distill_seconds.max(1e-9);
    println!(
        "\n1. streamed {} catalog items and history events into memory in {:.1} s ({:.0} records/s)",
        pipeline.distilled, pipeline.distill_seconds, events_per_s
    );

    let items: HashMap<&str, &mrrec_messages::Item> = dataset
        .items
        .iter()
        .map(|i| (i.item_id.as_str(), i))
        .collect();
    let query = |u: &UserTargets| {
        let genres = items
            .get(u.valid.item_id.as_str())
            .map_or(&[][..], |i| i.categories.as_slice());
        mrrec_datasets::query_for(&u.user_id, genres)
    };
    let (heldout, training) = heldout_and_training(&split.users, HELD_OUT, TRAINING);
    let shown: Vec<&UserTargets> = heldout.iter().take(SHOWN).copied().collect();
    let history = History::new(&dataset, &split.valid_history);
    let mut latencies = Vec::new();

    println!("\n2. recommendations (policy as served now):");
    let answers = pipeline.ask(&shown, query, "demo-show0", false).await?;
    latencies.extend(answers.iter().map(|r| r.latency_ms));
    for (u, response) in shown.iter().zip(&answers) {
        print_answer(&history, &items, u, &query(u), response);
    }

    println!(
        "\n3. outcomes: {} held-out and {} training users' validation targets come back as outcomes;",
        heldout.len(),
        training.len()
    );
    println!("   run --stage reward joins them with the logged trajectories into rewards");
    let held = pipeline.ask(&heldout, query, "demo-h0", true).await?;
    latencies.extend(held.iter().map(|r| r.latency_ms));
    let before = pipeline.rewards("demo-h0", held.len()).await;
    let trained = pipeline.ask(&training, query, "demo-t0", true).await?;
    latencies.extend(trained.iter().map(|r| r.latency_ms));
    let rewards = pipeline.rewards("demo-t0", trained.len()).await;
    let (before_served, before_all) = means(&before);
    println!(
        "   held-out mean reward {before_served:.3} (served) / {before_all:.3} (all {} trajectories); {} training rewards",
        before.len(),
        rewards.len()
    );

    println!(
        "\n4. training round (GRPO over {} trajectories)…",
        rewards.len()
    );
    let round_started = Instant::now();
    let report = pipeline
        .trainer
        .round(&rewards, &Default::default())
        .await?;
    let from = report.parent;
    let switched_to = match &report.decision {
        Decision::Published(v) => {
            pipeline
                .wait_for_version(&shown[0].user_id, v.version)
                .await?;
            println!(
                "   policy switch: v{from:04} → v{:04} (trained, checked and hot-swapped into the running recommend stage in {:.0} s)",
                v.version,
                round_started.elapsed().as_secs_f64()
            );
            Some(v.version)
        }
        Decision::Rejected(reason) | Decision::NothingToLearn(reason) => {
            println!("   no new version: {reason}");
            None
        }
    };
    for (key, value) in &report.metrics {
        if [
            "trajectories",
            "clip_fraction",
            "heldout_reward_before",
            "heldout_reward_after",
        ]
        .contains(&key.as_str())
        {
            println!("   {key}: {value:.3}");
        }
    }

    let held = pipeline.ask(&heldout, query, "demo-h1", true).await?;
    latencies.extend(held.iter().map(|r| r.latency_ms));
    let after = pipeline.rewards("demo-h1", held.len()).await;
    let (after_served, after_all) = means(&after);
    if let Some(version) = switched_to {
        println!("\n5. the same users under v{version:04}:");
        let answers = pipeline.ask(&shown, query, "demo-show1", false).await?;
        for (u, response) in shown.iter().zip(&answers) {
            print_answer(&history, &items, u, &query(u), response);
        }
    }
    pipeline.stop().await?;

    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!("\nsummary");
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| records distilled | {} ({events_per_s:.0}/s) |",
        pipeline_total(&dataset, &split)
    );
    println!(
        "| requests answered | {} (p50 {:.0} ms, p99 {:.0} ms in the stage) |",
        latencies.len(),
        pct(0.5),
        pct(0.99)
    );
    println!(
        "| held-out reward before (v{from:04}) | {before_served:.3} served, {before_all:.3} all |"
    );
    println!(
        "| held-out reward after ({}) | {after_served:.3} served, {after_all:.3} all |",
        switched_to.map_or(format!("v{from:04}, unchanged"), |v| format!("v{v:04}"))
    );
    println!(
        "| policy | {} |",
        switched_to.map_or("not switched".to_owned(), |v| format!(
            "v{from:04} → v{v:04}"
        ))
    );
    println!("| wall time | {:.0} s |", started.elapsed().as_secs_f64());
    Ok(())
}

fn pipeline_total(dataset: &Dataset, split: &mrrec_datasets::Split) -> usize {
    dataset.items.len() + split.valid_history.len()
}

/// What each user liked before their validation target.
struct History {
    liked: HashMap<String, Vec<String>>,
}

impl History {
    fn new(dataset: &Dataset, events: &[mrrec_messages::Event]) -> Self {
        let titles: HashMap<&str, &str> = dataset
            .items
            .iter()
            .map(|i| (i.item_id.as_str(), i.title.as_str()))
            .collect();
        let mut liked: HashMap<String, Vec<String>> = HashMap::new();
        for e in events {
            if let (Some(item), Some(v)) = (&e.item_id, e.value) {
                if v >= 4.0 {
                    if let Some(title) = titles.get(item.as_str()) {
                        liked
                            .entry(e.user_id.clone())
                            .or_default()
                            .push((*title).to_owned());
                    }
                }
            }
        }
        Self { liked }
    }
}

fn print_answer(
    history: &History,
    items: &HashMap<&str, &mrrec_messages::Item>,
    user: &UserTargets,
    query: &str,
    response: &Response,
) {
    let liked = history
        .liked
        .get(&user.user_id)
        .map_or(&[][..], Vec::as_slice);
    let recent: Vec<&str> = liked.iter().rev().take(4).map(String::as_str).collect();
    println!(
        "\n   user {} liked {} items, lately: {}",
        user.user_id,
        liked.len(),
        recent.join("; ")
    );
    println!(
        "   request: \"{query}\"  (policy v{:04})",
        response.policy_version
    );
    for step in &response.steps {
        let kind = step.kind.as_str();
        let text: String = step.text.chars().take(90).collect();
        println!("     {kind:>8}: {text}");
    }
    println!("   profile: {}", response.profile);
    for (rank, scored) in response.items.iter().take(5).enumerate() {
        let (title, categories) = items
            .get(scored.item_id.as_str())
            .map_or((scored.item_id.as_str(), String::new()), |i| {
                (i.title.as_str(), i.categories.join(", "))
            });
        println!("     {}. {title}  [{categories}]", rank + 1);
    }
}
