//! The fused ranking (DESIGN §4): BM25 of an ideal-item profile over the
//! item index, the catalog categories the profile names, co-occurrence with
//! seed items, and popularity. The seeds are the items behind the memory
//! entries the answer cites (a liked item's record, a preference's latest
//! liked items), or the user's recent positive items when it cites none
//! (or none with items). The recommender answers with it; the reward stage
//! ranks the catalog with it, with the trajectory's citations, to find a
//! request's target (DESIGN §5).

use crate::catalog::{CatalogFacts, Facts};
use crate::fusion::{fuse, FusionWeights, Signals};
use crate::RankSettings;
use mrrec_config::CollaborativeScore;
use mrrec_index::{names_as_words, ItemIndex};
use mrrec_memory::{MemoryStore, UserState};
use mrrec_store::{KvStore, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What the ranker reads from an answer (DESIGN §4): its ideal-item
/// profile (BM25, named categories) and the memory entries it cites (the
/// collaborative signal's seeds).
#[derive(Debug, Clone, Copy)]
pub struct Cited<'a> {
    pub profile: &'a str,
    pub memory_ids: &'a [String],
}

impl<'a> Cited<'a> {
    pub fn new(profile: &'a str, memory_ids: &'a [String]) -> Self {
        Self {
            profile,
            memory_ids,
        }
    }

    /// A profile that cites nothing (the seeds are the recent positives).
    pub fn profile(profile: &'a str) -> Self {
        Self::new(profile, &[])
    }
}

/// Ranks the catalog for a profile and a user.
pub struct Ranker<S> {
    memory: MemoryStore<S>,
    items: Arc<ItemIndex>,
    catalog: CatalogFacts,
    candidates: usize,
    recent_items: usize,
    weights: FusionWeights,
    collaborative: CollaborativeScore,
    counting: mrrec_memory::CoOccurrence,
}

/// What a stored positive outcome for `target` added to the signals the
/// reward's ranking reads (distill's `apply`): one co-occurrence from each
/// of the user's `window` positive items before it (`after`), and one to
/// its popularity. Taken back out, the reward ranks the target as the
/// memory of the request's moment would, not with the user's own choice
/// of it as evidence for it.
struct StoredOutcome<'a> {
    target: &'a str,
    after: HashSet<String>,
}

impl<S: KvStore> Ranker<S> {
    pub fn new(memory: MemoryStore<S>, items: Arc<ItemIndex>, settings: &RankSettings) -> Self {
        Self {
            memory,
            items,
            catalog: CatalogFacts::new(settings.refresh),
            candidates: settings.candidates,
            recent_items: settings.recent_items,
            weights: settings.weights,
            collaborative: settings.collaborative,
            counting: settings.counting,
        }
    }

    pub fn memory(&self) -> &MemoryStore<S> {
        &self.memory
    }

    /// Catalog facts (categories, popularity), re-read every `refresh`.
    pub async fn facts(&self) -> Result<Arc<Facts>, StoreError> {
        self.catalog.get(&self.memory).await
    }

    /// The top `k` items for an answer (DESIGN §4): BM25 of its `profile`
    /// over the catalog, items of the categories it names, co-occurrence
    /// with the items behind the entries it `cited` (else the user's recent
    /// positive items), popularity.
    pub async fn rank(
        &self,
        answer: Cited<'_>,
        state: Option<&UserState>,
        exclude_seen: bool,
        k: usize,
    ) -> Result<Vec<mrrec_messages::ScoredItem>, StoreError> {
        let exclude: HashSet<String> = match state {
            Some(state) if exclude_seen => self.memory.seen(state).await?,
            _ => HashSet::new(),
        };
        self.rank_excluding(answer, state, &exclude, None, self.candidates, k)
            .await
    }

    /// The items whose co-occurrences are the collaborative signal: those
    /// behind the cited entries, else the user's recent positive items (at
    /// most `recommend.recent_items` either way), never `leave_out`.
    pub async fn seeds(
        &self,
        state: &UserState,
        cited: &[String],
        leave_out: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut seeds = if cited.is_empty() {
            Vec::new()
        } else {
            self.memory.cited_items(&state.user, cited).await?
        };
        seeds.retain(|s| Some(s.as_str()) != leave_out);
        if seeds.is_empty() {
            seeds = state.recent_positive.iter().rev().cloned().collect();
            seeds.retain(|s| Some(s.as_str()) != leave_out);
        }
        seeds.truncate(self.recent_items);
        Ok(seeds)
    }

    /// 1-based rank of `target` in the ranking `answer` gives the catalog
    /// (what DESIGN §5's reward scores), looking `depth` deep. Seen items are
    /// left out as for the request, except the target itself: its outcome
    /// has made it seen since. For the same reason the target is never a
    /// seed: once its outcome is stored it is the user's most recent
    /// positive item (and an item of the entries that cite it), and a seed
    /// gets no collaborative score of its own, so an answer whose seeds
    /// took it in would rank its own target lower than at the request. An item no signal scores at all is not
    /// ranked (`None`); DESIGN §11's full ranking would place it after every
    /// scored item, by id — the reward stage has to add that.
    pub async fn target_rank(
        &self,
        answer: Cited<'_>,
        state: Option<&UserState>,
        target: &str,
        depth: usize,
    ) -> Result<Option<u64>, StoreError> {
        let mut exclude: HashSet<String> = match state {
            Some(state) => self.memory.seen(state).await?,
            None => HashSet::new(),
        };
        exclude.remove(target);
        let stored = state.and_then(|state| self.stored_outcome(state, target));
        let ranked = self
            .rank_excluding(
                answer,
                state,
                &exclude,
                stored.as_ref(),
                depth.max(self.candidates),
                depth,
            )
            .await?;
        Ok(ranked
            .iter()
            .position(|item| item.item_id == target)
            .map(|i| i as u64 + 1))
    }

    /// What the outcome for `target` added to memory, once `state` holds it
    /// (the target is among the user's positive items); `None` while
    /// distill has not stored it.
    fn stored_outcome<'a>(&self, state: &UserState, target: &'a str) -> Option<StoredOutcome<'a>> {
        let at = state.recent_positive.iter().position(|i| i == target)?;
        let after = state.recent_positive[..at]
            .iter()
            .rev()
            .take(self.counting.window)
            .cloned()
            .collect();
        Some(StoredOutcome { target, after })
    }

    async fn rank_excluding(
        &self,
        answer: Cited<'_>,
        state: Option<&UserState>,
        exclude: &HashSet<String>,
        stored: Option<&StoredOutcome<'_>>,
        candidates: usize,
        k: usize,
    ) -> Result<Vec<mrrec_messages::ScoredItem>, StoreError> {
        let Cited {
            profile,
            memory_ids: cited,
        } = answer;
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
            let not_a_seed = stored.map(|o| o.target);
            let seeds = self.seeds(state, cited, not_a_seed).await?;
            let popularity = |id: &str| facts.popularity.get(id).copied();
            let cosine: Option<&mrrec_memory::Popularity<'_>> = match self.collaborative {
                CollaborativeScore::Count => None,
                CollaborativeScore::Cosine => Some(&popularity),
            };
            if !seeds.is_empty() {
                signals.collaborative = self
                    .memory
                    .co_occurring(&seeds, candidates, cosine)
                    .await?
                    .into_iter()
                    .collect();
            }
            if let Some(stored) = stored {
                let own: f64 = seeds
                    .iter()
                    .filter(|s| stored.after.contains(*s))
                    .map(|s| mrrec_memory::pair_weight(cosine, s, stored.target))
                    .sum();
                if let Some(score) = signals.collaborative.get_mut(stored.target) {
                    *score -= own;
                    if *score <= 1e-9 {
                        signals.collaborative.remove(stored.target);
                    }
                }
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
        if let Some(stored) = stored {
            if let Some(count) = popularity.get_mut(stored.target) {
                *count = (*count - 1.0).max(0.0);
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
        .filter(|c| names_as_words(&text, &mrrec_index::category_key(c)))
        .cloned()
        .collect()
}

/// The catalog categories a request's `query` names, the longest name first
/// (`"Abrasive & Finishing Products"` before `"Finishing Products"`; equal
/// lengths keep the catalog's order): each as whole words in any case, or
/// without its plural `s` (`"tape"` names `Tapes`). A category of several
/// words is named only by all of them in order; until 2026-12-06 only
/// one-word categories could be named at all.
pub fn query_categories(query: &str, categories: &[String]) -> Vec<String> {
    let text = query.to_lowercase();
    let mut named: Vec<&String> = categories
        .iter()
        .filter(|c| {
            let key = mrrec_index::category_key(c);
            names_as_words(&text, &key)
                || key
                    .strip_suffix('s')
                    .is_some_and(|one| names_as_words(&text, one))
        })
        .collect();
    named.sort_by_key(|c| std::cmp::Reverse(c.chars().count()));
    named.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::{named_categories, query_categories};

    #[test]
    fn a_query_names_categories_of_several_words_the_longest_first() {
        let categories: Vec<String> = [
            "Finishing Products",
            "Tapes",
            "Abrasive & Finishing Products",
            "Comedy",
            "Sci-Fi",
            "Children's",
        ]
        .map(String::from)
        .into();
        assert_eq!(
            query_categories(
                "Any good Abrasive & Finishing Products products?",
                &categories
            ),
            ["Abrasive & Finishing Products", "Finishing Products"]
        );
        assert_eq!(
            query_categories("I need a good tape", &categories),
            ["Tapes"]
        );
        assert_eq!(
            query_categories("Looking for a comedy movie", &categories),
            ["Comedy"]
        );
        assert_eq!(
            query_categories("something sci-fi or children's", &categories),
            ["Children's", "Sci-Fi"]
        );
        assert_eq!(
            query_categories("Abrasive & Finishing", &categories),
            Vec::<String>::new()
        );
        assert_eq!(
            query_categories("comedyish", &categories),
            Vec::<String>::new()
        );
    }

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
