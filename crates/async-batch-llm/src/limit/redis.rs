//! Shared limits in Redis: each scope's cooldown and RPM/TPM window as a
//! few keys, changed only by Lua scripts (atomic in Redis) timed by Redis's
//! own clock (`TIME`), so the hosts' clocks never matter.
//!
//! Keys of scope `S` (its name carries a key fingerprint, never a key;
//! `{S}` is a hash tag, so a cluster keeps them on one node):
//!
//! | key            | type   | holds                                          |
//! |----------------|--------|------------------------------------------------|
//! | `abl:{S}:w`    | zset   | reservation id → when it was admitted (ms)     |
//! | `abl:{S}:t`    | hash   | reservation id → its tokens (estimate, then used) |
//! | `abl:{S}:m`    | hash   | `epoch`, `seq`, `toksum` (tokens in the window), `rpm`, `tpm`, `span`, `aimd` (adaptive decreases) |
//! | `abl:{S}:c`    | string | the cooldown's end (ms), only ever extended     |
//!
//! `epoch` is Redis's time (µs, as text) when the scope's state began. A
//! Redis that restarted empty has a new epoch: the processes put their
//! recent admissions back, and a late settle of a reservation of the old
//! epoch (which names its epoch) changes nothing.
//!
//! A reservation leaves the window a minute (or the provider's shorter
//! window, the limits scaled to it; plus the margin) after it was
//! admitted, settled or not. That is its lease: a process killed mid-call
//! leaks nothing past it, and until then its calls stay counted, as the
//! provider counted the ones it had sent. Every key expires when the scope
//! has been idle for a while (the window's keys after two windows, the
//! learned limits after a day), so Redis keeps no garbage.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use super::shared::{Grant, Reserved, SharedError, SharedLimits, SharedQuota};

const RESERVE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local epoch = redis.call('HGET', KEYS[3], 'epoch')
if not epoch then
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', KEYS[3], 'epoch', epoch, 'seq', 0)
end
redis.call('PEXPIRE', KEYS[3], 86400000)
local cd = tonumber(redis.call('GET', KEYS[4]) or '0')
local aimd = tonumber(redis.call('HGET', KEYS[3], 'aimd') or '0')
if cd > now then return {2, cd - now, epoch, aimd} end
local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
if rpm > 0 then redis.call('HSET', KEYS[3], 'rpm', ARGV[1])
else rpm = tonumber(redis.call('HGET', KEYS[3], 'rpm') or '0') end
if tpm > 0 then redis.call('HSET', KEYS[3], 'tpm', ARGV[2])
else tpm = tonumber(redis.call('HGET', KEYS[3], 'tpm') or '0') end
local window = tonumber(ARGV[5])
if window > 0 then redis.call('HSET', KEYS[3], 'span', ARGV[5])
else window = tonumber(redis.call('HGET', KEYS[3], 'span') or '60000') end
local scale = window / 60000
local span = window + tonumber(ARGV[4])
local want = tonumber(ARGV[3])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - span)
if #old > 0 then
  local freed = 0
  for i = 1, #old do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], old[i]) or '0')
    redis.call('HDEL', KEYS[2], old[i])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
  redis.call('HINCRBY', KEYS[3], 'toksum', -freed)
end
local count = redis.call('ZCARD', KEYS[1])
local toksum = tonumber(redis.call('HGET', KEYS[3], 'toksum') or '0')
local wait = 0
if rpm > 0 then
  local limit = math.max(1, math.floor(rpm * scale))
  if count + 1 > limit then
    local e = redis.call('ZRANGE', KEYS[1], count - limit, count - limit, 'WITHSCORES')
    wait = math.max(wait, tonumber(e[2]) + span - now)
  end
end
if tpm > 0 then tpm = math.max(1, math.floor(tpm * scale)) end
if tpm > 0 and count > 0 and toksum + want > tpm then
  local need = toksum + want - tpm
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local freed = 0
  for i = 1, #entries, 2 do
    freed = freed + tonumber(redis.call('HGET', KEYS[2], entries[i]) or '0')
    if freed >= need then
      wait = math.max(wait, tonumber(entries[i + 1]) + span - now)
      break
    end
  end
end
if wait > 0 then return {1, math.max(1, math.ceil(wait)), epoch, aimd} end
local id = redis.call('HINCRBY', KEYS[3], 'seq', 1)
redis.call('ZADD', KEYS[1], now, id)
redis.call('HSET', KEYS[2], id, want)
redis.call('HINCRBY', KEYS[3], 'toksum', want)
redis.call('PEXPIRE', KEYS[1], 2 * span)
redis.call('PEXPIRE', KEYS[2], 2 * span)
return {0, id, epoch, aimd}
";

const SEED: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local span = tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local age = tonumber(ARGV[i])
  if age < span then
    local id = redis.call('HINCRBY', KEYS[3], 'seq', 1)
    redis.call('ZADD', KEYS[1], now - age, id)
    redis.call('HSET', KEYS[2], id, ARGV[i + 1])
    redis.call('HINCRBY', KEYS[3], 'toksum', tonumber(ARGV[i + 1]))
  end
end
redis.call('PEXPIRE', KEYS[1], 2 * span)
redis.call('PEXPIRE', KEYS[2], 2 * span)
return 1
";

const SETTLE: &str = r"
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[3] then return 0 end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if not old then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'toksum', tonumber(ARGV[2]) - tonumber(old))
return 1
";

const CANCEL: &str = r"
if redis.call('HGET', KEYS[3], 'epoch') ~= ARGV[2] then return 0 end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'toksum', -tonumber(old))
return 1
";

const EXTEND: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local length = tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + length > cur then
  redis.call('SET', KEYS[1], now + length, 'PX', length + 1000)
end
return 1
";

/// Shared limits in one Redis database.
pub struct RedisLimits {
    connection: ConnectionManager,
    /// The URL without its password, for messages.
    shown: String,
    reserve: Script,
    settle: Script,
    cancel: Script,
    extend: Script,
    seed: Script,
}

impl std::fmt::Debug for RedisLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimits")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// Keys of `scope`: braces in its name would break the hash tag.
fn keys(scope: &str) -> [String; 4] {
    let tag: String = scope
        .chars()
        .map(|c| if matches!(c, '{' | '}') { '_' } else { c })
        .collect();
    ["w", "t", "m", "c"].map(|k| format!("abl:{{{tag}}}:{k}"))
}

impl RedisLimits {
    /// Connects to `url` (`redis://host:port/db`, `rediss://` for TLS
    /// where the redis crate was built with it). Fails at once when Redis
    /// cannot be reached now; later outages pause admission instead.
    pub async fn connect(url: &str) -> Result<Self, SharedError> {
        let shown = crate::secret::url_without_password(url);
        let err = |what: &str, e: &RedisError| SharedError {
            backend: "redis",
            message: format!("{what} {shown}: {}", crate::secret::redact(&e.to_string())),
        };
        let client = redis::Client::open(url).map_err(|e| err("cannot use", &e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| err("cannot reach", &e))?;
        Ok(Self {
            connection,
            shown,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
            cancel: Script::new(CANCEL),
            extend: Script::new(EXTEND),
            seed: Script::new(SEED),
        })
    }

    fn error(&self, e: &RedisError) -> SharedError {
        SharedError {
            backend: "redis",
            message: format!("{}: {}", self.shown, crate::secret::redact(&e.to_string())),
        }
    }
}

impl SharedLimits for RedisLimits {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn reserve<'a>(
        &'a self,
        scope: &'a str,
        quota: SharedQuota,
        tokens: u64,
    ) -> BoxFuture<'a, Result<Reserved, SharedError>> {
        Box::pin(async move {
            let mut c = self.connection.clone();
            let mut inv = self.reserve.prepare_invoke();
            for k in keys(scope) {
                inv.key(k);
            }
            inv.arg(
                quota
                    .rpm
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .unwrap_or(0.0),
            )
            .arg(quota.tpm.unwrap_or(0))
            .arg(tokens)
            .arg(u64::try_from(quota.margin.as_millis()).unwrap_or(u64::MAX))
            .arg(quota.span.map_or(0, |s| {
                u64::try_from(s.as_millis())
                    .unwrap_or(60_000)
                    .clamp(1000, 60_000)
            }));
            let (what, n, epoch, decreases): (i64, i64, u64, u64) =
                inv.invoke_async(&mut c).await.map_err(|e| self.error(&e))?;
            let ms = || Duration::from_millis(u64::try_from(n).unwrap_or(0));
            let grant = match what {
                0 => Grant::Admitted(u64::try_from(n).unwrap_or(0)),
                1 => Grant::Wait(ms()),
                _ => Grant::Cooldown(ms()),
            };
            Ok(Reserved {
                grant,
                epoch,
                decreases,
            })
        })
    }

    fn seed<'a>(
        &'a self,
        scope: &'a str,
        quota: SharedQuota,
        admitted: &'a [(Duration, u64)],
    ) -> BoxFuture<'a, Result<(), SharedError>> {
        Box::pin(async move {
            let [w, t, m, _] = keys(scope);
            let span = quota
                .span
                .unwrap_or(Duration::from_secs(60))
                .clamp(Duration::from_secs(1), Duration::from_secs(60))
                + quota.margin;
            let mut c = self.connection.clone();
            for chunk in admitted.chunks(2000) {
                let mut inv = self.seed.prepare_invoke();
                inv.key(&w).key(&t).key(&m);
                inv.arg(u64::try_from(span.as_millis()).unwrap_or(60_000));
                for (age, tokens) in chunk {
                    inv.arg(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
                        .arg(*tokens);
                }
                let _: i64 = inv.invoke_async(&mut c).await.map_err(|e| self.error(&e))?;
            }
            Ok(())
        })
    }

    fn settle<'a>(
        &'a self,
        scope: &'a str,
        ticket: (u64, u64),
        used: Option<u64>,
    ) -> BoxFuture<'a, Result<(), SharedError>> {
        Box::pin(async move {
            let Some(used) = used else { return Ok(()) };
            let [_, t, m, _] = keys(scope);
            let mut c = self.connection.clone();
            let (epoch, id) = ticket;
            let _: i64 = self
                .settle
                .key(t)
                .key(m)
                .arg(id)
                .arg(used)
                .arg(epoch)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.error(&e))?;
            Ok(())
        })
    }

    fn cancel<'a>(
        &'a self,
        scope: &'a str,
        ticket: (u64, u64),
    ) -> BoxFuture<'a, Result<(), SharedError>> {
        Box::pin(async move {
            let [w, t, m, _] = keys(scope);
            let mut c = self.connection.clone();
            let (epoch, id) = ticket;
            let _: i64 = self
                .cancel
                .key(w)
                .key(t)
                .key(m)
                .arg(id)
                .arg(epoch)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.error(&e))?;
            Ok(())
        })
    }

    fn note_decrease<'a>(&'a self, scope: &'a str) -> BoxFuture<'a, Result<(), SharedError>> {
        Box::pin(async move {
            let [_, _, m, _] = keys(scope);
            let mut c = self.connection.clone();
            let _: i64 = redis::cmd("HINCRBY")
                .arg(m)
                .arg("aimd")
                .arg(1)
                .query_async(&mut c)
                .await
                .map_err(|e| self.error(&e))?;
            Ok(())
        })
    }

    fn extend_cooldown<'a>(
        &'a self,
        scope: &'a str,
        length: Duration,
    ) -> BoxFuture<'a, Result<(), SharedError>> {
        Box::pin(async move {
            let [_, _, _, cd] = keys(scope);
            let mut c = self.connection.clone();
            let ms = u64::try_from(length.as_millis()).unwrap_or(u64::MAX).max(1);
            let _: i64 = self
                .extend
                .key(cd)
                .arg(ms)
                .invoke_async(&mut c)
                .await
                .map_err(|e| self.error(&e))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_one_slot_whatever_the_scope_name() {
        let [w, _, _, c] = keys("openai|https://x/v1|key:ab12cd34|m{1}");
        assert_eq!(w, "abl:{openai|https://x/v1|key:ab12cd34|m_1_}:w");
        assert!(c.ends_with("}:c"));
    }
}
