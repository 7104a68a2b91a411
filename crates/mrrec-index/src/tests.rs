//! Both indexes on small data: isolation by user, filters, idempotent upserts,
//! hostile query text, and BM25 order.

use crate::{ItemIndex, MemoryIndex};
use mrrec_memory::{Level, MemoryEntry};
use mrrec_messages::Item;

fn entry(
    id: &str,
    user: &str,
    level: Level,
    category: Option<&str>,
    text: &str,
    ts: i64,
) -> MemoryEntry {
    MemoryEntry {
        id: id.into(),
        user: user.into(),
        level,
        category: category.map(str::to_owned),
        text: text.into(),
        ts,
        items: Vec::new(),
    }
}

fn memory() -> MemoryIndex {
    let mut index = MemoryIndex::open(None).unwrap();
    let entries = [
        entry(
            "p1",
            "1",
            Level::Preference,
            Some("Comedy"),
            "Comedy: 91 interactions, liked Toy Story",
            10,
        ),
        entry(
            "b1",
            "1",
            Level::Behavior,
            Some("Comedy"),
            "rated \"Toy Story (1995)\" 5/5 [Animation, Comedy]",
            5,
        ),
        entry(
            "b2",
            "1",
            Level::Behavior,
            Some("Horror"),
            "rated \"Scream (1996)\" 1/5 [Horror]",
            7,
        ),
        entry(
            "u1",
            "1",
            Level::Profile,
            None,
            "Profile: favours Comedy",
            10,
        ),
        entry(
            "b3",
            "2",
            Level::Behavior,
            Some("Comedy"),
            "rated \"Annie Hall\" 5/5 [Comedy, Romance] comedy comedy",
            3,
        ),
    ];
    index.upsert(&entries).unwrap();
    index.commit("p").unwrap();
    index
}

#[test]
fn search_stays_within_the_user_and_ranks_by_bm25() {
    let index = memory();
    let hits = index.search("1", "comedy", &[], None, 10).unwrap();
    let ids: Vec<&str> = hits.iter().map(|h| h.entry.id.as_str()).collect();
    assert!(!ids.contains(&"b3"), "another user's entry leaked: {ids:?}");
    assert!(!ids.contains(&"b2"), "no match for comedy: {ids:?}");
    assert_eq!(ids.len(), 3);
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
    let levels = index
        .search(
            "1",
            "comedy",
            &[Level::Preference, Level::Behavior],
            None,
            10,
        )
        .unwrap();
    assert!(levels.iter().all(|h| h.entry.level != Level::Profile));
    let horror = index.search("1", "rated", &[], Some("Horror"), 10).unwrap();
    assert_eq!(horror.len(), 1);
    assert_eq!(
        horror[0].entry,
        entry(
            "b2",
            "1",
            Level::Behavior,
            Some("Horror"),
            "rated \"Scream (1996)\" 1/5 [Horror]",
            7
        )
    );
    assert_eq!(index.payload().unwrap().as_deref(), Some("p"));
}

#[test]
fn upserts_replace_and_hostile_queries_are_just_words() {
    let mut index = memory();
    index
        .upsert(&[entry(
            "b2",
            "1",
            Level::Behavior,
            Some("Horror"),
            "rated \"Scream (1996)\" 2/5 [Horror]",
            8,
        )])
        .unwrap();
    index.commit("q").unwrap();
    assert_eq!(index.len(), 5, "same id replaces");
    for hostile in [
        "user:2 OR comedy",
        "comedy AND (",
        "\"unterminated",
        "*",
        "level:1",
        "",
    ] {
        let hits = index.search("1", hostile, &[], None, 10).unwrap();
        assert!(
            hits.iter().all(|h| h.entry.user == "1"),
            "{hostile}: {hits:?}"
        );
    }
    let newest = index.search("1", "", &[], None, 2).unwrap();
    assert_eq!(newest[0].entry.ts, 10);
    assert!(index
        .search("nobody", "comedy", &[], None, 5)
        .unwrap()
        .is_empty());
}

#[test]
fn items_are_found_by_title_category_and_attributes() {
    let mut index = ItemIndex::open(None).unwrap();
    let item = |id: &str, title: &str, categories: &[&str]| Item {
        item_id: id.into(),
        title: title.into(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        description: None,
        attrs: Some(serde_json::from_value(serde_json::json!({"year": 1995})).unwrap()),
    };
    index
        .upsert(&[
            item("1", "Toy Story (1995)", &["Animation", "Comedy"]),
            item("2", "Scream (1996)", &["Horror"]),
            item("3", "Comedy of Errors", &["Comedy"]),
        ])
        .unwrap();
    index.commit().unwrap();
    let hits = index.search("comedy", 10).unwrap();
    let ids: Vec<&str> = hits.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, vec!["3", "1"]);
    assert_eq!(index.search("horror", 10).unwrap()[0].0, "2");
    assert!(index.search("", 10).unwrap().is_empty());
}

#[test]
fn items_are_found_by_the_categories_they_are_filed_under() {
    let mut index = ItemIndex::open(None).unwrap();
    let item = |id: &str, title: &str, categories: &[&str]| Item {
        item_id: id.into(),
        title: title.into(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        description: Some("food service equipment".into()),
        attrs: None,
    };
    index
        .upsert(&[
            item("1", "Tray", &["Food Service Equipment & Supplies", "Trays"]),
            item("2", "Scale", &["Lab & Scientific Products"]),
            item("3", "Pan", &["Food Service Equipment & Supplies"]),
            item("4", "Tray rack", &["Trays"]),
        ])
        .unwrap();
    index.commit().unwrap();
    let found = |index: &ItemIndex, names: &[&str], k| {
        let names: Vec<String> = names.iter().map(|c| c.to_string()).collect();
        index.in_categories(&names, k).unwrap()
    };
    // The exact category, in any case; a description's words are not a category.
    assert_eq!(
        found(&index, &["food service equipment & SUPPLIES"], 10),
        [("1".to_owned(), 1), ("3".to_owned(), 1)]
    );
    assert!(found(&index, &["Food Service"], 10).is_empty());
    // Items under more of the named categories first; at most k.
    assert_eq!(
        found(&index, &["Trays", "Food Service Equipment & Supplies"], 2),
        [("1".to_owned(), 2), ("3".to_owned(), 1)]
    );
    // A re-filed item leaves its old category.
    index
        .upsert(&[item("3", "Pan", &["Lab & Scientific Products"])])
        .unwrap();
    index.commit().unwrap();
    assert_eq!(
        found(&index, &["Lab & Scientific Products"], 10),
        [("2".to_owned(), 1), ("3".to_owned(), 1)]
    );
}

#[test]
fn an_index_of_another_schema_is_started_afresh_by_its_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items");
    {
        // An index as an older version wrote it: one text field only.
        let mut builder = tantivy::schema::Schema::builder();
        builder.add_text_field("text", tantivy::schema::TEXT);
        std::fs::create_dir_all(&path).unwrap();
        tantivy::Index::create_in_dir(&path, builder.build()).unwrap();
    }
    assert!(
        ItemIndex::open_read_only(&path).is_err(),
        "a reader does not touch it"
    );
    let index = ItemIndex::open(Some(&path)).unwrap();
    assert!(index.is_empty(), "its owner rebuilds it from the store");
}

#[test]
fn version_markers_are_kept_apart_from_entries_and_go_with_their_user() {
    let mut index = memory();
    let entries = index.len();
    index
        .set_versions([("1", Some("v1")), ("2", Some("v2")), ("3", None)])
        .unwrap();
    index.commit("").unwrap();
    assert_eq!(index.len(), entries, "markers are not entries");
    let versions = index.versions().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions["1"], "v1");
    for query in ["", "v1 comedy", "1"] {
        let hits = index.search("1", query, &[], None, 50).unwrap();
        assert!(
            hits.iter().all(|h| !h.entry.id.is_empty()),
            "no marker comes back from a search: {hits:?}"
        );
    }
    index.set_versions([("1", Some("v1b"))]).unwrap();
    index.remove_user("2").unwrap();
    index.commit("").unwrap();
    let versions = index.versions().unwrap();
    assert_eq!(versions.len(), 1, "{versions:?}");
    assert_eq!(versions["1"], "v1b", "a new version replaces the old one");
    assert!(index.search("2", "", &[], None, 10).unwrap().is_empty());
}

#[test]
fn an_item_fingerprint_follows_what_is_indexed() {
    let mut index = ItemIndex::open(None).unwrap();
    let mut item = Item {
        item_id: "i1".into(),
        title: "Toy Story".into(),
        categories: vec!["Comedy".into()],
        description: None,
        attrs: None,
    };
    index.upsert([&item]).unwrap();
    index.commit().unwrap();
    let before = ItemIndex::fingerprint_of(&item);
    assert_eq!(index.fingerprints().unwrap()["i1"], before);
    item.categories = vec!["Drama".into()];
    assert_ne!(
        ItemIndex::fingerprint_of(&item),
        before,
        "a category changes it"
    );
    item.categories = vec!["Comedy".into()];
    item.description = Some("Toys come alive".into());
    assert_ne!(
        ItemIndex::fingerprint_of(&item),
        before,
        "so does a description"
    );
}
