//! `mrrec topics create`.

use anyhow::{bail, Context, Result};
use mrrec_config::Config;
use mrrec_stream::{create_topics, KafkaClients};

pub async fn create(config: &Config) -> Result<()> {
    if config.kafka.is_embedded() {
        bail!(
            "kafka.brokers is `embedded`: the in-process broker creates its own topics. \
             Point kafka.brokers (or MRREC__KAFKA__BROKERS) at a cluster to create topics there"
        );
    }
    let clients = KafkaClients::new(&config.kafka.brokers, &config.kafka.properties);
    let statuses = create_topics(&clients, &config.topics)
        .await
        .with_context(|| format!("creating topics on {}", config.kafka.brokers))?;
    println!("{:<32} {:>10}  status", "topic", "partitions");
    for status in &statuses {
        let note = if status.created { "created" } else { "exists" };
        println!("{:<32} {:>10}  {note}", status.name, status.partitions);
        if status.partitions != status.wanted_partitions as usize {
            tracing::warn!(
                topic = %status.name,
                has = status.partitions,
                wanted = status.wanted_partitions,
                "existing topic has a different partition count; left as it is"
            );
        }
    }
    let created = statuses.iter().filter(|s| s.created).count();
    println!(
        "{created} created, {} already existed",
        statuses.len() - created
    );
    Ok(())
}
