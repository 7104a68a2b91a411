//! `mrrec memory show`: a user's memory, level by level.

use anyhow::{bail, Result};
use mrrec_config::Config;
use mrrec_index::MemoryIndex;
use mrrec_memory::Level;

/// Behavior records printed (the newest first); the rest are counted.
const SHOWN_RECORDS: usize = 20;

pub async fn show(config: &Config, user: &str) -> Result<()> {
    let memory = mrrec_service::open_store(config).await?;
    let stored = memory.user(user).await?;
    let Some(state) = stored.state else {
        bail!(
            "no memory for user {user:?} in the {:?} store",
            config.store.backend
        );
    };
    for level in [Level::Profile, Level::Preference, Level::Behavior] {
        let entries: Vec<_> = stored.entries.iter().filter(|e| e.level == level).collect();
        println!(
            "== level {} · {level} ({} entries)",
            level.number(),
            entries.len()
        );
        for entry in entries.iter().take(if level == Level::Behavior {
            SHOWN_RECORDS
        } else {
            usize::MAX
        }) {
            println!("[{}] {}", entry.id, entry.text);
        }
        if level == Level::Behavior && entries.len() > SHOWN_RECORDS {
            println!("… {} older records", entries.len() - SHOWN_RECORDS);
        }
    }
    let top: Vec<&str> = state
        .ranked_categories()
        .into_iter()
        .take(3)
        .map(|(c, _)| c)
        .collect();
    println!("== global memory of the user's top categories");
    for category in top {
        let entry = memory.global(category).await?;
        println!("[{}] {}", entry.id, entry.text);
    }
    Ok(())
}

/// `mrrec memory search`: BM25 over the user's entries, read from the store
/// (the source of truth) into an in-memory index, so it needs no running stage.
pub async fn search(config: &Config, user: &str, query: &str, k: usize) -> Result<()> {
    let memory = mrrec_service::open_store(config).await?;
    let stored = memory.user(user).await?;
    if stored.state.is_none() {
        bail!(
            "no memory for user {user:?} in the {:?} store",
            config.store.backend
        );
    }
    let mut index = MemoryIndex::open(None)?;
    index.upsert(&stored.entries)?;
    index.commit("")?;
    let hits = index.search(user, query, &[], None, k)?;
    if hits.is_empty() {
        println!("no entry of user {user:?} matches {query:?}");
    }
    for hit in hits {
        println!(
            "{:>6.2}  L{} {:<10} [{}] {}",
            hit.score,
            hit.entry.level.number(),
            hit.entry.category.as_deref().unwrap_or("-"),
            hit.entry.id,
            hit.entry.text
        );
    }
    Ok(())
}
