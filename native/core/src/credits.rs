//! Credits between the runtime and its host: how many received stanzas
//! (and payload bytes) the host has been handed and has not finished with.
//!
//! The host's [`Delivery`](crate::envelope::Delivery) counts what it is
//! handed ([`Credits::taken`]) and what its consumer finished
//! ([`Credits::returned`]): an Erlang worker confirming a stanza, a C
//! callback returning. The dispatch shards of the receiving side wait
//! ([`Credits::room_for`]) before handing more to a host that is at its limit.
//! While a shard waits it takes nothing from its queue, the connections
//! feeding it stop reading, TCP pushes back to the sending DC, whose
//! connection queue fills up to its bound, and what it cannot queue goes to
//! bounce and then ends as undeliverable: a slow host slows its senders
//! down instead of growing a mailbox without bound.
//!
//! Only the receiving flow waits. Stanzas bounce hands back and
//! undeliverable reports are counted but never wait (their sources are
//! bounded by themselves: `bounce.max_stored`, the host's own calls), so
//! the count can pass the limit by those.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

use crate::metrics::{names, Counter, Gauge, Metrics};

/// The limits and the current count of what the host holds.
pub struct Credits {
    max_stanzas: usize,
    max_bytes: usize,
    stanzas: AtomicUsize,
    bytes: AtomicUsize,
    /// Woken when the count falls below the limits.
    freed: Notify,
    /// Times a dispatch shard found the host at its limit and waited.
    waits: AtomicUsize,
    /// The runtime's metrics, once it runs.
    shown: OnceLock<Shown>,
}

struct Shown {
    unconfirmed: Arc<Gauge>,
    waits: Arc<Counter>,
}

impl Credits {
    /// A host that may hold at most `max_stanzas` stanzas and `max_bytes`
    /// payload bytes it has not finished with (each at least 1).
    pub fn new(max_stanzas: usize, max_bytes: usize) -> Credits {
        Credits {
            max_stanzas: max_stanzas.max(1),
            max_bytes: max_bytes.max(1),
            stanzas: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            freed: Notify::new(),
            waits: AtomicUsize::new(0),
            shown: OnceLock::new(),
        }
    }

    /// Shows the count and the waits in `metrics`
    /// (`incoming.host_unconfirmed`, `incoming.host_waits`).
    pub fn show_in(&self, metrics: &Metrics) {
        let shown = self.shown.get_or_init(|| Shown {
            unconfirmed: metrics.gauge(names::INCOMING_HOST_UNCONFIRMED),
            waits: metrics.counter(names::INCOMING_HOST_WAITS),
        });
        shown
            .unconfirmed
            .set(self.stanzas.load(Ordering::Acquire) as i64);
    }

    /// The host was handed `stanzas` more stanzas of `bytes` payload bytes.
    pub fn taken(&self, stanzas: usize, bytes: usize) {
        let now = self.stanzas.fetch_add(stanzas, Ordering::AcqRel) + stanzas;
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        if let Some(shown) = self.shown.get() {
            shown.unconfirmed.set(now as i64);
        }
    }

    /// The host finished with `stanzas` stanzas of `bytes` payload bytes
    /// (ran them, or they were lost). Never goes below zero.
    pub fn returned(&self, stanzas: usize, bytes: usize) {
        let sub = |a: &AtomicUsize, n: usize| {
            let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.stanzas, stanzas);
        sub(&self.bytes, bytes);
        if let Some(shown) = self.shown.get() {
            shown
                .unconfirmed
                .set(self.stanzas.load(Ordering::Acquire) as i64);
        }
        self.freed.notify_waiters();
    }

    /// Whether `stanzas` more stanzas of `bytes` payload bytes may be
    /// handed over within the limits. One stanza always fits a host that
    /// holds nothing, however large: a limit below one payload must not
    /// stop the flow for good.
    pub fn fits(&self, stanzas: usize, bytes: usize) -> bool {
        let s = self.stanzas.load(Ordering::Acquire);
        let b = self.bytes.load(Ordering::Acquire);
        if s == 0 && stanzas <= 1 {
            return true;
        }
        s + stanzas <= self.max_stanzas && b + bytes <= self.max_bytes
    }

    /// Waits until `stanzas` more stanzas of `bytes` bytes fit.
    pub async fn room_for(&self, stanzas: usize, bytes: usize) {
        if self.fits(stanzas, bytes) {
            return;
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        if let Some(shown) = self.shown.get() {
            shown.waits.inc();
        }
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a return in between wakes it.
            freed.as_mut().enable();
            if self.fits(stanzas, bytes) {
                return;
            }
            freed.await;
        }
    }

    /// (stanzas, bytes) the host holds now.
    pub fn outstanding(&self) -> (usize, usize) {
        (
            self.stanzas.load(Ordering::Acquire),
            self.bytes.load(Ordering::Acquire),
        )
    }

    /// Times a dispatch shard waited for the host.
    pub fn waits(&self) -> usize {
        self.waits.load(Ordering::Relaxed)
    }

    /// (max stanzas, max bytes).
    pub fn limits(&self) -> (usize, usize) {
        (self.max_stanzas, self.max_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_limit_is_reached_by_count_or_by_bytes() {
        let c = Credits::new(3, 100);
        assert!(c.fits(3, 100));
        assert!(!c.fits(4, 10), "4 stanzas never fit a limit of 3");
        c.taken(2, 10);
        assert!(c.fits(1, 0), "2 + 1 is the limit");
        assert!(!c.fits(2, 0), "2 + 2 is past it");
        assert!(c.fits(0, 90));
        assert!(!c.fits(1, 91), "10 + 91 bytes is past 100");
        c.returned(2, 10);
        assert_eq!(c.outstanding(), (0, 0));
        c.returned(5, 5);
        assert_eq!(c.outstanding(), (0, 0), "never below zero");
    }

    #[test]
    fn one_stanza_larger_than_the_byte_limit_still_goes_to_an_empty_host() {
        let c = Credits::new(10, 100);
        assert!(c.fits(1, 1_000));
        assert!(!c.fits(2, 1_000), "only one");
        c.taken(1, 1_000);
        assert!(!c.fits(1, 1));
    }

    #[tokio::test]
    async fn a_waiter_wakes_when_the_host_returns_credits() {
        let c = Arc::new(Credits::new(2, usize::MAX));
        c.taken(2, 0);
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.room_for(1, 0).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "the host is at its limit");
        c.returned(1, 0);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(c.waits(), 1);
    }
}
