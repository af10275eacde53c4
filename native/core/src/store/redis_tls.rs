//! TLS to Redis: a rustls client built once from `redis.tls` (or a
//! `rediss://` URL, or the MongooseIM pool's `connection.tls`), and the
//! dial that wraps a TCP connection in it before redis-rs speaks RESP on it.
//!
//! Why not redis-rs' own `tls-rustls` feature: it always loads the system's
//! CA store (and fails when one entry of it cannot be read) even when a CA
//! bundle is given, it cannot check the server against a name other than
//! the host it dials, and it uses the process-wide default crypto provider,
//! which the host process (an Erlang VM, a C program) may have set to
//! something else. Here the ring provider is explicit, as for the inter-DC
//! links (`transport::tls`), and the handshake's failures are translated
//! into messages an operator can act on: they all say "TLS".

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use rustls::{Error as TlsError, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::StoreError;
use crate::config::{RedisTlsConfig, VerifyMode};

/// Where the system's CA bundle usually is, after `SSL_CERT_FILE`
/// (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE, FreeBSD/macOS ports).
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/etc/ssl/cert.pem",
];

/// The client side of TLS to one Redis server.
pub struct RedisTls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// Where the trusted CAs come from, for messages.
    roots: String,
    /// Handshakes under way: one still running when a deadline passes says
    /// the server does not speak TLS (see `RedisBackend::unreachable`).
    handshaking: AtomicUsize,
}

/// Counts one handshake while it lives (a timed-out dial is dropped).
struct Handshaking<'a>(&'a AtomicUsize);

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RedisTls {
    /// Loads the files of `cfg`; `host` is the Redis host, the name checked
    /// in the server's certificate unless `server_name` is set.
    pub fn new(cfg: &RedisTlsConfig, host: &str) -> Result<RedisTls, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| config_error("redis.tls", e))?;
        let builder = match cfg.verify {
            VerifyMode::None => {
                tracing::warn!(
                    what = "gd_redis_tls_verification_disabled",
                    text = "redis.tls.verify = none: the Redis server's certificate is not \
                            verified; anyone on the path can read and change the store"
                );
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            }
            _ => builder.with_root_certificates(roots(cfg.cacertfile.as_deref())?),
        };
        let roots = match (&cfg.cacertfile, cfg.verify) {
            (_, VerifyMode::None) => "nothing (verify = none)".to_owned(),
            (Some(_), _) => "redis.tls.cacertfile".to_owned(),
            (None, _) => "the system CA bundle (redis.tls.cacertfile is not set)".to_owned(),
        };
        let mut config = match &cfg.certfile {
            Some(certfile) => {
                let chain = load_certs("redis.tls.certfile", certfile)?;
                let (option, keyfile) = match &cfg.keyfile {
                    Some(k) => ("redis.tls.keyfile", k),
                    None => ("redis.tls.certfile", certfile),
                };
                let key = load_key(option, keyfile)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| config_error("redis.tls.keyfile", e))?
            }
            None => builder.with_no_client_auth(),
        };
        config.enable_sni = cfg.sni;
        let name = cfg.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_owned()).map_err(|_| {
            StoreError::Config(format!(
                "redis.tls.server_name: {name:?} is not a DNS name or IP address"
            ))
        })?;
        Ok(RedisTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            roots,
            handshaking: AtomicUsize::new(0),
        })
    }

    /// TCP to `host:port`, then the TLS handshake. The error says what
    /// failed and what to check.
    pub async fn connect(&self, host: &str, port: u16) -> Result<TlsStream<TcpStream>, String> {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        self.handshaking.fetch_add(1, Ordering::Relaxed);
        let _counted = Handshaking(&self.handshaking);
        self.connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| handshake_error(&e, &self.server_name, &self.roots))
    }
}

impl RedisTls {
    /// Whether a handshake is under way.
    pub fn handshaking(&self) -> bool {
        self.handshaking.load(Ordering::Relaxed) > 0
    }
}

fn config_error(option: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Config(format!("{option}: {e}"))
}

/// The CA bundle given, or the system's when none is.
fn roots(cacertfile: Option<&Path>) -> Result<RootCertStore, StoreError> {
    let (option, path) = match cacertfile {
        Some(path) => ("redis.tls.cacertfile", path.to_owned()),
        None => ("redis.tls (system CA bundle)", system_bundle()?),
    };
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(load_certs(option, &path)?);
    if added == 0 {
        return Err(StoreError::Config(format!(
            "{option}: {}: no usable CA certificate",
            path.display()
        )));
    }
    Ok(roots)
}

fn system_bundle() -> Result<PathBuf, StoreError> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    from_env
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            StoreError::Config(format!(
                "redis.tls.cacertfile: not given, and no system CA bundle found (SSL_CERT_FILE, {}): \
                 give the CA that signed the Redis server's certificate",
                SYSTEM_CA_BUNDLES.join(", ")
            ))
        })
}

fn open(option: &str, path: &Path) -> Result<BufReader<File>, StoreError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|e| config_error(option, format!("{}: cannot read: {e}", path.display())))
}

fn load_certs(option: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, StoreError> {
    let certs = rustls_pemfile::certs(&mut open(option, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(option, format!("{}: malformed PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(config_error(
            option,
            format!(
                "{}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn load_key(option: &str, path: &Path) -> Result<PrivateKeyDer<'static>, StoreError> {
    rustls_pemfile::private_key(&mut open(option, path)?)
        .map_err(|e| config_error(option, format!("{}: malformed PEM: {e}", path.display())))?
        .ok_or_else(|| {
            config_error(
                option,
                format!(
                    "{}: no private key found (expected a PEM PKCS#8, PKCS#1 or SEC1 key, not encrypted)",
                    path.display()
                ),
            )
        })
}

/// What a failed handshake means for the operator.
fn handshake_error(e: &std::io::Error, name: &ServerName<'_>, roots: &str) -> String {
    let name = name.to_str();
    let why = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>())
    {
        Some(TlsError::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            format!("the server's certificate is not signed by a CA of {roots} (unknown issuer)")
        }
        Some(TlsError::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "the server's certificate is not valid for the name {name:?}: set \
             redis.tls.server_name to a name it carries"
        ),
        Some(TlsError::InvalidCertificate(c)) => {
            format!("the server's certificate was refused: {c:?}")
        }
        Some(TlsError::InvalidMessage(_)) => {
            "the server did not answer in TLS: is this a plain-text Redis port? (use the \
             server's tls-port, or redis:// without redis.tls)"
                .to_owned()
        }
        Some(TlsError::AlertReceived(alert)) => format!(
            "the server refused the handshake ({alert:?}): a client certificate it does not \
             accept, or none where it requires one (redis.tls.certfile/keyfile)"
        ),
        Some(other) => other.to_string(),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the handshake: a plain-text Redis port, \
             or a server refusing our certificate"
                .to_owned()
        }
        None => e.to_string(),
    };
    format!("TLS handshake failed: {why}")
}

/// `verify = none`: any certificate is accepted; the handshake's
/// signatures are still checked, so the session is at least with the holder
/// of the key it presented.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
