//! The distill stage (`mrrec run --stage distill`): consumes `mrrec.items`,
//! `mrrec.events` and `mrrec.outcomes` and keeps the hierarchical memory of
//! DESIGN §3 in the store.
//!
//! One Kafka batch is one guarded store batch: the touched users' states are
//! loaded with their versions, items are catalogued first (linking events that
//! waited for them), events are folded in in partition order, entries are
//! rendered, and everything — state, entries, global counts, and the last
//! offset of every partition range — is written atomically, guarded by the
//! offsets and user versions (fingerprints of the state) that were read. A replay after a crash finds its
//! offsets already stored and changes nothing; a concurrent writer (a second
//! instance during a rebalance) makes the guard fail, and the batch is
//! recomputed from fresh state.

mod indexes;

pub use indexes::Indexes;

use mrrec_memory::render::{self, Catalog};
use mrrec_memory::{BehaviorRecord, GlobalDelta, Keyspace, LoadedUser, MemoryEntry, MemoryStore};
use mrrec_messages::{Event, Item, Outcome, Topic};
use mrrec_store::{Batch, KvStore, StoreError};
use mrrec_stream::{decode_message, Poison, RecordMeta, Stage, StageError};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// The stage's name: group id suffix, metric label, dead-letter `stage`.
pub const STAGE: &str = "distill";

/// The topics distill consumes.
pub const TOPICS: [Topic; 3] = [Topic::Items, Topic::Events, Topic::Outcomes];

/// Guard conflicts (another writer) retried at once before backing off.
const CONFLICT_RETRIES: usize = 5;

/// A decoded input record.
#[derive(Debug, Clone)]
pub enum Input {
    Item(Item),
    Event(Event),
    Outcome(Outcome),
}

/// The distill stage over any store backend, optionally keeping tantivy indexes.
pub struct Distill<S> {
    memory: MemoryStore<S>,
    prefix: String,
    indexes: Option<Indexes>,
}

/// One composed batch: the guarded store write and what to index after it.
struct Composed {
    write: Batch,
    entries: Vec<MemoryEntry>,
    items: Vec<Item>,
}

impl<S: KvStore> Distill<S> {
    /// `topic_prefix` is `topics.prefix` (to tell the three topics apart).
    pub fn new(memory: MemoryStore<S>, topic_prefix: &str) -> Self {
        Self {
            memory,
            prefix: topic_prefix.to_owned(),
            indexes: None,
        }
    }

    /// Also keeps the memory and item indexes in `indexes`.
    pub fn with_indexes(mut self, indexes: Indexes) -> Self {
        self.indexes = Some(indexes);
        self
    }

    pub fn memory(&self) -> &MemoryStore<S> {
        &self.memory
    }
}

fn store_error(e: StoreError) -> StageError {
    if e.is_retryable() {
        StageError::Retryable(e.to_string())
    } else {
        StageError::Fatal(e.to_string())
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("memory types serialise")
}

impl<S: KvStore + 'static> Stage for Distill<S> {
    type Message = Input;

    fn name(&self) -> &str {
        STAGE
    }

    fn decode(&self, record: &RecordMeta, payload: Option<&[u8]>) -> Result<Input, Poison> {
        match Topic::from_name(&self.prefix, &record.topic) {
            Some(Topic::Items) => decode_message(record, payload).map(Input::Item),
            Some(Topic::Events) => decode_message(record, payload).map(Input::Event),
            Some(Topic::Outcomes) => decode_message(record, payload).map(Input::Outcome),
            _ => Err(Poison {
                kind: "topic",
                reason: format!("distill does not consume {}", record.topic),
            }),
        }
    }

    async fn process(&mut self, batch: &mrrec_stream::Batch<Input>) -> Result<(), StageError> {
        for _ in 0..CONFLICT_RETRIES {
            let composed = self.compose(batch).await.map_err(store_error)?;
            if self
                .memory
                .apply(&composed.write)
                .await
                .map_err(store_error)?
            {
                if let Some(indexes) = self.indexes.as_mut() {
                    indexes
                        .record(&composed.write, &composed.entries, &composed.items)
                        .map_err(|e| StageError::Fatal(e.to_string()))?;
                }
                return Ok(());
            }
            tracing::debug!("distill: a guard failed (concurrent writer); recomputing the batch");
        }
        Err(StageError::Retryable(
            "distill: store keeps changing under this batch (another instance?)".into(),
        ))
    }

    async fn stored_offset(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StageError> {
        let stored = self
            .memory
            .stored_offset(topic, partition)
            .await
            .map_err(store_error)?;
        stored
            .map(|s| {
                s.parse::<i64>().map_err(|_| {
                    StageError::Fatal(format!("stored offset {topic}:{partition} is {s:?}"))
                })
            })
            .transpose()
    }
}

/// The catalog as seen while composing a batch: stored items plus this batch's.
struct BatchCatalog {
    items: HashMap<String, Item>,
}

impl Catalog for BatchCatalog {
    fn item(&self, item_id: &str) -> Option<&Item> {
        self.items.get(item_id)
    }
}

impl<S: KvStore> Distill<S> {
    /// Computes the guarded write of one Kafka batch from the current store.
    async fn compose(&self, batch: &mrrec_stream::Batch<Input>) -> Result<Composed, StoreError> {
        let keys = self.memory.keys().clone();
        let mut write = Batch::default();

        // Guards: the stored offset of every partition range, as read now. Only
        // records above it are applied (another writer may have got further
        // during a rebalance than this instance knew when it sealed the batch).
        let offset_fields: Vec<(String, String)> = batch
            .ranges
            .iter()
            .map(|r| {
                (
                    keys.offsets(),
                    Keyspace::offset_field(&r.topic, r.partition),
                )
            })
            .collect();
        let stored_values = self.memory.kv().get_fields(&offset_fields).await?;
        let mut stored_now: HashMap<(Arc<str>, i32), i64> = HashMap::new();
        for ((range, (_, field)), stored) in
            batch.ranges.iter().zip(offset_fields).zip(stored_values)
        {
            let stored_offset = match stored.as_deref() {
                Some(s) => s
                    .parse::<i64>()
                    .map_err(|_| StoreError::Corrupt(format!("stored offset {s:?}")))?,
                None => -1,
            };
            stored_now.insert((range.topic.clone(), range.partition), stored_offset);
            if stored_offset < range.last_offset {
                write.guard(keys.offsets(), field.clone(), stored);
                write.set(keys.offsets(), field, range.last_offset.to_string());
            }
        }
        let fresh = |meta: &RecordMeta| {
            stored_now
                .get(&(meta.topic.clone(), meta.partition))
                .is_none_or(|stored| meta.offset > *stored)
        };

        // Items first (catalogued, then linked to events that waited for them).
        let mut new_items: BTreeMap<String, Item> = BTreeMap::new();
        let mut events: Vec<(Event, Option<String>)> = Vec::new();
        for record in &batch.records {
            if !fresh(&record.meta) {
                continue;
            }
            match &record.message {
                Input::Item(item) => {
                    new_items.insert(item.item_id.clone(), item.clone());
                }
                Input::Event(event) => events.push((event.clone(), None)),
                Input::Outcome(outcome) => {
                    events.push((outcome.event.clone(), Some(outcome.request_id.clone())))
                }
            }
        }
        let new_item_ids: Vec<String> = new_items.keys().cloned().collect();
        let waiting = self.memory.waiting_users(&new_item_ids).await?;

        let mut users: BTreeSet<String> = events.iter().map(|(e, _)| e.user_id.clone()).collect();
        users.extend(waiting.values().flatten().cloned());
        let users: Vec<String> = users.into_iter().collect();
        let mut loaded = self.memory.load_users(&users).await?;

        // Every item rendering may need: events' items, examples and recent items in state.
        let mut wanted: BTreeSet<String> = events
            .iter()
            .filter_map(|(e, _)| e.item_id.clone())
            .collect();
        for user in loaded.values() {
            wanted.extend(user.state.recent_positive.iter().cloned());
            for stats in user.state.categories.values() {
                wanted.extend(stats.liked_examples.iter().map(|(_, i)| i.clone()));
                wanted.extend(stats.disliked_examples.iter().map(|(_, i)| i.clone()));
            }
        }
        wanted.retain(|i| !new_items.contains_key(i));
        let mut catalog = BatchCatalog {
            items: self
                .memory
                .load_items(&wanted.into_iter().collect::<Vec<_>>())
                .await?,
        };
        for (id, item) in &new_items {
            write.set(keys.items(), id.clone(), json(item));
            catalog.items.insert(id.clone(), item.clone());
        }

        let mut global = GlobalDelta::default();
        let mut touched: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut records: Vec<(String, BehaviorRecord)> = Vec::new();

        for (item_id, waiting_users) in &waiting {
            let item = &new_items[item_id];
            for user in waiting_users {
                let Some(LoadedUser { state, .. }) = loaded.get_mut(user) else {
                    continue;
                };
                let (linked, categories, delta) = state.link(item);
                global.merge(delta);
                touched.entry(user.clone()).or_default().extend(categories);
                records.extend(linked.into_iter().map(|r| (user.clone(), r)));
                write.delete(keys.waiting(item_id), user.clone());
            }
        }

        for (event, request_id) in &events {
            let record = BehaviorRecord::from_event(event, request_id.as_deref());
            let Some(LoadedUser { state, .. }) = loaded.get_mut(&event.user_id) else {
                continue;
            };
            let item = event
                .item_id
                .as_deref()
                .and_then(|id| catalog.items.get(id));
            let (categories, delta) = state.apply(&record, event.attrs.as_ref(), item);
            if let (Some(item_id), None) = (event.item_id.as_deref(), item) {
                write.set(keys.waiting(item_id), event.user_id.clone(), "1");
            }
            global.merge(delta);
            touched
                .entry(event.user_id.clone())
                .or_default()
                .extend(categories);
            records.push((event.user_id.clone(), record));
        }

        // Render and write what changed.
        let mut entries = Vec::new();
        for (user, record) in &records {
            let entry = render::behavior(user, record, &catalog);
            write.set(
                keys.user(user),
                Keyspace::entry_field(&entry.id),
                json(&entry),
            );
            entries.push(entry);
        }
        for (user, categories) in &touched {
            let LoadedUser { state, version } = &loaded[user];
            for category in categories {
                if let Some(stats) = state.categories.get(category) {
                    let entry = render::preference(user, category, stats, &catalog);
                    write.set(
                        keys.user(user),
                        Keyspace::entry_field(&entry.id),
                        json(&entry),
                    );
                    entries.push(entry);
                }
            }
            let profile = render::profile(state, &catalog);
            write.set(
                keys.user(user),
                Keyspace::entry_field(&profile.id),
                json(&profile),
            );
            entries.push(profile);
            let state_json = json(state);
            write.guard(keys.user(user), "version", version.clone());
            write.set(
                keys.user(user),
                "version",
                mrrec_memory::fingerprint(&state_json),
            );
            write.set(keys.user(user), "state", state_json);
        }

        for (item, n) in global.popularity {
            write.increment(keys.popularity(), item, n);
        }
        for ((item, other), n) in global.co_occurrence {
            write.increment(keys.co_occurrence(&item), other, n);
        }
        for ((category, aspect), n) in global.chosen {
            write.increment(keys.global(&category), format!("c:{aspect}"), n);
        }
        for ((category, aspect), n) in global.unchosen {
            write.increment(keys.global(&category), format!("u:{aspect}"), n);
        }
        Ok(Composed {
            write,
            entries,
            items: new_items.into_values().collect(),
        })
    }
}
