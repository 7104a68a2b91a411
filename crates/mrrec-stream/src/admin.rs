//! `mrrec topics create`: every topic of DESIGN §2, idempotently.

use crate::{KafkaClients, StreamError};
use mrrec_config::TopicsConfig;
use mrrec_messages::Topic;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use std::time::Duration;

/// What `create_topics` found or did for one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicStatus {
    pub name: String,
    pub created: bool,
    /// Partitions the topic has now (from the cluster's metadata).
    pub partitions: usize,
    /// Partitions the configuration asks for.
    pub wanted_partitions: i32,
}

/// Creates every mrrec topic that does not exist yet; existing ones are left as they are.
pub async fn create_topics(
    clients: &KafkaClients,
    topics: &TopicsConfig,
) -> Result<Vec<TopicStatus>, StreamError> {
    let admin: AdminClient<DefaultClientContext> = clients.admin().create()?;
    let specs: Vec<(String, i32, bool)> = Topic::ALL
        .iter()
        .map(|t| {
            let partitions = if t.single_partition() {
                1
            } else {
                topics.partitions
            };
            (t.name(&topics.prefix), partitions, t.is_compacted())
        })
        .collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .map(|(name, partitions, compacted)| {
            let topic = NewTopic::new(
                name,
                *partitions,
                TopicReplication::Fixed(topics.replication),
            );
            if *compacted {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            }
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(new_topics.iter(), &options).await?;

    let mut created = std::collections::HashMap::new();
    for result in results {
        match result {
            Ok(name) => {
                created.insert(name, true);
            }
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                created.insert(name, false);
            }
            Err((name, code)) => {
                return Err(StreamError::Other(format!("creating topic {name}: {code}")));
            }
        }
    }

    let mut statuses = Vec::new();
    for (name, wanted, _) in &specs {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .map_or(0, |t| t.partitions().len());
        statuses.push(TopicStatus {
            name: name.clone(),
            created: created.get(name).copied().unwrap_or(false),
            partitions,
            wanted_partitions: *wanted,
        });
    }
    Ok(statuses)
}

/// How many partitions `topic` has (0 when it does not exist).
pub async fn partition_count(clients: &KafkaClients, topic: &str) -> Result<usize, StreamError> {
    let admin: AdminClient<DefaultClientContext> = clients.admin().create()?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len()))
    })
    .await
    .map_err(|e| StreamError::Other(format!("reading topic metadata: {e}")))?
}
