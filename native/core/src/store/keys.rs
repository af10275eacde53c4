//! Key layout of the session table (SPEC 3), byte for byte MongooseIM's, so
//! both implementations can share one database and operators can inspect it
//! with the same tools.
//!
//! Mapping keys (JIDs, subdomains) are the strings themselves. Per-node keys
//! end in a `{…}` hash tag so that every key of one kind lands on one slot of
//! Redis Cluster and on one server behind a proxy configured with
//! `hash_tag: "{}"`; that is also why host and node names must not contain
//! braces (see [`check_name`]).

use super::StoreError;

/// Set of every local_host that has ever refreshed.
pub const HOSTS: &str = "hosts";

/// Key read by health checks: proxies answer `PING` themselves, a `GET`
/// has to reach a real server. Nobody ever writes it.
pub const HEALTH_SENTINEL: &str = "global_distrib#health";

/// Rejects names that would break the key layout: empty ones and ones
/// containing the hash-tag braces.
pub fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::Config(format!("{what}: must not be empty")));
    }
    if name.contains(['{', '}']) {
        return Err(StoreError::Config(format!(
            "{what}: {name:?} contains '{{' or '}}', which are reserved for Redis hash tags in store keys"
        )));
    }
    Ok(())
}

/// `<local_host>#<node>#{domains}`: subdomains registered by that node.
pub fn domains(local_host: &str, node: &str) -> String {
    format!("{local_host}#{node}#{{domains}}")
}

/// `<local_host>#<node>#{public_domains}`: the non-hidden ones.
pub fn public_domains(local_host: &str, node: &str) -> String {
    format!("{local_host}#{node}#{{public_domains}}")
}

/// `<local_host>#<node>#{endpoints}`: advertised endpoints as `addr#port`.
pub fn endpoints(local_host: &str, node: &str) -> String {
    format!("{local_host}#{node}#{{endpoints}}")
}

/// `<local_host>#<node>#{sessions}`: in lease mode, the session keys
/// (full and bare JIDs) that node wrote, so that a survivor can delete them
/// when the node dies, without `KEYS`/`SCAN`.
pub fn sessions(local_host: &str, node: &str) -> String {
    format!("{local_host}#{node}#{{sessions}}")
}

/// The value of a session key in lease mode: `<local_host>{<node>}`. Neither
/// name may contain a brace ([`check_name`]), so the first `{` ends the host
/// and the value cannot be mistaken for a plain local_host.
pub fn lease_value(local_host: &str, node: &str) -> String {
    format!("{local_host}{{{node}}}")
}

/// A mapping value: the owning local_host and, for a lease-mode value
/// (`<local_host>{<node>}`), the node whose lease keeps it alive. A plain
/// value (per_key mode, domains, MongooseIM) has no node.
pub fn parse_owner(value: &str) -> (&str, Option<&str>) {
    match value
        .strip_suffix('}')
        .and_then(|v| v.split_once('{'))
        .filter(|(host, node)| !host.is_empty() && !node.is_empty())
    {
        Some((host, node)) => (host, Some(node)),
        None => (value, None),
    }
}

/// `<local_host>#{nodes}`: hash node → unix seconds of its last refresh.
pub fn nodes(local_host: &str) -> String {
    format!("{local_host}#{{nodes}}")
}

/// Member of an endpoints set: `addr#port`, the address as text (an IPv6
/// address keeps its colons, hence parsing splits at the last `#`).
pub fn endpoint_member(addr: &str, port: u16) -> String {
    format!("{addr}#{port}")
}

/// Inverse of [`endpoint_member`]; `None` for a malformed member.
pub fn parse_endpoint_member(member: &str) -> Option<(String, u16)> {
    let (addr, port) = member.rsplit_once('#')?;
    if addr.is_empty() {
        return None;
    }
    Some((addr.to_owned(), port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_mongooseim() {
        assert_eq!(
            domains("dc1.example.com", "mongoose1@dc1"),
            "dc1.example.com#mongoose1@dc1#{domains}"
        );
        assert_eq!(public_domains("dc1", "n1"), "dc1#n1#{public_domains}");
        assert_eq!(endpoints("dc1", "n1"), "dc1#n1#{endpoints}");
        assert_eq!(nodes("dc2.example.com"), "dc2.example.com#{nodes}");
    }

    #[test]
    fn endpoint_members_round_trip_ipv6() {
        let m = endpoint_member("2001:db8::1", 8882);
        assert_eq!(m, "2001:db8::1#8882");
        assert_eq!(
            parse_endpoint_member(&m),
            Some(("2001:db8::1".to_owned(), 8882))
        );
        assert_eq!(
            parse_endpoint_member("a#b#5555"),
            Some(("a#b".into(), 5555))
        );
        assert_eq!(parse_endpoint_member("nohash"), None);
        assert_eq!(parse_endpoint_member("h#notaport"), None);
    }

    #[test]
    fn lease_values_round_trip() {
        let v = lease_value("dc1.example.com", "mongoose1@dc1");
        assert_eq!(v, "dc1.example.com{mongoose1@dc1}");
        assert_eq!(parse_owner(&v), ("dc1.example.com", Some("mongoose1@dc1")));
        assert_eq!(parse_owner("dc1.example.com"), ("dc1.example.com", None));
        assert_eq!(parse_owner("{n}"), ("{n}", None));
        assert_eq!(parse_owner("h{}"), ("h{}", None));
        assert_eq!(sessions("dc1", "n1"), "dc1#n1#{sessions}");
    }

    #[test]
    fn names_with_braces_are_rejected() {
        assert!(check_name("local_host", "dc1.example.com").is_ok());
        assert!(check_name("node", "n{1}").is_err());
        assert!(check_name("node", "n}").is_err());
        assert!(check_name("node", "").is_err());
    }
}
