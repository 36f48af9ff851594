//! The Redis list queue, `redis://HOST:PORT[/DB]?list=NAME`: a plain list
//! that producers feed with `LPUSH NAME payload` (so `redis-cli LPUSH jobs
//! '…'` is a valid producer: payloads are raw bytes, no envelope). It owns
//! the keys beside the list and the Lua scripts that change them; it does
//! not own URL parsing or connecting ([`super::redis_common`]).
//!
//! | Key | Type | Holds |
//! |---|---|---|
//! | `NAME` | list | waiting jobs; producers push on the left, consumers take from the right (FIFO) |
//! | `NAME:processing:CONSUMER` | list | jobs one consumer holds |
//! | `NAME:consumer:CONSUMER` | string with `PX` | the consumer's heartbeat; expires one visibility timeout after the last one |
//! | `NAME:consumers` | set | consumers that may hold jobs |
//! | `NAME:attempts` | hash | deliveries per job id |
//! | `NAME:delayed` | sorted set | failed jobs waiting out their retry delay, scored by due time (server ms) |
//! | `NAME:dead` | list | dead letters, newest on the left |
//!
//! * A claim takes the oldest job with `BLMOVE NAME NAME:processing:C RIGHT
//!   LEFT` (atomic: a job is always in exactly one list) on a dedicated
//!   connection, after registering the consumer and setting its heartbeat
//!   key to outlive the blocking read.
//! * Jobs of a consumer whose heartbeat key has expired go back to the end
//!   of `NAME` that consumers take from, so they run next; one Lua script
//!   checks and moves, so several processes may do this at once. Every
//!   claim (and each 1 s slice of a long claim) does it too, as does
//!   [`Queue::requeue_expired`]. A job that has had `max_attempts`
//!   deliveries goes to the dead letters instead (a job that kills its
//!   consumer every time).
//! * Ids: a list element carries nothing but its bytes, so a job's id is the
//!   SHA-1 of its payload in hex (computed by the server, `redis.sha1hex`);
//!   identical payloads share an id and an attempt count. Ack and release
//!   remove one element equal to the payload, which is right even when
//!   identical payloads are in flight.
//! * A retry due time is the server's clock (`TIME`), never a consumer's,
//!   so consumers on hosts whose clocks disagree still agree on it. Due
//!   retries move back to `NAME` on every claim, stats and requeue.
//! * The receipt is the consumer's name; ack, heartbeat, fail and release
//!   of a job that is no longer in that consumer's processing list (it was
//!   requeued after the visibility timeout) are [`QueueError::Lost`].
//! * Consumer names must be unique per process (the trait asks for that):
//!   a process that reuses the name of a crashed one also takes over, and
//!   keeps alive, the jobs left in its processing list.
//! * [`OpenMode`] has nothing to create: a list exists once a job is pushed.
//!
//! Scripts touch keys they derive from `NAME` and the consumers set, so the
//! queue needs a single Redis server (not Cluster).

use std::time::Duration;

use redis::Script;
use tokio::time::Instant;

use super::redis_common::{block_slice, claim_deadline, millis, Redis};
use crate::{backend::OpenMode, FailOutcome, Job, Queue, QueueError, QueueOptions, QueueStats};

/// Lua helpers shared by the scripts below.
const LIB: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Moves due retries (members are 16 hex digits, ':', payload) to the end
-- consumers take from.
local function promote(list, delayed)
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now_ms(), 'LIMIT', 0, 1000)
  for _, member in ipairs(due) do
    redis.call('RPUSH', list, string.sub(member, 18))
    redis.call('ZREM', delayed, member)
  end
end
-- Hands back the jobs of every consumer whose heartbeat key has expired,
-- oldest claim next in line, or dead-letters those out of attempts.
local function requeue(list, consumers, attempts, dead, prefix, max_attempts)
  local moved = 0
  for _, c in ipairs(redis.call('SMEMBERS', consumers)) do
    if redis.call('EXISTS', prefix .. ':consumer:' .. c) == 0 then
      local processing = prefix .. ':processing:' .. c
      while true do
        local job = redis.call('LPOP', processing)
        if not job then break end
        local id = redis.sha1hex(job)
        if tonumber(redis.call('HGET', attempts, id) or 0) >= max_attempts then
          redis.call('LPUSH', dead, job)
          redis.call('HDEL', attempts, id)
        else
          redis.call('RPUSH', list, job)
          moved = moved + 1
        end
      end
      redis.call('SREM', consumers, c)
    end
  end
  return moved
end
";

/// Before a blocking read: promote, requeue, register the consumer.
/// KEYS: list, delayed, consumers, attempts, dead, heartbeat.
/// ARGV: prefix, max_attempts, consumer, heartbeat ms.
const PREPARE: &str = r"
promote(KEYS[1], KEYS[2])
local moved = requeue(KEYS[1], KEYS[3], KEYS[4], KEYS[5], ARGV[1], tonumber(ARGV[2]))
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('SET', KEYS[6], '1', 'PX', ARGV[4])
return moved
";

/// After a job was moved into the processing list: count the delivery.
/// KEYS: attempts, heartbeat, consumers. ARGV: payload, heartbeat ms, consumer.
const DELIVERED: &str = r"
local id = redis.sha1hex(ARGV[1])
local attempt = redis.call('HINCRBY', KEYS[1], id, 1)
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return {id, attempt}
";

/// KEYS: processing, heartbeat, consumers. ARGV: payload, heartbeat ms, consumer.
const HEARTBEAT: &str = r"
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
return 1
";

/// KEYS: processing, attempts. ARGV: payload.
const ACK: &str = r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], redis.sha1hex(ARGV[1]))
return 1
";

/// KEYS: processing, attempts, list, delayed, dead.
/// ARGV: payload, max_attempts, retry delay ms, nonce, attempt of the job.
/// Returns -1 when not held, 1 when dead-lettered, 0 when retried.
const FAIL: &str = r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return -1 end
local id = redis.sha1hex(ARGV[1])
local attempts = tonumber(redis.call('HGET', KEYS[2], id) or ARGV[5])
if attempts >= tonumber(ARGV[2]) then
  redis.call('LPUSH', KEYS[5], ARGV[1])
  redis.call('HDEL', KEYS[2], id)
  return 1
end
local delay = tonumber(ARGV[3])
if delay <= 0 then
  redis.call('RPUSH', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[4], now_ms() + delay, ARGV[4] .. ':' .. ARGV[1])
end
return 0
";

/// KEYS: processing, attempts, list. ARGV: payload.
const RELEASE: &str = r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('RPUSH', KEYS[3], ARGV[1])
local id = redis.sha1hex(ARGV[1])
if redis.call('HINCRBY', KEYS[2], id, -1) <= 0 then redis.call('HDEL', KEYS[2], id) end
return 1
";

/// KEYS: list, delayed, consumers, attempts, dead. ARGV: prefix, max_attempts.
const REQUEUE: &str = r"
promote(KEYS[1], KEYS[2])
return requeue(KEYS[1], KEYS[3], KEYS[4], KEYS[5], ARGV[1], tonumber(ARGV[2]))
";

/// KEYS: list, delayed, consumers, dead. ARGV: prefix.
const STATS: &str = r"
promote(KEYS[1], KEYS[2])
local in_flight = 0
for _, c in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  in_flight = in_flight + redis.call('LLEN', ARGV[1] .. ':processing:' .. c)
end
return {redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]), in_flight, redis.call('LLEN', KEYS[4])}
";

/// KEYS: list. ARGV: payload.
const PUSH: &str = r"
redis.call('LPUSH', KEYS[1], ARGV[1])
return redis.sha1hex(ARGV[1])
";

struct Scripts {
    prepare: Script,
    delivered: Script,
    heartbeat: Script,
    ack: Script,
    fail: Script,
    release: Script,
    requeue: Script,
    stats: Script,
    push: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_lib = |body: &str| Script::new(&format!("{LIB}\n{body}"));
        Self {
            prepare: with_lib(PREPARE),
            delivered: Script::new(DELIVERED),
            heartbeat: Script::new(HEARTBEAT),
            ack: Script::new(ACK),
            fail: with_lib(FAIL),
            release: Script::new(RELEASE),
            requeue: with_lib(REQUEUE),
            stats: with_lib(STATS),
            push: Script::new(PUSH),
        }
    }
}

/// The keys of one list queue.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Keys {
    list: String,
    consumers: String,
    attempts: String,
    delayed: String,
    dead: String,
}

impl Keys {
    fn new(list: &str) -> Self {
        Self {
            list: list.to_owned(),
            consumers: format!("{list}:consumers"),
            attempts: format!("{list}:attempts"),
            delayed: format!("{list}:delayed"),
            dead: format!("{list}:dead"),
        }
    }

    fn processing(&self, consumer: &str) -> String {
        format!("{}:processing:{consumer}", self.list)
    }

    fn heartbeat(&self, consumer: &str) -> String {
        format!("{}:consumer:{consumer}", self.list)
    }
}

struct RedisList {
    redis: Redis,
    keys: Keys,
    options: QueueOptions,
    scripts: Scripts,
}

pub(super) async fn open(
    server: &str,
    list: &str,
    options: QueueOptions,
    _mode: OpenMode,
) -> Result<Box<dyn Queue>, QueueError> {
    let redis = Redis::connect(server).await?;
    Ok(Box::new(RedisList {
        redis,
        keys: Keys::new(list),
        options,
        scripts: Scripts::new(),
    }))
}

impl RedisList {
    fn visibility_ms(&self) -> u64 {
        millis(self.options.visibility_timeout)
    }

    /// The consumer a receipt names, or `Lost` for a receipt this backend
    /// never issued.
    fn holder<'j>(&self, job: &'j Job) -> Result<&'j str, QueueError> {
        if job.receipt.is_empty() {
            return Err(QueueError::Lost { id: job.id.clone() });
        }
        Ok(&job.receipt)
    }

    /// Promotes due retries, requeues expired claims and registers
    /// `consumer` with a heartbeat that outlives a read of `block`.
    async fn prepare(&self, consumer: &str, block: Duration) -> Result<(), QueueError> {
        let heartbeat_ms = self.visibility_ms().saturating_add(millis(block));
        let _: u64 = self
            .scripts
            .prepare
            .key(&self.keys.list)
            .key(&self.keys.delayed)
            .key(&self.keys.consumers)
            .key(&self.keys.attempts)
            .key(&self.keys.dead)
            .key(self.keys.heartbeat(consumer))
            .arg(&self.keys.list)
            .arg(self.options.max_attempts)
            .arg(consumer)
            .arg(heartbeat_ms)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.redis.error("claim", e))?;
        Ok(())
    }

    /// Moves the oldest job into `consumer`'s processing list, waiting up
    /// to `block` (not at all for `None`).
    async fn take(
        &self,
        consumer: &str,
        block: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, QueueError> {
        let processing = self.keys.processing(consumer);
        let result = match block {
            Some(block) => {
                let mut cmd = redis::cmd("BLMOVE");
                cmd.arg(&self.keys.list)
                    .arg(&processing)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .arg(block.as_secs_f64());
                self.redis.query_blocking(&cmd).await
            }
            None => {
                let mut cmd = redis::cmd("LMOVE");
                cmd.arg(&self.keys.list)
                    .arg(&processing)
                    .arg("RIGHT")
                    .arg("LEFT");
                self.redis.query(&cmd).await
            }
        };
        result.map_err(|e| self.redis.error("claim", e))
    }
}

#[async_trait::async_trait]
impl Queue for RedisList {
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (backlog, in_flight, dead): (u64, u64, u64) = self
            .scripts
            .stats
            .key(&self.keys.list)
            .key(&self.keys.delayed)
            .key(&self.keys.consumers)
            .key(&self.keys.dead)
            .arg(&self.keys.list)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.redis.error("stats", e))?;
        Ok(QueueStats {
            backlog,
            in_flight,
            dead,
        })
    }

    async fn claim(&self, consumer: &str, wait: Duration) -> Result<Option<Job>, QueueError> {
        if consumer.is_empty() {
            return Err(QueueError::Config(
                "consumer name \"\" is empty; expected a name unique to the claiming process"
                    .into(),
            ));
        }
        let deadline = claim_deadline(wait);
        loop {
            let block = block_slice(deadline.saturating_duration_since(Instant::now()));
            self.prepare(consumer, block.unwrap_or_default()).await?;
            let Some(payload) = self.take(consumer, block).await? else {
                if block.is_none() || Instant::now() >= deadline {
                    return Ok(None);
                }
                continue;
            };
            let (id, attempt): (String, u64) = self
                .scripts
                .delivered
                .key(&self.keys.attempts)
                .key(self.keys.heartbeat(consumer))
                .key(&self.keys.consumers)
                .arg(&payload)
                .arg(self.visibility_ms())
                .arg(consumer)
                .invoke_async(&mut self.redis.conn())
                .await
                .map_err(|e| self.redis.error("claim", e))?;
            return Ok(Some(Job {
                id,
                payload,
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                receipt: consumer.to_owned(),
            }));
        }
    }

    async fn heartbeat(&self, job: &Job) -> Result<(), QueueError> {
        let consumer = self.holder(job)?;
        let held: i64 = self
            .scripts
            .heartbeat
            .key(self.keys.processing(consumer))
            .key(self.keys.heartbeat(consumer))
            .key(&self.keys.consumers)
            .arg(&job.payload)
            .arg(self.visibility_ms())
            .arg(consumer)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.redis.error("heartbeat", e))?;
        if held == 0 {
            return Err(QueueError::Lost { id: job.id.clone() });
        }
        Ok(())
    }

    async fn ack(&self, job: &Job) -> Result<(), QueueError> {
        let consumer = self.holder(job)?;
        let removed: i64 = self
            .scripts
            .ack
            .key(self.keys.processing(consumer))
            .key(&self.keys.attempts)
            .arg(&job.payload)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.redis.error("ack", e))?;
        if removed == 0 {
            return Err(QueueError::Lost { id: job.id.clone() });
        }
        Ok(())
    }

    async fn fail(&self, job: &Job) -> Result<FailOutcome, QueueError> {
        let consumer = self.holder(job)?;
        let nonce = format!("{:016x}", rand::random::<u64>());
        let outcome: i64 = self
            .scripts
            .fail
            .key(self.keys.processing(consumer))
            .key(&self.keys.attempts)
            .key(&self.keys.list)
            .key(&self.keys.delayed)
            .key(&self.keys.dead)
            .arg(&job.payload)
            .arg(self.options.max_attempts)
            .arg(millis(self.options.retry_delay))
            .arg(nonce)
            .arg(job.attempt)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.redis.error("fail", e))?;
        match outcome {
            0 => Ok(FailOutcome::Retried),
            1 => Ok(FailOutcome::DeadLettered),
            _ => Err(QueueError::Lost { id: job.id.clone() }),
        }
    }

    async fn release(&self, job: &Job) -> Result<(), QueueError> {
        let consumer = self.holder(job)?;
        let released: i64 = self
            .scripts
            .release
            .key(self.keys.processing(consumer))
            .key(&self.keys.attempts)
            .key(&self.keys.list)
            .arg(&job.payload)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.redis.error("release", e))?;
        if released == 0 {
            return Err(QueueError::Lost { id: job.id.clone() });
        }
        Ok(())
    }

    async fn requeue_expired(&self) -> Result<u64, QueueError> {
        self.scripts
            .requeue
            .key(&self.keys.list)
            .key(&self.keys.delayed)
            .key(&self.keys.consumers)
            .key(&self.keys.attempts)
            .key(&self.keys.dead)
            .arg(&self.keys.list)
            .arg(self.options.max_attempts)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.redis.error("requeue", e))
    }

    async fn push(&self, payload: &[u8]) -> Result<String, QueueError> {
        self.scripts
            .push
            .key(&self.keys.list)
            .arg(payload)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.redis.error("push", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_derive_from_the_list_name() {
        let keys = Keys::new("jobs");
        assert_eq!(keys.consumers, "jobs:consumers");
        assert_eq!(keys.attempts, "jobs:attempts");
        assert_eq!(keys.delayed, "jobs:delayed");
        assert_eq!(keys.dead, "jobs:dead");
        assert_eq!(keys.processing("w-1"), "jobs:processing:w-1");
        assert_eq!(keys.heartbeat("w-1"), "jobs:consumer:w-1");
    }
}
