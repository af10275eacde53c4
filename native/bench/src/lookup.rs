//! B6a: the cost of the cached fast path, per call, on DC1 of a running
//! pair: `Mapping::lookup_cached` for a cached recipient, and the whole
//! `Runtime::try_route` (lookup + queueing towards DC2).

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gd_core::jid::Jid;
use gd_core::routing::RouteResult;
use gd_core::transport::frame::PayloadKind;

use crate::dcs::{wait_for, Pair, PAYLOAD_LEN, SENDERS};
use crate::BenchError;

/// ns per `lookup_cached` over `n` calls.
pub fn lookup_cached_ns(pair: &Pair, n: u64) -> Result<f64, BenchError> {
    let mapping = pair.dc1.mapping();
    if mapping.lookup_cached(&pair.to).is_none() {
        return Err(BenchError::msg("B6a: the recipient is not cached at DC1"));
    }
    let t0 = Instant::now();
    for _ in 0..n {
        black_box(mapping.lookup_cached(black_box(&pair.to)));
    }
    Ok(t0.elapsed().as_nanos() as f64 / n as f64)
}

/// Stanzas per timed chunk; the chunk is built before and drained after
/// the clock runs, so neither envelope building nor a full queue is timed.
const CHUNK: u64 = 10_000;

/// ns per `try_route` of a stanza to a cached remote recipient.
pub fn try_route_ns(pair: &Pair, n: u64) -> Result<f64, BenchError> {
    try_route_loop(pair, n, false)
}

/// [`try_route_ns`] while bounce holds one other pair (a sender to a user
/// logged in nowhere; one more stanza of it per chunk, untimed, keeps it
/// held whatever its retries do).
pub fn try_route_held_ns(pair: &Pair, n: u64) -> Result<f64, BenchError> {
    try_route_loop(pair, n, true)
}

fn hold_one(pair: &Pair) -> Result<(), BenchError> {
    let nobody = Jid::parse("nobody@example.com/x").map_err(|e| BenchError::msg(e.to_string()))?;
    let env = pair.dc1.envelope(
        pair.senders[0].clone(),
        nobody,
        PayloadKind::Message,
        Bytes::from_static(b"held"),
    );
    let r = match pair.dc1.try_route(env) {
        Ok(r) => r,
        Err(env) => pair.dc1.block_on(pair.dc1.route(env)),
    };
    match r {
        RouteResult::Stored => Ok(()),
        other => Err(BenchError::msg(format!(
            "B6a: a stanza to nobody was not held by bounce: {other:?}"
        ))),
    }
}

fn try_route_loop(pair: &Pair, n: u64, hold: bool) -> Result<f64, BenchError> {
    let payload = Bytes::from(vec![b'x'; PAYLOAD_LEN]);
    let base = pair.sink.count();
    let mut timed = Duration::ZERO;
    let mut sent = 0u64;
    let mut slow = 0u64;
    while sent < n {
        let k = CHUNK.min(n - sent);
        if hold {
            hold_one(pair)?;
        }
        let envs: Vec<_> = (0..k)
            .map(|i| pair.envelope(&pair.senders[(i as usize) % SENDERS], payload.clone()))
            .collect();
        let t0 = Instant::now();
        for env in envs {
            if pair.dc1.try_route(env).is_err() {
                slow += 1;
            }
        }
        timed += t0.elapsed();
        sent += k;
        if !wait_for(Duration::from_secs(30), || pair.sink.count() >= base + sent) {
            return Err(BenchError::msg(
                "B6a: stanzas routed by try_route never arrived",
            ));
        }
    }
    if slow > 0 {
        return Err(BenchError::msg(format!(
            "B6a: try_route handed {slow} stanzas back: not the fast path"
        )));
    }
    Ok(timed.as_nanos() as f64 / n as f64)
}
