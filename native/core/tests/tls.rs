//! Mutual TLS between DCs over real loopback sockets with certificates made
//! for each test: what must connect does, and every kind of wrong peer (other
//! CA, wrong name, no certificate, plain TCP) is refused by the side that is
//! supposed to notice. Bad files give errors that name the option and path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gd_core::config::{TlsConfig, VerifyMode};
use gd_core::transport::tls::{peer_dns_names, server_name, TlsError, TlsSetup};
use rustls::pki_types::CertificateDer;
use support::certs::{self_signed, write_tls_files, Issued, TestCa};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds each handshake so a broken side fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct ServerSeen {
    peer_names: Vec<String>,
    cipher: Option<String>,
}

#[derive(Debug)]
struct ClientSeen {
    peer_names: Vec<String>,
    cipher: Option<String>,
    version: Option<rustls::ProtocolVersion>,
}

/// A listener that accepts one TLS connection, answers "ping" with "pong"
/// and reports what it learned about the client (or the handshake error).
async fn serve_once(
    setup: &TlsSetup,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<io::Result<ServerSeen>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = setup.acceptor();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let (_, conn) = tls.get_ref();
        let seen = ServerSeen {
            peer_names: peer_dns_names(conn),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .map(str::to_owned),
        };
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok(seen)
    });
    (addr, task)
}

/// Connects with `connector`, expecting the server to be `name`, and does one
/// ping/pong. With TLS 1.3 a client's handshake completes before the server
/// has judged the client certificate, so a refusal by the server only shows
/// on the first read: the round trip is part of the client's outcome.
async fn ping(
    connector: tokio_rustls::TlsConnector,
    addr: std::net::SocketAddr,
    name: &str,
) -> io::Result<ClientSeen> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = connector.connect(server_name(name).unwrap(), tcp).await?;
    let (_, conn) = tls.get_ref();
    let seen = ClientSeen {
        peer_names: peer_dns_names(conn),
        cipher: conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .map(str::to_owned),
        version: conn.protocol_version(),
    };
    tls.write_all(b"ping").await?;
    tls.flush().await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    Ok(seen)
}

async fn exchange(
    server: &TlsSetup,
    connector: tokio_rustls::TlsConnector,
    name: &str,
) -> (io::Result<ServerSeen>, io::Result<ClientSeen>) {
    let (addr, server_task) = serve_once(server).await;
    let client = tokio::time::timeout(DEADLINE, ping(connector, addr, name))
        .await
        .expect("client finished within the deadline");
    let server = tokio::time::timeout(DEADLINE, server_task)
        .await
        .expect("server finished within the deadline")
        .unwrap();
    (server, client)
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

fn is_certificate_error(e: &io::Error) -> bool {
    matches!(rustls_error(e), Some(rustls::Error::InvalidCertificate(_)))
}

fn node(ca: &TestCa, name: &str) -> (TempDir, TlsConfig) {
    let dir = TempDir::new().unwrap();
    let cfg = ca.write_tls_config(dir.path(), name);
    (dir, cfg)
}

fn setup(cfg: &TlsConfig) -> TlsSetup {
    TlsSetup::from_config(cfg).unwrap()
}

#[tokio::test]
async fn mutual_tls_exchanges_bytes_and_names_both_peers() {
    let ca = TestCa::new("test CA");
    let (_d1, dc1) = node(&ca, "dc1.example");
    let (_d2, dc2) = node(&ca, "dc2.example");

    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;

    let server = server.unwrap();
    let client = client.unwrap();
    assert_eq!(server.peer_names, vec!["dc2.example".to_owned()]);
    assert_eq!(client.peer_names, vec!["dc1.example".to_owned()]);
}

#[tokio::test]
async fn client_certified_by_another_ca_is_refused_by_the_server() {
    let ca = TestCa::new("our CA");
    let other = TestCa::new("foreign CA");
    let (_d1, dc1) = node(&ca, "dc1.example");
    // Trusts our CA, so only the server has a reason to refuse.
    let d2 = TempDir::new().unwrap();
    let dc2 = write_tls_files(
        d2.path(),
        "dc2.example",
        &other.issue(&["dc2.example"]),
        &ca.cert_pem(),
    );

    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;

    let server_err = server.expect_err("server refuses the foreign client");
    assert!(is_certificate_error(&server_err), "{server_err:?}");
    assert!(client.is_err(), "client must see the refusal");
}

#[tokio::test]
async fn server_certified_by_another_ca_is_refused_by_the_client() {
    let ca = TestCa::new("our CA");
    let other = TestCa::new("foreign CA");
    let d1 = TempDir::new().unwrap();
    let dc1 = write_tls_files(
        d1.path(),
        "dc1.example",
        &other.issue(&["dc1.example"]),
        &ca.cert_pem(),
    );
    let (_d2, dc2) = node(&ca, "dc2.example");

    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;

    let client_err = client.expect_err("client refuses the foreign server");
    assert!(is_certificate_error(&client_err), "{client_err:?}");
    assert!(server.is_err(), "server must see the aborted handshake");
}

#[tokio::test]
async fn server_certified_for_another_dc_name_is_refused_by_the_client() {
    let ca = TestCa::new("test CA");
    let (_d1, dc1) = node(&ca, "dc1.example");
    let (_d2, dc2) = node(&ca, "dc2.example");

    // Valid certificate from our CA, but it is dc1's and we wanted dc3.
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc3.example").await;

    let client_err = client.expect_err("client refuses the wrong DC");
    assert!(is_certificate_error(&client_err), "{client_err:?}");
    assert!(server.is_err());
}

#[tokio::test]
async fn client_without_certificate_is_refused_by_the_server() {
    let ca = TestCa::new("test CA");
    let (_d1, dc1) = node(&ca, "dc1.example");
    let mut roots = rustls::RootCertStore::empty();
    let ca_der: CertificateDer<'static> = rustls_pemfile::certs(&mut ca.cert_pem().as_bytes())
        .next()
        .unwrap()
        .unwrap();
    roots.add(ca_der).unwrap();
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(anonymous));

    let (server, client) = exchange(&setup(&dc1), connector, "dc1.example").await;

    let server_err = server.expect_err("server demands a client certificate");
    assert!(
        matches!(
            rustls_error(&server_err),
            Some(rustls::Error::NoCertificatesPresented)
        ),
        "{server_err:?}"
    );
    assert!(client.is_err());
}

#[tokio::test]
async fn plain_tcp_client_fails_the_handshake_on_the_server() {
    let ca = TestCa::new("test CA");
    let (_d1, dc1) = node(&ca, "dc1.example");
    let (addr, server_task) = serve_once(&setup(&dc1)).await;

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"<stream:stream to='dc1.example'>\r\n\r\n")
        .await
        .unwrap();
    let server = tokio::time::timeout(DEADLINE, server_task)
        .await
        .expect("server gives up on the plain client")
        .unwrap();

    assert!(server.is_err(), "plain TCP must not pass the TLS acceptor");
}

#[tokio::test]
async fn selected_cipher_suites_are_the_only_ones_negotiated() {
    let ca = TestCa::new("test CA");
    let (_d1, mut dc1) = node(&ca, "dc1.example");
    let (_d2, mut dc2) = node(&ca, "dc2.example");

    let tls12 = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned();
    dc1.ciphers = Some(vec![tls12.clone(), "TLS13_AES_256_GCM_SHA384".to_owned()]);
    dc2.ciphers = Some(vec![tls12.clone()]);
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    let client = client.unwrap();
    assert_eq!(client.cipher.as_deref(), Some(tls12.as_str()));
    assert_eq!(client.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(server.unwrap().cipher.as_deref(), Some(tls12.as_str()));

    // No suite in common: nothing is negotiated.
    dc2.ciphers = Some(vec!["TLS13_AES_128_GCM_SHA256".to_owned()]);
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    assert!(server.is_err());
    assert!(client.is_err());
}

#[tokio::test]
async fn key_may_live_in_the_certfile() {
    let ca = TestCa::new("test CA");
    let (_d1, dc1) = node(&ca, "dc1.example");
    let d2 = TempDir::new().unwrap();
    let issued = ca.issue(&["dc2.example"]);
    let bundle = d2.path().join("dc2.pem");
    std::fs::write(&bundle, format!("{}{}", issued.cert_pem, issued.key_pem)).unwrap();
    let ca_file = d2.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).unwrap();
    let dc2 = TlsConfig {
        certfile: bundle,
        keyfile: None,
        cacertfile: Some(ca_file),
        ..TlsConfig::default()
    };

    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;

    assert_eq!(server.unwrap().peer_names, vec!["dc2.example".to_owned()]);
    client.unwrap();
}

fn config_error(cfg: &TlsConfig) -> (TlsError, String) {
    let err = TlsSetup::from_config(cfg).expect_err("config must be rejected");
    let msg = err.to_string();
    (err, msg)
}

fn valid_config() -> (TempDir, TlsConfig) {
    node(&TestCa::new("test CA"), "dc1.example")
}

fn garbage(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn missing_certfile_names_the_option_and_path() {
    let (dir, mut cfg) = valid_config();
    cfg.certfile = dir.path().join("absent.crt");
    let (err, msg) = config_error(&cfg);
    assert!(
        matches!(
            err,
            TlsError::Read {
                option: "certfile",
                ..
            }
        ),
        "{err:?}"
    );
    let expected = format!(
        "connections.tls.certfile: {}: cannot read:",
        cfg.certfile.display()
    );
    assert!(msg.starts_with(&expected), "{msg}");
}

#[test]
fn missing_keyfile_names_the_option_and_path() {
    let (dir, mut cfg) = valid_config();
    cfg.keyfile = Some(dir.path().join("absent.key"));
    let (err, msg) = config_error(&cfg);
    assert!(
        matches!(
            err,
            TlsError::Read {
                option: "keyfile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("absent.key: cannot read"), "{msg}");
}

#[test]
fn garbage_certfile_has_no_certificate() {
    let (dir, mut cfg) = valid_config();
    cfg.certfile = garbage(dir.path(), "garbage.crt", "this is not a certificate\n");
    let (err, msg) = config_error(&cfg);
    assert!(
        matches!(
            err,
            TlsError::NoCertificate {
                option: "certfile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("garbage.crt: no certificate found"), "{msg}");
}

#[test]
fn broken_pem_block_is_reported_as_malformed() {
    let (dir, mut cfg) = valid_config();
    cfg.certfile = garbage(
        dir.path(),
        "broken.crt",
        "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
    );
    let (err, msg) = config_error(&cfg);
    assert!(
        matches!(
            err,
            TlsError::Pem {
                option: "certfile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("broken.crt: malformed PEM"), "{msg}");
}

#[test]
fn keyfile_without_a_key_is_rejected() {
    let (_dir, mut cfg) = valid_config();
    cfg.keyfile = Some(cfg.certfile.clone());
    let (err, msg) = config_error(&cfg);
    assert!(
        matches!(
            err,
            TlsError::NoKey {
                option: "keyfile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("no private key found"), "{msg}");
}

#[test]
fn key_missing_from_certfile_when_keyfile_unset_says_so() {
    let (_dir, mut cfg) = valid_config();
    cfg.keyfile = None;
    let (err, msg) = config_error(&cfg);
    assert!(
        matches!(
            err,
            TlsError::NoKey {
                option: "certfile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.contains("keyfile is not set"), "{msg}");
}

#[test]
fn key_of_another_certificate_is_rejected() {
    let (dir, mut cfg) = valid_config();
    let stranger = TestCa::new("test CA").issue(&["dc1.example"]);
    cfg.keyfile = Some(garbage(dir.path(), "other.key", &stranger.key_pem));
    let (err, _) = config_error(&cfg);
    assert!(matches!(err, TlsError::CertKey { .. }), "{err:?}");
}

#[test]
fn ca_file_without_certificate_is_rejected() {
    let (dir, mut cfg) = valid_config();
    cfg.cacertfile = Some(garbage(dir.path(), "empty-ca.crt", ""));
    let (err, msg) = config_error(&cfg);
    assert!(
        matches!(
            err,
            TlsError::NoCertificate {
                option: "cacertfile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(msg.starts_with("connections.tls.cacertfile:"), "{msg}");
}

#[test]
fn unknown_cipher_names_are_listed() {
    let (_dir, mut cfg) = valid_config();
    cfg.ciphers = Some(vec![
        "TLS13_AES_128_GCM_SHA256".to_owned(),
        "RC4_FOREVER".to_owned(),
    ]);
    let (err, msg) = config_error(&cfg);
    match err {
        TlsError::UnknownCiphers { unknown, known } => {
            assert_eq!(unknown, vec!["RC4_FOREVER".to_owned()]);
            assert!(known.contains(&"TLS13_AES_128_GCM_SHA256".to_owned()));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(msg.contains("RC4_FOREVER"), "{msg}");
}

#[test]
fn empty_cipher_list_is_rejected() {
    let (_dir, mut cfg) = valid_config();
    cfg.ciphers = Some(Vec::new());
    let (err, _) = config_error(&cfg);
    assert!(matches!(err, TlsError::NoCiphers), "{err:?}");
}

#[test]
fn server_name_rejects_what_cannot_be_a_host() {
    assert!(server_name("dc1.example").is_ok());
    assert!(server_name("127.0.0.1").is_ok());
    let err = server_name("not a host!").unwrap_err();
    assert!(err.to_string().contains("not a host!"), "{err}");
}

// ---------------------------------------------------------------------------
// MongooseIM 6.8's TLS options (docs/CONFIG.md, `connections.tls`).
// ---------------------------------------------------------------------------

/// A client trusting our CA but certified by a foreign one.
fn foreign_client(ca: &TestCa) -> (TempDir, TlsConfig) {
    let other = TestCa::new("foreign CA");
    let dir = TempDir::new().unwrap();
    let cfg = write_tls_files(
        dir.path(),
        "dc2.example",
        &other.issue(&["dc2.example"]),
        &ca.cert_pem(),
    );
    (dir, cfg)
}

#[tokio::test]
async fn verify_mode_none_lets_any_certificate_in_on_both_sides() {
    let ca = TestCa::new("our CA");
    let (_d1, mut dc1) = node(&ca, "dc1.example");
    let (_d2, mut dc2) = foreign_client(&ca);
    dc1.verify_mode = VerifyMode::None;
    dc2.verify_mode = VerifyMode::None;
    // Even the name is not checked: dc3 is not in dc1's certificate.
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc3.example").await;
    server.unwrap();
    client.unwrap();
    assert!(!setup(&dc1).enforces_peer_names());

    // Without a CA file at all.
    dc1.cacertfile = None;
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    server.unwrap();
    client.unwrap();
}

#[tokio::test]
async fn verify_mode_peer_is_the_default_and_still_refuses_a_foreign_peer() {
    let ca = TestCa::new("our CA");
    let (_d1, dc1) = node(&ca, "dc1.example");
    let (_d2, dc2) = foreign_client(&ca);
    assert_eq!(dc1.verify_mode, VerifyMode::Peer);
    assert!(setup(&dc1).enforces_peer_names());
    let (server, _) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    assert!(is_certificate_error(&server.unwrap_err()));
}

#[tokio::test]
async fn selfsigned_peer_accepts_a_self_signed_certificate_but_not_a_foreign_ca() {
    let ca = TestCa::new("our CA");
    let (_d1, mut dc1) = node(&ca, "dc1.example");
    dc1.verify_mode = VerifyMode::SelfsignedPeer;
    let d2 = TempDir::new().unwrap();
    let mut dc2 = write_tls_files(
        d2.path(),
        "dc2.example",
        &self_signed(&["dc2.example"]),
        &ca.cert_pem(),
    );
    dc2.verify_mode = VerifyMode::SelfsignedPeer;

    // dc2 (self-signed) connects to dc1 (CA-signed): each side accepts.
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    assert_eq!(server.unwrap().peer_names, vec!["dc2.example".to_owned()]);
    client.unwrap();
    // The other way round.
    let (server, client) = exchange(&setup(&dc2), setup(&dc1).connector(), "dc2.example").await;
    server.unwrap();
    client.unwrap();
    // Two self-signed nodes need no CA file at all.
    let d4 = TempDir::new().unwrap();
    let mut dc4 = write_tls_files(
        d4.path(),
        "dc4.example",
        &self_signed(&["dc4.example"]),
        &ca.cert_pem(),
    );
    dc4.verify_mode = VerifyMode::SelfsignedPeer;
    dc4.cacertfile = None;
    dc2.cacertfile = None;
    let (server, client) = exchange(&setup(&dc2), setup(&dc4).connector(), "dc2.example").await;
    assert_eq!(server.unwrap().peer_names, vec!["dc4.example".to_owned()]);
    client.unwrap();
    // The self-signed check still verifies the name.
    let (_, client) = exchange(&setup(&dc2), setup(&dc4).connector(), "dc1.example").await;
    assert!(is_certificate_error(&client.unwrap_err()));

    // A certificate from a foreign CA is not self-signed: still refused.
    let (_d3, dc3) = foreign_client(&ca);
    let (server, _) = exchange(&setup(&dc1), setup(&dc3).connector(), "dc1.example").await;
    assert!(is_certificate_error(&server.unwrap_err()));
}

#[tokio::test]
async fn disconnect_on_failure_false_lets_a_failing_peer_in() {
    let ca = TestCa::new("our CA");
    let (_d1, mut dc1) = node(&ca, "dc1.example");
    dc1.disconnect_on_failure = false;
    let (_d2, dc2) = foreign_client(&ca);
    assert!(!setup(&dc1).enforces_peer_names());
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    server.unwrap();
    client.unwrap();
}

#[tokio::test]
async fn versions_limit_the_protocol_negotiated() {
    let ca = TestCa::new("test CA");
    let (_d1, mut dc1) = node(&ca, "dc1.example");
    let (_d2, mut dc2) = node(&ca, "dc2.example");
    dc1.versions = Some(vec!["tlsv1.2".to_owned()]);
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    server.unwrap();
    assert_eq!(
        client.unwrap().version,
        Some(rustls::ProtocolVersion::TLSv1_2)
    );

    // No version in common: the handshake fails.
    dc2.versions = Some(vec!["tlsv1.3".to_owned()]);
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    assert!(server.is_err() && client.is_err());

    // A version rustls lacks is refused when the setup is built.
    dc2.versions = Some(vec!["tlsv1.1".to_owned()]);
    let (_, msg) = config_error(&dc2);
    assert_eq!(
        msg,
        "connections.tls.versions: unsupported TLS version \"tlsv1.1\" (rustls implements tlsv1.2 and tlsv1.3)"
    );
    // TLS 1.3 only with TLS 1.2 suites only: nothing can be served.
    dc2.versions = Some(vec!["tlsv1.3".to_owned()]);
    dc2.ciphers = Some(vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".to_owned()]);
    let (_, msg) = config_error(&dc2);
    assert_eq!(
        msg,
        "connections.tls.versions: none of [\"tlsv1.3\"] can be used with the selected cipher suites"
    );
}

#[tokio::test]
async fn a_crl_revoking_the_peer_certificate_refuses_it_on_both_sides() {
    let ca = TestCa::new("test CA");
    let d1 = TempDir::new().unwrap();
    let dc1_cert = ca.issue(&["dc1.example"]);
    let mut dc1 = write_tls_files(d1.path(), "dc1.example", &dc1_cert, &ca.cert_pem());
    let d2 = TempDir::new().unwrap();
    let dc2_cert = ca.issue(&["dc2.example"]);
    let mut dc2 = write_tls_files(d2.path(), "dc2.example", &dc2_cert, &ca.cert_pem());

    // A CRL that revokes nothing changes nothing.
    let empty = d1.path().join("empty.crl");
    std::fs::write(&empty, ca.crl_pem(&[])).unwrap();
    dc1.crl_files = vec![empty.clone()];
    dc2.crl_files = vec![empty];
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    server.unwrap();
    client.unwrap();

    // dc2 revoked: dc1's listener refuses it.
    let revoked_dc2 = d1.path().join("dc2.crl");
    std::fs::write(&revoked_dc2, ca.crl_pem(&[&dc2_cert])).unwrap();
    dc1.crl_files = vec![revoked_dc2];
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    let server_err = server.unwrap_err();
    assert!(
        matches!(
            rustls_error(&server_err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))
        ),
        "{server_err:?}"
    );
    assert!(client.is_err());

    // dc1 revoked: dc2 refuses to connect to it.
    let revoked_dc1 = d2.path().join("dc1.crl");
    std::fs::write(&revoked_dc1, ca.crl_pem(&[&dc1_cert])).unwrap();
    dc1.crl_files = Vec::new();
    dc2.crl_files = vec![revoked_dc1];
    let (_, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    let client_err = client.unwrap_err();
    assert!(
        matches!(
            rustls_error(&client_err),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked
            ))
        ),
        "{client_err:?}"
    );

    // A file without a CRL is refused with its path.
    dc2.crl_files = vec![dc2.certfile.clone()];
    let (_, msg) = config_error(&dc2);
    assert!(
        msg.starts_with("connections.tls.crl_files: ")
            && msg.ends_with(": no CRL found (expected PEM \"BEGIN X509 CRL\" blocks)"),
        "{msg}"
    );
}

/// `issued`'s key as a PKCS#8 `ENCRYPTED PRIVATE KEY` (PBES2, PBKDF2-SHA256,
/// AES-256-CBC: what `openssl pkcs8 -topk8 -v2 aes-256-cbc` writes).
fn encrypted_key_pem(issued: &Issued, password: &str) -> String {
    let info = pkcs8::PrivateKeyInfo::try_from(issued.key_der.as_slice()).unwrap();
    let salt = rand::random::<[u8; 16]>();
    let iv = rand::random::<[u8; 16]>();
    let params =
        pkcs8::pkcs5::pbes2::Parameters::pbkdf2_sha256_aes256cbc(2048, &salt, &iv).unwrap();
    let document = info.encrypt_with_params(params, password).unwrap();
    document
        .to_pem("ENCRYPTED PRIVATE KEY", pkcs8::LineEnding::LF)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn an_encrypted_key_is_read_with_the_password() {
    let ca = TestCa::new("test CA");
    let (_d1, dc1) = node(&ca, "dc1.example");
    let d2 = TempDir::new().unwrap();
    let issued = ca.issue(&["dc2.example"]);
    let mut dc2 = write_tls_files(d2.path(), "dc2.example", &issued, &ca.cert_pem());
    let keyfile = dc2.keyfile.clone().unwrap();
    std::fs::write(&keyfile, encrypted_key_pem(&issued, "s3cret")).unwrap();

    dc2.password = Some("s3cret".to_owned());
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    assert_eq!(server.unwrap().peer_names, vec!["dc2.example".to_owned()]);
    client.unwrap();

    dc2.password = None;
    let (err, msg) = config_error(&dc2);
    assert!(matches!(err, TlsError::NeedsPassword { .. }), "{err:?}");
    assert_eq!(
        msg,
        format!(
            "connections.tls.keyfile: {}: the private key is encrypted; set connections.tls.password",
            keyfile.display()
        )
    );

    dc2.password = Some("wrong".to_owned());
    let (err, msg) = config_error(&dc2);
    assert!(matches!(err, TlsError::Decrypt { .. }), "{err:?}");
    assert!(
        msg.starts_with(&format!(
            "connections.tls.password: cannot decrypt the key in {}:",
            keyfile.display()
        )),
        "{msg}"
    );
}

#[test]
fn a_legacy_encrypted_key_says_how_to_convert_it() {
    let (dir, mut cfg) = valid_config();
    let legacy = "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                  DEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n\
                  -----END RSA PRIVATE KEY-----\n";
    cfg.keyfile = Some(garbage(dir.path(), "legacy.key", legacy));
    cfg.password = Some("pw".to_owned());
    let (err, msg) = config_error(&cfg);
    assert!(
        matches!(err, TlsError::LegacyEncryptedKey { .. }),
        "{err:?}"
    );
    assert!(msg.contains("openssl pkcs8 -topk8"), "{msg}");
}

#[tokio::test]
async fn server_name_indication_host_replaces_the_remote_dc_name() {
    let ca = TestCa::new("test CA");
    // dc1's certificate names a shared service name, not its local_host.
    let d1 = TempDir::new().unwrap();
    let dc1 = write_tls_files(
        d1.path(),
        "dc1",
        &ca.issue(&["gd.internal"]),
        &ca.cert_pem(),
    );
    let (_d2, mut dc2) = node(&ca, "dc2.example");
    assert_eq!(
        setup(&dc2).server_name_for("dc1.example").unwrap(),
        server_name("dc1.example").unwrap()
    );
    dc2.server_name_indication.host = Some("gd.internal".to_owned());
    let dc2_setup = setup(&dc2);
    assert_eq!(
        dc2_setup.server_name_for("dc1.example").unwrap(),
        server_name("gd.internal").unwrap()
    );
    let (server, client) = exchange(&setup(&dc1), dc2_setup.connector(), "gd.internal").await;
    server.unwrap();
    client.unwrap();

    // SNI disabled: the handshake still verifies the name.
    dc2.server_name_indication.enabled = false;
    let (server, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "gd.internal").await;
    server.unwrap();
    client.unwrap();
    let (_, client) = exchange(&setup(&dc1), setup(&dc2).connector(), "dc1.example").await;
    assert!(is_certificate_error(&client.unwrap_err()));
}

#[test]
fn verify_mode_peer_without_a_ca_file_is_refused() {
    let (_dir, mut cfg) = valid_config();
    cfg.cacertfile = None;
    let (err, msg) = config_error(&cfg);
    assert!(matches!(err, TlsError::MissingCa), "{err:?}");
    assert!(msg.starts_with("connections.tls.cacertfile: required with verify_mode = peer"));
}

/// What `f` logs at info and above, as text.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);
    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let sink = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn verify_mode_none_and_disconnect_on_failure_false_warn_at_start() {
    let (_dir, mut cfg) = valid_config();
    let (_, quiet) = logged(|| setup(&cfg));
    assert!(!quiet.contains("WARN"), "{quiet}");
    cfg.verify_mode = VerifyMode::None;
    let (_, text) = logged(|| setup(&cfg));
    assert!(
        text.contains("WARN") && text.contains("gd_tls_verification_disabled"),
        "{text}"
    );
    cfg.verify_mode = VerifyMode::Peer;
    cfg.disconnect_on_failure = false;
    let (_, text) = logged(|| setup(&cfg));
    assert!(text.contains("gd_tls_verification_not_enforced"), "{text}");
}
