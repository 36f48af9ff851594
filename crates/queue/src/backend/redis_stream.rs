//! The Redis stream queue, `redis://HOST:PORT[/DB]?stream=NAME&group=GROUP`:
//! a stream read through a consumer group. It owns the mapping of the
//! [`Queue`] operations onto the group's pending entries list (PEL) and the
//! Lua scripts that do it; it does not own URL parsing or connecting
//! ([`super::redis_common`]).
//!
//! * Producers `XADD NAME * payload BYTES` (or any fields: a job's payload
//!   is its `payload` field if present, else all its fields as a JSON
//!   object of strings). The job id is the entry id.
//! * A claim first takes over a pending entry that is due (below), then
//!   reads a new one with `XREADGROUP GROUP g c COUNT 1 BLOCK ms STREAMS
//!   NAME >` on a dedicated connection, in slices of at most 1 s so due
//!   entries are noticed while waiting. `attempt` is the entry's delivery
//!   count.
//! * Due entries: those whose consumer has been idle (no claim, no
//!   heartbeat) for the visibility timeout, and those held by the reserved
//!   consumer `nullworker:retry` for the retry delay. [`Queue::fail`] hands a
//!   job to `nullworker:retry` with its idle time reset, so it is due after
//!   the retry delay; [`Queue::release`] hands it over with a huge idle
//!   time and its delivery count lowered by one, so it is due at once and
//!   the release costs no attempt. An abandoned entry that has had
//!   `max_attempts` deliveries is dead-lettered instead of handed out.
//!   Reclaiming happens inside claim, so [`Queue::requeue_expired`] has
//!   nothing to do and returns 0.
//! * Heartbeat: `XCLAIM … JUSTID` to the same consumer resets the idle
//!   time without counting a delivery.
//! * Ack: `XACK`, then the stream is trimmed (`XTRIM MINID`) below the
//!   oldest entry some group still needs (its oldest pending entry, or the
//!   first one not yet delivered to it). Entries are trimmed rather than `XDEL`ed, which
//!   keeps the stream small, stays safe when other groups read the same
//!   stream, and keeps the group's `lag` exact (Redis cannot compute lag
//!   across `XDEL` holes).
//! * Dead letters: `XADD NAME:dead * <original fields> original_id ID
//!   attempts N`, then `XACK`.
//! * Stats: backlog = the group's `lag` (`XINFO GROUPS`, Redis 7) plus the
//!   entries waiting at `nullworker:retry`; when Redis reports no lag (6.2,
//!   or entries deleted by someone else) the entries after the group's
//!   last delivered id are counted instead, up to [`LAG_COUNT_CAP`].
//!   In flight = the rest of the PEL (`XPENDING` summary). Dead =
//!   `XLEN NAME:dead`.
//! * Ack, heartbeat, fail and release check that the receipt's consumer
//!   still owns the entry; otherwise [`QueueError::Lost`].
//! * [`OpenMode::Existing`] requires the stream and group;
//!   [`OpenMode::Create`] runs `XGROUP CREATE NAME GROUP 0 MKSTREAM`, so a
//!   new group also sees the entries already in the stream.

use std::time::Duration;

use redis::streams::StreamInfoGroupsReply;
use redis::{RedisError, Script};
use tokio::time::Instant;

use super::redis_common::{block_slice, claim_deadline, millis, Redis};
use crate::{backend::OpenMode, FailOutcome, Job, Queue, QueueError, QueueOptions, QueueStats};

/// The consumer that holds failed and released entries until they are due.
const WAITING_ROOM: &str = "nullworker:retry";
/// Idle time given to a released entry: due at once for any visibility
/// timeout or retry delay (about three years).
const RELEASED_IDLE_MS: u64 = 100_000_000_000;
/// Most entries counted when Redis reports no lag for the group.
const LAG_COUNT_CAP: u64 = 100_000;

/// Lua helpers shared by the scripts below.
const LIB: &str = r"
local function fields(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
local function id_less(a, b)
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  if am ~= bm then return am < bm end
  return as < bs
end
-- The smallest id after id (id itself when its sequence is too large to add to).
local function next_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  local n = tonumber(seq)
  if n and n < 9007199254740991 then return ms .. '-' .. string.format('%d', n + 1) end
  return id
end
-- Drops entries below the oldest one any group still needs: its oldest
-- pending entry, or the first after the last one delivered to it.
local function trim(stream)
  local floor
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = fields(g)
    local low = next_id(info['last-delivered-id'])
    local summary = redis.call('XPENDING', stream, info['name'])
    if summary[1] > 0 then low = summary[2] end
    if not floor or id_less(low, floor) then floor = low end
  end
  if floor then redis.call('XTRIM', stream, 'MINID', floor) end
end
-- The delivery count of entry id if consumer holds it, else false.
local function held(stream, group, id, consumer)
  local p = redis.call('XPENDING', stream, group, id, id, 1)
  if p[1] and p[1][2] == consumer then return p[1][4] end
  return false
end
-- Copies entry id to the dead letters and acknowledges it.
local function bury(stream, dead, group, id, attempts)
  local e = redis.call('XRANGE', stream, id, id)
  if e[1] and e[1][2] then
    local args = {dead, '*'}
    for _, v in ipairs(e[1][2]) do args[#args + 1] = v end
    args[#args + 1] = 'original_id'
    args[#args + 1] = id
    args[#args + 1] = 'attempts'
    args[#args + 1] = tostring(attempts)
    redis.call('XADD', unpack(args))
  end
  redis.call('XACK', stream, group, id)
end
";

/// Takes over one due pending entry for a consumer.
/// KEYS: stream, dead. ARGV: group, consumer, visibility ms, retry delay
/// ms, waiting room, max_attempts. Returns {id, fields, deliveries} or nil.
const RECLAIM: &str = r"
local function take(id, min_idle, count)
  local r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], min_idle, id)
  if r[1] and r[1][2] then return {r[1][1], r[1][2], count + 1} end
  return false
end
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[4], '-', '+', 10, ARGV[5])) do
  local got = take(p[1], ARGV[4], p[4])
  if got then return got end
end
local buried = false
local got = false
for _, p in ipairs(redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', 100)) do
  if p[2] ~= ARGV[5] then
    if p[4] >= tonumber(ARGV[6]) then
      bury(KEYS[1], KEYS[2], ARGV[1], p[1], p[4])
      buried = true
    else
      got = take(p[1], ARGV[3], p[4])
      if got then break end
    end
  end
end
if buried then trim(KEYS[1]) end
return got
";

/// KEYS: stream. ARGV: group, consumer, id.
const HEARTBEAT: &str = r"
if not held(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
";

/// KEYS: stream. ARGV: group, consumer, id.
const ACK: &str = r"
if not held(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
trim(KEYS[1])
return 1
";

/// KEYS: stream, dead. ARGV: group, consumer, id, max_attempts, waiting room.
/// Returns -1 when not held, 1 when dead-lettered, 0 when retried.
const FAIL: &str = r"
local count = held(KEYS[1], ARGV[1], ARGV[3], ARGV[2])
if not count then return -1 end
if count >= tonumber(ARGV[4]) then
  bury(KEYS[1], KEYS[2], ARGV[1], ARGV[3], count)
  trim(KEYS[1])
  return 1
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[5], 0, ARGV[3], 'IDLE', 0, 'JUSTID')
return 0
";

/// KEYS: stream. ARGV: group, consumer, id, waiting room, released idle ms.
const RELEASE: &str = r"
local count = held(KEYS[1], ARGV[1], ARGV[3], ARGV[2])
if not count then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[4], 0, ARGV[3], 'IDLE', ARGV[5],
  'RETRYCOUNT', math.max(count - 1, 0), 'JUSTID')
return 1
";

/// KEYS: stream, dead. ARGV: group, waiting room, lag count cap.
const STATS: &str = r"
local info
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local t = fields(g)
  if t['name'] == ARGV[1] then info = t end
end
if not info then return redis.error_reply('NOGROUP no consumer group ' .. ARGV[1]) end
local lag = info['lag']
if not lag then
  lag = 0
  local from = '(' .. info['last-delivered-id']
  while lag < tonumber(ARGV[3]) do
    local batch = redis.call('XRANGE', KEYS[1], from, '+', 'COUNT', 1000)
    if #batch == 0 then break end
    lag = lag + #batch
    from = '(' .. batch[#batch][1]
  end
end
local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
local waiting = 0
if summary[1] > 0 then
  for _, c in ipairs(summary[4]) do
    if c[1] == ARGV[2] then waiting = tonumber(c[2]) end
  end
end
return {lag + waiting, summary[1] - waiting, redis.call('XLEN', KEYS[2])}
";

struct Scripts {
    reclaim: Script,
    heartbeat: Script,
    ack: Script,
    fail: Script,
    release: Script,
    stats: Script,
}

impl Scripts {
    fn new() -> Self {
        let with_lib = |body: &str| Script::new(&format!("{LIB}\n{body}"));
        Self {
            reclaim: with_lib(RECLAIM),
            heartbeat: with_lib(HEARTBEAT),
            ack: with_lib(ACK),
            fail: with_lib(FAIL),
            release: with_lib(RELEASE),
            stats: with_lib(STATS),
        }
    }
}

struct RedisStream {
    redis: Redis,
    stream: String,
    group: String,
    dead: String,
    options: QueueOptions,
    scripts: Scripts,
}

/// One stream entry as `XREADGROUP` returns it: id and flat fields.
type Entry = (String, Option<Vec<Vec<u8>>>);

pub(super) async fn open(
    server: &str,
    stream: &str,
    group: &str,
    options: QueueOptions,
    mode: OpenMode,
) -> Result<Box<dyn Queue>, QueueError> {
    let redis = Redis::connect(server).await?;
    let queue = RedisStream {
        redis,
        stream: stream.to_owned(),
        group: group.to_owned(),
        dead: format!("{stream}:dead"),
        options,
        scripts: Scripts::new(),
    };
    match mode {
        OpenMode::Create => queue.create().await?,
        OpenMode::Existing => queue.check_exists().await?,
    }
    Ok(Box::new(queue))
}

impl RedisStream {
    /// `XGROUP CREATE NAME GROUP 0 MKSTREAM`; an existing group is fine.
    async fn create(&self) -> Result<(), QueueError> {
        let mut cmd = redis::cmd("XGROUP");
        cmd.arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM");
        match self.redis.query::<()>(&cmd).await {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(self.error("create", e)),
        }
    }

    /// The stream and the group must exist.
    async fn check_exists(&self) -> Result<(), QueueError> {
        let mut cmd = redis::cmd("XINFO");
        cmd.arg("GROUPS").arg(&self.stream);
        let reply: StreamInfoGroupsReply = self
            .redis
            .query(&cmd)
            .await
            .map_err(|e| self.error("open", e))?;
        if reply.groups.iter().any(|g| g.name == self.group) {
            Ok(())
        } else {
            Err(self.missing())
        }
    }

    fn missing(&self) -> QueueError {
        missing(&self.stream, &self.group)
    }

    /// A command error; a missing stream or group is [`QueueError::Missing`].
    fn error(&self, op: &'static str, err: RedisError) -> QueueError {
        if is_missing(&err) {
            self.missing()
        } else {
            self.redis.error(op, err)
        }
    }

    /// The consumer a receipt names, or `Lost` for a receipt this backend
    /// never issued.
    fn holder<'j>(&self, job: &'j Job) -> Result<&'j str, QueueError> {
        if job.receipt.is_empty() || job.receipt == WAITING_ROOM {
            return Err(QueueError::Lost { id: job.id.clone() });
        }
        Ok(&job.receipt)
    }

    /// Takes over a due pending entry (see the module doc), if any.
    async fn reclaim(&self, consumer: &str) -> Result<Option<Job>, QueueError> {
        let got: Option<(String, Vec<Vec<u8>>, u64)> = self
            .scripts
            .reclaim
            .key(&self.stream)
            .key(&self.dead)
            .arg(&self.group)
            .arg(consumer)
            .arg(millis(self.options.visibility_timeout))
            .arg(millis(self.options.retry_delay))
            .arg(WAITING_ROOM)
            .arg(self.options.max_attempts)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.error("claim", e))?;
        Ok(got.map(|(id, fields, deliveries)| Job {
            id,
            payload: payload_of(&fields),
            attempt: u32::try_from(deliveries.max(1)).unwrap_or(u32::MAX),
            receipt: consumer.to_owned(),
        }))
    }

    /// Reads one new entry for `consumer`, waiting up to `block` (not at
    /// all for `None`).
    async fn read(
        &self,
        consumer: &str,
        block: Option<Duration>,
    ) -> Result<Option<Job>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(1);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(millis(block));
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(">");
        let reply: Option<Vec<(String, Vec<Entry>)>> = match block {
            Some(_) => self.redis.query_blocking(&cmd).await,
            None => self.redis.query(&cmd).await,
        }
        .map_err(|e| self.error("claim", e))?;
        let entry = reply
            .into_iter()
            .flatten()
            .flat_map(|(_, entries)| entries)
            .next();
        Ok(entry.map(|(id, fields)| Job {
            id,
            payload: payload_of(&fields.unwrap_or_default()),
            attempt: 1,
            receipt: consumer.to_owned(),
        }))
    }

    /// Runs a script over one held entry; its integer answer.
    async fn on_held(
        &self,
        op: &'static str,
        script: &Script,
        job: &Job,
        extra: &[String],
    ) -> Result<i64, QueueError> {
        let consumer = self.holder(job)?;
        let mut invocation = script.key(&self.stream);
        invocation
            .key(&self.dead)
            .arg(&self.group)
            .arg(consumer)
            .arg(&job.id);
        for arg in extra {
            invocation.arg(arg);
        }
        invocation
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.error(op, e))
    }
}

#[async_trait::async_trait]
impl Queue for RedisStream {
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (backlog, in_flight, dead): (u64, u64, u64) = self
            .scripts
            .stats
            .key(&self.stream)
            .key(&self.dead)
            .arg(&self.group)
            .arg(WAITING_ROOM)
            .arg(LAG_COUNT_CAP)
            .invoke_async(&mut self.redis.conn())
            .await
            .map_err(|e| self.error("stats", e))?;
        Ok(QueueStats {
            backlog,
            in_flight,
            dead,
        })
    }

    async fn claim(&self, consumer: &str, wait: Duration) -> Result<Option<Job>, QueueError> {
        if consumer.is_empty() || consumer == WAITING_ROOM {
            return Err(QueueError::Config(format!(
                "consumer name {consumer:?} is reserved or empty; expected a name unique to the claiming process"
            )));
        }
        let deadline = claim_deadline(wait);
        loop {
            if let Some(job) = self.reclaim(consumer).await? {
                return Ok(Some(job));
            }
            let block = block_slice(deadline.saturating_duration_since(Instant::now()));
            if let Some(job) = self.read(consumer, block).await? {
                return Ok(Some(job));
            }
            if block.is_none() || Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    async fn heartbeat(&self, job: &Job) -> Result<(), QueueError> {
        match self
            .on_held("heartbeat", &self.scripts.heartbeat, job, &[])
            .await?
        {
            0 => Err(QueueError::Lost { id: job.id.clone() }),
            _ => Ok(()),
        }
    }

    async fn ack(&self, job: &Job) -> Result<(), QueueError> {
        match self.on_held("ack", &self.scripts.ack, job, &[]).await? {
            0 => Err(QueueError::Lost { id: job.id.clone() }),
            _ => Ok(()),
        }
    }

    async fn fail(&self, job: &Job) -> Result<FailOutcome, QueueError> {
        let extra = [
            self.options.max_attempts.to_string(),
            WAITING_ROOM.to_owned(),
        ];
        match self
            .on_held("fail", &self.scripts.fail, job, &extra)
            .await?
        {
            0 => Ok(FailOutcome::Retried),
            1 => Ok(FailOutcome::DeadLettered),
            _ => Err(QueueError::Lost { id: job.id.clone() }),
        }
    }

    async fn release(&self, job: &Job) -> Result<(), QueueError> {
        let extra = [WAITING_ROOM.to_owned(), RELEASED_IDLE_MS.to_string()];
        match self
            .on_held("release", &self.scripts.release, job, &extra)
            .await?
        {
            0 => Err(QueueError::Lost { id: job.id.clone() }),
            _ => Ok(()),
        }
    }

    /// Claims take over expired entries themselves (see the module doc).
    async fn requeue_expired(&self) -> Result<u64, QueueError> {
        Ok(0)
    }

    async fn push(&self, payload: &[u8]) -> Result<String, QueueError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream).arg("*").arg("payload").arg(payload);
        self.redis
            .query(&cmd)
            .await
            .map_err(|e| self.error("push", e))
    }
}

/// The missing-queue error, with how to create it.
fn missing(stream: &str, group: &str) -> QueueError {
    QueueError::Missing {
        what: format!("stream {stream:?} / consumer group {group:?}"),
        hint: format!(
            "create it with `nullworker queue create --queue URL` or XGROUP CREATE {stream} {group} $ MKSTREAM"
        ),
    }
}

/// Whether Redis answered that the stream or the group does not exist.
fn is_missing(err: &RedisError) -> bool {
    let text = err.to_string();
    err.code() == Some("NOGROUP") || text.contains("NOGROUP") || text.contains("no such key")
}

/// A job's payload from an entry's flat `[field, value, …]` list: the
/// `payload` field if there is one, else every field as a JSON object of
/// strings (bytes that are not UTF-8 replaced by U+FFFD).
fn payload_of(fields: &[Vec<u8>]) -> Vec<u8> {
    let pairs = fields.chunks_exact(2).map(|pair| (&pair[0], &pair[1]));
    if let Some((_, value)) = pairs.clone().find(|(key, _)| key.as_slice() == b"payload") {
        return value.clone();
    }
    let object: serde_json::Map<String, serde_json::Value> = pairs
        .map(|(key, value)| {
            (
                String::from_utf8_lossy(key).into_owned(),
                serde_json::Value::String(String::from_utf8_lossy(value).into_owned()),
            )
        })
        .collect();
    serde_json::to_vec(&object).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry's fields as `(name, value)` pairs.
    type Fields<'a> = &'a [(&'a str, &'a [u8])];

    fn flat(pairs: Fields<'_>) -> Vec<Vec<u8>> {
        pairs
            .iter()
            .flat_map(|(k, v)| [k.as_bytes().to_vec(), v.to_vec()])
            .collect()
    }

    #[test]
    fn payload_field_or_fields_as_json() {
        let table: &[(Fields<'_>, &[u8])] = &[
            (&[("payload", b"\x00raw\xff")], b"\x00raw\xff"),
            (&[("kind", b"resize"), ("payload", b"p"), ("x", b"1")], b"p"),
            (
                &[("kind", b"resize"), ("size", b"42")],
                br#"{"kind":"resize","size":"42"}"#,
            ),
            (&[("bad", b"\xff")], "{\"bad\":\"\u{fffd}\"}".as_bytes()),
            (&[], b"{}"),
        ];
        for (fields, want) in table {
            assert_eq!(payload_of(&flat(fields)), *want, "{fields:?}");
        }
    }

    #[test]
    fn missing_names_stream_group_and_fix() {
        let text = missing("jobs", "workers").to_string();
        assert_eq!(
            text,
            "stream \"jobs\" / consumer group \"workers\" does not exist; create it with \
`nullworker queue create --queue URL` or XGROUP CREATE jobs workers $ MKSTREAM"
        );
    }
}
