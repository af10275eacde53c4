//! Reading `connections.tls`: MongooseIM 6.8's TLS options, kept when they
//! mean something to rustls (files, verify mode, versions, cipher suites,
//! SNI), checked and dropped otherwise.

use std::path::PathBuf;

use serde_json::Value;

use crate::config::field::{join, Field, Section};
use crate::config::{quote, ConfigError, Result, SniConfig, TlsConfig, VerifyMode};

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

pub(super) fn read_tls(f: &Field) -> Result<Option<TlsConfig>> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use crate::config::test_support::error;

    use serde_json::json;

    use super::*;

    /// A file that exists and can be read: the TLS readers check that much,
    /// not the PEM content.
    const READABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    fn tls(value: Value) -> Result<Option<TlsConfig>> {
        read_tls(&Field::new("connections.tls", &value))
    }

    #[test]
    fn tls_is_off_when_false_or_not_enabled() {
        assert_eq!(tls(json!(false)).unwrap(), None);
        assert_eq!(tls(json!({"enabled": false})).unwrap(), None);
    }

    #[test]
    fn tls_reads_files_and_keeps_mongooseim_defaults() {
        let read = tls(json!({"certfile": READABLE, "cafile": READABLE}))
            .unwrap()
            .unwrap();
        assert_eq!(
            read,
            TlsConfig {
                certfile: READABLE.into(),
                cacertfile: Some(READABLE.into()),
                ..TlsConfig::default()
            }
        );
    }

    #[test]
    fn verify_mode_peer_needs_a_ca_bundle() {
        assert_eq!(
            error(tls(json!({"certfile": READABLE}))),
            "connections.tls.cacertfile: required option missing (verify_mode = peer verifies \
             peers against it; MongooseIM's fallback to the system CAs is not offered)"
        );
        let read = tls(json!({"certfile": READABLE, "verify_mode": "selfsigned_peer"}))
            .unwrap()
            .unwrap();
        assert_eq!(read.verify_mode, VerifyMode::SelfsignedPeer);
        assert_eq!(read.cacertfile, None);
        assert_eq!(
            error(tls(json!({"certfile": READABLE, "verify_mode": "strict"}))),
            r#"connections.tls.verify_mode: expected "peer", "selfsigned_peer" or "none", got "strict""#
        );
    }

    #[test]
    fn keys_without_meaning_for_rustls_are_still_type_checked() {
        let base = |key: &str, value: Value| {
            let mut v = json!({"certfile": READABLE, "verify_mode": "none"});
            v[key] = value;
            tls(v)
        };
        assert!(base("dhfile", json!("/any/path")).is_ok());
        assert!(base("early_data", json!(true)).is_ok());
        assert!(base("session_tickets", json!("stateless")).is_ok());
        assert_eq!(
            error(base("session_tickets", json!("stateful"))),
            r#"connections.tls.session_tickets: expected "stateless", got "stateful""#
        );
        assert_eq!(
            error(base("early_data", json!("yes"))),
            r#"connections.tls.early_data: expected true or false, got "yes""#
        );
    }

    #[test]
    fn versions_are_deduplicated_and_limited_to_what_rustls_implements() {
        let read = |v: Value| read_versions(&Field::new("connections.tls.versions", &v));
        assert_eq!(
            read(json!(["tlsv1.3", "tlsv1.2", "tlsv1.3"])).unwrap(),
            ["tlsv1.3", "tlsv1.2"]
        );
        assert_eq!(
            error(read(json!([]))),
            "connections.tls.versions: must name at least one version \
             (leave it out for tlsv1.2 and tlsv1.3)"
        );
        assert_eq!(
            error(read(json!(["tlsv1.2", "tlsv1.1"]))),
            r#"connections.tls.versions[1]: unsupported TLS version "tlsv1.1" (rustls implements only: tlsv1.2, tlsv1.3)"#
        );
    }

    #[test]
    fn ciphers_take_rustls_or_openssl_names() {
        let read = |v: Value| read_ciphers(&Field::new("connections.tls.ciphers", &v));
        assert_eq!(
            read(json!(
                "ECDHE-RSA-AES128-GCM-SHA256: TLS_AES_256_GCM_SHA384:"
            ))
            .unwrap(),
            [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384"
            ]
        );
        assert_eq!(
            read(json!(["TLS13_CHACHA20_POLY1305_SHA256"])).unwrap(),
            ["TLS13_CHACHA20_POLY1305_SHA256"]
        );
        assert_eq!(
            error(read(json!(":"))),
            "connections.tls.ciphers: must name at least one cipher suite"
        );
        let message = error(read(json!(["TLS13_AES_128_GCM_SHA256", "RC4-SHA"])));
        assert!(
            message.starts_with(
                r#"connections.tls.ciphers[1]: unknown cipher suite "RC4-SHA" (expected one of: TLS13_AES_256_GCM_SHA384, "#
            ),
            "{message}"
        );
        assert_eq!(
            error(read(json!(7))),
            "connections.tls.ciphers: expected a list of cipher suite names, got 7"
        );
    }

    #[test]
    fn sni_defaults_and_checks_its_host_and_protocol() {
        let read = |v: Value| read_sni(&Field::new("connections.tls.server_name_indication", &v));
        assert_eq!(read(json!({})).unwrap(), SniConfig::default());
        let sni =
            read(json!({"enabled": false, "host": "dc.example.com", "protocol": "https"})).unwrap();
        assert_eq!(
            sni,
            SniConfig {
                enabled: false,
                host: Some("dc.example.com".into()),
                protocol: "https".into(),
            }
        );
        assert_eq!(
            error(read(json!({"host": "a..b"}))),
            r#"connections.tls.server_name_indication.host: not a DNS name or IP address: "a..b""#
        );
        assert_eq!(
            error(read(json!({"protocol": "http"}))),
            r#"connections.tls.server_name_indication.protocol: expected "default" or "https", got "http""#
        );
    }

    #[test]
    fn crl_files_must_each_be_readable() {
        let read = |v: Value| read_files(&Field::new("connections.tls.crl_files", &v));
        assert_eq!(read(json!([READABLE])).unwrap(), [PathBuf::from(READABLE)]);
        let message = error(read(json!([READABLE, "/nonexistent/crl.pem"])));
        assert!(
            message.starts_with(
                r#"connections.tls.crl_files[1]: cannot read "/nonexistent/crl.pem": "#
            ),
            "{message}"
        );
    }
}
