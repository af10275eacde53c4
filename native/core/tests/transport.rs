//! Transport scenarios (SPEC 11: 8, 9, 10, 15 and the nothing-lost run):
//! runtimes over real loopback TCP and TLS, links cut and restored through
//! a fault-injecting proxy, certificates generated per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gd_core::config::Endpoint;
use gd_core::metrics::names;
use gd_core::routing::{Reason, RouteResult};
use gd_core::store::embedded::EmbeddedBackend;
use gd_core::store::{Backend, Cmd};
use support::certs::TestCa;
use support::dc::{self, host, Dc};
use support::faultproxy::FaultProxy;
use support::{free_port, wait_for};

const WAIT: Duration = Duration::from_secs(15);

fn ep(addr: SocketAddr) -> Endpoint {
    Endpoint {
        host: addr.ip().to_string(),
        port: addr.port(),
    }
}

/// A tokio runtime for the proxies (the DCs have their own).
fn proxy_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn global_distrib_addr_override_is_used() {
    let prt = proxy_rt();
    let store: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let (dc1, dc2, proxy) = dc::linked_through_proxy(store, &prt, dc::config(1));
    assert!(matches!(
        dc1.send("alice@example.com/a", "bob@example.com/b", "via override"),
        RouteResult::Forwarded(_)
    ));
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    assert!(
        proxy.accepted() >= 1,
        "the link did not go through the override"
    );
}

#[test]
fn advertised_endpoints_override_listen_endpoints() {
    let prt = proxy_rt();
    let store: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let port = free_port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let proxy = prt.block_on(FaultProxy::start(listen));
    let mut c2 = dc::config(2);
    c2.connections.endpoints = vec![ep(listen)];
    c2.connections.advertised_endpoints = Some(vec![ep(proxy.addr())]);
    let dc2 = dc::start(c2, store.clone());
    let dc1 = dc::start(dc::config(1), store);
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc1.know(&dc2);
    assert_eq!(
        dc1.rt.outgoing().endpoints_of(&host(2)),
        vec![ep(proxy.addr())]
    );
    dc1.send("alice@example.com/a", "bob@example.com/b", "via advertised");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    assert!(proxy.accepted() >= 1);
}

/// Acknowledgements are coalesced (up to 256 stanzas or a few ms): a lone
/// stanza must still be acknowledged by the delay, or the sender would
/// count it in flight (against its queue bound) until more traffic came.
#[test]
fn a_lone_stanza_is_acknowledged_without_more_traffic() {
    let store: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let dc1 = dc::start(dc::config(1), store.clone());
    let dc2 = dc::start(dc::config(2), store);
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc1.know(&dc2);
    for i in 0..3 {
        let r = dc1.send("alice@example.com/a", "bob@example.com/b", &format!("m{i}"));
        assert!(matches!(r, RouteResult::Forwarded(_)), "{r:?}");
        assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == i + 1));
        assert!(
            wait_for(Duration::from_secs(2), || dc1.rt.outgoing().in_flight()
                == 0),
            "stanza {i} still unacknowledged: {} in flight",
            dc1.rt.outgoing().in_flight()
        );
    }
}

#[test]
fn dc_down_gives_undeliverable_after_retries_and_resumes_when_back() {
    let prt = proxy_rt();
    let store: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let (dc1, dc2, proxy) = dc::linked_through_proxy(store, &prt, dc::config(1));
    dc1.send("alice@example.com/a", "bob@example.com/b", "before");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    // Its acknowledgement (coalesced for a few ms) must be back before the
    // cut, or "before" is given back unacknowledged and counted here too.
    assert!(wait_for(WAIT, || dc1.rt.outgoing().in_flight() == 0));

    proxy.cut();
    for i in 0..5 {
        let r = dc1.send(
            "alice@example.com/a",
            "bob@example.com/b",
            &format!("down{i}"),
        );
        assert!(!matches!(r, RouteResult::Local), "{r:?}");
    }
    assert!(
        wait_for(WAIT, || dc1.inbox.undeliverable_count() == 5),
        "undeliverable: {}",
        dc1.inbox.undeliverable_count()
    );
    assert!(dc1
        .inbox
        .undeliverable
        .lock()
        .iter()
        .all(|(_, r)| *r == Reason::RetriesExhausted));
    assert!(dc1.counter(&names::outgoing_errored(&host(2))) >= 1);

    proxy.restore();
    let established = dc1.counter(&names::outgoing_established(&host(2)));
    assert!(wait_for(WAIT, || {
        dc1.send("alice@example.com/a", "bob@example.com/b", "probe");
        dc1.counter(&names::outgoing_established(&host(2))) > established
    }));
    dc1.send("alice@example.com/a", "bob@example.com/b", "after");
    assert!(wait_for(WAIT, || dc2
        .inbox
        .bodies_to("bob@example.com/b")
        .contains(&"after".to_owned())));
    let got = dc2.inbox.bodies_to("bob@example.com/b");
    assert!(
        !got.iter().any(|b| b.starts_with("down")),
        "a reported stanza was delivered too"
    );
}

#[test]
fn ten_thousand_stanzas_across_a_cut_and_restored_link_add_up() {
    let prt = proxy_rt();
    let store: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let (dc1, dc2, proxy) = dc::linked_through_proxy(store, &prt, dc::config(1));
    let mut sent = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        if i == 3000 {
            proxy.cut();
        }
        if i == 6000 {
            proxy.restore();
        }
        let b = format!("m{i}");
        dc1.send("alice@example.com/a", "bob@example.com/b", &b);
        sent.push(b);
    }
    let total = || dc2.inbox.delivered_count() + dc1.inbox.undeliverable_count();
    assert!(
        wait_for(Duration::from_secs(30), || total() >= 10_000),
        "accounted for {}",
        total()
    );
    let delivered = dc2.inbox.bodies_to("bob@example.com/b");
    let reported: Vec<String> = dc1
        .inbox
        .undeliverable
        .lock()
        .iter()
        .map(|(e, _)| String::from_utf8_lossy(&e.payload).into_owned())
        .collect();
    let d: HashSet<&String> = delivered.iter().collect();
    let r: HashSet<&String> = reported.iter().collect();
    if d.len() != delivered.len() {
        let all = dc2.inbox.delivered.lock();
        let mut seen = std::collections::HashMap::new();
        for x in all.iter() {
            let b = String::from_utf8_lossy(&x.envelope.payload).into_owned();
            if let Some(prev) =
                seen.insert(b.clone(), (x.envelope.meta.clone(), x.from_host.clone()))
            {
                eprintln!(
                    "dup {b}: {:?} / {:?} {:?}",
                    prev, x.envelope.meta, x.from_host
                );
            }
        }
    }
    assert_eq!(d.len(), delivered.len(), "delivered twice");
    assert_eq!(r.len(), reported.len(), "reported twice");
    assert!(d.is_disjoint(&r), "both delivered and reported");
    assert_eq!(d.len() + r.len(), 10_000);
    assert!(d.len() >= 6000, "only {} delivered", d.len());
}

#[test]
fn rebalancing_enables_new_endpoints_disables_and_collects_vanished_ones() {
    let store: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let (first, second) = (free_port(), free_port());
    let local = |port| Endpoint {
        host: "127.0.0.1".into(),
        port,
    };
    let mut c2 = dc::config(2);
    // Two listeners; node2 itself advertises only the first.
    c2.connections.endpoints = vec![local(first), local(second)];
    c2.connections.advertised_endpoints = Some(vec![local(first)]);
    let dc2 = dc::start(c2, store.clone());
    let exec = |cmds: Vec<Cmd>| dc2.rt.block_on(store.exec(&cmds)).unwrap();

    let dc1 = dc::start(dc::config(1), store.clone());
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc1.know(&dc2);
    assert_eq!(dc1.rt.outgoing().endpoints_of(&host(2)).len(), 1);
    let mut n = 0;
    let mut send = |dc1: &Dc| {
        n += 1;
        dc1.send("alice@example.com/a", "bob@example.com/b", &format!("r{n}"));
        n
    };
    send(&dc1);

    // A new node of dc2 advertises the second listener.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let xkey = format!("{}#extra@localhost#{{endpoints}}", host(2));
    exec(vec![
        Cmd::HSet {
            key: format!("{}#{{nodes}}", host(2)),
            field: "extra@localhost".into(),
            value: now.to_string(),
        },
        Cmd::SAdd {
            key: xkey.clone(),
            members: vec![format!("127.0.0.1#{second}")],
        },
    ]);
    assert!(wait_for(WAIT, || dc1
        .rt
        .outgoing()
        .endpoints_of(&host(2))
        .len()
        == 2));
    send(&dc1);

    // It goes away: its pool is disabled, then garbage-collected.
    exec(vec![Cmd::Del { key: xkey }]);
    assert!(wait_for(WAIT, || dc1
        .rt
        .outgoing()
        .endpoints_of(&host(2))
        .len()
        == 1));
    let sent = send(&dc1);
    assert!(wait_for(WAIT, || dc1
        .rt
        .outgoing()
        .disabled_pools(&host(2))
        == 0));
    let last = send(&dc1).max(sent);
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == last));
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
}

fn tls_dc(n: u32, ca: &TestCa, dir: &std::path::Path, store: Arc<dyn Backend>) -> Dc {
    let d = dir.join(format!("dc{n}"));
    std::fs::create_dir_all(&d).unwrap();
    let mut c = dc::config(n);
    c.connections.tls = Some(ca.write_tls_config(&d, &host(n)));
    dc::start(c, store)
}

#[test]
fn mutual_tls_works_and_a_foreign_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("global_distrib test CA");
    let rogue = TestCa::new("rogue CA");
    let store: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let dc1 = tls_dc(1, &ca, dir.path(), store.clone());
    let dc2 = tls_dc(2, &ca, dir.path(), store.clone());
    let dc3 = tls_dc(3, &rogue, dir.path(), store.clone());
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    dc3.login("mallory@example.com/m");

    dc1.send("alice@example.com/a", "bob@example.com/b", "over tls");
    assert!(wait_for(WAIT, || dc2.inbox.bodies_to("bob@example.com/b")
        == vec!["over tls"]));
    dc2.send("bob@example.com/b", "alice@example.com/a", "back over tls");
    assert!(wait_for(WAIT, || dc1.inbox.delivered_count() == 1));

    dc3.send("mallory@example.com/m", "bob@example.com/b", "forged");
    assert!(wait_for(WAIT, || dc3.inbox.undeliverable_count() == 1));
    let refused = dc2.counter(&names::incoming_errored("unknown"));
    assert!(refused >= 1);

    // A DC without TLS cannot talk to one that requires it either.
    let plain = dc::start(dc::config(4), store.clone());
    plain.login("eve@example.com/e");
    plain.send("eve@example.com/e", "bob@example.com/b", "in clear");
    assert!(wait_for(WAIT, || plain.inbox.undeliverable_count() == 1));
    assert!(dc2.counter(&names::incoming_errored("unknown")) > refused);
    // A DC certified by the right CA, but for another DC's name.
    let d5 = dir.path().join("dc5");
    std::fs::create_dir_all(&d5).unwrap();
    let mut c5 = dc::config(5);
    c5.connections.tls = Some(ca.write_tls_config(&d5, &host(1)));
    let impostor = dc::start(c5, store);
    impostor.login("trudy@example.com/t");
    let before = dc2.counter(&names::incoming_errored("unknown"));
    impostor.send("trudy@example.com/t", "bob@example.com/b", "impersonated");
    assert!(wait_for(WAIT, || impostor.inbox.undeliverable_count() == 1));
    assert!(dc2.counter(&names::incoming_errored("unknown")) > before);

    let got = dc2.inbox.bodies_to("bob@example.com/b");
    for bad in ["forged", "in clear", "impersonated"] {
        assert!(!got.contains(&bad.to_owned()), "{bad} got through");
    }
}

#[test]
fn a_sender_that_keeps_talking_to_a_dead_dc_gets_undeliverable_after_retries() {
    let prt = proxy_rt();
    let store: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let (dc1, dc2, proxy) = dc::linked_through_proxy(store, &prt, dc::config(1));
    dc1.send("alice@example.com/a", "bob@example.com/b", "before");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    proxy.cut();
    // The store still says bob is at dc2 (his keys expire only after
    // expire_after, 120 s): only the bounce retries can end this.
    let mut sent = 0;
    let gave_up = wait_for(WAIT, || {
        sent += 1;
        dc1.send(
            "alice@example.com/a",
            "bob@example.com/b",
            &format!("down{sent}"),
        );
        std::thread::sleep(Duration::from_millis(50));
        dc1.inbox.undeliverable_count() > 0
    });
    assert!(
        gave_up,
        "no undeliverable after {sent} stanzas to a dead DC"
    );
    assert_eq!(dc2.inbox.delivered_count(), 1);
}
