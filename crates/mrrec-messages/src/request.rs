//! `mrrec.requests`: asks for recommendations, keyed by `user_id`.

use crate::{limits, validate, Message, MessageError, Topic};
use serde::{Deserialize, Serialize};

fn default_k() -> u32 {
    10
}

fn default_true() -> bool {
    true
}

/// A recommendation request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub request_id: String,
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default = "default_k")]
    pub k: u32,
    #[serde(default = "default_true")]
    pub exclude_seen: bool,
    pub ts: i64,
}

impl Message for Request {
    const TOPIC: Topic = Topic::Requests;
    const KEY_FIELD: &'static str = "user_id";

    fn validate(&self) -> Result<(), MessageError> {
        validate::id("request_id", &self.request_id)?;
        validate::id("user_id", &self.user_id)?;
        if let Some(query) = &self.query {
            validate::text("query", query, limits::MAX_QUERY_BYTES)?;
        }
        if !(1..=limits::MAX_K).contains(&self.k) {
            return Err(MessageError::invalid(
                "k",
                format!("{} is not between 1 and {}", self.k, limits::MAX_K),
            ));
        }
        validate::ts("ts", self.ts)
    }

    fn key(&self) -> Option<&str> {
        Some(&self.user_id)
    }

    fn normalize(&mut self) -> bool {
        validate::normalize_opt(&mut self.query)
    }
}
