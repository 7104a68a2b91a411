//! Kafka client settings shared by consumers, producers and the admin client,
//! and where the bootstrap servers come from (a cluster or the embedded broker).

use crate::{EmbeddedBroker, StreamError};
use mrrec_config::Config;
use rdkafka::ClientConfig;
use std::collections::BTreeMap;

/// Where to connect: a cluster from config, or an embedded broker this value keeps alive.
pub enum Bootstrap {
    Servers(String),
    Embedded(EmbeddedBroker),
}

impl Bootstrap {
    /// Starts the embedded broker (with every topic created) when `kafka.brokers`
    /// is `embedded`; otherwise uses the configured servers.
    pub fn resolve(config: &Config) -> Result<Bootstrap, StreamError> {
        Self::resolve_with(config, &[])
    }

    /// [`Self::resolve`] for a process that also runs stages under other
    /// topic prefixes (`tiers`: their configs): an embedded broker creates
    /// their topics too. A cluster's topics are created by the caller.
    pub fn resolve_with(config: &Config, tiers: &[Config]) -> Result<Bootstrap, StreamError> {
        if config.kafka.is_embedded() {
            let prefixes: Vec<(&str, i32)> = std::iter::once(config)
                .chain(tiers)
                .map(|c| (c.topics.prefix.as_str(), c.topics.partitions))
                .collect();
            Ok(Bootstrap::Embedded(EmbeddedBroker::start_prefixes(
                &prefixes,
            )?))
        } else {
            Ok(Bootstrap::Servers(config.kafka.brokers.clone()))
        }
    }

    pub fn servers(&self) -> &str {
        match self {
            Bootstrap::Servers(servers) => servers,
            Bootstrap::Embedded(broker) => broker.bootstrap_servers(),
        }
    }
}

/// Builds rdkafka client configs with mrrec's settings and the user's pass-through properties.
#[derive(Clone)]
pub struct KafkaClients {
    bootstrap: String,
    properties: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaClients")
            .field("bootstrap", &self.bootstrap)
            .field("properties", &self.properties.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KafkaClients {
    pub fn new(bootstrap: &str, properties: &BTreeMap<String, String>) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            properties: properties.clone(),
        }
    }

    pub fn from_config(config: &Config, bootstrap: &Bootstrap) -> Self {
        Self::new(bootstrap.servers(), &config.kafka.properties)
    }

    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The same clients with `defaults` added to the properties, except
    /// where the user set a property already (the user's value wins).
    pub fn with_default_properties(&self, defaults: &[(&str, &str)]) -> Self {
        let mut properties = self.properties.clone();
        for (key, value) in defaults {
            properties
                .entry((*key).to_owned())
                .or_insert_with(|| (*value).to_owned());
        }
        Self {
            bootstrap: self.bootstrap.clone(),
            properties,
        }
    }

    fn base(&self, role: Role, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in defaults {
            config.set(*key, *value);
        }
        // One `kafka.properties` table serves every client: each gets the
        // properties its role understands (librdkafka warns about the rest).
        for (key, value) in &self.properties {
            if role.accepts(key) {
                config.set(key, value);
            }
        }
        config
    }

    /// A group consumer: auto commit and auto offset store off (the runner
    /// commits only what is durable), earliest reset, eager rebalancing (so a
    /// revoke always covers the whole assignment), lag statistics every 5 s.
    pub fn consumer(&self, group_id: &str) -> ClientConfig {
        let mut config = self.base(
            Role::Consumer,
            &[
                ("auto.offset.reset", "earliest"),
                ("statistics.interval.ms", "5000"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("max.poll.interval.ms", "300000"),
                // Oversized records must reach the stage (and the DLQ), not stall the
                // partition: brokers that do not return a first record larger than
                // the fetch size (tansu 0.6) would otherwise never move past it.
                ("max.partition.fetch.bytes", "16777216"),
            ],
        );
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("partition.assignment.strategy", "range,roundrobin");
        config
    }

    /// A producer that waits for all in-sync replicas and partitions keys
    /// as Kafka's Java clients do (murmur2), so a key lands on the partition
    /// [`crate::partition_for_key`] names whoever produced it.
    pub fn producer(&self) -> ClientConfig {
        self.base(
            Role::Producer,
            &[
                ("acks", "all"),
                ("partitioner", "murmur2_random"),
                ("linger.ms", "5"),
                ("message.timeout.ms", "30000"),
                ("statistics.interval.ms", "0"),
            ],
        )
    }

    /// A plain (group-less) consumer, for tools and tests that read topics directly.
    pub fn reader(&self, group_id: &str) -> ClientConfig {
        let mut config = self.base(Role::Consumer, &[("auto.offset.reset", "earliest")]);
        config
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        config
    }

    /// An admin client.
    pub fn admin(&self) -> ClientConfig {
        self.base(Role::Admin, &[])
    }
}

/// Which kind of client a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Consumer,
    Producer,
    Admin,
}

/// librdkafka properties only consumers read (CONFIGURATION.md, "C").
const CONSUMER_ONLY: &[&str] = &[
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
];

/// librdkafka properties only producers read (CONFIGURATION.md, "P").
const PRODUCER_ONLY: &[&str] = &[
    "partitioner",
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "request.required.acks",
    "acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
    "queuing.strategy",
];

impl Role {
    fn accepts(self, key: &str) -> bool {
        match self {
            Role::Consumer => !PRODUCER_ONLY.contains(&key),
            Role::Producer => !CONSUMER_ONLY.contains(&key),
            Role::Admin => !PRODUCER_ONLY.contains(&key) && !CONSUMER_ONLY.contains(&key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_the_properties_of_its_role() {
        let properties: BTreeMap<String, String> = [
            ("linger.ms", "1"),
            ("fetch.wait.max.ms", "7"),
            ("security.protocol", "SASL_SSL"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let clients = KafkaClients::new("127.0.0.1:9092", &properties);
        let consumer = clients.consumer("g");
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));
        let producer = clients.producer();
        assert_eq!(producer.get("linger.ms"), Some("1"));
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        let admin = clients.admin();
        assert_eq!(admin.get("linger.ms"), None);
        assert_eq!(admin.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(clients.reader("r").get("linger.ms"), None);
    }
}
