//! The embedded backend: redb on local disk, for one process. A hash field is
//! the row `key \0 field`; a batch is one write transaction.

use crate::{Batch, KvStore, Op, StoreError};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const TABLE: TableDefinition<'static, &str, &str> = TableDefinition::new("kv");
const SEPARATOR: char = '\0';

/// A redb-backed store. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn fatal(e: impl std::fmt::Display) -> StoreError {
    StoreError::Fatal(e.to_string())
}

fn row(key: &str, field: &str) -> String {
    format!("{key}{SEPARATOR}{field}")
}

impl EmbeddedStore {
    /// Opens (or creates) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| fatal(format!("store.path {}: {e}", dir.display())))?;
        let db = Database::create(dir.join("memory.redb"))
            .map_err(|e| fatal(format!("store.path {}: {e}", dir.display())))?;
        let txn = db.begin_write().map_err(fatal)?;
        txn.open_table(TABLE).map_err(fatal)?;
        txn.commit().map_err(fatal)?;
        Ok(Self { db: Arc::new(db) })
    }
}

/// Every field of `key` in one read transaction's table.
fn fields_of(
    table: &impl ReadableTable<&'static str, &'static str>,
    key: &str,
) -> Result<BTreeMap<String, String>, StoreError> {
    let start = format!("{key}{SEPARATOR}");
    let end = format!("{key}\u{1}");
    let mut out = BTreeMap::new();
    for entry in table.range(start.as_str()..end.as_str()).map_err(fatal)? {
        let (k, v) = entry.map_err(fatal)?;
        out.insert(k.value()[start.len()..].to_owned(), v.value().to_owned());
    }
    Ok(out)
}

impl KvStore for EmbeddedStore {
    async fn get_fields(
        &self,
        pairs: &[(String, String)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        let txn = self.db.begin_read().map_err(fatal)?;
        let table = txn.open_table(TABLE).map_err(fatal)?;
        pairs
            .iter()
            .map(|(key, field)| {
                Ok(table
                    .get(row(key, field).as_str())
                    .map_err(fatal)?
                    .map(|v| v.value().to_owned()))
            })
            .collect()
    }

    async fn get_all(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let txn = self.db.begin_read().map_err(fatal)?;
        let table = txn.open_table(TABLE).map_err(fatal)?;
        fields_of(&table, key)
    }

    async fn get_all_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<BTreeMap<String, String>>, StoreError> {
        let txn = self.db.begin_read().map_err(fatal)?;
        let table = txn.open_table(TABLE).map_err(fatal)?;
        keys.iter().map(|key| fields_of(&table, key)).collect()
    }

    async fn apply(&self, batch: &Batch) -> Result<bool, StoreError> {
        let txn = self.db.begin_write().map_err(fatal)?;
        {
            let mut table = txn.open_table(TABLE).map_err(fatal)?;
            for guard in &batch.guards {
                let current = table
                    .get(row(&guard.key, &guard.field).as_str())
                    .map_err(fatal)?
                    .map(|v| v.value().to_owned());
                if current != guard.expected {
                    return Ok(false);
                }
            }
            for op in &batch.ops {
                match op {
                    Op::Set { key, field, value } => {
                        table
                            .insert(row(key, field).as_str(), value.as_str())
                            .map_err(fatal)?;
                    }
                    Op::Delete { key, field } => {
                        table.remove(row(key, field).as_str()).map_err(fatal)?;
                    }
                    Op::Increment { key, field, by } => {
                        let name = row(key, field);
                        let current = match table.get(name.as_str()).map_err(fatal)? {
                            Some(v) => v.value().parse::<i64>().map_err(|_| {
                                StoreError::Corrupt(format!("{key}/{field} is not an integer"))
                            })?,
                            None => 0,
                        };
                        let next = (current + by).to_string();
                        table.insert(name.as_str(), next.as_str()).map_err(fatal)?;
                    }
                }
            }
        }
        txn.commit().map_err(fatal)?;
        Ok(true)
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let txn = self.db.begin_read().map_err(fatal)?;
        let table = txn.open_table(TABLE).map_err(fatal)?;
        let mut keys = Vec::new();
        for entry in table.range(prefix..).map_err(fatal)? {
            let (k, _) = entry.map_err(fatal)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            let key = k.split(SEPARATOR).next().unwrap_or(k);
            if keys.last().map(String::as_str) != Some(key) {
                keys.push(key.to_owned());
            }
        }
        Ok(keys)
    }
}
