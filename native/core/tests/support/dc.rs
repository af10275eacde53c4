//! Datacenters for tests: runtimes on loopback with ephemeral ports,
//! sharing one store, and a host stand-in that records what it is handed.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gd_core::config::{BackendKind, Config, Endpoint};
use gd_core::jid::Jid;
use gd_core::routing::{Delivered, Delivery, Envelope, Reason, RouteResult};
use gd_core::runtime::{Runtime, StartOptions};
use gd_core::store::redis::RedisBackend;
use gd_core::store::Backend;
use gd_core::transport::frame::PayloadKind;
use parking_lot::Mutex;

use super::faultproxy::FaultProxy;

pub const GLOBAL: &str = "example.com";

/// The host: records deliveries and undeliverable reports.
#[derive(Default)]
pub struct Inbox {
    pub delivered: Mutex<Vec<Delivered>>,
    pub undeliverable: Mutex<Vec<(Envelope, Reason)>>,
}

impl Delivery for Inbox {
    fn deliver(&self, d: Delivered) {
        self.delivered.lock().push(d);
    }
    fn undeliverable(&self, e: Envelope, r: Reason) {
        self.undeliverable.lock().push((e, r));
    }
}

impl Inbox {
    pub fn delivered_count(&self) -> usize {
        self.delivered.lock().len()
    }
    pub fn undeliverable_count(&self) -> usize {
        self.undeliverable.lock().len()
    }
    /// Payloads delivered to `to`, in arrival order.
    pub fn bodies_to(&self, to: &str) -> Vec<String> {
        self.delivered
            .lock()
            .iter()
            .filter(|d| d.envelope.to.to_full_string() == to)
            .map(|d| String::from_utf8_lossy(&d.envelope.payload).into_owned())
            .collect()
    }
    pub fn all_bodies(&self) -> Vec<String> {
        self.delivered
            .lock()
            .iter()
            .map(|d| String::from_utf8_lossy(&d.envelope.payload).into_owned())
            .collect()
    }
}

pub fn host(n: u32) -> String {
    format!("dc{n}.{GLOBAL}")
}

/// A configuration for DC number `n` with test-friendly intervals.
pub fn config(n: u32) -> Config {
    let mut c = Config::minimal(GLOBAL, &host(n)).expect("minimal config");
    c.node_name = format!("node{n}@localhost");
    c.connections.endpoints = vec![Endpoint {
        host: "127.0.0.1".into(),
        port: 0,
    }];
    c.hosts_refresh_interval = 200;
    c.connections.endpoint_refresh_interval = 1;
    c.connections.endpoint_refresh_interval_when_empty = 1;
    c.connections.disabled_gc_interval = 1;
    c.bounce.resend_after_ms = 100;
    c.bounce.max_retries = 4;
    c.cache.jid_lifetime_seconds = 1;
    c
}

pub struct Dc {
    pub rt: Runtime,
    pub inbox: Arc<Inbox>,
}

pub fn start(cfg: Config, backend: Arc<dyn Backend>) -> Dc {
    let inbox = Arc::new(Inbox::default());
    let rt = Runtime::start_with(
        cfg,
        inbox.clone(),
        StartOptions {
            backend: Some(backend),
            ..StartOptions::default()
        },
    )
    .expect("runtime starts");
    Dc { rt, inbox }
}

pub fn jid(s: &str) -> Jid {
    Jid::parse(s).expect("valid jid")
}

impl Dc {
    pub fn login(&self, j: &str) {
        self.rt.block_on(self.rt.session_opened(&jid(j)));
    }
    pub fn logout(&self, j: &str) {
        self.rt.block_on(self.rt.session_closed(&jid(j)));
    }
    pub fn send(&self, from: &str, to: &str, body: &str) -> RouteResult {
        let env = self.rt.envelope(
            jid(from),
            jid(to),
            PayloadKind::Message,
            Bytes::from(body.to_owned()),
        );
        self.rt.block_on(self.rt.route(env))
    }
    pub fn counter(&self, name: &str) -> u64 {
        self.rt.metrics().counter(name).get()
    }
    /// Reads `hosts` and waits until the pools towards `other` are ready.
    pub fn know(&self, other: &Dc) {
        self.rt.block_on(self.rt.refresh_hosts_now());
        let h = other.rt.local_host().to_owned();
        assert!(
            super::wait_for(Duration::from_secs(5), || !self
                .rt
                .outgoing()
                .endpoints_of(&h)
                .is_empty()),
            "{} never learned the endpoints of {h}",
            self.rt.local_host()
        );
    }
}

/// dc2, and dc1 (configured by `c1`) reaching dc2 only through a fault
/// proxy (its `global_distrib_addr` override); alice is at dc1, bob at dc2.
/// The proxy runs on `prt`, apart from both DCs.
pub fn linked_through_proxy(
    store: Arc<dyn Backend>,
    prt: &tokio::runtime::Runtime,
    mut c1: Config,
) -> (Dc, Dc, FaultProxy) {
    let dc2 = start(config(2), store.clone());
    let proxy = prt.block_on(FaultProxy::start(dc2.rt.listen_addrs()[0]));
    c1.global_distrib_addr.insert(
        host(2),
        vec![Endpoint {
            host: "127.0.0.1".into(),
            port: proxy.addr().port(),
        }],
    );
    let dc1 = start(c1, store);
    dc1.login("alice@example.com/a");
    dc2.login("bob@example.com/b");
    (dc1, dc2, proxy)
}

/// `config(n)` on the Redis backend at `url`, with JID answers cached for a
/// minute (routing must go on from the cache while Redis is away).
pub fn redis_config(n: u32, url: &str) -> Config {
    let mut c = config(n);
    c.backend = BackendKind::Redis;
    c.redis.url = Some(url.to_owned());
    c.cache.jid_lifetime_seconds = 60;
    c
}

/// DC `n` on the Redis at `url`.
pub fn start_on_redis(n: u32, url: &str) -> Dc {
    let cfg = redis_config(n, url);
    let backend: Arc<dyn Backend> = Arc::new(RedisBackend::new(&cfg.redis).unwrap());
    start(cfg, backend)
}
