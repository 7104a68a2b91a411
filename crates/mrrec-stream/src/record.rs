//! Records as a stage sees them: where each came from and what it decoded to.

use std::sync::Arc;

/// Where a record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The record's Kafka timestamp (epoch millis), when it has one.
    pub timestamp_ms: Option<i64>,
}

/// A record that decoded into a stage's message.
#[derive(Debug, Clone)]
pub struct Decoded<M> {
    pub meta: RecordMeta,
    pub message: M,
}

/// The offsets a batch covers in one partition, poison records included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub topic: Arc<str>,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// A batch of decoded records, in consumption order, and the offset ranges it
/// covers. A stage that keeps offsets in its own state stores `last_offset` of
/// every range (so records it never saw, the poison ones, are not replayed).
#[derive(Debug, Clone)]
pub struct Batch<M> {
    pub records: Vec<Decoded<M>>,
    pub ranges: Vec<PartitionRange>,
}

impl<M> Batch<M> {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}
