//! Lease mode (`redis.ownership = "lease"`, docs/REDIS.md "Lease mode") on
//! a real `redis-server`, through nutcracker, and on the embedded store: a
//! killed node's sessions stop being served within the lease and a
//! survivor deletes exactly its keys; a node restarted within the lease
//! keeps the sessions its host re-opens and drops the others; the
//! reconnection race stays lossless in both orders; and the writes of a
//! refresh pass do not grow with the number of sessions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use gd_core::config::{BackendKind, Config, Ownership};
use gd_core::mapping::Location;
use gd_core::store::{Backend, EmbeddedBackend, RedisBackend};
use support::dc::{self, host, jid, Dc};
use support::redis::{Nutcracker, RawClient, RedisServer};
use support::wait_for;

/// expire_after 3 s, refresh_after 1 s, leases re-read every 500 ms.
fn lease_config(n: u32, node: &str, url: Option<&str>) -> Config {
    let mut c = match url {
        Some(u) => dc::redis_config(n, u),
        None => dc::config(n),
    };
    c.node_name = node.to_owned();
    c.redis.ownership = Ownership::Lease;
    c.redis.expire_after = 3;
    c.redis.refresh_after = 1;
    c.redis.lease_check_interval_ms = 500;
    c.redis.lease_safety_ttl = 3600;
    c
}

/// A shared store: embedded, or Redis at `url` (direct or nutcracker).
struct Store {
    backend: Option<Arc<dyn Backend>>,
    url: Option<String>,
}

impl Store {
    fn embedded() -> Store {
        Store {
            backend: Some(Arc::new(EmbeddedBackend::new())),
            url: None,
        }
    }
    fn redis(url: String) -> Store {
        Store {
            backend: None,
            url: Some(url),
        }
    }
    fn start(&self, n: u32, node: &str) -> Dc {
        let cfg = lease_config(n, node, self.url.as_deref());
        let backend: Arc<dyn Backend> = match &self.backend {
            Some(b) => b.clone(),
            None => {
                assert_eq!(cfg.backend, BackendKind::Redis);
                Arc::new(RedisBackend::new(&cfg.redis).unwrap())
            }
        };
        dc::start(cfg, backend)
    }
    fn get(&self, dc: &Dc, key: &str) -> Option<String> {
        dc.rt.block_on(dc.rt.store().get(key)).unwrap()
    }
}

fn lookup(dc: &Dc, j: &str) -> Location {
    dc.rt.block_on(dc.rt.lookup(&jid(j))).unwrap()
}

fn remote(n: u32) -> Location {
    Location::Remote(host(n).into())
}

fn value(n: u32, node: &str) -> String {
    format!("{}{{{node}}}", host(n))
}

const WAIT: Duration = Duration::from_secs(15);

/// dc2 has two nodes; node2 is killed. Its sessions are unknown to dc1
/// within expire_after + lease_check_interval (+ the second rounding of the
/// stamps), the survivor node2b prunes it and deletes exactly its keys:
/// carol, who moved to dc3 meanwhile, keeps her entry.
fn killed_node(store: &Store) {
    let dc1 = store.start(1, "node1@localhost");
    let dc2 = store.start(2, "node2@localhost");
    let dc2b = store.start(2, "node2b@localhost");
    let dc3 = store.start(3, "node3@localhost");
    dc2.login("bob@example.com/b");
    dc2.login("carol@example.com/c");
    dc2b.login("dave@example.com/d");
    assert_eq!(
        store.get(&dc1, "bob@example.com/b"),
        Some(value(2, "node2@localhost"))
    );
    assert_eq!(lookup(&dc1, "bob@example.com/b"), remote(2));
    assert_eq!(lookup(&dc1, "bob@example.com"), remote(2));

    dc2.rt.kill();
    let killed = Instant::now();
    dc3.login("carol@example.com/c");
    assert!(wait_for(WAIT, || lookup(&dc1, "bob@example.com/b")
        == Location::Unknown));
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(3000 + 500 + 1000 + 1500),
        "unreachable only after {took:?}"
    );
    assert_eq!(lookup(&dc1, "bob@example.com"), Location::Unknown);
    // Routed as unknown: bounce, then the host's local routing.
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", "hi");
    assert!(
        !matches!(r, gd_core::routing::RouteResult::Forwarded(_)),
        "{r:?}"
    );
    // The survivor's passes prune node2 and sweep its sessions.
    assert!(wait_for(WAIT, || store
        .get(&dc1, "bob@example.com/b")
        .is_none()
        && store.get(&dc1, "bob@example.com").is_none()));
    assert_eq!(
        store.get(&dc1, "carol@example.com/c"),
        Some(value(3, "node3@localhost"))
    );
    assert_eq!(lookup(&dc1, "carol@example.com/c"), remote(3));
    assert_eq!(
        store.get(&dc1, "dave@example.com/d"),
        Some(value(2, "node2b@localhost"))
    );
    assert_eq!(lookup(&dc1, "dave@example.com/d"), remote(2));
    // Then the set goes (GET of a missing key is nil; of a set, WRONGTYPE).
    let set = format!("{}#node2@localhost#{{sessions}}", host(2));
    assert!(wait_for(WAIT, || matches!(
        dc1.rt.block_on(dc1.rt.store().get(&set)),
        Ok(None)
    )));
}

#[test]
fn killed_node_is_unreachable_within_the_lease_and_cleaned_on_redis() {
    let redis = RedisServer::start();
    killed_node(&Store::redis(redis.url()));
}

#[test]
fn killed_node_is_unreachable_within_the_lease_and_cleaned_through_nutcracker() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    let proxy = Nutcracker::start(&[&a, &b]);
    killed_node(&Store::redis(proxy.url()));
}

#[test]
fn killed_node_is_unreachable_within_the_lease_and_cleaned_on_embedded() {
    killed_node(&Store::embedded());
}

/// node2 killed and started again (same name) within the lease: bob,
/// whom the host re-opens, is reachable throughout; eve, who did not come
/// back, is not served by the new node at once and is deleted one period
/// after its start.
fn restarted_node(store: &Store) {
    let dc1 = store.start(1, "node1@localhost");
    let dc2 = store.start(2, "node2@localhost");
    dc2.login("bob@example.com/b");
    dc2.login("eve@example.com/e");
    dc2.rt.kill();
    drop(dc2);
    let dc2 = store.start(2, "node2@localhost");
    assert_eq!(lookup(&dc1, "bob@example.com/b"), remote(2));
    dc2.login("bob@example.com/b");
    // The new life does not serve what it does not hold.
    assert_eq!(lookup(&dc2, "eve@example.com/e"), Location::Unknown);
    assert_eq!(lookup(&dc2, "bob@example.com/b"), Location::Local);
    // One period after start (refresh_after = 1 s) the leftovers go.
    assert!(wait_for(WAIT, || store
        .get(&dc1, "eve@example.com/e")
        .is_none()
        && store.get(&dc1, "eve@example.com").is_none()));
    std::thread::sleep(Duration::from_millis(3500));
    // Past expire_after: the lease kept being stamped, bob stayed.
    assert_eq!(
        store.get(&dc1, "bob@example.com/b"),
        Some(value(2, "node2@localhost"))
    );
    assert_eq!(lookup(&dc1, "bob@example.com/b"), remote(2));
    assert_eq!(lookup(&dc1, "eve@example.com/e"), Location::Unknown);
}

#[test]
fn node_restarted_within_the_lease_keeps_reopened_sessions_on_redis() {
    let redis = RedisServer::start();
    restarted_node(&Store::redis(redis.url()));
}

#[test]
fn node_restarted_within_the_lease_keeps_reopened_sessions_on_embedded() {
    restarted_node(&Store::embedded());
}

/// Login at dc2 then logout at dc1, and logout at dc1 then login at dc2:
/// the entry ends at dc2 both ways, and no refresh brings dc1's back.
fn reconnection_race(store: &Store) {
    let dc1 = store.start(1, "node1@localhost");
    let dc2 = store.start(2, "node2@localhost");
    for (user, login_first) in [("alice", true), ("amy", false)] {
        let full = format!("{user}@example.com/r");
        let bare = format!("{user}@example.com");
        dc1.login(&full);
        if login_first {
            dc2.login(&full);
            dc1.logout(&full);
        } else {
            dc1.logout(&full);
            dc2.login(&full);
        }
        for _ in 0..2 {
            dc1.rt.block_on(dc1.rt.refresh_now());
            dc2.rt.block_on(dc2.rt.refresh_now());
        }
        for k in [&full, &bare] {
            assert_eq!(store.get(&dc1, k), Some(value(2, "node2@localhost")), "{k}");
        }
        dc1.rt.mapping().remove_jid(&full);
        assert_eq!(lookup(&dc1, &full), remote(2), "{user}");
    }
}

#[test]
fn reconnection_race_is_lossless_in_both_orders_on_redis() {
    let redis = RedisServer::start();
    reconnection_race(&Store::redis(redis.url()));
}

#[test]
fn reconnection_race_is_lossless_in_both_orders_on_embedded() {
    reconnection_race(&Store::embedded());
}

/// Calls of the write commands since the last `CONFIG RESETSTAT`.
fn writes(raw: &mut RawClient) -> u64 {
    let info = raw
        .cmd(&["INFO", "commandstats"])
        .unwrap()
        .bulk()
        .unwrap_or_default();
    const WRITES: [&str; 8] = [
        "set", "eval", "sadd", "srem", "expire", "hset", "hdel", "del",
    ];
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            if !WRITES.contains(&name) {
                return None;
            }
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            calls.parse::<u64>().ok()
        })
        .sum()
}

/// Write commands of one refresh pass of a node holding `sessions`.
fn writes_per_pass(ownership: Ownership, sessions: usize) -> u64 {
    let redis = RedisServer::start();
    let mut cfg = lease_config(1, "node1@localhost", Some(&redis.url()));
    cfg.redis.ownership = ownership;
    // Passes run by hand only.
    cfg.redis.expire_after = 3600;
    cfg.redis.refresh_after = 1800;
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::new(&cfg.redis).unwrap());
    let dc1 = dc::start(cfg, backend);
    dc1.rt.block_on(async {
        for i in 0..sessions {
            dc1.rt
                .session_opened(&jid(&format!("u{i}@example.com/r")))
                .await;
        }
    });
    let mut raw = redis.client();
    raw.cmd(&["CONFIG", "RESETSTAT"]).unwrap();
    dc1.rt.block_on(dc1.rt.refresh_now());
    writes(&mut raw)
}

#[test]
fn refresh_writes_do_not_grow_with_sessions_in_lease_mode() {
    let few = writes_per_pass(Ownership::Lease, 100);
    let many = writes_per_pass(Ownership::Lease, 10_000);
    let per_key_few = writes_per_pass(Ownership::PerKey, 100);
    let per_key_many = writes_per_pass(Ownership::PerKey, 10_000);
    println!(
        "write commands per refresh pass: lease {few} (100 sessions) / {many} (10000 sessions); \
         per_key {per_key_few} / {per_key_many}"
    );
    assert_eq!(few, many);
    assert!(few < 20, "{few}");
    assert!(per_key_many >= 20_000, "{per_key_many}");
}
