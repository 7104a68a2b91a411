//! `mrrec.policy`: announcements of published policy versions (unkeyed, one partition).

use crate::{limits, validate, Message, MessageError, Topic};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A policy version that recommenders should switch to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyAnnouncement {
    pub version: u32,
    /// Directory holding config.json, tokenizer.json, model.safetensors.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u32>,
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    pub ts: i64,
}

impl Message for PolicyAnnouncement {
    const TOPIC: Topic = Topic::Policy;
    const KEY_FIELD: &'static str = "version";

    fn validate(&self) -> Result<(), MessageError> {
        if self.path.trim().is_empty() {
            return Err(MessageError::invalid("path", "must not be empty"));
        }
        validate::text("path", &self.path, limits::MAX_LABEL_BYTES)?;
        if self.parent.is_some_and(|p| p >= self.version) {
            return Err(MessageError::invalid(
                "parent",
                "must be older than `version`",
            ));
        }
        for (name, value) in &self.metrics {
            validate::label("metrics", name)?;
            validate::number("metrics", *value)?;
        }
        validate::ts("ts", self.ts)
    }

    fn key(&self) -> Option<&str> {
        None
    }
}
