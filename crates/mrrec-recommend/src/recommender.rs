//! Answering one request: the user's memory, the agent's trajectories, the
//! fused ranking, the response and the logged trajectories. No Kafka here.

use crate::shard::MemoryShard;
use crate::tokens::Tokenizers;
use crate::RecommendSettings;
use async_trait::async_trait;
use mrrec_agent::{
    run_agent, run_group, AgentInput, AgentOutcome, GroupOutcome, MemoryHit, MemorySource,
};
use mrrec_index::{ItemIndex, MemoryIndex};
use mrrec_llm::Llm;
use mrrec_memory::{fingerprint, Keyspace, Level, MemoryStore, UserState};
use mrrec_messages::{Request, Response, Step, StepKind, Trajectory};
use mrrec_rank::{Cited, Ranker};
use mrrec_store::{KvStore, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Global memory entries put into a prompt (each costs prefill on every turn).
const GLOBAL_ENTRIES: usize = 1;

/// Why a request could not be answered at all.
#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    /// The store is down or busy: the whole batch is retried later.
    #[error("memory store: {0}")]
    Store(StoreError),
}

impl RecommendError {
    pub fn is_retryable(&self) -> bool {
        match self {
            RecommendError::Store(e) => e.is_retryable(),
        }
    }
}

/// What answering a request produced.
#[derive(Debug, Clone)]
pub struct Answer {
    pub response: Response,
    /// Every sampled trajectory (none when the policy was never reached).
    pub trajectories: Vec<Trajectory>,
    /// Time waiting for the LLM along the request's critical path.
    pub llm_time: Duration,
    /// Whether the served answer is the deterministic fallback.
    pub fallback: bool,
}

/// Where retrieve steps search a user's memory (`recommend.memory_index`).
#[derive(Clone)]
pub enum MemorySearch {
    /// The index distill writes (opened read-only).
    Shared(Arc<MemoryIndex>),
    /// This instance's partition-aligned shard.
    Shard(Arc<MemoryShard>),
}

impl From<Arc<MemoryIndex>> for MemorySearch {
    fn from(index: Arc<MemoryIndex>) -> Self {
        MemorySearch::Shared(index)
    }
}

impl From<Arc<MemoryShard>> for MemorySearch {
    fn from(shard: Arc<MemoryShard>) -> Self {
        MemorySearch::Shard(shard)
    }
}

/// Retrieve steps search the user's local memory (behavior records and
/// preference patterns) in the memory index; with `agent.use_memory =
/// false` they find nothing.
struct IndexMemory<'a> {
    search: &'a MemorySearch,
    enabled: bool,
}

#[async_trait]
impl MemorySource for IndexMemory<'_> {
    async fn search(&self, user: &str, query: &str, k: usize) -> Result<Vec<MemoryHit>, String> {
        if !self.enabled {
            return Ok(Vec::new());
        }
        let levels = [Level::Behavior, Level::Preference];
        match self.search {
            MemorySearch::Shared(index) => index.search(user, query, &levels, None, k),
            MemorySearch::Shard(shard) => shard.search(user, query, k),
        }
        .map(|hits| {
            hits.into_iter()
                .map(|hit| MemoryHit {
                    id: hit.entry.id,
                    text: hit.entry.text,
                })
                .collect()
        })
        .map_err(|e| e.to_string())
    }
}

/// Answers requests against one memory store, its indexes and a policy.
pub struct Recommender<S> {
    llm: Arc<dyn Llm>,
    memory: MemoryStore<S>,
    memory_index: MemorySearch,
    ranker: Ranker<S>,
    settings: RecommendSettings,
    tokenizers: Tokenizers,
}

/// What the store knows about the requesting user.
struct UserView {
    state: Option<UserState>,
    profile: Option<String>,
}

impl<S: KvStore> Recommender<S> {
    pub fn new(
        llm: Arc<dyn Llm>,
        memory: MemoryStore<S>,
        memory_index: impl Into<MemorySearch>,
        items: Arc<ItemIndex>,
        settings: RecommendSettings,
        tokenizers: Tokenizers,
    ) -> Self {
        let ranker = Ranker::new(memory.clone(), items, &settings.rank);
        Self {
            llm,
            memory,
            memory_index: memory_index.into(),
            ranker,
            settings,
            tokenizers,
        }
    }

    pub fn settings(&self) -> &RecommendSettings {
        &self.settings
    }

    pub fn llm(&self) -> &Arc<dyn Llm> {
        &self.llm
    }

    pub fn memory(&self) -> &MemoryStore<S> {
        &self.memory
    }

    /// The partition-aligned memory shard, when this recommender has one.
    pub fn shard(&self) -> Option<&Arc<MemoryShard>> {
        match &self.memory_index {
            MemorySearch::Shard(shard) => Some(shard),
            MemorySearch::Shared(_) => None,
        }
    }

    async fn user_view(&self, user: &str) -> Result<UserView, StoreError> {
        let key = self.memory.keys().user(user);
        let profile_id = mrrec_memory::entry_id(Level::Profile, user, "");
        let values = self
            .memory
            .kv()
            .get_fields(&[
                (key.clone(), "state".to_owned()),
                (key, Keyspace::entry_field(&profile_id)),
            ])
            .await?;
        let parse = |json: &Option<String>| -> Result<Option<serde_json::Value>, StoreError> {
            json.as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("memory of user {user}: {e}")))
        };
        let state = parse(&values[0])?
            .map(serde_json::from_value::<UserState>)
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("state of user {user}: {e}")))?;
        let profile = parse(&values[1])?
            .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_owned));
        Ok(UserView { state, profile })
    }

    /// Global memory for the categories the query names (the longest name
    /// first, see [`mrrec_rank::query_categories`]), else for the user's
    /// strongest categories.
    async fn global_memory(
        &self,
        query: Option<&str>,
        state: Option<&UserState>,
        categories: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut chosen: Vec<String> = query
            .map(|query| mrrec_rank::query_categories(query, categories))
            .unwrap_or_default();
        if chosen.is_empty() {
            if let Some(state) = state {
                chosen.extend(
                    state
                        .ranked_categories()
                        .into_iter()
                        .map(|(c, _)| c.to_owned()),
                );
            }
        }
        chosen.truncate(GLOBAL_ENTRIES);
        let mut out = Vec::with_capacity(chosen.len());
        for category in chosen {
            let entry = self.memory.global(&category).await?;
            if !entry.text.is_empty() {
                out.push(entry.text);
            }
        }
        Ok(out)
    }

    /// The ranking this recommender answers with (also the reward's).
    pub fn ranker(&self) -> &Ranker<S> {
        &self.ranker
    }

    /// Answers `request`. Store outages are errors (the caller retries); any
    /// other failure becomes a response: a policy that fails or runs out of
    /// time leaves the deterministic fallback to answer.
    pub async fn answer(&self, request: &Request) -> Result<Answer, RecommendError> {
        let started = Instant::now();
        match self.answer_inner(request, started).await {
            Ok(answer) => Ok(answer),
            Err(e) if e.is_retryable() => Err(RecommendError::Store(e)),
            Err(e) => {
                tracing::warn!(error = %e, "request answered with an error");
                Ok(Answer {
                    response: Response {
                        request_id: request.request_id.clone(),
                        user_id: request.user_id.clone(),
                        items: Vec::new(),
                        profile: String::new(),
                        memory_ids: Vec::new(),
                        steps: Vec::new(),
                        policy_version: self.llm.serving_version().unwrap_or(0),
                        latency_ms: elapsed_ms(started),
                        error: Some(e.to_string()),
                        ts: mrrec_stream::now_ms(),
                    },
                    trajectories: Vec::new(),
                    llm_time: Duration::ZERO,
                    fallback: false,
                })
            }
        }
    }

    async fn answer_inner(
        &self,
        request: &Request,
        started: Instant,
    ) -> Result<Answer, StoreError> {
        let user = self.user_view(&request.user_id).await?;
        let facts = self.ranker.facts().await?;
        let global = if self.settings.use_memory {
            self.global_memory(
                request.query.as_deref(),
                user.state.as_ref(),
                &facts.categories,
            )
            .await?
        } else {
            Vec::new()
        };
        let input = AgentInput {
            user_id: request.user_id.clone(),
            query: request.query.clone(),
            profile: user.profile.clone(),
            global,
        };
        let memory = IndexMemory {
            search: &self.memory_index,
            enabled: self.settings.use_memory,
        };
        let run = run_group(
            self.llm.as_ref(),
            &memory,
            &input,
            &self.settings.agent,
            self.settings.group_size,
        );
        let (group, failure) = match tokio::time::timeout(self.settings.timeout, run).await {
            Ok(Ok(group)) => (Some(group), None),
            Ok(Err(e)) => (None, Some(format!("policy unavailable: {e}"))),
            Err(_) => (
                None,
                Some(format!(
                    "policy gave no answer within {} ms",
                    self.settings.timeout.as_millis()
                )),
            ),
        };
        let k = request.k as usize;
        let Some(GroupOutcome {
            trajectories,
            llm_time,
        }) = group
        else {
            // The policy was never (fully) heard: the rule answers.
            let reason = failure.unwrap_or_default();
            let (profile, memory_ids, steps) = self.rule_answer(&input, &reason, &memory).await;
            let items = self
                .ranker
                .rank(
                    Cited::new(&profile, &memory_ids),
                    user.state.as_ref(),
                    request.exclude_seen,
                    k,
                )
                .await?;
            tracing::warn!(reason = %reason, "request answered by the rule (fallback)");
            return Ok(Answer {
                response: Response {
                    request_id: request.request_id.clone(),
                    user_id: request.user_id.clone(),
                    items,
                    profile,
                    memory_ids,
                    steps,
                    policy_version: self.llm.serving_version().unwrap_or(0),
                    latency_ms: elapsed_ms(started),
                    error: None,
                    ts: mrrec_stream::now_ms(),
                },
                trajectories: Vec::new(),
                llm_time: started.elapsed(),
                fallback: true,
            });
        };
        let served = trajectories
            .iter()
            .position(|t| t.format_ok)
            .unwrap_or_default();
        let chosen = &trajectories[served];
        let fallback = !chosen.format_ok;
        // No trajectory followed the protocol: the rule answers (every
        // trajectory is still logged, as written, for the trainer).
        let (profile, memory_ids, steps) = if fallback {
            self.rule_answer(&input, "no sampled answer followed the protocol", &memory)
                .await
        } else {
            (
                chosen.profile.clone(),
                chosen.memory_ids.clone(),
                chosen.steps.clone(),
            )
        };
        let items = self
            .ranker
            .rank(
                Cited::new(&profile, &memory_ids),
                user.state.as_ref(),
                request.exclude_seen,
                k,
            )
            .await?;
        let ts = mrrec_stream::now_ms();
        let response = Response {
            request_id: request.request_id.clone(),
            user_id: request.user_id.clone(),
            items,
            profile,
            memory_ids,
            steps,
            policy_version: chosen.policy_version,
            latency_ms: elapsed_ms(started),
            error: None,
            ts,
        };
        let group_size = trajectories.len() as u32;
        let logged = trajectories
            .into_iter()
            .enumerate()
            .map(|(index, outcome)| {
                self.trajectory(
                    request,
                    outcome,
                    index as u32,
                    group_size,
                    index == served,
                    ts,
                )
            })
            .collect();
        Ok(Answer {
            response,
            trajectories: logged,
            llm_time,
            fallback,
        })
    }

    /// The `rule` policy's answer to `input` (DESIGN §4: the fallback), run
    /// through the same loop and memory; its trace ends with a fallback step
    /// that says why the rule answered.
    async fn rule_answer(
        &self,
        input: &AgentInput,
        reason: &str,
        memory: &IndexMemory<'_>,
    ) -> (String, Vec<String>, Vec<Step>) {
        let rule = mrrec_llm::RuleLlm::default();
        let (profile, memory_ids, mut steps) =
            match run_agent(&rule, memory, input, &self.settings.agent).await {
                Ok(outcome) => (outcome.profile, outcome.memory_ids, outcome.steps),
                Err(e) => {
                    tracing::warn!(error = %e, "the rule failed; answering with the request");
                    let profile = mrrec_agent::fallback_profile(input, &self.settings.agent);
                    (profile, Vec::new(), Vec::new())
                }
            };
        steps.push(Step {
            kind: StepKind::Fallback,
            text: format!("{reason}; answered by the rule policy"),
            memory_ids: Vec::new(),
        });
        (profile, memory_ids, steps)
    }

    fn trajectory(
        &self,
        request: &Request,
        outcome: AgentOutcome,
        index: u32,
        group_size: u32,
        served: bool,
        ts: i64,
    ) -> Trajectory {
        let mut segments = outcome.segments;
        self.tokenizers
            .fill_tokens(outcome.policy_version, &mut segments);
        Trajectory {
            trajectory_id: trajectory_id(&request.request_id, index),
            request_id: request.request_id.clone(),
            user_id: request.user_id.clone(),
            index,
            group_size,
            served,
            policy_version: outcome.policy_version,
            prompt: outcome.prompt,
            segments,
            profile: outcome.profile,
            memory_ids: outcome.memory_ids,
            format_ok: outcome.format_ok,
            ts,
        }
    }
}

/// `{request_id}#{index}`, or a fingerprint of the request id when that
/// would exceed the id limit.
pub fn trajectory_id(request_id: &str, index: u32) -> String {
    let id = format!("{request_id}#{index}");
    if id.len() <= mrrec_messages::limits::MAX_ID_BYTES {
        id
    } else {
        format!("{}#{index}", fingerprint(request_id))
    }
}

fn elapsed_ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}
