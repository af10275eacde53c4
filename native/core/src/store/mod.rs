//! Metadata store: the session/routing table shared by all datacenters
//! (SPEC 3), with MongooseIM's key layout.
//!
//! Two layers:
//! * [`Backend`] speaks the proxy-safe dialect of `docs/REDIS.md` as plain
//!   data ([`Cmd`] in, [`Reply`] out, always pipelined). `embedded` and
//!   `redis` implement it; nothing else talks to a database.
//! * [`Store`] knows the key layout and the ownership rules (plain SET to
//!   open a session, compare-and-set to refresh or delete) and is what the
//!   rest of the runtime uses.

use std::sync::Arc;

use async_trait::async_trait;

pub mod embedded;
pub mod keys;
pub mod redis;

/// One command of the proxy-safe dialect. Every command touches one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `GET key`
    Get { key: String },
    /// `SET key value EX ttl` — unconditional (newest login wins).
    SetEx {
        key: String,
        value: String,
        ttl_secs: u64,
    },
    /// Write `value` with `ttl` only if the key is absent or already holds
    /// `value` (`EVAL` of a one-key script on Redis). Replies `Int(1)` when
    /// written, `Int(0)` when the key belongs to someone else.
    RefreshIfOurs {
        key: String,
        value: String,
        ttl_secs: u64,
    },
    /// Delete the key only if it holds `value`. Replies `Int(1|0)`.
    DeleteIfOurs { key: String, value: String },
    /// `DEL key`
    Del { key: String },
    /// `EXPIRE key ttl`
    Expire { key: String, ttl_secs: u64 },
    /// `SADD key m1 m2 ...`
    SAdd { key: String, members: Vec<String> },
    /// `SREM key m1 m2 ...`
    SRem { key: String, members: Vec<String> },
    /// `SMEMBERS key`
    SMembers { key: String },
    /// `HSET key field value` (exactly one field: proxy-safe).
    HSet {
        key: String,
        field: String,
        value: String,
    },
    /// `HDEL key field`
    HDel { key: String, field: String },
    /// `HGETALL key`
    HGetAll { key: String },
}

/// The answer to one [`Cmd`], in the order the commands were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Nil,
    Ok,
    Int(i64),
    Str(String),
    List(Vec<String>),
    Pairs(Vec<(String, String)>),
    /// The server refused this one command (e.g. WRONGTYPE); the others ran.
    Error(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store protocol error: {0}")]
    Protocol(String),
    #[error("invalid store configuration: {0}")]
    Config(String),
}

/// A database speaking the proxy-safe dialect.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `cmds` as one pipeline and returns one reply per command, in
    /// order. `Err` means the batch as a whole failed (connection lost,
    /// proxy closed the connection): nothing can be assumed about it.
    async fn exec(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError>;

    /// Liveness check that works through proxies (`GET` of a sentinel key).
    async fn health(&self) -> Result<(), StoreError>;

    /// `"embedded"` or `"redis"`, for logs.
    fn kind(&self) -> &'static str;
}

/// The session/routing table as the runtime sees it.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Store { backend }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Value of one mapping key (a JID or a domain): the owning local_host.
    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let cmd = Cmd::Get {
            key: key.to_owned(),
        };
        match self.backend.exec(std::slice::from_ref(&cmd)).await?.pop() {
            Some(Reply::Str(v)) => Ok(Some(v)),
            Some(Reply::Nil) => Ok(None),
            other => Err(StoreError::Protocol(format!(
                "GET {key}: unexpected reply {other:?}"
            ))),
        }
    }
}
