//! The core's [`Delivery`] for Erlang: every stanza handed to the host is
//! sent with `enif_send` to one of N worker pids registered by the host,
//! chosen by hashing the sender key (so one sender's stanzas stay in order),
//! as `{global_distrib, deliver | undeliverable, Meta, Payload}`, or, for
//! several stanzas of one network read bound to the same worker, as one
//! `{global_distrib, deliver_batch, [{Meta, Payload}]}` in arrival order:
//! one message and one wake-up instead of one per stanza.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use gd_core::routing::{sender_key, Delivered, Delivery, Envelope, Reason};
use gd_core::transport::frame::PayloadKind;
use parking_lot::RwLock;
use rustler::thread::is_scheduler_thread;
use rustler::{Atom, Encoder, Env, LocalPid, OwnedBinary, OwnedEnv, Term};

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

/// Sends the term built by `build` to `pid` from whatever thread we are on.
/// Runtime threads send directly; a scheduler thread (the rare inline
/// path) cannot use a process-independent env, so it hands over to a
/// short-lived thread. Returns false when the pid is dead.
pub fn send_any<F>(pid: LocalPid, build: F) -> bool
where
    F: for<'a> FnOnce(Env<'a>) -> Term<'a> + Send + 'static,
{
    if is_scheduler_thread() {
        return std::thread::Builder::new()
            .name("gd-send".into())
            .spawn(move || send_owned(pid, build))
            .is_ok();
    }
    send_owned(pid, build)
}

fn send_owned<F>(pid: LocalPid, build: F) -> bool
where
    F: for<'a> FnOnce(Env<'a>) -> Term<'a>,
{
    ENV.with(|cell| match cell.try_borrow_mut() {
        Ok(mut env) => env.send_and_clear(&pid, build).is_ok(),
        Err(_) => OwnedEnv::new().send_and_clear(&pid, build).is_ok(),
    })
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

/// `#{from, to, kind, message_id, origin, ttl, from_host, transfer_time_us, reason}`.
/// `reason`: why it is undeliverable; in a `deliver`, `undefined`, or why
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
    let pairs: Vec<(Term<'a>, Term<'a>)> = vec![
        (atoms::from().encode(env), e.from.as_full_str().encode(env)),
        (atoms::to().encode(env), e.to.as_full_str().encode(env)),
        (atoms::kind().encode(env), kind_atom(e.kind).encode(env)),
        (
            atoms::message_id().encode(env),
            e.meta.message_id.encode(env),
        ),
        (atoms::origin().encode(env), (*e.meta.origin).encode(env)),
        (atoms::ttl().encode(env), e.meta.ttl.encode(env)),
        (
            atoms::from_host().encode(env),
            from_host.map_or(undef, |h| h.encode(env)),
        ),
        (
            atoms::transfer_time_us().encode(env),
            transfer_time_us.encode(env),
        ),
        (
            atoms::reason().encode(env),
            reason.map_or(undef, |r| match Atom::from_str(env, r.as_str()) {
                Ok(a) => a.encode(env),
                Err(_) => undef,
            }),
        ),
    ];
    Term::map_from_pairs(env, &pairs).unwrap_or(undef)
}

/// Worker pids, indexed; a slot is refilled when a worker restarts.
pub struct ErlDelivery {
    global_host: String,
    workers: RwLock<Vec<Option<LocalPid>>>,
    sent: AtomicU64,
    lost: AtomicU64,
}

impl ErlDelivery {
    pub fn new(global_host: String, workers: Vec<LocalPid>) -> ErlDelivery {
        ErlDelivery {
            global_host,
            workers: RwLock::new(workers.into_iter().map(Some).collect()),
            sent: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        }
    }

    /// Puts `pid` in slot `index`, growing the pool if needed.
    pub fn set_worker(&self, index: usize, pid: LocalPid) {
        let mut w = self.workers.write();
        if w.len() <= index {
            w.resize(index + 1, None);
        }
        w[index] = Some(pid);
    }

    pub fn worker_count(&self) -> usize {
        self.workers.read().len()
    }

    /// (sent, lost: no worker or dead worker).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.lost.load(Ordering::Relaxed),
        )
    }

    fn pick(&self, from: &gd_core::jid::Jid) -> Option<LocalPid> {
        let w = self.workers.read();
        if w.is_empty() {
            return None;
        }
        w[self.slot(from, w.len())]
    }

    /// The worker slot of a sender among `slots` (> 0).
    fn slot(&self, from: &gd_core::jid::Jid, slots: usize) -> usize {
        let mut h = DefaultHasher::new();
        sender_key(from, &self.global_host).hash(&mut h);
        (h.finish() % slots as u64) as usize
    }

    fn dispatch<F>(&self, from: &gd_core::jid::Jid, build: F)
    where
        F: for<'a> FnOnce(Env<'a>) -> Term<'a> + Send + 'static,
    {
        let ok = match self.pick(from) {
            Some(pid) => send_any(pid, build),
            None => false,
        };
        if ok {
            self.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            self.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(from = %from.as_full_str(), "no live delivery worker: stanza dropped");
        }
    }
}

impl Delivery for ErlDelivery {
    fn deliver(&self, d: Delivered) {
        let from = d.envelope.from.clone();
        self.dispatch(&from, move |env| {
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
        });
    }

    fn deliver_many(&self, batch: &mut Vec<Delivered>) {
        let slots = self.workers.read().len();
        if batch.len() < 2 || slots == 0 {
            for d in batch.drain(..) {
                self.deliver(d);
            }
            return;
        }
        let mut groups: Vec<Vec<Delivered>> = (0..slots).map(|_| Vec::new()).collect();
        for d in batch.drain(..) {
            let i = self.slot(&d.envelope.from, slots);
            groups[i].push(d);
        }
        for (i, mut group) in groups.into_iter().enumerate() {
            if group.len() < 2 {
                if let Some(d) = group.pop() {
                    self.deliver(d);
                }
                continue;
            }
            let n = group.len() as u64;
            let pid = self.workers.read().get(i).copied().flatten();
            let ok = pid.is_some_and(|pid| {
                send_any(pid, move |env| {
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
                })
            });
            if ok {
                self.sent.fetch_add(n, Ordering::Relaxed);
            } else {
                self.lost.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(stanzas = n, "no live delivery worker: stanzas dropped");
            }
        }
    }

    fn undeliverable(&self, envelope: Envelope, reason: Reason) {
        let from = envelope.from.clone();
        self.dispatch(&from, move |env| {
            let meta = meta_term(env, &envelope, None, 0, Some(reason));
            (
                atoms::global_distrib(),
                atoms::undeliverable(),
                meta,
                binary(env, &envelope.payload),
            )
                .encode(env)
        });
    }
}
