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
//!
//! Between batches the stage keeps the states it wrote (with their versions)
//! and the catalog items it saw, so a batch reads only users and items it has
//! not met yet.
//!
//! A tombstone on the compacted items topic (a record with the item's id as
//! key and no payload) removes the item: from the catalog, from the item
//! index, and into `items:removed`, which the ranker leaves out of every
//! answer. The user memory that mentions it stays (it is history). A later
//! record for the same id brings the item back. The caches are dropped when partitions are revoked and when a
//! guard fails (another writer got there first), and only ever hold what the
//! store holds, so they change no result: a cold and a warm run write the same.

mod indexes;

pub use indexes::{Changes, Indexes, OpenError, Opened, Refresh, FOLLOW_CATALOG_EVERY};

use mrrec_memory::render::{self, Catalog};
use mrrec_memory::{
    BehaviorRecord, GlobalDelta, Keyspace, Level, LoadedUser, MemoryEntry, MemoryStore,
    WAITING_MARK,
};
use mrrec_messages::{Event, Item, Outcome, Topic};
use mrrec_store::{Batch, KvStore, OffsetGuard, Range as OffsetRange, StoreError};
use mrrec_stream::{decode_message, Poison, RecordMeta, Stage, StageError};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The stage's name: group id suffix, metric label, dead-letter `stage`.
pub const STAGE: &str = "distill";

/// The topics distill consumes.
pub const TOPICS: [Topic; 3] = [Topic::Items, Topic::Events, Topic::Outcomes];

/// Runner settings of distill: the runtime's, with distill's own batch limits.
pub fn runner_settings(config: &mrrec_config::Config, stage: &str) -> mrrec_stream::RunnerSettings {
    let mut settings = mrrec_stream::RunnerSettings::from_config(config, stage, &TOPICS);
    settings.batch_max_records = config.distill.batch_max_records;
    settings.batch_max_keys = config.distill.batch_max_users;
    settings.batch_max_wait = std::time::Duration::from_millis(config.distill.batch_max_ms);
    settings
}

/// The distill stage over `memory`, from the configuration: the indexes
/// under `index.path` (brought up to the store when they lag it), the user
/// cache, the cap on behaviour entries and how co-occurrence is counted.
pub async fn open_stage<S: KvStore + 'static>(
    config: &mrrec_config::Config,
    memory: MemoryStore<S>,
) -> Result<Distill<S>, OpenStageError> {
    let indexes = Indexes::open(Some(&config.index.path), &memory)
        .await
        .map_err(|source| OpenStageError {
            path: config.index.path.clone(),
            source,
        })?;
    Ok(Distill::new(memory, &config.topics.prefix)
        .with_indexes(indexes)
        .with_cache(config.distill.cache_bytes())
        .with_max_behavior_entries(config.distill.max_behavior_entries)
        .with_co_occurrence(mrrec_memory::CoOccurrence {
            window: config.distill.co_occurrence_window,
            both_ways: config.distill.co_occurrence_both_ways,
        }))
}

/// Opening the stage's indexes failed.
#[derive(Debug, thiserror::Error)]
#[error("opening the indexes in {}: {source}", path.display())]
pub struct OpenStageError {
    pub path: std::path::PathBuf,
    #[source]
    pub source: OpenError,
}

/// Gauge: stored JSON bytes of the states and items distill keeps between batches.
pub const CACHE_BYTES: &str = "mrrec_distill_cache_bytes";
/// `distill.max_behavior_entries`'s default.
pub const DEFAULT_MAX_BEHAVIOR_ENTRIES: usize = 1000;
/// Level-1 entries removed past `distill.max_behavior_entries`.
const PRUNED: &str = "mrrec_distill_behavior_pruned_total";

/// Registers the HELP text of the distill stage's own metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        CACHE_BYTES,
        "Stored JSON bytes of the user states and items distill keeps between batches (bounded by distill.cache_mb)"
    );
    metrics::describe_counter!(
        PRUNED,
        "Level-1 (behaviour) entries deleted past distill.max_behavior_entries"
    );
}

/// Guard conflicts (another writer) retried at once before backing off.
const CONFLICT_RETRIES: usize = 5;

/// A decoded input record.
#[derive(Debug, Clone)]
pub enum Input {
    Item(Item),
    /// A tombstone on the items topic: this item id is removed.
    ItemRemoved(String),
    Event(Event),
    Outcome(Outcome),
}

/// The distill stage over any store backend, optionally keeping tantivy indexes.
pub struct Distill<S> {
    memory: MemoryStore<S>,
    prefix: String,
    indexes: Option<Indexes>,
    cache: Cache,
    /// Level-1 entries kept per user.
    max_behavior: usize,
    /// How co-occurrence is counted.
    co_occurrence: mrrec_memory::CoOccurrence,
}

/// States and catalog items as this instance last wrote or read them.
#[derive(Default)]
struct Cache {
    /// Budget in bytes of stored JSON (states and items); 0 disables the cache.
    budget: usize,
    /// Stored JSON bytes of what is kept now.
    bytes: usize,
    /// Each user's state with its stored JSON size.
    users: HashMap<String, (LoadedUser, usize)>,
    /// Each catalog item with its stored JSON size.
    items: HashMap<String, (Item, usize)>,
}

impl Cache {
    fn clear(&mut self) {
        self.users.clear();
        self.items.clear();
        self.bytes = 0;
        self.report();
    }

    fn report(&self) {
        metrics::gauge!(CACHE_BYTES, "stage" => STAGE).set(self.bytes as f64);
    }

    /// Takes a user's state out (a failed batch must not leave a
    /// half-applied state behind).
    fn take_user(&mut self, user: &str) -> Option<LoadedUser> {
        let (loaded, bytes) = self.users.remove(user)?;
        self.bytes -= bytes;
        Some(loaded)
    }

    /// Keeps what a stored batch wrote, within the budget.
    fn remember(&mut self, mut composed: Composed) {
        if self.budget == 0 {
            return;
        }
        let items: Vec<(String, Item, usize)> = composed
            .catalog
            .into_iter()
            .map(|(id, item)| {
                let bytes = json(&item).len();
                (id, item, bytes)
            })
            .collect();
        let adding = composed.state_bytes.values().sum::<usize>()
            + items.iter().map(|(_, _, bytes)| bytes).sum::<usize>();
        if self.bytes + adding > self.budget {
            // Simple and safe: start over (what is dropped is read again).
            self.clear();
            if adding > self.budget {
                return;
            }
        }
        for (user, loaded) in composed.users {
            let bytes = composed.state_bytes.remove(&user).unwrap_or_default();
            self.bytes += bytes;
            if let Some((_, replaced)) = self.users.insert(user, (loaded, bytes)) {
                self.bytes -= replaced;
            }
        }
        for (id, item, bytes) in items {
            self.bytes += bytes;
            if let Some((_, replaced)) = self.items.insert(id, (item, bytes)) {
                self.bytes -= replaced;
            }
        }
        for id in &composed.removed {
            if let Some((_, bytes)) = self.items.remove(id) {
                self.bytes -= bytes;
            }
        }
        self.report();
    }
}

/// Users and items of records a batch holds that the store already has
/// (offsets at or below the stored ones): a replay. After a store write
/// whose reply was lost, the retry is such a replay, and what it wrote may
/// never have reached the indexes: they are re-indexed from the store.
#[derive(Debug, Default)]
struct Replayed {
    users: BTreeSet<String>,
    items: BTreeSet<String>,
}

impl Replayed {
    fn note(&mut self, input: &Input) {
        match input {
            Input::Item(item) => {
                self.items.insert(item.item_id.clone());
            }
            Input::ItemRemoved(id) => {
                self.items.insert(id.clone());
            }
            Input::Event(event) => {
                self.users.insert(event.user_id.clone());
            }
            Input::Outcome(outcome) => {
                self.users.insert(outcome.event.user_id.clone());
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.items.is_empty()
    }
}

/// One composed batch: the guarded store write and what to index after it.
struct Composed {
    write: Batch,
    /// Behavior entries of this batch's events: new, indexed without a delete.
    added: Vec<MemoryEntry>,
    /// Entries that replace earlier versions (preferences, profiles, linked records).
    replaced: Vec<MemoryEntry>,
    items: Vec<Item>,
    /// Items removed by tombstones.
    removed: Vec<String>,
    /// Level-1 entry ids pruned (past `max_behavior_entries`).
    pruned: Vec<String>,
    /// What the batch holds that the store already had.
    replayed: Replayed,
    /// The users as written, with their new versions and JSON sizes.
    users: HashMap<String, LoadedUser>,
    state_bytes: HashMap<String, usize>,
    /// Catalog items new in the batch or loaded for it (the cache had the rest).
    catalog: HashMap<String, Item>,
}

impl<S: KvStore> Distill<S> {
    /// `topic_prefix` is `topics.prefix` (to tell the three topics apart).
    pub fn new(memory: MemoryStore<S>, topic_prefix: &str) -> Self {
        Self {
            memory,
            prefix: topic_prefix.to_owned(),
            indexes: None,
            cache: Cache::default(),
            max_behavior: DEFAULT_MAX_BEHAVIOR_ENTRIES,
            co_occurrence: mrrec_memory::CoOccurrence::default(),
        }
    }

    /// Keeps at most `n` level-1 entries per user (the newest by event
    /// time; ties by id), pruning the rest from the store and the index.
    pub fn with_max_behavior_entries(mut self, n: usize) -> Self {
        self.max_behavior = n.max(1);
        self
    }

    /// Keeps user states and the items they need in memory between
    /// batches, up to `bytes` of their stored JSON.
    pub fn with_cache(mut self, bytes: usize) -> Self {
        self.cache.budget = bytes;
        self
    }

    /// Counts co-occurrence as `counting` says (default: the later item
    /// after each of the 3 latest liked ones, one way).
    pub fn with_co_occurrence(mut self, counting: mrrec_memory::CoOccurrence) -> Self {
        self.co_occurrence = counting;
        self
    }

    /// Also keeps the memory and item indexes in `indexes`; the item index
    /// follows the catalog other instances write every
    /// [`FOLLOW_CATALOG_EVERY`] unless `indexes` follows it already.
    pub fn with_indexes(mut self, mut indexes: Indexes) -> Self
    where
        S: 'static,
    {
        if !indexes.follows_catalog() {
            indexes.follow_catalog(
                self.memory.clone(),
                &Topic::Items.name(&self.prefix),
                FOLLOW_CATALOG_EVERY,
            );
        }
        self.indexes = Some(indexes);
        self
    }

    pub fn memory(&self) -> &MemoryStore<S> {
        &self.memory
    }

    /// Stored JSON bytes of the states and items kept between batches now
    /// (also the gauge `mrrec_distill_cache_bytes`).
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes
    }
}

impl<S: KvStore + 'static> Distill<S> {
    /// Indexes again, from the store, what a replayed batch had written
    /// ([`Replayed`]): each user's memory replaces what the index holds for
    /// them (entries the batch pruned go too), and the items are upserted.
    async fn reindex(&mut self, replayed: Replayed) -> Result<(), StageError> {
        let Some(indexes) = self.indexes.as_mut() else {
            return Ok(());
        };
        if replayed.is_empty() {
            return Ok(());
        }
        // Each user's hash in one read: its entries and the version they
        // are of, together.
        let users: Vec<String> = replayed.users.iter().cloned().collect();
        let keys: Vec<String> = users.iter().map(|u| self.memory.keys().user(u)).collect();
        let hashes = self
            .memory
            .kv()
            .get_all_many(&keys)
            .await
            .map_err(StageError::from)?;
        let mut rewritten = Vec::with_capacity(users.len());
        let mut versions = Vec::with_capacity(users.len());
        for (user, fields) in users.into_iter().zip(hashes) {
            let entries = mrrec_memory::entries_in(&fields).map_err(StageError::from)?;
            versions.push((user.clone(), fields.get("version").cloned()));
            rewritten.push((user, entries));
        }
        let ids: Vec<String> = replayed.items.into_iter().collect();
        let found = self
            .memory
            .load_items(&ids)
            .await
            .map_err(StageError::from)?;
        let gone: Vec<String> = ids
            .iter()
            .filter(|id| !found.contains_key(*id))
            .cloned()
            .collect();
        tracing::debug!(
            users = replayed.users.len(),
            items = ids.len(),
            "distill: re-indexing a replayed batch from the store"
        );
        let changes = Changes {
            rewritten,
            items: found.into_values().collect(),
            removed: gone,
            versions,
            ..Changes::default()
        };
        indexes
            .record(&Batch::default(), changes)
            .map_err(|e| StageError::fatal(format!("indexing: {e}")))
    }
}

/// The item id a tombstone removes: its key, which must be a valid id.
fn tombstone(record: &RecordMeta) -> Result<String, Poison> {
    let invalid = |reason: &str| Poison {
        kind: "tombstone",
        reason: format!("a tombstone on the items topic {reason}"),
    };
    let key = record
        .key
        .as_deref()
        .ok_or_else(|| invalid("has no key (the item id)"))?;
    let id = std::str::from_utf8(key).map_err(|_| invalid("has a key that is not UTF-8"))?;
    if id.is_empty()
        || id.len() > mrrec_messages::limits::MAX_ID_BYTES
        || id.chars().any(char::is_control)
    {
        return Err(invalid("has a key that is not an item id"));
    }
    Ok(id.to_owned())
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
            Some(Topic::Items) if payload.is_none() => tombstone(record).map(Input::ItemRemoved),
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
            let started = std::time::Instant::now();
            let composed = self.compose(batch).await.map_err(StageError::from)?;
            let composed_at = started.elapsed();
            let applied = self
                .memory
                .apply(&composed.write)
                .await
                .map_err(StageError::from)?;
            let applied_at = started.elapsed();
            if applied {
                let mut composed = composed;
                if let Some(indexes) = self.indexes.as_mut() {
                    let changes = Changes {
                        added: std::mem::take(&mut composed.added),
                        replaced: std::mem::take(&mut composed.replaced),
                        rewritten: Vec::new(),
                        items: std::mem::take(&mut composed.items),
                        removed: composed.removed.clone(),
                        pruned: std::mem::take(&mut composed.pruned),
                        versions: Vec::new(),
                    };
                    indexes
                        .record(&composed.write, changes)
                        .map_err(|e| StageError::fatal(format!("indexing: {e}")))?;
                }
                tracing::debug!(
                    records = batch.records.len(),
                    users = composed.users.len(),
                    ops = composed.write.ops.len(),
                    compose_ms = composed_at.as_millis() as u64,
                    store_ms = (applied_at - composed_at).as_millis() as u64,
                    index_ms = (started.elapsed() - applied_at).as_millis() as u64,
                    "distill: batch stored"
                );
                let replayed = std::mem::take(&mut composed.replayed);
                self.cache.remember(composed);
                self.reindex(replayed).await?;
                return Ok(());
            }
            tracing::debug!("distill: a guard failed (concurrent writer); recomputing the batch");
            self.cache.clear();
        }
        Err(StageError::retryable(
            "distill: store keeps changing under this batch (another instance?)",
        ))
    }

    async fn on_revoke(&mut self, _partitions: &[(String, i32)]) {
        // Their users may be written by the next owner from now on.
        self.cache.clear();
    }

    async fn stored_offset(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StageError> {
        OffsetGuard::stored(
            self.memory.kv(),
            &self.memory.keys().offsets(),
            topic,
            partition,
        )
        .await
        .map_err(StageError::from)
    }
}

/// The catalog as seen while composing a batch: this batch's items, items
/// loaded for it, and the cached ones.
struct BatchCatalog<'a> {
    cached: &'a HashMap<String, (Item, usize)>,
    /// New and loaded items (the cache learns them once the batch is stored).
    items: HashMap<String, Item>,
}

impl Catalog for BatchCatalog<'_> {
    fn item(&self, item_id: &str) -> Option<&Item> {
        self.items
            .get(item_id)
            .or_else(|| self.cached.get(item_id).map(|(item, _)| item))
    }
}

impl<S: KvStore> Distill<S> {
    /// States of `users`: taken from the cache (a failed batch must not leave
    /// half-applied states there), the rest loaded in one round trip.
    async fn take_users(
        &mut self,
        users: Vec<String>,
    ) -> Result<HashMap<String, LoadedUser>, StoreError> {
        let mut out = HashMap::with_capacity(users.len());
        let mut missing = Vec::new();
        for user in users {
            match self.cache.take_user(&user) {
                Some(loaded) => {
                    out.insert(user, loaded);
                }
                None => missing.push(user),
            }
        }
        self.cache.report();
        out.extend(self.memory.load_users(&missing).await?);
        Ok(out)
    }

    /// Counts this batch's new level-1 entries into their users' states;
    /// for a user past `max_behavior`, reads the user's level-1 entries from
    /// the store, keeps the newest (by event time, ties by id) together with
    /// this batch's, and deletes the rest. Top-N of everything seen is the
    /// same however the stream is cut into batches, so a replay after a
    /// crash leaves the same store. Returns the pruned entry ids.
    async fn prune_behavior(
        &self,
        records: &[(String, BehaviorRecord)],
        added: &mut Vec<MemoryEntry>,
        loaded: &mut HashMap<String, LoadedUser>,
        write: &mut Batch,
    ) -> Result<Vec<String>, StoreError> {
        let keys = self.memory.keys();
        let mut new_per_user: BTreeMap<&str, u64> = BTreeMap::new();
        for (user, _) in records {
            *new_per_user.entry(user.as_str()).or_default() += 1;
        }
        let mut pruned = Vec::new();
        for (user, n) in new_per_user {
            let Some(LoadedUser { state, .. }) = loaded.get_mut(user) else {
                continue;
            };
            state.behavior_entries = state.behavior_entries.saturating_add(n);
            if state.behavior_entries <= self.max_behavior as u64 {
                continue;
            }
            let mut kept: BTreeMap<String, i64> = BTreeMap::new();
            for (field, value) in self.memory.kv().get_all(&keys.user(user)).await? {
                if !field.starts_with("e:") {
                    continue;
                }
                let entry: MemoryEntry = serde_json::from_str(&value)
                    .map_err(|e| StoreError::Corrupt(format!("entry {field}: {e}")))?;
                if entry.level == Level::Behavior {
                    kept.insert(entry.id, entry.ts);
                }
            }
            for entry in added.iter().filter(|e| e.user == user) {
                kept.insert(entry.id.clone(), entry.ts);
            }
            let mut newest: Vec<(i64, String)> =
                kept.into_iter().map(|(id, ts)| (ts, id)).collect();
            newest.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            let dropped = newest.split_off(newest.len().min(self.max_behavior));
            state.behavior_entries = newest.len() as u64;
            for (_, id) in dropped {
                write.delete(keys.user(user), Keyspace::entry_field(&id));
                pruned.push(id);
            }
        }
        if !pruned.is_empty() {
            let gone: BTreeSet<&String> = pruned.iter().collect();
            added.retain(|e| !gone.contains(&e.id));
            metrics::counter!(PRUNED, "stage" => STAGE).increment(pruned.len() as u64);
        }
        Ok(pruned)
    }

    /// Computes the guarded write of one Kafka batch from the current store.
    async fn compose(
        &mut self,
        batch: &mrrec_stream::Batch<Input>,
    ) -> Result<Composed, StoreError> {
        let keys = self.memory.keys().clone();
        let mut write = Batch::default();

        // Guards: the stored offset of every partition range, as read now. Only
        // records above it are applied (another writer may have got further
        // during a rebalance than this instance knew when it sealed the batch).
        let ranges: Vec<OffsetRange<'_>> = batch
            .ranges
            .iter()
            .map(|r| OffsetRange {
                topic: &r.topic,
                partition: r.partition,
                last_offset: r.last_offset,
            })
            .collect();
        let offsets = OffsetGuard::read(self.memory.kv(), &keys.offsets(), &ranges).await?;
        offsets.advance(&mut write);
        let fresh = |meta: &RecordMeta| offsets.is_fresh(&meta.topic, meta.partition, meta.offset);

        // Items first (catalogued, then linked to events that waited for them).
        let Sorted {
            new_items,
            removed,
            events,
            replayed,
        } = Sorted::of(batch, fresh);
        let new_item_ids: Vec<String> = new_items.keys().cloned().collect();
        let waiting = self.memory.waiting_users(&new_item_ids).await?;

        let mut users: BTreeSet<String> = events.iter().map(|(e, _)| e.user_id.clone()).collect();
        users.extend(waiting.values().flat_map(|w| w.users.iter().cloned()));
        let mut loaded = self.take_users(users.into_iter().collect()).await?;

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
        let unknown: Vec<String> = wanted
            .into_iter()
            .filter(|id| !new_items.contains_key(id) && !self.cache.items.contains_key(id))
            .collect();
        let mut catalog = BatchCatalog {
            cached: &self.cache.items,
            items: self.memory.load_items(&unknown).await?,
        };
        for (id, item) in &new_items {
            write.set(keys.items(), id.clone(), json(item));
            write.delete(keys.removed_items(), id.clone());
            catalog.items.insert(id.clone(), item.clone());
        }
        for id in &removed {
            write.delete(keys.items(), id.clone());
            write.set(keys.removed_items(), id.clone(), "1");
            catalog.items.remove(id);
        }

        let mut global = GlobalDelta::counting(self.co_occurrence);
        let mut touched: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut records: Vec<(String, BehaviorRecord)> = Vec::new();
        let mut linked_records: Vec<(String, BehaviorRecord)> = Vec::new();

        for (item_id, waiting) in &waiting {
            let item = &new_items[item_id];
            // Nothing joined the set since it was read (see WAITING_MARK).
            write.guard(keys.waiting(item_id), WAITING_MARK, waiting.mark.clone());
            for user in &waiting.users {
                let Some(LoadedUser { state, .. }) = loaded.get_mut(user) else {
                    continue;
                };
                let (linked, categories) = state.link(item, &mut global);
                touched.entry(user.clone()).or_default().extend(categories);
                linked_records.extend(linked.into_iter().map(|r| (user.clone(), r)));
                write.delete(keys.waiting(item_id), user.clone());
            }
            if waiting.mark.is_some() {
                write.delete(keys.waiting(item_id), WAITING_MARK);
            }
        }

        // Items each user had an event about, each written once.
        let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
        for (event, request_id) in &events {
            let record = BehaviorRecord::from_event(event, request_id.as_deref());
            let Some(LoadedUser { state, .. }) = loaded.get_mut(&event.user_id) else {
                continue;
            };
            let item = event.item_id.as_deref().and_then(|id| catalog.item(id));
            let categories = state.apply(&record, event.attrs.as_ref(), item, &mut global);
            if let Some(item_id) = event.item_id.as_deref() {
                seen.insert((event.user_id.as_str(), item_id));
            }
            if let (Some(item_id), None) = (event.item_id.as_deref(), item) {
                // Waits only while the item is still not catalogued, and
                // tells a concurrent cataloguing write so (WAITING_MARK).
                write.guard(keys.items(), item_id, None);
                write.set(keys.waiting(item_id), event.user_id.clone(), "1");
                write.increment(keys.waiting(item_id), WAITING_MARK, 1);
            }
            touched
                .entry(event.user_id.clone())
                .or_default()
                .extend(categories);
            records.push((event.user_id.clone(), record));
        }

        for (user, item_id) in seen {
            write.set(keys.seen(user), item_id, "1");
        }

        // Render and write what changed.
        let mut added = Vec::with_capacity(records.len());
        let mut replaced = Vec::new();
        for (list, out) in [(&records, &mut added), (&linked_records, &mut replaced)] {
            for (user, record) in list {
                let entry = render::behavior(user, record, &catalog);
                write.set(
                    keys.user(user),
                    Keyspace::entry_field(&entry.id),
                    json(&entry),
                );
                out.push(entry);
            }
        }
        let pruned = self
            .prune_behavior(&records, &mut added, &mut loaded, &mut write)
            .await?;
        let state_bytes = write_touched(
            &mut write,
            &keys,
            &touched,
            &mut loaded,
            &catalog,
            &mut replaced,
        );

        write_globals(&mut write, &keys, global);
        Ok(Composed {
            write,
            added,
            replaced,
            items: new_items.into_values().collect(),
            removed: removed.into_iter().collect(),
            pruned,
            replayed,
            users: loaded,
            state_bytes,
            catalog: catalog.items,
        })
    }
}

/// A batch's fresh records by kind (the others noted as replayed).
struct Sorted {
    /// Items catalogued by the batch (the last record per id wins).
    new_items: BTreeMap<String, Item>,
    /// Items removed by a tombstone (and not brought back later in the batch).
    removed: BTreeSet<String>,
    /// Events and outcomes' events (with their request id), in batch order.
    events: Vec<(Event, Option<String>)>,
    replayed: Replayed,
}

impl Sorted {
    fn of(batch: &mrrec_stream::Batch<Input>, fresh: impl Fn(&RecordMeta) -> bool) -> Self {
        let mut sorted = Sorted {
            new_items: BTreeMap::new(),
            removed: BTreeSet::new(),
            events: Vec::new(),
            replayed: Replayed::default(),
        };
        for record in &batch.records {
            if !fresh(&record.meta) {
                sorted.replayed.note(&record.message);
                continue;
            }
            match &record.message {
                Input::Item(item) => {
                    sorted.removed.remove(&item.item_id);
                    sorted.new_items.insert(item.item_id.clone(), item.clone());
                }
                Input::ItemRemoved(id) => {
                    sorted.new_items.remove(id);
                    sorted.removed.insert(id.clone());
                }
                Input::Event(event) => sorted.events.push((event.clone(), None)),
                Input::Outcome(outcome) => sorted
                    .events
                    .push((outcome.event.clone(), Some(outcome.request_id.clone()))),
            }
        }
        sorted
    }
}

/// For every user the batch touched: the preference entries of the
/// categories it touched, the profile entry and the state (guarded by the
/// version read, written with the next). Returns each state's JSON size.
fn write_touched(
    write: &mut Batch,
    keys: &Keyspace,
    touched: &BTreeMap<String, BTreeSet<String>>,
    loaded: &mut HashMap<String, LoadedUser>,
    catalog: &BatchCatalog<'_>,
    replaced: &mut Vec<MemoryEntry>,
) -> HashMap<String, usize> {
    let mut state_bytes = HashMap::with_capacity(touched.len());
    for (user, categories) in touched {
        let Some(LoadedUser { state, version }) = loaded.get_mut(user) else {
            continue;
        };
        for category in categories {
            if let Some(stats) = state.categories.get(category) {
                let entry = render::preference(user, category, stats, catalog);
                write.set(
                    keys.user(user),
                    Keyspace::entry_field(&entry.id),
                    json(&entry),
                );
                replaced.push(entry);
            }
        }
        let profile = render::profile(state, catalog);
        write.set(
            keys.user(user),
            Keyspace::entry_field(&profile.id),
            json(&profile),
        );
        replaced.push(profile);
        // A state written before `seen:{user}` existed moves its seen
        // items there now (the state JSON no longer carries them).
        for item_id in std::mem::take(&mut state.legacy_seen) {
            write.set(keys.seen(user), item_id, "1");
        }
        let state_json = json(state);
        state_bytes.insert(user.clone(), state_json.len());
        let next = mrrec_memory::fingerprint(&state_json);
        write.guard(keys.user(user), "version", version.replace(next.clone()));
        write.set(keys.user(user), "version", next);
        write.set(keys.user(user), "state", state_json);
    }
    state_bytes
}

/// The batch's global counts (popularity, co-occurrence, chosen and
/// unchosen aspects per category) as increments, and every category they
/// name in the category list.
fn write_globals(write: &mut Batch, keys: &Keyspace, global: GlobalDelta) {
    for (item, n) in global.popularity {
        write.increment(keys.popularity(), item, n);
    }
    for ((item, other), n) in global.co_occurrence {
        write.increment(keys.co_occurrence(&item), other, n);
    }
    let mut categories: BTreeSet<String> = BTreeSet::new();
    for ((category, aspect), n) in global.chosen {
        write.increment(keys.global(&category), format!("c:{aspect}"), n);
        categories.insert(category);
    }
    for ((category, aspect), n) in global.unchosen {
        write.increment(keys.global(&category), format!("u:{aspect}"), n);
        categories.insert(category);
    }
    for category in categories {
        write.set(keys.categories(), category, "1");
    }
}
