//! Several stages in one process until a shutdown: one broker connection
//! (the in-process broker, when `kafka.brokers = embedded`), one memory
//! store and one shutdown; each stage is its own consumer group, so two
//! processes running complementary pipelines (`serving`, `learning`)
//! together do what `full` does. If any stage stops on its own (an error),
//! the others are stopped too. `mrrec run --stage X` is a pipeline of one
//! (`mrrec_config::pipeline::one_stage`).

use crate::ServiceError;
use mrrec_config::{Config, Pipeline, StageKind};
use mrrec_memory::MemoryStore;
use mrrec_store::AnyStore;
use mrrec_stream::{Bootstrap, KafkaClients, RunReport, Shutdown, Stage, StageRunner};
use tokio::task::JoinHandle;

/// A stage running on its own task.
pub type StageTask = JoinHandle<Result<RunReport, ServiceError>>;

/// How one stage of a pipeline ended.
#[derive(Debug)]
pub struct Stopped {
    pub stage: StageKind,
    pub outcome: Result<RunReport, ServiceError>,
}

/// Runs `pipeline` until `shutdown` is triggered or a stage stops by itself,
/// then stops every stage and says how each ended. An error here is one
/// that kept the pipeline from starting (the stages started before it are
/// stopped first).
pub async fn run(
    config: &Config,
    pipeline: &Pipeline,
    shutdown: Shutdown,
) -> Result<Vec<Stopped>, ServiceError> {
    let bootstrap = Bootstrap::resolve(config).map_err(ServiceError::Broker)?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    let needs_memory = pipeline.stages.iter().any(|s| s.stage != StageKind::Train);
    let memory = if needs_memory {
        Some(crate::open_store(config).await?)
    } else {
        None
    };
    let mut tasks: Vec<(StageKind, StageTask)> = Vec::new();
    for entry in pipeline.ordered() {
        let config = pipeline.apply(config, entry);
        let started = start_stage(
            &config,
            pipeline,
            entry.stage,
            &clients,
            memory.as_ref(),
            &shutdown,
        )
        .await;
        match started {
            Ok(task) => tasks.push((entry.stage, task)),
            Err(e) => {
                shutdown.trigger();
                for (_, task) in tasks {
                    let _ = task.await;
                }
                return Err(e);
            }
        }
    }

    // Until the shutdown, or until some stage stops by itself.
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
    let mut stopped = Vec::new();
    for (stage, task) in tasks {
        let outcome = task
            .await
            .unwrap_or_else(|_| Err(ServiceError::Panicked(format!("the {stage} stage"))));
        stopped.push(Stopped { stage, outcome });
    }
    drop(bootstrap);
    Ok(stopped)
}

/// Opens `kind` (the only match from a stage to its constructor) and
/// spawns its runner on `shutdown`.
pub async fn start_stage(
    config: &Config,
    pipeline: &Pipeline,
    kind: StageKind,
    clients: &KafkaClients,
    memory: Option<&MemoryStore<AnyStore>>,
    shutdown: &Shutdown,
) -> Result<StageTask, ServiceError> {
    let memory = || memory.cloned().ok_or(ServiceError::NoStore(kind));
    fn spawn<S: Stage + 'static>(runner: StageRunner<S>, shutdown: &Shutdown) -> StageTask {
        let shutdown = shutdown.clone();
        tokio::spawn(async move { Ok(runner.run(shutdown).await?) })
    }
    Ok(match kind {
        StageKind::Distill => {
            let stage = mrrec_distill::open_stage(config, memory()?).await?;
            let settings = mrrec_distill::runner_settings(config, mrrec_distill::STAGE);
            spawn(StageRunner::new(clients.clone(), settings, stage), shutdown)
        }
        StageKind::Reward => {
            let stage = mrrec_reward::open_stage(config, clients, memory()?)?;
            let settings = mrrec_reward::runner_settings(config);
            spawn(StageRunner::new(clients.clone(), settings, stage), shutdown)
        }
        StageKind::Train => {
            let (stage, settings) = mrrec_train::stage::stage_and_settings(config, clients)?;
            spawn(StageRunner::new(clients.clone(), settings, stage), shutdown)
        }
        StageKind::Recommend => {
            // The in-process broker only hears announcements from a trainer
            // in this same process; a real broker always can.
            let follow = !config.kafka.is_embedded() || pipeline.runs(StageKind::Train);
            let running = mrrec_recommend::start(config, clients, memory()?, follow).await?;
            let shutdown = shutdown.clone();
            tokio::spawn(async move { Ok(running.until(shutdown).await?) })
        }
    })
}
