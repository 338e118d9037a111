//! The part of the kubelet API the runner serves for its node: container logs
//! (`kubectl logs [-f] [--tail N]` of a runner pod on the host), read from the files its
//! processes write, and port-forwards over websockets ([`super::portforward`]). HTTPS on 127.0.0.1; only the host apiserver's kubelet client certificate
//! (chained to the host's client CA, common name `kube-apiserver-kubelet-client`) is served.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::plan::LOOPBACK;
use crate::controlplane::KUBELET_CLIENT;
use crate::kubevirt::node_agent::server::{common_name, tls_config};

pub type Body = BoxBody<Bytes, Infallible>;

/// The runner's pods' local ports, by `namespace/name`.
pub type Ports = Arc<std::sync::Mutex<super::Snapshot>>;

/// A logs request: `/containerLogs/{namespace}/{pod}/{container}` with `follow` and
/// `tailLines`.
#[derive(Debug, PartialEq, Eq)]
pub struct LogsRequest {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub follow: bool,
    pub tail_lines: Option<usize>,
}

/// Parses a kubelet logs path and query; `None` for anything else (or a name that could leave
/// the runner's directory).
pub fn parse(path: &str, query: Option<&str>) -> Option<LogsRequest> {
    let rest = path.strip_prefix("/containerLogs/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let [namespace, pod, container] = parts.as_slice() else {
        return None;
    };
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s != "."
            && s != ".."
    };
    if ![namespace, pod, container].into_iter().all(|s| safe(s)) {
        return None;
    }
    let mut req = LogsRequest {
        namespace: (*namespace).to_owned(),
        pod: (*pod).to_owned(),
        container: (*container).to_owned(),
        follow: false,
        tail_lines: None,
    };
    for pair in query.unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("follow", v)) => req.follow = v == "true" || v == "1",
            Some(("tailLines", v)) => req.tail_lines = v.parse().ok(),
            _ => {}
        }
    }
    Some(req)
}

/// The last `n` lines of `text` (all of it for `None`).
pub fn tail(text: &[u8], n: Option<usize>) -> &[u8] {
    let Some(n) = n else { return text };
    let body = text.strip_suffix(b"\n").unwrap_or(text);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == n {
                return &text[i + 1..];
            }
        }
    }
    if n == 0 { &[] } else { text }
}

/// The newest log file of a container of a runner pod.
fn log_file(root: &Path, req: &LogsRequest) -> Option<PathBuf> {
    let prefix = format!("{}_{}_", req.namespace, req.pod);
    std::fs::read_dir(root.join("pods"))
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().join(format!("{}.log", req.container)))
        .filter(|p| p.is_file())
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// Starts the server on a free port of 127.0.0.1; returns the port.
pub async fn start(
    client: &Client,
    root: PathBuf,
    ports: Ports,
) -> Result<(u16, tokio::task::JoinHandle<()>), crate::controlplane::Error> {
    let io = |source| crate::controlplane::Error::Io {
        path: root.clone(),
        source,
    };
    let auth: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let ca = auth
        .get("extension-apiserver-authentication")
        .await?
        .data
        .unwrap_or_default()
        .remove("client-ca-file")
        .unwrap_or_default();
    let serving = rcgen::generate_simple_self_signed(vec![LOOPBACK.to_owned()])
        .map_err(crate::controlplane::Error::Pki)?;
    let config = tls_config(
        &serving.cert.pem(),
        &serving.signing_key.serialize_pem(),
        &ca,
    )
    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let listener = TcpListener::bind((LOOPBACK, 0)).await.map_err(io)?;
    let port = listener.local_addr().map_err(io)?.port();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let root = Arc::new(root);
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let (acceptor, root, ports) = (acceptor.clone(), root.clone(), ports.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cn = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| common_name(c));
                let service = service_fn(move |req| {
                    let (root, cn, ports) = (root.clone(), cn.clone(), ports.clone());
                    async move { Ok::<_, Infallible>(handle(req, &root, cn.as_deref(), &ports).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok((port, task))
}

fn answer(code: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{text}\n"))).boxed());
    *r.status_mut() = code;
    r
}

async fn handle(
    req: Request<Incoming>,
    root: &Path,
    cn: Option<&str>,
    ports: &Ports,
) -> Response<Body> {
    if cn != Some(KUBELET_CLIENT) {
        return answer(
            StatusCode::FORBIDDEN,
            "only the apiserver's kubelet client may call this kubelet",
        );
    }
    if let Some(pf) = super::portforward::parse(req.uri().path(), req.uri().query()) {
        let key = format!("{}/{}", pf.namespace, pf.pod);
        let local = ports.lock().ok().and_then(|s| s.ports.get(&key).cloned());
        return super::portforward::serve(req, pf, local);
    }
    let Some(logs) = parse(req.uri().path(), req.uri().query()) else {
        return answer(
            StatusCode::NOT_FOUND,
            "the control-plane runner serves /containerLogs and /portForward only",
        );
    };
    let Some(file) = log_file(root, &logs) else {
        return answer(
            StatusCode::NOT_FOUND,
            &format!(
                "no log of container {} of pod {}/{} on this node",
                logs.container, logs.namespace, logs.pod
            ),
        );
    };
    let text = std::fs::read(&file).unwrap_or_default();
    let first = Bytes::copy_from_slice(tail(&text, logs.tail_lines));
    if !logs.follow {
        return Response::new(Full::new(first).boxed());
    }
    // follow: what is there, then what is appended, until the file goes away
    let start = text.len() as u64;
    let stream = futures::stream::unfold(
        (Some(first), file, start),
        |(pending, file, offset)| async move {
            if let Some(b) = pending {
                return Some((Ok(Frame::data(b)), (None, file, offset)));
            }
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let len = std::fs::metadata(&file).ok()?.len();
                if len > offset {
                    let all = std::fs::read(&file).ok()?;
                    let new = Bytes::copy_from_slice(all.get(offset as usize..)?);
                    let next = offset + new.len() as u64;
                    return Some((Ok(Frame::data(new)), (None, file, next)));
                }
            }
        },
    );
    Response::new(StreamBody::new(stream).boxed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubelet_log_paths_and_refuses_escapes() {
        assert_eq!(
            parse(
                "/containerLogs/vc-a/a-cp-0/kube-apiserver",
                Some("follow=true&tailLines=5&timestamps=false")
            ),
            Some(LogsRequest {
                namespace: "vc-a".into(),
                pod: "a-cp-0".into(),
                container: "kube-apiserver".into(),
                follow: true,
                tail_lines: Some(5),
            })
        );
        for bad in [
            "/containerLogs/vc-a/a-cp-0",
            "/containerLogs/vc-a/../etc",
            "/containerLogs/vc-a/a-cp-0/..",
            "/containerLogs/vc-a/a-cp-0/kube-apiserver/x",
            "/containerLogs/vc-a/A/b",
            "/exec/vc-a/a-cp-0/c",
        ] {
            assert_eq!(parse(bad, None), None, "{bad}");
        }
    }

    #[test]
    fn tail_takes_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", Some(2)), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", Some(1)), b"c");
        assert_eq!(tail(b"a\nb\n", Some(5)), b"a\nb\n");
        assert_eq!(tail(b"a\nb\n", Some(0)), b"");
        assert_eq!(tail(b"a\nb\n", None), b"a\nb\n");
    }
}
