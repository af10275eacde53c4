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
//! With TLS (`redis.tls`, `rediss://`), the TCP connection and the
//! handshake are made by `redis_tls` and handed to redis-rs, which then
//! sends the same handshake and dialect over it.
//!
//! `pool_size` multiplexed connections are used round-robin and dialled
//! lazily (outside any lock), so building the backend never fails because
//! Redis is down.
//!
//! Deadlines: every batch, dial included, ends within `redis.timeout_ms`;
//! a missed deadline is never retried, and together with a failed dial it
//! opens the `down_until` circuit (`Circuit`) during which callers fail at
//! once while the refresher keeps probing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    ProtocolVersion, RedisConnectionInfo, Value,
};

use super::redis_tls::RedisTls;
use super::{keys, start_check, Backend, Cmd, Reply, StoreError};
use crate::config::{RedisConfig, RedisTlsConfig};

/// Refresh only where the key is absent or already ours. Also in docs/REDIS.md.
pub const REFRESH_IF_OURS_LUA: &str = "local v = redis.call('GET', KEYS[1]) \
if v == false or v == ARGV[1] then \
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1 end \
return 0";

/// Delete only where the key is ours. Also in docs/REDIS.md.
pub const DELETE_IF_OURS_LUA: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
return redis.call('DEL', KEYS[1]) end \
return 0";

/// Default bound on one batch (dial + pipeline round trip) when no
/// `redis.timeout_ms` is given: well under the hosts' own timeouts (the
/// Erlang API waits 5 s), so the core answers first.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);

/// What a single-server configuration that reaches a Redis Cluster node is
/// told: the node answered `MOVED` (docs/REDIS.md, "Redis Cluster").
pub const CLUSTER_NODE: &str =
    "this is a Redis Cluster node (it answered MOVED): use redis.cluster";

/// How long calls fail at once after a failure, before one probe is let
/// through (see `Circuit`).
pub const DOWN_BACKOFF: Duration = Duration::from_secs(1);

struct Slot {
    /// The live connection and the generation it was dialled in, so that a
    /// failing batch only discards the connection it actually used. A plain
    /// mutex never held across an await: dialling happens outside it.
    conn: parking_lot::Mutex<Option<(u64, MultiplexedConnection)>>,
}

/// Whether a call waits behind the circuit ([`Gate::Checked`]) or is a
/// probe that always tries ([`Gate::Probe`]: the refresher's passes and
/// pending retries, the start-time check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    Checked,
    Probe,
}

/// The `down_until` circuit. After a transport failure or a missed
/// deadline the store is known down: checked calls fail at once for
/// [`DOWN_BACKOFF`] instead of each waiting out its own deadline; after
/// that, one checked call at a time is let through as a probe (the others
/// still fail at once). Any success closes the circuit. Probes
/// ([`Gate::Probe`]) always try, so the refresher keeps probing.
/// Shared with the Redis Cluster backend (`redis_cluster.rs`).
#[derive(Default)]
pub(super) struct Circuit {
    state: parking_lot::Mutex<CircuitState>,
}

#[derive(Default)]
struct CircuitState {
    down_until: Option<Instant>,
    probing: bool,
    last_failure: String,
}

pub(super) const KNOWN_DOWN: &str = "known down";
pub(super) const TIMED_OUT: &str = "did not answer within";
const DURING_HANDSHAKE: &str = " (in the TLS handshake)";
const CANNOT_CONNECT: &str = "cannot connect";

/// Why a checked call was refused at once, or `Ok(probe)`.
type Admission = Result<bool, String>;

impl Circuit {
    pub(super) fn admit(&self) -> Admission {
        let mut s = self.state.lock();
        let Some(until) = s.down_until else {
            return Ok(false);
        };
        let now = Instant::now();
        if now < until {
            let left = until.saturating_duration_since(now).as_millis();
            return Err(format!(
                "{KNOWN_DOWN} since the last failure ({}); next attempt in {left} ms",
                s.last_failure
            ));
        }
        if s.probing {
            return Err(format!(
                "{KNOWN_DOWN} since the last failure ({}); a probe is in flight",
                s.last_failure
            ));
        }
        s.probing = true;
        Ok(true)
    }

    fn succeeded(&self) {
        let mut s = self.state.lock();
        s.down_until = None;
        s.probing = false;
    }

    fn failed(&self, why: &str) {
        let mut s = self.state.lock();
        s.down_until = Some(Instant::now() + DOWN_BACKOFF);
        s.probing = false;
        s.last_failure = why.to_owned();
    }

    /// A probe that ended without an outcome (its caller gave up on it).
    fn abandoned(&self, probe: bool) {
        if probe {
            self.state.lock().probing = false;
        }
    }
}

/// Clears the probe flag if the call is dropped before it reports.
pub(super) struct ProbeGuard<'a> {
    pub(super) circuit: &'a Circuit,
    pub(super) probe: bool,
    pub(super) reported: bool,
}

impl ProbeGuard<'_> {
    /// A success closes the circuit and a failure that shows the store
    /// down opens it; other failures (a connection a proxy closed) leave it
    /// as it was.
    pub(super) fn report<T>(&mut self, result: &Result<T, Failure>) {
        self.reported = true;
        match result {
            Ok(_) => self.circuit.succeeded(),
            Err(Failure::Down(why)) => self.circuit.failed(why),
            Err(_) => self.circuit.abandoned(self.probe),
        }
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.circuit.abandoned(self.probe);
        }
    }
}

/// What a TLS dial needs: the handshake, the address, and redis-rs'
/// handshake settings (AUTH, SELECT, RESP2) for the connection it wraps.
struct TlsDial {
    tls: RedisTls,
    host: String,
    port: u16,
    redis: RedisConnectionInfo,
}

/// How one batch failed.
pub(super) enum Failure {
    /// No connection could be dialled, or no answer came in time: the store
    /// is known down (opens the circuit).
    Down(String),
    /// The connection was found closed at the socket level (the server
    /// restarted, a proxy dropped it, or refused a command by closing):
    /// worth one fresh connection, and not proof the store is down.
    Closed(String),
    /// The replies did not match the commands.
    Other(String),
}

impl Failure {
    pub(super) fn text(&self) -> &str {
        match self {
            Failure::Down(s) | Failure::Closed(s) | Failure::Other(s) => s,
        }
    }
}

pub struct RedisBackend {
    client: Client,
    /// Set for TLS: dialled by us, then handed to redis-rs.
    tls: Option<TlsDial>,
    target: String,
    timeout: Duration,
    slots: Vec<Slot>,
    next_slot: AtomicUsize,
    generation: AtomicU64,
    circuit: Circuit,
}

impl RedisBackend {
    /// Builds the backend from the `redis` config section (its
    /// `timeout_ms` bounds each batch); dials nothing yet.
    pub fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        Self::with_timeout(cfg, Duration::from_millis(cfg.timeout_ms))
    }

    /// Same, with an explicit per-batch timeout.
    pub fn with_timeout(cfg: &RedisConfig, timeout: Duration) -> Result<Self, StoreError> {
        let info = connection_info(cfg)?;
        let target = info.addr().to_string();
        let tls = match (tls_settings(cfg), info.addr()) {
            (Some(settings), ConnectionAddr::Tcp(host, port)) => Some(TlsDial {
                tls: RedisTls::new(&settings, host)?,
                host: host.clone(),
                port: *port,
                redis: info.redis_settings().clone(),
            }),
            _ => None,
        };
        let client = Client::open(info)
            .map_err(|e| StoreError::Config(format!("redis: cannot use {target}: {e}")))?;
        let pool = cfg.pool_size.max(1) as usize;
        Ok(RedisBackend {
            client,
            tls,
            target,
            timeout,
            slots: (0..pool)
                .map(|_| Slot {
                    conn: parking_lot::Mutex::new(None),
                })
                .collect(),
            next_slot: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            circuit: Circuit::default(),
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
        let mut values = self.query(&pipe, 1, Gate::Probe, self.timeout).await?;
        Ok(values.pop().map(raw_reply).unwrap_or(Reply::Nil))
    }

    /// `host:port` this backend talks to, for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Runs `cmds` as one pipeline with the given gate (see [`Gate`]).
    async fn exec_gated(&self, cmds: &[Cmd], gate: Gate) -> Result<Vec<Reply>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for c in cmds {
            add_cmd(&mut pipe, c);
        }
        let values = self.query(&pipe, cmds.len(), gate, self.timeout).await?;
        let replies: Vec<Reply> = cmds.iter().zip(values).map(|(c, v)| reply(c, v)).collect();
        if replies
            .iter()
            .any(|r| matches!(r, Reply::Error(e) if e.starts_with("MOVED ")))
        {
            tracing::warn!(what = "redis_cluster_node", target = %self.target, reason = CLUSTER_NODE);
        }
        Ok(replies)
    }

    /// The slot's connection, and whether it was dialled just now. The dial
    /// happens outside the slot's lock: a slow dial never holds up a batch
    /// that could use a connection dialled meanwhile. Two racing dials keep
    /// the first connection stored; the other one is dropped.
    async fn connection(&self, slot: &Slot) -> Result<(u64, MultiplexedConnection, bool), Failure> {
        if let Some((gen, conn)) = slot.conn.lock().as_ref() {
            return Ok((*gen, conn.clone(), false));
        }
        // The caller's deadline bounds the dial; redis-rs' own timeouts are
        // off so that a timeout is never mistaken for a closed connection.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(None)
            .set_response_timeout(None);
        let conn = match &self.tls {
            Some(tls) => self.dial_tls(tls, config).await?,
            None => self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .map_err(|e| Failure::Down(dial_error(&e)))?,
        };
        let gen = self.generation.fetch_add(1, Ordering::Relaxed);
        let mut guard = slot.conn.lock();
        if let Some((g, c)) = guard.as_ref() {
            return Ok((*g, c.clone(), false));
        }
        *guard = Some((gen, conn.clone()));
        drop(guard);
        tracing::debug!(what = "redis_connected", target = %self.target, generation = gen);
        Ok((gen, conn, true))
    }

    /// TCP and the TLS handshake, then redis-rs' own handshake (AUTH,
    /// SELECT) over the encrypted stream; its driver runs as a task that
    /// ends with the last handle to the connection.
    async fn dial_tls(
        &self,
        dial: &TlsDial,
        config: AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, Failure> {
        let stream = dial
            .tls
            .connect(&dial.host, dial.port)
            .await
            .map_err(Failure::Down)?;
        let (conn, driver) = MultiplexedConnection::new_with_config(&dial.redis, stream, config)
            .await
            .map_err(|e| Failure::Down(dial_error(&e)))?;
        tokio::spawn(driver);
        Ok(conn)
    }

    fn discard(&self, slot: &Slot, gen: u64) {
        let mut guard = slot.conn.lock();
        if guard.as_ref().is_some_and(|(g, _)| *g == gen) {
            *guard = None;
        }
    }

    /// Runs `pipe` (of `count` commands) on the next pooled connection,
    /// dial included, within `within`; a checked call is refused at once
    /// while the circuit is open. Server errors come back as values; any
    /// `Err` is a transport failure, a missed deadline or the open circuit.
    async fn query(
        &self,
        pipe: &redis::Pipeline,
        count: usize,
        gate: Gate,
        within: Duration,
    ) -> Result<Vec<Value>, StoreError> {
        self.query_raw(pipe, count, gate, within)
            .await
            .map_err(|f| self.failed(f.text().to_owned()))
    }

    /// [`RedisBackend::query`] with the failure as it happened.
    async fn query_raw(
        &self,
        pipe: &redis::Pipeline,
        count: usize,
        gate: Gate,
        within: Duration,
    ) -> Result<Vec<Value>, Failure> {
        let probe = match gate {
            Gate::Probe => false,
            Gate::Checked => self.circuit.admit().map_err(Failure::Other)?,
        };
        let mut outcome = ProbeGuard {
            circuit: &self.circuit,
            probe,
            reported: false,
        };
        let i = self.next_slot.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let slot = &self.slots[i];
        let attempt = self.attempt(slot, pipe, count);
        tokio::pin!(attempt);
        let result = match tokio::time::timeout(within, &mut attempt).await {
            Ok(r) => r,
            Err(_) => {
                // Looked at while the timed-out dial is still alive.
                let handshaking = self.tls.as_ref().is_some_and(|d| d.tls.handshaking());
                // The connection may hold a request the server never
                // answers: start afresh next time. No retry: a timeout says
                // the server is slow or stalled, not that the socket is stale.
                let gen = slot.conn.lock().as_ref().map(|(g, _)| *g);
                if let Some(gen) = gen {
                    self.discard(slot, gen);
                }
                let during = if handshaking { DURING_HANDSHAKE } else { "" };
                Err(Failure::Down(format!(
                    "{TIMED_OUT} {} ms{during}",
                    within.as_millis()
                )))
            }
        };
        outcome.report(&result);
        result
    }

    /// One batch, plus one resend on a fresh connection when a kept
    /// connection is found closed at the socket level (Redis restarted, a
    /// proxy dropped it). Every command of the dialect is idempotent, so a
    /// batch that did reach the server before the failure is safe to repeat.
    async fn attempt(
        &self,
        slot: &Slot,
        pipe: &redis::Pipeline,
        count: usize,
    ) -> Result<Vec<Value>, Failure> {
        match self.once(slot, pipe, count).await {
            Err((Failure::Closed(why), false)) => {
                tracing::debug!(what = "redis_stale_connection", target = %self.target, reason = %why);
                self.once(slot, pipe, count).await.map_err(|(f, _)| f)
            }
            r => r.map_err(|(f, _)| f),
        }
    }

    /// One batch on the slot's connection; on failure, also whether that
    /// connection had just been dialled.
    async fn once(
        &self,
        slot: &Slot,
        pipe: &redis::Pipeline,
        count: usize,
    ) -> Result<Vec<Value>, (Failure, bool)> {
        let (gen, mut conn, fresh) = self.connection(slot).await.map_err(|f| (f, true))?;
        let failure = match pipe.query_async::<Vec<Value>>(&mut conn).await {
            Ok(values) if values.len() == count => return Ok(values),
            Ok(values) => Failure::Other(format!("expected {count} replies, got {}", values.len())),
            Err(e) if (e.is_io_error() || e.is_connection_dropped()) && !e.is_timeout() => {
                Failure::Closed(e.to_string())
            }
            Err(e) => Failure::Other(e.to_string()),
        };
        self.discard(slot, gen);
        Err((failure, fresh))
    }

    /// Why the health check failed, with what the failure suggests: a
    /// handshake that never ends is TLS spoken to a plain-text port (Redis
    /// waits for the end of an inline command that never comes), a
    /// connection closed at once is plain text spoken to a TLS port, or a
    /// TLS server refusing the session after the handshake (TLS 1.3 sends
    /// the refusal of a client certificate then).
    fn unreachable(&self, failure: &Failure, within: Duration) -> String {
        let tls = self.tls.as_ref();
        match failure {
            Failure::Down(why) if why.starts_with(TIMED_OUT) => {
                let hint = match tls {
                    Some(_) if why.ends_with(DURING_HANDSHAKE) => {
                        " (the TLS handshake did not complete: is this a plain-text Redis port? \
                         use the server's tls-port, or redis:// without redis.tls)"
                    }
                    _ => "",
                };
                format!(
                    "redis {} did not answer within {} ms{hint}",
                    self.target,
                    within.as_millis()
                )
            }
            Failure::Closed(why) => {
                let hint = match tls {
                    Some(_) => {
                        "the server ended the TLS session after the handshake: does it require \
                         a client certificate (redis.tls.certfile, redis.tls.keyfile) signed by \
                         a CA it trusts?"
                    }
                    None => {
                        "the server closed the connection at once: is this a TLS port? \
                         (use rediss:// or redis.tls)"
                    }
                };
                format!("redis {} cannot be reached: {why}; {hint}", self.target)
            }
            // Refused credentials, a refused SELECT, a failed TLS
            // handshake: the server was reached and said no.
            Failure::Down(why) if !why.starts_with(CANNOT_CONNECT) => {
                format!("redis {}: {why}", self.target)
            }
            Failure::Down(why) | Failure::Other(why) => {
                format!("redis {} cannot be reached: {why}", self.target)
            }
        }
    }

    fn failed(&self, failure: String) -> StoreError {
        if failure.starts_with(KNOWN_DOWN) {
            return StoreError::Unavailable(format!("redis at {}: {failure}", self.target));
        }
        tracing::warn!(what = "redis_batch_failed", target = %self.target, reason = %failure);
        StoreError::Unavailable(format!(
            "redis at {}: {failure}; will reconnect on the next batch",
            self.target
        ))
    }
}

/// Why a dial failed, for the operator: redis-rs reports a refused `AUTH`
/// without the server's words.
fn dial_error(e: &redis::RedisError) -> String {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return "authentication refused (WRONGPASS): check redis.password and redis.username \
                (or the URL's user info, or the MongooseIM pool's connection.username/password)"
            .to_owned();
    }
    let text = e.to_string();
    // The handshake's only other command: SELECT of a non-zero database.
    if text.contains("NOPERM") || text.contains("no permissions") {
        return start_check::explain("select", &text);
    }
    format!("cannot connect: {text}")
}

/// TLS settings: `redis.tls`, or the defaults for a `rediss://` URL given
/// without it.
fn tls_settings(cfg: &RedisConfig) -> Option<RedisTlsConfig> {
    let rediss = cfg
        .url
        .as_deref()
        .is_some_and(|u| u.starts_with("rediss://"));
    cfg.tls
        .clone()
        .or_else(|| rediss.then(RedisTlsConfig::default))
}

/// Connection settings: from `url` when given, else
/// server/port/username/password/database.
/// The handshake is pinned to RESP2 without `CLIENT SETINFO`, whatever the
/// URL says, and `AUTH` is only sent for a non-empty password. A
/// `rediss://` URL is read as `redis://`: TLS is ours (`redis_tls`).
fn connection_info(cfg: &RedisConfig) -> Result<ConnectionInfo, StoreError> {
    let (addr, db, user, password) = match cfg.url.as_deref() {
        Some(url) => {
            let plain = url
                .strip_prefix("rediss://")
                .map(|rest| format!("redis://{rest}"));
            let info = plain.as_deref().unwrap_or(url).into_connection_info().map_err(|e| {
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

pub(super) fn add_cmd(pipe: &mut redis::Pipeline, cmd: &Cmd) {
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
        Cmd::SScan { key, cursor, count } => {
            pipe.cmd("SSCAN")
                .arg(key)
                .arg(cursor)
                .arg("COUNT")
                .arg(*count);
        }
        Cmd::Ttl { key } => {
            pipe.cmd("TTL").arg(key);
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
pub(super) fn server_error_text(e: &redis::ServerError) -> String {
    match e.details() {
        Some(d) => format!("{} {d}", e.code()),
        None => e.code().to_owned(),
    }
}

/// Interprets a reply according to the command that produced it.
pub(super) fn reply(cmd: &Cmd, v: Value) -> Reply {
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
        Cmd::SScan { .. } => match v {
            Value::Array(mut parts) if parts.len() == 2 => {
                let members = match parts.pop() {
                    Some(Value::Array(items) | Value::Set(items)) => {
                        items.into_iter().filter_map(text).collect()
                    }
                    _ => return Reply::Error("SSCAN: members are not a list".into()),
                };
                match parts.pop().and_then(text) {
                    Some(cursor) => Reply::Scan { cursor, members },
                    None => Reply::Error("SSCAN: cursor is not a string".into()),
                }
            }
            v => unexpected(cmd, &v),
        },
        _ => match v {
            Value::Int(i) => Reply::Int(i),
            v => unexpected(cmd, &v),
        },
    }
}

/// Best-effort interpretation of the reply to a [`RedisBackend::raw`] command.
pub(super) fn raw_reply(v: Value) -> Reply {
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
        self.exec_gated(cmds, Gate::Checked).await
    }

    async fn exec_probe(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        self.exec_gated(cmds, Gate::Probe).await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.health_within(self.timeout).await
    }

    /// One `GET` of the health sentinel (proxy-safe: a proxy answers
    /// `PING` itself), dial included, within `within`, whatever the
    /// circuit says.
    async fn health_within(&self, within: Duration) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("GET").arg(keys::HEALTH_SENTINEL);
        let values = self
            .query_raw(&pipe, 1, Gate::Probe, within)
            .await
            .map_err(|f| StoreError::Unavailable(self.unreachable(&f, within)))?;
        match values.into_iter().next() {
            Some(Value::ServerError(e)) if e.code() == "MOVED" => Err(StoreError::Unavailable(
                format!("redis {}: {CLUSTER_NODE}", self.target),
            )),
            Some(Value::ServerError(e)) => Err(StoreError::Unavailable(format!(
                "redis {}: health check failed: {}",
                self.target,
                start_check::explain("get", &server_error_text(&e))
            ))),
            _ => Ok(()),
        }
    }

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn describe(&self) -> String {
        format!("redis {}", self.target)
    }

    /// At least 4 pipelines in flight, spread round-robin over the pooled
    /// connections: a multiplexed connection answers them in order, so
    /// several on one connection keep the server busy instead of idling a
    /// round trip per batch.
    fn concurrency(&self) -> usize {
        self.slots.len().max(4)
    }
}
