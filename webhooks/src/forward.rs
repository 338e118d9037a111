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

/// Idle connections kept per host webhook endpoint.
const IDLE_PER_ENDPOINT: usize = 32;
/// A connection idle longer than this is closed rather than reused (Go servers close idle
/// keep-alive connections after a while; reusing one that is about to close costs a retry).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// One pool of keep-alive connections: the address dialled, the TLS name verified and the CA
/// bundle trusted. A connection is reused only for exactly the same three.
#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    connect_host: String,
    port: u16,
    server_name: String,
    ca: [u8; 32],
}

/// Calls host webhooks; caches one TLS client configuration per CA bundle and keeps HTTP/1.1
/// connections alive between reviews, so a forwarded review costs a request, not a TCP and
/// TLS handshake.
#[derive(Default)]
pub struct Forwarder {
    configs: Mutex<HashMap<[u8; 32], Arc<rustls::ClientConfig>>>,
    idle: Mutex<HashMap<PoolKey, Vec<(Sender, std::time::Instant)>>>,
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
    fn config_for(
        &self,
        key: [u8; 32],
        ca_bundle: &[u8],
    ) -> Result<Arc<rustls::ClientConfig>, ForwardError> {
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
        let ca_key: [u8; 32] = Sha256::digest(ca).into();
        let config = self.config_for(ca_key, ca)?;
        let key = PoolKey {
            connect_host: endpoint.connect_host.clone(),
            port: endpoint.port,
            server_name: endpoint.server_name.clone(),
            ca: ca_key,
        };
        match tokio::time::timeout(timeout, self.call(endpoint, key, config, body, timeout)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Timeout(timeout)),
        }
    }

    /// An idle connection of the pool that can take a request now.
    fn take_idle(&self, key: &PoolKey) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(key)?;
        while let Some((sender, since)) = list.pop() {
            if sender.is_ready() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    fn put_idle(&self, key: PoolKey, sender: Sender) {
        if !sender.is_ready() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_TIMEOUT);
        if list.len() < IDLE_PER_ENDPOINT {
            list.push((sender, std::time::Instant::now()));
        }
    }

    /// Idle connections currently pooled (all endpoints).
    pub fn idle_connections(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }

    async fn call(
        &self,
        ep: &Endpoint,
        key: PoolKey,
        config: Arc<rustls::ClientConfig>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Bytes, ForwardError> {
        let sep = if ep.path.contains('?') { '&' } else { '?' };
        let uri = format!("{}{sep}timeout={}s", ep.path, timeout.as_secs().max(1));
        let request = || {
            http::Request::post(uri.as_str())
                .header(
                    http::header::HOST,
                    format!("{}:{}", ep.server_name, ep.port),
                )
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::ACCEPT, "application/json")
                .body(Full::new(Bytes::from(body.clone())))
                .map_err(|e| ForwardError::Http(e.to_string()))
        };
        if let Some(mut sender) = self.take_idle(&key) {
            match sender.send_request(request()?).await {
                Ok(resp) => {
                    let result = read_response(resp).await;
                    if result.is_ok() {
                        self.put_idle(key, sender);
                    }
                    return result;
                }
                // the server closed the kept-alive connection before taking the request:
                // nothing reached it, so send once more on a new connection
                Err(e) if e.is_canceled() || e.is_closed() => {}
                Err(e) => return Err(ForwardError::Http(e.to_string())),
            }
        }
        let mut sender = Self::connect(ep, config).await?;
        let resp = sender
            .send_request(request()?)
            .await
            .map_err(|e| ForwardError::Http(e.to_string()))?;
        let result = read_response(resp).await;
        if result.is_ok() {
            self.put_idle(key, sender);
        }
        result
    }

    /// A new TLS connection to the endpoint, verified for its server name.
    async fn connect(
        ep: &Endpoint,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Sender, ForwardError> {
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
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ForwardError::Http(e.to_string()))?;
        // the connection task ends when the last sender is dropped or the server closes it
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "host webhook connection ended");
            }
        });
        Ok(sender)
    }
}

/// The body of a 2xx answer, or the status and the start of the body of any other.
async fn read_response(resp: http::Response<hyper::body::Incoming>) -> Result<Bytes, ForwardError> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::service_fn;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// A TLS HTTP/1.1 server that answers every POST with `{"ok":true}`, keeps connections
    /// alive, and counts accepted connections. `close_after` answers per connection, then the
    /// server closes it (as a Go server does when it is restarted or idle).
    async fn server(close_after: usize) -> (u16, String, Arc<AtomicUsize>) {
        let ca = kvtenant_pki::Ca::new("test-ca").unwrap();
        let serving = ca.issue_server("hook", &["hook.example.svc"]).unwrap();
        let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let served = Arc::new(AtomicUsize::new(0));
                    let svc = service_fn(move |_req| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let mut resp = http::Response::new(Full::new(Bytes::from_static(
                                br#"{"ok":true}"#,
                            )));
                            if n >= close_after {
                                resp.headers_mut()
                                    .insert(http::header::CONNECTION, "close".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (port, ca.cert_pem().to_string(), accepted)
    }

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            connect_host: "127.0.0.1".into(),
            port,
            server_name: "hook.example.svc".into(),
            path: "/validate".into(),
            display: format!("https://hook.example.svc:{port}/validate"),
        }
    }

    /// One review of `{}` to the test server, trusting `ca`.
    async fn post(f: &Forwarder, port: u16, ca: &str) -> Result<Bytes, ForwardError> {
        f.post(
            &endpoint(port),
            Some(ca.as_bytes()),
            b"{}".to_vec(),
            Duration::from_secs(5),
        )
        .await
    }

    #[tokio::test]
    async fn reviews_reuse_one_kept_alive_connection() {
        let (port, ca, accepted) = server(usize::MAX).await;
        let f = Forwarder::default();
        for _ in 0..5 {
            let body = post(&f, port, &ca).await.unwrap();
            assert_eq!(&body[..], br#"{"ok":true}"#);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one TLS connection for 5 reviews"
        );
        assert_eq!(f.idle_connections(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        // the server closes every connection after one answer
        let (port, ca, accepted) = server(1).await;
        let f = Forwarder::default();
        for _ in 0..3 {
            post(&f, port, &ca).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn another_ca_bundle_does_not_share_connections() {
        let (port, ca, _) = server(usize::MAX).await;
        let other = kvtenant_pki::Ca::new("other").unwrap();
        let f = Forwarder::default();
        post(&f, port, &ca).await.unwrap();
        // a pooled connection was verified against `ca`; a review that must trust only `other`
        // gets its own handshake, which fails
        let err = post(&f, port, other.cert_pem()).await.unwrap_err();
        assert!(matches!(err, ForwardError::Tls(_)), "{err}");
    }
}
