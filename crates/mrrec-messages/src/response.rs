//! `mrrec.responses`: the answer to a request, keyed by `user_id`.

use crate::{limits, validate, Message, MessageError, Topic};
use serde::{Deserialize, Serialize};

/// One recommended item and its score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredItem {
    pub item_id: String,
    pub score: f64,
}

/// What one step of the agent's trace was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Think,
    Retrieve,
    Memory,
    Answer,
    Fallback,
}

impl StepKind {
    /// The kind's name, as it is serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Think => "think",
            StepKind::Retrieve => "retrieve",
            StepKind::Memory => "memory",
            StepKind::Answer => "answer",
            StepKind::Fallback => "fallback",
        }
    }
}

/// One step of the agent's trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub kind: StepKind,
    pub text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_ids: Vec<String>,
}

/// A response. A request that could not be answered still gets one, with `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub request_id: String,
    pub user_id: String,
    pub items: Vec<ScoredItem>,
    pub profile: String,
    pub memory_ids: Vec<String>,
    pub steps: Vec<Step>,
    pub policy_version: u32,
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ts: i64,
}

impl Message for Response {
    const TOPIC: Topic = Topic::Responses;
    const KEY_FIELD: &'static str = "user_id";

    fn validate(&self) -> Result<(), MessageError> {
        validate::id("request_id", &self.request_id)?;
        validate::id("user_id", &self.user_id)?;
        validate::list_len("items", &self.items, limits::MAX_LIST)?;
        for item in &self.items {
            validate::id("items.item_id", &item.item_id)?;
            validate::number("items.score", item.score)?;
        }
        validate::text("profile", &self.profile, limits::MAX_TEXT_BYTES)?;
        validate::list_len("memory_ids", &self.memory_ids, limits::MAX_LIST)?;
        for id in &self.memory_ids {
            validate::id("memory_ids", id)?;
        }
        validate::list_len("steps", &self.steps, limits::MAX_LIST)?;
        for step in &self.steps {
            validate::text("steps.text", &step.text, limits::MAX_TEXT_BYTES)?;
        }
        validate::number("latency_ms", self.latency_ms)?;
        if self.latency_ms < 0.0 {
            return Err(MessageError::invalid("latency_ms", "must not be negative"));
        }
        if let Some(error) = &self.error {
            validate::text("error", error, limits::MAX_TEXT_BYTES)?;
        }
        validate::ts("ts", self.ts)
    }

    fn key(&self) -> Option<&str> {
        Some(&self.user_id)
    }
}
