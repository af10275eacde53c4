//! The subcommands: each reads through `gd_core::store` and returns both
//! renderings of its answer (JSON for `--json`, text otherwise).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use gd_core::jid::Jid;
use gd_core::store::inspect::{KeyTtl, MappingEntry};
use gd_core::store::lease::LeaseState;
use gd_core::store::{keys, NodeId, Store};
use serde_json::{json, Value};

use crate::{read_config_file, Confirm, Failure, Output};

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn ttl_json(ttl: KeyTtl) -> Value {
    match ttl {
        KeyTtl::Secs(s) => json!(s),
        KeyTtl::Persistent => json!(-1),
        KeyTtl::Missing => Value::Null,
    }
}

fn ttl_text(ttl: KeyTtl) -> String {
    match ttl {
        KeyTtl::Secs(s) => format!("expires in {s} s"),
        KeyTtl::Persistent => "never expires".into(),
        KeyTtl::Missing => "absent".into(),
    }
}

/// One node of `<dc>#{nodes}` with its refresh age.
struct NodeAge {
    node: String,
    stamp: Option<u64>,
    age: Option<u64>,
    dead: bool,
}

async fn node_ages(
    store: &Store,
    dc: &str,
    now: u64,
    expire_after: u64,
) -> Result<Vec<NodeAge>, Failure> {
    Ok(store
        .node_stamps(dc)
        .await?
        .into_iter()
        .map(|(node, stamp)| {
            let age = stamp.map(|s| now.saturating_sub(s));
            NodeAge {
                node,
                stamp,
                age,
                // The runtime prunes a field older than expire_after; one
                // whose stamp is not a number is never refreshed either.
                dead: age.is_none_or(|a| a > expire_after),
            }
        })
        .collect())
}

/// `hosts`: every DC of `hosts`, its nodes and their refresh age.
pub async fn hosts(store: &Store, expire_after: u64) -> Result<Output, Failure> {
    let now = unix_now();
    let mut text = String::new();
    let mut out = Vec::new();
    for dc in store.hosts().await? {
        let nodes = node_ages(store, &dc, now, expire_after).await?;
        let _ = writeln!(text, "{dc}");
        if nodes.is_empty() {
            let _ = writeln!(text, "  (no nodes in {})", keys::nodes(&dc));
        }
        let width = nodes.iter().map(|n| n.node.len()).max().unwrap_or(0);
        for n in &nodes {
            let age = n.age.map_or_else(
                || "stamp unreadable".to_owned(),
                |a| format!("refreshed {a} s ago"),
            );
            let dead = if n.dead {
                format!("  DEAD (older than expire_after {expire_after} s)")
            } else {
                String::new()
            };
            let _ = writeln!(text, "  {:width$}  {age}{dead}", n.node);
        }
        out.push(json!({
            "host": dc,
            "nodes": nodes.iter().map(|n| json!({
                "node": n.node,
                "refreshed_at": n.stamp,
                "age_secs": n.age,
                "dead": n.dead,
            })).collect::<Vec<_>>(),
        }));
    }
    if out.is_empty() {
        text.push_str("(no datacenters in `hosts`)\n");
    }
    Ok(Output {
        json: json!({ "expire_after_secs": expire_after, "hosts": out }),
        text,
    })
}

/// `endpoints DC`: what each node of DC advertises.
pub async fn endpoints(store: &Store, dc: &str) -> Result<Output, Failure> {
    keys::check_name("DC", dc)?;
    let nodes = store.node_stamps(dc).await?;
    if nodes.is_empty() {
        return Err(Failure::new(format!(
            "{dc}: no nodes in {} (is it a datacenter of `hosts`?)",
            keys::nodes(dc)
        )));
    }
    let mut text = String::new();
    let mut out = Vec::new();
    for (node, _) in &nodes {
        let (eps, ttl) = store.node_endpoints(dc, node).await?;
        let list: Vec<String> = eps
            .iter()
            .map(|(a, p)| keys::endpoint_member(a, *p))
            .collect();
        let shown = if list.is_empty() {
            "(none)".to_owned()
        } else {
            eps.iter()
                .map(|(a, p)| {
                    if a.contains(':') {
                        format!("[{a}]:{p}")
                    } else {
                        format!("{a}:{p}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(text, "{node}  {shown}  ({})", ttl_text(ttl));
        out.push(json!({
            "node": node,
            "endpoints": eps.iter().map(|(a, p)| json!({"addr": a, "port": p})).collect::<Vec<_>>(),
            "ttl_secs": ttl_json(ttl),
        }));
    }
    Ok(Output {
        json: json!({ "host": dc, "nodes": out }),
        text,
    })
}

fn entry_json(e: &MappingEntry) -> Value {
    json!({ "key": e.key, "owner": e.owner, "node": e.node, "ttl_secs": ttl_json(e.ttl) })
}

/// `dc` or, for a lease-mode value, `dc (node NODE, lease live|LAPSED|ABSENT)`.
async fn owner_text(store: &Store, e: &MappingEntry, expire_after: u64) -> (String, Value) {
    let Some(owner) = e.owner.as_deref() else {
        return ("(no entry)".into(), Value::Null);
    };
    let Some(node) = e.node.as_deref() else {
        return (owner.to_owned(), Value::Null);
    };
    let lease = match store.lease_state(owner, node, expire_after).await {
        Ok(LeaseState::Live) => "live",
        Ok(LeaseState::Lapsed) => "LAPSED: the entry counts as absent",
        Ok(LeaseState::Absent) => "ABSENT from the nodes hash: the entry counts as absent",
        Err(_) => "unknown (store error)",
    };
    (
        format!("{owner} (node {node}, lease {lease})"),
        json!(lease.split(':').next().unwrap_or(lease).to_lowercase()),
    )
}

/// `where JID`: the full and bare entries (or the domain's), and the owner
/// by the lookup order of the runtime (full JID first, then bare).
pub async fn where_is(store: &Store, jid: &str, expire_after: u64) -> Result<Output, Failure> {
    let j = Jid::parse(jid).map_err(|e| Failure::new(format!("{jid}: not a JID: {e}")))?;
    let mut keys = vec![j.as_full_str().to_owned()];
    if j.as_bare_str() != j.as_full_str() {
        keys.push(j.as_bare_str().to_owned());
    }
    let entries = store.mappings(&keys).await?;
    let found = entries.iter().find(|e| e.owner.is_some());
    let owner = found.and_then(|e| e.owner.clone());
    let width = entries.iter().map(|e| e.key.len()).max().unwrap_or(0);
    let mut text = String::new();
    let mut leases = Vec::new();
    for e in &entries {
        let (owner_shown, lease) = owner_text(store, e, expire_after).await;
        leases.push(lease);
        let _ = writeln!(
            text,
            "{:width$}  ->  {}  ({})",
            e.key,
            owner_shown,
            ttl_text(e.ttl)
        );
    }
    match found {
        Some(e) => {
            let which = if e.key == j.as_full_str() && !j.is_bare() {
                "full JID entry"
            } else if j.user().is_none() {
                "domain entry"
            } else {
                "bare JID entry"
            };
            let _ = writeln!(
                text,
                "owner: {} ({which})",
                e.owner.as_deref().unwrap_or("")
            );
        }
        None => text.push_str("owner: none (found in no datacenter)\n"),
    }
    Ok(Output {
        json: json!({
            "jid": j.as_full_str(),
            "owner": owner,
            "entries": entries.iter().zip(leases).map(|(e, lease)| {
                let mut v = entry_json(e);
                if !lease.is_null() {
                    v["lease"] = lease;
                }
                v
            }).collect::<Vec<_>>(),
        }),
        text,
    })
}

/// `domains [--public]`: every node's subdomains and the DC owning each.
pub async fn domains(store: &Store, public_only: bool) -> Result<Output, Failure> {
    let names = store.domains(public_only).await?;
    let entries = store.mappings(&names).await?;
    let width = entries.iter().map(|e| e.key.len()).max().unwrap_or(0);
    let mut text = String::new();
    for e in &entries {
        let _ = writeln!(
            text,
            "{:width$}  {}  ({})",
            e.key,
            e.owner.as_deref().unwrap_or("(no mapping)"),
            ttl_text(e.ttl)
        );
    }
    if entries.is_empty() {
        text.push_str("(no domains)\n");
    }
    Ok(Output {
        json: json!({
            "public_only": public_only,
            "domains": entries.iter().map(|e| json!({
                "domain": e.key, "owner": e.owner, "ttl_secs": ttl_json(e.ttl),
            })).collect::<Vec<_>>(),
        }),
        text,
    })
}

/// `check-config FILE`: the runtime's reader, plus the names the store
/// keys need (what start checks before touching the network).
pub fn check_config(file: &str) -> Result<Output, Failure> {
    let fail = |message: String| Failure {
        json: json!({ "file": file, "ok": false, "error": message }),
        message: format!("{file}: {message}"),
    };
    let config = read_config_file(file).map_err(fail)?;
    NodeId::new(&config.local_host, &config.node_name).map_err(|e| fail(e.to_string()))?;
    let backend = match config.backend {
        gd_core::config::BackendKind::Embedded => "embedded",
        gd_core::config::BackendKind::Redis => "redis",
    };
    let text = format!(
        "{file}: ok (global_host {}, local_host {}, node {}, backend {backend})\n",
        config.global_host, config.local_host, config.node_name
    );
    let parsed: Value = serde_json::from_str(&config.to_json()).unwrap_or(Value::Null);
    Ok(Output {
        json: json!({ "file": file, "ok": true, "config": parsed }),
        text,
    })
}

/// `evict-node DC NODE`: the one subcommand that writes.
pub async fn evict_node(
    store: &Store,
    dc: &str,
    node: &str,
    expire_after: u64,
    confirm: Confirm,
) -> Result<Output, Failure> {
    keys::check_name("DC", dc)?;
    keys::check_name("NODE", node)?;
    let now = unix_now();
    let ages = node_ages(store, dc, now, expire_after).await?;
    let known = ages.iter().find(|n| n.node == node);
    let state = match known {
        Some(n) if !n.dead => format!(
            "it refreshed {} s ago and looks ALIVE: a live node writes all of it back at its next refresh",
            n.age.unwrap_or(0)
        ),
        Some(n) => match n.age {
            Some(a) => format!("it last refreshed {a} s ago"),
            None => "its stamp is unreadable".into(),
        },
        None => format!("it has no field in {}", keys::nodes(dc)),
    };
    match confirm {
        Confirm::Given => {}
        Confirm::Refused => {
            return Err(Failure::new(format!(
                "evict-node writes to the store and stdin is not a terminal: pass --yes ({node} of {dc}: {state})"
            )))
        }
        Confirm::Ask => {
            eprint!(
                "Remove node {node} from {} and delete its sets ({}, {}, {})?\n{state}. [y/N] ",
                keys::nodes(dc),
                keys::domains(dc, node),
                keys::public_domains(dc, node),
                keys::endpoints(dc, node)
            );
            let _ = std::io::stderr().flush();
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                return Err(Failure::new("not confirmed: nothing removed"));
            }
        }
    }
    let ev = store.evict_node(dc, node).await?;
    if !ev.field_removed && ev.sets_removed == 0 {
        return Err(Failure::new(format!(
            "{node} of {dc}: nothing to evict (no field in {}, no per-node sets)",
            keys::nodes(dc)
        )));
    }
    Ok(Output {
        json: json!({
            "host": dc,
            "node": node,
            "field_removed": ev.field_removed,
            "sets_removed": ev.sets_removed,
            "sessions_deleted": ev.sessions_deleted,
        }),
        text: format!(
            "evicted {node} from {dc}: {} field {}, {} per-node set(s) deleted{}\n",
            keys::nodes(dc),
            if ev.field_removed {
                "removed"
            } else {
                "was absent"
            },
            ev.sets_removed,
            if ev.sessions_deleted > 0 {
                format!(
                    ", {} session key(s) deleted (lease mode)",
                    ev.sessions_deleted
                )
            } else {
                String::new()
            }
        ),
    })
}
