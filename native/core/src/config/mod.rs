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
//!
//! This file holds the public types, the defaults and limits, and the
//! `Config` entry points. Reading is split into layers; each file uses
//! the types here and only the files listed before it:
//! - `host`: what a host name or a datacenter name may be;
//! - `field`: `Field` and `Section`, the typed getters that name the option
//!   path in their errors, and the TOML-to-JSON conversion;
//! - `tls`: the `connections.tls` section;
//! - `redis_cluster`: the `redis.cluster` seed nodes;
//! - `redis`: the `redis` section, MongooseIM's Redis pool and Redis URLs;
//! - `read`: the document, its top-level options and its other sections.

mod field;
mod host;
mod read;
mod redis;
mod redis_cluster;
mod tls;

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use field::{toml_syntax_error, toml_to_json};
pub use host::valid_host_name;
pub use tls::TLS_VERSIONS;

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
    /// Received stanzas the host (its Erlang workers, its C callbacks) may
    /// have been handed and not finished with before the runtime stops
    /// reading from the network (see `credits`).
    pub max_unconfirmed_deliveries: usize,
    /// The same bound in payload bytes.
    pub max_unconfirmed_delivery_bytes: usize,
    /// Threads that run a C host's callbacks (the C API only).
    pub delivery_threads: usize,
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
            max_unconfirmed_deliveries: 10_000,
            max_unconfirmed_delivery_bytes: 64 * 1024 * 1024,
            delivery_threads: 2,
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
    /// TLS to Redis (`redis.tls`, a `rediss://` URL or the MongooseIM
    /// pool's `connection.tls`); absent: plain TCP.
    #[serde(default)]
    pub tls: Option<RedisTlsConfig>,
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
    /// Redis Cluster seed nodes as `redis://host:port`; when given, they
    /// replace url/server/port (username/password apply to every node).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<String>,
    /// Who keeps session keys alive (docs/REDIS.md, "Lease mode"):
    /// `per_key` (MongooseIM's way) or `lease`.
    #[serde(default)]
    pub ownership: Ownership,
    /// Seconds: TTL of a session key in lease mode, a safety net only
    /// (keys are deleted at logout or by dead-node cleanup); > expire_after.
    #[serde(default = "defaults::lease_safety_ttl")]
    pub lease_safety_ttl: u64,
    /// Milliseconds: how long a remote DC's leases (its `#{nodes}` hash)
    /// read by lookups are trusted before being read again.
    #[serde(default = "defaults::lease_check_interval_ms")]
    pub lease_check_interval_ms: u64,
}

/// How session keys are kept alive (`redis.ownership`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ownership {
    /// Every session key carries `expire_after` and is re-written by its
    /// node every `refresh_after` (MongooseIM-compatible).
    #[default]
    PerKey,
    /// Session keys name their node and live as long as its lease (its
    /// stamp in `<local_host>#{nodes}`); only the lease is refreshed.
    Lease,
}

/// TLS to Redis, with rustls (docs/REDIS.md, *TLS*). Unlike the inter-DC
/// links, the client certificate is optional and, with no `cacertfile`,
/// the server is verified against the system's CA bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisTlsConfig {
    /// PEM CA bundle the server is verified against; none: the system's.
    #[serde(default)]
    pub cacertfile: Option<PathBuf>,
    /// PEM client certificate chain, for a server that asks for one.
    #[serde(default)]
    pub certfile: Option<PathBuf>,
    /// PEM private key of `certfile`; none: read from `certfile`.
    #[serde(default)]
    pub keyfile: Option<PathBuf>,
    /// The name sent as SNI and checked in the server's certificate; none:
    /// the Redis host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// `false`: no SNI is sent (the name is still checked).
    #[serde(default = "yes")]
    pub sni: bool,
    /// `peer` (default) or `none` (no verification at all).
    #[serde(default)]
    pub verify: VerifyMode,
}

impl Default for RedisTlsConfig {
    fn default() -> Self {
        RedisTlsConfig {
            cacertfile: None,
            certfile: None,
            keyfile: None,
            server_name: None,
            sni: true,
            verify: VerifyMode::Peer,
        }
    }
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
    /// Milliseconds a route() that must wait (a store lookup, a new DC's
    /// endpoints) may take before the core decides without it.
    pub route_timeout_ms: u64,
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
    /// Under the Erlang API's 5 s and MongooseIM's c2s patience.
    pub const ROUTE_TIMEOUT_MS: u64 = 3000;
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
    /// A day: session keys of a node nobody cleaned up go away by then.
    pub const LEASE_SAFETY_TTL: u64 = 24 * 3600;
    pub const LEASE_CHECK_INTERVAL_MS: u64 = 1000;
    pub fn lease_safety_ttl() -> u64 {
        LEASE_SAFETY_TTL
    }
    pub fn lease_check_interval_ms() -> u64 {
        LEASE_CHECK_INTERVAL_MS
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
/// Most threads running a C host's callbacks.
const MAX_DELIVERY_THREADS: u64 = 64;
const MAX_FRAME_SIZE: u64 = 1024 * 1024 * 1024;
/// Longest string a frame carries (docs/PROTOCOL.md), the value of
/// `transport::frame::MAX_STRING_LEN`, repeated here so that config stays
/// below transport in the module graph (tests/config.rs checks they agree).
pub const MAX_WIRE_STRING_LEN: usize = 3071;
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
        read::read_document(&value)
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
    /// TTL of a session key in lease mode (`redis.lease_safety_ttl`).
    pub fn lease_safety_ttl(&self) -> Duration {
        Duration::from_secs(self.redis.lease_safety_ttl)
    }
    /// How long lookups trust a DC's leases (`redis.lease_check_interval_ms`).
    pub fn lease_check_interval(&self) -> Duration {
        Duration::from_millis(self.redis.lease_check_interval_ms)
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

/// A string as it would be written in JSON (quoted, escaped).
fn quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// Shared by the unit tests of the config modules.
#[cfg(test)]
mod test_support {
    use super::Result;

    /// The error text of a read that must fail.
    pub(super) fn error<T>(result: Result<T>) -> String {
        match result {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn minimal() -> Config {
        Config::minimal("example.com", "dc1.example.com").unwrap()
    }

    #[test]
    fn an_error_shows_its_path_then_its_message() {
        let e = ConfigError::new("redis.port", "must be at least 1, got 0");
        assert_eq!(e.path(), "redis.port");
        assert_eq!(e.message(), "must be at least 1, got 0");
        assert_eq!(e.to_string(), "redis.port: must be at least 1, got 0");
    }

    #[test]
    fn unreadable_text_is_an_error_about_the_document() {
        let e = Config::from_json_str("{").unwrap_err();
        assert_eq!(e.path(), "document");
        assert!(e.message().starts_with("invalid JSON: "), "{e}");
        let e = Config::from_toml_str("global_host = ").unwrap_err();
        assert_eq!(e.path(), "document");
        assert!(
            e.message().starts_with("invalid TOML at line 1, column "),
            "{e}"
        );
    }

    #[test]
    fn the_json_form_reads_back_unchanged() {
        let mut config = minimal();
        config.bounce.max_retries = 9;
        config.global_distrib_addr.insert(
            "dc2.example.com".into(),
            vec![Endpoint {
                host: "10.0.0.2".into(),
                port: 5555,
            }],
        );
        assert_eq!(Config::from_json_str(&config.to_json()).unwrap(), config);
    }

    #[test]
    fn zero_refresh_and_zero_connections_get_a_safe_meaning() {
        let mut config = minimal();
        config.redis.expire_after = 120;
        config.redis.refresh_after = 0;
        assert_eq!(config.refresh_after(), Duration::from_secs(60));
        config.redis.refresh_after = 7;
        assert_eq!(config.refresh_after(), Duration::from_secs(7));
        config.connections.connections_per_endpoint = 0;
        assert_eq!(config.connections_per_endpoint(), 1);
        config.connections.connections_per_endpoint = 3;
        assert_eq!(config.connections_per_endpoint(), 3);
    }

    #[test]
    fn advertised_endpoints_default_to_the_listen_endpoints() {
        let mut config = minimal();
        let listen = [Endpoint {
            host: "dc1.example.com".into(),
            port: defaults::ENDPOINT_PORT,
        }];
        assert_eq!(config.advertised_endpoints(), listen);
        let public = vec![Endpoint {
            host: "203.0.113.1".into(),
            port: 443,
        }];
        config.connections.advertised_endpoints = Some(public.clone());
        assert_eq!(config.advertised_endpoints(), public);
    }

    #[test]
    fn resolving_endpoints_lists_each_address_once() {
        let mut config = minimal();
        let endpoint = Endpoint {
            host: "127.0.0.1".into(),
            port: 5555,
        };
        config.connections.endpoints = vec![endpoint.clone(), endpoint];
        assert_eq!(
            config.resolve_endpoints().unwrap(),
            [SocketAddr::from(([127, 0, 0, 1], 5555))]
        );
    }
}
