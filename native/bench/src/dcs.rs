//! Two datacenters on loopback sharing one embedded store, the host
//! stand-in that counts (and optionally times) what it is handed, and the
//! certificates for mutual TLS, generated per run with rcgen.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gd_core::config::{Config, Endpoint, TlsConfig};
use gd_core::jid::Jid;
use gd_core::metrics::{names, MetricValue};
use gd_core::routing::{Delivered, Delivery, Envelope, Reason};
use gd_core::runtime::{Runtime, StartOptions};
use gd_core::store::{Backend, EmbeddedBackend};
use gd_core::transport::frame::PayloadKind;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

use crate::BenchError;

pub const GLOBAL: &str = "example.com";
pub const DC1: &str = "dc1.example.com";
pub const DC2: &str = "dc2.example.com";
pub const RECIPIENT: &str = "bob@example.com/phone";
/// Distinct senders: each is an ordering key, spread over the connections.
pub const SENDERS: usize = 100;
pub const PAYLOAD_LEN: usize = 512;

/// The host: counts deliveries; with `latencies`, reads the send time the
/// sender stamped into the first 8 payload bytes (ns since `epoch`).
pub struct Sink {
    pub epoch: Instant,
    pub delivered: AtomicU64,
    pub undeliverable: AtomicU64,
    pub latencies: Option<Samples>,
}

/// Latency samples: (due → delivered, writer's stamp → reader's decode),
/// both in ns; a std mutex is cheap enough at 20k stanzas/s.
#[derive(Default)]
pub struct Samples(Mutex<Vec<(u64, u64)>>);

impl Samples {
    pub fn push(&self, latency_ns: u64, wire_ns: u64) {
        if let Ok(mut g) = self.0.lock() {
            g.push((latency_ns, wire_ns));
        }
    }
    pub fn take(&self) -> Vec<(u64, u64)> {
        self.0
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default()
    }
}

impl Sink {
    pub fn new(epoch: Instant, timed: bool) -> Arc<Sink> {
        Arc::new(Sink {
            epoch,
            delivered: AtomicU64::new(0),
            undeliverable: AtomicU64::new(0),
            latencies: timed.then(Samples::default),
        })
    }
    pub fn count(&self) -> u64 {
        self.delivered.load(Ordering::Acquire)
    }
}

impl Delivery for Sink {
    fn deliver(&self, d: Delivered) {
        if let Some(samples) = &self.latencies {
            if let Some(stamp) = d.envelope.payload.get(..8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(stamp);
                let sent = u64::from_le_bytes(b);
                let now = self.epoch.elapsed().as_nanos() as u64;
                // The frame's time on the wire: from the writer's stamp to
                // the reader's decode (µs, one clock: one process).
                let wire = d.transfer_time_us.saturating_mul(1000);
                samples.push(now.saturating_sub(sent), wire);
            }
        }
        self.delivered.fetch_add(1, Ordering::Release);
    }
    fn undeliverable(&self, _e: Envelope, _r: Reason) {
        self.undeliverable.fetch_add(1, Ordering::Relaxed);
    }
}

/// A CA and one leaf per DC (SAN: its local_host and 127.0.0.1), on disk.
pub struct Certs {
    /// Holds the files for as long as the runtimes read them.
    _dir: tempfile::TempDir,
    pub dc1: TlsConfig,
    pub dc2: TlsConfig,
}

impl Certs {
    pub fn generate() -> Result<Certs, BenchError> {
        let dir = tempfile::tempdir()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gd bench CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let cafile = dir.path().join("ca.crt");
        std::fs::write(&cafile, ca.pem())?;
        let dc1 = leaf(dir.path(), DC1, &ca, &ca_key, &cafile)?;
        let dc2 = leaf(dir.path(), DC2, &ca, &ca_key, &cafile)?;
        Ok(Certs {
            _dir: dir,
            dc1,
            dc2,
        })
    }
}

fn leaf(
    dir: &Path,
    name: &str,
    ca: &Certificate,
    ca_key: &KeyPair,
    cafile: &Path,
) -> Result<TlsConfig, BenchError> {
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca, ca_key)?;
    let certfile = dir.join(format!("{name}.crt"));
    let keyfile = dir.join(format!("{name}.key"));
    std::fs::write(&certfile, cert.pem())?;
    std::fs::write(&keyfile, key.serialize_pem())?;
    Ok(TlsConfig {
        certfile,
        keyfile: Some(keyfile),
        cacertfile: Some(cafile.to_path_buf()),
        ..TlsConfig::default()
    })
}

/// Tokio worker threads of each runtime (the core's default).
pub const WORKERS: usize = 2;

/// How the two DCs talk.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    pub tls: bool,
    pub connections: u32,
    /// Worker threads of each of the two runtimes.
    pub workers: usize,
}

/// DC1 sends, DC2 receives; the recipient is logged in at DC2 and DC1 has
/// it cached, so every stanza takes the fast path of `try_route`.
pub struct Pair {
    pub dc1: Runtime,
    pub dc2: Runtime,
    pub sink: Arc<Sink>,
    pub senders: Vec<Jid>,
    pub to: Jid,
}

pub fn config(local: &str, node: &str, link: Link, tls: &TlsConfig) -> Result<Config, BenchError> {
    let mut c = Config::minimal(GLOBAL, local)?;
    c.node_name = node.to_owned();
    c.connections.endpoints = vec![Endpoint {
        host: "127.0.0.1".into(),
        port: 0,
    }];
    c.connections.connections_per_endpoint = link.connections;
    c.connections.tls = link.tls.then(|| tls.clone());
    c.hosts_refresh_interval = 200;
    // The recipient stays cached for the whole run.
    c.cache.jid_lifetime_seconds = 3600;
    Ok(c)
}

impl Pair {
    pub fn start(link: Link, certs: &Certs, sink: Arc<Sink>) -> Result<Pair, BenchError> {
        let backend: Arc<dyn Backend> = Arc::new(EmbeddedBackend::new());
        let opts = StartOptions {
            backend: Some(backend),
            worker_threads: link.workers,
            ..StartOptions::default()
        };
        // One sink for both: DC1 delivers nothing, but what it gives up on
        // (undeliverable) must show in the same counters.
        let dc1 = Runtime::start_with(
            config(DC1, "node1@bench", link, &certs.dc1)?,
            sink.clone(),
            opts.clone(),
        )?;
        let dc2 = Runtime::start_with(
            config(DC2, "node2@bench", link, &certs.dc2)?,
            sink.clone(),
            opts,
        )?;
        let to = Jid::parse(RECIPIENT)?;
        dc2.block_on(dc2.session_opened(&to));
        let senders = (0..SENDERS)
            .map(|i| Jid::parse(&format!("user{i}@{GLOBAL}/res")))
            .collect::<Result<Vec<_>, _>>()?;
        let pair = Pair {
            dc1,
            dc2,
            sink,
            senders,
            to,
        };
        pair.warm_up()?;
        Ok(pair)
    }

    /// Learns DC2, caches the recipient and opens every connection (each
    /// sender key is bound to one), then waits for all of it to arrive.
    fn warm_up(&self) -> Result<(), BenchError> {
        self.dc1.block_on(self.dc1.refresh_hosts_now());
        let payload = Bytes::from(vec![0u8; PAYLOAD_LEN]);
        let rounds = 10;
        for _ in 0..rounds {
            for from in &self.senders {
                let env = self.envelope(from, payload.clone());
                self.dc1.block_on(self.dc1.route(env));
            }
        }
        let want = (rounds * SENDERS) as u64;
        wait_for(Duration::from_secs(20), || self.sink.count() >= want)
            .then_some(())
            .ok_or_else(|| BenchError::msg("warm-up stanzas never arrived at DC2"))?;
        self.sink.delivered.store(0, Ordering::Release);
        Ok(())
    }

    pub fn envelope(&self, from: &Jid, payload: Bytes) -> Envelope {
        self.dc1
            .envelope(from.clone(), self.to.clone(), PayloadKind::Message, payload)
    }

    /// Fast path first; the future only when the fast path hands it back.
    pub fn send(&self, env: Envelope) {
        if let Err(env) = self.dc1.try_route(env) {
            self.dc1.block_on(self.dc1.route(env));
        }
    }

    /// What a run that came up short left behind, for its error message.
    pub fn diagnose(&self) -> String {
        let mut out = format!(
            "delivered {}, undeliverable {}, DC1 bounce queue {}, DC1 in flight {}",
            self.sink.count(),
            self.sink.undeliverable.load(Ordering::Relaxed),
            self.dc1.bounce_queue_size(),
            self.dc1.outgoing().in_flight(),
        );
        for (name, rt) in [("DC1", &self.dc1), ("DC2", &self.dc2)] {
            for (metric, value) in rt.metrics().snapshot().0 {
                let v = match value {
                    MetricValue::Counter(v) if v > 0 => v.to_string(),
                    MetricValue::Gauge(v) if v != 0 => v.to_string(),
                    _ => continue,
                };
                let short = metric.strip_prefix(names::PREFIX).unwrap_or(&metric);
                out.push_str(&format!("; {name} {short}={v}"));
            }
        }
        out
    }

    pub fn stop(self) {
        self.dc1.stop(Duration::from_secs(2));
        self.dc2.stop(Duration::from_secs(2));
    }
}

/// Polls `cond` until it holds or `deadline` passes.
pub fn wait_for(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
