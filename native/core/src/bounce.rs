//! Bounce (SPEC 7): the store of stanzas with no known route, or whose
//! datacenter cannot be reached right now, held per (from, to) pair.
//!
//! The router owns one and is the only one deciding what leaves it; this
//! module is plain state with its policy (retry budget, backoff, bound,
//! the reason a pair is held) and no I/O, so it is tested on its own.
//!
//! * A pair is the unit of order. While a pair is present (held, or being
//!   flushed) every new stanza of that pair is appended behind it; a pair
//!   that is absent costs route() one atomic load, plus, only while
//!   something is held, one probe of one shard (the pair is hashed from
//!   the JIDs' text, nothing is allocated).
//! * No lock is global: pairs live in [`SHARDS`] shards chosen by their
//!   hash; the retry schedule has its own lock, taken only to schedule or
//!   unschedule a pair, never by a route whose pair is absent.
//! * The schedule is a B-tree of (due, sequence) → pair, and a pair keeps
//!   its slot: unscheduling is one O(log n) removal.
//! * A flush (a due retry, or a "kick" when a stanza arrives for a held
//!   pair) marks the pair `flushing`, takes batches until the pair is empty
//!   and only then removes it: arrivals during the flush queue behind.
//!
//! How a stanza leaves when its retries run out depends on where its
//! recipient was last looked for (SPEC 7, as MongooseIM): found nowhere →
//! the host's local routing; a known datacenter that stayed unreachable →
//! undeliverable. The router applies that; [`found_nowhere`] says which.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::BounceConfig;
use crate::envelope::{Envelope, Reason};
use crate::jid::Jid;
use crate::metrics::{names, Counter, Gauge, Metrics};

/// Upper bound of the backoff between two retries of one pair.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Pair shards: enough that two routing threads rarely meet on one lock.
pub(crate) const SHARDS: usize = 16;

/// Whether a stanza held for `why` has a recipient known in no datacenter.
pub(crate) fn found_nowhere(why: Reason) -> bool {
    matches!(why, Reason::NoRoute | Reason::StoreUnavailable)
}

/// A handle on one pair: its hash (which shard, which bucket), a unique id
/// (hash collisions and a pair re-created after removal) and its recipient.
#[derive(Debug, Clone)]
pub(crate) struct PairRef {
    hash: u64,
    id: u64,
    pub(crate) to: Jid,
}

/// Why a pair is flushed: its retry is due (spends one unit of each held
/// stanza, as MongooseIM's bounce does) or a stanza arrived for it (a free
/// look, like route() learning a route for the pair).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    Retry,
    Kick,
}

/// Where a stanza routed for a present pair went.
#[derive(Debug)]
pub(crate) enum Appended {
    /// Behind a pair being flushed: the flusher takes it.
    Behind,
    /// Behind a held pair that nobody flushes: the caller must have it
    /// flushed ([`Bounce::kick`] did, the router's loop runs it).
    Kicked,
}

/// A position in the schedule; kept by its pair so removal is a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Slot(Instant, u64);

/// The retry schedule: due time → pair, with O(log n) insert, removal
/// by slot and pop of the earliest.
#[derive(Default)]
pub(crate) struct Schedule {
    due: BTreeMap<Slot, PairRef>,
    seq: u64,
    /// Pairs to flush now, without spending a retry.
    kicks: Vec<PairRef>,
}

impl Schedule {
    pub(crate) fn insert(&mut self, at: Instant, pair: PairRef) -> Slot {
        self.seq += 1;
        let slot = Slot(at, self.seq);
        self.due.insert(slot, pair);
        slot
    }

    pub(crate) fn remove(&mut self, slot: Slot) -> Option<PairRef> {
        self.due.remove(&slot)
    }

    /// Removes and returns every pair due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Vec<PairRef> {
        let mut out = Vec::new();
        while let Some(entry) = self.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
        out
    }

    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.keys().next().map(|s| s.0)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.due.len()
    }
}

struct Pair {
    id: u64,
    from: Jid,
    to: Jid,
    /// Each with `bounce_ttl` set: the retries it has left here.
    items: VecDeque<Envelope>,
    /// Retries already made for the head of the queue (drives the backoff).
    attempt: u32,
    /// Its place in the schedule (None while it is being retried).
    slot: Option<Slot>,
    /// Held because its recipient was found nowhere (no mapping, or a
    /// store that could not answer) rather than because its datacenter
    /// could not take it: decides where it goes on a stop.
    nowhere: bool,
    /// A flush is sending its stanzas: new ones queue behind.
    flushing: bool,
}

impl Pair {
    fn is(&self, id: u64) -> bool {
        self.id == id
    }

    fn matches(&self, from: &Jid, to: &Jid) -> bool {
        self.from.as_full_str() == from.as_full_str() && self.to.as_full_str() == to.as_full_str()
    }

    fn handle(&self, hash: u64) -> PairRef {
        PairRef {
            hash,
            id: self.id,
            to: self.to.clone(),
        }
    }
}

/// Pairs by hash; a bucket holds more than one pair only on a collision.
#[derive(Default)]
struct Shard {
    pairs: HashMap<u64, Vec<Pair>>,
}

impl Shard {
    fn find(&mut self, hash: u64, from: &Jid, to: &Jid) -> Option<&mut Pair> {
        self.pairs
            .get_mut(&hash)?
            .iter_mut()
            .find(|p| p.matches(from, to))
    }

    fn get(&mut self, r: &PairRef) -> Option<&mut Pair> {
        self.pairs.get_mut(&r.hash)?.iter_mut().find(|p| p.is(r.id))
    }

    fn remove(&mut self, r: &PairRef) -> Option<Pair> {
        let bucket = self.pairs.get_mut(&r.hash)?;
        let i = bucket.iter().position(|p| p.is(r.id))?;
        let pair = bucket.swap_remove(i);
        if bucket.is_empty() {
            self.pairs.remove(&r.hash);
        }
        Some(pair)
    }
}

/// The bounce store of one runtime.
pub struct Bounce {
    cfg: BounceConfig,
    hasher: foldhash::fast::RandomState,
    shards: Vec<Mutex<Shard>>,
    schedule: Mutex<Schedule>,
    /// Pairs present (held or being flushed): zero means route() skips the probe.
    pairs: AtomicUsize,
    /// Stanzas held (not counting those a flush has taken).
    total: AtomicUsize,
    ids: AtomicU64,
    /// Wakes the router's loop: a new schedule entry or a kick.
    pub(crate) wake: Notify,
    queue_size: Arc<Gauge>,
    overflow: Arc<Counter>,
}

impl Bounce {
    pub(crate) fn new(cfg: &BounceConfig, metrics: &Metrics) -> Bounce {
        Bounce {
            cfg: cfg.clone(),
            hasher: foldhash::fast::RandomState::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            schedule: Mutex::new(Schedule::default()),
            pairs: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            ids: AtomicU64::new(0),
            wake: Notify::new(),
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

    /// Number of pairs held or being flushed.
    pub fn pairs(&self) -> usize {
        self.pairs.load(Ordering::Relaxed)
    }

    fn hash(&self, from: &Jid, to: &Jid) -> u64 {
        self.hasher.hash_one((from.as_full_str(), to.as_full_str()))
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[(hash as usize) % SHARDS]
    }

    /// Counts stanzas in or out. An increment is made under the lock of
    /// the shard the stanza went into, so the decrement of taking it out
    /// (under the same lock, later) can never come first.
    fn set_total(&self, delta: isize) {
        let n = if delta >= 0 {
            self.total.fetch_add(delta as usize, Ordering::Relaxed) + delta as usize
        } else {
            let d = delta.unsigned_abs();
            self.total.fetch_sub(d, Ordering::Relaxed).saturating_sub(d)
        };
        self.queue_size.set(n as i64);
    }

    /// `resend_after_ms = 0`: the first retry is immediate and the later
    /// ones back off from 1 ms, so a stanza whose retries keep failing
    /// never spins.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        if self.cfg.resend_after_ms == 0 && attempt == 0 {
            return Duration::ZERO;
        }
        let base = Duration::from_millis(self.cfg.resend_after_ms.max(1));
        base.saturating_mul(1u32 << attempt.min(16))
            .min(MAX_BACKOFF.max(base))
    }

    /// Gives `envelope` its retry budget here; `Err` when it has none left.
    fn budget(&self, envelope: &mut Envelope) -> Result<u32, Reason> {
        let ttl = envelope.bounce_ttl.unwrap_or(self.cfg.max_retries);
        if ttl == 0 {
            return Err(Reason::RetriesExhausted);
        }
        envelope.bounce_ttl = Some(ttl);
        Ok(self.cfg.max_retries.saturating_sub(ttl))
    }

    fn at_bound(&self) -> bool {
        self.total.load(Ordering::Relaxed) >= self.cfg.max_stored
    }

    fn full(&self) -> bool {
        if self.at_bound() {
            self.overflow.inc();
            return true;
        }
        false
    }

    /// The fast-path question: if the pair of `env` is present, appends
    /// `env` behind it; otherwise (or when it cannot be held) hands it back.
    pub(crate) fn append_if_present(&self, mut env: Envelope) -> Result<Appended, Envelope> {
        if self.pairs.load(Ordering::Acquire) == 0 {
            return Err(env);
        }
        let hash = self.hash(&env.from, &env.to);
        let mut shard = self.shard(hash).lock();
        let Some(pair) = shard.find(hash, &env.from, &env.to) else {
            return Err(env);
        };
        // At the bound the stanza takes route()'s way, which counts the overflow.
        if self.budget(&mut env).is_err() || self.at_bound() {
            return Err(env);
        }
        pair.items.push_back(env);
        self.set_total(1);
        if pair.flushing {
            return Ok(Appended::Behind);
        }
        pair.flushing = true;
        let r = pair.handle(hash);
        drop(shard);
        self.kick(r);
        Ok(Appended::Kicked)
    }

    fn kick(&self, pair: PairRef) {
        self.schedule.lock().kicks.push(pair);
        self.wake.notify_one();
    }

    /// Holds `envelope` for a later retry (behind its pair if present), or
    /// hands it back with the reason bounce refused it: `why` when bounce
    /// is disabled, `RetriesExhausted`, `BounceFull`.
    pub(crate) fn hold(
        &self,
        mut envelope: Envelope,
        why: Reason,
    ) -> Result<(), (Envelope, Reason)> {
        if !self.cfg.enabled {
            return Err((envelope, why));
        }
        let attempt = match self.budget(&mut envelope) {
            Ok(a) => a,
            Err(reason) => return Err((envelope, reason)),
        };
        let hash = self.hash(&envelope.from, &envelope.to);
        let mut shard = self.shard(hash).lock();
        if self.full() {
            return Err((envelope, Reason::BounceFull));
        }
        let nowhere = found_nowhere(why);
        if let Some(pair) = shard.find(hash, &envelope.from, &envelope.to) {
            pair.items.push_back(envelope);
            pair.nowhere = nowhere;
        } else {
            let id = self.ids.fetch_add(1, Ordering::Relaxed);
            let mut pair = Pair {
                id,
                from: envelope.from.clone(),
                to: envelope.to.clone(),
                items: VecDeque::from([envelope]),
                attempt,
                slot: None,
                nowhere,
                flushing: false,
            };
            let at = Instant::now() + self.backoff(attempt);
            pair.slot = Some(self.schedule.lock().insert(at, pair.handle(hash)));
            shard.pairs.entry(hash).or_default().push(pair);
            self.pairs.fetch_add(1, Ordering::AcqRel);
            self.wake.notify_one();
        }
        self.set_total(1);
        drop(shard);
        Ok(())
    }

    /// What the router's loop has to flush now, and when to look again.
    /// Every pair returned is marked `flushing`; a due pair already being
    /// flushed is skipped (the flush reschedules it if it keeps stanzas).
    pub(crate) fn next_work(&self, now: Instant) -> (Vec<(PairRef, Flush)>, Option<Instant>) {
        let (kicks, due, next) = {
            let mut s = self.schedule.lock();
            let kicks = std::mem::take(&mut s.kicks);
            let due = s.pop_due(now);
            (kicks, due, s.next_due())
        };
        let mut work: Vec<(PairRef, Flush)> = kicks.into_iter().map(|r| (r, Flush::Kick)).collect();
        for r in due {
            let mut shard = self.shard(r.hash).lock();
            if let Some(pair) = shard.get(&r) {
                pair.slot = None;
                if !pair.flushing {
                    pair.flushing = true;
                    work.push((r, Flush::Retry));
                }
            }
        }
        (work, next)
    }

    /// Everything the pair holds, in order, for the flusher to send; `None`
    /// once the pair is empty, which removes it (arrivals meanwhile were
    /// appended and are taken by the next call).
    pub(crate) fn take_batch(&self, r: &PairRef) -> Option<Vec<Envelope>> {
        let mut shard = self.shard(r.hash).lock();
        let pair = shard.get(r)?;
        if pair.items.is_empty() {
            let pair = shard.remove(r)?;
            drop(shard);
            self.forget(pair);
            return None;
        }
        let batch: Vec<Envelope> = pair.items.drain(..).collect();
        drop(shard);
        self.set_total(-(batch.len() as isize));
        Some(batch)
    }

    fn forget(&self, pair: Pair) {
        if let Some(slot) = pair.slot {
            self.schedule.lock().remove(slot);
        }
        self.pairs.fetch_sub(1, Ordering::AcqRel);
    }

    /// Schedules the pair's next retry unless it has one (lock order: shard, then schedule).
    fn reschedule(&self, pair: &mut Pair, hash: u64) {
        if pair.slot.is_none() {
            let at = Instant::now() + self.backoff(pair.attempt);
            pair.slot = Some(self.schedule.lock().insert(at, pair.handle(hash)));
            self.wake.notify_one();
        }
    }

    /// A flush could not hand `back` over (the first refused, then the
    /// rest of its batch, in order): they go back in front of the pair,
    /// which is held again for `why`. Returns the stanzas to end and why:
    /// those with no retry left (`RetriesExhausted`), or all of them when
    /// a stop drained the pair meanwhile (`Stopped`).
    pub(crate) fn flush_refused(
        &self,
        r: &PairRef,
        back: Vec<Envelope>,
        why: Reason,
    ) -> (Vec<Envelope>, Reason) {
        let (kept, exhausted): (Vec<_>, Vec<_>) =
            back.into_iter().partition(|e| e.bounce_ttl != Some(0));
        let mut shard = self.shard(r.hash).lock();
        let Some(pair) = shard.get(r) else {
            // Drained by a stop meanwhile: nothing holds them any more.
            return (kept.into_iter().chain(exhausted).collect(), Reason::Stopped);
        };
        self.set_total(kept.len() as isize);
        for env in kept.into_iter().rev() {
            pair.items.push_front(env);
        }
        pair.flushing = false;
        pair.nowhere = found_nowhere(why);
        if let Some(head) = pair.items.front() {
            let ttl = head.bounce_ttl.unwrap_or(self.cfg.max_retries);
            pair.attempt = self.cfg.max_retries.saturating_sub(ttl);
        }
        if pair.items.is_empty() {
            if let Some(pair) = shard.remove(r) {
                drop(shard);
                self.forget(pair);
            }
        } else {
            self.reschedule(pair, r.hash);
            drop(shard);
        }
        (exhausted, Reason::RetriesExhausted)
    }

    /// A kick found no route that could take the pair: it stays held on
    /// its own schedule.
    pub(crate) fn flush_ended(&self, r: &PairRef) {
        let mut shard = self.shard(r.hash).lock();
        let Some(pair) = shard.get(r) else {
            return;
        };
        pair.flushing = false;
        if pair.items.is_empty() {
            if let Some(pair) = shard.remove(r) {
                drop(shard);
                self.forget(pair);
            }
        } else {
            self.reschedule(pair, r.hash);
        }
    }

    /// A retry found the recipient nowhere: spend one retry of every stanza of the pair,
    /// give up on those with none left, schedule the next retry.
    pub(crate) fn retry_failed(&self, r: &PairRef) -> Vec<Envelope> {
        let mut shard = self.shard(r.hash).lock();
        let Some(pair) = shard.get(r) else {
            return Vec::new();
        };
        pair.nowhere = true;
        pair.flushing = false;
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
            if let Some(pair) = shard.remove(r) {
                drop(shard);
                self.forget(pair);
            }
        } else {
            pair.attempt += 1;
            if let Some(slot) = pair.slot.take() {
                self.schedule.lock().remove(slot);
            }
            self.reschedule(pair, r.hash);
            drop(shard);
        }
        self.set_total(-(exhausted.len() as isize));
        exhausted
    }

    /// Everything held, for a stop, each with whether its recipient was
    /// found nowhere (see `Pair::nowhere`).
    pub(crate) fn drain(&self) -> Vec<(Envelope, bool)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = shard.lock();
            let pairs = std::mem::take(&mut shard.pairs);
            let before = out.len();
            for pair in pairs.into_values().flatten() {
                let nowhere = pair.nowhere;
                self.pairs.fetch_sub(1, Ordering::AcqRel);
                out.extend(pair.items.into_iter().map(|e| (e, nowhere)));
            }
            self.set_total(-((out.len() - before) as isize));
        }
        *self.schedule.lock() = Schedule::default();
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::envelope::Meta;
    use crate::transport::frame::PayloadKind;

    fn cfg(max_stored: usize) -> BounceConfig {
        BounceConfig {
            enabled: true,
            resend_after_ms: 100,
            max_retries: 3,
            max_stored,
        }
    }

    fn env(from: &str, to: &str, body: &str) -> Envelope {
        Envelope::new(
            Jid::parse(from).unwrap(),
            Jid::parse(to).unwrap(),
            PayloadKind::Message,
            bytes::Bytes::from(body.to_owned()),
            Meta::new(Arc::from("dc1"), 4),
        )
    }

    fn pref(i: u64) -> PairRef {
        PairRef {
            hash: i,
            id: i,
            to: Jid::parse("b@x").unwrap(),
        }
    }

    fn bodies(v: &[Envelope]) -> Vec<String> {
        v.iter()
            .map(|e| String::from_utf8_lossy(&e.payload).into_owned())
            .collect()
    }

    #[tokio::test]
    async fn the_schedule_removes_a_slot_without_scanning_and_pops_in_due_order() {
        let mut s = Schedule::default();
        let t0 = Instant::now();
        let slots: Vec<Slot> = (0..10_000u64)
            .map(|i| s.insert(t0 + Duration::from_millis(i % 97), pref(i)))
            .collect();
        // Removal is by slot, a B-tree key: no pair is scanned.
        for slot in slots.iter().step_by(2) {
            assert!(s.remove(*slot).is_some());
            assert!(s.remove(*slot).is_none(), "removed once");
        }
        assert_eq!(s.len(), 5_000);
        let due = s.pop_due(t0 + Duration::from_millis(96));
        assert_eq!(due.len(), 5_000);
        assert!(due.iter().all(|r| r.id % 2 == 1));
        assert_eq!(s.next_due(), None);
    }

    #[tokio::test]
    async fn an_absent_pair_is_handed_back_and_a_present_one_appends_behind() {
        let m = Metrics::new();
        let b = Bounce::new(&cfg(10), &m);
        let e = env("a@x/r", "b@x/r", "0");
        assert!(b.append_if_present(e.clone()).is_err(), "nothing held");
        b.hold(e, Reason::NoRoute).unwrap();
        // Another pair is still absent while this one is held.
        assert!(b.append_if_present(env("c@x/r", "b@x/r", "x")).is_err());
        assert!(matches!(
            b.append_if_present(env("a@x/r", "b@x/r", "1")),
            Ok(Appended::Kicked)
        ));
        assert!(matches!(
            b.append_if_present(env("a@x/r", "b@x/r", "2")),
            Ok(Appended::Behind)
        ));
        let (work, _) = b.next_work(Instant::now());
        assert_eq!(work.len(), 1);
        assert_eq!(work[0].1, Flush::Kick);
        let r = work[0].0.clone();
        assert_eq!(bodies(&b.take_batch(&r).unwrap()), ["0", "1", "2"]);
        b.append_if_present(env("a@x/r", "b@x/r", "3")).unwrap();
        assert_eq!(bodies(&b.take_batch(&r).unwrap()), ["3"]);
        assert!(b.take_batch(&r).is_none());
        assert_eq!((b.len(), b.pairs()), (0, 0));
        assert_eq!(b.schedule.lock().len(), 0, "its slot went with it");
    }

    #[tokio::test]
    async fn a_refused_flush_puts_the_rest_back_in_front_and_ends_the_exhausted() {
        let m = Metrics::new();
        let b = Bounce::new(&cfg(10), &m);
        b.hold(env("a@x/r", "b@x/r", "0"), Reason::Unreachable)
            .unwrap();
        b.hold(env("a@x/r", "b@x/r", "1"), Reason::Unreachable)
            .unwrap();
        let (work, _) = b.next_work(Instant::now() + Duration::from_secs(1));
        let r = work[0].0.clone();
        let mut batch = b.take_batch(&r).unwrap();
        b.append_if_present(env("a@x/r", "b@x/r", "2")).unwrap();
        batch[1].bounce_ttl = Some(0);
        let (ended, why) = b.flush_refused(&r, batch, Reason::QueueFull);
        assert_eq!(bodies(&ended), ["1"]);
        assert_eq!(why, Reason::RetriesExhausted);
        assert_eq!(b.len(), 2);
        let (work, _) = b.next_work(Instant::now() + Duration::from_secs(5));
        assert_eq!(work.len(), 1, "rescheduled once");
        assert_eq!(bodies(&b.take_batch(&work[0].0).unwrap()), ["0", "2"]);
    }

    /// Appends racing a flusher on one pair: every stanza is counted in
    /// before it can be taken out (the count once went below zero here).
    #[test]
    fn the_count_stays_exact_while_appends_race_a_flusher() {
        let b = Arc::new(Bounce::new(&cfg(1_000_000), &Metrics::new()));
        b.hold(env("a@x/r", "b@x/r", "first"), Reason::NoRoute)
            .unwrap();
        let (work, _) = b.next_work(Instant::now() + Duration::from_secs(1));
        let r = work[0].0.clone();
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    (0..5_000)
                        .filter(|i| {
                            b.append_if_present(env("a@x/r", "b@x/r", &i.to_string()))
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect();
        let flusher = {
            let b = b.clone();
            std::thread::spawn(move || {
                let mut taken = 0;
                while let Some(batch) = b.take_batch(&r) {
                    taken += batch.len();
                }
                taken
            })
        };
        let appended: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
        let taken = flusher.join().unwrap();
        assert_eq!(taken + b.len(), 1 + appended);
    }

    #[tokio::test]
    async fn the_bound_and_the_budget_hold() {
        let m = Metrics::new();
        let b = Bounce::new(&cfg(1), &m);
        b.hold(env("a@x/r", "b@x/r", "0"), Reason::NoRoute).unwrap();
        let (_, why) = b
            .hold(env("c@x/r", "b@x/r", "1"), Reason::NoRoute)
            .unwrap_err();
        assert_eq!(why, Reason::BounceFull);
        assert!(b.append_if_present(env("a@x/r", "b@x/r", "2")).is_err());
        let mut spent = env("d@x/r", "b@x/r", "3");
        spent.bounce_ttl = Some(0);
        let (_, why) = b.hold(spent, Reason::NoRoute).unwrap_err();
        assert_eq!(why, Reason::RetriesExhausted);
        let drained = b.drain();
        assert_eq!(drained.len(), 1);
        assert!(drained[0].1, "found nowhere");
        assert_eq!((b.len(), b.pairs()), (0, 0));
    }
}
