//! The warm start of a fresh policy (DESIGN §7): the tokenizer's training
//! text from the catalog, synthetic teacher trajectories (the `rule` policy
//! through the real agent loop, for `model init --sft`), and imitating
//! teacher trajectories, synthetic or the rule's own on real requests.

use crate::LoopError;
use mrrec_config::Config;
use mrrec_messages::Item;
use mrrec_policy::PolicyMeta;

/// Training text for the tokenizer from one item: title, categories, description.
pub fn item_text(item: &Item) -> String {
    let mut text = item.title.clone();
    if !item.categories.is_empty() {
        text.push_str(" | ");
        text.push_str(&item.categories.join(", "));
    }
    if let Some(description) = &item.description {
        text.push_str(" | ");
        text.push_str(description);
    }
    text
}

/// The warm start a fresh policy gets (DESIGN §7): what it imitates.
pub enum WarmStart {
    /// `trajectories` synthetic teacher trajectories built from the catalog
    /// (`model init --sft`), for `epochs` passes.
    Synthetic { trajectories: usize, epochs: usize },
    /// The `rule` policy's own trajectories on real requests, for `epochs`
    /// passes.
    Imitate {
        trajectories: Vec<mrrec_messages::Trajectory>,
        epochs: usize,
    },
}

/// Makes sure the registry has a version to serve: `model init` on `items`
/// (plus the warm start, if any) when it has none and no `llm.model_dir`
/// is set. Returns the version served.
pub async fn ensure_policy(
    config: &Config,
    items: &[Item],
    spec: &mrrec_policy::ModelSpec,
    warm: Option<WarmStart>,
) -> Result<u32, LoopError> {
    let registry = mrrec_policy::PolicyRegistry::new(&config.policy.dir);
    if let Some(latest) = registry.latest()? {
        return Ok(latest.version);
    }
    if !config.llm.model_dir.is_empty() {
        return Ok(0);
    }
    let texts: Vec<String> = items.iter().map(item_text).collect();
    let staging = registry.staging_dir(0)?;
    let meta = mrrec_policy::PolicyMeta::new(Some(0), None, "init");
    mrrec_policy::init_model(&staging, spec, &texts, &meta)?;
    match warm {
        Some(WarmStart::Synthetic {
            trajectories,
            epochs,
        }) => warm_start(config, &staging, items, trajectories, epochs, &meta).await?,
        Some(WarmStart::Imitate {
            trajectories,
            epochs,
        }) => imitate(&staging, trajectories, epochs, &meta).await?,
        None => {}
    }
    registry.publish(&staging, 0)?;
    eprintln!("initialised policy v0000 in {}", registry.dir().display());
    Ok(0)
}

/// Memory for a synthetic user: behavior records of the items it liked.
struct LikedItems(Vec<mrrec_agent::MemoryHit>);

#[async_trait::async_trait]
impl mrrec_agent::MemorySource for LikedItems {
    async fn search(
        &self,
        _user: &str,
        _query: &str,
        k: usize,
    ) -> Result<Vec<mrrec_agent::MemoryHit>, String> {
        Ok(self.0.iter().take(k).cloned().collect())
    }
}

/// The SFT warm start (DESIGN §7) of `model init`, where no user has been
/// seen yet: `n` synthetic teacher trajectories (see
/// [`synthetic_trajectories`]) imitated for `epochs` passes.
pub async fn warm_start(
    config: &Config,
    out: &std::path::Path,
    items: &[Item],
    n: usize,
    epochs: usize,
    meta: &PolicyMeta,
) -> Result<(), LoopError> {
    let trajectories = synthetic_trajectories(config, items, n).await?;
    imitate(out, trajectories, epochs, meta).await
}

/// `n` teacher trajectories, each for a synthetic user who liked a few
/// items of one category and asks for it in DESIGN §11's words, run through
/// the real agent loop with the `rule` policy.
pub async fn synthetic_trajectories(
    config: &Config,
    items: &[Item],
    n: usize,
) -> Result<Vec<mrrec_messages::Trajectory>, LoopError> {
    use mrrec_agent::{run_agent, AgentInput, MemoryHit};
    use mrrec_llm::RuleLlm;
    let mut by_category: std::collections::BTreeMap<&str, Vec<&Item>> = Default::default();
    for item in items {
        for c in &item.categories {
            by_category.entry(c.as_str()).or_default().push(item);
        }
    }
    by_category.retain(|_, v| v.len() >= 4);
    if by_category.is_empty() {
        return Err(LoopError::WarmStart(
            "--sft needs a catalog whose categories have at least 4 items each".into(),
        ));
    }
    let categories: Vec<(&str, Vec<&Item>)> = by_category.into_iter().collect();
    let settings = mrrec_recommend::RecommendSettings::from_config(config).agent;
    let teacher = RuleLlm { version: 0 };
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move |bound: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % bound as u64) as usize
    };
    let bar = crate::produce::progress_bar(n as u64, "teacher trajectories");
    let mut trajectories = Vec::with_capacity(n);
    for i in 0..n {
        let (category, members) = &categories[next(categories.len())];
        let liked: Vec<MemoryHit> = (0..3)
            .map(|j| {
                // Mostly the requested category, sometimes another one: the
                // answer follows the request, not whatever memory came back.
                let item = if j == 2 && next(3) == 0 {
                    let other = &categories[next(categories.len())].1;
                    other[next(other.len())]
                } else {
                    members[next(members.len())]
                };
                MemoryHit {
                    // Shaped like the store's behavior entry ids.
                    id: format!("b{:08x}{:08x}", next(1 << 30), next(1 << 30) ^ (i * 3 + j)),
                    text: format!(
                        "rated \"{}\" {}/5 · {}",
                        item.title,
                        4 + next(2),
                        item.categories.join(", ")
                    ),
                }
            })
            .collect();
        let user = format!("{}", next(1000));
        // The global memory the recommender shows for a request that names
        // a category (counts made up; the teacher answers with its category).
        let stats = mrrec_memory::render::GlobalStats {
            chosen: [(String::new(), 1 + next(5000) as i64)].into(),
            unchosen: [(String::new(), next(2000) as i64)].into(),
        };
        let input = AgentInput {
            user_id: user.clone(),
            query: Some(mrrec_datasets::query_for(&user, &[category.to_string()])),
            profile: Some(served_like_profile(category, &categories, &mut next)),
            global: vec![mrrec_memory::render::global(category, &stats).text],
        };
        let outcome = run_agent(&teacher, &LikedItems(liked), &input, &settings).await?;
        trajectories.push(mrrec_messages::Trajectory {
            trajectory_id: format!("sft-{i}"),
            request_id: format!("sft-{i}"),
            user_id: user,
            index: 0,
            group_size: 1,
            served: true,
            policy_version: 0,
            prompt: outcome.prompt,
            segments: outcome.segments,
            profile: outcome.profile,
            memory_ids: outcome.memory_ids,
            format_ok: true,
            ts: 0,
        });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(trajectories)
}

/// Trains the fresh weights in `out` to imitate `trajectories` (the
/// teacher's own tokens: the prompt and inserted memory are context) for
/// `epochs` passes, and records the losses in its metadata.
pub async fn imitate(
    out: &std::path::Path,
    trajectories: Vec<mrrec_messages::Trajectory>,
    epochs: usize,
    meta: &PolicyMeta,
) -> Result<(), LoopError> {
    let n = trajectories.len();
    if n == 0 {
        return Err(LoopError::WarmStart(
            "the warm start has no teacher trajectory to imitate".into(),
        ));
    }
    let tokenizer = tokenizers::Tokenizer::from_file(out.join("tokenizer.json"))
        .map_err(|e| LoopError::WarmStart(format!("reading the tokenizer: {e}")))?;
    let shape = mrrec_train::LlamaShape::read(out)?;
    let samples = trajectories
        .into_iter()
        .map(|trajectory| {
            let id = trajectory.trajectory_id.clone();
            let rewarded = mrrec_train::Rewarded {
                trajectory,
                reward: 0.0,
            };
            mrrec_train::build_sample(&rewarded, &tokenizer, shape.vocab_size, 4096)
                .map_err(|e| LoopError::WarmStart(format!("teacher trajectory {id}: {e}")))
        })
        .collect::<Result<Vec<_>, LoopError>>()?;
    eprintln!(
        "imitating {n} teacher trajectories ({:.0} tokens each on average) for {epochs} epochs…",
        samples.iter().map(|s| s.tokens.len()).sum::<usize>() as f64 / n as f64
    );
    // About 32 optimizer steps per epoch whatever `n` is (minibatches of
    // 8 to 32): the imitation turns from copying nothing to copying the
    // teacher after a number of steps, not of tokens. On §14, 500 real
    // trajectories × 6 epochs in minibatches of 32 (96 steps) ended at loss
    // 0.242 and half the validation reward of 1,000 × 6 (192 steps, loss
    // 0.084; docs/BENCHMARKS.md).
    let minibatch = (n / 32).clamp(8, 32);
    let model = mrrec_train::PolicyModel::load(out, true)?;
    let report = tokio::task::spawn_blocking(move || {
        let report = mrrec_train::sft::train(&model, &samples, 1e-3, epochs, minibatch, 8192);
        report.map(|r| (r, model))
    })
    .await
    .map_err(|_| LoopError::Panicked("the warm start".into()))??;
    let (report, model) = report;
    model.save_weights(out)?;
    let mut meta = meta.clone();
    meta.origin = "init+sft".into();
    meta.metrics
        .insert("sft_loss_first_epoch".into(), report.loss_first_epoch);
    meta.metrics
        .insert("sft_loss_last_epoch".into(), report.loss_last_epoch);
    meta.metrics.insert("sft_trajectories".into(), n as f64);
    let path = out.join(mrrec_policy::META_FILE);
    std::fs::write(&path, serde_json::to_string_pretty(&meta)? + "\n")
        .map_err(|source| LoopError::Io { path, source })?;
    eprintln!(
        "warm start: loss per token {:.3} → {:.3} over {} steps in {:.1} s",
        report.loss_first_epoch, report.loss_last_epoch, report.steps, report.seconds
    );
    Ok(())
}

/// A profile line shaped like the store's (`render::profile`): favourites
/// drawn from the catalog's categories, the requested one among them only
/// sometimes — as for real users, whose requests often name a category the
/// profile does not lead with. Without this the warm start learns to copy
/// the profile's category instead of the request's.
fn served_like_profile(
    requested: &str,
    categories: &[(&str, Vec<&Item>)],
    next: &mut impl FnMut(usize) -> usize,
) -> String {
    let mut text = String::from("Profile");
    if next(2) == 0 {
        let gender = if next(2) == 0 { "F" } else { "M" };
        text.push_str(&format!(" (age {}, gender {gender})", 16 + next(50)));
    }
    let shown = 1 + next(4);
    let mut favourites: Vec<&str> = Vec::with_capacity(shown);
    while favourites.len() < shown.min(categories.len()) {
        let c = categories[next(categories.len())].0;
        if !favourites.contains(&c) {
            favourites.push(c);
        }
    }
    if next(3) == 0 && !favourites.contains(&requested) {
        let at = next(favourites.len() + 1);
        favourites.insert(at, requested);
    }
    let listed: Vec<String> = favourites
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "{c} (+{:.2})",
                0.9 / (i as f64 + 1.0) - next(10) as f64 / 100.0
            )
        })
        .collect();
    text.push_str(&format!(
        ": {} events across {} categories. Favours {}.",
        5 + next(200),
        favourites.len() + next(4),
        listed.join(", ")
    ));
    text
}
