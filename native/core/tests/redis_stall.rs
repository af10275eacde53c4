//! Deadlines inside the core when Redis stalls or dies (issue 11, item 4):
//! a server that accepts and never answers, a real `redis-server` frozen
//! with SIGSTOP, and one killed mid-traffic. Every call answers within
//! `redis.timeout_ms` (with slack: these are bounds on a failure path, not
//! benchmarks), the circuit makes the calls after a failure answer at once,
//! `start` fails clearly, and the refresher restores everything when Redis
//! is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gd_core::mapping::Location;
use gd_core::routing::RouteResult;
use gd_core::runtime::Runtime;
use gd_core::store::redis::RedisBackend;
use gd_core::store::{Backend, Cmd, StoreError};
use gd_core::transport::frame::PayloadKind;
use support::dc::{self, host, jid, Inbox};
use support::redis::{RawClient, RedisServer};
use support::wait_for;

/// `redis.timeout_ms` by default.
const DEADLINE: Duration = Duration::from_millis(1000);
/// What a caller may wait at most on a failure path.
const BOUND: Duration = Duration::from_millis(2000);
const WAIT: Duration = Duration::from_secs(10);

/// A TCP server that accepts every connection and never answers.
fn blackhole() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    port
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

fn get(raw: &mut RawClient, key: &str) -> Option<String> {
    raw.cmd(&["GET", key]).unwrap().bulk()
}

#[test]
fn start_against_a_server_that_never_answers_fails_within_the_bound() {
    let port = blackhole();
    let cfg = dc::redis_config(1, &format!("redis://127.0.0.1:{port}"));
    let (started, took) = timed(|| Runtime::start(cfg, Arc::new(Inbox::default())));
    let Err(e) = started else {
        panic!("start must fail against a server that never answers")
    };
    let text = e.to_string();
    eprintln!("start against a blackhole: {took:?}: {text}");
    assert_eq!(
        text,
        format!("start: redis 127.0.0.1:{port} did not answer within 3000 ms")
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
}

#[test]
fn start_against_a_closed_port_fails_at_once() {
    let port = support::free_port();
    let cfg = dc::redis_config(1, &format!("redis://127.0.0.1:{port}"));
    let (started, took) = timed(|| Runtime::start(cfg, Arc::new(Inbox::default())));
    let Err(e) = started else {
        panic!("start must fail without a store")
    };
    let text = e.to_string();
    eprintln!("start against a closed port: {took:?}: {text}");
    assert!(
        text.starts_with(&format!("start: redis 127.0.0.1:{port} cannot be reached")),
        "{text}"
    );
    assert!(took < BOUND, "{took:?}");
}

/// Before: one lookup with `pool_size` 1 took 36-54 s, each batch of the
/// queue waiting out a response timeout and then a retry.
#[tokio::test]
async fn a_stalled_server_costs_one_deadline_then_fails_fast() {
    let port = blackhole();
    let mut cfg = dc::redis_config(1, &format!("redis://127.0.0.1:{port}")).redis;
    cfg.pool_size = 1;
    let backend = RedisBackend::with_timeout(&cfg, Duration::from_millis(300)).unwrap();
    let get = |k: &str| Cmd::Get { key: k.into() };
    let batches: Vec<Vec<Cmd>> = (0..10).map(|i| vec![get(&format!("k{i}"))]).collect();
    let t = Instant::now();
    let results = futures::future::join_all(batches.iter().map(|b| backend.exec(b))).await;
    let took = t.elapsed();
    eprintln!("10 concurrent GETs on a stalled server, pool_size 1: {took:?}");
    assert!(results
        .iter()
        .all(|r| matches!(r, Err(StoreError::Unavailable(_)))));
    assert!(took < Duration::from_millis(600), "{took:?}");
    // Known down now: the next call does not wait at all.
    let (r, took) = {
        let t = Instant::now();
        let r = backend.exec(std::slice::from_ref(&get("again"))).await;
        (r, t.elapsed())
    };
    eprintln!("next GET while known down: {took:?}: {r:?}");
    assert!(
        matches!(&r, Err(StoreError::Unavailable(m)) if m.contains("known down")),
        "{r:?}"
    );
    assert!(took < Duration::from_millis(100), "{took:?}");
}

#[test]
fn stalled_redis_route_and_session_opened_answer_within_the_deadline() {
    let redis = RedisServer::start();
    let dc1 = dc::start_on_redis(1, &redis.url());
    dc1.login("alice@example.com/a");
    redis.pause();

    // Uncached recipient: the lookup misses its deadline, and the stanza
    // takes the "store unavailable" path (bounce holds it).
    let (r, took) = timed(|| dc1.send("alice@example.com/a", "bob@example.com/b", "stalled"));
    eprintln!("route, uncached, Redis stalled: {took:?}: {r:?}");
    assert_eq!(r, RouteResult::Stored);
    assert!(took <= BOUND, "{took:?}");

    // A login answers too; its keys are retried in the background.
    let (_, took) = timed(|| dc1.login("carol@example.com/c"));
    eprintln!("session_opened, Redis stalled: {took:?}");
    assert!(took <= BOUND, "{took:?}");

    // The circuit is open: the runtime's own answer comes at once.
    let dave = jid("dave@example.com/d");
    let (l, took) = timed(|| dc1.rt.block_on(dc1.rt.lookup(&dave)));
    eprintln!("lookup while known down: {took:?}: {l:?}");
    assert!(l.is_err(), "{l:?}");
    assert!(took < DEADLINE / 2, "{took:?}");

    // Many uncached routes at once (pool_size 1): all answered in time.
    let futures: Vec<_> = (0..50)
        .map(|i| {
            let env = dc1.rt.envelope(
                jid("alice@example.com/a"),
                jid(&format!("user{i}@example.com/r")),
                PayloadKind::Message,
                Bytes::from_static(b"burst"),
            );
            dc1.rt.route(env)
        })
        .collect();
    let (results, took) = timed(|| dc1.rt.block_on(futures::future::join_all(futures)));
    eprintln!("50 concurrent uncached routes, Redis stalled: {took:?}");
    assert!(results.iter().all(|r| *r == RouteResult::Stored));
    assert!(took <= BOUND, "{took:?}");

    redis.resume();
    // The refresher's pending retry writes carol's keys by itself.
    let mut raw = redis.client();
    assert!(wait_for(WAIT, || get(&mut raw, "carol@example.com/c")
        .is_some_and(|h| h == host(1))));
    // Each stanza had one outcome: bounce gave them to local routing (found
    // nowhere) once, none was reported undeliverable.
    assert!(wait_for(WAIT, || dc1.rt.bounce_queue_size() == 0));
    let bodies = dc1.inbox.all_bodies();
    assert_eq!(bodies.iter().filter(|b| *b == "stalled").count(), 1);
    assert_eq!(bodies.iter().filter(|b| *b == "burst").count(), 50);
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
    // And the store answers checked calls again.
    let carol = jid("carol@example.com/c");
    dc1.rt.mapping().remove_jid("carol@example.com/c");
    dc1.rt.mapping().remove_jid("carol@example.com");
    assert!(wait_for(WAIT, || dc1
        .rt
        .block_on(dc1.rt.lookup(&carol))
        .is_ok_and(|l| l == Location::Local)));
}

/// `route_timeout_ms` bounds a route() below the store's own deadline: the
/// stanza is decided without the lookup (bounce holds it), counted, and
/// handled once; nothing the abandoned wait would have done happens later.
#[test]
fn route_timeout_decides_before_the_store_deadline() {
    let redis = RedisServer::start();
    let mut cfg = dc::redis_config(1, &redis.url());
    cfg.route_timeout_ms = 150;
    cfg.redis.timeout_ms = 5000;
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::new(&cfg.redis).unwrap());
    let dc1 = dc::start(cfg, backend);
    dc1.login("alice@example.com/a");
    redis.pause();
    let (r, took) = timed(|| dc1.send("alice@example.com/a", "bob@example.com/b", "late"));
    eprintln!("route, uncached, Redis stalled, route_timeout_ms 150: {took:?}: {r:?}");
    assert_eq!(r, RouteResult::Stored);
    assert!(took < Duration::from_millis(1500), "{took:?}");
    let timed_out = dc1
        .rt
        .metrics()
        .snapshot()
        .counter("global.mod_global_distrib.route_timed_out");
    assert_eq!(timed_out, Some(1));
    redis.resume();
    // Bounce found bob nowhere and gave the stanza to local routing, once.
    assert!(wait_for(WAIT, || dc1.rt.bounce_queue_size() == 0
        && dc1.inbox.all_bodies().iter().any(|b| b == "late")));
    std::thread::sleep(Duration::from_millis(300));
    let bodies = dc1.inbox.all_bodies();
    assert_eq!(bodies.iter().filter(|b| *b == "late").count(), 1);
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
}

#[test]
fn session_opened_as_the_first_call_on_a_stalled_redis_answers_within_the_deadline() {
    let redis = RedisServer::start();
    let dc1 = dc::start_on_redis(1, &redis.url());
    redis.pause();
    let (_, took) = timed(|| dc1.login("carol@example.com/c"));
    eprintln!("session_opened, first call on a stalled Redis: {took:?}");
    assert!(took <= BOUND, "{took:?}");
    // Routing sees the session at once, whatever the store.
    let r = dc1.send("alice@example.com/a", "carol@example.com/c", "hi");
    assert_eq!(r, RouteResult::Local);
    redis.resume();
    let mut raw = redis.client();
    assert!(wait_for(WAIT, || get(&mut raw, "carol@example.com/c")
        .is_some_and(|h| h == host(1))));
}

#[test]
fn redis_killed_mid_traffic_fails_fast_and_recovers() {
    let mut redis = RedisServer::start();
    let dc1 = dc::start_on_redis(1, &redis.url());
    let dc2 = dc::start_on_redis(2, &redis.url());
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc1.send("alice@example.com/a", "bob@example.com/b", "before");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));

    redis.stop();
    // Cached routes go on.
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", "during");
    assert!(matches!(r, RouteResult::Forwarded(_)), "{r:?}");
    // Uncached lookups fail fast, one after the other.
    let (failed, took) = timed(|| {
        (0..100)
            .filter(|i| {
                let j = jid(&format!("nobody{i}@example.com/r"));
                dc1.rt.block_on(dc1.rt.lookup(&j)).is_err()
            })
            .count()
    });
    eprintln!("100 uncached lookups, Redis killed: {took:?}");
    assert_eq!(failed, 100);
    assert!(took < DEADLINE, "{took:?}");
    let (_, took) = timed(|| dc1.login("carol@example.com/c"));
    assert!(took <= BOUND, "{took:?}");

    redis.restart();
    let mut raw = redis.client();
    // The pending open is written by the refresher alone, and a pass
    // restores everything owned.
    assert!(wait_for(WAIT, || get(&mut raw, "carol@example.com/c")
        .is_some_and(|h| h == host(1))));
    dc1.rt.block_on(dc1.rt.refresh_now());
    dc2.rt.block_on(dc2.rt.refresh_now());
    assert_eq!(get(&mut raw, "alice@example.com/a"), Some(host(1)));
    assert_eq!(get(&mut raw, "bob@example.com/b"), Some(host(2)));
    // Checked calls work again.
    let carol = jid("carol@example.com/c");
    assert!(wait_for(WAIT, || dc2
        .rt
        .block_on(dc2.rt.lookup(&carol))
        .is_ok_and(
            |l| l == Location::Remote(Arc::from(host(1).as_str()))
        )));
    assert!(wait_for(WAIT, || dc2
        .inbox
        .bodies_to("bob@example.com/b")
        .contains(&"during".to_owned())));
}
