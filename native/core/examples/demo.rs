//! `make demo`: three datacenters of `example.com` on loopback, narrated.
//!
//! By default the DCs share the embedded store (one process, no Redis).
//! With `GD_DEMO_REDIS=redis://127.0.0.1:6379` every DC talks to that Redis
//! instead, exactly as separate deployments would.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gd_core::config::{Config, Endpoint};
use gd_core::jid::Jid;
use gd_core::metrics::MetricValue;
use gd_core::routing::{Delivered, Delivery, Envelope, Reason, RouteResult};
use gd_core::runtime::{Runtime, StartOptions};
use gd_core::store::embedded::EmbeddedBackend;
use gd_core::store::redis::RedisBackend;
use gd_core::store::Backend;
use gd_core::transport::frame::PayloadKind;
use parking_lot::Mutex;

const GLOBAL: &str = "example.com";

/// The "XMPP server" of one DC: prints what global routing hands it.
struct Host {
    name: String,
    delivered: Mutex<usize>,
    unrouted: Mutex<usize>,
    failed: Mutex<usize>,
}

impl Delivery for Host {
    fn deliver(&self, d: Delivered) {
        *self.delivered.lock() += 1;
        let via = match (&d.from_host, d.unrouted) {
            (Some(h), _) => format!("from {h}, {} µs on the wire", d.transfer_time_us),
            (None, Some(why)) => {
                *self.unrouted.lock() += 1;
                format!(
                    "found in no datacenter ({}): routed locally -> offline storage",
                    why.as_str()
                )
            }
            (None, None) => "released by bounce".to_owned(),
        };
        println!(
            "    [{}] deliver {} -> {}: {:?} ({via})",
            self.name,
            d.envelope.from,
            d.envelope.to,
            String::from_utf8_lossy(&d.envelope.payload)
        );
    }
    fn undeliverable(&self, e: Envelope, r: Reason) {
        *self.failed.lock() += 1;
        println!(
            "    [{}] undeliverable {} -> {}: {:?} ({}) -> answering service-unavailable",
            self.name,
            e.from,
            e.to,
            String::from_utf8_lossy(&e.payload),
            r.as_str()
        );
    }
}

struct Dc {
    rt: Runtime,
    host: Arc<Host>,
}

fn jid(s: &str) -> Result<Jid, Box<dyn std::error::Error>> {
    Ok(Jid::parse(s)?)
}

fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_dc(
    n: u32,
    port: u16,
    backend: Arc<dyn Backend>,
) -> Result<Dc, Box<dyn std::error::Error>> {
    let local = format!("dc{n}.{GLOBAL}");
    let mut cfg = Config::minimal(GLOBAL, &local)?;
    cfg.node_name = format!("node{n}@demo");
    cfg.connections.endpoints = vec![Endpoint {
        host: "127.0.0.1".into(),
        port,
    }];
    cfg.hosts_refresh_interval = 300;
    cfg.connections.endpoint_refresh_interval = 1;
    cfg.connections.endpoint_refresh_interval_when_empty = 1;
    cfg.cache.jid_lifetime_seconds = 1;
    cfg.bounce.resend_after_ms = 150;
    let host = Arc::new(Host {
        name: local.clone(),
        delivered: Mutex::new(0),
        unrouted: Mutex::new(0),
        failed: Mutex::new(0),
    });
    let rt = Runtime::start_with(
        cfg,
        host.clone(),
        StartOptions {
            backend: Some(backend),
            ..StartOptions::default()
        },
    )?;
    println!("  {local} listening on {:?}", rt.listen_addrs());
    Ok(Dc { rt, host })
}

impl Dc {
    fn login(&self, j: &str) -> Result<(), Box<dyn std::error::Error>> {
        self.rt.block_on(self.rt.session_opened(&jid(j)?));
        println!("  {j} logs in at {}", self.rt.local_host());
        Ok(())
    }
    fn logout(&self, j: &str) -> Result<(), Box<dyn std::error::Error>> {
        self.rt.block_on(self.rt.session_closed(&jid(j)?));
        println!("  {j} logs out of {}", self.rt.local_host());
        Ok(())
    }
    fn send(
        &self,
        from: &str,
        to: &str,
        body: &str,
    ) -> Result<RouteResult, Box<dyn std::error::Error>> {
        let env = self.rt.envelope(
            jid(from)?,
            jid(to)?,
            PayloadKind::Message,
            Bytes::from(body.to_owned()),
        );
        let r = self.rt.block_on(self.rt.route(env));
        let what = match &r {
            RouteResult::Local => "local".to_owned(),
            RouteResult::Forwarded(h) => format!("forwarded to {h}"),
            RouteResult::Stored => {
                format!("stored by bounce (queue: {})", self.rt.bounce_queue_size())
            }
            RouteResult::Undeliverable(reason) => format!("undeliverable ({})", reason.as_str()),
        };
        println!(
            "  {from} -> {to}: {body:?} at {}: {what}",
            self.rt.local_host()
        );
        Ok(r)
    }
}

fn settle(cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !cond() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn print_metrics(dcs: &[&Dc]) {
    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, dc) in dcs.iter().enumerate() {
        for (name, value) in dc.rt.metrics().snapshot().0 {
            let short = name
                .trim_start_matches("global.mod_global_distrib.")
                .to_owned();
            let cell = match value {
                MetricValue::Counter(0) | MetricValue::Gauge(0) => continue,
                MetricValue::Counter(c) => c.to_string(),
                MetricValue::Gauge(g) => g.to_string(),
                MetricValue::Histogram(h) if h.count == 0 => continue,
                MetricValue::Histogram(h) => format!("n={} p50={} p99={}", h.count, h.p50, h.p99),
            };
            let row = rows
                .entry(short)
                .or_insert_with(|| vec!["-".to_owned(); dcs.len()]);
            row[i] = cell;
        }
    }
    let width = rows.keys().map(|k| k.len()).max().unwrap_or(10);
    print!("  {:width$}", "metric");
    for dc in dcs {
        print!(" | {:^28}", dc.rt.local_host());
    }
    println!();
    for (name, cells) in rows {
        print!("  {name:width$}");
        for c in cells {
            print!(" | {c:^28}");
        }
        println!();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis = std::env::var("GD_DEMO_REDIS").ok();
    let embedded: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
    let backend = |_: u32| -> Result<Arc<dyn Backend>, Box<dyn std::error::Error>> {
        Ok(match &redis {
            Some(url) => {
                let mut cfg = Config::minimal(GLOBAL, "demo.example.com")?.redis;
                cfg.url = Some(url.clone());
                Arc::new(RedisBackend::new(&cfg)?)
            }
            None => embedded.clone(),
        })
    };
    println!(
        "== Three datacenters of {GLOBAL} on loopback ({} store)",
        if redis.is_some() { "Redis" } else { "embedded" }
    );
    let ports = [free_port()?, free_port()?, free_port()?];
    let dc1 = start_dc(1, ports[0], backend(1)?)?;
    let dc2 = start_dc(2, ports[1], backend(2)?)?;
    let mut dc3 = start_dc(3, ports[2], backend(3)?)?;

    println!("\n== Users log in at different datacenters");
    dc1.login("alice@example.com/phone")?;
    dc2.login("bob@example.com/laptop")?;
    dc3.login("carol@example.com/desktop")?;

    println!("\n== They chat across datacenters");
    dc1.send(
        "alice@example.com/phone",
        "bob@example.com/laptop",
        "Hi Bob, how is DC2?",
    )?;
    settle(|| *dc2.host.delivered.lock() >= 1);
    dc2.send(
        "bob@example.com/laptop",
        "alice@example.com/phone",
        "Sunny. Carol is in DC3.",
    )?;
    dc3.send(
        "carol@example.com/desktop",
        "alice@example.com",
        "Hello Alice (bare JID)!",
    )?;
    settle(|| *dc1.host.delivered.lock() >= 2);

    println!("\n== Bob moves from dc2 to dc3 in the middle of the conversation");
    dc2.logout("bob@example.com/laptop")?;
    dc1.send(
        "alice@example.com/phone",
        "bob@example.com/laptop",
        "Bob, are you there?",
    )?;
    dc1.send(
        "alice@example.com/phone",
        "bob@example.com/laptop",
        "(sent while you moved)",
    )?;
    settle(|| dc2.rt.bounce_queue_size() >= 2);
    println!(
        "  dc2 no longer has bob: it holds {} stanza(s) in bounce, retrying with backoff",
        dc2.rt.bounce_queue_size()
    );
    dc3.login("bob@example.com/laptop")?;
    dc1.send(
        "alice@example.com/phone",
        "bob@example.com/laptop",
        "Found you in dc3.",
    )?;
    settle(|| *dc3.host.delivered.lock() >= 3);

    println!("\n== A message to dave, who is logged in nowhere");
    dc1.send(
        "alice@example.com/phone",
        "dave@example.com",
        "Dave, read this when you log in.",
    )?;
    println!("  dc1's bounce retries the lookup; when the retries run out, dc1 routes it locally");
    settle(|| *dc1.host.unrouted.lock() >= 1);

    println!("\n== dc3 goes down");
    let report = dc3.rt.stop(Duration::from_secs(1));
    println!(
        "  dc3 stopped ({} in-flight stanzas reported, {} routed locally)",
        report.undeliverable, report.unrouted
    );
    dc1.send(
        "alice@example.com/phone",
        "carol@example.com/desktop",
        "Carol? (dc3 is down)",
    )?;
    settle(|| *dc1.host.failed.lock() >= 1);

    println!("\n== dc3 comes back on the same endpoint; nobody else restarts");
    dc3 = start_dc(3, ports[2], backend(3)?)?;
    dc3.login("carol@example.com/desktop")?;
    let before = *dc3.host.delivered.lock();
    let end = Instant::now() + Duration::from_secs(10);
    while *dc3.host.delivered.lock() == before && Instant::now() < end {
        dc1.send(
            "alice@example.com/phone",
            "carol@example.com/desktop",
            "Welcome back, Carol!",
        )?;
        settle(|| *dc3.host.delivered.lock() > before);
    }

    println!("\n== Metrics (non-zero only)");
    print_metrics(&[&dc1, &dc2, &dc3]);
    for dc in [&dc1, &dc2, &dc3] {
        dc.rt.stop(Duration::from_secs(1));
    }
    Ok(())
}
