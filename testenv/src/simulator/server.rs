//! The HTTPS server of the fake virt-api: a TLS accept loop on 127.0.0.1 serving HTTP/1.1 (with
//! upgrades, for the websocket subresources) through [`virt_api::handle`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::tls;
use super::virt_api::{self, ApiState};

/// What the TLS handshake told about the client.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// Common name of the verified client certificate, if the client sent one.
    pub client_cn: Option<String>,
}

/// Accepts connections until the simulator's shutdown token is cancelled.
pub async fn serve(listener: TcpListener, config: Arc<rustls::ServerConfig>, state: Arc<ApiState>) {
    let acceptor = TlsAcceptor::from(config);
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(connection(acceptor.clone(), tcp, state.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "simulator virt-api: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
}

async fn connection(acceptor: TlsAcceptor, tcp: TcpStream, state: Arc<ApiState>) {
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "simulator virt-api: TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let info = Arc::new(ConnInfo {
        client_cn: tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(tls::common_name),
    });
    let shutdown = state.shutdown.clone();
    let svc = service_fn(move |req| {
        let state = state.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(virt_api::handle(state, info, req).await) }
    });
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades();
    tokio::select! {
        res = conn => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "simulator virt-api: connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {}
    }
}
