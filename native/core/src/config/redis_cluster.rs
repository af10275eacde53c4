//! Reading `redis.cluster`: the seed nodes of a Redis Cluster, as
//! `redis://host[:port]` URLs. The client learns every other node (and the
//! slot map) from them, so a few are enough.
//!
//! A cluster replaces the single-server address: it cannot be combined with
//! `redis.url`, `redis.server` or `redis.port` in the same section, and
//! Redis Cluster has only database 0. The credentials stay where they are
//! for a single server (`redis.username`/`redis.password`, or MongooseIM's
//! pool) and apply to every node, so the seed URLs carry no user info.
//! `read_redis` (in `redis`) calls this file for the `cluster` option.

use crate::config::field::{Field, Section};
use crate::config::host::check_host;
use crate::config::{quote, ConfigError, RedisConfig, Result};

/// Options of the same section that name a single server.
const SINGLE_SERVER_KEYS: &[&str] = &["url", "server", "port"];

/// The seed nodes, each normalised to `redis://host:port`.
pub(super) fn read_seeds(f: &Field, section: &Section) -> Result<Vec<String>> {
    if let Some(other) = SINGLE_SERVER_KEYS.iter().find(|k| section.has(k)) {
        return Err(f.err(format!(
            "conflicts with redis.{other}; give either Redis Cluster seed nodes or one server (url or server/port)"
        )));
    }
    let items = f.list("a list of redis://host:port URLs")?;
    if items.is_empty() {
        return Err(f.err("must name at least one seed node (redis://host:port)"));
    }
    let mut seeds: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let entry = f.index(i, item);
        let seed = seed(entry.string()?).map_err(|why| entry.err(why))?;
        if seeds.contains(&seed) {
            return Err(entry.err(format!("{} is given twice", quote(&seed))));
        }
        seeds.push(seed);
    }
    Ok(seeds)
}

/// One seed URL: `redis://host[:port]`, nothing else (the host as in
/// `redis.server`, an IPv6 address in brackets).
fn seed(url: &str) -> std::result::Result<String, String> {
    let expected = || format!("expected redis://host[:port], got {}", quote(url));
    let Some(authority) = url.strip_prefix("redis://") else {
        return Err(format!("{} (the scheme must be redis://)", expected()));
    };
    if authority.contains('@') {
        return Err(format!(
            "{}: give the credentials in redis.username/redis.password, they apply to every node",
            expected()
        ));
    }
    if authority.contains('/') {
        return Err(format!("{}: Redis Cluster has only database 0", expected()));
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((host, rest)) => (host, rest.strip_prefix(':')),
            None => return Err(format!("{} (unclosed [ in the host)", expected())),
        },
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err(format!("{} (the host is missing)", expected()));
    }
    if let Some(bad) = check_host(host) {
        return Err(format!("{} (the host {bad})", expected()));
    }
    let port = match port.map(str::parse::<u16>) {
        None => 6379,
        Some(Ok(port)) if port > 0 => port,
        Some(_) => return Err(format!("{} (the port must be 1..65535)", expected())),
    };
    Ok(match host.contains(':') {
        true => format!("redis://[{host}]:{port}"),
        false => format!("redis://{host}:{port}"),
    })
}

/// With seed nodes, the database (from the section or the pool) must be
/// 0, and TLS is not available yet (the cluster client dials its nodes
/// itself, in plain TCP).
pub(super) fn check_cluster(redis: &RedisConfig) -> Result<()> {
    if !redis.cluster.is_empty() && redis.tls.is_some() {
        return Err(ConfigError::new(
            "redis.cluster",
            "TLS to a Redis Cluster is not supported yet, but TLS is configured (redis.tls, \
             a rediss:// URL or the pool's connection.tls): reach the cluster in plain TCP, \
             or use TLS to a single server or a proxy",
        ));
    }
    if redis.cluster.is_empty() || redis.database == 0 {
        return Ok(());
    }
    Err(ConfigError::new(
        "redis.cluster",
        format!(
            "Redis Cluster has only database 0, but database {} is configured \
             (redis.database or the pool's connection.database)",
            redis.database
        ),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::{json, Value};

    use super::*;

    fn seeds(section: Value) -> Result<Vec<String>> {
        let field = Field::new("redis", &section);
        let s = Section::new(&field, &["cluster", "url", "server", "port"], &[])?;
        let f = s.get("cluster")?.expect("cluster given");
        read_seeds(&f, &s)
    }

    fn error(section: Value) -> String {
        seeds(section).unwrap_err().to_string()
    }

    #[test]
    fn seeds_are_normalised_urls() {
        assert_eq!(
            seeds(json!({"cluster": ["redis://r1:7000", "redis://r2", "redis://[::1]:7001"]}))
                .unwrap(),
            ["redis://r1:7000", "redis://r2:6379", "redis://[::1]:7001"]
        );
    }

    #[test]
    fn a_cluster_excludes_a_single_server() {
        for other in ["url", "server", "port"] {
            let mut section = json!({"cluster": ["redis://r1:7000"]});
            section[other] = match other {
                "port" => json!(7000),
                "url" => json!("redis://r1:7000"),
                _ => json!("r1"),
            };
            assert_eq!(
                error(section),
                format!(
                    "redis.cluster: conflicts with redis.{other}; give either Redis Cluster \
                     seed nodes or one server (url or server/port)"
                )
            );
        }
    }

    #[test]
    fn bad_seeds_say_what_is_wrong() {
        assert_eq!(
            error(json!({"cluster": []})),
            "redis.cluster: must name at least one seed node (redis://host:port)"
        );
        assert_eq!(
            error(json!({"cluster": "redis://r1:7000"})),
            r#"redis.cluster: expected a list of redis://host:port URLs, got "redis://r1:7000""#
        );
        assert_eq!(
            error(json!({"cluster": ["r1:7000"]})),
            r#"redis.cluster[0]: expected redis://host[:port], got "r1:7000" (the scheme must be redis://)"#
        );
        assert_eq!(
            error(json!({"cluster": ["redis://r1:0"]})),
            r#"redis.cluster[0]: expected redis://host[:port], got "redis://r1:0" (the port must be 1..65535)"#
        );
        assert_eq!(
            error(json!({"cluster": ["redis://:7000"]})),
            r#"redis.cluster[0]: expected redis://host[:port], got "redis://:7000" (the host is missing)"#
        );
        assert_eq!(
            error(json!({"cluster": ["redis://:pw@r1:7000"]})),
            r#"redis.cluster[0]: expected redis://host[:port], got "redis://:pw@r1:7000": give the credentials in redis.username/redis.password, they apply to every node"#
        );
        assert_eq!(
            error(json!({"cluster": ["redis://r1:7000/0"]})),
            r#"redis.cluster[0]: expected redis://host[:port], got "redis://r1:7000/0": Redis Cluster has only database 0"#
        );
        assert_eq!(
            error(json!({"cluster": ["redis://r1:7000", "redis://r1:7000"]})),
            r#"redis.cluster[1]: "redis://r1:7000" is given twice"#
        );
    }
}
