//! The tantivy side of distill: memory entries and items indexed after each
//! stored batch, on a worker thread of its own (the stage goes on with the
//! next batch meanwhile), committed at most once a second and when the stage
//! stops, each with the store offsets it reflects as its commit payload.
//!
//! At start each index is brought up to date with the store, the source of
//! truth, on its own evidence, and by what changed rather than from scratch
//! (several distill instances write one store, so an instance's index is
//! behind the store whenever it restarts):
//! - the memory index records, per user, the stored `version` its entries
//!   reflect; users whose version moved (or who are new, or gone) are
//!   re-indexed from their stored hash, the others are not read;
//! - the item index stores a fingerprint of what it indexed per item; items
//!   of the catalog whose fingerprint differs are indexed again, items gone
//!   from it removed.
//!
//! Only an index with no commit yet, or one that has seen offsets the store
//! has not (a store restored from an older copy), is rebuilt whole.
//!
//! While running, the item index also follows the catalog other instances
//! write ([`Indexes::follow_catalog`]): every few seconds the store's offsets
//! of the `items` topic are read (one small read), and when a partition has
//! moved beyond what this instance indexed for two checks in a row (its own
//! batches reach the worker within a second), the catalog is read and the
//! item index caught up item by item. Memory entries need no such follower:
//! with several instances recommend reads them from the store
//! (`recommend.memory_index = "partitions"`).
use mrrec_index::{IndexError, ItemIndex, MemoryIndex};
use mrrec_memory::{entries_in, MemoryEntry, MemoryStore};
use mrrec_messages::Item;
use mrrec_store::{unescape, Batch, KvStore, Op, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the indexes are committed while records flow.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Stored batches waiting for the worker before the stage waits for it.
const QUEUED_BATCHES: usize = 2;
/// Users read from the store per round trip while catching up.
const LOAD_CHUNK: usize = 256;
/// How often [`Indexes::follow_catalog`] checks the store's `items` offsets
/// by default.
pub const FOLLOW_CATALOG_EVERY: Duration = Duration::from_secs(5);

/// The memory and item indexes kept by one distill instance, behind a worker thread.
pub struct Indexes {
    jobs: Option<SyncSender<Job>>,
    worker: Option<JoinHandle<()>>,
    /// Why the worker stopped, if it failed.
    failure: Arc<Mutex<Option<String>>>,
    offsets_key: String,
    /// The store's key of a user, less the (escaped) id.
    user_prefix: String,
    opened: Opened,
    /// Offsets whose items the item index reflects (shared with the worker).
    items_seen: Arc<Mutex<BTreeMap<String, i64>>>,
    follower: Option<tokio::task::JoinHandle<()>>,
}

/// What a stored batch changed, for the indexes.
#[derive(Debug, Default)]
pub struct Changes {
    /// Entries known to be new (their events were above every stored offset).
    pub added: Vec<MemoryEntry>,
    /// Entries that supersede earlier versions.
    pub replaced: Vec<MemoryEntry>,
    /// Users whose whole memory is now these entries (read back from the
    /// store): whatever the index held for them is replaced.
    pub rewritten: Vec<(String, Vec<MemoryEntry>)>,
    /// Items catalogued.
    pub items: Vec<Item>,
    /// Items removed by a tombstone.
    pub removed: Vec<String>,
    /// Level-1 entries pruned from the store.
    pub pruned: Vec<String>,
    /// Users' stored versions after the batch (those of the batch's write
    /// are read from it).
    pub versions: Vec<(String, Option<String>)>,
}

/// How an index was brought up to date with the store when it opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// It reflected the store already.
    Current,
    /// Only what changed was indexed again: `changed` users (or items)
    /// re-indexed, `removed` ones taken out.
    CaughtUp { changed: usize, removed: usize },
    /// Rebuilt whole, from `documents` users (or items).
    Rebuilt { documents: usize },
}

/// What opening did to each index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub memory: Refresh,
    pub items: Refresh,
}

/// One stored batch for the worker, or the catalog as the store has it.
enum Job {
    Stored {
        offsets: Vec<(String, i64)>,
        changes: Changes,
    },
    Catalog {
        items: Vec<Item>,
        /// The `items` offsets the catalog was read at (or after).
        offsets: Vec<(String, i64)>,
    },
}

/// Raises each of `offsets` in `seen`.
fn note_seen(seen: &Mutex<BTreeMap<String, i64>>, offsets: &[(String, i64)]) {
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    for (partition, offset) in offsets {
        let at = seen.entry(partition.clone()).or_insert(*offset);
        *at = (*at).max(*offset);
    }
}

/// The indexes themselves, owned by the worker.
struct Writer {
    memory: MemoryIndex,
    items: ItemIndex,
    offsets: BTreeMap<String, i64>,
    items_seen: Arc<Mutex<BTreeMap<String, i64>>>,
    last_commit: Instant,
    dirty: bool,
}

impl Writer {
    fn apply(&mut self, job: Job) -> Result<(), IndexError> {
        let (offsets, changes) = match job {
            Job::Stored { offsets, changes } => (offsets, changes),
            Job::Catalog { items, offsets } => return self.follow(&items, &offsets),
        };
        note_seen(&self.items_seen, &offsets);
        self.offsets.extend(offsets);
        self.memory.add(&changes.added)?;
        self.memory.upsert(&changes.replaced)?;
        for (user, entries) in &changes.rewritten {
            self.memory.replace_user(user, entries)?;
        }
        if !changes.items.is_empty() {
            self.items.upsert(&changes.items)?;
        }
        if !changes.removed.is_empty() {
            self.items.remove(&changes.removed)?;
        }
        if !changes.pruned.is_empty() {
            self.memory.remove(&changes.pruned)?;
        }
        self.memory.set_versions(
            changes
                .versions
                .iter()
                .map(|(user, version)| (user.as_str(), version.as_deref())),
        )?;
        self.dirty = true;
        Ok(())
    }

    /// Brings the item index up to date with `catalog`, read from the store
    /// at `offsets` of the `items` topic.
    fn follow(&mut self, catalog: &[Item], offsets: &[(String, i64)]) -> Result<(), IndexError> {
        if self.dirty {
            // What is queued goes in first: the comparison reads commits.
            self.commit()?;
        }
        let refresh = catch_up_items(&mut self.items, catalog)?;
        if refresh != Refresh::Current {
            self.commit()?;
            tracing::info!(items = ?refresh, "the item index followed the catalog other instances wrote");
        }
        note_seen(&self.items_seen, offsets);
        Ok(())
    }

    /// Commits both indexes, each with the offsets it now reflects.
    fn commit(&mut self) -> Result<(), IndexError> {
        let payload = serde_json::to_string(&self.offsets).expect("offsets serialise");
        self.items.commit_with(&payload)?;
        self.memory.commit(&payload)?;
        self.last_commit = Instant::now();
        self.dirty = false;
        Ok(())
    }

    fn run(mut self, jobs: std::sync::mpsc::Receiver<Job>) -> Result<(), IndexError> {
        loop {
            match jobs.recv_timeout(COMMIT_EVERY) {
                Ok(job) => {
                    self.apply(job)?;
                    if self.last_commit.elapsed() >= COMMIT_EVERY {
                        self.commit()?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if self.dirty {
                        self.commit()?;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if self.dirty {
                        self.commit()?;
                    }
                    return Ok(());
                }
            }
        }
    }
}

/// Opening or rebuilding failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("starting the index worker: {0}")]
    Worker(std::io::Error),
}

async fn store_offsets<S: KvStore>(
    memory: &MemoryStore<S>,
) -> Result<BTreeMap<String, i64>, StoreError> {
    memory
        .kv()
        .get_all(&memory.keys().offsets())
        .await?
        .into_iter()
        .map(|(k, v)| {
            v.parse()
                .map(|o| (k.clone(), o))
                .map_err(|_| StoreError::Corrupt(format!("offset {k}")))
        })
        .collect()
}

/// How an index's commit payload compares with the store's offsets.
#[derive(Debug, PartialEq, Eq)]
enum Standing {
    /// The same offsets.
    Current,
    /// Behind on some partitions, ahead on none.
    Behind,
    /// No commit yet, an unreadable payload, or ahead of the store somewhere.
    Unknown,
}

fn standing(payload: Option<&str>, store: &BTreeMap<String, i64>) -> Standing {
    let Some(indexed) = payload.and_then(|p| serde_json::from_str::<BTreeMap<String, i64>>(p).ok())
    else {
        return Standing::Unknown;
    };
    if indexed == *store {
        Standing::Current
    } else if indexed
        .iter()
        .any(|(partition, offset)| store.get(partition).is_none_or(|stored| offset > stored))
    {
        Standing::Unknown
    } else {
        Standing::Behind
    }
}

/// Stored user hashes, `LOAD_CHUNK` per round trip, with their user ids.
async fn for_each_user<S: KvStore>(
    memory: &MemoryStore<S>,
    keys: &[String],
    mut each: impl FnMut(&str, &BTreeMap<String, String>) -> Result<(), OpenError>,
) -> Result<(), OpenError> {
    let prefix = memory.keys().user("");
    for chunk in keys.chunks(LOAD_CHUNK) {
        for (key, fields) in chunk.iter().zip(memory.kv().get_all_many(chunk).await?) {
            match key.strip_prefix(&prefix).and_then(unescape) {
                Some(user) => each(&user, &fields)?,
                None => {
                    tracing::warn!(key = %key, "a user key that does not unescape; not indexed")
                }
            }
        }
    }
    Ok(())
}

/// Indexes every user's stored memory into an emptied index.
async fn rebuild_memory<S: KvStore>(
    index: &mut MemoryIndex,
    memory: &MemoryStore<S>,
) -> Result<Refresh, OpenError> {
    index.clear()?;
    let keys = memory.kv().keys(&memory.keys().user("")).await?;
    for_each_user(memory, &keys, |user, fields| {
        index.add(&entries_in(fields)?)?;
        index.set_versions([(user, fields.get("version").map(String::as_str))])?;
        Ok(())
    })
    .await?;
    Ok(Refresh::Rebuilt {
        documents: keys.len(),
    })
}

/// Re-indexes the users whose stored version differs from the one the
/// index recorded (one read of every version, one read of each changed
/// user's hash), and removes users the store no longer has.
async fn catch_up_memory<S: KvStore>(
    index: &mut MemoryIndex,
    memory: &MemoryStore<S>,
) -> Result<Refresh, OpenError> {
    let mut indexed = index.versions()?;
    let prefix = memory.keys().user("");
    let mut stale = Vec::new();
    for chunk in memory.kv().keys(&prefix).await?.chunks(LOAD_CHUNK) {
        let pairs: Vec<(String, String)> = chunk
            .iter()
            .map(|key| (key.clone(), "version".to_owned()))
            .collect();
        for (key, stored) in chunk.iter().zip(memory.kv().get_fields(&pairs).await?) {
            let was = key
                .strip_prefix(&prefix)
                .and_then(unescape)
                .and_then(|user| indexed.remove(&user));
            // A user without a stored version is always read again.
            if stored.is_none() || was != stored {
                stale.push(key.clone());
            }
        }
    }
    for_each_user(memory, &stale, |user, fields| {
        index.replace_user(user, &entries_in(fields)?)?;
        index.set_versions([(user, fields.get("version").map(String::as_str))])?;
        Ok(())
    })
    .await?;
    for user in indexed.keys() {
        index.remove_user(user)?;
    }
    Ok(Refresh::CaughtUp {
        changed: stale.len(),
        removed: indexed.len(),
    })
}

/// The store's catalog.
async fn load_catalog<S: KvStore>(memory: &MemoryStore<S>) -> Result<Vec<Item>, StoreError> {
    memory
        .kv()
        .get_all(&memory.keys().items())
        .await?
        .values()
        .map(|v| serde_json::from_str(v).map_err(|e| StoreError::Corrupt(e.to_string())))
        .collect()
}

/// Indexes the catalog's items whose indexed fingerprint differs (all of
/// them into an empty index) and removes items it no longer has.
fn catch_up_items(index: &mut ItemIndex, stored: &[Item]) -> Result<Refresh, IndexError> {
    let mut indexed: HashMap<String, String> = index.fingerprints()?;
    let was_empty = indexed.is_empty();
    let changed: Vec<&Item> = stored
        .iter()
        .filter(|item| {
            indexed.remove(&item.item_id).as_deref() != Some(&ItemIndex::fingerprint_of(item))
        })
        .collect();
    let removed: Vec<String> = indexed.into_keys().collect();
    if changed.is_empty() && removed.is_empty() {
        return Ok(Refresh::Current);
    }
    index.upsert(changed.iter().copied())?;
    index.remove(&removed)?;
    Ok(if was_empty {
        Refresh::Rebuilt {
            documents: changed.len(),
        }
    } else {
        Refresh::CaughtUp {
            changed: changed.len(),
            removed: removed.len(),
        }
    })
}

/// The follower of [`Indexes::follow_catalog`].
async fn follow_catalog<S: KvStore>(
    memory: MemoryStore<S>,
    items_topic: String,
    every: Duration,
    jobs: SyncSender<Job>,
    seen: Arc<Mutex<BTreeMap<String, i64>>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Partitions found ahead at the previous check, and the store's offset
    // of each then.
    let mut ahead_before: BTreeMap<String, i64> = BTreeMap::new();
    loop {
        tick.tick().await;
        let stored = match store_offsets(&memory).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "reading the store's offsets to follow the catalog");
                continue;
            }
        };
        let (ahead, foreign) = {
            let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            let behind =
                |partition: &String, offset: i64| seen.get(partition).is_none_or(|s| *s < offset);
            let ahead: BTreeMap<String, i64> = stored
                .into_iter()
                .filter(|(partition, _)| {
                    partition
                        .rsplit_once(':')
                        .is_some_and(|(topic, _)| topic == items_topic)
                })
                .filter(|(partition, offset)| behind(partition, *offset))
                .collect();
            // What the store held a whole check ago and this instance has
            // still not indexed: another instance wrote those items (its
            // own reach the worker within a second, however fast they come).
            let foreign: Vec<(String, i64)> = ahead
                .iter()
                .filter(|(partition, _)| {
                    ahead_before
                        .get(*partition)
                        .is_some_and(|before| behind(partition, *before))
                })
                .map(|(partition, offset)| (partition.clone(), *offset))
                .collect();
            (ahead, foreign)
        };
        ahead_before = ahead;
        if foreign.is_empty() {
            continue;
        }
        let items = match load_catalog(&memory).await {
            Ok(items) => items,
            Err(e) => {
                tracing::warn!(error = %e, "reading the catalog to follow it");
                continue;
            }
        };
        match jobs.try_send(Job::Catalog {
            items,
            offsets: foreign,
        }) {
            Ok(()) => ahead_before.clear(),
            // Busy: the next check tries again.
            Err(std::sync::mpsc::TrySendError::Full(_)) => {}
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
        }
    }
}

impl Indexes {
    /// Opens the indexes under `dir` (`memory/`, `items/`; in RAM when `None`),
    /// brings each up to date with the store (see the module comment), and
    /// starts the worker.
    pub async fn open<S: KvStore>(
        dir: Option<&Path>,
        memory: &MemoryStore<S>,
    ) -> Result<Self, OpenError> {
        let mut writer = Writer {
            memory: MemoryIndex::open(dir.map(|d| d.join("memory")).as_deref())?,
            items: ItemIndex::open(dir.map(|d| d.join("items")).as_deref())?,
            offsets: store_offsets(memory).await?,
            items_seen: Arc::default(),
            last_commit: Instant::now(),
            dirty: false,
        };
        let started = Instant::now();
        let opened = Opened {
            memory: match standing(writer.memory.payload()?.as_deref(), &writer.offsets) {
                Standing::Current => Refresh::Current,
                Standing::Behind => catch_up_memory(&mut writer.memory, memory).await?,
                Standing::Unknown => rebuild_memory(&mut writer.memory, memory).await?,
            },
            items: catch_up_items(&mut writer.items, &load_catalog(memory).await?)?,
        };
        if opened.memory != Refresh::Current || opened.items != Refresh::Current {
            writer.commit()?;
            tracing::info!(
                memory = ?opened.memory,
                items = ?opened.items,
                seconds = started.elapsed().as_secs_f64(),
                "brought the indexes up to date with the store"
            );
        }
        // The catalog is as read now up to the store's offsets at open.
        let offsets: Vec<(String, i64)> = writer.offsets.clone().into_iter().collect();
        note_seen(&writer.items_seen, &offsets);
        let items_seen = writer.items_seen.clone();
        let (jobs, receiver) = sync_channel(QUEUED_BATCHES);
        let failure = Arc::new(Mutex::new(None));
        let reported = failure.clone();
        let worker = std::thread::Builder::new()
            .name("distill-index".into())
            .spawn(move || {
                if let Err(e) = writer.run(receiver) {
                    tracing::error!(error = %e, "the index worker stopped");
                    *reported.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
            })
            .map_err(OpenError::Worker)?;
        Ok(Self {
            jobs: Some(jobs),
            worker: Some(worker),
            failure,
            offsets_key: memory.keys().offsets(),
            user_prefix: memory.keys().user(""),
            opened,
            items_seen,
            follower: None,
        })
    }

    /// Follows the catalog other instances write (see the module comment),
    /// checking the store's offsets of `items_topic` every `every`. Needs a
    /// tokio runtime (without one it logs and does nothing); a second call
    /// replaces the first follower.
    pub fn follow_catalog<S: KvStore + 'static>(
        &mut self,
        memory: MemoryStore<S>,
        items_topic: &str,
        every: Duration,
    ) {
        let (Some(jobs), Ok(runtime)) = (self.jobs.clone(), tokio::runtime::Handle::try_current())
        else {
            tracing::warn!("no runtime: the item index will not follow other instances' catalog");
            return;
        };
        if let Some(before) = self.follower.take() {
            before.abort();
        }
        self.follower = Some(runtime.spawn(follow_catalog(
            memory,
            items_topic.to_owned(),
            every,
            jobs,
            self.items_seen.clone(),
        )));
    }

    /// Whether [`Indexes::follow_catalog`] was called.
    pub fn follows_catalog(&self) -> bool {
        self.follower.is_some()
    }

    /// What opening did to each index.
    pub fn opened(&self) -> Opened {
        self.opened
    }

    /// Hands what a stored batch wrote to the worker: `write` gives the
    /// offsets and the users' new versions, `changes` the rest. Waits only
    /// when the worker is [`QUEUED_BATCHES`] behind; fails once the worker
    /// has failed.
    pub fn record(&mut self, write: &Batch, mut changes: Changes) -> Result<(), String> {
        let mut offsets = Vec::new();
        for op in &write.ops {
            let Op::Set { key, field, value } = op else {
                continue;
            };
            if *key == self.offsets_key {
                if let Ok(offset) = value.parse() {
                    offsets.push((field.clone(), offset));
                }
            } else if field == "version" {
                if let Some(user) = key.strip_prefix(&self.user_prefix).and_then(unescape) {
                    changes.versions.push((user, Some(value.clone())));
                }
            }
        }
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(Job::Stored { offsets, changes }).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self
                .failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "the index worker stopped".into()))
        }
    }
}

impl Drop for Indexes {
    /// Lets the worker index and commit what it has queued, then joins it.
    fn drop(&mut self) {
        if let Some(follower) = self.follower.take() {
            follower.abort();
        }
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{standing, Standing};
    use std::collections::BTreeMap;

    #[test]
    fn an_index_behind_is_caught_up_and_one_ahead_or_unreadable_rebuilt() {
        let store: BTreeMap<String, i64> = [("t:0".into(), 5), ("t:1".into(), 7)].into();
        let at = |pairs: &[(&str, i64)]| {
            let map: BTreeMap<&str, i64> = pairs.iter().copied().collect();
            serde_json::to_string(&map).unwrap()
        };
        assert_eq!(
            standing(Some(&at(&[("t:0", 5), ("t:1", 7)])), &store),
            Standing::Current
        );
        assert_eq!(
            standing(Some(&at(&[("t:0", 5), ("t:1", 3)])), &store),
            Standing::Behind
        );
        assert_eq!(standing(Some(&at(&[("t:0", 5)])), &store), Standing::Behind);
        assert_eq!(standing(Some(&at(&[])), &store), Standing::Behind);
        assert_eq!(
            standing(Some(&at(&[("t:0", 6), ("t:1", 3)])), &store),
            Standing::Unknown
        );
        assert_eq!(
            standing(Some(&at(&[("t:2", 0)])), &store),
            Standing::Unknown
        );
        assert_eq!(standing(Some("not json"), &store), Standing::Unknown);
        assert_eq!(standing(None, &store), Standing::Unknown);
    }
}
