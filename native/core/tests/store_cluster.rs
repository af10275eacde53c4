#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Redis Cluster as the store (`redis.cluster`), on a real cluster of three
//! masters (`tests/support/redis_cluster.rs`; every test is skipped with a
//! message when redis-server or redis-cli is missing). The store suite of
//! `tests/store.rs` runs on it too; here: batches cut by slot and answered
//! in order, `ASK` in the middle of a slot migration, the start error of a
//! single-server configuration pointed at a cluster node, and two DCs
//! exchanging stanzas while slots move under them.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use gd_core::config::{BackendKind, Config, RedisConfig};
use gd_core::mapping::Location;
use gd_core::routing::RouteResult;
use gd_core::runtime::Runtime;
use gd_core::store::redis::CLUSTER_NODE;
use gd_core::store::{keys, Backend, Cmd, RedisClusterBackend, Reply, Store};
use support::dc::{self, host, Dc, Inbox};
use support::redis::Resp;
use support::redis_cluster::RedisCluster;
use support::wait_for;

const WAIT: Duration = Duration::from_secs(20);

fn cluster_redis(c: &RedisCluster) -> RedisConfig {
    let mut redis = Config::minimal("example.com", "dc1.example.com")
        .unwrap()
        .redis;
    redis.cluster = c.seeds();
    redis
}

fn set(key: &str, value: &str) -> Cmd {
    Cmd::SetEx {
        key: key.into(),
        value: value.into(),
        ttl_secs: 600,
    }
}

fn get(key: &str) -> Cmd {
    Cmd::Get { key: key.into() }
}

fn text(s: &str) -> Reply {
    Reply::Str(s.into())
}

#[tokio::test]
async fn a_batch_over_every_master_is_cut_by_slot_and_answered_in_order() {
    let Some(cluster) = RedisCluster::start("a_batch_over_every_master") else {
        return;
    };
    let store = Store::new(Arc::new(
        RedisClusterBackend::new(&cluster_redis(&cluster)).unwrap(),
    ));
    // More than one pipeline (store::BATCH), keys on every master, and
    // commands of one set in a row: SADD before its EXPIRE.
    let set_key = keys::domains("dc1", "n1");
    let mut cmds = Vec::new();
    let mut want = Vec::new();
    for i in 0..1500 {
        cmds.push(set(&format!("user{i}@example.com/r"), &format!("dc{i}")));
        want.push(Reply::Ok);
        cmds.push(get(&format!("user{i}@example.com/r")));
        want.push(text(&format!("dc{i}")));
        if i % 500 == 0 {
            cmds.push(Cmd::SAdd {
                key: set_key.clone(),
                members: vec![format!("d{i}")],
            });
            want.push(Reply::Int(1));
            cmds.push(Cmd::Expire {
                key: set_key.clone(),
                ttl_secs: 600,
            });
            want.push(Reply::Int(1));
        }
    }
    assert_eq!(store.exec_batched(&cmds).await.unwrap(), want);
    for port in cluster.ports() {
        assert!(cluster.keys_on(port) > 300, "node {port} holds few keys");
    }
    let ttl = cluster.cmd(&["TTL", &set_key]).int();
    assert!((1..=600).contains(&ttl), "TTL {ttl}");
    // A server error stays the reply of its one command.
    let r = store
        .exec_batched(&[get(&set_key), get("user1@example.com/r")])
        .await
        .unwrap();
    assert!(
        matches!(&r[0], Reply::Error(e) if e.starts_with("WRONGTYPE")),
        "{r:?}"
    );
    assert_eq!(r[1], text("dc1"));
}

/// Half of a slot's keys moved to the importing node: the source answers
/// `ASK` for them and for new keys. A batch of reads, plain writes, CAS
/// refreshes and a set with its TTL, all in that slot, is answered right,
/// and everything is where a cluster client finds it once the slot moved.
#[tokio::test]
async fn ask_in_the_middle_of_a_migration_is_followed() {
    let Some(cluster) = RedisCluster::start("ask_in_the_middle_of_a_migration") else {
        return;
    };
    let backend = RedisClusterBackend::new(&cluster_redis(&cluster)).unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("{{t}}k{i}")).collect();
    let writes: Vec<Cmd> = keys.iter().map(|k| set(k, "dc1")).collect();
    backend.exec(&writes).await.unwrap();

    let slot = cluster.slot_of("{t}");
    let from = cluster.owner(slot);
    let to = cluster.other_than_owner(slot);
    cluster.begin_migration(slot, from, to);
    assert_eq!(cluster.migrate_some(slot, from, to, 10), 10);

    let mut batch: Vec<Cmd> = keys.iter().map(|k| get(k)).collect();
    batch.extend((0..5).map(|i| set(&format!("{{t}}new{i}"), "dc2")));
    batch.extend(keys.iter().map(|k| Cmd::RefreshIfOurs {
        key: k.clone(),
        value: "dc1".into(),
        ttl_secs: 900,
    }));
    batch.push(Cmd::SAdd {
        key: "{t}set".into(),
        members: vec!["a".into()],
    });
    batch.push(Cmd::Expire {
        key: "{t}set".into(),
        ttl_secs: 900,
    });
    let mut want: Vec<Reply> = keys.iter().map(|_| text("dc1")).collect();
    want.extend((0..5).map(|_| Reply::Ok));
    want.extend(keys.iter().map(|_| Reply::Int(1)));
    want.extend([Reply::Int(1), Reply::Int(1)]);
    assert_eq!(backend.exec(&batch).await.unwrap(), want);

    while cluster.migrate_some(slot, from, to, 10) > 0 {}
    cluster.end_migration(slot, from, to);
    assert_eq!(cluster.owner(slot), to);
    let reads: Vec<Cmd> = keys
        .iter()
        .cloned()
        .chain((0..5).map(|i| format!("{{t}}new{i}")))
        .map(|k| get(&k))
        .collect();
    let replies = backend.exec(&reads).await.unwrap();
    assert!(
        replies[..20].iter().all(|r| *r == text("dc1")),
        "{replies:?}"
    );
    assert!(
        replies[20..].iter().all(|r| *r == text("dc2")),
        "{replies:?}"
    );
    let ttl = cluster.cmd(&["TTL", "{t}set"]).int();
    assert!((1..=900).contains(&ttl), "TTL {ttl}");
    assert!(cluster.cmd(&["TTL", "{t}k0"]).int() > 600);
}

/// `redis.url` (a single server) naming a cluster node that does not own
/// the health sentinel's slot: start fails and says to use redis.cluster.
#[test]
fn a_single_server_configuration_on_a_cluster_node_fails_start() {
    let Some(cluster) = RedisCluster::start("a_single_server_configuration") else {
        return;
    };
    let port = cluster.other_than_owner(cluster.slot_of(keys::HEALTH_SENTINEL));
    let mut cfg = dc::config(1);
    cfg.backend = BackendKind::Redis;
    cfg.redis.url = Some(format!("redis://127.0.0.1:{port}"));
    let err = match Runtime::start(cfg, Arc::new(Inbox::default())) {
        Ok(_) => panic!("start on a cluster node with a single-server configuration"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err,
        format!("start: redis 127.0.0.1:{port}: {CLUSTER_NODE}")
    );
    assert!(err.contains("use redis.cluster"), "{err}");
}

/// DC `n` whose store is the cluster, built from its configuration by the
/// runtime itself (as in production).
fn start_on_cluster(n: u32, cluster: &RedisCluster) -> Dc {
    let mut cfg = dc::config(n);
    cfg.backend = BackendKind::Redis;
    cfg.redis.cluster = cluster.seeds();
    cfg.cache.jid_lifetime_seconds = 60;
    // Bounce outlasts a store stall (one deadline and a circuit second).
    cfg.bounce.max_retries = 100;
    let inbox = Arc::new(Inbox::default());
    let rt = Runtime::start(cfg, inbox.clone()).expect("runtime starts on the cluster");
    Dc { rt, inbox }
}

/// One round of traffic from dc1 to every user of dc2, each lookup read
/// from the store (the cache entry is dropped first): the lookup must say
/// dc2, and the stanza is forwarded there, or held by bounce while the
/// store is unavailable (see `stall`); returns how many were held.
fn round(dc1: &Dc, users: &[String], tag: &str, sent: &mut Vec<String>) -> usize {
    let mut held = 0;
    for user in users {
        let bare = user.split('/').next().unwrap();
        dc1.rt.mapping().remove_jid(user);
        dc1.rt.mapping().remove_jid(bare);
        let at = answered(|| dc1.rt.block_on(dc1.rt.lookup(&dc::jid(user))));
        assert_eq!(at, Location::Remote(Arc::from(host(2))), "{user} ({tag})");
        dc1.rt.mapping().remove_jid(user);
        let body = format!("{tag} to {user}");
        match dc1.send("alice@example.com/a", user, &body) {
            RouteResult::Forwarded(to) => assert_eq!(*to, *host(2), "{body}"),
            RouteResult::Stored => held += 1,
            other => panic!("{body}: {other:?}"),
        }
        sent.push(body);
    }
    held
}

/// A lookup's answer, asked again while the store says it is unavailable
/// (never a wrong answer: only none for a while). redis-rs 1.8's cluster
/// client can stall while slots move; the backend then fails one batch at
/// its deadline, the circuit stays open a second, and a fresh client takes
/// over (docs/REDIS.md, "Redis Cluster").
fn answered<T, E: std::fmt::Debug>(mut ask: impl FnMut() -> Result<T, E>) -> T {
    let end = std::time::Instant::now() + WAIT;
    loop {
        match ask() {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() < end => {
                eprintln!("store unavailable for a moment: {e:?}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("store unavailable for {WAIT:?}: {e:?}"),
        }
    }
}

/// Waits until `user`'s key says dc2 (a login during a stall is written by
/// the pending-open retry a moment later).
fn stored_at_dc2(cluster: &RedisCluster, user: &str) {
    assert!(
        wait_for(WAIT, || cluster.cmd(&["GET", user])
            == Resp::Bulk(Some(host(2)))),
        "{user} never stored"
    );
}

/// `redis-cli --cluster reshard` of `slots` slots from one master to
/// another, in a thread, while the test sends traffic.
fn reshard(
    cluster: &RedisCluster,
    from: u16,
    to: u16,
    slots: u32,
) -> std::thread::JoinHandle<bool> {
    let args: Vec<String> = vec![
        "--cluster".into(),
        "reshard".into(),
        format!("127.0.0.1:{from}"),
        "--cluster-from".into(),
        cluster.id(from),
        "--cluster-to".into(),
        cluster.id(to),
        "--cluster-slots".into(),
        slots.to_string(),
        "--cluster-yes".into(),
        "--cluster-pipeline".into(),
        "5".into(),
    ];
    std::thread::spawn(move || {
        Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[test]
fn two_dcs_exchange_stanzas_while_slots_migrate() {
    let Some(cluster) = RedisCluster::start("two_dcs_exchange_stanzas_while_slots_migrate") else {
        return;
    };
    let dc1 = start_on_cluster(1, &cluster);
    let dc2 = start_on_cluster(2, &cluster);
    dc1.login("alice@example.com/a");
    let mut users: Vec<String> = (0..60).map(|i| format!("u{i}@example.com/r")).collect();
    for u in &users {
        dc2.login(u);
    }
    dc1.know(&dc2);
    let mut sent = Vec::new();
    let mut held = round(&dc1, &users, "before", &mut sent);

    // Two slots moved step by step: the one of a user's key (read from
    // the source, then through ASK once the key has moved, and re-written
    // by dc2's CAS refresh) and the one of a newcomer's key (a login while
    // the slot migrates: a new key goes to the importing node).
    let newcomer = "newcomer@example.com/r".to_owned();
    let moves: Vec<(u16, u16, u16)> = {
        let mut slots = vec![cluster.slot_of(&users[0]), cluster.slot_of(&newcomer)];
        slots.dedup();
        slots
            .into_iter()
            .map(|s| (s, cluster.owner(s), cluster.other_than_owner(s)))
            .collect()
    };
    for &(slot, from, to) in &moves {
        cluster.begin_migration(slot, from, to);
    }
    held += round(&dc1, &users[..1], "importing", &mut sent);
    for &(slot, from, to) in &moves {
        cluster.migrate_some(slot, from, to, 100);
    }
    dc2.login(&newcomer);
    stored_at_dc2(&cluster, &newcomer);
    users.push(newcomer.clone());
    dc2.rt.block_on(dc2.rt.refresh_now());
    held += round(&dc1, &users, "migrating", &mut sent);
    for &(slot, from, to) in &moves {
        cluster.end_migration(slot, from, to);
    }
    assert_eq!(
        cluster.cmd(&["GET", &newcomer]),
        Resp::Bulk(Some(host(2))),
        "the newcomer's key is on the slot's new owner"
    );
    for &(slot, _, to) in &moves {
        assert_eq!(cluster.owner(slot), to);
    }

    // Then thousands of slots resharded by redis-cli under live traffic:
    // logins, refreshes, lookups and stanzas go on.
    let (src, dst) = (cluster.ports()[1], cluster.ports()[2]);
    let resharding = reshard(&cluster, src, dst, 3000);
    let mut rounds = 0;
    while !resharding.is_finished() || rounds == 0 {
        let u = format!("late{rounds}@example.com/r");
        dc2.login(&u);
        stored_at_dc2(&cluster, &u);
        users.push(u);
        dc2.rt.block_on(dc2.rt.refresh_now());
        held += round(&dc1, &users, &format!("reshard{rounds}"), &mut sent);
        rounds += 1;
    }
    assert!(
        resharding.join().unwrap(),
        "redis-cli --cluster reshard failed"
    );
    cluster.wait_ok();

    // Every stanza arrived exactly once; every key is dc2's.
    assert!(
        wait_for(WAIT, || dc2.inbox.delivered_count() >= sent.len()),
        "{} of {} delivered",
        dc2.inbox.delivered_count(),
        sent.len()
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for body in dc2.inbox.all_bodies() {
        *seen.entry(body).or_default() += 1;
    }
    assert_eq!(seen.len(), sent.len(), "distinct stanzas delivered");
    assert!(seen.values().all(|n| *n == 1), "a stanza delivered twice");
    assert!(sent.iter().all(|b| seen.contains_key(b)));
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
    for u in &users {
        assert_eq!(cluster.cmd(&["GET", u]), Resp::Bulk(Some(host(2))), "{u}");
    }
    eprintln!(
        "{} stanzas ({held} held by bounce a moment) over {rounds} rounds while 3000 slots \
         moved from :{src} to :{dst}",
        sent.len()
    );
}
