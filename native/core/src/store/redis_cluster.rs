//! Redis Cluster backend (`redis.cluster` seed nodes): the same dialect and
//! the same deadlines as the single-server backend in `redis.rs`, over
//! redis-rs' async cluster client, which keeps the slot map, one
//! multiplexed connection per node, and follows `MOVED`/`ASK` redirects
//! while slots are resharded.
//!
//! A Redis Cluster node refuses a pipeline whose keys live in other slots,
//! and the client can route a pipeline only by one slot. So a batch is cut
//! by slot: the commands of one slot go as one pipeline, in their original
//! order (an `SADD` before the `EXPIRE` of the same set), the pipelines of
//! different slots run concurrently, and the replies are put back in the
//! batch's order. The `{…}` hash tags of `keys.rs` keep each per-node set on
//! one slot; a mapping key (a JID) is its own slot.
//!
//! While a slot migrates, a key already moved to the importing node is
//! answered with `ASK`; the client replays a pipeline there after one
//! `ASKING`, which covers its first command only. A slot's pipeline that
//! still fails with a redirect is therefore sent again one command at a
//! time (each its own redirect), in order, within the same deadline: every
//! command of the dialect is idempotent.
//!
//! Deadlines: every batch (dial included) ends within `redis.timeout_ms`;
//! the client's own timeouts are off, a missed deadline is never retried,
//! and the `down_until` circuit of `redis.rs` (shared, not copied) makes
//! callers fail at once while the cluster is known down.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{ErrorKind, ProtocolVersion, RedisError, ServerErrorKind, Value};

use super::redis::{
    add_cmd, raw_reply, reply, server_error_text, Circuit, Failure, Gate, ProbeGuard, KNOWN_DOWN,
    TIMED_OUT,
};
use super::{keys, Backend, Cmd, Reply, StoreError};
use crate::config::RedisConfig;

/// Bounds of the client's own wait before retrying a `TRYAGAIN` or
/// `CLUSTERDOWN` (its defaults start at 1.28 s, beyond a batch's deadline).
const MIN_RETRY_WAIT_MS: u64 = 10;
const MAX_RETRY_WAIT_MS: u64 = 100;

pub struct RedisClusterBackend {
    client: ClusterClient,
    /// The seed nodes, for logs and errors.
    target: String,
    timeout: Duration,
    /// Dialled lazily (outside the lock); the client reconnects nodes and
    /// refreshes its slot map by itself afterwards.
    conn: parking_lot::Mutex<Option<ClusterConnection>>,
    concurrency: usize,
    circuit: Circuit,
}

impl RedisClusterBackend {
    /// Builds the backend from the `redis` config section (`cluster` seed
    /// nodes, credentials, `timeout_ms`); dials nothing yet.
    pub fn new(cfg: &RedisConfig) -> Result<Self, StoreError> {
        Self::with_timeout(cfg, Duration::from_millis(cfg.timeout_ms))
    }

    /// Same, with an explicit per-batch timeout.
    pub fn with_timeout(cfg: &RedisConfig, timeout: Duration) -> Result<Self, StoreError> {
        let client = cluster_client(cfg, timeout)?;
        Ok(RedisClusterBackend {
            client,
            target: cfg
                .cluster
                .iter()
                .map(|s| s.trim_start_matches("redis://"))
                .collect::<Vec<_>>()
                .join(","),
            timeout,
            conn: parking_lot::Mutex::new(None),
            concurrency: cfg.pool_size.max(4) as usize,
            circuit: Circuit::default(),
        })
    }

    /// Sends one arbitrary command, routed by its key (or to a random node
    /// without one). For diagnostics and tests.
    pub async fn raw(&self, args: &[&str]) -> Result<Reply, StoreError> {
        let Some((name, rest)) = args.split_first() else {
            return Err(StoreError::Protocol("raw: empty command".into()));
        };
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd(name);
        for a in rest {
            pipe.arg(*a);
        }
        let run = async {
            let mut conn = self.connection().await?;
            let mut values = pipe
                .query_async::<Vec<Value>>(&mut conn)
                .await
                .map_err(|e| Failure::Other(e.to_string()))?;
            Ok(values.pop().map(raw_reply).unwrap_or(Reply::Nil))
        };
        self.within(Gate::Probe, self.timeout, run)
            .await
            .map_err(|why| self.failed(why))
    }

    /// The seed nodes (`host:port,…`), for logs.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The cluster connection, dialled now if there is none: the client
    /// reads the slot map from the first seed node that answers.
    async fn connection(&self) -> Result<ClusterConnection, Failure> {
        if let Some(conn) = self.conn.lock().as_ref() {
            return Ok(conn.clone());
        }
        let conn = self
            .client
            .get_async_connection()
            .await
            .map_err(|e| Failure::Down(format!("cannot connect: {e}")))?;
        let mut guard = self.conn.lock();
        if let Some(first) = guard.as_ref() {
            return Ok(first.clone());
        }
        *guard = Some(conn.clone());
        drop(guard);
        tracing::debug!(what = "redis_cluster_connected", target = %self.target);
        Ok(conn)
    }

    /// A connection whose background task is gone is dialled anew next time.
    fn discard_if_dropped(&self, e: &RedisError) {
        if e.is_connection_dropped() {
            self.discard();
        }
    }

    /// Forgets the cluster connection: the next batch dials a fresh one
    /// (slot map included), and the old one's task ends with its last user.
    fn discard(&self) {
        *self.conn.lock() = None;
    }

    /// Runs `work` within `within`, behind the circuit for a checked call
    /// (same admission, outcome and deadline rules as `redis.rs`).
    async fn within<T>(
        &self,
        gate: Gate,
        within: Duration,
        work: impl std::future::Future<Output = Result<T, Failure>>,
    ) -> Result<T, String> {
        let probe = match gate {
            Gate::Probe => false,
            Gate::Checked => self.circuit.admit()?,
        };
        let mut outcome = ProbeGuard {
            circuit: &self.circuit,
            probe,
            reported: false,
        };
        let result = match tokio::time::timeout(within, work).await {
            Ok(r) => r,
            Err(_) => {
                // No retry: a timeout says a node is slow or stalled, or
                // the client itself is stuck (redis-rs 1.8's recovery can
                // wedge while slots move, docs/REDIS.md): start afresh
                // next time, as the single backend does with its socket.
                self.discard();
                Err(Failure::Down(format!(
                    "{TIMED_OUT} {} ms",
                    within.as_millis()
                )))
            }
        };
        outcome.report(&result);
        result.map_err(|f| f.text().to_owned())
    }

    /// One batch: a pipeline per slot, concurrently; the values in `cmds`' order.
    async fn run(&self, cmds: &[Cmd]) -> Result<Vec<Value>, Failure> {
        let conn = self.connection().await?;
        let groups = by_slot(cmds);
        let results = join_all(
            groups
                .iter()
                .map(|group| self.run_slot(conn.clone(), cmds, group)),
        )
        .await;
        let mut values: Vec<Option<Value>> = vec![None; cmds.len()];
        for (group, result) in groups.iter().zip(results) {
            for (&i, v) in group.iter().zip(result?) {
                values[i] = Some(v);
            }
        }
        values
            .into_iter()
            .map(|v| v.ok_or_else(|| Failure::Other("a command got no reply".into())))
            .collect()
    }

    /// The commands at `indices` (one slot) as one pipeline; when a
    /// migration redirect defeats it, one command at a time, in order.
    async fn run_slot(
        &self,
        mut conn: ClusterConnection,
        cmds: &[Cmd],
        indices: &[usize],
    ) -> Result<Vec<Value>, Failure> {
        let pipe = pipeline(indices.iter().map(|&i| &cmds[i]));
        match query(&mut conn, &pipe, indices.len()).await {
            Err(QueryError::Redirect(why)) if indices.len() > 1 => {
                tracing::debug!(what = "redis_cluster_slot_one_by_one", target = %self.target, reason = %why);
                let mut values = Vec::with_capacity(indices.len());
                for &i in indices {
                    let pipe = pipeline(std::iter::once(&cmds[i]));
                    values.extend(query(&mut conn, &pipe, 1).await.map_err(|e| self.lost(e))?);
                }
                Ok(values)
            }
            r => r.map_err(|e| self.lost(e)),
        }
    }

    fn lost(&self, e: QueryError) -> Failure {
        match e {
            QueryError::Redirect(why) | QueryError::Reply(why) => Failure::Other(why),
            QueryError::Transport(e) => {
                self.discard_if_dropped(&e);
                Failure::Down(e.to_string())
            }
        }
    }

    async fn exec_gated(&self, cmds: &[Cmd], gate: Gate) -> Result<Vec<Reply>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let values = self
            .within(gate, self.timeout, self.run(cmds))
            .await
            .map_err(|why| self.failed(why))?;
        Ok(cmds.iter().zip(values).map(|(c, v)| reply(c, v)).collect())
    }

    fn failed(&self, failure: String) -> StoreError {
        if failure.starts_with(KNOWN_DOWN) {
            return StoreError::Unavailable(format!("redis cluster {}: {failure}", self.target));
        }
        tracing::warn!(what = "redis_cluster_batch_failed", target = %self.target, reason = %failure);
        StoreError::Unavailable(format!("redis cluster {}: {failure}", self.target))
    }
}

/// The client for the seed nodes: RESP2, the configured credentials on
/// every node, the connect timeout at the batch deadline, no response
/// timeout of its own (the batch deadline bounds every call), short waits
/// before retrying `TRYAGAIN`/`CLUSTERDOWN`. One place to build it, so that
/// TLS can be added here.
fn cluster_client(cfg: &RedisConfig, timeout: Duration) -> Result<ClusterClient, StoreError> {
    if cfg.cluster.is_empty() {
        return Err(StoreError::Config(
            "redis.cluster: no seed nodes given".into(),
        ));
    }
    let mut builder = ClusterClientBuilder::new(cfg.cluster.iter().map(String::as_str))
        .use_protocol(ProtocolVersion::RESP2)
        .connection_timeout(timeout)
        .min_retry_wait(MIN_RETRY_WAIT_MS)
        .max_retry_wait(MAX_RETRY_WAIT_MS);
    if !cfg.password.is_empty() {
        builder = builder.password(&cfg.password);
        if !cfg.username.is_empty() {
            builder = builder.username(&cfg.username);
        }
    }
    builder.build().map_err(|e| {
        StoreError::Config(format!("redis.cluster: cannot use {:?}: {e}", cfg.cluster))
    })
}

/// Indices of `cmds` grouped by the slot of their key, each group in the
/// batch's order, the groups in order of first appearance.
fn by_slot(cmds: &[Cmd]) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut index_of: HashMap<Slot, usize> = HashMap::new();
    for (i, cmd) in cmds.iter().enumerate() {
        let slot = Slot::for_key(cmd.key());
        let g = *index_of.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    groups
}

fn pipeline<'a>(cmds: impl Iterator<Item = &'a Cmd>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for c in cmds {
        add_cmd(&mut pipe, c);
    }
    pipe
}

/// How a slot's pipeline failed.
enum QueryError {
    /// Still redirected (`MOVED`/`ASK`/`TRYAGAIN`) after the client's retries.
    Redirect(String),
    /// The replies did not match the commands.
    Reply(String),
    /// No answer from the node (the client reconnects by itself).
    Transport(RedisError),
}

async fn query(
    conn: &mut ClusterConnection,
    pipe: &redis::Pipeline,
    count: usize,
) -> Result<Vec<Value>, QueryError> {
    match pipe.query_async::<Vec<Value>>(conn).await {
        Ok(values) if values.len() == count => Ok(values),
        Ok(values) => Err(QueryError::Reply(format!(
            "expected {count} replies, got {}",
            values.len()
        ))),
        Err(e) => match e.kind() {
            ErrorKind::Server(
                ServerErrorKind::Moved | ServerErrorKind::Ask | ServerErrorKind::TryAgain,
            ) => Err(QueryError::Redirect(e.to_string())),
            _ => Err(QueryError::Transport(e)),
        },
    }
}

#[async_trait]
impl Backend for RedisClusterBackend {
    async fn exec(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        self.exec_gated(cmds, Gate::Checked).await
    }

    async fn exec_probe(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        self.exec_gated(cmds, Gate::Probe).await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.health_within(self.timeout).await
    }

    /// One `GET` of the health sentinel on the node owning its slot, dial
    /// (slot map included) within `within`, whatever the circuit says.
    async fn health_within(&self, within: Duration) -> Result<(), StoreError> {
        let get = [Cmd::Get {
            key: keys::HEALTH_SENTINEL.to_owned(),
        }];
        let values = self
            .within(Gate::Probe, within, self.run(&get))
            .await
            .map_err(|why| {
                StoreError::Unavailable(match why.strip_prefix(TIMED_OUT) {
                    Some(_) => format!(
                        "redis cluster {} did not answer within {} ms",
                        self.target,
                        within.as_millis()
                    ),
                    None => format!("redis cluster {} cannot be reached: {why}", self.target),
                })
            })?;
        match values.into_iter().next() {
            Some(Value::ServerError(e)) => Err(StoreError::Unavailable(format!(
                "redis cluster {}: health check failed: {}",
                self.target,
                server_error_text(&e)
            ))),
            _ => Ok(()),
        }
    }

    fn kind(&self) -> &'static str {
        "redis-cluster"
    }

    /// Pipelines in flight for bulk work: `pool_size`, at least 4 (the
    /// client keeps one multiplexed connection per node whatever the size).
    fn concurrency(&self) -> usize {
        self.concurrency
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(key: &str) -> Cmd {
        Cmd::Get { key: key.into() }
    }

    #[test]
    fn a_batch_is_cut_by_slot_keeping_the_order_inside_each_slot() {
        let set = "dc1#n1#{domains}";
        let cmds = [
            get("alice@example.com"),
            Cmd::SAdd {
                key: set.into(),
                members: vec!["muc".into()],
            },
            get("bob@example.com"),
            Cmd::Expire {
                key: set.into(),
                ttl_secs: 10,
            },
            // Same tag, same slot as `set`.
            get("other#{domains}"),
            get("alice@example.com"),
        ];
        assert_eq!(by_slot(&cmds), vec![vec![0, 5], vec![1, 3, 4], vec![2]]);
    }
}
