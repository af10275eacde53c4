//! Metrics registry with the seed's names (SPEC 8): counters, gauges and
//! histograms, a snapshot API and Prometheus text exposition.
//!
//! One [`Metrics`] is shared by a runtime through an `Arc`. Getting a metric
//! by name takes a lock, so hot paths look a metric up once and keep the
//! returned `Arc<Counter>` (`Gauge`, `Histogram`); updating it is a relaxed
//! atomic operation.
//!
//! Histograms use log-linear buckets (32 per power of two, exact below 32):
//! fixed memory (about 15 KiB each), lock-free `record`, and quantiles
//! reported as the middle of their bucket, which is within 1/64 (1.6 %) of the
//! true value.
//!
//! Prometheus mapping (text format 0.0.4):
//! * a per-host metric of [`names`] (`<prefix><base>.<host>`) becomes the
//!   family `<prefix><base>` with a `host` label:
//!   `global.mod_global_distrib.outgoing.messages.dc2.example.com` →
//!   `global_mod_global_distrib_outgoing_messages{host="dc2.example.com"}`;
//! * every character outside `[a-zA-Z0-9_:]` of a name becomes `_` (and a
//!   leading digit gets a `_` in front);
//! * counters → `counter`, gauges → `gauge`, histograms → `summary` with
//!   `quantile="0.5"|"0.95"|"0.99"` samples plus `_sum` and `_count`.
//!   Min and max are only in the snapshot.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

/// The seed's metric names, under the prefix `global.mod_global_distrib.`.
pub mod names {
    pub const PREFIX: &str = "global.mod_global_distrib.";

    /// µs a received stanza waited in a routing worker's queue (histogram).
    pub const INCOMING_QUEUE_TIME: &str = "global.mod_global_distrib.incoming.queue_time";
    /// Incoming connections accepted; the peer is not known yet (counter).
    pub const INCOMING_ESTABLISHED: &str = "global.mod_global_distrib.incoming.established";
    /// µs spent on a mapping lookup, cached or not (histogram).
    pub const MAPPING_FETCH_TIME: &str = "global.mod_global_distrib.mapping_fetch_time";
    /// Mapping lookups, cached or not (counter).
    pub const MAPPING_FETCHES: &str = "global.mod_global_distrib.mapping_fetches";
    /// Mapping lookups that had to ask the store (counter).
    pub const MAPPING_CACHE_MISSES: &str = "global.mod_global_distrib.mapping_cache_misses";
    /// TTL of stanzas routed locally for a reason other than TTL 0 (histogram).
    pub const DELIVERED_WITH_TTL: &str = "global.mod_global_distrib.delivered_with_ttl";
    /// Stanzas routed locally because their TTL reached 0 (counter).
    pub const STOP_TTL_ZERO: &str = "global.mod_global_distrib.stop_ttl_zero";
    /// Stanzas currently held by bounce, on this node (gauge).
    pub const BOUNCE_QUEUE_SIZE: &str = "global.mod_global_distrib.bounce_queue_size";
    /// Beyond the seed: received stanzas handed to the host and not yet
    /// finished by it (Erlang workers' confirmations, C callbacks
    /// returned); at `connections.max_unconfirmed_deliveries` the node
    /// stops reading from other DCs (gauge).
    pub const INCOMING_HOST_UNCONFIRMED: &str =
        "global.mod_global_distrib.incoming.host_unconfirmed";
    /// Beyond the seed: route() calls that waited `route_timeout_ms` for a
    /// store lookup or a new DC and were decided without it (counter).
    pub const ROUTE_TIMED_OUT: &str = "global.mod_global_distrib.route_timed_out";
    /// Beyond the seed: times a dispatch shard found the host at its limit
    /// and waited for it (counter).
    pub const INCOMING_HOST_WAITS: &str = "global.mod_global_distrib.incoming.host_waits";
    /// Beyond the seed: host names from remote input that are not a known
    /// DC (or not a valid DNS name) and were ignored: a handshake's
    /// `local_host` (the connection is refused), a frame's `target` or
    /// `origin` (the stanza is routed without it) (counter).
    pub const INCOMING_UNKNOWN_HOST: &str = "global.mod_global_distrib.incoming.unknown_host";
    /// Beyond the seed: incoming connections refused or evicted because of
    /// `max_incoming_connections` / `max_incoming_per_host` (counter).
    pub const INCOMING_REFUSED: &str = "global.mod_global_distrib.incoming.refused";
    /// Beyond the seed: incoming connections closed by `handshake_timeout`
    /// or `idle_timeout` (counter).
    pub const INCOMING_TIMED_OUT: &str = "global.mod_global_distrib.incoming.timed_out";
    /// Beyond the seed: incoming connections closed because a partial frame
    /// did not fit in `max_incoming_buffer` (counter).
    pub const INCOMING_BUFFER_FULL: &str = "global.mod_global_distrib.incoming.buffer_full";
    /// Beyond the seed: per-host metrics not created because
    /// `max_metric_hosts` hosts have series already (counter).
    pub const METRICS_HOST_OVERFLOW: &str = "global.mod_global_distrib.metrics_host_overflow";
    /// Beyond the seed (store health): session and domain keys whose store
    /// write failed and that the refresher retries every second (gauge).
    pub const STORE_PENDING_OPENS: &str = "global.mod_global_distrib.store.pending_opens";
    /// Beyond the seed (store health): keys the last refresh pass could not
    /// re-write (gauge).
    pub const STORE_REFRESH_UNREFRESHED: &str =
        "global.mod_global_distrib.store.refresh.unrefreshed";
    /// Beyond the seed (store health): ms one refresh pass took, paced over
    /// three quarters of `refresh_after` (histogram).
    pub const STORE_REFRESH_PASS_TIME: &str = "global.mod_global_distrib.store.refresh.pass_time";
    /// Beyond the seed (store health): seconds since the last complete
    /// refresh pass beyond `refresh_after`; 0 while on time (gauge).
    pub const STORE_REFRESH_LAG: &str = "global.mod_global_distrib.store.refresh.lag";

    /// Beyond the seed (store health): store calls that failed, by kind
    /// (`timeout`, `down`, `connect`, `closed`, `auth`, `noperm`,
    /// `refused`, `protocol`, `config`; `store::health::ErrorKind`) (counter).
    pub fn store_errors(kind: &str) -> String {
        format!("{PREFIX}store.errors.{kind}")
    }

    /// Bases (after [`PREFIX`]) of the metrics that carry a host suffix;
    /// the Prometheus output turns that suffix into a `host` label.
    pub const PER_HOST_BASES: &[&str] = &[
        "outgoing.messages",
        "incoming.messages",
        "incoming.transfer_time",
        "outgoing.queue_time",
        "incoming.first_packet",
        "incoming.closed",
        "incoming.errored",
        "outgoing.established",
        "outgoing.closed",
        "outgoing.errored",
        "outgoing.queue_full",
        "outgoing.rejected",
        "outgoing.timed_out",
        "incoming.rejected",
    ];

    fn per_host(base: &str, host: &str) -> String {
        format!("{PREFIX}{base}.{host}")
    }

    /// Stanzas sent to `host` (counter).
    pub fn outgoing_messages(host: &str) -> String {
        per_host("outgoing.messages", host)
    }
    /// Stanzas received from `host` (counter).
    pub fn incoming_messages(host: &str) -> String {
        per_host("incoming.messages", host)
    }
    /// µs between send and receive, by wall clocks of both nodes (histogram).
    pub fn incoming_transfer_time(host: &str) -> String {
        per_host("incoming.transfer_time", host)
    }
    /// µs a stanza waited in the queue of a connection to `host` (histogram).
    pub fn outgoing_queue_time(host: &str) -> String {
        per_host("outgoing.queue_time", host)
    }
    /// Incoming connections whose first frame told us they come from `host`.
    pub fn incoming_first_packet(host: &str) -> String {
        per_host("incoming.first_packet", host)
    }
    pub fn incoming_closed(host: &str) -> String {
        per_host("incoming.closed", host)
    }
    pub fn incoming_errored(host: &str) -> String {
        per_host("incoming.errored", host)
    }
    pub fn outgoing_established(host: &str) -> String {
        per_host("outgoing.established", host)
    }
    pub fn outgoing_closed(host: &str) -> String {
        per_host("outgoing.closed", host)
    }
    pub fn outgoing_errored(host: &str) -> String {
        per_host("outgoing.errored", host)
    }
    /// Beyond the seed: stanzas refused because the queue towards `host`
    /// held `connections.outgoing_queue_size` already (they went to bounce).
    pub fn outgoing_queue_full(host: &str) -> String {
        per_host("outgoing.queue_full", host)
    }
    /// Beyond the seed: stanzas `host` refused (protocol version 2 `Nack`:
    /// an address it cannot parse, a frame above its `max_frame_size`);
    /// reported undeliverable with reason `rejected` (counter).
    pub fn outgoing_rejected(host: &str) -> String {
        per_host("outgoing.rejected", host)
    }
    /// Beyond the seed: connections to `host` declared failed because
    /// written stanzas saw no acknowledgement progress for
    /// `connections.ack_timeout` (counter).
    pub fn outgoing_timed_out(host: &str) -> String {
        per_host("outgoing.timed_out", host)
    }
    /// Beyond the seed: stanzas from `host` this node refused with a `Nack`
    /// instead of routing them (counter).
    pub fn incoming_rejected(host: &str) -> String {
        per_host("incoming.rejected", host)
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn sub(&self, n: i64) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Sub-buckets per power of two = 2^SUB_BITS. Values below 2^SUB_BITS get a
/// bucket each; above, a bucket spans 1/32 of its power of two.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// 32 exact buckets, then 32 per exponent 5..=63.
const BUCKETS: usize = SUB + (64 - SUB_BITS as usize) * SUB;

fn bucket_of(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros(); // >= SUB_BITS
    let sub = (v >> (exp - SUB_BITS)) as usize - SUB; // 0..SUB
    SUB + (exp - SUB_BITS) as usize * SUB + sub
}

/// Lowest value and width of bucket `i`.
fn bucket_range(i: usize) -> (u64, u64) {
    if i < SUB {
        return (i as u64, 1);
    }
    let exp = ((i - SUB) / SUB) as u32 + SUB_BITS;
    let sub = ((i - SUB) % SUB) as u64;
    let width = 1u64 << (exp - SUB_BITS);
    ((SUB as u64 + sub) << (exp - SUB_BITS), width)
}

/// Distribution of `u64` samples (typically µs) in fixed memory.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    min: AtomicU64,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            min: AtomicU64::new(u64::MAX),
            max: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for Histogram {
    // The summary, not 1920 bucket counters.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Histogram").field(&self.summary()).finish()
    }
}

impl Histogram {
    /// Histograms are recorded on every stanza from several threads at
    /// once: a read-modify-write that changes nothing (adding 0, a value
    /// that is not a new minimum or maximum) still takes the cache line
    /// from the other cores, so those are skipped after a plain load. A
    /// race only means a redundant `fetch_min`/`fetch_max`, never a lost one.
    pub fn record(&self, v: u64) {
        if let Some(b) = self.buckets.get(bucket_of(v)) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        if v != 0 {
            self.sum.fetch_add(v, Ordering::Relaxed);
        }
        if v < self.min.load(Ordering::Relaxed) {
            self.min.fetch_min(v, Ordering::Relaxed);
        }
        if v > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// Count, min, max, mean and quantiles; all zero when empty. Concurrent
    /// `record`s may be half-visible: the summary is approximate under load.
    pub fn summary(&self) -> HistogramSummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return HistogramSummary::default();
        }
        let min = self.min.load(Ordering::Relaxed);
        let max = self.max.load(Ordering::Relaxed).max(min);
        let sum = self.sum.load(Ordering::Relaxed);
        let quantile = |per_mille: u128| {
            // Nearest rank: the smallest value with at least q·count samples
            // at or below it. Integer arithmetic: 0.95 has no exact float.
            let rank = (count as u128 * per_mille).div_ceil(1000);
            let rank = u64::try_from(rank).unwrap_or(count).clamp(1, count);
            let mut seen = 0u64;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    let (lo, width) = bucket_range(i);
                    return (lo + width / 2).clamp(min, max);
                }
            }
            max
        };
        HistogramSummary {
            count,
            min,
            max,
            mean: sum as f64 / count as f64,
            sum,
            p50: quantile(500),
            p95: quantile(950),
            p99: quantile(990),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HistogramSummary {
    pub count: u64,
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    pub sum: u64,
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
}

/// One metric in a [`Snapshot`]. Serialised untagged: counters and gauges as
/// plain numbers, histograms as an object of their summary fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetricValue {
    Counter(u64),
    Gauge(i64),
    Histogram(HistogramSummary),
}

/// Values of every registered metric at one moment, by full name.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Snapshot(pub BTreeMap<String, MetricValue>);

impl Snapshot {
    pub fn get(&self, name: &str) -> Option<&MetricValue> {
        self.0.get(name)
    }

    /// The value of counter `name`, if registered as a counter.
    pub fn counter(&self, name: &str) -> Option<u64> {
        match self.0.get(name) {
            Some(MetricValue::Counter(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn gauge(&self, name: &str) -> Option<i64> {
        match self.0.get(name) {
            Some(MetricValue::Gauge(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn histogram(&self, name: &str) -> Option<&HistogramSummary> {
        match self.0.get(name) {
            Some(MetricValue::Histogram(h)) => Some(h),
            _ => None,
        }
    }

    /// `{"<name>": <number or summary object>, ...}`, sorted by name.
    pub fn to_json(&self) -> String {
        // Only string keys, integers and finite floats: serialising cannot
        // fail, but an empty object is a better answer than a panic.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[derive(Debug, Clone)]
enum Metric {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

impl Metric {
    fn kind(&self) -> &'static str {
        match self {
            Metric::Counter(_) => "counter",
            Metric::Gauge(_) => "gauge",
            Metric::Histogram(_) => "histogram",
        }
    }
}

/// Hosts allowed per-host series by default (see [`Metrics::with_host_limit`]).
pub const DEFAULT_MAX_HOSTS: usize = 1024;

/// The registry. Names are free-form; use [`names`].
///
/// Per-host metrics (a name of [`names::PER_HOST_BASES`] with a host
/// suffix) are created for at most `max_hosts` distinct hosts: host names
/// come from the network, and each one would otherwise add a dozen series
/// (and 15 KiB per histogram) forever. Beyond the limit the caller gets a
/// shared detached metric and `metrics_host_overflow` counts the attempt.
#[derive(Debug)]
pub struct Metrics {
    metrics: RwLock<BTreeMap<String, Metric>>,
    hosts: parking_lot::Mutex<std::collections::HashSet<String>>,
    max_hosts: usize,
    overflow: Arc<Counter>,
    detached_counter: Arc<Counter>,
    detached_gauge: Arc<Gauge>,
    detached_histogram: Arc<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Get-or-create of one kind. A name already registered with another kind
/// is a programming error; rather than panic, the caller gets a detached
/// metric (counted nowhere visible) and a warning is logged.
macro_rules! get_or_create {
    ($self:ident, $name:ident, $variant:ident, $ty:ty, $detached:ident) => {{
        if let Some(Metric::$variant(m)) = $self.metrics.read().get($name) {
            return Arc::clone(m);
        }
        if !$self.admit_host_of($name) {
            return Arc::clone(&$self.$detached);
        }
        let mut map = $self.metrics.write();
        let entry = map
            .entry($name.to_owned())
            .or_insert_with(|| Metric::$variant(Arc::new(<$ty>::default())));
        match entry {
            Metric::$variant(m) => Arc::clone(m),
            other => {
                tracing::warn!(
                    what = "metric_kind_conflict",
                    name = $name,
                    registered = other.kind(),
                    requested = stringify!($variant),
                );
                Arc::new(<$ty>::default())
            }
        }
    }};
}

impl Metrics {
    /// A registry with the host-less metrics already registered, so a
    /// snapshot shows them (at zero) before anything happened.
    pub fn new() -> Metrics {
        Metrics::with_host_limit(DEFAULT_MAX_HOSTS)
    }

    /// A registry that gives per-host series to at most `max_hosts` hosts.
    pub fn with_host_limit(max_hosts: usize) -> Metrics {
        let overflow = Arc::new(Counter::default());
        let mut map = BTreeMap::new();
        map.insert(
            names::METRICS_HOST_OVERFLOW.to_owned(),
            Metric::Counter(overflow.clone()),
        );
        let m = Metrics {
            metrics: RwLock::new(map),
            hosts: parking_lot::Mutex::new(std::collections::HashSet::new()),
            max_hosts,
            overflow,
            detached_counter: Arc::default(),
            detached_gauge: Arc::default(),
            detached_histogram: Arc::default(),
        };
        for name in [
            names::INCOMING_UNKNOWN_HOST,
            names::INCOMING_REFUSED,
            names::INCOMING_TIMED_OUT,
            names::INCOMING_BUFFER_FULL,
            names::INCOMING_ESTABLISHED,
            names::MAPPING_FETCHES,
            names::MAPPING_CACHE_MISSES,
            names::STOP_TTL_ZERO,
            names::ROUTE_TIMED_OUT,
        ] {
            m.counter(name);
        }
        for name in [
            names::INCOMING_QUEUE_TIME,
            names::MAPPING_FETCH_TIME,
            names::DELIVERED_WITH_TTL,
        ] {
            m.histogram(name);
        }
        m.gauge(names::BOUNCE_QUEUE_SIZE);
        m
    }

    pub fn counter(&self, name: &str) -> Arc<Counter> {
        get_or_create!(self, name, Counter, Counter, detached_counter)
    }

    pub fn gauge(&self, name: &str) -> Arc<Gauge> {
        get_or_create!(self, name, Gauge, Gauge, detached_gauge)
    }

    pub fn histogram(&self, name: &str) -> Arc<Histogram> {
        get_or_create!(self, name, Histogram, Histogram, detached_histogram)
    }

    /// Whether a metric named `name` may be created: always for host-less
    /// names, for a per-host name while its host has series already or
    /// fewer than `max_hosts` hosts do. Only on the creation path.
    fn admit_host_of(&self, name: &str) -> bool {
        let (_, Some(host)) = split_host(name) else {
            return true;
        };
        let mut hosts = self.hosts.lock();
        if hosts.contains(host) {
            return true;
        }
        if hosts.len() >= self.max_hosts {
            self.overflow.inc();
            return false;
        }
        hosts.insert(host.to_owned());
        true
    }

    pub fn snapshot(&self) -> Snapshot {
        // Clone the handles first so that summarising histograms does not
        // hold the lock against get-or-create on hot paths.
        let metrics: Vec<(String, Metric)> = self
            .metrics
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Snapshot(
            metrics
                .into_iter()
                .map(|(name, m)| {
                    let value = match m {
                        Metric::Counter(c) => MetricValue::Counter(c.get()),
                        Metric::Gauge(g) => MetricValue::Gauge(g.get()),
                        Metric::Histogram(h) => MetricValue::Histogram(h.summary()),
                    };
                    (name, value)
                })
                .collect(),
        )
    }

    /// Prometheus text exposition format 0.0.4 (see the module doc for the
    /// name mapping).
    pub fn prometheus(&self) -> String {
        render_prometheus(&self.snapshot())
    }
}

/// Samples of one Prometheus family, with its type.
struct Family {
    kind: &'static str,
    lines: Vec<String>,
}

fn render_prometheus(snapshot: &Snapshot) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (name, value) in &snapshot.0 {
        let (family, host) = split_host(name);
        let family = sanitise(family);
        let kind = match value {
            MetricValue::Counter(_) => "counter",
            MetricValue::Gauge(_) => "gauge",
            MetricValue::Histogram(_) => "summary",
        };
        let fam = families.entry(family.clone()).or_insert_with(|| Family {
            kind,
            lines: Vec::new(),
        });
        if fam.kind != kind {
            // Two names of different kinds sanitised to one family: the
            // exposition format forbids mixing, keep the first.
            tracing::warn!(what = "prometheus_family_conflict", name = %name, family = %family);
            continue;
        }
        let host_label = host.map(|h| format!("host=\"{}\"", escape_label(h)));
        let labels = |extra: Option<String>| -> String {
            let parts: Vec<String> = host_label.iter().cloned().chain(extra).collect();
            if parts.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", parts.join(","))
            }
        };
        match value {
            MetricValue::Counter(v) => fam.lines.push(format!("{family}{} {v}", labels(None))),
            MetricValue::Gauge(v) => fam.lines.push(format!("{family}{} {v}", labels(None))),
            MetricValue::Histogram(h) => {
                for (q, v) in [("0.5", h.p50), ("0.95", h.p95), ("0.99", h.p99)] {
                    let l = labels(Some(format!("quantile=\"{q}\"")));
                    fam.lines.push(format!("{family}{l} {v}"));
                }
                fam.lines
                    .push(format!("{family}_sum{} {}", labels(None), h.sum));
                fam.lines
                    .push(format!("{family}_count{} {}", labels(None), h.count));
            }
        }
    }
    let mut out = String::new();
    for (family, fam) in families {
        let _ = writeln!(out, "# TYPE {family} {}", fam.kind);
        for line in fam.lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// `(family, Some(host))` for a per-host metric of [`names`], else
/// `(name, None)`.
fn split_host(name: &str) -> (&str, Option<&str>) {
    if let Some(rest) = name.strip_prefix(names::PREFIX) {
        for base in names::PER_HOST_BASES {
            let host = rest
                .strip_prefix(base)
                .and_then(|r| r.strip_prefix('.'))
                .filter(|h| !h.is_empty());
            if let Some(host) = host {
                let family_len = names::PREFIX.len() + base.len();
                return (name.get(..family_len).unwrap_or(name), Some(host));
            }
        }
    }
    (name, None)
}

fn sanitise(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
