//! Store health (SPEC 8, "store health is counted too"): every store call's
//! failure counted by kind, the pending opens, what the refresher's last
//! pass left behind and how late it is, and the answer a load balancer's
//! check reads ([`HealthReport`]: `ok`, `degraded` or `down`).
//!
//! [`StoreHealth`] is fed from two places only: `Store::exec` (the one
//! door every store call goes through) reports each outcome, and the
//! refresher reports its passes and, every second, the pending opens and
//! the lag. Everything else reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use super::StoreError;
use crate::metrics::{names, Counter, Gauge, Histogram, Metrics};

/// Why a store call failed, as counted in `store.errors.<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No answer within `redis.timeout_ms` (a stalled or overloaded server).
    Timeout,
    /// Failed at once because the store is known down (the `down_until`
    /// circuit of docs/REDIS.md is open).
    Down,
    /// No connection could be dialled (refused, unresolvable, TLS).
    Connect,
    /// The connection was closed under the batch, also on the fresh one
    /// (a proxy refusing a command, a server going away).
    Closed,
    /// The server refused our credentials (`NOAUTH`, `WRONGPASS`).
    Auth,
    /// The ACL user may not run a command or touch a key (`NOPERM`).
    Noperm,
    /// The server refused one command (e.g. `WRONGTYPE`, `OOM`).
    Refused,
    /// A reply that does not match the command.
    Protocol,
    /// The store configuration is unusable.
    Config,
}

impl ErrorKind {
    /// Every kind, in the order of the metric names.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Timeout,
        ErrorKind::Down,
        ErrorKind::Connect,
        ErrorKind::Closed,
        ErrorKind::Auth,
        ErrorKind::Noperm,
        ErrorKind::Refused,
        ErrorKind::Protocol,
        ErrorKind::Config,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Down => "down",
            ErrorKind::Connect => "connect",
            ErrorKind::Closed => "closed",
            ErrorKind::Auth => "auth",
            ErrorKind::Noperm => "noperm",
            ErrorKind::Refused => "refused",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Config => "config",
        }
    }

    /// Whether a failure of this kind says the store cannot be used at all
    /// (rather than refusing one command).
    pub fn unavailable(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout | ErrorKind::Down | ErrorKind::Connect | ErrorKind::Closed
        )
    }

    /// The kind of a server's error line for one command.
    pub fn of_reply(line: &str) -> ErrorKind {
        credentials(line).unwrap_or(ErrorKind::Refused)
    }
}

/// `Auth` or `Noperm` when the text carries the server's word for it.
fn credentials(text: &str) -> Option<ErrorKind> {
    let t = text.to_ascii_lowercase();
    if t.contains("noperm") {
        Some(ErrorKind::Noperm)
    } else if t.contains("noauth") || t.contains("wrongpass") || t.contains("authentication") {
        Some(ErrorKind::Auth)
    } else {
        None
    }
}

impl StoreError {
    /// The kind of this failure (see [`ErrorKind`]). The Redis backend's
    /// messages name it: `known down`, `did not answer within`,
    /// `cannot connect` (docs/REDIS.md, "Connections").
    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Config(_) => ErrorKind::Config,
            StoreError::Unavailable(m) => credentials(m).unwrap_or(if m.contains("known down") {
                ErrorKind::Down
            } else if m.contains("did not answer within") {
                ErrorKind::Timeout
            } else if m.contains("cannot connect") || m.contains("cannot be reached") {
                ErrorKind::Connect
            } else {
                ErrorKind::Closed
            }),
            StoreError::Protocol(m) => credentials(m).unwrap_or(if m.contains("command refused") {
                ErrorKind::Refused
            } else {
                ErrorKind::Protocol
            }),
        }
    }
}

/// ok: reachable, nothing pending, the last pass complete and on time;
/// degraded: reachable, but writes are pending or the refresh is late or
/// incomplete; down: the last store call found the store unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Degraded,
    Down,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Ok => "ok",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Down => "down",
        }
    }
}

/// The most recent failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastError {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds since it happened.
    pub age_secs: u64,
}

/// What `store_health` answers (the bindings' `store_health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthReport {
    pub status: HealthStatus,
    /// `"embedded"` or `"redis"`.
    pub backend: String,
    /// Whether the last store call reached the store.
    pub reachable: bool,
    pub last_error: Option<LastError>,
    /// Session and domain keys whose write failed, retried every second.
    pub pending_opens: u64,
    /// Seconds since the last pass that refreshed everything; `None` before
    /// the first one.
    pub last_refresh_age_secs: Option<u64>,
    /// Seconds the refresh is late: that age beyond `refresh_after`.
    pub refresh_lag_secs: u64,
    /// Keys the last pass could not refresh.
    pub unrefreshed_keys: u64,
    /// Failures by kind since start.
    pub errors: BTreeMap<String, u64>,
}

impl HealthReport {
    /// The report of a runtime that has stopped.
    pub fn stopped(backend: &str) -> HealthReport {
        HealthReport {
            status: HealthStatus::Down,
            backend: backend.to_owned(),
            reachable: false,
            last_error: Some(LastError {
                kind: ErrorKind::Down,
                message: "the runtime has stopped".into(),
                age_secs: 0,
            }),
            pending_opens: 0,
            last_refresh_age_secs: None,
            refresh_lag_secs: 0,
            unrefreshed_keys: 0,
            errors: BTreeMap::new(),
        }
    }

    /// The report as one JSON object (the C API's answer).
    pub fn to_json(&self) -> String {
        // Strings, integers and enums only: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

struct State {
    reachable: bool,
    last_error: Option<(ErrorKind, String, Instant)>,
    /// End of the last pass without a failed step (start time before one).
    last_complete_pass: Option<Instant>,
    unrefreshed: u64,
}

/// Health of one runtime's store. Shared through an `Arc` by every clone
/// of its `Store` and by its refresher.
pub struct StoreHealth {
    errors: Vec<(ErrorKind, Arc<Counter>)>,
    pending: Arc<Gauge>,
    unrefreshed: Arc<Gauge>,
    pass_time: Arc<Histogram>,
    lag: Arc<Gauge>,
    refresh_after: Duration,
    started: Instant,
    state: Mutex<State>,
}

impl StoreHealth {
    /// Registers the store-health metrics in `metrics` (at zero).
    pub fn new(metrics: &Metrics, refresh_after: Duration) -> StoreHealth {
        StoreHealth {
            errors: ErrorKind::ALL
                .iter()
                .map(|k| (*k, metrics.counter(&names::store_errors(k.as_str()))))
                .collect(),
            pending: metrics.gauge(names::STORE_PENDING_OPENS),
            unrefreshed: metrics.gauge(names::STORE_REFRESH_UNREFRESHED),
            pass_time: metrics.histogram(names::STORE_REFRESH_PASS_TIME),
            lag: metrics.gauge(names::STORE_REFRESH_LAG),
            refresh_after,
            started: Instant::now(),
            state: Mutex::new(State {
                reachable: true,
                last_error: None,
                last_complete_pass: None,
                unrefreshed: 0,
            }),
        }
    }

    /// A store call reached the store.
    pub fn succeeded(&self) {
        self.state.lock().reachable = true;
    }

    /// A store call failed with `e`.
    pub fn failed(&self, e: &StoreError) {
        self.record(e.kind(), &e.to_string());
    }

    /// The server refused one command of a batch with `line`.
    pub fn refused(&self, line: &str) {
        self.record(ErrorKind::of_reply(line), line);
    }

    fn record(&self, kind: ErrorKind, message: &str) {
        if let Some((_, c)) = self.errors.iter().find(|(k, _)| *k == kind) {
            c.inc();
        }
        let mut s = self.state.lock();
        if kind.unavailable() {
            s.reachable = false;
        } else {
            // The server answered, if only to refuse.
            s.reachable = true;
        }
        s.last_error = Some((kind, message.to_owned(), Instant::now()));
    }

    /// The refresher finished a pass: `elapsed`, how many keys it could not
    /// refresh, and whether any step failed.
    pub fn pass_done(&self, elapsed: Duration, unrefreshed: u64, complete: bool) {
        self.pass_time
            .record(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX));
        self.unrefreshed
            .set(i64::try_from(unrefreshed).unwrap_or(i64::MAX));
        let mut s = self.state.lock();
        s.unrefreshed = unrefreshed;
        if complete {
            s.last_complete_pass = Some(Instant::now());
        }
        drop(s);
        self.update_lag();
    }

    /// The pending opens now (the refresher says so whenever it changes
    /// them, and every second).
    pub fn set_pending(&self, n: usize) {
        self.pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Brings the lag gauge up to date (the refresher's one-second tick).
    pub fn update_lag(&self) {
        let lag = self.lag_now();
        self.lag.set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    fn refresh_age(&self) -> Duration {
        let since = self.state.lock().last_complete_pass.unwrap_or(self.started);
        since.elapsed()
    }

    fn lag_now(&self) -> u64 {
        self.refresh_age()
            .saturating_sub(self.refresh_after)
            .as_secs()
    }

    /// The answer to a health check; `pending_opens` comes from the
    /// refresher's state, `backend` names the store.
    pub fn report(&self, backend: &str, pending_opens: usize) -> HealthReport {
        self.set_pending(pending_opens);
        self.update_lag();
        let lag = self.lag_now();
        let s = self.state.lock();
        let last_error = s.last_error.as_ref().map(|(kind, message, at)| LastError {
            kind: *kind,
            message: message.clone(),
            age_secs: at.elapsed().as_secs(),
        });
        let status = if !s.reachable {
            HealthStatus::Down
        } else if pending_opens > 0 || lag > 0 || s.unrefreshed > 0 {
            HealthStatus::Degraded
        } else {
            HealthStatus::Ok
        };
        HealthReport {
            status,
            backend: backend.to_owned(),
            reachable: s.reachable,
            last_error,
            pending_opens: pending_opens as u64,
            last_refresh_age_secs: s.last_complete_pass.map(|t| t.elapsed().as_secs()),
            refresh_lag_secs: lag,
            unrefreshed_keys: s.unrefreshed,
            errors: self
                .errors
                .iter()
                .map(|(k, c)| (k.as_str().to_owned(), c.get()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_backend_messages() {
        let u = |m: &str| StoreError::Unavailable(m.into()).kind();
        assert_eq!(
            u("redis at h:1: known down since the last failure (x)"),
            ErrorKind::Down
        );
        assert_eq!(
            u("redis at h:1: did not answer within 1000 ms; will reconnect"),
            ErrorKind::Timeout
        );
        assert_eq!(
            u("redis at h:1: cannot connect: refused"),
            ErrorKind::Connect
        );
        assert_eq!(u("redis at h:1: broken pipe"), ErrorKind::Closed);
        assert_eq!(
            u("redis at h:1: cannot connect: WRONGPASS invalid username-password pair"),
            ErrorKind::Auth
        );
        let p = |m: &str| StoreError::Protocol(m.into()).kind();
        assert_eq!(p("command refused: NOPERM user"), ErrorKind::Noperm);
        assert_eq!(p("command refused: WRONGTYPE x"), ErrorKind::Refused);
        assert_eq!(p("GET k: unexpected reply"), ErrorKind::Protocol);
        assert_eq!(
            ErrorKind::of_reply("NOAUTH Authentication required."),
            ErrorKind::Auth
        );
    }

    #[test]
    fn status_follows_reachability_then_pending() {
        let m = Metrics::new();
        let h = StoreHealth::new(&m, Duration::from_secs(60));
        h.pass_done(Duration::from_millis(3), 0, true);
        assert_eq!(h.report("redis", 0).status, HealthStatus::Ok);
        h.failed(&StoreError::Unavailable(
            "did not answer within 1000 ms".into(),
        ));
        let r = h.report("redis", 1);
        assert_eq!(r.status, HealthStatus::Down);
        assert_eq!(r.errors["timeout"], 1);
        assert_eq!(r.last_error.map(|e| e.kind), Some(ErrorKind::Timeout));
        h.succeeded();
        assert_eq!(h.report("redis", 1).status, HealthStatus::Degraded);
        assert_eq!(h.report("redis", 0).status, HealthStatus::Ok);
        let snap = m.snapshot();
        assert_eq!(
            snap.counter("global.mod_global_distrib.store.errors.timeout"),
            Some(1)
        );
        assert_eq!(
            snap.histogram("global.mod_global_distrib.store.refresh.pass_time")
                .map(|s| s.count),
            Some(1)
        );
    }
}
