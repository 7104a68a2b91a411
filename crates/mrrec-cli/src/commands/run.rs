//! `mrrec run --stage …`: one stage until SIGINT/SIGTERM (`all`: every
//! stage in this process, see [`super::pipeline`]).

use crate::cli::StageName;
use anyhow::{Context, Result};
use mrrec_config::Config;
use mrrec_distill::{Distill, Indexes};
use mrrec_stream::{metrics, Bootstrap, KafkaClients, Shutdown, StageRunner};

pub async fn stage(config: &Config, stage: StageName) -> Result<()> {
    match stage {
        StageName::Distill => distill(config).await,
        StageName::Recommend => super::recommend::run_stage(config).await,
        StageName::Reward => reward(config).await,
        StageName::Train => super::train::run_stage(config).await,
        StageName::All => super::pipeline::run(config, &mrrec_config::pipeline::all_stages()).await,
    }
}

/// Starts the Prometheus endpoint at `metrics.listen` (if set).
pub(crate) fn start_metrics(config: &Config) -> Result<()> {
    if let Some(addr) =
        metrics::install_prometheus(&config.metrics.listen).map_err(anyhow::Error::msg)?
    {
        tracing::info!(%addr, "metrics on http://{addr}/metrics");
    }
    Ok(())
}

async fn distill(config: &Config) -> Result<()> {
    // Before the (possibly long) index rebuild: a signal then stops cleanly.
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    start_metrics(config)?;
    let bootstrap = Bootstrap::resolve(config).context("starting the broker connection")?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    let memory = super::store::open(config).await?;
    let stage = distill_stage(config, memory).await?;
    let settings = mrrec_distill::runner_settings(config, mrrec_distill::STAGE);
    until_signal(clients, settings, stage, shutdown).await
}

/// The distill stage over `memory`, with the indexes under `index.path`
/// and the configured user cache.
pub(crate) async fn distill_stage(
    config: &Config,
    memory: mrrec_memory::MemoryStore<mrrec_store::AnyStore>,
) -> Result<Distill<mrrec_store::AnyStore>> {
    let indexes = Indexes::open(Some(&config.index.path), &memory)
        .await
        .with_context(|| format!("opening the indexes in {}", config.index.path.display()))?;
    Ok(Distill::new(memory, &config.topics.prefix)
        .with_indexes(indexes)
        .with_cache(config.distill.cache_bytes())
        .with_max_behavior_entries(config.distill.max_behavior_entries)
        .with_co_occurrence(mrrec_memory::CoOccurrence {
            window: config.distill.co_occurrence_window,
            both_ways: config.distill.co_occurrence_both_ways,
        }))
}

/// Runs `stage` until `shutdown` (SIGINT/SIGTERM) and says what it did.
async fn until_signal<S: mrrec_stream::Stage>(
    clients: KafkaClients,
    settings: mrrec_stream::RunnerSettings,
    stage: S,
    shutdown: Shutdown,
) -> Result<()> {
    let name = stage.name().to_owned();
    let report = StageRunner::new(clients, settings, stage)
        .run(shutdown)
        .await?;
    eprintln!(
        "{name} stopped: {} processed, {} dead-lettered, {} skipped (already stored)",
        report.processed, report.dead_lettered, report.skipped
    );
    Ok(())
}

async fn reward(config: &Config) -> Result<()> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    start_metrics(config)?;
    let bootstrap = Bootstrap::resolve(config).context("starting the broker connection")?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    let memory = super::store::open(config).await?;
    let stage = mrrec_reward::open_stage(config, &clients, memory)?;
    let settings = mrrec_reward::runner_settings(config);
    until_signal(clients, settings, stage, shutdown).await
}
