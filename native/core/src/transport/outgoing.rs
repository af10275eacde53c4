//! Outgoing side of the transport (SPEC 6.3): per remote datacenter, one
//! pool of `connections_per_endpoint` connections per advertised endpoint,
//! opened lazily, rebalanced when the advertised set changes.
//!
//! Each connection has one queue. A stanza is bound to a connection by its
//! sender key, so stanzas of one sender reach the remote DC in order. The
//! writer encodes everything queued into one buffer and writes it at once
//! (many frames per syscall under load). Frames carry a sequence number; the
//! receiver acknowledges them, and unacknowledged frames are sent again after
//! a reconnection, so a cut link loses nothing. When a connection cannot be
//! (re)established, its queue goes to bounce: nothing is dropped silently.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use parking_lot::{Mutex, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::bounce::Bounce;
use crate::config::{Config, Endpoint};
use crate::metrics::{names, Counter, Histogram, Metrics};
use crate::routing::{sender_key, Envelope, Reason};
use crate::store::Store;
use crate::transport::frame::{self, Frame, Handshake, PROTOCOL_VERSION};
use crate::transport::known_hosts::KnownHosts;
use crate::transport::tls::TlsSetup;
use crate::transport::{BoxedIo, TransportError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Bytes encoded before a write is issued; under load a write carries many frames.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// How long `enqueue` waits for the first endpoint list of a new remote DC.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a stanza could not be queued; the stanza is handed back.
#[derive(Debug)]
pub enum EnqueueError {
    /// The remote DC's endpoints are not known yet (retry with `enqueue`).
    NotReady(Envelope),
    /// No endpoint, or every connection to it is failing.
    Unreachable(Envelope),
    /// `connections.outgoing_queue_size` stanzas are already queued for it.
    QueueFull(Envelope),
    /// Its frame would exceed `connections.max_frame_size`.
    TooLarge(Envelope),
}

struct Outbound {
    env: Envelope,
    enqueued: Instant,
    /// 0 until the stanza is first written.
    seq: u64,
}

#[derive(Default)]
struct ConnQueue {
    pending: VecDeque<Outbound>,
    unacked: VecDeque<Outbound>,
    next_seq: u64,
    failed: bool,
    /// When the connection started failing (None while it works).
    failed_since: Option<Instant>,
}

/// One outgoing connection slot: a queue and the task that drains it.
struct Conn {
    endpoint: Endpoint,
    /// Identifies the stream of sequence numbers towards the receiver;
    /// replaced when queued stanzas are handed to bounce.
    session: AtomicU64,
    q: Mutex<ConnQueue>,
    wake: Notify,
    started: AtomicBool,
    closing: AtomicBool,
}

impl Conn {
    fn new(endpoint: Endpoint) -> Conn {
        Conn {
            endpoint,
            session: AtomicU64::new(rand::random()),
            q: Mutex::new(ConnQueue {
                next_seq: 1,
                ..ConnQueue::default()
            }),
            wake: Notify::new(),
            started: AtomicBool::new(false),
            closing: AtomicBool::new(false),
        }
    }

    fn is_failed(&self) -> bool {
        self.q.lock().failed
    }

    /// Nothing queued or waiting for an acknowledgement, or failing.
    fn idle_or_dead(&self) -> bool {
        let q = self.q.lock();
        q.failed || (q.pending.is_empty() && q.unacked.is_empty())
    }

    fn push(&self, env: Envelope) -> Result<(), Envelope> {
        let mut q = self.q.lock();
        if q.failed || self.closing.load(Ordering::Relaxed) {
            return Err(env);
        }
        // The writer only waits after finding `pending` empty, so only the
        // push that makes it non-empty needs to wake it.
        let was_empty = q.pending.is_empty();
        q.pending.push_back(Outbound {
            env,
            enqueued: Instant::now(),
            seq: 0,
        });
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// After a (re)connection: what the receiver already has is done; the
    /// rest is sent again first, in order, with its sequence numbers.
    fn resume(&self, received: Option<u64>) -> usize {
        let mut q = self.q.lock();
        q.failed = false;
        q.failed_since = None;
        let mut done = 0;
        if let Some(last) = received {
            while q.unacked.front().is_some_and(|o| o.seq <= last) {
                q.unacked.pop_front();
                done += 1;
            }
        }
        while let Some(o) = q.unacked.pop_back() {
            q.pending.push_front(o);
        }
        done
    }

    /// Removes what the receiver acknowledged; returns how many.
    fn acked(&self, seq: u64) -> usize {
        let mut q = self.q.lock();
        let mut n = 0;
        while q.unacked.front().is_some_and(|o| o.seq <= seq) {
            q.unacked.pop_front();
            n += 1;
        }
        n
    }

    /// The connection cannot be established. Stanzas never written go to
    /// bounce (returned); written but unacknowledged ones stay, because the
    /// receiver may have them: a resumed connection settles them exactly.
    fn fail(&self) -> Vec<Envelope> {
        let mut q = self.q.lock();
        q.failed = true;
        q.failed_since.get_or_insert_with(Instant::now);
        let mut fresh = Vec::new();
        let mut kept = VecDeque::new();
        for o in std::mem::take(&mut q.pending) {
            if o.seq == 0 {
                fresh.push(o.env);
            } else {
                kept.push_back(o);
            }
        }
        // Resent-but-unacknowledged stanzas precede the newer unacked ones.
        kept.extend(std::mem::take(&mut q.unacked));
        q.unacked = kept;
        fresh
    }

    /// After failing for `after`, the unacknowledged stanzas are given up
    /// to bounce too and a new sequence session starts.
    fn give_up_unacked(&self, after: Duration) -> Vec<Envelope> {
        let mut q = self.q.lock();
        match q.failed_since {
            Some(t) if t.elapsed() >= after && !q.unacked.is_empty() => {}
            _ => return Vec::new(),
        }
        q.next_seq = 1;
        let old = self.session.swap(rand::random(), Ordering::Relaxed);
        std::mem::take(&mut q.unacked)
            .into_iter()
            .map(|mut o| {
                o.env.prior = Some((old, o.seq));
                o.env
            })
            .collect()
    }

    fn take_all(&self) -> Vec<Envelope> {
        let mut q = self.q.lock();
        let unacked = std::mem::take(&mut q.unacked);
        let pending = std::mem::take(&mut q.pending);
        unacked.into_iter().chain(pending).map(|o| o.env).collect()
    }
}

struct Pool {
    endpoint: Endpoint,
    conns: Vec<Arc<Conn>>,
}

#[derive(Default)]
struct Pools {
    endpoints: Vec<Endpoint>,
    enabled: Vec<Arc<Pool>>,
    disabled: Vec<Arc<Pool>>,
    /// The connections of the enabled pools, in a stable order: the
    /// sender-key binding indexes this list.
    conns: Vec<Arc<Conn>>,
}

struct HostMetrics {
    messages: Arc<Counter>,
    /// Stanzas refused because the queue towards the host was full.
    queue_full: Arc<Counter>,
    queue_time: Arc<Histogram>,
    established: Arc<Counter>,
    closed: Arc<Counter>,
    errored: Arc<Counter>,
}

/// Everything about one remote datacenter.
pub(crate) struct RemoteHost {
    name: Arc<str>,
    pools: RwLock<Pools>,
    /// Stanzas queued or unacknowledged over all its connections.
    queued: AtomicUsize,
    ready: watch::Sender<bool>,
    m: HostMetrics,
}

impl RemoteHost {
    fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn release(&self, n: usize) {
        if n > 0 {
            self.queued.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// The outgoing side of one runtime.
pub struct Outgoing {
    local_host: Arc<str>,
    global_host: Arc<str>,
    node: Arc<str>,
    cfg: Config,
    tls: Option<Arc<TlsSetup>>,
    store: Store,
    metrics: Arc<Metrics>,
    bounce: Arc<Bounce>,
    hosts: RwLock<HashMap<Arc<str>, Arc<RemoteHost>>>,
    /// The only names that get a `RemoteHost` (docs/PROTOCOL.md, *Limits*).
    known: Arc<KnownHosts>,
    stop: watch::Receiver<bool>,
    rt: tokio::runtime::Handle,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn key_hash(key: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl Outgoing {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: &Config,
        tls: Option<Arc<TlsSetup>>,
        store: Store,
        metrics: Arc<Metrics>,
        bounce: Arc<Bounce>,
        stop: watch::Receiver<bool>,
        rt: tokio::runtime::Handle,
    ) -> Outgoing {
        let known = Arc::new(KnownHosts::new(cfg, store.clone()));
        Outgoing {
            local_host: Arc::from(cfg.local_host.as_str()),
            global_host: Arc::from(cfg.global_host.as_str()),
            node: Arc::from(cfg.node_name.as_str()),
            cfg: cfg.clone(),
            tls,
            store,
            metrics,
            bounce,
            hosts: RwLock::new(HashMap::new()),
            known,
            stop,
            rt,
        }
    }

    /// Remote DCs known so far.
    pub fn hosts(&self) -> Vec<Arc<str>> {
        self.hosts.read().keys().cloned().collect()
    }

    pub(crate) fn known_hosts(&self) -> &Arc<KnownHosts> {
        &self.known
    }

    /// Whether `host` is a remote DC this runtime has pools for.
    pub(crate) fn knows(&self, host: &str) -> bool {
        self.hosts.read().contains_key(host)
    }

    /// Endpoints currently enabled for `host`.
    pub fn endpoints_of(&self, host: &str) -> Vec<Endpoint> {
        self.hosts
            .read()
            .get(host)
            .map(|h| h.pools.read().endpoints.clone())
            .unwrap_or_default()
    }

    /// Whether a stanza for `host` could be queued now: its endpoints are
    /// known and at least one connection is not failing (connections not
    /// opened yet count as live).
    pub(crate) fn is_reachable(&self, host: &str) -> bool {
        let Some(h) = self.hosts.read().get(host).cloned() else {
            return true;
        };
        if !h.is_ready() {
            return true;
        }
        let pools = h.pools.read();
        pools.conns.iter().any(|c| !c.is_failed())
    }

    /// Number of disabled pools still open for `host`.
    pub fn disabled_pools(&self, host: &str) -> usize {
        self.hosts
            .read()
            .get(host)
            .map(|h| h.pools.read().disabled.len())
            .unwrap_or(0)
    }

    /// Stanzas queued or unacknowledged towards all remote DCs.
    pub fn in_flight(&self) -> usize {
        self.hosts
            .read()
            .values()
            .map(|h| h.queued.load(Ordering::Relaxed))
            .sum()
    }

    /// The remote host, created (and its endpoint refresher started) on first use.
    pub(crate) fn host(self: &Arc<Self>, name: &str) -> Arc<RemoteHost> {
        if let Some(h) = self.hosts.read().get(name) {
            return h.clone();
        }
        let mut hosts = self.hosts.write();
        if let Some(h) = hosts.get(name) {
            return h.clone();
        }
        let name: Arc<str> = Arc::from(name);
        let m = &self.metrics;
        let host = Arc::new(RemoteHost {
            name: name.clone(),
            pools: RwLock::new(Pools::default()),
            queued: AtomicUsize::new(0),
            ready: watch::channel(false).0,
            m: HostMetrics {
                messages: m.counter(&names::outgoing_messages(&name)),
                queue_full: m.counter(&names::outgoing_queue_full(&name)),
                queue_time: m.histogram(&names::outgoing_queue_time(&name)),
                established: m.counter(&names::outgoing_established(&name)),
                closed: m.counter(&names::outgoing_closed(&name)),
                errored: m.counter(&names::outgoing_errored(&name)),
            },
        });
        hosts.insert(name, host.clone());
        drop(hosts);
        self.rt
            .spawn(self.clone().refresh_endpoints_loop(host.clone()));
        host
    }

    /// Queues without waiting; `NotReady` when the endpoints of a new
    /// remote DC are still being read.
    pub(crate) fn try_enqueue(&self, host: &str, env: Envelope) -> Result<(), EnqueueError> {
        let h = match self.hosts.read().get(host) {
            Some(h) if h.is_ready() => h.clone(),
            _ => return Err(EnqueueError::NotReady(env)),
        };
        self.push(&h, env)
    }

    /// Queues, first reading the endpoints of a remote DC never used before.
    pub(crate) async fn enqueue(
        self: &Arc<Self>,
        host: &str,
        env: Envelope,
    ) -> Result<(), EnqueueError> {
        if !self.hosts.read().contains_key(host) && !self.known.admits(host).await {
            return Err(EnqueueError::Unreachable(env));
        }
        let h = self.host(host);
        if !h.is_ready() {
            let mut rx = h.ready.subscribe();
            let _ = tokio::time::timeout(READY_TIMEOUT, rx.wait_for(|r| *r)).await;
        }
        if !h.is_ready() {
            return Err(EnqueueError::Unreachable(env));
        }
        self.push(&h, env)
    }

    fn push(&self, h: &Arc<RemoteHost>, env: Envelope) -> Result<(), EnqueueError> {
        if frame_len_bound(&env) > self.cfg.connections.max_frame_size {
            return Err(EnqueueError::TooLarge(env));
        }
        if h.queued.load(Ordering::Relaxed) >= self.cfg.connections.outgoing_queue_size {
            h.m.queue_full.inc();
            return Err(EnqueueError::QueueFull(env));
        }
        let conn = {
            let pools = h.pools.read();
            let n = pools.conns.len();
            if n == 0 {
                return Err(EnqueueError::Unreachable(env));
            }
            let key = sender_key(&env.from, &self.global_host);
            let start = (key_hash(key) % n as u64) as usize;
            // The bound connection, or while it is failing the next live one.
            match (0..n)
                .map(|i| &pools.conns[(start + i) % n])
                .find(|c| !c.is_failed())
            {
                Some(c) => c.clone(),
                None => return Err(EnqueueError::Unreachable(env)),
            }
        };
        h.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(env) = conn.push(env) {
            h.release(1);
            return Err(EnqueueError::Unreachable(env));
        }
        if !conn.started.swap(true, Ordering::AcqRel) {
            self.rt.spawn(run_conn(self.ctx(), h.clone(), conn));
        }
        Ok(())
    }

    fn ctx(&self) -> ConnCtx {
        ConnCtx {
            local_host: self.local_host.clone(),
            global_host: self.global_host.clone(),
            node: self.node.clone(),
            tls: self.tls.clone(),
            max_frame: self.cfg.connections.max_frame_size,
            give_up_after: give_up_after(&self.cfg),
            bounce: self.bounce.clone(),
            stop: self.stop.clone(),
        }
    }

    /// Endpoints of `host`: the `global_distrib_addr` override, or what its
    /// nodes advertise in the store.
    async fn fetch_endpoints(&self, host: &str) -> Result<Vec<Endpoint>, crate::store::StoreError> {
        if let Some(fixed) = self.cfg.global_distrib_addr.get(host) {
            return Ok(fixed.clone());
        }
        let eps = self.store.endpoints_of(host).await?;
        Ok(eps
            .into_iter()
            .map(|(host, port)| Endpoint { host, port })
            .collect())
    }

    async fn refresh_endpoints_loop(self: Arc<Self>, host: Arc<RemoteHost>) {
        let mut stop = self.stop.clone();
        loop {
            match self.fetch_endpoints(&host.name).await {
                Ok(eps) => self.rebalance(&host, eps),
                Err(e) => {
                    tracing::warn!(what = "gd_endpoints_refresh_failed", host = %host.name, error = %e)
                }
            }
            host.ready.send_replace(true);
            let empty = host.pools.read().endpoints.is_empty();
            let secs = if empty {
                self.cfg.connections.endpoint_refresh_interval_when_empty
            } else {
                self.cfg.connections.endpoint_refresh_interval
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Re-reads the endpoints of every known remote DC now and rebalances
    /// (the endpoint refreshers' work, at once); the number of DCs read.
    pub(crate) async fn rebalance_all(&self) -> usize {
        let hosts: Vec<_> = self.hosts.read().values().cloned().collect();
        let reads = hosts.iter().map(|h| async move {
            let eps = self.fetch_endpoints(&h.name).await;
            (h, eps)
        });
        let mut read = 0;
        for (h, eps) in futures::future::join_all(reads).await {
            match eps {
                Ok(eps) => {
                    self.rebalance(h, eps);
                    h.ready.send_replace(true);
                    read += 1;
                }
                Err(e) => {
                    tracing::warn!(what = "gd_endpoints_refresh_failed", host = %h.name, error = %e)
                }
            }
        }
        read
    }

    /// New endpoint → new pool; vanished endpoint → pool disabled (no new
    /// traffic, drained, closed later by the disabled GC).
    fn rebalance(&self, host: &RemoteHost, mut eps: Vec<Endpoint>) {
        eps.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        eps.dedup();
        let mut pools = host.pools.write();
        if pools.endpoints == eps {
            return;
        }
        let Pools {
            enabled, disabled, ..
        } = &mut *pools;
        let mut next = Vec::with_capacity(eps.len());
        for ep in &eps {
            if let Some(i) = enabled.iter().position(|p| p.endpoint == *ep) {
                next.push(enabled.swap_remove(i));
            } else if let Some(i) = disabled.iter().position(|p| p.endpoint == *ep) {
                tracing::info!(what = "gd_endpoint_reenabled", host = %host.name, endpoint = %fmt_ep(ep));
                next.push(disabled.swap_remove(i));
            } else {
                tracing::info!(what = "gd_endpoint_enabled", host = %host.name, endpoint = %fmt_ep(ep));
                let n = self.cfg.connections_per_endpoint();
                next.push(Arc::new(Pool {
                    endpoint: ep.clone(),
                    conns: (0..n).map(|_| Arc::new(Conn::new(ep.clone()))).collect(),
                }));
            }
        }
        for gone in enabled.drain(..) {
            tracing::info!(what = "gd_endpoint_disabled", host = %host.name, endpoint = %fmt_ep(&gone.endpoint));
            disabled.push(gone);
        }
        *enabled = next;
        pools.conns = pools
            .enabled
            .iter()
            .flat_map(|p| p.conns.iter().cloned())
            .collect();
        pools.endpoints = eps;
    }

    /// Closes disabled pools whose connections are idle or dead.
    pub(crate) fn collect_disabled(&self) -> usize {
        let hosts: Vec<_> = self.hosts.read().values().cloned().collect();
        let mut closed = 0;
        for h in hosts {
            let mut pools = h.pools.write();
            pools.disabled.retain(|p| {
                if p.conns.iter().all(|c| c.idle_or_dead()) {
                    for c in &p.conns {
                        c.closing.store(true, Ordering::Relaxed);
                        c.wake.notify_one();
                    }
                    closed += 1;
                    false
                } else {
                    true
                }
            });
        }
        closed
    }

    /// Disabled-pool GC and hosts refresher, until stop.
    pub(crate) async fn maintenance_loop(self: Arc<Self>) {
        let mut stop = self.stop.clone();
        let gc_every = Duration::from_secs(self.cfg.connections.disabled_gc_interval);
        let hosts_every = self.cfg.hosts_refresh_interval();
        let mut gc = tokio::time::interval(gc_every);
        // hosts_refresh_interval = 0: read the hosts once, then never again
        // (an interval of zero would spin); a DC named by a lookup is still
        // reached, its pool is made on first use.
        let periodic = !hosts_every.is_zero();
        let mut hosts = tokio::time::interval(if periodic {
            hosts_every
        } else {
            // Ten years, the longest interval a configuration can give.
            Duration::from_secs(10 * 365 * 24 * 3600)
        });
        gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        hosts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = gc.tick() => {
                    let n = self.collect_disabled();
                    if n > 0 {
                        tracing::info!(what = "gd_disabled_pools_closed", count = n);
                    }
                }
                _ = hosts.tick() => self.refresh_hosts().await,
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// Reads `hosts` and prepares pools for datacenters not seen before.
    pub(crate) async fn refresh_hosts(self: &Arc<Self>) {
        match self.store.hosts().await {
            Ok(list) => {
                self.known.replace(&list);
                for h in list {
                    if *h != *self.local_host && self.known.contains(&h) {
                        self.host(&h);
                    }
                }
            }
            Err(e) => tracing::warn!(what = "gd_hosts_refresh_failed", error = %e),
        }
    }

    /// Waits until everything queued is acknowledged or `deadline`; then
    /// closes every connection and returns what is left.
    pub(crate) async fn drain(&self, deadline: Instant) -> Vec<Envelope> {
        while self.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let hosts: Vec<_> = self.hosts.read().values().cloned().collect();
        let mut left = Vec::new();
        for h in hosts {
            let pools = h.pools.read();
            for c in pools
                .enabled
                .iter()
                .chain(pools.disabled.iter())
                .flat_map(|p| p.conns.iter())
            {
                c.closing.store(true, Ordering::Relaxed);
                let taken = c.take_all();
                h.release(taken.len());
                left.extend(taken.into_iter().map(unsent));
                c.wake.notify_one();
            }
        }
        left
    }
}

/// An upper bound of the frame a stanza becomes: its strings (the sender
/// key is at most `from`), the fixed fields and the payload.
fn frame_len_bound(env: &Envelope) -> usize {
    const FIXED: usize = 64;
    let target = env.meta.target.as_ref().map_or(0, |t| t.len() + 2);
    FIXED
        + target
        + env.meta.origin.len()
        + 2 * env.from.as_full_str().len()
        + env.to.as_full_str().len()
        + 8
        + env.payload.len()
}

/// A stanza leaving an outgoing queue without having been delivered gets
/// back the TTL unit spent when it was queued.
fn unsent(mut env: Envelope) -> Envelope {
    env.meta.ttl = env.meta.ttl.saturating_add(1);
    env
}

/// Written-but-unacknowledged stanzas of a failing connection wait as long
/// as bounce would keep retrying a stanza, then go to bounce themselves.
fn give_up_after(cfg: &Config) -> Duration {
    let horizon = cfg
        .bounce
        .resend_after_ms
        .saturating_mul(1u64 << cfg.bounce.max_retries.min(16));
    Duration::from_millis(horizon.max(1000))
}

fn fmt_ep(ep: &Endpoint) -> String {
    format!("{}#{}", ep.host, ep.port)
}

/// What a connection task needs from the runtime.
struct ConnCtx {
    local_host: Arc<str>,
    global_host: Arc<str>,
    node: Arc<str>,
    tls: Option<Arc<TlsSetup>>,
    max_frame: usize,
    /// How long written-but-unacknowledged stanzas wait for a resume.
    give_up_after: Duration,
    bounce: Arc<Bounce>,
    stop: watch::Receiver<bool>,
}

/// Connects, says who we are, and learns what the receiver already has of
/// this connection's sequence session.
async fn connect(
    ctx: &ConnCtx,
    remote: &str,
    conn: &Conn,
) -> Result<(BoxedIo, Option<u64>), TransportError> {
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
    let hello = Frame::Handshake(Handshake {
        version: PROTOCOL_VERSION,
        local_host: ctx.local_host.to_string(),
        node: ctx.node.to_string(),
        conn_id: conn.session.load(Ordering::Relaxed),
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
            Ok((io, a.resume_seq))
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

async fn run_conn(ctx: ConnCtx, host: Arc<RemoteHost>, conn: Arc<Conn>) {
    let mut backoff = BACKOFF_MIN;
    let mut stop = ctx.stop.clone();
    loop {
        if conn.closing.load(Ordering::Relaxed) || *stop.borrow() {
            break;
        }
        match connect(&ctx, &host.name, &conn).await {
            Ok((io, received)) => {
                host.m.established.inc();
                host.release(conn.resume(received));
                backoff = BACKOFF_MIN;
                match io_loop(&ctx, &host, &conn, io).await {
                    Ok(()) => host.m.closed.inc(),
                    Err(e) => {
                        host.m.errored.inc();
                        tracing::warn!(what = "gd_outgoing_conn_lost", host = %host.name, endpoint = %fmt_ep(&conn.endpoint), error = %e);
                    }
                }
                // Reconnect at once: only a failure to connect sends the
                // queue to bounce.
                continue;
            }
            Err(e) => {
                host.m.errored.inc();
                tracing::warn!(what = "gd_outgoing_connect_failed", host = %host.name, endpoint = %fmt_ep(&conn.endpoint), error = %e);
                let mut queued = conn.fail();
                queued.extend(conn.give_up_unacked(ctx.give_up_after));
                host.release(queued.len());
                for env in queued {
                    ctx.bounce.store_or_report(unsent(env), Reason::Unreachable);
                }
            }
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 50);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = conn.wake.notified() => {}
            _ = stop.changed() => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
    let left = conn.take_all();
    host.release(left.len());
    for env in left {
        ctx.bounce.store_or_report(unsent(env), Reason::Stopped);
    }
}

/// Writes queued stanzas in batches and reads acknowledgements, until the
/// connection breaks (Err) or the pool is closed (Ok).
async fn io_loop(
    ctx: &ConnCtx,
    host: &RemoteHost,
    conn: &Conn,
    io: BoxedIo,
) -> Result<(), TransportError> {
    let (mut rd, mut wr) = tokio::io::split(io);
    let reader = async {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            match read_frame(&mut rd, &mut buf, ctx.max_frame).await? {
                Some(Frame::Ack(a)) => host.release(conn.acked(a.seq)),
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
            let too_large = fill_batch(ctx, host, conn, &mut buf);
            for env in too_large {
                ctx.bounce.report(unsent(env), Reason::TooLarge);
            }
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
    tokio::select! {
        r = reader => r,
        w = writer => w,
    }
}

/// Encodes queued stanzas into `buf` (up to a batch) and moves them to
/// the unacknowledged list. Returns stanzas too large to ever be sent.
///
/// The queue lock is held only to take the batch and to file it as
/// unacknowledged, not while encoding: senders push into the same queue
/// and would otherwise wait (and sleep) for the whole encoding of a batch.
/// Only this writer takes from `pending` and numbers stanzas, so nothing
/// else moves `next_seq` in between.
fn fill_batch(ctx: &ConnCtx, host: &RemoteHost, conn: &Conn, buf: &mut BytesMut) -> Vec<Envelope> {
    let mut too_large = Vec::new();
    let (taken, mut next_seq) = {
        let mut q = conn.q.lock();
        let mut budget = WRITE_BATCH_BYTES.saturating_sub(buf.len());
        let mut taken = Vec::new();
        while budget > 0 {
            let Some(o) = q.pending.pop_front() else {
                break;
            };
            budget = budget.saturating_sub(frame_len_bound(&o.env));
            taken.push(o);
        }
        (taken, q.next_seq)
    };
    if taken.is_empty() {
        return too_large;
    }
    let now = Instant::now();
    let sent_at_us = now_us();
    let mut written = Vec::with_capacity(taken.len());
    for mut o in taken {
        // A resent stanza keeps its number; a fresh one takes the next.
        let seq = if o.seq == 0 { next_seq } else { o.seq };
        let env = &o.env;
        let stanza = frame::StanzaRef {
            seq,
            sent_at_us,
            ttl: env.meta.ttl,
            message_id: env.meta.message_id,
            origin: &env.meta.origin,
            target: env.meta.target.as_deref(),
            prior: env.prior,
            sender_key: sender_key(&env.from, &ctx.global_host),
            from: env.from.as_full_str(),
            to: env.to.as_full_str(),
            kind: env.kind,
            payload: &env.payload,
        };
        match frame::encode_stanza_ref(&stanza, buf, ctx.max_frame) {
            Ok(()) => {
                if o.seq == 0 {
                    o.seq = seq;
                    next_seq += 1;
                }
                host.m.messages.inc();
                host.m
                    .queue_time
                    .record(now.saturating_duration_since(o.enqueued).as_micros() as u64);
                written.push(o);
            }
            Err(e) => {
                // No number is spent on it: the receiver treats a gap in
                // the sequence as a protocol error.
                tracing::warn!(what = "gd_stanza_too_large", host = %host.name, error = %e);
                host.release(1);
                too_large.push(o.env);
            }
        }
    }
    let mut q = conn.q.lock();
    q.next_seq = next_seq;
    q.unacked.extend(written);
    too_large
}
