//! `mrrec memory show`: a user's memory, level by level.

use anyhow::{bail, Result};
use mrrec_config::Config;
use mrrec_memory::Level;

/// Behavior records printed (the newest first); the rest are counted.
const SHOWN_RECORDS: usize = 20;

pub async fn show(config: &Config, user: &str) -> Result<()> {
    let memory = super::store::open(config).await?;
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
