//! Protocol version 2's per-stanza refusal (docs/PROTOCOL.md, *Nack*): a
//! stanza the receiver cannot take (an address its JID parser refuses, a
//! frame above its `max_frame_size`) is refused alone, the connection goes
//! on, and the sender reports it undeliverable (`rejected`) exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gd_core::metrics::names;
use gd_core::routing::{Reason, RouteResult};
use gd_core::store::embedded::EmbeddedBackend;
use gd_core::store::{Backend, Cmd};
use gd_core::transport::frame::{
    self, Ack, Frame, Handshake, HandshakeAck, Nack, NackReason, PayloadKind, Rejected, Stanza,
};
use support::dc::{self, host, Dc};
use support::wait_for;

const WAIT: Duration = Duration::from_secs(10);
const MAX: usize = 1 << 20;

fn shared() -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::new())
}

/// A raw connection to `d` speaking for a DC "dc9" with protocol `version`;
/// returns it with the server's answer.
fn connect_as_dc9(d: &Dc, version: u16) -> (TcpStream, BytesMut, HandshakeAck) {
    let add = [Cmd::SAdd {
        key: "hosts".into(),
        members: vec![host(9)],
    }];
    d.rt.block_on(d.rt.store().backend().exec(&add)).unwrap();
    let mut s = TcpStream::connect(d.rt.listen_addrs()[0]).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = BytesMut::new();
    let hello = Frame::Handshake(Handshake {
        version,
        local_host: host(9),
        node: "dc9@node".into(),
        conn_id: 42,
        resume_token: 0,
    });
    frame::encode(&hello, &mut out, MAX).unwrap();
    s.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    match read_frame(&mut s, &mut buf) {
        Some(Frame::HandshakeAck(a)) => (s, buf, a),
        other => panic!("expected a handshake answer, got {other:?}"),
    }
}

/// The next frame from `s`; `None` once it is closed.
fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Option<Frame> {
    loop {
        if let Some(f) = frame::decode(buf, MAX).unwrap() {
            return Some(f);
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn stanza(seq: u64, to: &str, body: &[u8]) -> Stanza {
    Stanza {
        seq,
        sent_at_us: 0,
        ttl: 3,
        message_id: u128::from(seq),
        origin: host(9),
        target: None,
        prior: None,
        sender_key: "alice@example.com/a".into(),
        from: "alice@example.com/a".into(),
        to: to.into(),
        kind: PayloadKind::Message,
        payload: Bytes::copy_from_slice(body),
    }
}

fn write_stanza(s: &mut TcpStream, st: &Stanza) {
    let mut out = BytesMut::new();
    frame::encode(&Frame::Stanza(st.clone()), &mut out, usize::MAX).unwrap();
    s.write_all(&out).unwrap();
}

/// Reads frames until the Ack of `seq`, returning the Nacks on the way.
fn nacks_until_ack(s: &mut TcpStream, buf: &mut BytesMut, seq: u64) -> Vec<Nack> {
    let mut nacks = Vec::new();
    loop {
        match read_frame(s, buf) {
            Some(Frame::Nack(n)) => nacks.push(n),
            Some(Frame::Ack(Ack { seq: s })) if s >= seq => return nacks,
            Some(Frame::Ack(_)) => {}
            other => panic!("expected an ack or a nack, got {other:?}"),
        }
    }
}

#[test]
fn an_address_the_parser_refuses_gets_a_nack_and_the_connection_goes_on() {
    let d = dc::start(dc::config(1), shared());
    d.login("bob@example.com/b");
    let (mut s, mut buf, ack) = connect_as_dc9(&d, 2);
    assert_eq!(ack.version, 2);
    write_stanza(&mut s, &stanza(1, "bob@example.com/b", b"one"));
    write_stanza(&mut s, &stanza(2, "@example.com", b"bad"));
    write_stanza(&mut s, &stanza(3, "bob@example.com/b", b"three"));
    let nacks = nacks_until_ack(&mut s, &mut buf, 3);
    assert_eq!(nacks.len(), 1, "{nacks:?}");
    assert_eq!((nacks[0].seq, nacks[0].reason), (2, NackReason::BadAddress));
    assert!(nacks[0].detail.contains("bad to"), "{}", nacks[0].detail);
    assert!(wait_for(WAIT, || d.inbox.delivered_count() == 2));
    assert_eq!(d.inbox.bodies_to("bob@example.com/b"), ["one", "three"]);
    assert_eq!(d.counter(&names::incoming_rejected(&host(9))), 1);
    assert_eq!(d.counter(&names::incoming_errored(&host(9))), 0);
}

#[test]
fn a_version_1_connection_is_still_closed_on_an_address_the_parser_refuses() {
    let d = dc::start(dc::config(1), shared());
    d.login("bob@example.com/b");
    let (mut s, _, ack) = connect_as_dc9(&d, 1);
    assert_eq!((ack.version, ack.resume_token), (1, 0));
    write_stanza(&mut s, &stanza(1, "@example.com", b"bad"));
    assert!(support::closed_within(&mut s, WAIT));
    assert!(wait_for(WAIT, || d
        .counter(&names::incoming_errored(&host(9)))
        == 1));
    assert_eq!(d.counter(&names::incoming_rejected(&host(9))), 0);
}

/// The body of a stanza above `max_frame_size` is dropped as it arrives:
/// it is never buffered (no `max_incoming_buffer` reservation), the
/// stream stays in sync and the next stanza is taken.
#[test]
fn a_stanza_above_max_frame_size_is_skipped_as_it_streams_in_and_refused() {
    let mut c = dc::config(1);
    c.connections.max_frame_size = 4096;
    c.connections.limits.max_incoming_buffer = 4096;
    let d = dc::start(c, shared());
    d.login("bob@example.com/b");
    let (mut s, mut buf, _) = connect_as_dc9(&d, 2);
    write_stanza(&mut s, &stanza(1, "bob@example.com/b", b"one"));
    let mut big = BytesMut::new();
    let huge = stanza(2, "bob@example.com/b", &vec![b'x'; 1 << 20]);
    frame::encode(&Frame::Stanza(huge), &mut big, usize::MAX).unwrap();
    for piece in big.chunks(7000) {
        s.write_all(piece).unwrap();
    }
    write_stanza(&mut s, &stanza(3, "bob@example.com/b", b"three"));
    let nacks = nacks_until_ack(&mut s, &mut buf, 3);
    assert_eq!(nacks.len(), 1, "{nacks:?}");
    assert_eq!((nacks[0].seq, nacks[0].reason), (2, NackReason::TooLarge));
    assert!(wait_for(WAIT, || d.inbox.delivered_count() == 2));
    assert_eq!(d.inbox.bodies_to("bob@example.com/b"), ["one", "three"]);
    assert_eq!(d.counter(names::INCOMING_BUFFER_FULL), 0);
    assert_eq!(d.counter(&names::incoming_errored(&host(9))), 0);
}

/// Two real DCs whose `max_frame_size` differ: what the receiver refuses
/// comes back to the sender's host as undeliverable (`rejected`), once,
/// and does not go to bounce (sending it again cannot help).
#[test]
fn a_stanza_the_receiver_refuses_is_reported_rejected_once() {
    let store = shared();
    let dc1 = dc::start(dc::config(1), store.clone());
    let mut c2 = dc::config(2);
    c2.connections.max_frame_size = 4096;
    let dc2 = dc::start(c2, store);
    dc2.login("bob@example.com/b");
    let big = "x".repeat(8192);
    let r = dc1.send("alice@example.com/a", "bob@example.com/b", &big);
    assert_eq!(r, RouteResult::Forwarded(Arc::from(host(2).as_str())));
    dc1.send("alice@example.com/a", "bob@example.com/b", "small");
    assert!(wait_for(WAIT, || dc1.inbox.undeliverable_count() == 1));
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 1));
    assert_eq!(dc2.inbox.bodies_to("bob@example.com/b"), ["small"]);
    {
        let reported = dc1.inbox.undeliverable.lock();
        assert_eq!(reported[0].1, Reason::Rejected);
        assert_eq!(reported[0].0.payload.len(), 8192);
    }
    assert_eq!(dc1.counter(&names::outgoing_rejected(&host(2))), 1);
    assert_eq!(dc2.counter(&names::incoming_rejected(&host(1))), 1);
    assert!(wait_for(WAIT, || dc1.rt.outgoing().in_flight() == 0));
    assert_eq!(dc1.rt.bounce_queue_size(), 0);
    // Still once, after more traffic on the same connection.
    dc1.send("alice@example.com/a", "bob@example.com/b", "again");
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 2));
    assert_eq!(dc1.inbox.undeliverable_count(), 1);
    assert_eq!(dc1.counter(&names::outgoing_established(&host(2))), 1);
}

/// A receiver that took a stanza, refused it and lost the connection before
/// its Nack left: the answer to the resumed session repeats the refusal,
/// and the sender reports the stanza instead of counting it as taken.
#[test]
fn a_nack_lost_with_its_connection_comes_back_in_the_resumed_answer() {
    let prt = tokio::runtime::Runtime::new().unwrap();
    let listener = prt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let resumed_with = Arc::new(parking_lot::Mutex::new(None));
    prt.spawn(refusing_dc9(listener, resumed_with.clone()));
    let mut c1 = dc::config(1);
    c1.global_distrib_addr.insert(
        host(9),
        vec![gd_core::config::Endpoint {
            host: "127.0.0.1".into(),
            port,
        }],
    );
    let dc1 = dc::start(c1, shared());
    dc1.rt
        .mapping()
        .insert_session("bob@example.com/b", &host(9));
    dc1.send("alice@example.com/a", "bob@example.com/b", "refused");
    assert!(wait_for(WAIT, || dc1.inbox.undeliverable_count() == 1));
    assert_eq!(dc1.inbox.undeliverable.lock()[0].1, Reason::Rejected);
    assert_eq!(
        *resumed_with.lock(),
        Some(5),
        "the token of the first answer"
    );
    assert!(wait_for(WAIT, || dc1.rt.outgoing().in_flight() == 0));
    assert_eq!(dc1.counter(&names::outgoing_rejected(&host(9))), 1);
}

/// A "dc9" whose first connection answers the handshake with token 5,
/// reads one stanza and closes; the next ones answer a resumption of seq 1
/// listing it as refused, record the token presented, and stay open.
async fn refusing_dc9(
    listener: tokio::net::TcpListener,
    resumed_with: Arc<parking_lot::Mutex<Option<u128>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut first = true;
    let mut held = Vec::new();
    while let Ok((mut s, _)) = listener.accept().await {
        let mut buf = BytesMut::new();
        let hello = loop {
            if let Ok(Some(Frame::Handshake(h))) = frame::decode(&mut buf, MAX) {
                break h;
            }
            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return;
            }
        };
        let answer = HandshakeAck {
            version: 2,
            local_host: host(9),
            node: "fake@dc9".into(),
            resume_seq: (!first).then_some(1),
            resume_token: 5,
            rejected: if first {
                Vec::new()
            } else {
                vec![Rejected {
                    seq: 1,
                    reason: NackReason::BadAddress,
                }]
            },
        };
        let mut out = BytesMut::new();
        frame::encode(&Frame::HandshakeAck(answer), &mut out, MAX).unwrap();
        s.write_all(&out).await.unwrap();
        if first {
            first = false;
            loop {
                if let Ok(Some(Frame::Stanza(_))) = frame::decode(&mut buf, MAX) {
                    break;
                }
                if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                    break;
                }
            }
            // Closed without the Nack.
        } else {
            *resumed_with.lock() = Some(hello.resume_token);
            held.push(s);
        }
    }
}
