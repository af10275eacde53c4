#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The metadata store suite (SPEC 3), one body run against four setups:
//! the embedded backend, a plain `redis-server`, `nutcracker` with
//! `hash_tag: "{}"` in front of two `redis-server`s, and a Redis Cluster of
//! three masters (skipped with a message when redis-server is missing). What was written is
//! checked independently of the code under test (a raw RESP client for
//! Redis). Redis-only cases follow: server restart, proxy closing the
//! connection, no `CLIENT SETINFO`, pool, timeout, db in the URL.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use gd_core::config::{Ownership, RedisConfig};
use gd_core::store::inspect::KeyTtl;
use gd_core::store::{
    Backend, Cmd, EmbeddedBackend, NodeId, OwnedState, RedisBackend, RedisClusterBackend,
    Refresher, Reply, Store, StoreError,
};
use support::redis::{Nutcracker, RawClient, RedisServer, Resp};
use support::redis_cluster::RedisCluster;

const LONG: Duration = Duration::from_secs(120);
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Kind {
    Embedded,
    Redis,
    Proxy,
}

struct Setup {
    embedded: Option<EmbeddedBackend>,
    cluster: Option<RedisCluster>,
    // Field order: the proxy goes down before its servers.
    proxy: Option<Nutcracker>,
    servers: Vec<RedisServer>,
}

fn redis_config(url: String, pool_size: u32) -> RedisConfig {
    RedisConfig {
        url: Some(url),
        server: "127.0.0.1".into(),
        port: 0,
        username: String::new(),
        password: String::new(),
        database: 0,
        tls: None,
        pool_size,
        expire_after: 120,
        refresh_after: 60,
        timeout_ms: 1000,
        start_timeout_ms: 3000,
        cluster: Vec::new(),
        ownership: Ownership::PerKey,
        lease_safety_ttl: 86400,
        lease_check_interval_ms: 1000,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Setup {
    fn start(kind: Kind) -> Self {
        match kind {
            Kind::Embedded => Setup {
                embedded: Some(EmbeddedBackend::new()),
                cluster: None,
                proxy: None,
                servers: vec![],
            },
            Kind::Redis => Setup {
                embedded: None,
                cluster: None,
                proxy: None,
                servers: vec![RedisServer::start()],
            },
            Kind::Proxy => {
                let servers = vec![RedisServer::start(), RedisServer::start()];
                let proxy = Nutcracker::start(&servers.iter().collect::<Vec<_>>());
                Setup {
                    embedded: None,
                    cluster: None,
                    proxy: Some(proxy),
                    servers,
                }
            }
        }
    }

    /// A Redis Cluster of three masters; `None` when it cannot be run.
    fn cluster(test: &str) -> Option<Self> {
        Some(Setup {
            embedded: None,
            cluster: Some(RedisCluster::start(test)?),
            proxy: None,
            servers: vec![],
        })
    }

    fn url(&self) -> String {
        match &self.proxy {
            Some(p) => p.url(),
            None => self.servers[0].url(),
        }
    }

    /// A backend as one DC would have it: its own connections, shared data.
    fn backend(&self) -> Arc<dyn Backend> {
        if let Some(c) = &self.cluster {
            let mut cfg = redis_config(String::new(), 1);
            (cfg.url, cfg.cluster) = (None, c.seeds());
            return Arc::new(RedisClusterBackend::new(&cfg).unwrap());
        }
        match &self.embedded {
            Some(e) => Arc::new(e.clone()),
            None => Arc::new(RedisBackend::new(&redis_config(self.url(), 1)).unwrap()),
        }
    }

    fn store(&self) -> Store {
        Store::new(self.backend())
    }

    fn raw(&self) -> RawClient {
        match &self.proxy {
            Some(p) => p.client(),
            None => self.servers[0].client(),
        }
    }

    /// One command beside the code under test, routed by hand on a cluster.
    fn raw_args(&self, args: &[&str]) -> Resp {
        match &self.cluster {
            Some(c) => c.cmd(args),
            None => self.raw().cmd(args).unwrap(),
        }
    }

    /// Runs one command beside the code under test.
    async fn cmd(&self, cmd: Cmd) -> Reply {
        let backend: Arc<dyn Backend> = match &self.embedded {
            Some(e) => Arc::new(e.clone()),
            None => return self.raw_cmd(&cmd),
        };
        backend.exec(&[cmd]).await.unwrap().pop().unwrap()
    }

    fn raw_cmd(&self, cmd: &Cmd) -> Reply {
        let r = match cmd {
            Cmd::Get { key } => self.raw_args(&["GET", key]),
            Cmd::SetEx {
                key,
                value,
                ttl_secs,
            } => self.raw_args(&["SET", key, value, "EX", &ttl_secs.to_string()]),
            Cmd::Del { key } => self.raw_args(&["DEL", key]),
            Cmd::SMembers { key } => self.raw_args(&["SMEMBERS", key]),
            Cmd::HGetAll { key } => self.raw_args(&["HGETALL", key]),
            Cmd::HSet { key, field, value } => self.raw_args(&["HSET", key, field, value]),
            other => panic!("inspector does not send {other:?}"),
        };
        match (cmd, r) {
            (Cmd::SMembers { .. }, r) => Reply::List(r.strings()),
            (Cmd::HGetAll { .. }, r) => {
                let s = r.strings();
                Reply::Pairs(s.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect())
            }
            (_, Resp::Bulk(None)) => Reply::Nil,
            (_, Resp::Bulk(Some(s))) => Reply::Str(s),
            (_, Resp::Int(i)) => Reply::Int(i),
            (_, Resp::Simple(_)) => Reply::Ok,
            (_, r) => panic!("unexpected {r:?}"),
        }
    }

    async fn get(&self, key: &str) -> Option<String> {
        match self.cmd(Cmd::Get { key: key.into() }).await {
            Reply::Str(s) => Some(s),
            Reply::Nil => None,
            r => panic!("GET {key}: {r:?}"),
        }
    }

    async fn set(&self, key: &str, value: &str) {
        let cmd = Cmd::SetEx {
            key: key.into(),
            value: value.into(),
            ttl_secs: 120,
        };
        assert_eq!(self.cmd(cmd).await, Reply::Ok);
    }

    async fn del(&self, key: &str) {
        self.cmd(Cmd::Del { key: key.into() }).await;
    }

    async fn hset(&self, key: &str, field: &str, value: &str) {
        let cmd = Cmd::HSet {
            key: key.into(),
            field: field.into(),
            value: value.into(),
        };
        self.cmd(cmd).await;
    }

    async fn smembers(&self, key: &str) -> BTreeSet<String> {
        match self.cmd(Cmd::SMembers { key: key.into() }).await {
            Reply::List(l) => l.into_iter().collect(),
            r => panic!("SMEMBERS {key}: {r:?}"),
        }
    }

    async fn hgetall(&self, key: &str) -> BTreeMap<String, String> {
        match self.cmd(Cmd::HGetAll { key: key.into() }).await {
            Reply::Pairs(p) => p.into_iter().collect(),
            r => panic!("HGETALL {key}: {r:?}"),
        }
    }

    /// Remaining TTL in seconds; -1 without TTL, -2 when absent (as Redis).
    async fn ttl(&self, key: &str) -> i64 {
        if let Some(e) = &self.embedded {
            return match e.ttl(key) {
                Some(d) => d.as_secs_f64().ceil() as i64,
                None if self.get_any(key).await => -1,
                None => -2,
            };
        }
        self.raw_args(&["TTL", key]).int()
    }

    async fn get_any(&self, key: &str) -> bool {
        let e = self.embedded.as_ref().unwrap();
        let r = e.exec(&[Cmd::SMembers { key: key.into() }]).await.unwrap();
        let h = e.exec(&[Cmd::HGetAll { key: key.into() }]).await.unwrap();
        r[0] != Reply::List(vec![]) || h[0] != Reply::Pairs(vec![])
    }
}

fn s(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|i| i.to_string()).collect()
}

fn refresher(store: Store, host: &str, node: &str, expire: Duration) -> Refresher {
    let me = NodeId::new(host, node).unwrap();
    Refresher::new(
        store,
        Arc::new(OwnedState::new()),
        me,
        expire,
        Duration::from_secs(60),
    )
}

/// Polls an async condition until it holds or the deadline passes.
async fn eventually<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        if cond().await {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The suite body.

async fn layout_is_mongooseims(t: Setup) {
    let r = refresher(t.store(), "dc1.example.com", "n1@dc1", LONG);
    r.open_session("alice@example.com/phone", "alice@example.com")
        .await
        .unwrap();
    r.register_domain("muc.example.com", true).await.unwrap();
    r.register_domain("hidden.example.com", false)
        .await
        .unwrap();
    r.set_endpoints(vec![
        ("10.0.0.1".into(), 5555),
        ("2001:db8::1".into(), 5556),
    ])
    .await
    .unwrap();
    let stats = r.run_once(false).await;
    assert_eq!(stats.errors, 0, "{stats:?}");
    assert_eq!(stats.foreign, 0);

    for key in [
        "alice@example.com/phone",
        "alice@example.com",
        "muc.example.com",
    ] {
        assert_eq!(
            t.get(key).await.as_deref(),
            Some("dc1.example.com"),
            "{key}"
        );
        let ttl = t.ttl(key).await;
        assert!((1..=120).contains(&ttl), "{key}: TTL {ttl}");
    }
    let pre = "dc1.example.com#n1@dc1#";
    assert_eq!(
        t.smembers(&format!("{pre}{{domains}}")).await,
        s(&["muc.example.com", "hidden.example.com"])
    );
    assert_eq!(
        t.smembers(&format!("{pre}{{public_domains}}")).await,
        s(&["muc.example.com"])
    );
    assert_eq!(
        t.smembers(&format!("{pre}{{endpoints}}")).await,
        s(&["10.0.0.1#5555", "2001:db8::1#5556"])
    );
    for set in ["domains", "public_domains", "endpoints"] {
        let ttl = t.ttl(&format!("{pre}{{{set}}}")).await;
        assert!((1..=120).contains(&ttl), "{set}: TTL {ttl}");
    }
    let nodes = t.hgetall("dc1.example.com#{nodes}").await;
    let stamp: u64 = nodes["n1@dc1"].parse().unwrap();
    assert!(unix_now().abs_diff(stamp) <= 5, "stamp {stamp}");
    assert_eq!(t.smembers("hosts").await, s(&["dc1.example.com"]));
    assert_eq!(r.store().hosts().await.unwrap(), vec!["dc1.example.com"]);
}

/// The user moves from DC-A to DC-B; A's refresh may run after B's open
/// (must not overwrite) or before it (B's plain SET wins anyway). A's
/// delete afterwards leaves B's entry alone.
async fn reconnection_race_keeps_newest(t: Setup) {
    let a = refresher(t.store(), "dca", "n1", LONG);
    let b = refresher(t.store(), "dcb", "n1", LONG);
    let (full, bare) = ("bob@g/r", "bob@g");

    // Order 1: A opens, B opens, A refreshes.
    a.open_session(full, bare).await.unwrap();
    b.open_session(full, bare).await.unwrap();
    let stats = a.run_once(false).await;
    assert_eq!((stats.written, stats.foreign), (0, 2), "{stats:?}");
    assert_eq!(t.get(full).await.as_deref(), Some("dcb"));
    assert_eq!(t.get(bare).await.as_deref(), Some("dcb"));
    a.close_session(full, bare).await.unwrap();
    assert_eq!(t.get(full).await.as_deref(), Some("dcb"));
    assert_eq!(t.get(bare).await.as_deref(), Some("dcb"));
    b.close_session(full, bare).await.unwrap();
    assert_eq!(t.get(full).await, None);

    // Order 2: A opens, A refreshes, B opens, B refreshes, A refreshes.
    a.open_session(full, bare).await.unwrap();
    assert_eq!(a.run_once(false).await.written, 2);
    b.open_session(full, bare).await.unwrap();
    assert_eq!(b.run_once(false).await.written, 2);
    assert_eq!(a.run_once(false).await.foreign, 2);
    assert_eq!(t.get(full).await.as_deref(), Some("dcb"));
    assert_eq!(b.store().get(bare).await.unwrap().as_deref(), Some("dcb"));
    a.close_session(full, bare).await.unwrap();
    assert_eq!(t.get(bare).await.as_deref(), Some("dcb"));
}

async fn keys_expire(t: Setup) {
    let r = refresher(t.store(), "dc1", "n1", Duration::from_secs(1));
    r.open_session("eve@g/r", "eve@g").await.unwrap();
    r.register_domain("c.g", true).await.unwrap();
    assert_eq!(t.get("eve@g/r").await.as_deref(), Some("dc1"));
    assert!(eventually(|| async { t.get("eve@g/r").await.is_none() }).await);
    assert!(eventually(|| async { t.get("c.g").await.is_none() }).await);
    assert!(eventually(|| async { t.smembers("dc1#n1#{domains}").await.is_empty() }).await);
    if let Some(e) = &t.embedded {
        // The sweeper reclaims keys nobody reads again.
        e.exec(&[Cmd::SetEx {
            key: "unread".into(),
            value: "x".into(),
            ttl_secs: 1,
        }])
        .await
        .unwrap();
        assert!(support::wait_until(DEADLINE, || e.stored_keys() == 0).await);
    }
}

async fn refresh_restores_deleted_keys(t: Setup) {
    let r = refresher(t.store(), "dc1", "n1", LONG);
    r.open_session("al@g/r", "al@g").await.unwrap();
    r.register_domain("c.g", true).await.unwrap();
    r.set_endpoints(vec![("127.0.0.1".into(), 7000)])
        .await
        .unwrap();
    r.run_once(false).await;
    for key in [
        "al@g/r",
        "al@g",
        "c.g",
        "dc1#n1#{domains}",
        "dc1#n1#{public_domains}",
        "dc1#n1#{endpoints}",
        "dc1#{nodes}",
        "hosts",
    ] {
        t.del(key).await;
    }
    assert_eq!(t.get("al@g/r").await, None);
    let stats = r.run_once(false).await;
    assert_eq!(stats.errors, 0);
    assert_eq!(t.get("al@g/r").await.as_deref(), Some("dc1"));
    assert_eq!(t.get("al@g").await.as_deref(), Some("dc1"));
    assert_eq!(t.get("c.g").await.as_deref(), Some("dc1"));
    assert_eq!(t.smembers("dc1#n1#{public_domains}").await, s(&["c.g"]));
    assert_eq!(
        t.smembers("dc1#n1#{endpoints}").await,
        s(&["127.0.0.1#7000"])
    );
    assert!(t.hgetall("dc1#{nodes}").await.contains_key("n1"));
    assert_eq!(t.smembers("hosts").await, s(&["dc1"]));
}

async fn delete_only_if_ours(t: Setup) {
    let store = t.store();
    let keys = vec!["x@g/r".to_string(), "y@g/r".to_string()];
    t.set("x@g/r", "dc2").await;
    t.set("y@g/r", "dc1").await;
    assert_eq!(store.delete_sessions(&keys, "dc1").await.unwrap(), 1);
    assert_eq!(t.get("x@g/r").await.as_deref(), Some("dc2"));
    assert_eq!(t.get("y@g/r").await, None);
    // CAS refresh: writes where gone, leaves foreign.
    let c = store.refresh_sessions(&keys, "dc1", LONG).await.unwrap();
    assert_eq!((c.written, c.foreign), (1, 1));
    assert_eq!(t.get("y@g/r").await.as_deref(), Some("dc1"));
}

async fn dead_node_pruned(t: Setup) {
    let store = t.store();
    let me = NodeId::new("dc1", "n1").unwrap();
    let now = unix_now();
    t.hset("dc1#{nodes}", "dead", &(now - 1000).to_string())
        .await;
    t.hset("dc1#{nodes}", "alive", &(now - 10).to_string())
        .await;
    let pruned = store.heartbeat(&me, now, LONG).await.unwrap();
    assert_eq!(pruned, vec!["dead".to_string()]);
    let nodes = t.hgetall("dc1#{nodes}").await;
    assert_eq!(
        nodes.keys().cloned().collect::<BTreeSet<_>>(),
        s(&["alive", "n1"])
    );
    assert_eq!(nodes["n1"], now.to_string());
}

/// What `gdctl` reads and its one write (store::inspect), in the dialect:
/// `TTL` included, through nutcracker too.
async fn operator_reads_and_eviction(t: Setup) {
    let store = t.store();
    let me = NodeId::new("dc1", "n1").unwrap();
    let now = unix_now();
    store.heartbeat(&me, now, LONG).await.unwrap();
    t.hset("dc1#{nodes}", "old", &(now - 1000).to_string())
        .await;
    t.hset("dc1#{nodes}", "junk", "not-a-number").await;
    store
        .publish_endpoints(&me, &[("10.0.0.1".into(), 5555)], LONG)
        .await
        .unwrap();
    let old = NodeId::new("dc1", "old").unwrap();
    store
        .publish_endpoints(&old, &[("10.0.0.9".into(), 5555)], LONG)
        .await
        .unwrap();
    store
        .register_domain(&old, "old.example.com", true, LONG)
        .await
        .unwrap();
    store
        .open_sessions(&["a@g/r".into()], "dc1", Duration::from_secs(100))
        .await
        .unwrap();

    assert_eq!(
        store.node_stamps("dc1").await.unwrap(),
        vec![
            ("junk".to_string(), None),
            ("n1".to_string(), Some(now)),
            ("old".to_string(), Some(now - 1000)),
        ]
    );
    let (eps, ttl) = store.node_endpoints("dc1", "n1").await.unwrap();
    assert_eq!(eps, vec![("10.0.0.1".to_string(), 5555)]);
    assert!(
        ttl.secs().is_some_and(|s| s > LONG.as_secs() - 5),
        "{ttl:?}"
    );
    let m = store
        .mappings(&["a@g/r".into(), "nobody@g".into(), "old.example.com".into()])
        .await
        .unwrap();
    assert_eq!(m[0].owner.as_deref(), Some("dc1"));
    assert!(
        m[0].ttl.secs().is_some_and(|s| (95..=100).contains(&s)),
        "{m:?}"
    );
    assert_eq!((m[1].owner.as_deref(), m[1].ttl), (None, KeyTtl::Missing));
    assert_eq!(m[2].owner.as_deref(), Some("dc1"));
    // A key of another type is an error, never an owner.
    let nodes = store.mappings(&["dc1#{nodes}".into()]).await;
    assert!(nodes.is_err(), "GET of a hash is refused: {nodes:?}");

    let ev = store.evict_node("dc1", "old").await.unwrap();
    assert!(ev.field_removed);
    assert_eq!(ev.sets_removed, 3);
    let names: Vec<String> = store
        .node_stamps("dc1")
        .await
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["junk", "n1"]);
    assert!(t.smembers("dc1#old#{endpoints}").await.is_empty());
    assert_eq!(
        t.smembers("dc1#n1#{endpoints}").await,
        s(&["10.0.0.1#5555"])
    );
    assert_eq!(
        store.evict_node("dc1", "old").await.unwrap(),
        Default::default()
    );
    assert!(store.evict_node("dc1", "n{1}").await.is_err());
}

async fn unions_over_nodes_and_hosts(t: Setup) {
    let n1 = refresher(t.store(), "dc1", "n1", LONG);
    let n2 = refresher(t.store(), "dc1", "n2", LONG);
    let m1 = refresher(t.store(), "dc2", "m1", LONG);
    n1.set_endpoints(vec![("10.0.0.1".into(), 1), ("::1".into(), 2)])
        .await
        .unwrap();
    n2.set_endpoints(vec![("10.0.0.2".into(), 1), ("::1".into(), 2)])
        .await
        .unwrap();
    m1.set_endpoints(vec![("10.9.9.9".into(), 9)])
        .await
        .unwrap();
    n1.register_domain("pub1.g", true).await.unwrap();
    n2.register_domain("hid2.g", false).await.unwrap();
    n2.register_domain("pub2.g", true).await.unwrap();
    m1.register_domain("pub3.g", true).await.unwrap();
    for r in [&n1, &n2, &m1] {
        assert_eq!(r.run_once(false).await.errors, 0);
    }
    let store = t.store();
    assert_eq!(store.hosts().await.unwrap(), vec!["dc1", "dc2"]);
    let eps = store.endpoints_of("dc1").await.unwrap();
    assert_eq!(
        eps,
        vec![
            ("10.0.0.1".to_string(), 1),
            ("10.0.0.2".to_string(), 1),
            ("::1".to_string(), 2)
        ]
    );
    assert_eq!(
        store.endpoints_of("dc2").await.unwrap(),
        vec![("10.9.9.9".to_string(), 9)]
    );
    assert_eq!(
        store.domains(false).await.unwrap(),
        vec!["hid2.g", "pub1.g", "pub2.g", "pub3.g"]
    );
    assert_eq!(
        store.domains(true).await.unwrap(),
        vec!["pub1.g", "pub2.g", "pub3.g"]
    );
    // Unregister: mapping and set members go, the others stay.
    n2.unregister_domain("pub2.g").await.unwrap();
    assert_eq!(t.get("pub2.g").await, None);
    assert_eq!(store.domains(true).await.unwrap(), vec!["pub1.g", "pub3.g"]);
    // Another DC's mapping for a name we unregister is left alone.
    t.set("pub3.g", "dc2").await;
    n1.unregister_domain("pub3.g").await.unwrap();
    assert_eq!(t.get("pub3.g").await.as_deref(), Some("dc2"));
}

async fn bare_key_kept_while_a_resource_remains(t: Setup) {
    let r = refresher(t.store(), "dc1", "n1", LONG);
    r.open_session("u@g/a", "u@g").await.unwrap();
    r.open_session("u@g/b", "u@g").await.unwrap();
    assert_eq!(r.state().session_key_count(), 3);
    r.close_session("u@g/a", "u@g").await.unwrap();
    assert_eq!(t.get("u@g/a").await, None);
    assert_eq!(t.get("u@g").await.as_deref(), Some("dc1"));
    assert_eq!(t.get("u@g/b").await.as_deref(), Some("dc1"));
    // The bare key is still owned: a refresh restores it.
    t.del("u@g").await;
    r.run_once(false).await;
    assert_eq!(t.get("u@g").await.as_deref(), Some("dc1"));
    r.close_session("u@g/b", "u@g").await.unwrap();
    assert_eq!(t.get("u@g").await, None);
    assert_eq!(t.get("u@g/b").await, None);
    assert_eq!(r.state().session_key_count(), 0);
}

/// Wraps a backend and fails every batch while `down` is set.
struct Switchable {
    inner: Arc<dyn Backend>,
    down: AtomicBool,
}

#[async_trait]
impl Backend for Switchable {
    async fn exec(&self, cmds: &[Cmd]) -> Result<Vec<Reply>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("switched off by the test".into()));
        }
        self.inner.exec(cmds).await
    }
    async fn health(&self) -> Result<(), StoreError> {
        self.inner.health().await
    }
    fn kind(&self) -> &'static str {
        "switchable"
    }
}

async fn pending_opens_retried_as_plain_set(t: Setup) {
    let sw = Arc::new(Switchable {
        inner: t.backend(),
        down: AtomicBool::new(true),
    });
    let r = refresher(Store::new(sw.clone()), "dc1", "n1", LONG);
    // A stale entry of another DC that the lost open should have replaced:
    // a CAS refresh would never overwrite it.
    t.set("p@g/r", "dc2").await;
    assert!(r.open_session("p@g/r", "p@g").await.is_err());
    assert_eq!(r.state().pending_count(), 2);
    let handle = r.spawn();
    sw.down.store(false, Ordering::SeqCst);
    assert!(eventually(|| async { r.state().pending_count() == 0 }).await);
    assert_eq!(t.get("p@g/r").await.as_deref(), Some("dc1"));
    assert_eq!(t.get("p@g").await.as_deref(), Some("dc1"));
    handle.stop().await;
}

/// The embedded backend answers exactly as Redis does, TTL rules included.
async fn backend_semantics_match_redis(t: Setup) {
    let b = t.backend();
    let k = |s: &str| s.to_string();
    let run = |cmds: Vec<Cmd>| {
        let b = b.clone();
        async move { b.exec(&cmds).await.unwrap() }
    };
    let set_ex = |key: &str, value: &str| Cmd::SetEx {
        key: k(key),
        value: k(value),
        ttl_secs: 100,
    };
    assert_eq!(
        run(vec![
            set_ex("k", "v"),
            Cmd::Get { key: k("k") },
            Cmd::Get { key: k("nope") }
        ])
        .await,
        vec![Reply::Ok, Reply::Str(k("v")), Reply::Nil]
    );
    let sadd = |key: &str, m: &[&str]| Cmd::SAdd {
        key: k(key),
        members: m.iter().map(|x| k(x)).collect(),
    };
    assert_eq!(
        run(vec![
            sadd("s", &["a", "b"]),
            Cmd::Expire {
                key: k("s"),
                ttl_secs: 100
            },
            sadd("s", &["b", "c"]),
            Cmd::Expire {
                key: k("missing"),
                ttl_secs: 100
            },
        ])
        .await,
        vec![Reply::Int(2), Reply::Int(1), Reply::Int(1), Reply::Int(0)]
    );
    let ttl = t.ttl("s").await;
    assert!((1..=100).contains(&ttl), "SADD kept the TTL: {ttl}");
    assert_eq!(t.smembers("s").await, s(&["a", "b", "c"]));
    let r = run(vec![Cmd::Get { key: k("s") }]).await;
    assert!(
        matches!(&r[0], Reply::Error(e) if e.starts_with("WRONGTYPE")),
        "{r:?}"
    );
    assert_eq!(
        run(vec![
            Cmd::SRem {
                key: k("s"),
                members: vec![k("a"), k("b"), k("c"), k("z")]
            },
            Cmd::SMembers { key: k("s") },
        ])
        .await,
        vec![Reply::Int(3), Reply::List(vec![])]
    );
    assert_eq!(
        t.ttl("s").await,
        -2,
        "SREM of the last member deletes the set"
    );
    let hset = |v: &str| Cmd::HSet {
        key: k("h"),
        field: k("f"),
        value: k(v),
    };
    assert_eq!(
        run(vec![hset("1"), hset("2"), Cmd::HGetAll { key: k("h") }]).await,
        vec![
            Reply::Int(1),
            Reply::Int(0),
            Reply::Pairs(vec![(k("f"), k("2"))])
        ]
    );
    assert_eq!(t.ttl("h").await, -1);
    assert_eq!(
        run(vec![
            Cmd::HDel {
                key: k("h"),
                field: k("f")
            },
            Cmd::HDel {
                key: k("h"),
                field: k("f")
            },
        ])
        .await,
        vec![Reply::Int(1), Reply::Int(0)]
    );
    assert_eq!(t.ttl("h").await, -2);
    let refresh = |v: &str| Cmd::RefreshIfOurs {
        key: k("m"),
        value: k(v),
        ttl_secs: 100,
    };
    let delete = |v: &str| Cmd::DeleteIfOurs {
        key: k("m"),
        value: k(v),
    };
    assert_eq!(
        run(vec![
            refresh("dc1"),
            refresh("dc1"),
            refresh("dc2"),
            delete("dc2"),
            delete("dc1")
        ])
        .await,
        vec![
            Reply::Int(1),
            Reply::Int(1),
            Reply::Int(0),
            Reply::Int(0),
            Reply::Int(1)
        ]
    );
    assert_eq!(
        run(vec![
            set_ex("d", "x"),
            Cmd::Del { key: k("d") },
            Cmd::Del { key: k("d") }
        ])
        .await,
        vec![Reply::Ok, Reply::Int(1), Reply::Int(0)]
    );
    // SET replaces a key of another type, with the new TTL.
    assert_eq!(
        run(vec![
            sadd("t", &["a"]),
            set_ex("t", "v"),
            Cmd::Get { key: k("t") }
        ])
        .await,
        vec![Reply::Int(1), Reply::Ok, Reply::Str(k("v"))]
    );
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        $(mod $case {
            use super::*;
            #[tokio::test]
            async fn embedded() { super::$case(Setup::start(Kind::Embedded)).await }
            #[tokio::test]
            async fn redis() { super::$case(Setup::start(Kind::Redis)).await }
            #[tokio::test]
            async fn nutcracker() { super::$case(Setup::start(Kind::Proxy)).await }
            #[tokio::test]
            async fn cluster() {
                let name = concat!(stringify!($case), "::cluster");
                if let Some(t) = Setup::cluster(name) {
                    super::$case(t).await
                }
            }
        })*
    };
}

suite!(
    backend_semantics_match_redis,
    layout_is_mongooseims,
    reconnection_race_keeps_newest,
    keys_expire,
    refresh_restores_deleted_keys,
    delete_only_if_ours,
    dead_node_pruned,
    operator_reads_and_eviction,
    unions_over_nodes_and_hosts,
    bare_key_kept_while_a_resource_remains,
    pending_opens_retried_as_plain_set,
);

/// A paced pass spreads its batches over three quarters of the period
/// (a lower bound guaranteed by construction, not a timing guess); an
/// unpaced one sends the same batches.
#[tokio::test]
async fn paced_pass_spreads_batches_over_the_period() {
    let t = Setup::start(Kind::Embedded);
    let me = NodeId::new("dc1", "n1").unwrap();
    let period = Duration::from_millis(800);
    let r = Refresher::new(t.store(), Arc::new(OwnedState::new()), me, LONG, period);
    for i in 0..2500 {
        r.state()
            .session_opened(&format!("u{i}@g/r"), &format!("u{i}@g"));
    }
    let unpaced = r.run_once(false).await;
    assert_eq!((unpaced.batches, unpaced.written), (5, 5000));
    let paced = r.run_once(true).await;
    assert_eq!((paced.batches, paced.written), (5, 5000));
    // Batch i starts at i * (3/4 period / 5): the last one at 4 * 120 ms.
    assert!(paced.elapsed >= Duration::from_millis(480), "{paced:?}");
    assert_eq!(t.get("u2499@g/r").await.as_deref(), Some("dc1"));
}

#[test]
fn owned_state_says_which_sessions_this_node_holds() {
    let s = OwnedState::new();
    assert!(!s.holds_session("bob@example.com/b", "bob@example.com"));
    s.session_opened("bob@example.com/b", "bob@example.com");
    s.session_opened("bob@example.com/c", "bob@example.com");
    // A resource that starts like the bare JID's separator marker is kept whole.
    s.session_opened("eve@example.com/\u{1}x", "eve@example.com");
    assert!(s.holds_session("bob@example.com/b", "bob@example.com"));
    assert!(s.holds_session("bob@example.com/c", "bob@example.com"));
    assert!(s.holds_session("bob@example.com", "bob@example.com"));
    assert!(!s.holds_session("bob@example.com/d", "bob@example.com"));
    assert!(s.holds_session("eve@example.com/\u{1}x", "eve@example.com"));
    assert!(!s.holds_session("alice@example.com", "alice@example.com"));
    s.session_closed("bob@example.com/b", "bob@example.com");
    assert!(!s.holds_session("bob@example.com/b", "bob@example.com"));
    assert!(s.holds_session("bob@example.com", "bob@example.com"));
    s.session_closed("bob@example.com/c", "bob@example.com");
    assert!(!s.holds_session("bob@example.com", "bob@example.com"));
}
