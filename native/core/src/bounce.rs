//! Bounce (SPEC 7): stanzas with no known route, or whose datacenter cannot
//! be reached right now, are held and routed again later.
//!
//! Stanzas are grouped by their (from, to) pair so that a pair is always
//! flushed in order, either when a retry finds a route or as soon as route()
//! learns one for the same pair. Each stanza carries its own bounce TTL
//! (`max_retries`); retries back off exponentially from `resend_after_ms`.
//! Before each retry the recipient's cache entries are dropped, so the
//! store is read again. The store is bounded by `max_stored`.
//!
//! How a stanza leaves when its retries run out depends on where its
//! recipient was last looked for (SPEC 7, as MongooseIM): found nowhere →
//! the host's local routing ([`Delivered::unrouted`](crate::routing::Delivered));
//! a known datacenter that stayed unreachable → undeliverable.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::config::BounceConfig;
use crate::jid::Jid;
use crate::mapping::{Location, Mapping};
use crate::metrics::{names, Counter, Gauge, Metrics};
use crate::routing::{Delivery, Envelope, Reason, RouteResult, Router};

/// Upper bound of the backoff between two retries of one pair.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

type PairKey = (String, String);

struct Pair {
    /// Each with `bounce_ttl` set: the retries it has left here.
    items: VecDeque<Envelope>,
    /// Retries already made for the head of the queue (drives the backoff).
    attempt: u32,
    due: Instant,
    /// Whether the pair is held because its recipient was found nowhere
    /// (no mapping, or a store that could not answer) rather than because
    /// its datacenter could not take it: decides where it goes on a stop.
    nowhere: bool,
}

/// Whether a stanza held for `why` has a recipient known in no datacenter.
pub(crate) fn found_nowhere(why: Reason) -> bool {
    matches!(why, Reason::NoRoute | Reason::StoreUnavailable)
}

#[derive(Default)]
struct Inner {
    pairs: HashMap<PairKey, Pair>,
    /// (due, sequence, pair): the retry schedule.
    schedule: BTreeSet<(Instant, u64, PairKey)>,
    seq: u64,
}

/// The bounce store of one runtime.
pub struct Bounce {
    cfg: BounceConfig,
    inner: Mutex<Inner>,
    total: AtomicUsize,
    /// Held while a pair is flushed, so that a stanza routed meanwhile for
    /// the same pair cannot overtake the flushed ones.
    flush: tokio::sync::Mutex<()>,
    flushing: AtomicUsize,
    wake: Notify,
    mapping: Arc<Mapping>,
    delivery: Arc<dyn Delivery>,
    queue_size: Arc<Gauge>,
    overflow: Arc<Counter>,
}

fn pair_key(from: &Jid, to: &Jid) -> PairKey {
    (from.to_full_string(), to.to_full_string())
}

impl Bounce {
    pub(crate) fn new(
        cfg: &BounceConfig,
        mapping: Arc<Mapping>,
        delivery: Arc<dyn Delivery>,
        metrics: &Metrics,
    ) -> Bounce {
        Bounce {
            cfg: cfg.clone(),
            inner: Mutex::new(Inner::default()),
            total: AtomicUsize::new(0),
            flush: tokio::sync::Mutex::new(()),
            flushing: AtomicUsize::new(0),
            wake: Notify::new(),
            mapping,
            delivery,
            queue_size: metrics.gauge(names::BOUNCE_QUEUE_SIZE),
            overflow: metrics.counter(&format!("{}bounce_overflow", names::PREFIX)),
        }
    }

    /// Number of stanzas held.
    pub fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `resend_after_ms = 0`: the first retry is immediate and the later
    /// ones back off from 1 ms, so a stanza whose retries keep failing
    /// never spins.
    fn backoff(&self, attempt: u32) -> Duration {
        if self.cfg.resend_after_ms == 0 && attempt == 0 {
            return Duration::ZERO;
        }
        let base = Duration::from_millis(self.cfg.resend_after_ms.max(1));
        base.saturating_mul(1u32 << attempt.min(16))
            .min(MAX_BACKOFF.max(base))
    }

    /// Holds `envelope` for a later retry. Returns `Stored`, or
    /// `Undeliverable` when bounce is disabled, the stanza has no retries
    /// left here, or the store is full.
    pub(crate) fn store(&self, envelope: Envelope, why: Reason) -> RouteResult {
        match self.try_store(envelope, why) {
            Ok(()) => RouteResult::Stored,
            Err((_, reason)) => RouteResult::Undeliverable(reason),
        }
    }

    /// [`Bounce::store`] for stanzas nobody waits on: a refusal is reported
    /// to the host through [`Delivery::undeliverable`].
    pub(crate) fn store_or_report(&self, envelope: Envelope, why: Reason) {
        if let Err((envelope, reason)) = self.try_store(envelope, why) {
            self.delivery.undeliverable(envelope, reason);
        }
    }

    /// Reports a stanza that no retry can help.
    pub(crate) fn report(&self, envelope: Envelope, reason: Reason) {
        self.delivery.undeliverable(envelope, reason);
    }

    /// Holds `envelope`, or hands it back with the reason bounce refused
    /// it: `why` when bounce is disabled, `RetriesExhausted`, `BounceFull`.
    pub(crate) fn try_store(
        &self,
        mut envelope: Envelope,
        why: Reason,
    ) -> Result<(), (Envelope, Reason)> {
        if !self.cfg.enabled {
            return Err((envelope, why));
        }
        let ttl = envelope.bounce_ttl.unwrap_or(self.cfg.max_retries);
        if ttl == 0 {
            return Err((envelope, Reason::RetriesExhausted));
        }
        envelope.bounce_ttl = Some(ttl);
        let attempt = self.cfg.max_retries.saturating_sub(ttl);
        let key = pair_key(&envelope.from, &envelope.to);
        let mut inner = self.inner.lock();
        if self.total.load(Ordering::Relaxed) >= self.cfg.max_stored {
            drop(inner);
            self.overflow.inc();
            return Err((envelope, Reason::BounceFull));
        }
        let nowhere = found_nowhere(why);
        if let Some(pair) = inner.pairs.get_mut(&key) {
            pair.items.push_back(envelope);
            pair.nowhere = nowhere;
        } else {
            let due = Instant::now() + self.backoff(attempt);
            inner.seq += 1;
            let seq = inner.seq;
            inner.schedule.insert((due, seq, key.clone()));
            let mut items = VecDeque::with_capacity(1);
            items.push_back(envelope);
            inner.pairs.insert(
                key,
                Pair {
                    items,
                    attempt,
                    due,
                    nowhere,
                },
            );
        }
        let n = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        drop(inner);
        self.queue_size.set(n as i64);
        self.wake.notify_one();
        Ok(())
    }

    /// False when nothing is held or being flushed: the fast path of route().
    pub(crate) fn busy(&self) -> bool {
        self.total.load(Ordering::Acquire) > 0 || self.flushing.load(Ordering::Acquire) > 0
    }

    /// Serialises flushes with the routing of stanzas of held pairs.
    pub(crate) async fn flush_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.flush.lock().await
    }

    /// Whether stanzas of this pair are held (cheap when bounce is empty).
    pub(crate) fn has_pending(&self, from: &Jid, to: &Jid) -> bool {
        if self.total.load(Ordering::Relaxed) == 0 {
            return false;
        }
        self.inner.lock().pairs.contains_key(&pair_key(from, to))
    }

    /// Removes and returns every stanza of the pair, in order.
    pub(crate) fn take_pair(&self, from: &Jid, to: &Jid) -> Vec<Envelope> {
        self.take_key(&pair_key(from, to))
    }

    fn take_key(&self, key: &PairKey) -> Vec<Envelope> {
        let mut inner = self.inner.lock();
        let Some(pair) = inner.pairs.remove(key) else {
            return Vec::new();
        };
        inner.schedule.retain(|(_, _, k)| k != key);
        let n = pair.items.len();
        let left = self.total.fetch_sub(n, Ordering::Relaxed) - n;
        drop(inner);
        self.queue_size.set(left as i64);
        pair.items.into_iter().collect()
    }

    /// Everything held, for a stop, each with whether its recipient was
    /// found nowhere (see `Pair::nowhere`).
    pub(crate) fn drain(&self) -> Vec<(Envelope, bool)> {
        let mut inner = self.inner.lock();
        let pairs = std::mem::take(&mut inner.pairs);
        inner.schedule.clear();
        self.total.store(0, Ordering::Relaxed);
        drop(inner);
        self.queue_size.set(0);
        pairs
            .into_values()
            .flat_map(|p| {
                let nowhere = p.nowhere;
                p.items.into_iter().map(move |e| (e, nowhere))
            })
            .collect()
    }

    /// Pairs whose retry is due, and how long until the next one.
    fn due_pairs(&self) -> (Vec<PairKey>, Option<Instant>) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let mut due = Vec::new();
        while let Some(first) = inner.schedule.first() {
            if first.0 > now {
                return (due, Some(first.0));
            }
            if let Some((_, _, key)) = inner.schedule.pop_first() {
                due.push(key);
            }
        }
        (due, None)
    }

    /// A retry found the recipient nowhere: spend one retry of every stanza of the pair,
    /// give up on those with none left, schedule the next retry.
    fn retry_failed(&self, key: &PairKey) -> Vec<Envelope> {
        let mut inner = self.inner.lock();
        let Inner {
            pairs,
            schedule,
            seq,
        } = &mut *inner;
        let Some(pair) = pairs.get_mut(key) else {
            return Vec::new();
        };
        pair.nowhere = true;
        let mut exhausted = Vec::new();
        let mut kept = VecDeque::with_capacity(pair.items.len());
        for mut env in pair.items.drain(..) {
            let left = env.bounce_ttl.unwrap_or(1).saturating_sub(1);
            env.bounce_ttl = Some(left);
            if left == 0 {
                exhausted.push(env);
            } else {
                kept.push_back(env);
            }
        }
        pair.items = kept;
        if pair.items.is_empty() {
            pairs.remove(key);
        } else {
            pair.attempt += 1;
            pair.due = Instant::now() + self.backoff(pair.attempt);
            *seq += 1;
            schedule.insert((pair.due, *seq, key.clone()));
        }
        let n = exhausted.len();
        let left = self.total.fetch_sub(n, Ordering::Relaxed) - n;
        drop(inner);
        self.queue_size.set(left as i64);
        exhausted
    }

    fn forget_cached(&self, to: &Jid) {
        if to.user().is_some() {
            self.mapping.remove_jid(&to.to_full_string());
            self.mapping.remove_jid(&to.to_bare_string());
        } else {
            self.mapping.remove_domain(to.domain());
        }
    }

    async fn retry(&self, router: &Router, key: PairKey) {
        let to = {
            let inner = self.inner.lock();
            match inner.pairs.get(&key).and_then(|p| p.items.front()) {
                Some(env) => env.to.clone(),
                None => return,
            }
        };
        self.forget_cached(&to);
        let location = match self.mapping.lookup(&to).await {
            Ok(Location::Unknown) => None,
            Ok(l) => Some(l),
            Err(e) => {
                tracing::debug!(what = "gd_bounce_lookup_failed", to = %to, error = %e);
                None
            }
        };
        match location {
            Some(location) => {
                let _guard = self.flush.lock().await;
                self.flushing.fetch_add(1, Ordering::AcqRel);
                // This retry spends one unit even when it finds a route, so a
                // route that keeps failing (DC unreachable) ends in time.
                for mut env in self.take_key(&key) {
                    env.bounce_ttl = env.bounce_ttl.map(|t| t.saturating_sub(1));
                    router.resend_to(env, &location).await;
                }
                self.flushing.fetch_sub(1, Ordering::AcqRel);
            }
            None => {
                // Found nowhere to the end: the host's local routing takes
                // it (offline storage, or its own error), as in MongooseIM.
                for env in self.retry_failed(&key) {
                    router.deliver_unrouted(env, Reason::RetriesExhausted);
                }
            }
        }
    }

    /// The retry loop, until `stop` turns true.
    pub(crate) async fn run(self: Arc<Self>, router: Arc<Router>, mut stop: watch::Receiver<bool>) {
        loop {
            let (due, next) = self.due_pairs();
            if !due.is_empty() {
                for key in due {
                    self.retry(&router, key).await;
                }
                // Retries reschedule: read the schedule again before sleeping.
                continue;
            }
            let sleep = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}
