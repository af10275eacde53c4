//! Reading the Redis options: the `redis` section, the MongooseIM outgoing
//! pool it names (as TOML or as MongooseIM's processed map), `redis://` and
//! `rediss://` URLs, and TLS to Redis (`redis.tls`, the pool's
//! `connection.tls`).

use serde_json::{Map, Value};

use crate::config::field::{seconds, seconds_or_zero, Field, Section};
use crate::config::host::check_host;
use crate::config::redis_cluster;
use crate::config::{
    defaults, quote, ConfigError, Ownership, RedisConfig, RedisTlsConfig, Result, VerifyMode,
    MAX_MILLISECONDS,
};

const REDIS_KEYS: &[&str] = &[
    "cluster",
    "database",
    "expire_after",
    "lease_check_interval_ms",
    "lease_safety_ttl",
    "ownership",
    "password",
    "pool",
    "pool_size",
    "port",
    "refresh_after",
    "server",
    "start_timeout_ms",
    "timeout_ms",
    "tls",
    "url",
    "username",
];

/// The Redis pools by tag, from `outgoing_pools.redis.<tag>` (TOML, or the
/// facade's `#{redis => #{Tag => Pool}}`) or from MongooseIM's processed
/// global option, a list of `#{type => redis, tag => Tag, ...}` maps.
pub(super) fn redis_pools(pools: &Field) -> Result<Map<String, Value>> {
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

/// Returns the Redis options and whether Redis was configured at all (which
/// makes `redis` the default backend).
pub(super) fn read_redis(top: &Section, pools: &Map<String, Value>) -> Result<(RedisConfig, bool)> {
    let mut redis = RedisConfig {
        url: None,
        server: defaults::REDIS_SERVER.to_owned(),
        port: defaults::REDIS_PORT,
        username: String::new(),
        password: String::new(),
        database: 0,
        tls: None,
        pool_size: defaults::REDIS_POOL_SIZE,
        expire_after: defaults::EXPIRE_AFTER,
        refresh_after: defaults::REFRESH_AFTER,
        timeout_ms: defaults::REDIS_TIMEOUT_MS,
        start_timeout_ms: defaults::REDIS_START_TIMEOUT_MS,
        cluster: Vec::new(),
        ownership: Ownership::PerKey,
        lease_safety_ttl: defaults::LEASE_SAFETY_TTL,
        lease_check_interval_ms: defaults::LEASE_CHECK_INTERVAL_MS,
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
                "expected redis[s]://[[username]:password@]host[:port][/database], got {} ({why})",
                quote(url)
            ))
        })?;
        if let (false, Some(tls)) = (parsed.tls, s.get("tls")?) {
            return Err(tls
                .err("given with a redis:// URL; use rediss:// for TLS (or leave redis.tls out)"));
        }
        redis.tls = parsed.tls.then(RedisTlsConfig::default);
        redis.server = parsed.host;
        redis.port = parsed.port;
        redis.username = parsed.username;
        redis.password = parsed.password;
        redis.database = parsed.database;
        redis.url = Some(url.to_owned());
    }
    if let Some(f) = s.get("cluster")? {
        redis.cluster = redis_cluster::read_seeds(&f, s)?;
    }
    redis.server = s.opt("server", Field::host, || redis.server.clone())?;
    redis.port = s.opt("port", |f| f.int(1, u64::from(u16::MAX)), || redis.port)?;
    redis.username = s.opt("username", owned_string, || redis.username.clone())?;
    redis.password = s.opt("password", owned_string, || redis.password.clone())?;
    redis.database = s.opt("database", database, || redis.database)?;
    if let Some(f) = s.get("tls")? {
        redis.tls = Some(read_redis_tls(&f)?);
    }
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
    read_lease(s, &mut redis)?;
    if !redis.username.is_empty() && redis.password.is_empty() {
        let message = format!(
            "{} is given without a password: Redis authenticates a user with AUTH <username> <password>",
            quote(&redis.username)
        );
        return Err(ConfigError::new("redis.username", message));
    }
    redis_cluster::check_cluster(&redis)?;
    Ok((redis, field.is_some() || pool.is_some()))
}

/// `ownership`, `lease_safety_ttl`, `lease_check_interval_ms`; the lease
/// options are checked against the periods only in lease mode, where they
/// matter (docs/REDIS.md, "Lease mode").
fn read_lease(s: &Section, redis: &mut RedisConfig) -> Result<()> {
    redis.ownership = s.opt(
        "ownership",
        |f| match f.value.as_str() {
            Some("per_key") => Ok(Ownership::PerKey),
            Some("lease") => Ok(Ownership::Lease),
            _ => Err(f.expected("\"per_key\" or \"lease\"")),
        },
        || redis.ownership,
    )?;
    redis.lease_safety_ttl = s.opt("lease_safety_ttl", seconds, || redis.lease_safety_ttl)?;
    redis.lease_check_interval_ms = s.opt(
        "lease_check_interval_ms",
        |f| f.int(1, MAX_MILLISECONDS),
        || redis.lease_check_interval_ms,
    )?;
    if redis.ownership != Ownership::Lease {
        return Ok(());
    }
    if redis.lease_safety_ttl <= redis.expire_after {
        let message = format!(
            "must be more than redis.expire_after ({}), got {}: session keys of live nodes would expire",
            redis.expire_after, redis.lease_safety_ttl
        );
        return Err(ConfigError::new("redis.lease_safety_ttl", message));
    }
    let refresh_ms = match redis.refresh_after {
        0 => redis.expire_after.saturating_mul(500),
        secs => secs.saturating_mul(1000),
    };
    let margin_ms = redis
        .expire_after
        .saturating_mul(1000)
        .saturating_sub(refresh_ms);
    if redis.lease_check_interval_ms >= margin_ms {
        let message = format!(
            "must be less than expire_after - refresh_after ({margin_ms} ms), got {}: \
             a live node's lease could look lapsed through a view this old",
            redis.lease_check_interval_ms
        );
        return Err(ConfigError::new("redis.lease_check_interval_ms", message));
    }
    Ok(())
}

/// `redis.tls`; also what `Config::to_json` writes for it (`sni`).
const REDIS_TLS_KEYS: &[&str] = &[
    "cacertfile",
    "certfile",
    "keyfile",
    "server_name",
    "sni",
    "verify",
];

fn read_redis_tls(f: &Field) -> Result<RedisTlsConfig> {
    let s = Section::new(f, REDIS_TLS_KEYS, &[("cafile", "cacertfile")])?;
    let verify = s.opt(
        "verify",
        |f| match f.value.as_str() {
            Some("peer") => Ok(VerifyMode::Peer),
            Some("none") => Ok(VerifyMode::None),
            _ => Err(f.expected("\"peer\" or \"none\"")),
        },
        VerifyMode::default,
    )?;
    let server_name = s.get("server_name")?.map(|f| tls_name(&f)).transpose()?;
    let sni = s.opt("sni", Field::boolean, || true)?;
    redis_tls_with_files(&s, server_name, sni, verify)
}

/// The settings of TLS to Redis with the files of `s` (`cacertfile`,
/// `certfile`, `keyfile`), whichever way the rest was written.
fn redis_tls_with_files(
    s: &Section,
    server_name: Option<String>,
    sni: bool,
    verify: VerifyMode,
) -> Result<RedisTlsConfig> {
    let file = |key: &str| s.get(key)?.map(|f| f.readable_file()).transpose();
    let tls = RedisTlsConfig {
        cacertfile: file("cacertfile")?,
        certfile: file("certfile")?,
        keyfile: file("keyfile")?,
        server_name,
        sni,
        verify,
    };
    if tls.keyfile.is_some() && tls.certfile.is_none() {
        let message = "given without certfile: a client key goes with its certificate";
        return Err(ConfigError::new(format!("{}.keyfile", s.path), message));
    }
    Ok(tls)
}

/// A name rustls can send as SNI and check the certificate against.
fn tls_name(f: &Field) -> Result<String> {
    let name = f.host()?;
    rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| f.err(format!("not a DNS name or IP address: {}", quote(&name))))?;
    Ok(name)
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
    redis.tls = c.get("tls")?.map(|f| read_pool_tls(&f)).transpose()?;
    redis.server = c.opt("host", Field::host, || redis.server.clone())?;
    redis.port = c.opt("port", |f| f.int(1, u64::from(u16::MAX)), || redis.port)?;
    redis.database = c.opt("database", database, || 0)?;
    redis.username = c.opt("username", owned_string, String::new)?;
    redis.password = c.opt("password", owned_string, String::new)?;
    Ok(())
}

/// `connection.tls` of a MongooseIM Redis pool: MongooseIM 6.8's
/// `tls([client])` (just_tls). What rustls can honour for a Redis client is
/// mapped onto `redis.tls`; what it cannot is refused rather than ignored,
/// because each of those keys narrows what is trusted.
const POOL_TLS_KEYS: &[&str] = &[
    "cacertfile",
    "certfile",
    "ciphers",
    "crl_files",
    "disconnect_on_failure",
    "keyfile",
    "password",
    "server_name_indication",
    "verify_mode",
    "versions",
];

fn read_pool_tls(f: &Field) -> Result<RedisTlsConfig> {
    let s = Section::new(f, POOL_TLS_KEYS, &[])?;
    for key in ["ciphers", "versions", "password"] {
        if let Some(f) = s.get(key)? {
            return Err(f.err(
                "not supported for TLS to Redis: remove it (rustls' defaults: TLS 1.2 and 1.3 \
                 with their strong suites; the key file must not be encrypted)",
            ));
        }
    }
    if let Some(f) = s.get("crl_files")? {
        if !f.list("a list of file names")?.is_empty() {
            return Err(f.err("not supported for TLS to Redis: leave it empty"));
        }
    }
    let mut verify = s.opt(
        "verify_mode",
        |f| match f.value.as_str() {
            Some("peer") => Ok(VerifyMode::Peer),
            Some("none") => Ok(VerifyMode::None),
            Some("selfsigned_peer") => Err(f.err(
                "selfsigned_peer is not supported for TLS to Redis: use peer with the server's \
                 certificate or its CA as cacertfile",
            )),
            _ => Err(f.expected("\"peer\" or \"none\"")),
        },
        VerifyMode::default,
    )?;
    // MongooseIM's verify_fun lets a failing server through when this is
    // false: here that is no verification.
    if !s.opt("disconnect_on_failure", Field::boolean, || true)? {
        verify = VerifyMode::None;
    }
    let (sni, server_name) = match s.get("server_name_indication")? {
        Some(f) => {
            let sni = Section::new(&f, &["enabled", "host", "protocol"], &[])?;
            (
                sni.opt("enabled", Field::boolean, || true)?,
                sni.get("host")?.map(|f| tls_name(&f)).transpose()?,
            )
        }
        None => (true, None),
    };
    redis_tls_with_files(&s, server_name, sni, verify)
}

struct RedisUrl {
    tls: bool,
    host: String,
    port: u16,
    username: String,
    password: String,
    database: u32,
}

/// `redis[s]://[[username]:password@]host[:port][/database]` (`rediss`:
/// TLS); the error says what is wrong.
fn parse_redis_url(url: &str) -> Result<RedisUrl, String> {
    let (tls, rest) = match (url.strip_prefix("redis://"), url.strip_prefix("rediss://")) {
        (Some(rest), _) => (false, rest),
        (None, Some(rest)) => (true, rest),
        (None, None) => return Err("the scheme must be redis:// or rediss://".to_owned()),
    };
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
        tls,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::config::test_support::error;

    use serde_json::json;

    use super::*;

    /// The parts of a URL as (host, port, username, password, database).
    fn url(text: &str) -> Result<(String, u16, String, String, u32), String> {
        parse_redis_url(text).map(|u| (u.host, u.port, u.username, u.password, u.database))
    }

    fn parts(
        host: &str,
        port: u16,
        user: &str,
        password: &str,
        db: u32,
    ) -> (String, u16, String, String, u32) {
        (host.into(), port, user.into(), password.into(), db)
    }

    #[test]
    fn a_url_gives_host_port_user_password_and_database() {
        assert_eq!(
            url("redis://user:secret@redis.example.com:6380/2"),
            Ok(parts("redis.example.com", 6380, "user", "secret", 2))
        );
        assert_eq!(
            url("redis://127.0.0.1"),
            Ok(parts("127.0.0.1", 6379, "", "", 0))
        );
        // A lone userinfo is the password, as redis-rs reads it.
        assert_eq!(
            url("redis://secret@h"),
            Ok(parts("h", 6379, "", "secret", 0))
        );
        assert_eq!(
            url("redis://:secret@h:1/"),
            Ok(parts("h", 1, "", "secret", 0))
        );
        assert_eq!(
            url("redis://[::1]:7000/3"),
            Ok(parts("::1", 7000, "", "", 3))
        );
        assert_eq!(url("redis://[::1]"), Ok(parts("::1", 6379, "", "", 0)));
    }

    #[test]
    fn a_url_user_and_password_are_percent_decoded() {
        // The last `@` ends the userinfo; `%40` is an `@`, `%3A` a `:`.
        assert_eq!(
            url("redis://us%3Aer:p%40ss@w:rd@h"),
            Ok(parts("h", 6379, "us:er", "p@ss@w:rd", 0))
        );
        assert_eq!(
            url("redis://:caf%C3%A9@h"),
            Ok(parts("h", 6379, "", "café", 0))
        );
    }

    #[test]
    fn a_bad_url_says_what_is_wrong() {
        let why = |text: &str| url(text).unwrap_err();
        assert_eq!(
            why("http://h:6379"),
            "the scheme must be redis:// or rediss://"
        );
        assert_eq!(why("h:6379"), "the scheme must be redis:// or rediss://");
        assert_eq!(why("redis://h:0"), r#"the port must be 1..65535, got "0""#);
        assert_eq!(
            why("redis://h:65536"),
            r#"the port must be 1..65535, got "65536""#
        );
        assert_eq!(why("redis://h:"), r#"the port must be 1..65535, got """#);
        assert_eq!(
            why("redis://h/db1"),
            r#"the database must be a number, got "db1""#
        );
        assert_eq!(why("redis://:pw@"), "the host is missing");
        assert_eq!(why("redis://[::1:6379"), "unclosed [ in the host");
        assert_eq!(
            why("redis://a{b}"),
            r#"the host must not contain '{' (reserved by the store's key layout), got "a{b}""#
        );
        assert_eq!(why("redis://:%zz@h"), "bad percent-escape at byte 0");
        assert_eq!(
            why("redis://:%ff@h"),
            "the user info is not UTF-8 once decoded"
        );
    }

    #[test]
    fn percent_decode_needs_two_hex_digits() {
        assert_eq!(percent_decode("a%20b%2fc").unwrap(), "a b/c");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        assert_eq!(
            percent_decode("ab%2").unwrap_err(),
            "bad percent-escape at byte 2"
        );
        assert_eq!(
            percent_decode("%").unwrap_err(),
            "bad percent-escape at byte 0"
        );
    }

    /// `read_redis` over a top-level section holding `redis` (if given),
    /// with the outgoing pools `pools`.
    fn redis(section: Option<Value>, pools: Value) -> Result<(RedisConfig, bool)> {
        let top = match section {
            Some(s) => json!({ "redis": s }),
            None => json!({}),
        };
        let s = Section::new(&Field::new("", &top), &["redis"], &[])?;
        let pools = pools.as_object().cloned().unwrap_or_default();
        read_redis(&s, &pools)
    }

    #[test]
    fn redis_defaults_apply_and_say_redis_was_not_configured() {
        let (read, given) = redis(None, json!({})).unwrap();
        assert!(!given);
        assert_eq!(
            (read.server.as_str(), read.port, read.pool_size),
            (
                defaults::REDIS_SERVER,
                defaults::REDIS_PORT,
                defaults::REDIS_POOL_SIZE
            )
        );
        assert_eq!(read.url, None);
    }

    #[test]
    fn a_redis_url_sets_the_address_and_excludes_its_parts() {
        let (read, given) =
            redis(Some(json!({"url": "redis://u:p@r1:7000/1"})), json!({})).unwrap();
        assert!(given);
        assert_eq!(
            (
                read.server.as_str(),
                read.port,
                read.username.as_str(),
                read.password.as_str(),
                read.database
            ),
            ("r1", 7000, "u", "p", 1)
        );
        assert_eq!(read.url.as_deref(), Some("redis://u:p@r1:7000/1"));
        assert_eq!(
            error(redis(Some(json!({"url": "redis://r1", "port": 7000})), json!({}))),
            "redis.url: conflicts with redis.port; give either a URL or server/port/username/password/database"
        );
        assert_eq!(
            error(redis(Some(json!({"url": "redis://r1:x"})), json!({}))),
            r#"redis.url: expected redis[s]://[[username]:password@]host[:port][/database], got "redis://r1:x" (the port must be 1..65535, got "x")"#
        );
    }

    #[test]
    fn rediss_and_the_tls_section_turn_tls_on() {
        let (plain, _) = redis(Some(json!({"url": "redis://r1"})), json!({})).unwrap();
        assert_eq!(plain.tls, None);
        let (read, _) = redis(Some(json!({"url": "rediss://u:p@r1:6380/2"})), json!({})).unwrap();
        assert_eq!((read.server.as_str(), read.port), ("r1", 6380));
        assert_eq!(read.tls, Some(RedisTlsConfig::default()));
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca_path = ca.path().to_str().unwrap();
        let section = json!({"url": "rediss://r1",
                             "tls": {"cacertfile": ca_path, "server_name": "redis.example.com",
                                     "verify": "none"}});
        let tls = redis(Some(section), json!({})).unwrap().0.tls.unwrap();
        assert_eq!(tls.cacertfile.as_deref(), Some(ca.path()));
        assert_eq!(tls.server_name.as_deref(), Some("redis.example.com"));
        assert_eq!(tls.verify, VerifyMode::None);
        // Without a URL, the section alone turns TLS on.
        let (read, _) = redis(Some(json!({"server": "r1", "tls": {}})), json!({})).unwrap();
        assert_eq!(read.tls, Some(RedisTlsConfig::default()));
        assert_eq!(
            error(redis(
                Some(json!({"url": "redis://r1", "tls": {}})),
                json!({})
            )),
            "redis.tls: given with a redis:// URL; use rediss:// for TLS (or leave redis.tls out)"
        );
        assert_eq!(
            error(redis(
                Some(json!({"tls": {"verify": "selfsigned_peer"}})),
                json!({})
            )),
            r#"redis.tls.verify: expected "peer" or "none", got "selfsigned_peer""#
        );
        assert_eq!(
            error(redis(Some(json!({"tls": {"keyfile": ca_path}})), json!({}))),
            "redis.tls.keyfile: given without certfile: a client key goes with its certificate"
        );
        assert!(error(redis(
            Some(json!({"tls": {"certfile": "/nonexistent.pem"}})),
            json!({})
        ))
        .starts_with(r#"redis.tls.certfile: cannot read "/nonexistent.pem""#));
    }

    #[test]
    fn redis_refresh_must_come_before_expiry_and_a_user_needs_a_password() {
        assert_eq!(
            error(redis(
                Some(json!({"expire_after": 10, "refresh_after": 10})),
                json!({})
            )),
            "redis.refresh_after: must be less than redis.expire_after (10), got 10: \
             keys would expire before this node rewrites them"
        );
        assert_eq!(
            error(redis(Some(json!({"username": "gd"})), json!({}))),
            r#"redis.username: "gd" is given without a password: Redis authenticates a user with AUTH <username> <password>"#
        );
    }

    #[test]
    fn the_named_pool_gives_the_address_with_mongooseim_defaults() {
        let pools = json!({"global_distrib": {"workers": 4, "connection": {"database": 2}}});
        let (read, given) = redis(None, pools).unwrap();
        assert!(given);
        assert_eq!(
            (
                read.server.as_str(),
                read.port,
                read.database,
                read.pool_size
            ),
            ("127.0.0.1", 6379, 2, 4)
        );
        // Options of the section override the pool's.
        let pools = json!({"other": {"connection": {"host": "r2", "port": 7001}}});
        let (read, _) = redis(Some(json!({"pool": "other", "port": 7002})), pools).unwrap();
        assert_eq!((read.server.as_str(), read.port), ("r2", 7002));
        assert_eq!(
            error(redis(Some(json!({"pool": "missing"})), json!({}))),
            r#"redis.pool: names the outgoing pool "missing", but the document has no [outgoing_pools.redis.missing]"#
        );
    }

    #[test]
    fn a_processed_pool_is_read_with_its_tls_mapped() {
        let mut redis = redis(None, json!({})).unwrap().0;
        let pool = json!({
            "type": "redis", "scope": "global", "tag": "global_distrib",
            "opts": {"workers": 8, "strategy": "best_worker"},
            "conn_opts": {"host": "r3", "port": 6380, "username": "u", "password": "p"},
        });
        read_mongooseim_pool(
            &Field::new("outgoing_pools.redis.global_distrib", &pool),
            &mut redis,
        )
        .unwrap();
        assert_eq!(
            (
                redis.server.as_str(),
                redis.port,
                redis.pool_size,
                redis.username.as_str()
            ),
            ("r3", 6380, 8, "u")
        );
        let pool = json!({"type": "rdbms", "tag": "global_distrib"});
        assert_eq!(
            error(read_mongooseim_pool(&Field::new("p", &pool), &mut redis)),
            r#"p.type: expected "redis", got "rdbms""#
        );
        // MongooseIM's processed `tls([client])` defaults pass unchanged.
        let ca = tempfile::NamedTempFile::new().unwrap();
        let ca_path = ca.path().to_str().unwrap();
        let pool = json!({"conn_opts": {"tls": {
            "verify_mode": "peer", "disconnect_on_failure": true, "crl_files": [],
            "cacertfile": ca_path,
            "server_name_indication": {"enabled": true, "protocol": "default",
                                       "host": "redis.example.com"}}}});
        read_mongooseim_pool(&Field::new("p", &pool), &mut redis).unwrap();
        let tls = redis.tls.clone().unwrap();
        assert_eq!(tls.cacertfile.as_deref(), Some(ca.path()));
        assert_eq!(tls.server_name.as_deref(), Some("redis.example.com"));
        assert_eq!((tls.verify, tls.sni), (VerifyMode::Peer, true));
        let pool = json!({"connection": {"tls": {"disconnect_on_failure": false,
                                                 "server_name_indication": {"enabled": false}}}});
        read_mongooseim_pool(&Field::new("p", &pool), &mut redis).unwrap();
        let tls = redis.tls.clone().unwrap();
        assert_eq!((tls.verify, tls.sni), (VerifyMode::None, false));
        let refused = |tls: Value| {
            let pool = json!({"connection": {"tls": tls}});
            error(read_mongooseim_pool(
                &Field::new("p", &pool),
                &mut redis.clone(),
            ))
        };
        assert!(refused(json!({"versions": ["tlsv1.3"]}))
            .starts_with("p.connection.tls.versions: not supported for TLS to Redis"));
        assert!(refused(json!({"password": "x"}))
            .starts_with("p.connection.tls.password: not supported for TLS to Redis"));
        assert_eq!(
            refused(json!({"crl_files": [ca_path]})),
            "p.connection.tls.crl_files: not supported for TLS to Redis: leave it empty"
        );
        assert!(refused(json!({"verify_mode": "selfsigned_peer"}))
            .starts_with("p.connection.tls.verify_mode: selfsigned_peer is not supported"));
    }

    #[test]
    fn pools_are_found_by_tag_in_mongooseim_s_processed_list() {
        let pools = json!([
            {"type": "rdbms", "tag": "default"},
            {"type": "redis", "tag": "global_distrib", "conn_opts": {}},
        ]);
        let by_tag = redis_pools(&Field::new("outgoing_pools", &pools)).unwrap();
        assert_eq!(by_tag.keys().collect::<Vec<_>>(), ["global_distrib"]);
        let pools = json!([{"type": "redis"}]);
        assert_eq!(
            error(redis_pools(&Field::new("outgoing_pools", &pools))),
            "outgoing_pools[0].tag: required option missing"
        );
        let pools = json!({"redis": {"gd": {"workers": 1}}, "rdbms": {}});
        let by_tag = redis_pools(&Field::new("outgoing_pools", &pools)).unwrap();
        assert_eq!(by_tag.keys().collect::<Vec<_>>(), ["gd"]);
    }
}
