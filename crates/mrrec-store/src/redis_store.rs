//! The Redis backend: batched reads in one pipeline, every batch one Lua call
//! (atomic; guards checked before anything is written).

use crate::{Batch, KvStore, Op, StoreError};
use redis::aio::ConnectionManager;
use std::collections::BTreeMap;

const APPLY: &str = r#"
local n = tonumber(ARGV[1])
local i = 2
for g = 1, n do
  local current = redis.call('HGET', ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] == '0' then
    if current then return 0 end
  elseif current ~= ARGV[i + 3] then
    return 0
  end
  i = i + 4
end
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'S' then
    redis.call('HSET', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  elseif op == 'D' then
    redis.call('HDEL', ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
  i = i + 4
end
return 1
"#;

/// A Redis-backed store. Cheap to clone (one multiplexed, auto-reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    apply: redis::Script,
}

fn classify(error: redis::RedisError) -> StoreError {
    if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::TryAgain
            )
        )
    {
        StoreError::Unavailable(error.to_string())
    } else {
        StoreError::Fatal(error.to_string())
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://`, `rediss://`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Fatal(format!("store.url: {e}")))?;
        let connection = client.get_connection_manager().await.map_err(classify)?;
        Ok(Self {
            connection,
            apply: redis::Script::new(APPLY),
        })
    }
}

impl KvStore for RedisStore {
    async fn get_fields(
        &self,
        pairs: &[(String, String)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, field) in pairs {
            pipe.hget(key, field);
        }
        let mut connection = self.connection.clone();
        pipe.query_async(&mut connection).await.map_err(classify)
    }

    async fn get_all(&self, key: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let mut connection = self.connection.clone();
        redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut connection)
            .await
            .map_err(classify)
    }

    async fn apply(&self, batch: &Batch) -> Result<bool, StoreError> {
        let mut invocation = self.apply.prepare_invoke();
        invocation.arg(batch.guards.len());
        for guard in &batch.guards {
            invocation.arg(&guard.key).arg(&guard.field);
            match &guard.expected {
                Some(value) => invocation.arg("1").arg(value),
                None => invocation.arg("0").arg(""),
            };
        }
        for op in &batch.ops {
            match op {
                Op::Set { key, field, value } => invocation.arg("S").arg(key).arg(field).arg(value),
                Op::Delete { key, field } => invocation.arg("D").arg(key).arg(field).arg(""),
                Op::Increment { key, field, by } => {
                    invocation.arg("I").arg(key).arg(field).arg(*by)
                }
            };
        }
        let mut connection = self.connection.clone();
        let applied: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .map_err(classify)?;
        Ok(applied == 1)
    }

    async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut connection = self.connection.clone();
        let mut keys: Vec<String> = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", glob_escape(prefix)))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut connection)
                .await
                .map_err(classify)?;
            keys.extend(page);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
