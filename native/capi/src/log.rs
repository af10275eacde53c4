//! `tracing` events to the host's log callback, without tracing-subscriber.
//!
//! One process-wide subscriber (installed on first use, unless the process
//! already has one) routes each event to the runtime it belongs to: the
//! runtime whose call is running on this thread (set around start, stop
//! and free, which run on the caller's thread), else the runtime whose
//! worker thread this is (threads are named `gd-<local_host>` by the core).
//! Events that belong to no runtime with a log callback are dropped. Spans
//! are not tracked. Two runtimes of one process with the same local_host
//! (two nodes of one DC) share a thread name: their worker threads' events
//! go to the callback registered first.

use std::cell::Cell;
use std::ffi::{c_void, CString};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

use crate::callbacks::{gd_log_level, UserData};

/// The log callback, not NULL.
type LogFn = unsafe extern "C" fn(*mut c_void, gd_log_level, *const std::ffi::c_char);

struct Sink {
    id: u64,
    local_host: String,
    level: u8,
    log: LogFn,
    user_data: UserData,
}

static SINKS: Mutex<Vec<Sink>> = Mutex::new(Vec::new());
/// Most verbose level any sink wants (0: none), so `enabled` is one load.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(0);
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static INSTALL: Once = Once::new();

thread_local! {
    /// The sink of the API call running on this thread (0: none).
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

fn sinks() -> std::sync::MutexGuard<'static, Vec<Sink>> {
    SINKS.lock().unwrap_or_else(|e| e.into_inner())
}

fn level_num(l: &Level) -> u8 {
    match *l {
        Level::ERROR => 1,
        Level::WARN => 2,
        Level::INFO => 3,
        Level::DEBUG => 4,
        Level::TRACE => 5,
    }
}

fn level_enum(n: u8) -> gd_log_level {
    match n {
        1 => gd_log_level::Error,
        2 => gd_log_level::Warn,
        3 => gd_log_level::Info,
        4 => gd_log_level::Debug,
        _ => gd_log_level::Trace,
    }
}

fn recompute_max(s: &[Sink]) {
    let max = s.iter().map(|s| s.level).max().unwrap_or(0);
    MAX_LEVEL.store(max, Ordering::Relaxed);
}

/// A runtime's log callback, registered while the runtime lives.
pub(crate) struct Registration(u64);

impl Registration {
    /// Registers `log` for the runtime `local_host`; `level` 0 means Info.
    pub fn new(local_host: &str, level: u32, log: LogFn, user_data: *mut c_void) -> Self {
        INSTALL.call_once(|| {
            // Fails only when the host process already set its own
            // subscriber: then that one gets the events.
            let _ = tracing::subscriber::set_global_default(Router);
        });
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let level = match level {
            0 => 3,
            l => u8::try_from(l.min(5)).unwrap_or(5),
        };
        let mut s = sinks();
        s.push(Sink {
            id,
            local_host: local_host.to_owned(),
            level,
            log,
            user_data: UserData(user_data),
        });
        recompute_max(&s);
        Registration(id)
    }

    /// Routes this thread's events to this sink until the guard drops.
    pub fn enter(&self) -> CurrentGuard {
        CurrentGuard(CURRENT.with(|c| c.replace(self.0)))
    }

    /// Sends one message straight to this sink (errors seen by the binding).
    pub fn emit(&self, level: gd_log_level, message: &str) {
        let found = sinks()
            .iter()
            .find(|s| s.id == self.0)
            .map(|s| (s.log, s.user_data, s.level));
        if let Some((log, ud, max)) = found {
            if level as u8 <= max {
                call(log, ud, level, message);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut s = sinks();
        s.retain(|x| x.id != self.0);
        recompute_max(&s);
    }
}

pub(crate) struct CurrentGuard(u64);

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

fn call(log: LogFn, ud: UserData, level: gd_log_level, message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // SAFETY: a host-supplied callback, called as documented in gd_callbacks.
    unsafe { log(ud.0, level, text.as_ptr()) }
}

/// The sink for an event at `level` on this thread, if any.
fn sink_for(level: u8) -> Option<(LogFn, UserData)> {
    let current = CURRENT.with(|c| c.get());
    let s = sinks();
    let sink = if current != 0 {
        s.iter().find(|s| s.id == current)
    } else {
        // Only runtime threads get here in practice: they are Rust threads
        // whose handle exists already (a C thread would get one allocated).
        let thread = std::thread::current();
        let host = thread.name().and_then(|n| n.strip_prefix("gd-"));
        host.and_then(|h| s.iter().find(|s| s.local_host == h))
    }?;
    (level <= sink.level).then_some((sink.log, sink.user_data))
}

/// Formats `message` first, then `key=value` pairs.
#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

struct Router;

impl Subscriber for Router {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Sinks come and go: decide per event in `enabled`.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.is_event() && level_num(metadata.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let level = level_num(meta.level());
        let Some((log, ud)) = sink_for(level) else {
            return;
        };
        let mut text = Text::default();
        event.record(&mut text);
        let mut line = format!("{}:", meta.target());
        if !text.message.is_empty() {
            line.push(' ');
            line.push_str(&text.message);
        }
        line.push_str(&text.fields);
        call(log, ud, level_enum(level), &line);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}
