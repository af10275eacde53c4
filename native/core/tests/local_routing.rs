//! MongooseIM's routing semantics beyond the happy path (SPEC 5, 7): a
//! recipient found nowhere continues local routing (at once when bounce
//! cannot hold it, after the retries otherwise), only a known DC that cannot
//! be reached ends undeliverable, sessions held here are local whatever the
//! store says, `cache_origin` teaches the cache where a sender lives, and
//! `rebalance_now` uses a new endpoint without waiting for the timer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use gd_core::mapping::Location;
use gd_core::routing::{Reason, RouteResult};
use gd_core::runtime::{OriginError, StopReport};
use gd_core::store::embedded::EmbeddedBackend;
use gd_core::store::{Backend, Cmd, Reply, StoreError};
use gd_core::transport::frame::PayloadKind;
use support::dc::{self, host, jid, Dc};
use support::wait_for;

const WAIT: Duration = Duration::from_secs(10);

fn shared() -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::new())
}

fn remote(n: u32) -> Location {
    Location::Remote(Arc::from(host(n).as_str()))
}

/// Stanzas delivered with the given `unrouted` marker, by payload.
fn unrouted_bodies(d: &Dc, why: Reason) -> Vec<String> {
    d.inbox
        .delivered
        .lock()
        .iter()
        .filter(|x| x.unrouted == Some(why))
        .map(|x| String::from_utf8_lossy(&x.envelope.payload).into_owned())
        .collect()
}

#[test]
fn found_nowhere_with_bounce_disabled_is_local_at_once() {
    let mut c = dc::config(1);
    c.bounce.enabled = false;
    let dc1 = dc::start(c, shared());
    let r = dc1.send("alice@example.com/a", "nobody@example.com/x", "hello?");
    assert_eq!(r, RouteResult::Local);
    assert_eq!(dc1.rt.bounce_queue_size(), 0);
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
}

#[test]
fn found_nowhere_with_bounce_full_is_local_at_once() {
    let mut c = dc::config(1);
    c.bounce.max_stored = 1;
    c.bounce.resend_after_ms = 60_000;
    let dc1 = dc::start(c, shared());
    let first = dc1.send("alice@example.com/a", "nobody@example.com/x", "one");
    assert_eq!(first, RouteResult::Stored);
    let second = dc1.send("alice@example.com/a", "nobody2@example.com/x", "two");
    assert_eq!(second, RouteResult::Local);
    assert_eq!(dc1.rt.bounce_queue_size(), 1);
}

#[test]
fn found_nowhere_after_retries_goes_to_local_delivery_marked() {
    let dc1 = dc::start(dc::config(1), shared());
    let r = dc1.send("alice@example.com/a", "nobody@example.com/x", "offline me");
    assert_eq!(r, RouteResult::Stored);
    assert!(wait_for(WAIT, || dc1.inbox.delivered_count() == 1));
    let d = dc1.inbox.delivered.lock()[0].clone();
    assert_eq!(&d.envelope.payload[..], b"offline me");
    assert_eq!(d.unrouted, Some(Reason::RetriesExhausted));
    assert_eq!(d.from_host, None);
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
    assert_eq!(dc1.rt.bounce_queue_size(), 0);
}

/// An embedded store that fails every batch while `down` is set.
struct Switchable {
    inner: EmbeddedBackend,
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

#[test]
fn a_store_that_cannot_answer_counts_as_found_nowhere() {
    let store = Arc::new(Switchable {
        inner: EmbeddedBackend::new(),
        down: AtomicBool::new(false),
    });
    let mut off = dc::config(1);
    off.bounce.enabled = false;
    let no_bounce = dc::start(off, store.clone());
    let with_bounce = dc::start(dc::config(2), store.clone());
    store.down.store(true, Ordering::SeqCst);

    // Bounce disabled: local routing at once.
    assert_eq!(
        no_bounce.send("alice@example.com/a", "nobody@example.com/x", "now"),
        RouteResult::Local
    );
    // Bounce enabled: held, and every retry's lookup fails too.
    assert_eq!(
        with_bounce.send("alice@example.com/a", "nobody@example.com/x", "later"),
        RouteResult::Stored
    );
    assert!(wait_for(WAIT, || with_bounce.inbox.delivered_count() == 1));
    assert_eq!(
        unrouted_bodies(&with_bounce, Reason::RetriesExhausted),
        vec!["later"]
    );
    assert_eq!(with_bounce.inbox.undeliverable_count(), 0);
    store.down.store(false, Ordering::SeqCst);
}

/// dc1 (configured by `c1`) knows dc2, where bob logged in; then dc2 goes
/// away without its store keys being removed: a known DC, unreachable.
fn dc2_known_but_gone(c1: gd_core::config::Config) -> Dc {
    let store = shared();
    let dc1 = dc::start(c1, store.clone());
    let dc2 = dc::start(dc::config(2), store);
    dc2.login("bob@example.com/b");
    dc1.know(&dc2);
    dc2.rt.stop(Duration::from_millis(100));
    drop(dc2);
    dc1
}

#[test]
fn a_known_dc_that_cannot_be_reached_is_undeliverable_unreachable() {
    let mut c1 = dc::config(1);
    c1.bounce.enabled = false;
    let dc1 = dc2_known_but_gone(c1);
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", "lost link");
    // Queued on a connection not opened yet; opening it fails.
    assert!(
        matches!(
            r,
            RouteResult::Forwarded(_) | RouteResult::Undeliverable(Reason::Unreachable)
        ),
        "{r:?}"
    );
    if matches!(r, RouteResult::Forwarded(_)) {
        assert!(wait_for(WAIT, || dc1.inbox.undeliverable_count() == 1));
        let (env, why) = dc1.inbox.undeliverable.lock()[0].clone();
        assert_eq!(&env.payload[..], b"lost link");
        assert_eq!(why, Reason::Unreachable);
    }
    assert_eq!(dc1.inbox.delivered_count(), 0);
}

#[test]
fn stop_hands_found_nowhere_to_local_routing_and_reports_the_rest() {
    let mut c1 = dc::config(1);
    c1.bounce.resend_after_ms = 60_000;
    let dc1 = dc2_known_but_gone(c1);
    assert_eq!(
        dc1.send("alice@example.com/a", "nobody@example.com/x", "nowhere"),
        RouteResult::Stored
    );
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", "dc2 down");
    assert!(
        matches!(r, RouteResult::Forwarded(_) | RouteResult::Stored),
        "{r:?}"
    );
    // The failed connection hands bob's stanza to bounce.
    assert!(
        wait_for(WAIT, || dc1.rt.bounce_queue_size() == 2),
        "bounce holds {}",
        dc1.rt.bounce_queue_size()
    );
    let report = dc1.rt.stop(Duration::from_millis(100));
    assert_eq!(
        report,
        StopReport {
            undeliverable: 1,
            unrouted: 1
        }
    );
    assert_eq!(unrouted_bodies(&dc1, Reason::Stopped), vec!["nowhere"]);
    let (env, why) = dc1.inbox.undeliverable.lock()[0].clone();
    assert_eq!((&env.payload[..], why), (&b"dc2 down"[..], Reason::Stopped));
}

/// Deletes `keys` from the store and from `d`'s cache: what a store flush
/// and an expired cache entry leave.
fn forget(d: &Dc, keys: &[&str]) {
    let cmds: Vec<Cmd> = keys
        .iter()
        .map(|k| Cmd::Del {
            key: (*k).to_owned(),
        })
        .collect();
    d.rt.block_on(d.rt.store().backend().exec(&cmds)).unwrap();
    for k in keys {
        d.rt.mapping().remove_jid(k);
    }
}

#[test]
fn sessions_held_here_are_local_even_when_the_store_lost_them() {
    let dc1 = dc::start(dc::config(1), shared());
    dc1.login("alice@example.com/a");
    dc1.login("bob@example.com/b");
    forget(
        &dc1,
        &[
            "alice@example.com/a",
            "alice@example.com",
            "bob@example.com/b",
            "bob@example.com",
        ],
    );
    assert_eq!(
        dc1.rt
            .block_on(dc1.rt.store().get("bob@example.com/b"))
            .unwrap(),
        None
    );
    // The inline fast path answers without the store.
    let env = dc1.rt.envelope(
        jid("alice@example.com/a"),
        jid("bob@example.com/b"),
        PayloadKind::Message,
        Bytes::from_static(b"x"),
    );
    assert_eq!(dc1.rt.try_route(env), Ok(RouteResult::Local));
    assert_eq!(
        dc1.send("alice@example.com/a", "bob@example.com", "bare"),
        RouteResult::Local
    );
    for j in [
        "bob@example.com/b",
        "bob@example.com",
        "alice@example.com/a",
    ] {
        assert_eq!(
            dc1.rt.block_on(dc1.rt.lookup(&jid(j))).unwrap(),
            Location::Local,
            "{j}"
        );
    }
    // A resource this node does not hold is still looked up.
    assert_eq!(
        dc1.rt
            .block_on(dc1.rt.lookup(&jid("bob@example.com/elsewhere")))
            .unwrap(),
        Location::Unknown
    );
    // Once bob logs out here, he is no longer local.
    dc1.logout("bob@example.com/b");
    assert_eq!(
        dc1.rt
            .block_on(dc1.rt.lookup(&jid("bob@example.com")))
            .unwrap(),
        Location::Unknown
    );
}

#[test]
fn cache_origin_caches_an_unknown_sender_and_never_writes_the_store() {
    let store = shared();
    let dc1 = dc::start(dc::config(1), store.clone());
    let dc2 = dc::start(dc::config(2), store);
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    let carol = jid("carol@example.com/c");
    // dc2 is accepted as an origin whether dc1's pools know it already or
    // the store's `hosts` set has to be read.
    assert!(dc1
        .rt
        .block_on(dc1.rt.cache_origin(&carol, &host(2)))
        .unwrap());
    assert_eq!(dc1.rt.mapping().lookup_cached(&carol), Some(remote(2)));
    assert_eq!(
        dc1.rt.mapping().lookup_cached(&jid("carol@example.com")),
        Some(remote(2))
    );
    for k in ["carol@example.com/c", "carol@example.com"] {
        assert_eq!(dc1.rt.block_on(dc1.rt.store().get(k)).unwrap(), None);
    }
    assert_eq!(
        dc1.send("alice@example.com/a", "carol@example.com/c", "answer"),
        RouteResult::Forwarded(Arc::from(host(2).as_str()))
    );

    // A sender found by the lookup is left alone.
    let bob = jid("bob@example.com/b");
    assert!(!dc1
        .rt
        .block_on(dc1.rt.cache_origin(&bob, &host(1)))
        .unwrap());
    assert_eq!(dc1.rt.block_on(dc1.rt.lookup(&bob)).unwrap(), remote(2));

    // A domain sender is cached as a domain.
    let component = jid("component.example.org");
    assert!(dc1
        .rt
        .block_on(dc1.rt.cache_origin(&component, &host(2)))
        .unwrap());
    assert_eq!(
        dc1.rt
            .mapping()
            .lookup_cached(&jid("someone@component.example.org")),
        Some(remote(2))
    );
    // Keys a lookup never reads are not written.
    for other in ["user@other.example.org/r", "example.com", "dc1.example.com"] {
        assert!(
            !dc1.rt
                .block_on(dc1.rt.cache_origin(&jid(other), &host(2)))
                .unwrap(),
            "{other}"
        );
    }
}

#[test]
fn cache_origin_refuses_an_origin_that_is_no_datacenter() {
    let dc1 = dc::start(dc::config(1), shared());
    let carol = jid("carol@example.com/c");
    match dc1
        .rt
        .block_on(dc1.rt.cache_origin(&carol, "evil.example.net"))
    {
        Err(OriginError::UnknownOrigin(h)) => assert_eq!(h, "evil.example.net"),
        other => panic!("{other:?}"),
    }
    assert_eq!(dc1.rt.mapping().lookup_cached(&carol), None);
    // This DC's own name is accepted (a stanza that entered here).
    assert!(dc1
        .rt
        .block_on(dc1.rt.cache_origin(&carol, &host(1)))
        .unwrap());
    assert_eq!(
        dc1.rt.mapping().lookup_cached(&carol),
        Some(Location::Local)
    );
}

#[test]
fn rebalance_now_uses_a_new_endpoint_at_once() {
    let store = shared();
    let mut c1 = dc::config(1);
    c1.connections.endpoint_refresh_interval = 3600;
    let dc1 = dc::start(c1, store.clone());
    let dc2a = dc::start(dc::config(2), store.clone());
    dc2a.login("bob@example.com/b");
    dc1.know(&dc2a);
    assert_eq!(dc1.rt.outgoing().endpoints_of(&host(2)).len(), 1);

    // A second node of dc2 comes up and advertises its own endpoint.
    let mut c2b = dc::config(2);
    c2b.node_name = "node2b@localhost".into();
    let dc2b = dc::start(c2b, store);
    assert_eq!(
        dc1.rt.outgoing().endpoints_of(&host(2)).len(),
        1,
        "the periodic refresh is an hour away"
    );
    assert_eq!(dc1.rt.block_on(dc1.rt.rebalance_now()), 1);
    assert_eq!(dc1.rt.outgoing().endpoints_of(&host(2)).len(), 2);

    // Senders are bound to connections by hash: with 64 of them both
    // endpoints carry traffic.
    for i in 0..64 {
        let r = dc1.send(
            &format!("user{i}@example.com/r"),
            "bob@example.com/b",
            &format!("m{i}"),
        );
        assert!(matches!(r, RouteResult::Forwarded(_)), "{r:?}");
    }
    assert!(
        wait_for(WAIT, || dc2a.inbox.delivered_count()
            + dc2b.inbox.delivered_count()
            == 64),
        "dc2a {} dc2b {}",
        dc2a.inbox.delivered_count(),
        dc2b.inbox.delivered_count()
    );
    assert!(dc2b.inbox.delivered_count() > 0);
}
