//! `pods/portforward` to a runner pod, as the kubelet serves it over a websocket
//! (`v4.channel.k8s.io`, the protocol kube-rs speaks; the host apiserver passes the upgrade
//! through): for port *i* of the request, channel `2i` carries data and `2i+1` errors; each
//! channel's first frame from the server names its port (little-endian u16). The pod port goes
//! to the local port the runner gave it.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::plan::LOOPBACK;

/// The channel protocols served, preferred first.
const PROTOCOLS: [&str; 2] = ["v4.channel.k8s.io", "v5.channel.k8s.io"];

/// A port-forward request: `/portForward/{namespace}/{pod}[/{uid}]?port=P[&port=Q]`.
#[derive(Debug, PartialEq, Eq)]
pub struct PortForward {
    pub namespace: String,
    pub pod: String,
    pub ports: Vec<u16>,
}

/// Parses a kubelet port-forward path and query; `None` for anything else.
pub fn parse(path: &str, query: Option<&str>) -> Option<PortForward> {
    let rest = path.strip_prefix("/portForward/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (namespace, pod) = match parts.as_slice() {
        [ns, pod] | [ns, pod, _] => (*ns, *pod),
        _ => return None,
    };
    if namespace.is_empty() || pod.is_empty() {
        return None;
    }
    let ports: Vec<u16> = query
        .unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == "port")
        .filter_map(|(_, v)| v.parse().ok())
        .collect();
    (!ports.is_empty()).then(|| PortForward {
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        ports,
    })
}

fn answer(code: StatusCode, text: &str) -> Response<super::kubelet::Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))).boxed());
    *r.status_mut() = code;
    r
}

/// Answers the upgrade and forwards, in the background, to the pod's local ports (`local`:
/// pod port → local port).
pub fn serve(
    mut req: Request<Incoming>,
    pf: PortForward,
    local: Option<BTreeMap<u16, u16>>,
) -> Response<super::kubelet::Body> {
    let Some(local) = local else {
        return answer(
            StatusCode::NOT_FOUND,
            &format!(
                "pod {}/{} is not running on this node",
                pf.namespace, pf.pod
            ),
        );
    };
    let mut targets = Vec::new();
    for p in &pf.ports {
        match local.get(p) {
            Some(l) => targets.push((*p, *l)),
            None => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    &format!("pod {}/{} has no port {p} here", pf.namespace, pf.pod),
                );
            }
        }
    }
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return answer(
            StatusCode::BAD_REQUEST,
            "the control-plane runner forwards ports over websockets (v4.channel.k8s.io) only",
        );
    };
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect::<Vec<_>>();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return answer(
            StatusCode::BAD_REQUEST,
            &format!("no supported websocket protocol among {offered:?} (want {PROTOCOLS:?})"),
        );
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        forward(ws, targets).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    if let Ok(v) = derive_accept_key(key.as_bytes()).parse() {
        h.insert("sec-websocket-accept", v);
    }
    if let Ok(v) = protocol.parse() {
        h.insert("sec-websocket-protocol", v);
    }
    r
}

/// One connection per requested port, between the websocket's channels and the local ports.
async fn forward<S>(ws: WebSocketStream<S>, targets: Vec<(u16, u16)>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (to_ws, mut from_tasks) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let mut writers = Vec::new();
    for (i, (pod_port, local)) in targets.iter().enumerate() {
        let data = (2 * i) as u8;
        let [lo, hi] = pod_port.to_le_bytes();
        for ch in [data, data + 1] {
            if sink.send(Message::binary(vec![ch, lo, hi])).await.is_err() {
                return;
            }
        }
        let Ok(tcp) = TcpStream::connect((LOOPBACK, *local)).await else {
            let msg = format!("connecting to port {pod_port}: refused");
            let mut frame = vec![data + 1];
            frame.extend(msg.into_bytes());
            let _ = sink.send(Message::binary(frame)).await;
            writers.push(None);
            continue;
        };
        let (mut read, write) = tcp.into_split();
        writers.push(Some(write));
        let to_ws = to_ws.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(data);
                        frame.extend_from_slice(&buf[..n]);
                        if to_ws.send(frame).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
    drop(to_ws);
    loop {
        tokio::select! {
            out = from_tasks.recv() => match out {
                Some(frame) => {
                    if sink.send(Message::binary(frame)).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            msg = stream.next() => match msg {
                Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                    let ch = b[0] as usize;
                    if ch.is_multiple_of(2)
                        && let Some(Some(w)) = writers.get_mut(ch / 2)
                        && w.write_all(&b[1..]).await.is_err()
                    {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_port_forward_paths() {
        assert_eq!(
            parse("/portForward/vc-a/a-cp-0", Some("port=2379")),
            Some(PortForward {
                namespace: "vc-a".into(),
                pod: "a-cp-0".into(),
                ports: vec![2379],
            })
        );
        assert_eq!(
            parse(
                "/portForward/vc-a/a-cp-0/uid-1",
                Some("port=2379&port=6443")
            )
            .unwrap()
            .ports,
            [2379, 6443]
        );
        for (path, q) in [
            ("/portForward/vc-a/a-cp-0", None),
            ("/portForward/vc-a", Some("port=1")),
            ("/portForward//p", Some("port=1")),
            ("/containerLogs/a/b/c", Some("port=1")),
        ] {
            assert_eq!(parse(path, q), None, "{path}");
        }
    }
}
