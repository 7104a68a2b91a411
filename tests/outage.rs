//! Redis killed and restarted mid-stream: the stage backs off without
//! committing, resumes when Redis is back, and every event counts exactly once.

use anyhow::Result;
use mrrec_messages::Topic;
use mrrec_stream::{create_topics, KafkaClients, Progress, RunnerSettings, Shutdown, StageRunner};
use mrrec_testkit::{Redis, Tansu};
use mrrec_tests::counting_stage::{CountingStage, Faults};
use mrrec_tests::{eventually, produce, test_config, RawRecord};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::Duration;

fn events(range: std::ops::Range<usize>) -> Vec<RawRecord> {
    mrrec_tests::events(range, 17, "purchase")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_pauses_the_stage_and_loses_nothing() -> Result<()> {
    mrrec_tests::init_tracing();
    let tansu = Tansu::start()?;
    let dir = std::env::temp_dir().join(format!("mrrec-redis-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut redis_server = Redis::start_persistent(&dir)?;
    let bootstrap = tansu.bootstrap();
    let config = test_config(&bootstrap, "out.", 2);
    let clients = KafkaClients::new(&bootstrap, &config.kafka.properties);
    create_topics(&clients, &config.topics).await?;
    let topic = Topic::Events.name("out.");
    let ns = "out";

    produce(&bootstrap, &topic, &events(0..1000)).await?;
    let stage = CountingStage::connect(&redis_server.url(), ns, Faults::default()).await?;
    let settings = RunnerSettings::from_config(&config, "counting", &[Topic::Events]);
    let runner = StageRunner::new(clients.clone(), settings, stage);
    let progress = runner.progress();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(runner.run(shutdown.clone()));
    eventually(Duration::from_secs(60), "the first batches", || {
        let p = progress.clone();
        async move { Ok(Progress::get(&p.processed) >= 100) }
    })
    .await?;

    // Redis goes away while events keep arriving.
    redis_server.kill();
    produce(&bootstrap, &topic, &events(1000..2000)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during_outage = Progress::get(&progress.processed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        Progress::get(&progress.processed),
        during_outage,
        "nothing is processed while Redis is down"
    );
    assert!(!running.is_finished(), "the stage waits instead of failing");

    redis_server.start_again()?;
    let mut redis = redis::Client::open(redis_server.url())?
        .get_connection_manager()
        .await?;
    eventually(Duration::from_secs(60), "all 2000 events counted", || {
        let mut redis = redis.clone();
        async move {
            let counts: HashMap<String, i64> = redis.hgetall(CountingStage::counts_key(ns)).await?;
            Ok(counts.len() == 2000)
        }
    })
    .await?;
    shutdown.trigger();
    let report = running.await??;
    assert!(report.retries > 0, "the outage was retried: {report:?}");

    let counts: HashMap<String, i64> = redis.hgetall(CountingStage::counts_key(ns)).await?;
    assert!(counts.values().all(|&n| n == 1), "an event counted twice");
    let applied: i64 = redis.get(CountingStage::applied_key(ns)).await?;
    assert_eq!(applied, 2000);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
