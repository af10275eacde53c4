//! The wire codec (docs/PROTOCOL.md) against arbitrary frames, arbitrary
//! chunkings of a stream, arbitrary garbage, and one crafted input per error:
//! a malformed stream must end in an error, never in a panic, an allocation
//! sized by the peer, or a silently different frame.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{BufMut, Bytes, BytesMut};
use gd_core::transport::frame::{
    decode, decode_with, encode, encode_stanza, encoded_len, negotiate, peek_oversized_stanza,
    Decoded, Frame, FrameError, Handshake, HandshakeAck, Nack, NackReason, Oversized, PayloadKind,
    Prior, Rejected, Stanza, HEADER_LEN, MAX_REJECTED_IN_ACK, MAX_STRING_LEN, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
};
use proptest::prelude::*;

const MAX: usize = 1 << 20;

fn any_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "\\PC{0,24}",
        1 => "[a-z0-9@./]{0,3071}",
    ]
}

fn any_kind() -> impl Strategy<Value = PayloadKind> {
    prop_oneof![
        Just(PayloadKind::Other),
        Just(PayloadKind::Message),
        Just(PayloadKind::Presence),
        Just(PayloadKind::PresenceUnavailable),
        Just(PayloadKind::Iq),
    ]
}

fn any_stanza() -> impl Strategy<Value = Stanza> {
    (
        (any::<u64>(), any::<u8>(), any::<u128>()),
        (
            any_string(),
            proptest::option::of(any_string()),
            any_string(),
        ),
        (any_string(), any_string(), any_kind()),
        proptest::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(
            |((sent_at_us, ttl, message_id), (origin, target, sender_key), (from, to, kind), p)| {
                Stanza {
                    seq: sent_at_us ^ 0x5a5a,
                    sent_at_us,
                    ttl,
                    message_id,
                    origin,
                    target,
                    prior: (message_id % 3 == 0).then_some(Prior {
                        session: sent_at_us,
                        seq: u64::from(ttl),
                        // Both forms: version 1's and version 2's.
                        token: if message_id % 2 == 0 { 0 } else { message_id },
                    }),
                    sender_key,
                    from,
                    to,
                    kind,
                    payload: Bytes::from(p),
                }
            },
        )
}

fn any_nack_reason() -> impl Strategy<Value = NackReason> {
    prop_oneof![Just(NackReason::BadAddress), Just(NackReason::TooLarge)]
}

fn any_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        1 => (
            MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
            any_string(),
            any_string(),
            any::<u64>(),
            any::<u128>(),
        )
            .prop_map(|(version, local_host, node, conn_id, token)| {
                Frame::Handshake(Handshake {
                    version,
                    local_host,
                    node,
                    conn_id,
                    // Version 1 has no token on the wire.
                    resume_token: if version >= 2 { token } else { 0 },
                })
            }),
        1 => (
            MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION,
            any_string(),
            any_string(),
            any::<u128>(),
            proptest::collection::vec((any::<u64>(), any_nack_reason()), 0..=MAX_REJECTED_IN_ACK),
        )
            .prop_map(|(version, local_host, node, token, rejected)| {
                let v2 = version >= 2;
                Frame::HandshakeAck(HandshakeAck {
                    version,
                    resume_seq: (local_host.len() % 2 == 0).then_some(local_host.len() as u64 * 977),
                    local_host,
                    node,
                    resume_token: if v2 { token } else { 0 },
                    rejected: if v2 {
                        rejected.into_iter().map(|(seq, reason)| Rejected { seq, reason }).collect()
                    } else {
                        Vec::new()
                    },
                })
            }),
        3 => any_stanza().prop_map(Frame::Stanza),
        1 => (any::<u64>(), any_nack_reason(), any_string())
            .prop_map(|(seq, reason, detail)| Frame::Nack(Nack { seq, reason, detail })),
    ]
}

fn encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(frame, &mut buf, MAX).unwrap();
    buf
}

fn stanza() -> Stanza {
    Stanza {
        seq: 7,
        sent_at_us: 1_700_000_000_000_000,
        ttl: 4,
        message_id: 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef,
        origin: "dc1.example.com".into(),
        target: None,
        prior: None,
        sender_key: "alice@example.com/phone".into(),
        from: "alice@example.com/phone".into(),
        to: "bob@example.com".into(),
        kind: PayloadKind::Message,
        payload: Bytes::from_static(b"<message/>"),
    }
}

/// The version-1 handshake of PROTOCOL.md's example.
fn handshake() -> Handshake {
    Handshake {
        version: 1,
        local_host: "dc1".into(),
        node: "n1".into(),
        conn_id: 7,
        resume_token: 0,
    }
}

fn ack_v1() -> HandshakeAck {
    HandshakeAck {
        version: 1,
        local_host: "dc2".into(),
        node: "n".into(),
        resume_seq: None,
        resume_token: 0,
        rejected: Vec::new(),
    }
}

/// Decodes `bytes` and checks that the error leaves the buffer untouched.
fn decode_err(bytes: &[u8]) -> FrameError {
    let mut buf = BytesMut::from(bytes);
    let err = decode(&mut buf, MAX).unwrap_err();
    assert_eq!(&buf[..], bytes, "an error must not consume input");
    err
}

/// A stanza frame whose body is `body`, with a consistent length field.
fn raw_frame(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// Body of `stanza()` up to and including the `to` field, without kind.
fn stanza_head() -> Vec<u8> {
    let full = encoded(&Frame::Stanza(stanza()));
    let payload_len = stanza().payload.len();
    full[HEADER_LEN..full.len() - payload_len - 1].to_vec()
}

proptest! {
    #[test]
    fn round_trip(frame in any_frame()) {
        let mut buf = encoded(&frame);
        prop_assert_eq!(buf.len(), encoded_len(&frame));
        let back = decode(&mut buf, MAX).unwrap();
        prop_assert_eq!(back, Some(frame));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn stream_in_arbitrary_chunks_yields_same_frames_in_order(
        frames in proptest::collection::vec(any_frame(), 0..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(f, &mut wire, MAX).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();

        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut start = 0;
        for end in cuts {
            buf.extend_from_slice(&wire[start..end]);
            start = end;
            loop {
                let before = buf.clone();
                match decode(&mut buf, MAX).unwrap() {
                    Some(f) => out.push(f),
                    None => {
                        prop_assert_eq!(&buf, &before, "Ok(None) must not consume input");
                        break;
                    }
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, frames);
    }

    /// The receive path's borrowed decoding sees exactly what `decode`
    /// returns, on the same stream in the same arbitrary chunks, and
    /// fails where it fails.
    #[test]
    fn decode_with_agrees_with_decode(
        frames in proptest::collection::vec(any_frame(), 0..8),
        garbage in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            encode(f, &mut wire, MAX).unwrap();
        }
        wire.extend_from_slice(&garbage);
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
        let mut start = 0;
        for end in cuts {
            a.extend_from_slice(&wire[start..end]);
            b.extend_from_slice(&wire[start..end]);
            start = end;
            loop {
                let plain = decode(&mut a, MAX);
                let with = decode_with(&mut b, MAX, |s| Ok::<_, FrameError>(Stanza {
                    seq: s.seq,
                    sent_at_us: s.sent_at_us,
                    ttl: s.ttl,
                    message_id: s.message_id,
                    origin: s.origin.to_owned(),
                    target: s.target.map(str::to_owned),
                    prior: s.prior,
                    sender_key: s.sender_key.to_owned(),
                    from: s.from.to_owned(),
                    to: s.to.to_owned(),
                    kind: s.kind,
                    payload: Bytes::new(),
                }));
                let with = with.map(|d| d.map(|d| match d {
                    Decoded::Stanza(st, payload) => Frame::Stanza(Stanza { payload, ..st }),
                    Decoded::Other(f) => *f,
                }));
                prop_assert_eq!(&a, &b, "both consume the same bytes");
                match (plain, with) {
                    (Ok(Some(x)), Ok(Some(y))) => prop_assert_eq!(x, y),
                    (Ok(None), Ok(None)) => break,
                    (Err(_), Err(_)) => return Ok(()),
                    (x, y) => prop_assert!(false, "decode {:?} but decode_with {:?}", x, y),
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        known_type in proptest::option::of(1u8..=5),
        chunk in 1usize..64,
        max in 0usize..4096,
    ) {
        // Random first bytes are almost always an unknown type; also start
        // with a known one so the body parsers see garbage too.
        if let (Some(ty), Some(first)) = (known_type, bytes.first_mut()) {
            *first = ty;
        }
        let mut buf = BytesMut::new();
        'feed: for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                let before = buf.clone();
                match decode(&mut buf, max) {
                    Ok(Some(f)) => prop_assert!(encoded_len(&f) <= before.len()),
                    Ok(None) => {
                        prop_assert_eq!(&buf, &before);
                        break;
                    }
                    Err(_) => {
                        prop_assert_eq!(&buf, &before);
                        break 'feed;
                    }
                }
            }
        }
    }

    #[test]
    fn mutated_frames_never_panic(frame in any_frame(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = encoded(&frame).to_vec();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = decode(&mut buf, MAX) {}
    }

    #[test]
    fn declared_length_above_max_is_rejected_before_buffering(
        max in 0usize..100_000,
        excess in 1u64..=u64::from(u32::MAX),
    ) {
        let body = (max as u64).saturating_sub(HEADER_LEN as u64) + excess;
        prop_assume!(body <= u64::from(u32::MAX));
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u8(0x03);
        buf.put_u32(body as u32);
        let cap = buf.capacity();
        let err = decode(&mut buf, max).unwrap_err();
        prop_assert_eq!(err, FrameError::TooLarge { declared: HEADER_LEN + body as usize, max });
        prop_assert_eq!(buf.capacity(), cap);
        prop_assert_eq!(buf.len(), HEADER_LEN);
    }
}

#[test]
fn handshake_bytes_match_protocol_md() {
    let bytes = encoded(&Frame::Handshake(handshake()));
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x01,                   // type: handshake
        0, 0, 0, 22,            // body length
        b'G', b'D', b'v',       // magic
        0, 1,                   // version
        0, 3, b'd', b'c', b'1', // local_host
        0, 2, b'n', b'1',       // node
        0, 0, 0, 0, 0, 0, 0, 7, // conn_id
    ];
    assert_eq!(&bytes[..], expected);
}

#[test]
fn stanza_bytes_match_protocol_md() {
    let s = Stanza {
        seq: 7,
        sent_at_us: 1,
        ttl: 4,
        message_id: 2,
        origin: "a".into(),
        target: Some("b".into()),
        prior: None,
        sender_key: "c".into(),
        from: "d".into(),
        to: "e".into(),
        kind: PayloadKind::Iq,
        payload: Bytes::from_static(b"<x/>"),
    };
    let mut bytes = BytesMut::new();
    encode_stanza(&s, &mut bytes, MAX).unwrap();
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x03,                                   // type: stanza
        0, 0, 0, 55,                            // body length
        0, 0, 0, 0, 0, 0, 0, 7,                 // seq
        0, 0, 0, 0, 0, 0, 0, 1,                 // sent_at_us
        4,                                      // ttl
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 2,                 // message_id
        0, 1, b'a',                             // origin
        1, 0, 1, b'b',                          // target: present, "b"
        0,                                      // prior: absent
        0, 1, b'c',                             // sender_key
        0, 1, b'd',                             // from
        0, 1, b'e',                             // to
        4,                                      // kind: iq
        b'<', b'x', b'/', b'>',                 // payload
    ];
    assert_eq!(&bytes[..], expected);
    assert_eq!(encoded(&Frame::Stanza(s)), bytes);
}

#[test]
fn payload_is_a_view_of_the_read_buffer() {
    let mut buf = encoded(&Frame::Stanza(stanza()));
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Frame::Stanza(s)) = decode(&mut buf, MAX).unwrap() else {
        panic!("expected a stanza");
    };
    assert_eq!(&s.payload[..], b"<message/>");
    assert!(range.contains(&(s.payload.as_ptr() as usize)));
}

#[test]
fn empty_payload_and_target_round_trip() {
    let s = Stanza {
        payload: Bytes::new(),
        target: Some("dc2.example.com".into()),
        prior: None,
        ..stanza()
    };
    let mut buf = encoded(&Frame::Stanza(s.clone()));
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(Frame::Stanza(s)));
}

#[test]
fn frame_exactly_at_max_is_accepted() {
    let frame = Frame::Stanza(stanza());
    let len = encoded_len(&frame);
    let mut buf = BytesMut::new();
    encode(&frame, &mut buf, len).unwrap();
    assert_eq!(decode(&mut buf, len).unwrap(), Some(frame.clone()));
    assert_eq!(
        encode(&frame, &mut buf, len - 1),
        Err(FrameError::TooLarge {
            declared: len,
            max: len - 1
        })
    );
}

#[test]
fn oversized_encode_errors_and_leaves_dst_unchanged() {
    let big = Stanza {
        payload: Bytes::from(vec![0u8; 4096]),
        ..stanza()
    };
    let mut dst = BytesMut::new();
    encode(&Frame::Handshake(handshake()), &mut dst, MAX).unwrap();
    let before = dst.clone();
    let err = encode_stanza(&big, &mut dst, 1024).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { max: 1024, declared } if declared > 4096));
    assert!(err.to_string().contains("connections.max_frame_size"));
    assert_eq!(dst, before);
    assert_eq!(
        encode(&Frame::Stanza(big), &mut dst, 1024).unwrap_err(),
        err
    );
    assert_eq!(dst, before);
}

#[test]
fn long_strings_are_refused_on_both_sides() {
    let ok = Stanza {
        to: "x".repeat(MAX_STRING_LEN),
        ..stanza()
    };
    let mut buf = encoded(&Frame::Stanza(ok.clone()));
    assert_eq!(decode(&mut buf, MAX).unwrap(), Some(Frame::Stanza(ok)));

    let long = Stanza {
        to: "x".repeat(MAX_STRING_LEN + 1),
        ..stanza()
    };
    let mut dst = BytesMut::new();
    let err = encode_stanza(&long, &mut dst, MAX).unwrap_err();
    assert_eq!(
        err,
        FrameError::StringTooLong {
            field: "stanza.to",
            len: MAX_STRING_LEN + 1,
            max: MAX_STRING_LEN
        }
    );
    assert!(dst.is_empty());

    let mut body = Vec::new();
    body.extend_from_slice(&[0; 8 + 8 + 1 + 16]);
    body.extend_from_slice(&((MAX_STRING_LEN + 1) as u16).to_be_bytes());
    body.extend_from_slice(&vec![b'x'; MAX_STRING_LEN + 1]);
    let err = decode_err(&raw_frame(0x03, &body));
    assert_eq!(
        err.to_string(),
        "field `stanza.origin` is 3072 bytes long, more than the 3071 bytes allowed"
    );
}

#[test]
fn tls_client_hello_is_rejected_on_its_first_byte() {
    let err = decode_err(&[0x16]);
    assert_eq!(err, FrameError::UnknownType(0x16));
    let msg = err.to_string();
    assert!(
        msg.contains("0x16") && msg.contains("connections.tls"),
        "{msg}"
    );
}

#[test]
fn http_is_rejected_on_its_first_byte() {
    assert_eq!(
        decode_err(b"GET / HTTP/1.1\r\n"),
        FrameError::UnknownType(b'G')
    );
}

#[test]
fn bad_magic_is_reported_before_the_frame_is_complete() {
    let mut bytes = vec![0x01, 0, 0, 0, 100];
    bytes.extend_from_slice(b"GDx");
    let err = decode_err(&bytes);
    assert_eq!(err, FrameError::BadMagic { found: *b"GDx" });
    assert!(err.to_string().contains("not a global_distrib node"));
    // Even one wrong byte is enough.
    assert_eq!(
        decode_err(&[0x02, 0, 0, 0, 100, b'X']),
        FrameError::BadMagic {
            found: [b'X', 0, 0]
        }
    );
    // A correct prefix just waits for more.
    let mut buf = BytesMut::from(&[0x01, 0, 0, 0, 100, b'G', b'D'][..]);
    assert_eq!(decode(&mut buf, MAX).unwrap(), None);
    assert_eq!(buf.len(), 7);
}

#[test]
fn unsupported_versions() {
    let mut body = b"GDv".to_vec();
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let err = decode_err(&raw_frame(0x01, &body));
    assert_eq!(err, FrameError::UnsupportedVersion(0));
    assert!(err.to_string().contains("speaks versions 1 to 2"));

    // An ack must not claim more than we could have offered.
    let mut body = b"GDv".to_vec();
    body.extend_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    body.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(
        decode_err(&raw_frame(0x02, &body)),
        FrameError::UnsupportedVersion(PROTOCOL_VERSION + 1)
    );

    let mut dst = BytesMut::new();
    let bad_ack = Frame::HandshakeAck(HandshakeAck {
        version: PROTOCOL_VERSION + 1,
        ..ack_v1()
    });
    assert_eq!(
        encode(&bad_ack, &mut dst, MAX),
        Err(FrameError::UnsupportedVersion(PROTOCOL_VERSION + 1))
    );
    assert!(dst.is_empty());
}

#[test]
fn newer_client_handshake_with_extensions_is_accepted_and_negotiated_down() {
    let newer = Handshake {
        version: PROTOCOL_VERSION + 3,
        ..handshake()
    };
    let mut buf = encoded(&Frame::Handshake(newer.clone()));
    // A future version appends fields after conn_id; fix the length up.
    buf.extend_from_slice(b"future");
    let body = (buf.len() - HEADER_LEN) as u32;
    buf[1..HEADER_LEN].copy_from_slice(&body.to_be_bytes());
    assert_eq!(
        decode(&mut buf, MAX).unwrap(),
        Some(Frame::Handshake(newer))
    );
    assert!(buf.is_empty());
    assert_eq!(negotiate(PROTOCOL_VERSION + 3), Ok(PROTOCOL_VERSION));
    assert_eq!(negotiate(PROTOCOL_VERSION), Ok(PROTOCOL_VERSION));
    assert_eq!(negotiate(0), Err(FrameError::UnsupportedVersion(0)));
}

#[test]
fn trailing_bytes_after_a_current_handshake() {
    let mut bytes = encoded(&Frame::Handshake(handshake())).to_vec();
    bytes.extend_from_slice(b"xy");
    bytes[4] += 2;
    let err = decode_err(&bytes);
    assert_eq!(
        err,
        FrameError::Trailing {
            frame: "handshake",
            extra: 2
        }
    );
    assert!(err.to_string().contains("2 unexpected bytes"));

    let mut bytes = encoded(&Frame::HandshakeAck(ack_v1())).to_vec();
    bytes.push(0);
    bytes[4] += 1;
    assert_eq!(
        decode_err(&bytes),
        FrameError::Trailing {
            frame: "handshake_ack",
            extra: 1
        }
    );
}

#[test]
fn truncated_fields_are_named() {
    // The declared length ends inside the string `node`.
    let mut bytes = encoded(&Frame::Handshake(handshake())).to_vec();
    bytes.truncate(HEADER_LEN + 3 + 2 + 5 + 3);
    bytes[4] = (bytes.len() - HEADER_LEN) as u8;
    let err = decode_err(&bytes);
    assert_eq!(
        err,
        FrameError::Truncated {
            field: "handshake.node"
        }
    );
    assert!(err.to_string().contains("`handshake.node`"));

    // A stanza body too short for its fixed fields.
    assert_eq!(
        decode_err(&raw_frame(0x03, &[0; 18])),
        FrameError::Truncated {
            field: "stanza.message_id"
        }
    );
    // An empty stanza body.
    assert_eq!(
        decode_err(&raw_frame(0x03, &[])),
        FrameError::Truncated {
            field: "stanza.seq"
        }
    );
    // No kind byte after `to`.
    assert_eq!(
        decode_err(&raw_frame(0x03, &stanza_head())),
        FrameError::Truncated {
            field: "stanza.kind"
        }
    );
}

#[test]
fn bad_utf8_is_named() {
    let mut body = b"GDv\x00\x01".to_vec();
    body.extend_from_slice(&[0, 2, 0xc3, 0x28]);
    body.extend_from_slice(&[0, 0]);
    body.extend_from_slice(&[0; 8]);
    let err = decode_err(&raw_frame(0x01, &body));
    assert_eq!(
        err,
        FrameError::BadUtf8 {
            field: "handshake.local_host"
        }
    );
    assert!(err.to_string().contains("not valid UTF-8"));
}

#[test]
fn unknown_payload_kind() {
    let mut body = stanza_head();
    body.push(5);
    let err = decode_err(&raw_frame(0x03, &body));
    assert_eq!(err, FrameError::UnknownPayloadKind(5));
    assert!(err.to_string().contains("unknown payload kind 5"));
}

#[test]
fn bad_target_tag() {
    let mut body = vec![0; 8 + 8 + 1 + 16];
    body.extend_from_slice(&[0, 1, b'a']);
    body.push(2);
    let err = decode_err(&raw_frame(0x03, &body));
    assert_eq!(err, FrameError::BadTargetTag(2));
    // `prior` has one more form than `target`: 2 is version 2's.
    let mut body = vec![0; 8 + 8 + 1 + 16];
    body.extend_from_slice(&[0, 1, b'a', 0, 3]);
    assert_eq!(
        decode_err(&raw_frame(0x03, &body)),
        FrameError::BadTargetTag(3)
    );
    assert!(err.to_string().contains("got 2"));
}

#[test]
fn payload_kind_from_u8_matches_repr() {
    for k in [
        PayloadKind::Other,
        PayloadKind::Message,
        PayloadKind::Presence,
        PayloadKind::PresenceUnavailable,
        PayloadKind::Iq,
    ] {
        assert_eq!(PayloadKind::from_u8(k as u8), Some(k));
    }
    assert_eq!(PayloadKind::from_u8(5), None);
    assert_eq!(PayloadKind::from_u8(255), None);
}

#[test]
fn partial_header_waits() {
    for n in 0..HEADER_LEN {
        let full = encoded(&Frame::Stanza(stanza()));
        let mut buf = BytesMut::from(&full[..n]);
        assert_eq!(decode(&mut buf, MAX).unwrap(), None);
        assert_eq!(buf.len(), n);
    }
}

#[test]
fn version_2_handshake_bytes_match_protocol_md() {
    let hello = Handshake {
        version: 2,
        resume_token: 9,
        ..handshake()
    };
    let bytes = encoded(&Frame::Handshake(hello.clone()));
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x01,                   // type: handshake
        0, 0, 0, 38,            // body length
        b'G', b'D', b'v',       // magic
        0, 2,                   // version
        0, 3, b'd', b'c', b'1', // local_host
        0, 2, b'n', b'1',       // node
        0, 0, 0, 0, 0, 0, 0, 7, // conn_id
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 9, // resume_token
    ];
    assert_eq!(&bytes[..], expected);
    assert_eq!(
        decode(&mut BytesMut::from(expected), MAX).unwrap(),
        Some(Frame::Handshake(hello))
    );
}

#[test]
fn version_2_handshake_ack_bytes_match_protocol_md() {
    let ack = HandshakeAck {
        version: 2,
        local_host: "dc2".into(),
        node: "n2".into(),
        resume_seq: Some(5),
        resume_token: 9,
        rejected: vec![Rejected {
            seq: 4,
            reason: NackReason::TooLarge,
        }],
    };
    let bytes = encoded(&Frame::HandshakeAck(ack.clone()));
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x02,                   // type: handshake answer
        0, 0, 0, 49,            // body length
        b'G', b'D', b'v',       // magic
        0, 2,                   // version
        0, 3, b'd', b'c', b'2', // local_host
        0, 2, b'n', b'2',       // node
        1,                      // resume_tag: resume_seq follows
        0, 0, 0, 0, 0, 0, 0, 5, // resume_seq
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 9, // resume_token
        1,                      // rejected_count
        0, 0, 0, 0, 0, 0, 0, 4, // rejected[0].seq
        2,                      // rejected[0].reason: too large
    ];
    assert_eq!(&bytes[..], expected);
    assert_eq!(
        decode(&mut BytesMut::from(expected), MAX).unwrap(),
        Some(Frame::HandshakeAck(ack))
    );
    // Version 1 has none of the three fields: a version-1 answer of the
    // same session is 16 + 1 + 9 bytes shorter.
    let v1 = encoded(&Frame::HandshakeAck(HandshakeAck {
        version: 1,
        resume_seq: Some(5),
        ..ack_v1()
    }));
    assert_eq!(v1.len(), HEADER_LEN + 3 + 2 + 5 + 3 + 1 + 8);
}

#[test]
fn nack_bytes_match_protocol_md() {
    let nack = Nack {
        seq: 7,
        reason: NackReason::BadAddress,
        detail: "bad to".into(),
    };
    let bytes = encoded(&Frame::Nack(nack.clone()));
    #[rustfmt::skip]
    let expected: &[u8] = &[
        0x05,                   // type: nack
        0, 0, 0, 17,            // body length
        0, 0, 0, 0, 0, 0, 0, 7, // seq
        1,                      // reason: bad address
        0, 6, b'b', b'a', b'd', b' ', b't', b'o', // detail
    ];
    assert_eq!(&bytes[..], expected);
    assert_eq!(
        decode(&mut BytesMut::from(expected), MAX).unwrap(),
        Some(Frame::Nack(nack))
    );
    let mut unknown = expected.to_vec();
    unknown[HEADER_LEN + 8] = 9;
    assert_eq!(decode_err(&unknown), FrameError::UnknownNackReason(9));
}

#[test]
fn prior_in_both_forms_matches_protocol_md() {
    let with = |token| {
        let mut s = stanza();
        s.prior = Some(Prior {
            session: 3,
            seq: 4,
            token,
        });
        let plain = encoded(&Frame::Stanza(stanza()));
        let bytes = encoded(&Frame::Stanza(s.clone()));
        assert_eq!(
            decode(&mut bytes.clone(), MAX).unwrap(),
            Some(Frame::Stanza(s))
        );
        (plain, bytes)
    };
    // After `origin` and the target tag of `stanza()` (no target) comes `prior`.
    let at = HEADER_LEN + 8 + 8 + 1 + 16 + 2 + "dc1.example.com".len() + 1;
    let (plain, v1) = with(0);
    #[rustfmt::skip]
    let v1_prior: &[u8] = &[
        1,                      // prior_tag: session and seq
        0, 0, 0, 0, 0, 0, 0, 3, // prior_session
        0, 0, 0, 0, 0, 0, 0, 4, // prior_seq
    ];
    assert_eq!(&v1[at..at + 17], v1_prior);
    assert_eq!(v1.len(), plain.len() + 16);
    let (_, v2) = with(9);
    #[rustfmt::skip]
    let v2_prior: &[u8] = &[
        2,                      // prior_tag: session, seq and token (version 2)
        0, 0, 0, 0, 0, 0, 0, 3, // prior_session
        0, 0, 0, 0, 0, 0, 0, 4, // prior_seq
        0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 9, // prior_token
    ];
    assert_eq!(&v2[at..at + 33], v2_prior);
}

#[test]
fn an_oversized_stanza_is_seen_with_its_seq_from_13_bytes() {
    let full = encoded(&Frame::Stanza(stanza()));
    let max = full.len() - 1;
    for n in 0..HEADER_LEN {
        assert_eq!(peek_oversized_stanza(&full[..n], max), Oversized::No);
    }
    for n in HEADER_LEN..HEADER_LEN + 8 {
        assert_eq!(peek_oversized_stanza(&full[..n], max), Oversized::Partial);
    }
    assert_eq!(
        peek_oversized_stanza(&full[..HEADER_LEN + 8], max),
        Oversized::Stanza {
            seq: 7,
            total: full.len() as u64
        }
    );
    assert_eq!(peek_oversized_stanza(&full, full.len()), Oversized::No);
    // Only stanzas: any other frame above the maximum is still an error.
    let hello = encoded(&Frame::Handshake(handshake()));
    assert_eq!(peek_oversized_stanza(&hello, 10), Oversized::No);
}

#[test]
fn a_handshake_answer_lists_at_most_64_refusals() {
    let mut ack = HandshakeAck {
        version: 2,
        resume_token: 1,
        ..ack_v1()
    };
    ack.rejected = vec![
        Rejected {
            seq: 1,
            reason: NackReason::BadAddress,
        };
        MAX_REJECTED_IN_ACK + 1
    ];
    let mut dst = BytesMut::new();
    assert_eq!(
        encode(&Frame::HandshakeAck(ack.clone()), &mut dst, MAX),
        Err(FrameError::TooManyRejected(MAX_REJECTED_IN_ACK + 1))
    );
    ack.rejected.pop();
    let mut bytes = encoded(&Frame::HandshakeAck(ack)).to_vec();
    // Claim one more than allowed (the body is then too short, but the
    // count is refused first).
    let count_at = bytes.len() - 9 * MAX_REJECTED_IN_ACK - 1;
    bytes[count_at] = (MAX_REJECTED_IN_ACK + 1) as u8;
    assert_eq!(
        decode_err(&bytes),
        FrameError::TooManyRejected(MAX_REJECTED_IN_ACK + 1)
    );
}
