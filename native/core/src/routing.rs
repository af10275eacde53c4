//! route(): the decision taken for every stanza (SPEC 6.1) — local,
//! forwarded to another datacenter, stored in bounce, or undeliverable —
//! and the one place that decides what becomes of a stanza afterwards:
//! bounce's flushes and retries, and stanzas the transport gives back.
//!
//! The same function runs for stanzas the host submits and for stanzas
//! arriving from another datacenter, so a stanza whose recipient moved is
//! forwarded again (its TTL, clamped to this DC's `message_ttl`, bounds
//! how often).
//!
//! Layers: routing uses bounce (a store, no I/O), mapping and the
//! outgoing transport; none of them calls back up. The transport reports
//! the stanzas it gives back on a channel this module drains.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use crate::bounce::{Bounce, Flush, PairRef};
use crate::config::BounceConfig;
use crate::mapping::{Location, Mapping};
use crate::metrics::{names, Counter, Histogram, Metrics};
use crate::transport::outgoing::{EnqueueError, GivenBack, Outgoing};

pub use crate::envelope::{
    new_message_id, sender_key, Delivered, Delivery, Envelope, Meta, Reason, RouteResult,
};

/// Flushes of held pairs running at once (each a lookup, then sends).
const FLUSHES_AT_ONCE: usize = 32;

/// The routing engine of one runtime.
pub struct Router {
    pub(crate) local_host: Arc<str>,
    pub(crate) message_ttl: u8,
    pub(crate) mapping: Arc<Mapping>,
    pub(crate) outgoing: Arc<Outgoing>,
    /// Stanzas held per (from, to) pair; only the router takes them out.
    pub(crate) bounce: Bounce,
    pub(crate) delivery: Arc<dyn Delivery>,
    /// What the transport gives back (a connection that cannot be made, a
    /// stanza too large, a stop); read by [`Router::run`].
    given_back: tokio::sync::Mutex<mpsc::UnboundedReceiver<GivenBack>>,
    stop_ttl_zero: Arc<Counter>,
    routed_inline: Arc<Counter>,
    delivered_with_ttl: Arc<Histogram>,
    /// How long route() may wait (`route_timeout_ms`).
    route_timeout: Duration,
    route_timed_out: Arc<Counter>,
}

/// Where route() must go next once the location is known.
enum Step {
    Done(RouteResult),
    Target(Arc<str>),
    Lookup,
}

/// What [`Router::try_decide`] did with a stanza: took it (forwarded,
/// stored), or decided without taking it.
pub(crate) enum Decided {
    Taken(RouteResult),
    /// The host routes it itself.
    Local(Envelope),
    Undeliverable(Envelope, Reason),
}

impl Decided {
    pub(crate) fn result(self) -> RouteResult {
        match self {
            Decided::Taken(r) => r,
            Decided::Local(_) => RouteResult::Local,
            Decided::Undeliverable(_, why) => RouteResult::Undeliverable(why),
        }
    }
}

/// What a flush could not hand over: the stanza, why, whether bounce may retry it.
type Refused = (Envelope, Reason, bool);

impl Router {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        local_host: Arc<str>,
        message_ttl: u8,
        mapping: Arc<Mapping>,
        outgoing: Arc<Outgoing>,
        bounce: &BounceConfig,
        given_back: mpsc::UnboundedReceiver<GivenBack>,
        delivery: Arc<dyn Delivery>,
        metrics: &Metrics,
        route_timeout: Duration,
    ) -> Router {
        Router {
            local_host,
            message_ttl,
            mapping,
            outgoing,
            bounce: Bounce::new(bounce, metrics),
            delivery,
            given_back: tokio::sync::Mutex::new(given_back),
            stop_ttl_zero: metrics.counter(names::STOP_TTL_ZERO),
            routed_inline: metrics.counter(&format!("{}routed_inline", names::PREFIX)),
            delivered_with_ttl: metrics.histogram(names::DELIVERED_WITH_TTL),
            route_timeout,
            route_timed_out: metrics.counter(names::ROUTE_TIMED_OUT),
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
    /// [`Router::route`]. Never blocks. A pair bounce holds takes this
    /// path too (the stanza is appended behind the held ones); what other
    /// pairs hold costs nothing but one atomic load and a shard probe.
    pub fn try_route(&self, env: Envelope) -> Result<RouteResult, Envelope> {
        self.try_decide(env).map(Decided::result)
    }

    /// [`Router::try_route`] that gives back the stanza it did not take (a
    /// local or undeliverable one), so that the receive path hands it on
    /// without a copy made just in case.
    pub(crate) fn try_decide(&self, mut env: Envelope) -> Result<Decided, Envelope> {
        // The wire says up to 255; this DC allows no more than its own
        // budget, so two stale caches cannot bounce a stanza 255 times.
        env.meta.ttl = env.meta.ttl.min(self.message_ttl);
        let d = match self.pre_lookup(&env) {
            Step::Done(RouteResult::Local) => Ok(Decided::Local(env)),
            Step::Done(r) => Ok(Decided::Taken(r)),
            Step::Target(t) => self.try_forward(t, env),
            Step::Lookup => match self.bounce.append_if_present(env) {
                Ok(_) => Ok(Decided::Taken(RouteResult::Stored)),
                Err(env) => match self.mapping.lookup_cached(&env.to) {
                    Some(Location::Local) => Ok(self.local_kept(env)),
                    Some(Location::Remote(host)) => self.try_forward(host, env),
                    Some(Location::Unknown) | None => Err(env),
                },
            },
        };
        if d.is_ok() {
            self.routed_inline.inc();
        }
        d
    }

    /// route(): local / forwarded / stored / undeliverable.
    ///
    /// What has to wait (a store lookup, the endpoints or the name of a DC
    /// not used before) waits at most `route_timeout_ms`; past it the
    /// stanza is treated as when the store cannot answer (bounce holds it,
    /// else the host's local routing takes it) and the wait is dropped:
    /// nothing it would have done happens later. Every step that hands the
    /// stanza on is synchronous and follows the last wait, so dropping the
    /// wait cannot drop a stanza already handed on.
    pub async fn route(&self, env: Envelope) -> RouteResult {
        let env = match self.try_route(env) {
            Ok(r) => return r,
            Err(env) => env,
        };
        let kept = env.clone();
        let waited = async {
            match env.meta.target.clone() {
                Some(t) => self.forward(t, env).await,
                None => self.route_looked_up(env).await,
            }
        };
        match tokio::time::timeout(self.route_timeout, waited).await {
            Ok(r) => r,
            Err(_) => {
                self.route_timed_out.inc();
                tracing::warn!(what = "gd_route_timed_out", to = %kept.to,
                    route_timeout_ms = self.route_timeout.as_millis() as u64);
                self.hold_or_local(kept, Reason::StoreUnavailable)
            }
        }
    }

    async fn route_looked_up(&self, env: Envelope) -> RouteResult {
        let location = match self.mapping.lookup(&env.to).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(what = "gd_lookup_failed", to = %env.to, error = %e);
                return self.hold_or_local(env, Reason::StoreUnavailable);
            }
        };
        // The pair may have been held while this lookup ran (an earlier
        // stanza of it found nowhere): this one goes behind it.
        let env = match self.bounce.append_if_present(env) {
            Ok(_) => return RouteResult::Stored,
            Err(env) => env,
        };
        match location {
            Location::Local => self.local(&env),
            Location::Remote(host) => self.forward(host, env).await,
            Location::Unknown => self.hold_or_local(env, Reason::NoRoute),
        }
    }

    /// A recipient found nowhere (or a store that could not say): bounce
    /// holds the stanza for a later lookup; when it cannot (disabled, full)
    /// the host routes it locally at once, as MongooseIM does.
    fn hold_or_local(&self, env: Envelope, why: Reason) -> RouteResult {
        match self.bounce.hold(env, why) {
            Ok(()) => RouteResult::Stored,
            Err((env, reason)) => {
                tracing::debug!(what = "gd_unrouted_local", to = %env.to, reason = reason.as_str());
                self.local(&env)
            }
        }
    }

    /// Holds a stanza nobody waits on; a refusal is reported to the host.
    fn hold_or_report(&self, env: Envelope, why: Reason) {
        if let Err((env, reason)) = self.bounce.hold(env, why) {
            self.delivery.undeliverable(env, reason);
        }
    }

    fn local(&self, env: &Envelope) -> RouteResult {
        self.delivered_with_ttl.record(u64::from(env.meta.ttl));
        RouteResult::Local
    }

    fn local_kept(&self, env: Envelope) -> Decided {
        self.local(&env);
        Decided::Local(env)
    }

    /// The router's background work until `stop`: flushes of held pairs
    /// (due retries and kicks) and the stanzas the transport gives back.
    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let flushes = Arc::new(Semaphore::new(FLUSHES_AT_ONCE));
        let mut given_back = self.given_back.lock().await;
        loop {
            let (work, next) = self.bounce.next_work(Instant::now());
            for (pair, how) in work {
                let Ok(permit) = flushes.clone().acquire_owned().await else {
                    return;
                };
                let me = self.clone();
                tokio::spawn(async move {
                    me.flush(pair, how).await;
                    drop(permit);
                });
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.bounce.wake.notified() => {}
                back = given_back.recv() => match back {
                    Some(back) => self.take_back(back),
                    None => return,
                },
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }

    /// A stanza the transport could not deliver: its TTL back (it never
    /// arrived), then held by bounce or, when no retry can help (too large,
    /// refused by the receiver), reported.
    fn take_back(&self, back: GivenBack) {
        let env = self.refund_ttl(back.envelope);
        match back.reason {
            why @ (Reason::TooLarge | Reason::Rejected) => self.delivery.undeliverable(env, why),
            why => self.hold_or_report(env, why),
        }
    }

    /// For a stop: what the transport gave back and nobody took yet, TTL refunded.
    pub(crate) async fn drain_given_back(&self) -> Vec<Envelope> {
        let mut rx = self.given_back.lock().await;
        let mut out = Vec::new();
        while let Ok(back) = rx.try_recv() {
            out.push(self.refund_ttl(back.envelope));
        }
        out
    }

    /// Flushes one pair: looks its recipient up and, when found, sends
    /// everything it holds in order, and whatever arrives meanwhile,
    /// until the pair is empty. A retry spends one unit of each stanza it
    /// finds held, even when it finds a route, so a route that keeps
    /// failing (DC unreachable) ends in time; a kick spends nothing.
    async fn flush(&self, pair: PairRef, how: Flush) {
        if how == Flush::Retry {
            self.forget_cached(&pair);
        }
        let location = match self.mapping.lookup(&pair.to).await {
            Ok(Location::Unknown) => None,
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!(what = "gd_bounce_lookup_failed", to = %pair.to, error = %e);
                None
            }
        };
        let location = match location {
            // Flushing towards a DC that cannot be reached, or whose queue
            // is full, would only put the held stanzas back (and count a
            // refusal per arrival): a kick leaves them to their retries,
            // which spend their budget on schedule.
            Some(Location::Remote(h))
                if how == Flush::Kick
                    && !(self.outgoing.is_reachable(&h) && self.outgoing.has_room(&h)) =>
            {
                None
            }
            l => l,
        };
        let Some(location) = location else {
            match how {
                Flush::Kick => self.bounce.flush_ended(&pair),
                // Found nowhere to the end: the host's local routing takes
                // it (offline storage, or its own error), as in MongooseIM.
                Flush::Retry => {
                    for env in self.bounce.retry_failed(&pair) {
                        self.deliver_unrouted(env, Reason::RetriesExhausted);
                    }
                }
            }
            return;
        };
        let mut spend = how == Flush::Retry;
        while let Some(batch) = self.bounce.take_batch(&pair) {
            let mut batch = batch.into_iter();
            while let Some(mut env) = batch.next() {
                if spend {
                    env.bounce_ttl = env.bounce_ttl.map(|t| t.saturating_sub(1));
                }
                match self.resend(env, &location).await {
                    Ok(()) => {}
                    Err((env, why, false)) => self.delivery.undeliverable(env, why),
                    Err((env, why, true)) => {
                        // The rest must not overtake it, and a queue that
                        // refused one would refuse the next: all wait.
                        let back: Vec<Envelope> = std::iter::once(env).chain(batch).collect();
                        let (ended, reason) = self.bounce.flush_refused(&pair, back, why);
                        for env in ended {
                            self.delivery.undeliverable(env, reason);
                        }
                        return;
                    }
                }
            }
            // Stanzas that arrived during the flush were not retried.
            spend = false;
        }
    }

    fn forget_cached(&self, pair: &PairRef) {
        let to = &pair.to;
        if to.user().is_some() {
            self.mapping.remove_jid(&to.to_full_string());
            self.mapping.remove_jid(&to.to_bare_string());
        } else {
            self.mapping.remove_domain(to.domain());
        }
    }

    /// Sends a held stanza to a known location (flushes and retries).
    async fn resend(&self, mut env: Envelope, location: &Location) -> Result<(), Refused> {
        let host = match location {
            Location::Remote(host) if **host != *self.local_host => host.clone(),
            _ => {
                self.deliver_here(env);
                return Ok(());
            }
        };
        env.meta.target = Some(host.clone());
        match self.outgoing.enqueue(&host, self.spend_ttl(env)).await {
            Ok(()) => Ok(()),
            Err(refused) => Err(self.refusal(refused)),
        }
    }

    /// A stanza the outgoing side refused, its TTL refunded, why, and
    /// whether bounce may retry it (a stanza too large never fits).
    fn refusal(&self, refused: EnqueueError) -> Refused {
        match refused {
            EnqueueError::NotReady(env) | EnqueueError::Unreachable(env) => {
                (self.refund_ttl(env), Reason::Unreachable, true)
            }
            EnqueueError::QueueFull(env) => (self.refund_ttl(env), Reason::QueueFull, true),
            EnqueueError::TooLarge(env) => (self.refund_ttl(env), Reason::TooLarge, false),
        }
    }

    /// route()'s answer for a refused stanza: held by bounce, or given up.
    fn after_refusal(&self, refused: EnqueueError) -> Decided {
        match self.refusal(refused) {
            (env, why, true) => match self.bounce.hold(env, why) {
                Ok(()) => Decided::Taken(RouteResult::Stored),
                Err((env, reason)) => Decided::Undeliverable(env, reason),
            },
            (env, why, false) => Decided::Undeliverable(env, why),
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

    fn try_forward(&self, host: Arc<str>, env: Envelope) -> Result<Decided, Envelope> {
        if *host == *self.local_host {
            return Ok(self.local_kept(env));
        }
        match self.outgoing.try_enqueue(&host, self.spend_ttl(env)) {
            Ok(()) => Ok(Decided::Taken(RouteResult::Forwarded(host))),
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
            Err(refused) => self.after_refusal(refused).result(),
        }
    }

    /// The TTL is spent when the stanza leaves.
    fn spend_ttl(&self, mut env: Envelope) -> Envelope {
        env.meta.ttl = env.meta.ttl.saturating_sub(1);
        env
    }

    /// Undo [`Router::spend_ttl`] for a stanza that never left.
    pub(crate) fn refund_ttl(&self, mut env: Envelope) -> Envelope {
        env.meta.ttl = env.meta.ttl.saturating_add(1);
        env
    }
}
