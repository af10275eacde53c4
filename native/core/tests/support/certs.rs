//! Test CA and node certificates generated with rcgen, so every test gets
//! fresh keys and nothing secret or expiring is committed. A DC's certificate
//! carries its `local_host` as a DNS SAN (what the connecting side checks) and
//! 127.0.0.1 as an IP SAN, and is valid for both server and client auth
//! because every DC both listens and connects.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use gd_core::config::TlsConfig;
use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams,
    CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};

/// A self-signed certificate authority living only for one test.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
}

/// A leaf certificate and its PKCS#8 private key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial number, for a CRL revoking this certificate.
    pub serial: SerialNumber,
    /// The private key as PKCS#8 DER (to encrypt it in a test).
    pub key_der: Vec<u8>,
}

/// Leaf parameters for `dns_names` (plus 127.0.0.1), usable as server and
/// client, with a fresh random serial number.
fn leaf_params(dns_names: &[&str]) -> CertificateParams {
    let names: Vec<String> = dns_names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    if let Some(first) = dns_names.first() {
        params.distinguished_name.push(DnType::CommonName, *first);
    }
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f; // positive
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params
}

/// A certificate signed by its own key (no CA), for `verify_mode = selfsigned_peer`.
pub fn self_signed(dns_names: &[&str]) -> Issued {
    let params = leaf_params(dns_names);
    let serial = params.serial_number.clone().unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial,
        key_der: key.serialize_der(),
    }
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `dns_names` (plus 127.0.0.1), usable as server and client.
    pub fn issue(&self, dns_names: &[&str]) -> Issued {
        let mut params = leaf_params(dns_names);
        params.use_authority_key_identifier_extension = true;
        let serial = params.serial_number.clone().unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
            key_der: key.serialize_der(),
        }
    }

    /// A PEM CRL of this CA revoking `revoked` (may be empty).
    pub fn crl_pem(&self, revoked: &[&Issued]) -> String {
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|issued| RevokedCertParams {
                    serial_number: issued.serial.clone(),
                    revocation_time: date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
    }

    /// Writes `<name>.crt`, `<name>.key` (a leaf for the DNS name `name`) and
    /// `ca.crt` into `dir` and returns the matching config.
    pub fn write_tls_config(&self, dir: &Path, name: &str) -> TlsConfig {
        let issued = self.issue(&[name]);
        write_tls_files(dir, name, &issued, &self.cert_pem())
    }
}

/// Writes an already issued leaf and a CA bundle; lets a test pair a leaf
/// with a CA other than its issuer.
pub fn write_tls_files(dir: &Path, name: &str, issued: &Issued, ca_pem: &str) -> TlsConfig {
    let certfile = dir.join(format!("{name}.crt"));
    let keyfile = dir.join(format!("{name}.key"));
    let cacertfile = dir.join("ca.crt");
    std::fs::write(&certfile, &issued.cert_pem).unwrap();
    std::fs::write(&keyfile, &issued.key_pem).unwrap();
    std::fs::write(&cacertfile, ca_pem).unwrap();
    TlsConfig {
        certfile,
        keyfile: Some(keyfile),
        cacertfile: Some(cacertfile),
        ..TlsConfig::default()
    }
}
