//! Host-name rules: what any host option may hold (`check_host`) and the
//! stricter DNS-name check a datacenter's own name must pass, since other
//! datacenters apply it on the wire (`valid_host_name`).

use crate::config::{quote, MAX_WIRE_STRING_LEN};

/// Longest host name accepted (bytes); XMPP domain parts are at most 1023 bytes.
const MAX_HOST_LEN: usize = 1023;
// Host names travel in frames (handshakes, origins, targets): they must fit.
const _: () = assert!(MAX_HOST_LEN <= MAX_WIRE_STRING_LEN);

/// Longest DNS name, in bytes (RFC 1035, without the final dot).
pub(super) const MAX_DNS_NAME: usize = 253;
/// Longest DNS label, in bytes.
pub(super) const MAX_DNS_LABEL: usize = 63;

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

/// Why `host` is not an acceptable host name, if it is not.
pub(super) fn check_host(host: &str) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dns_name_is_at_most_253_bytes_with_labels_of_1_to_63() {
        // 4 labels of 62 bytes and one of 1 byte, with 4 dots: 253 bytes.
        let label = "a".repeat(62);
        let name = format!("{label}.{label}.{label}.{label}.b");
        assert_eq!(name.len(), 253);
        assert!(valid_host_name(&name));
        assert!(!valid_host_name(&format!("{name}c")));
        assert!(valid_host_name(&"x".repeat(63)));
        assert!(!valid_host_name(&"x".repeat(64)));
        // A fully qualified name with its final dot has an empty last label.
        assert!(!valid_host_name("dc1.example.com."));
    }

    #[test]
    fn a_dns_name_refuses_delimiters_and_blanks_anywhere() {
        for c in ['{', '}', '#', '@', '/', ' ', '\t', '\u{7f}', '\u{a0}'] {
            let name = format!("dc{c}1.example.com");
            assert!(!valid_host_name(&name), "{name:?}");
        }
        // Characters outside the delimiters stay allowed: XMPP domains are
        // not restricted to letters, digits and hyphens.
        assert!(valid_host_name("dc_1.example.com"));
        assert!(valid_host_name("xn--exmple-cua.com"));
        assert!(valid_host_name("192.0.2.1"));
    }

    #[test]
    fn check_host_accepts_names_up_to_1023_bytes() {
        assert_eq!(check_host("dc1.example.com"), None);
        // Longer than a DNS name allows, still a host option (an XMPP domain).
        let long = "a".repeat(MAX_HOST_LEN);
        assert_eq!(check_host(&long), None);
        assert!(!valid_host_name(&long));
        assert_eq!(
            check_host(&format!("{long}a")).as_deref(),
            Some("is 1024 bytes long, at most 1023 allowed")
        );
    }

    #[test]
    fn check_host_says_what_is_wrong() {
        assert_eq!(check_host("").as_deref(), Some("must not be empty"));
        assert_eq!(
            check_host("dc 1").as_deref(),
            Some(r#"must not contain whitespace or control characters, got "dc 1""#)
        );
        assert_eq!(
            check_host("dc\u{1}").as_deref(),
            Some(r#"must not contain whitespace or control characters, got "dc\u0001""#)
        );
        assert_eq!(
            check_host("dc#1").as_deref(),
            Some(r#"must not contain '#' (reserved by the store's key layout), got "dc#1""#)
        );
        assert_eq!(
            check_host("user@dc1").as_deref(),
            Some(r#"must not contain '@' (a JID separator), got "user@dc1""#)
        );
        // Dots are not checked here: `a..b` is refused only as a DC name.
        assert_eq!(check_host("a..b"), None);
    }
}
