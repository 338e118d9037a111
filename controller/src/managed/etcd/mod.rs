//! Talking to an etcd API: a control-plane pod's (etcd, or kine in its place) through the host
//! apiserver's `pods/portforward` to the pod's loopback-only client port, or an external etcd
//! over TLS with a client certificate; gRPC over HTTP/2 either way. `kvtenant snapshot`/`restore`
//! use it for keys, the controller for etcd's membership when a control plane grows from one
//! member to three ([`growth`]).

pub mod growth;
pub mod grpc;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use grpc::{GrpcError, Member};

/// The etcd API's port (etcd or kine) in the control-plane pod.
pub const CLIENT_PORT: u16 = 2379;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("port-forwarding to pod {pod}'s etcd API: {source}")]
    PortForward {
        pod: String,
        #[source]
        source: kube::Error,
    },
    #[error("the port-forward to pod {pod} gave no stream")]
    NoStream { pod: String },
    #[error("talking gRPC to pod {pod}'s etcd API: {source}")]
    Handshake {
        pod: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{endpoint}: {what}")]
    Endpoint { endpoint: String, what: String },
}

/// The TLS material of a client of an external etcd (PEM).
pub struct ClientTls<'a> {
    pub ca: &'a [u8],
    /// Certificate and key, when etcd wants client certificates.
    pub cert_key: Option<(&'a [u8], &'a [u8])>,
}

impl ClientTls<'_> {
    /// A client configuration trusting exactly the CA (ring; ALPN h2, as gRPC servers want).
    fn config(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(self.ca) {
            let der = der.map_err(|e| format!("the CA certificate: {e}"))?;
            roots
                .add(der)
                .map_err(|e| format!("the CA certificate: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match self.cert_key {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("the client certificate: {e}"))?;
                let key = PrivateKeyDer::from_pem_slice(key)
                    .map_err(|e| format!("the client key: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client certificate: {e}"))?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// An HTTP/2 connection to an etcd API (a port-forward is kept open while this lives).
pub struct Connection {
    pub send: SendRequest<Full<Bytes>>,
    _forwarder: Option<kube::api::Portforwarder>,
}

impl Connection {
    pub async fn port_forward(pods: &Api<Pod>, pod: &str) -> Result<Self, ConnectError> {
        let mut forwarder = pods
            .portforward(pod, &[CLIENT_PORT])
            .await
            .map_err(|source| ConnectError::PortForward {
                pod: pod.to_owned(),
                source,
            })?;
        let stream = forwarder
            .take_stream(CLIENT_PORT)
            .ok_or_else(|| ConnectError::NoStream {
                pod: pod.to_owned(),
            })?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|source| ConnectError::Handshake {
                    pod: pod.to_owned(),
                    source,
                })?;
        tokio::spawn(conn);
        Ok(Self {
            send,
            _forwarder: Some(forwarder),
        })
    }

    /// A connection to an etcd endpoint: `https://host:port` over TLS (ALPN h2) verified with
    /// `tls`'s CA, or `http://host:port` in the clear (HTTP/2 prior knowledge).
    pub async fn dial(endpoint: &str, tls: Option<&ClientTls<'_>>) -> Result<Self, ConnectError> {
        let fail = |what: String| ConnectError::Endpoint {
            endpoint: endpoint.to_owned(),
            what,
        };
        let (secure, authority) = match (
            endpoint.strip_prefix("https://"),
            endpoint.strip_prefix("http://"),
        ) {
            (Some(a), _) => (true, a),
            (_, Some(a)) => (false, a),
            _ => return Err(fail("neither an https:// nor an http:// endpoint".into())),
        };
        let authority = authority.trim_end_matches('/');
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let handshake = |e: hyper::Error| fail(e.to_string());
        let send = if secure {
            let tls =
                tls.ok_or_else(|| fail("https needs a CA certificate (a TLS Secret)".into()))?;
            let host = match authority.rsplit_once(':') {
                Some((h, _)) => h,
                None => authority,
            }
            .trim_start_matches('[')
            .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned()).map_err(|e| fail(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(tls.config().map_err(fail)?))
                .connect(name, tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .map_err(handshake)?;
            tokio::spawn(conn);
            send
        } else {
            let (send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .map_err(handshake)?;
            tokio::spawn(conn);
            send
        };
        Ok(Self {
            send,
            _forwarder: None,
        })
    }

    /// The cluster's members, learners included.
    pub async fn members(&mut self) -> Result<Vec<Member>, GrpcError> {
        let req = grpc::MemberListRequest { linearizable: true };
        let resp: grpc::MemberListResponse =
            grpc::call(&mut self.send, "Cluster/MemberList", &req).await?;
        Ok(resp.members)
    }

    /// Carries out one membership change.
    pub async fn change(&mut self, change: &growth::Change) -> Result<(), GrpcError> {
        use growth::Change as C;
        let _: grpc::Ignored = match change {
            C::SetPeerUrl { id, url } => {
                let req = grpc::MemberUpdateRequest {
                    id: *id,
                    peer_urls: vec![url.clone()],
                };
                grpc::call(&mut self.send, "Cluster/MemberUpdate", &req).await?
            }
            C::AddLearner { url } => {
                let req = grpc::MemberAddRequest {
                    peer_urls: vec![url.clone()],
                    is_learner: true,
                };
                grpc::call(&mut self.send, "Cluster/MemberAdd", &req).await?
            }
            C::Promote { id, .. } => {
                let req = grpc::MemberPromoteRequest { id: *id };
                grpc::call(&mut self.send, "Cluster/MemberPromote", &req).await?
            }
        };
        Ok(())
    }
}
