//! `mrrec run --stage all` and `mrrec run --pipeline F`: several stages in
//! one process until SIGINT/SIGTERM. They share one broker connection (the
//! in-process broker, when `kafka.brokers = embedded`), one memory store
//! and one shutdown; each stage is its own consumer group, so two processes
//! running complementary pipelines (`serving`, `learning`) together do what
//! `full` does. If any stage stops on its own (an error), the others are
//! stopped too and the process exits non-zero.

use anyhow::{Context, Result};
use mrrec_config::{Config, Pipeline, StageKind};
use mrrec_stream::{Bootstrap, KafkaClients, RunReport, Shutdown, StageRunner, StreamError};
use tokio::task::JoinHandle;

type StageTask = JoinHandle<Result<RunReport>>;

/// Runs `pipeline` until a signal (or a stage failure).
pub async fn run(config: &Config, pipeline: &Pipeline) -> Result<()> {
    super::run::start_metrics(config)?;
    let bootstrap = Bootstrap::resolve(config).context("starting the broker connection")?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    let needs_memory = pipeline.stages.iter().any(|s| s.stage != StageKind::Train);
    let memory = if needs_memory {
        Some(super::store::open(config).await?)
    } else {
        None
    };
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let mut tasks: Vec<(StageKind, StageTask)> = Vec::new();
    eprintln!(
        "pipeline {}: {}",
        pipeline.name,
        if pipeline.description.is_empty() {
            "(no description)"
        } else {
            &pipeline.description
        }
    );
    for entry in pipeline.ordered() {
        let config = pipeline.apply(config, entry);
        let kind = entry.stage;
        let prefix = &config.topics.prefix;
        let names = |topics: &[&str]| {
            topics
                .iter()
                .map(|t| format!("{prefix}{t}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        eprintln!(
            "  {kind}: group {}, reads {}{}",
            config.group_id(kind.as_str()),
            names(kind.reads()),
            if kind.writes().is_empty() {
                String::new()
            } else {
                format!(", writes {}", names(kind.writes()))
            }
        );
        let started = start_stage(
            &config,
            pipeline,
            kind,
            &clients,
            memory.as_ref(),
            &shutdown,
        )
        .await
        .with_context(|| format!("starting the {kind} stage"));
        match started {
            Ok(task) => tasks.push((kind, task)),
            Err(e) => {
                shutdown.trigger();
                for (_, task) in tasks {
                    let _ = task.await;
                }
                return Err(e);
            }
        }
    }

    // Until a signal, or until some stage stops by itself.
    let any_finished = async {
        while !tasks.iter().any(|(_, task)| task.is_finished()) {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    tokio::select! {
        _ = shutdown.wait() => {}
        _ = any_finished => {}
    }
    shutdown.trigger();
    let mut failure = None;
    for (kind, task) in tasks {
        match task.await {
            Ok(Ok(report)) => eprintln!(
                "{kind} stopped: {} processed, {} dead-lettered, {} skipped",
                report.processed, report.dead_lettered, report.skipped
            ),
            Ok(Err(e)) => {
                eprintln!("{kind} failed: {e:#}");
                failure.get_or_insert(anyhow::anyhow!("the {kind} stage failed: {e:#}"));
            }
            Err(e) => {
                eprintln!("{kind} panicked: {e}");
                failure.get_or_insert(anyhow::anyhow!("the {kind} stage panicked: {e}"));
            }
        }
    }
    drop(bootstrap);
    failure.map_or(Ok(()), Err)
}

/// Opens `kind` and spawns its runner on `shutdown`.
async fn start_stage(
    config: &Config,
    pipeline: &Pipeline,
    kind: StageKind,
    clients: &KafkaClients,
    memory: Option<&mrrec_memory::MemoryStore<mrrec_store::AnyStore>>,
    shutdown: &Shutdown,
) -> Result<StageTask> {
    let memory = || memory.cloned().context("the memory store is not open");
    fn spawn<S: mrrec_stream::Stage + 'static>(
        runner: StageRunner<S>,
        shutdown: &Shutdown,
    ) -> StageTask {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            runner
                .run(shutdown)
                .await
                .map_err(|e: StreamError| e.into())
        })
    }
    Ok(match kind {
        StageKind::Distill => {
            let stage = super::run::distill_stage(config, memory()?).await?;
            let settings = mrrec_distill::runner_settings(config, mrrec_distill::STAGE);
            spawn(StageRunner::new(clients.clone(), settings, stage), shutdown)
        }
        StageKind::Reward => {
            let stage = mrrec_reward::open_stage(config, clients, memory()?)?;
            let settings = mrrec_reward::runner_settings(config);
            spawn(StageRunner::new(clients.clone(), settings, stage), shutdown)
        }
        StageKind::Train => {
            let (stage, settings) = super::train::stage_and_settings(config, clients)?;
            spawn(StageRunner::new(clients.clone(), settings, stage), shutdown)
        }
        StageKind::Recommend => {
            // The in-process broker only hears announcements from a trainer
            // in this same process; a real broker always can.
            let follow = !config.kafka.is_embedded() || pipeline.runs(StageKind::Train);
            let running = super::recommend::start(config, clients, memory()?, follow).await?;
            tokio::spawn(running.until(shutdown.clone()))
        }
    })
}
