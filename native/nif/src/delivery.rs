//! The core's [`Delivery`] for Erlang: every stanza handed to the host is
//! sent with `enif_send` to one of N worker pids registered by the host,
//! chosen by hashing the sender key (so one sender's stanzas stay in order),
//! as `{global_distrib, deliver | undeliverable, Meta, Payload}`, or, for
//! several stanzas of one network read bound to the same worker, as one
//! `{global_distrib, deliver_batch, [{Meta, Payload}]}` in arrival order:
//! one message and one wake-up instead of one per stanza.
//!
//! A worker that dies (its supervisor restarts it) loses nothing: every
//! stanza sent stays in its slot until the worker says it ran the callback
//! for it (`delivered/2`, an inline NIF call per stanza), so what was in the
//! dead worker's mailbox is still here; a send to a dead pid keeps the
//! message too, and every later message of that slot queues behind it
//! (order kept). When the restarted worker registers its pid
//! (`set_worker/3`, from its `init/1`), the stanzas its predecessor did not
//! confirm and then the held ones go to it, in order. The one stanza whose
//! callback had returned when the worker was killed, before it confirmed,
//! is delivered again. At most [`MAX_HELD`] stanzas or [`MAX_HELD_BYTES`]
//! payload bytes sent while the worker was dead wait for a successor per
//! runtime (what the dead worker had been sent was in memory already and is
//! never dropped for the bound); beyond that, or when the runtime stops
//! with stanzas still waiting, they are counted `delivered_lost` and logged.
//!
//! The same confirmations are the host's credits ([`Credits`]): a stanza
//! counts from the moment it is handed over until its worker confirms it
//! (or it is lost), and the runtime stops reading from the network while
//! the workers hold `max_unconfirmed` stanzas or `max_unconfirmed_bytes`
//! payload bytes: slow workers slow the sending DCs down instead of
//! growing their mailboxes.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use gd_core::credits::Credits;
use gd_core::routing::{sender_key, Delivered, Delivery, Envelope, Reason};
use gd_core::transport::frame::PayloadKind;
use parking_lot::Mutex;
use rustler::thread::is_scheduler_thread;
use rustler::{Atom, Encoder, Env, LocalPid, NewBinary, OwnedBinary, OwnedEnv, Term};
use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

pub mod atoms {
    rustler::atoms! {
        global_distrib, deliver, deliver_batch, undeliverable, undefined,
        from, to, kind, message_id, origin, ttl, from_host, transfer_time_us, reason,
        message, presence, presence_unavailable, iq, other,
    }
}

pub fn kind_atom(k: PayloadKind) -> Atom {
    match k {
        PayloadKind::Message => atoms::message(),
        PayloadKind::Presence => atoms::presence(),
        PayloadKind::PresenceUnavailable => atoms::presence_unavailable(),
        PayloadKind::Iq => atoms::iq(),
        PayloadKind::Other => atoms::other(),
    }
}

thread_local! {
    static ENV: RefCell<OwnedEnv> = RefCell::new(OwnedEnv::new());
}

fn binary<'a>(env: Env<'a>, bytes: &[u8]) -> Term<'a> {
    match OwnedBinary::new(bytes.len()) {
        Some(mut b) => {
            b.as_mut_slice().copy_from_slice(bytes);
            b.release(env).encode(env)
        }
        None => "".encode(env),
    }
}

/// A binary of `s`, made in the process heap when it is small (JIDs, host
/// names): rustler's `str` encoder allocates a reference-counted binary
/// off-heap for every string, which costs an allocation, a free and the
/// garbage collector's bookkeeping per JID on the hot paths.
pub fn str_term<'a>(env: Env<'a>, s: &str) -> Term<'a> {
    let mut b = NewBinary::new(env, s.len());
    b.as_mut_slice().copy_from_slice(s.as_bytes());
    b.into()
}

/// `{From, To, Kind, IdHigh, IdLow, Origin, Ttl, FromHost, TransferTimeUs,
/// Reason}`: a stanza's metadata as the worker receives it; it makes the
/// `global_distrib:meta()` map the callback gets (`global_distrib_worker:meta/1`).
/// A tuple here and a map built in Erlang, whose keys are a literal shared
/// by every map, cost less than a map built here (which sorts and checks
/// nine keys per stanza); the 128-bit id travels as two 64-bit halves,
/// since rustler encodes a `u128` through `binary_to_term`.
/// `Reason`: why it is undeliverable; in a `deliver`, `undefined`, or why
/// global routing gave the stanza (recipient found nowhere) back to local
/// routing (`retries_exhausted | no_route | bounce_full | stopped`).
pub fn meta_term<'a>(
    env: Env<'a>,
    e: &Envelope,
    from_host: Option<&str>,
    transfer_time_us: u64,
    reason: Option<Reason>,
) -> Term<'a> {
    let undef = atoms::undefined().encode(env);
    let id = e.meta.message_id;
    let terms = [
        str_term(env, e.from.as_full_str()),
        str_term(env, e.to.as_full_str()),
        kind_atom(e.kind).encode(env),
        ((id >> 64) as u64).encode(env),
        (id as u64).encode(env),
        str_term(env, &e.meta.origin),
        e.meta.ttl.encode(env),
        from_host.map_or(undef, |h| str_term(env, h)),
        transfer_time_us.encode(env),
        reason.map_or(undef, |r| match Atom::from_str(env, r.as_str()) {
            Ok(a) => a.encode(env),
            Err(_) => undef,
        }),
    ];
    rustler::types::tuple::make_tuple(env, &terms)
}

/// Most stanzas held for dead workers, per runtime. A worker's restart
/// takes a few ms (its supervisor's report is logged first), and received
/// stanzas arrive in batches of hundreds at 100 000+ a second: a 10 000
/// bound lost stanzas on every other kill in a stress run.
pub const MAX_HELD: usize = 100_000;
/// Most payload bytes held for dead workers, per runtime.
pub const MAX_HELD_BYTES: usize = 64 * 1024 * 1024;

/// One message to a worker, kept as data until it is sent.
enum Msg {
    Deliver(Delivered),
    Batch(Vec<Delivered>),
    Undeliverable(Envelope, Reason),
}

impl Msg {
    fn stanzas(&self) -> usize {
        match self {
            Msg::Batch(b) => b.len(),
            _ => 1,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Msg::Deliver(d) => d.envelope.payload.len(),
            Msg::Batch(b) => b.iter().map(|d| d.envelope.payload.len()).sum(),
            Msg::Undeliverable(e, _) => e.payload.len(),
        }
    }

    fn encode<'a>(&self, env: Env<'a>) -> Term<'a> {
        match self {
            Msg::Deliver(d) => {
                let e = &d.envelope;
                let meta = meta_term(
                    env,
                    e,
                    d.from_host.as_deref(),
                    d.transfer_time_us,
                    d.unrouted,
                );
                (
                    atoms::global_distrib(),
                    atoms::deliver(),
                    meta,
                    binary(env, &e.payload),
                )
                    .encode(env)
            }
            Msg::Batch(group) => {
                let items: Vec<Term<'_>> = group
                    .iter()
                    .map(|d| {
                        let e = &d.envelope;
                        let meta = meta_term(
                            env,
                            e,
                            d.from_host.as_deref(),
                            d.transfer_time_us,
                            d.unrouted,
                        );
                        (meta, binary(env, &e.payload)).encode(env)
                    })
                    .collect();
                (atoms::global_distrib(), atoms::deliver_batch(), items).encode(env)
            }
            Msg::Undeliverable(envelope, reason) => {
                let meta = meta_term(env, envelope, None, 0, Some(*reason));
                (
                    atoms::global_distrib(),
                    atoms::undeliverable(),
                    meta,
                    binary(env, &envelope.payload),
                )
                    .encode(env)
            }
        }
    }
}

/// One worker slot: its pid, what it was sent and did not confirm yet
/// (with the number of stanzas of the first message it confirmed), and
/// what waits to be sent.
struct Slot {
    pid: LocalPid,
    /// A send to `pid` failed: nothing is tried until `set_worker`.
    dead: bool,
    unconfirmed: VecDeque<Msg>,
    confirmed_of_first: usize,
    held: VecDeque<Held>,
}

/// A message waiting for the slot's worker. `counted`: held because the
/// worker was dead (counted against [`MAX_HELD`]); not for a stanza its
/// dead predecessor had been sent and did not run, which was in memory
/// already (as its mailbox was) and must not be dropped for a bound.
struct Held {
    msg: Msg,
    counted: bool,
}

impl Slot {
    /// One more stanza of the oldest unconfirmed message ran; its payload
    /// bytes, or `None` when nothing was unconfirmed.
    fn confirm(&mut self) -> Option<usize> {
        let first = self.unconfirmed.front()?;
        let bytes = match first {
            Msg::Batch(b) => b
                .get(self.confirmed_of_first)
                .map_or(0, |d| d.envelope.payload.len()),
            other => other.bytes(),
        };
        self.confirmed_of_first += 1;
        if self.confirmed_of_first >= first.stanzas() {
            self.unconfirmed.pop_front();
            self.confirmed_of_first = 0;
        }
        Some(bytes)
    }

    /// The worker died: what it did not confirm goes back in front of the
    /// held messages, without the stanzas of a batch it already ran.
    fn take_back(&mut self) {
        let done = std::mem::take(&mut self.confirmed_of_first);
        let mut back = std::mem::take(&mut self.unconfirmed);
        if let (Some(Msg::Batch(first)), true) = (back.front_mut(), done > 0) {
            first.drain(..done.min(first.len()));
        }
        let mut held: VecDeque<Held> = back
            .into_iter()
            .map(|msg| Held {
                msg,
                counted: false,
            })
            .collect();
        held.append(&mut self.held);
        self.held = held;
    }
}

/// The slots and counters, shared with the short-lived threads that send
/// for a scheduler thread.
struct Slots {
    slots: Box<[Mutex<Slot>]>,
    sent: AtomicU64,
    lost: AtomicU64,
    held_stanzas: AtomicUsize,
    held_bytes: AtomicUsize,
    /// Every stanza handed over and not confirmed nor lost.
    credits: Credits,
}

impl Slots {
    /// Sends `msg` to slot `i`'s worker, behind anything held there;
    /// holds it when the worker is dead.
    fn dispatch(&self, i: usize, msg: Msg) {
        let Some(slot) = self.slots.get(i) else {
            self.lose(&msg);
            return;
        };
        let mut slot = slot.lock();
        if !slot.held.is_empty() {
            self.flush(&mut slot);
        }
        if slot.held.is_empty() && !slot.dead && send(slot.pid, &msg) {
            self.sent.fetch_add(msg.stanzas() as u64, Ordering::Relaxed);
            slot.unconfirmed.push_back(msg);
        } else {
            // Only a dead pid refuses a message, and held ones wait for a successor.
            slot.dead = true;
            self.hold(&mut slot, msg);
        }
    }

    /// Sends the held messages in order until one cannot be sent.
    fn flush(&self, slot: &mut Slot) {
        while let Some(front) = slot.held.front() {
            if slot.dead {
                return;
            }
            if !send(slot.pid, &front.msg) {
                slot.dead = true;
                return;
            }
            if let Some(h) = slot.held.pop_front() {
                self.uncount(&h);
                if h.counted {
                    // Not a resend of what a dead worker had been sent.
                    self.sent
                        .fetch_add(h.msg.stanzas() as u64, Ordering::Relaxed);
                }
                slot.unconfirmed.push_back(h.msg);
            }
        }
    }

    fn hold(&self, slot: &mut Slot, msg: Msg) {
        let (n, b) = (msg.stanzas(), msg.bytes());
        let stanzas = self.held_stanzas.fetch_add(n, Ordering::Relaxed) + n;
        let bytes = self.held_bytes.fetch_add(b, Ordering::Relaxed) + b;
        if stanzas > MAX_HELD || bytes > MAX_HELD_BYTES {
            self.held_stanzas.fetch_sub(n, Ordering::Relaxed);
            self.held_bytes.fetch_sub(b, Ordering::Relaxed);
            self.lose(&msg);
            return;
        }
        slot.held.push_back(Held { msg, counted: true });
    }

    fn uncount(&self, h: &Held) {
        if h.counted {
            self.held_stanzas
                .fetch_sub(h.msg.stanzas(), Ordering::Relaxed);
            self.held_bytes.fetch_sub(h.msg.bytes(), Ordering::Relaxed);
        }
    }

    fn lose(&self, msg: &Msg) {
        let n = msg.stanzas();
        self.credits.returned(n, msg.bytes());
        self.lost.fetch_add(n as u64, Ordering::Relaxed);
        tracing::warn!(
            stanzas = n,
            "delivery worker dead and too much held for dead workers: stanzas dropped"
        );
    }
}

/// Sends `msg` to `pid` from a thread that is not a scheduler thread;
/// false when the pid is dead (the message is kept by the caller).
fn send(pid: LocalPid, msg: &Msg) -> bool {
    ENV.with(|cell| match cell.try_borrow_mut() {
        Ok(mut env) => env.send_and_clear(&pid, |e| msg.encode(e)).is_ok(),
        Err(_) => OwnedEnv::new()
            .send_and_clear(&pid, |e| msg.encode(e))
            .is_ok(),
    })
}

/// Worker pids, one slot per worker given at start; a slot's pid is
/// replaced when its worker restarts (`set_worker/3`).
pub struct ErlDelivery {
    global_host: String,
    slots: Arc<Slots>,
}

impl ErlDelivery {
    /// `workers` must not be empty (checked by `start/2`); the workers may
    /// hold `max_unconfirmed` stanzas and `max_unconfirmed_bytes` payload
    /// bytes before the runtime waits for them.
    pub fn new(
        global_host: String,
        workers: Vec<LocalPid>,
        max_unconfirmed: usize,
        max_unconfirmed_bytes: usize,
    ) -> ErlDelivery {
        let slots = workers
            .into_iter()
            .map(|pid| {
                Mutex::new(Slot {
                    pid,
                    dead: false,
                    unconfirmed: VecDeque::new(),
                    confirmed_of_first: 0,
                    held: VecDeque::new(),
                })
            })
            .collect();
        ErlDelivery {
            global_host,
            slots: Arc::new(Slots {
                slots,
                sent: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                held_stanzas: AtomicUsize::new(0),
                held_bytes: AtomicUsize::new(0),
                credits: Credits::new(max_unconfirmed, max_unconfirmed_bytes),
            }),
        }
    }

    /// Puts `pid` in slot `index` (a restarted worker) and sends it what
    /// its predecessor did not confirm, then what was held for the slot (on
    /// a thread of its own: this is called on a scheduler thread). The pid
    /// already in the slot changes nothing. False when `index` is not a
    /// slot: the table never grows.
    pub fn set_worker(&self, index: usize, pid: LocalPid) -> bool {
        let Some(slot) = self.slots.slots.get(index) else {
            return false;
        };
        let pending = {
            let mut slot = slot.lock();
            if slot.pid == pid {
                return true;
            }
            slot.pid = pid;
            slot.dead = false;
            slot.take_back();
            !slot.held.is_empty()
        };
        if pending {
            let slots = self.slots.clone();
            let _ = std::thread::Builder::new()
                .name("gd-send".into())
                .spawn(move || {
                    if let Some(slot) = slots.slots.get(index) {
                        slots.flush(&mut slot.lock());
                    }
                });
        }
        true
    }

    /// The worker of slot `index`, `pid`, ran the callback of the oldest
    /// stanza it had not confirmed. False when `pid` is not that slot's
    /// worker (a late call of a replaced worker changes nothing).
    pub fn delivered(&self, index: usize, pid: LocalPid) -> bool {
        let Some(slot) = self.slots.slots.get(index) else {
            return false;
        };
        let mut slot = slot.lock();
        if slot.pid != pid {
            return false;
        }
        if let Some(bytes) = slot.confirm() {
            self.slots.credits.returned(1, bytes);
        }
        true
    }

    pub fn worker_count(&self) -> usize {
        self.slots.slots.len()
    }

    /// (sent, lost: dropped because too much was held for dead workers, or
    /// still held when the runtime stopped).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.slots.sent.load(Ordering::Relaxed),
            self.slots.lost.load(Ordering::Relaxed),
        )
    }

    /// (stanzas, payload bytes) handed to the workers and not confirmed,
    /// and how many times the runtime waited for them.
    pub fn unconfirmed(&self) -> (usize, usize, usize) {
        let (s, b) = self.slots.credits.outstanding();
        (s, b, self.slots.credits.waits())
    }

    /// Stanzas held for dead workers now.
    pub fn held(&self) -> usize {
        self.slots.held_stanzas.load(Ordering::Relaxed)
    }

    /// The runtime stopped: what is still held for dead workers is lost.
    pub fn drop_held(&self) {
        for slot in self.slots.slots.iter() {
            let mut slot = slot.lock();
            self.slots.flush(&mut slot);
            // Sent to live workers: the owner lets them run these.
            slot.unconfirmed.clear();
            slot.confirmed_of_first = 0;
            for h in std::mem::take(&mut slot.held) {
                self.slots.uncount(&h);
                self.slots.lose(&h.msg);
            }
        }
        // Nothing is waited for any more.
        self.slots.credits.returned(usize::MAX, usize::MAX);
    }

    /// The worker slot of a sender.
    fn slot(&self, from: &gd_core::jid::Jid) -> usize {
        gd_core::hashing::index_of(sender_key(from, &self.global_host), self.slots.slots.len())
    }

    fn dispatch(&self, i: usize, msg: Msg) {
        self.slots.credits.taken(msg.stanzas(), msg.bytes());
        // A scheduler thread (the rare inline path) cannot use a
        // process-independent env: a short-lived thread sends for it.
        if is_scheduler_thread() {
            let (n, bytes) = (msg.stanzas(), msg.bytes());
            let slots = self.slots.clone();
            let spawned = std::thread::Builder::new()
                .name("gd-send".into())
                .spawn(move || slots.dispatch(i, msg));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot spawn a sender thread: stanza dropped");
                self.slots.lost.fetch_add(n as u64, Ordering::Relaxed);
                self.slots.credits.returned(n, bytes);
            }
            return;
        }
        self.slots.dispatch(i, msg);
    }
}

impl Delivery for ErlDelivery {
    fn deliver(&self, d: Delivered) {
        let i = self.slot(&d.envelope.from);
        self.dispatch(i, Msg::Deliver(d));
    }

    fn deliver_many(&self, batch: &mut Vec<Delivered>) {
        let slots = self.slots.slots.len();
        if batch.len() < 2 || slots == 0 {
            for d in batch.drain(..) {
                self.deliver(d);
            }
            return;
        }
        let mut groups: Vec<Vec<Delivered>> = (0..slots).map(|_| Vec::new()).collect();
        for d in batch.drain(..) {
            let i = self.slot(&d.envelope.from);
            if let Some(g) = groups.get_mut(i) {
                g.push(d);
            }
        }
        for (i, mut group) in groups.into_iter().enumerate() {
            match group.len() {
                0 => {}
                1 => {
                    if let Some(d) = group.pop() {
                        self.dispatch(i, Msg::Deliver(d));
                    }
                }
                _ => self.dispatch(i, Msg::Batch(group)),
            }
        }
    }

    fn undeliverable(&self, envelope: Envelope, reason: Reason) {
        let i = self.slot(&envelope.from);
        self.dispatch(i, Msg::Undeliverable(envelope, reason));
    }

    fn credits(&self) -> Option<&Credits> {
        Some(&self.slots.credits)
    }
}
