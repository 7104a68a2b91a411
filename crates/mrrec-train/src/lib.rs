//! The RL trainer (DESIGN §6). Owns one training round: rewarded
//! trajectories in; samples built under each generating version's
//! tokenizer (bad ones skipped, with the reason); the generating versions'
//! log-probabilities recomputed; GRPO on the newest version; the candidate
//! judged on a held-out slice of groups; `policy/vN+1/` written through the
//! registry (staging + rename, never overwriting) only when it loads, is
//! finite and does not regress. [`stage`] is the train stage around it:
//! the durable reward buffer, when a round is due, checking a candidate in
//! mistral.rs, announcing it on `mrrec.policy`, and dead-lettering what a
//! round left out.

pub mod bench;
pub mod events;
pub mod grpo;
pub mod model;
pub mod samples;
pub mod sft;
pub mod stage;

pub use events::describe_metrics;
pub use grpo::{AdamW, GrpoSettings, UpdateReport};
pub use model::{LlamaShape, PolicyModel};
pub use samples::{build_sample, Rewarded, Sample};
pub use stage::{Buffered, Once, OnceError, RewardBuffer, TrainStage, TrainStageError, Trainer};

use mrrec_policy::{PolicyMeta, PolicyRegistry, PolicyVersion};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A policy directory is missing or unusable.
    #[error("policy {dir}: {problem}")]
    Policy { dir: PathBuf, problem: String },
    /// The data cannot be trained on.
    #[error("input: {0}")]
    Input(String),
    /// The loss, a gradient or a weight stopped being a finite number.
    #[error("numerics: {0}")]
    NonFinite(String),
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("{0}")]
    Registry(#[from] mrrec_policy::PolicyError),
}

impl TrainError {
    pub fn policy(dir: &Path, problem: impl Into<String>) -> Self {
        TrainError::Policy {
            dir: dir.to_owned(),
            problem: problem.into(),
        }
    }
}

/// How a round trains and judges.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    pub grpo: GrpoSettings,
    /// Share of request groups held out to judge the candidate.
    pub holdout_fraction: f64,
    /// How far the held-out estimate may fall below the logged mean reward,
    /// beyond one standard error of the estimate, before the candidate is
    /// rejected.
    pub max_regression: f64,
    /// Longest trajectory (prompt + completion tokens) trained on.
    pub max_tokens: usize,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            grpo: GrpoSettings::default(),
            holdout_fraction: 0.1,
            max_regression: 0.0,
            max_tokens: 2048,
        }
    }
}

/// What happened to a round's candidate.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Published(PolicyVersion),
    /// Written nowhere; the reason is recorded.
    Rejected(String),
    /// Nothing could be learned (no group with contrasting rewards).
    NothingToLearn(String),
}

/// The outcome of one round, for logs, metrics, announcements and tests.
#[derive(Debug, Clone)]
pub struct RoundReport {
    pub parent: u32,
    pub decision: Decision,
    pub update: Option<UpdateReport>,
    /// Figures announced with the version (`heldout_reward_before`, …).
    pub metrics: BTreeMap<String, f64>,
    /// `(trajectory_id, reason)` of every rewarded trajectory left out.
    pub skipped: Vec<(String, String)>,
}

/// Samples whose trajectories could be used, and the reasons for the others.
struct Prepared {
    samples: Vec<Sample>,
    skipped: Vec<(String, String)>,
}

fn prepare(registry: &PolicyRegistry, rewarded: &[Rewarded], max_tokens: usize) -> Prepared {
    let mut tokenizers: HashMap<u32, Result<(Tokenizer, usize), String>> = HashMap::new();
    let mut samples = Vec::new();
    let mut skipped = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for r in rewarded {
        let t = &r.trajectory;
        if !seen.insert(t.trajectory_id.clone()) {
            skipped.push((t.trajectory_id.clone(), "duplicate trajectory".into()));
            continue;
        }
        let loaded = tokenizers.entry(t.policy_version).or_insert_with(|| {
            let dir = registry.path(t.policy_version);
            if !dir.join("config.json").is_file() {
                return Err(format!(
                    "unknown policy version {} (no {})",
                    t.policy_version,
                    dir.display()
                ));
            }
            let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
                .map_err(|e| format!("tokenizer of version {}: {e}", t.policy_version))?;
            let vocab = LlamaShape::read(&dir)
                .map_err(|e| e.to_string())?
                .vocab_size;
            Ok((tokenizer, vocab))
        });
        match loaded {
            Ok((tokenizer, vocab)) => match build_sample(r, tokenizer, *vocab, max_tokens) {
                Ok(sample) => samples.push(sample),
                Err(reason) => skipped.push((t.trajectory_id.clone(), reason)),
            },
            Err(reason) => skipped.push((t.trajectory_id.clone(), reason.clone())),
        }
    }
    Prepared { samples, skipped }
}

/// Whether a request's group is held out (a stable hash of its id).
fn held_out(request_id: &str, fraction: f64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in request_id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h % 10_000) as f64) < fraction * 10_000.0
}

/// Log-probabilities of `indices` under the version that generated each.
fn generating_logprobs(
    registry: &PolicyRegistry,
    samples: &[Sample],
    indices: &[usize],
    chunk_tokens: usize,
) -> Result<BTreeMap<usize, Vec<f32>>, TrainError> {
    let mut by_version: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for &i in indices {
        by_version
            .entry(samples[i].policy_version)
            .or_default()
            .push(i);
    }
    let mut out = BTreeMap::new();
    for (version, members) in by_version {
        let model = PolicyModel::load(&registry.path(version), false)?;
        out.extend(grpo::scored_logprobs(
            &model,
            samples,
            &members,
            chunk_tokens,
        )?);
    }
    Ok(out)
}

/// Files of a policy directory other than the weights and metadata, copied
/// from the parent into the new version unchanged.
const CARRIED_FILES: [&str; 4] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// One training round on the newest version under `registry`. `verify` gets
/// the finished candidate directory before it is published (the caller
/// loads it in the serving engine); an error rejects the candidate.
pub fn train_round(
    registry: &PolicyRegistry,
    rewarded: &[Rewarded],
    settings: &TrainSettings,
    verify: &dyn Fn(&Path) -> Result<(), String>,
) -> Result<RoundReport, TrainError> {
    train_round_on(registry, rewarded, settings, verify, &BTreeMap::new())
}

/// [`train_round`], recording in the new version's metadata the input
/// offsets its rewards came from (`PolicyMeta::trained_on`), so the round
/// is never trained twice.
pub fn train_round_on(
    registry: &PolicyRegistry,
    rewarded: &[Rewarded],
    settings: &TrainSettings,
    verify: &dyn Fn(&Path) -> Result<(), String>,
    trained_on: &BTreeMap<String, i64>,
) -> Result<RoundReport, TrainError> {
    let parent = registry.latest()?.ok_or_else(|| {
        TrainError::policy(
            registry.dir(),
            "no policy version to train; run `mrrec model init` first",
        )
    })?;
    let Prepared { samples, skipped } = prepare(registry, rewarded, settings.max_tokens);
    let mut report = RoundReport {
        parent: parent.version,
        decision: Decision::NothingToLearn(String::new()),
        update: None,
        metrics: BTreeMap::new(),
        skipped,
    };
    // Training samples first, then the held-out ones.
    let (mut samples, heldout_samples): (Vec<Sample>, Vec<Sample>) = samples
        .into_iter()
        .partition(|s| !held_out(&s.request_id, settings.holdout_fraction));
    let trained = samples.len();
    samples.extend(heldout_samples);
    let heldout: Vec<usize> = (trained..samples.len()).collect();
    let training_samples = &samples[..trained];
    let teaching = grpo::advantages(training_samples)
        .iter()
        .filter(|a| **a != 0.0)
        .count();
    if teaching == 0 {
        report.decision = Decision::NothingToLearn(format!(
            "{} usable trajectories, none in a group whose rewards differ",
            training_samples.len()
        ));
        return Ok(report);
    }
    let chunk_tokens = settings.grpo.chunk_tokens;
    // One pass under each generating version covers training and held-out samples.
    let everything: Vec<usize> = (0..samples.len()).collect();
    let old = generating_logprobs(registry, &samples, &everything, chunk_tokens)?;
    let all: Vec<usize> = (0..trained).collect();
    let model = PolicyModel::load(&parent.path, true)?;
    let reference = if settings.grpo.kl_coef > 0.0 {
        let constant = PolicyModel::load(&parent.path, false)?;
        Some(grpo::scored_logprobs(
            &constant,
            training_samples,
            &all,
            chunk_tokens,
        )?)
    } else {
        None
    };
    let vars: Vec<_> = model.vars().map(|(_, v)| v).collect();
    let mut optimizer = AdamW::new(
        &vars,
        settings.grpo.learning_rate,
        settings.grpo.weight_decay,
    )?;
    let update = match grpo::update(
        &model,
        &mut optimizer,
        training_samples,
        &old,
        reference.as_ref(),
        &settings.grpo,
    ) {
        Ok(update) => update,
        Err(TrainError::NonFinite(reason)) => {
            report.decision = Decision::Rejected(format!("rolled back: {reason}"));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    if !model.is_finite()? {
        report.decision = Decision::Rejected("rolled back: a weight is not finite".into());
        return Ok(report);
    }
    let m = &mut report.metrics;
    m.insert("trajectories".into(), update.trajectories as f64);
    m.insert("trained_trajectories".into(), update.trained as f64);
    m.insert(
        "mean_tokens".into(),
        update.tokens as f64 / update.trajectories.max(1) as f64,
    );
    m.insert("loss".into(), update.loss);
    m.insert("grad_norm".into(), update.grad_norm);
    m.insert("clip_fraction".into(), update.clip_fraction);
    m.insert("update_seconds".into(), update.seconds);
    m.insert(
        "train_reward_mean".into(),
        mean(training_samples.iter().map(|s| s.reward)),
    );
    report.update = Some(update);

    // Judge on the held-out groups.
    let new_heldout = grpo::scored_logprobs(&model, &samples, &heldout, chunk_tokens)?;
    let estimate = grpo::offpolicy_estimate(&samples, &heldout, &old, &new_heldout);
    if let Some(e) = estimate {
        let (before, after) = (e.logged, e.estimate);
        report
            .metrics
            .insert("heldout_reward_before".into(), before);
        report.metrics.insert("heldout_reward_after".into(), after);
        report.metrics.insert("heldout_stderr".into(), e.stderr);
        // A regression counts when it exceeds the estimate's own standard
        // error (plus the allowance): with ~20 held-out groups a fall of a
        // few hundredths is noise, and rejecting on it stalls learning.
        if after + e.stderr < before - settings.max_regression {
            report.decision = Decision::Rejected(format!(
                "held-out reward would fall from {before:.4} to {after:.4} (standard error {:.4}, {} groups)",
                e.stderr, e.groups
            ));
            return Ok(report);
        }
    }
    report
        .metrics
        .insert("heldout_groups".into(), heldout_groups(&samples, &heldout));

    let version = registry.next_version()?;
    let staging = registry.staging_dir(version)?;
    let written = write_version(
        &model,
        &parent.path,
        &staging,
        version,
        &report.metrics,
        trained_on,
    )
    .and_then(|()| verify_written(&model, &staging, training_samples))
    .and_then(|()| verify(&staging).map_err(|e| TrainError::policy(&staging, e)));
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        report.decision = Decision::Rejected(format!("the written version does not load: {e}"));
        return Ok(report);
    }
    report.decision = Decision::Published(registry.publish(&staging, version)?);
    Ok(report)
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

fn heldout_groups(samples: &[Sample], heldout: &[usize]) -> f64 {
    heldout
        .iter()
        .map(|&i| samples[i].request_id.as_str())
        .collect::<std::collections::BTreeSet<_>>()
        .len() as f64
}

fn write_version(
    model: &PolicyModel,
    parent_dir: &Path,
    staging: &Path,
    version: u32,
    metrics: &BTreeMap<String, f64>,
    trained_on: &BTreeMap<String, i64>,
) -> Result<(), TrainError> {
    for name in CARRIED_FILES {
        let from = parent_dir.join(name);
        if from.is_file() {
            std::fs::copy(&from, staging.join(name))
                .map_err(|e| TrainError::policy(staging, format!("copying {name}: {e}")))?;
        }
    }
    model.save_weights(staging)?;
    let parent = mrrec_policy::check::version_from_dir_name(parent_dir);
    let meta = PolicyMeta {
        version: Some(version),
        parent,
        origin: "grpo".into(),
        created_ts: mrrec_policy::now_ms(),
        metrics: metrics.clone(),
        trained_on: trained_on.clone(),
    };
    let text = serde_json::to_string_pretty(&meta)
        .map_err(|e| TrainError::policy(staging, e.to_string()))?;
    std::fs::write(staging.join(mrrec_policy::META_FILE), text + "\n")
        .map_err(|e| TrainError::policy(staging, e.to_string()))?;
    mrrec_policy::check_model_dir(staging)?;
    Ok(())
}

/// Reloads the written weights and checks they compute what was trained.
fn verify_written(
    model: &PolicyModel,
    staging: &Path,
    samples: &[Sample],
) -> Result<(), TrainError> {
    let reloaded = PolicyModel::load(staging, false)?;
    let Some(first) = samples.first() else {
        return Ok(());
    };
    let one = [first.clone()];
    let a = grpo::scored_logprobs(model, &one, &[0], usize::MAX)?;
    let b = grpo::scored_logprobs(&reloaded, &one, &[0], usize::MAX)?;
    let same = a[&0]
        .iter()
        .zip(&b[&0])
        .all(|(x, y)| x.is_finite() && (x - y).abs() < 1e-5);
    if same {
        Ok(())
    } else {
        Err(TrainError::NonFinite(
            "reloaded weights compute different log-probabilities".into(),
        ))
    }
}
