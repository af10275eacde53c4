//! Erlang NIF binding of global_distrib (module `global_distrib_nif`).
//!
//! This crate only translates between Erlang terms and `gd_core` types and
//! moves work off the BEAM schedulers; every routing rule lives in the core.
//!
//! Scheduling rules (no NIF holds a normal scheduler for more than ~100 µs):
//! - inline: cache-hit `route/5` (payloads up to 16 KiB), `lookup/2` and
//!   `cache_origin/3`, `info/1`, `set_*`, `delivered/2`;
//! - `{wait, Ref}` then `{Ref, Result}` sent from a runtime thread: anything
//!   that needs the store or the network (session, subhost, route misses,
//!   lookup and cache_origin misses, public domains, refreshes, rebalance);
//! - dirty schedulers: `start/2`, `stop/2` (dirty IO), `metrics/1`,
//!   `prometheus/1`, `check_config/1`, `route_dirty/5` (dirty CPU).
//!
//! Nothing from Erlang can take the VM down: config terms are converted
//! with a depth limit, lists are decoded without rustler's panicking
//! iterator, and every index and size is checked (docs/ERLANG.md, "Bad
//! input").
//!
//! Runtime handles are `ResourceArc`s; dropping the last reference stops the
//! runtime on a thread of its own, never on a scheduler.

// Functions that cannot take a stanza hand the `Envelope` back by value.
#![allow(clippy::result_large_err)]

/// mimalloc for the library's own allocations: stanzas are allocated on
/// one thread and freed on another, where glibc malloc made the figures
/// swing from run to run (docs/PERFORMANCE.md). Feature `mimalloc`, on by
/// default.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod convert;
mod delivery;
mod log;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gd_core::config::Config;
use gd_core::jid::{Jid, JidRef};
use gd_core::mapping::Location;
use gd_core::metrics::MetricValue;
use gd_core::routing::RouteResult;
use gd_core::runtime::{OriginError, Runtime, SessionWrite, StartOptions};
use gd_core::store::{Backend, EmbeddedBackend, HealthReport};
use gd_core::transport::frame::PayloadKind;
use rustler::{
    Atom, Binary, Encoder, Env, LocalPid, NifResult, OwnedEnv, Resource, ResourceArc, Term,
};

pub use gd_core::VERSION;

use delivery::ErlDelivery;

mod atoms {
    rustler::atoms! {
        ok, error, wait, config, start, stopped, stored, bad_jid, bad_kind, bad_index, store,
        unknown_origin,
        local, forwarded, undeliverable, remote, unknown,
        message, presence, presence_unavailable, iq, other,
        workers, worker_threads, dispatch_shards,
        local_host, global_host, listen, bounce_queue_size, in_flight, delivered_sent, delivered_lost, delivered_held,
        unconfirmed, unconfirmed_bytes, host_waits,
        log_dropped, error_level = "error", warning, info, debug, trace, none,
        count, min, max, mean, sum, p50, p95, p99, nil,
        pending, status, backend, reachable, last_error, kind, age_s,
        pending_opens, last_refresh_age_s, refresh_lag_s, unrefreshed_keys, errors,
        undefined,
    }
}

/// A shared in-process store: runtimes of one VM started with the same
/// store see each other without Redis.
pub struct StoreRes {
    backend: Arc<dyn Backend>,
}

#[rustler::resource_impl]
impl Resource for StoreRes {}

/// One runtime (one node of one datacenter).
pub struct RtRes {
    rt: Arc<Runtime>,
    delivery: Arc<ErlDelivery>,
    stopped: AtomicBool,
}

#[rustler::resource_impl]
impl Resource for RtRes {}

impl Drop for RtRes {
    fn drop(&mut self) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        // The last handle went away (GC, maybe on a scheduler): stop off-VM.
        let rt = self.rt.clone();
        let _ = std::thread::Builder::new()
            .name("gd-drop".into())
            .spawn(move || {
                rt.stop(Duration::from_millis(500));
            });
    }
}

fn load(_env: Env, _info: Term) -> bool {
    log::install();
    true
}

fn err<'a, T: Encoder>(env: Env<'a>, reason: T) -> Term<'a> {
    (atoms::error(), reason).encode(env)
}

fn alive(rt: &RtRes) -> bool {
    !rt.stopped.load(Ordering::Acquire)
}

/// Runs `fut` on the runtime and answers `{wait, Ref}` now and
/// `{Ref, encode(result)}` to the caller when it completes.
fn wait_for<'a, Fut, T, E>(env: Env<'a>, rt: &RtRes, fut: Fut, encode: E) -> Term<'a>
where
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
    E: for<'b> FnOnce(Env<'b>, T) -> Term<'b> + Send + 'static,
{
    if !alive(rt) {
        return err(env, atoms::stopped());
    }
    let pid = env.pid();
    let reference = env.make_ref();
    let owned = OwnedEnv::new();
    let saved = owned.save(reference);
    rt.rt.spawn(async move {
        let value = fut.await;
        let mut owned = owned;
        let _ = owned.send_and_clear(&pid, move |e| {
            let r = saved.load(e);
            (r, encode(e, value)).encode(e)
        });
    });
    (atoms::wait(), reference).encode(env)
}

fn ok_term(env: Env<'_>, _: ()) -> Term<'_> {
    atoms::ok().encode(env)
}

fn jid_arg(b: &Binary) -> Result<Jid, String> {
    let s = std::str::from_utf8(b.as_slice()).map_err(|_| "not UTF-8".to_owned())?;
    Jid::parse(s).map_err(|e| format!("{s}: {e}"))
}

macro_rules! jid_or_return {
    ($env:expr, $b:expr) => {
        match jid_arg(&$b) {
            Ok(j) => j,
            Err(m) => return Ok(err($env, (atoms::bad_jid(), m))),
        }
    };
}

fn kind_arg(a: Atom) -> Option<PayloadKind> {
    Some(if a == atoms::message() {
        PayloadKind::Message
    } else if a == atoms::presence() {
        PayloadKind::Presence
    } else if a == atoms::presence_unavailable() {
        PayloadKind::PresenceUnavailable
    } else if a == atoms::iq() {
        PayloadKind::Iq
    } else if a == atoms::other() {
        PayloadKind::Other
    } else {
        return None;
    })
}

fn route_result(env: Env<'_>, r: RouteResult) -> Term<'_> {
    match r {
        RouteResult::Local => atoms::local().encode(env),
        RouteResult::Forwarded(h) => (atoms::forwarded(), delivery::str_term(env, &h)).encode(env),
        RouteResult::Stored => atoms::stored().encode(env),
        RouteResult::Undeliverable(reason) => {
            let a = Atom::from_str(env, reason.as_str()).unwrap_or(atoms::error());
            (atoms::undeliverable(), a).encode(env)
        }
    }
}

fn location(env: Env<'_>, l: Location) -> Term<'_> {
    match l {
        Location::Local => atoms::local().encode(env),
        Location::Remote(h) => (atoms::remote(), delivery::str_term(env, &h)).encode(env),
        Location::Unknown => atoms::unknown().encode(env),
    }
}

#[rustler::nif]
fn new_embedded_store(env: Env<'_>) -> Term<'_> {
    ResourceArc::new(StoreRes {
        backend: Arc::new(EmbeddedBackend::new()),
    })
    .encode(env)
}

/// `check_config(Config)`: `ok` or `{error, {config, Msg}}`, the same
/// reading as `start/2` without starting anything (dirty: the option
/// reader is cheap, but configurations can be large).
#[rustler::nif(schedule = "DirtyCpu")]
fn check_config<'a>(env: Env<'a>, config: Term<'a>) -> Term<'a> {
    let checked = convert::to_json(config)
        .and_then(|json| Config::from_json_value(json).map_err(|e| e.to_string()));
    match checked {
        Ok(_) => atoms::ok().encode(env),
        Err(m) => err(env, (atoms::config(), m)),
    }
}

/// Most delivery workers, tokio threads and dispatch shards a runtime takes
/// from `start/2`'s options: every size from Erlang is checked before it
/// allocates anything (a typo must not ask for a billion threads).
pub const MAX_WORKERS: usize = 1024;
pub const MAX_WORKER_THREADS: usize = 64;
pub const MAX_DISPATCH_SHARDS: usize = 64;

/// The elements of a proper list decoded as `T`; badarg for anything else
/// (rustler's `Vec<T>` decoder panics on an improper list).
fn list_of<'a, T: rustler::Decoder<'a>>(t: Term<'a>) -> NifResult<Vec<T>> {
    convert::proper_list(t)
        .ok_or(rustler::Error::BadArg)?
        .into_iter()
        .map(|x| x.decode())
        .collect()
}

/// An optional size option of `start/2` within `1..=max`.
fn size_opt(opts: Term<'_>, key: Atom, name: &str, max: usize) -> Result<Option<usize>, String> {
    let Ok(v) = opts.map_get(key) else {
        return Ok(None);
    };
    match v.decode::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(format!(
            "{name}: expected an integer from 1 to {max}, got {v:?}"
        )),
    }
}

/// `start(Config, Opts)`; Opts is a map with optional `store`, `workers`
/// (list of 1 to [`MAX_WORKERS`] pids), `worker_threads` (1 to
/// [`MAX_WORKER_THREADS`]), `dispatch_shards` (1 to [`MAX_DISPATCH_SHARDS`]).
/// A bad option is `{error, {config, <<"workers: ...">>}}`.
#[rustler::nif(schedule = "DirtyIo")]
fn start<'a>(env: Env<'a>, config: Term<'a>, opts: Term<'a>) -> NifResult<Term<'a>> {
    let json = match convert::to_json(config) {
        Ok(v) => v,
        Err(m) => return Ok(err(env, (atoms::config(), m))),
    };
    let cfg = match Config::from_json_value(json) {
        Ok(c) => c,
        Err(e) => return Ok(err(env, (atoms::config(), e.to_string()))),
    };
    let mut so = StartOptions::default();
    if let Ok(s) = opts.map_get(atoms::store()) {
        let s: ResourceArc<StoreRes> = s.decode()?;
        so.backend = Some(s.backend.clone());
    }
    let workers: Vec<LocalPid> = match opts.map_get(atoms::workers()) {
        Ok(w) => list_of(w)?,
        Err(_) => Vec::new(),
    };
    if workers.is_empty() || workers.len() > MAX_WORKERS {
        let m = format!(
            "workers: expected 1 to {MAX_WORKERS} delivery worker pids, got {}",
            workers.len()
        );
        return Ok(err(env, (atoms::config(), m)));
    }
    let sizes = size_opt(
        opts,
        atoms::worker_threads(),
        "worker_threads",
        MAX_WORKER_THREADS,
    )
    .and_then(|t| {
        let d = size_opt(
            opts,
            atoms::dispatch_shards(),
            "dispatch_shards",
            MAX_DISPATCH_SHARDS,
        )?;
        Ok((t, d))
    });
    match sizes {
        Ok((t, d)) => {
            so.worker_threads = t.unwrap_or(so.worker_threads);
            so.dispatch_shards = d.unwrap_or(so.dispatch_shards);
        }
        Err(m) => return Ok(err(env, (atoms::config(), m))),
    }
    let delivery = Arc::new(ErlDelivery::new(
        cfg.global_host.clone(),
        workers,
        cfg.connections.limits.max_unconfirmed_deliveries,
        cfg.connections.limits.max_unconfirmed_delivery_bytes,
    ));
    // Built on a thread of its own: the runtime's construction and the
    // first store calls must not happen on a (dirty) scheduler thread that
    // tokio would treat as its own.
    let d = delivery.clone();
    let started = std::thread::Builder::new()
        .name("gd-start".into())
        .spawn(move || Runtime::start_with(cfg, d, so))
        .map_err(|_| rustler::Error::Term(Box::new("cannot spawn a thread")))?
        .join();
    match started {
        Ok(Ok(rt)) => Ok((
            atoms::ok(),
            ResourceArc::new(RtRes {
                rt: Arc::new(rt),
                delivery,
                stopped: AtomicBool::new(false),
            }),
        )
            .encode(env)),
        Ok(Err(e)) => Ok(err(env, (atoms::start(), e.to_string()))),
        Err(_) => Ok(err(env, (atoms::start(), "runtime start panicked"))),
    }
}

/// Longest graceful stop accepted (ms): a larger `timeout_ms` is clamped
/// (an `Instant` plus an unbounded duration would overflow).
pub const MAX_STOP_MS: u64 = 24 * 3600 * 1000;

/// Graceful stop within `timeout_ms` (at most [`MAX_STOP_MS`]);
/// `{ok, Undeliverable}`. Idempotent.
#[rustler::nif(schedule = "DirtyIo")]
fn stop(rt: ResourceArc<RtRes>, timeout_ms: u64) -> (Atom, usize) {
    rt.stopped.store(true, Ordering::Release);
    let r = rt.rt.clone();
    let delivery = rt.delivery.clone();
    let timeout = Duration::from_millis(timeout_ms.min(MAX_STOP_MS));
    // Undeliverable reports are sent from the stopping thread: it must not
    // be a scheduler thread.
    let n = std::thread::Builder::new()
        .name("gd-stop".into())
        .spawn(move || {
            let n = r.stop(timeout).undeliverable;
            delivery.drop_held();
            n
        })
        .ok()
        .and_then(|h| h.join().ok())
        .unwrap_or(0);
    (atoms::ok(), n)
}

/// `set_worker(Rt, Index, Pid)`: the delivery worker of slot `Index` is
/// `Pid` now (a restarted worker). `{error, bad_index}` unless `Index` is
/// below the number of workers given at start; badarg for a negative or
/// non-integer index.
#[rustler::nif]
fn set_worker<'a>(env: Env<'a>, rt: ResourceArc<RtRes>, index: usize, pid: LocalPid) -> Term<'a> {
    if rt.delivery.set_worker(index, pid) {
        atoms::ok().encode(env)
    } else {
        err(env, atoms::bad_index())
    }
}

/// `delivered(Rt, Index)`: the calling worker of slot `Index` ran the
/// callback of its oldest unconfirmed stanza (inline: a lock and a pop).
/// `ok`, or `{error, bad_index}` when the caller is not that slot's worker.
#[rustler::nif]
fn delivered<'a>(env: Env<'a>, rt: ResourceArc<RtRes>, index: usize) -> Term<'a> {
    if rt.delivery.delivered(index, env.pid()) {
        atoms::ok().encode(env)
    } else {
        err(env, atoms::bad_index())
    }
}

/// `set_log(Pid | undefined, Level)`: where the core's log events go.
#[rustler::nif]
fn set_log(pid: Term<'_>, level: Atom) -> Atom {
    // `undefined` (or anything but a pid) means no target; rustler's
    // `Option<LocalPid>` would only accept `nil`.
    let pid: Option<LocalPid> = pid.decode().ok();
    let n = if level == atoms::error_level() {
        1
    } else if level == atoms::warning() {
        2
    } else if level == atoms::info() {
        3
    } else if level == atoms::debug() {
        4
    } else if level == atoms::trace() {
        5
    } else {
        3
    };
    let pid = if level == atoms::none() { None } else { pid };
    log::set_target(pid, n);
    atoms::ok()
}

/// `{Ref, ok}` when the store write is confirmed, `{Ref, {ok, pending}}`
/// when it failed and the refresher retries it.
#[rustler::nif]
fn session_opened<'a>(env: Env<'a>, rt: ResourceArc<RtRes>, jid: Binary) -> NifResult<Term<'a>> {
    let j = jid_or_return!(env, jid);
    let fut = rt.rt.session_opened(&j);
    Ok(wait_for(env, &rt, fut, |e, w| match w {
        SessionWrite::Confirmed => atoms::ok().encode(e),
        SessionWrite::Pending => (atoms::ok(), atoms::pending()).encode(e),
    }))
}

/// `store_health(Rt)`: `{wait, Ref}`, then `{Ref, {ok, Health}}` (the map
/// of docs/ERLANG.md, "Store health"). The check's `GET` runs on the
/// runtime's threads.
#[rustler::nif]
fn store_health<'a>(env: Env<'a>, rt: ResourceArc<RtRes>) -> Term<'a> {
    let fut = rt.rt.store_health();
    wait_for(env, &rt, fut, |e, h| match health_term(e, h) {
        Ok(t) => (atoms::ok(), t).encode(e),
        Err(_) => err(e, atoms::error()),
    })
}

fn health_term(env: Env<'_>, h: HealthReport) -> NifResult<Term<'_>> {
    let atom = |s: &str| Atom::from_str(env, s).map(|a| a.encode(env));
    let last_error = match h.last_error {
        None => atoms::undefined().encode(env),
        Some(le) => Term::map_from_pairs(
            env,
            &[
                (atoms::kind().encode(env), atom(le.kind.as_str())?),
                (atoms::message().encode(env), le.message.encode(env)),
                (atoms::age_s().encode(env), le.age_secs.encode(env)),
            ],
        )?,
    };
    let errors: Vec<(Term<'_>, Term<'_>)> = h
        .errors
        .iter()
        .map(|(k, n)| Ok((atom(k)?, n.encode(env))))
        .collect::<NifResult<_>>()?;
    let age = match h.last_refresh_age_secs {
        Some(s) => s.encode(env),
        None => atoms::undefined().encode(env),
    };
    Term::map_from_pairs(
        env,
        &[
            (atoms::status().encode(env), atom(h.status.as_str())?),
            (atoms::backend().encode(env), h.backend.encode(env)),
            (atoms::reachable().encode(env), h.reachable.encode(env)),
            (atoms::last_error().encode(env), last_error),
            (
                atoms::pending_opens().encode(env),
                h.pending_opens.encode(env),
            ),
            (atoms::last_refresh_age_s().encode(env), age),
            (
                atoms::refresh_lag_s().encode(env),
                h.refresh_lag_secs.encode(env),
            ),
            (
                atoms::unrefreshed_keys().encode(env),
                h.unrefreshed_keys.encode(env),
            ),
            (
                atoms::errors().encode(env),
                Term::map_from_pairs(env, &errors)?,
            ),
        ],
    )
}

#[rustler::nif]
fn session_closed<'a>(env: Env<'a>, rt: ResourceArc<RtRes>, jid: Binary) -> NifResult<Term<'a>> {
    let j = jid_or_return!(env, jid);
    let fut = rt.rt.session_closed(&j);
    Ok(wait_for(env, &rt, fut, ok_term))
}

#[rustler::nif]
fn register_subhost<'a>(
    env: Env<'a>,
    rt: ResourceArc<RtRes>,
    domain: String,
    public: bool,
) -> Term<'a> {
    let fut = rt.rt.register_subhost(&domain, public);
    wait_for(env, &rt, fut, ok_term)
}

#[rustler::nif]
fn unregister_subhost<'a>(env: Env<'a>, rt: ResourceArc<RtRes>, domain: String) -> Term<'a> {
    let fut = rt.rt.unregister_subhost(&domain);
    wait_for(env, &rt, fut, ok_term)
}

/// Payloads up to this size are copied inline by `route/5`; larger ones
/// must go through `route_dirty/5` (`global_distrib:route/5,6` chooses by
/// `byte_size/1`). Measured (median per call, local recipient, 2-core
/// shared machine, 2026-12-07): `route/5` 0.44 µs at 64 B, 0.83 µs at
/// 16 KiB; `route_dirty/5` 3.8-4.3 µs up to 4 KiB and 10-11 µs at
/// 16-64 KiB (the trip to a dirty scheduler and back), 34 µs at 1 MiB,
/// 4 ms at 16 MiB, 19 ms at 100 MiB. Inline stays near a microsecond up
/// to here, and the size of XMPP stanzas rarely passes it; past it the
/// copy grows without bound while the dirty trip is a fixed few µs.
/// docs/ERLANG.md.
pub const INLINE_PAYLOAD_MAX: usize = 16 * 1024;

/// `route(Rt, From, To, Kind, Payload)`: the decision inline when the
/// caches answer, else `{wait, Ref}`. A payload over
/// [`INLINE_PAYLOAD_MAX`] bytes is badarg: it would be copied on a normal
/// scheduler (use `route_dirty/5`).
#[rustler::nif]
fn route<'a>(
    env: Env<'a>,
    rt: ResourceArc<RtRes>,
    from: Binary,
    to: Binary,
    kind: Atom,
    payload: Binary,
) -> NifResult<Term<'a>> {
    if payload.len() > INLINE_PAYLOAD_MAX {
        return Err(rustler::Error::BadArg);
    }
    let routed = route_any(env, &rt, from, to, kind, payload);
    // A route() costs about a microsecond but counts as one reduction: a
    // process calling it in a loop would otherwise keep its scheduler for
    // thousands of calls (several ms when the machine is busy). Charging
    // 1 % of a timeslice makes it yield every hundred calls or so.
    rustler::schedule::consume_timeslice(env, 1);
    routed
}

/// `route_dirty(Rt, From, To, Kind, Payload)`: `route/5` on a dirty CPU
/// scheduler, for payloads of any size (the copy of a 100 MiB payload took
/// 19 ms). A stanza whose frame cannot fit `connections.max_frame_size`
/// is `{undeliverable, too_large}` when it would be forwarded.
#[rustler::nif(schedule = "DirtyCpu")]
fn route_dirty<'a>(
    env: Env<'a>,
    rt: ResourceArc<RtRes>,
    from: Binary,
    to: Binary,
    kind: Atom,
    payload: Binary,
) -> NifResult<Term<'a>> {
    route_any(env, &rt, from, to, kind, payload)
}

fn route_any<'a>(
    env: Env<'a>,
    rt: &RtRes,
    from: Binary,
    to: Binary,
    kind: Atom,
    payload: Binary,
) -> NifResult<Term<'a>> {
    if !alive(rt) {
        return Ok(route_result(
            env,
            RouteResult::Undeliverable(gd_core::routing::Reason::Stopped),
        ));
    }
    let from = jid_or_return!(env, from);
    let to = jid_or_return!(env, to);
    let Some(kind) = kind_arg(kind) else {
        return Ok(err(env, atoms::bad_kind()));
    };
    let envelope = rt
        .rt
        .envelope(from, to, kind, Bytes::copy_from_slice(payload.as_slice()));
    match rt.rt.try_route(envelope) {
        Ok(r) => Ok(route_result(env, r)),
        Err(envelope) => {
            let fut = rt.rt.route(envelope);
            Ok(wait_for(env, rt, fut, route_result))
        }
    }
}

/// `lookup(Rt, Jid)`: `local | {remote, Host} | unknown` from the caches,
/// else `{wait, Ref}` (then `{Ref, Location | {error, {store, Msg}}}`).
#[rustler::nif]
fn lookup<'a>(env: Env<'a>, rt: ResourceArc<RtRes>, jid: Binary) -> NifResult<Term<'a>> {
    // Canonical text (what the server holds) is asked as it is, with no
    // copy into a `Jid`; anything else is normalised first.
    let canonical = std::str::from_utf8(jid.as_slice())
        .ok()
        .and_then(JidRef::canonical);
    if let Some(l) = canonical.and_then(|j| rt.rt.mapping().lookup_cached_view(j)) {
        return Ok(location(env, l));
    }
    let j = jid_or_return!(env, jid);
    if let Some(l) = rt.rt.mapping().lookup_cached(&j) {
        return Ok(location(env, l));
    }
    let fut = rt.rt.lookup(&j);
    Ok(wait_for(env, &rt, fut, |e, r| match r {
        Ok(l) => location(e, l),
        Err(x) => err(e, (atoms::store(), x.to_string())),
    }))
}

#[rustler::nif]
fn public_domains<'a>(env: Env<'a>, rt: ResourceArc<RtRes>) -> Term<'a> {
    let fut = rt.rt.public_domains();
    wait_for(env, &rt, fut, |e, r| match r {
        Ok(v) => (atoms::ok(), v).encode(e),
        Err(x) => err(e, (atoms::store(), x.to_string())),
    })
}

/// `domains(Rt, PublicOnly)`: `{wait, Ref}`, then `{Ref, {ok, [Domain]}}`.
#[rustler::nif]
fn domains<'a>(env: Env<'a>, rt: ResourceArc<RtRes>, public_only: bool) -> Term<'a> {
    let fut = rt.rt.domains(public_only);
    wait_for(env, &rt, fut, |e, r| match r {
        Ok(v) => (atoms::ok(), v).encode(e),
        Err(x) => err(e, (atoms::store(), x.to_string())),
    })
}

#[rustler::nif]
fn refresh_hosts_now<'a>(env: Env<'a>, rt: ResourceArc<RtRes>) -> Term<'a> {
    let fut = rt.rt.refresh_hosts_now();
    wait_for(env, &rt, fut, ok_term)
}

#[rustler::nif]
fn refresh_now<'a>(env: Env<'a>, rt: ResourceArc<RtRes>) -> Term<'a> {
    let fut = rt.rt.refresh_now();
    wait_for(env, &rt, fut, ok_term)
}

/// `rebalance_now(Rt)`: `{wait, Ref}`, then `{Ref, ok}` once the endpoints
/// of every known DC were re-read and their pools rebalanced.
#[rustler::nif]
fn rebalance_now<'a>(env: Env<'a>, rt: ResourceArc<RtRes>) -> Term<'a> {
    let fut = rt.rt.rebalance_now();
    wait_for(env, &rt, fut, |e, _| atoms::ok().encode(e))
}

fn cache_origin_result(env: Env<'_>, r: Result<bool, OriginError>) -> Term<'_> {
    match r {
        Ok(_) => atoms::ok().encode(env),
        Err(OriginError::UnknownOrigin(h)) => err(env, (atoms::unknown_origin(), h)),
        Err(e @ OriginError::Store { .. }) => err(env, (atoms::store(), e.to_string())),
        Err(OriginError::Stopped) => err(env, atoms::stopped()),
    }
}

/// `cache_origin(Rt, Sender, OriginHost)`: `ok` inline when the caches and
/// the known DCs answer, else `{wait, Ref}` then `{Ref, ok | {error, _}}`;
/// `{error, {unknown_origin, Host}}` for a name that is no datacenter.
#[rustler::nif]
fn cache_origin<'a>(
    env: Env<'a>,
    rt: ResourceArc<RtRes>,
    sender: Binary,
    origin_bin: Binary,
) -> NifResult<Term<'a>> {
    if !alive(&rt) {
        return Ok(err(env, atoms::stopped()));
    }
    let sender = jid_or_return!(env, sender);
    let Ok(origin) = std::str::from_utf8(origin_bin.as_slice()) else {
        return Ok(err(env, (atoms::unknown_origin(), origin_bin)));
    };
    if let Some(r) = rt.rt.try_cache_origin(&sender, origin) {
        return Ok(cache_origin_result(env, r));
    }
    let fut = rt.rt.cache_origin(&sender, origin);
    Ok(wait_for(env, &rt, fut, cache_origin_result))
}

/// `store_del(Rt, Keys)`: deletes keys of the metadata store through this
/// runtime (operations and tests: simulate replication lag or loss).
#[rustler::nif]
fn store_del<'a>(env: Env<'a>, rt: ResourceArc<RtRes>, keys: Term<'a>) -> NifResult<Term<'a>> {
    let keys: Vec<String> = list_of(keys)?;
    let backend = rt.rt.store().backend().clone();
    let cmds: Vec<gd_core::store::Cmd> = keys
        .into_iter()
        .map(|key| gd_core::store::Cmd::Del { key })
        .collect();
    Ok(wait_for(
        env,
        &rt,
        async move { backend.exec(&cmds).await.map(|_| ()) },
        |e, r| match r {
            Ok(()) => atoms::ok().encode(e),
            Err(x) => err(e, (atoms::store(), x.to_string())),
        },
    ))
}

/// Number of endpoints known towards DC `host` (its pools are ready when > 0).
#[rustler::nif]
fn endpoints_of(rt: ResourceArc<RtRes>, host: String) -> usize {
    rt.rt.outgoing().endpoints_of(&host).len()
}

/// `endpoints(Rt, Host)`: the endpoints of DC `Host` whose pools are
/// enabled, as `[{Address, Port}]` (inline: a copy under a read lock).
#[rustler::nif]
fn endpoints(rt: ResourceArc<RtRes>, host: String) -> Vec<(String, u16)> {
    rt.rt
        .outgoing()
        .endpoints_of(&host)
        .into_iter()
        .map(|e| (e.host, e.port))
        .collect()
}

/// `disabled_pools(Rt, Host)`: pools towards `Host` disabled by a refresh
/// and not yet garbage-collected.
#[rustler::nif]
fn disabled_pools(rt: ResourceArc<RtRes>, host: String) -> usize {
    rt.rt.outgoing().disabled_pools(&host)
}

/// DEBUGGING ONLY: `debug_cache_session(Rt, Key, Host)` puts `Key → Host`
/// in this runtime's session cache without touching the store, as a stale
/// cache entry would be (tests of the TTL scenario). Never for production.
#[rustler::nif]
fn debug_cache_session(rt: ResourceArc<RtRes>, key: String, host: String) -> Atom {
    rt.rt.mapping().insert_session(&key, &host);
    atoms::ok()
}

fn store_cmd(t: Term<'_>) -> NifResult<gd_core::store::Cmd> {
    use gd_core::store::Cmd;
    let tuple = rustler::types::tuple::get_tuple(t)?;
    let name: Atom = tuple.first().ok_or(rustler::Error::BadArg)?.decode()?;
    let arg =
        |i: usize| -> NifResult<Term<'_>> { tuple.get(i).copied().ok_or(rustler::Error::BadArg) };
    let s = |i: usize| -> NifResult<String> { arg(i)?.decode() };
    Ok(
        match (
            name.to_term(t.get_env()).atom_to_string()?.as_str(),
            tuple.len(),
        ) {
            ("get", 2) => Cmd::Get { key: s(1)? },
            ("del", 2) => Cmd::Del { key: s(1)? },
            ("smembers", 2) => Cmd::SMembers { key: s(1)? },
            ("hgetall", 2) => Cmd::HGetAll { key: s(1)? },
            ("sadd", 3) => Cmd::SAdd {
                key: s(1)?,
                members: list_of(arg(2)?)?,
            },
            ("srem", 3) => Cmd::SRem {
                key: s(1)?,
                members: list_of(arg(2)?)?,
            },
            ("hdel", 3) => Cmd::HDel {
                key: s(1)?,
                field: s(2)?,
            },
            ("hset", 4) => Cmd::HSet {
                key: s(1)?,
                field: s(2)?,
                value: s(3)?,
            },
            _ => return Err(rustler::Error::BadArg),
        },
    )
}

fn store_reply(env: Env<'_>, r: gd_core::store::Reply) -> Term<'_> {
    use gd_core::store::Reply;
    match r {
        Reply::Nil => atoms::nil().encode(env),
        Reply::Ok => atoms::ok().encode(env),
        Reply::Int(i) => i.encode(env),
        Reply::Str(s) => s.encode(env),
        Reply::List(l) => l.encode(env),
        Reply::Pairs(p) => p.encode(env),
        Reply::Scan { cursor, members } => (cursor, members).encode(env),
        Reply::Error(m) => err(env, m),
    }
}

/// DEBUGGING ONLY: `debug_store_exec(Rt, Cmds)` runs raw commands of the
/// store dialect through this runtime's backend (tests and operations:
/// simulate other nodes, inspect keys). Cmds: `{get, K}`, `{del, K}`,
/// `{smembers, K}`, `{hgetall, K}`, `{sadd, K, [M]}`, `{srem, K, [M]}`,
/// `{hdel, K, F}`, `{hset, K, F, V}`. `{wait, Ref}`, then
/// `{Ref, {ok, Replies}}` (`nil | ok | integer() | binary() | [binary()]
/// | [{binary(), binary()}] | {error, Msg}` each) or `{Ref, {error, {store, Msg}}}`.
#[rustler::nif]
fn debug_store_exec<'a>(
    env: Env<'a>,
    rt: ResourceArc<RtRes>,
    cmds: Term<'a>,
) -> NifResult<Term<'a>> {
    let cmds = list_of::<Term<'a>>(cmds)?
        .into_iter()
        .map(store_cmd)
        .collect::<NifResult<Vec<_>>>()?;
    let backend = rt.rt.store().backend().clone();
    Ok(wait_for(
        env,
        &rt,
        async move { backend.exec(&cmds).await },
        |e, r| match r {
            Ok(replies) => {
                let terms: Vec<Term<'_>> = replies.into_iter().map(|x| store_reply(e, x)).collect();
                (atoms::ok(), terms).encode(e)
            }
            Err(x) => err(e, (atoms::store(), x.to_string())),
        },
    ))
}

#[rustler::nif]
fn info<'a>(env: Env<'a>, rt: ResourceArc<RtRes>) -> NifResult<Term<'a>> {
    let listen: Vec<(String, u16)> = rt
        .rt
        .listen_addrs()
        .iter()
        .map(|a| (a.ip().to_string(), a.port()))
        .collect();
    let (sent, lost) = rt.delivery.counts();
    let (unconfirmed, unconfirmed_bytes, host_waits) = rt.delivery.unconfirmed();
    let pairs: Vec<(Term<'a>, Term<'a>)> = vec![
        (
            atoms::local_host().encode(env),
            rt.rt.local_host().encode(env),
        ),
        (
            atoms::global_host().encode(env),
            rt.rt.config().global_host.encode(env),
        ),
        (atoms::listen().encode(env), listen.encode(env)),
        (
            atoms::bounce_queue_size().encode(env),
            rt.rt.bounce_queue_size().encode(env),
        ),
        (
            atoms::in_flight().encode(env),
            rt.rt.outgoing().in_flight().encode(env),
        ),
        (
            atoms::workers().encode(env),
            rt.delivery.worker_count().encode(env),
        ),
        (atoms::delivered_sent().encode(env), sent.encode(env)),
        (atoms::delivered_lost().encode(env), lost.encode(env)),
        (atoms::unconfirmed().encode(env), unconfirmed.encode(env)),
        (
            atoms::unconfirmed_bytes().encode(env),
            unconfirmed_bytes.encode(env),
        ),
        (atoms::host_waits().encode(env), host_waits.encode(env)),
        (
            atoms::delivered_held().encode(env),
            rt.delivery.held().encode(env),
        ),
        (atoms::log_dropped().encode(env), log::dropped().encode(env)),
        (atoms::stopped().encode(env), (!alive(&rt)).encode(env)),
    ];
    Term::map_from_pairs(env, &pairs)
}

/// `#{Name => Integer | #{count, min, max, mean, sum, p50, p95, p99}}`.
#[rustler::nif(schedule = "DirtyCpu")]
fn metrics<'a>(env: Env<'a>, rt: ResourceArc<RtRes>) -> NifResult<Term<'a>> {
    let snap = rt.rt.metrics().snapshot();
    let mut pairs: Vec<(Term<'a>, Term<'a>)> = Vec::with_capacity(snap.0.len());
    for (name, v) in snap.0 {
        let value = match v {
            MetricValue::Counter(c) => c.encode(env),
            MetricValue::Gauge(g) => g.encode(env),
            MetricValue::Histogram(h) => {
                let hp: Vec<(Term<'a>, Term<'a>)> = vec![
                    (atoms::count().encode(env), h.count.encode(env)),
                    (atoms::min().encode(env), h.min.encode(env)),
                    (atoms::max().encode(env), h.max.encode(env)),
                    (atoms::mean().encode(env), h.mean.encode(env)),
                    (atoms::sum().encode(env), h.sum.encode(env)),
                    (atoms::p50().encode(env), h.p50.encode(env)),
                    (atoms::p95().encode(env), h.p95.encode(env)),
                    (atoms::p99().encode(env), h.p99.encode(env)),
                ];
                Term::map_from_pairs(env, &hp)?
            }
        };
        pairs.push((name.encode(env), value));
    }
    Term::map_from_pairs(env, &pairs)
}

#[rustler::nif(schedule = "DirtyCpu")]
fn prometheus(rt: ResourceArc<RtRes>) -> String {
    rt.rt.metrics().prometheus()
}

#[rustler::nif]
fn version() -> &'static str {
    VERSION
}

rustler::init!("global_distrib_nif", load = load);
