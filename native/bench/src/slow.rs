//! B10: a slow host. DC2's host runs its stanzas on one consumer thread at
//! a fixed rate; DC1 sends twice as fast over one TLS connection for a few
//! seconds. What it shows: DC2's host holds no more than its credits
//! (`connections.max_unconfirmed_deliveries`), the sender feels the
//! back-pressure (its queue towards DC2 fills, bounce takes the overflow
//! and later reports what it could not place), the process RSS stays
//! bounded, and every stanza ends exactly once (delivered or reported).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gd_core::credits::Credits;
use gd_core::jid::Jid;
use gd_core::metrics::{names, MetricValue};
use gd_core::routing::{Delivered, Delivery, Envelope, Reason, RouteResult};
use gd_core::runtime::{Runtime, StartOptions};
use gd_core::store::{Backend, EmbeddedBackend};
use gd_core::transport::frame::PayloadKind;

use crate::dcs::{config, wait_for, Certs, Link, Sink, DC1, DC2, GLOBAL, PAYLOAD_LEN, RECIPIENT};
use crate::stats::rss_bytes;
use crate::transport::pace_until;
use crate::BenchError;

/// What the slow host runs per second.
pub const HOST_RATE: u64 = 20_000;
/// What DC1 sends per second.
pub const SEND_RATE: u64 = 40_000;
/// DC2's credits.
const MAX_UNCONFIRMED: usize = 10_000;
/// DC1's queue bound towards DC2 (default 100 000): smaller, so that the
/// back-pressure shows within a few seconds.
const QUEUE: usize = 10_000;

/// The host: a queue and one consumer thread that takes `HOST_RATE`
/// stanzas a second from it.
struct SlowHost {
    queue: Mutex<VecDeque<Delivered>>,
    ready: Condvar,
    credits: Credits,
    delivered: AtomicU64,
    undeliverable: AtomicU64,
    done: AtomicBool,
}

impl Delivery for SlowHost {
    fn deliver(&self, d: Delivered) {
        self.credits.taken(1, d.envelope.payload.len());
        if let Ok(mut q) = self.queue.lock() {
            q.push_back(d);
        }
        self.ready.notify_one();
    }

    fn undeliverable(&self, _e: Envelope, _r: Reason) {
        self.undeliverable.fetch_add(1, Ordering::Relaxed);
    }

    fn credits(&self) -> Option<&Credits> {
        Some(&self.credits)
    }
}

impl SlowHost {
    fn consume(&self) {
        let period = Duration::from_nanos(1_000_000_000 / HOST_RATE);
        let mut due = Instant::now();
        loop {
            let next = {
                let Ok(mut q) = self.queue.lock() else { return };
                loop {
                    if let Some(d) = q.pop_front() {
                        break d;
                    }
                    if self.done.load(Ordering::Acquire) {
                        return;
                    }
                    q = match self.ready.wait_timeout(q, Duration::from_millis(20)) {
                        Ok((q, _)) => q,
                        Err(_) => return,
                    };
                    due = due.max(Instant::now());
                }
            };
            due += period;
            pace_until(due);
            self.credits.returned(1, next.envelope.payload.len());
            self.delivered.fetch_add(1, Ordering::Release);
        }
    }
}

/// What one run measured.
pub struct SlowRun {
    /// Stanzas the host ran per second while DC1 sent.
    pub host_rate: f64,
    /// Most stanzas DC2's host held at once (sampled every 10 ms).
    pub peak_unconfirmed: f64,
    /// Stanzas DC1's queue towards DC2 refused (`outgoing.queue_full`).
    pub queue_full: f64,
    /// Most stanzas held by DC1's bounce at once.
    pub peak_bounce: f64,
    /// Largest RSS growth of the process over its size before sending, MB.
    pub rss_growth_mb: f64,
    /// Stanzas reported undeliverable: refused by route() at once (bounce
    /// full) or after bounce's retries.
    pub undeliverable: f64,
    /// Sent − (delivered + reported): must be 0.
    pub unaccounted: f64,
}

fn counter(rt: &Runtime, name: &str) -> u64 {
    match rt
        .metrics()
        .snapshot()
        .0
        .into_iter()
        .find(|(n, _)| n == name)
    {
        Some((_, MetricValue::Counter(v))) => v,
        _ => 0,
    }
}

/// B10: DC1 sends at [`SEND_RATE`] for `secs` to a host that runs
/// [`HOST_RATE`].
pub fn slow_host(certs: &Certs, secs: f64) -> Result<SlowRun, BenchError> {
    let link = Link {
        tls: true,
        connections: 1,
        workers: crate::dcs::WORKERS,
    };
    let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let opts = StartOptions {
        backend: Some(backend),
        ..StartOptions::default()
    };
    let sink = Sink::new(Instant::now(), false);
    let host = Arc::new(SlowHost {
        queue: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
        credits: Credits::new(MAX_UNCONFIRMED, usize::MAX),
        delivered: AtomicU64::new(0),
        undeliverable: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let mut c1 = config(DC1, "node1@bench", link, &certs.dc1)?;
    c1.connections.outgoing_queue_size = QUEUE;
    let mut c2 = config(DC2, "node2@bench", link, &certs.dc2)?;
    c2.connections.limits.max_unconfirmed_deliveries = MAX_UNCONFIRMED;
    let dc1 = Runtime::start_with(c1, sink.clone(), opts.clone())?;
    let dc2 = Runtime::start_with(c2, host.clone(), opts)?;
    let consumer = std::thread::spawn({
        let host = host.clone();
        move || host.consume()
    });
    let to = Jid::parse(RECIPIENT)?;
    dc2.block_on(dc2.session_opened(&to));
    dc1.block_on(dc1.refresh_hosts_now());
    let from = Jid::parse(&format!("alice@{GLOBAL}/res"))?;
    let payload = Bytes::from(vec![b'x'; PAYLOAD_LEN]);
    // Stanzas route() refused at once (answered undeliverable, or handed
    // back to the host's local routing): the caller was told.
    let refused = AtomicU64::new(0);
    let send = |dc1: &Runtime| {
        let env = dc1.envelope(
            from.clone(),
            to.clone(),
            PayloadKind::Message,
            payload.clone(),
        );
        let result = match dc1.try_route(env) {
            Ok(r) => r,
            Err(env) => dc1.block_on(dc1.route(env)),
        };
        if matches!(result, RouteResult::Undeliverable(_) | RouteResult::Local) {
            refused.fetch_add(1, Ordering::Relaxed);
        }
    };
    // Warm-up: the connection is open and the recipient cached.
    send(&dc1);
    if !wait_for(Duration::from_secs(20), || {
        host.delivered.load(Ordering::Acquire) >= 1
    }) {
        return Err(BenchError::msg("B10: the warm-up stanza never arrived"));
    }
    let rss0 = rss_bytes();
    let (mut peak_rss, mut peak_held, mut peak_bounce) = (rss0, 0usize, 0usize);
    let delivered0 = host.delivered.load(Ordering::Acquire);
    let n = (SEND_RATE as f64 * secs) as u64;
    let period = Duration::from_nanos(1_000_000_000 / SEND_RATE);
    let t0 = Instant::now();
    let mut sampled = t0;
    for i in 0..n {
        pace_until(t0 + period * i as u32);
        send(&dc1);
        if sampled.elapsed() >= Duration::from_millis(10) {
            sampled = Instant::now();
            peak_rss = peak_rss.max(rss_bytes());
            peak_held = peak_held.max(host.credits.outstanding().0);
            peak_bounce = peak_bounce.max(dc1.bounce_queue_size());
        }
    }
    let sending = t0.elapsed();
    let host_rate =
        (host.delivered.load(Ordering::Acquire) - delivered0) as f64 / sending.as_secs_f64();
    let queue_full = counter(&dc1, &names::outgoing_queue_full(DC2));
    // Everything ends: the host catches up, bounce places or reports the rest.
    let total = n + 1;
    let ended = || {
        host.delivered.load(Ordering::Acquire)
            + sink.undeliverable.load(Ordering::Relaxed)
            + host.undeliverable.load(Ordering::Relaxed)
            + refused.load(Ordering::Relaxed)
    };
    let settle = Duration::from_secs_f64(secs * 2.0 + 30.0);
    let all = wait_for(settle, || {
        peak_rss = peak_rss.max(rss_bytes());
        peak_bounce = peak_bounce.max(dc1.bounce_queue_size());
        ended() >= total
    });
    // Anything arriving twice would show now.
    std::thread::sleep(Duration::from_millis(200));
    let run = SlowRun {
        host_rate,
        peak_unconfirmed: peak_held as f64,
        queue_full: queue_full as f64,
        peak_bounce: peak_bounce as f64,
        rss_growth_mb: peak_rss.saturating_sub(rss0) as f64 / 1e6,
        undeliverable: (sink.undeliverable.load(Ordering::Relaxed)
            + refused.load(Ordering::Relaxed)) as f64,
        unaccounted: total as f64 - ended() as f64,
    };
    dc1.stop(Duration::from_secs(2));
    dc2.stop(Duration::from_secs(2));
    host.done.store(true, Ordering::Release);
    host.ready.notify_all();
    let _ = consumer.join();
    if !all {
        return Err(BenchError::msg(format!(
            "B10: {} of {total} stanzas never ended (delivered {}, reported {}, refused at once {})",
            total.saturating_sub(ended()),
            host.delivered.load(Ordering::Acquire),
            sink.undeliverable.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed)
        )));
    }
    Ok(run)
}
