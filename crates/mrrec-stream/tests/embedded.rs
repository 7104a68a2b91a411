//! The runtime on the in-process broker (no external service): the same code
//! path as against a cluster, plus the shutdown drain and the metrics endpoint.

use mrrec_config::Config;
use mrrec_messages::{decode, DeadLetter, Event, Topic};
use mrrec_stream::{
    decode_message, metrics, Batch, EmbeddedBroker, KafkaClients, OutgoingRecord, Poison, Progress,
    Publisher, RecordMeta, RunnerSettings, Shutdown, Stage, StageError, StageRunner, TailFrom,
    Tailed, TopicTail,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keeps processed event ids in memory.
#[derive(Clone)]
struct MemoryStage {
    /// The stage label of its metrics. Each test has its own: the metrics
    /// registry is process-wide and tests assert exact counters.
    name: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
    /// Distinct users of each processed batch.
    users_per_batch: Arc<Mutex<Vec<usize>>>,
    /// Records of each processed batch.
    records_per_batch: Arc<Mutex<Vec<usize>>>,
    /// Calls of `process` (counting from 1) that fail as retryable.
    fail_calls: Vec<usize>,
    calls: usize,
}

impl MemoryStage {
    fn named(name: &'static str) -> Self {
        Self {
            name,
            seen: Arc::default(),
            users_per_batch: Arc::default(),
            records_per_batch: Arc::default(),
            fail_calls: Vec::new(),
            calls: 0,
        }
    }
}

impl Stage for MemoryStage {
    type Message = Event;

    fn name(&self) -> &str {
        self.name
    }

    fn decode(&self, record: &RecordMeta, payload: Option<&[u8]>) -> Result<Event, Poison> {
        decode_message(record, payload)
    }

    async fn process(&mut self, batch: &Batch<Event>) -> Result<(), StageError> {
        self.calls += 1;
        if self.fail_calls.contains(&self.calls) {
            return Err(StageError::retryable("the store is away"));
        }
        let users: std::collections::BTreeSet<&str> = batch
            .records
            .iter()
            .map(|r| r.message.user_id.as_str())
            .collect();
        self.users_per_batch.lock().unwrap().push(users.len());
        self.records_per_batch
            .lock()
            .unwrap()
            .push(batch.records.len());
        let mut seen = self.seen.lock().unwrap();
        seen.extend(batch.records.iter().map(|r| r.message.event_id.clone()));
        Ok(())
    }
}

fn config(prefix: &str, batch_max_ms: u64) -> Config {
    Config::from_toml_str(&format!(
        "[topics]\nprefix = \"{prefix}\"\npartitions = 2\n[stream]\nbatch_max_records = 1000\nbatch_max_ms = {batch_max_ms}\nshutdown_timeout_ms = 5000\n"
    ))
    .unwrap()
}

fn event(i: usize) -> OutgoingRecord {
    let user = format!("u{}", i % 5);
    let payload = serde_json::json!({"event_id": format!("e{i}"), "user_id": user, "kind": "view", "item_id": "i1", "ts": 1});
    OutgoingRecord {
        topic: String::new(),
        key: Some(user.into_bytes()),
        payload: serde_json::to_vec(&payload).unwrap(),
    }
}

async fn produce(clients: &KafkaClients, topic: &str, records: Vec<OutgoingRecord>) {
    let records = records
        .into_iter()
        .map(|r| OutgoingRecord {
            topic: topic.to_owned(),
            ..r
        })
        .collect();
    Publisher::new(clients, "test")
        .unwrap()
        .publish_all(records)
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

fn read_dead_letters(bootstrap: &str, topic: &str, expected: usize) -> Vec<DeadLetter> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "reader")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let start = Instant::now();
    let mut letters = Vec::new();
    while letters.len() < expected && start.elapsed() < Duration::from_secs(20) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            letters.push(decode::<DeadLetter>(m.payload().unwrap()).unwrap());
        }
    }
    letters
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_runs_the_same_runtime_and_exports_metrics() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = metrics::install_prometheus(&format!("127.0.0.1:{port}"))
        .unwrap()
        .unwrap();

    let config = config("emb.", 20);
    let broker = EmbeddedBroker::start(&config.topics.prefix, config.topics.partitions).unwrap();
    let clients = KafkaClients::new(broker.bootstrap_servers(), &BTreeMap::new());
    let events = Topic::Events.name("emb.");
    let mut records: Vec<OutgoingRecord> = (0..200).map(event).collect();
    records.insert(
        10,
        OutgoingRecord {
            topic: String::new(),
            key: Some(b"u1".to_vec()),
            payload: b"{broken".to_vec(),
        },
    );
    records.insert(
        50,
        OutgoingRecord {
            topic: String::new(),
            key: Some(b"u1".to_vec()),
            payload: br#"{"event_id":"x","user_id":"u1","kind":"view","ts":1}"#.to_vec(),
        },
    );
    produce(&clients, &events, records).await;

    let stage = MemoryStage::named("memory");
    let seen = stage.seen.clone();
    let runner = StageRunner::new(
        clients.clone(),
        RunnerSettings::from_config(&config, "memory", &[Topic::Events]),
        stage,
    );
    let progress = runner.progress();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(runner.run(shutdown.clone()));
    wait_for("200 processed", || {
        Progress::get(&progress.processed) == 200
    })
    .await;
    wait_for("2 dead letters", || {
        Progress::get(&progress.dead_lettered) == 2
    })
    .await;

    let body = scrape(addr);
    assert!(
        body.contains("mrrec_processed_total{stage=\"memory\"} 200"),
        "{body}"
    );
    assert!(body.contains("mrrec_dlq_total{"), "{body}");
    assert!(body.contains("reason=\"json\""), "{body}");
    assert!(body.contains("reason=\"invalid\""), "{body}");
    assert!(
        body.contains("mrrec_batch_seconds_bucket{stage=\"memory\""),
        "{body}"
    );

    shutdown.trigger();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.processed, 200);
    assert_eq!(report.dead_lettered, 2);
    let mut ids = seen.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);

    let letters = read_dead_letters(broker.bootstrap_servers(), &Topic::Dlq.name("emb."), 2);
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().any(|l| l.error.contains("JSON")));
    assert!(letters.iter().any(|l| l.error.contains("item_id")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_and_commits_the_open_batch() {
    // Batches close only after a minute: only the shutdown drain can process them.
    let config = config("drain.", 60_000);
    let broker = EmbeddedBroker::start(&config.topics.prefix, config.topics.partitions).unwrap();
    let clients = KafkaClients::new(broker.bootstrap_servers(), &BTreeMap::new());
    let events = Topic::Events.name("drain.");
    produce(&clients, &events, (0..50).map(event).collect()).await;

    let settings = RunnerSettings::from_config(&config, "memory", &[Topic::Events]);
    let group = settings.group_id.clone();
    let stage = MemoryStage::named("drain");
    let seen = stage.seen.clone();
    let runner = StageRunner::new(clients.clone(), settings, stage);
    let progress = runner.progress();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(runner.run(shutdown.clone()));
    wait_for("50 polled", || Progress::get(&progress.polled) == 50).await;
    assert_eq!(
        Progress::get(&progress.processed),
        0,
        "the batch is still open"
    );

    let started = Instant::now();
    shutdown.trigger();
    let report = running.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drained in bounded time"
    );
    assert_eq!(report.processed, 50);
    assert_eq!(seen.lock().unwrap().len(), 50);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap_servers())
        .set("group.id", &group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&events, 0);
    tpl.add_partition(&events, 1);
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    let total: i64 = committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    assert_eq!(total, 50, "offsets committed at the end: {committed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_lose_no_record_that_was_already_fetched() {
    // Pausing the assignment during a backoff drops librdkafka's fetched queue;
    // the runner must read on from the records it holds, not from the fetcher.
    let config = config("retry.", 50);
    let broker = EmbeddedBroker::start(&config.topics.prefix, config.topics.partitions).unwrap();
    let clients = KafkaClients::new(broker.bootstrap_servers(), &BTreeMap::new());
    let events = Topic::Events.name("retry.");
    let total = 30_000;
    produce(&clients, &events, (0..total).map(event).collect()).await;

    let mut stage = MemoryStage::named("retry");
    stage.fail_calls = vec![2, 3, 7];
    let seen = stage.seen.clone();
    let runner = StageRunner::new(
        clients.clone(),
        RunnerSettings::from_config(&config, "retry", &[Topic::Events]),
        stage,
    );
    let progress = runner.progress();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(runner.run(shutdown.clone()));
    wait_for("every record processed", || {
        Progress::get(&progress.processed) == total as u64
    })
    .await;
    shutdown.trigger();
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.retries, 3);
    let mut ids = seen.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_closes_at_its_key_limit() {
    // 100 events of 5 users (the record key), all there before the runner
    // starts: without a key limit the first batch would hold every user.
    let batches = batches_under_a_key_limit("keys.", 2, (0..100).map(event).collect()).await;
    assert!(
        batches.iter().all(|users| *users <= 2),
        "users per batch: {batches:?}"
    );
    assert!(batches.len() >= 3, "users per batch: {batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_without_a_key_counts_as_a_key_of_its_own() {
    // The same events without keys: the runner cannot tell their users
    // apart, so each counts as one (not all of them as one empty key).
    let keyless = (0..20)
        .map(|i| OutgoingRecord {
            key: None,
            ..event(i)
        })
        .collect();
    let batches = batches_under_a_key_limit("keyless.", 3, keyless).await;
    assert!(
        batches.iter().all(|users| *users <= 3),
        "users per batch: {batches:?}"
    );
}

/// Runs `records` through a runner whose batches close at `max_keys` keys;
/// returns the distinct users of each batch.
async fn batches_under_a_key_limit(
    prefix: &'static str,
    max_keys: usize,
    records: Vec<OutgoingRecord>,
) -> Vec<usize> {
    batches_under_limits(prefix, max_keys, usize::MAX, records)
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_closes_at_its_byte_limit() {
    // 100 events of about 100 bytes each (payload and key), all there
    // before the runner starts; batches close at 1,000 bytes.
    let records: Vec<OutgoingRecord> = (0..100).map(event).collect();
    let size = records[50].payload.len() + 2;
    let (_, records_per_batch) = batches_under_limits("bytes.", 0, 1000, records).await;
    let most = 1000usize.div_ceil(size);
    assert!(
        records_per_batch.iter().all(|n| *n <= most),
        "records per batch: {records_per_batch:?} (at most {most} of {size} bytes)"
    );
    assert!(
        records_per_batch.len() >= 100 / most,
        "{records_per_batch:?}"
    );
}

/// Runs `records` through a runner whose batches close at `max_keys` keys
/// or `max_bytes` bytes; returns the distinct users and the records of each
/// batch.
async fn batches_under_limits(
    prefix: &'static str,
    max_keys: usize,
    max_bytes: usize,
    records: Vec<OutgoingRecord>,
) -> (Vec<usize>, Vec<usize>) {
    let total = records.len() as u64;
    let config = config(prefix, 50);
    let broker = EmbeddedBroker::start(&config.topics.prefix, config.topics.partitions).unwrap();
    let clients = KafkaClients::new(broker.bootstrap_servers(), &BTreeMap::new());
    let events = Topic::Events.name(prefix);
    produce(&clients, &events, records).await;

    let mut settings = RunnerSettings::from_config(&config, prefix, &[Topic::Events]);
    settings.batch_max_keys = max_keys;
    settings.batch_max_bytes = max_bytes;
    let stage = MemoryStage::named(prefix);
    let (seen, users_per_batch) = (stage.seen.clone(), stage.users_per_batch.clone());
    let records_per_batch = stage.records_per_batch.clone();
    let runner = StageRunner::new(clients.clone(), settings, stage);
    let progress = runner.progress();
    let shutdown = Shutdown::new();
    let running = tokio::spawn(runner.run(shutdown.clone()));
    wait_for("every record processed", || {
        Progress::get(&progress.processed) == total
    })
    .await;
    shutdown.trigger();
    running.await.unwrap().unwrap();
    let mut ids = seen.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, total);
    let users = users_per_batch.lock().unwrap().clone();
    let records = records_per_batch.lock().unwrap().clone();
    (users, records)
}

/// The next record of `tail`, waited for at most 20 s.
async fn tailed(tail: &TopicTail) -> Tailed<Event> {
    tokio::time::timeout(Duration::from_secs(20), tail.next::<Event>())
        .await
        .expect("a record within 20 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_tail_starts_where_asked_and_dead_letters_what_it_cannot_use() {
    let config = config("tail.", 20);
    let broker = EmbeddedBroker::start(&config.topics.prefix, config.topics.partitions).unwrap();
    let clients = KafkaClients::new(broker.bootstrap_servers(), &BTreeMap::new());
    let events = Topic::Events.name("tail.");
    let dlq = Topic::Dlq.name("tail.");
    produce(&clients, &events, (0..3).map(event).collect()).await;

    let from_start = TopicTail::open(&clients, &events, &dlq, "start", TailFrom::Beginning)
        .await
        .unwrap();
    let from_end = TopicTail::open(&clients, &events, &dlq, "end", TailFrom::End)
        .await
        .unwrap();
    let broken = OutgoingRecord {
        topic: String::new(),
        key: Some(b"u1".to_vec()),
        payload: b"{broken".to_vec(),
    };
    produce(&clients, &events, vec![event(3), broken, event(4)]).await;

    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(tailed(&from_start).await.message.event_id);
    }
    all.sort();
    assert_eq!(all, ["e0", "e1", "e2", "e3", "e4"]);
    let mut recent = [tailed(&from_end).await, tailed(&from_end).await];
    recent.sort_by(|a, b| a.message.event_id.cmp(&b.message.event_id));
    assert_eq!(recent[0].message.event_id, "e3");
    assert_eq!(recent[1].message.event_id, "e4");
    let nothing = tokio::time::timeout(Duration::from_millis(500), from_end.next::<Event>()).await;
    assert!(
        nothing.is_err(),
        "the end tail read a record twice or an old one"
    );

    // A record its reader refuses goes to the DLQ too, with the reason.
    let refused = &recent[0];
    let poison = Poison {
        kind: "refused",
        reason: "not for this reader".into(),
    };
    from_end
        .dead_letter(&refused.meta, &refused.payload, poison)
        .await;

    let letters = read_dead_letters(broker.bootstrap_servers(), &dlq, 3);
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert!(letters.iter().all(|l| l.source_topic == events));
    let unreadable: Vec<(&str, i64)> = letters
        .iter()
        .filter(|l| l.error.contains("JSON") && l.payload == "{broken")
        .map(|l| (l.stage.as_str(), l.offset))
        .collect();
    assert_eq!(unreadable.len(), 2, "{letters:?}");
    assert!(unreadable.iter().any(|(stage, _)| *stage == "start"));
    assert!(unreadable.iter().any(|(stage, _)| *stage == "end"));
    assert_eq!(unreadable[0].1, unreadable[1].1);
    assert!(letters.iter().any(|l| l.stage == "end"
        && l.error == "not for this reader"
        && l.offset == refused.meta.offset
        && l.partition == refused.meta.partition));
}
