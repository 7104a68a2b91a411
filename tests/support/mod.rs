//! Shared helpers of the integration tests: producing and reading topics on a
//! real broker, and a Redis-backed stage that keeps its offsets with its state.

pub mod counting_stage;

use anyhow::{Context, Result};
use mrrec_config::Config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .with_thread_names(true)
        .try_init();
}

/// Defaults with the broker, a topic prefix of the test's own, and small batches.
pub fn test_config(bootstrap: &str, prefix: &str, partitions: i32) -> Config {
    Config::from_toml_str(&format!(
        r#"
[kafka]
brokers = "{bootstrap}"
group_prefix = "{prefix}group-"
[topics]
prefix = "{prefix}"
partitions = {partitions}
[stream]
batch_max_records = 25
batch_max_ms = 50
shutdown_timeout_ms = 5000
backoff_initial_ms = 20
backoff_max_ms = 200
[kafka.properties]
{debug}
"#,
        debug = std::env::var("MRREC_TEST_KAFKA_DEBUG")
            .map(|d| format!("debug = \"{d}\""))
            .unwrap_or_default()
    ))
    .expect("test config is valid")
}

/// A record to produce: optional key, optional payload (None: a null value).
pub type RawRecord = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Valid `kind` events (`e{i}` for i in `range`), spread over `users` users and
/// keyed by user, as records to produce.
pub fn events(range: std::ops::Range<usize>, users: usize, kind: &str) -> Vec<RawRecord> {
    range
        .map(|i| {
            let user = format!("user-{}", i % users);
            let payload = serde_json::json!({
                "event_id": format!("e{i}"), "user_id": user, "kind": kind, "item_id": "i", "ts": i,
            });
            (
                Some(user.into_bytes()),
                Some(serde_json::to_vec(&payload).unwrap()),
            )
        })
        .collect()
}

/// Where a produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Landed {
    pub partition: i32,
    pub offset: i64,
}

/// Produces `(key, payload)` records in order and returns where each landed.
pub async fn produce(bootstrap: &str, topic: &str, records: &[RawRecord]) -> Result<Vec<Landed>> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "16000000")
        .set("linger.ms", "2")
        .create()?;
    let mut deliveries = Vec::new();
    for (key, payload) in records {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(key) = key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = payload {
            record = record.payload(payload.as_slice());
        }
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?,
        );
    }
    let mut landed = Vec::new();
    for delivery in deliveries {
        let delivery = delivery
            .await
            .context("delivery canceled")?
            .map_err(|(e, _)| anyhow::anyhow!("delivery to {topic}: {e}"))?;
        landed.push(Landed {
            partition: delivery.partition,
            offset: delivery.offset,
        });
    }
    Ok(landed)
}

fn reader(bootstrap: &str) -> Result<BaseConsumer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "mrrec-test-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?)
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().iter().map(|p| p.id()).collect())
        .unwrap_or_default())
}

/// End offset of every partition of `topic`.
pub fn high_watermarks(bootstrap: &str, topic: &str) -> Result<HashMap<i32, i64>> {
    let consumer = reader(bootstrap)?;
    let mut marks = HashMap::new();
    for partition in partitions_of(&consumer, topic)? {
        let (_, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        marks.insert(partition, high);
    }
    Ok(marks)
}

/// Offsets `group` has committed on every partition of `topic` (-1: none).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> Result<HashMap<i32, i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for partition in partitions_of(&consumer, topic)? {
        tpl.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            (e.partition(), offset)
        })
        .collect())
}

/// Reads every record of `topic` from the beginning until `expected` have been
/// seen and nothing more arrives for a moment (or `timeout`).
pub fn read_all(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    let consumer = reader(bootstrap)?;
    let mut tpl = TopicPartitionList::new();
    for partition in partitions_of(&consumer, topic)? {
        tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    let mut out = Vec::new();
    let mut quiet_since = Instant::now();
    while start.elapsed() < timeout {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                out.push(message.detach());
                quiet_since = Instant::now();
            }
            Some(Err(e)) => tracing::warn!("read {topic}: {e}"),
            None if out.len() >= expected && quiet_since.elapsed() > Duration::from_millis(500) => {
                break
            }
            None => {}
        }
    }
    Ok(out)
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() > timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
