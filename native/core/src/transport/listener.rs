//! Receiving side of the transport (SPEC 6.4): listeners on the configured
//! endpoints, one task per incoming connection, and the dispatch shards
//! that run route() again for every received stanza.
//!
//! A connection reads frames, checks their sequence numbers (duplicates
//! after a resumed connection are skipped, a gap is a protocol error),
//! acknowledges what it has taken, and hands each stanza to the shard chosen
//! by its sender key: one shard handles a sender's stanzas one after the
//! other, so they reach the host in connection order. A malformed frame
//! closes that connection and is counted in `incoming.errored.<host>`. On a
//! version-2 connection a stanza that is well framed but cannot be taken (an
//! address the JID parser refuses, a frame above `max_frame_size`, skipped
//! as it streams in) is refused with a `Nack` instead, and the connection
//! goes on.
//!
//! Sequence sessions are resumed by their id alone in version 1; in
//! version 2 only by a connection that presents the session's resume token,
//! which this node draws at random and gives to the session's first
//! connection: another peer naming the same id gets a session of its own.
//!
//! What remote peers may hold is bounded (`connections.*` limits,
//! docs/CONFIG.md): a connection table caps connections in total and per
//! DC, evicting the oldest connection that never carried a stanza when full;
//! a handshake must name a known DC (`known_hosts`) within
//! `handshake_timeout`; a connection that never carried a stanza, or that
//! holds a partial frame, is closed after `idle_timeout` without a byte; a
//! partial frame larger than a read must fit in the shared
//! `max_incoming_buffer`. On a graceful stop every connection waits for the
//! dispatch shards to hand over what it took, acknowledges it and closes.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::config::IncomingLimits;
use crate::jid::Jid;
use crate::mapping::coarse_now_ms;
use crate::metrics::{names, Counter, Histogram, Metrics};
use crate::routing::{Decided, Delivered, Envelope, Meta, RouteResult, Router};
use crate::transport::frame::{
    self, Ack, Decoded, Frame, HandshakeAck, Nack, NackReason, Oversized, PayloadKind, Prior,
    Rejected,
};
use crate::transport::known_hosts::{valid_host_name, KnownHosts};
use crate::transport::outgoing::{frame_name, read_frame};
use crate::transport::tls::{peer_dns_names, TlsSetup};
use crate::transport::{BoxedIo, TransportError};

/// Largest first frame read before the handshake is known: a version-1
/// handshake is at most two strings of 3071 bytes and a few fields; room is
/// left for later versions' extensions. A header announcing more is not
/// buffered for a peer nobody knows yet.
const HANDSHAKE_MAX_FRAME: usize = 64 * 1024;
/// How long a stopping connection waits for the dispatch shards to hand
/// over what it took, before acknowledging it.
const STOP_SETTLE: Duration = Duration::from_secs(5);
/// How long a stopping connection waits for the peer to close after our
/// last acknowledgement (see [`linger`]).
const LINGER: Duration = Duration::from_secs(1);
const BIND_RETRY_FOR: Duration = Duration::from_secs(5);
/// Sequence sessions remembered for resumption (one per sending connection).
const MAX_SESSIONS: usize = 65_536;
/// Sessions kept under one (DC, session id): the owner's, plus those given
/// to other connections that named the id without its token. Bounded so
/// that such connections cannot make a lookup scan a long list.
const MAX_SESSIONS_PER_ID: usize = 4;
/// Batches (one per read and shard, at most a read buffer's worth of
/// stanzas each) waiting in one dispatch shard before the readers feeding
/// it pause.
const SHARD_QUEUE: usize = 64;
/// Batches a dispatch shard takes off its queue at once (one wake-up).
const DISPATCH_BATCHES: usize = 16;
/// Acknowledgements are coalesced: one as soon as this many stanzas are
/// unacknowledged, else at most ACK_DELAY after the first of them. At low
/// rates an Ack per read cost the receiver a write and the sender a
/// wake-up per stanza; the sender's queue bound counts unacknowledged
/// stanzas, so a few ms of delay is all that may be added.
const ACK_EVERY: u64 = 256;
const ACK_DELAY: Duration = Duration::from_millis(2);
/// Spare room kept in a connection's read buffer before each read.
const READ_ROOM_MIN: usize = 16 * 1024;
const READ_ROOM: usize = 128 * 1024;
/// A dispatch shard checks whether a sender is cached (origin hint) at most
/// once per this many ms: the check is a cache read with bookkeeping, and
/// it was a third of the cache's cost per stanza. A hint skipped meanwhile
/// only means that an answer to that sender may need a store read.
const HINT_RECHECK_MS: u64 = 1000;
/// Senders remembered per shard before the memory of checks starts over.
const HINT_MEMO_MAX: usize = 4096;

/// Binds every endpoint, retrying a while on address-in-use (a restarting
/// node may find its previous socket still closing).
pub(crate) async fn bind_all(addrs: &[SocketAddr]) -> Result<Vec<TcpListener>, TransportError> {
    let mut out = Vec::with_capacity(addrs.len());
    for addr in addrs {
        let until = Instant::now() + BIND_RETRY_FOR;
        loop {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    out.push(l);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < until => {
                    tracing::warn!(what = "gd_listen_addr_in_use", addr = %addr);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(TransportError::Io(std::io::Error::new(
                        e.kind(),
                        format!("cannot listen on {addr}: {e}"),
                    )))
                }
            }
        }
    }
    Ok(out)
}

struct Incoming {
    envelope: Envelope,
    from_host: Arc<str>,
    transfer_time_us: u64,
    received: Instant,
    /// Whether the origin may feed the origin hint (a known DC).
    hint: bool,
}

/// Every incoming connection open on this node, for the caps.
#[derive(Default)]
struct ConnTable {
    next: u64,
    live: HashMap<u64, Tracked>,
}

struct Tracked {
    /// The DC named by the handshake, once admitted.
    host: Option<Arc<str>>,
    opened: Instant,
    /// Carried a stanza (or resumed a session that did): never evicted.
    proven: bool,
    kill: Arc<Notify>,
}

impl ConnTable {
    /// The oldest connection that never carried a stanza, among those of
    /// `host` (any, with `None`), other than `except`.
    fn victim(&self, host: Option<&str>, except: u64) -> Option<u64> {
        self.live
            .iter()
            .filter(|(id, t)| {
                **id != except && !t.proven && host.is_none_or(|h| t.host.as_deref() == Some(h))
            })
            .min_by_key(|(_, t)| t.opened)
            .map(|(id, _)| *id)
    }

    fn evict(&mut self, id: u64) {
        if let Some(t) = self.live.remove(&id) {
            t.kill.notify_one();
        }
    }
}

/// A connection's place in the table, given back when it ends.
struct Ticket {
    receiver: Arc<Receiver>,
    id: u64,
    kill: Arc<Notify>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.receiver.table.lock().live.remove(&self.id);
    }
}

/// Bytes of `max_incoming_buffer` one connection holds for its partial frame.
struct Reservation<'a> {
    pool: &'a AtomicUsize,
    cap: usize,
    held: usize,
}

impl Reservation<'_> {
    /// Holds `want` bytes (none when 0); false when the pool cannot give them.
    fn hold(&mut self, want: usize) -> bool {
        if want <= self.held {
            self.release_to(want);
            return true;
        }
        let more = want - self.held;
        let ok = self
            .pool
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + more <= self.cap).then_some(used + more)
            })
            .is_ok();
        if ok {
            self.held = want;
        }
        ok
    }

    fn release_to(&mut self, keep: usize) {
        if self.held > keep {
            self.pool.fetch_sub(self.held - keep, Ordering::AcqRel);
            self.held = keep;
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.release_to(0);
    }
}

/// A handshaken connection as the read loop sees it.
struct ConnState<'a> {
    id: u64,
    kill: &'a Notify,
    /// Carried a stanza, here or earlier in its session.
    proven: bool,
}

/// The whole size of the incomplete frame at the start of `buf` (0 when
/// its header has not arrived). Complete frames were taken before.
fn partial_frame_len(buf: &[u8]) -> usize {
    match buf.get(1..frame::HEADER_LEN) {
        Some(len) => {
            let mut b = [0u8; 4];
            b.copy_from_slice(len);
            frame::HEADER_LEN + u32::from_be_bytes(b) as usize
        }
        None => 0,
    }
}

/// Counters of what the limits refused.
struct LimitMetrics {
    unknown_host: Arc<Counter>,
    refused: Arc<Counter>,
    timed_out: Arc<Counter>,
    buffer_full: Arc<Counter>,
}

/// State shared by every incoming connection of one runtime.
pub(crate) struct Receiver {
    local_host: Arc<str>,
    node: Arc<str>,
    tls: Option<Arc<TlsSetup>>,
    max_frame: usize,
    metrics: Arc<Metrics>,
    established: Arc<Counter>,
    /// (sending DC, its connection's session id) → the sessions under it
    /// and how far each got. A session is shared by every connection of it:
    /// after a cut, the old connection may still be draining while the
    /// resumed one starts.
    sessions: Mutex<Sessions>,
    shards: Vec<mpsc::Sender<Vec<Incoming>>>,
    /// Batches handed to the shards and not yet dispatched (graceful stop).
    dispatching: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
    limits: IncomingLimits,
    known: Arc<KnownHosts>,
    table: Mutex<ConnTable>,
    /// Bytes reserved for partial frames, over every connection.
    buffered: AtomicUsize,
    lm: LimitMetrics,
}

/// (sending DC, session id chosen by its connection slot). The DC is part
/// of the key so that, over TLS (where the DC's name is checked against its
/// certificate), no DC can resume another DC's session, token or not.
type SessionKey = (Arc<str>, u64);

#[derive(Default)]
struct Sessions {
    map: HashMap<SessionKey, Vec<Arc<SessionSlot>>>,
    count: usize,
}

/// A resume token: 128 bits from the thread's CSPRNG, never 0 (0 means
/// "none" on the wire).
fn new_token() -> u128 {
    loop {
        let t: u128 = rand::random();
        if t != 0 {
            return t;
        }
    }
}

/// Compares two resume tokens in time that does not depend on their
/// contents, so that response times tell a guesser nothing about how much
/// of a token it got right.
fn same_token(a: u128, b: u128) -> bool {
    let diff = std::hint::black_box(a ^ b);
    let folded = std::hint::black_box((diff as u64) | ((diff >> 64) as u64));
    folded == 0
}

impl Sessions {
    /// The session under `key` whose token is `token` (0: the version-1
    /// session, resumed by id alone).
    fn find(&self, key: &SessionKey, token: u128) -> Option<Arc<SessionSlot>> {
        let mut found = None;
        for slot in self.map.get(key)? {
            if same_token(slot.token, token) {
                found = Some(slot.clone());
            }
        }
        found
    }

    /// Files a new session under `key`, forgetting the least recently used
    /// one of that id, or of the whole table, when full.
    fn insert(&mut self, key: SessionKey, slot: Arc<SessionSlot>) {
        let under_key = self.map.get(&key).map_or(0, Vec::len);
        if under_key >= MAX_SESSIONS_PER_ID {
            self.forget_oldest(Some(&key));
        } else if self.count >= MAX_SESSIONS {
            self.forget_oldest(None);
        }
        self.map.entry(key).or_default().push(slot);
        self.count += 1;
    }

    /// Forgets the least recently used session (under `key` only, with
    /// `Some`); its sender, if it ever resumes, resends what it has
    /// unacknowledged.
    fn forget_oldest(&mut self, key: Option<&SessionKey>) {
        let oldest = self
            .map
            .iter()
            .filter(|(k, _)| key.is_none_or(|key| *k == key))
            .flat_map(|(k, slots)| slots.iter().enumerate().map(move |(i, s)| (k, i, s)))
            .min_by_key(|(_, _, s)| *s.touched.lock())
            .map(|(k, i, _)| (k.clone(), i));
        let Some((k, i)) = oldest else {
            return;
        };
        if let Some(slots) = self.map.get_mut(&k) {
            slots.swap_remove(i);
            self.count -= 1;
            if slots.is_empty() {
                self.map.remove(&k);
            }
        }
    }
}

/// Sequence state of one sending session.
struct SessionSlot {
    /// What a connection must present to resume it: a random non-zero
    /// token in version 2, 0 for a version-1 session.
    token: u128,
    /// The most recent stanzas refused with a `Nack` (at most
    /// `MAX_REJECTED_IN_ACK`), repeated in the answer to a resumption in
    /// case the `Nack` was lost with the previous connection.
    rejected: Mutex<std::collections::VecDeque<Rejected>>,
    /// Last sequence number handed on. Held while a batch is checked and
    /// handed to the shards, so each stanza is taken once and in order.
    last: tokio::sync::Mutex<Option<u64>>,
    /// Mirror of `last` (0: nothing yet) readable without the lock, for the
    /// duplicate check of stanzas resent from another session.
    taken: std::sync::atomic::AtomicU64,
    touched: Mutex<Instant>,
}

struct PeerMetrics {
    messages: Arc<Counter>,
    rejected: Arc<Counter>,
    transfer_time: Arc<Histogram>,
    closed: Arc<Counter>,
    errored: Arc<Counter>,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Receiver {
    /// Creates the receiver and starts `shards` dispatch tasks on `rt`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start(
        local_host: Arc<str>,
        node: Arc<str>,
        tls: Option<Arc<TlsSetup>>,
        max_frame: usize,
        metrics: Arc<Metrics>,
        router: Arc<Router>,
        shards: usize,
        stop: watch::Receiver<bool>,
        limits: IncomingLimits,
        rt: &tokio::runtime::Handle,
    ) -> Arc<Receiver> {
        let mut txs = Vec::with_capacity(shards);
        let queue_time = metrics.histogram(names::INCOMING_QUEUE_TIME);
        let dispatching = Arc::new(AtomicUsize::new(0));
        for _ in 0..shards.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            txs.push(tx);
            rt.spawn(dispatch(
                rx,
                router.clone(),
                queue_time.clone(),
                dispatching.clone(),
            ));
        }
        // Shown at zero: failures before a handshake are counted there.
        metrics.counter(&names::incoming_errored("unknown"));
        let lm = LimitMetrics {
            unknown_host: metrics.counter(names::INCOMING_UNKNOWN_HOST),
            refused: metrics.counter(names::INCOMING_REFUSED),
            timed_out: metrics.counter(names::INCOMING_TIMED_OUT),
            buffer_full: metrics.counter(names::INCOMING_BUFFER_FULL),
        };
        Arc::new(Receiver {
            dispatching,
            limits,
            known: router.outgoing.known_hosts().clone(),
            table: Mutex::new(ConnTable::default()),
            buffered: AtomicUsize::new(0),
            lm,
            established: metrics.counter(names::INCOMING_ESTABLISHED),
            local_host,
            node,
            tls,
            max_frame,
            metrics,
            sessions: Mutex::new(Sessions::default()),
            shards: txs,
            stop,
        })
    }

    /// Accepts connections until stop.
    pub(crate) async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((tcp, peer)) => match self.admit() {
                        Some(ticket) => {
                            tokio::spawn(self.clone().serve(tcp, peer, ticket));
                        }
                        None => {
                            self.lm.refused.inc();
                            tracing::warn!(what = "gd_incoming_refused", peer = %peer,
                                max_incoming_connections = self.limits.max_incoming_connections);
                        }
                    },
                    Err(e) => {
                        tracing::warn!(what = "gd_accept_failed", error = %e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    fn peer_metrics(&self, host: &str) -> PeerMetrics {
        PeerMetrics {
            messages: self.metrics.counter(&names::incoming_messages(host)),
            rejected: self.metrics.counter(&names::incoming_rejected(host)),
            transfer_time: self.metrics.histogram(&names::incoming_transfer_time(host)),
            closed: self.metrics.counter(&names::incoming_closed(host)),
            errored: self.metrics.counter(&names::incoming_errored(host)),
        }
    }

    /// A place in the connection table for a new connection, evicting the
    /// oldest one that never carried a stanza when the table is full;
    /// `None` when every open connection has carried stanzas.
    fn admit(self: &Arc<Self>) -> Option<Ticket> {
        let mut table = self.table.lock();
        if table.live.len() >= self.limits.max_incoming_connections {
            let victim = table.victim(None, u64::MAX)?;
            table.evict(victim);
            self.lm.refused.inc();
        }
        table.next += 1;
        let id = table.next;
        let kill = Arc::new(Notify::new());
        table.live.insert(
            id,
            Tracked {
                host: None,
                opened: Instant::now(),
                proven: false,
                kill: kill.clone(),
            },
        );
        Some(Ticket {
            receiver: self.clone(),
            id,
            kill,
        })
    }

    /// Files connection `id` under `host`, evicting the oldest connection of
    /// that DC that never carried a stanza when it has
    /// `max_incoming_per_host` already; false when none can go.
    fn claim(&self, id: u64, host: &Arc<str>, proven: bool) -> bool {
        let mut table = self.table.lock();
        let count = table
            .live
            .values()
            .filter(|t| t.host.as_deref() == Some(&**host))
            .count();
        if count >= self.limits.max_incoming_per_host {
            match table.victim(Some(host), id) {
                Some(victim) => {
                    table.evict(victim);
                    self.lm.refused.inc();
                }
                None => return false,
            }
        }
        match table.live.get_mut(&id) {
            Some(t) => {
                t.host = Some(host.clone());
                t.proven = proven;
                true
            }
            // Evicted meanwhile.
            None => false,
        }
    }

    fn prove(&self, id: u64) {
        if let Some(t) = self.table.lock().live.get_mut(&id) {
            t.proven = true;
        }
    }

    /// Incoming connections open now.
    pub(crate) fn open_connections(&self) -> usize {
        self.table.lock().live.len()
    }

    /// Waits until every incoming connection has closed (after a stop:
    /// each one acknowledges what it took first), or `deadline`.
    pub(crate) async fn closed(&self, deadline: Instant) {
        while self.open_connections() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn serve(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, ticket: Ticket) {
        self.established.inc();
        let _ = tcp.set_nodelay(true);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let deadline = Duration::from_secs(self.limits.handshake_timeout);
        let mut stop = self.stop.clone();
        let opened = tokio::select! {
            r = tokio::time::timeout(deadline, self.open(tcp, &mut buf, ticket.id)) => r,
            _ = ticket.kill.notified() => {
                tracing::warn!(what = "gd_incoming_evicted", peer = %peer);
                return;
            }
            _ = stopped(&mut stop) => return,
        };
        let Opened {
            io,
            hello,
            version,
            slot,
            proven,
        } = match opened {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                // The peer's host is unknown before the handshake.
                self.metrics
                    .counter(&names::incoming_errored("unknown"))
                    .inc();
                tracing::warn!(what = "gd_incoming_handshake_failed", peer = %peer, error = %e);
                return;
            }
            Err(_) => {
                self.metrics
                    .counter(&names::incoming_errored("unknown"))
                    .inc();
                self.lm.timed_out.inc();
                tracing::warn!(what = "gd_incoming_handshake_timeout", peer = %peer);
                return;
            }
        };
        let host: Arc<str> = Arc::from(hello.local_host.as_str());
        let m = self.peer_metrics(&host);
        self.metrics
            .counter(&names::incoming_first_packet(&host))
            .inc();
        let conn = ConnState {
            id: ticket.id,
            kill: &ticket.kill,
            proven,
        };
        let session = Session {
            host: &host,
            slot,
            version,
        };
        match self.read_loop(io, buf, &session, &m, conn).await {
            Ok(()) => m.closed.inc(),
            Err(e) => {
                m.errored.inc();
                tracing::warn!(what = "gd_incoming_conn_error", host = %host, peer = %peer, error = %e);
            }
        }
    }

    /// TLS (when configured), then the handshake and its answer.
    async fn open(
        &self,
        tcp: TcpStream,
        buf: &mut BytesMut,
        id: u64,
    ) -> Result<Opened, TransportError> {
        // With TLS, the names the peer's verified certificate carries.
        let (mut io, certified): (BoxedIo, Option<Vec<String>>) = match &self.tls {
            Some(tls) => {
                let s = tls.acceptor().accept(tcp).await?;
                // Names only count when the certificate was verified and a
                // mismatch may close the link (docs/CONFIG.md, verify_mode).
                let names = tls
                    .enforces_peer_names()
                    .then(|| peer_dns_names(s.get_ref().1));
                (Box::new(s), names)
            }
            None => (Box::new(tcp), None),
        };
        let first_max = self.max_frame.min(HANDSHAKE_MAX_FRAME);
        let hello = match read_frame(&mut io, buf, first_max).await? {
            Some(Frame::Handshake(h)) => h,
            Some(other) => {
                return Err(TransportError::Protocol(format!(
                    "expected a handshake, got {}",
                    frame_name(&other)
                )))
            }
            None => return Err(TransportError::Closed),
        };
        if let Some(names) = certified {
            // A certified DC must not speak for another one (its stanzas
            // feed origin hints and sequence sessions of that DC).
            if !names
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&hello.local_host))
            {
                return Err(TransportError::Protocol(format!(
                    "peer says it is {:?} but its certificate names {names:?}",
                    hello.local_host
                )));
            }
        }
        let version = frame::negotiate(hello.version)?;
        if !valid_host_name(&hello.local_host) || !self.known.admits(&hello.local_host).await {
            // No state for names a peer invents: not a DC of `hosts` (read
            // again on demand, for a DC that just joined) nor an override.
            self.lm.unknown_host.inc();
            return Err(TransportError::Protocol(format!(
                "{:?} is not a datacenter of the store's `hosts` set nor of global_distrib_addr",
                hello.local_host
            )));
        }
        let host: Arc<str> = Arc::from(hello.local_host.as_str());
        let (slot, resumed) = self.session(&host, hello.conn_id, version, hello.resume_token);
        let resume_seq = *slot.last.lock().await;
        let proven = resume_seq.is_some();
        let rejected = if resumed {
            slot.rejected.lock().iter().copied().collect()
        } else {
            Vec::new()
        };
        if !self.claim(id, &host, proven) {
            self.lm.refused.inc();
            return Err(TransportError::Protocol(format!(
                "{host} has max_incoming_per_host ({}) connections that carry stanzas",
                self.limits.max_incoming_per_host
            )));
        }
        let ack = Frame::HandshakeAck(HandshakeAck {
            version,
            local_host: self.local_host.to_string(),
            node: self.node.to_string(),
            resume_seq,
            resume_token: slot.token,
            rejected,
        });
        let mut out = BytesMut::with_capacity(256);
        frame::encode(&ack, &mut out, self.max_frame)?;
        io.write_all(&out).await?;
        io.flush().await?;
        Ok(Opened {
            io,
            hello,
            version,
            slot,
            proven,
        })
    }

    /// The session a handshake names, and whether it is resumed. Version
    /// 1: the one under (DC, id), created on first sight. Version 2: the one
    /// under (DC, id) whose token the client presents; any other handshake
    /// (no token, a wrong or forgotten one) gets a new session with a new
    /// token, which leaves every existing session untouched.
    fn session(
        &self,
        host: &Arc<str>,
        id: u64,
        version: u16,
        token: u128,
    ) -> (Arc<SessionSlot>, bool) {
        let mut sessions = self.sessions.lock();
        let key = (host.clone(), id);
        let wanted = if version >= 2 { token } else { 0 };
        // Token 0 in version 2 is "none": never the version-1 session.
        if version < 2 || token != 0 {
            if let Some(slot) = sessions.find(&key, wanted) {
                *slot.touched.lock() = Instant::now();
                return (slot, true);
            }
        }
        let token = if version >= 2 { new_token() } else { 0 };
        let slot = Arc::new(SessionSlot {
            token,
            rejected: Mutex::new(std::collections::VecDeque::new()),
            last: tokio::sync::Mutex::new(None),
            taken: std::sync::atomic::AtomicU64::new(0),
            touched: Mutex::new(Instant::now()),
        });
        sessions.insert(key, slot.clone());
        (slot, false)
    }

    /// Whether the stanza `prior` names was already taken here. The
    /// session is found by id and token, so a peer that named the id
    /// without the token (and got a session of its own) cannot make a
    /// stanza of the owner look taken.
    fn already_taken(&self, host: &Arc<str>, prior: Prior) -> bool {
        self.sessions
            .lock()
            .find(&(host.clone(), prior.session), prior.token)
            .is_some_and(|s| s.taken.load(std::sync::atomic::Ordering::Acquire) >= prior.seq)
    }

    async fn read_loop(
        &self,
        mut io: BoxedIo,
        mut buf: BytesMut,
        session: &Session<'_>,
        m: &PeerMetrics,
        mut conn: ConnState<'_>,
    ) -> Result<(), TransportError> {
        let mut acked = *session.slot.last.lock().await;
        let mut last = acked;
        let mut refusals = Refusals::default();
        // When the acknowledgement of what was taken since the last one is
        // due: acks are coalesced (see ACK_DELAY), not one per read.
        let mut ack_due: Option<Instant> = None;
        let mut out = BytesMut::with_capacity(64);
        let mut stop = self.stop.clone();
        let idle = Duration::from_secs(self.limits.idle_timeout);
        let mut partial = Reservation {
            pool: &self.buffered,
            cap: self.limits.max_incoming_buffer.max(self.max_frame),
            held: 0,
        };
        loop {
            if refusals.skip > 0 {
                // The rest of a stanza too large: dropped as it arrives.
                let n = refusals.skip.min(buf.len() as u64) as usize;
                buf.advance(n);
                refusals.skip -= n as u64;
            }
            if refusals.skip == 0 {
                last = self.take_batch(&mut buf, session, m, &mut refusals).await?;
            }
            if let Some(nacked) = self.nack(&mut io, &mut out, &mut refusals).await? {
                // A Nack acknowledges everything before it too.
                acked = acked.max(Some(nacked));
            }
            if last != acked {
                if !conn.proven {
                    conn.proven = true;
                    self.prove(conn.id);
                }
                let behind = last.unwrap_or(0).saturating_sub(acked.unwrap_or(0));
                if behind >= ACK_EVERY {
                    self.ack(&mut io, &mut out, last).await?;
                    acked = last;
                    ack_due = None;
                } else if ack_due.is_none() {
                    ack_due = Some(Instant::now() + ACK_DELAY);
                }
            }
            let pending = match frame::peek_oversized_stanza(&buf, self.max_frame) {
                // Only its first bytes are kept (version 2).
                Oversized::Partial if session.version >= 2 => 0,
                _ => partial_frame_len(&buf),
            };
            if pending > READ_ROOM && !partial.hold(pending) {
                self.lm.buffer_full.inc();
                return Err(TransportError::Protocol(format!(
                    "a frame of {pending} bytes does not fit in max_incoming_buffer ({} bytes, shared by every connection) now",
                    partial.cap
                )));
            }
            if pending <= READ_ROOM {
                partial.release_to(0);
            }
            // Received payloads keep their part of the buffer alive, so
            // the spare room shrinks as frames are taken; without room a
            // read gets a few bytes.
            if buf.capacity() - buf.len() < READ_ROOM_MIN {
                buf.reserve(READ_ROOM);
            }
            // A link that carried stanzas may stay quiet between frames
            // (the protocol has no keepalive); one that never did, or that
            // stopped in the middle of a frame, may not.
            let idle_due = (!conn.proven || !buf.is_empty() || refusals.skip > 0)
                .then(|| Instant::now() + idle);
            let due = ack_due;
            tokio::select! {
                r = io.read_buf(&mut buf) => {
                    if r? == 0 {
                        if last != acked {
                            // Best effort: the peer is gone or going.
                            let _ = self.ack(&mut io, &mut out, last).await;
                        }
                        return if buf.is_empty() { Ok(()) } else { Err(TransportError::Closed) };
                    }
                }
                _ = sleep_until_some(due) => {
                    self.ack(&mut io, &mut out, last).await?;
                    acked = last;
                    ack_due = None;
                }
                _ = sleep_until_some(idle_due) => {
                    self.lm.timed_out.inc();
                    return Err(TransportError::Timeout("idle_timeout (no stanza, or a partial frame)"));
                }
                _ = conn.kill.notified() => {
                    return Err(TransportError::Protocol("evicted by max_incoming_connections".into()));
                }
                _ = stopped(&mut stop) => {
                    // What this connection took must reach the host before
                    // it is acknowledged; then the sender forgets it
                    // instead of sending it again to our successor.
                    // If routing could not hand everything on in time, no
                    // Ack: a stanza sent twice beats one acknowledged and
                    // then lost with the runtime.
                    if self.settle().await && last != acked {
                        let _ = self.ack(&mut io, &mut out, last).await;
                    }
                    linger(&mut io, &mut buf).await;
                    return Ok(());
                }
            }
        }
    }

    /// Waits until the dispatch shards have handed on every batch given to
    /// them; false when they have not within [`STOP_SETTLE`].
    async fn settle(&self) -> bool {
        let until = Instant::now() + STOP_SETTLE;
        loop {
            if self.dispatching.load(Ordering::Acquire) == 0 {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Sends the `Nack`s of the last batch; returns the last sequence
    /// number refused, which every stanza before it is acknowledged with.
    async fn nack(
        &self,
        io: &mut BoxedIo,
        out: &mut BytesMut,
        refusals: &mut Refusals,
    ) -> Result<Option<u64>, TransportError> {
        let Some(last) = refusals.nacks.last().map(|n| n.seq) else {
            return Ok(None);
        };
        out.clear();
        for n in refusals.nacks.drain(..) {
            frame::encode(&Frame::Nack(n), out, self.max_frame)?;
        }
        io.write_all(out).await?;
        io.flush().await?;
        Ok(Some(last))
    }

    /// Acknowledges everything up to `last` on the connection.
    async fn ack(
        &self,
        io: &mut BoxedIo,
        out: &mut BytesMut,
        last: Option<u64>,
    ) -> Result<(), TransportError> {
        let Some(seq) = last else {
            return Ok(());
        };
        out.clear();
        frame::encode(&Frame::Ack(Ack { seq }), out, self.max_frame)?;
        io.write_all(out).await?;
        // With TLS, `write_all` may leave the record inside rustls when the
        // socket is full; only a flush sends it.
        io.flush().await?;
        Ok(())
    }

    /// Decodes every complete frame in `buf`, takes each new stanza of the
    /// session once, in sequence order, and hands it to its shard. On a
    /// version-2 connection a stanza that cannot be taken is refused (added
    /// to `refusals.nacks`), and one too large is skipped (what of it is not
    /// in `buf` yet is left in `refusals.skip`). Returns the session's last
    /// sequence number.
    async fn take_batch(
        &self,
        buf: &mut BytesMut,
        session: &Session<'_>,
        m: &PeerMetrics,
        refusals: &mut Refusals,
    ) -> Result<Option<u64>, TransportError> {
        let Session {
            host,
            slot,
            version,
        } = session;
        let v2 = *version >= 2;
        let mut last = slot.last.lock().await;
        // One clock reading per read, not per stanza: every frame of the
        // buffer arrived with the same read.
        let received = Instant::now();
        let received_us = now_us();
        let shards = self.shards.len();
        // What this read brings, per shard: handed over as one message per
        // shard (one wake-up) rather than one per stanza.
        let mut out: Vec<Vec<Incoming>> = (0..shards).map(|_| Vec::new()).collect();
        let mut taken = *last;
        let mut nacks = Vec::new();
        // A bad frame ends the connection, but what came before it in the
        // same read is handed over first: it was good, and it is counted
        // as taken so that a resumed sender does not send it twice.
        let outcome = loop {
            if v2 {
                match frame::peek_oversized_stanza(buf, self.max_frame) {
                    Oversized::No => {}
                    Oversized::Partial => break Ok(()),
                    Oversized::Stanza { seq, total } => {
                        match next_in_sequence(taken, seq) {
                            Err(e) => break Err(e),
                            Ok(false) => {}
                            Ok(true) => {
                                nacks.push(Nack {
                                    seq,
                                    reason: NackReason::TooLarge,
                                    detail: format!(
                                        "frame of {total} bytes, over max_frame_size ({})",
                                        self.max_frame
                                    ),
                                });
                                taken = Some(seq);
                            }
                        }
                        let here = (buf.len() as u64).min(total);
                        buf.advance(here as usize);
                        refusals.skip = total - here;
                        if refusals.skip > 0 {
                            break Ok(());
                        }
                        continue;
                    }
                }
            }
            let prev = taken;
            // Addresses are parsed straight from the frame's bytes.
            let decoded = frame::decode_with(buf, self.max_frame, |s| {
                if !next_in_sequence(prev, s.seq)? {
                    // Already taken through an earlier connection of the session.
                    return Ok(None);
                }
                match Arriving::of(s, host, shards, &self.known, &self.lm.unknown_host) {
                    Ok(a) => Ok(Some(Take::Stanza(a))),
                    Err(detail) if v2 => Ok(Some(Take::Refused(Nack {
                        seq: s.seq,
                        reason: NackReason::BadAddress,
                        detail,
                    }))),
                    Err(detail) => Err(TransportError::Protocol(detail)),
                }
            });
            let (a, payload) = match decoded {
                Err(e) => break Err(e),
                Ok(None) => break Ok(()),
                Ok(Some(Decoded::Other(f))) => {
                    break Err(TransportError::Protocol(format!(
                        "unexpected {} after the handshake",
                        frame_name(&f)
                    )))
                }
                Ok(Some(Decoded::Stanza(None, _))) => continue,
                Ok(Some(Decoded::Stanza(Some(Take::Refused(nack)), _))) => {
                    taken = Some(nack.seq);
                    nacks.push(nack);
                    continue;
                }
                Ok(Some(Decoded::Stanza(Some(Take::Stanza(a)), payload))) => (a, payload),
            };
            let seq = a.seq;
            if let Some(prior) = a.prior {
                if self.already_taken(host, prior) {
                    tracing::debug!(what = "gd_duplicate_dropped", host = %host,
                        session = prior.session, prior_seq = prior.seq);
                    taken = Some(seq);
                    continue;
                }
            }
            m.messages.inc();
            let transfer = received_us.saturating_sub(a.sent_at_us);
            m.transfer_time.record(transfer);
            let incoming = Incoming {
                envelope: Envelope::new(a.from, a.to, a.kind, payload, a.meta),
                from_host: (*host).clone(),
                transfer_time_us: transfer,
                received,
                hint: a.hint,
            };
            out[a.shard].push(incoming);
            taken = Some(seq);
        };
        for (shard, batch) in out.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            self.dispatching.fetch_add(1, Ordering::AcqRel);
            if self.shards[shard].send(batch).await.is_err() {
                self.dispatching.fetch_sub(1, Ordering::AcqRel);
                // The runtime is stopping: nothing more is taken (nor refused).
                return Ok(*last);
            }
        }
        *last = taken;
        if let Some(seq) = taken {
            slot.taken.store(seq, std::sync::atomic::Ordering::Release);
        }
        if !nacks.is_empty() {
            m.rejected.add(nacks.len() as u64);
            let mut remembered = slot.rejected.lock();
            for n in &nacks {
                tracing::warn!(what = "gd_stanza_rejected", host = %host, seq = n.seq,
                    reason = n.reason.as_str(), detail = %n.detail);
                if remembered.len() >= frame::MAX_REJECTED_IN_ACK {
                    remembered.pop_front();
                }
                remembered.push_back(Rejected {
                    seq: n.seq,
                    reason: n.reason,
                });
            }
            refusals.nacks.append(&mut nacks);
        }
        outcome.map(|()| *last)
    }
}

/// Whether `seq` is the next stanza of a session whose last taken one is
/// `last` (`Ok(false)`: taken already, through an earlier connection of
/// the session); a gap is a protocol error.
fn next_in_sequence(last: Option<u64>, seq: u64) -> Result<bool, TransportError> {
    match last {
        Some(l) if seq <= l => Ok(false),
        Some(l) if seq != l + 1 => Err(TransportError::Protocol(format!(
            "sequence gap: expected {}, got {seq}",
            l + 1
        ))),
        _ => Ok(true),
    }
}

/// A handshaken connection's session, as the read loop uses it.
struct Session<'a> {
    host: &'a Arc<str>,
    slot: Arc<SessionSlot>,
    /// The protocol version negotiated.
    version: u16,
}

/// What [`Receiver::open`] hands to the read loop.
struct Opened {
    io: BoxedIo,
    hello: frame::Handshake,
    version: u16,
    slot: Arc<SessionSlot>,
    /// The session already carried stanzas here (a resumption).
    proven: bool,
}

/// Refusals of a version-2 connection: `Nack`s to send, and how many bytes
/// of a stanza too large are still to be dropped as they arrive.
#[derive(Default)]
struct Refusals {
    nacks: Vec<Nack>,
    skip: u64,
}

/// What the reader does with a stanza frame of the session.
enum Take {
    Stanza(Arriving),
    Refused(Nack),
}

fn shard_of(key: &str, n: usize) -> usize {
    crate::hashing::index_of(key, n)
}

/// What the reader takes from a stanza frame before its payload: the
/// parsed addresses (a malformed address is a malformed frame) and the
/// metadata. The origin is nearly always the peer itself, whose name is
/// shared rather than copied for every stanza.
struct Arriving {
    seq: u64,
    prior: Option<Prior>,
    sent_at_us: u64,
    shard: usize,
    from: Jid,
    to: Jid,
    kind: PayloadKind,
    meta: Meta,
    hint: bool,
}

impl Arriving {
    /// A `target` or an `origin` that is not a known DC is ignored (the
    /// stanza is routed by its `to`; no origin hint) and counted: names
    /// from the wire create no remote-host entry nor cache entry.
    /// `Err` says which address the JID parser refused.
    fn of(
        s: &frame::StanzaRef<'_>,
        peer: &Arc<str>,
        shards: usize,
        known: &KnownHosts,
        unknown: &Counter,
    ) -> Result<Arriving, String> {
        let hint = s.origin == &**peer || known.contains(s.origin);
        if !hint {
            unknown.inc();
        }
        let target = match s.target {
            Some(t) if known.contains(t) => Some(Arc::from(t)),
            Some(t) => {
                unknown.inc();
                tracing::debug!(what = "gd_unknown_target_ignored", host = %peer, target = ?t);
                None
            }
            None => None,
        };
        let from = Jid::parse(s.from).map_err(|e| format!("bad from {:?}: {e}", s.from))?;
        let to = Jid::parse(s.to).map_err(|e| format!("bad to {:?}: {e}", s.to))?;
        Ok(Arriving {
            seq: s.seq,
            prior: s.prior,
            sent_at_us: s.sent_at_us,
            shard: shard_of(s.sender_key, shards),
            from,
            to,
            kind: s.kind,
            hint,
            meta: Meta {
                message_id: s.message_id,
                origin: if s.origin == &**peer {
                    Arc::clone(peer)
                } else {
                    Arc::from(s.origin)
                },
                ttl: s.ttl,
                target,
            },
        })
    }
}

/// Closes our side and reads (and drops) what the peer still sends until
/// it closes too, for at most [`LINGER`]: a socket closed with unread data
/// sends a reset, and a reset makes the peer's kernel discard what it had
/// not read yet — the last acknowledgement among it.
async fn linger(io: &mut BoxedIo, buf: &mut BytesMut) {
    let _ = io.shutdown().await;
    let drain = async {
        loop {
            buf.clear();
            match io.read_buf(buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// Returns once the runtime is stopping (at once if it is already).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here.
    let _ = stop.wait_for(|s| *s).await.is_ok();
}

/// Sleeps until `due`, or forever when there is nothing due.
async fn sleep_until_some(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// When each sender's origin hint was last checked, per dispatch shard (no
/// lock); keyed by a hash of the sender, so a collision only delays a hint.
#[derive(Default)]
struct HintMemo(HashMap<u64, u64, foldhash::fast::RandomState>);

impl HintMemo {
    /// Whether the hint for `from` should be checked now, remembering it.
    fn due(&mut self, from: &Jid, now_ms: u64) -> bool {
        let key = self.0.hasher().hash_one(from.as_full_str());
        match self.0.get(&key) {
            Some(&at) if now_ms.saturating_sub(at) < HINT_RECHECK_MS => false,
            _ => {
                if self.0.len() >= HINT_MEMO_MAX {
                    self.0.clear();
                }
                self.0.insert(key, now_ms);
                true
            }
        }
    }
}

/// Stanzas for local users waiting to be handed to the host together,
/// with their payload bytes (for the host's credits).
#[derive(Default)]
struct Ready {
    items: Vec<Delivered>,
    bytes: usize,
}

impl Ready {
    fn push(&mut self, d: Delivered) {
        self.bytes += d.envelope.payload.len();
        self.items.push(d);
    }

    /// Hands what is ready to the host, in order.
    fn flush(&mut self, router: &Router) {
        if !self.items.is_empty() {
            router.delivery.deliver_many(&mut self.items);
        }
        self.items.clear();
        self.bytes = 0;
    }
}

/// One dispatch shard: origin hint, route() again, hand-off to the host.
/// Stanzas for local users are handed over per batch (`deliver_many`),
/// in order; the batch is handed over early before anything that waits
/// (a store lookup, the host's credits) or that the host hears of by
/// another way (undeliverable), so nothing overtakes and nothing waits on
/// a lookup. While the host holds as much as its credits allow, the shard
/// waits and takes nothing more from its queue: the connections feeding
/// it stop reading and TCP pushes back to the sender.
async fn dispatch(
    mut rx: mpsc::Receiver<Vec<Incoming>>,
    router: Arc<Router>,
    queue_time: Arc<Histogram>,
    dispatching: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(DISPATCH_BATCHES);
    let mut ready = Ready::default();
    let mut hints = HintMemo::default();
    loop {
        let taken = rx.recv_many(&mut batch, DISPATCH_BATCHES).await;
        if taken == 0 {
            break;
        }
        // Queue time up to the moment the batch was taken: one clock
        // reading per batch rather than per stanza.
        let now = Instant::now();
        let now_ms = coarse_now_ms();
        for inc in batch.drain(..).flatten() {
            let queued = now.saturating_duration_since(inc.received);
            queue_time.record(queued.as_micros() as u64);
            let env = &inc.envelope;
            if inc.hint
                && env.kind != PayloadKind::PresenceUnavailable
                && hints.due(&env.from, now_ms)
            {
                router
                    .mapping
                    .insert_origin_hint(&env.from, &env.meta.origin);
            }
            if let Some(credits) = router.delivery.credits() {
                let len = env.payload.len();
                if !credits.fits(ready.items.len() + 1, ready.bytes + len) {
                    ready.flush(&router);
                    credits.room_for(1, len).await;
                }
            }
            if let Some(w) = dispatch_now(inc, &router, &mut ready) {
                dispatch_waiting(w, &router, &mut ready).await;
            }
        }
        ready.flush(&router);
        dispatching.fetch_sub(taken, Ordering::AcqRel);
    }
}

/// Routes one received stanza without waiting when it can (nearly always);
/// hands back what has to wait, for [`dispatch_waiting`]. Kept apart from
/// the waiting path so that the common case builds no future: the one of
/// `route()` is large, and moving it into place per stanza was a visible
/// share of the receiver's copies.
fn dispatch_now(inc: Incoming, router: &Router, ready: &mut Ready) -> Option<Waiting> {
    let mut env = inc.envelope;
    // The wire's TTL is the sender's word: never above our own message_ttl,
    // in what we forward (route() clamps too) and in what the host is told.
    env.meta.ttl = env.meta.ttl.min(router.message_ttl);
    match router.try_decide(env) {
        Ok(d) => {
            decided(d, inc.from_host, inc.transfer_time_us, router, ready);
            None
        }
        Err(envelope) => Some(Waiting {
            envelope,
            from_host: inc.from_host,
            transfer_time_us: inc.transfer_time_us,
        }),
    }
}

/// A received stanza whose route has to wait (a store read, a connection).
struct Waiting {
    envelope: Envelope,
    from_host: Arc<str>,
    transfer_time_us: u64,
}

async fn dispatch_waiting(w: Waiting, router: &Router, ready: &mut Ready) {
    // Rare enough that keeping a copy for the host costs nothing that matters.
    ready.flush(router);
    let kept = w.envelope.clone();
    let d = match router.route(w.envelope).await {
        RouteResult::Local => Decided::Local(kept),
        RouteResult::Undeliverable(why) => Decided::Undeliverable(kept, why),
        taken => Decided::Taken(taken),
    };
    decided(d, w.from_host, w.transfer_time_us, router, ready);
}

fn decided(
    d: Decided,
    from_host: Arc<str>,
    transfer_time_us: u64,
    router: &Router,
    ready: &mut Ready,
) {
    match d {
        Decided::Local(envelope) => ready.push(Delivered {
            envelope,
            from_host: Some(from_host),
            transfer_time_us,
            unrouted: None,
        }),
        Decided::Undeliverable(env, reason) => {
            ready.flush(router);
            router.delivery.undeliverable(env, reason)
        }
        Decided::Taken(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(token: u128, touched: Instant) -> Arc<SessionSlot> {
        Arc::new(SessionSlot {
            token,
            rejected: Mutex::new(std::collections::VecDeque::new()),
            last: tokio::sync::Mutex::new(None),
            taken: std::sync::atomic::AtomicU64::new(0),
            touched: Mutex::new(touched),
        })
    }

    /// A peer presenting one session id again and again (a hijacker, or a
    /// sender whose tokens keep failing) holds at most MAX_SESSIONS_PER_ID
    /// sessions under it: the least recently used one goes first, and
    /// the other ids keep theirs.
    #[test]
    fn sessions_under_one_id_are_bounded_and_the_oldest_goes() {
        let mut s = Sessions::default();
        let t0 = Instant::now();
        let key: SessionKey = (Arc::from("dc2.example.com"), 7);
        let other: SessionKey = (Arc::from("dc2.example.com"), 8);
        s.insert(other.clone(), slot(99, t0));
        for token in 1..=(MAX_SESSIONS_PER_ID as u128 + 2) {
            s.insert(
                key.clone(),
                slot(token, t0 + Duration::from_millis(token as u64)),
            );
        }
        assert_eq!(s.map[&key].len(), MAX_SESSIONS_PER_ID);
        assert_eq!(s.count, MAX_SESSIONS_PER_ID + 1);
        assert!(s.find(&key, 1).is_none() && s.find(&key, 2).is_none());
        assert!(s.find(&key, MAX_SESSIONS_PER_ID as u128 + 2).is_some());
        assert!(s.find(&other, 99).is_some());
        assert!(s.find(&key, 12345).is_none(), "a wrong token finds nothing");
    }

    #[test]
    fn tokens_compare_on_all_128_bits() {
        assert!(same_token(5, 5));
        assert!(!same_token(5, 5 | (1 << 100)));
        assert!(!same_token(1 << 127, 0));
    }
}
