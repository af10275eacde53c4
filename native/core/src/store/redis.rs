//! Redis backend, also through twemproxy (nutcracker) or Dynomite: it speaks
//! only the proxy-safe dialect of `docs/REDIS.md`.
//!
//! What makes it proxy-safe, beyond the command set:
//! * the connection handshake sends nothing but `AUTH` (only with a
//!   non-empty password; `AUTH username password` when an ACL user is set)
//!   and `SELECT` (only for a non-zero `database`): no
//!   `HELLO` (RESP2 only) and no `CLIENT SETINFO`, which redis-rs sends by
//!   default and on which the proxies drop the connection;
//! * the CAS commands are `EVAL` of a script over exactly one key, never
//!   `EVALSHA` (a proxy may route the load and the call to different
//!   servers);
//! * a proxy closes the connection instead of replying an error to a command
//!   it cannot parse, so any transport failure drops the pooled connection
//!   and the next batch dials a fresh one.
//!
//! `pool_size` multiplexed connections are used round-robin and dialled
//! lazily, so building the backend never fails because Redis is down.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    ProtocolVersion, RedisConnectionInfo, Value,
};
use tokio::sync::Mutex;

use super::{keys, Backend, Cmd, Reply, StoreError};
use crate::config::RedisConfig;

/// Refresh only where the key is absent or already ours. Also in docs/REDIS.md.
pub const REFRESH_IF_OURS_LUA: &str = "local v = redis.call('GET', KEYS[1]) \
if v == false or v == ARGV[1] then \
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end \
return 0";

/// Delete only where the key is ours. Also in docs/REDIS.md.
pub const DELETE_IF_OURS_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
return redis.call('DEL', KEYS[1]) end \
return 0";

/// Default bound on one batch (dial + pipeline round trip): a stalled server
/// must not hang callers forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

struct Slot {
    /// The live connection and the generation it was dialled in, so that a
    /// failing batch only discards the connection it actually used.
    conn: Mutex<Option<(u64, MultiplexedConnection)>>,
}

pub struct RedisBackend {
    client: Client,
    target: String,
    timeout: Duration,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    generation: AtomicU64,
}

impl RedisBackend {
    /// Builds the backend from the `redis` config section; dials nothing yet.
    pub fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        Self::with_timeout(cfg, DEFAULT_TIMEOUT)
    }

    /// Same, with an explicit per-batch timeout.
    pub fn with_timeout(cfg: &RedisConfig, timeout: Duration) -> Result<Self, StoreError> {
        let info = connection_info(cfg)?;
        let target = info.addr().to_string();
        let client = Client::open(info)
            .map_err(|e| StoreError::Config(format!("redis: cannot use {target}: {e}")))?;
        let pool = cfg.pool_size.max(1) as usize;
        Ok(RedisBackend {
            client,
            target,
            timeout,
            slots: (0..pool)
                .map(|_| Slot {
                    conn: Mutex::new(None),
                })
                .collect(),
            next_slot: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
        })
    }

    /// Sends one arbitrary command, proxy-unsafe ones included, over the
    /// pool. For diagnostics and for tests that need to provoke a proxy.
    pub async fn raw(&self, args: &[&str]) -> Result<Reply, StoreError> {
        let Some((name, rest)) = args.split_first() else {
            return Err(StoreError::Protocol("raw: empty command".into()));
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd(name);
        for a in rest {
            pipe.arg(*a);
        }
        let mut values = self.query(&pipe, 1).await?;
        Ok(values.pop().map(raw_reply).unwrap_or(Reply::Nil))
    }

    /// `host:port` this backend talks to, for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The slot's connection, and whether it was dialled just now.
    async fn connection(
        &self,
        slot: &Slot,
    ) -> Result<(u64, MultiplexedConnection, bool), StoreError> {
        let mut guard = slot.conn.lock().await;
        if let Some((gen, conn)) = guard.as_ref() {
            return Ok((*gen, conn.clone(), false));
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| {
                StoreError::Unavailable(format!("redis at {}: cannot connect: {e}", self.target))
            })?;
        let gen = self.generation.fetch_add(1, Ordering::Relaxed);
        *guard = Some((gen, conn.clone()));
        tracing::debug!(what = "redis_connected", target = %self.target, generation = gen);
        Ok((gen, conn, true))
    }

    async fn discard(&self, slot: &Slot, gen: u64) {
        let mut guard = slot.conn.lock().await;
        if guard.as_ref().is_some_and(|(g, _)| *g == gen) {
            *guard = None;
        }
    }

    /// Runs `pipe` (of `count` commands) on the next pooled connection.
    /// Server errors come back as values; any `Err` is a transport failure,
    /// after which the connection is discarded.
    ///
    /// A connection kept from before may have died unnoticed (the server
    /// restarted, a proxy dropped it): when it fails at the socket level the
    /// batch is sent once more on a fresh connection. Every command of the
    /// dialect is idempotent, so a batch that did reach the server before
    /// the failure is safe to repeat.
    async fn query(&self, pipe: &redis::Pipeline, count: usize) -> Result<Vec<Value>, StoreError> {
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        loop {
            let (gen, mut conn, fresh) = self.connection(slot).await?;
            let sent =
                tokio::time::timeout(self.timeout, pipe.query_async::<Vec<Value>>(&mut conn));
            let (failure, stale) = match sent.await {
                Ok(Ok(values)) if values.len() == count => return Ok(values),
                Ok(Ok(values)) => (
                    format!("expected {count} replies, got {}", values.len()),
                    false,
                ),
                Ok(Err(e)) => (e.to_string(), e.is_io_error() || e.is_connection_dropped()),
                Err(_) => (format!("no reply within {:?}", self.timeout), false),
            };
            self.discard(slot, gen).await;
            if stale && !fresh {
                tracing::debug!(what = "redis_stale_connection", target = %self.target, reason = %failure);
                continue;
            }
            return Err(self.failed(failure));
        }
    }

    fn failed(&self, failure: String) -> StoreError {
        tracing::warn!(what = "redis_batch_failed", target = %self.target, reason = %failure);
        StoreError::Unavailable(format!(
            "redis at {}: {failure}; will reconnect on the next batch",
            self.target
        ))
    }
}

/// Connection settings: from `url` when given, else
/// server/port/username/password/database.
/// The handshake is pinned to RESP2 without `CLIENT SETINFO`, whatever the
/// URL says, and `AUTH` is only sent for a non-empty password.
fn connection_info(cfg: &RedisConfig) -> Result<ConnectionInfo, StoreError> {
    let (addr, db, user, password) = match cfg.url.as_deref() {
        Some(url) => {
            let info = url.into_connection_info().map_err(|e| {
                StoreError::Config(format!(
                    "redis.url: expected redis://[[user]:password@]host[:port][/db], got {url:?}: {e}"
                ))
            })?;
            let r = info.redis_settings();
            (
                info.addr().clone(),
                r.db(),
                r.username().map(str::to_owned),
                r.password().map(str::to_owned),
            )
        }
        None => (
            ConnectionAddr::Tcp(cfg.server.clone(), cfg.port),
            i64::from(cfg.database),
            Some(cfg.username.clone()),
            Some(cfg.password.clone()),
        ),
    };
    let mut redis = RedisConnectionInfo::default()
        .set_protocol(ProtocolVersion::RESP2)
        .set_skip_set_lib_name()
        .set_db(db);
    if let Some(p) = password.filter(|p| !p.is_empty()) {
        redis = redis.set_password(p);
        if let Some(u) = user.filter(|u| !u.is_empty()) {
            redis = redis.set_username(u);
        }
    }
    let info = addr
        .into_connection_info()
        .map_err(|e| StoreError::Config(format!("redis: bad address: {e}")))?;
    Ok(info.set_redis_settings(redis))
}

fn add_cmd(pipe: &mut redis::Pipeline, cmd: &Cmd) {
    match cmd {
        Cmd::Get { key } => {
            pipe.cmd("GET").arg(key);
        }
        Cmd::SetEx {
            key,
            value,
            ttl_secs,
        } => {
            pipe.cmd("SET").arg(key).arg(value).arg("EX").arg(*ttl_secs);
        }
        Cmd::RefreshIfOurs {
            key,
            value,
            ttl_secs,
        } => {
            pipe.cmd("EVAL")
                .arg(REFRESH_IF_OURS_LUA)
                .arg(1)
                .arg(key)
                .arg(value)
                .arg(*ttl_secs);
        }
        Cmd::DeleteIfOurs { key, value } => {
            pipe.cmd("EVAL")
                .arg(DELETE_IF_OURS_LUA)
                .arg(1)
                .arg(key)
                .arg(value);
        }
        Cmd::Del { key } => {
            pipe.cmd("DEL").arg(key);
        }
        Cmd::Expire { key, ttl_secs } => {
            pipe.cmd("EXPIRE").arg(key).arg(*ttl_secs);
        }
        Cmd::SAdd { key, members } => {
            pipe.cmd("SADD").arg(key).arg(members);
        }
        Cmd::SRem { key, members } => {
            pipe.cmd("SREM").arg(key).arg(members);
        }
        Cmd::SMembers { key } => {
            pipe.cmd("SMEMBERS").arg(key);
        }
        Cmd::HSet { key, field, value } => {
            pipe.cmd("HSET").arg(key).arg(field).arg(value);
        }
        Cmd::HDel { key, field } => {
            pipe.cmd("HDEL").arg(key).arg(field);
        }
        Cmd::HGetAll { key } => {
            pipe.cmd("HGETALL").arg(key);
        }
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::SimpleString(s) => Some(s),
        Value::Okay => Some("OK".into()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

fn unexpected(cmd: &Cmd, v: &Value) -> Reply {
    Reply::Error(format!("unexpected reply to {cmd:?}: {v:?}"))
}

/// The error line as the server sent it (`WRONGTYPE Operation against…`).
fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_owned(),
    }
}

/// Interprets a reply according to the command that produced it.
fn reply(cmd: &Cmd, v: Value) -> Reply {
    if let Value::ServerError(e) = v {
        return Reply::Error(server_error_text(&e));
    }
    match cmd {
        Cmd::Get { .. } => match v {
            Value::Nil => Reply::Nil,
            v => text(v).map_or_else(
                || Reply::Error("GET: reply is not a string".into()),
                Reply::Str,
            ),
        },
        Cmd::SetEx { .. } => match v {
            Value::Okay => Reply::Ok,
            Value::SimpleString(s) if s == "OK" => Reply::Ok,
            v => unexpected(cmd, &v),
        },
        Cmd::SMembers { .. } => match v {
            Value::Array(items) | Value::Set(items) => {
                Reply::List(items.into_iter().filter_map(text).collect())
            }
            v => unexpected(cmd, &v),
        },
        Cmd::HGetAll { .. } => match v {
            Value::Array(items) => {
                let mut it = items.into_iter().filter_map(text);
                let mut pairs = Vec::new();
                while let (Some(f), Some(val)) = (it.next(), it.next()) {
                    pairs.push((f, val));
                }
                Reply::Pairs(pairs)
            }
            Value::Map(m) => Reply::Pairs(
                m.into_iter()
                    .filter_map(|(f, val)| Some((text(f)?, text(val)?)))
                    .collect(),
            ),
            v => unexpected(cmd, &v),
        },
        _ => match v {
            Value::Int(i) => Reply::Int(i),
            v => unexpected(cmd, &v),
        },
    }
}

/// Best-effort interpretation of the reply to a [`RedisBackend::raw`] command.
fn raw_reply(v: Value) -> Reply {
    match v {
        Value::Nil => Reply::Nil,
        Value::Okay => Reply::Ok,
        Value::Int(i) => Reply::Int(i),
        Value::ServerError(e) => Reply::Error(server_error_text(&e)),
        Value::Array(items) | Value::Set(items) => {
            Reply::List(items.into_iter().filter_map(text).collect())
        }
        v => text(v).map_or(Reply::Nil, Reply::Str),
    }
}

#[async_trait]
impl Backend for RedisBackend {
    async fn exec(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for c in cmds {
            add_cmd(&mut pipe, c);
        }
        let values = self.query(&pipe, cmds.len()).await?;
        Ok(cmds.iter().zip(values).map(|(c, v)| reply(c, v)).collect())
    }

    async fn health(&self) -> Result<(), StoreError> {
        let cmd = Cmd::Get {
            key: keys::HEALTH_SENTINEL.to_owned(),
        };
        match self.exec(std::slice::from_ref(&cmd)).await?.pop() {
            Some(Reply::Error(e)) => Err(StoreError::Unavailable(format!(
                "redis at {}: health check failed: {e}",
                self.target
            ))),
            _ => Ok(()),
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    /// At least 4 pipelines in flight, spread round-robin over the pooled
    /// connections: a multiplexed connection answers them in order, so
    /// several on one connection keep the server busy instead of idling a
    /// round trip per batch.
    fn concurrency(&self) -> usize {
        self.slots.len().max(4)
    }
}
