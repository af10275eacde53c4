//! `gd_bench`: the benchmarks of issue 6 that need no Erlang, as one
//! program printing one table and writing `bench/results/latest.json`.
//! Every figure is the median of the runs with their min–max. The method
//! behind each row is in `docs/PERFORMANCE.md`.
//!
//! ```text
//! gd_bench [--smoke] [--only b1|b2|b3|b4|b5|b6|b7|b8|b9|b10] [--stanzas N] [--sessions N]
//!          [--runs N] [--out PATH]
//! ```

mod dcs;
mod erlang;
mod lookup;
mod memory;
mod raw;
mod refresh;
mod sim;
mod slow;
mod stats;
mod table;
mod targets;
mod transport;

/// glibc malloc made the figures swing from run to run (payloads are freed
/// on another thread than the one that allocated them); mimalloc is what a
/// host embedding the runtime would pick too. The core library leaves the
/// choice to the program.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dcs::{Certs, Link, Pair, Sink};
use stats::Stat;
use table::Table;

/// Anything that stops the bench, with a message saying what and why.
pub struct BenchError(String);

impl BenchError {
    pub fn msg(m: impl std::fmt::Display) -> BenchError {
        BenchError(m.to_string())
    }
}

impl<E: std::error::Error> From<E> for BenchError {
    fn from(e: E) -> Self {
        BenchError(e.to_string())
    }
}

impl std::fmt::Debug for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Sizes of one invocation: full (`make bench`) or smoke (`make bench-smoke`).
struct Plan {
    smoke: bool,
    only: Option<String>,
    runs: usize,
    stanzas: u64,
    raw_frames: u64,
    latency_rate: u64,
    latency_secs: f64,
    lookups: u64,
    sessions: u64,
    pace_period: Duration,
    memory_items: u64,
    out: PathBuf,
}

fn usage() -> BenchError {
    BenchError::msg(
        "usage: gd_bench [--smoke] [--only b1|b2|b3|b4|b5|b6|b7|b8|b9|b10] [--stanzas N] \
         [--sessions N] [--runs N] [--out PATH]",
    )
}

fn parse_args() -> Result<Plan, BenchError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    let mut plan = Plan {
        smoke,
        only: None,
        runs: 3,
        stanzas: if smoke { 20_000 } else { 1_000_000 },
        raw_frames: if smoke { 100_000 } else { 3_000_000 },
        latency_rate: 20_000,
        latency_secs: if smoke { 1.0 } else { 10.0 },
        lookups: if smoke { 100_000 } else { 1_000_000 },
        sessions: if smoke { 10_000 } else { 1_000_000 },
        pace_period: Duration::from_secs(if smoke { 1 } else { 10 }),
        memory_items: if smoke { 100_000 } else { 1_000_000 },
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/results/latest.json"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(usage);
        let number = |v: &String| v.parse::<u64>().map_err(|_| usage());
        match a.as_str() {
            "--smoke" => {}
            "--only" => plan.only = Some(value()?.to_ascii_lowercase()),
            "--stanzas" => plan.stanzas = number(value()?)?,
            "--sessions" => plan.sessions = number(value()?)?,
            "--runs" => plan.runs = number(value()?)?.max(1) as usize,
            "--out" => plan.out = PathBuf::from(value()?),
            _ => return Err(usage()),
        }
    }
    Ok(plan)
}

impl Plan {
    fn wants(&self, name: &str) -> bool {
        match &self.only {
            None => true,
            Some(o) => o == name,
        }
    }
}

/// Runs `f` `runs` times and summarises each of the figures it returns.
/// Progress goes to stderr, so that stdout is the table alone.
fn repeat<const K: usize>(
    label: &str,
    runs: usize,
    mut f: impl FnMut() -> Result<[f64; K], BenchError>,
) -> Result<[Stat; K], BenchError> {
    let mut all: Vec<[f64; K]> = Vec::with_capacity(runs);
    for run in 1..=runs {
        let figures = f()?;
        eprintln!("{label} run {run}/{runs}: {figures:?}");
        all.push(figures);
    }
    Ok(std::array::from_fn(|k| {
        Stat::of(&all.iter().map(|r| r[k]).collect::<Vec<_>>())
    }))
}

fn main() -> Result<(), BenchError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--b8-child") {
        let subject = args.get(2).ok_or_else(usage)?;
        let n = args.get(3).and_then(|n| n.parse().ok()).ok_or_else(usage)?;
        return memory::child(subject, n);
    }
    let plan = parse_args()?;
    let started = Instant::now();
    let mut table = Table::new(plan.smoke, plan.runs);
    let certs = Certs::generate()?;

    // A failing bench does not cost the others: its error is printed under
    // the table and the exit status says the run was not complete.
    let mut failures = Vec::new();
    let mut run = |name: &str, result: Result<(), BenchError>| {
        if let Err(e) = result {
            eprintln!("{name} failed: {e:?}");
            failures.push(format!("{name}: {e:?}"));
        }
    };
    if plan.wants("b8") {
        run("B8", b8(&plan, &mut table));
    }
    // Throughputs the ratios of B4 and B5 are taken against.
    let mut ours = Ours::default();
    if plan.wants("b1") || plan.wants("b3") || plan.wants("b4") {
        run("B1/B3", b1_b3(&plan, &certs, &mut table, &mut ours));
    }
    if plan.wants("b2") {
        run("B2", b2(&plan, &certs, &mut table));
    }
    if plan.wants("b4") || plan.wants("b5") || plan.wants("b6") {
        match erlang::Erl::prepare() {
            Ok(erl) => {
                if plan.wants("b4") {
                    run("B4", b4(&plan, &erl, &certs, &mut table, &mut ours));
                }
                if plan.wants("b5") || plan.wants("b6") {
                    run("B5/B6", b5_b6(&plan, &erl, &certs, &mut table, &ours));
                }
            }
            Err(e) => run("B4/B5/B6", Err(e)),
        }
    }
    if plan.wants("b6") {
        run("B6a", b6(&plan, &certs, &mut table));
    }
    if plan.wants("b7") {
        run("B7", b7(&plan, &mut table));
    }
    if plan.wants("b9") {
        run("B9", sim::b9(plan.smoke, &mut table));
    }
    if plan.wants("b10") {
        run("B10", b10(&plan, &certs, &mut table));
    }
    table.print(started.elapsed(), &failures);
    table.write_json(&plan.out, started.elapsed(), &failures)?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(BenchError::msg(format!(
            "{} bench(es) failed",
            failures.len()
        )))
    }
}

/// Our B1 throughputs over one connection, and the Erlang baseline's over
/// TLS, kept for the ratios printed by later benches.
#[derive(Default)]
struct Ours {
    tcp_1conn: Option<Stat>,
    tls_1conn: Option<Stat>,
    erlang_tls: Option<Stat>,
}

fn b1_b3(plan: &Plan, certs: &Certs, table: &mut Table, ours: &mut Ours) -> Result<(), BenchError> {
    for tls in [false, true] {
        let proto = if tls { "TLS" } else { "TCP" };
        for connections in [1, 4] {
            if !plan.wants("b1") && connections != 1 {
                continue;
            }
            // GD_BENCH_LINK=tls1 (tcp1, tcp4, tls4) runs one link only,
            // for profiling.
            if let Ok(only) = std::env::var("GD_BENCH_LINK") {
                if only != format!("{}{connections}", proto.to_ascii_lowercase()) {
                    continue;
                }
            }
            let link = Link {
                tls,
                connections,
                workers: dcs::WORKERS,
            };
            let [rate, cpu] = repeat(&format!("B1 {link:?}"), plan.runs, || {
                let t = transport::throughput(certs, link, plan.stanzas)?;
                Ok([t.per_sec, t.cpu_s_per_million])
            })?;
            let what = format!("{proto}, {connections} conn");
            table.row("B1", &format!("{what}: throughput"), rate, "stanzas/s");
            table.row("B1", &format!("{what}: CPU"), cpu, "CPU-s/M stanzas");
            if connections == 1 {
                if tls {
                    ours.tls_1conn = Some(rate);
                } else {
                    ours.tcp_1conn = Some(rate);
                }
            }
        }
    }
    if !plan.wants("b3") {
        return Ok(());
    }
    for tls in [false, true] {
        let proto = if tls { "TLS" } else { "TCP" };
        let [rate, cpu] = repeat(&format!("B3 raw {proto}"), plan.runs, || {
            let t = raw::raw(certs, tls, plan.raw_frames)?;
            Ok([t.per_sec, t.cpu_s_per_million])
        })?;
        table.row("B3", &format!("raw {proto}: throughput"), rate, "frames/s");
        table.row("B3", &format!("raw {proto}: CPU"), cpu, "CPU-s/M frames");
        let mine = if tls { ours.tls_1conn } else { ours.tcp_1conn };
        if let Some(mine) = mine {
            table.ratio("B3", &format!("ours ÷ raw, {proto} (1 conn)"), mine, rate);
        }
    }
    Ok(())
}

/// B10: a host slower than the traffic sent to it (docs/PERFORMANCE.md).
fn b10(plan: &Plan, certs: &Certs, table: &mut Table) -> Result<(), BenchError> {
    let secs = if plan.smoke { 1.0 } else { 5.0 };
    let f = repeat("B10 slow host", plan.runs, || {
        let r = slow::slow_host(certs, secs)?;
        Ok([
            r.host_rate,
            r.peak_unconfirmed,
            r.queue_full,
            r.peak_bounce,
            r.rss_growth_mb,
            r.undeliverable,
            r.unaccounted,
        ])
    })?;
    let what = format!(
        "host {}k/s, sent {}k/s, TLS",
        slow::HOST_RATE / 1000,
        slow::SEND_RATE / 1000
    );
    table.row("B10", &format!("{what}: host ran"), f[0], "stanzas/s");
    table.row(
        "B10",
        "peak held by the host (credits 10 000)",
        f[1],
        "stanzas",
    );
    table.row(
        "B10",
        "sender's queue refusals (back-pressure)",
        f[2],
        "count",
    );
    table.row("B10", "peak held by the sender's bounce", f[3], "stanzas");
    table.row("B10", "peak RSS growth, whole process", f[4], "MB");
    table.row("B10", "reported undeliverable", f[5], "stanzas");
    table.row(
        "B10",
        "neither delivered nor reported (must be 0)",
        f[6],
        "stanzas",
    );
    Ok(())
}

fn b2(plan: &Plan, certs: &Certs, table: &mut Table) -> Result<(), BenchError> {
    let f = repeat("B2", plan.runs, || {
        let rate = plan.latency_rate;
        let (l, t) = transport::latency(certs, rate, plan.latency_secs, dcs::WORKERS)?;
        Ok([
            l.p50,
            l.p99,
            l.p999,
            l.max,
            t.latency,
            t.wire,
            t.sender_queue_p99,
            t.wire_p99,
            t.dispatch_queue_p99,
        ])
    })?;
    let [p50, p99, p999, max, tail, wire, q_out, q_wire, q_in] = f;
    let what = format!("TLS {}k/s", plan.latency_rate / 1000);
    for (name, s) in [("p50", p50), ("p99", p99), ("p99.9", p999), ("max", max)] {
        table.row("B2", &format!("{what}: {name}"), s, "µs");
    }
    table.row("B2", "slowest 1 %: mean latency", tail, "µs");
    table.row(
        "B2",
        "slowest 1 %: of which writer's stamp → reader's decode",
        wire,
        "µs",
    );
    table.row("B2", "stage p99: sender's connection queue", q_out, "µs");
    table.row(
        "B2",
        "stage p99: written → read (transfer_time)",
        q_wire,
        "µs",
    );
    table.row("B2", "stage p99: receiver's dispatch queue", q_in, "µs");
    // The tail analysis (docs/PERFORMANCE.md): the same with one worker
    // thread per runtime, so that the two DCs' threads fit the 2 cores.
    let [p50, p99, p999, max] = repeat("B2, 1 worker thread", plan.runs, || {
        let (l, _) = transport::latency(certs, plan.latency_rate, plan.latency_secs, 1)?;
        Ok([l.p50, l.p99, l.p999, l.max])
    })?;
    for (name, s) in [("p50", p50), ("p99", p99), ("p99.9", p999), ("max", max)] {
        table.row(
            "B2",
            &format!("{what}, 1 worker thread per runtime: {name}"),
            s,
            "µs",
        );
    }
    let [p50, p99, p999, max] = repeat("B3 raw latency", plan.runs, || {
        let l = raw::raw_latency(certs, plan.latency_rate, plan.latency_secs)?;
        Ok([l.p50, l.p99, l.p999, l.max])
    })?;
    for (name, s) in [("p50", p50), ("p99", p99), ("p99.9", p999), ("max", max)] {
        table.row("B3", &format!("raw {what}: {name}"), s, "µs");
    }
    Ok(())
}

/// Arguments shared by the Erlang benches: the mode and the certificates.
fn cert_args(plan: &Plan, certs: &Certs) -> Vec<String> {
    let mode = if plan.smoke { "smoke" } else { "full" };
    let path = |p: &std::path::Path| p.display().to_string();
    let key = |t: &gd_core::config::TlsConfig| t.keyfile.as_deref().map(path).unwrap_or_default();
    vec![
        mode.to_owned(),
        certs
            .dc1
            .cacertfile
            .as_deref()
            .map(path)
            .unwrap_or_default(),
        path(&certs.dc1.certfile),
        key(&certs.dc1),
        path(&certs.dc2.certfile),
        key(&certs.dc2),
    ]
}

fn b4(
    plan: &Plan,
    erl: &erlang::Erl,
    certs: &Certs,
    table: &mut Table,
    ours: &mut Ours,
) -> Result<(), BenchError> {
    const M: &str = "gd_bench_b4";
    const KEYS: [&str; 9] = [
        "tcp_rate",
        "tcp_cpu",
        "tls_rate",
        "tls_cpu",
        "tls_p50_us",
        "tls_p99_us",
        "tls_p999_us",
        "tls_max_us",
        "long_schedule",
    ];
    let args = cert_args(plan, certs);
    let s = repeat("B4 Erlang baseline", plan.runs, || {
        let f = erl.run(M, false, &args, Duration::from_secs(300))?;
        erlang::figures(&f, M, KEYS)
    })?;
    table.row("B4", "Erlang TCP, 1 conn: throughput", s[0], "stanzas/s");
    table.row("B4", "Erlang TCP, 1 conn: CPU", s[1], "CPU-s/M stanzas");
    table.row("B4", "Erlang TLS, 1 conn: throughput", s[2], "stanzas/s");
    table.row("B4", "Erlang TLS, 1 conn: CPU", s[3], "CPU-s/M stanzas");
    for (i, name) in ["p50", "p99", "p99.9", "max"].into_iter().enumerate() {
        table.row("B4", &format!("Erlang TLS 20k/s: {name}"), s[4 + i], "µs");
    }
    table.row(
        "B4",
        "long_schedule events (control, no NIF)",
        s[8],
        "count",
    );
    if let Some(mine) = ours.tcp_1conn {
        table.ratio("B4", "ours ÷ Erlang, TCP (1 conn)", mine, s[0]);
    }
    if let Some(mine) = ours.tls_1conn {
        table.ratio("B4", "ours ÷ Erlang, TLS (1 conn)", mine, s[2]);
    }
    ours.erlang_tls = Some(s[2]);
    Ok(())
}

fn b5_b6(
    plan: &Plan,
    erl: &erlang::Erl,
    certs: &Certs,
    table: &mut Table,
    ours: &Ours,
) -> Result<(), BenchError> {
    const M: &str = "gd_bench_nif";
    const KEYS: [&str; 9] = [
        "b5_rate",
        "b5_p50_us",
        "b5_p99_us",
        "b5_max_us",
        "b5_long_schedule",
        "b6_route_ns",
        "b6_lookup_ns",
        "b6_ets_ns",
        "b6_route_held_ns",
    ];
    let s = repeat("B5/B6 NIF from Erlang", plan.runs, || {
        // A fresh, empty Redis per run: the two nodes' sessions and
        // endpoints from the previous run are gone.
        let redis = refresh::start_redis()?;
        let mut args = cert_args(plan, certs);
        args.insert(1, format!("redis://127.0.0.1:{}", redis.port));
        let f = erl.run(M, true, &args, Duration::from_secs(360))?;
        erlang::figures(&f, M, KEYS)
    })?;
    if plan.wants("b5") {
        let what = "NIF, 2 nodes, TLS";
        table.row("B5", &format!("{what}: throughput"), s[0], "stanzas/s");
        for (i, name) in ["p50", "p99", "max"].into_iter().enumerate() {
            table.row("B5", &format!("{what} 20k/s: {name}"), s[1 + i], "µs");
        }
        table.row("B5", "long_schedule events (both nodes)", s[4], "count");
        if let Some(erlang_tls) = ours.erlang_tls {
            table.ratio("B5", "NIF path ÷ Erlang baseline, TLS", s[0], erlang_tls);
        }
    }
    if plan.wants("b6") {
        table.row(
            "B6",
            "route() from Erlang, cached, forwarded",
            s[5],
            "ns/call",
        );
        table.row("B6", "lookup() from Erlang, cached", s[6], "ns/call");
        table.row("B6", "ets:lookup", s[7], "ns/call");
        table.ratio("B6", "route() ÷ ets:lookup", s[5], s[7]);
        table.ratio("B6", "lookup() ÷ ets:lookup", s[6], s[7]);
        table.row(
            "B6",
            "route() from Erlang, one pair held in bounce",
            s[8],
            "ns/call",
        );
        table.ratio(
            "B6",
            "route(), one pair held ÷ bounce empty (target ≤ 1.2)",
            s[8],
            s[5],
        );
    }
    Ok(())
}

fn b6(plan: &Plan, certs: &Certs, table: &mut Table) -> Result<(), BenchError> {
    let sink = Sink::new(Instant::now(), false);
    let link = Link {
        tls: false,
        connections: 1,
        workers: dcs::WORKERS,
    };
    let pair = Pair::start(link, certs, sink)?;
    let [lookup] = repeat("B6a lookup_cached", plan.runs, || {
        Ok([lookup::lookup_cached_ns(&pair, plan.lookups)?])
    })?;
    let [route] = repeat("B6a try_route", plan.runs, || {
        Ok([lookup::try_route_ns(&pair, plan.lookups)?])
    })?;
    let [held] = repeat("B6a try_route, one pair held", plan.runs, || {
        Ok([lookup::try_route_held_ns(&pair, plan.lookups)?])
    })?;
    pair.stop();
    table.row("B6a", "mapping.lookup_cached (cached JID)", lookup, "ns/op");
    table.row("B6a", "rt.try_route (cached remote)", route, "ns/op");
    table.row(
        "B6a",
        "rt.try_route (cached remote), one pair held in bounce",
        held,
        "ns/op",
    );
    table.ratio(
        "B6a",
        "try_route, one pair held ÷ bounce empty",
        held,
        route,
    );
    Ok(())
}

fn b7(plan: &Plan, table: &mut Table) -> Result<(), BenchError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let redis = refresh::start_redis()?;
    let proxy = refresh::start_nutcracker(redis.port)?;
    let state = refresh::owned_sessions(plan.sessions);
    let n = plan.sessions;
    // One unpaced full refresh per run, and its two rows.
    let mut unpaced =
        |via: &str, r: &gd_core::store::refresher::Refresher| -> Result<(), BenchError> {
            let [wall, ops] = repeat(&format!("B7 via {via}"), plan.runs, || {
                let (wall, ops) = refresh::unpaced(&rt, r)?;
                Ok([wall, ops])
            })?;
            let what = format!("{n} sessions via {via}");
            table.row("B7", &format!("{what}: full refresh"), wall, "s");
            table.row("B7", &format!("{what}: Redis ops"), ops, "ops/s");
            Ok(())
        };
    for (via, port) in [("redis", redis.port), ("nutcracker", proxy.port)] {
        unpaced(via, &refresh::refresher(&state, port, plan.pace_period)?)?;
    }
    // The same refresh on a Redis Cluster of three masters: each batch is
    // cut by slot, so a pass is one pipeline per key instead of per 1000.
    let cluster = refresh::start_cluster()?;
    let r = refresh::cluster_refresher(&state, &cluster, plan.pace_period)?;
    unpaced("Redis Cluster (3 masters)", &r)?;
    drop((r, cluster));
    let evals = plan.sessions.max(100_000);
    let [ceiling] = repeat("B7 EVAL ceiling", plan.runs, || {
        Ok([refresh::eval_ceiling(redis.port, evals)?])
    })?;
    table.row(
        "B7",
        "Redis alone: pipelined EVAL of the refresh script",
        ceiling,
        "ops/s",
    );
    let keys = 2.0 * n as f64;
    table.row(
        "B7",
        &format!("floor for {keys:.0} keys at that ceiling"),
        Stat {
            median: keys / ceiling.median,
            min: keys / ceiling.max,
            max: keys / ceiling.min,
        },
        "s",
    );
    let r = refresh::refresher(&state, redis.port, plan.pace_period)?;
    let [share, peak] = repeat("B7 paced", plan.runs, || {
        let p = refresh::paced(&rt, &r, redis.port, plan.pace_period)?;
        Ok([p.share_of_period, p.peak_to_mean])
    })?;
    let period = plan.pace_period.as_secs();
    table.row(
        "B7",
        &format!("paced pass ÷ refresh_after ({period} s)"),
        share,
        "ratio",
    );
    table.row("B7", "paced: busiest tenth ÷ mean tenth", peak, "ratio");
    Ok(())
}

fn b8(plan: &Plan, table: &mut Table) -> Result<(), BenchError> {
    let n = plan.memory_items;
    let [jid] = repeat("B8 jids", plan.runs, || {
        Ok([memory::per_item(memory::Subject::Jids, n)?])
    })?;
    let [session] = repeat("B8 sessions", plan.runs, || {
        Ok([memory::per_item(memory::Subject::Sessions, n)?])
    })?;
    table.row("B8", &format!("RSS per cached JID ({n} JIDs)"), jid, "B");
    table.row("B8", &format!("RSS per owned session ({n})"), session, "B");
    Ok(())
}
