//! Calling a host webhook: HTTPS POST of an AdmissionReview, trusting only the webhook's
//! `caBundle`, verifying the certificate for the name the apiserver would, within the
//! webhook's timeout.
//!
//! The HTTP client is reqwest: one client per trust root (CA bundle), each with its own
//! connection pool, HTTP/2 when the webhook server offers it (ALPN) and HTTP/1.1 otherwise.
//! TLS is rustls with the ring provider, given explicitly, so nothing depends on a
//! process-wide default provider. The URL names the host the certificate must be valid for
//! (a Service's `<name>.<namespace>.svc`); a resolver maps that name to the address kvtenant
//! dials (an ExternalName Service's external name), as the apiserver's service resolver does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

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

/// Idle connections kept per host webhook endpoint (HTTP/1.1; one HTTP/2 connection carries
/// every concurrent review).
const IDLE_PER_ENDPOINT: usize = 32;
/// A connection idle longer than this is closed rather than reused (Go servers close idle
/// keep-alive connections after a while; reusing one that is about to close costs a retry).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients (trust roots) and dial routes kept; past this the cache starts over, so a host
/// whose webhook configurations churn cannot grow it without bound.
const MAX_CACHED: usize = 64;

/// Calls host webhooks; one reqwest client per CA bundle (sha256), so a connection verified
/// against one bundle never serves a review that must trust another. Pools are keyed by the
/// certificate's name and port: after an ExternalName Service is pointed elsewhere, connections
/// to the old target serve until they idle out ([`IDLE_TIMEOUT`]) or close.
#[derive(Default)]
pub struct Forwarder {
    clients: Mutex<HashMap<[u8; 32], reqwest::Client>>,
    routes: Arc<Routes>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

/// A TLS client configuration trusting exactly the certificates of a PEM bundle (ring
/// provider; ALPN `http/1.1`).
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

/// Where to dial for a name in a webhook URL: the host an endpoint named for it, else the
/// name itself. Shared by every client of a [`Forwarder`].
#[derive(Default)]
struct Routes(RwLock<HashMap<String, String>>);

impl Routes {
    fn dial_host(&self, name: &str) -> String {
        let routes = self.0.read().unwrap_or_else(|e| e.into_inner());
        dial_host(&routes, name).to_string()
    }

    fn set(&self, server_name: &str, connect_host: &str) {
        {
            let routes = self.0.read().unwrap_or_else(|e| e.into_inner());
            if routes.get(server_name).map(String::as_str) == Some(connect_host) {
                return;
            }
        }
        let mut routes = self.0.write().unwrap_or_else(|e| e.into_inner());
        if routes.len() >= MAX_CACHED {
            routes.clear();
        }
        routes.insert(server_name.to_string(), connect_host.to_string());
    }
}

/// The host to dial for `name`: its route when there is one (IPv6 brackets dropped), else
/// `name`.
fn dial_host<'a>(routes: &'a HashMap<String, String>, name: &'a str) -> &'a str {
    let host = routes.get(name).map(String::as_str).unwrap_or(name);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// reqwest's name resolution for the forwarder's clients: the routed host, looked up by the
/// system resolver (an address is taken as it is).
struct RouteResolver(Arc<Routes>);

impl reqwest::dns::Resolve for RouteResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = self.0.dial_host(name.as_str());
        Box::pin(async move {
            // port 0: reqwest puts the URL's port in
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The URL of a review request: the name the certificate must be valid for, the port, the
/// path, and the `timeout` query parameter the apiserver adds.
pub fn review_url(ep: &Endpoint, timeout: Duration) -> String {
    let host = if ep.server_name.contains(':') && !ep.server_name.starts_with('[') {
        format!("[{}]", ep.server_name)
    } else {
        ep.server_name.clone()
    };
    let sep = if ep.path.contains('?') { '&' } else { '?' };
    format!(
        "https://{host}:{}{}{sep}timeout={}s",
        ep.port,
        ep.path,
        timeout.as_secs().max(1)
    )
}

/// What a failed reqwest call means for the review: a timeout, a TLS failure (a rustls error
/// anywhere in the chain: untrusted or wrong-name certificate, handshake), a connection that
/// could not be made, or any other HTTP failure.
fn classify(err: &reqwest::Error, timeout: Duration) -> ForwardError {
    if err.is_timeout() {
        return ForwardError::Timeout(timeout);
    }
    let text = chain_text(err);
    if has_rustls_error(err) {
        ForwardError::Tls(text)
    } else if err.is_connect() {
        ForwardError::Unreachable(text)
    } else {
        ForwardError::Http(text)
    }
}

/// An error and its sources, joined by ": ".
fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.ends_with(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// Whether a rustls error is in the chain. An `io::Error` wrapping one (the TLS connector
/// wraps it twice) hides it from `source()`, which returns the wrapped error's source, so
/// wrapped errors are looked into too.
fn has_rustls_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        let mut wrapped = Some(e);
        while let Some(w) = wrapped {
            if w.is::<rustls::Error>() {
                return true;
            }
            wrapped = w
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|i| i as &(dyn std::error::Error + 'static));
        }
        next = e.source();
    }
    false
}

impl Forwarder {
    /// The client trusting `ca_bundle` (made on first use).
    fn client_for(&self, ca_bundle: &[u8]) -> Result<reqwest::Client, ForwardError> {
        let key: [u8; 32] = Sha256::digest(ca_bundle).into();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut tls = client_config(ca_bundle)?;
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .dns_resolver(Arc::new(RouteResolver(self.routes.clone())))
            // the apiserver calls webhooks directly and does not follow redirects
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(IDLE_PER_ENDPOINT)
            .pool_idle_timeout(IDLE_TIMEOUT)
            .user_agent(kvtenant_kubeutil::USER_AGENT)
            .build()
            .map_err(|e| ForwardError::Tls(chain_text(&e)))?;
        if clients.len() >= MAX_CACHED {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    /// POSTs `body` (an AdmissionReview) to the endpoint; returns the response body of a 2xx
    /// answer. `timeout` bounds everything (connect, TLS, request, response body).
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
        let client = self.client_for(ca)?;
        self.routes
            .set(&endpoint.server_name, &endpoint.connect_host);
        let request = client
            .post(review_url(endpoint, timeout))
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .timeout(timeout)
            .body(body);
        let resp = request.send().await.map_err(|e| classify(&e, timeout))?;
        let status = resp.status();
        let bytes = read_limited(resp, timeout).await?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&bytes).chars().take(512).collect();
            return Err(ForwardError::Status {
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(bytes)
    }
}

/// The response body, at most [`MAX_RESPONSE_BYTES`].
async fn read_limited(
    mut resp: reqwest::Response,
    timeout: Duration,
) -> Result<Bytes, ForwardError> {
    let mut out = BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e, timeout))? {
        if out.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ForwardError::Http(format!(
                "the answer is larger than {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::PrivateKeyDer;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;

    /// A TLS server offering `alpn` that answers every POST with the HTTP version it was
    /// made in (`HTTP/1.1`, `HTTP/2.0`), and counts accepted connections. Over HTTP/1.1,
    /// `close_after` answers per connection, then the server closes it (as a Go server does
    /// when it is restarted or idle). Path `/slow` answers after 5 s, `/fail` with 500.
    async fn server(alpn: &[&[u8]], close_after: usize) -> (u16, String, Arc<AtomicUsize>) {
        let ca = kvtenant_pki::Ca::new("test-ca").unwrap();
        let serving = ca
            .issue_server("hook", &["hook.example.svc", "localhost"])
            .unwrap();
        let certs = CertificateDer::pem_slice_iter(serving.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(serving.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
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
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let served = Arc::new(AtomicUsize::new(0));
                    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                        async move {
                            let version = req.version();
                            let path = req.uri().path().to_string();
                            if path == "/slow" {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                            }
                            let mut resp =
                                http::Response::new(Full::new(Bytes::from(format!("{version:?}"))));
                            if path == "/fail" {
                                *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            }
                            if version == http::Version::HTTP_11 && n >= close_after {
                                resp.headers_mut()
                                    .insert(http::header::CONNECTION, "close".parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        (port, ca.cert_pem().to_string(), accepted)
    }

    const H1: &[&[u8]] = &[b"http/1.1"];
    const H2: &[&[u8]] = &[b"h2", b"http/1.1"];

    /// The test server by the name its certificate holds, dialled at 127.0.0.1.
    fn endpoint(port: u16, path: &str) -> Endpoint {
        Endpoint {
            connect_host: "127.0.0.1".into(),
            port,
            server_name: "hook.example.svc".into(),
            path: path.into(),
            display: format!("https://hook.example.svc:{port}{path}"),
        }
    }

    /// One review of `{}` to the test server, trusting `ca`.
    async fn post(f: &Forwarder, port: u16, ca: &str) -> Result<Bytes, ForwardError> {
        f.post(
            &endpoint(port, "/validate"),
            Some(ca.as_bytes()),
            b"{}".to_vec(),
            Duration::from_secs(5),
        )
        .await
    }

    #[tokio::test]
    async fn http1_reviews_reuse_one_kept_alive_connection() {
        let (port, ca, accepted) = server(H1, usize::MAX).await;
        let f = Forwarder::default();
        for _ in 0..5 {
            let body = post(&f, port, &ca).await.unwrap();
            assert_eq!(&body[..], b"HTTP/1.1");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one TLS connection for 5 reviews"
        );
    }

    #[tokio::test]
    async fn http2_when_the_server_offers_it_with_concurrent_reviews_on_one_connection() {
        let (port, ca, accepted) = server(H2, usize::MAX).await;
        let f = Forwarder::default();
        // the first review opens the connection; then 8 at once share it
        assert_eq!(&post(&f, port, &ca).await.unwrap()[..], b"HTTP/2.0");
        let all = futures::future::join_all((0..8).map(|_| post(&f, port, &ca))).await;
        for r in all {
            assert_eq!(&r.unwrap()[..], b"HTTP/2.0");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced() {
        // the server closes every connection after one answer
        let (port, ca, accepted) = server(H1, 1).await;
        let f = Forwarder::default();
        for _ in 0..3 {
            post(&f, port, &ca).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn another_ca_bundle_does_not_share_connections() {
        let (port, ca, _) = server(H2, usize::MAX).await;
        let other = kvtenant_pki::Ca::new("other").unwrap();
        let f = Forwarder::default();
        post(&f, port, &ca).await.unwrap();
        // a pooled connection was verified against `ca`; a review that must trust only `other`
        // gets its own handshake, which fails
        let err = post(&f, port, other.cert_pem()).await.unwrap_err();
        assert!(matches!(err, ForwardError::Tls(_)), "{err}");
    }

    #[tokio::test]
    async fn the_certificate_must_hold_the_service_name() {
        let (port, ca, _) = server(H1, usize::MAX).await;
        let mut ep = endpoint(port, "/validate");
        ep.server_name = "other.example.svc".into();
        let err = Forwarder::default()
            .post(
                &ep,
                Some(ca.as_bytes()),
                b"{}".to_vec(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Tls(_)), "{err}");
    }

    #[tokio::test]
    async fn the_dialled_host_is_resolved_by_name() {
        // an ExternalName Service naming `localhost`
        let (port, ca, _) = server(H1, usize::MAX).await;
        let mut ep = endpoint(port, "/validate");
        ep.connect_host = "localhost".into();
        let body = Forwarder::default()
            .post(
                &ep,
                Some(ca.as_bytes()),
                b"{}".to_vec(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(&body[..], b"HTTP/1.1");
    }

    #[tokio::test]
    async fn the_webhook_timeout_bounds_the_call() {
        let (port, ca, _) = server(H2, usize::MAX).await;
        let started = std::time::Instant::now();
        let err = Forwarder::default()
            .post(
                &endpoint(port, "/slow"),
                Some(ca.as_bytes()),
                b"{}".to_vec(),
                Duration::from_millis(300),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::Timeout(_)), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn an_error_status_a_closed_port_and_no_ca_bundle_are_told_apart() {
        let (port, ca, _) = server(H1, usize::MAX).await;
        let f = Forwarder::default();
        let err = f
            .post(
                &endpoint(port, "/fail"),
                Some(ca.as_bytes()),
                b"{}".to_vec(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ForwardError::Status { status: 500, body } if body == "HTTP/1.1"),
            "{err}"
        );
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = post(&f, closed_port, &ca).await.unwrap_err();
        assert!(matches!(err, ForwardError::Unreachable(_)), "{err}");
        let err = f
            .post(
                &endpoint(port, "/"),
                None,
                b"{}".to_vec(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ForwardError::CaBundle(_)), "{err}");
    }

    #[test]
    fn a_rustls_error_is_found_inside_wrapped_io_errors() {
        let tls = rustls::Error::HandshakeNotComplete;
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        assert!(has_rustls_error(&std::io::Error::other(inner)));
        assert!(!has_rustls_error(&std::io::Error::other(
            "connection refused"
        )));
    }

    #[test]
    fn review_urls_name_the_certificate_host_and_carry_the_timeout() {
        let mut ep = endpoint(8443, "/validate");
        assert_eq!(
            review_url(&ep, Duration::from_secs(10)),
            "https://hook.example.svc:8443/validate?timeout=10s"
        );
        ep.path = "/m?x=1".into();
        ep.server_name = "fd00::1".into();
        assert_eq!(
            review_url(&ep, Duration::from_millis(300)),
            "https://[fd00::1]:8443/m?x=1&timeout=1s"
        );
    }

    #[test]
    fn a_name_is_dialled_at_its_route_or_as_it_is() {
        let routes: HashMap<String, String> = [
            ("hook.ns.svc".to_string(), "localhost".to_string()),
            ("v6.ns.svc".to_string(), "[fd00::1]".to_string()),
        ]
        .into();
        assert_eq!(dial_host(&routes, "hook.ns.svc"), "localhost");
        assert_eq!(dial_host(&routes, "v6.ns.svc"), "fd00::1");
        assert_eq!(dial_host(&routes, "other.ns.svc"), "other.ns.svc");
    }
}
