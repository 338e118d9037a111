//! Certificates for kvtenant's control planes and test environments: certificate authorities,
//! serving and client certificates, the service-account key pair, and kubeconfigs with embedded
//! certificates. ECDSA P-256 throughout; private keys never appear in `Debug` output.

pub mod admission;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use time::{Duration, OffsetDateTime};

/// A PEM certificate with its PEM (PKCS#8) private key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKey")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A certificate authority that can issue serving and client certificates.
pub struct Ca {
    cert_pem: String,
    key_pem: String,
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn dn(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Ca {
    /// A new self-signed CA valid for ten years.
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        Self::new_with_validity(common_name, Duration::days(3650))
    }

    /// A new self-signed CA valid for `validity` from now.
    pub fn new_with_validity(common_name: &str, validity: Duration) -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + validity;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: params.not_after,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its PEM certificate and PEM private key (as kept in a Secret); fails unless
    /// the key parses and belongs with the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, rcgen::Error> {
        let bad = |e: String| rcgen::Error::PemError(e);
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad(e.to_string()))?;
        let cert = pem.parse_x509().map_err(|e| bad(e.to_string()))?;
        let key = KeyPair::from_pem(key_pem)?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(bad(
                "the private key does not belong to the CA certificate".into()
            ));
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            not_after,
            issuer,
        })
    }

    /// The CA's private key (PEM, PKCS#8), for persisting the CA in a Secret.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// When the CA certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA certificate (PEM), for trust bundles.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A TLS serving certificate for the given DNS names and IP addresses, valid for a year.
    pub fn issue_server(&self, common_name: &str, sans: &[&str]) -> Result<CertKey, rcgen::Error> {
        self.issue_server_for(common_name, sans, Duration::days(365))
    }

    /// A TLS serving certificate valid for `validity` from now, never past the CA's own expiry.
    pub fn issue_server_for(
        &self,
        common_name: &str,
        sans: &[&str],
        validity: Duration,
    ) -> Result<CertKey, rcgen::Error> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name = dn(common_name, &[]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = (now + validity).min(self.not_after);
        self.sign(params)
    }

    /// A TLS client certificate; Kubernetes reads the user from the common name and the groups
    /// from the organizations.
    pub fn issue_client(
        &self,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<CertKey, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(common_name, organizations);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<CertKey, rcgen::Error> {
        validity(&mut params, 365);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<CertKey, rcgen::Error> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A key pair for signing and verifying service-account tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceAccountKey {
    pub private_key_pem: String,
    pub public_key_pem: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("private_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Renders a kubeconfig with embedded certificates for one client-certificate user.
pub fn render_kubeconfig(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    client: &CertKey,
) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: {cluster}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {cluster}
  context:
    cluster: {cluster}
    user: {user}
current-context: {cluster}
",
        ca = b64(ca_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
    )
}

impl ServiceAccountKey {
    pub fn new() -> Result<Self, rcgen::Error> {
        let key = KeyPair::generate()?;
        Ok(Self {
            private_key_pem: key.serialize_pem(),
            public_key_pem: key.public_key_pem(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_pem_certificates() {
        let ca = Ca::new("test-ca").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = ca
            .issue_server("apiserver", &["localhost", "127.0.0.1"])
            .unwrap();
        assert!(server.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(server.key_pem.contains("PRIVATE KEY"));
        assert_ne!(server.cert_pem, ca.cert_pem());
        let dbg = format!("{server:?}");
        assert!(
            !dbg.contains("PRIVATE KEY"),
            "keys must never be printed: {dbg}"
        );
    }

    fn not_after_of(pem: &str) -> OffsetDateTime {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        pem.parse_x509().unwrap().validity().not_after.to_datetime()
    }

    #[test]
    fn a_ca_read_back_from_pem_issues_certificates_it_signed() {
        let ca = Ca::new("persisted").unwrap();
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(
            again.not_after().unix_timestamp(),
            ca.not_after().unix_timestamp()
        );
        let server = again.issue_server("s", &["localhost"]).unwrap();
        // issued by the same CA: its issuer is the CA's subject
        let (_, pem) = x509_parser::pem::parse_x509_pem(server.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        assert!(
            cert.issuer().to_string().contains("persisted"),
            "{}",
            cert.issuer()
        );
    }

    #[test]
    fn a_key_of_another_ca_is_refused() {
        let a = Ca::new("a").unwrap();
        let b = Ca::new("b").unwrap();
        let err = Ca::from_pem(a.cert_pem(), b.key_pem()).expect_err("mismatch refused");
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(Ca::from_pem("not a certificate", a.key_pem()).is_err());
    }

    #[test]
    fn serving_certificates_never_outlive_their_ca() {
        let ca = Ca::new_with_validity("short", Duration::days(2)).unwrap();
        let long = ca
            .issue_server_for("s", &["localhost"], Duration::days(30))
            .unwrap();
        assert!(not_after_of(&long.cert_pem) <= ca.not_after());
        let short = ca
            .issue_server_for("s", &["localhost"], Duration::hours(1))
            .unwrap();
        assert!(not_after_of(&short.cert_pem) < ca.not_after() - Duration::days(1));
    }
}
