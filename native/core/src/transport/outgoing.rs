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
//! (re)established, its queue is given back to the router on a channel:
//! nothing is dropped silently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, Endpoint};
use crate::envelope::{sender_key, Envelope};
use crate::metrics::{names, Metrics};
use crate::store::Store;
use crate::transport::conn::{
    fmt_ep, frame_len_bound, give_up_after, run_conn, Conn, ConnCtx, HostLink, HostMetrics,
};
use crate::transport::known_hosts::{KnownHosts, REREAD_AFTER};
use crate::transport::tls::TlsSetup;

pub(crate) use crate::transport::conn::{frame_name, read_frame, GivenBack};

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

impl Pools {
    /// The connection bound to a sender key's hash, or while it is failing
    /// the next live one (stable while the pools are unchanged).
    fn pick(&self, key_hash: u64) -> Option<Arc<Conn>> {
        let n = self.conns.len();
        if n == 0 {
            return None;
        }
        let start = (key_hash % n as u64) as usize;
        (0..n)
            .map(|i| &self.conns[(start + i) % n])
            .find(|c| !c.is_failed())
            .cloned()
    }

    /// New endpoint → new pool; vanished endpoint → pool disabled (no new
    /// traffic, drained, closed later by the disabled GC); an endpoint back
    /// again gets its disabled pool back.
    fn rebalance(&mut self, host: &str, mut eps: Vec<Endpoint>, per_endpoint: usize) {
        eps.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
        eps.dedup();
        if self.endpoints == eps {
            return;
        }
        let Pools {
            enabled, disabled, ..
        } = self;
        let mut next = Vec::with_capacity(eps.len());
        for ep in &eps {
            if let Some(i) = enabled.iter().position(|p| p.endpoint == *ep) {
                next.push(enabled.swap_remove(i));
            } else if let Some(i) = disabled.iter().position(|p| p.endpoint == *ep) {
                tracing::info!(what = "gd_endpoint_reenabled", host = %host, endpoint = %fmt_ep(ep));
                next.push(disabled.swap_remove(i));
            } else {
                tracing::info!(what = "gd_endpoint_enabled", host = %host, endpoint = %fmt_ep(ep));
                next.push(Arc::new(Pool {
                    endpoint: ep.clone(),
                    conns: (0..per_endpoint)
                        .map(|_| Arc::new(Conn::new(ep.clone())))
                        .collect(),
                }));
            }
        }
        for gone in enabled.drain(..) {
            tracing::info!(what = "gd_endpoint_disabled", host = %host, endpoint = %fmt_ep(&gone.endpoint));
            disabled.push(gone);
        }
        *enabled = next;
        self.conns = self
            .enabled
            .iter()
            .flat_map(|p| p.conns.iter().cloned())
            .collect();
        self.endpoints = eps;
    }
}

/// Everything about one remote datacenter.
pub(crate) struct RemoteHost {
    name: Arc<str>,
    pools: RwLock<Pools>,
    /// What its connection tasks share (queue count, metrics).
    link: Arc<HostLink>,
    ready: watch::Sender<bool>,
    /// When a stanza last made [`Outgoing::enqueue`] read the endpoints
    /// again; held across the read so that concurrent callers share it.
    reread: tokio::sync::Mutex<Option<Instant>>,
}

impl RemoteHost {
    fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn has_endpoints(&self) -> bool {
        !self.pools.read().endpoints.is_empty()
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
    given_back: mpsc::UnboundedSender<GivenBack>,
    hosts: RwLock<HashMap<Arc<str>, Arc<RemoteHost>, foldhash::fast::RandomState>>,
    /// The only names that get a `RemoteHost` (docs/PROTOCOL.md, *Limits*).
    known: Arc<KnownHosts>,
    stop: watch::Receiver<bool>,
    rt: tokio::runtime::Handle,
}

impl Outgoing {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: &Config,
        tls: Option<Arc<TlsSetup>>,
        store: Store,
        metrics: Arc<Metrics>,
        given_back: mpsc::UnboundedSender<GivenBack>,
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
            given_back,
            hosts: RwLock::new(HashMap::default()),
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

    /// Whether the queue towards `host` has room for one more stanza
    /// (`connections.outgoing_queue_size`); true for a DC not used yet.
    pub(crate) fn has_room(&self, host: &str) -> bool {
        self.hosts.read().get(host).is_none_or(|h| {
            h.link.queued.load(Ordering::Relaxed) < self.cfg.connections.outgoing_queue_size
        })
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
            .map(|h| h.link.queued.load(Ordering::Relaxed))
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
            link: Arc::new(HostLink {
                name: name.clone(),
                queued: AtomicUsize::new(0),
                m: HostMetrics {
                    messages: m.counter(&names::outgoing_messages(&name)),
                    queue_full: m.counter(&names::outgoing_queue_full(&name)),
                    queue_time: m.histogram(&names::outgoing_queue_time(&name)),
                    established: m.counter(&names::outgoing_established(&name)),
                    closed: m.counter(&names::outgoing_closed(&name)),
                    errored: m.counter(&names::outgoing_errored(&name)),
                    rejected: m.counter(&names::outgoing_rejected(&name)),
                    timed_out: m.counter(&names::outgoing_timed_out(&name)),
                },
            }),
            ready: watch::channel(false).0,
            reread: tokio::sync::Mutex::new(None),
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
        if !h.has_endpoints() {
            self.reread_endpoints(&h).await;
        }
        self.push(&h, env)
    }

    /// A DC known without endpoints: read before its nodes published them
    /// (a DC that just joined; on a cluster its `hosts` member may land
    /// first), or while they were all away. The refresher would look again
    /// only after `endpoint_refresh_interval_when_empty`, longer than
    /// bounce's retries last by default, and the stanzas would end in local
    /// routing while their recipient is online there. So a stanza that
    /// needs the DC (a route that waits, a bounce flush) reads them now, at
    /// most once per [`REREAD_AFTER`] per DC.
    async fn reread_endpoints(&self, h: &RemoteHost) {
        let mut last = h.reread.lock().await;
        if h.has_endpoints() || last.is_some_and(|t| t.elapsed() < REREAD_AFTER) {
            return;
        }
        *last = Some(Instant::now());
        self.reload_endpoints(h).await;
    }

    fn push(&self, h: &Arc<RemoteHost>, env: Envelope) -> Result<(), EnqueueError> {
        if frame_len_bound(&env) > self.cfg.connections.max_frame_size {
            return Err(EnqueueError::TooLarge(env));
        }
        let link = &h.link;
        if link.queued.load(Ordering::Relaxed) >= self.cfg.connections.outgoing_queue_size {
            link.m.queue_full.inc();
            return Err(EnqueueError::QueueFull(env));
        }
        let key = crate::hashing::key_hash(sender_key(&env.from, &self.global_host));
        let Some(conn) = h.pools.read().pick(key) else {
            return Err(EnqueueError::Unreachable(env));
        };
        link.queued.fetch_add(1, Ordering::Relaxed);
        if let Err(env) = conn.push(env) {
            link.release(1);
            return Err(EnqueueError::Unreachable(env));
        }
        if !conn.started.swap(true, Ordering::AcqRel) {
            self.rt.spawn(run_conn(self.ctx(), link.clone(), conn));
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
            ack_timeout: Duration::from_secs(self.cfg.connections.ack_timeout),
            given_back: self.given_back.clone(),
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
            self.reload_endpoints(&host).await;
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
            let read = self.reload_endpoints(h).await;
            if read {
                h.ready.send_replace(true);
            }
            read
        });
        let done = futures::future::join_all(reads).await;
        done.into_iter().filter(|&read| read).count()
    }

    /// Reads the endpoints of `h` and rebalances its pools; false (logged)
    /// when the store could not answer.
    async fn reload_endpoints(&self, h: &RemoteHost) -> bool {
        match self.fetch_endpoints(&h.name).await {
            Ok(eps) => {
                self.rebalance(h, eps);
                true
            }
            Err(e) => {
                tracing::warn!(what = "gd_endpoints_refresh_failed", host = %h.name, error = %e);
                false
            }
        }
    }

    /// New endpoint → new pool; vanished endpoint → pool disabled (no new
    /// traffic, drained, closed later by the disabled GC).
    fn rebalance(&self, host: &RemoteHost, eps: Vec<Endpoint>) {
        let per_endpoint = self.cfg.connections_per_endpoint();
        host.pools.write().rebalance(&host.name, eps, per_endpoint);
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
    /// closes every connection and returns what is left (TTL as queued).
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
                h.link.release(taken.len());
                left.extend(taken);
                c.wake.notify_one();
            }
        }
        left
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn ep(port: u16) -> Endpoint {
        Endpoint {
            host: "127.0.0.1".into(),
            port,
        }
    }

    #[test]
    fn rebalancing_adds_disables_and_reenables_pools() {
        let mut p = Pools::default();
        p.rebalance("dc2", vec![ep(2), ep(1), ep(1)], 2);
        assert_eq!(p.endpoints, [ep(1), ep(2)]);
        assert_eq!(p.conns.len(), 4);
        let first = p
            .enabled
            .iter()
            .find(|x| x.endpoint == ep(1))
            .cloned()
            .unwrap();
        p.rebalance("dc2", vec![ep(2)], 2);
        assert_eq!(
            (p.enabled.len(), p.disabled.len(), p.conns.len()),
            (1, 1, 2)
        );
        p.rebalance("dc2", vec![ep(1), ep(2)], 2);
        assert!(p.disabled.is_empty());
        let back = p.enabled.iter().find(|x| x.endpoint == ep(1)).unwrap();
        assert!(Arc::ptr_eq(back, &first), "the same pool, its queues kept");
    }

    #[tokio::test]
    async fn a_sender_key_stays_bound_and_moves_on_only_while_its_connection_fails() {
        let mut p = Pools::default();
        assert!(p.pick(7).is_none(), "no endpoint");
        p.rebalance("dc2", vec![ep(1)], 3);
        let bound = p.pick(7).unwrap();
        assert!(Arc::ptr_eq(&bound, &p.pick(7).unwrap()));
        assert!(Arc::ptr_eq(&bound, &p.conns[7 % 3]));
        bound.fail_for_test();
        let other = p.pick(7).unwrap();
        assert!(Arc::ptr_eq(&other, &p.conns[8 % 3]), "the next live one");
        for c in &p.conns {
            c.fail_for_test();
        }
        assert!(p.pick(7).is_none(), "every connection failing");
    }
}
