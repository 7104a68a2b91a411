//! `mrrec bench train`: one GRPO update — one pass — over synthetic
//! agent-shaped trajectories on the configured policy (or a fresh default one).

use super::Measured;
use crate::LoopError;
use mrrec_config::Config;
use mrrec_train::bench;

pub fn run(config: &Config, trajectories: usize, seed: u64) -> Result<Measured, LoopError> {
    let catalog = mrrec_train::bench::synthetic_catalog(4000, seed);
    let (dir, _tmp) = super::model_dir_for(config, &catalog)?;
    let group = config.agent.group_size.max(2) as usize;
    let requests = trajectories.div_ceil(group);
    let mut rewarded = bench::synthetic_rewarded(requests, group, seed);
    rewarded.truncate(trajectories);
    // One update is one pass over the trajectories (a round makes
    // `train.epochs` of them).
    let settings = mrrec_train::GrpoSettings {
        epochs: 1,
        ..mrrec_train::stage::settings(config).grpo
    };
    eprintln!(
        "one GRPO update over {} trajectories (groups of {group}) on {}",
        rewarded.len(),
        dir.display()
    );
    let report = bench::run(&dir, &rewarded, &settings)?;
    let mut figures = serde_json::to_value(&report)?;
    figures["peak_rss_mb"] = serde_json::json!(super::peak_rss_mb());
    Ok(Measured {
        summary: format!(
            "{:.1} s per update ({:.1} s recomputing old log-probabilities, {:.1} s GRPO), {:.0} tokens/s, {:.0} tokens per trajectory",
            report.seconds_per_update,
            report.old_logprobs_seconds,
            report.grpo_seconds,
            report.tokens_per_s,
            report.mean_tokens
        ),
        figures,
    })
}
