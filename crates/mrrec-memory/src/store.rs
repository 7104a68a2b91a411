//! Memory on a [`KvStore`]: where each piece lives, and the reads the stages
//! and tools need. Writes are composed by the distill stage as one guarded
//! [`Batch`] per Kafka batch.
//!
//! Layout (prefix `mrrec:` by default; ids escaped with [`escape`]):
//!
//! | key | fields |
//! |---|---|
//! | `user:{id}` | `state` (UserState JSON), `version`, `e:{entry id}` (MemoryEntry JSON) |
//! | `items` | item id → Item JSON |
//! | `seen:{id}` | item id → `1`, every item the user had an event about (what `exclude_seen` leaves out) |
//! | `waiting:{item}` | user id → `1`, users with events for a not-yet-known item |
//! | `global:{category}` | `c:{aspect}` / `u:{aspect}` counts among chosen / passed-over items |
//! | `cooc:{item}` | other item → times chosen together |
//! | `popularity` | item → positive interactions |
//! | `offsets` | `{topic}:{partition}` → last offset whose effects are stored |

use crate::render::{self, GlobalStats};
use crate::{MemoryEntry, UserState};
use mrrec_messages::Item;
use mrrec_store::{escape, Batch, KvStore, StoreError};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The field of a waiting set (`waiting:{item}`) that counts the events
/// that ever waited there; never a user id (ids are non-empty). An event
/// that waits bumps it and a write that catalogues the item guards it, so
/// the two cannot pass each other on different instances: whichever
/// applies second finds its guard broken and redoes its batch.
pub const WAITING_MARK: &str = "";

/// Events waiting for an item that is not catalogued yet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waiting {
    /// Users with events naming the item.
    pub users: Vec<String>,
    /// The set's [`WAITING_MARK`] as read (`None`: nothing ever waited).
    pub mark: Option<String>,
}

/// Key names under a prefix.
#[derive(Debug, Clone)]
pub struct Keyspace {
    prefix: String,
}

impl Default for Keyspace {
    fn default() -> Self {
        Self::new("mrrec:")
    }
}

impl Keyspace {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn user(&self, user: &str) -> String {
        format!("{}user:{}", self.prefix, escape(user))
    }

    pub fn seen(&self, user: &str) -> String {
        format!("{}seen:{}", self.prefix, escape(user))
    }

    pub fn items(&self) -> String {
        format!("{}items", self.prefix)
    }

    /// Items removed by a tombstone on the items topic (field: item id):
    /// never recommended while they are here.
    pub fn removed_items(&self) -> String {
        format!("{}items:removed", self.prefix)
    }

    pub fn waiting(&self, item: &str) -> String {
        format!("{}waiting:{}", self.prefix, escape(item))
    }

    /// Every category that has a global memory key (field: the category):
    /// what the recommender lists without scanning the keyspace.
    pub fn categories(&self) -> String {
        format!("{}categories", self.prefix)
    }

    pub fn global(&self, category: &str) -> String {
        format!("{}global:{}", self.prefix, escape(category))
    }

    pub fn co_occurrence(&self, item: &str) -> String {
        format!("{}cooc:{}", self.prefix, escape(item))
    }

    pub fn popularity(&self) -> String {
        format!("{}popularity", self.prefix)
    }

    pub fn offsets(&self) -> String {
        format!("{}offsets", self.prefix)
    }

    /// A partition's field in `offsets` (see [`mrrec_store::OffsetGuard`]).
    pub fn offset_field(topic: &str, partition: i32) -> String {
        mrrec_store::offset_field(topic, partition)
    }

    pub fn entry_field(entry_id: &str) -> String {
        format!("e:{entry_id}")
    }
}

/// A user's state as loaded, with the version a write must guard.
#[derive(Debug, Clone)]
pub struct LoadedUser {
    pub state: UserState,
    /// `None` when the user has never been written.
    pub version: Option<String>,
}

/// Everything stored about one user.
#[derive(Debug, Clone, Default)]
pub struct UserMemory {
    pub state: Option<UserState>,
    pub entries: Vec<MemoryEntry>,
}

/// Memory reads over a store.
#[derive(Clone)]
pub struct MemoryStore<S> {
    store: S,
    keys: Keyspace,
}

/// The memory entries of a stored `user:{id}` hash (its `e:` fields), in
/// field order; one that does not parse is a corrupt store.
pub fn entries_in(fields: &BTreeMap<String, String>) -> Result<Vec<MemoryEntry>, StoreError> {
    fields
        .iter()
        .filter(|(field, _)| field.starts_with("e:"))
        .map(|(_, value)| serde_json::from_str(value).map_err(|e| corrupt("memory entry", e)))
        .collect()
}

fn corrupt(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// An item's number of positive interactions, if known (item-kNN's norm).
pub type Popularity<'a> = dyn Fn(&str) -> Option<f64> + 'a;

/// What one co-occurrence of `a` with `b` adds to `b`'s collaborative
/// score from seed `a`: 1 with raw counts, `1 / sqrt(n(a) n(b))` with
/// cosine (an item's popularity counted as at least 1).
pub fn pair_weight(cosine: Option<&Popularity<'_>>, a: &str, b: &str) -> f64 {
    let n = |id: &str| cosine.map_or(1.0, |count| count(id).filter(|c| *c >= 1.0).unwrap_or(1.0));
    1.0 / (n(a) * n(b)).sqrt()
}

impl<S: KvStore> MemoryStore<S> {
    pub fn new(store: S, keys: Keyspace) -> Self {
        Self { store, keys }
    }

    pub fn keys(&self) -> &Keyspace {
        &self.keys
    }

    pub fn kv(&self) -> &S {
        &self.store
    }

    /// Applies a batch (see [`KvStore::apply`]).
    pub async fn apply(&self, batch: &Batch) -> Result<bool, StoreError> {
        self.store.apply(batch).await
    }

    /// States and versions of `users` (new users get an empty state), one round trip.
    pub async fn load_users(
        &self,
        users: &[String],
    ) -> Result<HashMap<String, LoadedUser>, StoreError> {
        let mut pairs = Vec::with_capacity(users.len() * 2);
        for user in users {
            pairs.push((self.keys.user(user), "state".to_owned()));
            pairs.push((self.keys.user(user), "version".to_owned()));
        }
        let values = self.store.get_fields(&pairs).await?;
        let mut out = HashMap::with_capacity(users.len());
        for (user, pair) in users.iter().zip(values.chunks(2)) {
            let state = match &pair[0] {
                Some(json) => serde_json::from_str(json).map_err(|e| corrupt("user state", e))?,
                None => UserState::new(user),
            };
            out.insert(
                user.clone(),
                LoadedUser {
                    state,
                    version: pair[1].clone(),
                },
            );
        }
        Ok(out)
    }

    /// Every item `state`'s user had an event about: the `seen:{user}` hash,
    /// and what a state written before it existed still holds.
    pub async fn seen(&self, state: &UserState) -> Result<HashSet<String>, StoreError> {
        let mut seen: HashSet<String> = self
            .store
            .get_all(&self.keys.seen(&state.user))
            .await?
            .into_keys()
            .collect();
        seen.extend(state.legacy_seen.iter().cloned());
        Ok(seen)
    }

    /// Catalog entries of `items` that exist, one round trip.
    pub async fn load_items(&self, items: &[String]) -> Result<HashMap<String, Item>, StoreError> {
        let pairs: Vec<(String, String)> = items
            .iter()
            .map(|i| (self.keys.items(), i.clone()))
            .collect();
        let values = self.store.get_fields(&pairs).await?;
        let mut out = HashMap::new();
        for (id, value) in items.iter().zip(values) {
            if let Some(json) = value {
                out.insert(
                    id.clone(),
                    serde_json::from_str(&json).map_err(|e| corrupt("item", e))?,
                );
            }
        }
        Ok(out)
    }

    /// What waits for each of `items` (one round trip): the users whose
    /// events named it before it was catalogued, and the set's mark.
    pub async fn waiting_users(
        &self,
        items: &[String],
    ) -> Result<BTreeMap<String, Waiting>, StoreError> {
        let keys: Vec<String> = items.iter().map(|i| self.keys.waiting(i)).collect();
        let mut out = BTreeMap::new();
        for (item, mut fields) in items.iter().zip(self.store.get_all_many(&keys).await?) {
            let mark = fields.remove(WAITING_MARK);
            out.insert(
                item.clone(),
                Waiting {
                    users: fields.into_keys().collect(),
                    mark,
                },
            );
        }
        Ok(out)
    }

    /// Everything stored about `user`: state and entries (profile, preferences by
    /// category, then behavior records newest first).
    pub async fn user(&self, user: &str) -> Result<UserMemory, StoreError> {
        let fields = self.store.get_all(&self.keys.user(user)).await?;
        let mut memory = UserMemory {
            entries: entries_in(&fields)?,
            ..UserMemory::default()
        };
        if let Some(state) = fields.get("state") {
            memory.state = Some(serde_json::from_str(state).map_err(|e| corrupt("user state", e))?);
        }
        // Profile, then preferences by category, then behavior newest first.
        memory.entries.sort_by(|a, b| {
            b.level.cmp(&a.level).then_with(|| {
                if a.level == crate::Level::Behavior {
                    b.ts.cmp(&a.ts).then_with(|| a.id.cmp(&b.id))
                } else {
                    a.category.cmp(&b.category).then_with(|| a.id.cmp(&b.id))
                }
            })
        });
        Ok(memory)
    }

    /// The level-3 profile entry of `user`, if any.
    pub async fn profile(&self, user: &str) -> Result<Option<MemoryEntry>, StoreError> {
        let id = crate::entry_id(crate::Level::Profile, user, "");
        let value = self
            .store
            .get_fields(&[(self.keys.user(user), Keyspace::entry_field(&id))])
            .await?
            .pop()
            .flatten();
        value
            .map(|json| serde_json::from_str(&json).map_err(|e| corrupt("memory entry", e)))
            .transpose()
    }

    /// The items behind `user`'s entries `ids` (DESIGN §4: what a cited
    /// entry is evidence of), in citation order without repeats. An id the
    /// user has no entry under (pruned since, or global) adds nothing.
    pub async fn cited_items(&self, user: &str, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let key = self.keys.user(user);
        let fields: Vec<(String, String)> = ids
            .iter()
            .map(|id| (key.clone(), Keyspace::entry_field(id)))
            .collect();
        let mut items: Vec<String> = Vec::new();
        for json in self.store.get_fields(&fields).await?.into_iter().flatten() {
            let entry: MemoryEntry =
                serde_json::from_str(&json).map_err(|e| corrupt("memory entry", e))?;
            for item in entry.items {
                if !items.contains(&item) {
                    items.push(item);
                }
            }
        }
        Ok(items)
    }

    /// Global memory of `category`, rendered from the cross-user counts.
    pub async fn global(&self, category: &str) -> Result<MemoryEntry, StoreError> {
        let mut stats = GlobalStats::default();
        for (field, value) in self.store.get_all(&self.keys.global(category)).await? {
            let count: i64 = value
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("global count {field}")))?;
            if let Some(aspect) = field.strip_prefix("c:") {
                stats.chosen.insert(aspect.to_owned(), count);
            } else if let Some(aspect) = field.strip_prefix("u:") {
                stats.unchosen.insert(aspect.to_owned(), count);
            }
        }
        Ok(render::global(category, &stats))
    }

    /// Items chosen together with `items` by the same users, best first
    /// (ties by id), excluding `items` themselves: summed co-occurrence
    /// counts, or with `cosine` item-kNN's cosine — each count `c(h, x)`
    /// divided by `sqrt(n(h) · n(x))`, where `n` is an item's number of
    /// positive interactions (`cosine`'s lookup; an item it does not know
    /// counts 1).
    pub async fn co_occurring(
        &self,
        items: &[String],
        k: usize,
        cosine: Option<&Popularity<'_>>,
    ) -> Result<Vec<(String, f64)>, StoreError> {
        let mut scores: HashMap<String, f64> = HashMap::new();
        let keys: Vec<String> = items.iter().map(|i| self.keys.co_occurrence(i)).collect();
        // One round trip for all of them (this is on the recommend stage's hot path).
        let counts = self.store.get_all_many(&keys).await?;
        for (item, fields) in items.iter().zip(counts) {
            for (other, together) in fields {
                let together: i64 = together
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("co-occurrence count of {item}")))?;
                let score = together as f64 * pair_weight(cosine, item, &other);
                *scores.entry(other).or_default() += score;
            }
        }
        let mut ranked: Vec<(String, f64)> = scores
            .into_iter()
            .filter(|(i, _)| !items.contains(i))
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ranked.truncate(k);
        Ok(ranked)
    }

    /// Every key under the prefix with all its fields: for comparing two stores
    /// (a replay against a clean run) and for rebuilding indexes.
    pub async fn dump(&self) -> Result<BTreeMap<String, BTreeMap<String, String>>, StoreError> {
        let mut out = BTreeMap::new();
        for key in self.store.keys(&self.keys.prefix).await? {
            let fields = self.store.get_all(&key).await?;
            out.insert(key, fields);
        }
        Ok(out)
    }
}
