//! A real stage for runtime tests: counts each event id in Redis, storing the
//! last processed offset of every partition in the same Lua call (atomic), so a
//! replay after a crash or rebalance has no effect. Faults can be injected.

use mrrec_messages::Event;
use mrrec_stream::{decode_message, Batch, Poison, RecordMeta, Stage, StageError};
use redis::aio::ConnectionManager;
use redis::AsyncCommands;

/// Applies records above the stored offset and advances the stored offsets.
const APPLY: &str = r#"
local n = tonumber(ARGV[1])
local stored = {}
for i = 0, n - 1 do
  local tp = ARGV[2 + 2 * i]
  local s = redis.call('HGET', KEYS[1], tp)
  stored[tp] = s and tonumber(s) or -1
end
local applied = 0
local i = 2 + 2 * n
while i <= #ARGV do
  local tp, offset, id = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  if offset > stored[tp] then
    redis.call('HINCRBY', KEYS[2], id, 1)
    applied = applied + 1
  end
  i = i + 3
end
for i = 0, n - 1 do
  local tp, last = ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i])
  if last > stored[tp] then redis.call('HSET', KEYS[1], tp, last) end
end
redis.call('INCRBY', KEYS[3], applied)
return applied
"#;

/// Faults to inject, counted in `process` calls.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Fail this many `process` calls with a retryable error before touching Redis.
    pub retryable_failures: u32,
    /// After this many successful batches, write the next one to Redis and then
    /// fail fatally, as a crash between the state write and the offset commit.
    pub crash_after_batches: Option<u32>,
}

pub struct CountingStage {
    redis: ConnectionManager,
    namespace: String,
    faults: Faults,
    batches: u32,
}

impl CountingStage {
    pub async fn connect(url: &str, namespace: &str, faults: Faults) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(Self {
            redis: client.get_connection_manager().await?,
            namespace: namespace.to_owned(),
            faults,
            batches: 0,
        })
    }

    pub fn offsets_key(namespace: &str) -> String {
        format!("{namespace}:offsets")
    }

    pub fn counts_key(namespace: &str) -> String {
        format!("{namespace}:counts")
    }

    pub fn applied_key(namespace: &str) -> String {
        format!("{namespace}:applied")
    }
}

fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}:{partition}")
}

fn retryable(e: redis::RedisError) -> StageError {
    StageError::retryable_from("redis", e)
}

impl Stage for CountingStage {
    type Message = Event;

    fn name(&self) -> &str {
        "counting"
    }

    fn decode(&self, record: &RecordMeta, payload: Option<&[u8]>) -> Result<Event, Poison> {
        decode_message(record, payload)
    }

    async fn process(&mut self, batch: &Batch<Event>) -> Result<(), StageError> {
        if self.faults.retryable_failures > 0 {
            self.faults.retryable_failures -= 1;
            return Err(StageError::retryable("injected: store unavailable"));
        }
        let apply = redis::Script::new(APPLY);
        let mut script = apply.prepare_invoke();
        script
            .key(Self::offsets_key(&self.namespace))
            .key(Self::counts_key(&self.namespace))
            .key(Self::applied_key(&self.namespace))
            .arg(batch.ranges.len());
        for range in &batch.ranges {
            script
                .arg(partition_key(&range.topic, range.partition))
                .arg(range.last_offset);
        }
        for record in &batch.records {
            script
                .arg(partition_key(&record.meta.topic, record.meta.partition))
                .arg(record.meta.offset)
                .arg(&record.message.event_id);
        }
        let _applied: i64 = script
            .invoke_async(&mut self.redis)
            .await
            .map_err(retryable)?;
        if self.faults.crash_after_batches == Some(self.batches) {
            return Err(StageError::fatal("injected crash after the state write"));
        }
        self.batches += 1;
        Ok(())
    }

    async fn stored_offset(
        &mut self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StageError> {
        self.redis
            .hget(
                Self::offsets_key(&self.namespace),
                partition_key(topic, partition),
            )
            .await
            .map_err(retryable)
    }
}
