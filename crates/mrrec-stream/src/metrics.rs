//! Metric names of the runtime and the Prometheus exporter.
//!
//! Labels are bounded: stage, topic, partition, reason kind. Never a user or item id.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use std::net::SocketAddr;

pub const CONSUMED: &str = "mrrec_consumed_total";
pub const PROCESSED: &str = "mrrec_processed_total";
pub const SKIPPED: &str = "mrrec_skipped_total";
pub const DEAD_LETTERED: &str = "mrrec_dlq_total";
pub const DEAD_LETTERS_LOST: &str = "mrrec_dlq_lost_total";
pub const PRODUCED: &str = "mrrec_produced_total";
pub const RETRIES: &str = "mrrec_retries_total";
pub const KAFKA_ERRORS: &str = "mrrec_kafka_errors_total";
pub const COMMIT_FAILURES: &str = "mrrec_commit_failures_total";
pub const BATCH_SECONDS: &str = "mrrec_batch_seconds";
pub const BATCH_RECORDS: &str = "mrrec_batch_records";
pub const CONSUMER_LAG: &str = "mrrec_consumer_lag";
pub const BACKING_OFF: &str = "mrrec_backing_off";
pub const ASSIGNED_PARTITIONS: &str = "mrrec_assigned_partitions";
pub const REBALANCES: &str = "mrrec_rebalances_total";
pub const OFFSET_GAPS: &str = "mrrec_stream_offset_gaps_total";

/// Registers descriptions so the exporter prints HELP lines.
pub fn describe() {
    describe_counter!(CONSUMED, "Records polled from Kafka");
    describe_counter!(PROCESSED, "Records processed by the stage");
    describe_counter!(
        SKIPPED,
        "Records skipped: at or below the offset stored with the stage's state"
    );
    describe_counter!(DEAD_LETTERED, "Records sent to the DLQ, by reason kind");
    describe_counter!(
        DEAD_LETTERS_LOST,
        "Dead letters of a topic tail reader the DLQ did not take (failed for good, or still failing after 30 s); the reason is only in the log"
    );
    describe_counter!(
        OFFSET_GAPS,
        "Records the broker skipped (a fetch answered from further on than asked); each is fetched again from further back"
    );
    describe_counter!(PRODUCED, "Records produced and acknowledged");
    describe_counter!(RETRIES, "Retryable failures, by phase");
    describe_counter!(KAFKA_ERRORS, "Errors reported by the Kafka client");
    describe_counter!(
        COMMIT_FAILURES,
        "Offset commits that failed (retried with the next commit)"
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time to process and commit one batch"
    );
    describe_histogram!(BATCH_RECORDS, Unit::Count, "Records per batch");
    describe_gauge!(CONSUMER_LAG, "Records behind the end of each partition");
    describe_gauge!(
        BACKING_OFF,
        "1 while the stage waits to retry a failed batch"
    );
    describe_gauge!(
        ASSIGNED_PARTITIONS,
        "Partitions this instance owns now (0 between a revoke and the next assignment)"
    );
    describe_counter!(
        REBALANCES,
        "Partition revocations and assignments this instance went through, by kind"
    );
}

/// Starts the Prometheus endpoint on `listen` (`host:port`); empty disables it.
/// Must be called within a tokio runtime.
pub fn install_prometheus(listen: &str) -> Result<Option<SocketAddr>, String> {
    if listen.trim().is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = listen
        .trim()
        .parse()
        .map_err(|e| format!("metrics.listen {listen:?}: {e}"))?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(BATCH_SECONDS.into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("metrics endpoint on {addr}: {e}"))?;
    describe();
    Ok(Some(addr))
}
