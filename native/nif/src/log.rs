//! `tracing` events of the core forwarded to Erlang `logger`.
//!
//! A minimal global [`tracing::Subscriber`]: an event at or above the set
//! level is formatted on the emitting thread and pushed onto a bounded
//! channel (dropped when full, never blocking); one `gd-log` thread sends
//! `{global_distrib_log, Level, Target, [{Field, Value}]}` (binaries; the
//! message, if any, under `message`) to the registered pid with
//! `OwnedEnv::send_and_clear` (it cannot be sent from a scheduler thread,
//! which is where the inline NIF paths emit). Spans are not tracked.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::OnceLock;

use parking_lot::RwLock;
use rustler::{Encoder, LocalPid, OwnedEnv};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

const QUEUE: usize = 4096;

static PID: RwLock<Option<LocalPid>> = RwLock::new(None);
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// 1 error .. 5 trace.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(3);
static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUE_TX: OnceLock<SyncSender<LogEvent>> = OnceLock::new();

struct LogEvent {
    level: Level,
    target: &'static str,
    fields: Vec<(&'static str, String)>,
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

/// Installs the subscriber (once per OS process) and the sender thread.
pub fn install() {
    if QUEUE_TX.get().is_some() {
        return;
    }
    let (tx, rx) = sync_channel(QUEUE);
    if QUEUE_TX.set(tx).is_err() {
        return;
    }
    if std::thread::Builder::new()
        .name("gd-log".into())
        .spawn(move || run(rx))
        .is_err()
    {
        return;
    }
    // Another subscriber already set (a host embedding us twice): keep it.
    let _ = tracing::subscriber::set_global_default(ErlangLogger);
}

/// Sets (or clears) the pid receiving log events and the most verbose level.
pub fn set_target(pid: Option<LocalPid>, level: u8) {
    MAX_LEVEL.store(level.clamp(1, 5), Ordering::Relaxed);
    let active = pid.is_some();
    *PID.write() = pid;
    ACTIVE.store(active, Ordering::Release);
}

/// Events dropped because the queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

mod atoms {
    rustler::atoms! { global_distrib_log, error, warning, info, debug }
}

fn run(rx: Receiver<LogEvent>) {
    let mut env = OwnedEnv::new();
    while let Ok(ev) = rx.recv() {
        let Some(pid) = *PID.read() else { continue };
        let level = match ev.level {
            Level::ERROR => atoms::error(),
            Level::WARN => atoms::warning(),
            Level::INFO => atoms::info(),
            _ => atoms::debug(),
        };
        let _ = env.send_and_clear(&pid, |e| {
            (
                atoms::global_distrib_log(),
                level,
                ev.target,
                ev.fields.encode(e),
            )
                .encode(e)
        });
    }
}

struct ErlangLogger;

struct FieldVisitor<'a>(&'a mut Vec<(&'static str, String)>);

impl Visit for FieldVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut v = String::new();
        let _ = write!(v, "{value:?}");
        self.0.push((field.name(), v));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), value.to_owned()));
    }
}

impl Subscriber for ErlangLogger {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::sometimes()
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        meta.is_event()
            && ACTIVE.load(Ordering::Acquire)
            && level_num(meta.level()) <= MAX_LEVEL.load(Ordering::Relaxed)
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let Some(tx) = QUEUE_TX.get() else { return };
        let mut fields = Vec::with_capacity(4);
        event.record(&mut FieldVisitor(&mut fields));
        let meta = event.metadata();
        let ev = LogEvent {
            level: *meta.level(),
            target: meta.target(),
            fields,
        };
        if let Err(TrySendError::Full(_)) = tx.try_send(ev) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
