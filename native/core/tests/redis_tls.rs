//! TLS to Redis against a real `redis-server --tls-port` with certificates
//! generated for the test: the store works over TLS (directly, and from a
//! MongooseIM pool's `connection.tls`), a client certificate is presented
//! when the server requires one, and a server the configuration cannot
//! trust, or a port spoken to in the wrong protocol, fails `start` with a
//! message saying TLS and what to fix. Skipped, with a printed reason, when
//! `redis-server` was built without TLS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::Arc;

use gd_core::config::{Config, RedisTlsConfig, VerifyMode};
use gd_core::mapping::Location;
use gd_core::runtime::Runtime;
use gd_core::store::{RedisBackend, Store};
use support::certs::TestCa;
use support::dc::{self, host, Inbox};
use support::redis_variants::TlsRedis;

fn tls_to(ca: &Path) -> RedisTlsConfig {
    RedisTlsConfig {
        cacertfile: Some(ca.to_owned()),
        ..RedisTlsConfig::default()
    }
}

/// DC `n` on `url` with `tls` (the runtime builds its own backend, so the
/// start-time check runs as in production).
fn start(n: u32, url: &str, tls: Option<RedisTlsConfig>) -> Result<Runtime, String> {
    let mut cfg = dc::redis_config(n, url);
    cfg.redis.tls = tls;
    Runtime::start(cfg, Arc::new(Inbox::default())).map_err(|e| e.to_string())
}

fn login(rt: &Runtime, jid: &str) {
    rt.block_on(rt.session_opened(&dc::jid(jid)));
}

/// What a TLS client with `tls` reads at `key` (not through the runtime).
fn read_over_tls(url: &str, tls: RedisTlsConfig, key: &str) -> Option<String> {
    let mut cfg = dc::redis_config(9, url).redis;
    cfg.tls = Some(tls);
    let store = Store::new(Arc::new(RedisBackend::new(&cfg).unwrap()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.get(key)).unwrap()
}

#[test]
fn sessions_are_written_and_read_over_tls() {
    let Some(redis) = TlsRedis::start("optional") else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", redis.tls_port);
    let dc1 = start(1, &url, Some(tls_to(&redis.ca_file()))).unwrap();
    let dc2 = start(2, &url, Some(tls_to(&redis.ca_file()))).unwrap();
    login(&dc1, "alice@example.com/a");
    assert_eq!(
        read_over_tls(&url, tls_to(&redis.ca_file()), "alice@example.com/a").as_deref(),
        Some(host(1).as_str())
    );
    // The same key seen on the plain port: one server, two ports.
    let mut raw = redis.client();
    let stored = raw.cmd(&["GET", "alice@example.com/a"]).unwrap().bulk();
    assert_eq!(stored.as_deref(), Some(host(1).as_str()));
    // dc2 reads it over its own TLS connection.
    let alice = dc::jid("alice@example.com/a");
    assert_eq!(
        dc2.block_on(dc2.lookup(&alice)).unwrap(),
        Location::Remote(Arc::from(host(1).as_str()))
    );
    // The start-time check left nothing behind.
    assert_eq!(raw.cmd(&["KEYS", "*{probe}"]).unwrap().strings().len(), 0);

    // server_name: checked against the certificate (DNS redis.internal,
    // IP 127.0.0.1); verify = none accepts any certificate.
    let named = RedisTlsConfig {
        server_name: Some("redis.internal".into()),
        ..tls_to(&redis.ca_file())
    };
    assert!(start(3, &url, Some(named)).is_ok());
    let misnamed = RedisTlsConfig {
        server_name: Some("other.internal".into()),
        ..tls_to(&redis.ca_file())
    };
    let e = start(4, &url, Some(misnamed)).err().unwrap();
    assert!(
        e.contains("TLS handshake failed") && e.contains("not valid for the name"),
        "{e}"
    );
    let unverified = RedisTlsConfig {
        verify: VerifyMode::None,
        ..RedisTlsConfig::default()
    };
    assert!(start(5, &url, Some(unverified)).is_ok());
}

#[test]
fn a_client_certificate_from_the_mongooseim_pool_is_presented_when_required() {
    let Some(redis) = TlsRedis::start("yes") else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", redis.tls_port);
    // Without a client certificate the server ends the session.
    let e = start(1, &url, Some(tls_to(&redis.ca_file())))
        .err()
        .unwrap();
    assert!(e.starts_with("start: redis 127.0.0.1:"), "{e}");
    assert!(e.contains("TLS"), "{e}");

    let (cert, key) = redis.client_files("dc1.example.com");
    let toml = format!(
        r#"
[outgoing_pools.redis.global_distrib]
  workers = 2
  connection.host = "127.0.0.1"
  connection.port = {port}
  connection.tls.cacertfile = "{ca}"
  connection.tls.certfile = "{cert}"
  connection.tls.keyfile = "{key}"
  connection.tls.verify_mode = "peer"

[modules.mod_global_distrib]
  global_host = "example.com"
  local_host = "{local}"
  connections.endpoints = [{{host = "127.0.0.1", port = 0}}]
"#,
        port = redis.tls_port,
        ca = redis.ca_file().display(),
        cert = cert.display(),
        key = key.display(),
        local = host(1),
    );
    let cfg = Config::from_toml_str(&toml).unwrap();
    assert!(cfg.redis.tls.is_some());
    let rt = Runtime::start(cfg, Arc::new(Inbox::default())).unwrap();
    login(&rt, "bob@example.com/b");
    let mut raw = redis.client();
    let stored = raw.cmd(&["GET", "bob@example.com/b"]).unwrap().bulk();
    assert_eq!(stored.as_deref(), Some(host(1).as_str()));
}

#[test]
fn a_server_certified_by_another_ca_is_refused_at_start() {
    let Some(redis) = TlsRedis::start("no") else {
        return;
    };
    let other = TestCa::new("another CA");
    let other_ca = redis.dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, other.cert_pem()).unwrap();
    let url = format!("rediss://127.0.0.1:{}", redis.tls_port);
    let e = start(1, &url, Some(tls_to(&other_ca))).err().unwrap();
    assert!(
        e.contains("TLS handshake failed")
            && e.contains("certificate is not signed by a CA of redis.tls.cacertfile"),
        "{e}"
    );
}

#[test]
fn tls_to_the_plain_port_and_plain_text_to_the_tls_port_fail_at_start() {
    let Some(redis) = TlsRedis::start("no") else {
        return;
    };
    let tls_to_plain = format!("rediss://127.0.0.1:{}", redis.plain_port);
    let e = start(1, &tls_to_plain, Some(tls_to(&redis.ca_file())))
        .err()
        .unwrap();
    // Redis reads the ClientHello as an inline command: it waits for a
    // newline (the handshake times out) or, when the random bytes hold
    // one, answers an error that is not TLS.
    assert!(
        e.contains("TLS") && e.contains("plain-text Redis port"),
        "{e}"
    );

    let plain_to_tls = format!("redis://127.0.0.1:{}", redis.tls_port);
    let e = start(2, &plain_to_tls, None).err().unwrap();
    assert!(e.contains("is this a TLS port?"), "{e}");
}
