//! Opening the configured memory store.

use anyhow::{Context, Result};
use mrrec_config::{Config, StoreBackend};
use mrrec_memory::{Keyspace, MemoryStore};
use mrrec_store::{AnyStore, EmbeddedStore, RedisStore};
use std::path::Path;

/// The store of `store.backend`, with the default keyspace.
pub async fn open(config: &Config) -> Result<MemoryStore<AnyStore>> {
    let store = match config.store.backend {
        StoreBackend::Redis => AnyStore::Redis(
            RedisStore::connect(
                &config.store.url,
                (!config.store.ca_file.is_empty()).then(|| Path::new(&config.store.ca_file)),
            )
            .await
            .with_context(|| {
                format!(
                    "connecting to {}",
                    mrrec_config::redact_url(&config.store.url)
                )
            })?,
        ),
        StoreBackend::Embedded => AnyStore::Embedded(
            EmbeddedStore::open(&config.store.path)
                .with_context(|| format!("opening {}", config.store.path.display()))?,
        ),
    };
    Ok(MemoryStore::new(store, Keyspace::default()))
}
