//! What remote peers can make a node hold is bounded (SPEC 10; issue 11,
//! items 5 and 6), and a graceful stop of a receiver duplicates nothing.
//! Every test talks to a running datacenter over real loopback sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gd_core::config::{Config, Endpoint};
use gd_core::metrics::names;
use gd_core::store::embedded::EmbeddedBackend;
use gd_core::store::{Backend, Cmd};
use gd_core::transport::frame::{self, Frame, Handshake, PayloadKind, PROTOCOL_VERSION};
use support::dc::{self, host, Dc};
use support::{closed_within, free_port, wait_for};

const WAIT: Duration = Duration::from_secs(10);

fn shared() -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::new())
}

/// Adds `names` to the store's `hosts` set, as DCs that joined do.
fn add_hosts(d: &Dc, names: &[String]) {
    let add = [Cmd::SAdd {
        key: "hosts".into(),
        members: names.to_vec(),
    }];
    d.rt.block_on(d.rt.store().backend().exec(&add)).unwrap();
}

fn handshake(name: &str, conn_id: u64) -> BytesMut {
    let mut out = BytesMut::new();
    let hello = Frame::Handshake(Handshake {
        version: PROTOCOL_VERSION,
        local_host: name.to_owned(),
        node: "node@evil".into(),
        conn_id,
        resume_token: 0,
    });
    frame::encode(&hello, &mut out, 1 << 20).unwrap();
    out
}

fn stanza(out: &mut BytesMut, seq: u64, origin: &str, target: Option<&str>, to: &str) {
    let s = Frame::Stanza(frame::Stanza {
        seq,
        sent_at_us: 0,
        ttl: 3,
        message_id: u128::from(seq),
        origin: origin.to_owned(),
        target: target.map(str::to_owned),
        prior: None,
        sender_key: "mallory@example.com/m".into(),
        from: "mallory@example.com/m".into(),
        to: to.to_owned(),
        kind: PayloadKind::Message,
        payload: Bytes::from(format!("m{seq}")),
    });
    frame::encode(&s, out, 1 << 20).unwrap();
}

fn series(d: &Dc) -> usize {
    d.rt.metrics().snapshot().0.len()
}

/// 2000 handshakes with invented names, empty and NUL-containing ones
/// among them: every one refused and counted, no metric series, no
/// remote-host entry. Before: +10 000 metric keys.
#[test]
fn handshakes_from_unknown_or_invalid_names_are_refused_and_create_nothing() {
    let d = dc::start(dc::config(1), shared());
    let before = series(&d);
    let addr = d.rt.listen_addrs()[0];
    for i in 0..2000u64 {
        let name = match i % 4 {
            0 => String::new(),
            1 => format!("evil{i}\0.example.com"),
            2 => format!("{}.example.com", "x".repeat(64)),
            _ => format!("evil{i}.example.com"),
        };
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&handshake(&name, i)).unwrap();
        assert!(closed_within(&mut s, WAIT), "handshake {i} not refused");
    }
    assert!(wait_for(WAIT, || d.counter(names::INCOMING_UNKNOWN_HOST) == 2000));
    assert!(wait_for(WAIT, || d.rt.listen_addrs().len() == 1
        && d.counter(&names::incoming_errored("unknown")) == 2000));
    let after = d.rt.metrics().snapshot();
    assert_eq!(
        after.0.len(),
        before,
        "new series: {:?}",
        after
            .0
            .keys()
            .filter(|k| k.contains("evil"))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(d.rt.outgoing().hosts().is_empty());
}

/// A known DC whose frames carry 2000 invented `target`s and origins: the
/// stanzas are routed by their `to` (delivered), the names are ignored
/// and counted, nothing is created for them. Before: +12 000 metric keys
/// and a remote-host entry with an endpoint refresher per name.
#[test]
fn unknown_targets_and_origins_are_ignored_counted_and_create_nothing() {
    let d = dc::start(dc::config(1), shared());
    d.login("alice@example.com/a");
    add_hosts(&d, &[host(9)]);
    let mut s = TcpStream::connect(d.rt.listen_addrs()[0]).unwrap();
    s.write_all(&handshake(&host(9), 1)).unwrap();
    let mut first = BytesMut::new();
    stanza(&mut first, 1, &host(9), None, "alice@example.com/a");
    s.write_all(&first).unwrap();
    assert!(wait_for(WAIT, || d.inbox.delivered_count() == 1));
    let before = series(&d);
    let mut out = BytesMut::new();
    for seq in 2..=2001u64 {
        let origin = format!("o{seq}.evil.example.com");
        let target = format!("t{seq}.evil.example.com");
        stanza(&mut out, seq, &origin, Some(&target), "alice@example.com/a");
    }
    s.write_all(&out).unwrap();
    assert!(
        wait_for(WAIT, || d.inbox.delivered_count() == 2001),
        "delivered {}",
        d.inbox.delivered_count()
    );
    assert_eq!(d.counter(names::INCOMING_UNKNOWN_HOST), 4000);
    assert_eq!(series(&d), before);
    // Only the known DC has a remote-host entry (the hosts refresher's).
    let hosts = d.rt.outgoing().hosts();
    assert!(hosts.iter().all(|h| **h == host(9)), "{hosts:?}");
    assert_eq!(d.inbox.undeliverable_count(), 0);
}

/// Per-host series exist for at most `max_metric_hosts` hosts; beyond,
/// attempts are counted in `metrics_host_overflow`.
#[test]
fn per_host_series_are_capped() {
    let m = gd_core::metrics::Metrics::with_host_limit(3);
    for i in 0..100 {
        m.counter(&names::incoming_messages(&format!("h{i}"))).inc();
        m.histogram(&names::incoming_transfer_time(&format!("h{i}")))
            .record(1);
    }
    let snap = m.snapshot();
    let hosts = snap
        .0
        .keys()
        .filter(|k| k.contains("incoming.messages.h"))
        .count();
    assert_eq!(hosts, 3);
    assert_eq!(snap.counter(names::METRICS_HOST_OVERFLOW), Some(194));
    // Known hosts keep all their series.
    m.counter(&names::incoming_closed("h0")).inc();
    assert_eq!(m.snapshot().counter(&names::incoming_closed("h0")), Some(1));
}

fn limited(n: u32, f: impl FnOnce(&mut Config)) -> Config {
    let mut c = dc::config(n);
    f(&mut c);
    c
}

/// 40 connections each announcing a 4 MiB frame and sending part of it:
/// only what `max_incoming_buffer` allows is buffered, the rest is closed
/// at once and counted, and a partial frame that stops arriving is closed
/// after `idle_timeout`. Before: RSS 36 → 202 MB, all open after 30 s.
#[test]
fn partial_frames_are_bounded_by_the_shared_buffer_and_the_idle_deadline() {
    let d = dc::start(
        limited(1, |c| {
            c.connections.limits.max_incoming_buffer = 8 * 1024 * 1024;
            c.connections.limits.idle_timeout = 2;
        }),
        shared(),
    );
    add_hosts(&d, &[host(9)]);
    let addr = d.rt.listen_addrs()[0];
    let declared: u32 = 4 * 1024 * 1024 - 5;
    let mut conns = Vec::new();
    for i in 0..40u64 {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut out = handshake(&host(9), 100 + i);
        out.extend_from_slice(&[0x03]);
        out.extend_from_slice(&declared.to_be_bytes());
        out.extend_from_slice(&vec![0u8; 1024 * 1024]);
        let _ = s.write_all(&out);
        conns.push(s);
    }
    // Two 4 MiB frames fit in 8 MiB: the other 38 are refused.
    assert!(
        wait_for(WAIT, || d.counter(names::INCOMING_BUFFER_FULL) >= 38),
        "buffer_full {}",
        d.counter(names::INCOMING_BUFFER_FULL)
    );
    for s in &mut conns {
        assert!(closed_within(s, WAIT), "a partial frame was kept");
    }
    assert!(d.counter(names::INCOMING_TIMED_OUT) >= 1);
    // A handshake announcing a large frame is refused on its header.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&[0x01, 0, 0x40, 0, 0]).unwrap();
    assert!(closed_within(&mut s, WAIT));
}

/// A handshaken connection that never carries a stanza is closed after
/// `idle_timeout`, one that never finishes its handshake after
/// `handshake_timeout`; a link that carried stanzas stays up while idle.
#[test]
fn idle_connections_are_closed_but_idle_links_that_carried_stanzas_stay() {
    let store = shared();
    let d1 = dc::start(
        limited(1, |c| {
            c.connections.limits.idle_timeout = 1;
            c.connections.limits.handshake_timeout = 1;
        }),
        store.clone(),
    );
    let d2 = dc::start(dc::config(2), store);
    d1.login("alice@example.com/a");
    let addr = d1.rt.listen_addrs()[0];
    let mut silent = TcpStream::connect(addr).unwrap();
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.write_all(&handshake(&host(2), 7)).unwrap();
    d2.send("bob@example.com/b", "alice@example.com/a", "one");
    assert!(wait_for(WAIT, || d1.inbox.delivered_count() == 1));
    assert!(closed_within(&mut silent, WAIT));
    assert!(closed_within(&mut idle, WAIT));
    assert!(
        wait_for(WAIT, || d1.counter(names::INCOMING_TIMED_OUT) >= 2),
        "timed out {}, unknown {}, refused {}",
        d1.counter(names::INCOMING_TIMED_OUT),
        d1.counter(names::INCOMING_UNKNOWN_HOST),
        d1.counter(names::INCOMING_REFUSED)
    );
    // Three idle timeouts later the real link is the same connection.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d2.counter(&names::outgoing_established(&host(1))), 1);
    d2.send("bob@example.com/b", "alice@example.com/a", "two");
    assert!(wait_for(WAIT, || d1.inbox.delivered_count() == 2));
    assert_eq!(d2.counter(&names::outgoing_established(&host(1))), 1);
}

/// The table is full of hostile connections (some before their handshake,
/// some handshaken in the name of the real DC, none carrying stanzas): the
/// real DC still connects, the oldest hostile ones are evicted. Before:
/// the legit link could not reconnect and its stanzas came back
/// undeliverable.
#[test]
fn the_legit_dc_gets_in_while_hostile_connections_fill_the_table() {
    let store = shared();
    let d1 = dc::start(
        limited(1, |c| {
            c.connections.limits.max_incoming_connections = 8;
            c.connections.limits.max_incoming_per_host = 4;
        }),
        store.clone(),
    );
    let d2 = dc::start(dc::config(2), store);
    d1.login("alice@example.com/a");
    let addr = d1.rt.listen_addrs()[0];
    let mut hostile = Vec::new();
    for _ in 0..4 {
        hostile.push(TcpStream::connect(addr).unwrap());
    }
    for i in 0..4 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&handshake(&host(2), 1000 + i)).unwrap();
        hostile.push(s);
    }
    assert!(wait_for(WAIT, || d1
        .counter(&names::incoming_first_packet(&host(2)))
        == 4));
    assert_eq!(d1.counter(names::INCOMING_ESTABLISHED), 8);
    for i in 0..50 {
        d2.send("bob@example.com/b", "alice@example.com/a", &format!("m{i}"));
    }
    assert!(
        wait_for(WAIT, || d1.inbox.delivered_count() == 50),
        "delivered {}",
        d1.inbox.delivered_count()
    );
    assert_eq!(d2.inbox.undeliverable_count(), 0);
    assert!(d1.counter(names::INCOMING_REFUSED) >= 2);
    // More hostile connections do not push the working link out.
    for _ in 0..20 {
        hostile.push(TcpStream::connect(addr).unwrap());
    }
    assert!(wait_for(WAIT, || d1.counter(names::INCOMING_ESTABLISHED) >= 29));
    d2.send("bob@example.com/b", "alice@example.com/a", "after");
    assert!(wait_for(WAIT, || d1.inbox.delivered_count() == 51));
    assert_eq!(d2.counter(&names::outgoing_established(&host(1))), 1);
}

/// A receiver stopped right after a 200-stanza burst and started again:
/// every stanza arrives exactly once, over several runs. Before: 400
/// deliveries of 200 stanzas in 5 of 6 runs (the coalesced acknowledgement
/// was never sent on stop, so the sender sent everything again).
#[test]
fn a_receiver_stopped_right_after_a_burst_and_restarted_delivers_each_stanza_once() {
    for run in 0..4 {
        let store = shared();
        let mut c2 = dc::config(2);
        c2.connections.endpoints = vec![Endpoint {
            host: "127.0.0.1".into(),
            port: free_port(),
        }];
        let mut c1 = dc::config(1);
        // Retries outlast the restart.
        c1.bounce.max_retries = 8;
        let d2 = dc::start(c2.clone(), store.clone());
        let d1 = dc::start(c1, store.clone());
        d1.login("alice@example.com/a");
        d2.login("bob@example.com/b");
        d1.send("alice@example.com/a", "bob@example.com/b", "warm-up");
        assert!(wait_for(WAIT, || d2.inbox.delivered_count() == 1));
        for i in 0..200 {
            d1.send("alice@example.com/a", "bob@example.com/b", &format!("s{i}"));
        }
        d2.rt.stop(Duration::from_secs(5));
        let again = dc::start(c2.clone(), store);
        again.login("bob@example.com/b");
        let total = || d2.inbox.delivered_count() + again.inbox.delivered_count();
        assert!(
            wait_for(Duration::from_secs(20), || total() >= 201
                && d1.rt.outgoing().in_flight() == 0),
            "run {run}: {} delivered",
            total()
        );
        // Late duplicates would come with the next acknowledgements.
        std::thread::sleep(Duration::from_millis(200));
        let mut seen: HashMap<String, usize> = HashMap::new();
        for b in d2
            .inbox
            .all_bodies()
            .into_iter()
            .chain(again.inbox.all_bodies())
        {
            *seen.entry(b).or_default() += 1;
        }
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "run {run}: delivered twice: {} stanzas",
            twice.len()
        );
        assert_eq!(seen.len(), 201, "run {run}");
        assert_eq!(d1.inbox.undeliverable_count(), 0, "run {run}");
    }
}
