//! route() for C: a blocking call for host threads and a never-blocking
//! one that is also allowed inside callbacks.

use std::ffi::c_char;

use bytes::Bytes;
use gd_core::routing::RouteResult;

use crate::args::{bytes_arg, jid_arg, non_null, not_in_callback, out_ptr, payload_kind_arg};
use crate::callbacks::reason_cstr;
use crate::error::{boundary, gd_status, Error, Result};
use crate::runtime::gd_runtime;

/// What route() decided.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum gd_route_kind {
    /// The host continues its own routing: the recipient is at this DC, or
    /// it is found in no DC and bounce cannot hold the stanza (disabled or
    /// full): route it locally (offline storage, or your own error).
    Local = 0,
    /// Queued towards another DC (`host`).
    Forwarded = 1,
    /// Held by bounce; the host hears of it again through `deliver` or
    /// `undeliverable`.
    Stored = 2,
    /// Given up (`reason`): answer the sender with an error.
    Undeliverable = 3,
}

/// The outcome of `gd_route` / `gd_route_try`, written by the library into
/// caller-provided memory. The strings are NOT owned by the caller: do not
/// free them.
#[repr(C)]
pub struct gd_route_result {
    pub kind: gd_route_kind,
    /// FORWARDED: local_host of the DC it was queued to, owned by the
    /// runtime and valid until `gd_runtime_free`. Otherwise NULL.
    pub host: *const c_char,
    /// UNDELIVERABLE: a static string (e.g. "queue_full", "unreachable").
    /// Otherwise NULL.
    pub reason: *const c_char,
    /// The 128-bit id given to the stanza, big-endian.
    pub message_id: [u8; 16],
}

/// # Safety
/// As documented on `gd_route`.
#[allow(clippy::too_many_arguments)]
unsafe fn route(
    rt: *const gd_runtime,
    from: *const c_char,
    to: *const c_char,
    kind: u32,
    payload: *const u8,
    payload_len: usize,
    out: *mut gd_route_result,
    blocking: bool,
) -> Result<()> {
    // SAFETY: the caller's contract for every pointer (see gd_route).
    let (rt, from, to, payload, out) = unsafe {
        (
            non_null(rt, "rt")?,
            jid_arg(from, "from")?,
            jid_arg(to, "to")?,
            bytes_arg(payload, payload_len, "payload")?,
            out_ptr(out, "out")?,
        )
    };
    let kind = payload_kind_arg(kind)?;
    let _log = rt.enter_log();
    let core = rt.live()?;
    if blocking {
        not_in_callback("gd_route")?;
    }
    let env = core.envelope(from, to, kind, Bytes::copy_from_slice(payload));
    let message_id = env.meta.message_id.to_be_bytes();
    let result = match core.try_route(env) {
        Ok(r) => r,
        Err(env) if blocking => core.block_on(core.route(env)),
        Err(_) => {
            return Err(Error::new(
                gd_status::WouldBlock,
                "gd_route_try: the route needs a store lookup or a new connection; \
                 call gd_route from a host thread (nothing was sent)",
            ))
        }
    };
    let (kind, host, reason) = match &result {
        RouteResult::Local => (gd_route_kind::Local, std::ptr::null(), std::ptr::null()),
        RouteResult::Forwarded(h) => (gd_route_kind::Forwarded, rt.host_cstr(h), std::ptr::null()),
        RouteResult::Stored => (gd_route_kind::Stored, std::ptr::null(), std::ptr::null()),
        RouteResult::Undeliverable(r) => (
            gd_route_kind::Undeliverable,
            std::ptr::null(),
            reason_cstr(*r),
        ),
    };
    *out = gd_route_result {
        kind,
        host,
        reason,
        message_id,
    };
    Ok(())
}

/// route(): decides where a stanza goes and, when another DC, queues it
/// there. `from`, `to` (JIDs) and `payload` (`payload_len` bytes, may be
/// NULL when 0; opaque to the library, e.g. the serialized stanza) are
/// borrowed for the call; the payload is copied. `kind` is a
/// `gd_payload_kind`. The result is written to `*out` (caller-provided;
/// see `gd_route_result` for who owns its strings).
///
/// Blocks when the recipient is not cached (a store lookup) or the first
/// connection to a DC is opened. Call it from host threads only, never
/// inside a callback (`GD_STATUS_IN_CALLBACK`): use `gd_route_try` there.
/// Thread-safe: any number of host threads may route at once.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_route(
    rt: *const gd_runtime,
    from: *const c_char,
    to: *const c_char,
    kind: u32,
    payload: *const u8,
    payload_len: usize,
    out: *mut gd_route_result,
) -> gd_status {
    // SAFETY: the caller's contract, documented above.
    boundary(|| unsafe { route(rt, from, to, kind, payload, payload_len, out, true) })
}

/// Like `gd_route` but never blocks, so it is also allowed inside a
/// callback: answers from the caches and queues at once, or returns
/// `GD_STATUS_WOULD_BLOCK` having sent nothing (then call `gd_route` from a
/// host thread). Same arguments and ownership as `gd_route`.
///
/// # Safety
/// Every pointer argument is NULL or valid as described above; a NULL
/// where a value is required gives `GD_STATUS_NULL_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn gd_route_try(
    rt: *const gd_runtime,
    from: *const c_char,
    to: *const c_char,
    kind: u32,
    payload: *const u8,
    payload_len: usize,
    out: *mut gd_route_result,
) -> gd_status {
    // SAFETY: the caller's contract, documented on gd_route.
    boundary(|| unsafe { route(rt, from, to, kind, payload, payload_len, out, false) })
}
