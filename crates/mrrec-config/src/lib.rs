//! mrrec's configuration (DESIGN §9): typed sections, layered as
//! embedded defaults (`config/default.toml`) → `--config FILE` → environment
//! (`MRREC__SECTION__KEY`), then validated as a whole. Unknown keys are errors,
//! and every problem found is reported at once, each naming its key.

mod load;
pub mod pipeline;
mod validate;

pub use load::{ConfigError, ConfigIssue, DEFAULT_TOML, ENV_PREFIX};
pub use pipeline::{Pipeline, PipelineStage, StageKind};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub store: StoreConfig,
    pub index: IndexConfig,
    pub llm: LlmConfig,
    pub agent: AgentConfig,
    pub reward: RewardConfig,
    pub train: TrainConfig,
    pub policy: PolicyConfig,
    pub metrics: MetricsConfig,
    pub stream: StreamConfig,
    pub distill: DistillConfig,
    pub recommend: RecommendConfig,
}

/// The value of `kafka.brokers` that selects the in-process broker.
pub const EMBEDDED_BROKERS: &str = "embedded";

/// Where Kafka is and how to talk to it.
#[derive(Clone, Serialize, Deserialize)]
pub struct KafkaConfig {
    /// Bootstrap servers (`host:port,…`) or `embedded` for the in-process broker.
    pub brokers: String,
    /// Consumer group ids are `{group_prefix}{stage}`.
    pub group_prefix: String,
    /// librdkafka properties passed through unchanged (security settings, tuning).
    pub properties: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Whether the in-process broker is selected.
    pub fn is_embedded(&self) -> bool {
        self.brokers.trim() == EMBEDDED_BROKERS
    }
}

impl fmt::Debug for KafkaConfig {
    /// Property values may be secrets (SASL passwords, key passphrases): only names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_prefix", &self.group_prefix)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Topic naming and layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopicsConfig {
    /// Prefix of every topic name (`mrrec.`).
    pub prefix: String,
    /// Partitions per topic (mrrec.policy always has one).
    pub partitions: i32,
    /// Replication factor used by `mrrec topics create`.
    pub replication: i32,
}

/// Which memory store backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Redis,
    Embedded,
}

/// The memory store.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// Redis URL, for the redis backend: `redis://[:password@]host:port/db`,
    /// or `rediss://…` for TLS.
    pub url: String,
    /// With `rediss://`: a PEM file of the CA(s) that signed the server's
    /// certificate. Empty: the system's roots (or the bundle in `SSL_CERT_FILE`).
    #[serde(default)]
    pub ca_file: String,
    /// Directory of the embedded store.
    pub path: PathBuf,
}

impl fmt::Debug for StoreConfig {
    /// The URL may carry a password: it is shown without its userinfo.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("backend", &self.backend)
            .field("url", &redact_url(&self.url))
            .field("ca_file", &self.ca_file)
            .field("path", &self.path)
            .finish()
    }
}

/// `scheme://user:secret@host/…` → `scheme://***@host/…`, and the value of
/// a `pass`/`password` query parameter (`redis+unix:///sock?pass=…`) → `***`.
pub fn redact_url(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    };
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if ["pass", "password"].contains(&key.to_ascii_lowercase().as_str()) => {
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", query.join("&"));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

/// The tantivy indexes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexConfig {
    pub path: PathBuf,
}

/// Which LLM backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmBackend {
    Embedded,
    Http,
    /// DESIGN §4's `rule` policy: no model, no policy directory.
    Rule,
}

/// The policy LLM.
#[derive(Clone, Serialize, Deserialize)]
pub struct LlmConfig {
    pub backend: LlmBackend,
    /// Model directory; empty means the newest version under `policy.dir`.
    pub model_dir: String,
    /// OpenAI-compatible base URL, for the http backend.
    pub url: String,
    /// Sequences the embedded engine decodes in one batch. mistral.rs 0.8.1
    /// panics (and its engine thread dies) when it batches a sequence whose
    /// KV cache grew past 512 tokens with one whose did not, so the default
    /// is 1; on CPU batching measured no faster anyway.
    pub max_batch_sequences: u32,
    /// Bearer token `llm serve` requires and the http backend sends (DESIGN
    /// §9); empty: none. A secret: never logged or shown.
    #[serde(default)]
    pub api_key: String,
}

impl fmt::Debug for LlmConfig {
    /// The API key is a secret: only whether one is set is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmConfig")
            .field("backend", &self.backend)
            .field("model_dir", &self.model_dir)
            .field("url", &self.url)
            .field("max_batch_sequences", &self.max_batch_sequences)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "***" })
            .finish()
    }
}

/// The recommendation agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Most retrieve steps per trajectory.
    pub max_steps: u32,
    /// Retrieve steps the policy must take before it may answer.
    pub min_steps: u32,
    /// Trajectories sampled per request.
    pub group_size: u32,
    /// Sampling temperature; 0 is greedy (must be > 0 when group_size > 1).
    pub temperature: f64,
    /// Nucleus sampling; 1 disables it.
    pub top_p: f64,
    /// Memory entries inserted per retrieve step (MR.Rec: 3).
    pub memory_per_step: u32,
    /// Longest `<think>` text, in characters.
    pub max_think_chars: u32,
    /// Longest `<retrieve>` query, in characters.
    pub max_query_chars: u32,
    /// Longest ideal item profile, in characters.
    pub max_profile_chars: u32,
    /// Most tokens the policy may write per turn.
    pub max_turn_tokens: u32,
    /// Longest piece of user text (query, memory entry) put into a prompt, in characters.
    pub max_input_chars: u32,
    /// Whether the policy sees memory. `false` answers every retrieve with
    /// no memory and leaves global memory out of the prompt: the
    /// `pipeline_no_memory` ablation of `mrrec eval` (DESIGN §11).
    pub use_memory: bool,
}

/// The recommendation stage: concurrency, deadlines and the item ranking.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecommendConfig {
    /// Requests answered at once by one instance (backpressure on the LLM).
    pub concurrency: u32,
    /// Deadline of one request's agent run; after it, the fallback answers.
    pub timeout_ms: u64,
    /// Longest a batch of requests waits for more before it starts.
    pub batch_max_ms: u64,
    /// Candidates each ranking signal contributes before fusion.
    pub candidates: u32,
    /// Recent positive items whose co-occurrences form the collaborative signal.
    pub recent_items: u32,
    /// Fusion weight of BM25 (profile against the catalog).
    pub weight_bm25: f64,
    /// Fusion weight of the catalog categories the profile names (items
    /// filed under them).
    pub weight_category: f64,
    /// Fusion weight of co-occurrence with the user's recent positive items.
    pub weight_collaborative: f64,
    /// How co-occurrence counts become the collaborative signal.
    pub collaborative: CollaborativeScore,
    /// How the signals are put on one scale before the weighted sum.
    pub fusion: Fusion,
    /// Fusion weight of popularity.
    pub weight_popularity: f64,
    /// How often the cached catalog facts (categories, popularity) are re-read.
    pub refresh_ms: u64,
    /// Where retrieve steps search the user's memory.
    pub memory_index: MemoryIndexMode,
}

/// How the ranker scores co-occurrence with the user's recent positive items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollaborativeScore {
    /// Summed counts (popular pairs weigh most).
    Count,
    /// Item-kNN's cosine: each count divided by `sqrt` of both items'
    /// popularity (positive interactions).
    Cosine,
}

/// How the ranker puts its signals on one scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Each signal divided by its best candidate's score.
    Max,
    /// Each signal standardised over the candidates (z-scores).
    Zscore,
}

/// Which memory index a recommend instance searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryIndexMode {
    /// The index distill writes under `index.path/memory` (one distill
    /// instance, recommend on the same machine or a shared volume).
    Shared,
    /// The instance's own in-memory index of the users whose requests it
    /// owns, rebuilt from the store when partitions are assigned and
    /// refreshed from it before each batch (any number of instances).
    Partitions,
}

/// The reward join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RewardConfig {
    /// Attribution window after a request, in milliseconds.
    pub window_ms: u64,
}

/// When and how the trainer runs (GRPO, DESIGN §6).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainConfig {
    /// A round starts after this many new rewards …
    pub every_rewards: u64,
    /// … or this long after the first reward of the round, whichever is first.
    pub every_ms: u64,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// PPO clip ε on the probability ratio.
    pub clip_epsilon: f64,
    /// Weight of the KL penalty to the round's starting policy (0: none).
    pub kl_coef: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip.
    pub max_grad_norm: f64,
    /// Passes over a round's trajectories.
    pub epochs: u32,
    /// Trajectories per optimizer step.
    pub minibatch: u32,
    /// Padded tokens per forward pass (bounds the trainer's memory).
    pub chunk_tokens: u32,
    /// Share of request groups held out to judge a candidate version.
    pub holdout_fraction: f64,
    /// How far the held-out reward estimate may fall, beyond one standard
    /// error of the estimate, before a candidate is rejected (0: no further
    /// allowance).
    pub max_regression: f64,
    /// Longest trajectory, in tokens, trained on (longer ones are skipped).
    pub max_tokens: u32,
}

/// Policy versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyConfig {
    pub dir: PathBuf,
}

/// Prometheus endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsConfig {
    /// `host:port`, or empty to disable.
    pub listen: String,
}

/// The stream runtime shared by every stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamConfig {
    pub batch_max_records: usize,
    /// A batch also closes once its payloads and keys reach this many bytes
    /// (the one record that crosses it stays in): what a batch holds in
    /// memory is bounded however large its records are.
    pub batch_max_bytes: usize,
    pub batch_max_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

/// The distill stage. It batches more than the runtime default: its cost
/// per batch grows with the users a batch touches, not with its records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistillConfig {
    /// Records per batch (overrides `stream.batch_max_records` for distill).
    pub batch_max_records: usize,
    /// Longest a batch stays open (overrides `stream.batch_max_ms` for distill).
    pub batch_max_ms: u64,
    /// A batch also closes once its records carry this many distinct keys
    /// (events are keyed by user; a keyless record counts as its own): what
    /// one batch holds is about this many user states (plus users whose
    /// waiting events an item in it links).
    pub batch_max_users: usize,
    /// Memory for user states and catalog items kept between batches, in MiB
    /// of their stored JSON (0 disables the cache).
    pub cache_mb: u64,
    /// Level-1 (behaviour) entries kept per user: past this many, the oldest
    /// (by event time) are removed from the store and the index. Aggregates
    /// (level 2 and 3, global memory) keep counting every event.
    pub max_behavior_entries: usize,
    /// A liked item counts as chosen with this many of the user's latest
    /// liked items (co-occurrence; 1–20).
    pub co_occurrence_window: usize,
    /// Count each such pair both ways (symmetric, as item-kNN), not only
    /// the later item after the earlier.
    pub co_occurrence_both_ways: bool,
}

impl DistillConfig {
    /// `cache_mb` in bytes.
    pub fn cache_bytes(&self) -> usize {
        (self.cache_mb as usize).saturating_mul(1024 * 1024)
    }
}

impl Config {
    /// Embedded defaults, then `file` if given, then `MRREC__…` variables of the process.
    pub fn load(file: Option<&std::path::Path>) -> Result<Config, ConfigError> {
        load::load(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        file: Option<&std::path::Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        load::load(file, env)
    }

    /// The embedded defaults alone.
    pub fn defaults() -> Config {
        load::load(None, std::iter::empty()).expect("config/default.toml is valid")
    }

    /// Parses a TOML document layered over the defaults (no environment).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        load::load_str(text, "<string>", std::iter::empty())
    }

    /// The consumer group id of `stage`.
    pub fn group_id(&self, stage: &str) -> String {
        format!("{}{stage}", self.kafka.group_prefix)
    }
}

#[cfg(test)]
mod tests;
