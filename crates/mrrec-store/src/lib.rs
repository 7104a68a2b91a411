//! The memory store contract and its two backends.
//!
//! State is a set of hashes (key → field → value) plus integer counters in
//! hash fields. Reads are batched (`get_fields`, `get_all`); every write goes
//! through [`Batch`]: compare-and-set guards plus operations, applied
//! atomically — all or nothing, and nothing when a guard does not hold. That
//! one primitive gives exactly-once effect (the consumed offset is written in
//! the same batch as the state derived from it, and guarded) and optimistic
//! concurrency between instances (a per-user version field is guarded too).
//!
//! Backends: [`RedisStore`] (production; one Lua call per batch) and
//! [`EmbeddedStore`] (one process, redb on local disk). Both pass the same
//! conformance suite (`tests/conformance.rs`).

mod embedded;
pub mod offsets;
mod redis_store;

pub use embedded::EmbeddedStore;
pub use offsets::{offset_field, OffsetGuard, Range};
pub use redis_store::RedisStore;

use std::collections::BTreeMap;
use std::future::Future;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store is unreachable or busy: retry later; nothing was applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something it should never hold.
    #[error("store corrupt: {0}")]
    Corrupt(String),
    /// Misuse or misconfiguration: retrying cannot help.
    #[error("store error: {0}")]
    Fatal(String),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// One write of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set {
        key: String,
        field: String,
        value: String,
    },
    Delete {
        key: String,
        field: String,
    },
    Increment {
        key: String,
        field: String,
        by: i64,
    },
}

/// A condition a batch needs: `field` of `key` holds `expected` (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    pub key: String,
    pub field: String,
    pub expected: Option<String>,
}

/// Guards and operations applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub guards: Vec<Guard>,
    pub ops: Vec<Op>,
}

impl Batch {
    pub fn guard(
        &mut self,
        key: impl Into<String>,
        field: impl Into<String>,
        expected: Option<String>,
    ) {
        self.guards.push(Guard {
            key: key.into(),
            field: field.into(),
            expected,
        });
    }

    pub fn set(
        &mut self,
        key: impl Into<String>,
        field: impl Into<String>,
        value: impl Into<String>,
    ) {
        self.ops.push(Op::Set {
            key: key.into(),
            field: field.into(),
            value: value.into(),
        });
    }

    pub fn delete(&mut self, key: impl Into<String>, field: impl Into<String>) {
        self.ops.push(Op::Delete {
            key: key.into(),
            field: field.into(),
        });
    }

    pub fn increment(&mut self, key: impl Into<String>, field: impl Into<String>, by: i64) {
        if by != 0 {
            self.ops.push(Op::Increment {
                key: key.into(),
                field: field.into(),
                by,
            });
        }
    }

    pub fn is_empty(&self) -> bool {
        self.guards.is_empty() && self.ops.is_empty()
    }
}

/// The store contract both backends implement.
/// Clones are cheap handles on the same store.
pub trait KvStore: Send + Sync + Clone {
    /// Values of `(key, field)` pairs, in order (one round trip).
    fn get_fields(
        &self,
        pairs: &[(String, String)],
    ) -> impl Future<Output = Result<Vec<Option<String>>, StoreError>> + Send;

    /// Every field of `key`, sorted by field.
    fn get_all(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<BTreeMap<String, String>, StoreError>> + Send;

    /// Every field of each of `keys`, in order (one round trip).
    fn get_all_many(
        &self,
        keys: &[String],
    ) -> impl Future<Output = Result<Vec<BTreeMap<String, String>>, StoreError>> + Send;

    /// Applies `batch` atomically. `Ok(false)`: a guard did not hold, nothing applied.
    fn apply(&self, batch: &Batch) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every key with `prefix`, sorted (for dumps, rebuilds and tests; not a hot path).
    fn keys(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}

/// Either backend, chosen by configuration.
#[derive(Clone)]
pub enum AnyStore {
    Redis(RedisStore),
    Embedded(EmbeddedStore),
}

impl KvStore for AnyStore {
    async fn get_fields(
        &self,
        pairs: &[(String, String)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        match self {
            AnyStore::Redis(s) => s.get_fields(pairs).await,
            AnyStore::Embedded(s) => s.get_fields(pairs).await,
        }
    }

    async fn get_all(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError> {
        match self {
            AnyStore::Redis(s) => s.get_all(key).await,
            AnyStore::Embedded(s) => s.get_all(key).await,
        }
    }

    async fn get_all_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<BTreeMap<String, String>>, StoreError> {
        match self {
            AnyStore::Redis(s) => s.get_all_many(keys).await,
            AnyStore::Embedded(s) => s.get_all_many(keys).await,
        }
    }

    async fn apply(&self, batch: &Batch) -> Result<bool, StoreError> {
        match self {
            AnyStore::Redis(s) => s.apply(batch).await,
            AnyStore::Embedded(s) => s.apply(batch).await,
        }
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            AnyStore::Redis(s) => s.keys(prefix).await,
            AnyStore::Embedded(s) => s.keys(prefix).await,
        }
    }
}

/// Escapes an id for use inside a key: `[A-Za-z0-9._-]` stay, every other byte
/// becomes `%XX`. Injective, so ids with `:`, `{`, `}` or `*` cannot collide.
pub fn escape(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The id [`escape`] turned into `escaped` (`None` when it is not such a form).
pub fn unescape(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = escaped.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::{escape, unescape};

    #[test]
    fn unescape_inverts_escape() {
        for id in ["u1", "a:b", "%31", "mrrec:user:1", "ü {x} *", ""] {
            assert_eq!(unescape(&escape(id)).as_deref(), Some(id), "{id:?}");
        }
        assert_eq!(unescape("%4"), None);
        assert_eq!(unescape("%zz"), None);
    }
}
