//! Memory entries rendered as short text from state. Pure functions: the same
//! state and catalog always give the same bytes.

use crate::model::{entry_id, Level, MemoryEntry};
use crate::state::{BehaviorRecord, CategoryStats, Sentiment, UserState};
use mrrec_messages::{EventKind, Item};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// Longest review or search text quoted in a behavior record.
const QUOTE_CHARS: usize = 160;

/// Item lookup used while rendering.
pub trait Catalog {
    fn item(&self, item_id: &str) -> Option<&Item>;
}

impl Catalog for HashMap<String, Item> {
    fn item(&self, item_id: &str) -> Option<&Item> {
        self.get(item_id)
    }
}

impl Catalog for BTreeMap<String, Item> {
    fn item(&self, item_id: &str) -> Option<&Item> {
        self.get(item_id)
    }
}

fn title(catalog: &dyn Catalog, item_id: &str) -> String {
    match catalog.item(item_id) {
        Some(item) if !item.title.is_empty() => item.title.clone(),
        _ => format!("item {item_id}"),
    }
}

fn quote(text: &str) -> String {
    let mut quoted: String = text.chars().take(QUOTE_CHARS).collect();
    if quoted.len() < text.len() {
        quoted.push('…');
    }
    quoted.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

/// Level 1: one event.
pub fn behavior(user: &str, record: &BehaviorRecord, catalog: &dyn Catalog) -> MemoryEntry {
    let item = record.item_id.as_deref().and_then(|id| catalog.item(id));
    let name = record
        .item_id
        .as_deref()
        .map(|id| match item {
            Some(item) if !item.title.is_empty() => format!("\"{}\"", item.title),
            Some(_) => format!("item {id}"),
            None => format!("item {id} (details pending)"),
        })
        .unwrap_or_default();
    let mut text = match (record.kind, record.value) {
        (EventKind::Rate, Some(v)) => format!("rated {name} {}/5", number(v)),
        (EventKind::Review, _) => format!("reviewed {name}"),
        (EventKind::Search, _) => "searched".to_owned(),
        (EventKind::Profile, _) => "updated their profile".to_owned(),
        (kind, _) => format!("{} {name}", past_tense(kind)),
    };
    if let Some(quoted) = record.text.as_deref().filter(|t| !t.trim().is_empty()) {
        let _ = write!(text, ": \"{}\"", quote(quoted));
    }
    if let Some(item) = item.filter(|i| !i.categories.is_empty()) {
        let _ = write!(text, " [{}]", item.categories.join(", "));
    }
    MemoryEntry {
        id: entry_id(Level::Behavior, user, &record.event_id),
        user: user.to_owned(),
        level: Level::Behavior,
        category: item.and_then(|i| i.categories.first().cloned()),
        text,
        ts: record.ts,
        items: record
            .item_id
            .iter()
            .filter(|_| record.sentiment() == Sentiment::Liked)
            .cloned()
            .collect(),
    }
}

fn past_tense(kind: EventKind) -> &'static str {
    match kind {
        EventKind::View => "viewed",
        EventKind::Click => "clicked",
        EventKind::Purchase => "bought",
        EventKind::Rate => "rated",
        EventKind::Review => "reviewed",
        EventKind::Search => "searched",
        EventKind::Dismiss => "dismissed",
        EventKind::Profile => "updated",
    }
}

/// Aspects that come with this sentiment more often than with the opposite
/// one, by that margin (ties by name): what sets likes apart from dislikes.
fn distinctive(
    with: &BTreeMap<String, u64>,
    against: &BTreeMap<String, u64>,
    n: usize,
) -> Vec<String> {
    let mut ranked: Vec<(&String, i64)> = with
        .iter()
        .map(|(a, c)| (a, *c as i64 - against.get(a).copied().unwrap_or(0) as i64))
        .filter(|(_, margin)| *margin > 0)
        .collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked.into_iter().take(n).map(|(a, _)| a.clone()).collect()
}

fn examples(list: &[(i64, String)], catalog: &dyn Catalog) -> String {
    list.iter()
        .rev()
        .map(|(_, id)| title(catalog, id))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Level 2: the user's pattern in one category.
pub fn preference(
    user: &str,
    category: &str,
    stats: &CategoryStats,
    catalog: &dyn Catalog,
) -> MemoryEntry {
    let mut text = format!("{category}: {} interactions", stats.events);
    if let Some(mean) = stats.mean_rating() {
        let _ = write!(text, ", {} rated (mean {mean:.1}/5)", stats.ratings);
    }
    let _ = write!(
        text,
        ", {} liked, {} disliked; recent strength {:+.2}.",
        stats.liked,
        stats.disliked,
        stats.strength()
    );
    if !stats.liked_examples.is_empty() {
        let _ = write!(
            text,
            " Liked: {}.",
            examples(&stats.liked_examples, catalog)
        );
    }
    if !stats.disliked_examples.is_empty() {
        let _ = write!(
            text,
            " Disliked: {}.",
            examples(&stats.disliked_examples, catalog)
        );
    }
    let likes = distinctive(&stats.liked_aspects, &stats.disliked_aspects, 4);
    if !likes.is_empty() {
        let _ = write!(text, " Likes {category} with: {}.", likes.join(", "));
    }
    let dislikes = distinctive(&stats.disliked_aspects, &stats.liked_aspects, 3);
    if !dislikes.is_empty() {
        let _ = write!(text, " Avoids {category} with: {}.", dislikes.join(", "));
    }
    MemoryEntry {
        id: entry_id(Level::Preference, user, category),
        user: user.to_owned(),
        level: Level::Preference,
        category: Some(category.to_owned()),
        text,
        ts: stats.last_ts,
        items: stats
            .liked_examples
            .iter()
            .rev()
            .map(|(_, id)| id.clone())
            .collect(),
    }
}

/// Level 3: the user's profile across categories.
pub fn profile(state: &UserState, catalog: &dyn Catalog) -> MemoryEntry {
    let mut text = String::from("Profile");
    if !state.attrs.is_empty() {
        let attrs: Vec<String> = state
            .attrs
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = write!(text, " ({})", attrs.join(", "));
    }
    let _ = write!(
        text,
        ": {} events across {} categories.",
        state.events,
        state.categories.len()
    );
    let ranked = state.ranked_categories();
    let strength = |c: &str| state.categories.get(c).map_or(0.0, |s| s.strength());
    let favourites: Vec<String> = ranked
        .iter()
        .filter(|(_, s)| *s > 0.0)
        .take(5)
        .map(|(c, _)| format!("{c} ({:+.2})", strength(c)))
        .collect();
    if !favourites.is_empty() {
        let _ = write!(text, " Favours {}.", favourites.join(", "));
    }
    let avoided: Vec<String> = ranked
        .iter()
        .rev()
        .filter(|(_, s)| *s < 0.0)
        .take(3)
        .map(|(c, _)| format!("{c} ({:+.2})", strength(c)))
        .collect();
    if !avoided.is_empty() {
        let _ = write!(text, " Avoids {}.", avoided.join(", "));
    }
    if !state.recent_positive.is_empty() {
        let recent: Vec<String> = state
            .recent_positive
            .iter()
            .rev()
            .take(5)
            .map(|id| title(catalog, id))
            .collect();
        let _ = write!(text, " Recently liked: {}.", recent.join("; "));
    }
    MemoryEntry {
        id: entry_id(Level::Profile, &state.user, ""),
        user: state.user.clone(),
        level: Level::Profile,
        category: None,
        text,
        ts: state.last_ts,
        items: Vec::new(),
    }
}

/// Cross-user counts of one category, as the store keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GlobalStats {
    /// Aspect → count among chosen items ("" → number of chosen items).
    pub chosen: BTreeMap<String, i64>,
    /// Aspect → count among passed-over items ("" → number of them).
    pub unchosen: BTreeMap<String, i64>,
}

/// Global memory of one category: what separates chosen from passed-over items.
pub fn global(category: &str, stats: &GlobalStats) -> MemoryEntry {
    let chosen_n = stats.chosen.get("").copied().unwrap_or(0);
    let unchosen_n = stats.unchosen.get("").copied().unwrap_or(0);
    let share = |map: &BTreeMap<String, i64>, n: i64, aspect: &str| {
        if n == 0 {
            0.0
        } else {
            map.get(aspect).copied().unwrap_or(0) as f64 / n as f64
        }
    };
    let mut lifts: Vec<(String, f64)> = stats
        .chosen
        .keys()
        .chain(stats.unchosen.keys())
        .filter(|a| !a.is_empty())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|a| {
            let lift = share(&stats.chosen, chosen_n, a) - share(&stats.unchosen, unchosen_n, a);
            (a.clone(), lift)
        })
        .collect();
    lifts.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut text =
        format!("{category} across users: {chosen_n} choices, {unchosen_n} passed over.");
    let favoured: Vec<String> = lifts
        .iter()
        .filter(|(_, l)| *l >= 0.05)
        .take(4)
        .map(|(a, l)| format!("{a} (+{:.0} pts)", l * 100.0))
        .collect();
    if !favoured.is_empty() {
        let _ = write!(text, " Chosen items lean toward {}.", favoured.join(", "));
    }
    let shunned: Vec<String> = lifts
        .iter()
        .rev()
        .filter(|(_, l)| *l <= -0.05)
        .take(3)
        .map(|(a, l)| format!("{a} ({:.0} pts)", l * 100.0))
        .collect();
    if !shunned.is_empty() {
        let _ = write!(
            text,
            " Passed-over items lean toward {}.",
            shunned.join(", ")
        );
    }
    MemoryEntry {
        id: entry_id(Level::Global, "", category),
        user: String::new(),
        level: Level::Global,
        category: Some(category.to_owned()),
        text,
        ts: 0,
        items: Vec::new(),
    }
}
