//! The distill stage on the embedded store, batches built by hand: late items
//! are linked, a replayed batch changes nothing, poison is refused by decode.

use mrrec_distill::{Distill, Input};
use mrrec_memory::{Keyspace, Level, MemoryStore};
use mrrec_messages::{Event, EventKind, Item};
use mrrec_store::EmbeddedStore;
use mrrec_stream::{Batch, Decoded, PartitionRange, RecordMeta, Stage};
use std::sync::Arc;

fn meta(topic: &str, partition: i32, offset: i64) -> RecordMeta {
    RecordMeta {
        topic: Arc::from(topic),
        partition,
        offset,
        key: None,
        timestamp_ms: None,
    }
}

fn batch(records: Vec<(RecordMeta, Input)>) -> Batch<Input> {
    let mut ranges: Vec<PartitionRange> = Vec::new();
    for (m, _) in &records {
        match ranges
            .iter_mut()
            .find(|r| r.topic == m.topic && r.partition == m.partition)
        {
            Some(r) => r.last_offset = r.last_offset.max(m.offset),
            None => ranges.push(PartitionRange {
                topic: m.topic.clone(),
                partition: m.partition,
                first_offset: m.offset,
                last_offset: m.offset,
            }),
        }
    }
    Batch {
        records: records
            .into_iter()
            .map(|(meta, message)| Decoded { meta, message })
            .collect(),
        ranges,
    }
}

fn rating(id: &str, user: &str, item: &str, value: f64, ts: i64) -> Input {
    Input::Event(Event {
        event_id: id.into(),
        user_id: user.into(),
        kind: EventKind::Rate,
        item_id: Some(item.into()),
        value: Some(value),
        text: None,
        attrs: None,
        ts,
    })
}

fn item(id: &str, title: &str, categories: &[&str]) -> Input {
    Input::Item(Item {
        item_id: id.into(),
        title: title.into(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        description: None,
        attrs: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_items_link_and_replays_change_nothing() {
    let dir = std::env::temp_dir().join(format!("mrrec-distill-stage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let memory = MemoryStore::new(EmbeddedStore::open(&dir).unwrap(), Keyspace::default());
    let mut stage = Distill::new(memory.clone(), "mrrec.");

    // The event arrives before its item.
    let first = batch(vec![
        (
            meta("mrrec.events", 0, 0),
            rating("e1", "u1", "i9", 5.0, 1_000),
        ),
        (
            meta("mrrec.events", 0, 1),
            rating("e2", "u1", "i1", 2.0, 2_000),
        ),
        (
            meta("mrrec.items", 1, 0),
            item("i1", "Scream (1996)", &["Horror"]),
        ),
    ]);
    stage.process(&first).await.unwrap();
    let shown = memory.user("u1").await.unwrap();
    let state = shown.state.unwrap();
    assert!(state.pending.contains_key("i9"));
    assert!(
        state.categories.contains_key("Horror"),
        "an item in the same batch is known"
    );
    assert!(shown
        .entries
        .iter()
        .any(|e| e.text.contains("item i9 (details pending)")));

    // The item arrives: the waiting event is linked, its entry re-rendered.
    let second = batch(vec![(
        meta("mrrec.items", 1, 1),
        item("i9", "Toy Story (1995)", &["Comedy"]),
    )]);
    stage.process(&second).await.unwrap();
    let after = memory.dump().await.unwrap();
    let shown = memory.user("u1").await.unwrap();
    let state = shown.state.unwrap();
    assert!(state.pending.is_empty());
    assert_eq!(state.categories["Comedy"].liked, 1);
    assert!(
        shown
            .entries
            .iter()
            .any(|e| e.level == Level::Behavior
                && e.text == "rated \"Toy Story (1995)\" 5/5 [Comedy]")
    );
    assert!(
        !after.keys().any(|k| k.contains("waiting")),
        "nothing waits any more"
    );

    // Replaying both batches (a crash before the Kafka commit) changes nothing.
    stage.process(&first).await.unwrap();
    stage.process(&second).await.unwrap();
    assert_eq!(memory.dump().await.unwrap(), after);
    assert_eq!(
        stage.stored_offset("mrrec.events", 0).await.unwrap(),
        Some(1)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn decode_refuses_bad_events_with_reasons() {
    let dir = std::env::temp_dir().join(format!("mrrec-distill-decode-{}", std::process::id()));
    let memory = MemoryStore::new(EmbeddedStore::open(&dir).unwrap(), Keyspace::default());
    let stage = Distill::new(memory, "mrrec.");
    let bad_kind = br#"{"event_id":"e","user_id":"u","kind":"teleport","ts":1}"#;
    let poison = stage
        .decode(&meta("mrrec.events", 0, 0), Some(bad_kind))
        .unwrap_err();
    assert!(poison.reason.contains("teleport"), "{poison:?}");
    let bad_value =
        br#"{"event_id":"e","user_id":"u","kind":"rate","item_id":"i","value":"x","ts":1}"#;
    assert!(stage
        .decode(&meta("mrrec.events", 0, 0), Some(bad_value))
        .unwrap_err()
        .reason
        .contains("value"));
    assert_eq!(
        stage
            .decode(&meta("mrrec.requests", 0, 0), Some(b"{}"))
            .unwrap_err()
            .kind,
        "topic"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_states_never_hide_another_writer() {
    let dir = std::env::temp_dir().join(format!("mrrec-distill-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir.join("shared")).unwrap();
    let shared = MemoryStore::new(store, Keyspace::new("a:"));
    let plain = MemoryStore::new(shared.kv().clone(), Keyspace::new("b:"));

    let batches = [
        batch(vec![
            (
                meta("mrrec.items", 0, 0),
                item("i1", "Heat (1995)", &["Crime"]),
            ),
            (meta("mrrec.events", 0, 0), rating("e1", "u1", "i1", 5.0, 1)),
        ]),
        // Another instance's partition with events of the same user.
        batch(vec![(
            meta("mrrec.events", 1, 0),
            rating("e2", "u1", "i1", 1.0, 2),
        )]),
        batch(vec![(
            meta("mrrec.events", 0, 1),
            rating("e3", "u1", "i1", 4.0, 3),
        )]),
    ];

    // Two cached instances share the store: `first` holds u1's state from
    // batch 0 while `second` writes batch 1, then `first` writes batch 2.
    let mut first = Distill::new(shared.clone(), "mrrec.").with_cache(1000);
    let mut second = Distill::new(shared.clone(), "mrrec.").with_cache(1000);
    first.process(&batches[0]).await.unwrap();
    second.process(&batches[1]).await.unwrap();
    first.process(&batches[2]).await.unwrap();

    // One instance without a cache, same batches.
    let mut alone = Distill::new(plain.clone(), "mrrec.");
    for b in &batches {
        alone.process(b).await.unwrap();
    }

    let state = shared.user("u1").await.unwrap().state.unwrap();
    assert_eq!(state.events, 3, "no event lost to a stale cached state");
    assert_eq!(
        shared.user("u1").await.unwrap().entries,
        plain.user("u1").await.unwrap().entries
    );
    assert_eq!(Some(state), plain.user("u1").await.unwrap().state);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_worker_commits_what_was_stored_with_its_offsets() {
    let dir = std::env::temp_dir().join(format!("mrrec-distill-index-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (_memory, mut stage) = indexed_stage(&dir).await;
    stage
        .process(&batch(vec![
            (
                meta("mrrec.items", 0, 0),
                item("i1", "Toy Story (1995)", &["Comedy"]),
            ),
            (meta("mrrec.events", 0, 0), rating("e1", "u1", "i1", 5.0, 1)),
            (meta("mrrec.events", 0, 1), rating("e2", "u1", "i1", 4.0, 2)),
        ]))
        .await
        .unwrap();
    drop(stage); // the worker indexes what is queued, commits, and stops

    let index = mrrec_index::MemoryIndex::open(Some(&dir.join("index").join("memory"))).unwrap();
    assert_eq!(
        index.payload().unwrap().as_deref(),
        Some(r#"{"mrrec.events:0":1,"mrrec.items:0":0}"#)
    );
    let hits = index.search("u1", "toy story", &[], None, 10).unwrap();
    let behavior = hits
        .iter()
        .filter(|h| h.entry.level == Level::Behavior)
        .count();
    assert_eq!(behavior, 2, "{hits:?}");
    assert!(hits.iter().any(|h| h.entry.level == Level::Preference));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reads of a test store that wraps an `EmbeddedStore` in `inner`:
/// passed through unchanged (only `apply` differs between them).
macro_rules! delegate_reads {
    () => {
        async fn get_fields(
            &self,
            pairs: &[(String, String)],
        ) -> Result<Vec<Option<String>>, mrrec_store::StoreError> {
            self.inner.get_fields(pairs).await
        }

        async fn get_all(
            &self,
            key: &str,
        ) -> Result<std::collections::BTreeMap<String, String>, mrrec_store::StoreError> {
            self.inner.get_all(key).await
        }

        async fn get_all_many(
            &self,
            keys: &[String],
        ) -> Result<Vec<std::collections::BTreeMap<String, String>>, mrrec_store::StoreError> {
            self.inner.get_all_many(keys).await
        }

        async fn keys(&self, prefix: &str) -> Result<Vec<String>, mrrec_store::StoreError> {
            self.inner.keys(prefix).await
        }
    };
}

/// A store whose next `apply` waits until the test releases it: one
/// instance's batch is composed (its reads done) and held while another
/// instance's batch is stored, the interleaving two instances of a group
/// produce when their batches overlap in time.
#[derive(Clone)]
struct HeldStore {
    inner: EmbeddedStore,
    hold: Arc<std::sync::atomic::AtomicBool>,
    reached: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl HeldStore {
    fn new(inner: EmbeddedStore) -> Self {
        Self {
            inner,
            hold: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            reached: Arc::new(tokio::sync::Notify::new()),
            release: Arc::new(tokio::sync::Notify::new()),
        }
    }
}

impl mrrec_store::KvStore for HeldStore {
    delegate_reads!();

    async fn apply(&self, batch: &mrrec_store::Batch) -> Result<bool, mrrec_store::StoreError> {
        if self.hold.swap(false, std::sync::atomic::Ordering::SeqCst) {
            self.reached.notify_one();
            self.release.notified().await;
        }
        self.inner.apply(batch).await
    }
}

/// u1's rating of i9 and i9 itself, on two instances whose batches overlap:
/// `held_first` says whose write is composed first and stored last.
async fn item_and_event_on_two_instances(held_first: &str) {
    let dir = std::env::temp_dir().join(format!(
        "mrrec-distill-race-{}-{held_first}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let store = EmbeddedStore::open(&dir).unwrap();
    let held = HeldStore::new(store.clone());
    let plain = MemoryStore::new(store, Keyspace::default());
    let held_memory = MemoryStore::new(held.clone(), Keyspace::default());
    let event = batch(vec![(
        meta("mrrec.events", 0, 0),
        rating("e1", "u1", "i9", 5.0, 1_000),
    )]);
    let catalogue = batch(vec![(
        meta("mrrec.items", 3, 0),
        item("i9", "Toy Story (1995)", &["Comedy"]),
    )]);
    let (held_batch, other_batch) = match held_first {
        "event" => (event, catalogue),
        _ => (catalogue, event),
    };
    let mut held_stage = Distill::new(held_memory, "mrrec.");
    let mut other_stage = Distill::new(plain.clone(), "mrrec.");
    let reached = held.reached.clone();
    let running = tokio::spawn(async move {
        held_stage.process(&held_batch).await.unwrap();
    });
    reached.notified().await;
    other_stage.process(&other_batch).await.unwrap();
    held.release.notify_one();
    running.await.unwrap();

    let shown = plain.user("u1").await.unwrap();
    let state = shown.state.unwrap();
    assert!(
        state.pending.is_empty(),
        "{held_first} held: the rating still waits for i9"
    );
    assert_eq!(
        state.categories.get("Comedy").map(|c| c.liked),
        Some(1),
        "{held_first} held: the rating was never linked to i9's category"
    );
    let keys = plain.dump().await.unwrap();
    assert!(
        !keys.keys().any(|k| k.contains("waiting")),
        "{held_first} held: something still waits: {keys:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_and_its_event_on_two_instances_always_link() {
    // The event's batch read "i9 unknown", then i9 was catalogued: the
    // event must not wait for an item that already arrived.
    item_and_event_on_two_instances("event").await;
    // The item's batch read "nobody waits", then the event started
    // waiting: the item must still link it.
    item_and_event_on_two_instances("item").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ids_never_share_a_key_or_an_index_entry() {
    let dir = std::env::temp_dir().join(format!("mrrec-distill-hostile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let memory = MemoryStore::new(EmbeddedStore::open(&dir).unwrap(), Keyspace::default());
    let mut stage = Distill::new(memory.clone(), "mrrec.");

    // Users whose ids look like other users' ids, like store keys once
    // escaped, like key separators or like tantivy query syntax.
    let users = [
        "1",
        "%31",
        "1:e",
        "mrrec:user:1",
        "user:1",
        "{1}",
        "a b",
        "*",
        "title:(x OR y)^2",
        "AND",
        "\"",
        "ü",
    ];
    let items = ["i:1", "i 1", "i%3A1", "OR", "title:*"];
    let mut records = Vec::new();
    for (n, item_id) in items.iter().enumerate() {
        records.push((
            meta("mrrec.items", 0, n as i64),
            item(item_id, &format!("Film {n}"), &[["Drama", "Horror"][n % 2]]),
        ));
    }
    for (n, user) in users.iter().enumerate() {
        records.push((
            meta("mrrec.events", 1, n as i64),
            rating(
                &format!("e{n}"),
                user,
                items[n % items.len()],
                5.0,
                n as i64,
            ),
        ));
    }
    stage.process(&batch(records)).await.unwrap();

    let mut index = mrrec_index::MemoryIndex::open(None).unwrap();
    for (n, user) in users.iter().enumerate() {
        let shown = memory.user(user).await.unwrap();
        let state = shown.state.as_ref().unwrap();
        assert_eq!(state.events, 1, "{user:?} has exactly its own event");
        let own = shown
            .entries
            .iter()
            .find(|e| e.level == Level::Behavior)
            .unwrap();
        assert!(
            own.text.contains(&format!("\"Film {}\"", n % items.len())),
            "{user:?}: {}",
            own.text
        );
        index.add(&shown.entries).unwrap();
    }
    index.commit("test").unwrap();
    let keys: Vec<String> = memory
        .dump()
        .await
        .unwrap()
        .into_keys()
        .filter(|k| k.starts_with("mrrec:user:"))
        .collect();
    assert_eq!(keys.len(), users.len(), "one key per user: {keys:?}");

    // Each user's search (with query syntax in the query too) finds only
    // that user's entries.
    for user in users {
        for query in ["film", "title:(film OR x)^2 AND \"", "*"] {
            let hits = index.search(user, query, &[], None, 10).unwrap();
            assert!(!hits.is_empty(), "{user:?} / {query:?}");
            assert!(
                hits.iter().all(|h| h.entry.user == user),
                "{user:?} / {query:?}: {hits:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seen_items_live_beside_the_state_and_old_states_move_theirs() {
    let dir = std::env::temp_dir().join(format!("mrrec-distill-seen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let memory = MemoryStore::new(EmbeddedStore::open(&dir).unwrap(), Keyspace::default());
    let keys = memory.keys().clone();

    // A state as written before `seen:{user}` existed: the seen items inside.
    let mut legacy = serde_json::to_value(mrrec_memory::UserState::new("u1")).unwrap();
    legacy["seen"] = serde_json::json!(["i7", "i8"]);
    let legacy = legacy.to_string();
    let mut write = mrrec_store::Batch::default();
    write.set(
        keys.user("u1"),
        "version",
        mrrec_memory::fingerprint(&legacy),
    );
    write.set(keys.user("u1"), "state", legacy);
    assert!(memory.apply(&write).await.unwrap());
    let loaded = memory.user("u1").await.unwrap().state.unwrap();
    assert_eq!(
        memory.seen(&loaded).await.unwrap(),
        ["i7", "i8"].map(String::from).into()
    );

    let mut stage = Distill::new(memory.clone(), "mrrec.");
    let mut records = vec![(
        meta("mrrec.items", 0, 0),
        item("i1", "Heat (1995)", &["Action"]),
    )];
    for n in 0..20 {
        // Neutral ratings of catalogued items: nothing but `seen` names them.
        let id = format!("i{}", 100 + n);
        records.push((meta("mrrec.items", 0, n + 1), item(&id, "Film", &["Drama"])));
        records.push((
            meta("mrrec.events", 0, n),
            rating(&format!("e{n}"), "u1", &id, 3.0, 1_000 + n),
        ));
    }
    records.push((
        meta("mrrec.events", 0, 20),
        rating("e20", "u1", "i1", 5.0, 2_000),
    ));
    stage.process(&batch(records)).await.unwrap();

    let dump = memory.dump().await.unwrap();
    let state_json = &dump[&keys.user("u1")]["state"];
    assert!(
        !state_json.contains("seen") && !state_json.contains("i7") && !state_json.contains("i110"),
        "the state keeps no seen items: {state_json}"
    );
    let state = memory.user("u1").await.unwrap().state.unwrap();
    let seen = memory.seen(&state).await.unwrap();
    assert_eq!(seen.len(), 23, "{seen:?}");
    assert!(["i1", "i7", "i8", "i100", "i119"]
        .iter()
        .all(|i| seen.contains(*i)));
    assert_eq!(dump[&keys.seen("u1")].len(), 23, "moved into seen:u1");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_keeps_to_its_budget() {
    let records = || {
        batch(vec![
            (
                meta("mrrec.items", 0, 0),
                item("i1", "Heat (1995)", &["Action"]),
            ),
            (
                meta("mrrec.events", 0, 0),
                rating("e1", "u1", "i1", 5.0, 1_000),
            ),
            (
                meta("mrrec.events", 0, 1),
                rating("e2", "u2", "i1", 1.0, 1_000),
            ),
        ])
    };
    for (budget, kept) in [(1 << 20, true), (100, false)] {
        let dir = std::env::temp_dir().join(format!(
            "mrrec-distill-cache-{budget}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let memory = MemoryStore::new(EmbeddedStore::open(&dir).unwrap(), Keyspace::default());
        let mut stage = Distill::new(memory.clone(), "mrrec.").with_cache(budget);
        stage.process(&records()).await.unwrap();
        let dump = memory.dump().await.unwrap();
        let stored: usize = ["u1", "u2"]
            .iter()
            .map(|u| dump[&memory.keys().user(u)]["state"].len())
            .sum::<usize>()
            + dump[&memory.keys().items()]["i1"].len();
        let expected = if kept { stored } else { 0 };
        assert_eq!(stage.cache_bytes(), expected, "budget {budget}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A store whose first `apply` is stored but answers with an outage, as
/// when Redis applies a write and the connection drops before the reply.
#[derive(Clone)]
struct LosesFirstReply {
    inner: EmbeddedStore,
    lost: Arc<std::sync::atomic::AtomicBool>,
}

impl mrrec_store::KvStore for LosesFirstReply {
    delegate_reads!();

    async fn apply(&self, batch: &mrrec_store::Batch) -> Result<bool, mrrec_store::StoreError> {
        let applied = self.inner.apply(batch).await?;
        if !self.lost.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(mrrec_store::StoreError::Unavailable(
                "connection dropped before the reply".into(),
            ));
        }
        Ok(applied)
    }
}

/// Issue 19, point 7: the write is stored but its reply lost; the retry
/// finds its offsets stored and skips the records — and must still bring
/// what they wrote into the indexes (re-indexed from the store), or search
/// would miss it until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_was_lost_still_reaches_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = LosesFirstReply {
        inner: EmbeddedStore::open(&dir.path().join("store")).unwrap(),
        lost: Arc::default(),
    };
    let memory = MemoryStore::new(store, Keyspace::default());
    let indexes = mrrec_distill::Indexes::open(Some(&dir.path().join("index")), &memory)
        .await
        .unwrap();
    let mut stage = Distill::new(memory.clone(), "mrrec.").with_indexes(indexes);
    let records = batch(vec![
        (
            meta("mrrec.items", 0, 0),
            item("i1", "Toy Story (1995)", &["Comedy"]),
        ),
        (meta("mrrec.events", 0, 0), rating("e1", "u1", "i1", 5.0, 1)),
    ]);
    let first = stage.process(&records).await.unwrap_err();
    assert!(first.is_retryable(), "{first}");
    stage.process(&records).await.unwrap();
    drop(stage);

    let index =
        mrrec_index::MemoryIndex::open(Some(&dir.path().join("index").join("memory"))).unwrap();
    let hits = index.search("u1", "toy story", &[], None, 10).unwrap();
    assert!(
        hits.iter().any(|h| h.entry.level == Level::Behavior),
        "the stored behaviour entry is searchable: {hits:?}"
    );
    let items =
        mrrec_index::ItemIndex::open_read_only(&dir.path().join("index").join("items")).unwrap();
    assert_eq!(items.search("toy", 10).unwrap()[0].0, "i1");
}

/// Issue 19, point 7: the item index's directory is lost while the memory
/// index is current; opening the indexes rebuilds the items from the store
/// (before, only a stale memory index triggered a rebuild, and item search
/// stayed empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_item_index_is_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, mut stage) = indexed_stage(dir.path()).await;
    let index_dir = dir.path().join("index");
    stage
        .process(&batch(vec![
            (
                meta("mrrec.items", 0, 0),
                item("i1", "Toy Story (1995)", &["Comedy"]),
            ),
            (meta("mrrec.events", 0, 0), rating("e1", "u1", "i1", 5.0, 1)),
        ]))
        .await
        .unwrap();
    drop(stage);
    std::fs::remove_dir_all(index_dir.join("items")).unwrap();

    drop(
        mrrec_distill::Indexes::open(Some(&index_dir), &memory)
            .await
            .unwrap(),
    );
    let items = mrrec_index::ItemIndex::open_read_only(&index_dir.join("items")).unwrap();
    assert_eq!(items.search("toy", 10).unwrap()[0].0, "i1");
}

/// Issue 19, point 7: an item index holding an older commit — as many
/// items as the store, an old title — is brought up to date at start: the
/// fingerprint it stored for the item differs from the catalog's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_item_index_with_every_item_is_rebuilt_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (memory, mut stage) = indexed_stage(dir.path()).await;
    let index_dir = dir.path().join("index");
    stage
        .process(&batch(vec![(
            meta("mrrec.items", 0, 0),
            item("i1", "Toy Story (1995)", &["Comedy"]),
        )]))
        .await
        .unwrap();
    drop(stage);
    let old = dir.path().join("old-items");
    copy_dir(&index_dir.join("items"), &old);

    let indexes = mrrec_distill::Indexes::open(Some(&index_dir), &memory)
        .await
        .unwrap();
    let mut stage = Distill::new(memory.clone(), "mrrec.").with_indexes(indexes);
    stage
        .process(&batch(vec![(
            meta("mrrec.items", 0, 1),
            item("i1", "Heat (1995)", &["Action"]),
        )]))
        .await
        .unwrap();
    drop(stage);
    std::fs::remove_dir_all(index_dir.join("items")).unwrap();
    copy_dir(&old, &index_dir.join("items"));
    let items = mrrec_index::ItemIndex::open_read_only(&index_dir.join("items")).unwrap();
    assert!(
        items.search("heat", 10).unwrap().is_empty(),
        "the old commit"
    );
    drop(items);

    drop(
        mrrec_distill::Indexes::open(Some(&index_dir), &memory)
            .await
            .unwrap(),
    );
    let items = mrrec_index::ItemIndex::open_read_only(&index_dir.join("items")).unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items.search("heat", 10).unwrap()[0].0, "i1");
    assert!(items.search("toy", 10).unwrap().is_empty());
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Issue 19, point 6: at most `max_behavior_entries` level-1 entries per
/// user — the newest by event time — while aggregates count every event;
/// the kept set is the same however the stream is cut into batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_one_entries_are_kept_to_the_newest_n() {
    let events: Vec<(RecordMeta, Input)> = [5, 1, 4, 2, 6, 3]
        .iter()
        .enumerate()
        .map(|(offset, ts)| {
            (
                meta("mrrec.events", 0, offset as i64),
                rating(&format!("e{ts}"), "u1", "i1", 5.0, *ts * 1000),
            )
        })
        .collect();
    let catalogue = (
        meta("mrrec.items", 0, 0),
        item("i1", "Toy Story (1995)", &["Comedy"]),
    );
    let run = |cuts: Vec<usize>| {
        let events = events.clone();
        let catalogue = catalogue.clone();
        async move {
            let dir = tempfile::tempdir().unwrap();
            let memory = MemoryStore::new(
                EmbeddedStore::open(&dir.path().join("store")).unwrap(),
                Keyspace::default(),
            );
            let indexes = mrrec_distill::Indexes::open(Some(&dir.path().join("index")), &memory)
                .await
                .unwrap();
            let mut stage = Distill::new(memory.clone(), "mrrec.")
                .with_indexes(indexes)
                .with_max_behavior_entries(3);
            stage.process(&batch(vec![catalogue])).await.unwrap();
            let mut start = 0;
            for end in cuts.into_iter().chain([events.len()]) {
                stage
                    .process(&batch(events[start..end].to_vec()))
                    .await
                    .unwrap();
                start = end;
            }
            drop(stage);
            let index =
                mrrec_index::MemoryIndex::open(Some(&dir.path().join("index").join("memory")))
                    .unwrap();
            let indexed = index
                .search("u1", "toy story", &[], None, 100)
                .unwrap()
                .iter()
                .filter(|h| h.entry.level == Level::Behavior)
                .count();
            (memory.dump().await.unwrap(), indexed)
        }
    };
    let (whole, indexed) = run(vec![]).await;
    let behaviour: Vec<i64> = whole["mrrec:user:u1"]
        .iter()
        .filter(|(f, _)| f.starts_with("e:b"))
        .map(|(_, v)| {
            serde_json::from_str::<mrrec_memory::MemoryEntry>(v)
                .unwrap()
                .ts
        })
        .collect();
    let mut kept = behaviour.clone();
    kept.sort();
    assert_eq!(kept, [4000, 5000, 6000], "the newest three by event time");
    assert_eq!(indexed, 3, "pruned entries leave the index too");
    let state: mrrec_memory::UserState =
        serde_json::from_str(&whole["mrrec:user:u1"]["state"]).unwrap();
    assert_eq!(state.behavior_entries, 3);
    assert_eq!(
        state.categories["Comedy"].ratings, 6,
        "aggregates count every event"
    );
    for cuts in [vec![1], vec![2, 4], vec![1, 2, 3, 4, 5]] {
        let (cut, indexed) = run(cuts.clone()).await;
        assert_eq!(cut, whole, "batches cut at {cuts:?}");
        assert_eq!(indexed, 3);
    }
}

/// A distill stage on an embedded store under `dir/store`, indexing into
/// `dir/index`.
async fn indexed_stage(
    dir: &std::path::Path,
) -> (MemoryStore<EmbeddedStore>, Distill<EmbeddedStore>) {
    let memory = MemoryStore::new(
        EmbeddedStore::open(&dir.join("store")).unwrap(),
        Keyspace::default(),
    );
    let indexes = mrrec_distill::Indexes::open(Some(&dir.join("index")), &memory)
        .await
        .unwrap();
    let stage = Distill::new(memory.clone(), "mrrec.").with_indexes(indexes);
    (memory, stage)
}

/// The entries `user`'s search finds for each query, as ids.
fn found(index: &mrrec_index::MemoryIndex, user: &str) -> Vec<Vec<String>> {
    ["toy story", "heat", "alien", "fargo", ""]
        .iter()
        .map(|query| {
            index
                .search(user, query, &[], None, 10)
                .unwrap()
                .into_iter()
                .map(|hit| hit.entry.id)
                .collect()
        })
        .collect()
}

/// Issue 19, point 7: two distill instances write one store; one stops, the
/// other goes on; the first one's indexes are brought up to date at restart
/// by what changed (the users whose stored version moved, the items whose
/// indexed text differs), not rebuilt from scratch, and then answer as a
/// rebuild from the store does. Before, an index whose offsets differed
/// from the store's in any partition was rebuilt whole, so with several
/// instances every restart was a full rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_catches_its_indexes_up_without_a_rebuild() {
    use mrrec_distill::Refresh;
    let dir = tempfile::tempdir().unwrap();
    let memory = MemoryStore::new(
        EmbeddedStore::open(&dir.path().join("store")).unwrap(),
        Keyspace::default(),
    );
    let open = |name: &str| {
        let memory = memory.clone();
        let path = dir.path().join(name);
        async move {
            mrrec_distill::Indexes::open(Some(&path), &memory)
                .await
                .unwrap()
        }
    };
    let mut a = Distill::new(memory.clone(), "mrrec.").with_indexes(open("a").await);
    let mut b = Distill::new(memory.clone(), "mrrec.").with_indexes(open("b").await);
    a.process(&batch(vec![
        (
            meta("mrrec.items", 0, 0),
            item("i1", "Toy Story (1995)", &["Comedy"]),
        ),
        (
            meta("mrrec.items", 0, 1),
            item("i2", "Heat (1995)", &["Action"]),
        ),
        (meta("mrrec.events", 0, 0), rating("e1", "u1", "i1", 5.0, 1)),
        (meta("mrrec.events", 0, 1), rating("e2", "u2", "i2", 4.0, 2)),
    ]))
    .await
    .unwrap();
    b.process(&batch(vec![
        (
            meta("mrrec.items", 1, 0),
            item("i3", "Alien (1979)", &["Sci-Fi"]),
        ),
        (meta("mrrec.events", 1, 0), rating("e3", "u3", "i1", 5.0, 3)),
    ]))
    .await
    .unwrap();
    drop(a);
    // While the first instance is away the other one moves on: a user the
    // first one indexed changes, a new user and a new item arrive.
    b.process(&batch(vec![
        (
            meta("mrrec.items", 1, 1),
            item("i4", "Fargo (1996)", &["Crime"]),
        ),
        (meta("mrrec.events", 1, 1), rating("e4", "u1", "i3", 5.0, 4)),
        (meta("mrrec.events", 1, 2), rating("e5", "u4", "i4", 5.0, 5)),
    ]))
    .await
    .unwrap();
    drop(b);

    let restarted = open("a").await;
    assert_eq!(
        restarted.opened().memory,
        Refresh::CaughtUp {
            changed: 3,
            removed: 0
        },
        "u1 changed, u3 and u4 are new to it, u2 is read only for its version"
    );
    assert_eq!(
        restarted.opened().items,
        Refresh::CaughtUp {
            changed: 2,
            removed: 0
        },
        "i3 and i4"
    );
    drop(restarted);
    let rebuilt = open("c").await;
    assert_eq!(
        rebuilt.opened().memory,
        Refresh::Rebuilt { documents: 4 },
        "a new directory is built whole"
    );
    drop(rebuilt);
    let caught_up = mrrec_index::MemoryIndex::open_read_only(&dir.path().join("a/memory")).unwrap();
    let whole = mrrec_index::MemoryIndex::open_read_only(&dir.path().join("c/memory")).unwrap();
    assert_eq!(caught_up.len(), whole.len());
    for user in ["u1", "u2", "u3", "u4"] {
        assert_eq!(found(&caught_up, user), found(&whole, user), "{user}");
    }
    assert!(
        !caught_up
            .search("u1", "alien", &[], None, 10)
            .unwrap()
            .is_empty(),
        "u1's rating that the other instance stored"
    );
    let items = mrrec_index::ItemIndex::open_read_only(&dir.path().join("a/items")).unwrap();
    assert_eq!(items.search("fargo", 10).unwrap()[0].0, "i4");
    drop((caught_up, whole, items));

    let again = open("a").await;
    assert_eq!(again.opened().memory, Refresh::Current);
    assert_eq!(again.opened().items, Refresh::Current);
}

/// Issue 19, point 7: with two instances, the items the other instance
/// distills reach this instance's item index while it runs (the follower
/// reads the store's `items` offsets and, when another instance moved them,
/// the catalog). Before, they reached it only at its next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_item_index_follows_items_another_instance_distills() {
    let dir = tempfile::tempdir().unwrap();
    let memory = MemoryStore::new(
        EmbeddedStore::open(&dir.path().join("store")).unwrap(),
        Keyspace::default(),
    );
    let index_dir = dir.path().join("a");
    let mut indexes = mrrec_distill::Indexes::open(Some(&index_dir), &memory)
        .await
        .unwrap();
    indexes.follow_catalog(
        memory.clone(),
        "mrrec.items",
        std::time::Duration::from_millis(100),
    );
    let mut a = Distill::new(memory.clone(), "mrrec.").with_indexes(indexes);
    let mut b = Distill::new(memory.clone(), "mrrec.");
    a.process(&batch(vec![(
        meta("mrrec.items", 0, 0),
        item("i1", "Toy Story (1995)", &["Comedy"]),
    )]))
    .await
    .unwrap();
    b.process(&batch(vec![
        (
            meta("mrrec.items", 1, 0),
            item("i2", "Fargo (1996)", &["Crime"]),
        ),
        (
            meta("mrrec.items", 1, 1),
            item("i3", "Heat (1995)", &["Action"]),
        ),
    ]))
    .await
    .unwrap();
    let items = mrrec_index::ItemIndex::open_read_only(&index_dir.join("items")).unwrap();
    let started = std::time::Instant::now();
    while items.search("fargo heat", 10).unwrap().len() < 2 {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the other instance's items never reached this index"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        items.reload().unwrap();
    }
    assert_eq!(items.search("toy", 10).unwrap()[0].0, "i1");
    assert_eq!(items.len(), 3);
    drop(a);
}

/// Issue 19, point 7: a write whose reply was lost had pruned a level-1
/// entry; the re-index from the store replaces the user's memory in the
/// index, so the pruned entry goes too (the index records the user's
/// version with it, so no later start would read the user again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_write_that_pruned_leaves_no_pruned_entry_in_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store = LosesFirstReply {
        inner: EmbeddedStore::open(&dir.path().join("store")).unwrap(),
        lost: lost.clone(),
    };
    let memory = MemoryStore::new(store, Keyspace::default());
    let indexes = mrrec_distill::Indexes::open(Some(&dir.path().join("index")), &memory)
        .await
        .unwrap();
    let mut stage = Distill::new(memory.clone(), "mrrec.")
        .with_indexes(indexes)
        .with_max_behavior_entries(1);
    stage
        .process(&batch(vec![
            (
                meta("mrrec.items", 0, 0),
                item("i1", "Toy Story (1995)", &["Comedy"]),
            ),
            (
                meta("mrrec.events", 0, 0),
                rating("e1", "u1", "i1", 5.0, 1000),
            ),
        ]))
        .await
        .unwrap();
    // The next write (a newer event, which prunes e1's entry) is stored
    // but its reply is lost; the retry finds it stored.
    lost.store(false, std::sync::atomic::Ordering::SeqCst);
    let newer = batch(vec![(
        meta("mrrec.events", 0, 1),
        rating("e2", "u1", "i1", 4.0, 2000),
    )]);
    assert!(stage.process(&newer).await.is_err());
    stage.process(&newer).await.unwrap();
    drop(stage);

    let stored: Vec<String> = memory
        .user("u1")
        .await
        .unwrap()
        .entries
        .into_iter()
        .filter(|e| e.level == Level::Behavior)
        .map(|e| e.id)
        .collect();
    assert_eq!(stored.len(), 1, "the store keeps the newest only");
    let index =
        mrrec_index::MemoryIndex::open(Some(&dir.path().join("index").join("memory"))).unwrap();
    let indexed: Vec<String> = index
        .search("u1", "toy story", &[Level::Behavior], None, 100)
        .unwrap()
        .into_iter()
        .map(|h| h.entry.id)
        .collect();
    assert_eq!(indexed, stored, "the pruned entry left the index too");
}
