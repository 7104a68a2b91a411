//! What distillation keeps per user, and how one event changes it.

use mrrec_messages::{Event, EventKind, Item};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Positive items remembered per user (co-occurrence window, collaborative signal).
pub const RECENT_POSITIVE: usize = 20;
/// Latest positive items a new positive item counts as chosen after
/// (co-occurrence), unless the batch's [`CoOccurrence`] says otherwise.
pub const CO_OCCURRENCE_WINDOW: usize = 3;

/// How a positive interaction counts toward co-occurrence
/// (`distill.co_occurrence_window`, `distill.co_occurrence_both_ways`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoOccurrence {
    /// With how many of the user's latest positive items (at most
    /// [`RECENT_POSITIVE`]).
    pub window: usize,
    /// Also count the earlier item as chosen with the later one (what
    /// item-kNN's symmetric co-occurrence needs), not only after it.
    pub both_ways: bool,
}

impl Default for CoOccurrence {
    fn default() -> Self {
        Self {
            window: CO_OCCURRENCE_WINDOW,
            both_ways: false,
        }
    }
}
/// Timestamped sentiments kept per category for the recency-weighted strength.
const RECENT_PER_CATEGORY: usize = 50;
/// Liked and disliked example items kept per category.
const EXAMPLES: usize = 3;
/// Aspects taken from one item.
const MAX_ASPECTS: usize = 12;

/// How an event speaks of its item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Sentiment {
    Disliked,
    Neutral,
    Liked,
}

impl Sentiment {
    /// Click and purchase are liked, dismiss disliked; ratings ≥ 4 liked, ≤ 2
    /// disliked; the rest neutral.
    pub fn of(kind: EventKind, value: Option<f64>) -> Sentiment {
        match (kind, value) {
            (EventKind::Click | EventKind::Purchase, _) => Sentiment::Liked,
            (EventKind::Dismiss, _) => Sentiment::Disliked,
            (EventKind::Rate | EventKind::Review, Some(v)) if v >= 4.0 => Sentiment::Liked,
            (EventKind::Rate | EventKind::Review, Some(v)) if v <= 2.0 => Sentiment::Disliked,
            _ => Sentiment::Neutral,
        }
    }

    pub fn sign(self) -> i8 {
        match self {
            Sentiment::Disliked => -1,
            Sentiment::Neutral => 0,
            Sentiment::Liked => 1,
        }
    }
}

/// A level-1 record: the event as memory keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BehaviorRecord {
    pub event_id: String,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub ts: i64,
}

impl BehaviorRecord {
    pub fn from_event(event: &Event, request_id: Option<&str>) -> Self {
        Self {
            event_id: event.event_id.clone(),
            kind: event.kind,
            item_id: event.item_id.clone(),
            value: event.value,
            text: event.text.clone(),
            request_id: request_id.map(str::to_owned),
            ts: event.ts,
        }
    }

    pub fn sentiment(&self) -> Sentiment {
        Sentiment::of(self.kind, self.value)
    }
}

/// Integer aggregates of one user in one category (level 2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CategoryStats {
    pub events: u64,
    pub ratings: u64,
    /// Sum of ratings in thousandths (integers: order of arrival cannot change it).
    pub rating_sum_milli: i64,
    pub liked: u64,
    pub disliked: u64,
    pub last_ts: i64,
    /// (ts, sentiment sign) of the latest events, ascending.
    pub recent: Vec<(i64, i8)>,
    /// (ts, item id) of the latest liked and disliked items, ascending.
    pub liked_examples: Vec<(i64, String)>,
    pub disliked_examples: Vec<(i64, String)>,
    /// How often each aspect (co-category, decade, attribute) came with a like or dislike.
    pub liked_aspects: BTreeMap<String, u64>,
    pub disliked_aspects: BTreeMap<String, u64>,
}

impl CategoryStats {
    /// Mean rating, if the user rated anything here.
    pub fn mean_rating(&self) -> Option<f64> {
        (self.ratings > 0).then(|| self.rating_sum_milli as f64 / 1000.0 / self.ratings as f64)
    }

    /// Recency-weighted mean sentiment in [-1, 1]: a 30-day half-life, measured
    /// back from this category's own latest event (no wall clock).
    pub fn strength(&self) -> f64 {
        const HALF_LIFE_MS: f64 = 30.0 * 24.0 * 3600.0 * 1000.0;
        let (mut weighted, mut total) = (0.0, 0.0);
        for (ts, sign) in &self.recent {
            let age = (self.last_ts - ts).max(0) as f64;
            let w = 0.5f64.powf(age / HALF_LIFE_MS);
            weighted += w * f64::from(*sign);
            total += w;
        }
        if total > 0.0 {
            weighted / total
        } else {
            0.0
        }
    }
}

/// Keeps the `cap` largest entries of an ascending list after inserting `value`.
fn insert_capped<T: Ord>(list: &mut Vec<T>, value: T, cap: usize) {
    let at = list.partition_point(|x| *x <= value);
    list.insert(at, value);
    if list.len() > cap {
        list.remove(0);
    }
}

/// Contributions to cross-user memory, accumulated over a batch; all sums,
/// so they commute.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalDelta {
    /// Positive interactions per item.
    pub popularity: HashMap<String, i64>,
    /// (item, later item) → times a user chose the later item soon after the
    /// first ("people who chose X then chose Y"); both ways with
    /// [`CoOccurrence::both_ways`].
    pub co_occurrence: HashMap<(String, String), i64>,
    /// (category, aspect) → count among chosen items of that category (aspect "" counts items).
    pub chosen: HashMap<(String, String), i64>,
    /// (category, aspect) → count among passed-over (disliked, dismissed) items.
    pub unchosen: HashMap<(String, String), i64>,
    /// How this batch counts co-occurrence.
    pub counting: CoOccurrence,
}

impl GlobalDelta {
    /// An empty delta that counts co-occurrence as `counting` says.
    pub fn counting(counting: CoOccurrence) -> Self {
        Self {
            counting,
            ..Self::default()
        }
    }
}

fn bump(map: &mut HashMap<(String, String), i64>, a: &str, b: &str) {
    *map.entry((a.to_owned(), b.to_owned())).or_default() += 1;
}

/// The aspects an item brings to `category`: its other categories, its decade
/// (from a numeric `year` attribute), and short scalar attributes.
pub fn aspects_of(item: &Item, category: &str) -> Vec<String> {
    let mut aspects: Vec<String> = item
        .categories
        .iter()
        .filter(|c| c.as_str() != category)
        .cloned()
        .collect();
    if let Some(attrs) = &item.attrs {
        for (key, value) in attrs {
            let aspect = match value {
                serde_json::Value::Number(n) if key == "year" => n
                    .as_i64()
                    .and_then(|y| y.checked_sub(y.rem_euclid(10)))
                    .map(|decade| format!("{decade}s")),
                serde_json::Value::String(s) if !s.is_empty() && s.len() <= 40 => {
                    Some(format!("{key}: {s}"))
                }
                serde_json::Value::Bool(true) => Some(key.clone()),
                _ => None,
            };
            aspects.extend(aspect);
        }
    }
    aspects.sort();
    aspects.dedup();
    aspects.truncate(MAX_ASPECTS);
    aspects
}

/// Most profile attributes a user keeps (`profile` events add keys; once
/// this many are kept, further new keys are dropped and known ones updated).
pub const MAX_PROFILE_ATTRS: usize = 32;
/// Longest profile attribute value kept, in bytes (cut at a character).
pub const MAX_PROFILE_VALUE_BYTES: usize = 256;

/// Everything distillation keeps about one user.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub user: String,
    pub events: u64,
    pub last_ts: i64,
    /// Attributes from `profile` events (later events win).
    pub attrs: BTreeMap<String, String>,
    pub categories: BTreeMap<String, CategoryStats>,
    /// Latest positive items, oldest first, without repeats.
    pub recent_positive: Vec<String>,
    /// Items seen, as states written before `seen:{user}` existed kept them
    /// (read, never written: distill moves them to that hash on the user's
    /// next write). The seen set grows with the catalog, so it lives outside
    /// the state that every batch reads and rewrites.
    #[serde(default, rename = "seen", skip_serializing)]
    pub legacy_seen: BTreeSet<String>,
    /// Events about items not in the catalog yet, by item id.
    pub pending: BTreeMap<String, Vec<BehaviorRecord>>,
    /// Level-1 (behaviour) entries this user has in the store, as far as
    /// distill counted them (states written before the count existed start
    /// at 0). Past `distill.max_behavior_entries` the oldest are pruned.
    #[serde(default)]
    pub behavior_entries: u64,
}

impl UserState {
    pub fn new(user: &str) -> Self {
        Self {
            user: user.to_owned(),
            ..Self::default()
        }
    }

    /// Folds one event in. `item` is the catalog entry of the event's item, if
    /// known; an unknown item's event waits in `pending` until [`UserState::link`].
    /// Adds its contribution to cross-user memory to `delta`; returns the
    /// categories whose level-2 memory changed.
    pub fn apply(
        &mut self,
        record: &BehaviorRecord,
        attrs: Option<&serde_json::Map<String, serde_json::Value>>,
        item: Option<&Item>,
        delta: &mut GlobalDelta,
    ) -> Vec<String> {
        self.events += 1;
        self.last_ts = self.last_ts.max(record.ts);
        if record.kind == EventKind::Profile {
            for (key, value) in attrs.into_iter().flatten() {
                let mut text = match value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                mrrec_messages::truncate_at_char(&mut text, MAX_PROFILE_VALUE_BYTES);
                // Bounded: keys already kept are updated; new ones only while
                // there is room (the same events always keep the same keys).
                if self.attrs.contains_key(key) || self.attrs.len() < MAX_PROFILE_ATTRS {
                    self.attrs.insert(key.clone(), text);
                }
            }
        }
        let Some(item_id) = record.item_id.as_deref() else {
            return Vec::new();
        };
        if record.sentiment() == Sentiment::Liked {
            *delta.popularity.entry(item_id.to_owned()).or_default() += 1;
            let CoOccurrence { window, both_ways } = delta.counting;
            for earlier in self.recent_positive.iter().rev().take(window) {
                if earlier != item_id {
                    bump(&mut delta.co_occurrence, earlier, item_id);
                    if both_ways {
                        bump(&mut delta.co_occurrence, item_id, earlier);
                    }
                }
            }
            self.recent_positive.retain(|i| i != item_id);
            self.recent_positive.push(item_id.to_owned());
            if self.recent_positive.len() > RECENT_POSITIVE {
                self.recent_positive.remove(0);
            }
        }
        match item {
            Some(item) => self.categorise(record, item, delta),
            None => {
                self.pending
                    .entry(item_id.to_owned())
                    .or_default()
                    .push(record.clone());
                Vec::new()
            }
        }
    }

    /// Applies the events that waited for `item`, adding to `delta`. Returns
    /// them (their level-1 entries can now be rendered) and the touched categories.
    pub fn link(
        &mut self,
        item: &Item,
        delta: &mut GlobalDelta,
    ) -> (Vec<BehaviorRecord>, Vec<String>) {
        let records = self.pending.remove(&item.item_id).unwrap_or_default();
        let mut touched = Vec::new();
        for record in &records {
            touched.extend(self.categorise(record, item, delta));
        }
        touched.sort();
        touched.dedup();
        (records, touched)
    }

    /// Updates the level-2 aggregates of the item's categories.
    fn categorise(
        &mut self,
        record: &BehaviorRecord,
        item: &Item,
        delta: &mut GlobalDelta,
    ) -> Vec<String> {
        let sentiment = record.sentiment();
        for category in &item.categories {
            if !self.categories.contains_key(category) {
                self.categories
                    .insert(category.clone(), CategoryStats::default());
            }
            let Some(stats) = self.categories.get_mut(category) else {
                continue;
            };
            stats.events += 1;
            stats.last_ts = stats.last_ts.max(record.ts);
            if let (EventKind::Rate, Some(value)) = (record.kind, record.value) {
                stats.ratings += 1;
                // `as` saturates; the sum must not overflow either.
                stats.rating_sum_milli = stats
                    .rating_sum_milli
                    .saturating_add((value * 1000.0).round() as i64);
            }
            insert_capped(
                &mut stats.recent,
                (record.ts, sentiment.sign()),
                RECENT_PER_CATEGORY,
            );
            let aspects = aspects_of(item, category);
            let example = (record.ts, item.item_id.clone());
            match sentiment {
                Sentiment::Liked => {
                    stats.liked += 1;
                    insert_capped(&mut stats.liked_examples, example, EXAMPLES);
                    for aspect in &aspects {
                        *stats.liked_aspects.entry(aspect.clone()).or_default() += 1;
                        bump(&mut delta.chosen, category, aspect);
                    }
                    bump(&mut delta.chosen, category, "");
                }
                Sentiment::Disliked => {
                    stats.disliked += 1;
                    insert_capped(&mut stats.disliked_examples, example, EXAMPLES);
                    for aspect in &aspects {
                        *stats.disliked_aspects.entry(aspect.clone()).or_default() += 1;
                        bump(&mut delta.unchosen, category, aspect);
                    }
                    bump(&mut delta.unchosen, category, "");
                }
                Sentiment::Neutral => {}
            }
        }
        item.categories.clone()
    }

    /// Categories by recency-weighted strength, strongest first (ties by name).
    pub fn ranked_categories(&self) -> Vec<(&str, f64)> {
        let mut ranked: Vec<(&str, f64)> = self
            .categories
            .iter()
            .map(|(name, stats)| {
                (
                    name.as_str(),
                    stats.strength() * (1.0 + (stats.events as f64).ln()),
                )
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked
    }
}
