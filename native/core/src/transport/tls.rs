//! Mutual TLS between datacenters, built once from `connections.tls`.
//!
//! Both sides of an inter-DC link present a certificate and verify the other
//! against the configured CA bundle, so a plain-TCP peer or one certified by a
//! foreign CA never gets past the handshake. The connecting side also checks
//! that the server certificate names the DC it meant to reach (its
//! `local_host`, carried as a DNS SAN, or `server_name_indication.host`): a
//! valid certificate of another DC must not be able to answer for this one.
//! The ring provider is passed explicitly because the host process (an
//! Erlang VM, a C program) may have installed a different process-wide
//! default, or none.
//!
//! MongooseIM 6.8's TLS options (`just_tls.erl`, 6.8.0 =
//! cabaa45da4883aa2392057efb4632bdbbc5a74a6) map onto rustls here:
//! `verify_mode` (`peer`, `selfsigned_peer`, `none`) and
//! `disconnect_on_failure` are [`PeerCheck`], one verifier for both sides;
//! `versions` narrows the protocol versions; `crl_files` feed webpki's
//! revocation check; `password` decrypts a PKCS#8 `ENCRYPTED PRIVATE KEY`;
//! `server_name_indication` picks the name sent and checked.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    RootCertStore, ServerConfig, SignatureScheme, SupportedProtocolVersion,
};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::{TlsConfig, VerifyMode};

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
    #[error(
        "connections.tls.versions: none of {wanted:?} can be used with the selected cipher suites"
    )]
    NoVersions { wanted: Vec<String> },
    #[error("connections.tls.versions: unsupported TLS version {0:?} (rustls implements tlsv1.2 and tlsv1.3)")]
    UnknownVersion(String),
    #[error(
        "connections.tls.{option}: {}: the private key is encrypted; set connections.tls.password",
        path.display()
    )]
    NeedsPassword { option: &'static str, path: PathBuf },
    #[error("connections.tls.password: cannot decrypt the key in {}: {reason}", path.display())]
    Decrypt { path: PathBuf, reason: String },
    #[error(
        "connections.tls.{option}: {}: legacy OpenSSL-encrypted key (Proc-Type: 4,ENCRYPTED) is not supported; \
         convert it to PKCS#8 with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in old.pem -out new.pem`",
        path.display()
    )]
    LegacyEncryptedKey { option: &'static str, path: PathBuf },
    #[error(
        "connections.tls.cacertfile: required with verify_mode = peer (give the CA bundle, \
         or choose selfsigned_peer or none)"
    )]
    MissingCa,
    #[error("connections.tls.crl_files: {}: {reason}", path.display())]
    Crl { path: PathBuf, reason: String },
    #[error("TLS server name {host:?} (a DC local_host) is not a valid DNS name or IP address")]
    ServerName { host: String },
}

/// Server and client TLS configurations sharing one certificate, key and CA.
#[derive(Clone)]
pub struct TlsSetup {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// `server_name_indication.host`: the name every remote DC is reached as.
    sni_host: Option<String>,
    /// Whether an incoming peer's certified names must match the DC it
    /// claims to be (not with `verify_mode = none` or
    /// `disconnect_on_failure = false`).
    enforce_peer_names: bool,
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
        if cfg.verify_mode == VerifyMode::Peer && cfg.cacertfile.is_none() {
            return Err(TlsError::MissingCa);
        }
        let chain = load_certs("certfile", &cfg.certfile)?;
        let password = cfg.password.as_deref();
        let key = match &cfg.keyfile {
            Some(path) => load_key("keyfile", path, password)?,
            None => load_key("certfile", &cfg.certfile, password)?,
        };
        let roots = cfg.cacertfile.as_deref().map(load_roots).transpose()?;
        let crls = load_crls(&cfg.crl_files)?;
        let provider = Arc::new(provider(cfg.ciphers.as_deref())?);
        let versions = versions_for(&provider, cfg.versions.as_deref())?;
        let keyfile = cfg.keyfile.as_ref().unwrap_or(&cfg.certfile);
        let cert_key_error = |source| TlsError::CertKey {
            certfile: cfg.certfile.clone(),
            keyfile: keyfile.clone(),
            source,
        };
        let check = Arc::new(PeerCheck::new(cfg, roots, crls, provider.clone())?);
        if cfg.verify_mode == VerifyMode::None {
            tracing::warn!(
                what = "gd_tls_verification_disabled",
                text = "connections.tls.verify_mode = none: peer certificates are not verified; \
                        any host that can reach the endpoints can act as a datacenter"
            );
        } else if !cfg.disconnect_on_failure {
            tracing::warn!(
                what = "gd_tls_verification_not_enforced",
                text = "connections.tls.disconnect_on_failure = false: peers failing verification \
                        are logged and let in"
            );
        }

        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(TlsError::Protocol)?
            .with_client_cert_verifier(check.clone())
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(cert_key_error)?;
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(TlsError::Protocol)?
            .dangerous()
            .with_custom_certificate_verifier(check)
            .with_client_auth_cert(chain, key)
            .map_err(cert_key_error)?;
        client.enable_sni = cfg.server_name_indication.enabled;
        Ok(TlsSetup {
            server: Arc::new(server),
            client: Arc::new(client),
            sni_host: cfg.server_name_indication.host.clone(),
            enforce_peer_names: cfg.verify_mode != VerifyMode::None && cfg.disconnect_on_failure,
        })
    }

    /// The name to send and check when connecting to the DC `remote_host`:
    /// `server_name_indication.host` when set, else `remote_host`.
    pub fn server_name_for(&self, remote_host: &str) -> Result<ServerName<'static>, TlsError> {
        server_name(self.sni_host.as_deref().unwrap_or(remote_host))
    }

    /// Whether the listener must refuse a peer whose certificate does not
    /// name the DC it claims to be.
    pub fn enforces_peer_names(&self) -> bool {
        self.enforce_peer_names
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

const ENCRYPTED_PKCS8_BEGIN: &str = "-----BEGIN ENCRYPTED PRIVATE KEY-----";
const ENCRYPTED_PKCS8_END: &str = "-----END ENCRYPTED PRIVATE KEY-----";

/// The first private key in `path`: PKCS#8, PKCS#1 or SEC1 in clear, or a
/// PKCS#8 `ENCRYPTED PRIVATE KEY` (PBES2: PBKDF2 or scrypt with AES-CBC)
/// decrypted with `password`.
fn load_key(
    option: &'static str,
    path: &Path,
    password: Option<&str>,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let text = std::fs::read(path).map_err(|source| TlsError::Read {
        option,
        path: path.to_owned(),
        source,
    })?;
    let text = String::from_utf8_lossy(&text);
    if let Some(begin) = text.find(ENCRYPTED_PKCS8_BEGIN) {
        let Some(password) = password else {
            return Err(TlsError::NeedsPassword {
                option,
                path: path.to_owned(),
            });
        };
        return decrypt_pkcs8(&text[begin..], password, path);
    }
    if text.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(TlsError::LegacyEncryptedKey {
            option,
            path: path.to_owned(),
        });
    }
    rustls_pemfile::private_key(&mut text.as_bytes())
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

/// `pem` starts at an `ENCRYPTED PRIVATE KEY` block.
fn decrypt_pkcs8(
    pem: &str,
    password: &str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    let fail = |reason: String| TlsError::Decrypt {
        path: path.to_owned(),
        reason,
    };
    let end = pem
        .find(ENCRYPTED_PKCS8_END)
        .ok_or_else(|| fail("the PEM block has no END line".to_owned()))?;
    let block = &pem[..end + ENCRYPTED_PKCS8_END.len()];
    let (_, der) = pkcs8::der::pem::decode_vec(block.as_bytes())
        .map_err(|e| fail(format!("malformed PEM: {e}")))?;
    let info = pkcs8::EncryptedPrivateKeyInfo::try_from(der.as_slice())
        .map_err(|e| fail(format!("malformed encrypted key: {e}")))?;
    let clear = info
        .decrypt(password)
        .map_err(|e| fail(format!("{e} (wrong password, or an unsupported cipher)")))?;
    Ok(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        clear.as_bytes().to_vec(),
    )))
}

/// Every CRL of every file, PEM (`BEGIN X509 CRL`).
fn load_crls(paths: &[PathBuf]) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut crls = Vec::new();
    for path in paths {
        let fail = |reason: String| TlsError::Crl {
            path: path.clone(),
            reason,
        };
        let file = File::open(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        let found = rustls_pemfile::crls(&mut BufReader::new(file))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("malformed PEM: {e}")))?;
        if found.is_empty() {
            return Err(fail(
                "no CRL found (expected PEM \"BEGIN X509 CRL\" blocks)".to_owned(),
            ));
        }
        crls.extend(found);
    }
    Ok(crls)
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

/// The protocol versions asked for (all by default) that some selected
/// suite can serve: offering TLS 1.3 with no TLS 1.3 suite would fail the
/// handshake instead of falling back.
fn versions_for(
    provider: &CryptoProvider,
    wanted: Option<&[String]>,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let asked: Vec<&'static SupportedProtocolVersion> = match wanted {
        None => rustls::DEFAULT_VERSIONS.to_vec(),
        Some(names) => names
            .iter()
            .map(|name| match name.as_str() {
                "tlsv1.2" => Ok(&rustls::version::TLS12),
                "tlsv1.3" => Ok(&rustls::version::TLS13),
                other => Err(TlsError::UnknownVersion(other.to_owned())),
            })
            .collect::<Result<_, _>>()?,
    };
    let usable: Vec<_> = asked
        .into_iter()
        .filter(|v| provider.cipher_suites.iter().any(|s| s.version() == *v))
        .collect();
    if usable.is_empty() {
        return Err(TlsError::NoVersions {
            wanted: wanted.map(<[String]>::to_vec).unwrap_or_default(),
        });
    }
    Ok(usable)
}

/// The peer check of both sides, after MongooseIM's `just_tls`:
/// * `peer`: the chain must lead to `cacertfile` (webpki, with the CRLs);
/// * `selfsigned_peer`: the same, and a certificate signed by its own key
///   is accepted too (verified with itself as the only trust anchor, so
///   validity dates, names and CRLs are still checked);
/// * `none`: anything is accepted; the handshake signatures are still
///   checked (they prove the peer holds the key of the certificate it sent).
///
/// With `disconnect_on_failure = false` a failed verification is logged
/// and the peer let in, as `just_tls`'s `verify_fun` does.
#[derive(Debug)]
struct PeerCheck {
    mode: VerifyMode,
    disconnect_on_failure: bool,
    servers: Option<Arc<WebPkiServerVerifier>>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
    root_hints: Vec<DistinguishedName>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl PeerCheck {
    fn new(
        cfg: &TlsConfig,
        roots: Option<RootCertStore>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        provider: Arc<CryptoProvider>,
    ) -> Result<PeerCheck, TlsError> {
        let ca_path = cfg.cacertfile.clone().unwrap_or_default();
        let verifier_error = |reason: String| TlsError::Verifier {
            path: ca_path.clone(),
            reason,
        };
        let (servers, clients, root_hints) = match roots {
            Some(roots) if cfg.verify_mode != VerifyMode::None => {
                let roots = Arc::new(roots);
                let servers = server_verifier(roots.clone(), &crls, &provider)
                    .map_err(|e| verifier_error(e.to_string()))?;
                let clients = client_verifier(roots.clone(), &crls, &provider)
                    .map_err(|e| verifier_error(e.to_string()))?;
                (Some(servers), Some(clients), roots.subjects())
            }
            _ => (None, None, Vec::new()),
        };
        Ok(PeerCheck {
            mode: cfg.verify_mode,
            disconnect_on_failure: cfg.disconnect_on_failure,
            servers,
            clients,
            root_hints,
            crls,
            provider,
        })
    }

    /// `end_entity` as the only trust anchor, for `selfsigned_peer`.
    fn self_as_root(&self, end_entity: &CertificateDer<'_>) -> Option<Arc<RootCertStore>> {
        let mut roots = RootCertStore::empty();
        roots.add(end_entity.clone().into_owned()).ok()?;
        Some(Arc::new(roots))
    }

    fn unknown_issuer<T>() -> Result<T, rustls::Error> {
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ))
    }

    /// Applies `disconnect_on_failure`.
    fn settle<T>(&self, result: Result<T, rustls::Error>, accepted: T) -> Result<T, rustls::Error> {
        match result {
            Err(e) if !self.disconnect_on_failure => {
                tracing::warn!(
                    what = "gd_tls_peer_verification_failed",
                    error = %e,
                    text = "peer let in: connections.tls.disconnect_on_failure = false"
                );
                Ok(accepted)
            }
            other => other,
        }
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn server_verifier(
    roots: Arc<RootCertStore>,
    crls: &[CertificateRevocationListDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, rustls::client::VerifierBuilderError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls.iter().cloned())
        // A CA without a listed CRL is not a failure: only what the
        // configured CRLs revoke is refused.
        .allow_unknown_revocation_status()
        .build()
}

fn client_verifier(
    roots: Arc<RootCertStore>,
    crls: &[CertificateRevocationListDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .with_crls(crls.iter().cloned())
        .allow_unknown_revocation_status()
        .build()
}

impl ServerCertVerifier for PeerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.mode == VerifyMode::None {
            return Ok(ServerCertVerified::assertion());
        }
        let mut result = match &self.servers {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Self::unknown_issuer(),
        };
        if self.mode == VerifyMode::SelfsignedPeer && is_unknown_issuer(&result) {
            if let Some(own) = self.self_as_root(end_entity) {
                if let Ok(v) = server_verifier(own, &self.crls, &self.provider) {
                    result = v.verify_server_cert(end_entity, &[], server_name, ocsp, now);
                }
            }
        }
        self.settle(result, ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PeerCheck {
    fn client_auth_mandatory(&self) -> bool {
        self.mode != VerifyMode::None && self.disconnect_on_failure
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.root_hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.mode == VerifyMode::None {
            return Ok(ClientCertVerified::assertion());
        }
        let mut result = match &self.clients {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Self::unknown_issuer(),
        };
        if self.mode == VerifyMode::SelfsignedPeer && is_unknown_issuer(&result) {
            if let Some(own) = self.self_as_root(end_entity) {
                if let Ok(v) = client_verifier(own, &self.crls, &self.provider) {
                    result = v.verify_client_cert(end_entity, &[], now);
                }
            }
        }
        self.settle(result, ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

fn is_unknown_issuer<T>(result: &Result<T, rustls::Error>) -> bool {
    matches!(
        result,
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        ))
    )
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
