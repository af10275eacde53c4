//! Mutual TLS between datacenters, built once from `connections.tls`.
//!
//! Both sides of an inter-DC link present a certificate and verify the other
//! against the configured CA bundle, so a plain-TCP peer or one certified by a
//! foreign CA never gets past the handshake. The connecting side also checks
//! that the server certificate names the DC it meant to reach (its
//! `local_host`, carried as a DNS SAN): a valid certificate of another DC must
//! not be able to answer for this one. The ring provider is passed explicitly
//! because the host process (an Erlang VM, a C program) may have installed a
//! different process-wide default, or none.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig, SupportedProtocolVersion};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsConfig;

/// Why the TLS configuration could not be turned into a working setup.
/// Each message names the option, the file and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("connections.tls.{option}: {}: cannot read: {source}", path.display())]
    Read {
        option: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("connections.tls.{option}: {}: malformed PEM: {source}", path.display())]
    Pem {
        option: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "connections.tls.{option}: {}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)",
        path.display()
    )]
    NoCertificate { option: &'static str, path: PathBuf },
    #[error(
        "connections.tls.{option}: {}: no private key found (expected a PEM PKCS#8, PKCS#1/RSA or SEC1 key{})",
        path.display(),
        if *option == "certfile" { "; keyfile is not set, so the key must be in certfile" } else { "" }
    )]
    NoKey { option: &'static str, path: PathBuf },
    #[error("connections.tls.cacertfile: {}: unusable CA certificate: {source}", path.display())]
    BadCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "connections.tls: certificate {} and key {} cannot be used together: {source}",
        certfile.display(),
        keyfile.display()
    )]
    CertKey {
        certfile: PathBuf,
        keyfile: PathBuf,
        source: rustls::Error,
    },
    #[error("connections.tls.ciphers: unknown cipher suite(s) {unknown:?}; known: {known:?}")]
    UnknownCiphers {
        unknown: Vec<String>,
        known: Vec<String>,
    },
    #[error(
        "connections.tls.ciphers: no cipher suite selected; leave the option out for the defaults"
    )]
    NoCiphers,
    #[error("connections.tls.cacertfile: {}: cannot verify clients: {reason}", path.display())]
    Verifier { path: PathBuf, reason: String },
    #[error("connections.tls: {0}")]
    Protocol(rustls::Error),
    #[error("TLS server name {host:?} (a DC local_host) is not a valid DNS name or IP address")]
    ServerName { host: String },
}

/// Server and client TLS configurations sharing one certificate, key and CA.
#[derive(Clone)]
pub struct TlsSetup {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The configs hold the private key; never print them.
        f.debug_struct("TlsSetup").finish_non_exhaustive()
    }
}

impl TlsSetup {
    /// Loads the files named by `cfg` and builds both sides of mutual TLS.
    pub fn from_config(cfg: &TlsConfig) -> Result<TlsSetup, TlsError> {
        let chain = load_certs("certfile", &cfg.certfile)?;
        let key = match &cfg.keyfile {
            Some(path) => load_key("keyfile", path)?,
            None => load_key("certfile", &cfg.certfile)?,
        };
        let roots = Arc::new(load_roots(&cfg.cacertfile)?);
        let provider = Arc::new(provider(cfg.ciphers.as_deref())?);
        let versions = versions_of(&provider);
        let keyfile = cfg.keyfile.as_ref().unwrap_or(&cfg.certfile);
        let cert_key_error = |source| TlsError::CertKey {
            certfile: cfg.certfile.clone(),
            keyfile: keyfile.clone(),
            source,
        };

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier {
                path: cfg.cacertfile.clone(),
                reason: e.to_string(),
            })?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(TlsError::Protocol)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(cert_key_error)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(TlsError::Protocol)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(cert_key_error)?;
        Ok(TlsSetup {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    /// Accepts incoming inter-DC connections; demands a client certificate.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.clone())
    }

    /// Opens outgoing inter-DC connections; pass [`TlsSetup::server_name`]
    /// of the remote DC so its certificate is checked against that name.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.client.clone())
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }
}

/// The name a remote DC's certificate must carry: its `local_host`.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned()).map_err(|_| TlsError::ServerName {
        host: host.to_owned(),
    })
}

/// DNS names (SANs) of the peer's verified end-entity certificate; empty
/// before the handshake or when the peer sent none. On the listener side this
/// tells which DC connected. Pass `stream.get_ref().1` of a tokio-rustls stream.
pub fn peer_dns_names(conn: &CommonState) -> Vec<String> {
    conn.peer_certificates()
        .and_then(|chain| chain.first())
        .map(cert_dns_names)
        .unwrap_or_default()
}

/// DNS names in the subjectAltName extension of a DER certificate; empty if
/// the certificate has none or cannot be parsed.
pub fn cert_dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    der::dns_names(cert.as_ref()).unwrap_or_default()
}

fn open(option: &'static str, path: &Path) -> Result<BufReader<File>, TlsError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| TlsError::Read {
            option,
            path: path.to_owned(),
            source,
        })
}

fn load_certs(option: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut open(option, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            option,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            option,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn load_key(option: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut open(option, path)?)
        .map_err(|source| TlsError::Pem {
            option,
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey {
            option,
            path: path.to_owned(),
        })
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("cacertfile", path)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The ring provider, narrowed to the named suites when `ciphers` is set.
fn provider(ciphers: Option<&[String]>) -> Result<CryptoProvider, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    let Some(names) = ciphers else {
        return Ok(provider);
    };
    let name_of = |s: &rustls::SupportedCipherSuite| s.suite().as_str().unwrap_or("").to_owned();
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !provider.cipher_suites.iter().any(|s| name_of(s) == **n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        let known = provider.cipher_suites.iter().map(name_of).collect();
        return Err(TlsError::UnknownCiphers { unknown, known });
    }
    provider
        .cipher_suites
        .retain(|s| names.iter().any(|n| *n == name_of(s)));
    if provider.cipher_suites.is_empty() {
        return Err(TlsError::NoCiphers);
    }
    Ok(provider)
}

/// Only the protocol versions some selected suite can serve: offering TLS 1.3
/// with no TLS 1.3 suite would fail the handshake instead of falling back.
fn versions_of(provider: &CryptoProvider) -> Vec<&'static SupportedProtocolVersion> {
    rustls::DEFAULT_VERSIONS
        .iter()
        .copied()
        .filter(|v| provider.cipher_suites.iter().any(|s| s.version() == *v))
        .collect()
}

/// Just enough DER to find dNSName entries in subjectAltName. The certificate
/// was already verified by webpki, so this only has to read, not judge; any
/// surprise yields `None` rather than a panic.
mod der {
    const SEQUENCE: u8 = 0x30;
    const OCTET_STRING: u8 = 0x04;
    const OID: u8 = 0x06;
    const EXTENSIONS: u8 = 0xa3;
    const DNS_NAME: u8 = 0x82;
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

    /// Splits one TLV off `input`: (tag, contents, rest).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, input) = input.split_first()?;
        let (&first, mut input) = input.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, rest) = (input.get(..n)?, input.get(n..)?);
            input = rest;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        Some((tag, input.get(..len)?, input.get(len..)?))
    }

    fn contents(input: &[u8], want: u8) -> Option<&[u8]> {
        match tlv(input)? {
            (tag, body, _) if tag == want => Some(body),
            _ => None,
        }
    }

    pub(super) fn dns_names(cert: &[u8]) -> Option<Vec<String>> {
        let tbs = contents(contents(cert, SEQUENCE)?, SEQUENCE)?;
        let mut rest = tbs;
        while !rest.is_empty() {
            let (tag, body, next) = tlv(rest)?;
            rest = next;
            if tag == EXTENSIONS {
                return san_names(contents(body, SEQUENCE)?);
            }
        }
        Some(Vec::new())
    }

    fn san_names(mut extensions: &[u8]) -> Option<Vec<String>> {
        while !extensions.is_empty() {
            let (_, ext, next) = tlv(extensions)?;
            extensions = next;
            let (tag, oid, mut fields) = tlv(ext)?;
            if tag != OID || oid != SUBJECT_ALT_NAME {
                continue;
            }
            // Skip the optional `critical` BOOLEAN up to the extnValue.
            loop {
                let (tag, body, next) = tlv(fields)?;
                if tag == OCTET_STRING {
                    return general_names(contents(body, SEQUENCE)?);
                }
                fields = next;
            }
        }
        Some(Vec::new())
    }

    fn general_names(mut names: &[u8]) -> Option<Vec<String>> {
        let mut out = Vec::new();
        while !names.is_empty() {
            let (tag, body, next) = tlv(names)?;
            names = next;
            if tag == DNS_NAME {
                out.push(String::from_utf8_lossy(body).into_owned());
            }
        }
        Some(out)
    }
}
