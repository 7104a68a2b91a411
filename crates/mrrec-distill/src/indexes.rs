//! The tantivy side of distill: memory entries and items indexed after each
//! stored batch, on a worker thread of its own (the stage goes on with the
//! next batch meanwhile), committed at most once a second and when the stage
//! stops, each with the store offsets it reflects as its commit payload. At
//! start an index whose payload differs from the store's offsets is rebuilt
//! from the store, which is the source of truth: the memory index and the
//! item index each on its own evidence.

use mrrec_index::{IndexError, ItemIndex, MemoryIndex};
use mrrec_memory::{MemoryEntry, MemoryStore};
use mrrec_messages::Item;
use mrrec_store::{Batch, KvStore, Op, StoreError};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the indexes are committed while records flow.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Stored batches waiting for the worker before the stage waits for it.
const QUEUED_BATCHES: usize = 2;

/// The memory and item indexes kept by one distill instance, behind a worker thread.
pub struct Indexes {
    jobs: Option<SyncSender<Job>>,
    worker: Option<JoinHandle<()>>,
    /// Why the worker stopped, if it failed.
    failure: Arc<Mutex<Option<String>>>,
    offsets_key: String,
}

/// One stored batch for the worker.
struct Job {
    offsets: Vec<(String, i64)>,
    added: Vec<MemoryEntry>,
    replaced: Vec<MemoryEntry>,
    items: Vec<Item>,
    removed: Vec<String>,
    /// Level-1 entries pruned from the store.
    pruned: Vec<String>,
}

/// The indexes themselves, owned by the worker.
struct Writer {
    memory: MemoryIndex,
    items: ItemIndex,
    offsets: BTreeMap<String, i64>,
    last_commit: Instant,
    dirty: bool,
}

impl Writer {
    fn apply(&mut self, job: Job) -> Result<(), IndexError> {
        self.offsets.extend(job.offsets);
        self.memory.add(&job.added)?;
        self.memory.upsert(&job.replaced)?;
        if !job.items.is_empty() {
            self.items.upsert(&job.items)?;
        }
        if !job.removed.is_empty() {
            self.items.remove(&job.removed)?;
        }
        if !job.pruned.is_empty() {
            self.memory.remove(&job.pruned)?;
        }
        self.dirty = true;
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

impl Indexes {
    /// Opens the indexes under `dir` (`memory/`, `items/`; in RAM when `None`),
    /// rebuilds them from the store unless they reflect its offsets, and
    /// starts the worker.
    pub async fn open<S: KvStore>(
        dir: Option<&Path>,
        memory: &MemoryStore<S>,
    ) -> Result<Self, OpenError> {
        let mut writer = Writer {
            memory: MemoryIndex::open(dir.map(|d| d.join("memory")).as_deref())?,
            items: ItemIndex::open(dir.map(|d| d.join("items")).as_deref())?,
            offsets: store_offsets(memory).await?,
            last_commit: Instant::now(),
            dirty: false,
        };
        let current = serde_json::to_string(&writer.offsets).expect("offsets serialise");
        let stored_items: Vec<Item> = memory
            .kv()
            .get_all(&memory.keys().items())
            .await?
            .values()
            .map(|v| serde_json::from_str(v).map_err(|e| StoreError::Corrupt(e.to_string())))
            .collect::<Result<_, _>>()?;
        let memory_stale = writer.memory.payload()?.as_deref() != Some(current.as_str());
        // The item index is checked on its own: its directory may be lost,
        // or hold an older commit (even one with as many items), while the
        // memory index is current.
        let items_stale = writer.items.payload()?.as_deref() != Some(current.as_str())
            || writer.items.len() != stored_items.len() as u64;
        let started = Instant::now();
        let mut entries = 0;
        if memory_stale {
            writer.memory.clear()?;
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
                writer.memory.add(&batch)?;
            }
        }
        if memory_stale || items_stale {
            writer.items.clear()?;
            writer.items.upsert(&stored_items)?;
            writer.commit()?;
            tracing::info!(
                memory = memory_stale,
                entries,
                items = stored_items.len(),
                seconds = started.elapsed().as_secs_f64(),
                "rebuilt the indexes from the store"
            );
        }
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
        })
    }

    /// Hands what a stored batch wrote to the worker — `added` entries are new
    /// (their events were above every stored offset, and an index behind the
    /// store is rebuilt at start), `replaced` ones supersede earlier versions.
    /// Waits only when the worker is [`QUEUED_BATCHES`] behind; fails once
    /// the worker has failed.
    pub fn record(
        &mut self,
        write: &Batch,
        added: Vec<MemoryEntry>,
        replaced: Vec<MemoryEntry>,
        items: Vec<Item>,
        removed: Vec<String>,
        pruned: Vec<String>,
    ) -> Result<(), String> {
        let mut offsets = Vec::new();
        for op in &write.ops {
            if let Op::Set { key, field, value } = op {
                if *key == self.offsets_key {
                    if let Ok(offset) = value.parse() {
                        offsets.push((field.clone(), offset));
                    }
                }
            }
        }
        let job = Job {
            offsets,
            added,
            replaced,
            items,
            removed,
            pruned,
        };
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
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
        self.jobs.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
