//! One outgoing connection: connect, handshake, resume, then write queued
//! stanzas in batches and read acknowledgements until the link breaks;
//! reconnect with backoff. Its queue is the state machine of `queue.rs`;
//! what it cannot deliver it gives back on the router's channel.
//!
//! A connection ends in failure, not only when it cannot be made, but also
//! when written stanzas see no acknowledgement progress for
//! `connections.ack_timeout` (a peer that accepts and never reads). Backoff
//! is reset only by a connection that made progress, so a peer that
//! handshakes and closes is not reconnected to in a hot loop.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::config::{Config, Endpoint};
use crate::envelope::{sender_key, Envelope, Reason};
use crate::metrics::{Counter, Histogram};
use crate::transport::frame::{self, Frame, Handshake, HandshakeAck, Prior, PROTOCOL_VERSION};
use crate::transport::queue::ConnQueue;
use crate::transport::tls::TlsSetup;
use crate::transport::{BoxedIo, TransportError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Bytes encoded before a write is issued; under load a write carries many frames.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A connection that lived this long with nothing left to acknowledge
/// counts as having worked (its backoff is reset), like one whose
/// acknowledgements made progress: e.g. an idle link the receiver closed.
const WORKED_IF_IDLE_FOR: Duration = BACKOFF_MAX;

/// A stanza the transport gives back, with why: reported on a channel the
/// router drains (the transport never calls routing or bounce). Its TTL is
/// as it was queued; the router refunds the unit spent on leaving.
#[derive(Debug)]
pub(crate) struct GivenBack {
    pub(crate) envelope: Envelope,
    pub(crate) reason: Reason,
}

/// The sequence session of a connection slot as the receiver knows it.
#[derive(Debug, Clone, Copy)]
struct SessionIdent {
    /// Identifies the stream of sequence numbers towards the receiver;
    /// replaced when unacknowledged stanzas are given up.
    id: u64,
    /// The receiver's resume token for it (protocol version 2), 0 until
    /// the receiver gave one or when the link speaks version 1.
    token: u128,
}

impl SessionIdent {
    fn new() -> SessionIdent {
        SessionIdent {
            id: rand::random(),
            token: 0,
        }
    }
}

/// One outgoing connection slot: a queue and the task that drains it.
pub(crate) struct Conn {
    pub(crate) endpoint: Endpoint,
    session: Mutex<SessionIdent>,
    q: Mutex<ConnQueue>,
    pub(crate) wake: Notify,
    pub(crate) started: AtomicBool,
    pub(crate) closing: AtomicBool,
}

impl Conn {
    pub(crate) fn new(endpoint: Endpoint) -> Conn {
        Conn {
            endpoint,
            session: Mutex::new(SessionIdent::new()),
            q: Mutex::new(ConnQueue::default()),
            wake: Notify::new(),
            started: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.q.lock().is_failed()
    }

    /// Nothing queued or waiting for an acknowledgement, or failing.
    pub(crate) fn idle_or_dead(&self) -> bool {
        let q = self.q.lock();
        q.is_failed() || q.is_empty()
    }

    pub(crate) fn push(&self, env: Envelope) -> Result<(), Envelope> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(env);
        }
        // The writer only waits after finding `pending` empty, so only the
        // push that makes it non-empty needs to wake it.
        let was_empty = self.q.lock().push(env)?;
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// After failing for `after`, the unacknowledged stanzas are given up
    /// too and a new sequence session starts.
    fn give_up_unacked(&self, after: Duration) -> Vec<Envelope> {
        let mut q = self.q.lock();
        if !q.should_give_up(after) {
            return Vec::new();
        }
        let old = std::mem::replace(&mut *self.session.lock(), SessionIdent::new());
        q.give_up(old.id, old.token)
    }

    pub(crate) fn take_all(&self) -> Vec<Envelope> {
        self.q.lock().take_all()
    }

    #[cfg(test)]
    pub(crate) fn fail_for_test(&self) -> Vec<Envelope> {
        self.q.lock().fail()
    }
}

/// What the connections of one remote DC share: its name, the count of
/// stanzas queued over all of them (the queue bound) and its metrics.
pub(crate) struct HostLink {
    pub(crate) name: Arc<str>,
    /// Stanzas queued or unacknowledged over all its connections.
    pub(crate) queued: AtomicUsize,
    pub(crate) m: HostMetrics,
}

impl HostLink {
    pub(crate) fn release(&self, n: usize) {
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

pub(crate) struct HostMetrics {
    pub(crate) messages: Arc<Counter>,
    /// Stanzas refused because the queue towards the host was full.
    pub(crate) queue_full: Arc<Counter>,
    pub(crate) queue_time: Arc<Histogram>,
    pub(crate) established: Arc<Counter>,
    pub(crate) closed: Arc<Counter>,
    pub(crate) errored: Arc<Counter>,
    /// Stanzas the receiver refused (a `Nack`), reported undeliverable.
    pub(crate) rejected: Arc<Counter>,
    /// Connections failed for lack of acknowledgement progress.
    pub(crate) timed_out: Arc<Counter>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// An upper bound of the frame a stanza becomes: its strings (the sender
/// key is at most `from`), the fixed fields and the payload.
pub(crate) fn frame_len_bound(env: &Envelope) -> usize {
    const FIXED: usize = 80;
    let target = env.meta.target.as_ref().map_or(0, |t| t.len() + 2);
    FIXED
        + target
        + env.meta.origin.len()
        + 2 * env.from.as_full_str().len()
        + env.to.as_full_str().len()
        + 8
        + env.payload.len()
}

/// Written-but-unacknowledged stanzas of a failing connection wait as long
/// as bounce would keep retrying a stanza, then go to bounce themselves.
pub(crate) fn give_up_after(cfg: &Config) -> Duration {
    let horizon = cfg
        .bounce
        .resend_after_ms
        .saturating_mul(1u64 << cfg.bounce.max_retries.min(16));
    Duration::from_millis(horizon.max(1000))
}

pub(crate) fn fmt_ep(ep: &Endpoint) -> String {
    format!("{}#{}", ep.host, ep.port)
}

/// What a connection task needs from the runtime.
pub(crate) struct ConnCtx {
    pub(crate) local_host: Arc<str>,
    pub(crate) global_host: Arc<str>,
    pub(crate) node: Arc<str>,
    pub(crate) tls: Option<Arc<TlsSetup>>,
    pub(crate) max_frame: usize,
    /// How long written-but-unacknowledged stanzas wait for a resume.
    pub(crate) give_up_after: Duration,
    /// How long written stanzas may wait on one connection without any
    /// acknowledgement progress before it counts as failed.
    pub(crate) ack_timeout: Duration,
    pub(crate) given_back: mpsc::UnboundedSender<GivenBack>,
    pub(crate) stop: watch::Receiver<bool>,
}

impl ConnCtx {
    /// Hands stanzas back to the router; after a stop nobody reads them
    /// any more, and the runtime has already reported what it drained.
    fn give_back(&self, envelopes: impl IntoIterator<Item = Envelope>, reason: Reason) {
        for envelope in envelopes {
            let _ = self.given_back.send(GivenBack { envelope, reason });
        }
    }
}

/// Connects, says who we are, and learns what the receiver already has of
/// this connection's sequence session (and, in version 2, its token and the
/// stanzas it refused).
async fn connect(
    ctx: &ConnCtx,
    remote: &str,
    conn: &Conn,
) -> Result<(BoxedIo, HandshakeAck), TransportError> {
    let ep = &conn.endpoint;
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect((ep.host.as_str(), ep.port)),
    )
    .await
    .map_err(|_| TransportError::Timeout("connect"))??;
    tcp.set_nodelay(true)?;
    let mut io: BoxedIo = match &ctx.tls {
        Some(tls) => {
            let name = tls.server_name_for(remote)?;
            let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connector().connect(name, tcp))
                .await
                .map_err(|_| TransportError::Timeout("TLS handshake"))??;
            Box::new(s)
        }
        None => Box::new(tcp),
    };
    let ident = *conn.session.lock();
    let hello = Frame::Handshake(Handshake {
        version: PROTOCOL_VERSION,
        local_host: ctx.local_host.to_string(),
        node: ctx.node.to_string(),
        conn_id: ident.id,
        resume_token: ident.token,
    });
    let mut buf = BytesMut::with_capacity(512);
    frame::encode(&hello, &mut buf, ctx.max_frame)?;
    io.write_all(&buf).await?;
    io.flush().await?;
    buf.clear();
    let ack = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        read_frame(&mut io, &mut buf, ctx.max_frame),
    )
    .await
    .map_err(|_| TransportError::Timeout("handshake answer"))??;
    match ack {
        Some(Frame::HandshakeAck(a)) => {
            if *a.local_host != *remote {
                return Err(TransportError::Protocol(format!(
                    "connected to {remote} but the peer says it is {}",
                    a.local_host
                )));
            }
            if a.version >= 2 && a.resume_token == 0 {
                return Err(TransportError::Protocol(
                    "the handshake answer carries no resume token".into(),
                ));
            }
            // Only this task replaces the session, so it is still the one
            // presented. A version-1 receiver keys the session by its id
            // alone: no token (and none in `prior`s that name it).
            conn.session.lock().token = if a.version >= 2 { a.resume_token } else { 0 };
            Ok((io, a))
        }
        Some(other) => Err(TransportError::Protocol(format!(
            "expected a handshake answer, got {}",
            frame_name(&other)
        ))),
        None => Err(TransportError::Closed),
    }
}

pub(crate) fn frame_name(f: &Frame) -> &'static str {
    match f {
        Frame::Handshake(_) => "handshake",
        Frame::HandshakeAck(_) => "handshake answer",
        Frame::Stanza(_) => "stanza",
        Frame::Ack(_) => "ack",
        Frame::Nack(_) => "nack",
    }
}

/// Reads until one frame is decoded; `None` on a clean end of stream.
pub(crate) async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    max_frame: usize,
) -> Result<Option<Frame>, TransportError> {
    loop {
        if let Some(f) = frame::decode(buf, max_frame)? {
            return Ok(Some(f));
        }
        if io.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(TransportError::Closed)
            };
        }
    }
}

pub(crate) async fn run_conn(ctx: ConnCtx, host: Arc<HostLink>, conn: Arc<Conn>) {
    let mut backoff = BACKOFF_MIN;
    let mut stop = ctx.stop.clone();
    loop {
        if conn.closing.load(Ordering::Relaxed) || *stop.borrow() {
            break;
        }
        match connect(&ctx, &host.name, &conn).await {
            Ok((io, answer)) => {
                host.m.established.inc();
                let refused: Vec<u64> = answer.rejected.iter().map(|r| r.seq).collect();
                let (done, rejected) = conn.q.lock().resume(answer.resume_seq, &refused);
                host.release(done);
                reject(&ctx, &host, rejected);
                let opened = Instant::now();
                let before = conn.q.lock().progress();
                let ended = io_loop(&ctx, &host, &conn, io, answer.version, opened).await;
                let timed_out = matches!(ended, Err(TransportError::AckTimeout(_)));
                match ended {
                    Ok(()) => host.m.closed.inc(),
                    Err(e) => {
                        host.m.errored.inc();
                        tracing::warn!(what = "gd_outgoing_conn_lost", host = %host.name, endpoint = %fmt_ep(&conn.endpoint), error = %e);
                    }
                }
                let (worked, overdue) = {
                    let q = conn.q.lock();
                    let idle_long = !q.has_unacked() && opened.elapsed() >= WORKED_IF_IDLE_FOR;
                    (
                        q.progress() != before || idle_long,
                        q.ack_overdue(ctx.ack_timeout),
                    )
                };
                if timed_out || (!worked && overdue) {
                    // Written stanzas went unacknowledged for ack_timeout,
                    // on this connection or over several short ones (a
                    // peer that accepts and closes): the link counts as
                    // one that cannot be re-established.
                    host.m.timed_out.inc();
                    fail(&ctx, &host, &conn);
                } else if worked {
                    // Reconnect at once: a link that worked was cut.
                    backoff = BACKOFF_MIN;
                    continue;
                }
            }
            Err(e) => {
                host.m.errored.inc();
                tracing::warn!(what = "gd_outgoing_connect_failed", host = %host.name, endpoint = %fmt_ep(&conn.endpoint), error = %e);
                fail(&ctx, &host, &conn);
            }
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 50);
        let until = Instant::now() + backoff + jitter;
        // A push does not cut the backoff short (it would make a peer that
        // closes every connection a hot loop again); closing the pool does.
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = conn.wake.notified() => {
                    if conn.closing.load(Ordering::Relaxed) {
                        break;
                    }
                }
                _ = stop.changed() => break,
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let left = conn.take_all();
    host.release(left.len());
    ctx.give_back(left, Reason::Stopped);
}

/// The connection cannot be (re-)established: stanzas never written go to
/// bounce at once; written ones once the connection has failed for
/// `give_up_after` (PROTOCOL.md, *Delivery guarantees*).
fn fail(ctx: &ConnCtx, host: &HostLink, conn: &Conn) {
    let mut queued = conn.q.lock().fail();
    queued.extend(conn.give_up_unacked(ctx.give_up_after));
    host.release(queued.len());
    ctx.give_back(queued, Reason::Unreachable);
}

/// Stanzas the receiver refused: reported undeliverable by the router,
/// since sending them again cannot help.
fn reject(ctx: &ConnCtx, host: &HostLink, refused: Vec<Envelope>) {
    if refused.is_empty() {
        return;
    }
    host.release(refused.len());
    host.m.rejected.add(refused.len() as u64);
    ctx.give_back(refused, Reason::Rejected);
}

/// Writes queued stanzas in batches and reads acknowledgements, until the
/// connection breaks (Err) or the pool is closed (Ok).
async fn io_loop(
    ctx: &ConnCtx,
    host: &HostLink,
    conn: &Conn,
    io: BoxedIo,
    version: u16,
    opened: Instant,
) -> Result<(), TransportError> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let reader = async {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match read_frame(&mut rd, &mut buf, ctx.max_frame).await? {
                Some(Frame::Ack(a)) => host.release(conn.q.lock().acked(a.seq)),
                Some(Frame::Nack(n)) if version >= 2 => {
                    let (done, refused) = conn.q.lock().nacked(n.seq);
                    host.release(done);
                    if let Some(env) = refused {
                        tracing::warn!(what = "gd_stanza_rejected", host = %host.name,
                            reason = n.reason.as_str(), detail = %n.detail, to = %env.to);
                        reject(ctx, host, vec![env]);
                    }
                }
                Some(other) => {
                    return Err(TransportError::Protocol(format!(
                        "unexpected {} from the receiver",
                        frame_name(&other)
                    )))
                }
                None => return Err(TransportError::Closed),
            }
        }
    };
    let writer = async {
        let mut buf = BytesMut::with_capacity(WRITE_BATCH_BYTES + 4096);
        loop {
            let too_large = fill_batch(ctx, host, conn, &mut buf, version);
            ctx.give_back(too_large, Reason::TooLarge);
            if buf.is_empty() {
                if conn.closing.load(Ordering::Relaxed) {
                    return Ok(());
                }
                conn.wake.notified().await;
                continue;
            }
            wr.write_all(&buf).await?;
            // With TLS, `write_all` may leave encrypted records inside
            // rustls when the socket is full, and nothing would send them
            // before the next batch: the last stanzas of a burst stayed
            // unsent. A flush writes them out (a no-op on plain TCP).
            wr.flush().await?;
            buf.clear();
        }
    };
    // Also ends a write that cannot complete: a peer that never reads.
    let watchdog = async {
        let every = (ctx.ack_timeout / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(every).await;
            // Each connection gets the whole timeout: stanzas that waited
            // through earlier connections are rewritten on this one.
            let overdue = conn
                .q
                .lock()
                .waiting_since()
                .is_some_and(|t| t.max(opened).elapsed() >= ctx.ack_timeout);
            if overdue {
                return Err(TransportError::AckTimeout(ctx.ack_timeout));
            }
        }
    };
    tokio::select! {
        r = reader => r,
        w = writer => w,
        t = watchdog => t,
    }
}

/// Encodes queued stanzas into `buf` (up to a batch) and files them as
/// unacknowledged. Returns stanzas too large to ever be sent.
///
/// The queue lock is held only to take the batch and to file it, not while
/// encoding: senders push into the same queue and would otherwise wait
/// (and sleep) for the whole encoding of a batch.
fn fill_batch(
    ctx: &ConnCtx,
    host: &HostLink,
    conn: &Conn,
    buf: &mut BytesMut,
    version: u16,
) -> Vec<Envelope> {
    let mut too_large = Vec::new();
    let budget = WRITE_BATCH_BYTES.saturating_sub(buf.len());
    let mut batch = conn.q.lock().take_batch(budget, frame_len_bound);
    if batch.items.is_empty() {
        return too_large;
    }
    let now = Instant::now();
    let sent_at_us = now_us();
    for o in std::mem::take(&mut batch.items) {
        let env = &o.env;
        let stanza = frame::StanzaRef {
            seq: batch.seq_of(&o),
            sent_at_us,
            ttl: env.meta.ttl,
            message_id: env.meta.message_id,
            origin: &env.meta.origin,
            target: env.meta.target.as_deref(),
            // A version-1 receiver knows sessions by id alone (and would
            // refuse the token form of `prior`).
            prior: env.prior.as_deref().map(|&p| {
                if version >= 2 {
                    p
                } else {
                    Prior { token: 0, ..p }
                }
            }),
            sender_key: sender_key(&env.from, &ctx.global_host),
            from: env.from.as_full_str(),
            to: env.to.as_full_str(),
            kind: env.kind,
            payload: &env.payload,
        };
        match frame::encode_stanza_ref(&stanza, buf, ctx.max_frame) {
            Ok(()) => {
                host.m.messages.inc();
                host.m
                    .queue_time
                    .record(now.saturating_duration_since(o.enqueued).as_micros() as u64);
                batch.written(o);
            }
            Err(e) => {
                tracing::warn!(what = "gd_stanza_too_large", host = %host.name, error = %e);
                host.release(1);
                too_large.push(o.env);
            }
        }
    }
    conn.q.lock().file(batch);
    too_large
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::envelope::Meta;
    use crate::jid::Jid;
    use crate::metrics::Metrics;
    use crate::transport::frame::PayloadKind;

    fn env(body: &[u8]) -> Envelope {
        Envelope::new(
            Jid::parse("alice@example.com/a").unwrap(),
            Jid::parse("bob@example.com/b").unwrap(),
            PayloadKind::Message,
            bytes::Bytes::copy_from_slice(body),
            Meta::new(Arc::from("dc1.example.com"), 4),
        )
    }

    fn link(m: &Metrics) -> HostLink {
        HostLink {
            name: Arc::from("dc2.example.com"),
            queued: AtomicUsize::new(0),
            m: HostMetrics {
                messages: m.counter("messages"),
                queue_full: m.counter("queue_full"),
                queue_time: m.histogram("queue_time"),
                established: m.counter("established"),
                closed: m.counter("closed"),
                errored: m.counter("errored"),
                rejected: m.counter("rejected"),
                timed_out: m.counter("timed_out"),
            },
        }
    }

    #[tokio::test]
    async fn a_batch_goes_out_numbered_in_order_and_a_stanza_too_large_spends_no_number() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let ctx = ConnCtx {
            local_host: Arc::from("dc1.example.com"),
            global_host: Arc::from("example.com"),
            node: Arc::from("n1"),
            tls: None,
            max_frame: 1024,
            give_up_after: Duration::from_secs(1),
            ack_timeout: Duration::from_secs(10),
            given_back: tx,
            stop: watch::channel(false).1,
        };
        let m = Metrics::new();
        let host = link(&m);
        let conn = Conn::new(Endpoint {
            host: "127.0.0.1".into(),
            port: 1,
        });
        for body in [&b"one"[..], &[b'x'; 2000][..], b"two"] {
            conn.push(env(body)).unwrap();
        }
        host.queued.store(3, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        let too_large = fill_batch(&ctx, &host, &conn, &mut buf, PROTOCOL_VERSION);
        assert_eq!(too_large.len(), 1);
        assert_eq!(too_large[0].payload.len(), 2000);
        assert_eq!(host.queued.load(Ordering::Relaxed), 2, "released");
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        a.write_all(&buf).await.unwrap();
        drop(a);
        let mut rd = BytesMut::new();
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut b, &mut rd, 1024).await.unwrap() {
            if let Frame::Stanza(s) = f {
                got.push((s.seq, s.payload));
            }
        }
        assert_eq!(
            got,
            [
                (1, bytes::Bytes::from_static(b"one")),
                (2, bytes::Bytes::from_static(b"two"))
            ]
        );
        assert_eq!(conn.q.lock().acked(2), 2, "filed as unacknowledged");
    }

    #[test]
    fn the_frame_bound_is_above_the_encoded_frame() {
        let e = env(b"hello");
        let mut buf = BytesMut::new();
        let frame = Frame::Stanza(frame::Stanza {
            seq: u64::MAX,
            sent_at_us: u64::MAX,
            ttl: 4,
            message_id: u128::MAX,
            origin: e.meta.origin.to_string(),
            target: None,
            prior: Some(Prior {
                session: u64::MAX,
                seq: u64::MAX,
                token: u128::MAX,
            }),
            sender_key: e.from.to_full_string(),
            from: e.from.to_full_string(),
            to: e.to.to_full_string(),
            kind: e.kind,
            payload: e.payload.clone(),
        });
        frame::encode(&frame, &mut buf, 1 << 20).unwrap();
        assert!(frame_len_bound(&e) >= buf.len());
    }
}
