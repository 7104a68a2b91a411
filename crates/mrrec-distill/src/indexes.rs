//! The tantivy side of distill: memory entries and items indexed after each
//! stored batch, committed at most once a second (and on revoke), with the
//! store offsets they reflect as the commit payload. At start an index whose
//! payload differs from the store's offsets is rebuilt from the store, which
//! is the source of truth.

use mrrec_index::{IndexError, ItemIndex, MemoryIndex};
use mrrec_memory::{MemoryEntry, MemoryStore};
use mrrec_messages::Item;
use mrrec_store::{Batch, KvStore, Op, StoreError};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often the indexes are committed while records flow.
const COMMIT_EVERY: Duration = Duration::from_secs(1);

/// The memory and item indexes kept by one distill instance.
pub struct Indexes {
    pub memory: MemoryIndex,
    pub items: ItemIndex,
    offsets: BTreeMap<String, i64>,
    offsets_key: String,
    last_commit: Instant,
}

/// Opening or rebuilding failed.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Store(#[from] StoreError),
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

impl Indexes {
    /// Opens the indexes under `dir` (`memory/`, `items/`; in RAM when `None`)
    /// and rebuilds them from the store unless they reflect its offsets.
    pub async fn open<S: KvStore>(
        dir: Option<&Path>,
        memory: &MemoryStore<S>,
    ) -> Result<Self, OpenError> {
        let mut indexes = Self {
            memory: MemoryIndex::open(dir.map(|d| d.join("memory")).as_deref())?,
            items: ItemIndex::open(dir.map(|d| d.join("items")).as_deref())?,
            offsets: store_offsets(memory).await?,
            offsets_key: memory.keys().offsets(),
            last_commit: Instant::now(),
        };
        let current = serde_json::to_string(&indexes.offsets).expect("offsets serialise");
        if indexes.memory.payload()?.as_deref() != Some(current.as_str()) {
            let started = Instant::now();
            indexes.memory.clear()?;
            let mut entries = 0;
            for key in memory
                .kv()
                .keys(&format!("{}user:", memory.keys().prefix()))
                .await?
            {
                let fields = memory.kv().get_all(&key).await?;
                let batch: Vec<MemoryEntry> = fields
                    .iter()
                    .filter(|(f, _)| f.starts_with("e:"))
                    .map(|(_, v)| {
                        serde_json::from_str(v).map_err(|e| StoreError::Corrupt(e.to_string()))
                    })
                    .collect::<Result<_, _>>()?;
                entries += batch.len();
                indexes.memory.add(&batch)?;
            }
            let items: Vec<Item> = memory
                .kv()
                .get_all(&memory.keys().items())
                .await?
                .values()
                .map(|v| serde_json::from_str(v).map_err(|e| StoreError::Corrupt(e.to_string())))
                .collect::<Result<_, _>>()?;
            indexes.items.upsert(&items)?;
            indexes.commit()?;
            tracing::info!(
                entries,
                items = items.len(),
                seconds = started.elapsed().as_secs_f64(),
                "rebuilt the indexes from the store"
            );
        }
        Ok(indexes)
    }

    /// Indexes what a stored batch wrote — `added` entries are new (their
    /// events were above every stored offset, and an index behind the store is
    /// rebuilt at start), `replaced` ones supersede earlier versions; commits
    /// when the last commit is old.
    pub fn record(
        &mut self,
        write: &Batch,
        added: &[MemoryEntry],
        replaced: &[MemoryEntry],
        items: &[Item],
    ) -> Result<(), IndexError> {
        for op in &write.ops {
            if let Op::Set { key, field, value } = op {
                if *key == self.offsets_key {
                    if let Ok(offset) = value.parse() {
                        self.offsets.insert(field.clone(), offset);
                    }
                }
            }
        }
        self.memory.add(added)?;
        self.memory.upsert(replaced)?;
        if !items.is_empty() {
            self.items.upsert(items)?;
        }
        if self.last_commit.elapsed() >= COMMIT_EVERY {
            self.commit()?;
        }
        Ok(())
    }

    /// Commits both indexes with the offsets they now reflect.
    pub fn commit(&mut self) -> Result<(), IndexError> {
        self.items.commit()?;
        let payload = serde_json::to_string(&self.offsets).expect("offsets serialise");
        self.memory.commit(&payload)?;
        self.last_commit = Instant::now();
        Ok(())
    }
}
