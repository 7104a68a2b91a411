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

/// A failure of a whole batch.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Something outside is down or busy (broker, store): back off and retry the
    /// same batch; nothing is committed meanwhile.
    #[error("retryable: {0}")]
    Retryable(String),
    /// The stage cannot continue (a bug, a broken store): stop without committing
    /// the batch, so a restart sees it again.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl StageError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StageError::Retryable(_))
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
