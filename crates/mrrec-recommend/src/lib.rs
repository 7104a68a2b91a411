//! The recommend stage (DESIGN §4). [`Recommender`] answers one request:
//! it reads the user's profile and state, gives the agent the request, the
//! global memory of the categories it names and the profile, lets the policy
//! retrieve from the user's memory index, and ranks the whole catalog with
//! the ideal item profile it writes (BM25 fused with co-occurrence and
//! popularity, seen items left out). [`RecommendStage`] runs it over
//! `mrrec.requests` with bounded concurrency and a deadline per request,
//! publishing responses and every sampled trajectory. [`start`] runs it in
//! this process with the configured policy and its follower
//! ([`RunningRecommend`]).

mod client;
mod recommender;
mod running;
pub mod shard;
mod stage;
mod tokens;

pub use client::{ClientError, Received, RecommendClient};
pub use mrrec_rank::{Cited, RankSettings, Ranker};
pub use recommender::{trajectory_id, Answer, MemorySearch, RecommendError, Recommender};
pub use running::{start, RunningError, RunningRecommend};
pub use shard::{MemoryShard, ShardReport};
pub use stage::{describe_metrics, Incoming, RecommendStage, StageTotals, TOTALS};
pub use tokens::{TokenizerLocator, Tokenizers};

use mrrec_agent::AgentSettings;
use mrrec_config::Config;
use mrrec_llm::Sampling;
use mrrec_messages::Topic;
use std::time::Duration;

/// Stage name (group id suffix, metric label, dead-letter stage).
pub const STAGE: &str = "recommend";

/// Everything the recommender needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct RecommendSettings {
    pub agent: AgentSettings,
    /// Trajectories sampled per request (G).
    pub group_size: usize,
    /// `agent.use_memory`: false hides all memory from the policy.
    pub use_memory: bool,
    pub timeout: Duration,
    pub concurrency: usize,
    /// How the answer's profile and citations rank the catalog.
    pub rank: RankSettings,
}

impl RecommendSettings {
    pub fn from_config(config: &Config) -> Self {
        let a = &config.agent;
        let r = &config.recommend;
        Self {
            agent: AgentSettings {
                max_steps: a.max_steps,
                min_steps: a.min_steps,
                memory_per_step: a.memory_per_step as usize,
                max_think_chars: a.max_think_chars as usize,
                max_query_chars: a.max_query_chars as usize,
                max_profile_chars: a.max_profile_chars as usize,
                max_answer_ids: AgentSettings::default().max_answer_ids,
                max_input_chars: a.max_input_chars as usize,
                sampling: Sampling {
                    temperature: a.temperature,
                    top_p: a.top_p,
                    max_tokens: a.max_turn_tokens as usize,
                },
            },
            group_size: a.group_size as usize,
            use_memory: a.use_memory,
            timeout: Duration::from_millis(r.timeout_ms),
            concurrency: r.concurrency as usize,
            rank: RankSettings::from_config(config),
        }
    }
}

/// Runner settings of the stage: small batches (a request should not wait
/// for company) of at most `recommend.concurrency` requests.
pub fn runner_settings(config: &Config) -> mrrec_stream::RunnerSettings {
    let mut settings = mrrec_stream::RunnerSettings::from_config(config, STAGE, &[Topic::Requests]);
    settings.batch_max_records = config.recommend.concurrency as usize;
    settings.batch_max_wait = Duration::from_millis(config.recommend.batch_max_ms);
    settings
}

/// Clients for the request path: fetches return after at most 5 ms instead
/// of librdkafka's 500 ms default, and producers send at once (no linger).
/// A broker that honours `fetch.min.bytes` answers a fetch as soon as a
/// record arrives, but tansu and the mock cluster wait out
/// `fetch.wait.max.ms`, which would add up to half a second per hop. The
/// price is more fetch requests while idle. A user's own values in
/// `kafka.properties` win.
pub fn low_latency(clients: &mrrec_stream::KafkaClients) -> mrrec_stream::KafkaClients {
    clients.with_default_properties(&[("fetch.wait.max.ms", "5"), ("linger.ms", "0")])
}

/// Opening the stage failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the index in {path}: {source}")]
    Index {
        path: String,
        source: mrrec_index::IndexError,
    },
    #[error("creating the producer: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("recommend.memory_index = \"partitions\": {0}")]
    Shard(String),
}

/// The stage over `memory` and the item index under `index.path` (opened
/// read-only: a distill stage writes it), answering with `llm`. Memory is
/// searched in distill's index beside it, or, with `recommend.memory_index
/// = "partitions"`, in this instance's own shard (see [`shard`]).
pub async fn open_stage<S: mrrec_store::KvStore>(
    config: &Config,
    clients: &mrrec_stream::KafkaClients,
    llm: std::sync::Arc<dyn mrrec_llm::Llm>,
    memory: mrrec_memory::MemoryStore<S>,
) -> Result<RecommendStage<S>, OpenError> {
    let open_error = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| OpenError::Index { path, source }
    };
    let memory_search: MemorySearch = match config.recommend.memory_index {
        mrrec_config::MemoryIndexMode::Shared => {
            let memory_dir = config.index.path.join("memory");
            std::sync::Arc::new(
                mrrec_index::MemoryIndex::open_read_only(&memory_dir)
                    .map_err(open_error(&memory_dir))?,
            )
            .into()
        }
        mrrec_config::MemoryIndexMode::Partitions => {
            let topic = mrrec_messages::Topic::Requests.name(&config.topics.prefix);
            let partitions = mrrec_stream::partition_count(clients, &topic)
                .await
                .map_err(|e| OpenError::Shard(format!("reading {topic}'s partitions: {e}")))?;
            if partitions == 0 {
                return Err(OpenError::Shard(format!(
                    "{topic} does not exist (run `mrrec topics create`)"
                )));
            }
            let shard =
                MemoryShard::new(partitions as i32).map_err(|e| OpenError::Shard(e.to_string()))?;
            std::sync::Arc::new(shard).into()
        }
    };
    let items_dir = config.index.path.join("items");
    let items =
        mrrec_index::ItemIndex::open_read_only(&items_dir).map_err(open_error(&items_dir))?;
    let model_dir =
        (!config.llm.model_dir.is_empty()).then(|| std::path::PathBuf::from(&config.llm.model_dir));
    let recommender = Recommender::new(
        llm,
        memory,
        memory_search,
        std::sync::Arc::new(items),
        RecommendSettings::from_config(config),
        Tokenizers::from_dirs(model_dir, config.policy.dir.clone()),
    );
    let publisher = mrrec_stream::Publisher::new(clients, STAGE)?;
    Ok(RecommendStage::new(
        recommender,
        publisher,
        &config.topics.prefix,
    ))
}
