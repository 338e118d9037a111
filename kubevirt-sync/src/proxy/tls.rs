//! TLS of the proxy: its CA and serving certificate, and client certificates.
//!
//! The handshake asks for a client certificate but does not require one, and checks only that
//! the client holds the key of the certificate it presents. Which CA the chain must verify
//! against depends on the tenant, and the set of tenants changes while connections stay open, so
//! the chain is verified for every request against the running tenants' requestheader CAs
//! ([`super::auth::identify`]). A request without a verified chain gets a 401 `Status`, never a
//! TLS alert, as virt-api does.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use kvtenant_api::labels::{MANAGED_BY, MANAGED_BY_VALUE};

use super::ProxyError;

/// A CA certificate and its private key, PEM.
#[derive(Clone)]
pub struct CaPem {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaPem")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl CaPem {
    /// A new self-signed CA (ECDSA P-256, ten years).
    pub fn generate() -> Result<Self, ProxyError> {
        let ca = kvtenant_pki::Ca::new("kvtenant-subresource-proxy-ca")?;
        Ok(Self {
            cert_pem: ca.cert_pem().to_string(),
            key_pem: ca.key_pem().to_string(),
        })
    }

    /// The CA, checked: the key parses and belongs with the certificate.
    fn ca(&self) -> Result<kvtenant_pki::Ca, ProxyError> {
        Ok(kvtenant_pki::Ca::from_pem(&self.cert_pem, &self.key_pem)?)
    }

    /// A serving certificate for `sans` (DNS names or IP addresses), valid for a year.
    pub fn issue_server(&self, sans: &[String]) -> Result<(String, String), ProxyError> {
        let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
        let issued = self
            .ca()?
            .issue_server("kvtenant-subresource-proxy", &sans)?;
        Ok((issued.cert_pem, issued.key_pem))
    }
}

/// Keys of the Secret holding the proxy CA (as the webhook server's).
pub const CA_CERT_KEY: &str = "ca.crt";
pub const CA_KEY_KEY: &str = "ca.key";

fn ca_from_secret(secret: &Secret, what: &str) -> Result<CaPem, ProxyError> {
    let field = |k: &str| -> Result<String, ProxyError> {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(k))
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| ProxyError::Conflict(format!("CA Secret {what} has no usable {k:?}")))
    };
    let ca = CaPem {
        cert_pem: field(CA_CERT_KEY)?,
        key_pem: field(CA_KEY_KEY)?,
    };
    // usable: the key parses and belongs with the certificate
    ca.ca()?;
    Ok(ca)
}

/// The proxy CA kept in a host Secret (keys `ca.crt`, `ca.key`), made on first use, so that a
/// restart (or a second replica) serves with the CA the tenants' APIServices already trust.
pub async fn load_or_create_ca(
    host: &Client,
    namespace: &str,
    name: &str,
) -> Result<CaPem, ProxyError> {
    let what = format!("{namespace}/{name}");
    let api: Api<Secret> = Api::namespaced(host.clone(), namespace);
    if let Some(existing) = api.get_opt(name).await? {
        return ca_from_secret(&existing, &what);
    }
    let ca = CaPem::generate()?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(
                [(MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(
            [
                (
                    CA_CERT_KEY.to_string(),
                    ByteString(ca.cert_pem.clone().into_bytes()),
                ),
                (
                    CA_KEY_KEY.to_string(),
                    ByteString(ca.key_pem.clone().into_bytes()),
                ),
            ]
            .into_iter()
            .collect(),
        ),
        ..Secret::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(ca),
        // made meanwhile by another replica: use that one
        Err(e) if kvtenant_kubeutil::classify(&e) == kvtenant_kubeutil::ApiErrorClass::Conflict => {
            ca_from_secret(&api.get(name).await?, &what)
        }
        Err(e) => Err(e.into()),
    }
}

/// The server configuration: a fresh serving certificate from `ca`, client certificates asked
/// for and checked later, HTTP/1.1 only (upgrades need it; virt-api disables HTTP/2 too).
pub fn server_config(
    ca: &CaPem,
    sans: &[String],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
    let (cert_pem, key_pem) = ca.issue_server(sans)?;
    let mut chain = certs_from_pem(&cert_pem)?;
    chain.extend(certs_from_pem(&ca.cert_pem)?);
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| ProxyError::Tls(format!("serving key: {e}")))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_client_cert_verifier(deferred_client_verifier(provider))
        .with_single_cert(chain, key)
        .map_err(|e| ProxyError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Certificates of a PEM bundle.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProxyError::Tls(format!("PEM certificates: {e}")))
}

/// A verifier for client certificates issued by the CAs of `ca_pem` (a PEM bundle).
pub fn client_verifier(
    ca_pem: &str,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, ProxyError> {
    let mut roots = RootCertStore::empty();
    for der in certs_from_pem(ca_pem)? {
        roots
            .add(der)
            .map_err(|e| ProxyError::Tls(format!("requestheader CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ProxyError::RequestHeader(
            "the requestheader CA bundle holds no certificate".into(),
        ));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| ProxyError::Tls(format!("client verifier: {e}")))
}

/// Whether `chain` (leaf first) verifies with `verifier` now.
pub fn chain_verifies(verifier: &dyn ClientCertVerifier, chain: &[CertificateDer<'_>]) -> bool {
    match chain.split_first() {
        Some((leaf, intermediates)) => verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok(),
        None => false,
    }
}

/// The subject common name of a certificate.
pub fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// A client certificate verifier that asks for a certificate without requiring one and accepts
/// any chain at the TLS level, checking only that the client holds its key; the chain is to be
/// verified per request against the tenants' CAs ([`super::auth::the_one`]). The webhook server
/// uses it too.
pub fn deferred_client_verifier(provider: Arc<CryptoProvider>) -> Arc<dyn ClientCertVerifier> {
    Arc::new(DeferredClientVerifier { provider })
}

/// Accepts any client certificate chain at the TLS level (the chain is verified per request),
/// but checks the handshake signature, so the client holds the certificate's key.
#[derive(Debug)]
struct DeferredClientVerifier {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider() -> Arc<CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn client_cert(ca: &CaPem, cn: &str) -> Vec<CertificateDer<'static>> {
        let issued = ca.ca().unwrap().issue_client(cn, &[]).unwrap();
        certs_from_pem(&issued.cert_pem).unwrap()
    }

    #[test]
    fn a_chain_verifies_only_against_its_own_ca() {
        let a = CaPem::generate().unwrap();
        let b = CaPem::generate().unwrap();
        let va = client_verifier(&a.cert_pem, provider()).unwrap();
        let vb = client_verifier(&b.cert_pem, provider()).unwrap();
        let chain = client_cert(&a, "front-proxy-client");
        assert!(chain_verifies(va.as_ref(), &chain));
        assert!(!chain_verifies(vb.as_ref(), &chain));
        assert!(!chain_verifies(va.as_ref(), &[]));
        assert_eq!(
            common_name(&chain[0]).as_deref(),
            Some("front-proxy-client")
        );
    }

    #[test]
    fn builds_a_server_config_and_redacts_the_key() {
        let ca = CaPem::generate().unwrap();
        server_config(
            &ca,
            &[
                "localhost".into(),
                "127.0.0.1".into(),
                "x.kube-system.svc".into(),
            ],
            provider(),
        )
        .unwrap();
        assert!(!format!("{ca:?}").contains("PRIVATE"));
        assert!(client_verifier("", provider()).is_err());
    }
}
