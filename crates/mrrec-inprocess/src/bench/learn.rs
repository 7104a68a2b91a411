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

use super::Measured;
use crate::{ensure_policy, heldout_and_training, means, InProcess, LoopError};
use mrrec_config::Config;
use mrrec_datasets::UserTargets;
use mrrec_train::Decision;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub struct LearnBench<'a> {
    pub data_dir: &'a Path,
    pub rounds: usize,
    pub train_users: usize,
    pub heldout_users: usize,
}

pub async fn run(config: &Config, bench: LearnBench<'_>) -> Result<Measured, LoopError> {
    if config.agent.group_size < 2 {
        return Err(LoopError::Bench(
            "learning needs agent.group_size ≥ 2 (and agent.temperature > 0)".into(),
        ));
    }
    let dataset = mrrec_datasets::ml100k(bench.data_dir)?;
    let split = mrrec_datasets::split(&dataset);
    let genres: HashMap<String, Vec<String>> = dataset
        .items
        .iter()
        .map(|i| (i.item_id.clone(), i.categories.clone()))
        .collect();
    // Held-out users: every fifth (by position), the rest train.
    let (heldout, training) =
        heldout_and_training(&split.users, bench.heldout_users, bench.train_users);
    eprintln!(
        "{} users with validation targets: {} held out, {} training; group size {}",
        split.users.len(),
        heldout.len(),
        training.len(),
        config.agent.group_size
    );
    let mut version = ensure_policy(
        config,
        &dataset.items,
        &mrrec_policy::ModelSpec::default(),
        None,
    )
    .await?;
    let pipeline = InProcess::start(config, &dataset.items, &split.valid_history).await?;
    let query = |u: &UserTargets| {
        mrrec_datasets::query_for(
            &u.user_id,
            genres.get(&u.valid.item_id).map_or(&[][..], Vec::as_slice),
        )
    };

    let started = Instant::now();
    let mut rows = Vec::new();
    let mut published = 0usize;
    for round in 0..=bench.rounds {
        let tag = format!("learn-h{round}");
        let answered = pipeline.ask(&heldout, query, &tag, true).await?;
        let held = pipeline.rewards(&tag, answered.len()).await;
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
            let answered = pipeline.ask(&training, query, &tag, true).await?;
            let rewards = pipeline.rewards(&tag, answered.len()).await;
            let (train_served, train_all) = means(&rewards);
            row["train_reward"] = serde_json::json!(train_served);
            row["train_reward_all"] = serde_json::json!(train_all);
            eprintln!(
                "v{version:04}: training mean reward {train_served:.4} (served), {train_all:.4} (all {}); training…",
                rewards.len()
            );
            let report = pipeline
                .trainer
                .round(&rewards, &Default::default())
                .await?;
            row["round_metrics"] = serde_json::json!(report.metrics);
            match &report.decision {
                Decision::Published(v) => {
                    eprintln!("published v{:04}", v.version);
                    version = v.version;
                    published += 1;
                    let probe = training.first().map_or("1", |u| u.user_id.as_str());
                    pipeline.wait_for_version(probe, version).await?;
                }
                Decision::Rejected(reason) | Decision::NothingToLearn(reason) => {
                    eprintln!("round {round}: nothing published: {reason}");
                    row["round_decision"] = serde_json::json!(reason);
                }
            }
        }
        rows.push(row);
    }
    pipeline.stop().await?;
    let first = rows.first().and_then(|r| r["heldout_reward"].as_f64());
    let last = rows.last().and_then(|r| r["heldout_reward"].as_f64());
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
    Ok(Measured {
        summary: format!(
            "{published} of {} rounds published a version; held-out mean reward {} → {}",
            bench.rounds,
            first.map_or("—".into(), |r| format!("{r:.4}")),
            last.map_or("—".into(), |r| format!("{r:.4}"))
        ),
        figures: summary,
    })
}

/// The learn bench's rows as a markdown table (held-out and training mean
/// reward per version).
pub fn table(figures: &serde_json::Value) -> String {
    let mut table = String::from(
        "| version | held-out reward (served) | held-out reward (all) | training reward (served) |\n|---|---|---|---|\n",
    );
    for r in figures["rows"].as_array().into_iter().flatten() {
        table.push_str(&format!(
            "| v{:04} | {:.4} | {:.4} | {} |\n",
            r["version"].as_u64().unwrap_or(0),
            r["heldout_reward"].as_f64().unwrap_or(f64::NAN),
            r["heldout_reward_all"].as_f64().unwrap_or(f64::NAN),
            r["train_reward"]
                .as_f64()
                .map_or("—".to_owned(), |v| format!("{v:.4}"))
        ));
    }
    table
}
