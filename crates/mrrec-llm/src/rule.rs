//! The `rule` policy (DESIGN §4, `llm.backend = "rule"`): a deterministic
//! policy with no model that answers through the same agent loop, grammar,
//! ranker, trajectories and responses as a trained one. It is at once
//!
//! - a production mode: mrrec without an LLM to run;
//! - the fallback: when the policy fails or runs out of time, the
//!   recommender answers with this rule;
//! - the teacher: `model init --sft` warm-starts a policy on its turns;
//! - the baseline every trained policy must beat (`mrrec eval`'s `rule` row
//!   and each `pipeline_*` row's `vs_rule`).
//!
//! The rule, in full (this is the one place it is written down):
//!
//! 1. First turn. When the prompt shows global memory, the rule retrieves the
//!    category that memory was chosen for (the category the request names,
//!    else the user's strongest one). Otherwise it thinks `find what they
//!    liked about {query}` and retrieves the request's words (its first six
//!    words, letters, digits and spaces only; `anything` without a request
//!    or when nothing is left).
//! 2. Second turn, the answer. With global memory, the profile is that
//!    category and the answer cites nothing. Without, the profile is the
//!    request's words plus the first eight words of the first memory entry
//!    retrieved, and the answer cites up to three retrieved entries.
//!
//! The rule never retrieves more than once and never fails the grammar.

use crate::{Completion, Generation, GenerationRequest, Llm, LlmError, Role};
use async_trait::async_trait;
use mrrec_policy::protocol::{MEMORY_CLOSE, MEMORY_OPEN};
use mrrec_policy::turn::{parse_turn, Action};
use std::time::Duration;

/// The rule as an [`Llm`]. `version` is the policy version its answers
/// carry: 0 when it serves (`llm.backend = "rule"`), the version being
/// warm-started when it teaches.
#[derive(Debug, Clone, Default)]
pub struct RuleLlm {
    pub version: u32,
}

/// The request's query, from the first user turn the agent writes.
fn request_query(messages: &[crate::ChatMessage]) -> String {
    let words = messages
        .iter()
        .find(|m| m.role == Role::User)
        .and_then(|m| m.content.lines().next())
        .and_then(|l| l.strip_prefix("Request: "))
        .unwrap_or("anything")
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ')
        .collect::<String>()
        .split_whitespace()
        .take(6)
        .collect::<Vec<_>>()
        .join(" ");
    // A request of punctuation or emoji only leaves nothing to retrieve
    // with, and an empty retrieve breaks the protocol.
    if words.is_empty() {
        "anything".to_owned()
    } else {
        words
    }
}

/// The category of the first global memory line of the prompt
/// (`- {category} across users: …`).
fn global_category(messages: &[crate::ChatMessage]) -> Option<String> {
    let first = messages.iter().find(|m| m.role == Role::User)?;
    first
        .content
        .lines()
        .skip_while(|l| !l.starts_with("Global memory:"))
        .skip(1)
        .take_while(|l| l.starts_with("- "))
        .find_map(|l| {
            l[2..]
                .split_once(" across users:")
                .map(|(c, _)| c.trim().to_owned())
        })
        .filter(|c| !c.is_empty())
}

/// (id, text) of each memory entry in a memory turn.
fn memory_entries(text: &str) -> Vec<(String, String)> {
    text.split(MEMORY_CLOSE)
        .filter_map(|part| {
            let rest = part.split_once(MEMORY_OPEN)?.1;
            let (id, body) = rest.split_once("\">")?;
            (id != "none").then(|| (id.to_owned(), body.to_owned()))
        })
        .collect()
}

/// The rule's next turn for a chat.
pub fn rule_turn(messages: &[crate::ChatMessage]) -> String {
    let query = request_query(messages);
    let retrieved = messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .any(|m| {
            matches!(
                parse_turn(&m.content).map(|t| t.action),
                Some(Action::Retrieve(_))
            )
        });
    let category = global_category(messages);
    if !retrieved {
        return match &category {
            Some(category) => format!("<retrieve>{category}</retrieve>"),
            None => format!(
                "<think>find what they liked about {query}</think><retrieve>{query}</retrieve>"
            ),
        };
    }
    let entries: Vec<(String, String)> = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .skip(1)
        .flat_map(|m| memory_entries(&m.content))
        .collect();
    let mut profile = query.clone();
    // With a category the answer cites nothing: copying 17-character entry
    // ids is what a tiny warm-started policy fails at, and a wrong id only
    // forfeits DESIGN §5's small memory term.
    let cited = if category.is_some() { 0 } else { 3 };
    if let Some(category) = category {
        profile = category;
    } else if let Some((_, text)) = entries.first() {
        let words: String = text
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ')
            .collect();
        profile = format!(
            "{profile} {}",
            words
                .split_whitespace()
                .take(8)
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let ids: Vec<String> = entries
        .iter()
        .take(cited)
        .map(|(id, _)| serde_json::Value::String(id.clone()).to_string())
        .collect();
    format!(
        "<answer>{{\"profile\":{},\"memory_ids\":[{}]}}</answer>",
        serde_json::Value::String(profile.trim().to_owned()),
        ids.join(",")
    )
}

#[async_trait]
impl Llm for RuleLlm {
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        crate::validate_request(&request)?;
        let text = rule_turn(&request.messages);
        Ok(Generation {
            completions: vec![
                Completion {
                    text,
                    finish_reason: "stop".into(),
                };
                request.n
            ],
            policy_version: self.version,
            model: "rule".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            elapsed: Duration::ZERO,
        })
    }

    fn backend(&self) -> &'static str {
        "rule"
    }

    fn serving_version(&self) -> Option<u32> {
        Some(self.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChatMessage;

    /// A request of punctuation or emoji still gets a turn that follows
    /// the protocol.
    #[test]
    fn a_request_without_words_still_follows_the_protocol() {
        for query in ["???", "🙂🙂", "   "] {
            let messages = vec![
                ChatMessage::system("s"),
                ChatMessage::user(format!(
                    "Request: {query}\nGlobal memory:\nnone\nProfile: p"
                )),
            ];
            let turn = rule_turn(&messages);
            assert!(parse_turn(&turn).is_some(), "{query:?} gave {turn:?}");
            assert!(turn.contains("<retrieve>anything</retrieve>"), "{turn}");
        }
    }
}
