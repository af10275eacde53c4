//! Configuration (SPEC 2): defaults, the three accepted forms, the seed's
//! idioms, and the exact error text for every invalid option.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use gd_core::config::{
    default_node_name, BackendKind, BounceConfig, CacheConfig, Config, ConnectionsConfig, Endpoint,
    IncomingLimits, Ownership, RedisConfig, SniConfig, TlsConfig, VerifyMode,
};
use serde_json::{json, Value};

const GLOBAL: &str = "example.com";
const LOCAL: &str = "dc1.example.com";

/// The two required hosts plus `extra` (its keys replace or add top-level options).
fn with(extra: Value) -> Value {
    let mut doc = json!({"global_host": GLOBAL, "local_host": LOCAL});
    for (k, v) in extra.as_object().unwrap() {
        doc[k] = v.clone();
    }
    doc
}

fn parse(extra: Value) -> Config {
    Config::from_json_value(with(extra)).unwrap()
}

/// The error text for `extra` added to a valid configuration.
fn error(extra: Value) -> String {
    Config::from_json_value(with(extra))
        .unwrap_err()
        .to_string()
}

fn endpoint(host: &str, port: u16) -> Endpoint {
    Endpoint {
        host: host.to_owned(),
        port,
    }
}

/// A temporary file with some content, kept alive by the returned guard.
fn temp_file(content: &str) -> (tempfile::NamedTempFile, String) {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(content.as_bytes()).unwrap();
    let path = file.path().display().to_string();
    (file, path)
}

#[test]
fn minimal_config_has_every_default_of_spec_2() {
    let c = Config::minimal(GLOBAL, LOCAL).unwrap();
    assert_eq!(c.global_host, GLOBAL);
    assert_eq!(c.local_host, LOCAL);
    assert_eq!(c.message_ttl, 4);
    assert_eq!(c.hosts_refresh_interval, 3000);
    assert_eq!(c.hosts_refresh_interval(), Duration::from_millis(3000));
    assert_eq!(c.backend, BackendKind::Embedded);
    assert_eq!(
        c.connections,
        ConnectionsConfig {
            endpoints: vec![endpoint(LOCAL, 5555)],
            advertised_endpoints: None,
            connections_per_endpoint: 1,
            endpoint_refresh_interval: 60,
            endpoint_refresh_interval_when_empty: 3,
            disabled_gc_interval: 60,
            tls: None,
            outgoing_queue_size: 100_000,
            max_frame_size: 4 * 1024 * 1024,
            ack_timeout: 10,
            limits: IncomingLimits::default(),
        }
    );
    assert_eq!(c.advertised_endpoints(), &[endpoint(LOCAL, 5555)]);
    assert_eq!(
        c.redis,
        RedisConfig {
            url: None,
            server: "127.0.0.1".to_owned(),
            port: 8102,
            username: String::new(),
            password: String::new(),
            database: 0,
            tls: None,
            pool_size: 1,
            expire_after: 120,
            refresh_after: 60,
            timeout_ms: 1000,
            start_timeout_ms: 3000,
            cluster: Vec::new(),
            ownership: Ownership::PerKey,
            lease_safety_ttl: 86400,
            lease_check_interval_ms: 1000,
        }
    );
    assert_eq!(c.expire_after(), Duration::from_secs(120));
    assert_eq!(c.refresh_after(), Duration::from_secs(60));
    assert_eq!(
        c.cache,
        CacheConfig {
            cache_missed: true,
            domain_lifetime_seconds: 600,
            jid_lifetime_seconds: 5,
            max_jids: 10_000,
        }
    );
    assert_eq!(
        c.bounce,
        BounceConfig {
            enabled: true,
            resend_after_ms: 200,
            max_retries: 4,
            max_stored: 100_000,
        }
    );
    assert_eq!(c.resend_after(), Duration::from_millis(200));
    assert!(c.global_distrib_addr.is_empty());
    assert_eq!(c.node_name, default_node_name());
}

#[test]
fn default_node_name_is_global_distrib_at_the_hostname() {
    let from_file = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let from_env = std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty());
    let host = from_file
        .or(from_env)
        .unwrap_or_else(|| "localhost".to_owned());
    assert_eq!(default_node_name(), format!("global_distrib@{host}"));
    assert_eq!(
        parse(json!({"node_name": "mim1@dc1"})).node_name,
        "mim1@dc1"
    );
}

#[test]
fn backend_is_redis_when_redis_is_configured_and_explicit_choice_wins() {
    assert_eq!(parse(json!({"redis": {}})).backend, BackendKind::Redis);
    assert_eq!(
        parse(json!({"redis": {"server": "10.0.0.1"}})).backend,
        BackendKind::Redis
    );
    let c = parse(json!({"redis": {"url": "redis://:s3cret@10.0.0.9:7000"}}));
    assert_eq!(c.backend, BackendKind::Redis);
    assert_eq!(
        c.redis.url.as_deref(),
        Some("redis://:s3cret@10.0.0.9:7000")
    );
    assert_eq!((c.redis.server.as_str(), c.redis.port), ("10.0.0.9", 7000));
    assert_eq!(c.redis.password, "s3cret");
    let c = parse(json!({"backend": "embedded", "redis": {"server": "10.0.0.1"}}));
    assert_eq!(c.backend, BackendKind::Embedded);
    assert_eq!(
        parse(json!({"backend": "redis"})).backend,
        BackendKind::Redis
    );
}

#[test]
fn redis_url_forms() {
    let c = parse(json!({"redis": {"url": "redis://redis.local"}}));
    assert_eq!(
        (c.redis.server.as_str(), c.redis.port),
        ("redis.local", 6379)
    );
    assert_eq!(c.redis.password, "");
    let c = parse(json!({"redis": {"url": "redis://user:p%40ss@[::1]:7001/0"}}));
    assert_eq!((c.redis.server.as_str(), c.redis.port), ("::1", 7001));
    assert_eq!(c.redis.password, "p@ss");
}

const MONGOOSEIM_SECTION: &str = r#"
  global_host = "example.com"
  local_host = "datacenter1.example.com"
  message_ttl = 5
  hosts_refresh_interval = 1000
  connections.endpoints = [{host = "172.16.0.2", port = 5555}]
  connections.advertised_endpoints = [{host = "dc1.example.net", port = 5556}]
  connections.connections_per_endpoint = 30
  connections.endpoint_refresh_interval = 30
  connections.endpoint_refresh_interval_when_empty = 2
  connections.disabled_gc_interval = 45
  cache.domain_lifetime_seconds = 60
  cache.cache_missed = false
  bounce.resend_after_ms = 300
  bounce.max_retries = 3
  redis.expire_after = 100
  redis.refresh_after = 50
"#;

#[test]
fn toml_full_document_and_bare_section_read_the_same() {
    let document = format!(
        "[general]\n  hosts = [\"example.com\"]\n\n[modules.mod_disco]\n  users_can_see_hidden_services = false\n\n[modules.mod_global_distrib]\n{MONGOOSEIM_SECTION}"
    );
    let full = Config::from_toml_str(&document).unwrap();
    let bare = Config::from_toml_str(MONGOOSEIM_SECTION).unwrap();
    assert_eq!(full, bare);
    assert_eq!(bare.local_host, "datacenter1.example.com");
    assert_eq!(bare.message_ttl, 5);
    assert_eq!(bare.hosts_refresh_interval, 1000);
    assert_eq!(
        bare.connections.endpoints,
        vec![endpoint("172.16.0.2", 5555)]
    );
    assert_eq!(
        bare.advertised_endpoints(),
        &[endpoint("dc1.example.net", 5556)]
    );
    assert_eq!(bare.connections.connections_per_endpoint, 30);
    assert_eq!(bare.connections.endpoint_refresh_interval, 30);
    assert_eq!(bare.connections.endpoint_refresh_interval_when_empty, 2);
    assert_eq!(bare.connections.disabled_gc_interval, 45);
    assert_eq!(bare.cache.domain_lifetime_seconds, 60);
    assert!(!bare.cache.cache_missed);
    assert_eq!(bare.bounce.resend_after_ms, 300);
    assert_eq!(bare.bounce.max_retries, 3);
    assert_eq!(
        (bare.redis.expire_after, bare.redis.refresh_after),
        (100, 50)
    );
    assert_eq!(bare.backend, BackendKind::Redis);
}

#[test]
fn toml_document_takes_the_redis_address_from_the_named_outgoing_pool() {
    let document = r#"
[outgoing_pools.redis.global_distrib]
  scope = "global"
  workers = 10
  connection.host = "172.16.0.3"
  connection.port = 8103
  connection.password = "pw"

[modules.mod_global_distrib]
  global_host = "example.com"
  local_host = "dc1.example.com"
"#;
    let c = Config::from_toml_str(document).unwrap();
    assert_eq!(c.backend, BackendKind::Redis);
    assert_eq!(c.redis.server, "172.16.0.3");
    assert_eq!(c.redis.port, 8103);
    assert_eq!(c.redis.password, "pw");
    assert_eq!(c.redis.pool_size, 10);

    let named = document.replace("redis.global_distrib]", "redis.gd]")
        + "  redis.pool = \"gd\"\n  redis.port = 9000\n";
    let c = Config::from_toml_str(&named).unwrap();
    assert_eq!(
        (c.redis.server.as_str(), c.redis.port),
        ("172.16.0.3", 9000)
    );

    let missing =
        document.replace("redis.global_distrib]", "redis.other]") + "  redis.pool = \"gd\"\n";
    assert_eq!(
        Config::from_toml_str(&missing).unwrap_err().to_string(),
        "redis.pool: names the outgoing pool \"gd\", but the document has no [outgoing_pools.redis.gd]"
    );
    // MongooseIM's connection defaults: port 6379, database 0; a database
    // and an ACL user are honoured.
    let database = document.replace(
        "connection.port = 8103",
        "connection.database = 2\n  connection.username = \"gd\"",
    );
    let c = Config::from_toml_str(&database).unwrap();
    assert_eq!(
        (c.redis.port, c.redis.database, c.redis.username.as_str()),
        (6379, 2, "gd")
    );
    let tls = document.replace(
        "connection.port = 8103",
        "connection.tls.verify_mode = \"none\"",
    );
    let c = Config::from_toml_str(&tls).unwrap();
    let read = c
        .redis
        .tls
        .expect("the pool's connection.tls turns TLS to Redis on");
    assert_eq!(read.verify, gd_core::config::VerifyMode::None);
    let versions = document.replace(
        "connection.port = 8103",
        "connection.tls.versions = [\"tlsv1.3\"]",
    );
    assert!(Config::from_toml_str(&versions)
        .unwrap_err()
        .to_string()
        .starts_with(
            "outgoing_pools.redis.global_distrib.connection.tls.versions: not supported for TLS to Redis"
        ));
}

#[test]
fn toml_with_tls_files() {
    let (_cert, cert) = temp_file("cert");
    let (_ca, ca) = temp_file("ca");
    let (_key, key) = temp_file("key");
    let text = format!(
        "global_host = \"example.com\"\nlocal_host = \"dc1.example.com\"\n\
         connections.tls.certfile = \"{cert}\"\nconnections.tls.cacertfile = \"{ca}\"\n\
         connections.tls.keyfile = \"{key}\"\n\
         connections.tls.ciphers = \"ECDHE-RSA-AES256-GCM-SHA384:TLS_AES_128_GCM_SHA256\"\n"
    );
    let tls = Config::from_toml_str(&text)
        .unwrap()
        .connections
        .tls
        .unwrap();
    assert_eq!(tls.certfile, PathBuf::from(&cert));
    assert_eq!(tls.cacertfile, Some(PathBuf::from(&ca)));
    assert_eq!(tls.keyfile, Some(PathBuf::from(&key)));
    assert_eq!(
        tls.ciphers,
        Some(vec![
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".to_owned(),
            "TLS13_AES_128_GCM_SHA256".to_owned()
        ])
    );
    let disabled = text + "connections.tls.enabled = false\n";
    assert_eq!(
        Config::from_toml_str(&disabled).unwrap().connections.tls,
        None
    );
}

#[test]
fn json_form_reads_every_section_and_round_trips() {
    let (_cert, cert) = temp_file("cert");
    let (_ca, ca) = temp_file("ca");
    let text = json!({
        "global_host": GLOBAL,
        "local_host": LOCAL,
        "node_name": "n1@dc1",
        "message_ttl": 7,
        "backend": "redis",
        "connections": {
            "endpoints": [{"host": "127.0.0.1", "port": 0}, {"host": "::1", "port": 6000}],
            "advertised_endpoints": [{"host": "dc1.example.net", "port": 5555}],
            "outgoing_queue_size": 10,
            "max_frame_size": 1024,
            "tls": {"certfile": cert, "cacertfile": ca, "ciphers": ["TLS13_AES_256_GCM_SHA384"]}
        },
        "redis": {"server": "10.1.1.1", "port": 6379, "password": "x", "pool_size": 4},
        "cache": {"max_jids": 5, "jid_lifetime_seconds": 9},
        "bounce": {"enabled": false, "max_stored": 7},
        "global_distrib_addr": {"dc2.example.com": [{"host": "124.12.4.3", "port": 5556}]}
    })
    .to_string();
    let c = Config::from_json_str(&text).unwrap();
    assert_eq!(c.node_name, "n1@dc1");
    assert_eq!(c.message_ttl, 7);
    assert_eq!(
        c.connections.endpoints,
        vec![endpoint("127.0.0.1", 0), endpoint("::1", 6000)]
    );
    assert_eq!(c.connections.outgoing_queue_size, 10);
    assert_eq!(c.connections.max_frame_size, 1024);
    assert_eq!(
        (c.redis.server.as_str(), c.redis.port, c.redis.pool_size),
        ("10.1.1.1", 6379, 4)
    );
    assert_eq!((c.cache.max_jids, c.cache.jid_lifetime_seconds), (5, 9));
    assert!(!c.bounce.enabled);
    assert_eq!(c.bounce.max_stored, 7);
    assert_eq!(
        c.global_distrib_addr,
        BTreeMap::from([(
            "dc2.example.com".to_owned(),
            vec![endpoint("124.12.4.3", 5556)]
        )])
    );
    assert_eq!(Config::from_json_str(&c.to_json()).unwrap(), c);
    let minimal = Config::minimal(GLOBAL, LOCAL).unwrap();
    assert_eq!(Config::from_json_str(&minimal.to_json()).unwrap(), minimal);
}

#[test]
fn seed_idioms_are_accepted() {
    let (_cert, cert) = temp_file("cert");
    let (_ca, ca) = temp_file("ca");
    // The seed's example as the Erlang binding converts it: proplists become
    // lists of [key, value] pairs, tuples become lists.
    let seed = json!([
        ["global_host", "example.com"],
        ["local_host", "datacenter1.example.com"],
        [
            "connections",
            [
                ["endpoints", [["172.16.0.2", 5555]]],
                ["num_of_connections", 22],
                ["tls_opts", [["certfile", cert], ["cafile", ca]]]
            ]
        ],
        ["cache", [["domain_lifetime_seconds", 60]]],
        ["bounce", [["resend_after_ms", 300], ["max_retries", 3]]],
        ["redis", [["pool_size", 24], ["server", "172.16.0.3"]]],
        [
            "global_distrib_addr",
            [[
                "datacenter2.example.com",
                [[[124, 12, 4, 3], 5556], ["182.172.23.55", 5555]]
            ]]
        ]
    ]);
    let c = Config::from_json_value(seed).unwrap();
    assert_eq!(c.connections.endpoints, vec![endpoint("172.16.0.2", 5555)]);
    assert_eq!(c.connections.connections_per_endpoint, 22);
    let tls = c.connections.tls.unwrap();
    assert_eq!(
        (tls.certfile, tls.cacertfile),
        (PathBuf::from(cert), Some(PathBuf::from(ca)))
    );
    assert_eq!(c.cache.domain_lifetime_seconds, 60);
    assert_eq!((c.bounce.resend_after_ms, c.bounce.max_retries), (300, 3));
    assert_eq!(
        (c.redis.pool_size, c.redis.server.as_str()),
        (24, "172.16.0.3")
    );
    assert_eq!(c.backend, BackendKind::Redis);
    assert_eq!(
        c.global_distrib_addr["datacenter2.example.com"],
        vec![
            endpoint("124.12.4.3", 5556),
            endpoint("182.172.23.55", 5555)
        ]
    );

    let c = parse(json!({"bounce": false, "connections": {"tls_opts": false}}));
    assert!(!c.bounce.enabled);
    assert_eq!(c.bounce.resend_after_ms, 200);
    assert_eq!(c.connections.tls, None);
    assert_eq!(
        parse(json!({"connections": {"tls": false}}))
            .connections
            .tls,
        None
    );
    assert!(parse(json!({"bounce": true})).bounce.enabled);
    let c = parse(json!({"connections": {"advertised_endpoints": false}}));
    assert_eq!(c.connections.advertised_endpoints, None);
    let ipv6 = parse(json!({"connections": {"endpoints": [[[0, 0, 0, 0, 0, 0, 0, 1], 5555]]}}));
    assert_eq!(ipv6.connections.endpoints, vec![endpoint("::1", 5555)]);
}

#[test]
fn required_hosts_and_their_rules() {
    let no_local = Config::from_json_value(json!({"global_host": GLOBAL})).unwrap_err();
    assert_eq!(no_local.to_string(), "local_host: required option missing");
    assert_eq!(no_local.path(), "local_host");
    assert_eq!(no_local.message(), "required option missing");
    assert_eq!(
        Config::from_json_value(json!({"local_host": LOCAL}))
            .unwrap_err()
            .to_string(),
        "global_host: required option missing"
    );
    assert_eq!(
        Config::from_toml_str("global_host = \"example.com\"")
            .unwrap_err()
            .to_string(),
        "local_host: required option missing"
    );
    assert_eq!(
        error(json!({"local_host": "Example.COM"})),
        "local_host: must differ from global_host (\"example.com\"): every datacenter needs a domain of its own"
    );
    assert_eq!(
        Config::minimal("example.com", "example.com").unwrap_err().to_string(),
        "local_host: must differ from global_host (\"example.com\"): every datacenter needs a domain of its own"
    );
    let cases = [
        (json!({"global_host": ""}), "global_host: must not be empty"),
        (
            json!({"global_host": 5}),
            "global_host: expected a string, got 5",
        ),
        (
            json!({"local_host": "dc 1"}),
            "local_host: must not contain whitespace or control characters, got \"dc 1\"",
        ),
        (
            json!({"local_host": "dc\u{1}"}),
            "local_host: must not contain whitespace or control characters, got \"dc\\u0001\"",
        ),
        (
            json!({"local_host": "dc#1"}),
            "local_host: must not contain '#' (reserved by the store's key layout), got \"dc#1\"",
        ),
        (
            json!({"local_host": "{dc1}"}),
            "local_host: must not contain '{' (reserved by the store's key layout), got \"{dc1}\"",
        ),
        (
            json!({"global_host": "a@example.com"}),
            "global_host: must not contain '@' (a JID separator), got \"a@example.com\"",
        ),
        (
            json!({"global_host": "example.com/r"}),
            "global_host: must not contain '/' (a JID separator), got \"example.com/r\"",
        ),
        (
            json!({"local_host": "a".repeat(1024)}),
            "local_host: is 1024 bytes long, at most 1023 allowed",
        ),
        (json!({"node_name": ""}), "node_name: must not be empty"),
        (
            json!({"node_name": "n#1"}),
            "node_name: must not contain '#' (reserved by the store's key layout), got \"n#1\"",
        ),
        (
            json!({"node_name": "n}"}),
            "node_name: must not contain '}' (reserved by the store's key layout), got \"n}\"",
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(error(extra), expected);
    }
    assert_eq!(
        parse(json!({"global_host": "a".repeat(1023)}))
            .global_host
            .len(),
        1023
    );
}

#[test]
fn invalid_top_level_values() {
    let cases = [
        (
            json!({"message_ttl": "four"}),
            "message_ttl: expected a non-negative integer, got \"four\"",
        ),
        (
            json!({"message_ttl": -1}),
            "message_ttl: expected a non-negative integer, got -1",
        ),
        (
            json!({"message_ttl": 1.5}),
            "message_ttl: expected a non-negative integer, got 1.5",
        ),
        (
            json!({"message_ttl": 256}),
            "message_ttl: must be at most 255 (it travels as one byte), got 256",
        ),
        (
            json!({"hosts_refresh_interval": 315_360_000_001_u64}),
            "hosts_refresh_interval: must be at most 315360000000, got 315360000001",
        ),
        (
            json!({"backend": "mysql"}),
            "backend: expected \"embedded\" or \"redis\", got \"mysql\"",
        ),
        (
            json!({"connections": 3}),
            "connections: expected a map of options, got 3",
        ),
        (
            json!({"cache": [1]}),
            "cache: expected a map of options, got a list",
        ),
        (
            json!({"bounce": "no"}),
            "bounce: expected a map of options, got \"no\"",
        ),
        (
            json!({"redis": true}),
            "redis: expected a map of options, got true",
        ),
        (
            json!({"node_name": ["a"]}),
            "node_name: expected a string, got a list",
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(error(extra), expected);
    }
    assert_eq!(parse(json!({"message_ttl": 0})).message_ttl, 0);
    assert_eq!(parse(json!({"message_ttl": 255})).message_ttl, 255);
}

#[test]
fn invalid_connections_values() {
    let cases = [
        (
            json!({"connections_per_endpoint": -1}),
            "connections.connections_per_endpoint: expected a non-negative integer, got -1",
        ),
        (
            json!({"connections_per_endpoint": 2, "num_of_connections": 3}),
            "connections.num_of_connections: same option as connections.connections_per_endpoint; give only one of them",
        ),
        (
            json!({"endpoint_refresh_interval": 0}),
            "connections.endpoint_refresh_interval: must be at least 1, got 0",
        ),
        (
            json!({"endpoint_refresh_interval_when_empty": 0}),
            "connections.endpoint_refresh_interval_when_empty: must be at least 1, got 0",
        ),
        (
            json!({"disabled_gc_interval": 0}),
            "connections.disabled_gc_interval: must be at least 1, got 0",
        ),
        (
            json!({"disabled_gc_interval": 315_360_001}),
            "connections.disabled_gc_interval: must be at most 315360000, got 315360001",
        ),
        (
            json!({"outgoing_queue_size": 0}),
            "connections.outgoing_queue_size: must be at least 1, got 0",
        ),
        (
            json!({"max_frame_size": 1023}),
            "connections.max_frame_size: must be at least 1024, got 1023",
        ),
        (
            json!({"max_frame_size": 1_073_741_825}),
            "connections.max_frame_size: must be at most 1073741824, got 1073741825",
        ),
        (
            json!({"endpoints": {"host": "a", "port": 1}}),
            "connections.endpoints: expected a list of endpoints, got a map",
        ),
        (
            json!({"endpoints": [{"host": "a", "port": 1}, {"host": "b", "port": 70000}]}),
            "connections.endpoints[1].port: must be at most 65535, got 70000",
        ),
        (
            json!({"endpoints": [{"host": "a", "port": -1}]}),
            "connections.endpoints[0].port: expected a non-negative integer, got -1",
        ),
        (
            json!({"endpoints": [{"host": "a"}]}),
            "connections.endpoints[0].port: required option missing",
        ),
        (
            json!({"endpoints": [{"host": "a#b", "port": 1}]}),
            "connections.endpoints[0].host: must not contain '#' (reserved by the store's key layout), got \"a#b\"",
        ),
        (
            json!({"endpoints": [{"host": "a", "port": 1, "ip": "x"}]}),
            "connections.endpoints[0].ip: unknown option (expected one of: host, port)",
        ),
        (
            json!({"endpoints": [["a", 1, 2]]}),
            "connections.endpoints[0]: expected an endpoint {host, port} or [host, port], got a list",
        ),
        (
            json!({"endpoints": [["a", 70000]]}),
            "connections.endpoints[0][1]: must be at most 65535, got 70000",
        ),
        (
            json!({"endpoints": [[[300, 0, 0, 1], 1]]}),
            "connections.endpoints[0][0]: expected a host name or an IP address, got a list",
        ),
        (
            json!({"advertised_endpoints": [{"host": "a", "port": 0}]}),
            "connections.advertised_endpoints[0].port: must be at least 1, got 0",
        ),
        (
            json!({"advertised_endpoints": true}),
            "connections.advertised_endpoints: expected a list of endpoints, got true",
        ),
        (
            json!({"tls": true}),
            "connections.tls: expected a map of options, got true",
        ),
    ];
    for (connections, expected) in cases {
        assert_eq!(error(json!({ "connections": connections })), expected);
    }
    // Port 0 on a listen endpoint means "ephemeral port chosen at bind time".
    let c = parse(json!({"connections": {"endpoints": [{"host": "127.0.0.1", "port": 0}]}}));
    assert_eq!(c.connections.endpoints, vec![endpoint("127.0.0.1", 0)]);
    let c = parse(json!({"connections": {"endpoints": []}}));
    assert!(c.connections.endpoints.is_empty());
}

#[test]
fn invalid_tls_values() {
    let (_cert, cert) = temp_file("cert");
    let (_ca, ca) = temp_file("ca");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let dir_path = dir.path().display().to_string();
    let cases = [
        (
            json!({"cacertfile": ca}),
            "connections.tls.certfile: required option missing".to_owned(),
        ),
        (
            json!({"certfile": cert}),
            "connections.tls.cacertfile: required option missing (verify_mode = peer verifies peers \
             against it; MongooseIM's fallback to the system CAs is not offered)"
                .to_owned(),
        ),
        (
            json!({"certfile": missing, "cacertfile": ca}),
            format!("connections.tls.certfile: cannot read \"{missing}\": No such file or directory (os error 2)"),
        ),
        (
            json!({"certfile": cert, "cafile": missing}),
            format!("connections.tls.cafile: cannot read \"{missing}\": No such file or directory (os error 2)"),
        ),
        (
            json!({"certfile": cert, "cacertfile": ca, "keyfile": dir_path}),
            format!("connections.tls.keyfile: cannot read \"{dir_path}\": not a regular file"),
        ),
        (
            json!({"certfile": cert, "cacertfile": ca, "cafile": ca}),
            "connections.tls.cafile: same option as connections.tls.cacertfile; give only one of them".to_owned(),
        ),
        (
            json!({"certfile": cert, "cacertfile": ca, "ciphers": "RC4-MD5"}),
            "connections.tls.ciphers: unknown cipher suite \"RC4-MD5\" (expected one of: TLS13_AES_256_GCM_SHA384, \
             TLS13_AES_128_GCM_SHA256, TLS13_CHACHA20_POLY1305_SHA256, TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, \
             TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, \
             TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, \
             TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256)".to_owned(),
        ),
        (
            json!({"certfile": cert, "cacertfile": ca, "ciphers": []}),
            "connections.tls.ciphers: must name at least one cipher suite".to_owned(),
        ),
        (
            json!({"certfile": cert, "cacertfile": ca, "ciphers": [1]}),
            "connections.tls.ciphers[0]: expected a string, got 1".to_owned(),
        ),
        (
            json!({"enabled": "yes"}),
            "connections.tls.enabled: expected true or false, got \"yes\"".to_owned(),
        ),
    ];
    for (tls, expected) in cases {
        assert_eq!(error(json!({"connections": {"tls": tls}})), expected);
    }
}

#[cfg(unix)]
#[test]
fn unreadable_tls_file_names_the_os_error() {
    use std::os::unix::fs::PermissionsExt;
    let (_cert, cert) = temp_file("cert");
    let (_ca, ca) = temp_file("ca");
    std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::File::open(&cert).is_ok() {
        return; // running as root: permissions are not enforced
    }
    assert_eq!(
        error(json!({"connections": {"tls": {"certfile": cert, "cacertfile": ca}}})),
        format!(
            "connections.tls.certfile: cannot read \"{cert}\": Permission denied (os error 13)"
        )
    );
}

#[test]
fn invalid_redis_values() {
    let cases = [
        (json!({"port": 0}), "redis.port: must be at least 1, got 0"),
        (json!({"port": 70000}), "redis.port: must be at most 65535, got 70000"),
        (json!({"port": -1}), "redis.port: expected a non-negative integer, got -1"),
        (json!({"port": "6379"}), "redis.port: expected a non-negative integer, got \"6379\""),
        (json!({"server": ""}), "redis.server: must not be empty"),
        (json!({"password": 1}), "redis.password: expected a string, got 1"),
        (json!({"pool_size": 0}), "redis.pool_size: must be at least 1, got 0"),
        (json!({"expire_after": 0}), "redis.expire_after: must be at least 1, got 0"),
        (
            json!({"expire_after": 60}),
            "redis.refresh_after: must be less than redis.expire_after (60), got 60: keys would expire before this node rewrites them",
        ),
        (
            json!({"refresh_after": 200}),
            "redis.refresh_after: must be less than redis.expire_after (120), got 200: keys would expire before this node rewrites them",
        ),
        (
            json!({"url": "http://localhost"}),
            "redis.url: expected redis[s]://[[username]:password@]host[:port][/database], got \"http://localhost\" (the scheme must be redis:// or rediss://)",
        ),
        (
            json!({"url": "redis://:pw@"}),
            "redis.url: expected redis[s]://[[username]:password@]host[:port][/database], got \"redis://:pw@\" (the host is missing)",
        ),
        (
            json!({"url": "redis://localhost:0"}),
            "redis.url: expected redis[s]://[[username]:password@]host[:port][/database], got \"redis://localhost:0\" (the port must be 1..65535, got \"0\")",
        ),
        (
            json!({"url": "redis://localhost:x"}),
            "redis.url: expected redis[s]://[[username]:password@]host[:port][/database], got \"redis://localhost:x\" (the port must be 1..65535, got \"x\")",
        ),
        (
            json!({"url": "redis://localhost/x"}),
            "redis.url: expected redis[s]://[[username]:password@]host[:port][/database], got \"redis://localhost/x\" (the database must be a number, got \"x\")",
        ),
        (
            json!({"username": "gd"}),
            "redis.username: \"gd\" is given without a password: Redis authenticates a user with AUTH <username> <password>",
        ),
        (
            json!({"database": -1}),
            "redis.database: expected a non-negative integer, got -1",
        ),
        (
            json!({"url": "redis://:%zz@localhost"}),
            "redis.url: expected redis[s]://[[username]:password@]host[:port][/database], got \"redis://:%zz@localhost\" (bad percent-escape at byte 0)",
        ),
        (
            json!({"url": "redis://a#b"}),
            "redis.url: expected redis[s]://[[username]:password@]host[:port][/database], got \"redis://a#b\" (the host must not contain '#' (reserved by the store's key layout), got \"a#b\")",
        ),
        (
            json!({"url": "redis://localhost", "port": 1}),
            "redis.url: conflicts with redis.port; give either a URL or server/port/username/password/database",
        ),
        (
            json!({"pool": "gd"}),
            "redis.pool: names the outgoing pool \"gd\", but the document has no [outgoing_pools.redis.gd]",
        ),
    ];
    for (redis, expected) in cases {
        assert_eq!(error(json!({ "redis": redis })), expected);
    }
}

#[test]
fn invalid_cache_and_bounce_values() {
    let cases = [
        (
            json!({"cache": {"cache_missed": 1}}),
            "cache.cache_missed: expected true or false, got 1",
        ),
        (
            json!({"cache": {"jid_lifetime_seconds": -5}}),
            "cache.jid_lifetime_seconds: expected a non-negative integer, got -5",
        ),
        (
            json!({"bounce": {"enabled": "false"}}),
            "bounce.enabled: expected true or false, got \"false\"",
        ),
        (
            json!({"bounce": {"max_retries": 4_294_967_296_u64}}),
            "bounce.max_retries: must be at most 4294967295, got 4294967296",
        ),
        (
            json!({"bounce": {"max_stored": 0}}),
            "bounce.max_stored: must be at least 1, got 0",
        ),
    ];
    for (extra, expected) in cases {
        assert_eq!(error(extra), expected);
    }
    assert_eq!(
        parse(json!({"bounce": {"max_retries": 0}}))
            .bounce
            .max_retries,
        0
    );
}

#[test]
fn invalid_global_distrib_addr_values() {
    let cases = [
        (json!([1]), "global_distrib_addr: expected a map of options, got a list"),
        (
            json!({"dc2.example.com": [["124.12.4.3", 0]]}),
            "global_distrib_addr.\"dc2.example.com\"[0][1]: must be at least 1, got 0",
        ),
        (
            json!({"dc2.example.com": [{"host": "124.12.4.3", "port": 70000}]}),
            "global_distrib_addr.\"dc2.example.com\"[0].port: must be at most 65535, got 70000",
        ),
        (
            json!({"dc2.example.com": []}),
            "global_distrib_addr.\"dc2.example.com\": must list at least one endpoint",
        ),
        (
            json!({"dc#2": [["124.12.4.3", 1]]}),
            "global_distrib_addr.\"dc#2\": the host name must not contain '#' (reserved by the store's key layout), got \"dc#2\"",
        ),
    ];
    for (addr, expected) in cases {
        assert_eq!(error(json!({ "global_distrib_addr": addr })), expected);
    }
}

#[test]
fn unknown_keys_are_errors_naming_the_accepted_ones() {
    assert_eq!(
        error(json!({"message_tl": 4})),
        "message_tl: unknown option (expected one of: backend, bounce, cache, connections, \
         global_distrib_addr, global_host, hosts_refresh_interval, local_host, message_ttl, node_name, redis, \
         route_timeout_ms)"
    );
    assert_eq!(
        error(json!({"cache": {"max_jid": 1}})),
        "cache.max_jid: unknown option (expected one of: cache_missed, domain_lifetime_seconds, \
         jid_lifetime_seconds, max_jids)"
    );
    assert_eq!(
        error(json!({"connections": {"endpoint": []}})),
        "connections.endpoint: unknown option (expected one of: ack_timeout, advertised_endpoints, connections_per_endpoint, \
         delivery_threads, disabled_gc_interval, endpoint_refresh_interval, endpoint_refresh_interval_when_empty, endpoints, \
         handshake_timeout, idle_timeout, max_frame_size, max_incoming_buffer, max_incoming_connections, \
         max_incoming_per_host, max_metric_hosts, max_unconfirmed_deliveries, max_unconfirmed_delivery_bytes, outgoing_queue_size, resolved_endpoints, tls)"
    );
    assert_eq!(
        error(json!({"bounce": {"retries": 1}})),
        "bounce.retries: unknown option (expected one of: enabled, max_retries, max_stored, resend_after_ms)"
    );
    assert_eq!(
        error(json!({"redis": {"host": "x"}})),
        "redis.host: unknown option (expected one of: cluster, database, expire_after, lease_check_interval_ms, \
         lease_safety_ttl, ownership, password, pool, pool_size, port, refresh_after, server, \
         start_timeout_ms, timeout_ms, tls, url, username)"
    );
    let toml = "global_host = \"example.com\"\nlocal_host = \"dc1.example.com\"\nconnections.tls.verify = true\n";
    assert_eq!(
        Config::from_toml_str(toml).unwrap_err().to_string(),
        "connections.tls.verify: unknown option (expected one of: cacertfile, certfile, ciphers, crl_files, \
         dhfile, disconnect_on_failure, early_data, enabled, keyfile, password, server_name_indication, \
         session_tickets, verify_mode, versions)"
    );
}

#[test]
fn malformed_documents() {
    assert_eq!(
        Config::from_toml_str("global_host = \"example.com\"\nlocal_host = \n")
            .unwrap_err()
            .to_string(),
        "document: invalid TOML at line 2, column 14: invalid string; expected `\"`, `'`"
    );
    assert_eq!(
        Config::from_json_str("{\"global_host\": ")
            .unwrap_err()
            .to_string(),
        "document: invalid JSON: EOF while parsing a value at line 1 column 16"
    );
    assert_eq!(
        Config::from_json_value(json!("example.com"))
            .unwrap_err()
            .to_string(),
        "document: expected a map of options, got \"example.com\""
    );
    assert_eq!(
        Config::from_toml_str("[modules.mod_muc]\nhost = \"muc.example.com\"\n")
            .unwrap_err()
            .to_string(),
        "modules.mod_global_distrib: required section missing"
    );
    assert_eq!(
        Config::from_json_value(json!([["global_host", "a"], ["global_host", "b"]]))
            .unwrap_err()
            .to_string(),
        "document[1]: option \"global_host\" given twice"
    );
}

#[test]
fn resolve_endpoints_resolves_names_and_reports_failures() {
    let c = parse(json!({"connections": {"endpoints": [
        {"host": "127.0.0.1", "port": 0},
        {"host": "127.0.0.1", "port": 0},
        ["::1", 5555]
    ]}}));
    let addrs = c.resolve_endpoints().unwrap();
    assert_eq!(
        addrs,
        vec![
            "127.0.0.1:0".parse().unwrap(),
            "[::1]:5555".parse().unwrap()
        ]
    );
    let localhost = parse(json!({"connections": {"endpoints": [["localhost", 5555]]}}));
    assert!(localhost
        .resolve_endpoints()
        .unwrap()
        .iter()
        .all(|a| a.ip().is_loopback()));

    let c = parse(
        json!({"connections": {"endpoints": [["127.0.0.1", 1], ["something.invalid", 5555]]}}),
    );
    let err = c.resolve_endpoints().unwrap_err();
    assert_eq!(err.path(), "connections.endpoints[1]");
    let prefix = "cannot resolve \"something.invalid\": ";
    assert!(err.message().starts_with(prefix), "{err}");
    assert!(err.message().len() > prefix.len(), "{err}");
}

// ---------------------------------------------------------------------------
// MongooseIM 6.8's processed options, as the Erlang facade hands them over.
// ---------------------------------------------------------------------------

/// The example of MongooseIM 6.8's `doc/modules/mod_global_distrib.md`
/// (plus the `keyfile` 6.8 requires next to `certfile`) and
/// `[outgoing_pools.redis.global_distrib]`, as MongooseIM's parser produces
/// them from
///
/// ```toml
/// [outgoing_pools.redis.global_distrib]
///   scope = "global"
///   workers = 24
///   connection.host = "172.16.0.3"
///
/// [modules.mod_global_distrib]
///   global_host = "example.com"
///   local_host = "datacenter1.example.com"
///   connections.endpoints = [{host = "172.16.0.2", port = 5555}]
///   connections.advertised_endpoints = [{host = "172.16.0.2", port = 5555}]
///   connections.tls.certfile = "priv/dc1.pem"
///   connections.tls.keyfile = "priv/dc1.key"
///   connections.tls.cacertfile = "priv/ca.pem"
///   connections.connections_per_endpoint = 30
///   cache.domain_lifetime_seconds = 60
///   bounce.resend_after_ms = 300
///   bounce.max_retries = 3
///   redis.pool = "global_distrib"
/// ```
///
/// (`config_spec/0` and `process_opts/1` of `mod_global_distrib.erl`,
/// `tls/1` and `process_pool/2` of `mongoose_config_spec.erl`), converted
/// term by term by the NIF (`native/nif/src/convert.rs`): tuples → lists,
/// atoms and charlists → strings.
fn processed_document(cert: &str, key: &str, ca: &str) -> Value {
    json!({
        "node_name": "mongooseim@dc1",
        "modules": {"mod_global_distrib": {
            "global_host": "example.com",
            "local_host": "datacenter1.example.com",
            "message_ttl": 4,
            "hosts_refresh_interval": 3000,
            "connections": {
                "endpoints": [["172.16.0.2", 5555]],
                "advertised_endpoints": [["172.16.0.2", 5555]],
                "resolved_endpoints": [[[172, 16, 0, 2], 5555]],
                "connections_per_endpoint": 30,
                "endpoint_refresh_interval": 60,
                "endpoint_refresh_interval_when_empty": 3,
                "disabled_gc_interval": 60,
                "tls": {
                    "certfile": cert,
                    "keyfile": key,
                    "cacertfile": ca,
                    "verify_mode": "peer",
                    "disconnect_on_failure": true,
                    "crl_files": [],
                    "server_name_indication": {"enabled": true, "protocol": "default"}
                }
            },
            "redis": {"pool": "global_distrib", "expire_after": 120, "refresh_after": 60},
            "cache": {
                "cache_missed": true,
                "domain_lifetime_seconds": 60,
                "jid_lifetime_seconds": 5,
                "max_jids": 10000
            },
            "bounce": {"enabled": true, "resend_after_ms": 300, "max_retries": 3}
        }},
        "outgoing_pools": {"redis": {"global_distrib": {
            "type": "redis",
            "scope": "global",
            "tag": "global_distrib",
            "opts": {"workers": 24, "strategy": "best_worker", "call_timeout": 5000},
            "conn_opts": {"host": "172.16.0.3", "port": 6379, "database": 0}
        }}}
    })
}

#[test]
fn mongooseim_processed_options_are_accepted_unchanged() {
    let (_cert, cert) = temp_file("cert");
    let (_key, key) = temp_file("key");
    let (_ca, ca) = temp_file("ca");
    let c = Config::from_json_value(processed_document(&cert, &key, &ca)).unwrap();
    let endpoints = vec![endpoint("172.16.0.2", 5555)];
    let expected = Config {
        global_host: "example.com".to_owned(),
        local_host: "datacenter1.example.com".to_owned(),
        node_name: "mongooseim@dc1".to_owned(),
        message_ttl: 4,
        hosts_refresh_interval: 3000,
        route_timeout_ms: 3000,
        backend: BackendKind::Redis,
        connections: ConnectionsConfig {
            endpoints: endpoints.clone(),
            advertised_endpoints: Some(endpoints),
            connections_per_endpoint: 30,
            endpoint_refresh_interval: 60,
            endpoint_refresh_interval_when_empty: 3,
            disabled_gc_interval: 60,
            tls: Some(TlsConfig {
                certfile: PathBuf::from(&cert),
                keyfile: Some(PathBuf::from(&key)),
                cacertfile: Some(PathBuf::from(&ca)),
                ..TlsConfig::default()
            }),
            outgoing_queue_size: 100_000,
            max_frame_size: 4 * 1024 * 1024,
            ack_timeout: 10,
            limits: IncomingLimits::default(),
        },
        redis: RedisConfig {
            url: None,
            server: "172.16.0.3".to_owned(),
            port: 6379,
            username: String::new(),
            password: String::new(),
            database: 0,
            tls: None,
            pool_size: 24,
            expire_after: 120,
            refresh_after: 60,
            timeout_ms: 1000,
            start_timeout_ms: 3000,
            cluster: Vec::new(),
            ownership: Ownership::PerKey,
            lease_safety_ttl: 86400,
            lease_check_interval_ms: 1000,
        },
        cache: CacheConfig {
            cache_missed: true,
            domain_lifetime_seconds: 60,
            jid_lifetime_seconds: 5,
            max_jids: 10_000,
        },
        bounce: BounceConfig {
            enabled: true,
            resend_after_ms: 300,
            max_retries: 3,
            max_stored: 100_000,
        },
        global_distrib_addr: BTreeMap::new(),
    };
    assert_eq!(c, expected);
    // What to_json writes reads back the same.
    assert_eq!(Config::from_json_str(&c.to_json()).unwrap(), c);

    // MongooseIM's own processed `outgoing_pools` option is a list of pools.
    let mut listed = processed_document(&cert, &key, &ca);
    let pool = listed["outgoing_pools"]["redis"]["global_distrib"].clone();
    let other =
        json!({"type": "rdbms", "scope": "global", "tag": "default", "opts": {}, "conn_opts": {}});
    listed["outgoing_pools"] = json!([other, pool]);
    assert_eq!(Config::from_json_value(listed).unwrap(), expected);
}

#[test]
fn mongooseim_processed_tls_and_pool_keys_are_honoured() {
    let (_cert, cert) = temp_file("cert");
    let (_key, key) = temp_file("key");
    let (_ca, ca) = temp_file("ca");
    let (_crl, crl) = temp_file("crl");
    let mut doc = processed_document(&cert, &key, &ca);
    let module = &mut doc["modules"]["mod_global_distrib"];
    module["connections"]["tls"] = json!({
        "certfile": cert,
        "keyfile": key,
        "verify_mode": "selfsigned_peer",
        "disconnect_on_failure": false,
        "crl_files": [crl],
        "versions": ["tlsv1.3", "tlsv1.2", "tlsv1.3"],
        "ciphers": "TLS_AES_256_GCM_SHA384:ECDHE-RSA-AES256-GCM-SHA384",
        "password": "pw",
        "dhfile": "dh.pem",
        "early_data": false,
        "session_tickets": "stateless",
        "server_name_indication": {"enabled": false, "host": "gd.internal", "protocol": "https"}
    });
    doc["outgoing_pools"]["redis"]["global_distrib"]["conn_opts"] = json!({
        "host": "redis.local", "port": 6380, "database": 3, "username": "gd", "password": "s3cret"
    });
    let c = Config::from_json_value(doc).unwrap();
    let tls = c.connections.tls.clone().unwrap();
    assert_eq!(
        tls,
        TlsConfig {
            certfile: PathBuf::from(&cert),
            keyfile: Some(PathBuf::from(&key)),
            cacertfile: None,
            ciphers: Some(vec![
                "TLS13_AES_256_GCM_SHA384".to_owned(),
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384".to_owned()
            ]),
            verify_mode: VerifyMode::SelfsignedPeer,
            disconnect_on_failure: false,
            versions: Some(vec!["tlsv1.3".to_owned(), "tlsv1.2".to_owned()]),
            crl_files: vec![PathBuf::from(&crl)],
            password: Some("pw".to_owned()),
            server_name_indication: SniConfig {
                enabled: false,
                host: Some("gd.internal".to_owned()),
                protocol: "https".to_owned(),
            },
        }
    );
    assert_eq!(
        (
            c.redis.server.as_str(),
            c.redis.port,
            c.redis.database,
            c.redis.username.as_str(),
            c.redis.password.as_str()
        ),
        ("redis.local", 6380, 3, "gd", "s3cret")
    );
    assert_eq!(Config::from_json_str(&c.to_json()).unwrap(), c);

    // verify_mode none needs no CA file either.
    let none = parse(json!({"connections": {"tls": {"certfile": cert, "verify_mode": "none"}}}));
    assert_eq!(none.connections.tls.unwrap().verify_mode, VerifyMode::None);
    // An empty Erlang string arrives as an empty list.
    let blank = parse(json!({"redis": {"password": []}}));
    assert_eq!(blank.redis.password, "");
}

#[test]
fn zero_values_mongooseim_allows_are_accepted_with_a_safe_meaning() {
    let c = parse(json!({
        "message_ttl": 0,
        "hosts_refresh_interval": 0,
        "connections": {"connections_per_endpoint": 0},
        "redis": {"refresh_after": 0, "expire_after": 90},
        "cache": {"domain_lifetime_seconds": 0, "jid_lifetime_seconds": 0, "max_jids": 0},
        "bounce": {"resend_after_ms": 0, "max_retries": 0}
    }));
    assert_eq!(c.message_ttl, 0);
    // Hosts read once, at start.
    assert_eq!(c.hosts_refresh_interval(), Duration::ZERO);
    // One connection per endpoint.
    assert_eq!(c.connections.connections_per_endpoint, 0);
    assert_eq!(c.connections_per_endpoint(), 1);
    // Refresh at half of expire_after.
    assert_eq!(c.redis.refresh_after, 0);
    assert_eq!(c.refresh_after(), Duration::from_secs(45));
    assert_eq!(
        (
            c.cache.domain_lifetime_seconds,
            c.cache.jid_lifetime_seconds,
            c.cache.max_jids
        ),
        (0, 0, 0)
    );
    assert_eq!((c.bounce.resend_after_ms, c.bounce.max_retries), (0, 0));
    assert_eq!(c.resend_after(), Duration::ZERO);
    assert_eq!(Config::from_json_str(&c.to_json()).unwrap(), c);
    // The same zeros as MongooseIM's TOML.
    let toml = "global_host = \"example.com\"\nlocal_host = \"dc1.example.com\"\n\
                hosts_refresh_interval = 0\nconnections.connections_per_endpoint = 0\n\
                redis.refresh_after = 0\ncache.max_jids = 0\nbounce.resend_after_ms = 0\n";
    let t = Config::from_toml_str(toml).unwrap();
    assert_eq!(t.refresh_after(), Duration::from_secs(60));

    // What MongooseIM's `positive` refuses stays refused.
    for (extra, expected) in [
        (
            json!({"redis": {"expire_after": 0}}),
            "redis.expire_after: must be at least 1, got 0",
        ),
        (
            json!({"connections": {"endpoint_refresh_interval": 0}}),
            "connections.endpoint_refresh_interval: must be at least 1, got 0",
        ),
    ] {
        assert_eq!(error(extra), expected);
    }
}

/// The processed document with one value replaced (`pointer` as in RFC 6901).
fn processed_error(pointer: &str, value: Value) -> String {
    let (_cert, cert) = temp_file("cert");
    let (_key, key) = temp_file("key");
    let (_ca, ca) = temp_file("ca");
    let mut doc = processed_document(&cert, &key, &ca);
    *doc.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("{pointer}")) = value;
    Config::from_json_value(doc).unwrap_err().to_string()
}

#[test]
fn each_bad_processed_option_names_its_path() {
    const M: &str = "/modules/mod_global_distrib";
    const POOL: &str = "/outgoing_pools/redis/global_distrib";
    let cases = [
        (
            format!("{M}/connections/resolved_endpoints"),
            json!([[[300, 0, 0, 1], 5555]]),
            "connections.resolved_endpoints[0][0]: expected a host name or an IP address, got a list",
        ),
        (
            format!("{M}/connections/resolved_endpoints"),
            json!([["dc1.example.com", 5555]]),
            "connections.resolved_endpoints[0][0]: expected an IP address, got \"dc1.example.com\"",
        ),
        (
            format!("{M}/connections/resolved_endpoints"),
            json!([[[127, 0, 0, 1], 70000]]),
            "connections.resolved_endpoints[0][1]: must be at most 65535, got 70000",
        ),
        (
            format!("{M}/connections/resolved_endpoints"),
            json!([[[127, 0, 0, 1]]]),
            "connections.resolved_endpoints[0]: expected a resolved endpoint [IP, Port], got a list",
        ),
        (
            format!("{M}/connections/tls/verify_mode"),
            json!("always"),
            "connections.tls.verify_mode: expected \"peer\", \"selfsigned_peer\" or \"none\", got \"always\"",
        ),
        (
            format!("{M}/connections/tls/versions"),
            json!(["tlsv1.2", "tlsv1.1"]),
            "connections.tls.versions[1]: unsupported TLS version \"tlsv1.1\" (rustls implements only: tlsv1.2, tlsv1.3)",
        ),
        (
            format!("{M}/connections/tls/versions"),
            json!([]),
            "connections.tls.versions: must name at least one version (leave it out for tlsv1.2 and tlsv1.3)",
        ),
        (
            format!("{M}/connections/tls/crl_files"),
            json!(["/nonexistent/ca.crl"]),
            "connections.tls.crl_files[0]: cannot read \"/nonexistent/ca.crl\": No such file or directory (os error 2)",
        ),
        (
            format!("{M}/connections/tls/disconnect_on_failure"),
            json!("yes"),
            "connections.tls.disconnect_on_failure: expected true or false, got \"yes\"",
        ),
        (
            format!("{M}/connections/tls/session_tickets"),
            json!("stateful"),
            "connections.tls.session_tickets: expected \"stateless\", got \"stateful\"",
        ),
        (
            format!("{M}/connections/tls/early_data"),
            json!(1),
            "connections.tls.early_data: expected true or false, got 1",
        ),
        (
            format!("{M}/connections/tls/server_name_indication"),
            json!({"enabled": true, "protocol": "ftp"}),
            "connections.tls.server_name_indication.protocol: expected \"default\" or \"https\", got \"ftp\"",
        ),
        (
            format!("{M}/connections/tls/server_name_indication"),
            json!({"enabled": true, "protocol": "default", "host": "a b"}),
            "connections.tls.server_name_indication.host: must not contain whitespace or control characters, got \"a b\"",
        ),
        (
            format!("{M}/connections/tls/server_name_indication"),
            json!({"enabled": true, "sni": 1}),
            "connections.tls.server_name_indication.sni: unknown option (expected one of: enabled, host, protocol)",
        ),
        (
            format!("{M}/connections/tls/mode"),
            json!("tls"),
            "connections.tls.mode: unknown option (expected one of: cacertfile, certfile, ciphers, crl_files, \
             dhfile, disconnect_on_failure, early_data, enabled, keyfile, password, server_name_indication, \
             session_tickets, verify_mode, versions)",
        ),
        (
            format!("{M}/redis/refresh_after"),
            json!(-1),
            "redis.refresh_after: expected a non-negative integer, got -1",
        ),
        (
            format!("{M}/redis/pool"),
            json!("other"),
            "redis.pool: names the outgoing pool \"other\", but the document has no [outgoing_pools.redis.other]",
        ),
        (
            format!("{POOL}/type"),
            json!("rdbms"),
            "outgoing_pools.redis.global_distrib.type: expected \"redis\", got \"rdbms\"",
        ),
        (
            format!("{POOL}/opts/workers"),
            json!(0),
            "outgoing_pools.redis.global_distrib.opts.workers: must be at least 1, got 0",
        ),
        (
            format!("{POOL}/opts/worker"),
            json!(1),
            "outgoing_pools.redis.global_distrib.opts.worker: unknown option (expected one of: call_timeout, \
             max_worker_queue_len, strategy, workers)",
        ),
        (
            format!("{POOL}/conn_opts/port"),
            json!(0),
            "outgoing_pools.redis.global_distrib.conn_opts.port: must be at least 1, got 0",
        ),
        (
            format!("{POOL}/conn_opts/database"),
            json!("two"),
            "outgoing_pools.redis.global_distrib.conn_opts.database: expected a non-negative integer, got \"two\"",
        ),
        (
            format!("{POOL}/conn_opts/db"),
            json!(2),
            "outgoing_pools.redis.global_distrib.conn_opts.db: unknown option (expected one of: database, host, \
             password, port, tls, username)",
        ),
        (
            format!("{POOL}/conn_opts/tls"),
            json!({"verify_mode": "selfsigned_peer", "crl_files": [], "disconnect_on_failure": true}),
            "outgoing_pools.redis.global_distrib.conn_opts.tls.verify_mode: selfsigned_peer is not \
             supported for TLS to Redis: use peer with the server's certificate or its CA as cacertfile",
        ),
        (
            format!("{POOL}/conn_opts/username"),
            json!("gd"),
            "redis.username: \"gd\" is given without a password: Redis authenticates a user with AUTH \
             <username> <password>",
        ),
        (
            format!("{M}/node_name"),
            json!("other@dc1"),
            "node_name: also given as modules.mod_global_distrib.node_name; give only one of them",
        ),
        (
            "/node_name".to_owned(),
            json!("a#b"),
            "node_name: must not contain '#' (reserved by the store's key layout), got \"a#b\"",
        ),
    ];
    for (pointer, value, expected) in cases {
        let pointer = pointer.as_str();
        let parent = pointer.rsplit_once('/').unwrap().0;
        let key = pointer.rsplit_once('/').unwrap().1;
        // Keys absent from the document are added to their parent.
        let (_cert, cert) = temp_file("cert");
        let (_key, keyf) = temp_file("key");
        let (_ca, ca) = temp_file("ca");
        let mut doc = processed_document(&cert, &keyf, &ca);
        let target = doc
            .pointer_mut(parent)
            .unwrap_or_else(|| panic!("{parent}"));
        target[key] = value;
        assert_eq!(
            Config::from_json_value(doc).unwrap_err().to_string(),
            expected,
            "{pointer}"
        );
    }
    assert!(processed_error(&format!("{M}/message_ttl"), json!(300)).starts_with("message_ttl:"));
}

#[test]
fn tls_keys_without_meaning_for_rustls_are_logged_at_info() {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let (_cert, cert) = temp_file("cert");
    let (_ca, ca) = temp_file("ca");
    let buffer = Buffer::default();
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        parse(json!({"connections": {"tls": {
            "certfile": cert, "cacertfile": ca,
            "dhfile": "dh.pem", "early_data": true, "session_tickets": "stateless"
        }}}))
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    for key in ["dhfile", "early_data", "session_tickets"] {
        let line = format!("option=connections.tls.{key}");
        assert!(
            text.lines().any(|l| l.contains("INFO")
                && l.contains("gd_tls_option_ignored")
                && l.contains(&line)),
            "{key}: {text}"
        );
    }
}

#[test]
fn redis_deadlines_are_read_and_checked() {
    let c = parse(json!({"redis": {"timeout_ms": 250, "start_timeout_ms": 5000}}));
    assert_eq!((c.redis.timeout_ms, c.redis.start_timeout_ms), (250, 5000));
    let c = parse(json!({}));
    assert_eq!((c.redis.timeout_ms, c.redis.start_timeout_ms), (1000, 3000));
    assert!(
        error(json!({"redis": {"timeout_ms": 0}})).starts_with("redis.timeout_ms: "),
        "{}",
        error(json!({"redis": {"timeout_ms": 0}}))
    );
}

/// `redis.cluster`: seed nodes in TOML, JSON and the Erlang binding's
/// proplist form; the credentials of the section or of MongooseIM's pool
/// apply to every node; a single server or a non-zero database is refused.
#[test]
fn redis_cluster_seed_nodes() {
    let toml = r#"
[outgoing_pools.redis.global_distrib]
  workers = 4
  connection.host = "10.0.0.9"
  connection.username = "gd"
  connection.password = "pw"

[modules.mod_global_distrib]
  global_host = "example.com"
  local_host = "dc1.example.com"
  redis.cluster = ["redis://10.0.0.1:7000", "redis://10.0.0.2"]
"#;
    let c = Config::from_toml_str(toml).unwrap();
    assert_eq!(c.backend, BackendKind::Redis);
    assert_eq!(
        c.redis.cluster,
        ["redis://10.0.0.1:7000", "redis://10.0.0.2:6379"]
    );
    assert_eq!(
        (
            c.redis.username.as_str(),
            c.redis.password.as_str(),
            c.redis.pool_size
        ),
        ("gd", "pw", 4)
    );
    let json = parse(json!({"redis": {"cluster": ["redis://r1:7000"], "password": "pw"}}));
    assert!(
        json.to_json().contains(r#""cluster": ["#),
        "{}",
        json.to_json()
    );
    // The Erlang binding hands a proplist over.
    let erlang = parse(json!({"redis": [["cluster", ["redis://r1:7000"]], ["password", "pw"]]}));
    assert_eq!(erlang.redis, json.redis);
    assert_eq!(parse(json!({})).redis.cluster, Vec::<String>::new());

    assert_eq!(
        error(json!({"redis": {"cluster": ["redis://r1:7000"], "server": "r1"}})),
        "redis.cluster: conflicts with redis.server; give either Redis Cluster seed nodes or \
         one server (url or server/port)"
    );
    assert_eq!(
        error(json!({"redis": {"cluster": ["redis://r1:7000"], "database": 3}})),
        "redis.cluster: Redis Cluster has only database 0, but database 3 is configured \
         (redis.database or the pool's connection.database)"
    );
    assert_eq!(
        error(json!({"redis": {"cluster": ["redis://r1:7000"], "tls": {}}})),
        "redis.cluster: TLS to a Redis Cluster is not supported yet, but TLS is configured \
         (redis.tls, a rediss:// URL or the pool's connection.tls): reach the cluster in plain \
         TCP, or use TLS to a single server or a proxy"
    );
    assert_eq!(
        error(json!({"redis": {"cluster": ["redis://r1:7000/2"]}})),
        "redis.cluster[0]: expected redis://host[:port], got \"redis://r1:7000/2\": \
         Redis Cluster has only database 0"
    );
}

/// Every string that goes into a frame fits the wire's limit, checked when
/// the configuration is read: a `node_name` over 3071 bytes, or one whose
/// handshake cannot fit `connections.max_frame_size`, could never connect.
#[test]
fn strings_sent_in_frames_fit_the_wire_limits() {
    use gd_core::config::{HANDSHAKE_OVERHEAD, MAX_WIRE_STRING_LEN};
    use gd_core::transport::frame::{
        self, Frame, HandshakeAck, NackReason, Rejected, MAX_REJECTED_IN_ACK, MAX_STRING_LEN,
    };
    assert_eq!(MAX_WIRE_STRING_LEN, MAX_STRING_LEN);
    let big = "n".repeat(MAX_STRING_LEN + 1);
    assert_eq!(
        error(json!({"node_name": big})),
        "node_name: is 3072 bytes long, at most 3071 allowed (a string on the wire, docs/PROTOCOL.md)"
    );
    // The largest name accepted fits the default frame size and connects.
    let longest = "n".repeat(MAX_STRING_LEN);
    // The longest DC name the wire accepts: 253 bytes of DNS labels.
    let dns_max = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "a".repeat(61));
    assert_eq!(dns_max.len(), 253);
    let c = parse(json!({"node_name": longest, "local_host": dns_max}));
    // The largest answer: a resumption that repeats as many refusals as
    // a version-2 answer may carry.
    let ack = Frame::HandshakeAck(HandshakeAck {
        version: frame::PROTOCOL_VERSION,
        local_host: c.local_host.clone(),
        node: c.node_name.clone(),
        resume_seq: Some(1),
        resume_token: 1,
        rejected: vec![
            Rejected {
                seq: 1,
                reason: NackReason::TooLarge
            };
            MAX_REJECTED_IN_ACK
        ],
    });
    let len = frame::encoded_len(&ack);
    assert_eq!(len, HANDSHAKE_OVERHEAD + 253 + MAX_STRING_LEN);
    let mut buf = bytes::BytesMut::new();
    frame::encode(&ack, &mut buf, len).unwrap();
    // ... but not a frame size below its handshake.
    assert_eq!(
        error(json!({"node_name": "n".repeat(2000), "connections": {"max_frame_size": 2000}})),
        format!(
            "node_name: with local_host, the handshake frame takes {} bytes, over \
             connections.max_frame_size (2000): shorten it or raise the limit",
            HANDSHAKE_OVERHEAD + LOCAL.len() + 2000
        )
    );
}

#[test]
fn incoming_limits_are_read_checked_and_written_back() {
    let c = Config::from_toml_str(
        r#"
        global_host = "example.com"
        local_host = "dc1.example.com"
        connections.max_incoming_connections = 100
        connections.max_incoming_per_host = 10
        connections.handshake_timeout = 2
        connections.idle_timeout = 30
        connections.max_incoming_buffer = 33554432
        connections.max_metric_hosts = 16
        connections.max_unconfirmed_deliveries = 50
        connections.max_unconfirmed_delivery_bytes = 4096
        connections.delivery_threads = 3
        "#,
    )
    .unwrap();
    let l = &c.connections.limits;
    assert_eq!(
        *l,
        IncomingLimits {
            max_incoming_connections: 100,
            max_incoming_per_host: 10,
            handshake_timeout: 2,
            idle_timeout: 30,
            max_incoming_buffer: 32 * 1024 * 1024,
            max_metric_hosts: 16,
            max_unconfirmed_deliveries: 50,
            max_unconfirmed_delivery_bytes: 4096,
            delivery_threads: 3,
        }
    );
    assert_eq!(Config::from_json_str(&c.to_json()).unwrap(), c);
    assert_eq!(
        error(json!({"connections": {"max_incoming_connections": 4, "max_incoming_per_host": 5}})),
        "connections.max_incoming_per_host: must be at most max_incoming_connections (4), got 5"
    );
    assert_eq!(
        error(json!({"connections": {"idle_timeout": 0}})),
        "connections.idle_timeout: must be at least 1, got 0"
    );
    assert_eq!(
        error(json!({"connections": {"max_unconfirmed_deliveries": 0}})),
        "connections.max_unconfirmed_deliveries: must be at least 1, got 0"
    );
    assert_eq!(
        error(json!({"connections": {"delivery_threads": 65}})),
        "connections.delivery_threads: must be at most 64, got 65"
    );
    assert_eq!(
        error(json!({"connections": {"max_unconfirmed_delivery_bytes": 1023}})),
        "connections.max_unconfirmed_delivery_bytes: must be at least 1024, got 1023"
    );
    assert_eq!(
        error(json!({"connections": {"ack_timeout": 0}})),
        "connections.ack_timeout: must be at least 1, got 0"
    );
    assert_eq!(
        error(json!({"route_timeout_ms": 0})),
        "route_timeout_ms: must be at least 1, got 0"
    );
}

/// A datacenter's own name goes into every handshake, where the other DCs
/// accept DNS names only: a name they would refuse fails at start.
#[test]
fn datacenter_names_must_be_dns_names() {
    let label = "a".repeat(64);
    let long_label = format!("{label}.example.com");
    assert_eq!(
        error(json!({"local_host": long_label})),
        format!(
            "local_host: \"{long_label}\" is not a DNS name (253 bytes at most, labels of 1 to 63): \
             other datacenters refuse it on the wire"
        )
    );
    let too_long = format!("{}.com", vec!["a".repeat(60); 5].join("."));
    assert!(error(json!({"local_host": too_long})).starts_with("local_host: "));
    assert!(error(json!({"local_host": "dc1..example.com"})).contains("is not a DNS name"));
    let addr = json!({"global_distrib_addr": {long_label.clone(): [["127.0.0.1", 5555]]}});
    assert!(error(addr).contains("is not a DNS name"));
    // The longest label and name accepted.
    parse(json!({"local_host": format!("{}.example.com", "a".repeat(63))}));
}

#[test]
fn lease_ownership_is_read_and_checked_against_the_periods() {
    let c = parse(json!({"redis": {}}));
    assert_eq!(c.redis.ownership, Ownership::PerKey);
    assert_eq!(
        (c.redis.lease_safety_ttl, c.redis.lease_check_interval_ms),
        (86400, 1000)
    );
    let c = parse(
        json!({"redis": {"ownership": "lease", "lease_safety_ttl": 3600,
                                   "lease_check_interval_ms": 500}}),
    );
    assert_eq!(c.redis.ownership, Ownership::Lease);
    assert_eq!(c.lease_safety_ttl(), Duration::from_secs(3600));
    assert_eq!(c.lease_check_interval(), Duration::from_millis(500));
    // The lease options are checked against the periods in lease mode only.
    let per_key = parse(json!({"redis": {"expire_after": 2, "refresh_after": 1}}));
    assert_eq!(per_key.redis.ownership, Ownership::PerKey);
    assert_eq!(
        error(json!({"redis": {"ownership": "leases"}})),
        "redis.ownership: expected \"per_key\" or \"lease\", got \"leases\""
    );
    assert_eq!(
        error(json!({"redis": {"ownership": "lease", "lease_safety_ttl": 120}})),
        "redis.lease_safety_ttl: must be more than redis.expire_after (120), got 120: \
         session keys of live nodes would expire"
    );
    assert_eq!(
        error(
            json!({"redis": {"ownership": "lease", "expire_after": 3, "refresh_after": 1,
                               "lease_check_interval_ms": 2000}})
        ),
        "redis.lease_check_interval_ms: must be less than expire_after - refresh_after (2000 ms), \
         got 2000: a live node's lease could look lapsed through a view this old"
    );
}
