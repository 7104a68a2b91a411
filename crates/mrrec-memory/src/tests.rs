//! The memory model: what it keeps, what it renders, and that neither depends
//! on the order items and events arrive in.

use crate::render::{self, Catalog};
use crate::*;
use mrrec_messages::{EventKind, Item};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn item(id: &str, title: &str, categories: &[&str], year: i64) -> Item {
    Item {
        item_id: id.into(),
        title: title.into(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        description: None,
        attrs: Some(serde_json::from_value(serde_json::json!({ "year": year })).unwrap()),
    }
}

fn rate(event_id: &str, item_id: &str, value: f64, ts: i64) -> BehaviorRecord {
    BehaviorRecord {
        event_id: event_id.into(),
        kind: EventKind::Rate,
        item_id: Some(item_id.into()),
        value: Some(value),
        text: None,
        request_id: None,
        ts,
    }
}

fn catalog() -> BTreeMap<String, Item> {
    [
        item("1", "Toy Story (1995)", &["Animation", "Comedy"], 1995),
        item("2", "Scream (1996)", &["Horror", "Thriller"], 1996),
        item("3", "Annie Hall (1977)", &["Comedy", "Romance"], 1977),
        item("4", "Alien (1979)", &["Horror", "Sci-Fi"], 1979),
    ]
    .into_iter()
    .map(|i| (i.item_id.clone(), i))
    .collect()
}

#[test]
fn ratings_become_preferences_and_a_profile() {
    let catalog = catalog();
    let mut state = UserState::new("42");
    let profile_attrs = serde_json::json!({"age": 24, "occupation": "technician"});
    let profile = BehaviorRecord {
        kind: EventKind::Profile,
        item_id: None,
        value: None,
        ..rate("p", "", 0.0, 0)
    };
    let mut delta = GlobalDelta::default();
    state.apply(&profile, profile_attrs.as_object(), None, &mut delta);
    for (i, (item_id, value)) in [("1", 5.0), ("3", 4.0), ("2", 1.0), ("4", 2.0)]
        .iter()
        .enumerate()
    {
        let record = rate(&format!("e{i}"), item_id, *value, 1_000 * i as i64);
        state.apply(&record, None, catalog.item(item_id), &mut delta);
    }
    let comedy = &state.categories["Comedy"];
    assert_eq!((comedy.events, comedy.ratings, comedy.liked), (2, 2, 2));
    assert_eq!(comedy.mean_rating(), Some(4.5));
    assert!(comedy.strength() > 0.99);
    assert!(state.categories["Horror"].strength() < -0.99);

    let entry = render::preference("42", "Comedy", comedy, &catalog);
    assert_eq!(entry.level, Level::Preference);
    assert!(
        entry
            .text
            .starts_with("Comedy: 2 interactions, 2 rated (mean 4.5/5), 2 liked"),
        "{}",
        entry.text
    );
    assert!(
        entry.text.contains("Annie Hall (1977); Toy Story (1995)"),
        "{}",
        entry.text
    );
    assert!(
        entry.text.contains("1970s") && entry.text.contains("Romance"),
        "{}",
        entry.text
    );

    let profile = render::profile(&state, &catalog);
    assert!(
        profile.text.contains("age 24") && profile.text.contains("occupation technician"),
        "{}",
        profile.text
    );
    assert!(profile.text.contains("Favours Comedy"), "{}", profile.text);
    assert!(profile.text.contains("Avoids Horror"), "{}", profile.text);

    let behavior = render::behavior("42", &rate("e0", "1", 5.0, 0), &catalog);
    assert_eq!(
        behavior.text,
        "rated \"Toy Story (1995)\" 5/5 [Animation, Comedy]"
    );
    assert_eq!(behavior.category.as_deref(), Some("Animation"));
    assert_eq!(behavior.id, entry_id(Level::Behavior, "42", "e0"));
    assert_ne!(behavior.id, entry_id(Level::Behavior, "43", "e0"));
}

#[test]
fn co_occurrence_counts_liked_items_chosen_after_recent_likes() {
    let catalog = catalog();
    let mut state = UserState::new("u");
    let mut delta = GlobalDelta::default();
    for (i, id) in ["1", "3", "2"].iter().enumerate() {
        let value = if *id == "2" { 1.0 } else { 5.0 };
        state.apply(
            &rate(&format!("e{i}"), id, value, i as i64),
            None,
            catalog.item(id),
            &mut delta,
        );
    }
    assert_eq!(
        delta.co_occurrence.len(),
        1,
        "only the two liked items pair, earlier to later"
    );
    assert_eq!(delta.co_occurrence[&("1".into(), "3".into())], 1);
    assert_eq!(delta.popularity.len(), 2);
    assert_eq!(delta.unchosen[&("Horror".into(), String::new())], 1);
    let global = render::global(
        "Comedy",
        &render::GlobalStats {
            chosen: delta
                .chosen
                .iter()
                .filter(|((c, _), _)| c == "Comedy")
                .map(|((_, a), n)| (a.clone(), *n))
                .collect(),
            unchosen: BTreeMap::new(),
        },
    );
    assert!(
        global
            .text
            .starts_with("Comedy across users: 2 choices, 0 passed over."),
        "{}",
        global.text
    );
}

#[test]
fn events_for_unknown_items_wait_and_link() {
    let catalog = catalog();
    let mut state = UserState::new("u");
    let mut delta = GlobalDelta::default();
    let touched = state.apply(&rate("e1", "1", 5.0, 1), None, None, &mut delta);
    assert!(touched.is_empty());
    assert_eq!(state.pending["1"].len(), 1);
    let pending = render::behavior("u", &state.pending["1"][0], &BTreeMap::new());
    assert!(pending.text.contains("details pending"), "{}", pending.text);
    let (linked, touched) = state.link(&catalog["1"], &mut delta);
    assert_eq!(linked.len(), 1);
    assert_eq!(touched, vec!["Animation".to_owned(), "Comedy".to_owned()]);
    assert!(state.pending.is_empty());
    assert_eq!(delta.chosen[&("Comedy".into(), "Animation".into())], 1);
}

/// Applies `events` with every item known up front, or with none known and the
/// items linked afterwards in `link_order`; returns the final state, rendered
/// entries and the summed global delta.
fn distill(
    events: &[BehaviorRecord],
    catalog: &BTreeMap<String, Item>,
    link_order: Option<&[String]>,
) -> (UserState, Vec<MemoryEntry>, GlobalDelta) {
    let empty = BTreeMap::new();
    let known: &BTreeMap<String, Item> = if link_order.is_some() {
        &empty
    } else {
        catalog
    };
    let mut state = UserState::new("u");
    let mut delta = GlobalDelta::default();
    for record in events {
        let item = record.item_id.as_deref().and_then(|id| known.item(id));
        state.apply(record, None, item, &mut delta);
    }
    for id in link_order.into_iter().flatten() {
        state.link(&catalog[id], &mut delta);
    }
    let mut entries: Vec<MemoryEntry> = events
        .iter()
        .map(|r| render::behavior("u", r, catalog))
        .collect();
    entries.extend(
        state
            .categories
            .iter()
            .map(|(c, s)| render::preference("u", c, s, catalog)),
    );
    entries.push(render::profile(&state, catalog));
    (state, entries, delta)
}

fn arb_events() -> impl Strategy<Value = Vec<BehaviorRecord>> {
    prop::collection::vec(
        (1usize..=4, 1u8..=5, 0i64..10_000_000_000, prop::bool::ANY),
        0..60,
    )
    .prop_map(|raw| {
        raw.into_iter()
            .enumerate()
            .map(|(i, (item, value, ts, click))| BehaviorRecord {
                kind: if click {
                    EventKind::Click
                } else {
                    EventKind::Rate
                },
                value: (!click).then_some(f64::from(value)),
                ..rate(&format!("e{i}"), &item.to_string(), 0.0, ts)
            })
            .collect()
    })
}

proptest! {
    /// The memory of a user does not depend on whether items arrived before
    /// or after the events about them, nor on the order in which they arrived.
    #[test]
    fn item_arrival_order_does_not_change_memory(
        events in arb_events(),
        order in Just(vec!["1".to_owned(), "2".into(), "3".into(), "4".into()]).prop_shuffle(),
    ) {
        let catalog = catalog();
        let (upfront, upfront_entries, upfront_delta) = distill(&events, &catalog, None);
        let (late, late_entries, late_delta) = distill(&events, &catalog, Some(&order));
        prop_assert_eq!(&upfront, &late);
        prop_assert_eq!(&upfront_entries, &late_entries);
        prop_assert_eq!(&upfront_delta, &late_delta);
    }

    /// Replaying the same events gives the same bytes.
    #[test]
    fn replay_is_byte_identical(events in arb_events()) {
        let catalog = catalog();
        let (a, entries_a, _) = distill(&events, &catalog, None);
        let (b, entries_b, _) = distill(&events, &catalog, None);
        prop_assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        prop_assert_eq!(serde_json::to_string(&entries_a).unwrap(), serde_json::to_string(&entries_b).unwrap());
    }
}

/// Issue 19, point 5: numbers from outside never overflow — an item year of
/// i64::MIN has no decade (it used to panic computing one), and huge
/// ratings saturate the category's sum instead of wrapping it.
#[test]
fn extreme_years_and_ratings_do_not_overflow() {
    let extreme = item("9", "Odd", &["Drama"], i64::MIN);
    assert!(aspects_of(&extreme, "Drama")
        .iter()
        .all(|a| !a.ends_with('s')));
    let max = item("8", "Odder", &["Drama"], i64::MAX);
    assert_eq!(
        aspects_of(&max, "Drama"),
        vec!["9223372036854775800s".to_owned()]
    );

    let mut state = UserState::new("u");
    let mut delta = GlobalDelta::default();
    for i in 0..3 {
        let record = rate(&format!("e{i}"), "9", 1e300, i);
        state.apply(&record, None, Some(&extreme), &mut delta);
    }
    assert_eq!(state.categories["Drama"].rating_sum_milli, i64::MAX);
}

/// Issue 19, point 6: profile attributes are bounded — at most
/// MAX_PROFILE_ATTRS keys per user whatever number of profile events
/// arrive, values cut at MAX_PROFILE_VALUE_BYTES (between characters);
/// known keys still take the latest value.
#[test]
fn profile_attributes_are_bounded() {
    use crate::state::{MAX_PROFILE_ATTRS, MAX_PROFILE_VALUE_BYTES};
    let mut state = UserState::new("u");
    let mut delta = GlobalDelta::default();
    let profile = |i: i64| BehaviorRecord {
        kind: EventKind::Profile,
        item_id: None,
        value: None,
        ..rate(&format!("p{i}"), "", 0.0, i)
    };
    for i in 0..10i64 {
        let attrs: serde_json::Map<String, serde_json::Value> = (0..20)
            .map(|k| (format!("k{i}-{k}"), serde_json::json!("v")))
            .chain([("age".to_owned(), serde_json::json!(20 + i))])
            .collect();
        state.apply(&profile(i), Some(&attrs), None, &mut delta);
    }
    assert_eq!(state.attrs.len(), MAX_PROFILE_ATTRS);
    assert_eq!(
        state.attrs["age"], "29",
        "a known key takes the latest value"
    );
    let long: serde_json::Map<String, serde_json::Value> =
        [("age".to_owned(), serde_json::json!("é".repeat(1000)))]
            .into_iter()
            .collect();
    state.apply(&profile(11), Some(&long), None, &mut delta);
    assert!(state.attrs["age"].len() <= MAX_PROFILE_VALUE_BYTES);
    assert_eq!(
        state.attrs["age"].chars().count(),
        MAX_PROFILE_VALUE_BYTES / 2
    );
}

#[test]
fn co_occurrence_can_count_a_wider_window_both_ways() {
    let catalog = catalog();
    let mut state = UserState::new("u");
    let mut delta = GlobalDelta::counting(crate::CoOccurrence {
        window: 20,
        both_ways: true,
    });
    for (i, id) in ["1", "3", "4"].iter().enumerate() {
        state.apply(
            &rate(&format!("e{i}"), id, 5.0, i as i64),
            None,
            catalog.item(id),
            &mut delta,
        );
    }
    // Three liked items: every pair, each way.
    assert_eq!(delta.co_occurrence.len(), 6);
    for (a, b) in [
        ("1", "3"),
        ("3", "1"),
        ("1", "4"),
        ("4", "1"),
        ("3", "4"),
        ("4", "3"),
    ] {
        assert_eq!(
            delta.co_occurrence[&(a.into(), b.into())],
            1,
            "{a} with {b}"
        );
    }
}
