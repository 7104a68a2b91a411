//! Partition-aligned memory shards (`recommend.memory_index = "partitions"`).
//!
//! An instance keeps its own in-memory tantivy index of the users whose
//! requests it owns: requests are keyed by user id and partitioned as Kafka's
//! clients do (murmur2), so the partitions assigned to the instance name its
//! users. On assignment the shard is rebuilt from the store (the source of
//! truth, whoever distilled it); before every batch the users it is about to
//! answer are checked against their stored `version` and re-indexed when
//! distill has changed them since. An answer therefore never searches memory
//! older than the store's, whichever instance answers, and no instance needs
//! distill's index directory for memory. (The item index is not sharded:
//! every instance opens the whole of it.)

use mrrec_index::{IndexError, MemoryIndex, SearchHit};
use mrrec_memory::{Level, MemoryEntry, MemoryStore};
use mrrec_store::{unescape, KvStore, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError, RwLock};

/// Users read from the store per round trip while rebuilding.
const LOAD_CHUNK: usize = 256;

/// What a rebuild found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardReport {
    pub users: usize,
    pub entries: usize,
}

/// Why the shard could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("memory shard index: {0}")]
    Index(#[from] IndexError),
}

impl ShardError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, ShardError::Store(e) if e.is_retryable())
    }
}

/// One instance's memory shard.
pub struct MemoryShard {
    index: RwLock<MemoryIndex>,
    /// The stored `version` of each indexed user, as indexed.
    versions: Mutex<HashMap<String, Option<String>>>,
    owned: Mutex<BTreeSet<i32>>,
    /// Partitions of the requests topic.
    partitions: i32,
}

/// The memory entries of one user's stored hash. An entry that does not
/// parse is left out (and logged): one bad field must not stop the stage.
fn entries_of(fields: &std::collections::BTreeMap<String, String>) -> Vec<MemoryEntry> {
    fields
        .iter()
        .filter(|(f, _)| f.starts_with("e:"))
        .filter_map(|(field, value)| match serde_json::from_str(value) {
            Ok(entry) => Some(entry),
            Err(e) => {
                metrics::counter!(CORRUPT_ENTRIES, "stage" => crate::STAGE).increment(1);
                tracing::warn!(field = %field, error = %e, "a stored memory entry does not parse; left out of the shard");
                None
            }
        })
        .collect()
}

/// Stored memory entries the shard left out because they do not parse.
pub const CORRUPT_ENTRIES: &str = "mrrec_recommend_shard_corrupt_entries_total";

impl MemoryShard {
    /// An empty shard over a requests topic of `partitions` partitions.
    pub fn new(partitions: i32) -> Result<Self, IndexError> {
        Ok(Self {
            index: RwLock::new(MemoryIndex::open(None)?),
            versions: Mutex::new(HashMap::new()),
            owned: Mutex::new(BTreeSet::new()),
            partitions: partitions.max(1),
        })
    }

    fn partition_of(&self, user: &str) -> i32 {
        mrrec_stream::partition_for_key(user.as_bytes(), self.partitions)
    }

    /// Partitions of the requests topic.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The requests partitions this shard covers.
    pub fn owned(&self) -> BTreeSet<i32> {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Users indexed now.
    pub fn users(&self) -> usize {
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Rebuilds the shard for `partitions` from the store: every user whose
    /// requests land there, with all of their memory.
    pub async fn assign<S: KvStore>(
        &self,
        memory: &MemoryStore<S>,
        partitions: &[i32],
    ) -> Result<ShardReport, ShardError> {
        let prefix = memory.keys().user("");
        let keys: Vec<String> = memory
            .kv()
            .keys(&prefix)
            .await?
            .into_iter()
            .filter(|key| {
                key.strip_prefix(&prefix)
                    .and_then(unescape)
                    .is_some_and(|user| partitions.contains(&self.partition_of(&user)))
            })
            .collect();
        let mut loaded: Vec<(String, Option<String>, Vec<MemoryEntry>)> = Vec::new();
        for chunk in keys.chunks(LOAD_CHUNK) {
            for (key, fields) in chunk.iter().zip(memory.kv().get_all_many(chunk).await?) {
                let user = key
                    .strip_prefix(&prefix)
                    .and_then(unescape)
                    .unwrap_or_default();
                let version = fields.get("version").cloned();
                loaded.push((user, version, entries_of(&fields)));
            }
        }
        let report = ShardReport {
            users: loaded.len(),
            entries: loaded.iter().map(|(_, _, e)| e.len()).sum(),
        };
        {
            let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
            index.clear()?;
            for (_, _, entries) in &loaded {
                index.add(entries)?;
            }
            index.commit("shard")?;
        }
        *self.versions.lock().unwrap_or_else(PoisonError::into_inner) = loaded
            .into_iter()
            .map(|(user, version, _)| (user, version))
            .collect();
        *self.owned.lock().unwrap_or_else(PoisonError::into_inner) =
            partitions.iter().copied().collect();
        Ok(report)
    }

    /// Forgets everything (the partitions went to another instance).
    pub fn revoke(&self) -> Result<(), ShardError> {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        index.clear()?;
        index.commit("shard")?;
        self.versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        Ok(())
    }

    /// Brings `users` up to date with the store (one read of their versions,
    /// one read of the memory of those that changed); returns how many were
    /// re-indexed.
    pub async fn refresh<S: KvStore>(
        &self,
        memory: &MemoryStore<S>,
        users: &[String],
    ) -> Result<usize, ShardError> {
        let mut users: Vec<&String> = users.iter().collect();
        users.sort();
        users.dedup();
        let pairs: Vec<(String, String)> = users
            .iter()
            .map(|u| (memory.keys().user(u), "version".to_owned()))
            .collect();
        let stored = memory.kv().get_fields(&pairs).await?;
        let stale: Vec<&String> = {
            let versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
            users
                .iter()
                .zip(stored)
                .filter(|(user, version)| versions.get(**user) != Some(version))
                .map(|(user, _)| *user)
                .collect()
        };
        if stale.is_empty() {
            return Ok(0);
        }
        let keys: Vec<String> = stale.iter().map(|u| memory.keys().user(u)).collect();
        let memories = memory.kv().get_all_many(&keys).await?;
        {
            let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
            for (user, fields) in stale.iter().zip(&memories) {
                index.replace_user(user, &entries_of(fields))?;
            }
            index.commit("shard")?;
        }
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        for (user, fields) in stale.iter().zip(&memories) {
            versions.insert((*user).clone(), fields.get("version").cloned());
        }
        Ok(stale.len())
    }

    /// BM25 over `user`'s behavior records and preference patterns.
    pub fn search(&self, user: &str, query: &str, k: usize) -> Result<Vec<SearchHit>, IndexError> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .search(user, query, &[Level::Behavior, Level::Preference], None, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mrrec_memory::Keyspace;
    use mrrec_store::{Batch, EmbeddedStore};

    fn behavior(user: &str, n: usize, text: &str) -> MemoryEntry {
        MemoryEntry {
            id: format!("b{n}-{}", mrrec_store::escape(user)),
            user: user.into(),
            level: Level::Behavior,
            category: None,
            text: text.into(),
            ts: n as i64,
            items: Vec::new(),
        }
    }

    async fn store_memory(
        memory: &MemoryStore<EmbeddedStore>,
        user: &str,
        entries: &[MemoryEntry],
        version: &str,
    ) {
        let mut batch = Batch::default();
        for entry in entries {
            batch.set(
                memory.keys().user(user),
                mrrec_memory::Keyspace::entry_field(&entry.id),
                serde_json::to_string(entry).unwrap(),
            );
        }
        batch.set(memory.keys().user(user), "version", version);
        assert!(memory.apply(&batch).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_cover_their_partitions_and_follow_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let memory = MemoryStore::new(
            EmbeddedStore::open(dir.path()).unwrap(),
            Keyspace::default(),
        );
        let users: Vec<String> = (0..40).map(|i| format!("user:{i}")).collect();
        for (i, user) in users.iter().enumerate() {
            store_memory(
                &memory,
                user,
                &[behavior(user, i, "rated \"Heat\" 5/5 [Crime]")],
                "v1",
            )
            .await;
        }

        // Two instances split six partitions: each indexes exactly its users.
        let (a, b) = (MemoryShard::new(6).unwrap(), MemoryShard::new(6).unwrap());
        let ra = a.assign(&memory, &[0, 1, 2]).await.unwrap();
        let rb = b.assign(&memory, &[3, 4, 5]).await.unwrap();
        assert_eq!(ra.users + rb.users, users.len());
        assert!(ra.users > 0 && rb.users > 0, "{ra:?} {rb:?}");
        for user in &users {
            let owner = if [0, 1, 2].contains(&a.partition_of(user)) {
                &a
            } else {
                &b
            };
            let other = if std::ptr::eq(owner, &a) { &b } else { &a };
            let hits = owner.search(user, "heat", 10).unwrap();
            assert_eq!(hits.len(), 1, "{user} in its owner's shard");
            assert_eq!(hits[0].entry.user, *user);
            assert!(other.search(user, "heat", 10).unwrap().is_empty());
        }

        // Distill writes new memory for a user: the owner's refresh before a
        // batch picks it up; an unchanged user is not re-read.
        let user = &users[7];
        let owner = if [0, 1, 2].contains(&a.partition_of(user)) {
            &a
        } else {
            &b
        };
        store_memory(
            &memory,
            user,
            &[behavior(user, 100, "rated \"Alien\" 5/5 [Horror]")],
            "v2",
        )
        .await;
        assert!(owner.search(user, "alien", 10).unwrap().is_empty());
        assert_eq!(
            owner
                .refresh(&memory, &[user.clone(), users[8].clone()])
                .await
                .unwrap(),
            1
        );
        let hits = owner.search(user, "alien heat", 10).unwrap();
        assert_eq!(hits.len(), 2, "old and new entries: {hits:?}");
        assert_eq!(
            owner
                .refresh(&memory, std::slice::from_ref(user))
                .await
                .unwrap(),
            0
        );

        // A stored entry that does not parse is left out, not fatal.
        let mut bad = Batch::default();
        bad.set(memory.keys().user(user), "e:broken", "{not json");
        bad.set(memory.keys().user(user), "version", "v3");
        assert!(memory.apply(&bad).await.unwrap());
        assert_eq!(
            owner
                .refresh(&memory, std::slice::from_ref(user))
                .await
                .unwrap(),
            1
        );
        assert_eq!(owner.search(user, "alien heat", 10).unwrap().len(), 2);

        // A rebalance: `a` takes everything; `b` lets go.
        b.revoke().unwrap();
        assert_eq!(b.users(), 0);
        let all = a.assign(&memory, &[0, 1, 2, 3, 4, 5]).await.unwrap();
        assert_eq!(all.users, users.len());
        assert_eq!(a.search(user, "alien", 10).unwrap().len(), 1);
        assert_eq!(a.owned().len(), 6);
    }
}
