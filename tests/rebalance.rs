//! Two instances of a stage in one consumer group on a real broker and Redis:
//! one joins mid-stream, one leaves mid-stream. Revokes flush and commit; the
//! offsets stored with the state make any replay a no-op; every event counts once.

use anyhow::Result;
use mrrec_messages::Topic;
use mrrec_stream::{create_topics, KafkaClients, Progress, RunnerSettings, Shutdown, StageRunner};
use mrrec_testkit::{Redis, Tansu};
use mrrec_tests::counting_stage::{CountingStage, Faults};
use mrrec_tests::{
    committed_offsets, eventually, high_watermarks, produce, test_config, RawRecord,
};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::Duration;

fn events(range: std::ops::Range<usize>) -> Vec<RawRecord> {
    mrrec_tests::events(range, 29, "click")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_lose_and_double_nothing() -> Result<()> {
    mrrec_tests::init_tracing();
    let tansu = Tansu::start()?;
    let redis_server = Redis::start()?;
    let bootstrap = tansu.bootstrap();
    let config = test_config(&bootstrap, "rb.", 4);
    let clients = KafkaClients::new(&bootstrap, &config.kafka.properties);
    create_topics(&clients, &config.topics).await?;
    let topic = Topic::Events.name("rb.");
    let settings = RunnerSettings::from_config(&config, "counting", &[Topic::Events]);
    let ns = "rb";
    let mut redis = redis::Client::open(redis_server.url())?
        .get_connection_manager()
        .await?;
    let counted = |redis: redis::aio::ConnectionManager| async move {
        let mut redis = redis;
        let counts: HashMap<String, i64> = redis.hgetall(CountingStage::counts_key(ns)).await?;
        anyhow::Ok(counts)
    };

    let start = |shutdown: Shutdown| {
        let clients = clients.clone();
        let settings = settings.clone();
        let url = redis_server.url();
        async move {
            let stage = CountingStage::connect(&url, ns, Faults::default()).await?;
            let runner = StageRunner::new(clients, settings, stage);
            let progress = runner.progress();
            anyhow::Ok((progress, tokio::spawn(runner.run(shutdown))))
        }
    };

    produce(&bootstrap, &topic, &events(0..1500)).await?;
    let stop_a = Shutdown::new();
    let (progress_a, a) = start(stop_a.clone()).await?;
    eventually(
        Duration::from_secs(60),
        "instance A to start consuming",
        || {
            let p = progress_a.clone();
            async move { Ok(Progress::get(&p.processed) > 0) }
        },
    )
    .await?;

    // B joins while A is mid-stream; once the group has rebalanced (A flushed
    // and committed on revoke), more events arrive for both.
    let stop_b = Shutdown::new();
    let (progress_b, b) = start(stop_b.clone()).await?;
    eventually(
        Duration::from_secs(60),
        "A and B to share the partitions",
        || {
            let (a, b) = (progress_a.clone(), progress_b.clone());
            async move { Ok(Progress::get(&a.assigned) == 2 && Progress::get(&b.assigned) == 2) }
        },
    )
    .await?;
    produce(&bootstrap, &topic, &events(1500..3000)).await?;
    eventually(
        Duration::from_secs(60),
        "instance B to process its share",
        || {
            let p = progress_b.clone();
            async move { Ok(Progress::get(&p.processed) > 0) }
        },
    )
    .await?;

    // A leaves (drains, commits, revokes); B takes over everything.
    stop_a.trigger();
    let report_a = a.await??;
    produce(&bootstrap, &topic, &events(3000..4500)).await?;
    eventually(Duration::from_secs(90), "all 4500 events counted", || {
        let redis = redis.clone();
        async move { Ok(counted(redis).await?.len() == 4500) }
    })
    .await?;
    eventually(
        Duration::from_secs(30),
        "offsets committed at the end",
        || {
            let (bootstrap, group, topic) =
                (bootstrap.clone(), settings.group_id.clone(), topic.clone());
            async move {
                let ends = high_watermarks(&bootstrap, &topic)?;
                let committed = committed_offsets(&bootstrap, &group, &topic)?;
                Ok(ends
                    .iter()
                    .all(|(p, end)| *end == 0 || committed.get(p) == Some(end)))
            }
        },
    )
    .await?;
    stop_b.trigger();
    let report_b = b.await??;

    let counts = counted(redis.clone()).await?;
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(doubled.is_empty(), "counted more than once: {doubled:?}");
    let applied: i64 = redis.get(CountingStage::applied_key(ns)).await?;
    assert_eq!(applied, 4500);
    assert!(
        report_a.processed > 0 && report_b.processed > 0,
        "{report_a:?} {report_b:?}"
    );
    // Assigned all, revoked when B joined, assigned half (the revoke on leaving
    // the group happens after the report is taken).
    assert!(report_a.rebalances >= 3, "A saw B join: {report_a:?}");
    Ok(())
}
