//! DESIGN §11's and §14's baselines, computed from the same data the
//! pipeline sees. Each request's history is the user's interactions before
//! it (see [`Interaction`] for which events count); its candidates are the
//! items the user had no event about before it, the set the pipeline
//! excludes too. Rows: `popularity` (interactions before the request's
//! timestamp), `genre_popularity` / `category_popularity` (items of the
//! category the query names first, each group by popularity; a query that
//! names none ranks by popularity), `item_knn` (cosine co-occurrence over
//! every user's history, scored against the last 50 history items),
//! `bm25_query` (the query over title + categories), `bm25_naive_memory`
//! (the query plus the titles and categories of the last 10 history items)
//! and `hybrid` (per-request z-scores over the candidates of popularity
//! within the query's category, item-kNN and BM25 of the query, summed with
//! equal weights). Ties go to the smaller item id.

use crate::metrics::{rank_of, Metrics, Row};
use mrrec_index::{names_as_words, IndexError, ItemIndex};
use mrrec_messages::{Event, EventKind, Item};
use std::collections::{HashMap, HashSet};

/// Row names, in report order (`genre_popularity` is named
/// `category_popularity` on catalogs other than MovieLens).
pub const BASELINES: [&str; 6] = [
    "popularity",
    "genre_popularity",
    "item_knn",
    "bm25_query",
    "bm25_naive_memory",
    "hybrid",
];

/// Items of the history item-kNN scores against.
const KNN_HISTORY: usize = 50;
/// History items whose text joins the query in `bm25_naive_memory`.
const NAIVE_MEMORY: usize = 10;

/// One interaction the baselines learn from: a `purchase`, a `click`, or a
/// `rate` of any value (DESIGN §11 counts every rating as an interaction
/// for popularity and co-occurrence; MovieLens' reference figures depend on
/// it). Views, reviews, searches, dismissals and profiles do not count.
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    pub user: String,
    pub item: String,
    pub ts: i64,
}

impl Interaction {
    /// Whether `event` is an interaction.
    pub fn counts(event: &Event) -> bool {
        matches!(
            event.kind,
            EventKind::Purchase | EventKind::Click | EventKind::Rate
        ) && event.item_id.is_some()
    }

    /// Every interaction among `events`, in their order.
    pub fn from_events(events: &[Event]) -> Vec<Interaction> {
        events
            .iter()
            .filter(|e| Self::counts(e))
            .filter_map(|e| {
                Some(Interaction {
                    user: e.user_id.clone(),
                    item: e.item_id.clone()?,
                    ts: e.ts,
                })
            })
            .collect()
    }
}

/// One request to score.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub user: String,
    pub query: String,
    /// The user's interactions before the request, oldest first.
    pub history: Vec<String>,
    /// Items that are not candidates: every item the user had any event
    /// about before the request (the set the pipeline excludes), or none
    /// when the request sets `exclude_seen: false`.
    pub seen: HashSet<String>,
    pub target: String,
    /// The request's timestamp: popularity counts interactions before it.
    pub target_ts: i64,
}

/// The catalog and what the baselines learn from it.
pub struct Baselines<'a> {
    items: &'a [Item],
    position: HashMap<&'a str, usize>,
    index: Option<ItemIndex>,
    /// Interactions as (ts, item position), oldest first.
    ratings: Vec<(i64, usize)>,
    has_categories: bool,
    /// Lower-cased categories, longest first (the query's category is the
    /// longest one it names).
    categories: Vec<(String, String)>,
    category_row: &'static str,
}

impl<'a> Baselines<'a> {
    /// The baselines of `items`, learning popularity from `interactions`.
    /// The category row is `genre_popularity` (DESIGN §11) or
    /// `category_popularity` (§14), as `category_row` says.
    pub fn new(
        items: &'a [Item],
        interactions: &[Interaction],
        category_row: &'static str,
    ) -> Result<Self, IndexError> {
        let position: HashMap<&str, usize> = items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.item_id.as_str(), i))
            .collect();
        let has_text = items
            .iter()
            .any(|i| !i.title.trim().is_empty() || !i.categories.is_empty());
        let index = if has_text {
            let mut index = ItemIndex::open(None)?;
            index.upsert(items)?;
            index.commit()?;
            Some(index)
        } else {
            None
        };
        let mut ratings: Vec<(i64, usize)> = interactions
            .iter()
            .filter_map(|r| position.get(r.item.as_str()).map(|p| (r.ts, *p)))
            .collect();
        ratings.sort_unstable();
        let mut categories: Vec<(String, String)> = items
            .iter()
            .flat_map(|i| i.categories.iter().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .map(|c| (c.to_lowercase(), c))
            .collect();
        categories.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.1.cmp(&b.1)));
        Ok(Self {
            items,
            position,
            index,
            ratings,
            has_categories: !categories.is_empty(),
            categories,
            category_row,
        })
    }

    /// The rows this catalog and these requests can have, with the reason
    /// for each row left out: category rows need categories and queries that
    /// name one, BM25 rows need text.
    pub fn names(&self, cases: &[Case]) -> (Vec<&'static str>, Vec<String>) {
        let named = cases
            .iter()
            .any(|c| self.query_category(&c.query).is_some());
        let mut omitted = Vec::new();
        let mut names = Vec::new();
        for name in BASELINES {
            let name = if name == "genre_popularity" {
                self.category_row
            } else {
                name
            };
            let missing = match name {
                "genre_popularity" | "category_popularity" | "hybrid" if !self.has_categories => {
                    Some("no item has a category")
                }
                "genre_popularity" | "category_popularity" | "hybrid" if !named => {
                    Some("no query names a catalog category")
                }
                "bm25_query" | "bm25_naive_memory" | "hybrid" if self.index.is_none() => {
                    Some("no item has a title or category to search")
                }
                _ => None,
            };
            match missing {
                Some(reason) => omitted.push(format!("{name}: {reason}")),
                None => names.push(name),
            }
        }
        (names, omitted)
    }

    /// The catalog category a query names: the longest category that stands
    /// in the query as whole words (case-insensitive), e.g. "Food Service
    /// Equipment & Supplies" in "Looking for Food Service Equipment &
    /// Supplies", or "Comedy" in "Looking for a comedy movie".
    pub fn query_category(&self, query: &str) -> Option<&str> {
        let query = query.to_lowercase();
        self.categories
            .iter()
            .find(|(lower, _)| names_as_words(&query, lower))
            .map(|(_, c)| c.as_str())
    }

    fn bm25(&self, query: &str) -> Result<Vec<f64>, IndexError> {
        let mut scores = vec![0.0; self.items.len()];
        if let Some(index) = &self.index {
            for (id, score) in index.search(query, self.items.len())? {
                if let Some(p) = self.position.get(id.as_str()) {
                    scores[*p] = f64::from(score);
                }
            }
        }
        Ok(scores)
    }

    /// Every applicable baseline's row over `cases`; item-kNN learns its
    /// co-occurrences from `histories` (one list of items per user).
    pub fn evaluate(
        &self,
        cases: &[Case],
        histories: &[Vec<String>],
    ) -> Result<Vec<Row>, IndexError> {
        let n = self.items.len();
        // Item-kNN: co-occurrence counts over every user's history.
        let mut counts = vec![0f64; n];
        let mut co: Vec<HashMap<usize, f64>> = vec![HashMap::new(); n];
        for history in histories {
            let seen: Vec<usize> = history
                .iter()
                .filter_map(|i| self.position.get(i.as_str()).copied())
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            for a in &seen {
                counts[*a] += 1.0;
                for b in &seen {
                    if a != b {
                        *co[*a].entry(*b).or_default() += 1.0;
                    }
                }
            }
        }
        let (names, _) = self.names(cases);
        let mut metrics: HashMap<&str, Metrics> =
            names.iter().map(|n| (*n, Metrics::default())).collect();
        // Popularity before each target: cases in target order, one sweep.
        let mut order: Vec<usize> = (0..cases.len()).collect();
        order.sort_by_key(|i| cases[*i].target_ts);
        let mut popularity = vec![0f64; n];
        let mut next = 0;
        for ci in order {
            let case = &cases[ci];
            while next < self.ratings.len() && self.ratings[next].0 < case.target_ts {
                popularity[self.ratings[next].1] += 1.0;
                next += 1;
            }
            let candidates: Vec<&str> = self
                .items
                .iter()
                .map(|i| i.item_id.as_str())
                .filter(|id| !case.seen.contains(*id))
                .collect();
            let as_map = |scores: &[f64]| -> HashMap<&str, f64> {
                self.items
                    .iter()
                    .zip(scores)
                    .map(|(i, s)| (i.item_id.as_str(), *s))
                    .collect()
            };
            let mut rank = |name: &str, scores: &[f64]| {
                if let Some(m) = metrics.get_mut(name) {
                    m.add(rank_of(&as_map(scores), &candidates, &case.target));
                }
            };
            rank("popularity", &popularity);
            let max_pop = popularity.iter().copied().fold(0.0, f64::max) + 1.0;
            let genre = self.query_category(&case.query);
            let genre_popularity: Vec<f64> = self
                .items
                .iter()
                .zip(&popularity)
                .map(|(item, pop)| {
                    let in_genre = genre.is_some_and(|g| item.categories.iter().any(|c| c == g));
                    f64::from(u8::from(in_genre)) + pop / max_pop
                })
                .collect();
            rank(self.category_row, &genre_popularity);
            let recent: Vec<usize> = case
                .history
                .iter()
                .rev()
                .filter_map(|i| self.position.get(i.as_str()).copied())
                .take(KNN_HISTORY)
                .collect();
            let mut knn = vec![0f64; n];
            for h in &recent {
                for (i, c) in &co[*h] {
                    knn[*i] += c / (counts[*i] * counts[*h]).sqrt();
                }
            }
            rank("item_knn", &knn);
            if self.index.is_some() {
                let bm25_query = self.bm25(&case.query)?;
                rank("bm25_query", &bm25_query);
                let mut naive = case.query.clone();
                for h in recent.iter().take(NAIVE_MEMORY) {
                    let item = &self.items[*h];
                    naive.push(' ');
                    naive.push_str(&item.title);
                    for c in &item.categories {
                        naive.push(' ');
                        naive.push_str(c);
                    }
                }
                rank("bm25_naive_memory", &self.bm25(&naive)?);
                if self.has_categories {
                    let z = |scores: &[f64]| -> Vec<f64> {
                        let values: Vec<f64> = candidates
                            .iter()
                            .map(|c| scores[self.position[c]])
                            .collect();
                        let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
                        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>()
                            / values.len().max(1) as f64;
                        let sd = var.sqrt();
                        scores
                            .iter()
                            .map(|s| if sd > 0.0 { (s - mean) / sd } else { 0.0 })
                            .collect()
                    };
                    // Genre popularity's signal for the sum: an item's
                    // popularity if it has the query's category, else 0
                    // (closer to the reference figure than z-scoring the
                    // ordering's own score, which gives NDCG@10 0.112).
                    let in_genre: Vec<f64> = self
                        .items
                        .iter()
                        .zip(&popularity)
                        .map(|(item, pop)| {
                            if genre.is_some_and(|g| item.categories.iter().any(|c| c == g)) {
                                *pop
                            } else {
                                0.0
                            }
                        })
                        .collect();
                    let (a, b, c) = (z(&in_genre), z(&knn), z(&bm25_query));
                    let hybrid: Vec<f64> = (0..n).map(|i| a[i] + b[i] + c[i]).collect();
                    rank("hybrid", &hybrid);
                }
            }
        }
        Ok(names.iter().map(|name| metrics[name].row(name)).collect())
    }
}

/// Whether `phrase` stands in `text` as whole words (both lower-cased).
#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, categories: &[&str]) -> Item {
        Item {
            item_id: id.into(),
            title: format!("item {id}"),
            categories: categories.iter().map(|c| (*c).to_owned()).collect(),
            description: None,
            attrs: None,
        }
    }

    fn purchase(user: &str, item: &str, ts: i64) -> Event {
        Event {
            event_id: format!("{user}-{item}-{ts}"),
            user_id: user.into(),
            kind: EventKind::Purchase,
            item_id: Some(item.into()),
            value: None,
            text: None,
            attrs: None,
            ts,
        }
    }

    #[test]
    fn purchases_and_clicks_count_and_views_do_not() {
        let mut view = purchase("u", "b", 2);
        view.kind = EventKind::View;
        let mut click = purchase("u", "c", 3);
        click.kind = EventKind::Click;
        let mut low = purchase("u", "d", 4);
        low.kind = EventKind::Rate;
        low.value = Some(1.0);
        let events = [purchase("u", "a", 1), view, click, low];
        let items: Vec<String> = Interaction::from_events(&events)
            .into_iter()
            .map(|i| i.item)
            .collect();
        assert_eq!(items, vec!["a", "c", "d"]);
    }

    #[test]
    fn the_query_names_the_longest_category_as_whole_words() {
        let items = [
            item("1", &["Lab Supplies", "Gloves"]),
            item("2", &["Supplies"]),
            item("3", &["War"]),
        ];
        let b = Baselines::new(&items, &[], "category_popularity").unwrap();
        assert_eq!(
            b.query_category("Looking for Lab Supplies"),
            Some("Lab Supplies")
        );
        assert_eq!(b.query_category("any supplies?"), Some("Supplies"));
        assert_eq!(b.query_category("a war movie"), Some("War"));
        assert_eq!(b.query_category("software"), None, "not inside a word");
        assert_eq!(b.query_category("something nice"), None);
    }

    /// On purchase data no row is empty for want of ratings: popularity and
    /// item-kNN learn from purchases, and the category row ranks the query's
    /// category first.
    #[test]
    fn purchase_only_data_gives_every_row_a_signal() {
        let items = [
            item("1", &["Tools"]),
            item("2", &["Tools"]),
            item("3", &["Gloves"]),
            item("4", &["Gloves"]),
        ];
        let events = [
            purchase("a", "1", 1),
            purchase("a", "3", 2),
            purchase("b", "1", 3),
            purchase("b", "3", 4),
            purchase("c", "3", 5),
            purchase("c", "4", 6),
            purchase("d", "1", 7),
        ];
        let interactions = Interaction::from_events(&events);
        let b = Baselines::new(&items, &interactions, "category_popularity").unwrap();
        let case = Case {
            user: "d".into(),
            query: "any gloves".into(),
            history: vec!["1".into()],
            seen: ["1".to_owned()].into(),
            target: "3".into(),
            target_ts: 8,
        };
        let histories: Vec<Vec<String>> = vec![
            vec!["1".into(), "3".into()],
            vec!["1".into(), "3".into()],
            vec!["3".into(), "4".into()],
            vec!["1".into()],
        ];
        let rows = b.evaluate(std::slice::from_ref(&case), &histories).unwrap();
        let ndcg = |name: &str| rows.iter().find(|r| r.name == name).unwrap().ndcg_at_10;
        assert!(
            (ndcg("popularity") - 1.0).abs() < 1e-9,
            "3 is the most bought"
        );
        assert!((ndcg("category_popularity") - 1.0).abs() < 1e-9);
        assert!((ndcg("item_knn") - 1.0).abs() < 1e-9, "1 and 3 go together");
        assert!(rows.iter().all(|r| r.name != "genre_popularity"));
        // A query naming no category leaves the category row out, saying why.
        let (names, omitted) = b.names(&[Case {
            query: "something".into(),
            ..case
        }]);
        assert!(!names.contains(&"category_popularity"));
        assert!(
            omitted.iter().any(|o| o.contains("no query names")),
            "{omitted:?}"
        );
    }
}
