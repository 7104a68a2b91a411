//! `mrrec eval`: DESIGN §11's and §13's quality protocol end to end. The
//! baselines are computed from the data (mrrec-eval); every pipeline row
//! goes through the topics, replayed strictly in time (§13): a fresh store
//! and broker per run, distill running throughout, each request asked once
//! every event before it is stored and before any event after it is sent.
//!
//! Warm start: the `rule` policy answers the validation requests of the
//! first `--sft` users in a replay like an RL round's, and a fresh policy
//! imitates those trajectories: real prompts, real memory, the requests it
//! will serve. (No target is read: the rule's answer does not depend on
//! it.) Without validation requests it imitates synthetic ones.
//!
//! RL phase, per round: the timeline is replayed and the training users'
//! validation requests are answered (G sampled trajectories); each target
//! comes back as the request's outcome (in place of its event), the reward
//! stage scores the trajectories and the trainer may publish a version. No
//! test target reaches memory in this phase. Test phase: the timeline is
//! replayed once, and every row answers each test request greedily (G = 1)
//! with its own `k` and `exclude_seen`: the `rule` policy as the loop's
//! recommend stage, and beside it a recommend tier per version (untrained
//! first) and for the last version without memory (`pipeline_no_memory`),
//! each on topics of its own over the same memory. No outcome is sent in
//! this phase, so memory at a request is the same for every row, and the
//! events are fed and distilled once instead of once per row. Each
//! `pipeline_*` row is compared with `rule` on the same users (paired
//! bootstrap, `vs_rule`).

use super::inprocess::{ensure_policy, means, InProcess, WarmStart};
use crate::cli::{EvalArgs, Targets};
use anyhow::{bail, Context, Result};
use mrrec_config::{Config, LlmBackend};
use mrrec_eval::{
    bootstrap, ndcg_at_10, Baselines, EvalData, EvalRequest, Interval, Metrics, Row, Split, VsRule,
};
use mrrec_messages::{Event, EventKind, Outcome, Response, StepKind, Trajectory};
use mrrec_train::Decision;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The configuration every run of the replay starts from: eval's own
/// policy directory, sampling for RL, and a broker path fast enough for a
/// replay that waits for distill between requests.
fn eval_config(config: &Config, dir: &Path) -> Result<Config> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut config = config.clone();
    config.policy.dir = dir.join("policy");
    if config.agent.group_size < 2 {
        config.agent.group_size = 4;
    }
    if config.agent.temperature <= 0.0 {
        config.agent.temperature = 1.0;
    }
    config.recommend.timeout_ms = config.recommend.timeout_ms.max(30_000);
    // Each phase of the replay waits for distill: fetches that return within
    // a few ms and batches that close at once (a user's own values win).
    config
        .kafka
        .properties
        .entry("fetch.wait.max.ms".into())
        .or_insert_with(|| "5".into());
    config.distill.batch_max_ms = config.distill.batch_max_ms.min(10);
    // Every request reads the catalog facts (popularity, categories) as
    // they are when it is asked, not a snapshot up to 10 s old: in a fast
    // replay that snapshot would miss events stored before the request.
    config.recommend.refresh_ms = 1;
    Ok(config)
}

/// `base` with a fresh store and index of its own under `dir/name`.
fn run_config(base: &Config, dir: &Path, name: &str) -> Result<(Config, PathBuf)> {
    let root = dir.join(name);
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("clearing {}", root.display()))?;
    }
    let mut config = base.clone();
    config.store.path = root.join("store");
    config.index.path = root.join("index");
    Ok((config, root))
}

/// What the replay leaves out of the events it feeds, and what it sends
/// as outcomes instead.
struct Replay<'a> {
    data: &'a EvalData,
    /// Requests asked (ids of the data set), in replay order.
    asked: Vec<&'a EvalRequest>,
    /// Per recommend stage asked (the loop's own, then its tiers), the
    /// prefix of the ids its requests are sent under (`{tag}-{n}`).
    tags: Vec<String>,
    /// Validation: targets come back as outcomes (of the first stage's
    /// requests; a replay with outcomes asks one stage).
    outcomes: bool,
}

impl<'a> Replay<'a> {
    fn new(
        data: &'a EvalData,
        split: Split,
        keep: impl Fn(&EvalRequest) -> bool,
        tags: Vec<String>,
        outcomes: bool,
    ) -> Self {
        Self {
            data,
            asked: data.of(split).filter(|r| keep(r)).collect(),
            tags,
            outcomes,
        }
    }

    /// Index of the event that is `r`'s target (the user's first positive
    /// event — click, purchase, rating ≥ 4 — about the target at or after
    /// the request), if the data has one.
    fn target_event(&self, r: &EvalRequest) -> Option<usize> {
        self.data.events[r.at.min(self.data.events.len())..]
            .iter()
            .position(|e| {
                e.user_id == r.request.user_id
                    && e.item_id.as_deref() == Some(r.target.as_str())
                    && e.is_positive()
            })
            .map(|i| r.at + i)
    }

    /// Events never fed: with outcomes, each asked request's target event
    /// (its outcome stands in for it) and every test target (RL never sees
    /// one).
    fn withheld(&self) -> HashSet<usize> {
        if !self.outcomes {
            return HashSet::new();
        }
        self.asked
            .iter()
            .copied()
            .chain(self.data.of(Split::Test))
            .filter_map(|r| self.target_event(r))
            .collect()
    }

    /// The outcome that reports `r`'s target: its event as it happened,
    /// observed now.
    fn outcome(&self, r: &EvalRequest, request_id: &str) -> Outcome {
        let event = match self.target_event(r) {
            Some(i) => self.data.events[i].clone(),
            None => Event {
                event_id: format!("{request_id}-target"),
                user_id: r.request.user_id.clone(),
                kind: EventKind::Purchase,
                item_id: Some(r.target.clone()),
                value: None,
                text: None,
                attrs: None,
                ts: r.request.ts,
            },
        };
        Outcome {
            request_id: request_id.to_owned(),
            event: Event {
                // The reward stage joins by processing time: the outcome
                // arrives now, right after its response.
                ts: mrrec_stream::now_ms(),
                ..event
            },
        }
    }

    /// Feeds the timeline into `pipeline` and asks every request in turn,
    /// of every stage in `tags` (see [`InProcess::ask_tiers`]); returns
    /// each stage's responses by the data set's request id. Requests go out
    /// as `{tag}-{n}` (n: their place in the replay), so any id of the data
    /// set fits the id limit. An outcome is sent where its target event
    /// stands in time (right after the response when the target is the next
    /// event, as in DESIGN §11 and §14).
    async fn run(&self, pipeline: &mut InProcess) -> Result<Vec<HashMap<String, Response>>> {
        if self.outcomes && self.tags.len() != 1 {
            bail!("a replay with outcomes asks one recommend stage");
        }
        let mut timeline = Timeline {
            withheld: self.withheld(),
            fed: 0,
            pending: BTreeMap::new(),
        };
        let bar = super::load::progress_bar(self.asked.len() as u64, &self.tags.join(" + "));
        let mut answers: Vec<HashMap<String, Response>> = self
            .tags
            .iter()
            .map(|_| HashMap::with_capacity(self.asked.len()))
            .collect();
        let mut i = 0;
        while i < self.asked.len() {
            // Requests with no event between them are asked together.
            let at = self.asked[i].at;
            let group: Vec<&EvalRequest> = self.asked[i..]
                .iter()
                .copied()
                .take_while(|r| r.at == at)
                .collect();
            timeline.feed_until(self.data, pipeline, at).await?;
            let requests: Vec<Vec<mrrec_messages::Request>> = self
                .tags
                .iter()
                .map(|tag| {
                    group
                        .iter()
                        .enumerate()
                        .map(|(j, r)| mrrec_messages::Request {
                            request_id: format!("{tag}-{}", i + j),
                            ..r.request.clone()
                        })
                        .collect()
                })
                .collect();
            i += group.len();
            let responses = pipeline.ask_tiers(&requests).await?;
            for (stage, responses) in answers.iter_mut().zip(responses) {
                for (r, response) in group.iter().zip(responses) {
                    stage.insert(r.request.request_id.clone(), response);
                }
            }
            bar.inc(group.len() as u64);
            let mut now = Vec::new();
            for (r, sent) in group.iter().zip(&requests[0]).filter(|_| self.outcomes) {
                // Sent even when the answer failed: the target still
                // happened, and memory must hold it from then on.
                let outcome = self.outcome(r, &sent.request_id);
                match self.target_event(r) {
                    Some(index) => timeline.pending.entry(index).or_default().push(outcome),
                    None => now.push(outcome),
                }
            }
            if !now.is_empty() {
                pipeline.send_outcomes(&now).await?;
            }
        }
        // Nothing more is asked: the outcomes still waiting go out now.
        let rest: Vec<Outcome> = std::mem::take(&mut timeline.pending)
            .into_values()
            .flatten()
            .collect();
        if !rest.is_empty() {
            pipeline.send_outcomes(&rest).await?;
        }
        bar.finish_and_clear();
        Ok(answers)
    }
}

/// How far a replay has fed the events, and the outcomes waiting for
/// their target event's place in time.
struct Timeline {
    /// Events never fed (see [`Replay::withheld`]).
    withheld: HashSet<usize>,
    /// Events before this index have been fed (or stood in for).
    fed: usize,
    /// Outcomes by the index of the event they stand in for.
    pending: BTreeMap<usize, Vec<Outcome>>,
}

impl Timeline {
    /// Feeds every event before `until`, sending each waiting outcome in
    /// its target event's place.
    async fn feed_until(
        &mut self,
        data: &EvalData,
        pipeline: &mut InProcess,
        until: usize,
    ) -> Result<()> {
        let until = until.min(data.events.len());
        loop {
            let next = self.pending.keys().next().copied().filter(|k| *k < until);
            let stop = next.unwrap_or(until).max(self.fed);
            let events: Vec<Event> = (self.fed..stop)
                .filter(|i| !self.withheld.contains(i))
                .map(|i| data.events[i].clone())
                .collect();
            pipeline.feed(&events).await?;
            self.fed = stop;
            let Some(index) = next else {
                return Ok(());
            };
            let outcomes = self.pending.remove(&index).unwrap_or_default();
            pipeline.send_outcomes(&outcomes).await?;
            self.fed = self.fed.max(index + 1);
        }
    }
}

/// One test run's answers and the row it becomes.
struct Scored {
    name: String,
    version: Option<u32>,
    /// The requests it answered: the test requests, or the validation
    /// requests with `--targets valid`.
    split: Split,
    /// Rank of each scored request's target (data set id → rank).
    ranks: HashMap<String, Option<usize>>,
    answers: HashMap<String, Response>,
}

/// Ranks of the targets in `answers` (an error or a missing answer is a miss).
fn score(
    data: &EvalData,
    name: &str,
    version: Option<u32>,
    split: Split,
    answers: HashMap<String, Response>,
) -> Scored {
    let ranks = data
        .of(split)
        .map(|r| {
            let rank = answers.get(&r.request.request_id).and_then(|response| {
                response
                    .items
                    .iter()
                    .position(|s| s.item_id == r.target)
                    .map(|p| p + 1)
            });
            (r.request.request_id.clone(), rank)
        })
        .collect();
    Scored {
        name: name.to_owned(),
        version,
        split,
        ranks,
        answers,
    }
}

/// Mean NDCG@10 per user of a scored run (users with several scored
/// requests count once), in `users` order.
fn per_user_ndcg(data: &EvalData, run: &Scored, users: &[String]) -> Vec<f64> {
    let mut sums: HashMap<&str, (f64, usize)> = HashMap::new();
    for r in data.of(run.split) {
        let rank = run.ranks.get(&r.request.request_id).copied().flatten();
        let entry = sums.entry(r.request.user_id.as_str()).or_default();
        entry.0 += ndcg_at_10(rank);
        entry.1 += 1;
    }
    users
        .iter()
        .map(|u| sums.get(u.as_str()).map_or(0.0, |(s, n)| s / *n as f64))
        .collect()
}

/// What a policy did on the test requests, next to the rule.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct Behaviour {
    /// Answers whose profile differs from the rule's for the same request.
    share_differs_from_rule: Option<f64>,
    /// Of the answers with the rule's profile and citations, the share
    /// whose items still differ from the rule's (a check: the same answer
    /// over the same memory ranks alike, so this should be 0).
    share_same_answer_other_items: Option<f64>,
    /// Answers that cite at least one memory entry.
    share_cites_memory: f64,
    /// Retrieve steps per answer.
    mean_retrieve_steps: f64,
    /// Answers the rule gave because the policy could not (fallbacks).
    share_fallback: f64,
}

fn behaviour(run: &Scored, rule: Option<&Scored>) -> Behaviour {
    let n = run.answers.len().max(1) as f64;
    let count =
        |f: &dyn Fn(&Response) -> bool| run.answers.values().filter(|r| f(r)).count() as f64 / n;
    let differs = rule.map(|rule| {
        run.answers
            .iter()
            .filter(|(id, r)| rule.answers.get(*id).is_none_or(|x| x.profile != r.profile))
            .count() as f64
            / n
    });
    let same_answer_other_items = rule.map(|rule| {
        let same: Vec<(&Response, &Response)> = run
            .answers
            .iter()
            .filter_map(|(id, r)| Some((r, rule.answers.get(id)?)))
            .filter(|(r, x)| x.profile == r.profile && x.memory_ids == r.memory_ids)
            .collect();
        let other = same
            .iter()
            .filter(|(r, x)| {
                r.items.len() != x.items.len()
                    || r.items
                        .iter()
                        .zip(&x.items)
                        .any(|(a, b)| a.item_id != b.item_id)
            })
            .count();
        other as f64 / same.len().max(1) as f64
    });
    Behaviour {
        share_differs_from_rule: differs,
        share_same_answer_other_items: same_answer_other_items,
        share_cites_memory: count(&|r: &Response| !r.memory_ids.is_empty()),
        mean_retrieve_steps: run
            .answers
            .values()
            .map(|r| {
                r.steps
                    .iter()
                    .filter(|s| s.kind == StepKind::Retrieve)
                    .count() as f64
            })
            .sum::<f64>()
            / n,
        share_fallback: count(&|r: &Response| r.steps.iter().any(|s| s.kind == StepKind::Fallback)),
    }
}

/// One version's figures on the learning curve.
#[derive(Debug, Default)]
struct VersionFigures {
    version: u32,
    validation_reward: Option<f64>,
    validation_reward_all: Option<f64>,
    test_ndcg_at_10: Option<f64>,
    test_interval: Option<Interval>,
    vs_rule: Option<VsRule>,
    behaviour: Option<Behaviour>,
}

fn curve_point(curve: &mut BTreeMap<u32, VersionFigures>, version: u32) -> &mut VersionFigures {
    curve.entry(version).or_insert_with(|| VersionFigures {
        version,
        ..Default::default()
    })
}

fn load(args: &EvalArgs) -> Result<EvalData> {
    let data = match (&args.data_dir, &args.items, &args.events, &args.requests) {
        (Some(dir), None, None, None) => EvalData::ml100k(dir)?,
        (None, Some(items), Some(events), Some(requests)) => {
            EvalData::jsonl(items, events, requests)?
        }
        _ => bail!(
            "give either --data-dir D (MovieLens-100K) or all of --items F --events F --requests F"
        ),
    };
    super::print_read_report(&data.report);
    eprintln!(
        "{}: {} items, {} events, {} validation and {} test requests",
        data.name,
        data.items.len(),
        data.events.len(),
        data.of(Split::Valid).count(),
        data.of(Split::Test).count()
    );
    Ok(data)
}

/// Fails before the long run, not after it, on a place nothing can be written.
fn check_outputs(args: &EvalArgs) -> Result<()> {
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
    Ok(())
}

/// One row of the test phase: its name, the version it serves and the
/// config its recommend stage runs (policy, memory use, sampling).
struct TestRow {
    name: String,
    version: Option<u32>,
    config: Config,
}

/// Replays the timeline once and asks every request of `split` of every
/// row: the first row is the loop's own recommend stage, the others are
/// tiers beside it (their own topics, the same memory). No outcome is
/// sent, so memory at each request is what it would be in a replay of one
/// row, and every row answers from the same memory.
async fn test_runs(
    data: &EvalData,
    dir: &Path,
    rows: &[TestRow],
    split: Split,
) -> Result<Vec<Scored>> {
    let Some(first) = rows.first() else {
        return Ok(Vec::new());
    };
    let (config, root) = run_config(&first.config, dir, "test")?;
    let tiers: Vec<Config> = rows[1..]
        .iter()
        .map(|row| super::inprocess::tier_config(&config, &row.config, &row.name))
        .collect();
    let started = Instant::now();
    let mut pipeline = InProcess::start_tiers(&config, &data.items, &tiers).await?;
    let tags = rows.iter().map(|row| row.name.clone()).collect();
    let answers = Replay::new(data, split, |_| true, tags, false)
        .run(&mut pipeline)
        .await?;
    pipeline.stop().await?;
    let _ = std::fs::remove_dir_all(&root);
    eprintln!(
        "test replay: {} {} requests, {} rows, {:.0} s",
        data.of(split).count(),
        split_name(split),
        rows.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(rows
        .iter()
        .zip(answers)
        .map(|(row, answers)| {
            let errors = answers.values().filter(|r| r.error.is_some()).count();
            let latency = super::inprocess::mean(answers.values().map(|r| r.latency_ms));
            eprintln!(
                "{}: {} answered ({errors} with an error), {latency:.0} ms each on average",
                row.name,
                answers.len(),
            );
            score(data, &row.name, row.version, split, answers)
        })
        .collect())
}

/// The first `n` users by id that have a validation request.
fn first_users(data: &EvalData, n: usize) -> HashSet<&str> {
    let mut users: Vec<&str> = data
        .of(Split::Valid)
        .map(|r| r.request.user_id.as_str())
        .collect();
    users.sort_by(|a, b| mrrec_eval::metrics::id_order(a, b));
    users.dedup();
    users.into_iter().take(n).collect()
}

/// One replay of the validation requests of `users` (their targets sent
/// back as outcomes) through a fresh loop running `config` under
/// `dir/tag`, and the rewards it earned. The loop is left running.
struct ValidationPass {
    pipeline: InProcess,
    /// The loop's store and index, for the caller to remove.
    root: PathBuf,
    rewards: Vec<super::train::Buffered>,
    /// Requests answered without an error.
    answered: usize,
}

async fn validation_pass(
    data: &EvalData,
    config: &Config,
    dir: &Path,
    tag: &str,
    users: &HashSet<&str>,
) -> Result<ValidationPass> {
    let (run, root) = run_config(config, dir, tag)?;
    let mut pipeline = InProcess::start_live(&run, &data.items).await?;
    let replay = Replay::new(
        data,
        Split::Valid,
        |r| users.contains(r.request.user_id.as_str()),
        vec![tag.to_owned()],
        true,
    );
    let answers = replay.run(&mut pipeline).await?.pop().unwrap_or_default();
    let answered = answers.values().filter(|r| r.error.is_none()).count();
    let rewards = pipeline.rewards(tag, answered).await;
    Ok(ValidationPass {
        pipeline,
        root,
        rewards,
        answered,
    })
}

/// The warm start's teacher trajectories: the `rule` policy (`rule`, the
/// rule row's config) answering every validation request of the first
/// `users` users by id, replayed in time as an RL round is. The targets
/// come back as outcomes only so that the reward stage hands each
/// trajectory over; the rule's answers never read them. Empty when the
/// data has no validation request.
async fn rule_trajectories(
    data: &EvalData,
    rule: &Config,
    args: &EvalArgs,
    users: usize,
) -> Result<Vec<Trajectory>> {
    let chosen = first_users(data, users);
    if chosen.is_empty() {
        return Ok(Vec::new());
    }
    let pass = validation_pass(data, rule, &args.dir, "eval-sft", &chosen).await?;
    let answered = pass.answered;
    pass.pipeline.stop().await?;
    let _ = std::fs::remove_dir_all(&pass.root);
    let trajectories: Vec<Trajectory> = pass
        .rewards
        .into_iter()
        .filter_map(|b| b.reward.trajectory)
        .collect();
    eprintln!(
        "warm start: the rule answered {} validation requests of {} users ({answered} answers)",
        trajectories.len(),
        chosen.len()
    );
    Ok(trajectories)
}

/// RL on validation targets: one replay per round, a training round after
/// each but the last. Returns the versions published, first included.
async fn learn(
    data: &EvalData,
    config: &Config,
    args: &EvalArgs,
    first: u32,
    curve: &mut BTreeMap<u32, VersionFigures>,
) -> Result<Vec<u32>> {
    let mut versions = vec![first];
    // The training users' validation requests: the first `train_users`
    // users by id, every validation request of theirs.
    let training = first_users(data, args.train_users);
    if args.rounds == 0 || training.is_empty() {
        return Ok(versions);
    }
    let mut version = first;
    for round in 0..=args.rounds {
        let tag = format!("eval-r{round}");
        let ValidationPass {
            pipeline,
            root,
            rewards,
            ..
        } = validation_pass(data, config, &args.dir, &tag, &training).await?;
        let (served, all) = means(&rewards);
        eprintln!(
            "v{version:04}: validation reward {served:.4} (served), {all:.4} (all {})",
            rewards.len()
        );
        let point = curve_point(curve, version);
        point.validation_reward = Some(served);
        point.validation_reward_all = Some(all);
        // The last pass only measures the last version.
        let last = round == args.rounds;
        let mut stop = last;
        if !last {
            let report = pipeline
                .trainer
                .round(&rewards, &Default::default())
                .await?;
            match report.decision {
                Decision::Published(v) => {
                    eprintln!("round {round}: published v{:04}", v.version);
                    version = v.version;
                    versions.push(version);
                }
                Decision::Rejected(reason) | Decision::NothingToLearn(reason) => {
                    eprintln!("round {round}: nothing published: {reason}");
                    // The version is unchanged: measuring it again adds nothing.
                    stop = round + 1 == args.rounds;
                }
            }
        }
        pipeline.stop().await?;
        let _ = std::fs::remove_dir_all(&root);
        if stop {
            break;
        }
    }
    Ok(versions)
}

fn split_name(split: Split) -> &'static str {
    match split {
        Split::Valid => "validation",
        Split::Test => "test",
    }
}

pub async fn run(config: &Config, args: &EvalArgs) -> Result<()> {
    check_outputs(args)?;
    let started = Instant::now();
    let data = load(args)?;
    let scored = match args.targets {
        Targets::Test => Split::Test,
        Targets::Valid => {
            eprintln!("scoring the validation targets (--targets valid): no RL round runs");
            Split::Valid
        }
    };

    let cases = data.cases(scored);
    let baselines = Baselines::new(&data.items, &data.interactions(), data.category_row)?;
    let (_, omitted) = baselines.names(&cases);
    for reason in &omitted {
        eprintln!("row left out: {reason}");
    }
    let mut rows: Vec<Row> = baselines.evaluate(&cases, &data.histories(scored))?;
    let best_baseline = rows
        .iter()
        .max_by(|a, b| a.ndcg_at_10.total_cmp(&b.ndcg_at_10))
        .cloned();
    eprintln!(
        "baselines done ({:.0} s): interactions are purchases, clicks and ratings of any value",
        started.elapsed().as_secs_f64()
    );

    let base = eval_config(config, &args.dir)?;
    let mut curve: BTreeMap<u32, VersionFigures> = BTreeMap::new();
    // The rule first: its recommend stage is the loop's own, the
    // policies' are tiers beside it.
    // Every test row answers greedily (G = 1).
    let mut greedy = base.clone();
    greedy.agent.group_size = 1;
    greedy.agent.temperature = 0.0;
    let mut rule = greedy.clone();
    rule.llm.backend = LlmBackend::Rule;
    let mut test_rows = vec![TestRow {
        name: "rule".into(),
        version: None,
        config: rule,
    }];
    if base.llm.backend != LlmBackend::Rule {
        let epochs = args.sft_epochs.max(1);
        let warm = if args.sft == 0 || !base.llm.model_dir.is_empty() {
            None
        } else {
            let trajectories =
                rule_trajectories(&data, &test_rows[0].config, args, args.sft).await?;
            Some(if trajectories.is_empty() {
                WarmStart::Synthetic {
                    trajectories: args.sft,
                    epochs,
                }
            } else {
                WarmStart::Imitate {
                    trajectories,
                    epochs,
                }
            })
        };
        let first = ensure_policy(&base, &data.items, warm).await?;
        let versions = match scored {
            Split::Test => learn(&data, &base, args, first, &mut curve).await?,
            Split::Valid => vec![first],
        };
        let registry = mrrec_policy::PolicyRegistry::new(&base.policy.dir);
        for (i, version) in versions.iter().enumerate() {
            let mut pinned = greedy.clone();
            pinned.llm.model_dir = registry.path(*version).display().to_string();
            let name = if i == 0 {
                "pipeline_untrained".to_owned()
            } else {
                format!("pipeline_v{version}")
            };
            test_rows.push(TestRow {
                name,
                version: Some(*version),
                config: pinned,
            });
        }
        let last = *versions.last().unwrap_or(&first);
        let mut blind = greedy.clone();
        blind.llm.model_dir = registry.path(last).display().to_string();
        blind.agent.use_memory = false;
        test_rows.push(TestRow {
            name: "pipeline_no_memory".into(),
            version: Some(last),
            config: blind,
        });
    }
    let mut runs = test_runs(&data, &args.dir, &test_rows, scored).await?;
    let rule_run = runs.remove(0);

    // Rows, the paired comparison with the rule, and what each policy did.
    let mut users: Vec<String> = data.of(scored).map(|r| r.request.user_id.clone()).collect();
    users.sort();
    users.dedup();
    let rule_ndcg = per_user_ndcg(&data, &rule_run, &users);
    let row_of = |run: &Scored| {
        let mut metrics = Metrics::default();
        for r in data.of(scored) {
            metrics.add(run.ranks.get(&r.request.request_id).copied().flatten());
        }
        metrics.row(&run.name)
    };
    let rule_row = row_of(&rule_run);
    rows.push(rule_row.clone());
    for run in &runs {
        let mut row = row_of(run);
        let ndcg = per_user_ndcg(&data, run, &users);
        let diffs: Vec<f64> = ndcg.iter().zip(&rule_ndcg).map(|(a, b)| a - b).collect();
        let vs = VsRule::from_diffs(&diffs);
        row.vs_rule = Some(vs);
        if let (Some(version), true) = (run.version, run.name != "pipeline_no_memory") {
            let point = curve_point(&mut curve, version);
            point.test_ndcg_at_10 = Some(row.ndcg_at_10);
            point.test_interval = Some(bootstrap(
                &ndcg,
                mrrec_eval::metrics::RESAMPLES,
                mrrec_eval::metrics::BOOTSTRAP_SEED,
            ));
            point.vs_rule = Some(vs);
            point.behaviour = Some(behaviour(run, Some(&rule_run)));
        }
        rows.push(row);
    }

    print_table(&rows);
    for (row, vs) in rows.iter().filter_map(|r| Some((r, r.vs_rule?))) {
        let verdict = if vs.above_zero() {
            "above the rule"
        } else if vs.hi < 0.0 {
            "below the rule"
        } else {
            "no difference from the rule (the interval holds 0)"
        };
        eprintln!(
            "{}: NDCG@10 {:+.4} vs rule, 95% interval [{:+.4}, {:+.4}]: {verdict}",
            row.name, vs.diff, vs.lo, vs.hi
        );
    }
    let report = serde_json::json!({
        "dataset": data.name,
        "users": users.len(),
        "requests": data.of(scored).count(),
        "targets": split_name(scored),
        "rows": rows,
        "omitted_rows": omitted,
        "interactions": "purchase, click and rate events (any value) count for popularity and item_knn; every event with an item marks it seen",
        "skipped_lines": data.report.skipped.len(),
        "normalized_lines": data.report.normalized,
        "rule_behaviour": behaviour(&rule_run, None),
        "curve": curve.values().map(|p| serde_json::json!({
            "version": p.version,
            "validation_reward": p.validation_reward,
            "validation_reward_all": p.validation_reward_all,
            "test_ndcg@10": p.test_ndcg_at_10,
            "test_ndcg@10_interval": p.test_interval.map(|i| [i.lo, i.hi]),
            "vs_rule": p.vs_rule,
            "behaviour": p.behaviour,
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
                test_ndcg_interval: p.test_interval.map(|i| (i.lo, i.hi)),
            })
            .collect();
        let mut references = vec![mrrec_eval::Reference {
            label: "rule".into(),
            ndcg_at_10: rule_row.ndcg_at_10,
        }];
        if let Some(best) = &best_baseline {
            references.push(mrrec_eval::Reference {
                label: format!("best baseline ({})", best.name),
                ndcg_at_10: best.ndcg_at_10,
            });
        }
        // The file and its folder name a dataset best (`amazon-scientific/requests.jsonl`).
        let path = Path::new(&data.name);
        let name = match (path.parent().and_then(Path::file_name), path.file_name()) {
            (Some(dir), Some(file)) => {
                format!("{}/{}", dir.to_string_lossy(), file.to_string_lossy())
            }
            _ => data.name.clone(),
        };
        if points
            .iter()
            .any(|p| p.test_ndcg_at_10.is_some() || p.validation_reward.is_some())
        {
            mrrec_eval::plot::write_png(
                &points,
                &references,
                &format!("mrrec eval: {name}"),
                plot,
            )?;
            eprintln!("learning curve written to {}", plot.display());
        } else {
            eprintln!(
                "no policy version to draw (llm.backend = rule): {} not written",
                plot.display()
            );
        }
    }
    eprintln!("eval done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!("| row | Recall@10 | NDCG@10 | Recall@100 | NDCG@100 | NDCG@10 vs rule [95% CI] |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        let vs = r.vs_rule.map_or(String::new(), |v| {
            format!("{:+.4} [{:+.4}, {:+.4}]", v.diff, v.lo, v.hi)
        });
        println!(
            "| {} | {:.4} | {:.4} | {:.4} | {:.4} | {vs} |",
            r.name, r.recall_at_10, r.ndcg_at_10, r.recall_at_100, r.ndcg_at_100
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrrec_testkit::replay::write_jsonl;

    /// A tier answers from the memory of its moment, as the loop's own
    /// stage does: the rule asked as the loop's stage and as a tier in one
    /// replay gives the same answers, and both see a hit that arrives
    /// between two requests only at the second (NDCG@10 (0 + 1) / 2). A
    /// tier that read memory late or early would miss one of the two.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tiers_answer_from_the_memory_of_their_moment() {
        let tmp = tempfile::tempdir().unwrap();
        let (items, events) = mrrec_testkit::replay::hit_between_requests();
        let request = |id: &str, user: &str, ts: i64| {
            serde_json::json!({
                "request_id": id, "user_id": user, "query": "Looking for Gear", "k": 100,
                "ts": ts, "target_item_id": "29", "split": "test",
            })
        };
        let paths = ["items.jsonl", "events.jsonl", "requests.jsonl"].map(|f| tmp.path().join(f));
        write_jsonl(&paths[0], &items).unwrap();
        write_jsonl(&paths[1], &events).unwrap();
        let requests = [
            request("t-before", "asker", 5_000),
            request("t-after", "newcomer", 20_000),
        ];
        write_jsonl(&paths[2], &requests).unwrap();
        let data = EvalData::jsonl(&paths[0], &paths[1], &paths[2]).unwrap();
        let mut config = Config::defaults();
        config.metrics.listen = String::new();
        config.llm.backend = LlmBackend::Rule;
        config.agent.group_size = 1;
        config.agent.temperature = 0.0;
        let base = eval_config(&config, &tmp.path().join("state")).unwrap();
        let rows: Vec<TestRow> = ["rule", "rule_again"]
            .into_iter()
            .map(|name| TestRow {
                name: name.into(),
                version: None,
                config: base.clone(),
            })
            .collect();
        let runs = test_runs(&data, &tmp.path().join("state"), &rows, Split::Test)
            .await
            .unwrap();
        assert_eq!(runs.len(), 2);
        for run in &runs {
            assert_eq!(run.answers.len(), 2, "{}", run.name);
            let ndcg: f64 = ["t-before", "t-after"]
                .iter()
                .map(|id| ndcg_at_10(run.ranks[*id]))
                .sum::<f64>()
                / 2.0;
            assert!((ndcg - 0.5).abs() < 1e-9, "{}: {:?}", run.name, run.ranks);
        }
        for (id, answer) in &runs[0].answers {
            let tier = &runs[1].answers[id];
            assert!(answer.error.is_none() && tier.error.is_none(), "{answer:?}");
            let items = |r: &Response| {
                r.items
                    .iter()
                    .map(|s| s.item_id.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(items(answer), items(tier), "{id}");
        }
    }
}
