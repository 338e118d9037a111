//! Talking to a control-plane pod's etcd API (etcd, or kine in its place): through the host
//! apiserver's `pods/portforward` to the pod's loopback-only client port, gRPC over HTTP/2 on
//! the forwarded stream. `kvtenant snapshot`/`restore` use it for keys, the controller for etcd's
//! membership when a control plane grows from one member to three ([`growth`]).

pub mod growth;
pub mod grpc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;

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
}

/// An HTTP/2 connection to one pod's etcd API through a port-forward (kept open while this
/// lives).
pub struct Connection {
    pub send: SendRequest<Full<Bytes>>,
    _forwarder: kube::api::Portforwarder,
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
            _forwarder: forwarder,
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
