//! The message contract of every mrrec topic (DESIGN §2): typed serde structs,
//! their validation, and one way to decode a raw Kafka record into them.
//!
//! Decoding is strict about what it needs and lenient about what it does not:
//! unknown fields are ignored, while a missing required field, a wrong type, a
//! non-finite or out-of-range number, an oversized payload or invalid UTF-8 is a
//! [`MessageError`] that names the problem — the reason a stage writes to the DLQ.

mod dlq;
mod error;
mod event;
mod item;
pub mod limits;
mod policy;
mod request;
mod response;
mod reward;
mod topic;
mod trajectory;
mod validate;

pub use dlq::{DeadLetter, PayloadEncoding};
pub use error::MessageError;
pub use event::{Event, EventKind, Outcome};
pub use item::Item;
pub use policy::PolicyAnnouncement;
pub use request::Request;
pub use response::{Response, ScoredItem, Step, StepKind};
pub use reward::{Reward, RewardComponents};
pub use topic::Topic;
pub use trajectory::{Segment, SegmentSource, Trajectory};

/// Cuts `text` to at most `max_bytes` bytes, at the last character boundary
/// at or below it: `String::truncate` at a byte inside a multi-byte
/// character panics, and on text from outside that is a panic on user data.
pub fn truncate_at_char(text: &mut String, max_bytes: usize) {
    if text.len() <= max_bytes {
        return;
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
}

use serde::{de::DeserializeOwned, Serialize};

/// A message that travels on one mrrec topic.
pub trait Message: Serialize + DeserializeOwned {
    /// The topic this message belongs to.
    const TOPIC: Topic;

    /// Checks every invariant serde cannot express (lengths, ranges, kinds).
    fn validate(&self) -> Result<(), MessageError>;

    /// Turns white space written as control characters (tabs, newlines) in
    /// free-text fields (titles, categories, descriptions, reviews, queries)
    /// into spaces, as real catalogs need; ids are never touched. Returns
    /// whether anything changed. [`decode`] calls it before [`Self::validate`].
    fn normalize(&mut self) -> bool {
        false
    }

    /// The record key this message must be published under (`None`: unkeyed).
    fn key(&self) -> Option<&str>;

    /// Name of the field the key is taken from, for error messages.
    const KEY_FIELD: &'static str;
}

/// Decodes, normalises ([`Message::normalize`]) and validates a payload,
/// ignoring the record key.
pub fn decode<M: Message>(payload: &[u8]) -> Result<M, MessageError> {
    decode_normalized(payload).map(|(message, _)| message)
}

/// [`decode`], also saying whether normalisation changed the message (what
/// `load` and `eval` count in their summaries).
pub fn decode_normalized<M: Message>(payload: &[u8]) -> Result<(M, bool), MessageError> {
    if payload.is_empty() {
        return Err(MessageError::Empty);
    }
    if payload.len() > limits::MAX_PAYLOAD_BYTES {
        return Err(MessageError::TooLarge {
            size: payload.len(),
            max: limits::MAX_PAYLOAD_BYTES,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|e| MessageError::NotUtf8(e.valid_up_to()))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut message: M = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." => MessageError::Json(e.into_inner().to_string()),
            _ => MessageError::Json(format!("at `{path}`: {}", e.into_inner())),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| MessageError::Json(e.to_string()))?;
    let normalized = message.normalize();
    message.validate()?;
    Ok((message, normalized))
}

/// Decodes a record and checks that its key (when present) is the one the
/// message must be published under, so a user's records stay on one partition.
pub fn decode_record<M: Message>(key: Option<&[u8]>, payload: &[u8]) -> Result<M, MessageError> {
    let message: M = decode(payload)?;
    if let (Some(key), Some(expected)) = (key, message.key()) {
        if key != expected.as_bytes() {
            return Err(MessageError::KeyMismatch {
                field: M::KEY_FIELD,
                key: String::from_utf8_lossy(&key[..key.len().min(128)]).into_owned(),
                expected: expected.to_owned(),
            });
        }
    }
    Ok(message)
}

/// Validates and serialises a message.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, MessageError> {
    message.validate()?;
    let bytes = serde_json::to_vec(message).map_err(|e| MessageError::Json(e.to_string()))?;
    if bytes.len() > limits::MAX_PAYLOAD_BYTES {
        return Err(MessageError::TooLarge {
            size: bytes.len(),
            max: limits::MAX_PAYLOAD_BYTES,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests;
