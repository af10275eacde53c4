//! What this node owns in the store, and the task that keeps it there.
//!
//! Every key a node writes carries a TTL (`expire_after`), so a node that
//! dies disappears by itself; a live node must therefore re-write all it owns
//! every `refresh_after` (SPEC 3). [`OwnedState`] is the one place that
//! remembers what that is; [`Refresher`] writes through it (session
//! open/close, domain register/unregister) and runs the periodic passes.
//!
//! A pass writes the node's meta first (endpoints, nodes-hash stamp with
//! dead-node pruning, `hosts` member, domains), then refreshes sessions with
//! compare-and-set in pipelined batches paced over most of the period, so the
//! store sees a steady trickle instead of one burst. Opens that failed
//! because the store was down are "pending" and retried every second as plain
//! `SET`s: a CAS refresh would be blocked forever by a stale foreign entry
//! that the lost open was meant to replace. Failures are logged and retried;
//! the next pass after the store returns restores everything owned. Passes
//! and pending retries go through [`Store::probing`]: they are the probes
//! that find a store known down back, while callers fail fast.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::stream::{FuturesUnordered, StreamExt};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::lease::SweepGuard;
use super::{NodeId, RefreshCount, Store, StoreError, BATCH};

const SESSION_SHARDS: usize = 64;
/// How often pending opens are retried while there are any.
pub const PENDING_RETRY: Duration = Duration::from_secs(1);
/// Share of the period a paced pass spreads its session batches over.
const PACE_NUM: u32 = 3;
const PACE_DEN: u32 = 4;
/// Separates resources in one bare JID's entry; XMPP forbids NUL in JIDs.
const SEP: char = '\0';
/// Marks an entry that is a whole key rather than a resource of the bare JID.
const WHOLE: char = '\u{1}';

/// One shard of the sessions: bare JID → its resources (see [`SEP`]).
type SessionShard = HashMap<Box<str>, Box<str>, foldhash::fast::RandomState>;

/// Sessions, domains and endpoints this node owns. Thread-safe.
///
/// Sessions are stored per bare JID as one boxed string of resources, which
/// keeps a typical session (one resource per bare JID) near 120 bytes: one
/// hash-table slot, the bare JID and the resource, no per-session `String`.
pub struct OwnedState {
    sessions: Vec<Mutex<SessionShard>>,
    /// Number of distinct keys (full + bare) the sessions stand for.
    session_keys: AtomicU64,
    domains: Mutex<BTreeMap<String, bool>>,
    endpoints: Mutex<Vec<(String, u16)>>,
    pending: Mutex<HashSet<Box<str>>>,
}

impl Default for OwnedState {
    fn default() -> Self {
        Self::new()
    }
}

/// The token stored for `full` under `bare`, and back.
fn token_of<'a>(full: &'a str, bare: &str) -> std::borrow::Cow<'a, str> {
    match full.strip_prefix(bare).and_then(|r| r.strip_prefix('/')) {
        Some(resource) if !resource.starts_with(WHOLE) => resource.into(),
        _ => format!("{WHOLE}{full}").into(),
    }
}

fn full_of(token: &str, bare: &str) -> String {
    match token.strip_prefix(WHOLE) {
        Some(whole) => whole.to_owned(),
        None => format!("{bare}/{token}"),
    }
}

impl OwnedState {
    pub fn new() -> Self {
        OwnedState {
            sessions: (0..SESSION_SHARDS)
                .map(|_| Mutex::new(SessionShard::default()))
                .collect(),
            session_keys: AtomicU64::new(0),
            domains: Mutex::new(BTreeMap::new()),
            endpoints: Mutex::new(Vec::new()),
            pending: Mutex::new(HashSet::new()),
        }
    }

    fn shard(&self, bare: &str) -> &Mutex<SessionShard> {
        &self.sessions[crate::hashing::index_of(bare, SESSION_SHARDS)]
    }

    /// Records a local session; returns the keys to write (full, bare).
    pub fn session_opened(&self, full: &str, bare: &str) -> Vec<String> {
        let token = token_of(full, bare);
        let mut shard = self.shard(bare).lock();
        let added = match shard.entry(bare.into()) {
            Entry::Vacant(v) => {
                v.insert(token.as_ref().into());
                1 + u64::from(full != bare)
            }
            Entry::Occupied(mut o) => {
                if o.get().split(SEP).any(|t| t == token) {
                    0
                } else {
                    let joined = format!("{}{SEP}{token}", o.get());
                    o.insert(joined.into_boxed_str());
                    u64::from(full != bare)
                }
            }
        };
        drop(shard);
        self.session_keys.fetch_add(added, Ordering::Relaxed);
        let mut keys = vec![full.to_owned()];
        if full != bare {
            keys.push(bare.to_owned());
        }
        keys
    }

    /// Forgets a local session; returns the keys to delete: the full JID,
    /// plus the bare JID when its last local resource closed. Empty when the
    /// session was not known.
    pub fn session_closed(&self, full: &str, bare: &str) -> Vec<String> {
        let token = token_of(full, bare);
        let mut shard = self.shard(bare).lock();
        let Entry::Occupied(mut o) = shard.entry(bare.into()) else {
            return Vec::new();
        };
        let rest: Vec<&str> = o.get().split(SEP).filter(|t| *t != token).collect();
        if rest.len() == o.get().split(SEP).count() {
            return Vec::new();
        }
        let mut keys = vec![full.to_owned()];
        let mut removed = u64::from(full != bare);
        if rest.is_empty() {
            o.remove();
            if full != bare {
                keys.push(bare.to_owned());
            }
            removed += 1;
        } else {
            let joined = rest.join(&SEP.to_string());
            o.insert(joined.into_boxed_str());
        }
        drop(shard);
        self.session_keys.fetch_sub(removed, Ordering::Relaxed);
        let mut pending = self.pending.lock();
        for k in &keys {
            pending.remove(k.as_str());
        }
        keys
    }

    /// Number of session keys (full and bare JIDs) owned.
    pub fn session_key_count(&self) -> u64 {
        self.session_keys.load(Ordering::Relaxed)
    }

    /// Whether `key` (a full or bare JID) is owned.
    pub fn owns_session_key(&self, key: &str) -> bool {
        let bare = key.split_once('/').map_or(key, |(b, _)| b);
        let shard = self.shard(bare).lock();
        shard
            .get(bare)
            .is_some_and(|tokens| key == bare || tokens.split(SEP).any(|t| full_of(t, bare) == key))
    }

    /// Whether this node holds the session a recipient names: `full` itself,
    /// or, for a bare JID (`full == bare`), any resource of that user. The
    /// routing fast path asks this for every stanza: no allocation, one
    /// shard lock held for a hash-table probe.
    pub fn holds_session(&self, full: &str, bare: &str) -> bool {
        if self.session_keys.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let shard = self.shard(bare).lock();
        let Some(tokens) = shard.get(bare) else {
            return false;
        };
        if full == bare {
            return true;
        }
        let resource = full.strip_prefix(bare).and_then(|r| r.strip_prefix('/'));
        tokens.split(SEP).any(|t| match t.strip_prefix(WHOLE) {
            Some(whole) => whole == full,
            None => resource == Some(t),
        })
    }

    /// Appends the keys of sessions shard `i` to `out`.
    fn shard_keys(&self, i: usize, out: &mut Vec<String>) {
        let shard = self.sessions[i].lock();
        for (bare, tokens) in shard.iter() {
            let mut bare_listed = false;
            for t in tokens.split(SEP) {
                let full = full_of(t, bare);
                bare_listed |= full.as_str() == bare.as_ref();
                out.push(full);
            }
            if !bare_listed {
                out.push(bare.to_string());
            }
        }
    }

    pub fn domain_registered(&self, domain: &str, public: bool) {
        self.domains.lock().insert(domain.to_owned(), public);
    }

    /// Returns whether the domain was owned.
    pub fn domain_unregistered(&self, domain: &str) -> bool {
        self.pending.lock().remove(domain);
        self.domains.lock().remove(domain).is_some()
    }

    /// Owned domains with their public flag.
    pub fn domains(&self) -> Vec<(String, bool)> {
        self.domains
            .lock()
            .iter()
            .map(|(d, p)| (d.clone(), *p))
            .collect()
    }

    pub fn set_endpoints(&self, endpoints: Vec<(String, u16)>) {
        *self.endpoints.lock() = endpoints;
    }

    pub fn endpoints(&self) -> Vec<(String, u16)> {
        self.endpoints.lock().clone()
    }

    /// Keys whose plain `SET` failed and must be retried as plain `SET`s.
    pub fn add_pending(&self, keys: &[String]) {
        let mut pending = self.pending.lock();
        pending.extend(keys.iter().map(|k| k.as_str().into()));
    }

    pub fn pending_count(&self) -> usize {
        self.pending.lock().len()
    }

    fn pending_snapshot(&self) -> Vec<String> {
        self.pending.lock().iter().map(|k| k.to_string()).collect()
    }

    /// Every owned session key (full and bare JIDs).
    fn session_keys(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..SESSION_SHARDS {
            self.shard_keys(i, &mut out);
        }
        out
    }

    fn owns_domain(&self, domain: &str) -> bool {
        self.domains.lock().contains_key(domain)
    }

    fn pending_done(&self, keys: &[String]) {
        let mut pending = self.pending.lock();
        for k in keys {
            pending.remove(k.as_str());
        }
    }
}

/// The owned session keys, shard by shard, in batches of at most [`BATCH`].
struct SessionBatches<'a> {
    state: &'a OwnedState,
    next_shard: usize,
    buf: Vec<String>,
}

impl<'a> SessionBatches<'a> {
    fn new(state: &'a OwnedState) -> Self {
        SessionBatches {
            state,
            next_shard: 0,
            buf: Vec::new(),
        }
    }
}

impl Iterator for SessionBatches<'_> {
    type Item = Vec<String>;

    fn next(&mut self) -> Option<Vec<String>> {
        while self.buf.len() < BATCH && self.next_shard < SESSION_SHARDS {
            self.state.shard_keys(self.next_shard, &mut self.buf);
            self.next_shard += 1;
        }
        if self.buf.is_empty() {
            return None;
        }
        let rest = self.buf.split_off(self.buf.len().min(BATCH));
        Some(std::mem::replace(&mut self.buf, rest))
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshStats {
    /// Keys written (sessions and domains refreshed by CAS, pending opens).
    pub written: u64,
    /// Keys left alone because another DC owns them now.
    pub foreign: u64,
    /// Session pipelines sent.
    pub batches: u64,
    /// Steps (meta parts or session batches) that failed; retried next pass.
    pub errors: u64,
    /// Keys those failed steps did not write: session keys of failed
    /// batches, domains, pending opens, and one per failed meta key (the
    /// node's stamp, its endpoints set).
    pub unrefreshed: u64,
    pub elapsed: Duration,
}

impl RefreshStats {
    fn add(&mut self, c: RefreshCount) {
        self.written += c.written;
        self.foreign += c.foreign;
    }
}

/// Writes this node's state through to the store and keeps it refreshed.
/// Cheap to clone: clones share the state.
#[derive(Clone)]
pub struct Refresher {
    store: Store,
    /// The same store for passes and pending retries: tried even while the
    /// store is known down, so the refresher keeps probing and restores
    /// everything owned as soon as it answers (caller-facing writes fail
    /// fast meanwhile).
    probe: Store,
    state: Arc<OwnedState>,
    me: NodeId,
    expire_after: Duration,
    refresh_after: Duration,
    /// Lease mode: session keys are written at login and deleted at
    /// logout only; a pass refreshes the lease (docs/REDIS.md).
    lease: Option<Arc<LeaseOwner>>,
}

/// What a node in lease mode remembers between passes.
struct LeaseOwner {
    /// TTL of session keys and of the `{sessions}` set.
    safety_ttl: Duration,
    /// When this refresher was built: leftovers of the node's previous life
    /// are swept one period later, once the host has re-opened what is
    /// still alive.
    born: Instant,
    reconciled: std::sync::atomic::AtomicBool,
    /// Unix second of the last stamp written (0: none yet).
    last_stamp: AtomicU64,
    /// Passes still to re-write every owned session (after a lost lease).
    rewrites_due: AtomicU64,
}

/// Stops the background tasks of [`Refresher::spawn`] when told or dropped.
pub struct RefresherHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RefresherHandle {
    /// Stops both tasks and waits for them to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Resolves when a stop was requested or the handle is gone.
async fn stopped(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl Refresher {
    pub fn new(
        store: Store,
        state: Arc<OwnedState>,
        me: NodeId,
        expire_after: Duration,
        refresh_after: Duration,
    ) -> Self {
        Refresher {
            probe: store.probing(),
            store,
            state,
            me,
            expire_after,
            refresh_after,
            lease: None,
        }
    }

    /// Lease mode, session keys living `safety_ttl` (`redis.ownership =
    /// "lease"`, `redis.lease_safety_ttl`).
    pub fn with_lease(mut self, safety_ttl: Duration) -> Self {
        self.lease = Some(Arc::new(LeaseOwner {
            safety_ttl,
            born: Instant::now(),
            reconciled: false.into(),
            last_stamp: AtomicU64::new(0),
            rewrites_due: AtomicU64::new(0),
        }));
        self
    }

    pub fn state(&self) -> &Arc<OwnedState> {
        &self.state
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn node(&self) -> &NodeId {
        &self.me
    }

    /// A session opened here: own it and `SET` its keys (newest login wins).
    /// If the store is down the keys become pending and are retried.
    pub async fn open_session(&self, full: &str, bare: &str) -> Result<(), StoreError> {
        let keys = self.state.session_opened(full, bare);
        self.open_keys(keys).await
    }

    /// A session closed here: disown it and delete its keys where ours.
    pub async fn close_session(&self, full: &str, bare: &str) -> Result<(), StoreError> {
        let keys = self.state.session_closed(full, bare);
        if keys.is_empty() {
            return Ok(());
        }
        match self.lease {
            Some(_) => self.store.delete_sessions_lease(&keys, &self.me).await,
            None => self.store.delete_sessions(&keys, &self.me.local_host).await,
        }
        .map(|_| ())
    }

    /// A subdomain registered here; on failure its key is pending and the
    /// next pass rewrites the sets.
    pub async fn register_domain(&self, domain: &str, public: bool) -> Result<(), StoreError> {
        self.state.domain_registered(domain, public);
        let res = self
            .store
            .register_domain(&self.me, domain, public, self.expire_after)
            .await;
        if res.is_err() {
            self.state.add_pending(&[domain.to_owned()]);
            self.pending_changed();
        }
        res
    }

    /// Tells the store's health (if any) how many opens are pending now.
    fn pending_changed(&self) {
        if let Some(h) = self.store.health() {
            h.set_pending(self.state.pending_count());
        }
    }

    pub async fn unregister_domain(&self, domain: &str) -> Result<(), StoreError> {
        self.state.domain_unregistered(domain);
        self.store.unregister_domain(&self.me, domain).await
    }

    /// Replaces the advertised endpoints and publishes them.
    pub async fn set_endpoints(&self, endpoints: Vec<(String, u16)>) -> Result<(), StoreError> {
        self.state.set_endpoints(endpoints.clone());
        self.store
            .publish_endpoints(&self.me, &endpoints, self.expire_after)
            .await
    }

    /// Plain `SET`s of session keys: with the local_host and `expire_after`,
    /// or in lease mode with the node's value and the safety TTL.
    async fn set_sessions(&self, store: &Store, keys: &[String]) -> Result<(), StoreError> {
        match &self.lease {
            Some(l) => {
                store
                    .open_sessions_lease(keys, &self.me, l.safety_ttl)
                    .await
            }
            None => {
                store
                    .open_sessions(keys, &self.me.local_host, self.expire_after)
                    .await
            }
        }
    }

    async fn open_keys(&self, keys: Vec<String>) -> Result<(), StoreError> {
        let res = self.set_sessions(&self.store, &keys).await;
        if let Err(e) = &res {
            tracing::warn!(what = "session_open_deferred", keys = keys.len(), error = %e);
            self.state.add_pending(&keys);
            self.pending_changed();
        }
        res
    }

    /// Retries pending opens as plain `SET`s; returns how many succeeded.
    pub async fn retry_pending(&self) -> Result<u64, StoreError> {
        // Domains are plain `SET`s in either mode; sessions per the mode.
        let (domains, keys): (Vec<String>, Vec<String>) = self
            .state
            .pending_snapshot()
            .into_iter()
            .partition(|k| self.state.owns_domain(k));
        let mut done = 0;
        if !domains.is_empty() {
            let written = self
                .probe
                .open_sessions(&domains, &self.me.local_host, self.expire_after)
                .await;
            if written.is_ok() {
                self.state.pending_done(&domains);
                done += domains.len() as u64;
            }
            self.pending_changed();
            written?;
        }
        for chunk in keys.chunks(BATCH) {
            let written = self.set_sessions(&self.probe, chunk).await;
            if written.is_ok() {
                self.state.pending_done(chunk);
                done += chunk.len() as u64;
            }
            self.pending_changed();
            written?;
        }
        Ok(done)
    }

    /// Writes the node's meta: endpoints, heartbeat (and dead-node pruning),
    /// domains. Each part is attempted even if an earlier one failed.
    ///
    /// The endpoints go first: the heartbeat puts this DC into `hosts`, and
    /// a peer that reads `hosts` at once (every `hosts_refresh_interval`)
    /// reads the new DC's endpoints next. Read before they exist, it would
    /// find none and not look again for
    /// `endpoint_refresh_interval_when_empty`, holding every stanza for the
    /// new DC in bounce meanwhile. The endpoints are awaited before the
    /// heartbeat is sent, so the order holds behind a proxy and on a
    /// cluster too (where the heartbeat's own stamp and `hosts` member,
    /// one batch on two slots, may land in either order).
    async fn refresh_meta(&self, stats: &mut RefreshStats) {
        let ttl = self.expire_after;
        let now = unix_now();
        let endpoints = self.state.endpoints();
        if let Err(e) = self
            .probe
            .publish_endpoints(&self.me, &endpoints, ttl)
            .await
        {
            stats.errors += 1;
            stats.unrefreshed += 1;
            tracing::warn!(what = "refresh_endpoints_failed", error = %e);
        }
        match self.probe.heartbeat_detail(&self.me, now, ttl).await {
            Ok(beat) => {
                if let Some(l) = &self.lease {
                    self.lease_beat(l, &beat, now, stats).await;
                }
            }
            Err(e) => {
                stats.errors += 1;
                stats.unrefreshed += 1;
                tracing::warn!(what = "refresh_heartbeat_failed", error = %e);
            }
        }
        let domains = self.state.domains();
        match self.probe.refresh_domains(&self.me, &domains, ttl).await {
            Ok(c) => stats.add(c),
            Err(e) => {
                stats.errors += 1;
                stats.unrefreshed += domains.len() as u64;
                tracing::warn!(what = "refresh_domains_failed", error = %e);
            }
        }
    }

    /// Lease mode, after the stamp: keep the `{sessions}` set alive, clean
    /// up after the dead nodes this stamp pruned, and notice a lost lease
    /// (the field was new although the node had stamped before, or the last
    /// stamp is older than `expire_after`): its keys may have been swept by
    /// a survivor, so every owned session is re-written (by CAS, never over
    /// a newer login elsewhere) on this pass and the next one, the second
    /// catching a sweep batch that was in flight.
    async fn lease_beat(
        &self,
        l: &LeaseOwner,
        beat: &super::Heartbeat,
        now: u64,
        stats: &mut RefreshStats,
    ) {
        let last = l.last_stamp.swap(now, Ordering::Relaxed);
        let lost =
            last != 0 && (beat.stamp_new || now.saturating_sub(last) > self.expire_after.as_secs());
        if lost {
            tracing::warn!(what = "lease_lost_rewriting_sessions", node = %self.me.node);
            l.rewrites_due.store(2, Ordering::Relaxed);
        }
        let set = super::keys::sessions(&self.me.local_host, &self.me.node);
        let expire = [super::Cmd::Expire {
            key: set,
            ttl_secs: super::ttl_secs(l.safety_ttl),
        }];
        if let Err(e) = self.probe.exec_batched(&expire).await {
            stats.errors += 1;
            stats.unrefreshed += 1;
            tracing::warn!(what = "refresh_sessions_set_failed", error = %e);
        }
        for dead in &beat.won {
            let swept = self
                .probe
                .sweep_sessions(&self.me.local_host, dead, SweepGuard::WhileAbsent, &|_| {
                    false
                })
                .await;
            match swept {
                Ok(s) => tracing::info!(what = "dead_node_sessions_swept", node = %dead,
                    scanned = s.scanned, deleted = s.deleted, aborted = s.aborted),
                Err(e) => {
                    stats.errors += 1;
                    tracing::warn!(what = "dead_node_sweep_failed", node = %dead, error = %e);
                }
            }
        }
    }

    /// Lease mode, once, a period after start: deletes the session keys of
    /// this node's previous life (listed in its `{sessions}` set, holding
    /// its value) that it does not hold now. Sessions the host re-opened
    /// meanwhile were never absent from the store.
    async fn reconcile(&self, l: &LeaseOwner, stats: &mut RefreshStats) {
        if l.reconciled.load(Ordering::Relaxed) || l.born.elapsed() < self.refresh_after * 9 / 10 {
            return;
        }
        let state = self.state.clone();
        let keep = move |k: &str| state.owns_session_key(k);
        let swept = self
            .probe
            .sweep_sessions(&self.me.local_host, &self.me.node, SweepGuard::Own, &keep)
            .await;
        match swept {
            Ok(s) => {
                l.reconciled.store(true, Ordering::Relaxed);
                if s.deleted > 0 {
                    tracing::info!(what = "stale_sessions_swept", deleted = s.deleted);
                }
            }
            Err(e) => {
                stats.errors += 1;
                tracing::warn!(what = "stale_sessions_sweep_failed", error = %e);
            }
        }
    }

    /// Lease mode: re-writes every owned session if a lost lease asked for
    /// it. Otherwise no session key is touched.
    async fn lease_rewrite(&self, l: &LeaseOwner, stats: &mut RefreshStats) {
        if l.rewrites_due.load(Ordering::Relaxed) == 0 {
            return;
        }
        let keys = self.state.session_keys();
        match self
            .probe
            .rewrite_sessions_lease(&keys, &self.me, l.safety_ttl)
            .await
        {
            Ok(c) => {
                stats.add(c);
                stats.batches += keys.len().div_ceil(BATCH) as u64;
                l.rewrites_due.fetch_sub(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.errors += 1;
                stats.unrefreshed += keys.len() as u64;
                tracing::warn!(what = "lease_rewrite_failed", error = %e);
            }
        }
    }

    /// One full pass. `paced` spreads the session batches over three
    /// quarters of `refresh_after`; unpaced sends them back to back.
    pub async fn run_once(&self, paced: bool) -> RefreshStats {
        let started = Instant::now();
        let mut stats = RefreshStats::default();
        if self.state.pending_count() > 0 {
            match self.retry_pending().await {
                Ok(n) => stats.written += n,
                Err(_) => {
                    stats.errors += 1;
                    stats.unrefreshed += self.state.pending_count() as u64;
                }
            }
        }
        self.refresh_meta(&mut stats).await;
        if let Some(l) = self.lease.clone() {
            self.lease_rewrite(&l, &mut stats).await;
            self.reconcile(&l, &mut stats).await;
            return self.pass_done(started, stats);
        }

        let expected = self.state.session_key_count().div_ceil(BATCH as u64).max(1);
        let gap = if paced {
            self.refresh_after * PACE_NUM / PACE_DEN / u32::try_from(expected).unwrap_or(u32::MAX)
        } else {
            Duration::ZERO
        };
        // Several pipelines in flight: with one, each batch waits a full
        // round trip and the store idles in between. Batches are built
        // lazily, so at most `concurrency` of them exist at a time; a paced
        // batch still waits for its slot, so the spread over the period holds.
        let mut batches = SessionBatches::new(&self.state);
        let mut in_flight = FuturesUnordered::new();
        let mut n = 0u32;
        loop {
            while in_flight.len() < self.store.concurrency() {
                let Some(keys) = batches.next() else { break };
                in_flight.push(self.session_batch(keys, started + gap * n));
                n = n.saturating_add(1);
            }
            match in_flight.next().await {
                Some(Ok(c)) => stats.add(c),
                Some(Err(keys)) => {
                    stats.errors += 1;
                    stats.unrefreshed += keys;
                }
                None => break,
            }
            stats.batches += 1;
        }
        self.pass_done(started, stats)
    }

    fn pass_done(&self, started: Instant, mut stats: RefreshStats) -> RefreshStats {
        stats.elapsed = started.elapsed();
        if let Some(h) = self.store.health() {
            h.pass_done(stats.elapsed, stats.unrefreshed, stats.errors == 0);
        }
        stats
    }

    /// Refreshes one batch of session keys once `due` has come.
    /// On failure, the number of keys left unrefreshed.
    async fn session_batch(&self, keys: Vec<String>, due: Instant) -> Result<RefreshCount, u64> {
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        self.probe
            .refresh_sessions(&keys, &self.me.local_host, self.expire_after)
            .await
            .map_err(|e| {
                tracing::warn!(what = "refresh_sessions_failed", keys = keys.len(), error = %e);
                keys.len() as u64
            })
    }

    /// Starts the periodic passes (the first one at once) and the pending
    /// retry loop (which also keeps the store-health gauges of pending
    /// opens and refresh lag current, every second) on the current tokio
    /// runtime.
    pub fn spawn(&self) -> RefresherHandle {
        let (tx, rx) = watch::channel(false);
        let passes = tokio::spawn(self.clone().pass_loop(rx.clone()));
        let pending = tokio::spawn(self.clone().pending_loop(rx));
        RefresherHandle {
            stop: tx,
            tasks: vec![passes, pending],
        }
    }

    async fn pass_loop(self, mut stop: watch::Receiver<bool>) {
        loop {
            let next = Instant::now() + self.refresh_after;
            tokio::select! {
                stats = self.run_once(true) => log_pass(&stats),
                _ = stopped(&mut stop) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next.into()) => {}
                _ = stopped(&mut stop) => return,
            }
        }
    }

    async fn pending_loop(self, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PENDING_RETRY) => {}
                _ = stopped(&mut stop) => return,
            }
            if let Some(h) = self.store.health() {
                h.set_pending(self.state.pending_count());
                h.update_lag();
            }
            if self.state.pending_count() == 0 {
                continue;
            }
            match self.retry_pending().await {
                Ok(n) => tracing::info!(what = "pending_opens_written", keys = n),
                Err(e) => tracing::debug!(what = "pending_opens_retry_failed", error = %e),
            }
        }
    }
}

fn log_pass(s: &RefreshStats) {
    if s.errors > 0 {
        tracing::warn!(
            what = "refresh_pass_incomplete",
            written = s.written,
            foreign = s.foreign,
            batches = s.batches,
            errors = s.errors,
            unrefreshed = s.unrefreshed,
            elapsed_ms = s.elapsed.as_millis() as u64
        );
    } else {
        tracing::debug!(
            what = "refresh_pass_done",
            written = s.written,
            foreign = s.foreign,
            batches = s.batches,
            elapsed_ms = s.elapsed.as_millis() as u64
        );
    }
}
