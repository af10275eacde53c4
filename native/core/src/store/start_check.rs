//! The store check at start: within `redis.start_timeout_ms`, prove that
//! the store can be reached, that we are let in, and that it runs every
//! command of the dialect for this node, so that a wrong password, a
//! missing ACL grant, a TLS mismatch or a Redis Cluster node configured as
//! a single server fails `start` with a message naming the fix, instead of
//! a node that starts and then fails every call.
//!
//! Everything sent stays inside the proxy-safe dialect (docs/REDIS.md), so
//! the check passes through twemproxy and Dynomite:
//! 1. `GET global_distrib#health` (the health check: dial, TLS, `AUTH`,
//!    `SELECT` included), bounded by the start deadline;
//! 2. one pipeline: `GET`s of keys spread over the whole Redis Cluster slot
//!    range (a cluster node answers `MOVED` for the slots it does not
//!    serve), then every command of the dialect on one scratch key of this
//!    node's own namespace, `<local_host>#<node>#{probe}`: the ownership
//!    scripts the refresher runs (`EVAL`), `SET … EX`, `GET`, `EXPIRE`,
//!    `DEL`, the set and the hash commands. Every write carries a short TTL
//!    or is undone by the next command; the key is gone at the end.

use std::time::{Duration, Instant};

use super::{Backend, Cmd, NodeId, Reply, StoreError};

/// TTL of the scratch key, should the check stop half way.
const PROBE_TTL: u64 = 10;

/// Hash tags whose Redis Cluster slots fall in each sixteenth of the slot
/// range (CRC16 of the tag mod 16384: 247, 1584, 2369, … 16130; checked by
/// a test below): a node of a cluster of two or more masters does not
/// serve all of them and answers `MOVED` for some.
const SLOT_SPREAD: [&str; 16] = [
    "10", "3", "61", "43", "11", "2", "60", "42", "12", "1", "63", "41", "13", "0", "62", "40",
];

/// The scratch key of `node`.
pub fn probe_key(node: &NodeId) -> String {
    format!("{}#{}#{{probe}}", node.local_host, node.node)
}

/// Runs the check; the error is the operator's message (without `start: `).
/// `lease`: the node runs in lease mode and needs `SSCAN` too (dead-node
/// cleanup); per_key nodes are not asked for it, so their ACL stays as it was.
pub async fn run(
    backend: &dyn Backend,
    node: &NodeId,
    within: Duration,
    lease: bool,
) -> Result<(), String> {
    let started = Instant::now();
    backend.health_within(within).await.map_err(|e| match e {
        StoreError::Unavailable(why) => why,
        e => e.to_string(),
    })?;
    let mut cmds = probe_commands(node);
    if lease {
        cmds.push(Cmd::SScan {
            key: probe_key(node),
            cursor: "0".to_owned(),
            count: 10,
        });
    }
    let left = within.saturating_sub(started.elapsed());
    let target = backend.describe();
    let replies = match tokio::time::timeout(left, backend.exec_probe(&cmds)).await {
        Ok(Ok(replies)) => replies,
        Ok(Err(e)) => return Err(format!("{target}: the store check failed: {e}")),
        Err(_) => {
            return Err(format!(
                "{target} did not answer the store check within {} ms",
                within.as_millis()
            ))
        }
    };
    for (cmd, reply) in cmds.iter().zip(&replies) {
        if let Reply::Error(error) = reply {
            return Err(format!("{target}: {}", explain(command_name(cmd), error)));
        }
    }
    Ok(())
}

fn probe_commands(node: &NodeId) -> Vec<Cmd> {
    let key = probe_key(node);
    let ours = node.local_host.clone();
    let mut cmds: Vec<Cmd> = SLOT_SPREAD
        .iter()
        .map(|tag| Cmd::Get {
            key: format!("global_distrib#probe{{{tag}}}"),
        })
        .collect();
    let k = || key.clone();
    cmds.extend([
        Cmd::RefreshIfOurs {
            key: k(),
            value: ours.clone(),
            ttl_secs: PROBE_TTL,
        },
        Cmd::DeleteIfOurs {
            key: k(),
            value: ours.clone(),
        },
        Cmd::SetEx {
            key: k(),
            value: ours.clone(),
            ttl_secs: PROBE_TTL,
        },
        Cmd::Get { key: k() },
        Cmd::Expire {
            key: k(),
            ttl_secs: PROBE_TTL,
        },
        Cmd::Del { key: k() },
        Cmd::SAdd {
            key: k(),
            members: vec![ours.clone()],
        },
        Cmd::Expire {
            key: k(),
            ttl_secs: PROBE_TTL,
        },
        Cmd::SMembers { key: k() },
        Cmd::SRem {
            key: k(),
            members: vec![ours.clone()],
        },
        Cmd::HSet {
            key: k(),
            field: node.node.clone(),
            value: "0".to_owned(),
        },
        Cmd::Expire {
            key: k(),
            ttl_secs: PROBE_TTL,
        },
        Cmd::HGetAll { key: k() },
        Cmd::HDel {
            key: k(),
            field: node.node.clone(),
        },
    ]);
    cmds
}

/// The Redis command a [`Cmd`] is sent as, as ACLs name it.
pub fn command_name(cmd: &Cmd) -> &'static str {
    match cmd {
        Cmd::Get { .. } => "get",
        Cmd::SetEx { .. } => "set",
        Cmd::RefreshIfOurs { .. } | Cmd::DeleteIfOurs { .. } => "eval",
        Cmd::Del { .. } => "del",
        Cmd::Expire { .. } => "expire",
        Cmd::SAdd { .. } => "sadd",
        Cmd::SRem { .. } => "srem",
        Cmd::SMembers { .. } => "smembers",
        Cmd::HSet { .. } => "hset",
        Cmd::HDel { .. } => "hdel",
        Cmd::HGetAll { .. } => "hgetall",
        Cmd::SScan { .. } => "sscan",
        // Only gdctl reads TTLs; the runtime never sends it.
        Cmd::Ttl { .. } => "ttl",
    }
}

/// What a server error to `cmd` means for the operator, and the fix.
pub fn explain(cmd: &str, error: &str) -> String {
    let code = error.split_whitespace().next().unwrap_or("");
    match code {
        "MOVED" | "ASK" | "CLUSTERDOWN" | "CROSSSLOT" => {
            format!("this is a Redis Cluster node ({cmd} answered {error:?}): use redis.cluster")
        }
        "NOAUTH" => "the server requires authentication (NOAUTH): set redis.password \
                     (and redis.username for an ACL user)"
            .to_owned(),
        "WRONGPASS" => {
            format!("authentication refused ({error}): check redis.password and redis.username")
        }
        "READONLY" => format!(
            "the server is a read-only replica ({error}): point the configuration at the primary"
        ),
        "LOADING" | "MASTERDOWN" | "BUSY" => {
            format!("the server cannot serve requests yet ({error}): retry once it is ready")
        }
        _ if error.contains("NOPERM")
            || error.contains("no permissions")
            || error.contains("can't run this command") =>
        {
            no_permission(cmd, error)
        }
        _ => format!("{} failed: {error}", cmd.to_uppercase()),
    }
}

/// `NOPERM`, sent directly (`… to run the 'eval' command`, `… to access one
/// of the keys …`) or from inside a script.
fn no_permission(cmd: &str, error: &str) -> String {
    if error.contains("key") && !error.contains("command") {
        return format!(
            "the Redis user lacks the permission to access the store's keys ({error}): \
             grant ~* (docs/REDIS.md, ACL)"
        );
    }
    let named = error
        .split('\'')
        .nth(1)
        .filter(|name| !name.is_empty() && !name.contains(' '))
        .map(str::to_lowercase);
    match named {
        Some(name) if name != cmd && cmd == "eval" => format!(
            "the Redis user lacks the permission to run {name}, which the ownership script \
             (eval) calls: grant it (docs/REDIS.md, ACL)"
        ),
        Some(name) => format!(
            "the Redis user lacks the permission to run {name}: grant it (docs/REDIS.md, ACL)"
        ),
        None if cmd == "eval" => format!(
            "the Redis user lacks the permission to run a command the ownership script (eval) \
             calls ({error}): grant get, set and del (docs/REDIS.md, ACL)"
        ),
        None => format!(
            "the Redis user lacks the permission to run {cmd}: grant it (docs/REDIS.md, ACL)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Redis Cluster's key slot (CRC16/XMODEM of the hash tag, mod 16384).
    fn slot(tag: &str) -> u16 {
        let mut crc: u16 = 0;
        for byte in tag.bytes() {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn the_cluster_probe_keys_cover_every_sixteenth_of_the_slots() {
        assert_eq!(slot("123456789"), 12739);
        let sixteenths: Vec<u16> = SLOT_SPREAD.iter().map(|t| slot(t) / 1024).collect();
        assert_eq!(sixteenths, (0..16).collect::<Vec<u16>>());
    }

    #[test]
    fn server_errors_name_the_fix() {
        assert_eq!(
            explain(
                "eval",
                "NOPERM this user has no permissions to run the 'eval' command"
            ),
            "the Redis user lacks the permission to run eval: grant it (docs/REDIS.md, ACL)"
        );
        assert!(explain("get", "MOVED 3999 127.0.0.1:7001").ends_with("use redis.cluster"));
        assert!(explain("get", "CLUSTERDOWN Hash slot not served").contains("Redis Cluster"));
        assert!(explain("get", "NOAUTH Authentication required.").contains("redis.password"));
        assert_eq!(
            explain("hset", "WRONGTYPE Operation against a key"),
            "HSET failed: WRONGTYPE Operation against a key"
        );
        assert!(explain(
            "set",
            "NOPERM this user has no permissions to access one of the keys used as arguments"
        )
        .contains("grant ~*"));
    }

    #[test]
    fn the_probe_stays_on_one_key_of_this_node() {
        let node = NodeId::new("dc1.example.com", "n1@h").unwrap_or_else(|e| panic!("{e}"));
        let key = probe_key(&node);
        assert_eq!(key, "dc1.example.com#n1@h#{probe}");
        let cmds = probe_commands(&node);
        let on_key = cmds
            .iter()
            .filter(|c| format!("{c:?}").contains(&key))
            .count();
        assert_eq!(on_key, cmds.len() - SLOT_SPREAD.len());
    }
}
