//! The contract between a stage and the runtime.

use crate::record::{Batch, RecordMeta};
use std::future::Future;

/// Why a single record cannot be used; it goes to the DLQ, and the stage moves on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    /// Short, bounded label for metrics (`json`, `invalid`, …); never user data.
    pub kind: &'static str,
    /// Human-readable reason, stored in the dead letter.
    pub reason: String,
}

impl From<mrrec_messages::MessageError> for Poison {
    fn from(error: mrrec_messages::MessageError) -> Self {
        Poison {
            kind: error.kind(),
            reason: error.to_string(),
        }
    }
}

/// Decodes a record as a DESIGN §2 message, checking its key: what most
/// stages' [`Stage::decode`] is.
pub fn decode_message<M: mrrec_messages::Message>(
    record: &RecordMeta,
    payload: Option<&[u8]>,
) -> Result<M, Poison> {
    Ok(mrrec_messages::decode_record(
        record.key.as_deref(),
        payload.unwrap_or_default(),
    )?)
}

/// What caused a [`StageError`], kept as its source.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure of a whole batch. Whether it is retryable is decided where the
/// error is born: a [`mrrec_store::StoreError`] says so itself (`From`),
/// and a stage says it for its own. The error that caused it, if any, is
/// kept as its [`std::error::Error::source`] and written after the message.
#[derive(Debug)]
pub enum StageError {
    /// Something outside is down or busy (broker, store): back off and retry the
    /// same batch; nothing is committed meanwhile.
    Retryable {
        message: String,
        source: Option<Cause>,
    },
    /// The stage cannot continue (a bug, a broken store): stop without committing
    /// the batch, so a restart sees it again.
    Fatal {
        message: String,
        source: Option<Cause>,
    },
}

impl StageError {
    /// A retryable failure described by `message` alone.
    pub fn retryable(message: impl Into<String>) -> Self {
        StageError::Retryable {
            message: message.into(),
            source: None,
        }
    }

    /// A fatal failure described by `message` alone.
    pub fn fatal(message: impl Into<String>) -> Self {
        StageError::Fatal {
            message: message.into(),
            source: None,
        }
    }

    /// A retryable failure: `what` failed because of `source`.
    pub fn retryable_from(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StageError::Retryable {
            message: what.into(),
            source: Some(Box::new(source)),
        }
    }

    /// A fatal failure: `what` failed because of `source`.
    pub fn fatal_from(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StageError::Fatal {
            message: what.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(self, StageError::Retryable { .. })
    }

    /// The message and every cause behind it, `: `-separated.
    pub fn describe(&self) -> String {
        let (StageError::Retryable { message, source } | StageError::Fatal { message, source }) =
            self;
        let mut text = message.clone();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static));
        while let Some(e) = cause {
            text.push_str(": ");
            text.push_str(&e.to_string());
            cause = e.source();
        }
        text
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_retryable() {
            "retryable"
        } else {
            "fatal"
        };
        write!(f, "{kind}: {}", self.describe())
    }
}

impl std::error::Error for StageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let (StageError::Retryable { source, .. } | StageError::Fatal { source, .. }) = self;
        source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A store error is retryable exactly when the store says so.
impl From<mrrec_store::StoreError> for StageError {
    fn from(e: mrrec_store::StoreError) -> Self {
        if e.is_retryable() {
            StageError::retryable_from("the store", e)
        } else {
            StageError::fatal_from("the store", e)
        }
    }
}

/// One stage of the pipeline, run by [`crate::StageRunner`].
///
/// Exactly-once in effect: a stage that derives state stores, atomically with
/// that state, the last offset of every partition range it processed, reports it
/// from [`Stage::stored_offset`], and ignores records at or below it. The runner
/// skips such records before decoding; the stage's own atomic check guards the
/// race where two instances briefly own a partition during a rebalance.
pub trait Stage: Send + 'static {
    /// What records decode to.
    type Message: Send;

    /// Stage name: used in group ids, metric labels and dead letters.
    fn name(&self) -> &str;

    /// Decodes one record. An error dead-letters the record with its reason.
    fn decode(&self, record: &RecordMeta, payload: Option<&[u8]>) -> Result<Self::Message, Poison>;

    /// Processes a batch and makes its effects durable before returning `Ok`.
    /// Called again with the same batch after a retryable error.
    fn process(
        &mut self,
        batch: &Batch<Self::Message>,
    ) -> impl Future<Output = Result<(), StageError>>;

    /// The last offset of `topic`/`partition` whose effects are in the stage's
    /// state, if the stage keeps offsets with its state.
    fn stored_offset(
        &mut self,
        _topic: &str,
        _partition: i32,
    ) -> impl Future<Output = Result<Option<i64>, StageError>> {
        async { Ok(None) }
    }

    /// Partitions were given to this instance (before any of their records
    /// is fetched): a stage with per-partition state loads it here.
    fn on_assign(&mut self, _partitions: &[(String, i32)]) -> impl Future<Output = ()> {
        async {}
    }

    /// Partitions were taken away (after their pending records were flushed and
    /// committed, or dropped for their next owner to replay).
    fn on_revoke(&mut self, _partitions: &[(String, i32)]) -> impl Future<Output = ()> {
        async {}
    }
}
