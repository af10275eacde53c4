//! Datacenters sharing a real Redis, directly and through nutcracker
//! (SPEC 11: 11, 14): the runtime's whole dialect goes through a proxy,
//! routing survives a Redis restart from cache, and the next refresh
//! restores everything each node owns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use gd_core::routing::RouteResult;
use support::dc::{self, host};
use support::redis::{Nutcracker, RedisServer};
use support::wait_for;

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn routing_goes_on_from_cache_while_redis_restarts_and_state_is_restored() {
    let mut redis = RedisServer::start();
    let dc1 = dc::start_on_redis(1, &redis.url());
    let dc2 = dc::start_on_redis(2, &redis.url());
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc1.send("alice@example.com/a", "bob@example.com/b", "before");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));

    redis.stop();
    for i in 0..20 {
        let r = dc1.send(
            "alice@example.com/a",
            "bob@example.com/b",
            &format!("during{i}"),
        );
        assert!(matches!(r, RouteResult::Forwarded(_)), "{r:?}");
    }
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 21));
    // A refresh while Redis is down fails quietly.
    dc1.rt.block_on(dc1.rt.refresh_now());

    redis.restart();
    let mut raw = redis.client();
    assert!(raw
        .cmd(&["GET", "bob@example.com/b"])
        .unwrap()
        .bulk()
        .is_none());
    dc1.rt.block_on(dc1.rt.refresh_now());
    dc2.rt.block_on(dc2.rt.refresh_now());
    let get = |raw: &mut support::redis::RawClient, k: &str| raw.cmd(&["GET", k]).unwrap().bulk();
    assert_eq!(
        get(&mut raw, "bob@example.com/b").as_deref(),
        Some(host(2).as_str())
    );
    assert_eq!(
        get(&mut raw, "bob@example.com").as_deref(),
        Some(host(2).as_str())
    );
    assert_eq!(
        get(&mut raw, "alice@example.com/a").as_deref(),
        Some(host(1).as_str())
    );
    let mut hosts = raw.cmd(&["SMEMBERS", "hosts"]).unwrap().strings();
    hosts.sort();
    assert_eq!(hosts, vec![host(1), host(2)]);
    let eps = raw
        .cmd(&[
            "SMEMBERS",
            &format!("{}#node2@localhost#{{endpoints}}", host(2)),
        ])
        .unwrap()
        .strings();
    assert_eq!(
        eps,
        vec![format!("127.0.0.1#{}", dc2.rt.listen_addrs()[0].port())]
    );

    // A DC that starts now learns everything from the restored store.
    let dc3 = dc::start_on_redis(3, &redis.url());
    dc3.login("carol@example.com/c");
    dc3.send("carol@example.com/c", "bob@example.com/b", "after");
    assert!(wait_for(WAIT, || dc2
        .inbox
        .bodies_to("bob@example.com/b")
        .contains(&"after".to_owned())));
}

#[test]
fn dcs_talk_through_nutcracker_with_two_redis_servers() {
    let r1 = RedisServer::start();
    let r2 = RedisServer::start();
    let proxy = Nutcracker::start(&[&r1, &r2]);
    let dc1 = dc::start_on_redis(1, &proxy.url());
    let dc2 = dc::start_on_redis(2, &proxy.url());
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc2.rt
        .block_on(dc2.rt.register_subhost("muc.example.com", true));
    dc1.send("alice@example.com/a", "bob@example.com/b", "via twemproxy");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    dc2.send("bob@example.com/b", "alice@example.com/a", "back");
    assert!(wait_for(WAIT, || dc1.inbox.delivered_count() == 1));
    dc1.send("alice@example.com/a", "room@muc.example.com", "join");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 2));
    let public = dc1.rt.block_on(dc1.rt.public_domains()).unwrap();
    assert!(public.contains(&"muc.example.com".to_owned()));
    // Keys really are spread over both servers behind the proxy.
    let keys = |r: &RedisServer| r.client().cmd(&["DBSIZE"]).unwrap().int();
    assert!(
        keys(&r1) > 0 && keys(&r2) > 0,
        "{} / {}",
        keys(&r1),
        keys(&r2)
    );
    // And the CAS delete works through it: bob leaves, his keys go.
    dc2.logout("bob@example.com/b");
    let mut c = proxy.client();
    assert!(c
        .cmd(&["GET", "bob@example.com/b"])
        .unwrap()
        .bulk()
        .is_none());
}

/// A peer reads a DC's endpoints as soon as it sees the DC in `hosts`;
/// found empty, it would not look again for
/// `endpoint_refresh_interval_when_empty` and hold the DC's stanzas in
/// bounce meanwhile. So a starting DC writes its endpoints before the
/// heartbeat that puts it into `hosts`: what Redis executes, seen through
/// `MONITOR`, is in that order.
#[test]
fn a_starting_dc_writes_its_endpoints_before_joining_hosts() {
    let redis = RedisServer::start();
    let mut monitor = redis.client();
    assert_eq!(
        monitor.cmd(&["MONITOR"]).unwrap(),
        support::redis::Resp::Simple("OK".into())
    );
    let _dc1 = dc::start_on_redis(1, &redis.url());
    let endpoints = format!("\"SADD\" \"{}#node1@localhost#{{endpoints}}\"", host(1));
    let stamp = format!("\"HSET\" \"{}#{{nodes}}\" \"node1@localhost\"", host(1));
    let joined = format!("\"SADD\" \"hosts\" \"{}\"", host(1));
    let mut seen = Vec::new();
    loop {
        let line = match monitor.next_reply() {
            Ok(support::redis::Resp::Simple(l)) => l,
            other => panic!("MONITOR ended before {joined}: {other:?}; saw {seen:#?}"),
        };
        let done = line.contains(&joined);
        seen.push(line);
        if done {
            break;
        }
    }
    let at = |what: &str| seen.iter().position(|l| l.contains(what));
    let (e, s, j) = (at(&endpoints), at(&stamp), at(&joined));
    assert!(
        matches!((e, s, j), (Some(e), Some(s), Some(j)) if e < s && s < j),
        "endpoints {e:?}, stamp {s:?}, hosts {j:?}: {seen:#?}"
    );
}

#[test]
fn a_dead_node_is_pruned_from_the_nodes_hash_on_refresh() {
    let redis = RedisServer::start();
    let dc1 = dc::start_on_redis(1, &redis.url());
    let key = format!("{}#{{nodes}}", host(1));
    let mut raw = redis.client();
    // A node that last refreshed long before expire_after (120 s).
    raw.cmd(&["HSET", &key, "ghost@localhost", "1000"]).unwrap();
    dc1.rt.block_on(dc1.rt.refresh_now());
    let mut fields = raw.cmd(&["HKEYS", &key]).unwrap().strings();
    fields.sort();
    assert_eq!(fields, vec!["node1@localhost".to_owned()]);
}

#[test]
fn sessions_held_here_stay_local_after_a_redis_flushall() {
    let redis = RedisServer::start();
    let dc1 = dc::start_on_redis(1, &redis.url());
    dc1.login("alice@example.com/a");
    dc1.login("bob@example.com/b");
    let mut raw = redis.client();
    // A refresh pass of the start may still be writing what this node
    // holds: flush until the keys are gone.
    assert!(wait_for(WAIT, || {
        raw.cmd(&["FLUSHALL"]).unwrap();
        raw.cmd(&["GET", "bob@example.com/b"])
            .unwrap()
            .bulk()
            .is_none()
    }));
    // As if the cache entries had expired too: only what this node holds
    // can answer.
    for k in [
        "alice@example.com/a",
        "alice@example.com",
        "bob@example.com/b",
        "bob@example.com",
    ] {
        dc1.rt.mapping().remove_jid(k);
    }
    assert_eq!(
        dc1.send("alice@example.com/a", "bob@example.com/b", "full"),
        RouteResult::Local
    );
    assert_eq!(
        dc1.send("alice@example.com/a", "bob@example.com", "bare"),
        RouteResult::Local
    );
    let bob = dc::jid("bob@example.com");
    assert_eq!(
        dc1.rt.block_on(dc1.rt.lookup(&bob)).unwrap(),
        gd_core::mapping::Location::Local
    );
    assert_eq!(dc1.rt.bounce_queue_size(), 0);
}
