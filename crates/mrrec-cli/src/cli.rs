//! The command tree of DESIGN §10.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "mrrec",
    version,
    about = "Streaming LLM recommender: memory + reasoning + RL over Kafka",
    long_about = None
)]
pub struct Cli {
    /// Configuration file (TOML) layered over the embedded defaults; env
    /// MRREC__SECTION__KEY overrides both.
    #[arg(long, global = true, env = "MRREC_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log filter (RUST_LOG takes precedence), e.g. info, debug,
    /// mrrec_stream=debug. Default: warn for `demo` and `eval` (they print
    /// their own progress), info otherwise.
    #[arg(long, global = true)]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole loop in one process on embedded defaults.
    Demo {
        /// MovieLens-100K directory (otherwise a synthetic catalog).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Where the demo keeps its state: store and index (reset on every
        /// run) and policy versions (kept, so a second run starts warm).
        #[arg(long, default_value = "mrrec-demo")]
        dir: PathBuf,
        /// Seed of the synthetic world.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Run one stage, all stages, or a pipeline file.
    Run(RunArgs),
    /// Topic administration.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Load a dataset into the input topics.
    #[command(subcommand)]
    Load(LoadCommand),
    /// Inspect a user's memory.
    #[command(subcommand)]
    Memory(MemoryCommand),
    /// Send one request through the topics and print the response.
    Recommend {
        #[arg(long)]
        user: String,
        #[arg(long)]
        query: Option<String>,
        #[arg(long, default_value_t = 10)]
        k: u32,
        /// How long to wait for the response.
        #[arg(long, default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Policy model tools.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Serve the policy over mistral.rs's OpenAI-compatible HTTP API.
    #[command(subcommand)]
    Llm(LlmCommand),
    /// Run the RL trainer.
    Train {
        /// One training round, then exit.
        #[arg(long)]
        once: bool,
    },
    /// Measure recommendation quality (DESIGN §11, §13).
    Eval(EvalArgs),
    /// Benchmarks; the last stdout line is one JSON object.
    Bench {
        #[arg(value_enum)]
        which: BenchKind,
        /// `bench recommend`: only the LLM call, ours vs. bare mistral.rs.
        #[arg(long)]
        llm_only: bool,
        /// `bench ingest`: events to produce and consume; `bench reopen`:
        /// ratings distilled into its store.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// `bench ingest`: soak instead — stream ratings into distill for
        /// this long (e.g. 10m, 90s) and report resident memory over time.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<std::time::Duration>,
        /// `bench ingest --duration`: users the ratings come from.
        #[arg(long, default_value_t = 50_000)]
        users: usize,
        /// `bench retrieve`: memory entries in the index.
        #[arg(long, default_value_t = 1_000_000)]
        entries: usize,
        /// `bench retrieve`: searches to time.
        #[arg(long, default_value_t = 5_000)]
        queries: usize,
        /// Seed of the synthetic data.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// `bench recommend --llm-only`: calls to time per side.
        #[arg(long, default_value_t = 200)]
        calls: usize,
        /// `bench recommend`: requests per second, sent open-loop.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        /// `bench recommend`: requests to time.
        #[arg(long, default_value_t = 600)]
        requests: usize,
        /// `bench recommend`: untimed requests first, one at a time.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// `bench recommend`: retrieve steps per trajectory (overrides agent.max_steps).
        #[arg(long, default_value_t = 2)]
        max_steps: u32,
        /// `bench train`: rewarded trajectories in the timed update.
        #[arg(long, default_value_t = 1000)]
        trajectories: usize,
        /// `bench learn`: the MovieLens-100K directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// `bench learn`: training rounds (policy versions to publish).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// `bench learn`: users whose validation requests train the policy.
        #[arg(long, default_value_t = 200)]
        train_users: usize,
        /// `bench learn`: held-out users that measure every version.
        #[arg(long, default_value_t = 100)]
        heldout_users: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageName {
    Distill,
    Recommend,
    Reward,
    Train,
    All,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct RunArgs {
    /// Which stage to run.
    #[arg(long, value_enum)]
    pub stage: Option<StageName>,
    /// A pipeline definition (pipelines/*.toml).
    #[arg(long)]
    pub pipeline: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every mrrec topic (idempotent).
    Create,
}

#[derive(Debug, Subcommand)]
pub enum LoadCommand {
    /// MovieLens-100K from its directory (u.item, u.data, u.user).
    #[command(name = "ml-100k")]
    Ml100k {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Items and events as JSON lines (DESIGN §2).
    Jsonl {
        #[arg(long)]
        items: PathBuf,
        #[arg(long)]
        events: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Print every memory entry of a user.
    Show {
        #[arg(long)]
        user: String,
    },
    /// Search a user's memory (BM25 over all levels).
    Search {
        #[arg(long)]
        user: String,
        #[arg(long)]
        query: String,
        /// How many entries to print.
        #[arg(long, default_value_t = 10)]
        k: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Build a policy model directory mistral.rs loads as it is: a byte-level
    /// BPE tokenizer trained on the catalog + protocol text, a small Llama
    /// config, seeded weights, the chat template.
    Init(ModelInitArgs),
}

#[derive(Debug, Args)]
pub struct ModelInitArgs {
    /// Directory to create (must not exist or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Item catalog as DESIGN §2 JSON lines (titles, categories, descriptions
    /// go into the tokenizer's training text).
    #[arg(long)]
    pub catalog: Option<PathBuf>,
    /// MovieLens-100K directory, as a catalog (u.item).
    #[arg(long, conflicts_with = "catalog")]
    pub data_dir: Option<PathBuf>,
    /// Target vocabulary size.
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    #[arg(long, default_value_t = 128)]
    pub hidden_size: usize,
    #[arg(long, default_value_t = 512)]
    pub intermediate_size: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than --heads).
    #[arg(long, default_value_t = 4)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 4096)]
    pub max_positions: usize,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Warm start: imitate this many teacher trajectories built from the
    /// catalog (0: seeded weights only). Needs a catalog with categories.
    #[arg(long, default_value_t = 0)]
    pub sft: usize,
    /// Passes over the teacher trajectories.
    #[arg(long, default_value_t = 3)]
    pub sft_epochs: usize,
    /// Do nothing (and succeed) when --out already holds a policy, or its
    /// parent directory already has a published version: for init
    /// containers that run on every start.
    #[arg(long)]
    pub if_missing: bool,
}

#[derive(Debug, Subcommand)]
pub enum LlmCommand {
    /// Serve the current policy on mistral.rs's OpenAI-compatible routes,
    /// following `mrrec.policy` to hot-swap new versions.
    Serve {
        /// Address to listen on (default: host and port of llm.url).
        #[arg(long)]
        listen: Option<String>,
        /// Do not follow mrrec.policy (serve the starting version only).
        #[arg(long)]
        no_follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// MovieLens-100K directory (DESIGN §11's protocol).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Or your own data (DESIGN §13): items, events and requests as JSON
    /// lines, each request with `target_item_id` and `split` (valid | test).
    #[arg(long)]
    pub items: Option<PathBuf>,
    #[arg(long)]
    pub events: Option<PathBuf>,
    #[arg(long)]
    pub requests: Option<PathBuf>,
    /// Write the report as JSON (DESIGN §12).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Draw the learning curve (validation reward and test NDCG@10 per
    /// policy version) to this PNG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// RL rounds on validation targets.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Users whose validation requests each round learns from.
    #[arg(long, default_value_t = 150)]
    pub train_users: usize,
    /// Where eval keeps its state (store, index, policy versions); reset on every run.
    #[arg(long, default_value = "mrrec-eval")]
    pub dir: PathBuf,
    /// Warm start: the `rule` policy answers the validation requests of this
    /// many users (the first by id), replayed in time, and the fresh policy
    /// imitates those trajectories; on data without validation requests,
    /// this many synthetic ones (0: no warm start). 500 keeps §14 within
    /// 30 minutes here (the rule's replay costs ~0.3 s a request).
    #[arg(long, default_value_t = 500)]
    pub sft: usize,
    /// Ranker tuning: the `rule` answers the validation requests of this
    /// many users (the first by id; the warm start's replay) under the
    /// configured ranker and, beside it, a few other settings (collaborative
    /// scoring and seeds, signal weights). Every row then runs the best one
    /// whose paired interval against the configured ranker lies above 0,
    /// else the configured one; the report's `ranker_tuning` shows them all.
    /// 0: the configured ranker, untried. Not with `--targets valid`.
    #[arg(long, default_value_t = 500)]
    pub tune_users: usize,
    /// Adds this many synthetic teacher trajectories (those of `model init
    /// --sft`: every category as likely as any other) to the rule's real
    /// ones, so that the warm start also sees the categories real requests
    /// seldom name. 0: the real ones alone.
    #[arg(long, default_value_t = 0)]
    pub sft_synthetic: usize,
    /// Warm start on the best of the rule's plans (expert iteration): the
    /// rule answers each teacher request with its four plans (category,
    /// cite, favourite, titles; DESIGN §4's rule, docs/LLM.md), the reward
    /// stage scores each against the validation target, and the policy
    /// imitates, per request, the plan that ranked the target best (the
    /// category plan, which the rule serves, on a tie). The teacher users'
    /// validation targets are then read: with `--targets valid` the
    /// comparison with the rule is also given over the other users.
    #[arg(long)]
    pub sft_plans: bool,
    /// Hidden size of the fresh policy (its MLP is 4 ×, one attention head
    /// per 32). 128 answers in ~0.3 s a request on two cores.
    #[arg(long, default_value_t = 128)]
    pub policy_hidden: usize,
    /// Layers of the fresh policy.
    #[arg(long, default_value_t = 2)]
    pub policy_layers: usize,
    /// Passes over them. On ML-100K's 19 genres 3 passes leave the policy
    /// answering "Drama"/"Comedy" to most requests; 6 make it follow the
    /// request (docs/TRAINING.md).
    #[arg(long, default_value_t = 6)]
    pub sft_epochs: usize,
    /// Which targets the rows score: `test` (the protocol's figures) or
    /// `valid`, for choosing settings (fusion weights, ranker changes)
    /// without looking at a test target. With `valid` no RL round runs: RL
    /// learns from those same targets.
    #[arg(long, value_enum, default_value_t = Targets::Test)]
    pub targets: Targets,
}

/// The targets `mrrec eval` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Targets {
    Valid,
    Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchKind {
    Ingest,
    Retrieve,
    /// A distill restart whose indexes are behind the store (another
    /// instance moved on): caught up against rebuilt, one run.
    Reopen,
    Recommend,
    Train,
    /// The RL loop on MovieLens-100K: held-out reward per policy version.
    Learn,
}

/// `"10m"`, `"90s"`, `"1h"` or plain seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with s, m or h (e.g. 10m)"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?}: the unit must be s, m or h")),
    };
    if seconds == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(std::time::Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
