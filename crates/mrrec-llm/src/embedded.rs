//! The embedded backend: mistral.rs in this process (F32 on CPU; CUDA with the
//! `cuda` feature), serving one policy version at a time with hot swap.
//!
//! Swap protocol: the new version is checked and loaded under a new model id
//! beside the old one, made the default, and only then becomes the version
//! new calls take. Every call holds a lease on the version it started with;
//! the old model is removed once its last lease is returned, so no call ever
//! meets a model that has gone.

use crate::{validate_request, Completion, Generation, GenerationRequest, Llm, LlmError, Role};
use async_trait::async_trait;
use mistralrs::core::{MistralRs, MistralRsBuilder, TokenSource};
use mistralrs::{
    AnyModelBuilder, Constraint, Model, ModelDType, RequestBuilder, SamplingParams,
    TextMessageRole, TextModelBuilder,
};
use mrrec_policy::check_model_dir;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Sequences the scheduler batches together.
    pub max_num_seqs: usize,
}

impl Default for EngineOptions {
    /// One sequence at a time: mistral.rs 0.8.1 panics when it batches
    /// sequences whose KV caches have grown to different sizes (see
    /// `llm.max_batch_sequences`).
    fn default() -> Self {
        Self { max_num_seqs: 1 }
    }
}

impl EngineOptions {
    pub fn from_config(config: &mrrec_config::Config) -> Self {
        Self {
            max_num_seqs: config.llm.max_batch_sequences.max(1) as usize,
        }
    }
}

/// The version a call runs on; the model stays loaded while any lease on it lives.
#[derive(Debug)]
pub struct Loaded {
    pub model_id: String,
    pub version: u32,
    pub dir: PathBuf,
}

/// A lease on the serving version (see the module docs).
pub type PolicyLease = Arc<Loaded>;

/// mistral.rs in process.
pub struct EmbeddedLlm {
    runner: Arc<MistralRs>,
    model: Arc<Model>,
    current: RwLock<PolicyLease>,
    swap: tokio::sync::Mutex<()>,
    options: EngineOptions,
    loads: AtomicU64,
}

impl std::fmt::Debug for EmbeddedLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedLlm")
            .field("current", &self.lease())
            .finish()
    }
}

type BuiltPipeline = (
    Arc<tokio::sync::Mutex<dyn mistralrs::core::Pipeline>>,
    mistralrs::SchedulerConfig,
    mistralrs::core::AddModelConfig,
);

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .map_or_else(
                || "mistral.rs panicked".to_owned(),
                |m| format!("mistral.rs panicked: {m}"),
            ),
        Err(e) => e.to_string(),
    }
}

/// Checks `dir`, then loads it with mistral.rs (on a task of its own, so a
/// panic inside the engine's loader becomes an error, not a crash).
async fn build_pipeline(
    dir: &Path,
    options: &EngineOptions,
) -> Result<(BuiltPipeline, u32), LlmError> {
    let info = check_model_dir(dir)?;
    let mut builder = TextModelBuilder::new(dir.display().to_string())
        .with_token_source(TokenSource::None)
        .with_dtype(ModelDType::F32)
        .with_max_num_seqs(options.max_num_seqs);
    if !cfg!(feature = "cuda") {
        // No prefix cache on CPU: mistral.rs 0.8.1 counts only caches on a
        // non-CPU device against its limit (`PrefixCacheManagerV2::
        // evict_caches`), so on CPU it keeps every finished sequence's KV
        // cache for good. Measured on ML-100K: 5.4 GB peak with it, 1.5 GB
        // without, for 119 → 146 ms per answer (docs/BENCHMARKS.md).
        builder = builder.with_force_cpu().with_prefix_cache_n(None);
    }
    let load_error = |message: String| LlmError::Load {
        dir: dir.to_owned(),
        message,
    };
    let built = tokio::spawn(async move { AnyModelBuilder::from(builder).build_pipeline().await })
        .await
        .map_err(|e| load_error(panic_message(e)))?
        .map_err(|e| load_error(format!("{e:#}")))?;
    Ok((built, info.version.unwrap_or(0)))
}

fn sampling_params(request: &GenerationRequest) -> SamplingParams {
    let s = &request.sampling;
    let mut params = SamplingParams {
        max_len: Some(s.max_tokens),
        n_choices: request.n,
        ..SamplingParams::neutral()
    };
    if s.temperature == 0.0 {
        params.top_k = Some(1);
    } else {
        params.temperature = Some(s.temperature);
        params.top_p = (s.top_p < 1.0).then_some(s.top_p);
    }
    params
}

/// The mistral.rs request for `request` (shared with the bench's bare call).
pub fn request_builder(request: &GenerationRequest) -> RequestBuilder {
    let mut builder = RequestBuilder::new();
    for message in &request.messages {
        let role = match message.role {
            Role::System => TextMessageRole::System,
            Role::User => TextMessageRole::User,
            Role::Assistant => TextMessageRole::Assistant,
        };
        builder = builder.add_message(role, &message.content);
    }
    builder = builder.set_sampling(sampling_params(request));
    if let Some(grammar) = &request.grammar {
        builder = builder.set_constraint(Constraint::Lark(grammar.clone()));
    }
    builder
}

impl EmbeddedLlm {
    /// Checks and loads the model directory `dir`.
    pub async fn open(dir: &Path, options: EngineOptions) -> Result<Self, LlmError> {
        let ((pipeline, scheduler, config), version) = build_pipeline(dir, &options).await?;
        let model_id = format!("policy-v{version:04}-0");
        let engine = &config.engine_config;
        let mut runner = MistralRsBuilder::new(
            pipeline,
            scheduler,
            engine.throughput_logging_enabled,
            engine.search_embedding_model,
        )
        .with_model_id(model_id.clone())
        .with_no_kv_cache(engine.no_kv_cache)
        .with_no_prefix_cache(engine.no_prefix_cache)
        .with_prefix_cache_n(engine.prefix_cache_n);
        if let Some(loader) = config.loader_config.clone() {
            runner = runner.with_loader_config(loader);
        }
        let runner = runner.build().await;
        crate::events::PolicyLoaded { version, dir }.emit();
        Ok(Self {
            model: Arc::new(Model::new(runner.clone())),
            runner,
            current: RwLock::new(Arc::new(Loaded {
                model_id,
                version,
                dir: dir.to_owned(),
            })),
            swap: tokio::sync::Mutex::new(()),
            options,
            loads: AtomicU64::new(1),
        })
    }

    /// A lease on the version new calls run on.
    pub fn lease(&self) -> PolicyLease {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn serving_version(&self) -> u32 {
        self.lease().version
    }

    /// The engine, for `llm serve` (which routes HTTP calls to the default model).
    pub fn runner(&self) -> &Arc<MistralRs> {
        &self.runner
    }

    /// The mistral.rs SDK handle, for measuring a bare call against ours.
    pub fn sdk_model(&self) -> &Model {
        &self.model
    }

    /// Loads `dir` beside the serving version and switches to it; the old
    /// version is removed once its in-flight calls finish. On any error the
    /// serving version stays as it was. Returns the new version.
    pub async fn switch_to(&self, dir: &Path) -> Result<u32, LlmError> {
        let _one_swap_at_a_time = self.swap.lock().await;
        let started = Instant::now();
        let ((pipeline, scheduler, config), version) = build_pipeline(dir, &self.options).await?;
        let n = self.loads.fetch_add(1, Ordering::Relaxed);
        let model_id = format!("policy-v{version:04}-{n}");
        let load_error = |message: String| LlmError::Load {
            dir: dir.to_owned(),
            message,
        };
        self.runner
            .add_model(model_id.clone(), pipeline, scheduler, config)
            .await
            .map_err(load_error)?;
        if let Err(e) = self.runner.set_default_model_id(&model_id) {
            let (runner, id) = (self.runner.clone(), model_id.clone());
            let _ = tokio::task::spawn_blocking(move || runner.remove_model(&id)).await;
            return Err(load_error(e));
        }
        let old = {
            let mut current = self
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::replace(
                &mut *current,
                Arc::new(Loaded {
                    model_id,
                    version,
                    dir: dir.to_owned(),
                }),
            )
        };
        crate::events::PolicySwitched {
            from: old.version,
            to: version,
            load_ms: started.elapsed().as_millis() as u64,
        }
        .emit();
        let runner = self.runner.clone();
        tokio::spawn(async move {
            while Arc::strong_count(&old) > 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // remove_model blocks (it sends the engine a terminate request).
            let model_id = old.model_id.clone();
            let removed = tokio::task::spawn_blocking(move || runner.remove_model(&model_id)).await;
            match removed {
                Ok(Ok(())) => tracing::info!(version = old.version, "old policy unloaded"),
                Ok(Err(e)) => {
                    tracing::warn!(version = old.version, error = %e, "unloading old policy")
                }
                Err(e) => tracing::warn!(version = old.version, error = %e, "unloading old policy"),
            }
        });
        Ok(version)
    }

    /// Model ids the engine holds now (the serving one, and any still draining).
    pub fn loaded_models(&self) -> Vec<String> {
        self.runner.list_models().unwrap_or_default()
    }
}

#[async_trait]
impl Llm for EmbeddedLlm {
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        validate_request(&request)?;
        let lease = self.lease();
        let started = Instant::now();
        // The call runs on its own task: mistral.rs's engine thread panics if
        // a request's response channel closes early, which is what dropping
        // this future (a caller's timeout) would do. The task keeps the
        // channel (and the lease) until the engine is done with the request.
        let model = self.model.clone();
        let builder = request_builder(&request);
        let task_lease = lease.clone();
        let response = tokio::spawn(async move {
            model
                .send_chat_request_with_model(builder, Some(&task_lease.model_id))
                .await
        })
        .await
        .map_err(|e| LlmError::Engine(format!("engine call: {e}")))?
        .map_err(|e| LlmError::Engine(e.to_string()))?;
        let completions = response
            .choices
            .into_iter()
            .map(|choice| Completion {
                text: choice.message.content.unwrap_or_default(),
                finish_reason: choice.finish_reason,
            })
            .collect();
        Ok(Generation {
            completions,
            policy_version: lease.version,
            model: lease.dir.display().to_string(),
            prompt_tokens: response.usage.prompt_tokens,
            completion_tokens: response.usage.completion_tokens,
            elapsed: started.elapsed(),
        })
    }

    fn serving_version(&self) -> Option<u32> {
        Some(EmbeddedLlm::serving_version(self))
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}
