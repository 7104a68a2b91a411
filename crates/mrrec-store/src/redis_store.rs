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
local last = #ARGV
while i <= last do
  local op = ARGV[i]
  if op == 'S' then
    local count = tonumber(ARGV[i + 2])
    redis.call('HSET', ARGV[i + 1], unpack(ARGV, i + 3, i + 2 + 2 * count))
    i = i + 3 + 2 * count
  elseif op == 'D' then
    redis.call('HDEL', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    redis.call('HINCRBY', ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
    i = i + 4
  end
end
return 1
"#;

/// Most field/value pairs in one `HSET` (Lua's `unpack` has a stack limit).
const MAX_PAIRS_PER_SET: usize = 1000;

/// The batch's operations grouped by key (first appearance order), each key's
/// operations in their order. Operations on different keys commute, so inside
/// one atomic script this is the same write — with one `HSET` per run of sets
/// on a key instead of one call per field.
fn grouped_by_key(ops: &[Op]) -> Vec<Vec<&Op>> {
    let mut slot: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut groups: Vec<Vec<&Op>> = Vec::new();
    for op in ops {
        let key = match op {
            Op::Set { key, .. } | Op::Delete { key, .. } | Op::Increment { key, .. } => key,
        };
        let at = *slot.entry(key.as_str()).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(op);
    }
    groups
}

/// A Redis-backed store. Cheap to clone (one multiplexed, auto-reconnecting connection).
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    apply: redis::Script,
}

/// Redis refused a write for want of memory (`maxmemory` reached): an
/// outage to wait out (with an alert), not a reason to crash and restart.
const OOM: &str = "mrrec_store_out_of_memory_total";

fn classify(error: redis::RedisError) -> StoreError {
    // OOM (maxmemory reached), READONLY / MASTERDOWN (a failover in
    // progress): the server is there but cannot take the write now.
    let busy = matches!(error.code(), Some("OOM" | "READONLY" | "MASTERDOWN"));
    if error.code() == Some("OOM") {
        metrics::describe_counter!(
            OOM,
            "Writes Redis refused because it reached maxmemory (retried; alert on any)"
        );
        metrics::counter!(OOM).increment(1);
        tracing::error!(error = %error, "Redis is out of memory (maxmemory): writes are retried until it has room");
    }
    if busy
        || error.is_io_error()
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
    /// Connects to `url`: `redis://[:password@]host:port/db`, or
    /// `rediss://…` for TLS, verified against `ca_file` (PEM) when given,
    /// else the system's roots (or the bundle in `SSL_CERT_FILE`).
    pub async fn connect(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, StoreError> {
        let tls = url.starts_with("rediss://");
        if tls {
            // Several crypto backends are linked (mistral.rs's HTTP stack
            // brings another): name one, or rustls refuses to choose.
            // An error means a provider is already installed, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = match ca_file {
            Some(path) if tls => {
                let root = std::fs::read(path).map_err(|e| {
                    StoreError::Fatal(format!("store.ca_file {}: {e}", path.display()))
                })?;
                redis::Client::build_with_tls(
                    url,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )
            }
            Some(_) => {
                return Err(StoreError::Fatal(
                    "store.ca_file is set but store.url is not rediss://".into(),
                ))
            }
            None => redis::Client::open(url),
        }
        .map_err(|e| StoreError::Fatal(format!("store.url: {e}")))?;
        // One batch is one script; a large one can take seconds. A response
        // timeout shorter than that would report a write that did happen as
        // failed (harmless, the retry finds its guards changed, but wasteful).
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(std::time::Duration::from_secs(60)))
            .set_connection_timeout(Some(std::time::Duration::from_secs(5)));
        let connection = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(classify)?;
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

    async fn get_all_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<BTreeMap<String, String>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hgetall(key);
        }
        let mut connection = self.connection.clone();
        pipe.query_async(&mut connection).await.map_err(classify)
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
        for ops in grouped_by_key(&batch.ops) {
            let mut rest = ops.as_slice();
            while let Some((first, tail)) = rest.split_first() {
                match first {
                    Op::Set { key, .. } => {
                        let run = rest
                            .iter()
                            .take(MAX_PAIRS_PER_SET)
                            .take_while(|op| matches!(op, Op::Set { .. }))
                            .count();
                        invocation.arg("S").arg(key).arg(run);
                        for op in &rest[..run] {
                            if let Op::Set { field, value, .. } = op {
                                invocation.arg(field).arg(value);
                            }
                        }
                        rest = &rest[run..];
                        continue;
                    }
                    Op::Delete { key, field } => invocation.arg("D").arg(key).arg(field),
                    Op::Increment { key, field, by } => {
                        invocation.arg("I").arg(key).arg(field).arg(*by)
                    }
                };
                rest = tail;
            }
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
