//! `mrrec eval`: DESIGN §11's quality protocol end to end. The baselines are
//! computed from the data (mrrec-eval); the pipeline's rows go through the
//! topics. RL phase: the history before each user's validation target is
//! distilled, training users' validation requests are answered (G sampled
//! trajectories), their targets come back as outcomes, the reward stage
//! scores them and each round's trainer may publish a version. Test phase:
//! the history before each test target is distilled into a fresh store, and
//! every version — untrained first — answers every test request greedily
//! (G = 1, temperature 0) with its top 100, pinned by `llm.model_dir`. RL
//! only ever sees validation targets.

use super::inprocess::{ensure_policy, means, InProcess};
use crate::cli::EvalArgs;
use anyhow::{bail, Context, Result};
use mrrec_config::Config;
use mrrec_datasets::{Target, UserTargets};
use mrrec_eval::{Baselines, Case, Metrics, Rating, Row};
use mrrec_messages::{Event, EventKind, Item};
use mrrec_train::Decision;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

/// One split's requests and the history they are answered on.
struct SplitData {
    /// One per user: `valid` is this split's target.
    users: Vec<UserTargets>,
    queries: HashMap<String, String>,
    history: Vec<Event>,
}

struct EvalData {
    name: String,
    items: Vec<Item>,
    ratings: Vec<Rating>,
    valid: SplitData,
    test: SplitData,
}

/// MovieLens-100K under DESIGN §11: per user the events before the target
/// (in the dataset's order), the target, and the query for its genres.
fn ml100k(dir: &std::path::Path) -> Result<EvalData> {
    let dataset = mrrec_datasets::ml100k(dir)?;
    let split = mrrec_datasets::split(&dataset);
    let genres: HashMap<&str, &[String]> = dataset
        .items
        .iter()
        .map(|i| (i.item_id.as_str(), i.categories.as_slice()))
        .collect();
    let query = |user: &str, t: &Target| {
        mrrec_datasets::query_for(user, genres.get(t.item_id.as_str()).copied().unwrap_or(&[]))
    };
    // The test history: every event before the user's test target.
    let tests: HashMap<&str, &Target> = split
        .users
        .iter()
        .map(|u| (u.user_id.as_str(), &u.test))
        .collect();
    let mut reached: std::collections::HashSet<&str> = Default::default();
    let mut test_history = Vec::new();
    for e in &dataset.events {
        if reached.contains(e.user_id.as_str()) {
            continue;
        }
        if let Some(t) = tests.get(e.user_id.as_str()) {
            if e.kind == EventKind::Rate
                && e.item_id.as_deref() == Some(t.item_id.as_str())
                && e.ts == t.ts
            {
                reached.insert(e.user_id.as_str());
                continue;
            }
        }
        test_history.push(e.clone());
    }
    let per_split = |pick: fn(&UserTargets) -> &Target, history: Vec<Event>| SplitData {
        users: split
            .users
            .iter()
            .map(|u| UserTargets {
                user_id: u.user_id.clone(),
                valid: pick(u).clone(),
                test: pick(u).clone(),
            })
            .collect(),
        queries: split
            .users
            .iter()
            .map(|u| (u.user_id.clone(), query(&u.user_id, pick(u))))
            .collect(),
        history,
    };
    Ok(EvalData {
        name: "ml-100k".into(),
        ratings: Rating::from_events(&dataset.events),
        valid: per_split(|u| &u.valid, split.valid_history.clone()),
        test: per_split(|u| &u.test, test_history),
        items: dataset.items,
    })
}

/// DESIGN §13's JSON lines: a split's history is, per user with a request
/// in it, the events before the request's `ts` (all events of other users).
fn jsonl(
    items: &std::path::Path,
    events: &std::path::Path,
    requests: &std::path::Path,
) -> Result<EvalData> {
    let mut dataset = mrrec_datasets::jsonl(items, events)?;
    dataset.events.sort_by_key(|e| e.ts);
    let text = std::fs::read_to_string(requests)
        .with_context(|| format!("reading {}", requests.display()))?;
    let mut valid = Vec::new();
    let mut test = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{}", requests.display(), n + 1);
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not JSON", at()))?;
        let request: mrrec_messages::Request = serde_json::from_value(value.clone())
            .with_context(|| format!("{}: not a request", at()))?;
        let target = value["target_item_id"]
            .as_str()
            .with_context(|| format!("{}: no target_item_id", at()))?
            .to_owned();
        let entry = (request, target);
        match value["split"].as_str() {
            Some("valid") => valid.push(entry),
            Some("test") => test.push(entry),
            other => bail!(
                "{}: split must be \"valid\" or \"test\", not {other:?}",
                at()
            ),
        }
    }
    if test.is_empty() {
        bail!("{}: no test requests", requests.display());
    }
    let split = |requests: Vec<(mrrec_messages::Request, String)>| {
        let cutoff: HashMap<String, i64> = requests
            .iter()
            .map(|(r, _)| (r.user_id.clone(), r.ts))
            .collect();
        SplitData {
            history: dataset
                .events
                .iter()
                .filter(|e| cutoff.get(&e.user_id).is_none_or(|ts| e.ts < *ts))
                .cloned()
                .collect(),
            queries: requests
                .iter()
                .map(|(r, _)| (r.user_id.clone(), r.query.clone().unwrap_or_default()))
                .collect(),
            users: requests
                .iter()
                .map(|(r, target)| {
                    let t = Target {
                        item_id: target.clone(),
                        rating: 5.0,
                        ts: r.ts,
                    };
                    UserTargets {
                        user_id: r.user_id.clone(),
                        valid: t.clone(),
                        test: t,
                    }
                })
                .collect(),
        }
    };
    Ok(EvalData {
        name: requests.display().to_string(),
        ratings: Rating::from_events(&dataset.events),
        valid: split(valid),
        test: split(test),
        items: dataset.items,
    })
}

/// Baseline cases for the test split: each user's rated items before the target.
fn test_cases(data: &EvalData) -> Vec<Case> {
    let mut histories: HashMap<&str, Vec<String>> = HashMap::new();
    for e in &data.test.history {
        if let (EventKind::Rate, Some(item)) = (e.kind, &e.item_id) {
            histories
                .entry(e.user_id.as_str())
                .or_default()
                .push(item.clone());
        }
    }
    data.test
        .users
        .iter()
        .map(|u| Case {
            user: u.user_id.clone(),
            query: data
                .test
                .queries
                .get(&u.user_id)
                .cloned()
                .unwrap_or_default(),
            history: histories.remove(u.user_id.as_str()).unwrap_or_default(),
            target: u.valid.item_id.clone(),
            target_ts: u.valid.ts,
        })
        .collect()
}

fn eval_config(config: &Config, dir: &std::path::Path) -> Result<Config> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    let mut config = config.clone();
    config.store.path = dir.join("valid-store");
    config.index.path = dir.join("valid-index");
    config.policy.dir = dir.join("policy");
    if config.agent.group_size < 2 {
        config.agent.group_size = 4;
    }
    if config.agent.temperature <= 0.0 {
        config.agent.temperature = 1.0;
    }
    config.recommend.timeout_ms = config.recommend.timeout_ms.max(30_000);
    Ok(config)
}

pub async fn run(config: &Config, args: &EvalArgs) -> Result<()> {
    // Fail before the long run, not after it, on a place nothing can be written.
    for path in [&args.out, &args.plot].into_iter().flatten() {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !parent.is_dir() {
            bail!(
                "cannot write {}: directory {} does not exist",
                path.display(),
                parent.display()
            );
        }
    }
    let started = Instant::now();
    let data = match (&args.data_dir, &args.items, &args.events, &args.requests) {
        (Some(dir), None, None, None) => ml100k(dir)?,
        (None, Some(items), Some(events), Some(requests)) => jsonl(items, events, requests)?,
        _ => bail!(
            "give either --data-dir D (MovieLens-100K) or all of --items F --events F --requests F"
        ),
    };
    eprintln!(
        "{}: {} items, {} ratings, {} validation and {} test requests",
        data.name,
        data.items.len(),
        data.ratings.len(),
        data.valid.users.len(),
        data.test.users.len()
    );
    let cases = test_cases(&data);
    let baselines = Baselines::new(&data.items, &data.ratings)?;
    let mut rows: Vec<Row> = baselines.evaluate(&cases)?;
    eprintln!("baselines done ({:.0} s)", started.elapsed().as_secs_f64());

    // RL on validation targets.
    let config = eval_config(config, &args.dir)?;
    let sft = (args.sft > 0).then_some((args.sft, args.sft_epochs.max(1)));
    let first = ensure_policy(&config, &data.items, sft).await?;
    let mut versions = vec![first];
    let mut curve: BTreeMap<u32, VersionFigures> = BTreeMap::new();
    if args.rounds > 0 && !data.valid.users.is_empty() {
        let pipeline = InProcess::start(&config, &data.items, &data.valid.history).await?;
        let training: Vec<&UserTargets> = data.valid.users.iter().take(args.train_users).collect();
        let query = |u: &UserTargets| {
            data.valid
                .queries
                .get(&u.user_id)
                .cloned()
                .unwrap_or_default()
        };
        let mut version = first;
        for round in 0..=args.rounds {
            let tag = format!("eval-r{round}");
            let answered = pipeline.ask(&training, query, &tag, true).await?;
            let rewards = pipeline.rewards(&tag, answered.len()).await;
            let (served, all) = means(&rewards);
            eprintln!(
                "v{version:04}: validation reward {served:.4} (served), {all:.4} (all {})",
                rewards.len()
            );
            let point = curve_point(&mut curve, version);
            point.validation_reward = Some(served);
            point.validation_reward_all = Some(all);
            // The last pass only measures the last version.
            if round == args.rounds {
                break;
            }
            let report = pipeline.trainer.round(&rewards).await?;
            match report.decision {
                Decision::Published(v) => {
                    eprintln!("round {round}: published v{:04}", v.version);
                    version = v.version;
                    versions.push(version);
                    pipeline
                        .wait_for_version(&training[0].user_id, version)
                        .await?;
                }
                Decision::Rejected(reason) | Decision::NothingToLearn(reason) => {
                    eprintln!("round {round}: nothing published: {reason}");
                    // The version is unchanged: measuring it again adds nothing.
                    if round + 1 == args.rounds {
                        break;
                    }
                }
            }
        }
        pipeline.stop().await?;
    }

    // Every version on the test requests, greedily, against the test history.
    let registry = mrrec_policy::PolicyRegistry::new(&config.policy.dir);
    let test_users: Vec<&UserTargets> = data.test.users.iter().collect();
    let targets: HashMap<&str, &str> = data
        .test
        .users
        .iter()
        .map(|u| (u.user_id.as_str(), u.valid.item_id.as_str()))
        .collect();
    for (i, version) in versions.iter().enumerate() {
        let mut pinned = config.clone();
        pinned.store.path = args.dir.join("test-store");
        pinned.index.path = args.dir.join("test-index");
        pinned.llm.model_dir = registry.path(*version).display().to_string();
        pinned.agent.group_size = 1;
        pinned.agent.temperature = 0.0;
        let (items, history): (&[Item], &[Event]) = if i == 0 {
            (&data.items, &data.test.history)
        } else {
            (&[], &[])
        };
        let pipeline = InProcess::start(&pinned, items, history).await?;
        let query = |u: &UserTargets| {
            data.test
                .queries
                .get(&u.user_id)
                .cloned()
                .unwrap_or_default()
        };
        let tag = format!("eval-test-v{version}");
        let answers = pipeline.ask_k(&test_users, query, &tag, false, 100).await?;
        pipeline.stop().await?;
        let mut metrics = Metrics::default();
        for response in &answers {
            let target = targets
                .get(response.user_id.as_str())
                .copied()
                .unwrap_or_default();
            metrics.add(
                response
                    .items
                    .iter()
                    .position(|s| s.item_id == target)
                    .map(|p| p + 1),
            );
        }
        // Unanswered requests count as misses.
        for _ in answers.len()..test_users.len() {
            metrics.add(None);
        }
        let name = if i == 0 {
            "pipeline_untrained".to_owned()
        } else {
            format!("pipeline_v{version}")
        };
        eprintln!(
            "{name}: {} of {} test requests answered",
            answers.len(),
            test_users.len()
        );
        rows.push(metrics.row(&name));
        curve_point(&mut curve, *version).test_ndcg_at_10 = rows.last().map(|r| r.ndcg_at_10);
    }

    println!("| row | Recall@10 | NDCG@10 | Recall@100 | NDCG@100 |");
    println!("|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} |",
            r.name, r.recall_at_10, r.ndcg_at_10, r.recall_at_100, r.ndcg_at_100
        );
    }
    let report = serde_json::json!({
        "dataset": data.name,
        "users": data.test.users.len(),
        "rows": rows,
        "curve": curve.values().map(|p| serde_json::json!({
            "version": p.version,
            "validation_reward": p.validation_reward,
            "validation_reward_all": p.validation_reward_all,
            "test_ndcg@10": p.test_ndcg_at_10,
        })).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64(),
    });
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(plot) = &args.plot {
        let points: Vec<mrrec_eval::CurvePoint> = curve
            .values()
            .map(|p| mrrec_eval::CurvePoint {
                version: p.version,
                validation_reward: p.validation_reward,
                test_ndcg_at_10: p.test_ndcg_at_10,
            })
            .collect();
        mrrec_eval::plot::write_png(&points, &format!("mrrec eval: {}", data.name), plot)?;
        eprintln!("learning curve written to {}", plot.display());
    }
    eprintln!("eval done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// One version's figures on the learning curve.
#[derive(Debug, Default)]
struct VersionFigures {
    version: u32,
    validation_reward: Option<f64>,
    validation_reward_all: Option<f64>,
    test_ndcg_at_10: Option<f64>,
}

fn curve_point(curve: &mut BTreeMap<u32, VersionFigures>, version: u32) -> &mut VersionFigures {
    curve.entry(version).or_insert_with(|| VersionFigures {
        version,
        ..Default::default()
    })
}
