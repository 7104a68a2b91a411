//! The teacher: a deterministic policy that follows the protocol — it
//! retrieves once with the request's words, then answers with the request
//! plus the first memory entry it got, citing what it retrieved. Golden tests
//! use it to pin the loop; the trainer's SFT warm start imitates it.

use crate::{parse_turn, Action};
use async_trait::async_trait;
use mrrec_llm::{Completion, Generation, GenerationRequest, Llm, LlmError, Role};
use mrrec_policy::protocol::{MEMORY_CLOSE, MEMORY_OPEN};
use std::time::Duration;

/// The teacher as an [`Llm`] (policy version `version`).
#[derive(Debug, Clone)]
pub struct TeacherLlm {
    pub version: u32,
}

/// The request's query, from the first user turn the agent writes.
fn request_query(messages: &[mrrec_llm::ChatMessage]) -> String {
    messages
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
        .join(" ")
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

/// The teacher's next turn for a chat.
pub fn teacher_turn(messages: &[mrrec_llm::ChatMessage]) -> String {
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
    if !retrieved {
        return format!(
            "<think>find what they liked about {query}</think><retrieve>{query}</retrieve>"
        );
    }
    let entries: Vec<(String, String)> = messages
        .iter()
        .filter(|m| m.role == Role::User)
        .skip(1)
        .flat_map(|m| memory_entries(&m.content))
        .collect();
    let mut profile = query.clone();
    if let Some((_, text)) = entries.first() {
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
        .take(3)
        .map(|(id, _)| serde_json::Value::String(id.clone()).to_string())
        .collect();
    format!(
        "<answer>{{\"profile\":{},\"memory_ids\":[{}]}}</answer>",
        serde_json::Value::String(profile.trim().to_owned()),
        ids.join(",")
    )
}

#[async_trait]
impl Llm for TeacherLlm {
    async fn generate(&self, request: GenerationRequest) -> Result<Generation, LlmError> {
        let text = teacher_turn(&request.messages);
        Ok(Generation {
            completions: vec![
                Completion {
                    text,
                    finish_reason: "stop".into(),
                };
                request.n
            ],
            policy_version: self.version,
            model: "teacher".into(),
            prompt_tokens: 0,
            completion_tokens: 0,
            elapsed: Duration::ZERO,
        })
    }

    fn backend(&self) -> &'static str {
        "teacher"
    }

    fn serving_version(&self) -> Option<u32> {
        Some(self.version)
    }
}
