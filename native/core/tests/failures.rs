//! Bad inputs and overload fed to running datacenters: each fails alone,
//! with a clear error or report, and loses nothing (SPEC 6.2, 6.3, 10, 11.3,
//! 11.13).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gd_core::config::{Config, TlsConfig};
use gd_core::jid::Jid;
use gd_core::mapping::Location;
use gd_core::metrics::names;
use gd_core::routing::{Reason, RouteResult};
use gd_core::runtime::{Runtime, StartError};
use gd_core::store::embedded::EmbeddedBackend;
use gd_core::store::{Backend, Cmd};
use gd_core::transport::frame::{self, Frame, Handshake, PayloadKind, PROTOCOL_VERSION};
use support::dc::{self, host, jid, Dc, Inbox};
use support::wait_for;

const WAIT: Duration = Duration::from_secs(10);

fn shared() -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::new())
}

/// Whether the peer closed `s` within the deadline.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    support::closed_within(s, WAIT)
}

#[test]
fn a_foreign_protocol_is_refused_and_counted() {
    let d = dc::start(dc::config(1), shared());
    let mut s = TcpStream::connect(d.rt.listen_addrs()[0]).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_by_peer(&mut s));
    assert!(wait_for(WAIT, || d
        .counter(&names::incoming_errored("unknown"))
        == 1));
    // The node is fine: a real DC still gets through.
    let d2 = dc::start(dc::config(2), d.rt.store().backend().clone());
    d.login("alice@example.com/a");
    d2.send("bob@example.com/b", "alice@example.com/a", "still up");
    assert!(wait_for(WAIT, || d.inbox.delivered_count() == 1));
}

/// A raw connection to `d` that has sent the handshake of a DC "dc9"
/// (plain TCP: any DC of the store's `hosts` set is accepted), ready for
/// hand-made frames.
fn connect_as_dc9(d: &Dc) -> TcpStream {
    let add = [Cmd::SAdd {
        key: "hosts".into(),
        members: vec![host(9)],
    }];
    d.rt.block_on(d.rt.store().backend().exec(&add)).unwrap();
    let mut s = TcpStream::connect(d.rt.listen_addrs()[0]).unwrap();
    let mut out = BytesMut::new();
    let hello = Frame::Handshake(Handshake {
        version: PROTOCOL_VERSION,
        local_host: host(9),
        node: "dc9@node".into(),
        conn_id: 42,
        resume_token: 0,
    });
    frame::encode(&hello, &mut out, 1 << 20).unwrap();
    s.write_all(&out).unwrap();
    s
}

#[test]
fn a_malformed_frame_after_the_handshake_closes_that_connection_and_is_counted() {
    let d = dc::start(dc::config(1), shared());
    let mut s = connect_as_dc9(&d);
    // A stanza frame whose body ends in the middle of its fields.
    s.write_all(&[0x03, 0, 0, 0, 4, 1, 2, 3, 4]).unwrap();
    assert!(closed_by_peer(&mut s));
    assert!(wait_for(WAIT, || d
        .counter(&names::incoming_errored(&host(9)))
        == 1));
    assert_eq!(d.counter(&names::incoming_first_packet(&host(9))), 1);
    assert_eq!(d.inbox.delivered_count(), 0);
}

/// A bad frame arriving in the same read as good stanzas closes the
/// connection, but the stanzas before it are still delivered.
#[test]
fn stanzas_before_a_malformed_frame_in_the_same_read_are_delivered() {
    let d = dc::start(dc::config(1), shared());
    d.login("bob@example.com/b");
    let mut s = connect_as_dc9(&d);
    let mut out = BytesMut::new();
    for seq in 1..=2 {
        let stanza = Frame::Stanza(frame::Stanza {
            seq,
            sent_at_us: 0,
            ttl: 3,
            message_id: u128::from(seq),
            origin: host(9),
            target: None,
            prior: None,
            sender_key: "alice@example.com/a".into(),
            from: "alice@example.com/a".into(),
            to: "bob@example.com/b".into(),
            kind: PayloadKind::Message,
            payload: Bytes::from(format!("good {seq}")),
        });
        frame::encode(&stanza, &mut out, 1 << 20).unwrap();
    }
    out.extend_from_slice(&[0x03, 0, 0, 0, 4, 1, 2, 3, 4]);
    s.write_all(&out).unwrap();
    assert!(closed_by_peer(&mut s));
    assert!(wait_for(WAIT, || d
        .counter(&names::incoming_errored(&host(9)))
        == 1));
    assert!(wait_for(WAIT, || d.inbox.delivered_count() == 2));
    assert_eq!(
        d.inbox.bodies_to("bob@example.com/b"),
        vec!["good 1".to_owned(), "good 2".to_owned()]
    );
}

#[test]
fn an_oversized_frame_is_refused_before_it_is_buffered() {
    let d = dc::start(dc::config(1), shared());
    let mut s = TcpStream::connect(d.rt.listen_addrs()[0]).unwrap();
    // A handshake declaring a 4 GiB body: refused on its header alone.
    s.write_all(&[0x01, 0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(closed_by_peer(&mut s));
    assert!(wait_for(WAIT, || d
        .counter(&names::incoming_errored("unknown"))
        == 1));
}

#[test]
fn a_stanza_larger_than_max_frame_size_is_undeliverable_at_once() {
    let store = shared();
    let mut c1 = dc::config(1);
    c1.connections.max_frame_size = 4096;
    let dc1 = dc::start(c1, store.clone());
    let dc2 = dc::start(dc::config(2), store);
    dc2.login("bob@example.com/b");
    let big = "x".repeat(8192);
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", &big);
    assert_eq!(r, RouteResult::Undeliverable(Reason::TooLarge));
    assert_eq!(dc1.rt.bounce_queue_size(), 0);
    // Smaller stanzas still go.
    assert!(matches!(
        dc1.send("alice@example.com/a", "bob@example.com/b", "small"),
        RouteResult::Forwarded(_)
    ));
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
}

#[test]
fn a_full_outgoing_queue_bounces_and_everything_arrives_once_it_drains() {
    let prt = tokio::runtime::Runtime::new().unwrap();
    let store = shared();
    let mut c1 = dc::config(1);
    c1.connections.outgoing_queue_size = 10;
    c1.bounce.max_retries = 8;
    let (dc1, dc2, proxy) = dc::linked_through_proxy(store, &prt, c1);
    dc1.send("alice@example.com/a", "bob@example.com/b", "warm-up");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));

    proxy.stall(true);
    let results: Vec<RouteResult> = (0..40)
        .map(|i| dc1.send("alice@example.com/a", "bob@example.com/b", &format!("q{i}")))
        .collect();
    let stored = results
        .iter()
        .filter(|r| **r == RouteResult::Stored)
        .count();
    assert!(
        stored >= 30,
        "only {stored} of 40 went to bounce: {results:?}"
    );
    // The first refusal holds the pair; the stanzas after it queue behind
    // it in bounce (order kept) instead of each hitting the full queue.
    assert!(dc1.counter(&names::outgoing_queue_full(&host(2))) >= 1);
    proxy.stall(false);
    assert!(
        wait_for(Duration::from_secs(30), || dc2.inbox.delivered_count()
            + dc1.inbox.undeliverable_count()
            == 41),
        "delivered {} undeliverable {}",
        dc2.inbox.delivered_count(),
        dc1.inbox.undeliverable_count()
    );
    let mut got = dc2.inbox.bodies_to("bob@example.com/b");
    got.sort();
    got.dedup();
    assert_eq!(got.len() + dc1.inbox.undeliverable_count(), 41);
}

#[test]
fn graceful_stop_flushes_or_reports_what_is_in_flight() {
    let prt = tokio::runtime::Runtime::new().unwrap();
    let store = shared();
    let (dc1, dc2, proxy) = dc::linked_through_proxy(store, &prt, dc::config(1));
    dc1.send("alice@example.com/a", "bob@example.com/b", "warm-up");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    proxy.stall(true);
    for i in 0..20 {
        dc1.send("alice@example.com/a", "bob@example.com/b", &format!("s{i}"));
    }
    let report = dc1.rt.stop(Duration::from_millis(300));
    assert_eq!(report.undeliverable, 20);
    assert_eq!(dc1.inbox.undeliverable_count(), 20);
    assert!(dc1
        .inbox
        .undeliverable
        .lock()
        .iter()
        .all(|(_, r)| *r == Reason::Stopped));
    // Stopping twice is harmless.
    assert_eq!(dc1.rt.stop(Duration::from_millis(10)).undeliverable, 0);
}

#[test]
fn subdomains_are_reachable_listed_by_visibility_and_unregistered() {
    let store = shared();
    let dc1 = dc::start(dc::config(1), store.clone());
    let dc2 = dc::start(dc::config(2), store);
    dc2.rt
        .block_on(dc2.rt.register_subhost("muc.example.com", true));
    dc2.rt
        .block_on(dc2.rt.register_subhost("hidden.example.com", false));

    let r = dc1.send("alice@example.com/a", "room@muc.example.com/nick", "join");
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(2).as_str())));
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    let r = dc1.send("alice@example.com/a", "hidden.example.com", "ping");
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(2).as_str())));

    let public = dc1.rt.block_on(dc1.rt.public_domains()).unwrap();
    assert!(public.contains(&"muc.example.com".to_owned()), "{public:?}");
    assert!(
        !public.contains(&"hidden.example.com".to_owned()),
        "{public:?}"
    );

    // A user of dc2's own domain is found through the domain mapping.
    let r = dc1.send("alice@example.com/a", "admin@dc2.example.com", "hi");
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(2).as_str())));

    dc2.rt
        .block_on(dc2.rt.unregister_subhost("muc.example.com"));
    dc1.rt.mapping().remove_domain("muc.example.com");
    let loc = dc1
        .rt
        .block_on(dc1.rt.lookup(&jid("room@muc.example.com")))
        .unwrap();
    assert_eq!(loc, Location::Unknown);
    let public = dc1.rt.block_on(dc1.rt.public_domains()).unwrap();
    assert!(!public.contains(&"muc.example.com".to_owned()));
}

#[test]
fn a_runtime_with_bad_tls_files_does_not_start_and_names_the_option() {
    let mut c = dc::config(1);
    c.connections.tls = Some(TlsConfig {
        certfile: "/nonexistent/dc1.crt".into(),
        keyfile: None,
        cacertfile: Some("/nonexistent/ca.crt".into()),
        ..TlsConfig::default()
    });
    let err = Runtime::start(c, Arc::new(Inbox::default()))
        .err()
        .expect("start must fail");
    assert!(matches!(err, StartError::Tls(_)));
    let msg = err.to_string();
    assert!(
        msg.starts_with("connections.tls.certfile: /nonexistent/dc1.crt"),
        "{msg}"
    );
}

#[test]
fn wrong_config_fails_with_a_clear_error() {
    let err = Config::from_toml_str("global_host = \"example.com\"").unwrap_err();
    assert_eq!(err.to_string(), "local_host: required option missing");
    let err = Config::from_toml_str("global_host = \"example.com\"\nlocal_host = \"EXAMPLE.com\"")
        .unwrap_err();
    assert!(err.to_string().starts_with("local_host: "), "{err}");
    let err = Config::from_json_str(
        r#"{"global_host": "example.com", "local_host": "dc1.example.com",
            "connections": {"endpoints": [{"host": "127.0.0.1", "port": 70000}]}}"#,
    )
    .unwrap_err();
    assert_eq!(err.path(), "connections.endpoints[0].port");
}

#[test]
fn a_listen_port_in_use_fails_start_with_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut c = dc::config(1);
    c.connections.endpoints = vec![gd_core::config::Endpoint {
        host: "127.0.0.1".into(),
        port,
    }];
    let err = Runtime::start(c, Arc::new(Inbox::default()))
        .err()
        .expect("start must fail");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn route_never_panics_on_odd_but_valid_addresses() {
    let d: Dc = dc::start(dc::config(1), shared());
    for (from, to) in [
        ("example.com", "example.com"),
        ("a@example.com", "dc1.example.com"),
        ("x@other.org/r", "y@elsewhere.net"),
        ("a@example.com/r", "a@example.com"),
    ] {
        let env = d.rt.envelope(
            Jid::parse(from).unwrap(),
            Jid::parse(to).unwrap(),
            PayloadKind::Other,
            Bytes::new(),
        );
        let r = d.rt.block_on(d.rt.route(env));
        assert!(
            !matches!(r, RouteResult::Forwarded(_)),
            "{from} -> {to}: {r:?}"
        );
    }
}

/// A stand-in for a DC "dc9" on `listener`: it reads each connection's
/// handshake and answers it with a valid version-2 HandshakeAck (a new
/// session), then closes the connection (`close`) or keeps it open and
/// never reads from it again.
async fn fake_dc9(listener: tokio::net::TcpListener, close: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut held = Vec::new();
    while let Ok((mut s, _)) = listener.accept().await {
        let mut buf = BytesMut::new();
        let hello = loop {
            match frame::decode(&mut buf, 1 << 20) {
                Ok(Some(Frame::Handshake(h))) => break Some(h),
                Ok(Some(_)) | Err(_) => break None,
                Ok(None) => {}
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                break None;
            }
        };
        let Some(hello) = hello else { continue };
        let ack = Frame::HandshakeAck(frame::HandshakeAck {
            version: hello.version.min(PROTOCOL_VERSION),
            local_host: host(9),
            node: "fake@dc9".into(),
            resume_seq: None,
            resume_token: 1,
            rejected: Vec::new(),
        });
        let mut out = BytesMut::new();
        frame::encode(&ack, &mut out, 1 << 20).unwrap();
        let _ = s.write_all(&out).await;
        if !close {
            held.push(s);
        }
    }
}

/// dc1 (configured by `c1`) with "dc9" at the fake peer, and bob known in
/// the store to be at dc9 (so bounce's lookups keep finding him there).
fn dc1_towards_fake_dc9(prt: &tokio::runtime::Runtime, mut c1: Config, close: bool) -> Dc {
    let listener = prt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    prt.spawn(fake_dc9(listener, close));
    c1.global_distrib_addr.insert(
        host(9),
        vec![gd_core::config::Endpoint {
            host: "127.0.0.1".into(),
            port,
        }],
    );
    let dc1 = dc::start(c1, shared());
    let keys = ["bob@example.com/b".to_owned(), "bob@example.com".to_owned()];
    dc1.rt
        .block_on(
            dc1.rt
                .store()
                .open_sessions(&keys, &host(9), Duration::from_secs(600)),
        )
        .unwrap();
    dc1
}

/// A peer that accepts the connection and the handshake, then closes it,
/// is reconnected to with backoff: a handful of connections over 2 s, not
/// one per round trip (before, backoff was reset by every handshake).
#[test]
fn a_peer_that_handshakes_and_closes_is_reconnected_to_with_backoff() {
    let prt = tokio::runtime::Runtime::new().unwrap();
    let dc1 = dc1_towards_fake_dc9(&prt, dc::config(1), true);
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", "hello");
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(9).as_str())));
    let established = || dc1.counter(&names::outgoing_established(&host(9)));
    assert!(wait_for(WAIT, || established() >= 1));
    std::thread::sleep(Duration::from_secs(2));
    // Backoff from 50 ms doubling to 2 s: 6 or 7 connections in 2 s.
    let n = established();
    assert!((2..15).contains(&n), "{n} connections in 2 s");
}

/// A peer that accepts connections, answers the handshake and never reads:
/// written stanzas see no acknowledgement, each connection fails after
/// `ack_timeout` (and reconnections do not reset the give-up clock), the
/// stanzas go to bounce, and bounce ends them on its schedule. Each is
/// reported exactly once, within a bound computed from the configuration,
/// and nothing stays queued (before, they stayed until the runtime stopped).
#[test]
fn stanzas_to_a_peer_that_never_reads_end_within_a_bound() {
    let prt = tokio::runtime::Runtime::new().unwrap();
    let mut c1 = dc::config(1);
    c1.connections.ack_timeout = 1;
    c1.bounce.resend_after_ms = 100;
    c1.bounce.max_retries = 2;
    let ack_timeout = Duration::from_secs(1);
    // give_up_after: resend_after_ms × 2^max_retries, at least 1 s.
    let give_up = Duration::from_secs(1);
    // Per round through bounce: a retry (at most 100 ms × 2^2), a
    // reconnection (backoff at most 2 s + 50 ms of jitter) and a
    // connection that times out (ack_timeout, checked every quarter).
    let round = Duration::from_millis(400 + 2050) + ack_timeout + ack_timeout / 4;
    let bound =
        ack_timeout + give_up + round * (c1.bounce.max_retries + 1) + Duration::from_secs(5);
    let dc1 = dc1_towards_fake_dc9(&prt, c1, false);
    // Large enough that the socket buffers fill and writes block too.
    let body = "x".repeat(256 * 1024);
    let n = 12;
    let sent = std::time::Instant::now();
    for i in 0..n {
        let r = dc1.send(
            "alice@example.com/a",
            "bob@example.com/b",
            &format!("{i}{body}"),
        );
        assert!(
            matches!(r, RouteResult::Forwarded(_) | RouteResult::Stored),
            "{r:?}"
        );
    }
    assert!(
        wait_for(bound, || dc1.inbox.undeliverable_count() >= n),
        "{} of {n} reported within {bound:?}",
        dc1.inbox.undeliverable_count()
    );
    eprintln!(
        "{n} stanzas to a peer that never reads: all reported after {:?} (bound {bound:?})",
        sent.elapsed()
    );
    assert!(wait_for(WAIT, || dc1.rt.outgoing().in_flight() == 0
        && dc1.rt.bounce_queue_size() == 0));
    let reported = dc1.inbox.undeliverable.lock();
    let mut ids: Vec<u128> = reported.iter().map(|(e, _)| e.meta.message_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "each reported once");
    assert!(reported
        .iter()
        .all(|(_, r)| matches!(r, Reason::RetriesExhausted | Reason::Unreachable)));
    assert_eq!(dc1.inbox.delivered_count(), 0);
    assert!(dc1.counter(&names::outgoing_timed_out(&host(9))) >= 1);
}

/// While the queue towards a DC is full, bounce keeps the stanzas it holds
/// for their retries: a stanza arriving for a held pair does not make it
/// flush into the full queue again (before, each arrival did, and counted a
/// refusal), and everything arrives, in order, once the queue drains.
#[test]
fn bounce_does_not_flush_into_a_full_queue() {
    let prt = tokio::runtime::Runtime::new().unwrap();
    let store = shared();
    let mut c1 = dc::config(1);
    c1.connections.outgoing_queue_size = 5;
    // No retry during the test: only arrivals could flush the pair.
    c1.bounce.resend_after_ms = 3000;
    let (dc1, dc2, proxy) = dc::linked_through_proxy(store, &prt, c1);
    dc1.send("alice@example.com/a", "bob@example.com/b", "warm-up");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    proxy.stall(true);
    let full = names::outgoing_queue_full(&host(2));
    let mut sent = Vec::new();
    for i in 0..25 {
        let body = format!("m{i:02}");
        let r = dc1.send("alice@example.com/a", "bob@example.com/b", &body);
        sent.push(body);
        if i < 5 {
            assert!(matches!(r, RouteResult::Forwarded(_)), "{i}: {r:?}");
        } else {
            assert_eq!(r, RouteResult::Stored, "{i}");
        }
        std::thread::sleep(Duration::from_millis(10));
        assert!(dc1.rt.outgoing().in_flight() <= 5);
    }
    // The first refusal held the pair; the 19 stanzas behind it were
    // appended without touching the queue.
    assert_eq!(dc1.counter(&full), 1);
    assert_eq!(dc1.rt.bounce_queue_size(), 20);
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
    proxy.stall(false);
    assert!(wait_for(Duration::from_secs(30), || dc2
        .inbox
        .delivered_count()
        == 26));
    let got = dc2.inbox.bodies_to("bob@example.com/b");
    assert_eq!(got[1..], sent[..]);
    assert_eq!(dc1.inbox.undeliverable_count(), 0);
}
