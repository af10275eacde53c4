//! The host's callbacks (`gd_callbacks`) and the `Delivery` that calls
//! them. Stanzas cross as a `gd_delivery` whose pointers borrow from the
//! envelope and one reused per-thread buffer: nothing is allocated per
//! stanza once a thread has warmed up, and nothing outlives the call.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use gd_core::credits::Credits;
use gd_core::routing::{sender_key, Delivered, Delivery, Envelope, Reason};
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
/// Threading: `deliver` and `undeliverable` run on the runtime's delivery
/// threads (`connections.delivery_threads`, default 2), never on its network
/// threads, possibly several at once; one sender's stanzas always run on the
/// same thread, in order. A slow callback delays the stanzas behind it on
/// its thread; once the callbacks have `connections.max_unconfirmed_deliveries`
/// stanzas (or `_bytes`) to run, the runtime stops reading from the other
/// DCs until they catch up (the senders then feel the back-pressure).
/// `gd_runtime_stop` returns once every callback queued before it has run;
/// `gd_runtime_free` returns once no callback runs any more (it waits for
/// the running ones however long they take: `user_data` may be released
/// right after). `log` runs on whichever thread logs.
/// Callbacks must not call any
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

/// The host's two stanza callbacks and their `user_data`.
#[derive(Clone, Copy)]
pub(crate) struct StanzaCallbacks {
    pub user_data: UserData,
    pub deliver: gd_deliver_fn,
    pub undeliverable: gd_undeliverable_fn,
}

/// One callback to make.
enum Job {
    Deliver(Delivered),
    Undeliverable(Envelope, Reason),
}

impl Job {
    fn bytes(&self) -> usize {
        match self {
            Job::Deliver(d) => d.envelope.payload.len(),
            Job::Undeliverable(e, _) => e.payload.len(),
        }
    }
}

/// The queue of one delivery thread.
#[derive(Default)]
struct LaneState {
    jobs: VecDeque<Job>,
    /// The thread is running callbacks taken off `jobs`.
    busy: bool,
    /// No more jobs come: the thread ends once `jobs` is empty.
    closed: bool,
}

#[derive(Default)]
struct Lane {
    state: Mutex<LaneState>,
    /// Signalled when jobs arrive, when the lane closes, and when the
    /// thread goes idle (for [`CDelivery::drain`]).
    changed: Condvar,
}

/// Jobs a delivery thread takes off its queue at once.
const JOBS_AT_ONCE: usize = 64;

thread_local! {
    /// Set on delivery threads: blocking API calls refuse to run there.
    static ON_DELIVERY_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the calling thread is one of the delivery threads (inside a
/// callback).
pub(crate) fn on_delivery_thread() -> bool {
    ON_DELIVERY_THREAD.with(|c| c.get())
}

/// `Delivery` over the C callbacks. The callbacks run on delivery threads
/// of their own, never on the runtime's I/O threads: a slow callback
/// delays only the stanzas behind it on its thread, not the network, the
/// acknowledgements or the other DCs' links. One sender's stanzas always go
/// to the same thread, so they keep their order. What the threads hold is
/// bounded by the host's credits (`connections.max_unconfirmed_deliveries`
/// and `_bytes`): the runtime stops reading from the network while the
/// callbacks have that much to run. Bounce's hand-backs and undeliverable
/// reports are not held back (their sources are bounded themselves).
pub(crate) struct CDelivery {
    callbacks: StanzaCallbacks,
    global_host: String,
    lanes: Arc<[Lane]>,
    credits: Arc<Credits>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl CDelivery {
    /// Starts `threads` delivery threads (at least one).
    pub(crate) fn start(
        callbacks: StanzaCallbacks,
        global_host: String,
        threads: usize,
        credits: Credits,
    ) -> std::io::Result<CDelivery> {
        let lanes: Arc<[Lane]> = (0..threads.max(1)).map(|_| Lane::default()).collect();
        let credits = Arc::new(credits);
        let mut handles = Vec::with_capacity(lanes.len());
        for i in 0..lanes.len() {
            let (mine, credits) = (lanes.clone(), credits.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("gd-deliver-{i}"))
                .spawn(move || run_lane(&mine[i], &callbacks, &credits));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    close_and_join(&lanes, handles);
                    return Err(e);
                }
            }
        }
        Ok(CDelivery {
            callbacks,
            global_host,
            lanes,
            credits,
            threads: Mutex::new(handles),
        })
    }

    fn lane_of(&self, from: &gd_core::jid::Jid) -> usize {
        gd_core::hashing::index_of(sender_key(from, &self.global_host), self.lanes.len())
    }

    fn push(&self, lane: usize, jobs: impl IntoIterator<Item = Job>) {
        let lane = &self.lanes[lane];
        let mut st = lane.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut late = Vec::new();
        for job in jobs {
            self.credits.taken(1, job.bytes());
            if st.closed {
                late.push(job);
            } else {
                st.jobs.push_back(job);
            }
        }
        drop(st);
        lane.changed.notify_all();
        // After free began (the runtime's last reports while it stops):
        // run here, before free returns.
        for job in late {
            run_job(&self.callbacks, job, &self.credits);
        }
    }

    /// Waits until every callback queued so far has run.
    pub(crate) fn drain(&self) {
        for lane in self.lanes.iter() {
            let mut st = lane.state.lock().unwrap_or_else(|e| e.into_inner());
            while !st.jobs.is_empty() || st.busy {
                st = lane.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    /// Runs what is queued, ends the threads and waits for them: after it,
    /// no callback runs on them. Idempotent.
    pub(crate) fn close(&self) {
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        close_and_join(&self.lanes, handles);
    }
}

fn close_and_join(lanes: &[Lane], handles: Vec<JoinHandle<()>>) {
    for lane in lanes {
        lane.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
        lane.changed.notify_all();
    }
    for h in handles {
        let _ = h.join();
    }
}

/// A delivery thread: runs its lane's callbacks in order until closed and empty.
fn run_lane(lane: &Lane, callbacks: &StanzaCallbacks, credits: &Credits) {
    ON_DELIVERY_THREAD.with(|c| c.set(true));
    let mut jobs = Vec::with_capacity(JOBS_AT_ONCE);
    loop {
        {
            let mut st = lane.state.lock().unwrap_or_else(|e| e.into_inner());
            st.busy = false;
            lane.changed.notify_all();
            while st.jobs.is_empty() {
                if st.closed {
                    return;
                }
                st = lane.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            let n = st.jobs.len().min(JOBS_AT_ONCE);
            jobs.extend(st.jobs.drain(..n));
            st.busy = true;
        }
        for job in jobs.drain(..) {
            run_job(callbacks, job, credits);
        }
    }
}

/// One callback; its credit is returned once it has returned.
fn run_job(cb: &StanzaCallbacks, job: Job, credits: &Credits) {
    let bytes = job.bytes();
    let ud = cb.user_data;
    match job {
        Job::Deliver(d) => {
            if let Some(f) = cb.deliver {
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    with_delivery(
                        &d.envelope,
                        d.from_host.as_deref(),
                        d.transfer_time_us,
                        d.unrouted,
                        |cd| {
                            // SAFETY: a host-supplied callback, called as documented.
                            unsafe { f(ud.0, cd) }
                        },
                    )
                }));
            }
        }
        Job::Undeliverable(env, reason) => {
            if let Some(f) = cb.undeliverable {
                let reason = reason_cstr(reason);
                let _ = catch_unwind(AssertUnwindSafe(|| {
                    with_delivery(&env, None, 0, None, |cd| {
                        // SAFETY: a host-supplied callback, called as documented.
                        unsafe { f(ud.0, cd, reason) }
                    })
                }));
            }
        }
    }
    credits.returned(1, bytes);
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
        let lane = self.lane_of(&d.envelope.from);
        self.push(lane, [Job::Deliver(d)]);
    }

    /// One lock and one wake-up per lane for the whole batch.
    fn deliver_many(&self, batch: &mut Vec<Delivered>) {
        if self.lanes.len() == 1 {
            self.push(0, batch.drain(..).map(Job::Deliver));
            return;
        }
        let mut per_lane: Vec<Vec<Job>> = (0..self.lanes.len()).map(|_| Vec::new()).collect();
        for d in batch.drain(..) {
            per_lane[self.lane_of(&d.envelope.from)].push(Job::Deliver(d));
        }
        for (lane, jobs) in per_lane.into_iter().enumerate() {
            if !jobs.is_empty() {
                self.push(lane, jobs);
            }
        }
    }

    fn undeliverable(&self, env: Envelope, reason: Reason) {
        let lane = self.lane_of(&env.from);
        self.push(lane, [Job::Undeliverable(env, reason)]);
    }

    fn credits(&self) -> Option<&Credits> {
        Some(&self.credits)
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
