//! Multi-datacenter routing scenarios (SPEC 11: 1, 2, 4, 5, 6, 7, 12) with
//! several runtimes in one process over real loopback TCP, sharing one
//! embedded store the way DCs share a replicated Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gd_core::metrics::names;
use gd_core::routing::{Reason, RouteResult};
use gd_core::store::embedded::EmbeddedBackend;
use gd_core::store::Backend;
use gd_core::transport::frame::PayloadKind;
use support::dc::{self, host, Dc};
use support::wait_for;

const WAIT: Duration = Duration::from_secs(10);

fn shared() -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::new())
}

fn two_dcs() -> (Dc, Dc) {
    let store = shared();
    let a = dc::start(dc::config(1), store.clone());
    let b = dc::start(dc::config(2), store);
    (a, b)
}

#[test]
fn pm_between_dcs_both_directions() {
    let (dc1, dc2) = two_dcs();
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");

    let r = dc1.send("alice@example.com/a", "bob@example.com/b", "hi bob");
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(2).as_str())));
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    let d = dc2.inbox.delivered.lock()[0].clone();
    assert_eq!(&d.envelope.payload[..], b"hi bob");
    assert_eq!(d.from_host.as_deref(), Some(host(1).as_str()));
    assert_eq!(&*d.envelope.meta.origin, host(1).as_str());
    assert_eq!(d.envelope.meta.ttl, 3, "one forward spends one TTL unit");

    let r = dc2.send("bob@example.com/b", "alice@example.com/a", "hi alice");
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(1).as_str())));
    assert!(wait_for(WAIT, || dc1.inbox.delivered_count() == 1));
    assert_eq!(dc1.inbox.bodies_to("alice@example.com/a"), vec!["hi alice"]);

    assert_eq!(dc1.counter(&names::outgoing_messages(&host(2))), 1);
    assert_eq!(dc2.counter(&names::incoming_messages(&host(1))), 1);
    assert!(dc1.counter(&names::outgoing_established(&host(2))) >= 1);
    assert!(dc2.counter(names::INCOMING_ESTABLISHED) >= 1);
}

#[test]
fn local_recipient_stays_local() {
    let (dc1, _dc2) = two_dcs();
    dc1.login("alice@example.com/a");
    dc1.login("carol@example.com/c");
    assert_eq!(
        dc1.send("carol@example.com/c", "alice@example.com/a", "x"),
        RouteResult::Local
    );
    // Same user, other session: never routed globally.
    assert_eq!(
        dc1.send("alice@example.com/a", "alice@example.com/other", "x"),
        RouteResult::Local
    );
}

#[test]
fn message_to_bare_jid_before_presence_arrives() {
    let (dc1, dc2) = two_dcs();
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    let r = dc1.send("alice@example.com/a", "bob@example.com", "to the bare jid");
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(2).as_str())));
    assert!(wait_for(WAIT, || dc2.inbox.bodies_to("bob@example.com")
        == vec!["to the bare jid"]));
}

#[test]
fn recipient_gone_continues_local_routing_not_lost() {
    let (dc1, dc2) = two_dcs();
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    // Warm dc1's cache so it still believes bob is at dc2.
    assert!(matches!(
        dc1.send("alice@example.com/a", "bob@example.com/b", "first"),
        RouteResult::Forwarded(_)
    ));
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    dc2.logout("bob@example.com/b");
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", "after logout");
    assert!(matches!(r, RouteResult::Forwarded(_) | RouteResult::Stored));
    // bob is found nowhere: after its bounce retries, whichever DC held the
    // stanza (dc2, or dc1 if its cache had expired) hands it to the host's
    // local routing (offline storage), as MongooseIM does. Nothing vanishes
    // and nothing is reported undeliverable.
    let unrouted = |d: &Dc| {
        d.inbox
            .delivered
            .lock()
            .iter()
            .filter(|x| x.unrouted.is_some())
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(
        wait_for(WAIT, || unrouted(&dc1).len() + unrouted(&dc2).len() == 1),
        "delivered {} {}, undeliverable {} {}, bounce {} {}",
        dc1.inbox.delivered_count(),
        dc2.inbox.delivered_count(),
        dc1.inbox.undeliverable_count(),
        dc2.inbox.undeliverable_count(),
        dc1.rt.bounce_queue_size(),
        dc2.rt.bounce_queue_size()
    );
    let d = unrouted(&dc1)
        .into_iter()
        .chain(unrouted(&dc2))
        .next()
        .unwrap();
    assert_eq!(&d.envelope.payload[..], b"after logout");
    assert_eq!(d.unrouted, Some(Reason::RetriesExhausted));
    assert_eq!(d.from_host, None);
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
    assert_eq!(dc2.inbox.undeliverable_count(), 0);
}

#[test]
fn origin_hint_lets_the_receiver_answer_before_replication() {
    let (dc1, dc3) = {
        let store = shared();
        (
            dc::start(dc::config(1), store.clone()),
            dc::start(dc::config(3), store),
        )
    };
    dc1.login("alice@example.com/a");
    dc3.login("carol@example.com/c");
    assert!(matches!(
        dc3.send("carol@example.com/c", "alice@example.com/a", "hello"),
        RouteResult::Forwarded(_)
    ));
    assert!(wait_for(WAIT, || dc1.inbox.delivered_count() == 1));
    // carol's session never reached the store as far as dc1 can tell.
    let del = |k: &str| gd_core::store::Cmd::Del { key: k.to_owned() };
    dc1.rt
        .block_on(
            dc1.rt
                .store()
                .backend()
                .exec(&[del("carol@example.com/c"), del("carol@example.com")]),
        )
        .unwrap();
    let r = dc1.send("alice@example.com/a", "carol@example.com/c", "reply");
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(3).as_str())));
    assert!(wait_for(WAIT, || dc3
        .inbox
        .bodies_to("carol@example.com/c")
        == vec!["reply"]));
}

#[test]
fn hundred_messages_in_order_on_a_multi_connection_pool_also_when_bounced() {
    let store = shared();
    let mut c1 = dc::config(1);
    c1.connections.connections_per_endpoint = 4;
    let dc1 = dc::start(c1, store.clone());
    let dc2 = dc::start(dc::config(2), store);
    dc1.login("alice@example.com/a");
    dc1.know(&dc2);
    // The first 30 find no route and are held by bounce ...
    for i in 0..30 {
        assert_eq!(
            dc1.send("alice@example.com/a", "bob@example.com/b", &i.to_string()),
            RouteResult::Stored
        );
    }
    // ... until bob logs in at dc2; the rest are routed at once.
    dc2.login("bob@example.com/b");
    for i in 30..100 {
        let r = dc1.send("alice@example.com/a", "bob@example.com/b", &i.to_string());
        assert!(
            matches!(r, RouteResult::Forwarded(_) | RouteResult::Stored),
            "{r:?}"
        );
    }
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 100));
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(dc2.inbox.bodies_to("bob@example.com/b"), want);
}

#[test]
fn ten_senders_thousand_stanzas_each_keep_per_sender_order() {
    let store = shared();
    let mut c1 = dc::config(1);
    c1.connections.connections_per_endpoint = 4;
    let dc1 = dc::start(c1, store.clone());
    let dc2 = dc::start(dc::config(2), store);
    dc2.login("bob@example.com/b");
    let senders: Vec<String> = (0..10).map(|s| format!("s{s}@example.com/r")).collect();
    for s in &senders {
        dc1.login(s);
    }
    for i in 0..1000 {
        for s in &senders {
            let r = dc1.send(s, "bob@example.com/b", &format!("{s} {i}"));
            assert!(matches!(r, RouteResult::Forwarded(_)), "{r:?}");
        }
    }
    assert!(wait_for(Duration::from_secs(30), || dc2
        .inbox
        .delivered_count()
        == 10_000));
    let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
    for body in dc2.inbox.all_bodies() {
        let (s, i) = body.rsplit_once(' ').unwrap();
        seen.entry(s.to_owned())
            .or_default()
            .push(i.parse().unwrap());
    }
    for s in &senders {
        let got = &seen[s];
        assert_eq!(got.len(), 1000);
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{s} out of order");
    }
    // Four connections towards dc2 were really used.
    assert!(dc1.counter(&names::outgoing_established(&host(2))) >= 2);
}

/// Sends `n` stanzas from alice at dc1 to bob and returns their bodies.
fn stream(dc1: &Dc, n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let b = format!("{tag}{i}");
            let r = dc1.send("alice@example.com/a", "bob@example.com/b", &b);
            assert!(!matches!(r, RouteResult::Undeliverable(_)), "{b}: {r:?}");
            b
        })
        .collect()
}

fn delivered_everywhere(dcs: &[&Dc]) -> Vec<String> {
    dcs.iter()
        .flat_map(|d| d.inbox.bodies_to("bob@example.com/b"))
        .collect()
}

#[test]
fn reconnection_to_another_dc_loses_nothing_and_duplicates_nothing() {
    let store = shared();
    let dc1 = dc::start(dc::config(1), store.clone());
    let dc2 = dc::start(dc::config(2), store.clone());
    let dc3 = dc::start(dc::config(3), store);
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc1.know(&dc2);
    dc1.know(&dc3);
    dc2.know(&dc3);
    let mut sent = stream(&dc1, 50, "g");
    // Graceful: bob leaves dc2, then logs in at dc3 while messages flow.
    dc2.logout("bob@example.com/b");
    sent.extend(stream(&dc1, 50, "h"));
    dc3.login("bob@example.com/b");
    sent.extend(stream(&dc1, 50, "i"));
    // Ungraceful: bob appears at dc2 again before dc3 notices he left.
    dc2.login("bob@example.com/b");
    sent.extend(stream(&dc1, 50, "j"));
    dc3.logout("bob@example.com/b");
    sent.extend(stream(&dc1, 50, "k"));
    assert!(
        wait_for(WAIT, || delivered_everywhere(&[&dc1, &dc2, &dc3]).len()
            >= sent.len()),
        "delivered {} of {}",
        delivered_everywhere(&[&dc1, &dc2, &dc3]).len(),
        sent.len()
    );
    let got = delivered_everywhere(&[&dc1, &dc2, &dc3]);
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), got.len(), "a stanza was delivered twice");
    assert_eq!(unique, sent.iter().collect::<HashSet<_>>());
    for d in [&dc1, &dc2, &dc3] {
        assert_eq!(d.inbox.undeliverable_count(), 0);
    }
}

#[test]
fn ttl_stops_a_stanza_bouncing_between_dcs_with_stale_mappings() {
    let (dc1, dc2) = two_dcs();
    dc1.know(&dc2);
    dc2.know(&dc1);
    // Stale caches point at each other; the store knows nothing.
    dc1.rt
        .mapping()
        .insert_session("bob@example.com/b", &host(2));
    dc2.rt
        .mapping()
        .insert_session("bob@example.com/b", &host(1));
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", "ping-pong");
    assert!(matches!(r, RouteResult::Forwarded(_)));
    // message_ttl = 4: dc1→dc2→dc1→dc2→dc1, where TTL 0 stops it.
    assert!(wait_for(WAIT, || dc1.inbox.delivered_count()
        + dc2.inbox.delivered_count()
        == 1));
    let stopped = dc1.counter(names::STOP_TTL_ZERO) + dc2.counter(names::STOP_TTL_ZERO);
    assert_eq!(stopped, 1);
    let d = dc1.inbox.delivered.lock().first().cloned().unwrap();
    assert_eq!(d.envelope.meta.ttl, 0);
    assert_eq!(dc1.counter(&names::outgoing_messages(&host(2))), 2);
    assert_eq!(dc2.counter(&names::outgoing_messages(&host(1))), 2);
}

/// The zero values MongooseIM's validators allow (docs/CONFIG.md): the
/// hosts are read once at start, one connection per endpoint is opened,
/// nothing is cached, and routing works as usual.
#[test]
fn zero_values_route_as_usual_without_caching() {
    let store = shared();
    let dc2 = dc::start(dc::config(2), store.clone());
    let mut c1 = dc::config(1);
    c1.hosts_refresh_interval = 0;
    c1.connections.connections_per_endpoint = 0;
    c1.cache.jid_lifetime_seconds = 0;
    c1.cache.domain_lifetime_seconds = 0;
    c1.cache.max_jids = 0;
    c1.bounce.resend_after_ms = 0;
    c1.bounce.max_retries = 0;
    let dc1 = dc::start(c1, store);
    // Learned at start, by the one and only hosts refresh.
    assert!(wait_for(WAIT, || !dc1
        .rt
        .outgoing()
        .endpoints_of(&host(2))
        .is_empty()));
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");

    for n in 1..=3 {
        let r = dc1.send("alice@example.com/a", "bob@example.com/b", "zero");
        assert_eq!(r, RouteResult::Forwarded(Arc::from(host(2).as_str())));
        assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == n));
        // Every lookup asked the store: nothing was cached.
        assert_eq!(dc1.counter(names::MAPPING_CACHE_MISSES), n as u64);
    }
}

fn envelope(dc: &Dc, from: &str, to: &str, body: &str) -> gd_core::routing::Envelope {
    dc.rt.envelope(
        dc::jid(from),
        dc::jid(to),
        PayloadKind::Message,
        Bytes::from(body.to_owned()),
    )
}

/// Issue 11: a stanza bounce holds for one pair (a user logged in nowhere)
/// must not send every other pair to the slow path.
#[test]
fn a_pair_held_in_bounce_leaves_other_pairs_on_the_inline_path() {
    let (dc1, dc2) = two_dcs();
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc1.know(&dc2);
    // Warm the cache: the first lookup of bob may need the store.
    dc1.send("alice@example.com/a", "bob@example.com/b", "warm");
    assert_eq!(
        dc1.send("alice@example.com/a", "nobody@example.com/x", "held"),
        RouteResult::Stored
    );
    assert_eq!(dc1.rt.bounce_queue_size(), 1);
    let inline = names::PREFIX.to_owned() + "routed_inline";
    let before = dc1.counter(&inline);
    for i in 0..100 {
        let r = dc1.rt.try_route(envelope(
            &dc1,
            "alice@example.com/a",
            "bob@example.com/b",
            &i.to_string(),
        ));
        assert_eq!(
            r.ok(),
            Some(RouteResult::Forwarded(Arc::from(host(2).as_str()))),
            "stanza {i} left the inline path"
        );
    }
    assert_eq!(dc1.counter(&inline) - before, 100);
    assert_eq!(dc1.rt.bounce_queue_size(), 1, "the held pair is still held");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 101));
}

/// A held pair takes new stanzas inline, behind the held ones, also while
/// a flush is sending them: per-pair order is kept across the flush.
#[test]
fn a_pair_keeps_its_order_while_bounce_flushes_it() {
    let (dc1, dc2) = two_dcs();
    dc1.login("alice@example.com/a");
    dc1.know(&dc2);
    let mut want = Vec::new();
    for i in 0..50 {
        let body = format!("held {i}");
        let r = dc1.send("alice@example.com/a", "bob@example.com/b", &body);
        assert_eq!(r, RouteResult::Stored);
        want.push(body);
    }
    dc2.login("bob@example.com/b");
    // Every stanza from now on is answered inline: appended behind the
    // held ones (the first kicks a flush), or forwarded once the pair is
    // empty; none may overtake a held one.
    for i in 0..500 {
        let body = format!("new {i}");
        let r = dc1.rt.try_route(envelope(
            &dc1,
            "alice@example.com/a",
            "bob@example.com/b",
            &body,
        ));
        assert!(
            matches!(r, Ok(RouteResult::Stored) | Ok(RouteResult::Forwarded(_))),
            "{r:?}"
        );
        want.push(body);
    }
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == want.len()));
    assert_eq!(dc2.inbox.bodies_to("bob@example.com/b"), want);
    assert_eq!(dc1.rt.bounce_queue_size(), 0);
}

/// Issue 11: a receiver clamps the TTL it reads from the wire to its own
/// `message_ttl` (4 here): a stanza arriving with TTL 255 between two
/// stale caches is forwarded at most 4 more times, not 255.
#[test]
fn a_wire_ttl_above_message_ttl_is_clamped_by_the_receiver() {
    use std::io::Write;

    use bytes::BytesMut;
    use gd_core::transport::frame::{self, Frame, Handshake, PROTOCOL_VERSION};

    let (dc1, dc2) = two_dcs();
    dc1.know(&dc2);
    dc2.know(&dc1);
    dc1.rt
        .mapping()
        .insert_session("bob@example.com/b", &host(2));
    dc2.rt
        .mapping()
        .insert_session("bob@example.com/b", &host(1));
    let mut s = std::net::TcpStream::connect(dc2.rt.listen_addrs()[0]).unwrap();
    let mut out = BytesMut::new();
    // A peer speaking for dc1 (a known DC: unknown names are refused).
    let hello = Frame::Handshake(Handshake {
        version: PROTOCOL_VERSION,
        local_host: host(1),
        node: "poisoner@node".into(),
        conn_id: 42,
        resume_token: 0,
    });
    frame::encode(&hello, &mut out, 1 << 20).unwrap();
    let stanza = Frame::Stanza(frame::Stanza {
        seq: 1,
        sent_at_us: 0,
        ttl: 255,
        message_id: 7,
        origin: host(1),
        target: None,
        prior: None,
        sender_key: "alice@example.com/a".into(),
        from: "alice@example.com/a".into(),
        to: "bob@example.com/b".into(),
        kind: PayloadKind::Message,
        payload: Bytes::from_static(b"poisoned"),
    });
    frame::encode(&stanza, &mut out, 1 << 20).unwrap();
    s.write_all(&out).unwrap();
    assert!(wait_for(WAIT, || dc1.inbox.delivered_count()
        + dc2.inbox.delivered_count()
        == 1));
    let forwards = dc1.counter(&names::outgoing_messages(&host(2)))
        + dc2.counter(&names::outgoing_messages(&host(1)));
    assert!(forwards <= 4, "forwarded {forwards} times");
    assert_eq!(
        dc1.counter(names::STOP_TTL_ZERO) + dc2.counter(names::STOP_TTL_ZERO),
        1
    );
}

/// A DC known without endpoints (dc1 read them before dc2's node published
/// any) is read again when a stanza needs it, not only after
/// `endpoint_refresh_interval_when_empty` (an hour here): the stanza
/// bounce holds meanwhile reaches bob at dc2 on a retry instead of running
/// out of retries into dc1's local routing.
#[test]
fn a_dc_found_without_endpoints_is_read_again_when_a_stanza_needs_it() {
    use gd_core::store::Cmd;
    let store = shared();
    let mut c1 = dc::config(1);
    c1.connections.endpoint_refresh_interval = 3600;
    c1.connections.endpoint_refresh_interval_when_empty = 3600;
    c1.bounce.max_retries = 20;
    let dc1 = dc::start(c1, store.clone());
    // dc2 as its first heartbeat leaves it on a cluster: in `hosts`, with
    // bob's session key, but no node and no endpoints yet.
    let early = [
        Cmd::SAdd {
            key: "hosts".to_owned(),
            members: vec![host(2)],
        },
        Cmd::SetEx {
            key: "bob@example.com/b".to_owned(),
            value: host(2),
            ttl_secs: 60,
        },
    ];
    dc1.rt.block_on(store.exec(&early)).unwrap();
    // Answered only after dc1's first read of dc2's endpoints (empty).
    assert_eq!(
        dc1.send("alice@example.com/a", "bob@example.com/b", "early"),
        RouteResult::Stored
    );
    assert!(dc1.rt.outgoing().endpoints_of(&host(2)).is_empty());

    let dc2 = dc::start(dc::config(2), store);
    dc2.login("bob@example.com/b");
    assert!(
        wait_for(WAIT, || dc2.inbox.bodies_to("bob@example.com/b")
            == ["early"]),
        "dc2 got {:?}; dc1 routed locally {:?}",
        dc2.inbox.all_bodies(),
        dc1.inbox.all_bodies()
    );
    assert!(dc1.inbox.all_bodies().is_empty());
    assert!(!dc1.rt.outgoing().endpoints_of(&host(2)).is_empty());
}
