//! The host's callbacks (`gd_callbacks`) and the `Delivery` that calls
//! them. Stanzas cross as a `gd_delivery` whose pointers borrow from the
//! envelope and one reused per-thread buffer: nothing is allocated per
//! stanza once a thread has warmed up, and nothing outlives the call.

use std::cell::RefCell;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use gd_core::routing::{Delivered, Delivery, Envelope, Reason};
use gd_core::transport::frame::PayloadKind;

/// What a payload is (travels with the stanza; the receiver skips the
/// origin hint for unavailable presence). Functions take it as `uint32_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum gd_payload_kind {
    Other = 0,
    Message = 1,
    Presence = 2,
    PresenceUnavailable = 3,
    Iq = 4,
}

impl From<PayloadKind> for gd_payload_kind {
    fn from(k: PayloadKind) -> Self {
        match k {
            PayloadKind::Other => gd_payload_kind::Other,
            PayloadKind::Message => gd_payload_kind::Message,
            PayloadKind::Presence => gd_payload_kind::Presence,
            PayloadKind::PresenceUnavailable => gd_payload_kind::PresenceUnavailable,
            PayloadKind::Iq => gd_payload_kind::Iq,
        }
    }
}

/// Severity of a log event passed to `gd_callbacks.log`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum gd_log_level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
    Trace = 5,
}

/// A stanza handed to the host. Every pointer is valid only during the
/// callback that receives it: copy what you keep. Strings are
/// NUL-terminated UTF-8.
#[repr(C)]
pub struct gd_delivery {
    /// Sender JID (full form when it has a resource).
    pub from: *const c_char,
    /// Recipient JID, as the sender addressed it.
    pub to: *const c_char,
    pub kind: gd_payload_kind,
    /// The payload bytes (NULL when `payload_len` is 0); not NUL-terminated.
    pub payload: *const u8,
    pub payload_len: usize,
    /// local_host of the DC where the stanza entered global routing.
    pub origin: *const c_char,
    /// local_host of the DC it arrived from; NULL when it did not come
    /// over the wire (held by bounce here, or in `undeliverable`).
    pub from_host: *const c_char,
    /// 128-bit message id, big-endian; the same at every DC it visits.
    pub message_id: [u8; 16],
    /// Reroutes left.
    pub ttl: u8,
    /// Sender clock to receiver clock in µs (0 when not from the wire).
    pub transfer_time_us: u64,
    /// In `deliver`: NULL for a stanza that simply arrived; a static string
    /// when global routing gave up on the stanza because its recipient is
    /// found in no DC and hands it back to your local routing (offline
    /// storage, or your own error for a user that does not exist), saying
    /// when: "retries_exhausted" (bounce's retries ran out), "no_route"
    /// (bounce disabled), "bounce_full", "stopped" (the runtime stopped
    /// while bounce held it). Always NULL in `undeliverable`.
    pub unrouted: *const c_char,
}

/// `deliver`: a stanza for a local recipient arrived from another DC (or
/// left bounce here), or one whose recipient is found in no DC
/// (`delivery->unrouted` non-NULL); route it locally, never through
/// `gd_route` again.
pub type gd_deliver_fn =
    Option<unsafe extern "C" fn(user_data: *mut c_void, delivery: *const gd_delivery)>;

/// `undeliverable`: a stanza was given up; answer its sender with an error
/// (e.g. service-unavailable). `reason` is a static string such as
/// "retries_exhausted", "unreachable", "queue_full", "too_large", "rejected",
/// "stopped".
/// A recipient found in no DC never ends here: it goes to `deliver`.
pub type gd_undeliverable_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        delivery: *const gd_delivery,
        reason: *const c_char,
    ),
>;

/// `log`: one log event of the runtime, `message` valid during the call.
pub type gd_log_fn = Option<
    unsafe extern "C" fn(user_data: *mut c_void, level: gd_log_level, message: *const c_char),
>;

/// The host's callbacks, copied by `gd_runtime_new`. Any of them may be
/// NULL (that event is then dropped).
///
/// Threading: callbacks run on the runtime's own threads, possibly several
/// at once, and during `gd_runtime_stop`/`gd_runtime_free` also on the
/// thread calling those. They must return quickly and must not call any
/// blocking function of this API (those return `GD_STATUS_IN_CALLBACK`);
/// allowed inside a callback: `gd_route_try`, `gd_metrics_json`,
/// `gd_metrics_prometheus`, `gd_runtime_listen_port`,
/// `gd_runtime_bounce_queue_size`, `gd_string_free`, `gd_last_error`,
/// `gd_version`. Callbacks must not unwind (no C++ exceptions).
///
/// `user_data` is passed back untouched; it must stay valid until
/// `gd_runtime_free` returns.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct gd_callbacks {
    pub user_data: *mut c_void,
    pub deliver: gd_deliver_fn,
    pub undeliverable: gd_undeliverable_fn,
    pub log: gd_log_fn,
    /// Most verbose `gd_log_level` passed to `log`; 0 means `GD_LOG_LEVEL_INFO`.
    pub log_level: u32,
}

/// `user_data` crosses threads: the host promised it may (see above).
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub *mut c_void);
// SAFETY: the API contract makes the host responsible for user_data being
// usable from the runtime's threads.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

/// `Delivery` over the C callbacks.
pub(crate) struct CDelivery {
    pub user_data: UserData,
    pub deliver: gd_deliver_fn,
    pub undeliverable: gd_undeliverable_fn,
}

thread_local! {
    /// Holds the NUL-terminated strings of the delivery being handed over.
    static STRINGS: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with a `gd_delivery` view of `env`.
fn with_delivery(
    env: &Envelope,
    from_host: Option<&str>,
    transfer_time_us: u64,
    unrouted: Option<Reason>,
    f: impl FnOnce(&gd_delivery),
) {
    // Taken out, not borrowed, so a nested delivery on this thread (a
    // callback calling gd_route_try that reports undeliverable) simply
    // starts with an empty buffer.
    let mut buf = STRINGS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    buf.clear();
    let mut offsets = [0usize; 4];
    let parts = [
        env.from.as_full_str(),
        env.to.as_full_str(),
        &env.meta.origin,
        from_host.unwrap_or(""),
    ];
    for (i, s) in parts.iter().enumerate() {
        offsets[i] = buf.len();
        buf.extend_from_slice(s.as_bytes());
        buf.push(0);
    }
    let at = |i: usize| buf[offsets[i]..].as_ptr().cast::<c_char>();
    let d = gd_delivery {
        from: at(0),
        to: at(1),
        kind: env.kind.into(),
        payload: if env.payload.is_empty() {
            std::ptr::null()
        } else {
            env.payload.as_ptr()
        },
        payload_len: env.payload.len(),
        origin: at(2),
        from_host: if from_host.is_some() {
            at(3)
        } else {
            std::ptr::null()
        },
        message_id: env.meta.message_id.to_be_bytes(),
        ttl: env.meta.ttl,
        transfer_time_us,
        unrouted: unrouted.map_or(std::ptr::null(), reason_cstr),
    };
    f(&d);
    STRINGS.with(|b| *b.borrow_mut() = buf);
}

impl Delivery for CDelivery {
    fn deliver(&self, d: Delivered) {
        let Some(cb) = self.deliver else { return };
        let ud = self.user_data;
        let _ = catch_unwind(AssertUnwindSafe(|| {
            with_delivery(
                &d.envelope,
                d.from_host.as_deref(),
                d.transfer_time_us,
                d.unrouted,
                |cd| {
                    // SAFETY: a host-supplied callback, called as documented.
                    unsafe { cb(ud.0, cd) }
                },
            )
        }));
    }

    fn undeliverable(&self, env: Envelope, reason: Reason) {
        let Some(cb) = self.undeliverable else { return };
        let ud = self.user_data;
        let reason = reason_cstr(reason);
        let _ = catch_unwind(AssertUnwindSafe(|| {
            with_delivery(&env, None, 0, None, |cd| {
                // SAFETY: a host-supplied callback, called as documented.
                unsafe { cb(ud.0, cd, reason) }
            })
        }));
    }
}

/// `Reason::as_str` as a static C string.
pub(crate) fn reason_cstr(r: Reason) -> *const c_char {
    let s: &'static std::ffi::CStr = match r {
        Reason::RetriesExhausted => c"retries_exhausted",
        Reason::NoRoute => c"no_route",
        Reason::Unreachable => c"unreachable",
        Reason::BounceFull => c"bounce_full",
        Reason::QueueFull => c"queue_full",
        Reason::Stopped => c"stopped",
        Reason::StoreUnavailable => c"store_unavailable",
        Reason::TooLarge => c"too_large",
        Reason::Rejected => c"rejected",
    };
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn reasons_match_the_core_names() {
        for r in [
            Reason::RetriesExhausted,
            Reason::NoRoute,
            Reason::Unreachable,
            Reason::BounceFull,
            Reason::QueueFull,
            Reason::Stopped,
            Reason::StoreUnavailable,
            Reason::TooLarge,
            Reason::Rejected,
        ] {
            // SAFETY: reason_cstr returns static NUL-terminated strings.
            let c = unsafe { CStr::from_ptr(reason_cstr(r)) };
            assert_eq!(c.to_str().unwrap(), r.as_str());
        }
    }
}
