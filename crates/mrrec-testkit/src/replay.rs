//! A small JSON-lines world for tests of the strict replay (DESIGN §13):
//! the moment a request is asked decides what it may know.

use serde_json::{json, Value};

/// One purchase event as a JSON line.
pub fn purchase(user: &str, item: &str, ts: i64) -> Value {
    json!({
        "event_id": format!("{user}-{item}-{ts}"), "user_id": user, "kind": "purchase",
        "item_id": item, "ts": ts,
    })
}

/// Items and events of a world where a hit arrives between two moments:
/// 30 items of one category (`Gear`, every title names it); 20 users buy
/// items 1..5 early on (ts 1,001–1,205); user `asker` buys item 7 at ts
/// 2,000; then 40 users buy item 29 (ts 10,000–10,039). A request asked
/// before ts 10,000 must not see the hit; one asked after ranks it first.
pub fn hit_between_requests() -> (Vec<Value>, Vec<Value>) {
    let items = (0..30)
        .map(|i| json!({"item_id": format!("{i}"), "title": format!("Gear model {i}"), "categories": ["Gear"]}))
        .collect();
    let mut events = Vec::new();
    for u in 0..20 {
        for i in 1..=5 {
            events.push(purchase(
                &format!("early{u}"),
                &format!("{i}"),
                1_000 + u * 10 + i,
            ));
        }
    }
    events.push(purchase("asker", "7", 2_000));
    for u in 0..40 {
        events.push(purchase(&format!("late{u}"), "29", 10_000 + u));
    }
    (items, events)
}

/// Writes `rows` to `path`, one JSON document per line.
pub fn write_jsonl(path: &std::path::Path, rows: &[Value]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for row in rows {
        writeln!(file, "{row}")?;
    }
    file.flush()
}
