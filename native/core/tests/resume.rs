//! Protocol version 2's resume tokens (docs/PROTOCOL.md, *Delivery
//! guarantees*): a sequence session is continued only by the sender that
//! owns it. A third party that learned the session id and continues its
//! numbering gets a session of its own and cannot make the receiver skip
//! the owner's stanzas; the owner, presenting its token, resumes without
//! loss or duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use gd_core::store::embedded::EmbeddedBackend;
use gd_core::store::Backend;
use gd_core::transport::frame::{
    self, Ack, Frame, Handshake, HandshakeAck, PayloadKind, Stanza, PROTOCOL_VERSION,
};
use support::dc::{self, host, Dc};
use support::wait_for;

const WAIT: Duration = Duration::from_secs(10);
const MAX: usize = 1 << 20;

fn shared() -> Arc<dyn Backend> {
    Arc::new(EmbeddedBackend::new())
}

/// The handshake and its answer of connection `i` seen through the proxy.
fn seen(first_bytes: &[(Vec<u8>, Vec<u8>)], i: usize) -> (Handshake, HandshakeAck) {
    let (up, down) = &first_bytes[i];
    let hello = match frame::decode(&mut BytesMut::from(&up[..]), MAX).unwrap() {
        Some(Frame::Handshake(h)) => h,
        other => panic!("{other:?}"),
    };
    let ack = match frame::decode(&mut BytesMut::from(&down[..]), MAX).unwrap() {
        Some(Frame::HandshakeAck(a)) => a,
        other => panic!("{other:?}"),
    };
    (hello, ack)
}

/// A third party speaking for dc1 straight to dc2 (no TLS: any peer can
/// claim a known DC's name), naming session `conn_id` with `token` in
/// protocol `version`, that continues the numbering from `from_seq` with
/// stanzas for bob; returns dc2's answer once they are acknowledged.
fn intrude(dc2: &Dc, version: u16, conn_id: u64, token: u128, from_seq: u64) -> HandshakeAck {
    let mut s = TcpStream::connect(dc2.rt.listen_addrs()[0]).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = BytesMut::new();
    let hello = Frame::Handshake(Handshake {
        version,
        local_host: host(1),
        node: "intruder@node".into(),
        conn_id,
        resume_token: token,
    });
    frame::encode(&hello, &mut out, MAX).unwrap();
    let last = from_seq + 40;
    for seq in from_seq..=last {
        let st = Stanza {
            seq,
            sent_at_us: 0,
            ttl: 3,
            message_id: u128::from(seq) << 64,
            origin: host(1),
            target: None,
            prior: None,
            sender_key: "mallory@example.com/m".into(),
            from: "mallory@example.com/m".into(),
            to: "bob@example.com/b".into(),
            kind: PayloadKind::Message,
            payload: Bytes::from(format!("evil {seq}")),
        };
        frame::encode(&Frame::Stanza(st), &mut out, MAX).unwrap();
    }
    s.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    let mut answer = None;
    loop {
        match frame::decode(&mut buf, MAX).unwrap() {
            Some(Frame::HandshakeAck(a)) => answer = Some(a),
            Some(Frame::Ack(Ack { seq })) if seq == last => return answer.unwrap(),
            Some(_) => {}
            None => {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "dc2 closed the intruder's connection");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

fn legit_bodies(d: &Dc) -> Vec<String> {
    d.inbox
        .bodies_to("bob@example.com/b")
        .into_iter()
        .filter(|b| b.starts_with('a'))
        .collect()
}

fn send_range(d: &Dc, range: std::ops::RangeInclusive<u32>) {
    for i in range {
        d.send(
            "alice@example.com/a",
            "bob@example.com/b",
            &format!("a{i:02}"),
        );
    }
}

fn expected(n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("a{i:02}")).collect()
}

#[test]
fn a_third_party_naming_the_senders_session_cannot_make_the_receiver_skip_its_stanzas() {
    let prt = tokio::runtime::Runtime::new().unwrap();
    let (dc1, dc2, proxy) = dc::linked_through_proxy(shared(), &prt, dc::config(1));
    send_range(&dc1, 1..=5);
    assert!(wait_for(WAIT, || legit_bodies(&dc2).len() == 5));
    let (hello, ack) = seen(&proxy.first_bytes(), 0);
    assert_eq!((hello.version, ack.version), (PROTOCOL_VERSION, 2));
    assert_eq!(
        hello.resume_token, 0,
        "a session's first connection has none"
    );
    let token = ack.resume_token;
    assert_ne!(token, 0);

    // Each intruder continues the owner's numbering, as if it were the
    // owner resuming: without the token it gets a new session instead.
    for (version, presented) in [(2, 0), (2, token ^ 1), (1, 0)] {
        let answer = intrude(&dc2, version, hello.conn_id, presented, 6);
        assert_eq!(answer.resume_seq, None, "v{version}: not resumed");
        assert_ne!(answer.resume_token, token);
    }
    assert!(wait_for(WAIT, || dc2.inbox.delivered_count() == 5 + 3 * 41));

    // The owner's next stanzas (seq 6 to 10 of its session) are taken.
    send_range(&dc1, 6..=10);
    assert!(
        wait_for(WAIT, || legit_bodies(&dc2).len() == 10),
        "{:?}",
        legit_bodies(&dc2)
    );
    assert_eq!(legit_bodies(&dc2), expected(10));

    // Cut while stanzas are written but not acknowledged: the owner resumes
    // with its token, and the receiver continues the owner's numbering.
    proxy.stall(true);
    send_range(&dc1, 11..=15);
    assert!(wait_for(WAIT, || dc1.rt.outgoing().in_flight() == 5));
    proxy.cut();
    proxy.stall(false);
    proxy.restore();
    assert!(
        wait_for(WAIT, || legit_bodies(&dc2).len() == 15),
        "{:?}",
        legit_bodies(&dc2)
    );
    assert!(wait_for(WAIT, || dc1.rt.outgoing().in_flight() == 0));
    assert_eq!(legit_bodies(&dc2), expected(15), "no loss, no duplicate");
    let first = proxy.first_bytes();
    let (hello2, ack2) = seen(&first, first.len() - 1);
    assert_eq!(hello2.conn_id, hello.conn_id);
    assert_eq!(hello2.resume_token, token);
    assert_eq!(ack2.resume_token, token);
    assert_eq!(ack2.resume_seq, Some(10), "resumed where the owner was");
}

/// A version-1 sender (which has no token) still resumes its session by
/// its id alone: the version-1 behaviour is kept.
#[test]
fn a_version_1_sender_resumes_by_session_id() {
    let d = dc::start(dc::config(2), shared());
    d.login("bob@example.com/b");
    // dc1 is a DC of the store's `hosts` set, though it runs no runtime.
    let add = [gd_core::store::Cmd::SAdd {
        key: "hosts".into(),
        members: vec![host(1)],
    }];
    d.rt.block_on(d.rt.store().backend().exec(&add)).unwrap();
    let first = intrude(&d, 1, 77, 0, 1);
    assert_eq!((first.version, first.resume_seq), (1, None));
    let again = intrude(&d, 1, 77, 0, 42);
    assert_eq!(again.resume_seq, Some(41));
    assert_eq!(again.resume_token, 0);
    assert!(wait_for(WAIT, || d.inbox.delivered_count() == 82));
}

/// A raw version-2 connection speaking for dc1 that names session
/// `conn_id` with `token` and writes `stanzas`; returns dc2's answer once
/// the last is acknowledged.
fn speak(dc2: &Dc, conn_id: u64, token: u128, stanzas: &[Stanza]) -> HandshakeAck {
    let mut s = TcpStream::connect(dc2.rt.listen_addrs()[0]).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = BytesMut::new();
    let hello = Frame::Handshake(Handshake {
        version: 2,
        local_host: host(1),
        node: "n@dc1".into(),
        conn_id,
        resume_token: token,
    });
    frame::encode(&hello, &mut out, MAX).unwrap();
    for st in stanzas {
        frame::encode(&Frame::Stanza(st.clone()), &mut out, MAX).unwrap();
    }
    s.write_all(&out).unwrap();
    let last = stanzas.last().map_or(0, |st| st.seq);
    let mut buf = BytesMut::new();
    let mut answer = None;
    loop {
        match frame::decode(&mut buf, MAX).unwrap() {
            Some(Frame::HandshakeAck(a)) if last == 0 => return a,
            Some(Frame::HandshakeAck(a)) => answer = Some(a),
            Some(Frame::Ack(Ack { seq })) if seq == last => return answer.unwrap(),
            Some(_) => {}
            None => {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).unwrap();
                assert!(n > 0, "dc2 closed the connection");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

fn numbered(seq: u64, body: &str, prior: Option<frame::Prior>) -> Stanza {
    Stanza {
        seq,
        sent_at_us: 0,
        ttl: 3,
        message_id: u128::from(seq) | (u128::from(body.len() as u64) << 64),
        origin: host(1),
        target: None,
        prior,
        sender_key: "alice@example.com/a".into(),
        from: "alice@example.com/a".into(),
        to: "bob@example.com/b".into(),
        kind: PayloadKind::Message,
        payload: Bytes::from(body.to_owned()),
    }
}

/// The duplicate check of a stanza sent again after its session was given
/// up (`prior`) looks at the owner's session, found by id and token: a
/// third party that numbered far ahead under the same id cannot make the
/// owner's stanza look taken, and a stanza the owner's session did take is
/// still dropped.
#[test]
fn a_third_party_cannot_make_an_owners_stanza_look_taken() {
    let d = dc::start(dc::config(2), shared());
    d.login("bob@example.com/b");
    let add = [gd_core::store::Cmd::SAdd {
        key: "hosts".into(),
        members: vec![host(1)],
    }];
    d.rt.block_on(d.rt.store().backend().exec(&add)).unwrap();
    let owner: Vec<Stanza> = (1..=3)
        .map(|i| numbered(i, &format!("a{i:02}"), None))
        .collect();
    let token = speak(&d, 9, 0, &owner).resume_token;
    let far: Vec<Stanza> = (1..=500).map(|i| numbered(i, "evil", None)).collect();
    speak(&d, 9, 0, &far);
    // The owner's slot gave up stanzas 2 (which dc2 took) and 4 (which it
    // never saw) and sends them again in a new session.
    let prior = |seq| {
        Some(frame::Prior {
            session: 9,
            seq,
            token,
        })
    };
    let again = [numbered(1, "a02", prior(2)), numbered(2, "a04", prior(4))];
    speak(&d, 10, 0, &again);
    assert!(wait_for(WAIT, || legit_bodies(&d).len() == 4));
    assert_eq!(legit_bodies(&d), ["a01", "a02", "a03", "a04"]);
}
