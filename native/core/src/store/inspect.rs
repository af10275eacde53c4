//! What an operator reads from the store (`gdctl`), and the one write it
//! may ask for: evicting a dead node. Same dialect as the runtime (one key
//! per command, pipelined; proxy-safe), same key layout (`keys`).

use super::lease::{unix_now, LeaseState, SweepGuard};
use super::{int_of, keys, Cmd, Reply, Store, StoreError};

/// Time to live of one key, as `TTL` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyTtl {
    /// The key does not exist (`-2`).
    Missing,
    /// The key never expires (`-1`).
    Persistent,
    /// Seconds left.
    Secs(u64),
}

impl KeyTtl {
    fn from_reply(key: &str, r: &Reply) -> Result<KeyTtl, StoreError> {
        Ok(match int_of(key, r)? {
            -2 => KeyTtl::Missing,
            n if n < 0 => KeyTtl::Persistent,
            n => KeyTtl::Secs(n.unsigned_abs()),
        })
    }

    /// Seconds left, if the key exists and expires.
    pub fn secs(self) -> Option<u64> {
        match self {
            KeyTtl::Secs(s) => Some(s),
            _ => None,
        }
    }
}

/// One mapping key (a JID or a domain) and what the store holds for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingEntry {
    pub key: String,
    /// The local_host of the DC owning it; `None` when absent.
    pub owner: Option<String>,
    /// Lease mode: the node whose lease keeps the entry (the value is
    /// `<local_host>{<node>}`); `None` for a plain value.
    pub node: Option<String>,
    pub ttl: KeyTtl,
}

/// What [`Store::evict_node`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Eviction {
    /// The node's field of `<dc>#{nodes}` was there and is gone.
    pub field_removed: bool,
    /// Per-node sets (`{domains}`, `{public_domains}`, `{endpoints}`,
    /// `{sessions}`) deleted.
    pub sets_removed: u64,
    /// Lease mode: session keys listed in the node's `{sessions}` set that
    /// still held its value, deleted.
    pub sessions_deleted: u64,
}

impl Store {
    /// The nodes of `host` with the unix second of their last refresh
    /// (`None` for a stamp that is not a number), sorted by name.
    pub async fn node_stamps(&self, host: &str) -> Result<Vec<(String, Option<u64>)>, StoreError> {
        let key = keys::nodes(host);
        let cmd = Cmd::HGetAll { key: key.clone() };
        match self.exec(std::slice::from_ref(&cmd)).await?.pop() {
            Some(Reply::Pairs(p)) => {
                let mut nodes: Vec<(String, Option<u64>)> =
                    p.into_iter().map(|(n, s)| (n, s.parse().ok())).collect();
                nodes.sort();
                Ok(nodes)
            }
            other => Err(StoreError::Protocol(format!(
                "HGETALL {key}: unexpected reply {other:?}"
            ))),
        }
    }

    /// The endpoints `node` of `host` advertises and the TTL of its set.
    pub async fn node_endpoints(
        &self,
        host: &str,
        node: &str,
    ) -> Result<(Vec<(String, u16)>, KeyTtl), StoreError> {
        let key = keys::endpoints(host, node);
        let cmds = [
            Cmd::SMembers { key: key.clone() },
            Cmd::Ttl { key: key.clone() },
        ];
        let replies = self.exec(&cmds).await?;
        let (Some(Reply::List(members)), Some(ttl)) = (replies.first(), replies.get(1)) else {
            return Err(StoreError::Protocol(format!(
                "SMEMBERS/TTL {key}: unexpected replies {replies:?}"
            )));
        };
        let mut eps: Vec<(String, u16)> = members
            .iter()
            .filter_map(|m| keys::parse_endpoint_member(m))
            .collect();
        eps.sort();
        Ok((eps, KeyTtl::from_reply(&key, ttl)?))
    }

    /// `GET` and `TTL` of each mapping key, one pipeline.
    pub async fn mappings(&self, keys: &[String]) -> Result<Vec<MappingEntry>, StoreError> {
        let cmds: Vec<Cmd> = keys
            .iter()
            .flat_map(|k| [Cmd::Get { key: k.clone() }, Cmd::Ttl { key: k.clone() }])
            .collect();
        let replies = self.exec_batched(&cmds).await?;
        keys.iter()
            .zip(replies.chunks(2))
            .map(|(key, pair)| {
                let (owner, node) = match pair.first() {
                    Some(Reply::Str(v)) => {
                        let (host, node) = keys::parse_owner(v);
                        (Some(host.to_owned()), node.map(str::to_owned))
                    }
                    Some(Reply::Nil) => (None, None),
                    other => {
                        return Err(StoreError::Protocol(format!(
                            "GET {key}: unexpected reply {other:?}"
                        )))
                    }
                };
                let ttl = match pair.get(1) {
                    Some(r) => KeyTtl::from_reply(key, r)?,
                    None => return Err(StoreError::Protocol(format!("TTL {key}: no reply"))),
                };
                Ok(MappingEntry {
                    key: key.clone(),
                    owner,
                    node,
                    ttl,
                })
            })
            .collect()
    }

    /// The lease of `node` at `host` now (lease mode): one `HGETALL`.
    pub async fn lease_state(
        &self,
        host: &str,
        node: &str,
        expire_after: u64,
    ) -> Result<LeaseState, StoreError> {
        let stamps = self.node_stamps(host).await?;
        Ok(match stamps.iter().find(|(n, _)| n == node) {
            None => LeaseState::Absent,
            Some((_, Some(s))) if unix_now().saturating_sub(*s) <= expire_after => LeaseState::Live,
            Some(_) => LeaseState::Lapsed,
        })
    }

    /// Removes `node` of `host`: its field of `<host>#{nodes}` and its
    /// per-node sets. In lease mode its session keys are listed in its
    /// `{sessions}` set: those still holding its value are deleted too
    /// (the sweep stops if the node stamps again meanwhile: it is alive).
    /// Per_key session keys are not listed per node: they expire by their
    /// TTL. A node still alive writes all of it back at its next refresh.
    pub async fn evict_node(&self, host: &str, node: &str) -> Result<Eviction, StoreError> {
        keys::check_name("local_host", host)?;
        keys::check_name("node name", node)?;
        let cmds = [
            Cmd::HDel {
                key: keys::nodes(host),
                field: node.to_owned(),
            },
            Cmd::Del {
                key: keys::domains(host, node),
            },
            Cmd::Del {
                key: keys::public_domains(host, node),
            },
            Cmd::Del {
                key: keys::endpoints(host, node),
            },
        ];
        let replies = self.exec(&cmds).await?;
        let mut counts = Vec::with_capacity(cmds.len());
        for (c, r) in cmds.iter().zip(&replies) {
            counts.push(int_of(&format!("{c:?}"), r)?);
        }
        let sessions_set = keys::sessions(host, node);
        let listed = self.exec(&[Cmd::Ttl { key: sessions_set }]).await?;
        let had_sessions = !matches!(listed.first(), Some(Reply::Int(-2)));
        let sweep = self
            .sweep_sessions(host, node, SweepGuard::WhileAbsent, &|_| false)
            .await?;
        Ok(Eviction {
            field_removed: counts.first().is_some_and(|n| *n > 0),
            sets_removed: counts.iter().skip(1).map(|n| n.unsigned_abs()).sum::<u64>()
                + u64::from(had_sessions && !sweep.aborted),
            sessions_deleted: sweep.deleted,
        })
    }
}
