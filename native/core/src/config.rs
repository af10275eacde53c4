//! Configuration: one type for every option of SPEC 2, whatever the input
//! form (a MongooseIM TOML document or bare `[modules.mod_global_distrib]`
//! section, JSON text, the seed's proplists/maps that the Erlang binding
//! turns into a JSON value, or the option map MongooseIM 6.8's parser hands
//! to `mod_global_distrib:start/2` with its processed Redis pool).
//!
//! Reading is hand-written over a JSON value tree instead of derived with
//! serde so that every error names the full option path, the value given and
//! what was expected (`connections.endpoints[1].port: must be at most 65535,
//! got 70000`). The structs keep their serde derives: their serialized form is
//! itself an accepted input, so `Config::to_json` reads back unchanged.
//! `docs/CONFIG.md` lists every option, its default and the accepted forms.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where the session/routing table lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// In-process store: one-process deployments, demos and tests.
    Embedded,
    /// Redis, possibly behind Dynomite or twemproxy.
    Redis,
}

/// A `{host, port}` pair as written in the configuration (host unresolved).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

/// Mutual TLS between datacenters (absent: plain TCP).
///
/// Mirrors MongooseIM 6.8's `mongoose_config_spec:tls([client, server])`
/// (`src/config/mongoose_config_spec.erl`, tag 6.8.0 =
/// cabaa45da4883aa2392057efb4632bdbbc5a74a6): every key it accepts for
/// `connections.tls` is read here; the ones meaning something to rustls are
/// kept, the others are accepted, logged and dropped (docs/CONFIG.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// PEM certificate chain presented to peers.
    pub certfile: PathBuf,
    /// PEM private key; when absent the key is read from `certfile`.
    pub keyfile: Option<PathBuf>,
    /// PEM CA bundle peers are verified against; optional with
    /// `verify_mode` `none` or `selfsigned_peer`.
    pub cacertfile: Option<PathBuf>,
    /// Optional cipher suite names (rustls names, e.g. `TLS13_AES_128_GCM_SHA256`).
    pub ciphers: Option<Vec<String>>,
    /// How the peer's certificate is checked (MongooseIM default: `peer`).
    #[serde(default)]
    pub verify_mode: VerifyMode,
    /// `false`: a peer failing verification is logged and let in anyway
    /// (MongooseIM's `disconnect_on_failure`, default true).
    #[serde(default = "yes")]
    pub disconnect_on_failure: bool,
    /// Protocol versions offered (`tlsv1.2`, `tlsv1.3`); none: both.
    #[serde(default)]
    pub versions: Option<Vec<String>>,
    /// PEM certificate revocation lists checked for the peer's chain.
    #[serde(default)]
    pub crl_files: Vec<PathBuf>,
    /// Password of an encrypted PKCS#8 key (`ENCRYPTED PRIVATE KEY`).
    #[serde(default)]
    pub password: Option<String>,
    /// The name the connecting side sends and checks the server against.
    #[serde(default)]
    pub server_name_indication: SniConfig,
}

/// MongooseIM's defaults around empty paths (tests and programs fill in
/// the files): `verify_mode = peer`, `disconnect_on_failure = true`, no
/// CRL, SNI enabled.
impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certfile: PathBuf::new(),
            keyfile: None,
            cacertfile: None,
            ciphers: None,
            verify_mode: VerifyMode::Peer,
            disconnect_on_failure: true,
            versions: None,
            crl_files: Vec::new(),
            password: None,
            server_name_indication: SniConfig::default(),
        }
    }
}

/// MongooseIM's `verify_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// The peer's chain must lead to `cacertfile`.
    #[default]
    Peer,
    /// As `peer`, and a self-signed peer certificate is accepted too.
    SelfsignedPeer,
    /// No verification at all (a warning is logged at start).
    None,
}

/// MongooseIM's `server_name_indication` section (client side).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SniConfig {
    /// `false`: no SNI extension is sent (the certificate is still checked
    /// against the remote DC's `local_host`).
    pub enabled: bool,
    /// Name sent and checked instead of the remote DC's `local_host`.
    pub host: Option<String>,
    /// `default` or `https` (accepted; webpki matching covers both).
    pub protocol: String,
}

impl Default for SniConfig {
    fn default() -> Self {
        SniConfig {
            enabled: true,
            host: None,
            protocol: "default".to_owned(),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsConfig {
    /// Listen endpoints; default `[{local_host, 5555}]`.
    pub endpoints: Vec<Endpoint>,
    /// Endpoints written to the store; default: `endpoints`.
    pub advertised_endpoints: Option<Vec<Endpoint>>,
    pub connections_per_endpoint: u32,
    /// Seconds.
    pub endpoint_refresh_interval: u64,
    /// Seconds.
    pub endpoint_refresh_interval_when_empty: u64,
    /// Seconds.
    pub disabled_gc_interval: u64,
    pub tls: Option<TlsConfig>,
    /// Bound on stanzas queued towards one remote DC (beyond MongooseIM).
    pub outgoing_queue_size: usize,
    /// Largest frame accepted or sent, in bytes (beyond MongooseIM).
    pub max_frame_size: usize,
    /// Seconds written stanzas may wait without acknowledgement progress
    /// before their connection counts as failed (beyond MongooseIM).
    pub ack_timeout: u64,
    /// Bounds on what remote peers may hold on this node (beyond MongooseIM).
    #[serde(flatten)]
    pub limits: IncomingLimits,
}

/// Bounds on incoming connections and on state created by remote input
/// (`connections.*` options beyond MongooseIM, docs/CONFIG.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingLimits {
    /// Incoming connections open at once, handshaken or not.
    pub max_incoming_connections: usize,
    /// Incoming connections open at once from one remote DC.
    pub max_incoming_per_host: usize,
    /// Seconds for TLS and the handshake of an incoming connection.
    pub handshake_timeout: u64,
    /// Seconds without a byte after which an incoming connection that never
    /// carried a stanza, or that holds a partial frame, is closed.
    pub idle_timeout: u64,
    /// Bytes all incoming connections together may buffer for partial
    /// frames larger than a read (never less than `max_frame_size`).
    pub max_incoming_buffer: usize,
    /// Remote hosts that get per-host metric series; beyond, counted in
    /// `metrics_host_overflow`.
    pub max_metric_hosts: usize,
}

impl Default for IncomingLimits {
    fn default() -> Self {
        IncomingLimits {
            max_incoming_connections: 2048,
            max_incoming_per_host: 512,
            handshake_timeout: 5,
            idle_timeout: 60,
            max_incoming_buffer: 64 * 1024 * 1024,
            max_metric_hosts: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; overrides server/port/password.
    pub url: Option<String>,
    pub server: String,
    pub port: u16,
    /// ACL user (Redis 6+); empty: none (`AUTH password` alone).
    #[serde(default)]
    pub username: String,
    pub password: String,
    /// Database index (`SELECT`); only 0 works through Dynomite/twemproxy.
    #[serde(default)]
    pub database: u32,
    pub pool_size: u32,
    /// Seconds: TTL of every key this node writes.
    pub expire_after: u64,
    /// Seconds: period of re-writing this node's keys.
    pub refresh_after: u64,
    /// Milliseconds: bound on one store call (dial + pipeline round trip).
    #[serde(default = "defaults::redis_timeout_ms")]
    pub timeout_ms: u64,
    /// Milliseconds: bound on the store check at start.
    #[serde(default = "defaults::redis_start_timeout_ms")]
    pub start_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    pub cache_missed: bool,
    pub domain_lifetime_seconds: u64,
    pub jid_lifetime_seconds: u64,
    pub max_jids: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BounceConfig {
    pub enabled: bool,
    pub resend_after_ms: u64,
    pub max_retries: u32,
    /// Bound on stanzas held by the bounce store (beyond MongooseIM).
    pub max_stored: usize,
}

/// The whole configuration of one runtime (one node of one datacenter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub global_host: String,
    pub local_host: String,
    /// Name of this node inside its datacenter (MongooseIM: the Erlang node name).
    pub node_name: String,
    pub message_ttl: u32,
    /// Milliseconds.
    pub hosts_refresh_interval: u64,
    pub backend: BackendKind,
    pub connections: ConnectionsConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub bounce: BounceConfig,
    /// Per remote DC (its local_host): fixed endpoints replacing the advertised ones.
    pub global_distrib_addr: BTreeMap<String, Vec<Endpoint>>,
}

/// An invalid configuration: the dotted path of the offending option (`[i]`
/// for list elements) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    path: String,
    message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
    /// Dotted option path, e.g. `connections.endpoints[1].port`; `document`
    /// when the text as a whole cannot be read.
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// Defaults of SPEC 2 (plus the options beyond MongooseIM).
mod defaults {
    pub const MESSAGE_TTL: u32 = 4;
    pub const HOSTS_REFRESH_INTERVAL_MS: u64 = 3000;
    pub const ENDPOINT_PORT: u16 = 5555;
    pub const CONNECTIONS_PER_ENDPOINT: u32 = 1;
    pub const ENDPOINT_REFRESH_INTERVAL: u64 = 60;
    pub const ENDPOINT_REFRESH_INTERVAL_WHEN_EMPTY: u64 = 3;
    pub const DISABLED_GC_INTERVAL: u64 = 60;
    pub const OUTGOING_QUEUE_SIZE: usize = 100_000;
    pub const MAX_FRAME_SIZE: usize = 4 * 1024 * 1024;
    pub const ACK_TIMEOUT: u64 = 10;
    pub const REDIS_SERVER: &str = "127.0.0.1";
    pub const REDIS_PORT: u16 = 8102;
    pub const REDIS_POOL_SIZE: u32 = 1;
    /// MongooseIM's defaults of `[outgoing_pools.redis.*.connection]`.
    pub const MONGOOSEIM_REDIS_HOST: &str = "127.0.0.1";
    pub const MONGOOSEIM_REDIS_PORT: u16 = 6379;
    pub const EXPIRE_AFTER: u64 = 120;
    pub const REFRESH_AFTER: u64 = 60;
    /// Under the Erlang API's 5 s: the core answers before the binding
    /// gives up (docs/CONFIG.md).
    pub const REDIS_TIMEOUT_MS: u64 = 1000;
    pub const REDIS_START_TIMEOUT_MS: u64 = 3000;
    pub fn redis_timeout_ms() -> u64 {
        REDIS_TIMEOUT_MS
    }
    pub fn redis_start_timeout_ms() -> u64 {
        REDIS_START_TIMEOUT_MS
    }
    /// MongooseIM's default `redis.pool` name.
    pub const REDIS_POOL: &str = "global_distrib";
    pub const DOMAIN_LIFETIME: u64 = 600;
    pub const JID_LIFETIME: u64 = 5;
    pub const MAX_JIDS: u64 = 10_000;
    pub const RESEND_AFTER_MS: u64 = 200;
    pub const MAX_RETRIES: u32 = 4;
    pub const MAX_STORED: usize = 100_000;
}

/// Longest interval accepted, so that `Instant + interval` and Redis `EX`
/// can never overflow: ten years.
const MAX_SECONDS: u64 = 10 * 365 * 24 * 3600;
const MAX_MILLISECONDS: u64 = MAX_SECONDS * 1000;
const MIN_FRAME_SIZE: u64 = 1024;
const MAX_FRAME_SIZE: u64 = 1024 * 1024 * 1024;
/// Longest host name accepted (bytes); XMPP domain parts are at most 1023 bytes.
const MAX_HOST_LEN: usize = 1023;
/// Longest string a frame carries (docs/PROTOCOL.md), the value of
/// `transport::frame::MAX_STRING_LEN`, repeated here so that config stays
/// below transport in the module graph (tests/config.rs checks they agree).
pub const MAX_WIRE_STRING_LEN: usize = 3071;
// Host names travel in frames (handshakes, origins, targets): they must fit.
const _: () = assert!(MAX_HOST_LEN <= MAX_WIRE_STRING_LEN);
/// Bytes of the largest handshake frame besides `local_host` and
/// `node_name` (the version-2 HandshakeAck: 5 header, 3 magic, 2 version,
/// 2 + 2 string lengths, 1 + 8 resume_seq, 16 resume_token, 1 + 64 × 9
/// refusals); docs/PROTOCOL.md.
pub const HANDSHAKE_OVERHEAD: usize = 23 + 16 + 1 + 64 * 9;

/// Path used for errors about the text as a whole.
const DOCUMENT: &str = "document";

impl Config {
    /// Reads a MongooseIM TOML document (only `[modules.mod_global_distrib]`
    /// and the Redis pool it names under `[outgoing_pools.redis]` are read)
    /// or the keys of that section at top level.
    pub fn from_toml_str(text: &str) -> Result<Config> {
        let table: toml::Table = text.parse().map_err(|e| toml_syntax_error(text, &e))?;
        Self::from_json_value(toml_to_json(toml::Value::Table(table)))
    }

    /// Reads JSON text; same shape as the TOML section (see `from_json_value`).
    pub fn from_json_str(text: &str) -> Result<Config> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ConfigError::new(DOCUMENT, format!("invalid JSON: {e}")))?;
        Self::from_json_value(value)
    }

    /// Reads a value tree: the section's options as a map (or a list of
    /// `[key, value]` pairs, as an Erlang proplist converts), optionally
    /// wrapped in a whole MongooseIM document (`{"modules": {"mod_global_distrib": ..}}`).
    pub fn from_json_value(value: Value) -> Result<Config> {
        read_document(&value)
    }

    /// All defaults around the two required hosts (tests, other modules).
    pub fn minimal(global_host: &str, local_host: &str) -> Result<Config> {
        Self::from_json_value(serde_json::json!({
            "global_host": global_host,
            "local_host": local_host,
        }))
    }

    /// The configuration as JSON text, accepted back by `from_json_str`.
    pub fn to_json(&self) -> String {
        // Plain structs with string map keys: serde_json cannot fail on them.
        #[allow(clippy::expect_used)]
        serde_json::to_string_pretty(self).expect("Config serializes to JSON")
    }

    /// Resolves the listen endpoints (at start, not while parsing, so that a
    /// configuration can be checked on a machine without the target's DNS).
    /// Every address a host name resolves to is returned once, in order.
    pub fn resolve_endpoints(&self) -> Result<Vec<SocketAddr>> {
        let mut resolved = Vec::new();
        for (i, endpoint) in self.connections.endpoints.iter().enumerate() {
            let path = format!("connections.endpoints[{i}]");
            let addrs = (endpoint.host.as_str(), endpoint.port)
                .to_socket_addrs()
                .map_err(|e| {
                    ConfigError::new(
                        &path,
                        format!("cannot resolve {}: {e}", quote(&endpoint.host)),
                    )
                })?
                .collect::<Vec<_>>();
            if addrs.is_empty() {
                let message = format!("{} resolves to no address", quote(&endpoint.host));
                return Err(ConfigError::new(path, message));
            }
            for addr in addrs {
                if !resolved.contains(&addr) {
                    resolved.push(addr);
                }
            }
        }
        Ok(resolved)
    }

    /// Zero means the hosts are read once, at start (MongooseIM would
    /// re-read them in a tight loop).
    pub fn hosts_refresh_interval(&self) -> Duration {
        Duration::from_millis(self.hosts_refresh_interval)
    }
    pub fn expire_after(&self) -> Duration {
        Duration::from_secs(self.redis.expire_after)
    }
    /// The period of the store refresher. `refresh_after = 0` (allowed by
    /// MongooseIM's `non_negative`) would rewrite every key back to back;
    /// it is read as half of `expire_after`, MongooseIM's default ratio
    /// (60 of 120 s), the longest period that still leaves a whole pass of
    /// margin before keys expire.
    pub fn refresh_after(&self) -> Duration {
        match self.redis.refresh_after {
            0 => Duration::from_millis(self.redis.expire_after.saturating_mul(500)),
            secs => Duration::from_secs(secs),
        }
    }
    /// Outgoing connections per remote endpoint: 0 (allowed by MongooseIM,
    /// where it leaves the node unable to send) opens one.
    pub fn connections_per_endpoint(&self) -> usize {
        self.connections.connections_per_endpoint.max(1) as usize
    }
    pub fn endpoint_refresh_interval(&self) -> Duration {
        Duration::from_secs(self.connections.endpoint_refresh_interval)
    }
    pub fn endpoint_refresh_interval_when_empty(&self) -> Duration {
        Duration::from_secs(self.connections.endpoint_refresh_interval_when_empty)
    }
    pub fn disabled_gc_interval(&self) -> Duration {
        Duration::from_secs(self.connections.disabled_gc_interval)
    }
    pub fn resend_after(&self) -> Duration {
        Duration::from_millis(self.bounce.resend_after_ms)
    }
    /// Endpoints this node advertises in the store.
    pub fn advertised_endpoints(&self) -> &[Endpoint] {
        self.connections
            .advertised_endpoints
            .as_deref()
            .unwrap_or(&self.connections.endpoints)
    }
}

/// `global_distrib@<hostname>`: the hostname from `/etc/hostname`, else
/// `$HOSTNAME`, else `localhost`.
pub fn default_node_name() -> String {
    let non_empty = |s: String| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .and_then(non_empty)
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(non_empty))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("global_distrib@{host}")
}

// ---------------------------------------------------------------------------
// The document and its sections.
// ---------------------------------------------------------------------------

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
];
const CONNECTIONS_KEYS: &[&str] = &[
    "ack_timeout",
    "advertised_endpoints",
    "connections_per_endpoint",
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
    "outgoing_queue_size",
    "resolved_endpoints",
    "tls",
];
/// The seed's names for options MongooseIM later renamed.
const CONNECTIONS_ALIASES: &[(&str, &str)] = &[
    ("num_of_connections", "connections_per_endpoint"),
    ("tls_opts", "tls"),
];
/// `enabled` is ours (the older MongooseIM switch); the rest is MongooseIM
/// 6.8's `tls([client, server])`.
const TLS_KEYS: &[&str] = &[
    "cacertfile",
    "certfile",
    "ciphers",
    "crl_files",
    "dhfile",
    "disconnect_on_failure",
    "early_data",
    "enabled",
    "keyfile",
    "password",
    "server_name_indication",
    "session_tickets",
    "verify_mode",
    "versions",
];
const TLS_ALIASES: &[(&str, &str)] = &[("cafile", "cacertfile")];
const REDIS_KEYS: &[&str] = &[
    "database",
    "expire_after",
    "password",
    "pool",
    "pool_size",
    "port",
    "refresh_after",
    "server",
    "start_timeout_ms",
    "timeout_ms",
    "url",
    "username",
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
fn read_document(root: &Value) -> Result<Config> {
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

/// The Redis pools by tag, from `outgoing_pools.redis.<tag>` (TOML, or the
/// facade's `#{redis => #{Tag => Pool}}`) or from MongooseIM's processed
/// global option, a list of `#{type => redis, tag => Tag, ...}` maps.
fn redis_pools(pools: &Field) -> Result<Map<String, Value>> {
    if let Value::Array(items) = pools.value {
        let mut by_tag = Map::new();
        for (i, item) in items.iter().enumerate() {
            let entry = pools.index(i, item);
            let map = entry.map()?;
            if map.get("type").and_then(Value::as_str) != Some("redis") {
                continue;
            }
            let tag = match map.get("tag") {
                Some(tag) => entry.child("tag", tag).string()?.to_owned(),
                None => {
                    return Err(entry
                        .child("tag", &Value::Null)
                        .err("required option missing"))
                }
            };
            by_tag.insert(tag, item.clone());
        }
        return Ok(by_tag);
    }
    match pools.map()?.get("redis") {
        Some(redis) => pools.child("redis", redis).map(),
        None => Ok(Map::new()),
    }
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

fn seconds(f: &Field) -> Result<u64> {
    f.int(1, MAX_SECONDS)
}

fn seconds_or_zero(f: &Field) -> Result<u64> {
    f.int(0, MAX_SECONDS)
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

fn read_tls(f: &Field) -> Result<Option<TlsConfig>> {
    if f.value == &Value::Bool(false) {
        return Ok(None);
    }
    let s = Section::new(f, TLS_KEYS, TLS_ALIASES)?;
    if !s.opt("enabled", Field::boolean, || true)? {
        return Ok(None);
    }
    for key in TLS_IGNORED_KEYS {
        if let Some(field) = s.get(key)? {
            check_ignored_tls_key(&field)?;
            tracing::info!(
                what = "gd_tls_option_ignored",
                option = %field.path,
                reason = "no meaning for rustls (see docs/CONFIG.md)"
            );
        }
    }
    let verify_mode = s.opt("verify_mode", read_verify_mode, VerifyMode::default)?;
    let cacertfile = match (s.get("cacertfile")?, verify_mode) {
        (Some(f), _) => Some(f.readable_file()?),
        (None, VerifyMode::Peer) => {
            let message = "required option missing (verify_mode = peer verifies peers against it; \
                 MongooseIM's fallback to the system CAs is not offered)";
            return Err(ConfigError::new(join(&s.path, "cacertfile"), message));
        }
        (None, _) => None,
    };
    Ok(Some(TlsConfig {
        certfile: s.required("certfile")?.readable_file()?,
        keyfile: s.get("keyfile")?.map(|f| f.readable_file()).transpose()?,
        cacertfile,
        ciphers: s.get("ciphers")?.map(|f| read_ciphers(&f)).transpose()?,
        verify_mode,
        disconnect_on_failure: s.opt("disconnect_on_failure", Field::boolean, || true)?,
        versions: s.get("versions")?.map(|f| read_versions(&f)).transpose()?,
        crl_files: s.opt("crl_files", read_files, Vec::new)?,
        password: s
            .get("password")?
            .map(|f| f.string().map(str::to_owned))
            .transpose()?,
        server_name_indication: s.opt("server_name_indication", read_sni, SniConfig::default)?,
    }))
}

/// MongooseIM 6.8 TLS keys with no meaning for rustls: accepted so that
/// MongooseIM's processed options pass unchanged, checked for their type,
/// logged at info and dropped.
const TLS_IGNORED_KEYS: &[&str] = &["dhfile", "early_data", "session_tickets"];

fn check_ignored_tls_key(f: &Field) -> Result<()> {
    match f.path.rsplit('.').next() {
        Some("early_data") => f.boolean().map(drop),
        Some("session_tickets") => match f.value.as_str() {
            Some("stateless") => Ok(()),
            _ => Err(f.expected("\"stateless\"")),
        },
        _ => f.string().map(drop),
    }
}

fn read_verify_mode(f: &Field) -> Result<VerifyMode> {
    match f.value.as_str() {
        Some("peer") => Ok(VerifyMode::Peer),
        Some("selfsigned_peer") => Ok(VerifyMode::SelfsignedPeer),
        Some("none") => Ok(VerifyMode::None),
        _ => Err(f.expected("\"peer\", \"selfsigned_peer\" or \"none\"")),
    }
}

/// TLS protocol versions rustls implements, by MongooseIM's (OTP's) names.
pub const TLS_VERSIONS: &[&str] = &["tlsv1.2", "tlsv1.3"];

fn read_versions(f: &Field) -> Result<Vec<String>> {
    let items = f.list("a list of TLS versions")?;
    if items.is_empty() {
        return Err(f.err("must name at least one version (leave it out for tlsv1.2 and tlsv1.3)"));
    }
    let mut versions: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let field = f.index(i, item);
        let name = field.string()?;
        if !TLS_VERSIONS.contains(&name) {
            return Err(field.err(format!(
                "unsupported TLS version {} (rustls implements only: {})",
                quote(name),
                TLS_VERSIONS.join(", ")
            )));
        }
        if !versions.iter().any(|v| v == name) {
            versions.push(name.to_owned());
        }
    }
    Ok(versions)
}

fn read_files(f: &Field) -> Result<Vec<PathBuf>> {
    let items = f.list("a list of file names")?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| f.index(i, item).readable_file())
        .collect()
}

fn read_sni(f: &Field) -> Result<SniConfig> {
    let s = Section::new(f, &["enabled", "host", "protocol"], &[])?;
    let protocol = s.opt(
        "protocol",
        |f| match f.value.as_str() {
            Some(p @ ("default" | "https")) => Ok(p.to_owned()),
            _ => Err(f.expected("\"default\" or \"https\"")),
        },
        || "default".to_owned(),
    )?;
    let host = s
        .get("host")?
        .map(|f| {
            let host = f.host()?;
            rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| f.err(format!("not a DNS name or IP address: {}", quote(&host))))?;
            Ok(host)
        })
        .transpose()?;
    Ok(SniConfig {
        enabled: s.opt("enabled", Field::boolean, || true)?,
        host,
        protocol,
    })
}

/// Cipher suites ring-backed rustls offers, with their OpenSSL names
/// (MongooseIM passes an OpenSSL cipher string to fast_tls).
const CIPHER_SUITES: &[(&str, &str)] = &[
    ("TLS13_AES_256_GCM_SHA384", "TLS_AES_256_GCM_SHA384"),
    ("TLS13_AES_128_GCM_SHA256", "TLS_AES_128_GCM_SHA256"),
    (
        "TLS13_CHACHA20_POLY1305_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        "ECDHE-RSA-CHACHA20-POLY1305",
    ),
];

/// A list of names or one OpenSSL-style `A:B:C` string; stored as rustls names.
fn read_ciphers(f: &Field) -> Result<Vec<String>> {
    let names: Vec<(Field, &str)> = match f.value {
        Value::String(list) => list
            .split(':')
            .map(|name| (f.clone(), name.trim()))
            .collect(),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let field = f.index(i, item);
                field.string().map(|name| (field.clone(), name))
            })
            .collect::<Result<_>>()?,
        _ => return Err(f.expected("a list of cipher suite names")),
    };
    if names.is_empty() || names.iter().all(|(_, name)| name.is_empty()) {
        return Err(f.err("must name at least one cipher suite"));
    }
    names
        .into_iter()
        .filter(|(_, name)| !name.is_empty())
        .map(|(field, name)| {
            CIPHER_SUITES
                .iter()
                .find(|(rustls, openssl)| name == *rustls || name == *openssl)
                .map(|(rustls, _)| (*rustls).to_owned())
                .ok_or_else(|| {
                    let known: Vec<&str> = CIPHER_SUITES.iter().map(|(r, _)| *r).collect();
                    field.err(format!(
                        "unknown cipher suite {} (expected one of: {})",
                        quote(name),
                        known.join(", ")
                    ))
                })
        })
        .collect()
}

/// Returns the Redis options and whether Redis was configured at all (which
/// makes `redis` the default backend).
fn read_redis(top: &Section, pools: &Map<String, Value>) -> Result<(RedisConfig, bool)> {
    let mut redis = RedisConfig {
        url: None,
        server: defaults::REDIS_SERVER.to_owned(),
        port: defaults::REDIS_PORT,
        username: String::new(),
        password: String::new(),
        database: 0,
        pool_size: defaults::REDIS_POOL_SIZE,
        expire_after: defaults::EXPIRE_AFTER,
        refresh_after: defaults::REFRESH_AFTER,
        timeout_ms: defaults::REDIS_TIMEOUT_MS,
        start_timeout_ms: defaults::REDIS_START_TIMEOUT_MS,
    };
    let field = top.get("redis")?;
    let section = field
        .as_ref()
        .map(|f| Section::new(f, REDIS_KEYS, &[]))
        .transpose()?;
    let empty = Section::empty("redis");
    let s = section.as_ref().unwrap_or(&empty);

    let pool_given = s.get("pool")?;
    let pool_name = match &pool_given {
        Some(f) => f.string()?.to_owned(),
        None => defaults::REDIS_POOL.to_owned(),
    };
    let pool = pools.get(&pool_name);
    if let (Some(f), None) = (&pool_given, pool) {
        let message = format!(
            "names the outgoing pool {}, but the document has no [outgoing_pools.redis.{pool_name}]",
            quote(&pool_name)
        );
        return Err(f.err(message));
    }
    if let Some(pool) = pool {
        let path = format!("outgoing_pools.redis.{pool_name}");
        read_mongooseim_pool(&Field::new(&path, pool), &mut redis)?;
    }

    if let Some(f) = s.get("url")? {
        let address_keys = ["server", "port", "username", "password", "database"];
        if let Some(other) = address_keys.iter().find(|k| s.has(k)) {
            let message = format!(
                "conflicts with redis.{other}; give either a URL or server/port/username/password/database"
            );
            return Err(f.err(message));
        }
        let url = f.string()?;
        let parsed = parse_redis_url(url).map_err(|why| {
            f.err(format!(
                "expected redis://[[username]:password@]host[:port][/database], got {} ({why})",
                quote(url)
            ))
        })?;
        redis.server = parsed.host;
        redis.port = parsed.port;
        redis.username = parsed.username;
        redis.password = parsed.password;
        redis.database = parsed.database;
        redis.url = Some(url.to_owned());
    }
    redis.server = s.opt("server", Field::host, || redis.server.clone())?;
    redis.port = s.opt("port", |f| f.int(1, u64::from(u16::MAX)), || redis.port)?;
    redis.username = s.opt("username", owned_string, || redis.username.clone())?;
    redis.password = s.opt("password", owned_string, || redis.password.clone())?;
    redis.database = s.opt("database", database, || redis.database)?;
    redis.pool_size = s.opt(
        "pool_size",
        |f| f.int(1, u64::from(u32::MAX)),
        || redis.pool_size,
    )?;
    redis.expire_after = s.opt("expire_after", seconds, || redis.expire_after)?;
    // 0 (MongooseIM's `non_negative`): refresh at half of expire_after.
    redis.refresh_after = s.opt("refresh_after", seconds_or_zero, || redis.refresh_after)?;
    if redis.refresh_after >= redis.expire_after {
        let message = format!(
            "must be less than redis.expire_after ({}), got {}: keys would expire before this node rewrites them",
            redis.expire_after, redis.refresh_after
        );
        return Err(ConfigError::new("redis.refresh_after", message));
    }
    let millis = |f: &Field| f.int(1, MAX_MILLISECONDS);
    redis.timeout_ms = s.opt("timeout_ms", millis, || redis.timeout_ms)?;
    redis.start_timeout_ms = s.opt("start_timeout_ms", millis, || redis.start_timeout_ms)?;
    if !redis.username.is_empty() && redis.password.is_empty() {
        let message = format!(
            "{} is given without a password: Redis authenticates a user with AUTH <username> <password>",
            quote(&redis.username)
        );
        return Err(ConfigError::new("redis.username", message));
    }
    Ok((redis, field.is_some() || pool.is_some()))
}

fn owned_string(f: &Field) -> Result<String> {
    f.string().map(str::to_owned)
}

fn database(f: &Field) -> Result<u32> {
    f.int(0, u64::from(u32::MAX))
}

/// Keys of `[outgoing_pools.redis.<tag>]` as written in TOML (MongooseIM
/// 6.8 `mongoose_config_spec:wpool/1` and `outgoing_pool_extra/2`).
const POOL_KEYS: &[&str] = &[
    "call_timeout",
    "connection",
    "max_worker_queue_len",
    "scope",
    "strategy",
    "workers",
];
/// The same pool after MongooseIM's `process_pool/2`.
const PROCESSED_POOL_KEYS: &[&str] = &["conn_opts", "opts", "scope", "tag", "type"];
const POOL_OPTS_KEYS: &[&str] = &[
    "call_timeout",
    "max_worker_queue_len",
    "strategy",
    "workers",
];
/// `outgoing_pool_connection(<<"redis">>)`.
const POOL_CONNECTION_KEYS: &[&str] = &["database", "host", "password", "port", "tls", "username"];

/// MongooseIM keeps the Redis address in `[outgoing_pools.redis.<pool>]`,
/// given either as TOML (`workers`, `connection.host`, ...) or as the map
/// MongooseIM's parser makes of it (`process_pool/2` in
/// `src/config/mongoose_config_spec.erl`, 6.8.0 =
/// cabaa45da4883aa2392057efb4632bdbbc5a74a6):
/// `#{type => redis, scope, tag, opts => #{workers, strategy, call_timeout},
/// conn_opts => #{host, port, database, username, password, tls}}`.
/// MongooseIM's connection defaults apply: host 127.0.0.1, port 6379,
/// database 0. The worker-pool tuning keys (`strategy`, `call_timeout`,
/// `max_worker_queue_len`) and `scope` belong to MongooseIM's wpool and
/// are accepted and ignored.
fn read_mongooseim_pool(pool: &Field, redis: &mut RedisConfig) -> Result<()> {
    let pool_map = pool.map()?;
    let processed = PROCESSED_POOL_KEYS
        .iter()
        .any(|k| *k != "scope" && pool_map.contains_key(*k));
    let (opts, connection) = if processed {
        let s = Section::new(pool, PROCESSED_POOL_KEYS, &[])?;
        if let Some(f) = s.get("type")? {
            if f.value.as_str() != Some("redis") {
                return Err(f.expected("\"redis\""));
            }
        }
        let opts = s
            .get("opts")?
            .map(|f| Section::new(&f, POOL_OPTS_KEYS, &[]))
            .transpose()?;
        let connection = s
            .get("conn_opts")?
            .map(|f| Section::new(&f, POOL_CONNECTION_KEYS, &[]))
            .transpose()?;
        (opts, connection)
    } else {
        let s = Section::new(pool, POOL_KEYS, &[])?;
        let connection = s
            .get("connection")?
            .map(|f| Section::new(&f, POOL_CONNECTION_KEYS, &[]))
            .transpose()?;
        (Some(s), connection)
    };
    if let Some(opts) = &opts {
        redis.pool_size = opts.opt(
            "workers",
            |f| f.int(1, u64::from(u32::MAX)),
            || redis.pool_size,
        )?;
    }
    redis.server = defaults::MONGOOSEIM_REDIS_HOST.to_owned();
    redis.port = defaults::MONGOOSEIM_REDIS_PORT;
    let Some(c) = connection else {
        return Ok(());
    };
    if let Some(f) = c.get("tls")? {
        return Err(f.err(
            "TLS to Redis is not supported yet: remove it, or reach Redis through a local \
             TLS-terminating proxy (stunnel, Envoy)",
        ));
    }
    redis.server = c.opt("host", Field::host, || redis.server.clone())?;
    redis.port = c.opt("port", |f| f.int(1, u64::from(u16::MAX)), || redis.port)?;
    redis.database = c.opt("database", database, || 0)?;
    redis.username = c.opt("username", owned_string, String::new)?;
    redis.password = c.opt("password", owned_string, String::new)?;
    Ok(())
}

struct RedisUrl {
    host: String,
    port: u16,
    username: String,
    password: String,
    database: u32,
}

/// `redis://[[username]:password@]host[:port][/database]`; the error says
/// what is wrong.
fn parse_redis_url(url: &str) -> Result<RedisUrl, String> {
    if url.starts_with("rediss://") {
        return Err("TLS to Redis is not supported yet".to_owned());
    }
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| "the scheme must be redis://".to_owned())?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let database = match path {
        "" => 0,
        db => db
            .parse::<u32>()
            .map_err(|_| format!("the database must be a number, got {}", quote(db)))?,
    };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        Some(userinfo) => match userinfo.split_once(':') {
            Some((user, password)) => (percent_decode(user)?, percent_decode(password)?),
            // `redis://secret@host`: redis-rs reads a lone userinfo as the password.
            None => (String::new(), percent_decode(userinfo)?),
        },
        None => (String::new(), String::new()),
    };
    let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the host".to_owned())?;
        (host, after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err("the host is missing".to_owned());
    }
    if let Some(bad) = check_host(host) {
        return Err(format!("the host {bad}"));
    }
    let port = match port {
        None => 6379,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(format!("the port must be 1..65535, got {}", quote(port))),
        },
    };
    Ok(RedisUrl {
        host: host.to_owned(),
        port,
        username,
        password,
        database,
    })
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3).unwrap_or("");
            let byte = u8::from_str_radix(hex, 16)
                .map_err(|_| format!("bad percent-escape at byte {i}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the user info is not UTF-8 once decoded".to_owned())
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

// ---------------------------------------------------------------------------
// Reading values with their paths.
// ---------------------------------------------------------------------------

/// One value and the dotted path it was found at.
#[derive(Clone)]
struct Field<'a> {
    path: String,
    value: &'a Value,
}

impl<'a> Field<'a> {
    fn new(path: impl Into<String>, value: &'a Value) -> Self {
        Self {
            path: path.into(),
            value,
        }
    }
    fn child<'b>(&self, key: &str, value: &'b Value) -> Field<'b> {
        Field::new(join(&self.path, key), value)
    }
    fn index<'b>(&self, i: usize, value: &'b Value) -> Field<'b> {
        Field::new(format!("{}[{i}]", self.path), value)
    }
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.path.clone(), message)
    }
    fn expected(&self, what: &str) -> ConfigError {
        self.err(format!("expected {what}, got {}", describe(self.value)))
    }

    /// A map, or a list of `[key, value]` pairs (an Erlang proplist).
    fn map(&self) -> Result<Map<String, Value>> {
        match self.value {
            Value::Object(map) => Ok(map.clone()),
            Value::Array(items) => {
                let mut map = Map::new();
                for (i, item) in items.iter().enumerate() {
                    let pair = match item.as_array().map(Vec::as_slice) {
                        Some([Value::String(key), value]) => (key, value),
                        _ => return Err(self.expected("a map of options")),
                    };
                    if map.insert(pair.0.clone(), pair.1.clone()).is_some() {
                        return Err(self
                            .index(i, item)
                            .err(format!("option {} given twice", quote(pair.0))));
                    }
                }
                Ok(map)
            }
            _ => Err(self.expected("a map of options")),
        }
    }
    fn list(&self, what: &str) -> Result<&'a Vec<Value>> {
        self.value.as_array().ok_or_else(|| self.expected(what))
    }
    /// A string; an empty list counts as `""` because the Erlang binding
    /// cannot tell the empty charlist `""` (MongooseIM's `string` options,
    /// e.g. a blank password) from `[]`.
    fn string(&self) -> Result<&'a str> {
        match self.value {
            Value::Array(items) if items.is_empty() => Ok(""),
            value => value.as_str().ok_or_else(|| self.expected("a string")),
        }
    }
    fn boolean(&self) -> Result<bool> {
        self.value
            .as_bool()
            .ok_or_else(|| self.expected("true or false"))
    }

    /// An integer within `min..=max`, converted to the field's type.
    fn int<T: TryFrom<u64>>(&self, min: u64, max: u64) -> Result<T> {
        self.int_hint(min, max, "")
    }
    fn int_hint<T: TryFrom<u64>>(&self, min: u64, max: u64, hint: &str) -> Result<T> {
        let n = self
            .value
            .as_u64()
            .ok_or_else(|| self.expected("a non-negative integer"))?;
        let hint = if hint.is_empty() {
            String::new()
        } else {
            format!(" ({hint})")
        };
        if n < min {
            return Err(self.err(format!("must be at least {min}{hint}, got {n}")));
        }
        if n > max {
            return Err(self.err(format!("must be at most {max}{hint}, got {n}")));
        }
        T::try_from(n).map_err(|_| self.err(format!("{n} does not fit on this platform")))
    }

    fn host(&self) -> Result<String> {
        let host = self.string()?;
        match check_host(host) {
            Some(bad) => Err(self.err(bad)),
            None => Ok(host.to_owned()),
        }
    }
    /// A host name, or an IP address as the Erlang binding converts an
    /// `inet:ip_address()` tuple: a list of 4 bytes or 8 16-bit groups.
    fn endpoint_host(&self) -> Result<String> {
        let Value::Array(parts) = self.value else {
            return self.host();
        };
        let numbers: Option<Vec<u64>> = parts.iter().map(Value::as_u64).collect();
        let ip = match numbers.as_deref() {
            Some(&[a, b, c, d]) if [a, b, c, d].iter().all(|&n| n <= 0xff) => {
                Some(Ipv4Addr::new(a as u8, b as u8, c as u8, d as u8).to_string())
            }
            Some(groups) if groups.len() == 8 && groups.iter().all(|&n| n <= 0xffff) => {
                let mut segments = [0u16; 8];
                for (segment, &n) in segments.iter_mut().zip(groups) {
                    *segment = n as u16;
                }
                Some(Ipv6Addr::from(segments).to_string())
            }
            _ => None,
        };
        ip.ok_or_else(|| self.expected("a host name or an IP address"))
    }
    fn node_name(&self) -> Result<String> {
        let name = self.string()?;
        if name.is_empty() {
            return Err(self.err("must not be empty"));
        }
        // It travels in every handshake: a longer name could never connect.
        if name.len() > MAX_WIRE_STRING_LEN {
            return Err(self.err(format!(
                "is {} bytes long, at most {MAX_WIRE_STRING_LEN} allowed (a string on the wire, docs/PROTOCOL.md)",
                name.len()
            )));
        }
        if let Some(c) = name.chars().find(|c| matches!(c, '{' | '}' | '#')) {
            return Err(self.err(format!(
                "must not contain '{c}' (reserved by the store's key layout), got {}",
                quote(name)
            )));
        }
        Ok(name.to_owned())
    }
    /// A path to a file that exists and can be read now, so a typo fails at
    /// start rather than at the first TLS handshake.
    fn readable_file(&self) -> Result<PathBuf> {
        let path = PathBuf::from(self.string()?);
        let shown = quote(&path.display().to_string());
        let metadata =
            std::fs::metadata(&path).map_err(|e| self.err(format!("cannot read {shown}: {e}")))?;
        if !metadata.is_file() {
            return Err(self.err(format!("cannot read {shown}: not a regular file")));
        }
        std::fs::File::open(&path).map_err(|e| self.err(format!("cannot read {shown}: {e}")))?;
        Ok(path)
    }
}

/// Longest DNS name, in bytes (RFC 1035, without the final dot).
const MAX_DNS_NAME: usize = 253;
/// Longest DNS label, in bytes.
const MAX_DNS_LABEL: usize = 63;

/// Whether `name` may name a datacenter on the wire: a DNS name of at
/// most 253 bytes made of labels of 1 to 63 bytes, with no control
/// character, whitespace, nor `{ } # @ /` (store key and JID delimiters).
/// Non-ASCII labels (IDN in UTF-8) are allowed, as XMPP domains.
pub fn valid_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_DNS_NAME
        && name
            .split('.')
            .all(|label| !label.is_empty() && label.len() <= MAX_DNS_LABEL)
        && !name.chars().any(|c| {
            c.is_control() || c.is_whitespace() || matches!(c, '{' | '}' | '#' | '@' | '/')
        })
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

/// Why `host` is not an acceptable host name, if it is not.
fn check_host(host: &str) -> Option<String> {
    if host.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if host.len() > MAX_HOST_LEN {
        return Some(format!(
            "is {} bytes long, at most {MAX_HOST_LEN} allowed",
            host.len()
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "must not contain whitespace or control characters, got {}",
            quote(host)
        ));
    }
    let reason = |c| match c {
        '{' | '}' | '#' => Some("reserved by the store's key layout"),
        '@' | '/' => Some("a JID separator"),
        _ => None,
    };
    host.chars().find_map(|c| {
        reason(c).map(|why| format!("must not contain '{c}' ({why}), got {}", quote(host)))
    })
}

/// The options of one section: unknown keys are rejected up front, and the
/// seed's alias names are read under their canonical name.
struct Section {
    path: String,
    map: Map<String, Value>,
    aliases: &'static [(&'static str, &'static str)],
}

impl Section {
    fn new(
        field: &Field,
        keys: &[&str],
        aliases: &'static [(&'static str, &'static str)],
    ) -> Result<Self> {
        let map = field.map()?;
        let known = |k: &str| keys.contains(&k) || aliases.iter().any(|(alias, _)| *alias == k);
        if let Some(unknown) = map.keys().find(|k| !known(k)) {
            let message = format!("unknown option (expected one of: {})", keys.join(", "));
            return Err(ConfigError::new(join(&field.path, unknown), message));
        }
        Ok(Self {
            path: field.path.clone(),
            map,
            aliases,
        })
    }
    /// A section that was not given: every option takes its default.
    fn empty(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            map: Map::new(),
            aliases: &[],
        }
    }
    fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }
    /// The option under its name or an alias; `null` counts as absent (it is
    /// how `to_json` writes an unset optional value).
    fn get(&self, key: &str) -> Result<Option<Field<'_>>> {
        let names = std::iter::once(key).chain(
            self.aliases
                .iter()
                .filter(|(_, canonical)| *canonical == key)
                .map(|(alias, _)| *alias),
        );
        let mut found: Option<Field> = None;
        for name in names {
            let Some(value) = self.map.get(name).filter(|v| !v.is_null()) else {
                continue;
            };
            let field = Field::new(join(&self.path, name), value);
            if let Some(first) = &found {
                let message = format!("same option as {}; give only one of them", first.path);
                return Err(field.err(message));
            }
            found = Some(field);
        }
        Ok(found)
    }
    fn required(&self, key: &str) -> Result<Field<'_>> {
        self.get(key)?
            .ok_or_else(|| ConfigError::new(join(&self.path, key), "required option missing"))
    }
    fn opt<'s, T>(
        &'s self,
        key: &str,
        read: impl FnOnce(&Field<'s>) -> Result<T>,
        default: impl FnOnce() -> T,
    ) -> Result<T> {
        match self.get(key)? {
            Some(field) => read(&field),
            None => Ok(default()),
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A string as it would be written in JSON (quoted, escaped).
fn quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// A value as shown after "got" in an error.
fn describe(value: &Value) -> String {
    match value {
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "a map".to_owned(),
        Value::String(s) if s.len() > 80 => {
            let cut = (0..=77).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
            format!(
                "{}... ({} bytes)",
                quote(&s[..cut]).trim_end_matches('"'),
                s.len()
            )
        }
        other => other.to_string(),
    }
}

fn toml_to_json(value: toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f)
            .map_or_else(|| Value::String(f.to_string()), Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(table) => Value::Object(
            table
                .into_iter()
                .map(|(k, v)| (k, toml_to_json(v)))
                .collect(),
        ),
    }
}

fn toml_syntax_error(text: &str, error: &toml::de::Error) -> ConfigError {
    // toml's messages span lines; keep the error on one line for logs.
    let lines: Vec<&str> = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let message = lines.join("; ");
    let Some(span) = error.span() else {
        return ConfigError::new(DOCUMENT, format!("invalid TOML: {message}"));
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::new(
        DOCUMENT,
        format!("invalid TOML at line {line}, column {column}: {message}"),
    )
}
