//! What the Redis list and Redis stream backends share: connecting with a
//! short timeout (an unreachable server is an error at open, not a hang),
//! the shared connection for ordinary commands, the dedicated connection
//! for blocking commands, and error mapping.
//!
//! Blocking commands (`BLMOVE`, `XREADGROUP … BLOCK`) never run on the
//! shared multiplexed connection: Redis answers one connection's commands in
//! order, so a blocked read would stall every heartbeat and ack behind it.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue, RedisError};
use tokio::sync::Mutex;

use crate::QueueError;

/// How long connecting to the server may take before `open` gives up.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an ordinary command (or script) may take to be answered.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest single blocking read. A claim that waits longer blocks in slices
/// and between them reclaims expired jobs and promotes due retries, so an
/// idle consumer notices those within a slice even when nothing else polls.
pub(super) const BLOCK_SLICE: Duration = Duration::from_secs(1);
/// Oldest server accepted: `BLMOVE`, `LPOS`, `XPENDING … IDLE` and
/// exclusive `XRANGE` bounds all need 6.2.
const MIN_VERSION: (u32, u32) = (6, 2);

/// The backend name in [`QueueError::Backend`].
pub(super) const BACKEND: &str = "redis";

/// Connections to one Redis server.
pub(super) struct Redis {
    client: redis::Client,
    manager: ConnectionManager,
    /// Where the server is, without credentials (for messages).
    addr: String,
    /// The dedicated connection for blocking reads, reused between claims;
    /// taken out while in use and dropped after an error or a cancelled
    /// read, so a stale reply can never reach the next command.
    blocking: Mutex<Option<MultiplexedConnection>>,
}

impl Redis {
    /// Connects to `server` (`redis://[:PASSWORD@]HOST:PORT[/DB]`), checks
    /// that it answers and is recent enough.
    pub(super) async fn connect(server: &str) -> Result<Self, QueueError> {
        let addr = without_password(server);
        let unreachable = |reason: String| QueueError::Unreachable {
            what: "redis",
            addr: addr.clone(),
            reason,
        };
        let client = redis::Client::open(server).map_err(|e| unreachable(e.to_string()))?;
        // The blocking connection doubles as the reachability check: one
        // attempt with a short timeout, where the manager would retry.
        let blocking = tokio::time::timeout(CONNECT_TIMEOUT, open_blocking(&client))
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(1));
        let manager = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        let redis = Self {
            client,
            manager,
            addr,
            blocking: Mutex::new(Some(blocking)),
        };
        let info: String = redis
            .query(redis::cmd("INFO").arg("server"))
            .await
            .map_err(|e| redis.error("open", e))?;
        check_version(&info).map_err(|reason| QueueError::Backend {
            backend: BACKEND,
            op: "open",
            reason: format!("{} {reason}", redis.addr),
        })?;
        Ok(redis)
    }

    /// The shared connection for ordinary commands and scripts.
    pub(super) fn conn(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Runs an ordinary command on the shared connection.
    pub(super) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        cmd.query_async(&mut self.conn()).await
    }

    /// Runs a blocking command on a dedicated connection. Concurrent claims
    /// through one queue each get their own connection.
    pub(super) async fn query_blocking<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
    ) -> Result<T, RedisError> {
        match self.blocking.try_lock() {
            Ok(mut slot) => {
                let mut conn = match slot.take() {
                    Some(conn) => conn,
                    None => open_blocking(&self.client).await?,
                };
                let result = cmd.query_async(&mut conn).await;
                if result.is_ok() {
                    *slot = Some(conn);
                }
                result
            }
            Err(_) => {
                let mut conn = open_blocking(&self.client).await?;
                cmd.query_async(&mut conn).await
            }
        }
    }

    /// A command error as a [`QueueError`] naming the operation.
    pub(super) fn error(&self, op: &'static str, err: RedisError) -> QueueError {
        QueueError::Backend {
            backend: BACKEND,
            op,
            reason: format!("{err} (server {})", self.addr),
        }
    }
}

/// A connection for blocking reads: no response timeout of its own beyond
/// one [`BLOCK_SLICE`] plus the ordinary allowance.
async fn open_blocking(client: &redis::Client) -> Result<MultiplexedConnection, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(BLOCK_SLICE + RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// `server` with any password replaced by `***`.
pub(super) fn without_password(server: &str) -> String {
    match url::Url::parse(server) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => server.to_owned(),
    }
}

/// Checks the `redis_version:` line of `INFO server`.
fn check_version(info: &str) -> Result<(), String> {
    let version = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("redis_version:"))
        .ok_or_else(|| "did not report redis_version in INFO server".to_owned())?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_VERSION {
        return Err(format!(
            "runs Redis {version}; expected {}.{} or newer",
            MIN_VERSION.0, MIN_VERSION.1
        ));
    }
    Ok(())
}

/// When a claim waiting `wait` gives up; waits beyond a year are a year
/// (an `Instant` cannot be arbitrarily far away).
pub(super) fn claim_deadline(wait: Duration) -> tokio::time::Instant {
    const LONGEST: Duration = Duration::from_secs(365 * 86_400);
    tokio::time::Instant::now() + wait.min(LONGEST)
}

/// How long one blocking read of a claim may wait, given what is left of
/// the claim's wait; `None` when nothing is left (read without blocking).
pub(super) fn block_slice(remaining: Duration) -> Option<Duration> {
    let slice = remaining.min(BLOCK_SLICE);
    (slice.as_millis() > 0).then_some(slice)
}

/// Milliseconds of `d`, for `PX`, `IDLE` and `BLOCK` arguments.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let table = [
            (
                "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n",
                Ok(()),
            ),
            ("redis_version:6.2.0\r\n", Ok(())),
            ("redis_version:10.0.1\r\n", Ok(())),
            (
                "redis_version:6.0.16\r\n",
                Err("runs Redis 6.0.16; expected 6.2 or newer"),
            ),
            (
                "redis_mode:standalone\r\n",
                Err("did not report redis_version in INFO server"),
            ),
        ];
        for (info, want) in table {
            assert_eq!(check_version(info), want.map_err(str::to_owned), "{info:?}");
        }
    }

    #[test]
    fn slices() {
        let table = [
            (Duration::ZERO, None),
            (Duration::from_micros(900), None),
            (Duration::from_millis(1), Some(Duration::from_millis(1))),
            (Duration::from_millis(250), Some(Duration::from_millis(250))),
            (Duration::from_secs(30), Some(BLOCK_SLICE)),
        ];
        for (remaining, want) in table {
            assert_eq!(block_slice(remaining), want, "{remaining:?}");
        }
    }

    #[test]
    fn hides_passwords() {
        assert_eq!(without_password("redis://:pw@h:1/2"), "redis://:***@h:1/2");
        assert_eq!(without_password("redis://h:1"), "redis://h:1");
    }
}
