//! TLS for the fake virt-api: a serving certificate from the simulator's own CA, and optional
//! client-certificate verification against the apiserver's front-proxy (requestheader) CA.
//!
//! Client certificates are optional at the TLS level, as in virt-api (`VerifyClientCertIfGiven`):
//! the apiserver calls admission webhooks without one, and proxies aggregated API requests with
//! its front-proxy client certificate. Each request is then checked on its own.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use super::SimError;
use crate::pki::Ca;

/// The serving side of the fake virt-api.
pub struct ServingTls {
    /// PEM of the CA that signed the serving certificate (the `caBundle` of the registrations).
    pub ca_pem: String,
    pub config: Arc<rustls::ServerConfig>,
}

/// Builds the serving certificate (SANs `localhost`, `127.0.0.1` and the `virt-api` service
/// names in `namespace`) and the rustls configuration.
pub fn serving(namespace: &str, client_ca_pem: Option<&str>) -> Result<ServingTls, SimError> {
    let ca = Ca::new("kvtenant-simulator-virt-api-ca")?;
    let svc = format!("virt-api.{namespace}.svc");
    let svc_ns = format!("virt-api.{namespace}");
    let svc_local = format!("virt-api.{namespace}.svc.cluster.local");
    let cert = ca.issue_server(
        "virt-api",
        &[
            "localhost",
            "127.0.0.1",
            &svc,
            &svc_local,
            &svc_ns,
            "virt-api",
        ],
    )?;
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SimError::Tls(format!("serving certificate: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|e| SimError::Tls(format!("serving key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| SimError::Tls(e.to_string()))?;
    let builder = match client_ca_pem {
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for der in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let der = der.map_err(|e| SimError::Tls(format!("front-proxy CA: {e}")))?;
                roots
                    .add(der)
                    .map_err(|e| SimError::Tls(format!("front-proxy CA: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| SimError::Tls(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| SimError::Tls(e.to_string()))?;
    // HTTP/1.1 only, as virt-api (it disables HTTP/2); websocket upgrades need it anyway.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServingTls {
        ca_pem: ca.cert_pem().to_string(),
        config: Arc::new(config),
    })
}

/// The subject common name of the first (leaf) certificate.
pub fn common_name(certs: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_name_of_a_client_certificate() {
        let ca = Ca::new("t").unwrap();
        let client = ca.issue_client("front-proxy-client", &[]).unwrap();
        let der: Vec<_> = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("front-proxy-client"));
    }

    #[test]
    fn builds_with_and_without_client_ca() {
        let ca = Ca::new("front").unwrap();
        serving("kubevirt", Some(ca.cert_pem())).unwrap();
        let s = serving("kubevirt", None).unwrap();
        assert!(s.ca_pem.contains("BEGIN CERTIFICATE"));
    }
}
