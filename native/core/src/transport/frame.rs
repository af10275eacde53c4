//! Wire frames between datacenters (docs/PROTOCOL.md): codec only, no I/O.
//!
//! This module turns [`Frame`]s into bytes and back, nothing else: the
//! listener and the outgoing pool own the sockets and the read/write buffers
//! (the mini-redis split between `frame.rs` and `connection.rs`). Every frame
//! is `u8 type | u32 BE body length | body`. The type comes first so that a
//! peer speaking something else (a TLS ClientHello on a plain port, HTTP) is
//! rejected on its very first byte, and the length is checked against the
//! configured maximum before the caller is asked to buffer the body.
//!
//! [`decode`] only ever reads bytes that are already in the buffer: it never
//! reserves or allocates according to a declared length, never panics, and
//! leaves the buffer untouched unless it returns a complete frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use thiserror::Error;

/// Protocol version this node speaks (and the highest it offers).
pub const PROTOCOL_VERSION: u16 = 2;
/// Oldest protocol version this node still accepts from a peer.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// First bytes of every handshake body: they tell a global_distrib peer from
/// any other program that happens to start with a valid frame type.
pub const MAGIC: [u8; 3] = *b"GDv";
/// Bytes before the body of every frame: type (1) + body length (4).
pub const HEADER_LEN: usize = 5;
/// Cap on every string field, in bytes: the largest JID allowed by RFC 7622
/// (1023-byte localpart, domain and resource plus `@` and `/`). Host and node
/// names are far below it; a larger value can only be garbage or abuse.
pub const MAX_STRING_LEN: usize = 3071;

const TYPE_HANDSHAKE: u8 = 0x01;
const TYPE_HANDSHAKE_ACK: u8 = 0x02;
const TYPE_STANZA: u8 = 0x03;
const TYPE_ACK: u8 = 0x04;
/// Version 2 only: the receiver refuses one stanza (see [`Nack`]).
const TYPE_NACK: u8 = 0x05;

const TARGET_ABSENT: u8 = 0;
const TARGET_PRESENT: u8 = 1;

const PRIOR_ABSENT: u8 = 0;
/// `prior` as version 1 knows it: session and seq.
const PRIOR_SESSION: u8 = 1;
/// Version 2 only: session, seq and the session's resume token.
const PRIOR_TOKEN: u8 = 2;

/// Rejections a version-2 [`HandshakeAck`] may carry: the receiver
/// remembers this many per session (see [`HandshakeAck::rejected`]).
pub const MAX_REJECTED_IN_ACK: usize = 64;

/// What the payload is, so the receiver can apply rules (the origin hint of
/// SPEC 6.4 is skipped for unavailable presence) without parsing XML.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadKind {
    Other = 0,
    Message = 1,
    Presence = 2,
    PresenceUnavailable = 3,
    Iq = 4,
}

impl PayloadKind {
    /// The kind with wire value `value`, or `None` for a value this version
    /// does not know.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Other),
            1 => Some(Self::Message),
            2 => Some(Self::Presence),
            3 => Some(Self::PresenceUnavailable),
            4 => Some(Self::Iq),
            _ => None,
        }
    }
}

/// First frame on every connection, client → server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Highest protocol version the client speaks.
    pub version: u16,
    pub local_host: String,
    pub node: String,
    pub conn_id: u64,
    /// Version 2 (written only when `version` ≥ 2): the token the server
    /// gave this session in an earlier [`HandshakeAck`], proving that the
    /// client owns the session it asks to resume; 0 for none (the first
    /// connection of a session). Read as 0 from a version-1 handshake.
    pub resume_token: u128,
}

/// The server's answer to a [`Handshake`]: the version both sides now use,
/// and how far it already got in the client's sequence session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeAck {
    pub version: u16,
    pub local_host: String,
    pub node: String,
    /// Last stanza sequence number taken from the session `conn_id`, or
    /// `None` when the session is new to this server (resend everything
    /// unacknowledged).
    pub resume_seq: Option<u64>,
    /// Version 2 (written only when `version` ≥ 2): the session's token,
    /// never 0; the client presents it to resume. 0 in version 1.
    pub resume_token: u128,
    /// Version 2: stanzas of the resumed session the server refused (its
    /// most recent [`MAX_REJECTED_IN_ACK`] [`Nack`]s), so that a `Nack` lost
    /// with the previous connection still reaches the sender. Empty in
    /// version 1 and for a new session.
    pub rejected: Vec<Rejected>,
}

/// One refused stanza: its sequence number and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub seq: u64,
    pub reason: NackReason,
}

/// Why a receiver refused a stanza ([`Nack`]).
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NackReason {
    /// `from` or `to` is not a JID the receiver's parser accepts.
    BadAddress = 1,
    /// The frame is larger than the receiver's `max_frame_size`.
    TooLarge = 2,
}

impl NackReason {
    /// The reason with wire value `value`, or `None` for a value this
    /// version does not know.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            1 => Some(Self::BadAddress),
            2 => Some(Self::TooLarge),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadAddress => "bad_address",
            Self::TooLarge => "too_large",
        }
    }
}

/// Server → client, version 2 only: stanza `seq` was refused and will never
/// be routed; the receiver counts it as taken (a resumption does not send
/// it again) and every stanza before it as taken too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub seq: u64,
    pub reason: NackReason,
    /// Free text for the sender's log (may be empty).
    pub detail: String,
}

/// Where a stanza was written before its connection was given up: the
/// receiver drops it if it already took `seq` of that session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Prior {
    pub session: u64,
    pub seq: u64,
    /// The session's resume token when it was a version-2 session, else 0.
    /// Only sent on version-2 connections.
    pub token: u128,
}

/// Server → client: every stanza up to `seq` of this connection's session
/// has been taken; the sender may forget them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub seq: u64,
}

/// One routed stanza with its global_distrib metadata (SPEC 6.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// Position in the sending connection's session, from 1, no gaps.
    pub seq: u64,
    /// Sender wall clock, µs since the Unix epoch.
    pub sent_at_us: u64,
    pub ttl: u8,
    pub message_id: u128,
    /// local_host of the DC where the stanza entered global routing.
    pub origin: String,
    /// Target-host override (set by bounce).
    pub target: Option<String>,
    /// Where this stanza was written before, when it comes back after its
    /// connection was given up: the receiver drops it if it already took
    /// that one.
    pub prior: Option<Prior>,
    /// Ordering key: the sender's full JID, or its domain.
    pub sender_key: String,
    pub from: String,
    pub to: String,
    pub kind: PayloadKind,
    pub payload: Bytes,
}

/// A stanza to encode, borrowing every field: the writer encodes straight
/// from its queued stanzas without building owned strings per frame.
#[derive(Debug, Clone, Copy)]
pub struct StanzaRef<'a> {
    pub seq: u64,
    pub sent_at_us: u64,
    pub ttl: u8,
    pub message_id: u128,
    pub origin: &'a str,
    pub target: Option<&'a str>,
    pub prior: Option<Prior>,
    pub sender_key: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub kind: PayloadKind,
    pub payload: &'a [u8],
}

impl Stanza {
    /// The borrowed view [`encode_stanza_ref`] takes.
    pub fn view(&self) -> StanzaRef<'_> {
        StanzaRef {
            seq: self.seq,
            sent_at_us: self.sent_at_us,
            ttl: self.ttl,
            message_id: self.message_id,
            origin: &self.origin,
            target: self.target.as_deref(),
            prior: self.prior,
            sender_key: &self.sender_key,
            from: &self.from,
            to: &self.to,
            kind: self.kind,
            payload: &self.payload,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Handshake(Handshake),
    HandshakeAck(HandshakeAck),
    Stanza(Stanza),
    Ack(Ack),
    Nack(Nack),
}

/// Why bytes could not be turned into a frame, or a frame into bytes. Any
/// decode error means the stream can no longer be trusted: close the
/// connection (and count it in `incoming.errored.<host>`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error(
        "frame of {declared} bytes exceeds the maximum of {max} bytes \
         (connections.max_frame_size); raise it on every DC if stanzas this large are legitimate"
    )]
    TooLarge { declared: usize, max: usize },
    #[error(
        "unknown frame type 0x{0:02x}: the peer does not speak global_distrib protocol \
         version {PROTOCOL_VERSION} (0x16 is a TLS record: check that connections.tls is \
         configured the same way on both DCs)"
    )]
    UnknownType(u8),
    #[error(
        "frame ends inside field `{field}`: its declared length does not match its \
         contents (corrupt stream or incompatible peer)"
    )]
    Truncated { field: &'static str },
    #[error("field `{field}` is not valid UTF-8 (corrupt stream or incompatible peer)")]
    BadUtf8 { field: &'static str },
    #[error("field `{field}` is {len} bytes long, more than the {max} bytes allowed")]
    StringTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "handshake does not start with the magic \"GDv\" (got {found:02x?}): the peer is \
         not a global_distrib node, or is speaking TLS to a plain-TCP listener"
    )]
    BadMagic { found: [u8; 3] },
    #[error(
        "protocol version {0} is not supported: this node speaks versions \
         {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}; upgrade the older DC"
    )]
    UnsupportedVersion(u16),
    #[error("unknown payload kind {0} in a stanza frame (corrupt stream or incompatible peer)")]
    UnknownPayloadKind(u8),
    #[error("presence tag of an optional field must be 0 or 1 (0 to 2 for `prior`), got {0} (corrupt stream or incompatible peer)")]
    BadTargetTag(u8),
    #[error("unknown reason {0} in a nack frame (corrupt stream or incompatible peer)")]
    UnknownNackReason(u8),
    #[error(
        "a handshake answer lists {0} refused stanzas, more than the {MAX_REJECTED_IN_ACK} \
         allowed (corrupt stream or incompatible peer)"
    )]
    TooManyRejected(usize),
    #[error(
        "{extra} unexpected bytes after the last field of a {frame} frame: its declared \
         length does not match its contents"
    )]
    Trailing { frame: &'static str, extra: usize },
}

/// The version both sides use after a client offered `offered`: the lower of
/// the two, or an error when the client is older than we still accept.
pub fn negotiate(offered: u16) -> Result<u16, FrameError> {
    if offered < MIN_PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(offered));
    }
    Ok(offered.min(PROTOCOL_VERSION))
}

/// Bytes `frame` takes on the wire, header included.
pub fn encoded_len(frame: &Frame) -> usize {
    HEADER_LEN.saturating_add(body_len(frame))
}

/// Appends one frame to `dst`. On error `dst` is left exactly as it was, so a
/// writer batching many frames in one buffer can drop the bad one and go on.
pub fn encode(frame: &Frame, dst: &mut BytesMut, max_frame_size: usize) -> Result<(), FrameError> {
    validate(frame)?;
    match frame {
        Frame::Handshake(h) => put_frame(
            dst,
            TYPE_HANDSHAKE,
            body_len(frame),
            max_frame_size,
            |dst| {
                dst.put_slice(&MAGIC);
                dst.put_u16(h.version);
                put_str(dst, &h.local_host);
                put_str(dst, &h.node);
                dst.put_u64(h.conn_id);
                if h.version >= 2 {
                    dst.put_u128(h.resume_token);
                }
            },
        ),
        Frame::HandshakeAck(a) => put_frame(
            dst,
            TYPE_HANDSHAKE_ACK,
            body_len(frame),
            max_frame_size,
            |dst| {
                dst.put_slice(&MAGIC);
                dst.put_u16(a.version);
                put_str(dst, &a.local_host);
                put_str(dst, &a.node);
                match a.resume_seq {
                    None => dst.put_u8(0),
                    Some(seq) => {
                        dst.put_u8(1);
                        dst.put_u64(seq);
                    }
                }
                if a.version >= 2 {
                    dst.put_u128(a.resume_token);
                    // `validate` bounded the list to MAX_REJECTED_IN_ACK.
                    dst.put_u8(a.rejected.len() as u8);
                    for r in &a.rejected {
                        dst.put_u64(r.seq);
                        dst.put_u8(r.reason as u8);
                    }
                }
            },
        ),
        Frame::Stanza(s) => encode_stanza(s, dst, max_frame_size),
        Frame::Ack(a) => put_frame(dst, TYPE_ACK, 8, max_frame_size, |dst| dst.put_u64(a.seq)),
        Frame::Nack(n) => put_frame(dst, TYPE_NACK, body_len(frame), max_frame_size, |dst| {
            dst.put_u64(n.seq);
            dst.put_u8(n.reason as u8);
            put_str(dst, &n.detail);
        }),
    }
}

/// [`encode`] for the writer's hot path, which holds bare stanzas and would
/// otherwise clone each one into a [`Frame`].
pub fn encode_stanza(
    stanza: &Stanza,
    dst: &mut BytesMut,
    max_frame_size: usize,
) -> Result<(), FrameError> {
    encode_stanza_ref(&stanza.view(), dst, max_frame_size)
}

/// [`encode_stanza`] from borrowed fields.
pub fn encode_stanza_ref(
    s: &StanzaRef<'_>,
    dst: &mut BytesMut,
    max_frame_size: usize,
) -> Result<(), FrameError> {
    validate_stanza(s)?;
    put_frame(
        dst,
        TYPE_STANZA,
        stanza_body_len(s),
        max_frame_size,
        |dst| {
            dst.put_u64(s.seq);
            dst.put_u64(s.sent_at_us);
            dst.put_u8(s.ttl);
            dst.put_u128(s.message_id);
            put_str(dst, s.origin);
            match s.target {
                None => dst.put_u8(TARGET_ABSENT),
                Some(t) => {
                    dst.put_u8(TARGET_PRESENT);
                    put_str(dst, t);
                }
            }
            match s.prior {
                None => dst.put_u8(PRIOR_ABSENT),
                Some(p) => {
                    dst.put_u8(if p.token == 0 {
                        PRIOR_SESSION
                    } else {
                        PRIOR_TOKEN
                    });
                    dst.put_u64(p.session);
                    dst.put_u64(p.seq);
                    if p.token != 0 {
                        dst.put_u128(p.token);
                    }
                }
            }
            put_str(dst, s.sender_key);
            put_str(dst, s.from);
            put_str(dst, s.to);
            dst.put_u8(s.kind as u8);
            dst.put_slice(s.payload);
        },
    )
}

/// Writes the header and lets `body` write exactly `body_len` bytes, after
/// the size check, so an oversized frame leaves `dst` untouched.
fn put_frame(
    dst: &mut BytesMut,
    ty: u8,
    body_len: usize,
    max_frame_size: usize,
    body: impl FnOnce(&mut BytesMut),
) -> Result<(), FrameError> {
    let total = HEADER_LEN.saturating_add(body_len);
    let too_large = FrameError::TooLarge {
        declared: total,
        max: max_frame_size,
    };
    if total > max_frame_size {
        return Err(too_large);
    }
    // The length field is a u32: a larger body cannot be expressed at all.
    let Ok(body_u32) = u32::try_from(body_len) else {
        return Err(too_large);
    };
    dst.reserve(total);
    dst.put_u8(ty);
    dst.put_u32(body_u32);
    body(dst);
    Ok(())
}

/// Takes one complete frame off the front of `src`.
///
/// `Ok(None)`: more bytes are needed; `src` is untouched. `Err`: the stream is
/// corrupt or foreign; `src` is untouched too, but the connection must be
/// closed since frame boundaries are lost. Unknown types, oversized lengths
/// and a wrong handshake magic are reported as soon as their bytes arrive,
/// without waiting for the rest of the frame.
pub fn decode(src: &mut BytesMut, max_frame_size: usize) -> Result<Option<Frame>, FrameError> {
    let Some(&ty) = src.first() else {
        return Ok(None);
    };
    if !matches!(
        ty,
        TYPE_HANDSHAKE | TYPE_HANDSHAKE_ACK | TYPE_STANZA | TYPE_ACK | TYPE_NACK
    ) {
        return Err(FrameError::UnknownType(ty));
    }
    let Some(len_bytes) = src.get(1..HEADER_LEN) else {
        return Ok(None);
    };
    let mut len_arr = [0u8; 4];
    len_arr.copy_from_slice(len_bytes);
    let body = u32::from_be_bytes(len_arr) as usize;
    let total = HEADER_LEN.saturating_add(body);
    if total > max_frame_size {
        return Err(FrameError::TooLarge {
            declared: total,
            max: max_frame_size,
        });
    }
    if matches!(ty, TYPE_HANDSHAKE | TYPE_HANDSHAKE_ACK) {
        check_magic(
            src.get(HEADER_LEN..total.min(src.len()))
                .unwrap_or_default(),
        )?;
    }
    let Some(body_bytes) = src.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let mut r = Reader { buf: body_bytes };
    let frame = match ty {
        TYPE_HANDSHAKE => Frame::Handshake(read_handshake(&mut r)?),
        TYPE_HANDSHAKE_ACK => Frame::HandshakeAck(read_ack(&mut r)?),
        TYPE_ACK => {
            let seq = r.u64("ack.seq")?;
            r.finish("ack")?;
            Frame::Ack(Ack { seq })
        }
        TYPE_NACK => {
            let seq = r.u64("nack.seq")?;
            let code = r.u8("nack.reason")?;
            let reason = NackReason::from_u8(code).ok_or(FrameError::UnknownNackReason(code))?;
            let detail = r.string("nack.detail")?;
            r.finish("nack")?;
            Frame::Nack(Nack {
                seq,
                reason,
                detail,
            })
        }
        _ => {
            let (stanza, payload_len) = read_stanza_head(&mut r)?;
            let mut frame = src.split_to(total);
            frame.advance(total - payload_len);
            return Ok(Some(Frame::Stanza(Stanza {
                payload: frame.freeze(),
                ..stanza
            })));
        }
    };
    src.advance(total);
    Ok(Some(frame))
}

/// What [`peek_oversized_stanza`] sees at the start of a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversized {
    /// Not a stanza frame above the maximum: decode it as usual.
    No,
    /// A stanza frame above the maximum whose `seq` has not fully arrived.
    Partial,
    /// A stanza frame above the maximum: its `seq` and its whole length on
    /// the wire (header included), which the caller skips.
    Stanza { seq: u64, total: u64 },
}

/// For a version-2 receiver, which refuses a stanza too large with a
/// [`Nack`] instead of closing the connection: whether `src` starts with a
/// stanza frame above `max_frame_size`, and then its `seq`, the first 8
/// bytes of its body. Needs only 13 bytes; the caller discards the rest of
/// the frame as it streams in, without buffering it, and stays in sync.
pub fn peek_oversized_stanza(src: &[u8], max_frame_size: usize) -> Oversized {
    let Some(header) = src.get(..HEADER_LEN) else {
        return Oversized::No;
    };
    if header[0] != TYPE_STANZA {
        return Oversized::No;
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&header[1..]);
    let total = HEADER_LEN as u64 + u64::from(u32::from_be_bytes(len));
    if total <= max_frame_size as u64 {
        return Oversized::No;
    }
    match src.get(HEADER_LEN..HEADER_LEN + 8) {
        Some(seq) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(seq);
            Oversized::Stanza {
                seq: u64::from_be_bytes(b),
                total,
            }
        }
        None => Oversized::Partial,
    }
}

/// What [`decode_with`] found: a stanza, as the caller's `T` built from
/// the borrowed frame plus its payload (no copy), or any other frame.
#[derive(Debug)]
pub enum Decoded<T> {
    Stanza(T, Bytes),
    /// Boxed: rare on the receive path, and a frame is large.
    Other(Box<Frame>),
}

/// [`decode`] for the receive path: a stanza frame is handed to `f` as a
/// [`StanzaRef`] borrowing the frame's bytes, so that the receiver builds
/// what it needs (e.g. parsed JIDs) without owned copies of every string
/// first. `f`'s error is returned as is and leaves `src` untouched, like a
/// decoding error; either way the connection must be closed.
pub fn decode_with<T, E: From<FrameError>>(
    src: &mut BytesMut,
    max_frame_size: usize,
    f: impl FnOnce(&StanzaRef<'_>) -> Result<T, E>,
) -> Result<Option<Decoded<T>>, E> {
    if src.first() != Some(&TYPE_STANZA) {
        return Ok(decode(src, max_frame_size)?.map(|f| Decoded::Other(Box::new(f))));
    }
    let Some(len_bytes) = src.get(1..HEADER_LEN) else {
        return Ok(None);
    };
    let mut len_arr = [0u8; 4];
    len_arr.copy_from_slice(len_bytes);
    let total = HEADER_LEN.saturating_add(u32::from_be_bytes(len_arr) as usize);
    if total > max_frame_size {
        return Err(FrameError::TooLarge {
            declared: total,
            max: max_frame_size,
        }
        .into());
    }
    let Some(body) = src.get(HEADER_LEN..total) else {
        return Ok(None);
    };
    let view = read_stanza_view(&mut Reader { buf: body })?;
    let payload_len = view.payload.len();
    let value = f(&view)?;
    let mut frame = src.split_to(total);
    frame.advance(total - payload_len);
    Ok(Some(Decoded::Stanza(value, frame.freeze())))
}

/// Rejects a foreign peer on the first bytes of its handshake, even before
/// the whole frame has arrived.
fn check_magic(body_prefix: &[u8]) -> Result<(), FrameError> {
    let n = body_prefix.len().min(MAGIC.len());
    let got = body_prefix.get(..n).unwrap_or_default();
    if got != MAGIC.get(..n).unwrap_or_default() {
        let mut found = [0u8; 3];
        found[..n].copy_from_slice(got);
        return Err(FrameError::BadMagic { found });
    }
    Ok(())
}

fn read_handshake(r: &mut Reader<'_>) -> Result<Handshake, FrameError> {
    r.skip(MAGIC.len(), "handshake.magic")?;
    let version = r.u16("handshake.version")?;
    if version < MIN_PROTOCOL_VERSION {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let local_host = r.string("handshake.local_host")?;
    let node = r.string("handshake.node")?;
    let conn_id = r.u64("handshake.conn_id")?;
    // Version 2 appended the token; a later version keeps it and appends
    // after it.
    let resume_token = if version >= 2 {
        r.u128("handshake.resume_token")?
    } else {
        0
    };
    // A newer client may append fields we do not know yet; the server then
    // answers with our version and the client falls back to it.
    if version <= PROTOCOL_VERSION {
        r.finish("handshake")?;
    }
    Ok(Handshake {
        version,
        local_host,
        node,
        conn_id,
        resume_token,
    })
}

fn read_ack(r: &mut Reader<'_>) -> Result<HandshakeAck, FrameError> {
    r.skip(MAGIC.len(), "handshake_ack.magic")?;
    let version = r.u16("handshake_ack.version")?;
    // The server must answer with at most what we offered.
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let local_host = r.string("handshake_ack.local_host")?;
    let node = r.string("handshake_ack.node")?;
    let resume_seq = match r.u8("handshake_ack.resume_tag")? {
        0 => None,
        1 => Some(r.u64("handshake_ack.resume_seq")?),
        other => return Err(FrameError::BadTargetTag(other)),
    };
    let mut resume_token = 0;
    let mut rejected = Vec::new();
    if version >= 2 {
        resume_token = r.u128("handshake_ack.resume_token")?;
        let n = r.u8("handshake_ack.rejected_count")? as usize;
        if n > MAX_REJECTED_IN_ACK {
            return Err(FrameError::TooManyRejected(n));
        }
        for _ in 0..n {
            let seq = r.u64("handshake_ack.rejected.seq")?;
            let code = r.u8("handshake_ack.rejected.reason")?;
            let reason = NackReason::from_u8(code).ok_or(FrameError::UnknownNackReason(code))?;
            rejected.push(Rejected { seq, reason });
        }
    }
    r.finish("handshake_ack")?;
    Ok(HandshakeAck {
        version,
        local_host,
        node,
        resume_seq,
        resume_token,
        rejected,
    })
}

/// Everything of a stanza but its payload, plus the payload length, so the
/// caller can take the payload out of the read buffer without copying.
fn read_stanza_head(r: &mut Reader<'_>) -> Result<(Stanza, usize), FrameError> {
    let v = read_stanza_view(r)?;
    let stanza = Stanza {
        seq: v.seq,
        sent_at_us: v.sent_at_us,
        ttl: v.ttl,
        message_id: v.message_id,
        origin: v.origin.to_owned(),
        target: v.target.map(str::to_owned),
        prior: v.prior,
        sender_key: v.sender_key.to_owned(),
        from: v.from.to_owned(),
        to: v.to.to_owned(),
        kind: v.kind,
        payload: Bytes::new(),
    };
    Ok((stanza, v.payload.len()))
}

/// A stanza body read in place: every string borrows the frame, the
/// payload is the rest of the body.
fn read_stanza_view<'a>(r: &mut Reader<'a>) -> Result<StanzaRef<'a>, FrameError> {
    let seq = r.u64("stanza.seq")?;
    let sent_at_us = r.u64("stanza.sent_at_us")?;
    let ttl = r.u8("stanza.ttl")?;
    let message_id = r.u128("stanza.message_id")?;
    let origin = r.str("stanza.origin")?;
    let target = match r.u8("stanza.target_tag")? {
        TARGET_ABSENT => None,
        TARGET_PRESENT => Some(r.str("stanza.target")?),
        other => return Err(FrameError::BadTargetTag(other)),
    };
    let prior = match r.u8("stanza.prior_tag")? {
        PRIOR_ABSENT => None,
        tag @ (PRIOR_SESSION | PRIOR_TOKEN) => {
            let session = r.u64("stanza.prior_session")?;
            let seq = r.u64("stanza.prior_seq")?;
            let token = if tag == PRIOR_TOKEN {
                r.u128("stanza.prior_token")?
            } else {
                0
            };
            Some(Prior {
                session,
                seq,
                token,
            })
        }
        other => return Err(FrameError::BadTargetTag(other)),
    };
    let sender_key = r.str("stanza.sender_key")?;
    let from = r.str("stanza.from")?;
    let to = r.str("stanza.to")?;
    let kind_byte = r.u8("stanza.kind")?;
    let kind = PayloadKind::from_u8(kind_byte).ok_or(FrameError::UnknownPayloadKind(kind_byte))?;
    Ok(StanzaRef {
        seq,
        sent_at_us,
        ttl,
        message_id,
        origin,
        target,
        prior,
        sender_key,
        from,
        to,
        kind,
        payload: r.buf,
    })
}

/// Bounds-checked reads from a frame body that is entirely in memory.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Truncated { field });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    fn skip(&mut self, n: usize, field: &'static str) -> Result<(), FrameError> {
        self.take(n, field).map(|_| ())
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        self.array(field).map(u16::from_be_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        self.array(field).map(u64::from_be_bytes)
    }

    fn u128(&mut self, field: &'static str) -> Result<u128, FrameError> {
        self.array(field).map(u128::from_be_bytes)
    }

    fn string(&mut self, field: &'static str) -> Result<String, FrameError> {
        self.str(field).map(str::to_owned)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, FrameError> {
        let len = self.u16(field)? as usize;
        if len > MAX_STRING_LEN {
            return Err(FrameError::StringTooLong {
                field,
                len,
                max: MAX_STRING_LEN,
            });
        }
        // The bytes are already in memory, so an owned copy is bounded by
        // what the peer actually sent, not by what it claims.
        let bytes = self.take(len, field)?;
        std::str::from_utf8(bytes).map_err(|_| FrameError::BadUtf8 { field })
    }

    fn finish(&self, frame: &'static str) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Trailing {
                frame,
                extra: self.buf.len(),
            })
        }
    }
}

fn put_str(dst: &mut BytesMut, s: &str) {
    // `validate` has bounded every string to MAX_STRING_LEN, far below u16::MAX.
    dst.put_u16(s.len() as u16);
    dst.put_slice(s.as_bytes());
}

fn str_len(s: &str) -> usize {
    2 + s.len()
}

fn body_len(frame: &Frame) -> usize {
    match frame {
        Frame::Handshake(h) => {
            MAGIC.len()
                + 2
                + str_len(&h.local_host)
                + str_len(&h.node)
                + 8
                + if h.version >= 2 { 16 } else { 0 }
        }
        Frame::HandshakeAck(a) => {
            MAGIC.len()
                + 2
                + str_len(&a.local_host)
                + str_len(&a.node)
                + 1
                + if a.resume_seq.is_some() { 8 } else { 0 }
                + if a.version >= 2 {
                    16 + 1 + 9 * a.rejected.len()
                } else {
                    0
                }
        }
        Frame::Stanza(s) => stanza_body_len(&s.view()),
        Frame::Ack(_) => 8,
        Frame::Nack(n) => 8 + 1 + str_len(&n.detail),
    }
}

fn stanza_body_len(s: &StanzaRef<'_>) -> usize {
    let target = s.target.map_or(0, str_len);
    let head = (8 + 8 + 1 + 16)
        + str_len(s.origin)
        + 1
        + target
        + 1
        + match s.prior {
            None => 0,
            Some(p) if p.token == 0 => 16,
            Some(_) => 32,
        }
        + str_len(s.sender_key)
        + str_len(s.from)
        + str_len(s.to)
        + 1;
    head.saturating_add(s.payload.len())
}

/// Refuses to write what the peer's decoder would reject, so a bad frame is
/// reported at the sender, next to its cause.
fn validate(frame: &Frame) -> Result<(), FrameError> {
    match frame {
        Frame::Handshake(h) => {
            if h.version < MIN_PROTOCOL_VERSION {
                return Err(FrameError::UnsupportedVersion(h.version));
            }
            check_str("handshake.local_host", &h.local_host)?;
            check_str("handshake.node", &h.node)
        }
        Frame::HandshakeAck(a) => {
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&a.version) {
                return Err(FrameError::UnsupportedVersion(a.version));
            }
            if a.rejected.len() > MAX_REJECTED_IN_ACK {
                return Err(FrameError::TooManyRejected(a.rejected.len()));
            }
            check_str("handshake_ack.local_host", &a.local_host)?;
            check_str("handshake_ack.node", &a.node)
        }
        Frame::Stanza(s) => validate_stanza(&s.view()),
        Frame::Ack(_) => Ok(()),
        Frame::Nack(n) => check_str("nack.detail", &n.detail),
    }
}

fn validate_stanza(s: &StanzaRef<'_>) -> Result<(), FrameError> {
    check_str("stanza.origin", s.origin)?;
    if let Some(t) = s.target {
        check_str("stanza.target", t)?;
    }
    check_str("stanza.sender_key", s.sender_key)?;
    check_str("stanza.from", s.from)?;
    check_str("stanza.to", s.to)
}

fn check_str(field: &'static str, s: &str) -> Result<(), FrameError> {
    if s.len() > MAX_STRING_LEN {
        return Err(FrameError::StringTooLong {
            field,
            len: s.len(),
            max: MAX_STRING_LEN,
        });
    }
    Ok(())
}
