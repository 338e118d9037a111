//! Forwarding to the host: through the host apiserver (so host RBAC, audit and the host's
//! aggregator apply) with kvtenant's host client.
//!
//! Plain calls are buffered: the request body's `metadata.namespace` (expand-vm-spec) is mapped
//! to the host namespace, and the answer has the host namespace turned back into the tenant's
//! (Status messages, expanded VMs) and kvtenant's bookkeeping labels removed from objects.
//! Upgrades (websocket for console/vnc/portforward/usbredir/vsock, SPDY alike) are tunnelled:
//! the handshake headers go to the host as they came, the host's `101` comes back as it is, and
//! then bytes flow both ways untouched until either side closes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kube::Client;
use kvtenant_api::labels::{
    MANAGED_BY, TENANT_NAME, TENANT_NAMESPACE, TENANT_UID, VIRTUALCLUSTER_UID,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::ProxyState;
use super::auth::{TenantAuth, UserInfo};
use super::status::{self, Body};
use kvtenant_api::labels::SPEC_HASH;

/// Largest request or response body buffered.
pub const MAX_BODY: usize = 16 << 20;

/// Handshake headers of websocket and SPDY upgrades, passed to the host as they came.
const UPGRADE_REQUEST_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Handshake headers of the host's `101`, passed back as they came.
const UPGRADE_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
];

/// Whether a request asks for a protocol upgrade.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

fn is_json(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .is_some_and(|s| s.contains("json"))
}

fn is_text(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| s.contains("json") || s.starts_with("text/"))
}

/// The request body for the host: a JSON object whose `metadata.namespace` is the tenant
/// namespace gets the host namespace (virt-api checks it against the path).
pub fn request_body_to_host(body: Bytes, tenant_ns: &str, host_ns: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(&body) else {
        return body;
    };
    match v.pointer_mut("/metadata/namespace") {
        Some(ns) if ns.as_str() == Some(tenant_ns) => {
            *ns = Value::String(host_ns.to_string());
            serde_json::to_vec(&v).map(Bytes::from).unwrap_or(body)
        }
        _ => body,
    }
}

/// kvtenant's bookkeeping on host copies, which the tenant never wrote.
fn strip_bookkeeping(v: &mut Value) {
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(MANAGED_BY);
        labels.remove(VIRTUALCLUSTER_UID);
    }
    if let Some(annotations) = v
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        for k in [TENANT_NAMESPACE, TENANT_NAME, TENANT_UID, SPEC_HASH] {
            annotations.remove(k);
        }
    }
}

/// The host's answer for the tenant: the host namespace becomes the tenant namespace wherever
/// it appears in a text body; objects lose kvtenant's labels and annotations.
pub fn response_body_to_tenant(
    body: Bytes,
    content_type: Option<&HeaderValue>,
    host_ns: &str,
    tenant_ns: &str,
) -> Bytes {
    if !is_text(content_type) || host_ns.is_empty() {
        return body;
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        return body;
    };
    let replaced = text.replace(host_ns, tenant_ns);
    if is_json(content_type)
        && let Ok(mut v) = serde_json::from_str::<Value>(&replaced)
        && v.get("metadata").is_some_and(Value::is_object)
        && v.get("kind").and_then(Value::as_str) != Some("Status")
    {
        strip_bookkeeping(&mut v);
        if let Ok(out) = serde_json::to_vec(&v) {
            return Bytes::from(out);
        }
    }
    Bytes::from(replaced)
}

/// User-Agent of calls to the host: host audit logs show for whom kvtenant made the call.
pub fn user_agent(auth: &TenantAuth, user: &UserInfo) -> Option<HeaderValue> {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != ';' && c != '(' && c != ')' {
                    c
                } else {
                    '_'
                }
            })
            .take(128)
            .collect()
    };
    HeaderValue::from_str(&format!(
        "kvtenant-proxy (virtualcluster={}; user={})",
        clean(&auth.label),
        clean(&user.name)
    ))
    .ok()
}

fn message_to_tenant(message: &str, host_ns: &str, tenant_ns: &str) -> String {
    if host_ns.is_empty() {
        message.to_string()
    } else {
        message.replace(host_ns, tenant_ns)
    }
}

/// Where a call goes on the host and for whom.
pub struct Target<'a> {
    pub auth: &'a TenantAuth,
    pub user: &'a UserInfo,
    /// Host path and query.
    pub path_and_query: String,
    pub tenant_ns: &'a str,
    /// Empty for calls outside a namespace.
    pub host_ns: &'a str,
}

/// A buffered call.
pub async fn plain(
    state: &ProxyState,
    target: &Target<'_>,
    method: Method,
    headers: &HeaderMap,
    body: Bytes,
) -> Response<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(target.path_and_query.as_str());
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            b = b.header(name, v.clone());
        }
    }
    if let Some(ua) = user_agent(target.auth, target.user) {
        b = b.header(header::USER_AGENT, ua);
    }
    let body = if target.host_ns.is_empty() {
        body
    } else {
        request_body_to_host(body, target.tenant_ns, target.host_ns)
    };
    let req = match b.body(kube::client::Body::from(body)) {
        Ok(r) => r,
        Err(e) => return status::internal(&format!("building the host request: {e}")),
    };
    let host = state.syncer.host().clone();
    let call = async move {
        let res = host.send(req).await?;
        let (parts, body) = res.into_parts();
        let bytes = body.collect_bytes().await?;
        Ok::<_, kube::Error>((parts, bytes))
    };
    let (parts, bytes) = match tokio::time::timeout(state.config.request_timeout, call).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return host_unreachable(target, &e),
        Err(_) => return host_timeout(state),
    };
    if bytes.len() > MAX_BODY {
        return status::internal("the host's answer is too large");
    }
    tenant_answer(&parts, bytes, target)
}

/// The host's (non-upgrade) answer as the tenant gets it: status and content type kept, host
/// namespaces in the body named as the tenant's.
pub fn tenant_answer(
    parts: &http::response::Parts,
    bytes: Bytes,
    target: &Target<'_>,
) -> Response<Body> {
    let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    let body = response_body_to_tenant(
        bytes,
        content_type.as_ref(),
        target.host_ns,
        target.tenant_ns,
    );
    let mut out = Response::builder().status(parts.status);
    if let Some(ct) = content_type {
        out = out.header(header::CONTENT_TYPE, ct);
    }
    out.body(http_body_util::Full::new(body))
        .unwrap_or_else(|_| status::internal("building the response"))
}

/// 502 for a host request that failed, the message naming tenant namespaces only.
pub fn host_unreachable(target: &Target<'_>, e: &kube::Error) -> Response<Body> {
    status::failure(
        502,
        "ServiceUnavailable",
        &message_to_tenant(
            &format!("reaching the host cluster: {e}"),
            target.host_ns,
            target.tenant_ns,
        ),
        None,
    )
}

/// 504 for a host request that outlived the proxy's request timeout.
pub fn host_timeout(state: &ProxyState) -> Response<Body> {
    status::failure(
        504,
        "Timeout",
        &format!(
            "the host cluster did not answer within {:?}",
            state.config.request_timeout
        ),
        None,
    )
}

/// Sends a request without a body (`b`: method, path, headers) to the host for `target`, with
/// kvtenant's user agent, within the request timeout: the host's response (its body not read
/// yet, for streams), or the answer the tenant gets instead (500, 502, 504).
pub async fn send_bodiless(
    state: &ProxyState,
    target: &Target<'_>,
    mut b: http::request::Builder,
) -> Result<Response<kube::client::Body>, Box<Response<Body>>> {
    if let Some(ua) = user_agent(target.auth, target.user) {
        b = b.header(header::USER_AGENT, ua);
    }
    let req = b
        .body(kube::client::Body::empty())
        .map_err(|e| Box::new(status::internal(&format!("building the host request: {e}"))))?;
    let host: Client = state.syncer.host().clone();
    match tokio::time::timeout(state.config.request_timeout, host.send(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(Box::new(host_unreachable(target, &e))),
        Err(_) => Err(Box::new(host_timeout(state))),
    }
}

/// The host's answer where a stream was asked for and none came (a failure: no such VMI, pod
/// or container), read within the request timeout and shown as [`tenant_answer`] does.
pub async fn unstreamed_answer(
    state: &ProxyState,
    target: &Target<'_>,
    res: Response<kube::client::Body>,
) -> Response<Body> {
    let (parts, body) = res.into_parts();
    let bytes = match tokio::time::timeout(state.config.request_timeout, body.collect_bytes()).await
    {
        Ok(Ok(b)) => b,
        _ => Bytes::new(),
    };
    tenant_answer(&parts, bytes, target)
}

/// What a stream is counted under.
pub struct StreamMetrics {
    pub to_host: Counter,
    pub to_tenant: Counter,
    pub open: Gauge,
}

/// An upgrade: the host handshake first; on `101`, the tunnel.
pub async fn upgrade(
    state: &ProxyState,
    target: &Target<'_>,
    mut req: Request<Incoming>,
    metrics: StreamMetrics,
) -> Response<Body> {
    let tenant_side = hyper::upgrade::on(&mut req);
    let mut b = Request::builder()
        .method(req.method().clone())
        .uri(target.path_and_query.as_str());
    for name in UPGRADE_REQUEST_HEADERS {
        for v in req.headers().get_all(*name) {
            b = b.header(*name, v.clone());
        }
    }
    let mut res = match send_bodiless(state, target, b).await {
        Ok(r) => r,
        Err(answer) => return *answer,
    };
    if res.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        // an error before the upgrade (e.g. the VMI is not running): a normal answer
        return unstreamed_answer(state, target, res).await;
    }
    let host_side = hyper::upgrade::on(&mut res);
    let mut out = Response::builder().status(http::StatusCode::SWITCHING_PROTOCOLS);
    for name in UPGRADE_RESPONSE_HEADERS {
        let name = HeaderName::from_static(name);
        for v in res.headers().get_all(&name) {
            out = out.header(name.clone(), v.clone());
        }
    }
    let label = target.auth.label.clone();
    let revoked = state.stream_revoked(&target.auth.uid);
    tokio::spawn(async move {
        let (t, h) = tokio::join!(tenant_side, host_side);
        let (t, h) = match (t, h) {
            (Ok(t), Ok(h)) => (t, h),
            (t, h) => {
                tracing::debug!(tenant = %label, tenant_side = ?t.err(), host_side = ?h.err(), "subresource stream: upgrade failed");
                return;
            }
        };
        let _open = OpenGuard::new(metrics.open);
        let mut t = Counted::new(TokioIo::new(t), metrics.to_host);
        let mut h = Counted::new(TokioIo::new(h), metrics.to_tenant);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut t, &mut h) => match r {
                Ok((up, down)) => {
                    tracing::debug!(tenant = %label, to_host = up, to_tenant = down, "subresource stream closed")
                }
                Err(e) => tracing::debug!(tenant = %label, error = %e, "subresource stream ended"),
            },
            () = revoked => {
                tracing::info!(tenant = %label, "subresource stream cut: the virtual cluster is no longer served");
            }
        }
    });
    out.body(http_body_util::Full::default())
        .unwrap_or_else(|_| status::internal("building the response"))
}

/// Keeps the open-streams gauge up while a stream lives.
struct OpenGuard(Gauge);

impl OpenGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Counts the bytes read from one side.
struct Counted<T> {
    inner: T,
    read: Counter,
}

impl<T> Counted<T> {
    fn new(inner: T, read: Counter) -> Self {
        Self { inner, read }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            self.read.inc_by((buf.filled().len() - before) as u64);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Bound on reading a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_namespace_of_a_request_body() {
        let body = Bytes::from(
            r#"{"kind":"VirtualMachine","metadata":{"name":"vm","namespace":"default"}}"#,
        );
        let out = request_body_to_host(body, "default", "h-default");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"]["namespace"], "h-default");
        let other = Bytes::from(r#"{"metadata":{"namespace":"elsewhere"}}"#);
        assert_eq!(request_body_to_host(other.clone(), "default", "h"), other);
        let empty = Bytes::new();
        assert_eq!(request_body_to_host(empty.clone(), "default", "h"), empty);
    }

    #[test]
    fn answers_name_tenant_namespaces_only() {
        let json = HeaderValue::from_static("application/json");
        let status = Bytes::from(
            r#"{"kind":"Status","message":"virtualmachines.kubevirt.io \"vm1\" not found in tenants-ab12cd-t1-default","code":404}"#,
        );
        let out =
            response_body_to_tenant(status, Some(&json), "tenants-ab12cd-t1-default", "default");
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.contains("in default"), "{text}");
        assert!(!text.contains("tenants-ab12cd"), "{text}");

        let vm = Bytes::from(format!(
            r#"{{"kind":"VirtualMachine","metadata":{{"name":"vm1","namespace":"h-ns","labels":{{"app":"x","{MANAGED_BY}":"kvtenant"}},"annotations":{{"{SPEC_HASH}":"abc","{TENANT_UID}":"u"}}}}}}"#
        ));
        let out = response_body_to_tenant(vm, Some(&json), "h-ns", "default");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["metadata"]["namespace"], "default");
        assert_eq!(v["metadata"]["labels"], serde_json::json!({"app": "x"}));
        assert_eq!(v["metadata"]["annotations"], serde_json::json!({}));

        let png = HeaderValue::from_static("image/png");
        let bin = Bytes::from_static(b"\x89PNG h-ns");
        assert_eq!(
            response_body_to_tenant(bin.clone(), Some(&png), "h-ns", "default"),
            bin
        );
    }

    #[test]
    fn detects_upgrades() {
        let mut h = HeaderMap::new();
        assert!(!is_upgrade(&h));
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
    }
}
