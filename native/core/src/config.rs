//! Configuration: one type for every option of SPEC 2, whatever the input
//! form (MongooseIM TOML section, JSON, or the Erlang binding's terms).
//!
//! Parsing and validation (error messages naming the option path, the bad
//! value and the expectation) are completed by the config work item; the
//! shape below is what every other module relies on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsConfig {
    /// PEM certificate chain presented to peers.
    pub certfile: PathBuf,
    /// PEM private key; when absent the key is read from `certfile`.
    pub keyfile: Option<PathBuf>,
    /// PEM CA bundle peers are verified against.
    pub cacertfile: PathBuf,
    /// Optional cipher suite names (rustls names, e.g. `TLS13_AES_128_GCM_SHA256`).
    pub ciphers: Option<Vec<String>>,
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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`; overrides server/port/password.
    pub url: Option<String>,
    pub server: String,
    pub port: u16,
    pub password: String,
    pub pool_size: u32,
    /// Seconds: TTL of every key this node writes.
    pub expire_after: u64,
    /// Seconds: period of re-writing this node's keys.
    pub refresh_after: u64,
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

impl Config {
    pub fn hosts_refresh_interval(&self) -> Duration {
        Duration::from_millis(self.hosts_refresh_interval)
    }
    pub fn expire_after(&self) -> Duration {
        Duration::from_secs(self.redis.expire_after)
    }
    pub fn refresh_after(&self) -> Duration {
        Duration::from_secs(self.redis.refresh_after)
    }
    /// Endpoints this node advertises in the store.
    pub fn advertised_endpoints(&self) -> &[Endpoint] {
        self.connections
            .advertised_endpoints
            .as_deref()
            .unwrap_or(&self.connections.endpoints)
    }
}
