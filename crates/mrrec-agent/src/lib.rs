//! MR.Rec's reasoning-and-retrieval loop (DESIGN §4), independent of Kafka:
//! builds the prompt (instructions, query, global memory, profile — all user
//! text escaped), asks the policy for one turn at a time under a grammar that
//! allows a retrieve only while steps remain, inserts the top memory entries
//! for each retrieve, and ends with the ideal item profile. When the policy
//! runs out of tokens or says nothing usable, a deterministic fallback (query +
//! profile) still answers, and the trace says so. The outcome records the
//! trace, the chat, and which text the model wrote vs. the system inserted.
//! [`rank`] turns the profile into a ranked list (BM25 fused with
//! collaborative and popularity signals).

pub mod escape;
pub mod rank;
pub mod teacher;
pub mod turn;

pub use escape::{escape_text, safe_id};
pub use rank::{fuse, FusionWeights, Signals};
pub use turn::{parse_turn, Action, Turn};

use async_trait::async_trait;
use mrrec_llm::{ChatMessage, GenerationRequest, Llm, LlmError, Sampling};
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
            memory_per_step: 3,
            max_think_chars: 64,
            max_query_chars: 48,
            max_profile_chars: 96,
            max_answer_ids: 3,
            max_input_chars: 400,
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

/// The first user turn.
pub fn request_text(input: &AgentInput, settings: &AgentSettings) -> String {
    let limit = settings.max_input_chars;
    let query = input
        .query
        .as_deref()
        .map(|q| escape_text(q, limit))
        .filter(|q| !q.is_empty())
        .unwrap_or_else(|| "anything I would like".to_owned());
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
    let profile = input
        .profile
        .as_deref()
        .map(|p| escape_text(p, limit))
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "no history yet".to_owned());
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
    parts.join(" ")
}

/// Runs one trajectory.
pub async fn run_agent(
    llm: &dyn Llm,
    memory: &dyn MemorySource,
    input: &AgentInput,
    settings: &AgentSettings,
) -> Result<AgentOutcome, AgentError> {
    let mut messages = vec![
        ChatMessage::system(INSTRUCTIONS),
        ChatMessage::user(request_text(input, settings)),
    ];
    let prompt = protocol::render_chat(&messages, false);
    let mut outcome = AgentOutcome {
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
    let mut retrieved: Vec<String> = Vec::new();
    for step in 0..=settings.max_steps {
        let may_retrieve = step < settings.max_steps;
        let grammar = protocol::turn_grammar(
            may_retrieve,
            settings.max_think_chars,
            settings.max_query_chars.max(settings.max_profile_chars),
            settings.max_answer_ids,
        );
        let generation = llm
            .generate(GenerationRequest {
                messages: messages.clone(),
                grammar: Some(grammar),
                sampling: settings.sampling.clone(),
                n: 1,
            })
            .await?;
        outcome.llm_calls += 1;
        outcome.policy_version = generation.policy_version;
        outcome.prompt_tokens += generation.prompt_tokens;
        outcome.completion_tokens += generation.completion_tokens;
        outcome.llm_time += generation.elapsed;
        let text = generation
            .completions
            .into_iter()
            .next()
            .map(|c| c.text)
            .unwrap_or_default();
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
        messages.push(ChatMessage::assistant(text.clone()));
        let Some(turn) = parse_turn(&text) else {
            break;
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
                retrieved.extend(ids.iter().cloned());
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
                messages.push(ChatMessage::user(inserted));
            }
            Action::Retrieve(_) => break,
            Action::Answer {
                profile,
                memory_ids,
            } => {
                let cited: Vec<String> = memory_ids
                    .into_iter()
                    .filter(|id| retrieved.contains(id))
                    .collect();
                outcome.steps.push(Step {
                    kind: StepKind::Answer,
                    text: profile.clone(),
                    memory_ids: cited.clone(),
                });
                outcome.profile = profile;
                outcome.memory_ids = cited;
                outcome.format_ok = true;
                return Ok(outcome);
            }
        }
    }
    let profile = fallback_profile(input, settings);
    outcome.steps.push(Step {
        kind: StepKind::Fallback,
        text: profile.clone(),
        memory_ids: Vec::new(),
    });
    outcome.profile = profile;
    Ok(outcome)
}
