//! Memory entries and their stable ids.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The level of a memory entry (DESIGN §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Level 1: one raw event.
    Behavior,
    /// Level 2: one summary per category the user touched.
    Preference,
    /// Level 3: the user's consolidated profile.
    Profile,
    /// Cross-user memory of one category.
    Global,
}

impl Level {
    pub const ALL: [Level; 4] = [
        Level::Behavior,
        Level::Preference,
        Level::Profile,
        Level::Global,
    ];

    /// 1, 2, 3 for the user levels; 0 for global.
    pub fn number(self) -> u64 {
        match self {
            Level::Behavior => 1,
            Level::Preference => 2,
            Level::Profile => 3,
            Level::Global => 0,
        }
    }

    pub fn from_number(n: u64) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.number() == n)
    }

    fn tag(self) -> char {
        match self {
            Level::Behavior => 'b',
            Level::Preference => 'p',
            Level::Profile => 'u',
            Level::Global => 'g',
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Behavior => "behavior",
            Level::Preference => "preference",
            Level::Profile => "profile",
            Level::Global => "global",
        })
    }
}

/// One memory entry. `user` is empty for global entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryEntry {
    pub id: String,
    pub user: String,
    pub level: Level,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub text: String,
    pub ts: i64,
    /// The items behind the entry, the evidence a policy cites it for
    /// (DESIGN §4): a behaviour record's item when the user liked it, a
    /// preference's latest liked items of its category, newest first.
    /// Cited entries' items seed the ranker's collaborative signal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<String>,
}

/// FNV-1a 64: stable across Rust versions and platforms (unlike `DefaultHasher`).
fn fnv1a(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// A stable 64-bit fingerprint of some text, as 16 hex digits (used as the
/// version of a user's state: a function of the state, not of how many
/// batches wrote it, so a replay stores the same bytes).
pub fn fingerprint(text: &str) -> String {
    format!("{:016x}", fnv1a(&[text]))
}

/// The stable id of an entry: level tag + 16 hex digits of a hash of what
/// identifies it (user and event id; user and category; user; category).
/// Ids are short and plain ASCII, safe in keys, index terms and prompts.
pub fn entry_id(level: Level, user: &str, discriminator: &str) -> String {
    format!("{}{:016x}", level.tag(), fnv1a(&[user, discriminator]))
}
