//! Recipient lookup (SPEC 5) over two caches (SPEC 4) in front of the store.
//!
//! The rules decide which key tells where a recipient lives; the caches
//! answer for that key when they can, the store otherwise:
//!
//! ```text
//! to ──> rules ──> Local                       (no key needed)
//!              └─> a session this node holds ──> Local  (before any cache)
//!              └─> domain key ──> domain cache ──> store
//!              └─> full, then bare JID key ──> JID cache ──> store
//! ```
//!
//! Cache values are `Some(local_host of the owning DC)`,
//! or `None` for a cached miss (only with `cache_missed`), so a JID nobody
//! is logged in as does not cost a store round trip per stanza.
//!
//! Metrics: each lookup counts one `mapping_fetches` and records its
//! duration in `mapping_fetch_time` (µs; 0 for an answer from the caches); a lookup that had to ask the store
//! (once or twice) counts one `mapping_cache_misses`. [`Mapping::lookup_cached`]
//! counts only when it answers: when it cannot, the caller goes on with
//! [`Mapping::lookup`], which counts then.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::ClockCache;
use crate::config::CacheConfig;
use crate::jid::{Jid, JidRef};
use crate::metrics::{names, Counter, Histogram, Metrics};
use crate::store::keys;
use crate::store::lease::{LeaseState, Leases};
use crate::store::{Cmd, OwnedState, Store, StoreError};

/// Bound on cached domains. Domains are subdomains of components and MUC
/// services of all DCs: thousands at most, so this is a safety net against
/// a flood of lookups for made-up domains rather than a tuning knob.
pub const DOMAIN_CACHE_CAPACITY: u64 = 100_000;

/// Where a recipient lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// This DC: the host routes the stanza itself.
    Local,
    /// Another DC, by its local_host.
    Remote(Arc<str>),
    /// No mapping anywhere (→ bounce).
    Unknown,
}

/// What a mapping value names: the owning DC and, for a lease-mode value
/// (`<local_host>{<node>}`, docs/REDIS.md "Lease mode"), the node whose
/// lease keeps the entry alive.
struct Owner {
    /// The value as stored.
    value: Box<str>,
    host: Arc<str>,
    node: Option<Box<str>>,
}

impl Owner {
    fn parse(value: &str) -> Owner {
        let (host, node) = keys::parse_owner(value);
        Owner {
            value: value.into(),
            host: Arc::from(host),
            node: node.map(Box::from),
        }
    }
}

/// A DC's (or node's) shared owner behind a thin pointer (see [`Cached`]).
type SharedHost = Arc<Owner>;

/// One cached answer: the DC (None: a cached miss) and when it expires.
/// 16 bytes: a fat `Arc<str>` beside the expiry would make it 24, and every
/// cache entry (key, value, flag: 40 bytes) 8 bytes larger.
#[derive(Clone)]
struct Cached {
    host: Option<SharedHost>,
    expires_ms: u64,
}

/// A [`ClockCache`] whose entries expire on a lifetime kept in the entry:
/// a stale entry is a miss, overwritten by the next fetch or taken by the
/// clock hand, read or not, when its shard is full. The bound counts stale
/// entries too, so they never pass it. The only clock a read takes is one
/// [`coarse_now_ms`].
struct TtlCache {
    cache: ClockCache<Cached>,
    lifetime_ms: u64,
    capacity: u64,
}

impl TtlCache {
    fn new(capacity: u64, lifetime: Duration) -> TtlCache {
        TtlCache {
            cache: ClockCache::new(capacity),
            lifetime_ms: u64::try_from(lifetime.as_millis()).unwrap_or(u64::MAX),
            capacity,
        }
    }

    /// The cached answer, unless absent or expired.
    fn get(&self, key: &str) -> Option<Option<SharedHost>> {
        let e = self.cache.get(key)?;
        (e.expires_ms > coarse_now_ms()).then_some(e.host)
    }

    /// A lifetime or a capacity of 0 means "do not cache": nothing is kept.
    fn disabled(&self) -> bool {
        self.lifetime_ms == 0 || self.capacity == 0
    }

    fn insert(&self, key: &str, host: Option<SharedHost>) {
        if self.disabled() {
            return;
        }
        let now = coarse_now_ms();
        let expires_ms = now.saturating_add(self.lifetime_ms);
        self.cache
            .insert(key, Cached { host, expires_ms }, |e| e.expires_ms <= now);
    }

    /// Caches a fetched answer unless a fresh one was written meanwhile
    /// (a session opened here during the fetch is newer than the store).
    fn insert_unless_fresh(&self, key: &str, host: Option<SharedHost>) {
        if self.disabled() {
            return;
        }
        let now = coarse_now_ms();
        let fresh = Cached {
            host,
            expires_ms: now.saturating_add(self.lifetime_ms),
        };
        self.cache.upsert(
            key,
            fresh,
            |old| old.expires_ms > now,
            |e| e.expires_ms <= now,
        );
    }

    fn invalidate(&self, key: &str) {
        self.cache.invalidate(key);
    }
}

/// Milliseconds of a monotonic clock at the resolution of the kernel tick
/// (a few ms): plenty for lifetimes counted in seconds, and read from the
/// vDSO without the cost of a precise clock on every lookup.
pub(crate) fn coarse_now_ms() -> u64 {
    #[cfg(target_os = "linux")]
    {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the call only
        // writes into it.
        if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0 {
            return (ts.tv_sec as u64)
                .saturating_mul(1000)
                .saturating_add(ts.tv_nsec as u64 / 1_000_000);
        }
    }
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Owners (DCs, and nodes in lease mode) a runtime has seen more than this
/// many of are no longer shared.
const MAX_SHARED_HOSTS: usize = 256;

/// One shared `Arc<str>` per DC host name, so that a million cached JIDs
/// pointing at a handful of DCs do not hold a million copies of their names.
/// Bounded: host names come from the store and the wire, and past
/// [`MAX_SHARED_HOSTS`] a name is simply allocated per entry as before.
#[derive(Default)]
struct HostNames(parking_lot::RwLock<Vec<SharedHost>>);

impl HostNames {
    fn get(&self, name: &str) -> SharedHost {
        if let Some(h) = self.0.read().iter().find(|h| *h.value == *name) {
            return Arc::clone(h);
        }
        let mut names = self.0.write();
        if let Some(h) = names.iter().find(|h| *h.value == *name) {
            return Arc::clone(h);
        }
        let host: SharedHost = Arc::new(Owner::parse(name));
        if names.len() < MAX_SHARED_HOSTS {
            names.push(Arc::clone(&host));
        }
        host
    }
}

/// Which key decides, per the rules of SPEC 5.
enum Plan<'a> {
    Local,
    Domain(&'a str),
    /// Full JID key, then bare JID key (equal for a bare recipient).
    Jid {
        full: &'a str,
        bare: &'a str,
    },
}

/// The session/routing table as seen through the caches.
#[derive(Clone)]
pub struct Mapping {
    global_host: Arc<str>,
    local_host: Arc<str>,
    cache_missed: bool,
    jids: Arc<TtlCache>,
    domains: Arc<TtlCache>,
    hosts: Arc<HostNames>,
    store: Store,
    /// Sessions this node holds: always local, asked before the caches
    /// (a flushed or restarted store must not send them elsewhere).
    owned: Option<Arc<OwnedState>>,
    /// This node's name: an entry naming it that it does not hold is a
    /// leftover of its previous life (lease mode).
    node: Option<Arc<str>>,
    /// Leases of the nodes lease-mode values name; without it such values
    /// are taken as they are.
    leases: Option<Arc<Leases>>,
    fetches: Arc<Counter>,
    cache_misses: Arc<Counter>,
    fetch_time: Arc<Histogram>,
}

impl Mapping {
    pub fn new(
        global_host: &str,
        local_host: &str,
        cache: &CacheConfig,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Mapping {
        let jids = Arc::new(TtlCache::new(
            cache.max_jids,
            Duration::from_secs(cache.jid_lifetime_seconds),
        ));
        let domains = Arc::new(TtlCache::new(
            DOMAIN_CACHE_CAPACITY,
            Duration::from_secs(cache.domain_lifetime_seconds),
        ));
        Mapping {
            global_host: Arc::from(global_host),
            local_host: Arc::from(local_host),
            cache_missed: cache.cache_missed,
            jids,
            domains,
            hosts: Arc::default(),
            store,
            owned: None,
            node: None,
            leases: None,
            fetches: metrics.counter(names::MAPPING_FETCHES),
            cache_misses: metrics.counter(names::MAPPING_CACHE_MISSES),
            fetch_time: metrics.histogram(names::MAPPING_FETCH_TIME),
        }
    }

    /// Makes the sessions of `owned` (what this node holds) answer `Local`
    /// before the caches and the store are asked.
    pub fn with_owned(mut self, owned: Arc<OwnedState>) -> Mapping {
        self.owned = Some(owned);
        self
    }

    /// Checks the leases of lease-mode values (`node` is this node's name).
    pub fn with_leases(mut self, node: &str, leases: Arc<Leases>) -> Mapping {
        self.node = Some(Arc::from(node));
        self.leases = Some(leases);
        self
    }

    pub fn leases(&self) -> Option<&Arc<Leases>> {
        self.leases.as_ref()
    }

    /// What a cached or fetched owner means for routing: `Some(None)` for an
    /// entry that counts as absent (its node's lease lapsed, or it names
    /// this node, which does not hold it), `None` when the lease view in
    /// memory is too old to tell (only [`Mapping::lookup`] can).
    fn live_cached(&self, owner: Option<SharedHost>) -> Option<Option<SharedHost>> {
        let Some(o) = owner else { return Some(None) };
        let Some(node) = o.node.as_deref() else {
            return Some(Some(o));
        };
        if self.is_me(&o, node) {
            return Some(None);
        }
        let Some(leases) = &self.leases else {
            return Some(Some(o));
        };
        match leases.state_cached(&o.host, node)? {
            LeaseState::Live => Some(Some(o)),
            LeaseState::Lapsed | LeaseState::Absent => Some(None),
        }
    }

    /// This node's own lease-mode entry: it holds no such session (the
    /// caller asked [`Mapping::held_here`] first), so it is a leftover.
    fn is_me(&self, o: &Owner, node: &str) -> bool {
        *o.host == *self.local_host && self.node.as_deref() == Some(node)
    }

    /// [`Mapping::live_cached`], reading the lease when needed. An entry
    /// whose node's lease lapsed is deleted where it still holds that
    /// node's value (lazy cleanup, in the background).
    async fn live(
        &self,
        key: &str,
        owner: Option<SharedHost>,
    ) -> Result<Option<Arc<str>>, StoreError> {
        if let Some(v) = self.live_cached(owner.clone()) {
            return Ok(v.map(|o| Arc::clone(&o.host)));
        }
        let (Some(o), Some(leases)) = (owner, &self.leases) else {
            return Ok(None);
        };
        let node = o.node.as_deref().unwrap_or_default();
        match leases.state(&o.host, node).await? {
            LeaseState::Live => Ok(Some(Arc::clone(&o.host))),
            LeaseState::Absent => Ok(None),
            LeaseState::Lapsed => {
                self.delete_lapsed(key, &o.value);
                Ok(None)
            }
        }
    }

    fn delete_lapsed(&self, key: &str, value: &str) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = self.store.clone();
        let cmd = Cmd::DeleteIfOurs {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        rt.spawn(async move {
            if let Err(e) = store.exec_batched(std::slice::from_ref(&cmd)).await {
                tracing::debug!(what = "lapsed_entry_delete_failed", error = %e);
            }
        });
    }

    /// Whether `to` is a session held by this node: its full JID, or any
    /// resource of the user when `to` is a bare JID (what the store's bare
    /// key, owned while a resource is logged in here, would say).
    fn held_here(&self, full: &str, bare: &str) -> bool {
        self.owned
            .as_ref()
            .is_some_and(|o| o.holds_session(full, bare))
    }

    pub fn global_host(&self) -> &str {
        &self.global_host
    }

    pub fn local_host(&self) -> &str {
        &self.local_host
    }

    /// MongooseIM's guard against poisoning the cache: a stanza between two
    /// sessions of one user is never routed globally.
    pub fn is_same_user(from: &Jid, to: &Jid) -> bool {
        from.same_user(to)
    }

    /// Answers from the rules and the caches alone (no I/O, no allocation on
    /// a hit); `None` means the store must be asked through [`lookup`].
    ///
    /// [`lookup`]: Mapping::lookup
    pub fn lookup_cached(&self, to: &Jid) -> Option<Location> {
        self.lookup_cached_view(to.view())
    }

    /// [`Mapping::lookup_cached`] for a borrowed JID (see [`JidRef`]).
    pub fn lookup_cached_view(&self, to: JidRef<'_>) -> Option<Location> {
        let location = match self.plan(to) {
            Plan::Local => Location::Local,
            // `?`: not in the cache, only the store can tell. A cached
            // `None` is a cached miss.
            Plan::Domain(d) => self.resolve(self.live_cached(self.domains.get(d)?)?),
            Plan::Jid { full, bare } if self.held_here(full, bare) => Location::Local,
            Plan::Jid { full, bare } => match self.live_cached(self.jids.get(full)?)? {
                Some(owner) => self.location_of(Arc::clone(&owner.host)),
                None if full == bare => Location::Unknown,
                None => self.resolve(self.live_cached(self.jids.get(bare)?)?),
            },
        };
        // An answer from memory takes a fraction of a microsecond, so it is
        // recorded as 0 µs without reading the clock (a reading per stanza
        // was 3 % of the transport's CPU time).
        self.fetches.inc();
        self.fetch_time.record(0);
        Some(location)
    }

    /// The six rules of SPEC 5, asking the store for what the caches do not
    /// know. Store errors are returned as they are: the router decides.
    pub async fn lookup(&self, to: &Jid) -> Result<Location, StoreError> {
        let start = Instant::now();
        let mut asked_store = false;
        let result = self.lookup_inner(to, &mut asked_store).await;
        if asked_store {
            self.cache_misses.inc();
        }
        self.count_fetch(start);
        result
    }

    async fn lookup_inner(&self, to: &Jid, asked: &mut bool) -> Result<Location, StoreError> {
        match self.plan(to.view()) {
            Plan::Local => Ok(Location::Local),
            Plan::Domain(d) => {
                let owner = self.fetch(&self.domains, d, asked).await?;
                Ok(self.resolve_host(self.live(d, owner).await?))
            }
            Plan::Jid { full, bare } => {
                if self.held_here(full, bare) {
                    return Ok(Location::Local);
                }
                let owner = self.fetch(&self.jids, full, asked).await?;
                if let Some(host) = self.live(full, owner).await? {
                    return Ok(self.location_of(host));
                }
                if full == bare {
                    return Ok(Location::Unknown);
                }
                let owner = self.fetch(&self.jids, bare, asked).await?;
                Ok(self.resolve_host(self.live(bare, owner).await?))
            }
        }
    }

    fn plan<'a>(&self, to: JidRef<'a>) -> Plan<'a> {
        let domain = to.domain();
        let is_local = domain == &*self.local_host;
        let is_global = domain == &*self.global_host;
        match to.user() {
            None if is_local || is_global => Plan::Local, // rule 1
            None => Plan::Domain(domain),                 // rule 2
            Some(_) if is_local => Plan::Local,           // rule 3
            Some(_) if is_global => Plan::Jid {
                full: to.as_full_str(),
                bare: to.as_bare_str(),
            }, // rule 4
            Some(_) => Plan::Domain(domain),              // rule 5
        }
    }

    /// The mapping of one key, from the cache or else the store; fills the
    /// cache with what the store said (a miss only with `cache_missed`).
    async fn fetch(
        &self,
        cache: &TtlCache,
        key: &str,
        asked: &mut bool,
    ) -> Result<Option<SharedHost>, StoreError> {
        if let Some(v) = cache.get(key) {
            return Ok(v);
        }
        *asked = true;
        let value = self.store.get(key).await?.map(|h| self.hosts.get(&h));
        if value.is_some() || self.cache_missed {
            // Only into a gap: a session opened (or an origin hint taken)
            // while the GET was in flight is newer than what the store said,
            // and overwriting it would misroute that user for a lifetime.
            cache.insert_unless_fresh(key, value.clone());
        }
        Ok(value)
    }

    /// Rule 6 for a missing mapping, else the location of the owning DC.
    fn resolve(&self, owner: Option<SharedHost>) -> Location {
        match owner {
            Some(o) => self.location_of(Arc::clone(&o.host)),
            None => Location::Unknown,
        }
    }

    fn resolve_host(&self, host: Option<Arc<str>>) -> Location {
        match host {
            Some(h) => self.location_of(h),
            None => Location::Unknown,
        }
    }

    fn location_of(&self, host: Arc<str>) -> Location {
        if *host == *self.local_host {
            Location::Local
        } else {
            Location::Remote(host)
        }
    }

    fn count_fetch(&self, start: Instant) {
        self.fetches.inc();
        let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.fetch_time.record(micros);
    }

    /// A session was opened (here or, learned otherwise, elsewhere): `key`
    /// (full or bare JID) lives at `host`. Called before the store write so
    /// that routing sees the session at once.
    pub fn insert_session(&self, key: &str, host: &str) {
        self.jids.insert(key, Some(self.hosts.get(host)));
    }

    /// Forgets `key` so that the next lookup reads the store (bounce does
    /// this before each retry).
    pub fn remove_jid(&self, key: &str) {
        self.jids.invalidate(key);
    }

    pub fn insert_domain(&self, domain: &str, host: &str) {
        self.domains.insert(domain, Some(self.hosts.get(host)));
    }

    pub fn remove_domain(&self, domain: &str) {
        self.domains.invalidate(domain);
    }

    /// Origin hint (SPEC 6.4): a stanza from `sender` arrived from the DC
    /// `origin_host`, so that is where the sender lives, even before the
    /// store has replicated its session. Applied only when the local cache
    /// has no mapping for the sender (absent or a cached miss): a known
    /// mapping is fresher than a hint, and the store is not asked on the
    /// receive path. Only users of global_host are hinted, since those are
    /// the only JIDs looked up by JID (rule 4); a hint naming this DC says
    /// nothing new, as our own sessions are inserted when they open.
    /// Returns whether the cache was changed.
    pub fn insert_origin_hint(&self, sender: &Jid, origin_host: &str) -> bool {
        if sender.user().is_none()
            || sender.domain() != &*self.global_host
            || origin_host.is_empty()
            || origin_host == &*self.local_host
        {
            return false;
        }
        let known = |key: &str| matches!(self.jids.get(key), Some(Some(_)));
        if known(sender.as_full_str()) {
            return false;
        }
        let origin = self.hosts.get(origin_host);
        self.jids
            .insert(sender.as_full_str(), Some(Arc::clone(&origin)));
        if !sender.is_bare() && !known(sender.as_bare_str()) {
            self.jids.insert(sender.as_bare_str(), Some(origin));
        }
        true
    }

    /// Whether [`Mapping::cache_origin`] would cache anything for `sender`:
    /// a user of global_host, or a domain other than global_host and
    /// local_host.
    pub(crate) fn caches_origin_of(&self, sender: &Jid) -> bool {
        matches!(
            (sender.user(), self.plan(sender.view())),
            (None, Plan::Domain(_)) | (Some(_), Plan::Jid { .. })
        )
    }

    /// `cache_origin` (MongooseIM's `maybe_update_mapping/2`): a stanza
    /// from `sender` entered global routing at `origin_host`, and a lookup
    /// found the sender nowhere, so the caches (never the store) learn that
    /// the sender lives there. A user of global_host is cached under its
    /// full and bare JIDs, a domain sender (no user part) as a domain;
    /// anything else is never looked up by that key and is left alone.
    /// A fresh mapping written meanwhile is kept. Returns whether the cache
    /// was changed.
    pub(crate) fn cache_origin(&self, sender: &Jid, origin_host: &str) -> bool {
        if !self.caches_origin_of(sender) {
            return false;
        }
        let origin = self.hosts.get(origin_host);
        let known = |cache: &TtlCache, key: &str| matches!(cache.get(key), Some(Some(_)));
        match self.plan(sender.view()) {
            Plan::Domain(d) => {
                if known(&self.domains, d) {
                    return false;
                }
                self.domains.insert(d, Some(origin));
                true
            }
            Plan::Jid { full, bare } => {
                if known(&self.jids, full) {
                    return false;
                }
                self.jids.insert(full, Some(Arc::clone(&origin)));
                if full != bare && !known(&self.jids, bare) {
                    self.jids.insert(bare, Some(origin));
                }
                true
            }
            Plan::Local => false,
        }
    }

    /// Nothing to do: the caches evict as they insert, and expired entries
    /// are overwritten or evicted in place. Kept for callers that ran the
    /// caches' maintenance before reading the counts below.
    pub fn run_pending_tasks(&self) {}

    /// Number of cached JID entries, expired ones not yet overwritten or
    /// evicted included.
    pub fn cached_jids(&self) -> u64 {
        self.jids.cache.len() as u64
    }

    pub fn cached_domains(&self) -> u64 {
        self.domains.cache.len() as u64
    }
}
