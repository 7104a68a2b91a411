//! The fused ranking (DESIGN §4): BM25 of an ideal-item profile over the
//! item index, the catalog categories the profile names, co-occurrence with
//! the user's recent positive items, and popularity. The recommender answers with it; the reward stage ranks the
//! catalog with it to find a request's target (DESIGN §5).

use crate::catalog::{CatalogFacts, Facts};
use crate::RecommendSettings;
use mrrec_agent::{fuse, FusionWeights, Signals};
use mrrec_config::CollaborativeScore;
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
    collaborative: CollaborativeScore,
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
            collaborative: settings.collaborative,
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
    /// items of the categories it names, co-occurrence with the user's
    /// recent positive items, popularity.
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
        let facts = self.facts().await?;
        let named = named_categories(profile, &facts.categories);
        if !named.is_empty() {
            match self.items.in_categories(&named, candidates) {
                Ok(items) => {
                    signals.category = items.into_iter().map(|(id, n)| (id, n as f64)).collect();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "category lookup failed; ranking without it");
                }
            }
        }
        if let Some(state) = state {
            let recent: Vec<String> = state
                .recent_positive
                .iter()
                .rev()
                .take(self.recent_items)
                .cloned()
                .collect();
            let popularity = |id: &str| facts.popularity.get(id).copied();
            let cosine: Option<&mrrec_memory::Popularity<'_>> = match self.collaborative {
                CollaborativeScore::Count => None,
                CollaborativeScore::Cosine => Some(&popularity),
            };
            if !recent.is_empty() {
                signals.collaborative = self
                    .memory
                    .co_occurring(&recent, candidates, cosine)
                    .await?
                    .into_iter()
                    .collect();
            }
        }
        // Popularity scores every candidate of the other signals, and adds
        // the most popular items as candidates of its own.
        let mut popularity: HashMap<String, f64> = facts
            .popular
            .iter()
            .take(candidates)
            .map(|(id, count)| (id.clone(), *count))
            .collect();
        let scored = signals.bm25.keys().chain(signals.category.keys());
        for id in scored.chain(signals.collaborative.keys()) {
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

/// The catalog categories `profile` names: each as whole words, in any case
/// (`"sci-fi"` names `Sci-Fi`, `"science"` does not name `Sci`).
pub fn named_categories(profile: &str, categories: &[String]) -> Vec<String> {
    let text = profile.to_lowercase();
    categories
        .iter()
        .filter(|c| names(&text, &mrrec_index::category_key(c)))
        .cloned()
        .collect()
}

/// Whether `key` occurs in `text` with no letter or digit right before or after it.
fn names(text: &str, key: &str) -> bool {
    !key.is_empty()
        && text.match_indices(key).any(|(at, _)| {
            let before = text[..at].chars().next_back();
            let after = text[at + key.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
}

#[cfg(test)]
mod tests {
    use super::named_categories;

    #[test]
    fn a_profile_names_categories_as_whole_words_in_any_case() {
        let categories: Vec<String> = [
            "Sci-Fi",
            "Sci",
            "Drama",
            "Lab & Scientific Products",
            "Test",
        ]
        .map(String::from)
        .into();
        assert_eq!(named_categories("sci-fi", &categories), ["Sci-Fi", "Sci"]);
        assert_eq!(
            named_categories("Science fiction", &categories),
            Vec::<String>::new()
        );
        assert_eq!(
            named_categories("Lab & Scientific Products, drama.", &categories),
            ["Drama", "Lab & Scientific Products"]
        );
        assert_eq!(
            named_categories("testing", &categories),
            Vec::<String>::new()
        );
        assert_eq!(named_categories("", &categories), Vec::<String>::new());
    }
}
