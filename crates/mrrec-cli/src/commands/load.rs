//! `mrrec load ml-100k` and `mrrec load jsonl`: datasets into the input topics.
//! Everything is read and validated before anything is produced. A bad
//! JSON line is skipped and reported (file, line, reason) and the rest is
//! loaded; a file that cannot be read, or holds no good line, fails the
//! command without leaving half a dataset behind.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use mrrec_config::Config;
use mrrec_datasets::Dataset;
use mrrec_messages::{encode, Event, Item, Topic};
use mrrec_stream::{create_topics, KafkaClients, OutgoingRecord, Publisher};

/// Creates the topics if needed and produces the dataset, with progress.
pub async fn produce(config: &Config, dataset: &Dataset) -> Result<()> {
    if config.kafka.is_embedded() {
        bail!(
            "kafka.brokers is `embedded`: a broker inside this command would vanish when it exits. \
             Point kafka.brokers (or MRREC__KAFKA__BROKERS) at a cluster, or use `mrrec demo`"
        );
    }
    let clients = KafkaClients::new(&config.kafka.brokers, &config.kafka.properties);
    create_topics(&clients, &config.topics)
        .await
        .with_context(|| format!("creating topics on {}", config.kafka.brokers))?;
    let publisher = Publisher::new(&clients, "load")?;
    let prefix = &config.topics.prefix;

    let records = records(prefix, &dataset.items, &dataset.events)?;
    let started = std::time::Instant::now();
    publish_with_progress(&publisher, records, "producing").await?;
    eprintln!(
        "produced {} items and {} events to {} in {:.1}s",
        dataset.items.len(),
        dataset.events.len(),
        config.kafka.brokers,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The records that put `items` and `events` on their topics (key: item id, user id).
pub fn records(prefix: &str, items: &[Item], events: &[Event]) -> Result<Vec<OutgoingRecord>> {
    let mut records = Vec::with_capacity(items.len() + events.len());
    for item in items {
        records.push(OutgoingRecord {
            topic: Topic::Items.name(prefix),
            key: Some(item.item_id.clone().into_bytes()),
            payload: encode(item)?,
        });
    }
    for event in events {
        records.push(OutgoingRecord {
            topic: Topic::Events.name(prefix),
            key: Some(event.user_id.clone().into_bytes()),
            payload: encode(event)?,
        });
    }
    Ok(records)
}

/// A progress bar for `len` steps, on stderr.
pub fn progress_bar(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

/// Produces `records` in chunks, waiting for every acknowledgement, with progress.
pub async fn publish_with_progress(
    publisher: &Publisher,
    records: Vec<OutgoingRecord>,
    message: &str,
) -> Result<()> {
    let bar = progress_bar(records.len() as u64, message);
    let mut rest = records;
    while !rest.is_empty() {
        let chunk: Vec<OutgoingRecord> = rest.drain(..rest.len().min(10_000)).collect();
        let n = chunk.len() as u64;
        publisher.publish_all(chunk).await.map_err(|(e, unsent)| {
            anyhow::anyhow!("{} records not acknowledged: {e}", unsent.len())
        })?;
        bar.inc(n);
    }
    bar.finish_and_clear();
    Ok(())
}
