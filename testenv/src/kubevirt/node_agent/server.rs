//! The node agent's answer to virt-api's calls to virt-handler (port `--console-server-port`,
//! mutual TLS with KubeVirt's CA, as virt-handler's console server): console and VNC websockets
//! (an echo), pause/unpause and freeze/unfreeze (recorded
//! and reported on the VMI by the sync loop, as virt-handler does after libvirt's event),
//! soft reboot and reset (accepted), guest agent reads (simulated guest info, no users, no
//! file systems). virt-api finds the agent through a `virt-handler` pod per node (kwok runs it
//! with host networking, so its IP is the node's 127.0.0.1).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use super::NAME;
use super::decide::{Guest, simulated_guest_os};
use crate::kubevirt::Error;

/// Common name virt-api requires of virt-handler's serving certificate.
pub const HANDLER_SERVER_CN: &str = "kubevirt.io:system:node:virt-handler";
/// Common name of virt-api's client certificate towards virt-handler.
pub const HANDLER_CLIENT_CN: &str = "kubevirt.io:system:client:virt-handler";
/// The websocket subprotocol of console and VNC streams.
pub const PLAIN_STREAM_PROTOCOL: &str = "plain.kubevirt.io";

/// Guest state by `namespace/name`, shared with the sync loop.
pub type Guests = Arc<Mutex<HashMap<String, Guest>>>;

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Stream { key: String, kind: &'static str },
    Put { key: String, op: &'static str },
    Get { key: String, what: &'static str },
    NotFound,
}

/// Routes `/v1/namespaces/<ns>/virtualmachineinstances/<name>/<subresource>`.
pub fn route(method: &Method, path: &str) -> Route {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let [
        "v1",
        "namespaces",
        ns,
        "virtualmachineinstances",
        name,
        sub @ ..,
    ] = parts.as_slice()
    else {
        return Route::NotFound;
    };
    let key = format!("{ns}/{name}");
    const PUTS: [&str; 6] = [
        "pause",
        "unpause",
        "freeze",
        "unfreeze",
        "softreboot",
        "reset",
    ];
    const GETS: [&str; 3] = ["guestosinfo", "userlist", "filesystemlist"];
    match (method, sub) {
        (&Method::GET, ["console"]) => Route::Stream {
            key,
            kind: "console",
        },
        (&Method::GET, ["vnc"]) => Route::Stream { key, kind: "vnc" },
        (&Method::PUT, [op]) => PUTS
            .iter()
            .find(|p| *p == op)
            .map(|op| Route::Put { key, op })
            .unwrap_or(Route::NotFound),
        (&Method::GET, [what]) => GETS
            .iter()
            .find(|g| *g == what)
            .map(|what| Route::Get { key, what })
            .unwrap_or(Route::NotFound),
        _ => Route::NotFound,
    }
}

/// The guest agent answer for `what`, shaped as KubeVirt's types.
pub fn guest_agent_answer(what: &str, key: &str) -> serde_json::Value {
    match what {
        "guestosinfo" => json!({
            "guestAgentVersion": "simulated",
            "hostname": key.rsplit('/').next().unwrap_or(key),
            "os": simulated_guest_os(),
            "timezone": "UTC, 0",
            "fsFreezeStatus": "",
        }),
        "userlist" => json!({"items": []}),
        _ => json!({"items": []}),
    }
}

/// Applies a PUT to the guest state; false if it changes nothing that is reported.
pub fn apply_put(guest: &mut Guest, op: &str) -> bool {
    let before = guest.clone();
    match op {
        "pause" => guest.paused = true,
        "unpause" => guest.paused = false,
        "freeze" => guest.frozen = true,
        "unfreeze" => guest.frozen = false,
        _ => {}
    }
    *guest != before
}

/// TLS configuration: our handler certificate, client certificates required and verified
/// against KubeVirt's CA (virt-api presents its handler client certificate).
pub fn tls_config(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<rustls::ServerConfig, Error> {
    let tls = |what: &str, e: String| Error::Tls(format!("{what}: {e}"));
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls("handler certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| tls("handler key", e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let der = der.map_err(|e| tls("KubeVirt CA", e.to_string()))?;
        roots
            .add(der)
            .map_err(|e| tls("KubeVirt CA", e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| tls("client verifier", e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls("protocol versions", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls("server config", e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

pub(crate) fn common_name(certs: &[CertificateDer<'_>]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// Shared state of the server.
pub struct ServerState {
    pub guests: Guests,
    /// Woken when a guest state changed (the sync loop reports it on the VMI).
    pub changed: Arc<Notify>,
    pub shutdown: CancellationToken,
}

/// Accepts connections until shutdown.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    state: Arc<ServerState>,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let accepted = tokio::select! {
            () = state.shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let cn = tls.get_ref().1.peer_certificates().and_then(common_name);
            if cn.as_deref() != Some(HANDLER_CLIENT_CN) {
                tracing::warn!(?cn, "{NAME}: refused a client that is not virt-api");
                return;
            }
            let shutdown = state.shutdown.clone();
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .with_upgrades();
            tokio::select! {
                _ = conn => {}
                () = shutdown.cancelled() => {}
            }
        });
    }
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn handle(state: &ServerState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match route(req.method(), req.uri().path()) {
        Route::NotFound => respond(StatusCode::NOT_FOUND, "not found"),
        Route::Put { key, op } => {
            let changed = match state.guests.lock() {
                Ok(mut g) => apply_put(g.entry(key.clone()).or_default(), op),
                Err(_) => false,
            };
            if changed {
                state.changed.notify_one();
            }
            tracing::info!(vmi = %key, op, "{NAME}: {op} (simulated)");
            respond(StatusCode::OK, "")
        }
        Route::Get { key, what } => {
            let body = guest_agent_answer(what, &key).to_string();
            let mut r = respond(StatusCode::OK, body);
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            r
        }
        Route::Stream { key, kind } => stream(state, key, kind, req),
    }
}

fn is_websocket(headers: &HeaderMap) -> bool {
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has(header::CONNECTION, "upgrade") && has(header::UPGRADE, "websocket")
}

/// Accepts a console/VNC websocket and echoes every message back (there is no guest to talk
/// to; an echo lets tests see bytes travel both ways through virt-api).
fn stream(
    state: &ServerState,
    key: String,
    kind: &'static str,
    mut req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let ws_key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if is_websocket(req.headers()) => k.clone(),
        _ => return respond(StatusCode::BAD_REQUEST, "websocket upgrade expected"),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shutdown = state.shutdown.clone();
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        tracing::info!(vmi = %key, "{NAME}: {kind} stream (simulated: an echo)");
        loop {
            let next = tokio::select! {
                m = ws.next() => m,
                () = shutdown.cancelled() => break,
            };
            match next {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                    if ws.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
        let _ = ws.close(None).await;
    });
    let mut r = respond(StatusCode::SWITCHING_PROTOCOLS, "");
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&derive_accept_key(ws_key.as_bytes())) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        header::HeaderValue::from_static(PLAIN_STREAM_PROTOCOL),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_virt_handlers_paths() {
        let p = "/v1/namespaces/ns/virtualmachineinstances/vm1";
        assert_eq!(
            route(&Method::GET, &format!("{p}/console")),
            Route::Stream {
                key: "ns/vm1".into(),
                kind: "console"
            }
        );
        assert_eq!(
            route(&Method::PUT, &format!("{p}/pause")),
            Route::Put {
                key: "ns/vm1".into(),
                op: "pause"
            }
        );
        assert_eq!(
            route(&Method::GET, &format!("{p}/guestosinfo")),
            Route::Get {
                key: "ns/vm1".into(),
                what: "guestosinfo"
            }
        );
        assert_eq!(route(&Method::GET, &format!("{p}/pause")), Route::NotFound);
        assert_eq!(
            route(&Method::PUT, &format!("{p}/explode")),
            Route::NotFound
        );
        assert_eq!(route(&Method::GET, "/healthz"), Route::NotFound);
    }

    #[test]
    fn pause_and_freeze_change_the_guest_once() {
        let mut g = Guest::default();
        assert!(apply_put(&mut g, "pause"));
        assert!(!apply_put(&mut g, "pause"));
        assert!(apply_put(&mut g, "unpause"));
        assert!(apply_put(&mut g, "freeze"));
        assert!(!apply_put(&mut g, "softreboot"));
        assert_eq!(
            g,
            Guest {
                paused: false,
                frozen: true
            }
        );
    }

    #[test]
    fn guest_agent_answers_are_shaped_like_kubevirts() {
        let info = guest_agent_answer("guestosinfo", "ns/vm1");
        assert_eq!(info["hostname"], "vm1");
        assert_eq!(info["os"]["id"], "simulated");
        assert_eq!(
            guest_agent_answer("userlist", "ns/vm1"),
            json!({"items": []})
        );
    }

    #[test]
    fn tls_config_builds_from_kubevirts_ca() {
        let ca = kvtenant_pki::Ca::new("kv").unwrap();
        let cert = ca.issue_server(HANDLER_SERVER_CN, &["127.0.0.1"]).unwrap();
        tls_config(&cert.cert_pem, &cert.key_pem, ca.cert_pem()).unwrap();
    }
}
