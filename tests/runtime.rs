//! The stream runtime against a real tansu broker and a real Redis: valid events
//! are processed exactly once in effect (through a retryable outage and a crash
//! between the state write and the offset commit), every malformed record lands
//! in the DLQ with a reason, the stage stays up, and the committed offsets end at
//! the end of the topic.

use anyhow::Result;
use mrrec_messages::{decode, DeadLetter, Topic};
use mrrec_stream::{
    create_topics, KafkaClients, RunnerSettings, Shutdown, StageRunner, StreamError,
};
use mrrec_testkit::{Redis, Tansu};
use mrrec_tests::counting_stage::{CountingStage, Faults};
use mrrec_tests::{
    committed_offsets, eventually, high_watermarks, produce, read_all, test_config, Landed,
    RawRecord,
};
use redis::AsyncCommands;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

fn valid_event(i: usize) -> RawRecord {
    let user = format!("u{}", i % 7);
    let payload = serde_json::json!({
        "event_id": format!("e{i}"),
        "user_id": user,
        "kind": "rate",
        "item_id": format!("i{}", i % 13),
        "value": (i % 5 + 1) as f64,
        "ts": 1_700_000_000_000i64 + i as i64,
        "unknown_field": {"ignored": true},
    });
    (
        Some(user.into_bytes()),
        Some(serde_json::to_vec(&payload).unwrap()),
    )
}

/// Malformed and hostile records, each with a word its DLQ reason must contain.
fn malformed() -> Vec<(RawRecord, &'static str)> {
    let key = || Some(b"u1".to_vec());
    let json = |v: serde_json::Value| Some(serde_json::to_vec(&v).unwrap());
    vec![
        ((key(), Some(b"{\"event_id\": ".to_vec())), "JSON"),
        ((key(), Some(b"not json at all".to_vec())), "JSON"),
        ((key(), json(serde_json::json!({"event_id":"x","kind":"rate","item_id":"i","value":3,"ts":1}))), "user_id"),
        ((key(), json(serde_json::json!({"event_id":"x","user_id":"u1","kind":"rate","item_id":"i","value":"five","ts":1}))), "value"),
        ((key(), Some(br#"{"event_id":"x","user_id":"u1","kind":"rate","item_id":"i","value":1e999,"ts":1}"#.to_vec())), "JSON"),
        ((key(), json(serde_json::json!({"event_id":"x","user_id":"u1","kind":"rate","item_id":"i","value":1e300,"ts":1}))), "value"),
        ((key(), json(serde_json::json!({"event_id":"x","user_id":"u1","kind":"teleport","ts":1}))), "teleport"),
        ((key(), Some(b"{\"event_id\":\"\xff\xfe\",\"user_id\":\"u1\"}".to_vec())), "UTF-8"),
        ((key(), json(serde_json::json!({"event_id":"x\u{0}y","user_id":"u1","kind":"view","item_id":"i","ts":1}))), "control"),
        ((key(), None), "empty"),
        ((Some(b"someone-else".to_vec()), json(serde_json::json!({"event_id":"x","user_id":"u1","kind":"view","item_id":"i","ts":1}))), "key"),
        ((key(), Some(format!("{}{}", "[".repeat(5000), "]".repeat(5000)).into_bytes())), "JSON"),
        ((key(), Some(vec![b' '; (1 << 20) + 10])), "limit"),
    ]
}

async fn counts(
    redis: &mut redis::aio::ConnectionManager,
    ns: &str,
) -> Result<HashMap<String, i64>> {
    Ok(redis.hgetall(CountingStage::counts_key(ns)).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_once_malformed_to_dlq_offsets_at_end() -> Result<()> {
    mrrec_tests::init_tracing();
    let tansu = Tansu::start()?;
    let redis_server = Redis::start()?;
    let prefix = "rt.";
    let config = test_config(&tansu.bootstrap(), prefix, 3);
    let clients = KafkaClients::new(&tansu.bootstrap(), &config.kafka.properties);
    create_topics(&clients, &config.topics).await?;
    let events_topic = Topic::Events.name(prefix);
    let dlq_topic = Topic::Dlq.name(prefix);

    // 300 valid events with the malformed corpus spread among them.
    let bad = malformed();
    let mut records: Vec<RawRecord> = Vec::new();
    let mut is_bad: Vec<Option<&'static str>> = Vec::new();
    let mut next_bad = bad.iter();
    for i in 0..300 {
        records.push(valid_event(i));
        is_bad.push(None);
        if i % 23 == 5 {
            if let Some((raw, needle)) = next_bad.next() {
                records.push(raw.clone());
                is_bad.push(Some(needle));
            }
        }
    }
    for (raw, needle) in next_bad {
        records.push(raw.clone());
        is_bad.push(Some(needle));
    }
    let landed = produce(&tansu.bootstrap(), &events_topic, &records).await?;
    let bad_at: HashMap<Landed, &str> = landed
        .iter()
        .zip(&is_bad)
        .filter_map(|(l, b)| b.map(|needle| (*l, needle)))
        .collect();
    assert_eq!(
        bad_at.len(),
        bad.len(),
        "every malformed record was produced"
    );

    let settings = RunnerSettings::from_config(&config, "counting", &[Topic::Events]);
    let group = settings.group_id.clone();
    let ns = "rt";

    // Run 1: two retryable failures, then a crash right after the third batch's
    // state write (before its offsets are committed).
    let stage = CountingStage::connect(
        &redis_server.url(),
        ns,
        Faults {
            retryable_failures: 2,
            crash_after_batches: Some(2),
        },
    )
    .await?;
    let outcome = StageRunner::new(clients.clone(), settings.clone(), stage)
        .run(Shutdown::new())
        .await;
    assert!(
        matches!(outcome, Err(StreamError::StageFailed { ref message, .. }) if message.contains("injected crash")),
        "run 1 ends with the injected crash: {outcome:?}"
    );

    // Run 2: a fresh instance in the same group picks up where the state says.
    let mut redis = redis::Client::open(redis_server.url())?
        .get_connection_manager()
        .await?;
    let stage = CountingStage::connect(&redis_server.url(), ns, Faults::default()).await?;
    let shutdown = Shutdown::new();
    let runner = tokio::spawn(
        StageRunner::new(clients.clone(), settings.clone(), stage).run(shutdown.clone()),
    );
    let bootstrap = tansu.bootstrap();
    let caught_up = |bootstrap: String, group: String, topic: String| async move {
        let ends = high_watermarks(&bootstrap, &topic)?;
        let committed = committed_offsets(&bootstrap, &group, &topic)?;
        // An empty partition has nothing to commit.
        Ok(ends
            .iter()
            .all(|(p, end)| *end == 0 || committed.get(p) == Some(end)))
    };
    eventually(
        Duration::from_secs(60),
        "committed offsets at the end of the topic",
        || caught_up(bootstrap.clone(), group.clone(), events_topic.clone()),
    )
    .await?;

    // The stage is still alive after all that poison: more input is processed.
    let more: Vec<RawRecord> = (300..320)
        .map(valid_event)
        .chain(std::iter::once((
            Some(b"u2".to_vec()),
            Some(b"{oops".to_vec()),
        )))
        .collect();
    let more_landed = produce(&bootstrap, &events_topic, &more).await?;
    let mut bad_at = bad_at;
    bad_at.insert(*more_landed.last().unwrap(), "JSON");
    eventually(Duration::from_secs(30), "the late events", || {
        let mut redis = redis.clone();
        async move { Ok(counts(&mut redis, ns).await?.len() == 320) }
    })
    .await?;
    eventually(Duration::from_secs(30), "offsets at the end again", || {
        caught_up(bootstrap.clone(), group.clone(), events_topic.clone())
    })
    .await?;
    assert!(!runner.is_finished(), "the stage is still running");
    shutdown.trigger();
    let report = runner.await??;
    assert!(report.processed > 0, "{report:?}");

    // Exactly once in effect: every valid event counted once, nothing else.
    let counted = counts(&mut redis, ns).await?;
    assert_eq!(counted.len(), 320);
    assert!(
        counted.values().all(|&n| n == 1),
        "duplicates: {:?}",
        counted.iter().filter(|(_, n)| **n != 1).collect::<Vec<_>>()
    );
    let applied: i64 = redis.get(CountingStage::applied_key(ns)).await?;
    assert_eq!(applied, 320);

    // Every malformed record is in the DLQ once, with a reason naming the problem.
    let letters: Vec<DeadLetter> = read_all(
        &bootstrap,
        &dlq_topic,
        bad_at.len(),
        Duration::from_secs(20),
    )?
    .iter()
    .map(|m| decode::<DeadLetter>(rdkafka::Message::payload(m).unwrap_or_default()))
    .collect::<Result<_, _>>()?;
    let lettered: BTreeSet<Landed> = letters
        .iter()
        .map(|l| Landed {
            partition: l.partition,
            offset: l.offset,
        })
        .collect();
    let expected: BTreeSet<Landed> = bad_at.keys().copied().collect();
    assert_eq!(
        lettered, expected,
        "the DLQ holds exactly the malformed records"
    );
    assert_eq!(letters.len(), expected.len(), "no dead letter twice");
    for letter in &letters {
        let at = Landed {
            partition: letter.partition,
            offset: letter.offset,
        };
        let needle = bad_at[&at];
        assert_eq!(letter.stage, "counting");
        assert_eq!(letter.source_topic, events_topic);
        assert!(
            letter.error.to_lowercase().contains(&needle.to_lowercase()),
            "reason {:?} should mention {needle:?}",
            letter.error
        );
    }
    Ok(())
}
