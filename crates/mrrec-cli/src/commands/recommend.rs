//! `mrrec run --stage recommend` and `mrrec recommend`.

use anyhow::{Context, Result};
use mrrec_config::{Config, LlmBackend};
use mrrec_llm::{EmbeddedLlm, EngineOptions, HttpLlm, Llm, PolicyTarget, RuleLlm};
use mrrec_memory::MemoryStore;
use mrrec_messages::{Request, Response};
use mrrec_recommend::RecommendClient;
use mrrec_store::{AnyStore, KvStore};
use mrrec_stream::{Bootstrap, KafkaClients, Shutdown, StageRunner};
use std::sync::Arc;
use std::time::Duration;

/// The configured policy backend, and what follows `mrrec.policy` for it
/// (the embedded engine; an http tier follows on its own).
pub async fn open_llm(config: &Config) -> Result<(Arc<dyn Llm>, Option<Arc<dyn PolicyTarget>>)> {
    match config.llm.backend {
        LlmBackend::Embedded => {
            let dir = mrrec_policy::registry::resolve_model_dir(
                &config.llm.model_dir,
                &config.policy.dir,
            )?;
            let llm = Arc::new(
                EmbeddedLlm::open(&dir, EngineOptions::from_config(config))
                    .await
                    .with_context(|| format!("opening the policy in {}", dir.display()))?,
            );
            tracing::info!(version = llm.serving_version(), dir = %dir.display(), "policy loaded");
            Ok((llm.clone(), Some(llm)))
        }
        LlmBackend::Http => Ok((
            Arc::new(HttpLlm::new(&config.llm.url)?.with_api_key(&config.llm.api_key)),
            None,
        )),
        // The rule has no versions to follow.
        LlmBackend::Rule => Ok((Arc::new(RuleLlm::default()), None)),
    }
}

/// A running recommend stage (and its policy follower) in this process.
pub struct RunningStage {
    pub shutdown: Shutdown,
    runner: tokio::task::JoinHandle<Result<mrrec_stream::RunReport, mrrec_stream::StreamError>>,
    follower: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl RunningStage {
    /// Runs until SIGINT/SIGTERM (then drains) or until the stage stops by itself.
    pub async fn until_signal(self) -> Result<mrrec_stream::RunReport> {
        let signal = Shutdown::new();
        signal.trigger_on_signals();
        self.until(signal).await
    }

    /// Runs until `stop` is triggered (then drains) or until the stage
    /// stops by itself.
    pub async fn until(mut self, stop: Shutdown) -> Result<mrrec_stream::RunReport> {
        let finished = tokio::select! {
            _ = stop.wait() => None,
            result = &mut self.runner => Some(result),
        };
        self.shutdown.trigger();
        if let Some(follower) = self.follower {
            follower.await??;
        }
        match finished {
            Some(result) => Ok(result??),
            None => Ok(self.runner.await??),
        }
    }

    pub async fn stop(self) -> Result<mrrec_stream::RunReport> {
        self.shutdown.trigger();
        if let Some(follower) = self.follower {
            follower.await??;
        }
        Ok(self.runner.await??)
    }
}

/// Starts the stage over `memory` on `clients`.
pub async fn start<S: KvStore + 'static>(
    config: &Config,
    clients: &KafkaClients,
    memory: MemoryStore<S>,
    follow: bool,
) -> Result<RunningStage> {
    let (llm, target) = open_llm(config).await?;
    // Polling every few ms costs CPU that the in-process broker shares with
    // the policy on the same cores; only a real broker gets the fast path.
    let request_path = if config.kafka.is_embedded() {
        clients.clone()
    } else {
        mrrec_recommend::low_latency(clients)
    };
    let stage = mrrec_recommend::open_stage(config, &request_path, llm, memory).await?;
    let shutdown = Shutdown::new();
    // A pinned version (llm.model_dir, a rollback) stays pinned.
    let pinned = !config.llm.model_dir.is_empty();
    let follower = match target {
        Some(target) if follow && !pinned => {
            let clients = clients.clone();
            let prefix = config.topics.prefix.clone();
            let stop = shutdown.clone();
            let policy_dir = config.policy.dir.clone();
            Some(tokio::spawn(async move {
                mrrec_llm::follow_policy_topic(
                    &clients,
                    &prefix,
                    mrrec_recommend::STAGE,
                    &policy_dir,
                    target,
                    stop,
                )
                .await
            }))
        }
        _ => None,
    };
    let runner = StageRunner::new(
        request_path,
        mrrec_recommend::runner_settings(config),
        stage,
    );
    let runner = tokio::spawn(runner.run(shutdown.clone()));
    Ok(RunningStage {
        shutdown,
        runner,
        follower,
    })
}

/// `mrrec run --stage recommend`.
pub async fn run_stage(config: &Config) -> Result<()> {
    super::run::start_metrics(config)?;
    let bootstrap = Bootstrap::resolve(config).context("starting the broker connection")?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    let memory = super::store::open(config).await?;
    // The in-process broker is private to this process: nothing could announce to it.
    let follow = !config.kafka.is_embedded();
    let running = start(config, &clients, memory, follow).await?;
    let report = running.until_signal().await?;
    eprintln!(
        "recommend stopped: {} requests answered, {} dead-lettered",
        report.processed, report.dead_lettered
    );
    Ok(())
}

/// `mrrec recommend --user U [--query Q] [--k K]`: one request through the
/// topics. With `kafka.brokers = embedded` the stage runs in this process.
pub async fn ask(
    config: &Config,
    user: &str,
    query: Option<&str>,
    k: u32,
    wait: Duration,
) -> Result<()> {
    let bootstrap = Bootstrap::resolve(config).context("starting the broker connection")?;
    let clients = KafkaClients::from_config(config, &bootstrap);
    let memory = super::store::open(config).await?;
    let running = if config.kafka.is_embedded() {
        Some(start(config, &clients, memory.clone(), false).await?)
    } else {
        None
    };
    let client = RecommendClient::connect(&clients, &config.topics.prefix).await?;
    let request = Request {
        request_id: format!("cli-{}-{}", std::process::id(), mrrec_stream::now_ms()),
        user_id: user.to_owned(),
        query: query.map(str::to_owned),
        k,
        exclude_seen: true,
        ts: mrrec_stream::now_ms(),
    };
    let answer = client.ask(&request, wait).await;
    if let Some(running) = running {
        running.stop().await?;
    }
    let response = answer?.response;
    print_response(&response, &memory).await?;
    if let Some(error) = &response.error {
        anyhow::bail!("the request was answered with an error: {error}");
    }
    Ok(())
}

async fn print_response(response: &Response, memory: &MemoryStore<AnyStore>) -> Result<()> {
    let ids: Vec<String> = response.items.iter().map(|i| i.item_id.clone()).collect();
    let titles = memory.load_items(&ids).await.unwrap_or_default();
    println!(
        "request {} for user {} · policy v{:04} · {:.1} ms",
        response.request_id, response.user_id, response.policy_version, response.latency_ms
    );
    println!("profile: {}", response.profile);
    println!("items:");
    for (rank, item) in response.items.iter().enumerate() {
        let title = titles
            .get(&item.item_id)
            .map(|i| i.title.as_str())
            .unwrap_or("(not in the catalog)");
        println!(
            "  {:>2}. {:<8} {:<50} {:.4}",
            rank + 1,
            item.item_id,
            title,
            item.score
        );
    }
    println!("trace:");
    for step in &response.steps {
        let kind = step.kind.as_str();
        if step.memory_ids.is_empty() {
            println!("  {kind:<8} {}", step.text);
        } else {
            println!("  {kind:<8} [{}] {}", step.memory_ids.join(", "), step.text);
        }
    }
    if !response.memory_ids.is_empty() {
        println!("memory used: {}", response.memory_ids.join(", "));
    }
    Ok(())
}
