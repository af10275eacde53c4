//! route(): the decision taken for every stanza (SPEC 6.1) — local,
//! forwarded to another datacenter, stored in bounce, or undeliverable —
//! and the hand-off interface through which the host receives stanzas.
//!
//! The same function runs for stanzas the host submits and for stanzas
//! arriving from another datacenter, so a stanza whose recipient moved is
//! forwarded again (its TTL bounds how often).

use std::sync::Arc;

use bytes::Bytes;
use rand::RngCore;

use crate::bounce::Bounce;
use crate::jid::Jid;
use crate::mapping::{Location, Mapping};
use crate::metrics::{names, Counter, Histogram, Metrics};
use crate::transport::frame::PayloadKind;
use crate::transport::outgoing::{EnqueueError, Outgoing};

/// Metadata travelling with a stanza between datacenters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Unique id (128-bit random), kept across reroutes.
    pub message_id: u128,
    /// local_host of the DC where the stanza entered global routing.
    pub origin: Arc<str>,
    /// Remaining reroutes; decremented on each forward.
    pub ttl: u8,
    /// Route to this DC without looking the recipient up (bounce flushes).
    pub target: Option<Arc<str>>,
}

impl Meta {
    /// Metadata of a stanza entering global routing at this DC.
    pub fn new(origin: Arc<str>, ttl: u8) -> Meta {
        Meta {
            message_id: new_message_id(),
            origin,
            ttl,
            target: None,
        }
    }
}

/// A 128-bit random message id.
pub fn new_message_id() -> u128 {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    u128::from_be_bytes(b)
}

/// A stanza with everything route() needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub from: Jid,
    pub to: Jid,
    pub kind: PayloadKind,
    pub payload: Bytes,
    pub meta: Meta,
    /// Bounce retries left at this DC (None: never bounced here). Local
    /// state, not sent on the wire: each DC gives a stanza its own budget.
    pub bounce_ttl: Option<u32>,
    /// `(session, seq)` it was written under before its connection was
    /// given up; travels so that the receiver can drop a second copy.
    pub prior: Option<(u64, u64)>,
}

impl Envelope {
    pub fn new(from: Jid, to: Jid, kind: PayloadKind, payload: Bytes, meta: Meta) -> Envelope {
        Envelope {
            from,
            to,
            kind,
            payload,
            meta,
            bounce_ttl: None,
            prior: None,
        }
    }
}

/// What route() decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteResult {
    /// The host continues its own routing: the recipient is here, or it is
    /// known in no datacenter and bounce cannot hold the stanza (disabled
    /// or full), so the host routes it as MongooseIM does (offline storage,
    /// or its own error for a user that does not exist).
    Local,
    /// Queued towards that datacenter.
    Forwarded(Arc<str>),
    /// Held by bounce; the host hears of it again through [`Delivery`].
    Stored,
    /// Given up: the host should answer with an error (service-unavailable).
    Undeliverable(Reason),
}

/// Why a stanza could not be delivered, or (in [`Delivered::unrouted`])
/// why global routing handed it back to the host's local routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Bounce retried it `bounce.max_retries` times without a route that
    /// took it.
    RetriesExhausted,
    /// The recipient is known in no datacenter.
    NoRoute,
    /// The recipient's datacenter is known but cannot be reached (no
    /// endpoint, every connection failing).
    Unreachable,
    /// The bounce store is full (`bounce.max_stored`).
    BounceFull,
    /// The queue towards the remote DC is full (`connections.outgoing_queue_size`).
    QueueFull,
    /// The runtime stopped before the stanza could be delivered.
    Stopped,
    /// The metadata store could not be read during a lookup (why bounce
    /// holds a stanza; like `NoRoute`, the recipient counts as found nowhere).
    StoreUnavailable,
    /// The stanza exceeds `connections.max_frame_size`.
    TooLarge,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RetriesExhausted => "retries_exhausted",
            Reason::NoRoute => "no_route",
            Reason::Unreachable => "unreachable",
            Reason::BounceFull => "bounce_full",
            Reason::QueueFull => "queue_full",
            Reason::Stopped => "stopped",
            Reason::StoreUnavailable => "store_unavailable",
            Reason::TooLarge => "too_large",
        }
    }
}

/// A stanza handed to the host for local delivery.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub envelope: Envelope,
    /// local_host of the DC it came from (None: it was held by bounce here).
    pub from_host: Option<Arc<str>>,
    /// Sender wall clock to receiver wall clock, µs (0 when not from the wire).
    pub transfer_time_us: u64,
    /// `Some` when global routing gave up on the stanza because its
    /// recipient is known in no datacenter: the host routes it locally like
    /// any stanza of its own (MongooseIM's bounce does the same: offline
    /// storage, or the host's error for a user that does not exist). The
    /// reason says when: `RetriesExhausted` (bounce's retries ran out),
    /// `NoRoute` (bounce is disabled), `BounceFull` (bounce could not hold
    /// it again), `Stopped` (the runtime stopped while bounce held it).
    /// `None` for every other delivery.
    pub unrouted: Option<Reason>,
}

impl Delivered {
    /// A stanza delivered here that did not come over the wire.
    pub fn here(envelope: Envelope, unrouted: Option<Reason>) -> Delivered {
        Delivered {
            envelope,
            from_host: None,
            transfer_time_us: 0,
            unrouted,
        }
    }
}

/// How stanzas reach the host. Called on runtime threads: implementations
/// must not block (hand over to a queue, `enif_send`, a C callback that
/// returns quickly) and must not call back into the runtime synchronously.
pub trait Delivery: Send + Sync + 'static {
    /// A stanza whose recipient is local: deliver it, do not route it globally again.
    fn deliver(&self, delivered: Delivered);
    /// A stanza given up on: answer the sender with an error. Only for a
    /// known datacenter that stayed unreachable, a full queue, a stanza too
    /// large, a stop: a recipient known nowhere goes to [`Delivery::deliver`]
    /// with [`Delivered::unrouted`] set instead.
    fn undeliverable(&self, envelope: Envelope, reason: Reason);
    /// Several stanzas for local recipients, in arrival order, from one
    /// read of the network: a host that pays per hand-over (a process
    /// wake-up, a message) can take them at once. Drains `batch`.
    fn deliver_many(&self, batch: &mut Vec<Delivered>) {
        for d in batch.drain(..) {
            self.deliver(d);
        }
    }
}

/// The ordering key: the sender's full JID if it is in the global domain,
/// otherwise its domain (components, other servers). Borrowed: it is
/// computed for every stanza sent.
pub fn sender_key<'a>(from: &'a Jid, global_host: &str) -> &'a str {
    if from.domain() == global_host {
        from.as_full_str()
    } else {
        from.domain()
    }
}

/// The routing engine of one runtime.
pub struct Router {
    pub(crate) local_host: Arc<str>,
    pub(crate) message_ttl: u8,
    pub(crate) mapping: Arc<Mapping>,
    pub(crate) outgoing: Arc<Outgoing>,
    pub(crate) bounce: Arc<Bounce>,
    pub(crate) delivery: Arc<dyn Delivery>,
    stop_ttl_zero: Arc<Counter>,
    delivered_with_ttl: Arc<Histogram>,
}

/// Where route() must go next once the location is known.
enum Step {
    Done(RouteResult),
    Target(Arc<str>),
    Lookup,
}

impl Router {
    pub(crate) fn new(
        local_host: Arc<str>,
        message_ttl: u8,
        mapping: Arc<Mapping>,
        outgoing: Arc<Outgoing>,
        bounce: Arc<Bounce>,
        delivery: Arc<dyn Delivery>,
        metrics: &Metrics,
    ) -> Router {
        Router {
            local_host,
            message_ttl,
            mapping,
            outgoing,
            bounce,
            delivery,
            stop_ttl_zero: metrics.counter(names::STOP_TTL_ZERO),
            delivered_with_ttl: metrics.histogram(names::DELIVERED_WITH_TTL),
        }
    }

    /// Metadata for a stanza the host submits without any.
    pub fn new_meta(&self) -> Meta {
        Meta::new(self.local_host.clone(), self.message_ttl)
    }

    /// The decisions that need no lookup: TTL 0, same user, target override.
    fn pre_lookup(&self, env: &Envelope) -> Step {
        if env.meta.ttl == 0 {
            self.stop_ttl_zero.inc();
            return Step::Done(RouteResult::Local);
        }
        if Mapping::is_same_user(&env.from, &env.to) {
            return Step::Done(RouteResult::Local);
        }
        match &env.meta.target {
            Some(t) if **t == *self.local_host => Step::Done(RouteResult::Local),
            Some(t) => Step::Target(t.clone()),
            None => Step::Lookup,
        }
    }

    /// route() without waiting: answers when the caches suffice and the
    /// stanza can be queued at once; `Err(env)` hands it back for
    /// [`Router::route`]. Never blocks.
    pub fn try_route(&self, env: Envelope) -> Result<RouteResult, Envelope> {
        match self.pre_lookup(&env) {
            Step::Done(r) => Ok(r),
            Step::Target(t) => self.try_forward(t, env),
            Step::Lookup => {
                if self.bounce.busy() {
                    return Err(env);
                }
                match self.mapping.lookup_cached(&env.to) {
                    Some(Location::Local) => Ok(self.local(&env)),
                    Some(Location::Remote(host)) => self.try_forward(host, env),
                    Some(Location::Unknown) | None => Err(env),
                }
            }
        }
    }

    /// route(): local / forwarded / stored / undeliverable.
    pub async fn route(&self, env: Envelope) -> RouteResult {
        let env = match self.try_route(env) {
            Ok(r) => return r,
            Err(env) => env,
        };
        if let Some(t) = env.meta.target.clone() {
            return self.forward(t, env).await;
        }
        if self.bounce.busy() {
            // Held stanzas of this pair must leave before this one.
            let _guard = self.bounce.flush_guard().await;
            return self.route_looked_up(env).await;
        }
        self.route_looked_up(env).await
    }

    async fn route_looked_up(&self, env: Envelope) -> RouteResult {
        let location = match self.mapping.lookup(&env.to).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(what = "gd_lookup_failed", to = %env.to, error = %e);
                return self.hold_or_local(env, Reason::StoreUnavailable);
            }
        };
        match location {
            Location::Local => {
                self.flush_bounced(&env, &Location::Local).await;
                self.local(&env)
            }
            Location::Remote(host) => {
                // Flushing towards a DC that cannot be reached would only put
                // the held stanzas back with a fresh schedule, again and again
                // while the sender keeps talking: their retries would never
                // run out. They stay held; their own retries decide.
                if self.outgoing.is_reachable(&host) {
                    self.flush_bounced(&env, &Location::Remote(host.clone()))
                        .await;
                }
                self.forward(host, env).await
            }
            Location::Unknown => self.hold_or_local(env, Reason::NoRoute),
        }
    }

    /// A recipient found nowhere (or a store that could not say): bounce
    /// holds the stanza for a later lookup; when it cannot (disabled, full)
    /// the host routes it locally at once, as MongooseIM does.
    fn hold_or_local(&self, env: Envelope, why: Reason) -> RouteResult {
        match self.bounce.try_store(env, why) {
            Ok(()) => RouteResult::Stored,
            Err((env, reason)) => {
                tracing::debug!(what = "gd_unrouted_local", to = %env.to, reason = reason.as_str());
                self.local(&env)
            }
        }
    }

    fn local(&self, env: &Envelope) -> RouteResult {
        self.delivered_with_ttl.record(u64::from(env.meta.ttl));
        RouteResult::Local
    }

    /// Stanzas of the same (from, to) pair held by bounce go first, in order,
    /// to the route just learned.
    async fn flush_bounced(&self, env: &Envelope, location: &Location) {
        if !self.bounce.has_pending(&env.from, &env.to) {
            return;
        }
        for held in self.bounce.take_pair(&env.from, &env.to) {
            self.resend_to(held, location).await;
        }
    }

    /// Re-sends a held stanza to a known location (bounce flush and retry).
    pub(crate) async fn resend_to(&self, mut env: Envelope, location: &Location) {
        let host = match location {
            Location::Local => {
                self.deliver_here(env);
                return;
            }
            Location::Unknown => {
                if let Err((env, reason)) = self.bounce.try_store(env, Reason::NoRoute) {
                    self.deliver_unrouted(env, reason);
                }
                return;
            }
            Location::Remote(host) => host.clone(),
        };
        env.meta.target = Some(host.clone());
        if *host == *self.local_host {
            self.deliver_here(env);
            return;
        }
        if let Err(refused) = self.outgoing.enqueue(&host, self.spend_ttl(env)).await {
            match self.refusal(refused) {
                (env, why, true) => self.bounce.store_or_report(env, why),
                (env, why, false) => self.delivery.undeliverable(env, why),
            }
        }
    }

    /// A stanza the outgoing side refused, its TTL refunded, why, and
    /// whether bounce may retry it (a stanza too large never fits).
    fn refusal(&self, refused: EnqueueError) -> (Envelope, Reason, bool) {
        match refused {
            EnqueueError::NotReady(env) | EnqueueError::Unreachable(env) => {
                (self.refund_ttl(env), Reason::Unreachable, true)
            }
            EnqueueError::QueueFull(env) => (self.refund_ttl(env), Reason::QueueFull, true),
            EnqueueError::TooLarge(env) => (self.refund_ttl(env), Reason::TooLarge, false),
        }
    }

    /// route()'s answer for a refused stanza: held by bounce, or given up.
    fn after_refusal(&self, refused: EnqueueError) -> RouteResult {
        match self.refusal(refused) {
            (env, why, true) => self.bounce.store(env, why),
            (_, why, false) => RouteResult::Undeliverable(why),
        }
    }

    /// Hands a stanza that is not the caller's own to the host.
    pub(crate) fn deliver_here(&self, envelope: Envelope) {
        self.delivered_with_ttl.record(u64::from(envelope.meta.ttl));
        self.delivery.deliver(Delivered::here(envelope, None));
    }

    /// Gives a stanza whose recipient is known nowhere back to the host's
    /// local routing, marked with why global routing gave up on it.
    pub(crate) fn deliver_unrouted(&self, envelope: Envelope, why: Reason) {
        tracing::debug!(what = "gd_unrouted_local", to = %envelope.to, reason = why.as_str());
        self.delivered_with_ttl.record(u64::from(envelope.meta.ttl));
        self.delivery.deliver(Delivered::here(envelope, Some(why)));
    }

    fn try_forward(&self, host: Arc<str>, env: Envelope) -> Result<RouteResult, Envelope> {
        if *host == *self.local_host {
            return Ok(self.local(&env));
        }
        match self.outgoing.try_enqueue(&host, self.spend_ttl(env)) {
            Ok(()) => Ok(RouteResult::Forwarded(host)),
            Err(EnqueueError::NotReady(env)) => Err(self.refund_ttl(env)),
            Err(refused) => Ok(self.after_refusal(refused)),
        }
    }

    async fn forward(&self, host: Arc<str>, env: Envelope) -> RouteResult {
        if *host == *self.local_host {
            return self.local(&env);
        }
        match self.outgoing.enqueue(&host, self.spend_ttl(env)).await {
            Ok(()) => RouteResult::Forwarded(host),
            Err(refused) => self.after_refusal(refused),
        }
    }

    /// The TTL is spent when the stanza leaves.
    fn spend_ttl(&self, mut env: Envelope) -> Envelope {
        env.meta.ttl = env.meta.ttl.saturating_sub(1);
        env
    }

    /// Undo [`Router::spend_ttl`] for a stanza that never left.
    fn refund_ttl(&self, mut env: Envelope) -> Envelope {
        env.meta.ttl = env.meta.ttl.saturating_add(1);
        env
    }
}
