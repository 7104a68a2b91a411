//! The offset-in-state rule, once for every stage that keeps derived state
//! in the store (DESIGN's exactly-once effect): a stage stores, in the same
//! atomic [`Batch`] as the state a Kafka batch changed, the last offset of
//! every partition range it processed, in one hash (`{topic}:{partition}` →
//! offset). [`OffsetGuard`] is the whole rule:
//!
//! - read the stored offsets of a batch's ranges ([`OffsetGuard::read`], or
//!   [`OffsetGuard::fields`] + [`OffsetGuard::from_values`] inside a read
//!   of other fields);
//! - apply only records above them ([`OffsetGuard::is_fresh`]);
//! - write each range's last offset guarded by the value that was read
//!   ([`OffsetGuard::advance`]), so a second writer that got there first
//!   (two instances own a partition during a rebalance) makes the batch
//!   fail as a whole and it is recomputed.
//!
//! A stored value that is not an offset is [`StoreError::Corrupt`] wherever
//! it is read: processing over it could apply a batch twice.

use crate::{Batch, KvStore, StoreError};

/// A batch's partition range, as far as the guard needs it.
#[derive(Debug, Clone, Copy)]
pub struct Range<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub last_offset: i64,
}

/// The stored offsets of one batch's ranges, as read.
#[derive(Debug, Clone)]
pub struct OffsetGuard {
    hash: String,
    ranges: Vec<Read>,
}

#[derive(Debug, Clone)]
struct Read {
    topic: String,
    partition: i32,
    last_offset: i64,
    /// The stored value, exactly as read (the write's guard).
    raw: Option<String>,
    stored: Option<i64>,
}

/// The field of a partition in the offsets hash.
pub fn offset_field(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

fn parse(hash: &str, field: &str, raw: Option<&str>) -> Result<Option<i64>, StoreError> {
    raw.map(|s| {
        s.parse::<i64>()
            .map_err(|_| StoreError::Corrupt(format!("stored offset {hash}/{field} is {s:?}")))
    })
    .transpose()
}

impl OffsetGuard {
    /// The `(hash, field)` pairs to read for `ranges`, in order.
    pub fn fields(hash: &str, ranges: &[Range<'_>]) -> Vec<(String, String)> {
        ranges
            .iter()
            .map(|r| (hash.to_owned(), offset_field(r.topic, r.partition)))
            .collect()
    }

    /// The guard from the values read for [`Self::fields`] (same order).
    pub fn from_values(
        hash: &str,
        ranges: &[Range<'_>],
        values: &[Option<String>],
    ) -> Result<Self, StoreError> {
        if values.len() != ranges.len() {
            return Err(StoreError::Fatal(format!(
                "{} offsets read for {} ranges",
                values.len(),
                ranges.len()
            )));
        }
        let ranges = ranges
            .iter()
            .zip(values)
            .map(|(r, raw)| {
                let field = offset_field(r.topic, r.partition);
                Ok(Read {
                    topic: r.topic.to_owned(),
                    partition: r.partition,
                    last_offset: r.last_offset,
                    stored: parse(hash, &field, raw.as_deref())?,
                    raw: raw.clone(),
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Self {
            hash: hash.to_owned(),
            ranges,
        })
    }

    /// Reads the stored offsets of `ranges` from `hash`.
    pub async fn read<S: KvStore>(
        store: &S,
        hash: &str,
        ranges: &[Range<'_>],
    ) -> Result<Self, StoreError> {
        let values = store.get_fields(&Self::fields(hash, ranges)).await?;
        Self::from_values(hash, ranges, &values)
    }

    /// The stored offset of one partition (a stage's `stored_offset`).
    pub async fn stored<S: KvStore>(
        store: &S,
        hash: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StoreError> {
        let field = offset_field(topic, partition);
        let raw = store
            .get_fields(&[(hash.to_owned(), field.clone())])
            .await?
            .pop()
            .flatten();
        parse(hash, &field, raw.as_deref())
    }

    /// The stored offset of a range's partition, as read (`None`: nothing
    /// stored, or not one of the ranges).
    pub fn stored_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        self.ranges
            .iter()
            .find(|r| r.topic == topic && r.partition == partition)
            .and_then(|r| r.stored)
    }

    /// Whether a record's effect is not stored yet (its offset is above
    /// the stored one, or nothing is stored for its partition).
    pub fn is_fresh(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.stored_offset(topic, partition)
            .is_none_or(|stored| offset > stored)
    }

    /// Adds to `write`, for every range that moves past its stored offset,
    /// a guard on the value read and the range's last offset. Ranges
    /// already stored (a replay) add nothing.
    pub fn advance(&self, write: &mut Batch) {
        for r in &self.ranges {
            if r.stored.is_none_or(|stored| stored < r.last_offset) {
                let field = offset_field(&r.topic, r.partition);
                write.guard(self.hash.clone(), field.clone(), r.raw.clone());
                write.set(self.hash.clone(), field, r.last_offset.to_string());
            }
        }
    }
}
