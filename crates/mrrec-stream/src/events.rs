//! Typed events of the runtime. Each thing that happens is one value whose
//! `emit` writes its log line and moves its metric together (as vector's
//! internal events do), so the log and the metric cannot drift apart.
//! Metric labels stay bounded (stage, topic, reason kind); the record's
//! place and the full reason go only to the log.

use crate::metrics as m;

/// A record went to the DLQ: it did not decode, or its reader refused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLettered {
    /// Who dead-lettered it (a stage, or a tail reader's name).
    pub stage: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Short, bounded label (`json`, `invalid`, `refused`, …).
    pub kind: &'static str,
    /// Why, as stored in the dead letter.
    pub reason: String,
}

impl DeadLettered {
    /// Logs the dead letter and counts it in `mrrec_dlq_total`. Call once the
    /// dead letter is durable in the DLQ. Logged at debug: a producer that
    /// sends bad records can send millions, and the counter and the DLQ
    /// (which keeps each reason) carry the signal.
    pub fn emit(&self) {
        tracing::debug!(
            stage = %self.stage,
            topic = %self.topic,
            partition = self.partition,
            offset = self.offset,
            kind = self.kind,
            reason = %self.reason,
            "record sent to the DLQ"
        );
        metrics::counter!(
            m::DEAD_LETTERED,
            "stage" => self.stage.clone(),
            "topic" => self.topic.clone(),
            "reason" => self.kind
        )
        .increment(1);
    }
}

/// A dead letter could not be written to the DLQ; the record is lost to it.
#[derive(Debug)]
pub struct DeadLetterLost<'a> {
    pub event: &'a DeadLettered,
    /// Why it could not be written.
    pub error: String,
}

impl DeadLetterLost<'_> {
    /// Logs the loss at error level and counts it in `mrrec_dlq_lost_total`.
    pub fn emit(&self) {
        tracing::error!(
            stage = %self.event.stage,
            topic = %self.event.topic,
            partition = self.event.partition,
            offset = self.event.offset,
            reason = %self.event.reason,
            error = %self.error,
            "could not write the DLQ record"
        );
        metrics::counter!(
            m::DEAD_LETTERS_LOST,
            "stage" => self.event.stage.clone(),
            "topic" => self.event.topic.clone()
        )
        .increment(1);
    }
}
