//! B9: a simulation of several datacenters sharing one Redis, to check the
//! cost model of `docs/SCALE.md` against what Redis really receives.
//!
//! `dcs × nodes_per_dc` runtimes live in this process, each a real
//! [`Runtime`] with the Redis backend, all on one `redis-server` the bench
//! starts (so that server sees every DC's writes, as each Redis does under
//! Dynomite replication). Sessions are opened through `session_opened`,
//! then logins and logouts churn at a fixed rate while the bench reads
//! `INFO cpu commandstats memory` every tenth of `redis.refresh_after` over
//! whole periods. The measured commands per second are printed beside what
//! [`predicted`] says for the same shape.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gd_core::config::{Config, Endpoint};
use gd_core::jid::Jid;
use gd_core::metrics::{names, MetricValue};
use gd_core::runtime::{Runtime, StartOptions};

use crate::dcs::{Sink, GLOBAL};
use crate::refresh;
use crate::stats::{self, Stat};
use crate::table::Table;
use crate::BenchError;

/// How the nodes keep their sessions alive in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Every node re-writes each of its session keys every `refresh_after`
    /// (one `EVAL` per key).
    PerKey,
    /// `redis.ownership = "lease"`: one lease per node and period; session
    /// keys are written at login and logout only.
    Lease,
}

impl Ownership {
    pub fn name(self) -> &'static str {
        match self {
            Ownership::PerKey => "per_key",
            Ownership::Lease => "lease",
        }
    }
}

/// The simulated deployment and load.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub dcs: usize,
    pub nodes_per_dc: usize,
    /// Sessions over all nodes (one resource each: two keys, full and bare).
    pub sessions: u64,
    /// `redis.refresh_after`, seconds (`expire_after` is three times it).
    pub refresh_after: u64,
    /// Logins per second over all nodes; as many logouts, so the number of
    /// sessions stays put.
    pub churn: u64,
    /// Whole periods measured.
    pub periods: u32,
}

impl Shape {
    pub fn full() -> Shape {
        Shape {
            dcs: 3,
            nodes_per_dc: 2,
            sessions: 1_000_000,
            refresh_after: 20,
            churn: 1000,
            periods: 2,
        }
    }

    pub fn smoke() -> Shape {
        Shape {
            dcs: 3,
            nodes_per_dc: 2,
            sessions: 20_000,
            refresh_after: 2,
            churn: 200,
            periods: 2,
        }
    }

    fn nodes(&self) -> usize {
        self.dcs * self.nodes_per_dc
    }
}

/// Intervals of the runtime that also cost Redis commands (config defaults).
const HOSTS_REFRESH_S: f64 = 3.0;
const ENDPOINT_REFRESH_S: f64 = 60.0;

/// Client commands per second (by Redis command name, as `INFO
/// commandstats` names them) that the cost model of `docs/SCALE.md`
/// ("Redis commands per second") predicts on a Redis receiving the writes
/// of every node of `shape`. Commands run inside a script are not counted:
/// the `EVAL` is. Where each term comes from, with N nodes, D DCs, n nodes
/// per DC, S sessions, R = refresh_after, L logins/s (= logouts/s):
///
/// * per node and period (`Refresher::refresh_meta`, `store/mod.rs`):
///   heartbeat = `HSET` stamp + `SADD hosts` + `HGETALL <host>#{nodes}`;
///   endpoints = `SADD` + `EXPIRE`; the node's own domain (local_host) =
///   one CAS `EVAL` + `SADD {domains}` + `EXPIRE` (no public domain);
/// * per_key only: one CAS `EVAL` per session key and period: 2S/R;
/// * reads (`transport/outgoing.rs`): `SMEMBERS hosts` per node every
///   `hosts_refresh_interval` (3 s), and per node and remote DC every
///   `endpoint_refresh_interval` (60 s) `HGETALL <host>#{nodes}` + one
///   `SMEMBERS` per node of that DC;
/// * churn: a login is `SET … EX` of the full and the bare JID, a logout a
///   delete-if-ours `EVAL` of each (`Store::open_sessions`,
///   `delete_sessions`);
/// * lease only (`store/lease.rs`): a login adds one `SADD` of the node's
///   `{sessions}` set and one `EXPIRE` of it (same pipeline), a logout one
///   `SREM`; each pass adds one `EXPIRE` of that set. The lease checks of
///   lookups (`HGETALL <host>#{nodes}`, at most once per DC and
///   `lease_check_interval` per node, only when a lookup needs that DC)
///   are not in B9, which routes nothing.
pub fn predicted(mode: Ownership, shape: &Shape) -> BTreeMap<&'static str, f64> {
    let nodes = shape.nodes() as f64;
    let (d, n) = (shape.dcs as f64, shape.nodes_per_dc as f64);
    let r = shape.refresh_after as f64;
    let l = shape.churn as f64;
    let per_period = |k: f64| k * nodes / r;
    let mut eval = per_period(1.0) + 2.0 * l;
    if mode == Ownership::PerKey {
        eval += 2.0 * shape.sessions as f64 / r;
    }
    let endpoint_reads = nodes * (d - 1.0) / ENDPOINT_REFRESH_S;
    let hgetall = per_period(1.0) + endpoint_reads;
    let mut sadd = per_period(3.0);
    let mut srem = 0.0;
    let mut expire = per_period(2.0);
    if mode == Ownership::Lease {
        sadd += l;
        srem += l;
        expire += l + per_period(1.0);
    }
    BTreeMap::from([
        ("eval", eval),
        ("set", 2.0 * l),
        ("hset", per_period(1.0)),
        ("sadd", sadd),
        ("srem", srem),
        ("expire", expire),
        ("hgetall", hgetall),
        ("smembers", nodes / HOSTS_REFRESH_S + endpoint_reads * n),
    ])
}

/// What Redis said at one instant.
#[derive(Debug, Clone, Default)]
struct Info {
    /// `calls` of each command, the bench's own `INFO` left out.
    calls: BTreeMap<String, u64>,
    /// `used_cpu_sys + used_cpu_user`, seconds.
    cpu: f64,
    used_memory: u64,
}

fn info(port: u16) -> Result<Info, BenchError> {
    let text = refresh::resp(port, &["INFO", "cpu", "commandstats", "memory"])?;
    let mut out = Info::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, fields)) = rest.split_once(':') else {
                continue;
            };
            let calls = fields
                .split(',')
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|v| v.parse().ok());
            if let (Some(calls), false) = (calls, name == "info") {
                out.calls.insert(name.to_owned(), calls);
            }
        } else if let Some(v) = line
            .strip_prefix("used_cpu_sys:")
            .or_else(|| line.strip_prefix("used_cpu_user:"))
        {
            out.cpu += v.trim().parse::<f64>().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("used_memory:") {
            out.used_memory = v.trim().parse().unwrap_or(0);
        }
    }
    if out.used_memory == 0 {
        return Err(BenchError::msg(format!(
            "B9: unexpected INFO reply {text:?}"
        )));
    }
    Ok(out)
}

impl Info {
    fn total(&self) -> u64 {
        self.calls.values().sum()
    }

    fn since(&self, before: &Info, name: &str) -> f64 {
        let at = |i: &Info| i.calls.get(name).copied().unwrap_or(0);
        at(self).saturating_sub(at(before)) as f64
    }
}

/// What one mode's run measured.
pub struct Measured {
    /// Client commands/s by name, over the measured periods. Redis counts
    /// the `GET` and the `SET`/`DEL` each script runs too; those are taken
    /// out (exact here: no key changes DC in B9, so every `EVAL` runs
    /// exactly two commands).
    pub per_sec: BTreeMap<String, f64>,
    /// Redis CPU (user + system) ÷ wall time: cores.
    pub redis_cpu: f64,
    /// The bench process' CPU (all runtimes, churn driver) ÷ wall time.
    pub bench_cpu: f64,
    /// Commands of the busiest tenth of a period ÷ the mean tenth.
    pub peak_to_mean: f64,
    /// Mean duration of the refresh passes that ended in the window, ÷
    /// `refresh_after` (the pacing aims at 0.75; above 1 the store sets
    /// the period, and fewer passes than the model's fit in).
    pub pass_share: f64,
    /// `used_memory` growth while the sessions were opened, per session.
    pub memory_per_session: f64,
    /// Sessions opened per second while populating.
    pub populate_rate: f64,
}

impl Measured {
    pub fn client_total(&self) -> f64 {
        self.per_sec.values().sum()
    }
}

/// The runtimes of one simulation and the users each has logged in.
struct Nodes {
    runtimes: Vec<Runtime>,
    /// Per node, users `[first, next)` are logged in.
    range: Vec<(AtomicU64, AtomicU64)>,
}

fn user(node: usize, i: u64) -> Result<Jid, BenchError> {
    Ok(Jid::parse(&format!("n{node}u{i}@{GLOBAL}/res"))?)
}

/// The configuration of one node; `ownership` only in lease mode, so that
/// a configuration reader without lease mode refuses it by name.
fn node_config(
    mode: Ownership,
    dc: usize,
    node: usize,
    redis_port: u16,
    shape: &Shape,
) -> Result<Config, BenchError> {
    let mut redis = serde_json::json!({
        "url": format!("redis://127.0.0.1:{redis_port}"),
        "refresh_after": shape.refresh_after,
        "expire_after": 3 * shape.refresh_after,
        "timeout_ms": 5000,
    });
    if mode == Ownership::Lease {
        redis["ownership"] = "lease".into();
    }
    let mut c = Config::from_json_value(serde_json::json!({
        "global_host": GLOBAL,
        "local_host": format!("dc{dc}.{GLOBAL}"),
        "node_name": format!("node{node}@dc{dc}"),
        "backend": "redis",
        "redis": redis,
    }))
    .map_err(|e| BenchError::msg(format!("the configuration was refused: {e}")))?;
    c.connections.endpoints = vec![Endpoint {
        host: "127.0.0.1".into(),
        port: 0,
    }];
    Ok(c)
}

impl Nodes {
    fn start(mode: Ownership, redis_port: u16, shape: &Shape) -> Result<Nodes, BenchError> {
        let sink = Sink::new(Instant::now(), false);
        let opts = StartOptions {
            worker_threads: 1,
            ..StartOptions::default()
        };
        let mut runtimes = Vec::new();
        for dc in 1..=shape.dcs {
            for node in 1..=shape.nodes_per_dc {
                let c = node_config(mode, dc, node, redis_port, shape)?;
                runtimes.push(Runtime::start_with(c, sink.clone(), opts.clone())?);
            }
        }
        let range = runtimes
            .iter()
            .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
            .collect();
        Ok(Nodes { runtimes, range })
    }

    /// Opens `per_node` sessions on every node, nodes in parallel, up to
    /// 1000 opens in flight per node.
    fn populate(&self, per_node: u64) -> Result<(), BenchError> {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.runtimes.len())
                .map(|k| s.spawn(move || self.populate_node(k, per_node)))
                .collect();
            handles.into_iter().try_for_each(|h| {
                h.join()
                    .map_err(|_| BenchError::msg("B9: populate panicked"))?
            })
        })
    }

    fn populate_node(&self, k: usize, per_node: u64) -> Result<(), BenchError> {
        let rt = &self.runtimes[k];
        let mut i = 0;
        while i < per_node {
            let end = (i + 1000).min(per_node);
            let writes = (i..end)
                .map(|u| Ok(rt.session_opened(&user(k, u)?)))
                .collect::<Result<Vec<_>, BenchError>>()?;
            rt.block_on(async {
                for w in writes {
                    w.await;
                }
            });
            i = end;
        }
        self.range[k].1.store(per_node, Ordering::Release);
        Ok(())
    }

    /// One login (a new user) and one logout (the oldest user) on node `k`;
    /// the writes go on in the runtime.
    fn churn_once(&self, k: usize) -> Result<(), BenchError> {
        let rt = &self.runtimes[k];
        let (first, next) = &self.range[k];
        let new = next.fetch_add(1, Ordering::AcqRel);
        drop(rt.session_opened(&user(k, new)?));
        let old = first.fetch_add(1, Ordering::AcqRel);
        drop(rt.session_closed(&user(k, old)?));
        Ok(())
    }

    fn stop(self) {
        for rt in self.runtimes {
            rt.stop(Duration::from_secs(1));
        }
    }
}

/// Logs in and out `rate` users per second (each) over the nodes in turn,
/// every 10 ms, until `stop`.
fn churn(nodes: &Nodes, rate: u64, stop: &AtomicBool) -> Result<u64, BenchError> {
    let t0 = Instant::now();
    let mut done = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
        while done < due {
            nodes.churn_once(done as usize % nodes.runtimes.len())?;
            done += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(done)
}

/// One simulation in `mode` on a fresh `redis-server`.
pub fn run(mode: Ownership, shape: &Shape) -> Result<Measured, BenchError> {
    let redis = refresh::start_redis()?;
    let nodes = Nodes::start(mode, redis.port, shape)?;
    let before = info(redis.port)?;
    let t = Instant::now();
    nodes.populate(shape.sessions / shape.nodes() as u64)?;
    let populate_rate = shape.sessions as f64 / t.elapsed().as_secs_f64();
    let populated = info(redis.port)?;
    let memory_per_session =
        populated.used_memory.saturating_sub(before.used_memory) as f64 / shape.sessions as f64;

    let stop = AtomicBool::new(false);
    let measured = std::thread::scope(|s| {
        let driver = s.spawn(|| churn(&nodes, shape.churn, &stop));
        // Every node starts a pass with all its sessions within one period
        // of the end of populating; from then on any whole period holds one
        // full pass per node.
        let period = Duration::from_secs(shape.refresh_after);
        std::thread::sleep(period + period / 10);
        let m = measure(&nodes, redis.port, period, shape.periods);
        stop.store(true, Ordering::Release);
        let churned = driver
            .join()
            .map_err(|_| BenchError::msg("B9: churn driver panicked"))??;
        eprintln!("B9 {}: {churned} logins and as many logouts", mode.name());
        m
    });
    nodes.stop();
    let (per_sec, redis_cpu, bench_cpu, peak_to_mean, pass_secs) = measured?;
    Ok(Measured {
        per_sec,
        redis_cpu,
        bench_cpu,
        peak_to_mean,
        pass_share: pass_secs / shape.refresh_after as f64,
        memory_per_session,
        populate_rate,
    })
}

type Window = (BTreeMap<String, f64>, f64, f64, f64, f64);

/// (count, sum in ms) of the refresh passes every node has finished.
fn passes(nodes: &Nodes) -> (u64, u64) {
    nodes.runtimes.iter().fold((0, 0), |(n, ms), rt| {
        match rt.metrics().snapshot().get(names::STORE_REFRESH_PASS_TIME) {
            Some(MetricValue::Histogram(h)) => (n + h.count, ms + h.sum),
            _ => (n, ms),
        }
    })
}

/// Reads INFO every tenth of `period` for `periods` periods: client
/// commands/s by name, Redis CPU, bench CPU, busiest tenth ÷ mean tenth,
/// mean refresh pass (s).
fn measure(nodes: &Nodes, port: u16, period: Duration, periods: u32) -> Result<Window, BenchError> {
    let tenth = period / 10;
    let t0 = Instant::now();
    let cpu0 = stats::cpu_time();
    let passes0 = passes(nodes);
    let mut samples = vec![info(port)?];
    for i in 1..=10 * periods {
        let due = t0 + tenth * i;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        samples.push(info(port)?);
    }
    let wall = t0.elapsed().as_secs_f64();
    let passes1 = passes(nodes);
    let pass_secs = (passes1.1 - passes0.1) as f64 / 1000.0 / (passes1.0 - passes0.0) as f64;
    let bench_cpu = (stats::cpu_time() - cpu0).as_secs_f64() / wall;
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let mut per_sec = BTreeMap::new();
    for name in last.calls.keys() {
        per_sec.insert(name.clone(), last.since(first, name));
    }
    // Each EVAL also counted its GET and its SET (refresh) or DEL (delete).
    let evals = last.since(first, "eval");
    per_sec.remove("get");
    per_sec.remove("del");
    if let Some(set) = per_sec.get_mut("set") {
        *set -= evals - last.since(first, "del");
    }
    for v in per_sec.values_mut() {
        *v /= wall;
    }
    per_sec.retain(|_, v| *v > 0.0);
    let per_tenth: Vec<f64> = samples
        .windows(2)
        .map(|w| w[1].total().saturating_sub(w[0].total()) as f64)
        .collect();
    let mean = per_tenth.iter().sum::<f64>() / per_tenth.len() as f64;
    let peak = per_tenth.iter().copied().fold(0.0, f64::max);
    let redis_cpu = (last.cpu - first.cpu) / wall;
    Ok((per_sec, redis_cpu, bench_cpu, peak / mean, pass_secs))
}

/// B9 in both modes, measured beside predicted.
pub fn b9(smoke: bool, table: &mut Table) -> Result<(), BenchError> {
    let shape = if smoke { Shape::smoke() } else { Shape::full() };
    eprintln!("B9 shape: {shape:?}");
    for mode in [Ownership::PerKey, Ownership::Lease] {
        let started = Instant::now();
        let result = run(mode, &shape);
        eprintln!(
            "B9 {} took {:.1} s",
            mode.name(),
            started.elapsed().as_secs_f64()
        );
        rows(mode, &shape, result, table);
    }
    Ok(())
}

fn one(v: f64) -> Stat {
    Stat::of(&[v])
}

/// The rows of one mode; a mode that could not run prints its rows as
/// n/a with the reason as a note.
fn rows(mode: Ownership, shape: &Shape, result: Result<Measured, BenchError>, table: &mut Table) {
    let m = mode.name();
    let what = format!(
        "{m}, {}×{} nodes, {}k sessions, R {} s, {}/s churn",
        shape.dcs,
        shape.nodes_per_dc,
        shape.sessions / 1000,
        shape.refresh_after,
        shape.churn
    );
    let predicted = predicted(mode, shape);
    let measured = match result {
        Ok(r) => Some(r),
        Err(e) => {
            table.note("B9", &format!("{m} not run: {e:?}"));
            None
        }
    };
    let nan = one(f64::NAN);
    let got = |f: &dyn Fn(&Measured) -> f64| measured.as_ref().map_or(nan, |r| one(f(r)));
    let sum_of = |names: &[&str], map: &dyn Fn(&str) -> f64| names.iter().map(|n| map(n)).sum();
    let groups: [(&str, &[&str]); 3] = [
        ("EVAL", &["eval"]),
        ("SET (logins)", &["set"]),
        (
            "HSET+SADD+SREM+EXPIRE+HGETALL+SMEMBERS",
            &["hset", "sadd", "srem", "expire", "hgetall", "smembers"],
        ),
    ];
    for (label, names) in groups {
        let p = sum_of(names, &|n| predicted.get(n).copied().unwrap_or(0.0));
        let got = got(&|r| sum_of(names, &|n| r.per_sec.get(n).copied().unwrap_or(0.0)));
        table.row("B9", &format!("{what}: {label}"), got, "cmd/s");
        table.row("B9", &format!("{m}: {label} predicted"), one(p), "cmd/s");
        table.ratio(
            "B9",
            &format!("{m}: {label} measured ÷ predicted"),
            got,
            one(p),
        );
    }
    let p: f64 = predicted.values().sum();
    let total = got(&Measured::client_total);
    table.row("B9", &format!("{m}: all client commands"), total, "cmd/s");
    table.row("B9", &format!("{m}: all predicted"), one(p), "cmd/s");
    table.ratio(
        "B9",
        &format!("{m}: all measured ÷ predicted"),
        total,
        one(p),
    );
    table.row(
        "B9",
        &format!("{m}: Redis CPU"),
        got(&|r| r.redis_cpu),
        "cores",
    );
    table.row(
        "B9",
        &format!("{m}: bench process CPU (all runtimes)"),
        got(&|r| r.bench_cpu),
        "cores",
    );
    table.row(
        "B9",
        &format!("{m}: busiest tenth ÷ mean tenth"),
        got(&|r| r.peak_to_mean),
        "ratio",
    );
    table.row(
        "B9",
        &format!("{m}: refresh pass ÷ refresh_after"),
        got(&|r| r.pass_share),
        "ratio",
    );
    table.row(
        "B9",
        &format!("{m}: refresh pass, mean"),
        got(&|r| r.pass_share * shape.refresh_after as f64 * 1000.0),
        "ms",
    );
    table.row(
        "B9",
        &format!("{m}: Redis used_memory per session"),
        got(&|r| r.memory_per_session),
        "B",
    );
    table.row(
        "B9",
        &format!("{m}: sessions opened while populating"),
        got(&|r| r.populate_rate),
        "sessions/s",
    );
    if let Some(r) = &measured {
        for (name, v) in &r.per_sec {
            let p = predicted.get(name.as_str()).copied().unwrap_or(0.0);
            eprintln!("B9 {m} {name}: measured {v:.1}/s, predicted {p:.1}/s");
        }
    }
}
