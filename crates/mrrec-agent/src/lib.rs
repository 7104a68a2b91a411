//! MR.Rec's reasoning-and-retrieval loop (DESIGN §4), independent of Kafka:
//! builds the prompt (instructions, query, global memory, profile — all user
//! text escaped), asks the policy for one turn at a time under a grammar that
//! allows a retrieve only while steps remain, inserts the top memory entries
//! for each retrieve, and ends with the ideal item profile. When the policy
//! runs out of tokens or says nothing usable, a deterministic fallback (query +
//! profile) still answers, and the trace says so. The outcome records the
//! trace, the chat, and which text the model wrote vs. the system inserted.
//! The profile becomes a ranked list in `mrrec-rank`, below this crate.

pub use mrrec_policy::escape::{self, escape_text, safe_id};
pub use mrrec_policy::turn::{self, parse_turn, Action, Turn};

use async_trait::async_trait;
use mrrec_llm::{ChatMessage, Generation, GenerationRequest, Llm, LlmError, Sampling};
use mrrec_messages::{Segment, SegmentSource, Step, StepKind};
use mrrec_policy::protocol::{self, INSTRUCTIONS};
use std::time::Duration;

/// One memory entry as the agent sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryHit {
    pub id: String,
    pub text: String,
}

/// Where retrieve steps look: the user's local memory.
#[async_trait]
pub trait MemorySource: Send + Sync {
    async fn search(&self, user: &str, query: &str, k: usize) -> Result<Vec<MemoryHit>, String>;
}

/// Limits of the loop.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    /// Most retrieve steps (DESIGN `agent.max_steps`).
    pub max_steps: u32,
    /// Retrieve steps the policy must take before it may answer (the
    /// grammar allows only a retrieve until then), so every answer is
    /// grounded in the user's own memory at least this often.
    pub min_steps: u32,
    /// Memory entries inserted per retrieve (MR.Rec: 3).
    pub memory_per_step: usize,
    pub max_think_chars: usize,
    pub max_query_chars: usize,
    pub max_profile_chars: usize,
    /// Ids the answer may cite.
    pub max_answer_ids: usize,
    /// Longest piece of user text (query, memory, profile) put in a prompt.
    pub max_input_chars: usize,
    pub sampling: Sampling,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            max_steps: 3,
            min_steps: 1,
            memory_per_step: 3,
            max_think_chars: 48,
            max_query_chars: 32,
            max_profile_chars: 96,
            max_answer_ids: 3,
            max_input_chars: 200,
            sampling: Sampling::greedy(256),
        }
    }
}

/// What the agent is asked.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInput {
    pub user_id: String,
    pub query: Option<String>,
    /// The user's profile entry (level 3), if any.
    pub profile: Option<String>,
    /// Global memory for the query's categories.
    pub global: Vec<String>,
}

/// A finished trajectory.
#[derive(Debug, Clone)]
pub struct AgentOutcome {
    pub profile: String,
    /// Memory ids the answer cites that were really retrieved.
    pub memory_ids: Vec<String>,
    pub steps: Vec<Step>,
    /// The prompt (system + first user turn), as rendered for the model.
    pub prompt: String,
    /// Everything after the prompt, by who wrote it.
    pub segments: Vec<Segment>,
    /// The answer followed the protocol (no fallback).
    pub format_ok: bool,
    pub policy_version: u32,
    pub llm_calls: u32,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub llm_time: Duration,
}

/// Why a trajectory could not be produced at all.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Llm(#[from] LlmError),
}

/// `text` escaped and cut at `limit`, or `default` when that leaves nothing.
fn escaped_or(text: Option<&str>, limit: usize, default: &str) -> String {
    text.map(|t| escape_text(t, limit))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The first user turn.
pub fn request_text(input: &AgentInput, settings: &AgentSettings) -> String {
    let limit = settings.max_input_chars;
    let query = escaped_or(input.query.as_deref(), limit, "anything I would like");
    let global = if input.global.is_empty() {
        "none".to_owned()
    } else {
        input
            .global
            .iter()
            .map(|g| format!("- {}", escape_text(g, limit)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let profile = escaped_or(input.profile.as_deref(), limit, "no history yet");
    format!("Request: {query}\nGlobal memory:\n{global}\nProfile: {profile}")
}

/// The memory turn the system inserts after a retrieve.
pub fn memory_text(hits: &[MemoryHit], limit: usize) -> String {
    if hits.is_empty() {
        return "<memory id=\"none\">nothing found</memory>".to_owned();
    }
    hits.iter()
        .map(|hit| {
            format!(
                "{}{}\">{}{}",
                protocol::MEMORY_OPEN,
                safe_id(&hit.id),
                escape_text(&hit.text, limit),
                protocol::MEMORY_CLOSE
            )
        })
        .collect()
}

/// The answer when the policy gives none: the query and the profile.
pub fn fallback_profile(input: &AgentInput, settings: &AgentSettings) -> String {
    let parts: Vec<String> = [input.query.as_deref(), input.profile.as_deref()]
        .into_iter()
        .flatten()
        .map(|t| escape_text(t, settings.max_input_chars))
        .filter(|t| !t.is_empty())
        .collect();
    if parts.is_empty() {
        // No request and no history: popularity decides the ranking.
        return "anything popular".to_owned();
    }
    parts.join(" ")
}

/// The turns of one trajectory while it is being written.
struct Live {
    outcome: AgentOutcome,
    messages: Vec<ChatMessage>,
    retrieved: Vec<String>,
    done: bool,
}

impl Live {
    /// Takes the policy's turn `text` (written at `step`); runs its retrieve.
    async fn absorb(
        &mut self,
        text: String,
        step: u32,
        memory: &dyn MemorySource,
        input: &AgentInput,
        settings: &AgentSettings,
    ) {
        let may_retrieve = step < settings.max_steps;
        let outcome = &mut self.outcome;
        // The chat template frames every assistant turn; the model writes its
        // text and the EOS, the system writes the role markers.
        outcome.segments.push(Segment {
            source: SegmentSource::System,
            text: protocol::ASSISTANT.to_owned(),
            tokens: Vec::new(),
        });
        outcome.segments.push(Segment {
            source: SegmentSource::Model,
            text: format!("{text}{}", protocol::EOS),
            tokens: Vec::new(),
        });
        self.messages.push(ChatMessage::assistant(text.clone()));
        let Some(turn) = parse_turn(&text) else {
            self.done = true;
            return;
        };
        if let Some(thought) = &turn.think {
            outcome.steps.push(Step {
                kind: StepKind::Think,
                text: thought.clone(),
                memory_ids: Vec::new(),
            });
        }
        match turn.action {
            Action::Retrieve(query) if may_retrieve => {
                outcome.steps.push(Step {
                    kind: StepKind::Retrieve,
                    text: query.clone(),
                    memory_ids: Vec::new(),
                });
                let hits = memory
                    .search(&input.user_id, &query, settings.memory_per_step)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "memory search failed; the step sees nothing");
                        Vec::new()
                    });
                let ids: Vec<String> = hits.iter().map(|h| h.id.clone()).collect();
                self.retrieved.extend(ids.iter().cloned());
                let inserted = memory_text(&hits, settings.max_input_chars);
                outcome.steps.push(Step {
                    kind: StepKind::Memory,
                    text: inserted.clone(),
                    memory_ids: ids,
                });
                outcome.segments.push(Segment {
                    source: SegmentSource::System,
                    text: format!("{}{inserted}", protocol::USER),
                    tokens: Vec::new(),
                });
                self.messages.push(ChatMessage::user(inserted));
            }
            Action::Retrieve(_) => self.done = true,
            Action::Answer {
                profile,
                memory_ids,
            } => {
                let cited: Vec<String> = memory_ids
                    .into_iter()
                    .filter(|id| self.retrieved.contains(id))
                    .collect();
                outcome.steps.push(Step {
                    kind: StepKind::Answer,
                    text: profile.clone(),
                    memory_ids: cited.clone(),
                });
                outcome.profile = profile;
                outcome.memory_ids = cited;
                outcome.format_ok = true;
                self.done = true;
            }
        }
    }

    /// Ends a trajectory that gave no usable answer with the fallback.
    fn finish(mut self, input: &AgentInput, settings: &AgentSettings) -> AgentOutcome {
        if !self.outcome.format_ok {
            let profile = fallback_profile(input, settings);
            self.outcome.steps.push(Step {
                kind: StepKind::Fallback,
                text: profile.clone(),
                memory_ids: Vec::new(),
            });
            self.outcome.profile = profile;
        }
        self.outcome
    }

    fn record(&mut self, generation: &Generation, share: usize) {
        let outcome = &mut self.outcome;
        outcome.llm_calls += 1;
        outcome.policy_version = generation.policy_version;
        outcome.prompt_tokens += generation.prompt_tokens;
        outcome.completion_tokens += generation.completion_tokens / share.max(1);
        outcome.llm_time += generation.elapsed;
    }
}

/// The trajectories of one request and what producing them cost.
#[derive(Debug, Clone)]
pub struct GroupOutcome {
    /// One per sample, in sample order.
    pub trajectories: Vec<AgentOutcome>,
    /// Time spent waiting for the LLM along the request's critical path (the
    /// samples of a step run concurrently, so a step counts its slowest call).
    pub llm_time: Duration,
}

/// The grammar of a turn at `step`.
pub fn step_grammar(step: u32, settings: &AgentSettings) -> String {
    let may_retrieve = step < settings.max_steps;
    protocol::turn_grammar(
        may_retrieve,
        step >= settings.min_steps,
        protocol::TurnLimits {
            think: settings.max_think_chars,
            query: settings.max_query_chars,
            profile: settings.max_profile_chars,
            ids: settings.max_answer_ids,
        },
    )
}

/// Runs one trajectory.
pub async fn run_agent(
    llm: &dyn Llm,
    memory: &dyn MemorySource,
    input: &AgentInput,
    settings: &AgentSettings,
) -> Result<AgentOutcome, AgentError> {
    let mut group = run_group(llm, memory, input, settings, 1).await?;
    Ok(group.trajectories.remove(0))
}

/// Runs `group_size` trajectories of one request (DESIGN §4, G samples): the
/// first turn is one call with `n = group_size` (the prompt is shared); from
/// then on each trajectory continues on its own, the group's calls of a step
/// running concurrently.
pub async fn run_group(
    llm: &dyn Llm,
    memory: &dyn MemorySource,
    input: &AgentInput,
    settings: &AgentSettings,
    group_size: usize,
) -> Result<GroupOutcome, AgentError> {
    let group_size = group_size.max(1);
    let messages = vec![
        ChatMessage::system(INSTRUCTIONS),
        ChatMessage::user(request_text(input, settings)),
    ];
    let prompt = protocol::render_chat(&messages, false);
    let empty = AgentOutcome {
        profile: String::new(),
        memory_ids: Vec::new(),
        steps: Vec::new(),
        prompt,
        segments: Vec::new(),
        format_ok: false,
        policy_version: 0,
        llm_calls: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        llm_time: Duration::ZERO,
    };
    let mut live: Vec<Live> = (0..group_size)
        .map(|_| Live {
            outcome: empty.clone(),
            messages: messages.clone(),
            retrieved: Vec::new(),
            done: false,
        })
        .collect();
    let mut llm_time = Duration::ZERO;

    // Step 0: one call, n samples.
    let first = llm
        .generate(GenerationRequest {
            messages,
            grammar: Some(step_grammar(0, settings)),
            sampling: settings.sampling.clone(),
            n: group_size,
        })
        .await?;
    llm_time += first.elapsed;
    let mut texts = first.completions.iter().map(|c| c.text.clone());
    for trajectory in &mut live {
        trajectory.record(&first, group_size);
    }
    let absorbed = live.iter_mut().map(|trajectory| {
        let text = texts.next().unwrap_or_default();
        trajectory.absorb(text, 0, memory, input, settings)
    });
    futures::future::join_all(absorbed).await;

    for step in 1..=settings.max_steps {
        let open: Vec<&mut Live> = live.iter_mut().filter(|t| !t.done).collect();
        if open.is_empty() {
            break;
        }
        let grammar = step_grammar(step, settings);
        let turns = open.into_iter().map(|trajectory| {
            let grammar = grammar.clone();
            async move {
                let generation = llm
                    .generate(GenerationRequest {
                        messages: trajectory.messages.clone(),
                        grammar: Some(grammar),
                        sampling: settings.sampling.clone(),
                        n: 1,
                    })
                    .await?;
                trajectory.record(&generation, 1);
                let text = generation
                    .completions
                    .into_iter()
                    .next()
                    .map(|c| c.text)
                    .unwrap_or_default();
                trajectory.absorb(text, step, memory, input, settings).await;
                Ok::<Duration, AgentError>(generation.elapsed)
            }
        });
        let mut slowest = Duration::ZERO;
        for result in futures::future::join_all(turns).await {
            slowest = slowest.max(result?);
        }
        llm_time += slowest;
    }
    Ok(GroupOutcome {
        trajectories: live
            .into_iter()
            .map(|trajectory| trajectory.finish(input, settings))
            .collect(),
        llm_time,
    })
}
