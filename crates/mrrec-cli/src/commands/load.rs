//! `mrrec load ml-100k` and `mrrec load jsonl`: datasets into the input topics.
//! Everything is read and validated before anything is produced. A bad
//! JSON line is skipped and reported (file, line, reason) and the rest is
//! loaded; a file that cannot be read, or holds no good line, fails the
//! command without leaving half a dataset behind.

use anyhow::{bail, Context, Result};
use mrrec_config::Config;
use mrrec_datasets::Dataset;
use mrrec_inprocess::produce::{publish_with_progress, records};
use mrrec_stream::{create_topics, KafkaClients, Publisher};

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
