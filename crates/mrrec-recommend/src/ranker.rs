//! The fused ranking (DESIGN §4): BM25 of an ideal-item profile over the
//! item index, co-occurrence with the user's recent positive items, and
//! popularity. The recommender answers with it; the reward stage ranks the
//! catalog with it to find a request's target (DESIGN §5).

use crate::catalog::{CatalogFacts, Facts};
use crate::RecommendSettings;
use mrrec_agent::{fuse, FusionWeights, Signals};
use mrrec_index::ItemIndex;
use mrrec_memory::{MemoryStore, UserState};
use mrrec_store::{KvStore, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Ranks the catalog for a profile and a user.
pub struct Ranker<S> {
    memory: MemoryStore<S>,
    items: Arc<ItemIndex>,
    catalog: CatalogFacts,
    candidates: usize,
    recent_items: usize,
    weights: FusionWeights,
}

impl<S: KvStore> Ranker<S> {
    pub fn new(
        memory: MemoryStore<S>,
        items: Arc<ItemIndex>,
        settings: &RecommendSettings,
    ) -> Self {
        Self {
            memory,
            items,
            catalog: CatalogFacts::new(settings.refresh),
            candidates: settings.candidates,
            recent_items: settings.recent_items,
            weights: settings.weights,
        }
    }

    pub fn memory(&self) -> &MemoryStore<S> {
        &self.memory
    }

    /// Catalog facts (categories, popularity), re-read every `refresh`.
    pub async fn facts(&self) -> Result<Arc<Facts>, StoreError> {
        self.catalog.get(&self.memory).await
    }

    /// The top `k` items for `profile` (DESIGN §4): BM25 over the catalog,
    /// co-occurrence with the user's recent positive items, popularity.
    pub async fn rank(
        &self,
        profile: &str,
        state: Option<&UserState>,
        exclude_seen: bool,
        k: usize,
    ) -> Result<Vec<mrrec_messages::ScoredItem>, StoreError> {
        let exclude: HashSet<String> = match state {
            Some(state) if exclude_seen => self.memory.seen(state).await?,
            _ => HashSet::new(),
        };
        self.rank_excluding(profile, state, &exclude, self.candidates, k)
            .await
    }

    /// 1-based rank of `target` in the ranking `profile` gives the catalog
    /// (what DESIGN §5's reward scores), looking `depth` deep. Seen items are
    /// left out as for the request, except the target itself: its outcome
    /// has made it seen since. An item no signal scores at all is not
    /// ranked (`None`); DESIGN §11's full ranking would place it after every
    /// scored item, by id — the reward stage has to add that.
    pub async fn target_rank(
        &self,
        profile: &str,
        state: Option<&UserState>,
        target: &str,
        depth: usize,
    ) -> Result<Option<u64>, StoreError> {
        let mut exclude: HashSet<String> = match state {
            Some(state) => self.memory.seen(state).await?,
            None => HashSet::new(),
        };
        exclude.remove(target);
        let ranked = self
            .rank_excluding(profile, state, &exclude, depth.max(self.candidates), depth)
            .await?;
        Ok(ranked
            .iter()
            .position(|item| item.item_id == target)
            .map(|i| i as u64 + 1))
    }

    async fn rank_excluding(
        &self,
        profile: &str,
        state: Option<&UserState>,
        exclude: &HashSet<String>,
        candidates: usize,
        k: usize,
    ) -> Result<Vec<mrrec_messages::ScoredItem>, StoreError> {
        let mut signals = Signals::default();
        match self.items.search(profile, candidates) {
            Ok(hits) => {
                signals.bm25 = hits.into_iter().map(|(id, s)| (id, f64::from(s))).collect();
            }
            Err(e) => tracing::warn!(error = %e, "item search failed; ranking without BM25"),
        }
        if let Some(state) = state {
            let recent: Vec<String> = state
                .recent_positive
                .iter()
                .rev()
                .take(self.recent_items)
                .cloned()
                .collect();
            if !recent.is_empty() {
                signals.collaborative = self
                    .memory
                    .co_occurring(&recent, candidates)
                    .await?
                    .into_iter()
                    .map(|(id, count)| (id, count as f64))
                    .collect();
            }
        }
        let facts = self.facts().await?;
        // Popularity scores every candidate of the other signals, and adds
        // the most popular items as candidates of its own.
        let mut popularity: HashMap<String, f64> = facts
            .popular
            .iter()
            .take(candidates)
            .map(|(id, count)| (id.clone(), *count))
            .collect();
        for id in signals.bm25.keys().chain(signals.collaborative.keys()) {
            if let Some(count) = facts.popularity.get(id) {
                popularity.insert(id.clone(), *count);
            }
        }
        signals.popularity = popularity;
        if facts.removed.is_empty() {
            return Ok(fuse(&signals, self.weights, exclude, k));
        }
        let mut without_removed = exclude.clone();
        without_removed.extend(facts.removed.iter().cloned());
        Ok(fuse(&signals, self.weights, &without_removed, k))
    }
}
