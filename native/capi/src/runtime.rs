//! `gd_runtime` (one node of one datacenter) and `gd_store` (an embedded
//! metadata store several runtimes of one process can share): creation,
//! stop, free, sessions, subhosts and what a test or operator reads back.

use std::collections::HashMap;
use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gd_core::config::Config;
use gd_core::runtime::{OriginError, Runtime, SessionWrite, StartOptions};
use gd_core::store::{Backend, EmbeddedBackend};

use crate::args::{jid_arg, non_null, not_in_callback, out_ptr, str_arg};
use crate::callbacks::{gd_callbacks, gd_log_level, CDelivery, StanzaCallbacks, UserData};
use crate::error::{boundary, gd_status, Error, Result};
use crate::log::Registration;
use gd_core::credits::Credits;

/// Format of the configuration text given to `gd_runtime_new`. Functions
/// take it as `uint32_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum gd_config_format {
    /// MongooseIM TOML: a whole mongooseim.toml or the keys of
    /// `[modules.mod_global_distrib]` at top level.
    Toml = 0,
    /// The same tree as JSON.
    Json = 1,
}

/// One node of one datacenter: its threads, listeners, caches and
/// background tasks. Opaque; create with `gd_runtime_new`, release with
/// `gd_runtime_free`.
pub struct gd_runtime {
    // Declared first so it drops first: stopping may still log.
    pub(crate) rt: Runtime,
    stopped: AtomicBool,
    /// Forwarded-to hosts as C strings, handed out by gd_route and kept
    /// until free (one per remote DC ever routed to).
    hosts: Mutex<HashMap<Arc<str>, CString>>,
    log: Option<Registration>,
    delivery: Arc<CDelivery>,
}

/// An embedded (in-process) metadata store. Runtimes created with the same
/// store see each other like DCs sharing one Redis: for tests, demos and
/// one-process deployments. Opaque; release with `gd_store_free`.
pub struct gd_store {
    backend: Arc<dyn Backend>,
}

impl gd_runtime {
    /// The runtime, unless it was stopped.
    pub(crate) fn live(&self) -> Result<&Runtime> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(Error::new(
                gd_status::Stopped,
                "the runtime was stopped (gd_runtime_stop); only metrics and gd_runtime_free remain",
            ));
        }
        Ok(&self.rt)
    }

    /// `host` as a C string that lives as long as the runtime.
    pub(crate) fn host_cstr(&self, host: &Arc<str>) -> *const c_char {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts
            .entry(host.clone())
            .or_insert_with(|| CString::new(host.as_bytes()).unwrap_or_default())
            .as_ptr()
    }

    /// Routes events emitted on this thread during the call to this
    /// runtime's log callback.
    pub(crate) fn enter_log(&self) -> Option<crate::log::CurrentGuard> {
        self.log.as_ref().map(|l| l.enter())
    }
}

impl Drop for gd_runtime {
    fn drop(&mut self) {
        // Runtime::drop stops on this thread: route its events here.
        let _guard = self.enter_log();
        if !self.stopped.swap(true, Ordering::AcqRel) {
            self.rt.stop(Duration::from_millis(500));
        }
        // No callback runs after free returns: the delivery threads run
        // what they hold and end (what the runtime still reports while it
        // drops runs on this thread).
        self.delivery.close();
    }
}

fn parse_config(text: &str, format: u32) -> Result<Config> {
    let parsed = match format {
        0 => Config::from_toml_str(text),
        1 => Config::from_json_str(text),
        other => {
            return Err(Error::new(
                gd_status::InvalidArgument,
                format!("format: {other} is not a gd_config_format (0 = TOML, 1 = JSON)"),
            ))
        }
    };
    parsed.map_err(|e| Error::new(gd_status::Config, format!("invalid configuration: {e}")))
}

/// Shared by both constructors.
///
/// # Safety
/// As documented on `gd_runtime_new_with_store`.
unsafe fn new_runtime(
    config_text: *const c_char,
    format: u32,
    callbacks: *const gd_callbacks,
    store: *const gd_store,
    out: *mut *mut gd_runtime,
) -> Result<()> {
    // SAFETY: pointer validity is the caller's contract (see the docs).
    let out = unsafe { out_ptr(out, "out") }?;
    *out = std::ptr::null_mut();
    // SAFETY: as above.
    let text = unsafe { str_arg(config_text, "config_text") }?;
    // SAFETY: as above.
    let cb = *unsafe { non_null(callbacks, "callbacks") }?;
    // SAFETY: as above; NULL means "build the store from the configuration".
    let backend = unsafe { store.as_ref() }.map(|s| s.backend.clone());
    not_in_callback("gd_runtime_new")?;
    let config = parse_config(text, format)?;
    let log = cb
        .log
        .map(|f| Registration::new(&config.local_host, cb.log_level, f, cb.user_data));
    let limits = &config.connections.limits;
    let delivery = CDelivery::start(
        StanzaCallbacks {
            user_data: UserData(cb.user_data),
            deliver: cb.deliver,
            undeliverable: cb.undeliverable,
        },
        config.global_host.clone(),
        limits.delivery_threads,
        Credits::new(
            limits.max_unconfirmed_deliveries,
            limits.max_unconfirmed_delivery_bytes,
        ),
    )
    .map_err(|e| {
        Error::new(
            gd_status::Start,
            format!("cannot start a delivery thread: {e}"),
        )
    })?;
    let delivery = Arc::new(delivery);
    let opts = StartOptions {
        backend,
        ..StartOptions::default()
    };
    let guard = log.as_ref().map(|l| l.enter());
    let started = Runtime::start_with(config, delivery.clone(), opts);
    drop(guard);
    let rt = match started {
        Ok(rt) => rt,
        Err(e) => {
            delivery.close();
            let message = format!("cannot start the runtime: {e}");
            if let Some(l) = &log {
                l.emit(gd_log_level::Error, &message);
            }
            let status = match e {
                gd_core::runtime::StartError::Config(_) => gd_status::Config,
                _ => gd_status::Start,
            };
            return Err(Error::new(status, message));
        }
    };
    *out = Box::into_raw(Box::new(gd_runtime {
        rt,
        stopped: AtomicBool::new(false),
        hosts: Mutex::new(HashMap::new()),
        log,
        delivery,
    }));
    Ok(())
}

/// Creates and starts a runtime from configuration text (see
/// docs/CONFIG.md; `format` is a `gd_config_format`), with the store the
/// configuration names (`backend`: embedded by default, or redis).
///
/// On success `*out` receives a runtime the caller owns and must release
/// with `gd_runtime_free`; on failure `*out` is set to NULL (when `out` is
/// not NULL) and `gd_last_error()` explains, naming the option path for
/// configuration errors (`GD_STATUS_CONFIG`).
///
/// `config_text` is borrowed for the call. `callbacks` is copied; its
/// `user_data` must stay valid until `gd_runtime_free` returns. Blocks
/// while starting (listeners bound, first store write done); not allowed
/// inside a callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_runtime_new(
    config_text: *const c_char,
    format: u32,
    callbacks: *const gd_callbacks,
    out: *mut *mut gd_runtime,
) -> gd_status {
    // SAFETY: the caller's contract, documented above.
    boundary(|| unsafe { new_runtime(config_text, format, callbacks, std::ptr::null(), out) })
}

/// Like `gd_runtime_new`, but the runtime uses `store` (from
/// `gd_store_new_embedded`) instead of the store its configuration names,
/// so several runtimes of this process see each other. `store` is
/// borrowed: the runtime keeps its own reference, so the store may be
/// freed before the runtime. A NULL `store` behaves as `gd_runtime_new`.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_runtime_new_with_store(
    config_text: *const c_char,
    format: u32,
    callbacks: *const gd_callbacks,
    store: *const gd_store,
    out: *mut *mut gd_runtime,
) -> gd_status {
    // SAFETY: the caller's contract, documented above.
    boundary(|| unsafe { new_runtime(config_text, format, callbacks, store, out) })
}

/// Graceful stop: stop accepting and refreshing, flush queued stanzas
/// within `timeout_ms`, report the rest through `undeliverable` (reason
/// "stopped"), and wait until every callback reported so far has run (on
/// the delivery threads). Afterwards
/// only metrics, `gd_runtime_listen_port` and `gd_runtime_free` work; other
/// calls return `GD_STATUS_STOPPED`. Idempotent. `*undeliverable_out`, when
/// not NULL, receives how many stanzas were reported undeliverable.
/// Blocks; not allowed inside a callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_runtime_stop(
    rt: *mut gd_runtime,
    timeout_ms: u64,
    undeliverable_out: *mut usize,
) -> gd_status {
    boundary(|| {
        // SAFETY: `rt` is NULL or from gd_runtime_new and not yet freed.
        let rt = unsafe { non_null(rt.cast_const(), "rt") }?;
        not_in_callback("gd_runtime_stop")?;
        let _guard = rt.enter_log();
        let mut n = 0;
        if !rt.stopped.swap(true, Ordering::AcqRel) {
            n = rt.rt.stop(Duration::from_millis(timeout_ms)).undeliverable;
        }
        // Everything reported so far has reached its callback.
        rt.delivery.drain();
        // SAFETY: NULL or writable, per the docs.
        if let Some(out) = unsafe { undeliverable_out.as_mut() } {
            *out = n;
        }
        Ok(())
    })
}

/// Stops the runtime (when not yet stopped, with a 500 ms flush deadline)
/// and releases it. Takes ownership of `rt`: it must not be used
/// afterwards. NULL is accepted and ignored. Blocks; not allowed inside a
/// callback (returns `GD_STATUS_IN_CALLBACK` and frees nothing). After it
/// returns no callback of this runtime runs any more: it runs what the
/// delivery threads still hold and waits for the callbacks in progress,
/// however long they take.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_runtime_free(rt: *mut gd_runtime) -> gd_status {
    boundary(|| {
        if rt.is_null() {
            return Ok(());
        }
        not_in_callback("gd_runtime_free")?;
        // SAFETY: from gd_runtime_new (Box::into_raw), freed only here.
        drop(unsafe { Box::from_raw(rt) });
        Ok(())
    })
}

/// A user's session opened at this DC (`jid`: full JID, borrowed). Waits
/// until the session table is written or the write failed (within
/// `redis.timeout_ms`); the newest login wins. `GD_STATUS_OK` in both
/// cases: a failed write is a pending open, retried every second, and
/// routing at this DC finds the user already. Use
/// `gd_session_opened_status` to learn which. Blocks; not allowed inside a
/// callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_session_opened(rt: *const gd_runtime, jid: *const c_char) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, NUL-terminated jid).
        let (rt, jid) = unsafe { (non_null(rt, "rt")?, jid_arg(jid, "jid")?) };
        let _log = rt.enter_log();
        let rt = rt.live()?;
        not_in_callback("gd_session_opened")?;
        rt.block_on(rt.session_opened(&jid));
        Ok(())
    })
}

/// `gd_session_opened`, telling in `*pending` where the store write
/// stands: `false` when the session's keys are written, `true` when the
/// write failed and is a pending open (retried every second by the
/// refresher; `gd_runtime_store_health` counts them). `*pending` is only
/// written on `GD_STATUS_OK`. Blocks; not allowed inside a callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_session_opened_status(
    rt: *const gd_runtime,
    jid: *const c_char,
    pending: *mut bool,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, NUL-terminated jid,
        // writable pending).
        let (rt, jid, pending) = unsafe {
            (
                non_null(rt, "rt")?,
                jid_arg(jid, "jid")?,
                out_ptr(pending, "pending")?,
            )
        };
        let _log = rt.enter_log();
        let rt = rt.live()?;
        not_in_callback("gd_session_opened_status")?;
        *pending = rt.block_on(rt.session_opened(&jid)) == SessionWrite::Pending;
        Ok(())
    })
}

/// A user's session closed at this DC (`jid` borrowed). Blocks; not
/// allowed inside a callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_session_closed(rt: *const gd_runtime, jid: *const c_char) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, NUL-terminated jid).
        let (rt, jid) = unsafe { (non_null(rt, "rt")?, jid_arg(jid, "jid")?) };
        let _log = rt.enter_log();
        let rt = rt.live()?;
        not_in_callback("gd_session_closed")?;
        rt.block_on(rt.session_closed(&jid));
        Ok(())
    })
}

/// A component or MUC subdomain (`domain`, borrowed) is served at this DC;
/// `is_public` lists it in every DC's disco items. Blocks; not allowed
/// inside a callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_subhost_register(
    rt: *const gd_runtime,
    domain: *const c_char,
    is_public: bool,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, NUL-terminated domain).
        let (rt, domain) = unsafe { (non_null(rt, "rt")?, str_arg(domain, "domain")?) };
        let _log = rt.enter_log();
        let rt = rt.live()?;
        not_in_callback("gd_subhost_register")?;
        rt.block_on(rt.register_subhost(domain, is_public));
        Ok(())
    })
}

/// The subdomain (`domain`, borrowed) is no longer served here. Blocks;
/// not allowed inside a callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_subhost_unregister(
    rt: *const gd_runtime,
    domain: *const c_char,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, NUL-terminated domain).
        let (rt, domain) = unsafe { (non_null(rt, "rt")?, str_arg(domain, "domain")?) };
        let _log = rt.enter_log();
        let rt = rt.live()?;
        not_in_callback("gd_subhost_unregister")?;
        rt.block_on(rt.unregister_subhost(domain));
        Ok(())
    })
}

/// A stanza from `sender` (a JID, borrowed) entered global routing at the
/// DC `origin_host` (borrowed); call it on the node of the component the
/// stanza is for, as MongooseIM's `maybe_update_mapping/2` does: if a
/// lookup finds the sender nowhere, the cache (never the store) learns
/// `sender → origin_host`, so the component's answer is routed before the
/// store replicates. A user of the global host is cached by full and bare
/// JID, a domain sender (no user part) as a domain; other senders are left
/// alone. Skip `presence type='unavailable'`, as MongooseIM does.
/// `origin_host` must be this DC's local_host or a DC of the store's
/// `hosts` set: `GD_STATUS_INVALID_ARGUMENT` otherwise (remote input must
/// not create state for arbitrary names); `GD_STATUS_STORE` when that set
/// cannot be read. Blocks when the store must be asked; not allowed inside
/// a callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_cache_origin(
    rt: *const gd_runtime,
    sender: *const c_char,
    origin_host: *const c_char,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, NUL-terminated strings).
        let (rt, sender, origin) = unsafe {
            (
                non_null(rt, "rt")?,
                jid_arg(sender, "sender")?,
                str_arg(origin_host, "origin_host")?,
            )
        };
        let _log = rt.enter_log();
        let rt = rt.live()?;
        not_in_callback("gd_cache_origin")?;
        let outcome = match rt.try_cache_origin(&sender, origin) {
            Some(r) => r,
            None => rt.block_on(rt.cache_origin(&sender, origin)),
        };
        match outcome {
            Ok(_) => Ok(()),
            Err(e @ OriginError::UnknownOrigin(_)) => Err(Error::new(
                gd_status::InvalidArgument,
                format!("origin_host: {e}"),
            )),
            Err(e @ OriginError::Store { .. }) => Err(Error::new(gd_status::Store, e.to_string())),
            Err(e @ OriginError::Stopped) => Err(Error::new(gd_status::Stopped, e.to_string())),
        }
    })
}

/// Re-reads the endpoints of every DC this runtime has pools for and
/// rebalances them now, without waiting for
/// `connections.endpoint_refresh_interval` (MongooseIM's
/// `mod_global_distrib_server_mgr:force_refresh/1`): a new endpoint gets a
/// pool and takes traffic, a vanished one is disabled (then closed by the
/// disabled GC). Writes nothing to the store. Blocks (reads the store); not
/// allowed inside a callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_rebalance_now(rt: *const gd_runtime) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime).
        let rt = unsafe { non_null(rt, "rt")? };
        let _log = rt.enter_log();
        let rt = rt.live()?;
        not_in_callback("gd_rebalance_now")?;
        rt.block_on(rt.rebalance_now());
        Ok(())
    })
}

/// The public subdomains of every DC (disco items) as a JSON array of
/// strings in `*out`, which the caller owns and frees with
/// `gd_string_free`. Blocks (reads the store); not allowed inside a
/// callback.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_subhost_list_public(
    rt: *const gd_runtime,
    out: *mut *mut c_char,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, writable out).
        let (rt, out) = unsafe { (non_null(rt, "rt")?, out_ptr(out, "out")?) };
        *out = std::ptr::null_mut();
        let _log = rt.enter_log();
        let rt = rt.live()?;
        not_in_callback("gd_subhost_list_public")?;
        let mut domains = rt
            .block_on(rt.public_domains())
            .map_err(|e| Error::new(gd_status::Store, format!("public domains: {e}")))?;
        domains.sort();
        let json = format!(
            "[{}]",
            domains
                .iter()
                .map(|d| json_string(d))
                .collect::<Vec<_>>()
                .join(",")
        );
        *out = crate::metrics::into_c_string(json);
        Ok(())
    })
}

fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The port of listener number `index` (in the order of
/// `connections.endpoints`; port 0 in the configuration is resolved to the
/// port really bound). `GD_STATUS_INVALID_ARGUMENT` when there is no such
/// listener. Never blocks.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_runtime_listen_port(
    rt: *const gd_runtime,
    index: usize,
    out: *mut u16,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, writable out).
        let (rt, out) = unsafe { (non_null(rt, "rt")?, out_ptr(out, "out")?) };
        let addrs = rt.rt.listen_addrs();
        let addr = addrs.get(index).ok_or_else(|| {
            Error::new(
                gd_status::InvalidArgument,
                format!(
                    "index: {index}, but the runtime has {} listener(s)",
                    addrs.len()
                ),
            )
        })?;
        *out = addr.port();
        Ok(())
    })
}

/// Stanzas currently held by bounce, in `*out`. Never blocks.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_runtime_bounce_queue_size(
    rt: *const gd_runtime,
    out: *mut usize,
) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (valid runtime, writable out).
        let (rt, out) = unsafe { (non_null(rt, "rt")?, out_ptr(out, "out")?) };
        *out = rt.rt.bounce_queue_size();
        Ok(())
    })
}

/// Creates an embedded store in `*out`, owned by the caller and released
/// with `gd_store_free`. Pass it to `gd_runtime_new_with_store`.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_store_new_embedded(out: *mut *mut gd_store) -> gd_status {
    boundary(|| {
        // SAFETY: the caller's contract (writable out).
        let out = unsafe { out_ptr(out, "out") }?;
        *out = Box::into_raw(Box::new(gd_store {
            backend: Arc::new(EmbeddedBackend::new()),
        }));
        Ok(())
    })
}

/// Releases the caller's reference to `store` (runtimes using it keep
/// theirs). NULL is accepted and ignored.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_store_free(store: *mut gd_store) -> gd_status {
    boundary(|| {
        if !store.is_null() {
            // SAFETY: from gd_store_new_embedded (Box::into_raw), freed only here.
            drop(unsafe { Box::from_raw(store) });
        }
        Ok(())
    })
}
