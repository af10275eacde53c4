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

use gd_core::config::TlsConfig;
use gd_core::transport::tls::{peer_dns_names, server_name, TlsError, TlsSetup};
use rustls::pki_types::CertificateDer;
use support::certs::{write_tls_files, TestCa};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bounds each handshake so a broken side fails the test instead of hanging it.
const DEADLINE: Duration = Duration::from_secs(10);

struct ServerSeen {
    peer_names: Vec<String>,
    cipher: Option<String>,
}

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

    let server_err = server.err().expect("server refuses the foreign client");
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

    let client_err = client.err().expect("client refuses the foreign server");
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

    let client_err = client.err().expect("client refuses the wrong DC");
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

    let server_err = server.err().expect("server demands a client certificate");
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
