//! MR.Rec's hierarchical memory (DESIGN §3), as a pure, deterministic model.
//!
//! - [`UserState`] holds what distillation keeps per user: integer aggregates per
//!   category, profile attributes, a window of recent positive items, and events
//!   waiting for an unknown item. [`UserState::apply`] folds one event in and
//!   adds its contribution to cross-user memory (co-occurrence, popularity,
//!   chosen/unchosen aspects) to the batch's [`GlobalDelta`].
//! - [`render`] turns state into [`MemoryEntry`] text: level 1 behavior records,
//!   level 2 preference patterns, level 3 the profile, and global memory.
//!
//! Nothing here reads a clock: entries are a function of the input alone, so a
//! replay reproduces them byte for byte, and aggregates are integers (order of
//! arrival cannot change a sum), so linking an item that arrives after its
//! events gives the same memory as the other order.

mod model;
pub mod render;
mod state;
mod store;
#[cfg(test)]
mod tests;

pub use model::{entry_id, fingerprint, Level, MemoryEntry};
pub use state::{
    aspects_of, BehaviorRecord, CategoryStats, CoOccurrence, GlobalDelta, Sentiment, UserState,
    CO_OCCURRENCE_WINDOW, RECENT_POSITIVE,
};
pub use store::{
    entries_in, pair_weight, Keyspace, LoadedUser, MemoryStore, Popularity, UserMemory, Waiting,
    WAITING_MARK,
};
