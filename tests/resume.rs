//! Resuming inside a record batch (issue 19, point 0): tansu's memory
//! engine answers a fetch that starts inside a producer's record batch with
//! the batches after it. A stage whose stored offset lies inside a batch
//! must still receive every record after it — the runner positions the
//! partition at the stored offset + 1, notices the gap and fetches again
//! from further back — and never store an offset beyond a record it missed.

use anyhow::Result;
use mrrec_messages::Topic;
use mrrec_stream::{create_topics, KafkaClients, RunnerSettings, Shutdown, StageRunner};
use mrrec_testkit::{Redis, Tansu, TansuStorage};
use mrrec_tests::counting_stage::{CountingStage, Faults};
use mrrec_tests::{events, eventually, produce, test_config};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_resuming_inside_a_record_batch_misses_nothing() -> Result<()> {
    mrrec_tests::init_tracing();
    let tansu = Tansu::start_with(TansuStorage::Memory, None)?;
    let redis_server = Redis::start()?;
    let prefix = "resume.";
    let config = test_config(&tansu.bootstrap(), prefix, 1);
    let clients = KafkaClients::new(&tansu.bootstrap(), &config.kafka.properties);
    create_topics(&clients, &config.topics).await?;
    let topic = Topic::Events.name(prefix);

    // 600 events produced at once: the producer packs them into a few
    // large record batches.
    let landed = produce(&tansu.bootstrap(), &topic, &events(0..600, 7, "view")).await?;
    assert!(landed.iter().all(|l| l.partition == 0));

    // The stage's state already holds everything up to offset 250, the
    // middle of a record batch (and no group offset is committed).
    let ns = "resume";
    let mut redis = redis::Client::open(redis_server.url())?
        .get_connection_manager()
        .await?;
    let _: () = redis
        .hset(CountingStage::offsets_key(ns), format!("{topic}:0"), 250)
        .await?;

    let settings = RunnerSettings::from_config(&config, "resume", &[Topic::Events]);
    // The group's committed offset is the one after it too, as a crash
    // after the state write and its commit leaves it: a consumer that
    // simply resumes there is answered with nothing and stalls.
    {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
        let committer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", tansu.bootstrap())
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .create()?;
        let mut offsets = rdkafka::TopicPartitionList::new();
        offsets.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(251))?;
        committer.commit(&offsets, CommitMode::Sync)?;
    }
    let committed = mrrec_tests::committed_offsets(&tansu.bootstrap(), &settings.group_id, &topic)?;
    assert_eq!(committed.get(&0), Some(&251), "{committed:?}");
    let stage = CountingStage::connect(&redis_server.url(), ns, Faults::default()).await?;
    let shutdown = Shutdown::new();
    let runner = tokio::spawn(StageRunner::new(clients, settings, stage).run(shutdown.clone()));
    eventually(Duration::from_secs(90), "offset 599 stored", || {
        let mut redis = redis.clone();
        let key = CountingStage::offsets_key(ns);
        let field = format!("{topic}:0");
        async move {
            let stored: Option<i64> = redis.hget(key, field).await?;
            Ok(stored == Some(599))
        }
    })
    .await?;
    shutdown.trigger();
    runner.await??;

    // Exactly the events after offset 250, each once.
    let counts: HashMap<String, i64> = redis.hgetall(CountingStage::counts_key(ns)).await?;
    let offset_of: HashMap<String, i64> = (0..600)
        .map(|i| (format!("e{i}"), landed[i].offset))
        .collect();
    let mut missing: Vec<i64> = offset_of
        .iter()
        .filter(|(id, offset)| **offset > 250 && !counts.contains_key(*id))
        .map(|(_, offset)| *offset)
        .collect();
    missing.sort();
    assert!(missing.is_empty(), "records never processed: {missing:?}");
    assert!(counts.values().all(|n| *n == 1), "each event once");
    assert_eq!(counts.len(), 349, "offsets 251..=599");
    Ok(())
}
