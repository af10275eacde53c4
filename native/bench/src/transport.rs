//! B1 (throughput) and B2 (latency) through the real runtimes: DC1's
//! `try_route` on a plain thread, DC2's `Delivery` counting arrivals.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::dcs::{wait_for, Certs, Link, Pair, Sink, DC1, DC2, PAYLOAD_LEN, SENDERS};
use crate::stats::{cpu_time, percentile};
use crate::BenchError;

/// Stanzas sent but not yet delivered, at most: keeps the outgoing queue
/// (100 000 by default) from filling, which would divert stanzas to bounce.
const WINDOW: u64 = 50_000;

/// What one throughput run measured.
pub struct Throughput {
    pub per_sec: f64,
    /// Process CPU seconds (both runtimes and the sender) per million stanzas.
    pub cpu_s_per_million: f64,
}

/// B1: sends `n` stanzas from DC1 as fast as the fast path takes them and
/// stops the clock when DC2 has delivered all of them.
pub fn throughput(certs: &Certs, link: Link, n: u64) -> Result<Throughput, BenchError> {
    let sink = Sink::new(Instant::now(), false);
    let pair = Pair::start(link, certs, sink.clone())?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD_LEN]);
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    for i in 0..n {
        while i.saturating_sub(sink.count()) >= WINDOW {
            // Sleep rather than spin: the CPU figure is the runtimes' cost.
            std::thread::sleep(Duration::from_micros(50));
        }
        let from = &pair.senders[(i as usize) % SENDERS];
        pair.send(pair.envelope(from, payload.clone()));
    }
    let arrived = wait_for(Duration::from_secs(60), || sink.count() >= n);
    let elapsed = t0.elapsed();
    let cpu = cpu_time().saturating_sub(cpu0);
    if !arrived {
        let why = pair.diagnose();
        pair.stop();
        return Err(BenchError::msg(format!(
            "B1 {link:?}: {n} stanzas sent, not all arrived: {why}"
        )));
    }
    pair.stop();
    Ok(Throughput {
        per_sec: n as f64 / elapsed.as_secs_f64(),
        cpu_s_per_million: cpu.as_secs_f64() * 1e6 / n as f64,
    })
}

/// Send-to-delivery percentiles of one latency run, µs.
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    /// The percentiles (nearest rank) of latency samples in ns.
    pub fn of(mut samples: Vec<u64>) -> Latency {
        samples.sort_unstable();
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50: us(percentile(&samples, 50.0)),
            p99: us(percentile(&samples, 99.0)),
            p999: us(percentile(&samples, 99.9)),
            max: us(samples.last().copied().unwrap_or(0)),
        }
    }
}

/// Where the slowest stanzas spent their time: of the stanzas at or above
/// the p99 latency, the mean latency and the mean part of it between the
/// writer's stamp and the reader's decode (TLS write, socket, TLS read),
/// in µs. The rest is the sender's side before the write (route, queue,
/// waking the writer) and the receiver's after the read (dispatch,
/// delivery).
pub struct Tail {
    pub latency: f64,
    pub wire: f64,
    /// p99 of each stage by the runtimes' own histograms (µs): DC1's
    /// connection queue (enqueued → written), the wire (written → read),
    /// DC2's dispatch queue (read → routed).
    pub sender_queue_p99: f64,
    pub wire_p99: f64,
    pub dispatch_queue_p99: f64,
}

impl Tail {
    pub fn of(samples: &[(u64, u64)]) -> Tail {
        let mut latencies: Vec<u64> = samples.iter().map(|s| s.0).collect();
        latencies.sort_unstable();
        let p99 = percentile(&latencies, 99.0);
        let slow: Vec<&(u64, u64)> = samples.iter().filter(|s| s.0 >= p99).collect();
        let n = slow.len().max(1) as f64;
        // The wire part cannot exceed the whole (the two clocks' readings
        // are µs apart at most).
        let wire: u64 = slow.iter().map(|s| s.1.min(s.0)).sum();
        let total: u64 = slow.iter().map(|s| s.0).sum();
        Tail {
            latency: total as f64 / n / 1000.0,
            wire: wire as f64 / n / 1000.0,
            sender_queue_p99: f64::NAN,
            wire_p99: f64::NAN,
            dispatch_queue_p99: f64::NAN,
        }
    }

    /// The stage p99s from the two runtimes' metrics.
    fn with_stages(mut self, pair: &Pair) -> Tail {
        use gd_core::metrics::names;
        let sent = pair.dc1.metrics().snapshot();
        let got = pair.dc2.metrics().snapshot();
        let p99 = |s: &gd_core::metrics::Snapshot, name: &str| {
            s.histogram(name).map_or(f64::NAN, |h| h.p99 as f64)
        };
        self.sender_queue_p99 = p99(&sent, &names::outgoing_queue_time(DC2));
        self.wire_p99 = p99(&got, &names::incoming_transfer_time(DC1));
        self.dispatch_queue_p99 = p99(&got, names::INCOMING_QUEUE_TIME);
        self
    }
}

/// B2: `rate` stanzas/s for `secs` over TLS. Each payload carries the time
/// the stanza was *due* (not when the sender got round to it), so a sender
/// falling behind shows up as latency instead of hiding it.
pub fn latency(
    certs: &Certs,
    rate: u64,
    secs: f64,
    workers: usize,
) -> Result<(Latency, Tail), BenchError> {
    let epoch = Instant::now();
    let sink = Sink::new(epoch, true);
    let link = Link {
        tls: true,
        connections: 1,
        workers,
    };
    let pair = Pair::start(link, certs, sink.clone())?;
    let n = (rate as f64 * secs) as u64;
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    tighten_timer_slack();
    let start = Instant::now();
    for i in 0..n {
        let due = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        pace_until(due);
        let mut p = BytesMut::with_capacity(PAYLOAD_LEN);
        p.put_u64_le(due.saturating_duration_since(epoch).as_nanos() as u64);
        p.put_bytes(b'x', PAYLOAD_LEN - 8);
        let from = &pair.senders[(i as usize) % SENDERS];
        pair.send(pair.envelope(from, p.freeze()));
    }
    let arrived = wait_for(Duration::from_secs(60), || sink.count() >= n);
    if !arrived {
        let why = pair.diagnose();
        pair.stop();
        return Err(BenchError::msg(format!(
            "B2: {n} stanzas sent, not all arrived: {why}"
        )));
    }
    let samples = sink
        .latencies
        .as_ref()
        .map(|s| s.take())
        .unwrap_or_default();
    let tail = Tail::of(&samples).with_stages(&pair);
    pair.stop();
    Ok((
        Latency::of(samples.into_iter().map(|s| s.0).collect()),
        tail,
    ))
}

/// Cuts the calling thread's timer slack to 1 µs: with the default 50 µs
/// every 50 µs sleep of the pacer would last about 100 µs.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only affects the
    // calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// Sleeps until `due`. Spinning instead would take a core from the two
/// runtimes on a 2-core machine and show up as their latency.
pub fn pace_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}
