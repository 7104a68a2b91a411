//! `mrrec.trajectories`: every sampled trajectory of a request, keyed by `request_id`.

use crate::{limits, validate, Message, MessageError, Topic};
use serde::{Deserialize, Serialize};

/// Who wrote a stretch of the completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentSource {
    /// Sampled from the policy: these tokens are trained on.
    Model,
    /// Inserted by the system (retrieved memory): masked out of the loss.
    System,
}

/// A contiguous stretch of the completion written by one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub source: SegmentSource,
    pub text: String,
    /// Token ids under the generating policy's tokenizer, when known.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<u32>,
}

/// One sampled trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trajectory {
    pub trajectory_id: String,
    pub request_id: String,
    pub user_id: String,
    /// Position within the request's group (0-based).
    pub index: u32,
    pub group_size: u32,
    /// Whether this trajectory's answer was the one served.
    pub served: bool,
    pub policy_version: u32,
    pub prompt: String,
    pub segments: Vec<Segment>,
    pub profile: String,
    pub memory_ids: Vec<String>,
    pub format_ok: bool,
    pub ts: i64,
}

impl Message for Trajectory {
    const TOPIC: Topic = Topic::Trajectories;
    const KEY_FIELD: &'static str = "request_id";

    fn validate(&self) -> Result<(), MessageError> {
        validate::id("trajectory_id", &self.trajectory_id)?;
        validate::id("request_id", &self.request_id)?;
        validate::id("user_id", &self.user_id)?;
        if self.group_size == 0 || self.index >= self.group_size {
            return Err(MessageError::invalid(
                "index",
                format!("{} is outside a group of {}", self.index, self.group_size),
            ));
        }
        validate::text("prompt", &self.prompt, limits::MAX_TEXT_BYTES)?;
        validate::list_len("segments", &self.segments, limits::MAX_LIST)?;
        for segment in &self.segments {
            validate::text("segments.text", &segment.text, limits::MAX_TEXT_BYTES)?;
        }
        validate::text("profile", &self.profile, limits::MAX_TEXT_BYTES)?;
        validate::list_len("memory_ids", &self.memory_ids, limits::MAX_LIST)?;
        for id in &self.memory_ids {
            validate::id("memory_ids", id)?;
        }
        validate::ts("ts", self.ts)
    }

    fn key(&self) -> Option<&str> {
        Some(&self.request_id)
    }
}
