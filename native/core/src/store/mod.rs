//! Metadata store: the session/routing table shared by all datacenters
//! (SPEC 3), with MongooseIM's key layout.
//!
//! Two layers:
//! * [`Backend`] speaks the proxy-safe dialect of `docs/REDIS.md` as plain
//!   data ([`Cmd`] in, [`Reply`] out, always pipelined). `embedded`,
//!   `redis` and `redis_cluster` implement it; nothing else talks to a
//!   database.
//! * [`Store`] knows the key layout and the ownership rules (plain SET to
//!   open a session, compare-and-set to refresh or delete) and is what the
//!   rest of the runtime uses.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::{FuturesOrdered, StreamExt};

use crate::config::{BackendKind, Config};

pub mod embedded;
pub mod health;
pub mod inspect;
pub mod keys;
pub mod lease;
pub mod redis;
pub mod redis_cluster;
mod redis_tls;
pub mod refresher;
pub mod start_check;

pub use embedded::EmbeddedBackend;
pub use health::{ErrorKind, HealthReport, HealthStatus, StoreHealth};
pub use redis::RedisBackend;
pub use redis_cluster::RedisClusterBackend;
pub use refresher::{OwnedState, RefreshStats, Refresher, RefresherHandle};

/// Commands per pipeline: large inputs are cut into batches of this size so
/// that one reply never grows without bound and a proxy is never flooded.
pub const BATCH: usize = 1000;

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
    /// `SSCAN key cursor COUNT count`: one batch of a set's members
    /// (cursor `"0"` starts and ends). Replies [`Reply::Scan`]. Reads a big
    /// set (a dead node's sessions) without one huge reply.
    SScan {
        key: String,
        cursor: String,
        count: u32,
    },
    /// `TTL key`: seconds left; `Int(-1)` without expiry, `Int(-2)` when
    /// the key does not exist (operator reads: `gdctl where`).
    Ttl { key: String },
}

impl Cmd {
    /// The one key the command touches (Redis Cluster routes by it).
    pub fn key(&self) -> &str {
        match self {
            Cmd::Get { key }
            | Cmd::SetEx { key, .. }
            | Cmd::RefreshIfOurs { key, .. }
            | Cmd::DeleteIfOurs { key, .. }
            | Cmd::Del { key }
            | Cmd::Expire { key, .. }
            | Cmd::SAdd { key, .. }
            | Cmd::SRem { key, .. }
            | Cmd::SMembers { key }
            | Cmd::HSet { key, .. }
            | Cmd::HDel { key, .. }
            | Cmd::HGetAll { key }
            | Cmd::SScan { key, .. }
            | Cmd::Ttl { key } => key,
        }
    }
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
    /// A batch of `SSCAN`: the next cursor (`"0"` when done) and members.
    Scan {
        cursor: String,
        members: Vec<String>,
    },
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

    /// Same as [`Backend::exec`], but tried even while the store is known
    /// down: the refresher's passes and pending retries are the probes that
    /// find it back (the Redis backend's `down_until` circuit, docs/REDIS.md).
    async fn exec_probe(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        self.exec(cmds).await
    }

    /// Liveness check that works through proxies (`GET` of a sentinel key).
    async fn health(&self) -> Result<(), StoreError>;

    /// [`Backend::health`] answered within `within`, dial included (the
    /// start-time check), whatever the store was known to be before.
    async fn health_within(&self, within: Duration) -> Result<(), StoreError> {
        match tokio::time::timeout(within, self.health()).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{} store did not answer within {} ms",
                self.kind(),
                within.as_millis()
            ))),
        }
    }

    /// `"embedded"` or `"redis"`, for logs.
    fn kind(&self) -> &'static str;

    /// What the store is, for messages (`redis 10.0.0.3:6379`).
    fn describe(&self) -> String {
        format!("the {} store", self.kind())
    }

    /// How many pipelines bulk work (a refresh pass, a large batch) may keep
    /// in flight at once. One pipeline at a time leaves a networked store
    /// idle for a round trip per batch; the store then sets the pace.
    fn concurrency(&self) -> usize {
        1
    }
}

/// The backend a configuration names: a new embedded store, or Redis
/// (dialling nothing yet): a Redis Cluster when `redis.cluster` names seed
/// nodes, else one server (or a proxy). The runtime's start and `gdctl`
/// build theirs here.
pub fn backend_for(config: &Config) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(match config.backend {
        BackendKind::Embedded => Arc::new(EmbeddedBackend::new()),
        BackendKind::Redis => redis_backend(&config.redis)?,
    })
}

/// The Redis backend the `redis` section describes: a Redis Cluster when
/// `redis.cluster` names seed nodes, else one server (or a proxy).
pub fn redis_backend(cfg: &crate::config::RedisConfig) -> Result<Arc<dyn Backend>, StoreError> {
    Ok(if cfg.cluster.is_empty() {
        Arc::new(RedisBackend::new(cfg)?)
    } else {
        Arc::new(RedisClusterBackend::new(cfg)?)
    })
}

/// The session/routing table as the runtime sees it.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Calls of this handle are probes ([`Backend::exec_probe`]).
    probe: bool,
    /// Where each call's outcome is counted (a runtime's store has one).
    health: Option<Arc<StoreHealth>>,
}

impl Store {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Store {
            backend,
            probe: false,
            health: None,
        }
    }

    /// The same store, counting the outcome of every call in `health`.
    pub fn with_health(mut self, health: Arc<StoreHealth>) -> Store {
        self.health = Some(health);
        self
    }

    pub fn health(&self) -> Option<&Arc<StoreHealth>> {
        self.health.as_ref()
    }

    /// The same store, for the refresher's passes: its calls are tried even
    /// while the store is known down, so that they find it back.
    pub fn probing(&self) -> Store {
        Store {
            backend: self.backend.clone(),
            probe: true,
            health: self.health.clone(),
        }
    }

    /// One pipeline through the backend, as a probe or not; the outcome,
    /// and each command the server refused, is counted in the health.
    async fn exec(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        let result = if self.probe {
            self.backend.exec_probe(cmds).await
        } else {
            self.backend.exec(cmds).await
        };
        if let Some(h) = &self.health {
            match &result {
                Ok(replies) => {
                    h.succeeded();
                    for r in replies {
                        if let Reply::Error(line) = r {
                            h.refused(line);
                        }
                    }
                }
                Err(e) => h.failed(e),
            }
        }
        result
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Value of one mapping key (a JID or a domain): the owning local_host.
    pub async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let cmd = Cmd::Get {
            key: key.to_owned(),
        };
        match self.exec(std::slice::from_ref(&cmd)).await?.pop() {
            Some(Reply::Str(v)) => Ok(Some(v)),
            Some(Reply::Nil) => Ok(None),
            other => Err(StoreError::Protocol(format!(
                "GET {key}: unexpected reply {other:?}"
            ))),
        }
    }
}

/// Who writes: this DC's local_host and this node's name, both checked
/// against the key layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeId {
    pub local_host: String,
    pub node: String,
}

impl NodeId {
    pub fn new(local_host: &str, node: &str) -> Result<Self, StoreError> {
        keys::check_name("local_host", local_host)?;
        keys::check_name("node name", node)?;
        Ok(NodeId {
            local_host: local_host.to_owned(),
            node: node.to_owned(),
        })
    }
}

/// What [`Store::heartbeat_detail`] saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// Nodes of this DC whose stamp was older than `expire_after`: pruned.
    pub dead: Vec<String>,
    /// Those whose field this call removed (the others were removed by a
    /// concurrent survivor).
    pub won: Vec<String>,
    /// This node's field did not exist before the stamp.
    pub stamp_new: bool,
}

/// Outcome of a compare-and-set refresh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshCount {
    /// Keys that were ours or gone and were (re)written.
    pub written: u64,
    /// Keys found holding another DC's name: left alone.
    pub foreign: u64,
}

/// TTL in whole seconds, at least one (Redis refuses `EX 0`).
pub fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs().max(1)
}

pub(crate) fn int_of(key: &str, r: &Reply) -> Result<i64, StoreError> {
    match r {
        Reply::Int(i) => Ok(*i),
        other => Err(StoreError::Protocol(format!(
            "{key}: expected an integer reply, got {other:?}"
        ))),
    }
}

fn check_replies(replies: &[Reply]) -> Result<(), StoreError> {
    match replies.iter().find_map(|r| match r {
        Reply::Error(e) => Some(e),
        _ => None,
    }) {
        Some(e) => Err(StoreError::Protocol(format!("command refused: {e}"))),
        None => Ok(()),
    }
}

impl Store {
    /// Pipelines the backend may keep in flight at once (at least 1).
    pub fn concurrency(&self) -> usize {
        self.backend.concurrency().max(1)
    }

    /// Runs `cmds` in pipelines of at most [`BATCH`] commands, up to
    /// [`Store::concurrency`] of them in flight; replies come back in
    /// command order. Overlapping pipelines are safe because every command
    /// of the dialect is idempotent and the commands of one call never depend
    /// on each other's order (distinct keys, or distinct fields of one hash).
    pub async fn exec_batched(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        if cmds.len() <= BATCH {
            return self.exec(cmds).await;
        }
        let mut out = Vec::with_capacity(cmds.len());
        let mut chunks = cmds.chunks(BATCH);
        let mut in_flight = FuturesOrdered::new();
        loop {
            while in_flight.len() < self.concurrency() {
                let Some(chunk) = chunks.next() else { break };
                in_flight.push_back(self.exec(chunk));
            }
            match in_flight.next().await {
                Some(batch) => out.extend(batch?),
                None => return Ok(out),
            }
        }
    }

    /// A user logged in here: plain `SET k local_host EX ttl` for each key
    /// (full and bare JID). The newest login wins, wherever it happened.
    pub async fn open_sessions(
        &self,
        keys: &[String],
        local_host: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|k| Cmd::SetEx {
                key: k.clone(),
                value: local_host.to_owned(),
                ttl_secs: ttl_secs(ttl),
            })
            .collect();
        check_replies(&self.exec_batched(&cmds).await?)
    }

    /// Re-writes keys only where they are still ours or gone, so a refresh
    /// from the DC a user left never overwrites the newer entry (MongooseIM
    /// issue #2392).
    pub async fn refresh_sessions(
        &self,
        keys: &[String],
        local_host: &str,
        ttl: Duration,
    ) -> Result<RefreshCount, StoreError> {
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|k| Cmd::RefreshIfOurs {
                key: k.clone(),
                value: local_host.to_owned(),
                ttl_secs: ttl_secs(ttl),
            })
            .collect();
        let replies = self.exec_batched(&cmds).await?;
        count_cas(keys, &replies)
    }

    /// Deletes keys only where they are ours; returns how many were deleted.
    pub async fn delete_sessions(
        &self,
        keys: &[String],
        local_host: &str,
    ) -> Result<u64, StoreError> {
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|k| Cmd::DeleteIfOurs {
                key: k.clone(),
                value: local_host.to_owned(),
            })
            .collect();
        let replies = self.exec_batched(&cmds).await?;
        Ok(count_cas(keys, &replies)?.written)
    }

    /// A subdomain (component, MUC…) now lives on this node: its mapping key
    /// and its membership in the node's `{domains}` (and, unless hidden,
    /// `{public_domains}`) sets, all with the TTL.
    pub async fn register_domain(
        &self,
        me: &NodeId,
        domain: &str,
        public: bool,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut cmds = vec![Cmd::SetEx {
            key: domain.to_owned(),
            value: me.local_host.clone(),
            ttl_secs: ttl_secs(ttl),
        }];
        push_domain_sets(&mut cmds, me, &[(domain.to_owned(), public)], ttl);
        check_replies(&self.exec(&cmds).await?)
    }

    /// Re-writes this node's domains: CAS on each mapping key (never
    /// overwriting another DC's), then the sets and their TTL.
    pub async fn refresh_domains(
        &self,
        me: &NodeId,
        domains: &[(String, bool)],
        ttl: Duration,
    ) -> Result<RefreshCount, StoreError> {
        if domains.is_empty() {
            return Ok(RefreshCount::default());
        }
        let names: Vec<String> = domains.iter().map(|(d, _)| d.clone()).collect();
        let count = self.refresh_sessions(&names, &me.local_host, ttl).await?;
        for chunk in domains.chunks(BATCH) {
            let mut cmds = Vec::new();
            push_domain_sets(&mut cmds, me, chunk, ttl);
            check_replies(&self.exec(&cmds).await?)?;
        }
        Ok(count)
    }

    /// The subdomain is gone: delete its mapping where ours, leave the sets.
    pub async fn unregister_domain(&self, me: &NodeId, domain: &str) -> Result<(), StoreError> {
        let members = vec![domain.to_owned()];
        let cmds = [
            Cmd::DeleteIfOurs {
                key: domain.to_owned(),
                value: me.local_host.clone(),
            },
            Cmd::SRem {
                key: keys::domains(&me.local_host, &me.node),
                members: members.clone(),
            },
            Cmd::SRem {
                key: keys::public_domains(&me.local_host, &me.node),
                members,
            },
        ];
        check_replies(&self.exec(&cmds).await?)
    }

    /// Advertises this node's endpoints (`addr#port` members) with the TTL.
    pub async fn publish_endpoints(
        &self,
        me: &NodeId,
        endpoints: &[(String, u16)],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        if endpoints.is_empty() {
            return Ok(());
        }
        let key = keys::endpoints(&me.local_host, &me.node);
        let cmds = [
            Cmd::SAdd {
                key: key.clone(),
                members: endpoints
                    .iter()
                    .map(|(a, p)| keys::endpoint_member(a, *p))
                    .collect(),
            },
            Cmd::Expire {
                key,
                ttl_secs: ttl_secs(ttl),
            },
        ];
        check_replies(&self.exec(&cmds).await?)
    }

    /// Stamps this node alive in `<local_host>#{nodes}`, makes sure
    /// local_host is in `hosts`, and prunes the fields of nodes that have not
    /// refreshed for `expire_after` (dead nodes). Returns the pruned nodes.
    pub async fn heartbeat(
        &self,
        me: &NodeId,
        now_unix: u64,
        expire_after: Duration,
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .heartbeat_detail(me, now_unix, expire_after)
            .await?
            .dead)
    }

    /// [`Store::heartbeat`], telling also whether this node's field was new
    /// (`HSET` answered 1: first stamp, or the node had been pruned as dead
    /// or the store lost the hash) and which dead nodes this call removed
    /// itself (`HDEL` answered 1: with concurrent survivors, exactly one
    /// removes each dead node, and that one cleans up after it).
    pub async fn heartbeat_detail(
        &self,
        me: &NodeId,
        now_unix: u64,
        expire_after: Duration,
    ) -> Result<Heartbeat, StoreError> {
        let nodes_key = keys::nodes(&me.local_host);
        let cmds = [
            Cmd::HSet {
                key: nodes_key.clone(),
                field: me.node.clone(),
                value: now_unix.to_string(),
            },
            Cmd::SAdd {
                key: keys::HOSTS.to_owned(),
                members: vec![me.local_host.clone()],
            },
            Cmd::HGetAll {
                key: nodes_key.clone(),
            },
        ];
        let replies = self.exec(&cmds).await?;
        check_replies(&replies)?;
        let stamp_new = matches!(replies.first(), Some(Reply::Int(1)));
        let dead: Vec<String> = match replies.last() {
            Some(Reply::Pairs(pairs)) => pairs
                .iter()
                .filter(|(node, stamp)| {
                    *node != me.node
                        && stamp
                            .parse::<u64>()
                            .is_ok_and(|s| now_unix.saturating_sub(s) > expire_after.as_secs())
                })
                .map(|(node, _)| node.clone())
                .collect(),
            other => {
                return Err(StoreError::Protocol(format!(
                    "HGETALL {nodes_key}: unexpected reply {other:?}"
                )))
            }
        };
        let prune: Vec<Cmd> = dead
            .iter()
            .map(|n| Cmd::HDel {
                key: nodes_key.clone(),
                field: n.clone(),
            })
            .collect();
        let mut won = Vec::new();
        if !prune.is_empty() {
            let replies = self.exec_batched(&prune).await?;
            check_replies(&replies)?;
            won = dead
                .iter()
                .zip(&replies)
                .filter(|(_, r)| matches!(r, Reply::Int(1)))
                .map(|(n, _)| n.clone())
                .collect();
            tracing::info!(what = "dead_nodes_pruned", host = %me.local_host, nodes = ?dead);
        }
        Ok(Heartbeat {
            dead,
            won,
            stamp_new,
        })
    }

    /// Every known local_host (the `hosts` set).
    pub async fn hosts(&self) -> Result<Vec<String>, StoreError> {
        let mut v = self.smembers_union(vec![keys::HOSTS.to_owned()]).await?;
        v.sort();
        Ok(v)
    }

    /// Names of the nodes of `host` (fields of `<host>#{nodes}`).
    pub async fn nodes_of(&self, host: &str) -> Result<Vec<String>, StoreError> {
        let key = keys::nodes(host);
        let cmd = Cmd::HGetAll { key: key.clone() };
        match self.exec(std::slice::from_ref(&cmd)).await?.pop() {
            Some(Reply::Pairs(p)) => Ok(p.into_iter().map(|(n, _)| n).collect()),
            other => Err(StoreError::Protocol(format!(
                "HGETALL {key}: unexpected reply {other:?}"
            ))),
        }
    }

    /// Endpoints advertised by every node of `host`, deduplicated; malformed
    /// members are skipped with a warning.
    pub async fn endpoints_of(&self, host: &str) -> Result<Vec<(String, u16)>, StoreError> {
        let set_keys = self
            .nodes_of(host)
            .await?
            .iter()
            .map(|n| keys::endpoints(host, n))
            .collect();
        let mut out: Vec<(String, u16)> = Vec::new();
        for m in self.smembers_union(set_keys).await? {
            match keys::parse_endpoint_member(&m) {
                Some(ep) => out.push(ep),
                None => tracing::warn!(what = "bad_endpoint_member", host = %host, member = %m),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Subdomains registered by any node of any host (only the public ones
    /// when `public_only`), deduplicated and sorted.
    pub async fn domains(&self, public_only: bool) -> Result<Vec<String>, StoreError> {
        let mut set_keys = Vec::new();
        for host in self.hosts().await? {
            for node in self.nodes_of(&host).await? {
                set_keys.push(if public_only {
                    keys::public_domains(&host, &node)
                } else {
                    keys::domains(&host, &node)
                });
            }
        }
        self.smembers_union(set_keys).await
    }

    /// One pipelined `SMEMBERS` per key, merged here: multi-key set commands
    /// are not proxy-safe across different hash tags.
    async fn smembers_union(&self, set_keys: Vec<String>) -> Result<Vec<String>, StoreError> {
        let cmds: Vec<Cmd> = set_keys
            .into_iter()
            .map(|key| Cmd::SMembers { key })
            .collect();
        let mut all = BTreeSet::new();
        for r in self.exec_batched(&cmds).await? {
            match r {
                Reply::List(items) => all.extend(items),
                other => {
                    return Err(StoreError::Protocol(format!(
                        "SMEMBERS: unexpected reply {other:?}"
                    )))
                }
            }
        }
        Ok(all.into_iter().collect())
    }
}

fn push_domain_sets(cmds: &mut Vec<Cmd>, me: &NodeId, domains: &[(String, bool)], ttl: Duration) {
    let all_key = keys::domains(&me.local_host, &me.node);
    let pub_key = keys::public_domains(&me.local_host, &me.node);
    let public: Vec<String> = domains
        .iter()
        .filter(|(_, p)| *p)
        .map(|(d, _)| d.clone())
        .collect();
    cmds.push(Cmd::SAdd {
        key: all_key.clone(),
        members: domains.iter().map(|(d, _)| d.clone()).collect(),
    });
    cmds.push(Cmd::Expire {
        key: all_key,
        ttl_secs: ttl_secs(ttl),
    });
    if !public.is_empty() {
        cmds.push(Cmd::SAdd {
            key: pub_key.clone(),
            members: public,
        });
        cmds.push(Cmd::Expire {
            key: pub_key,
            ttl_secs: ttl_secs(ttl),
        });
    }
}

fn count_cas(keys: &[String], replies: &[Reply]) -> Result<RefreshCount, StoreError> {
    let mut c = RefreshCount::default();
    for (k, r) in keys.iter().zip(replies) {
        if int_of(k, r)? == 1 {
            c.written += 1;
        } else {
            c.foreign += 1;
        }
    }
    Ok(c)
}
