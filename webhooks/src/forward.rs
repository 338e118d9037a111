//! Calling a host webhook: HTTPS POST of an AdmissionReview, trusting only the webhook's
//! `caBundle`, verifying the certificate for the name the apiserver would, within a timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::lookup::Endpoint;

/// The largest AdmissionReview response read (the apiserver's own limit is about 3 MiB per
/// object; a review holds at most two plus a patch).
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Why a host webhook could not be called. All of them mean "failed calling webhook" to the
/// apiserver: the host's failurePolicy decides.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("host unreachable: {0}")]
    Unreachable(String),
    #[error("TLS with the host webhook: {0}")]
    Tls(String),
    #[error("the host webhook has no usable caBundle: {0}")]
    CaBundle(String),
    #[error("the host webhook did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the host webhook answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("HTTP with the host webhook: {0}")]
    Http(String),
}

impl ForwardError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Tls(_) => "tls",
            Self::CaBundle(_) => "ca_bundle",
            Self::Timeout(_) => "timeout",
            Self::Status { .. } => "http_status",
            Self::Http(_) => "http",
        }
    }
}

/// Calls host webhooks; caches one TLS client configuration per CA bundle.
#[derive(Default)]
pub struct Forwarder {
    configs: Mutex<HashMap<[u8; 32], Arc<rustls::ClientConfig>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

/// A TLS client configuration trusting exactly the certificates of a PEM bundle.
pub fn client_config(ca_bundle: &[u8]) -> Result<rustls::ClientConfig, ForwardError> {
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_bundle) {
        let der = der.map_err(|e| ForwardError::CaBundle(e.to_string()))?;
        roots
            .add(der)
            .map_err(|e| ForwardError::CaBundle(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(ForwardError::CaBundle("no certificate in it".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ForwardError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Forwarder {
    fn config_for(&self, ca_bundle: &[u8]) -> Result<Arc<rustls::ClientConfig>, ForwardError> {
        let key: [u8; 32] = Sha256::digest(ca_bundle).into();
        let mut cache = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let config = Arc::new(client_config(ca_bundle)?);
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(key, config.clone());
        Ok(config)
    }

    /// POSTs `body` (an AdmissionReview) to the endpoint; returns the response body of a 2xx
    /// answer. `timeout` bounds everything (connect, TLS, request, response).
    pub async fn post(
        &self,
        endpoint: &Endpoint,
        ca_bundle: Option<&[u8]>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, ForwardError> {
        let ca = ca_bundle.ok_or_else(|| {
            ForwardError::CaBundle("not set (kvtenant calls host webhooks only with one)".into())
        })?;
        let config = self.config_for(ca)?;
        match tokio::time::timeout(timeout, self.call(endpoint, config, body, timeout)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout(timeout)),
        }
    }

    async fn call(
        &self,
        ep: &Endpoint,
        config: Arc<rustls::ClientConfig>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, ForwardError> {
        let tcp = TcpStream::connect((ep.connect_host.as_str(), ep.port))
            .await
            .map_err(|e| ForwardError::Unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(ep.server_name.clone())
            .map_err(|e| ForwardError::Tls(format!("server name {:?}: {e}", ep.server_name)))?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| ForwardError::Tls(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ForwardError::Http(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let sep = if ep.path.contains('?') { '&' } else { '?' };
        let uri = format!("{}{sep}timeout={}s", ep.path, timeout.as_secs().max(1));
        let req = http::Request::post(uri)
            .header(
                http::header::HOST,
                format!("{}:{}", ep.server_name, ep.port),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ForwardError::Http(e.to_string()))?;
        let result = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| ForwardError::Http(e.to_string()))?;
            let status = resp.status();
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| ForwardError::Http(e.to_string()))?
                .to_bytes();
            if !status.is_success() {
                let text: String = String::from_utf8_lossy(&bytes).chars().take(512).collect();
                return Err(ForwardError::Status {
                    status: status.as_u16(),
                    body: text,
                });
            }
            Ok(bytes)
        }
        .await;
        conn.abort();
        result
    }
}
