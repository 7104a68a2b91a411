//! `mrrec.dlq`: a record a stage could not use, with the reason, keyed by the source key.

use crate::{limits, validate, Message, MessageError, Topic};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Most payload bytes kept in a dead letter; the rest is cut (and flagged).
pub const MAX_DEAD_PAYLOAD_BYTES: usize = 64 * 1024;

/// How `payload` holds the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadEncoding {
    /// The payload was valid UTF-8 and is kept as text.
    Utf8,
    /// The payload was not UTF-8 and is kept as standard base64.
    Base64,
}

/// A dead-lettered record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub stage: String,
    pub source_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error: String,
    pub payload: String,
    pub payload_encoding: PayloadEncoding,
    /// Size of the original payload, in bytes.
    pub payload_bytes: usize,
    /// Whether `payload` holds only the first [`MAX_DEAD_PAYLOAD_BYTES`] bytes.
    pub payload_truncated: bool,
    pub ts: i64,
}

impl DeadLetter {
    /// Builds a dead letter, keeping at most [`MAX_DEAD_PAYLOAD_BYTES`] of the payload.
    pub fn new(
        stage: &str,
        source_topic: &str,
        partition: i32,
        offset: i64,
        error: &str,
        payload: &[u8],
        ts: i64,
    ) -> Self {
        let kept = &payload[..payload.len().min(MAX_DEAD_PAYLOAD_BYTES)];
        let (payload_text, payload_encoding) = match std::str::from_utf8(kept) {
            Ok(text) => (text.to_owned(), PayloadEncoding::Utf8),
            // A cut may split a character: keep the valid prefix when that is all it is.
            Err(e) if kept.len() < payload.len() && e.error_len().is_none() => (
                String::from_utf8_lossy(&kept[..e.valid_up_to()]).into_owned(),
                PayloadEncoding::Utf8,
            ),
            Err(_) => (
                base64::engine::general_purpose::STANDARD.encode(kept),
                PayloadEncoding::Base64,
            ),
        };
        let mut error = error.to_owned();
        crate::truncate_at_char(&mut error, limits::MAX_LABEL_BYTES * 4);
        Self {
            stage: stage.to_owned(),
            source_topic: source_topic.to_owned(),
            partition,
            offset,
            error,
            payload: payload_text,
            payload_encoding,
            payload_bytes: payload.len(),
            payload_truncated: kept.len() < payload.len(),
            ts,
        }
    }

    /// The original payload bytes (as kept).
    pub fn payload_bytes(&self) -> Vec<u8> {
        match self.payload_encoding {
            PayloadEncoding::Utf8 => self.payload.clone().into_bytes(),
            PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(&self.payload)
                .unwrap_or_default(),
        }
    }
}

impl Message for DeadLetter {
    const TOPIC: Topic = Topic::Dlq;
    const KEY_FIELD: &'static str = "source key";

    fn validate(&self) -> Result<(), MessageError> {
        validate::label("stage", &self.stage)?;
        validate::label("source_topic", &self.source_topic)?;
        if self.error.trim().is_empty() {
            return Err(MessageError::invalid(
                "error",
                "a dead letter needs a reason",
            ));
        }
        validate::ts("ts", self.ts)
    }

    fn key(&self) -> Option<&str> {
        None
    }
}
