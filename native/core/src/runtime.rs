//! The Runtime: one node of one datacenter. It owns its tokio runtime, the
//! store, the mapping caches, the metrics, the transport and every
//! background task (store refresher, hosts refresher, endpoint rebalancing,
//! disabled-pool GC, bounce retries). Several runtimes can live in one
//! process; each has its own threads.
//!
//! Calls come in two shapes: `async fn`s for hosts that run their own
//! executor or hand futures to [`Runtime::spawn`], and blocking wrappers
//! (`*_blocking`) for plain threads. Blocking wrappers must not be called
//! from a runtime thread (e.g. inside a [`Delivery`] callback).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::config::{Config, ConfigError, Endpoint, Ownership};
use crate::jid::Jid;
use crate::mapping::{Location, Mapping};
use crate::metrics::Metrics;
use crate::routing::{Delivery, Envelope, Meta, Reason, RouteResult, Router};
use crate::store::lease::Leases;
use crate::store::refresher::{OwnedState, Refresher, RefresherHandle};
use crate::store::{
    backend_for, keys, start_check, Backend, HealthReport, NodeId, Store, StoreError, StoreHealth,
};
use crate::transport::frame::PayloadKind;
use crate::transport::listener::{bind_all, Receiver};
use crate::transport::outgoing::Outgoing;
use crate::transport::tls::{TlsError, TlsSetup};
use crate::transport::TransportError;

/// Why a runtime could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The store did not answer the start-time check (`redis.start_timeout_ms`).
    #[error("start: {0}")]
    StoreCheck(String),
    #[error("{0}")]
    Transport(#[from] TransportError),
    #[error("cannot start the runtime's threads: {0}")]
    Threads(std::io::Error),
}

/// Why [`Runtime::cache_origin`] refused.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// Remote input must not create state for arbitrary names.
    #[error("origin {0:?} is neither this datacenter's local_host nor a datacenter of the store's `hosts` set")]
    UnknownOrigin(String),
    #[error("cannot check origin {host:?} against the store's `hosts` set: {error}")]
    Store { host: String, error: StoreError },
    #[error("the runtime has stopped")]
    Stopped,
}

/// Where a session's store write stands when `session_opened` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionWrite {
    /// Its keys (full and bare JID) are in the store.
    Confirmed,
    /// The store could not be written: the keys are *pending opens*, retried
    /// every second by the refresher. Routing here already finds the user;
    /// other DCs find them once the write lands.
    Pending,
}

/// Knobs that are not part of the product configuration.
#[derive(Clone)]
pub struct StartOptions {
    /// Use this store instead of building one from the configuration
    /// (several runtimes of one process sharing an embedded store).
    pub backend: Option<Arc<dyn Backend>>,
    /// Threads of the runtime's tokio runtime.
    pub worker_threads: usize,
    /// Dispatch shards for received stanzas.
    pub dispatch_shards: usize,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            backend: None,
            worker_threads: 2,
            dispatch_shards: 4,
        }
    }
}

/// What a stop did with what was still in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopReport {
    /// Stanzas reported undeliverable (reason `stopped`): still queued
    /// towards another DC when the deadline passed, or held by bounce for
    /// a DC that could not take them.
    pub undeliverable: usize,
    /// Stanzas held by bounce for a recipient found nowhere, handed to the
    /// host's local routing (`Delivered::unrouted == Some(Stopped)`).
    pub unrouted: usize,
}

struct Inner {
    config: Config,
    local_host: Arc<str>,
    store: Store,
    health: Arc<StoreHealth>,
    mapping: Arc<Mapping>,
    metrics: Arc<Metrics>,
    refresher: Refresher,
    router: Arc<Router>,
    outgoing: Arc<Outgoing>,
    receiver: Arc<Receiver>,
    listen_addrs: Vec<SocketAddr>,
    stop_tx: watch::Sender<bool>,
    refresher_task: Mutex<Option<RefresherHandle>>,
}

/// One node of one datacenter.
pub struct Runtime {
    inner: Arc<Inner>,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl Runtime {
    /// Starts a runtime: store, listeners, background tasks.
    pub fn start(config: Config, delivery: Arc<dyn Delivery>) -> Result<Runtime, StartError> {
        Runtime::start_with(config, delivery, StartOptions::default())
    }

    pub fn start_with(
        config: Config,
        delivery: Arc<dyn Delivery>,
        opts: StartOptions,
    ) -> Result<Runtime, StartError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(opts.worker_threads.max(1))
            .thread_name(format!("gd-{}", config.local_host))
            .enable_all()
            .build()
            .map_err(StartError::Threads)?;
        let handle = rt.handle().clone();
        let inner = rt.block_on(build(config, delivery, opts, handle.clone()))?;
        Ok(Runtime {
            inner: Arc::new(inner),
            rt: Mutex::new(Some(rt)),
            handle,
        })
    }

    /// Runs `fut` on this runtime's threads and waits for it. Not from a
    /// runtime thread.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.handle.block_on(fut)
    }

    /// Runs `fut` on this runtime's threads.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut)
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    pub fn local_host(&self) -> &str {
        &self.inner.local_host
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn mapping(&self) -> &Arc<Mapping> {
        &self.inner.mapping
    }

    pub fn outgoing(&self) -> &Arc<Outgoing> {
        &self.inner.outgoing
    }

    /// Addresses the listeners are bound to (port 0 resolved).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.inner.listen_addrs
    }

    /// Stanzas held by bounce.
    pub fn bounce_queue_size(&self) -> usize {
        self.inner.router.bounce.len()
    }

    /// Starts `fut` on this runtime's threads now (so the work happens even
    /// if the returned future is dropped) and returns its outcome; `stopped`
    /// stands in when the runtime went away first.
    fn on_runtime<T: Send + 'static>(
        &self,
        fut: impl Future<Output = T> + Send + 'static,
        stopped: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = T> + Send + 'static {
        let h = self.handle.spawn(fut);
        async move { h.await.unwrap_or_else(|_| stopped()) }
    }

    /// A user's session opened here: the newest login wins (plain SET).
    /// Answers whether the store write is confirmed or pending (retried by
    /// the refresher); `Pending` too when the runtime stopped meanwhile.
    pub fn session_opened(&self, jid: &Jid) -> impl Future<Output = SessionWrite> + Send + 'static {
        let (inner, jid) = (self.inner.clone(), jid.clone());
        self.on_runtime(async move { inner.session_opened(&jid).await }, || {
            SessionWrite::Pending
        })
    }

    /// The store's health, for a load balancer's check: one `GET` of the
    /// health sentinel (failing at once while the store is known down, else
    /// within `redis.timeout_ms`), then errors by kind, pending opens and
    /// the refresh's age and lag (docs/REDIS.md, "Store health").
    pub fn store_health(&self) -> impl Future<Output = HealthReport> + Send + 'static {
        let inner = self.inner.clone();
        let kind = self.inner.store.backend().kind();
        self.on_runtime(
            async move {
                // The outcome is counted by the store's health itself.
                let _ = inner.store.get(keys::HEALTH_SENTINEL).await;
                inner.health.report(
                    inner.store.backend().kind(),
                    inner.refresher.state().pending_count(),
                )
            },
            move || HealthReport::stopped(kind),
        )
    }

    /// A user's session closed here: its keys are removed where still ours.
    pub fn session_closed(&self, jid: &Jid) -> impl Future<Output = ()> + Send + 'static {
        let (inner, jid) = (self.inner.clone(), jid.clone());
        self.on_runtime(async move { inner.session_closed(&jid).await }, || ())
    }

    /// A component/MUC subdomain served here; `public` lists it in disco.
    pub fn register_subhost(
        &self,
        domain: &str,
        public: bool,
    ) -> impl Future<Output = ()> + Send + 'static {
        let (inner, domain) = (self.inner.clone(), domain.to_owned());
        self.on_runtime(
            async move { inner.register_subhost(&domain, public).await },
            || (),
        )
    }

    pub fn unregister_subhost(&self, domain: &str) -> impl Future<Output = ()> + Send + 'static {
        let (inner, domain) = (self.inner.clone(), domain.to_owned());
        self.on_runtime(
            async move { inner.unregister_subhost(&domain).await },
            || (),
        )
    }

    /// Public subdomains of every datacenter (disco items).
    pub fn public_domains(
        &self,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send + 'static {
        self.domains(true)
    }

    /// The domains of every datacenter: the public ones only, or all of
    /// them (hidden component domains included; disco for servers, and for
    /// users where the host lets them see hidden services).
    pub fn domains(
        &self,
        public_only: bool,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send + 'static {
        let store = self.inner.store.clone();
        self.on_runtime(
            async move { store.domains(public_only).await },
            stopped_store,
        )
    }

    /// Metadata for a stanza entering global routing here.
    pub fn new_meta(&self) -> Meta {
        self.inner.router.new_meta()
    }

    /// Builds the envelope of a stanza submitted by the host.
    pub fn envelope(&self, from: Jid, to: Jid, kind: PayloadKind, payload: Bytes) -> Envelope {
        Envelope::new(from, to, kind, payload, self.new_meta())
    }

    /// route() without waiting: `Err(env)` when the store or a new
    /// connection pool is needed; then call [`Runtime::route`].
    pub fn try_route(&self, env: Envelope) -> Result<RouteResult, Envelope> {
        self.inner.router.try_route(env)
    }

    /// route(): local, forwarded, stored or undeliverable.
    pub fn route(&self, env: Envelope) -> impl Future<Output = RouteResult> + Send + 'static {
        let env = match self.inner.router.try_route(env) {
            Ok(r) => return futures::future::Either::Left(std::future::ready(r)),
            Err(env) => env,
        };
        let router = self.inner.router.clone();
        futures::future::Either::Right(
            self.on_runtime(async move { router.route(env).await }, || {
                RouteResult::Undeliverable(Reason::Stopped)
            }),
        )
    }

    /// Where `to` is, per the lookup rules.
    pub fn lookup(
        &self,
        to: &Jid,
    ) -> impl Future<Output = Result<Location, StoreError>> + Send + 'static {
        let (mapping, to) = (self.inner.mapping.clone(), to.clone());
        self.on_runtime(async move { mapping.lookup(&to).await }, stopped_store)
    }

    /// `cache_origin` without waiting: `None` when the store must be asked
    /// (the sender is not in the caches, or the origin is not a datacenter
    /// this runtime already knows); then call [`Runtime::cache_origin`].
    pub fn try_cache_origin(
        &self,
        sender: &Jid,
        origin_host: &str,
    ) -> Option<Result<bool, OriginError>> {
        let inner = &self.inner;
        if !inner.known_origin(origin_host) {
            return None;
        }
        if !inner.mapping.caches_origin_of(sender) {
            return Some(Ok(false));
        }
        match inner.mapping.lookup_cached(sender)? {
            Location::Unknown => Some(Ok(inner.mapping.cache_origin(sender, origin_host))),
            Location::Local | Location::Remote(_) => Some(Ok(false)),
        }
    }

    /// A stanza from `sender` entered global routing at `origin_host`
    /// (MongooseIM's `maybe_update_mapping/2`, run on the node of the
    /// component the stanza is for): if a lookup finds the sender nowhere,
    /// the caches learn `sender → origin_host` so that the answer can be
    /// routed before the store replicates. Never writes the store. A user of
    /// global_host is cached by JID (full and bare), a domain sender (no
    /// user part, not global_host) as a domain; other senders are left
    /// alone. The caller skips `presence type='unavailable'`, as MongooseIM.
    /// `origin_host` must be this DC's local_host or a datacenter of the
    /// `hosts` set, else `UnknownOrigin`. `Ok(true)` when the cache changed.
    pub fn cache_origin(
        &self,
        sender: &Jid,
        origin_host: &str,
    ) -> impl Future<Output = Result<bool, OriginError>> + Send + 'static {
        if let Some(r) = self.try_cache_origin(sender, origin_host) {
            return futures::future::Either::Left(std::future::ready(r));
        }
        let (inner, sender, origin) = (self.inner.clone(), sender.clone(), origin_host.to_owned());
        futures::future::Either::Right(self.on_runtime(
            async move { inner.cache_origin(&sender, &origin).await },
            || Err(OriginError::Stopped),
        ))
    }

    /// Runs the store refresh cycle now (what the refresher does every
    /// `redis.refresh_after`): re-writes everything this node owns (its
    /// sessions and domains by compare-and-set, its endpoints, its stamp in
    /// `<local_host>#{nodes}` pruning dead nodes' fields, its `hosts`
    /// member) and retries pending session writes. It reads nothing about
    /// other datacenters: see [`Runtime::rebalance_now`] and
    /// [`Runtime::refresh_hosts_now`].
    pub fn refresh_now(&self) -> impl Future<Output = ()> + Send + 'static {
        let refresher = self.inner.refresher.clone();
        self.on_runtime(
            async move {
                refresher.run_once(false).await;
            },
            || (),
        )
    }

    /// Reads `hosts` now (the periodic hosts refresh, at once): pools are
    /// prepared for datacenters not seen before.
    pub fn refresh_hosts_now(&self) -> impl Future<Output = ()> + Send + 'static {
        let out = self.inner.outgoing.clone();
        self.on_runtime(async move { out.refresh_hosts().await }, || ())
    }

    /// Re-reads the endpoints of every datacenter this runtime has pools
    /// for and rebalances them now (what each DC's endpoint refresher does
    /// every `connections.endpoint_refresh_interval`; MongooseIM's
    /// `mod_global_distrib_server_mgr:force_refresh/1`): a new endpoint gets
    /// a pool and takes traffic, a vanished one is disabled (then closed by
    /// the disabled GC). Writes nothing. Returns the number of datacenters
    /// whose endpoints could be read.
    pub fn rebalance_now(&self) -> impl Future<Output = usize> + Send + 'static {
        let out = self.inner.outgoing.clone();
        self.on_runtime(async move { out.rebalance_all().await }, || 0)
    }

    /// Graceful stop: stop accepting and refreshing, flush what is queued
    /// within `deadline`, report the rest undeliverable. Idempotent.
    pub fn stop(&self, deadline: Duration) -> StopReport {
        let Some(rt) = self.rt.lock().take() else {
            return StopReport::default();
        };
        let inner = self.inner.clone();
        let report = rt.block_on(async move {
            inner.stop_tx.send_replace(true);
            let task = inner.refresher_task.lock().take();
            if let Some(task) = task {
                task.stop().await;
            }
            let until = tokio::time::Instant::now() + deadline;
            // Incoming connections acknowledge what they took, then close:
            // otherwise senders would send it again to our successor.
            inner.receiver.closed(until).await;
            let mut left: Vec<(Envelope, bool)> = inner
                .outgoing
                .drain(until)
                .await
                .into_iter()
                .map(|env| (inner.router.refund_ttl(env), false))
                .collect();
            let given_back = inner.router.drain_given_back().await;
            left.extend(given_back.into_iter().map(|env| (env, false)));
            left.extend(inner.router.bounce.drain());
            let mut report = StopReport::default();
            for (env, nowhere) in left {
                if nowhere {
                    report.unrouted += 1;
                    inner.router.deliver_unrouted(env, Reason::Stopped);
                } else {
                    report.undeliverable += 1;
                    inner.router.delivery.undeliverable(env, Reason::Stopped);
                }
            }
            report
        });
        rt.shutdown_timeout(Duration::from_secs(1));
        report
    }
}

impl Runtime {
    /// Ends the runtime as a crash would: every task aborted at once, no
    /// stop of the refresher, no flush, nothing written or deleted in the
    /// store. For tests of what other nodes see when a node dies; a host
    /// stops a runtime with [`Runtime::stop`].
    #[doc(hidden)]
    pub fn kill(&self) {
        if let Some(rt) = self.rt.lock().take() {
            self.inner.stop_tx.send_replace(true);
            rt.shutdown_background();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if self.rt.lock().is_some() {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Cannot block inside an async context: abandon the threads.
                if let Some(rt) = self.rt.lock().take() {
                    self.inner.stop_tx.send_replace(true);
                    rt.shutdown_background();
                }
            } else {
                self.stop(Duration::from_millis(500));
            }
        }
    }
}

fn stopped_store<T>() -> Result<T, StoreError> {
    Err(StoreError::Unavailable("the runtime has stopped".into()))
}

async fn build(
    config: Config,
    delivery: Arc<dyn Delivery>,
    opts: StartOptions,
    handle: tokio::runtime::Handle,
) -> Result<Inner, StartError> {
    let tls = match &config.connections.tls {
        Some(t) => Some(Arc::new(TlsSetup::from_config(t)?)),
        None => None,
    };
    let addrs = config.resolve_endpoints()?;
    let backend: Arc<dyn Backend> = match opts.backend.clone() {
        Some(b) => b,
        None => backend_for(&config)?,
    };
    let metrics = Arc::new(Metrics::with_host_limit(
        config.connections.limits.max_metric_hosts,
    ));
    let health = Arc::new(StoreHealth::new(&metrics, config.refresh_after()));
    let store = Store::new(backend).with_health(health.clone());
    let me = NodeId::new(&config.local_host, &config.node_name)?;
    // Bounded round trips before anything starts: a store that does not
    // answer, refuses us or lacks a command of the dialect fails the start
    // clearly instead of stalling or failing every first call.
    let within = Duration::from_millis(config.redis.start_timeout_ms);
    let lease = config.redis.ownership == Ownership::Lease;
    start_check::run(store.backend().as_ref(), &me, within, lease)
        .await
        .map_err(StartError::StoreCheck)?;
    if let Some(credits) = delivery.credits() {
        credits.show_in(&metrics);
    }
    let local_host: Arc<str> = Arc::from(config.local_host.as_str());
    // What this node holds: written through by the refresher, and asked
    // first by every lookup (own sessions are local whatever the store says).
    let owned = Arc::new(OwnedState::new());
    let mapping = Arc::new(
        Mapping::new(
            &config.global_host,
            &config.local_host,
            &config.cache,
            store.clone(),
            metrics.clone(),
        )
        .with_owned(owned.clone())
        // Either mode reads lease-mode values right (docs/REDIS.md).
        .with_leases(
            &config.node_name,
            Arc::new(Leases::new(
                store.clone(),
                config.expire_after(),
                config.lease_check_interval(),
            )),
        ),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let (given_back_tx, given_back_rx) = tokio::sync::mpsc::unbounded_channel();
    let outgoing = Arc::new(Outgoing::new(
        &config,
        tls.clone(),
        store.clone(),
        metrics.clone(),
        given_back_tx,
        stop_rx.clone(),
        handle.clone(),
    ));
    let router = Arc::new(Router::new(
        local_host.clone(),
        u8::try_from(config.message_ttl).unwrap_or(u8::MAX),
        mapping.clone(),
        outgoing.clone(),
        &config.bounce,
        given_back_rx,
        delivery,
        &metrics,
        Duration::from_millis(config.route_timeout_ms),
    ));
    let receiver = Receiver::start(
        local_host.clone(),
        Arc::from(config.node_name.as_str()),
        tls,
        config.connections.max_frame_size,
        metrics.clone(),
        router.clone(),
        opts.dispatch_shards,
        stop_rx.clone(),
        config.connections.limits.clone(),
        &handle,
    );
    let listeners = bind_all(&addrs).await?;
    let mut listen_addrs = Vec::with_capacity(listeners.len());
    for l in listeners {
        listen_addrs.push(l.local_addr().map_err(TransportError::Io)?);
        handle.spawn(receiver.clone().accept_loop(l));
    }
    // Port 0 means "any free port": advertise what was really bound.
    let advertised: Vec<(String, u16)> = match &config.connections.advertised_endpoints {
        Some(eps) => eps.iter().map(|e| (e.host.clone(), e.port)).collect(),
        None => listen_addrs
            .iter()
            .map(|a| (a.ip().to_string(), a.port()))
            .collect(),
    };
    owned.set_endpoints(advertised);
    // This DC's own domain resolves to it (lookup rule 5 for JIDs such as
    // user@dc1.example.com seen from another DC); hidden from disco.
    owned.domain_registered(&config.local_host, false);
    let mut refresher = Refresher::new(
        store.clone(),
        owned,
        me,
        config.expire_after(),
        config.refresh_after(),
    );
    if lease {
        refresher = refresher.with_lease(config.lease_safety_ttl());
    }
    // Make this node known before the first period elapses; a store that is
    // down now is retried by the refresher.
    let first = refresher.run_once(false).await;
    tracing::info!(what = "gd_started", local_host = %local_host, listen = ?listen_addrs, first_refresh = ?first);
    let refresher_task = refresher.spawn();
    handle.spawn(router.clone().run(stop_rx.clone()));
    handle.spawn(outgoing.clone().maintenance_loop());
    Ok(Inner {
        config,
        local_host,
        store,
        health,
        mapping,
        metrics,
        refresher,
        router,
        outgoing,
        receiver,
        listen_addrs,
        stop_tx,
        refresher_task: Mutex::new(Some(refresher_task)),
    })
}

impl Inner {
    /// This DC, or a datacenter the outgoing side already knows.
    fn known_origin(&self, host: &str) -> bool {
        host == &*self.local_host || self.outgoing.knows(host)
    }

    async fn cache_origin(&self, sender: &Jid, origin: &str) -> Result<bool, OriginError> {
        if !self.known_origin(origin) {
            let hosts = self
                .store
                .hosts()
                .await
                .map_err(|error| OriginError::Store {
                    host: origin.to_owned(),
                    error,
                })?;
            if !hosts.iter().any(|h| h == origin) {
                return Err(OriginError::UnknownOrigin(origin.to_owned()));
            }
        }
        if !self.mapping.caches_origin_of(sender) {
            return Ok(false);
        }
        match self.mapping.lookup(sender).await {
            Ok(Location::Local | Location::Remote(_)) => Ok(false),
            Ok(Location::Unknown) => Ok(self.mapping.cache_origin(sender, origin)),
            Err(e) => {
                // The origin is the best information there is meanwhile.
                tracing::debug!(what = "gd_cache_origin_lookup_failed", sender = %sender, error = %e);
                Ok(self.mapping.cache_origin(sender, origin))
            }
        }
    }

    async fn session_opened(&self, jid: &Jid) -> SessionWrite {
        let (full, bare) = (jid.as_full_str(), jid.as_bare_str());
        // The cache first: stanzas routed meanwhile already find the user.
        self.mapping.insert_session(full, &self.local_host);
        self.mapping.insert_session(bare, &self.local_host);
        match self.refresher.open_session(full, bare).await {
            Ok(()) => SessionWrite::Confirmed,
            Err(e) => {
                tracing::warn!(what = "gd_session_write_deferred", jid = %full, error = %e);
                SessionWrite::Pending
            }
        }
    }

    async fn session_closed(&self, jid: &Jid) {
        let (full, bare) = (jid.as_full_str(), jid.as_bare_str());
        self.mapping.remove_jid(full);
        if !self.refresher.state().owns_session_key(bare) {
            self.mapping.remove_jid(bare);
        }
        if let Err(e) = self.refresher.close_session(full, bare).await {
            tracing::warn!(what = "gd_session_delete_failed", jid = %full, error = %e);
        }
        if !self.refresher.state().owns_session_key(bare) {
            self.mapping.remove_jid(bare);
        }
    }

    async fn register_subhost(&self, domain: &str, public: bool) {
        self.mapping.insert_domain(domain, &self.local_host);
        if let Err(e) = self.refresher.register_domain(domain, public).await {
            tracing::warn!(what = "gd_domain_write_deferred", domain, error = %e);
        }
    }

    async fn unregister_subhost(&self, domain: &str) {
        self.mapping.remove_domain(domain);
        if let Err(e) = self.refresher.unregister_domain(domain).await {
            tracing::warn!(what = "gd_domain_delete_failed", domain, error = %e);
        }
    }
}

/// The endpoint list a runtime advertises, for tests and operators.
pub fn endpoint_strings(eps: &[Endpoint]) -> Vec<String> {
    eps.iter()
        .map(|e| format!("{}#{}", e.host, e.port))
        .collect()
}
