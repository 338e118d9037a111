//! A client whose requests share one HTTP/2 connection when the server offers HTTP/2 (ALPN;
//! kube-apiserver does), HTTP/1.1 otherwise.
//!
//! kube's own client speaks HTTP/1.1 only, so every open watch holds a TCP connection, a TLS
//! session and their buffers of its own: the syncer watches some thirty kinds in every tenant.
//! Multiplexed, a tenant costs one connection. The connection is pinged every
//! [`KEEPALIVE`] while it is open, which also keeps the per-read timeout (the kubeconfig
//! client's `read_timeout`) from ending quiet watches: on HTTP/1.1 a watch with no event for
//! that long was cut and opened again.
//!
//! Not for requests that switch protocols (exec, attach, port-forward, websockets): HTTP/2 has
//! no `Upgrade`. The syncer's tenant clients make none (those go to the host).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::MapFrame;
use hyper::body::Frame;
use hyper_rustls::{FixedServerNameResolver, HttpsConnectorBuilder};
use hyper_util::client::legacy::Builder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::Client;
use kube::client::ConfigExt;

use crate::error_chain;

/// How often an open connection is pinged (HTTP/2 PING), whether or not requests are in flight;
/// at least three times per read timeout.
pub const KEEPALIVE: Duration = Duration::from_secs(10);

/// A client for `config` that multiplexes its requests over one HTTP/2 connection (see the
/// module's documentation).
pub fn client(config: kube::Config) -> Result<Client, String> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    let mut tls = config.rustls_client_config().map_err(|e| error_chain(&e))?;
    // no session resumption: the connection is one and long-lived, and rustls' default cache
    // (256 sessions) costs every client ~29 KiB of heap (issue 16, heaptrack); a reconnect
    // does a full handshake
    tls.resumption = rustls::client::Resumption::disabled();
    let mut https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let name = name
            .clone()
            .try_into()
            .map_err(|e| format!("tls-server-name {name:?}: {e}"))?;
        https = https.with_server_name_resolver(FixedServerNameResolver::new(name));
    }
    let mut connector =
        hyper_timeout::TimeoutConnector::new(https.enable_all_versions().wrap_connector(http));
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    let transport = Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(
            config
                .read_timeout
                .map_or(KEEPALIVE, |t| KEEPALIVE.min(t / 3)),
        )
        .http2_keep_alive_while_idle(true)
        .http2_adaptive_window(true)
        .build(connector);
    let service = tower::ServiceBuilder::new()
        .map_response(|r: http::Response<hyper::body::Incoming>| r.map(unpinned))
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(|e| error_chain(&e))?)
        .layer(config.extra_headers_layer().map_err(|e| error_chain(&e))?)
        .map_err(tower::BoxError::from)
        .service(transport);
    Ok(Client::new(service, config.default_namespace))
}

/// Copies a frame's data (see [`unpinned`]).
type CopyFrame = fn(Frame<Bytes>) -> Frame<Bytes>;

/// A response body whose data no longer pins the connection's read buffer (issue 16).
///
/// h2 hands a response's data out as slices of the connection's read buffer, and a slice keeps
/// the whole buffer (16–64 KiB) allocated. A watch keeps its last slice until its next event
/// (tokio-util's `StreamReader`, under kube's line reader), so each quiet watch kept a buffer of
/// its own: about 135 KiB per idle tenant (heaptrack). Copied out, a slice holds only its bytes.
fn unpinned<B>(body: B) -> MapFrame<B, CopyFrame>
where
    B: hyper::body::Body<Data = Bytes>,
{
    fn copy(frame: Frame<Bytes>) -> Frame<Bytes> {
        frame.map_data(|d| Bytes::copy_from_slice(&d))
    }
    body.map_frame(copy as CopyFrame)
}
