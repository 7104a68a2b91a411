//! Typed events of the train stage. How a round ended is one value whose
//! `emit` writes the log line and counts the round in
//! `mrrec_train_rounds_total{decision}`, and whose [`RoundEnded::log_line`]
//! is the line of the trainer's JSONL log (`policy.dir/train-log.jsonl`):
//! the three cannot disagree. Emitted once the round's records are durable.

use crate::{Decision, RoundReport};

/// Counter: rounds, by decision.
pub const ROUNDS: &str = "mrrec_train_rounds_total";
/// Counter: rewards the trainer could not use.
pub const SKIPPED: &str = "mrrec_train_skipped_total";

/// Registers the HELP text of the train stage's own metrics.
pub fn describe_metrics() {
    metrics::describe_counter!(
        ROUNDS,
        "Training rounds, by decision: published, rejected (by the gate), nothing_to_learn, reannounced (published before, announced now), failed"
    );
    metrics::describe_counter!(
        SKIPPED,
        "Rewards the trainer could not use (dead-lettered with the reason)"
    );
}

/// How a training round ended.
#[derive(Debug)]
pub enum RoundEnded<'a> {
    /// The round ran: a version was published, or the gate rejected it,
    /// or there was nothing to learn.
    Decided {
        report: &'a RoundReport,
        rewards: usize,
        /// The rewards it could not use, now in the DLQ.
        dead_lettered: usize,
    },
    /// A round that had published `version` but not finished was finished
    /// by announcing it again; its `dropped` rewards were not trained twice.
    Reannounced {
        version: u32,
        parent: Option<u32>,
        dropped: usize,
    },
    /// The round failed on its input; its rewards are in the DLQ.
    Failed { reason: &'a str, rewards: usize },
}

impl RoundEnded<'_> {
    /// The `decision` label and log field.
    pub fn decision(&self) -> &'static str {
        match self {
            RoundEnded::Decided { report, .. } => match report.decision {
                Decision::Published(_) => "published",
                Decision::Rejected(_) => "rejected",
                Decision::NothingToLearn(_) => "nothing_to_learn",
            },
            RoundEnded::Reannounced { .. } => "reannounced",
            RoundEnded::Failed { .. } => "failed",
        }
    }

    /// Logs the round and counts it, and the rewards it dead-lettered as
    /// skipped.
    pub fn emit(&self) {
        let skipped = match self {
            RoundEnded::Decided { dead_lettered, .. } => *dead_lettered,
            RoundEnded::Reannounced { .. } => 0,
            RoundEnded::Failed { rewards, .. } => *rewards,
        };
        if skipped > 0 {
            metrics::counter!(SKIPPED, "stage" => crate::stage::STAGE).increment(skipped as u64);
        }
        match self {
            RoundEnded::Decided { report, .. } => match &report.decision {
                Decision::Published(version) => tracing::info!(
                    version = version.version,
                    parent = report.parent,
                    metrics = ?report.metrics,
                    "published a new policy version"
                ),
                Decision::Rejected(reason) => tracing::warn!(
                    parent = report.parent,
                    %reason,
                    "candidate rejected; nothing published"
                ),
                Decision::NothingToLearn(reason) => {
                    tracing::info!(%reason, "nothing to learn this round")
                }
            },
            RoundEnded::Reannounced { version, dropped, .. } => tracing::warn!(
                version,
                dropped,
                "the round that published this version had not finished: announced it again, and dropped the rewards it was trained on instead of training them twice"
            ),
            RoundEnded::Failed { reason, rewards } => tracing::error!(
                %reason,
                rewards,
                "training round failed on its input; its rewards are in the DLQ"
            ),
        }
        metrics::counter!(ROUNDS, "stage" => crate::stage::STAGE, "decision" => self.decision())
            .increment(1);
    }

    /// The trainer's log line for this round.
    pub fn log_line(&self) -> serde_json::Value {
        let ts = mrrec_stream::now_ms();
        match self {
            RoundEnded::Decided {
                report, rewards, ..
            } => {
                let (version, reason) = match &report.decision {
                    Decision::Published(v) => (Some(v.version), None),
                    Decision::Rejected(r) | Decision::NothingToLearn(r) => (None, Some(r)),
                };
                serde_json::json!({
                    "ts": ts,
                    "parent": report.parent,
                    "decision": self.decision(),
                    "version": version,
                    "reason": reason,
                    "rewards": rewards,
                    "skipped": report.skipped.len(),
                    "metrics": report.metrics,
                })
            }
            RoundEnded::Reannounced {
                version,
                parent,
                dropped,
            } => serde_json::json!({
                "ts": ts,
                "decision": self.decision(),
                "version": version,
                "parent": parent,
                "rewards": dropped,
            }),
            RoundEnded::Failed { reason, rewards } => serde_json::json!({
                "ts": ts,
                "decision": self.decision(),
                "reason": reason,
                "rewards": rewards,
            }),
        }
    }
}
