//! Reading the document: finding the `mod_global_distrib` section (bare or
//! inside a whole MongooseIM document), its top-level options and the
//! `connections`, `cache`, `bounce` and `global_distrib_addr` sections.
//! The `tls` and `redis` sections have files of their own.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::field::{join, seconds, seconds_or_zero, Field, Section};
use crate::config::host::{check_host, valid_host_name, MAX_DNS_LABEL, MAX_DNS_NAME};
use crate::config::redis::{read_redis, redis_pools};
use crate::config::tls::read_tls;
use crate::config::{
    default_node_name, defaults, quote, BackendKind, BounceConfig, CacheConfig, Config,
    ConfigError, ConnectionsConfig, Endpoint, IncomingLimits, Result, DOCUMENT, HANDSHAKE_OVERHEAD,
    MAX_DELIVERY_THREADS, MAX_FRAME_SIZE, MAX_MILLISECONDS, MIN_FRAME_SIZE,
};

const TOP_KEYS: &[&str] = &[
    "backend",
    "bounce",
    "cache",
    "connections",
    "global_distrib_addr",
    "global_host",
    "hosts_refresh_interval",
    "local_host",
    "message_ttl",
    "node_name",
    "redis",
    "route_timeout_ms",
];
const CONNECTIONS_KEYS: &[&str] = &[
    "ack_timeout",
    "advertised_endpoints",
    "connections_per_endpoint",
    "delivery_threads",
    "disabled_gc_interval",
    "endpoint_refresh_interval",
    "endpoint_refresh_interval_when_empty",
    "endpoints",
    "handshake_timeout",
    "idle_timeout",
    "max_frame_size",
    "max_incoming_buffer",
    "max_incoming_connections",
    "max_incoming_per_host",
    "max_metric_hosts",
    "max_unconfirmed_deliveries",
    "max_unconfirmed_delivery_bytes",
    "outgoing_queue_size",
    "resolved_endpoints",
    "tls",
];
/// The seed's names for options MongooseIM later renamed.
const CONNECTIONS_ALIASES: &[(&str, &str)] = &[
    ("num_of_connections", "connections_per_endpoint"),
    ("tls_opts", "tls"),
];
const CACHE_KEYS: &[&str] = &[
    "cache_missed",
    "domain_lifetime_seconds",
    "jid_lifetime_seconds",
    "max_jids",
];
const BOUNCE_KEYS: &[&str] = &["enabled", "max_retries", "max_stored", "resend_after_ms"];

/// Finds the section: a whole MongooseIM document has a `modules` table.
/// Besides `modules` and `outgoing_pools`, such a document may carry
/// `node_name` at its top (the Erlang facade puts the node's name there);
/// every other top-level key is MongooseIM's and ignored.
pub(super) fn read_document(root: &Value) -> Result<Config> {
    let root = Field::new(DOCUMENT, root);
    let top = root.map()?;
    let Some(modules) = top.get("modules") else {
        return read_section(&Field::new("", root.value), &Map::new());
    };
    let modules = Field::new("modules", modules);
    let mut section = modules
        .map()?
        .get("mod_global_distrib")
        .cloned()
        .ok_or_else(|| {
            ConfigError::new("modules.mod_global_distrib", "required section missing")
        })?;
    if let Some(node_name) = top.get("node_name").filter(|v| !v.is_null()) {
        let section_field = Field::new("modules.mod_global_distrib", &section);
        let mut options = section_field.map()?;
        if options.get("node_name").is_some_and(|v| !v.is_null()) {
            let message =
                "also given as modules.mod_global_distrib.node_name; give only one of them";
            return Err(ConfigError::new("node_name", message));
        }
        options.insert("node_name".to_owned(), node_name.clone());
        section = Value::Object(options);
    }
    let redis_pools = match top.get("outgoing_pools") {
        Some(pools) => redis_pools(&Field::new("outgoing_pools", pools))?,
        None => Map::new(),
    };
    read_section(&Field::new("", &section), &redis_pools)
}

fn read_section(field: &Field, redis_pools: &Map<String, Value>) -> Result<Config> {
    let s = Section::new(field, TOP_KEYS, &[])?;
    let global_host = s.required("global_host")?.host()?;
    let local_host = {
        let f = s.required("local_host")?;
        let name = f.host()?;
        check_dc_name(&f, name)?
    };
    if local_host.eq_ignore_ascii_case(&global_host) {
        let message = format!(
            "must differ from global_host ({}): every datacenter needs a domain of its own",
            quote(&global_host)
        );
        return Err(ConfigError::new("local_host", message));
    }
    let node_name = s.opt("node_name", Field::node_name, default_node_name)?;
    let message_ttl = s.opt(
        "message_ttl",
        |f| f.int_hint(0, 255, "it travels as one byte"),
        || defaults::MESSAGE_TTL,
    )?;
    let hosts_refresh_interval = s.opt(
        "hosts_refresh_interval",
        // 0 (MongooseIM's `non_negative`): read the hosts once, at start.
        |f| f.int(0, MAX_MILLISECONDS),
        || defaults::HOSTS_REFRESH_INTERVAL_MS,
    )?;
    let route_timeout_ms = s.opt(
        "route_timeout_ms",
        |f| f.int(1, MAX_MILLISECONDS),
        || defaults::ROUTE_TIMEOUT_MS,
    )?;
    let connections = match s.get("connections")? {
        Some(f) => read_connections(&f, &local_host)?,
        None => default_connections(&local_host),
    };
    check_handshake_fits(&local_host, &node_name, connections.max_frame_size)?;
    let (redis, redis_given) = read_redis(&s, redis_pools)?;
    let cache = read_cache(s.get("cache")?)?;
    let bounce = read_bounce(s.get("bounce")?)?;
    let global_distrib_addr = s.opt("global_distrib_addr", read_addr_overrides, BTreeMap::new)?;
    let inferred = if redis_given {
        BackendKind::Redis
    } else {
        BackendKind::Embedded
    };
    let backend = s.opt("backend", read_backend, || inferred)?;
    Ok(Config {
        global_host,
        local_host,
        node_name,
        message_ttl,
        hosts_refresh_interval,
        route_timeout_ms,
        backend,
        connections,
        redis,
        cache,
        bounce,
        global_distrib_addr,
    })
}

/// The handshake carries `local_host` and `node_name`: refused now when
/// its frame cannot fit `connections.max_frame_size`, since no connection
/// could ever be made.
fn check_handshake_fits(local_host: &str, node_name: &str, max_frame_size: usize) -> Result<()> {
    let len = HANDSHAKE_OVERHEAD + local_host.len() + node_name.len();
    if len <= max_frame_size {
        return Ok(());
    }
    let message = format!(
        "with local_host, the handshake frame takes {len} bytes, \
         over connections.max_frame_size ({max_frame_size}): shorten it or raise the limit"
    );
    Err(ConfigError::new("node_name", message))
}

fn read_backend(f: &Field) -> Result<BackendKind> {
    match f.value.as_str() {
        Some("embedded") => Ok(BackendKind::Embedded),
        Some("redis") => Ok(BackendKind::Redis),
        _ => Err(f.expected("\"embedded\" or \"redis\"")),
    }
}

fn default_connections(local_host: &str) -> ConnectionsConfig {
    ConnectionsConfig {
        endpoints: vec![Endpoint {
            host: local_host.to_owned(),
            port: defaults::ENDPOINT_PORT,
        }],
        advertised_endpoints: None,
        connections_per_endpoint: defaults::CONNECTIONS_PER_ENDPOINT,
        endpoint_refresh_interval: defaults::ENDPOINT_REFRESH_INTERVAL,
        endpoint_refresh_interval_when_empty: defaults::ENDPOINT_REFRESH_INTERVAL_WHEN_EMPTY,
        disabled_gc_interval: defaults::DISABLED_GC_INTERVAL,
        tls: None,
        outgoing_queue_size: defaults::OUTGOING_QUEUE_SIZE,
        max_frame_size: defaults::MAX_FRAME_SIZE,
        ack_timeout: defaults::ACK_TIMEOUT,
        limits: IncomingLimits::default(),
    }
}

fn read_connections(f: &Field, local_host: &str) -> Result<ConnectionsConfig> {
    let s = Section::new(f, CONNECTIONS_KEYS, CONNECTIONS_ALIASES)?;
    let d = default_connections(local_host);
    if let Some(f) = s.get("resolved_endpoints")? {
        check_resolved_endpoints(&f)?;
    }
    Ok(ConnectionsConfig {
        // Port 0 asks the OS for an ephemeral port at bind time.
        endpoints: s.opt("endpoints", |f| read_endpoints(f, 0), || d.endpoints)?,
        advertised_endpoints: match s.get("advertised_endpoints")? {
            Some(f) if f.value == &Value::Bool(false) => None,
            Some(f) => Some(read_endpoints(&f, 1)?),
            None => None,
        },
        connections_per_endpoint: s.opt(
            "connections_per_endpoint",
            // 0 (MongooseIM's `non_negative`) opens one connection.
            |f| f.int(0, u64::from(u32::MAX)),
            || d.connections_per_endpoint,
        )?,
        endpoint_refresh_interval: s.opt("endpoint_refresh_interval", seconds, || {
            d.endpoint_refresh_interval
        })?,
        endpoint_refresh_interval_when_empty: s.opt(
            "endpoint_refresh_interval_when_empty",
            seconds,
            || d.endpoint_refresh_interval_when_empty,
        )?,
        disabled_gc_interval: s.opt("disabled_gc_interval", seconds, || d.disabled_gc_interval)?,
        tls: match s.get("tls")? {
            Some(f) => read_tls(&f)?,
            None => None,
        },
        outgoing_queue_size: s.opt(
            "outgoing_queue_size",
            |f| f.int(1, u64::MAX),
            || d.outgoing_queue_size,
        )?,
        max_frame_size: s.opt(
            "max_frame_size",
            |f| f.int(MIN_FRAME_SIZE, MAX_FRAME_SIZE),
            || d.max_frame_size,
        )?,
        ack_timeout: s.opt("ack_timeout", seconds, || d.ack_timeout)?,
        limits: read_limits(&s, d.limits)?,
    })
}

fn read_limits(s: &Section, d: IncomingLimits) -> Result<IncomingLimits> {
    let count = |f: &Field| f.int(1, u64::from(u32::MAX));
    let limits = IncomingLimits {
        max_incoming_connections: s.opt("max_incoming_connections", count, || {
            d.max_incoming_connections
        })?,
        max_incoming_per_host: s.opt("max_incoming_per_host", count, || d.max_incoming_per_host)?,
        handshake_timeout: s.opt("handshake_timeout", seconds, || d.handshake_timeout)?,
        idle_timeout: s.opt("idle_timeout", seconds, || d.idle_timeout)?,
        max_incoming_buffer: s.opt(
            "max_incoming_buffer",
            |f| f.int(MIN_FRAME_SIZE, u64::MAX),
            || d.max_incoming_buffer,
        )?,
        max_metric_hosts: s.opt("max_metric_hosts", count, || d.max_metric_hosts)?,
        max_unconfirmed_deliveries: s.opt("max_unconfirmed_deliveries", count, || {
            d.max_unconfirmed_deliveries
        })?,
        max_unconfirmed_delivery_bytes: s.opt(
            "max_unconfirmed_delivery_bytes",
            |f| f.int(MIN_FRAME_SIZE, u64::MAX),
            || d.max_unconfirmed_delivery_bytes,
        )?,
        delivery_threads: s.opt(
            "delivery_threads",
            |f| f.int(1, MAX_DELIVERY_THREADS),
            || d.delivery_threads,
        )?,
    };
    if limits.max_incoming_per_host > limits.max_incoming_connections {
        return Err(ConfigError::new(
            join(&s.path, "max_incoming_per_host"),
            format!(
                "must be at most max_incoming_connections ({}), got {}",
                limits.max_incoming_connections, limits.max_incoming_per_host
            ),
        ));
    }
    Ok(limits)
}

/// MongooseIM's `process_opts/1` adds `resolved_endpoints`, the IP
/// addresses `endpoints` resolved to while the configuration was parsed
/// (`mod_global_distrib_utils:resolve_endpoints/1`, 6.8.0). Its shape is
/// checked (a list of `[IP, Port]`, the IP as an `inet:ip_address()` tuple or
/// text) but the value is not kept: `endpoints` stays the one source and is
/// resolved at start by [`Config::resolve_endpoints`], the same lookup at
/// nearly the same moment, and a document without `resolved_endpoints` (TOML,
/// JSON, the seed) behaves the same.
fn check_resolved_endpoints(f: &Field) -> Result<()> {
    let items = f.list("a list of resolved endpoints [IP, Port]")?;
    for (i, item) in items.iter().enumerate() {
        let entry = f.index(i, item);
        let Value::Array(pair) = item else {
            return Err(entry.expected("a resolved endpoint [IP, Port]"));
        };
        let [ip, port] = pair.as_slice() else {
            return Err(entry.expected("a resolved endpoint [IP, Port]"));
        };
        let ip = entry.index(0, ip);
        let text = ip.endpoint_host()?;
        if text.parse::<std::net::IpAddr>().is_err() {
            return Err(ip.expected("an IP address"));
        }
        entry.index(1, port).int::<u16>(0, u64::from(u16::MAX))?;
    }
    Ok(())
}

fn read_endpoints(f: &Field, min_port: u64) -> Result<Vec<Endpoint>> {
    let items = f.list("a list of endpoints")?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| read_endpoint(&f.index(i, item), min_port))
        .collect()
}

/// `{host, port}` map or `[host, port]` pair (the seed's tuple).
fn read_endpoint(f: &Field, min_port: u64) -> Result<Endpoint> {
    let (host, port) = match f.value {
        Value::Array(pair) if pair.len() == 2 => (f.index(0, &pair[0]), f.index(1, &pair[1])),
        Value::Object(_) => {
            let s = Section::new(f, &["host", "port"], &[])?;
            let host = s.required("host")?.endpoint_host()?;
            let port = s.required("port")?.int(min_port, u64::from(u16::MAX))?;
            return Ok(Endpoint { host, port });
        }
        _ => return Err(f.expected("an endpoint {host, port} or [host, port]")),
    };
    Ok(Endpoint {
        host: host.endpoint_host()?,
        port: port.int(min_port, u64::from(u16::MAX))?,
    })
}

fn read_cache(field: Option<Field>) -> Result<CacheConfig> {
    let empty = Section::empty("cache");
    let section = field
        .map(|f| Section::new(&f, CACHE_KEYS, &[]))
        .transpose()?;
    let s = section.as_ref().unwrap_or(&empty);
    Ok(CacheConfig {
        cache_missed: s.opt("cache_missed", Field::boolean, || true)?,
        // 0 (MongooseIM's `non_negative`): that kind of answer is not cached.
        domain_lifetime_seconds: s.opt("domain_lifetime_seconds", seconds_or_zero, || {
            defaults::DOMAIN_LIFETIME
        })?,
        jid_lifetime_seconds: s.opt("jid_lifetime_seconds", seconds_or_zero, || {
            defaults::JID_LIFETIME
        })?,
        max_jids: s.opt("max_jids", |f| f.int(0, u64::MAX), || defaults::MAX_JIDS)?,
    })
}

/// `false` (the seed's way to disable bouncing), `true`, or a map.
fn read_bounce(field: Option<Field>) -> Result<BounceConfig> {
    let mut enabled = true;
    let empty = Section::empty("bounce");
    let section = match &field {
        Some(f) if f.value.is_boolean() => {
            enabled = f.boolean()?;
            None
        }
        Some(f) => Some(Section::new(f, BOUNCE_KEYS, &[])?),
        None => None,
    };
    let s = section.as_ref().unwrap_or(&empty);
    Ok(BounceConfig {
        enabled: s.opt("enabled", Field::boolean, || enabled)?,
        // 0: the first retry is immediate (then backoff from 1 ms).
        resend_after_ms: s.opt(
            "resend_after_ms",
            |f| f.int(0, MAX_MILLISECONDS),
            || defaults::RESEND_AFTER_MS,
        )?,
        max_retries: s.opt(
            "max_retries",
            |f| f.int(0, u64::from(u32::MAX)),
            || defaults::MAX_RETRIES,
        )?,
        max_stored: s.opt(
            "max_stored",
            |f| f.int(1, u64::MAX),
            || defaults::MAX_STORED,
        )?,
    })
}

/// Remote DC (its local_host) → fixed endpoints, the seed's
/// `{{global_distrib_addr, Host}, [{IP, Port}]}`.
fn read_addr_overrides(f: &Field) -> Result<BTreeMap<String, Vec<Endpoint>>> {
    let map = f.map()?;
    let mut overrides = BTreeMap::new();
    for (host, endpoints) in &map {
        // Host names contain dots: quote them so the path stays unambiguous.
        let entry = Field::new(format!("{}.{}", f.path, quote(host)), endpoints);
        if let Some(bad) = check_host(host) {
            return Err(entry.err(format!("the host name {bad}")));
        }
        let host = &check_dc_name(&entry, host.clone())?;
        let endpoints = read_endpoints(&entry, 1)?;
        if endpoints.is_empty() {
            return Err(entry.err("must list at least one endpoint"));
        }
        overrides.insert(host.clone(), endpoints);
    }
    Ok(overrides)
}

/// A datacenter's name (`local_host`, a `global_distrib_addr` key) is
/// checked like the other DCs check it on the wire: a name they refuse
/// could never connect.
fn check_dc_name(f: &Field, name: String) -> Result<String> {
    if valid_host_name(&name) {
        return Ok(name);
    }
    Err(f.err(format!(
        "{} is not a DNS name ({MAX_DNS_NAME} bytes at most, labels of 1 to {MAX_DNS_LABEL}): \
         other datacenters refuse it on the wire",
        quote(&name)
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::config::test_support::error;

    use serde_json::json;

    use super::*;

    /// `read_limits` over a `connections` section holding `options`.
    fn limits(options: Value) -> Result<IncomingLimits> {
        let f = Field::new("connections", &options);
        let s = Section::new(&f, CONNECTIONS_KEYS, CONNECTIONS_ALIASES)?;
        read_limits(&s, IncomingLimits::default())
    }

    #[test]
    fn limits_default_when_absent_and_are_read_when_given() {
        assert_eq!(limits(json!({})).unwrap(), IncomingLimits::default());
        let read = limits(json!({
            "max_incoming_connections": 10,
            "max_incoming_per_host": 10,
            "handshake_timeout": 1,
            "idle_timeout": 2,
            "max_incoming_buffer": 1024,
            "max_metric_hosts": 3,
            "max_unconfirmed_deliveries": 7,
            "max_unconfirmed_delivery_bytes": 2048,
            "delivery_threads": 4,
        }))
        .unwrap();
        assert_eq!(
            read,
            IncomingLimits {
                max_incoming_connections: 10,
                max_incoming_per_host: 10,
                handshake_timeout: 1,
                idle_timeout: 2,
                max_incoming_buffer: 1024,
                max_metric_hosts: 3,
                max_unconfirmed_deliveries: 7,
                max_unconfirmed_delivery_bytes: 2048,
                delivery_threads: 4,
            }
        );
    }

    #[test]
    fn limits_refuse_values_out_of_bounds() {
        assert_eq!(
            error(limits(json!({"max_incoming_connections": 0}))),
            "connections.max_incoming_connections: must be at least 1, got 0"
        );
        assert_eq!(
            error(limits(json!({"max_metric_hosts": u64::from(u32::MAX) + 1}))),
            "connections.max_metric_hosts: must be at most 4294967295, got 4294967296"
        );
        assert_eq!(
            error(limits(json!({"max_incoming_buffer": 1023}))),
            "connections.max_incoming_buffer: must be at least 1024, got 1023"
        );
        assert_eq!(
            error(limits(json!({"idle_timeout": 0}))),
            "connections.idle_timeout: must be at least 1, got 0"
        );
    }

    #[test]
    fn limits_refuse_more_per_host_than_in_all() {
        assert_eq!(
            error(limits(json!({
                "max_incoming_connections": 10,
                "max_incoming_per_host": 11,
            }))),
            "connections.max_incoming_per_host: must be at most max_incoming_connections (10), got 11"
        );
        // The default per host (512) is checked against a lowered total too.
        assert_eq!(
            error(limits(json!({"max_incoming_connections": 100}))),
            "connections.max_incoming_per_host: must be at most max_incoming_connections (100), got 512"
        );
    }

    #[test]
    fn the_handshake_must_fit_the_largest_frame() {
        // 616 bytes of overhead (the largest version-2 HandshakeAck), 3 of
        // local_host, 4 of node_name: 623 in all.
        assert!(check_handshake_fits("dc1", "node", 623).is_ok());
        assert_eq!(
            error(check_handshake_fits("dc1", "node", 622)),
            "node_name: with local_host, the handshake frame takes 623 bytes, \
             over connections.max_frame_size (622): shorten it or raise the limit"
        );
    }

    #[test]
    fn endpoints_are_maps_or_pairs_with_ports_in_range() {
        let read =
            |v: Value, min_port| read_endpoints(&Field::new("connections.endpoints", &v), min_port);
        let expected = vec![
            Endpoint {
                host: "dc1".into(),
                port: 5555,
            },
            Endpoint {
                host: "10.0.0.1".into(),
                port: 0,
            },
        ];
        let given = json!([{"host": "dc1", "port": 5555}, [[10, 0, 0, 1], 0]]);
        assert_eq!(read(given.clone(), 0).unwrap(), expected);
        assert_eq!(
            error(read(given, 1)),
            "connections.endpoints[1][1]: must be at least 1, got 0"
        );
        assert_eq!(
            error(read(json!([{"host": "dc1", "port": 70000}]), 0)),
            "connections.endpoints[0].port: must be at most 65535, got 70000"
        );
        assert_eq!(
            error(read(json!([{"host": "dc1"}]), 0)),
            "connections.endpoints[0].port: required option missing"
        );
        assert_eq!(
            error(read(json!(["dc1:5555"]), 0)),
            r#"connections.endpoints[0]: expected an endpoint {host, port} or [host, port], got "dc1:5555""#
        );
    }

    #[test]
    fn resolved_endpoints_are_checked_for_shape_only() {
        let check =
            |v: Value| check_resolved_endpoints(&Field::new("connections.resolved_endpoints", &v));
        assert!(check(json!([
            ["10.0.0.1", 5555],
            [[0, 0, 0, 0, 0, 0, 0, 1], 5556]
        ]))
        .is_ok());
        assert_eq!(
            error(check(json!([["dc1.example.com", 5555]]))),
            r#"connections.resolved_endpoints[0][0]: expected an IP address, got "dc1.example.com""#
        );
        assert_eq!(
            error(check(json!([["10.0.0.1"]]))),
            "connections.resolved_endpoints[0]: expected a resolved endpoint [IP, Port], got a list"
        );
    }

    #[test]
    fn a_datacenter_name_must_be_a_dns_name() {
        let value = json!(null);
        let f = Field::new("local_host", &value);
        assert_eq!(
            check_dc_name(&f, "dc1.example.com".into()).unwrap(),
            "dc1.example.com"
        );
        assert_eq!(
            error(check_dc_name(&f, "dc1..example.com".into())),
            r#"local_host: "dc1..example.com" is not a DNS name (253 bytes at most, labels of 1 to 63): other datacenters refuse it on the wire"#
        );
    }

    #[test]
    fn address_overrides_quote_the_host_in_paths() {
        let value = json!({"dc2.example.com": [["10.0.0.2", 5555]]});
        let read = read_addr_overrides(&Field::new("global_distrib_addr", &value)).unwrap();
        assert_eq!(
            read["dc2.example.com"],
            [Endpoint {
                host: "10.0.0.2".into(),
                port: 5555
            }]
        );
        let value = json!({"dc2.example.com": [["10.0.0.2", 0]]});
        assert_eq!(
            error(read_addr_overrides(&Field::new(
                "global_distrib_addr",
                &value
            ))),
            r#"global_distrib_addr."dc2.example.com"[0][1]: must be at least 1, got 0"#
        );
        let value = json!({"dc2": []});
        assert_eq!(
            error(read_addr_overrides(&Field::new(
                "global_distrib_addr",
                &value
            ))),
            r#"global_distrib_addr."dc2": must list at least one endpoint"#
        );
        let value = json!({"dc#2": [["10.0.0.2", 1]]});
        assert_eq!(
            error(read_addr_overrides(&Field::new(
                "global_distrib_addr",
                &value
            ))),
            r#"global_distrib_addr."dc#2": the host name must not contain '#' (reserved by the store's key layout), got "dc#2""#
        );
    }

    #[test]
    fn bounce_takes_a_boolean_or_a_map() {
        let value = json!(false);
        let off = read_bounce(Some(Field::new("bounce", &value))).unwrap();
        assert!(!off.enabled);
        assert_eq!(off.resend_after_ms, defaults::RESEND_AFTER_MS);
        let on = read_bounce(None).unwrap();
        assert!(on.enabled);
        assert_eq!(on.max_retries, defaults::MAX_RETRIES);
        let value = json!({"max_retries": 0, "resend_after_ms": 0});
        let map = read_bounce(Some(Field::new("bounce", &value))).unwrap();
        assert_eq!(
            (map.enabled, map.max_retries, map.resend_after_ms),
            (true, 0, 0)
        );
        let value = json!({"max_stored": 0});
        assert_eq!(
            error(read_bounce(Some(Field::new("bounce", &value)))),
            "bounce.max_stored: must be at least 1, got 0"
        );
    }

    #[test]
    fn cache_lifetimes_accept_zero() {
        let value = json!({"domain_lifetime_seconds": 0, "jid_lifetime_seconds": 0});
        let cache = read_cache(Some(Field::new("cache", &value))).unwrap();
        assert_eq!(
            cache,
            CacheConfig {
                cache_missed: true,
                domain_lifetime_seconds: 0,
                jid_lifetime_seconds: 0,
                max_jids: defaults::MAX_JIDS,
            }
        );
        let value = json!({"cache_missed": "yes"});
        assert_eq!(
            error(read_cache(Some(Field::new("cache", &value)))),
            r#"cache.cache_missed: expected true or false, got "yes""#
        );
    }

    #[test]
    fn the_backend_is_embedded_or_redis() {
        let value = json!("redis");
        assert_eq!(
            read_backend(&Field::new("backend", &value)).unwrap(),
            BackendKind::Redis
        );
        let value = json!("mnesia");
        assert_eq!(
            error(read_backend(&Field::new("backend", &value))),
            r#"backend: expected "embedded" or "redis", got "mnesia""#
        );
    }

    #[test]
    fn the_document_is_a_bare_section_or_a_mongooseim_document() {
        let bare = json!({"global_host": "example.com", "local_host": "dc1.example.com"});
        let wrapped = json!({
            "general": {"hosts": ["example.com"]},
            "modules": {"mod_global_distrib": bare.clone()},
        });
        assert_eq!(
            read_document(&bare).unwrap(),
            read_document(&wrapped).unwrap()
        );
        assert_eq!(
            error(read_document(&json!({"modules": {}}))),
            "modules.mod_global_distrib: required section missing"
        );
        assert_eq!(
            error(read_document(&json!(["global_host"]))),
            "document: expected a map of options, got a list"
        );
    }

    #[test]
    fn a_node_name_at_the_top_of_a_document_joins_the_section_once() {
        let section = json!({"global_host": "example.com", "local_host": "dc1.example.com"});
        let doc = json!({"node_name": "n1@dc1", "modules": {"mod_global_distrib": section}});
        assert_eq!(read_document(&doc).unwrap().node_name, "n1@dc1");
        let mut twice = doc.clone();
        twice["modules"]["mod_global_distrib"]["node_name"] = json!("n2@dc1");
        assert_eq!(
            error(read_document(&twice)),
            "node_name: also given as modules.mod_global_distrib.node_name; give only one of them"
        );
    }

    #[test]
    fn local_host_must_differ_from_global_host() {
        let doc = json!({"global_host": "example.com", "local_host": "Example.COM"});
        assert_eq!(
            error(read_document(&doc)),
            r#"local_host: must differ from global_host ("example.com"): every datacenter needs a domain of its own"#
        );
    }
}
