//! Size limits of the message contract. Anything beyond them is rejected, so a
//! hostile producer cannot make a stage allocate without bound.

/// Largest accepted payload (bytes of JSON).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Longest id (`user_id`, `item_id`, `event_id`, `request_id`, …), in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest title, category or other short label, in bytes.
pub const MAX_LABEL_BYTES: usize = 1024;
/// Longest free text (descriptions, reviews, search text, profiles), in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest request query, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// Most categories on one item.
pub const MAX_CATEGORIES: usize = 64;
/// Most attributes on one item or event.
pub const MAX_ATTRS: usize = 64;
/// Deepest nesting inside `attrs`.
pub const MAX_ATTR_DEPTH: usize = 4;
/// Largest `k` a request may ask for.
pub const MAX_K: u32 = 1000;
/// Largest absolute numeric value (ratings, scores, rewards).
pub const MAX_ABS_VALUE: f64 = 1e12;
/// Latest accepted timestamp: 9999-12-31T23:59:59.999Z in epoch millis.
pub const MAX_TS: i64 = 253_402_300_799_999;
/// Most items in a response, memory ids in a response, steps or segments.
pub const MAX_LIST: usize = 10_000;
