//! Catalog-wide facts every request needs (category names, popularity),
//! read from the store at most once per refresh interval and shared.

use mrrec_memory::MemoryStore;
use mrrec_store::{KvStore, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Items kept in the popularity map (the most popular), so a huge catalog
/// does not make every refresh copy all of it.
const MAX_POPULAR: usize = 100_000;

/// One snapshot of the facts.
#[derive(Debug, Default)]
pub struct Facts {
    /// Categories that have global memory, sorted.
    pub categories: Vec<String>,
    /// Positive events per item.
    pub popularity: HashMap<String, f64>,
    /// The same, most popular first (ties by id).
    pub popular: Vec<(String, f64)>,
    /// Items removed by a tombstone: never recommended.
    pub removed: std::collections::HashSet<String>,
}

/// The cached facts and when they were read.
pub struct CatalogFacts {
    refresh: Duration,
    cached: Mutex<Option<(Instant, Arc<Facts>)>>,
}

/// Reverses `mrrec_store::escape` (`%XX` → byte).
fn unescape(key: &str) -> String {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl CatalogFacts {
    pub fn new(refresh: Duration) -> Self {
        Self {
            refresh,
            cached: Mutex::new(None),
        }
    }

    /// The facts, re-read when older than the refresh interval.
    pub async fn get<S: KvStore>(&self, memory: &MemoryStore<S>) -> Result<Arc<Facts>, StoreError> {
        let mut cached = self.cached.lock().await;
        if let Some((read_at, facts)) = cached.as_ref() {
            if read_at.elapsed() < self.refresh {
                return Ok(facts.clone());
            }
        }
        let facts = Arc::new(Self::read(memory).await?);
        *cached = Some((Instant::now(), facts.clone()));
        Ok(facts)
    }

    async fn read<S: KvStore>(memory: &MemoryStore<S>) -> Result<Facts, StoreError> {
        // Distill lists every category it writes a global key for, so the
        // refresh reads one hash instead of scanning the keyspace. A store
        // with no list at all (written before it existed) is scanned; one
        // that has it is trusted — re-distill an older store to list every
        // category.
        let mut categories: Vec<String> = memory
            .kv()
            .get_all(&memory.keys().categories())
            .await?
            .into_keys()
            .collect();
        if categories.is_empty() {
            let global_prefix = memory.keys().global("");
            categories = memory
                .kv()
                .keys(&global_prefix)
                .await?
                .iter()
                .filter_map(|key| key.strip_prefix(&global_prefix))
                .map(unescape)
                .collect();
        }
        categories.sort();
        categories.dedup();
        let mut popular: Vec<(String, f64)> = Vec::new();
        for (item, count) in memory.kv().get_all(&memory.keys().popularity()).await? {
            let count: f64 = count
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("popularity of {item}")))?;
            popular.push((item, count));
        }
        popular.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let removed: std::collections::HashSet<String> = memory
            .kv()
            .get_all(&memory.keys().removed_items())
            .await?
            .into_keys()
            .collect();
        popular.retain(|(id, _)| !removed.contains(id));
        popular.truncate(MAX_POPULAR);
        Ok(Facts {
            categories,
            popularity: popular.iter().cloned().collect(),
            popular,
            removed,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unescape_reverses_the_store_escape() {
        for id in ["Sci-Fi", "Children's", "a:b{c}*", "Film-Noir", "é%"] {
            assert_eq!(super::unescape(&mrrec_store::escape(id)), id);
        }
        // A stray `%` that is not an escape stays.
        assert_eq!(super::unescape("50%"), "50%");
        assert_eq!(super::unescape("%é"), "%é");
    }

    /// Issue 19, point 6: the refresh reads distill's list of categories
    /// instead of scanning the keyspace (a scan would also find the
    /// unlisted `Horror` key); with no list at all it still scans.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn categories_come_from_the_list_not_a_scan() {
        use mrrec_memory::{Keyspace, MemoryStore};
        use mrrec_store::{Batch, EmbeddedStore, KvStore};
        let tmp = tempfile::tempdir().unwrap();
        let memory = MemoryStore::new(
            EmbeddedStore::open(tmp.path()).unwrap(),
            Keyspace::default(),
        );
        let keys = memory.keys().clone();
        let mut write = Batch::default();
        write.increment(keys.global("Horror"), "c:Thriller", 1);
        memory.kv().apply(&write).await.unwrap();
        let scanned = super::CatalogFacts::read(&memory).await.unwrap();
        assert_eq!(scanned.categories, ["Horror"]);
        let mut write = Batch::default();
        write.increment(keys.global("Comedy"), "c:Romance", 1);
        write.set(keys.categories(), "Comedy", "1");
        memory.kv().apply(&write).await.unwrap();
        let listed = super::CatalogFacts::read(&memory).await.unwrap();
        assert_eq!(listed.categories, ["Comedy"]);
    }
}
