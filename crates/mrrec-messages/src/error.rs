//! Why a payload was rejected.

/// A reason a payload is not a valid message. Always poison: retrying the same
/// bytes can never succeed, so the record belongs in the DLQ.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MessageError {
    #[error("empty payload (a null value or tombstone where a message was expected)")]
    Empty,
    #[error("payload is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("payload is not valid UTF-8 (first bad byte at offset {0})")]
    NotUtf8(usize),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error("record key {key:?} differs from `{field}` {expected:?}")]
    KeyMismatch {
        field: &'static str,
        key: String,
        expected: String,
    },
}

impl MessageError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A short, bounded label for metrics (never contains user data).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::TooLarge { .. } => "too_large",
            Self::NotUtf8(_) => "not_utf8",
            Self::Json(_) => "json",
            Self::Invalid { .. } => "invalid",
            Self::KeyMismatch { .. } => "key_mismatch",
        }
    }
}
