//! The kubelet proxy: the kubelet API of the tenant's Nodes, so `kubectl logs`, `exec`,
//! `attach`, `port-forward` and `cp` work in a virtual cluster.
//!
//! The tenant Nodes kvtenant shows advertise this server as their kubelet (address and
//! `daemonEndpoints.kubeletEndpoint.Port`, see `tenant/nodes.rs`). A request is served in three
//! steps:
//! 1. **authentication**: the TLS client certificate must be the tenant apiserver's kubelet
//!    client certificate: it verifies against the client CA the apiserver publishes
//!    (`client-ca-file` in `kube-system/extension-apiserver-authentication`) and its common name
//!    is one of [`KubeletConfig::client_names`]. That names the tenant. Else 401. The tenant
//!    apiserver has already authenticated and authorized the tenant's user (`pods/exec`, ...).
//! 2. **mapping** ([`route`]): the path names one pod of a tenant namespace; the namespace
//!    becomes its host namespace only if kvtenant made that host namespace for this tenant, else
//!    404. Node-wide kubelet paths are refused.
//! 3. **forwarding**: to the host apiserver's subresource of the host pod (`pods/log`,
//!    `pods/exec`, `pods/attach`, `pods/portforward`) with kvtenant's host client, so host RBAC
//!    and audit apply. Logs stream back as they come (`-f`); exec, attach and port-forward
//!    upgrades (SPDY or websocket) are tunnelled byte for byte.

pub mod route;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::auth::{self, Caller, TenantAuth, UserInfo};
use super::forward::{self, StreamMetrics, Target};
use super::{ConnInfo, ProxyState, status};
use route::{Action, PodCall, Route};

/// Body of the kubelet proxy's answers: buffered, or the host's streamed through.
pub type Body = Either<Full<Bytes>, kube::client::Body>;

/// Kubelet proxy settings.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// Where the kubelet proxy listens; `None`: no kubelet proxy (tenant Nodes advertise no
    /// kubelet, and `kubectl logs/exec` fail in the tenant).
    pub listen: Option<SocketAddr>,
    /// Address the tenant Nodes advertise (an IP, or a DNS name the tenant apiservers resolve);
    /// `None`: the subresource proxy's advertised host.
    pub advertise_address: Option<String>,
    /// Port the tenant Nodes advertise; `None`: the port listened on.
    pub advertise_port: Option<u16>,
    /// Common names accepted for a tenant apiserver's kubelet client certificate.
    pub client_names: Vec<String>,
}

/// The common name kubeadm (and kvtenant's Managed control planes) give the apiserver's kubelet
/// client certificate.
pub const KUBELET_CLIENT_CN: &str = "kube-apiserver-kubelet-client";

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 10250))),
            advertise_address: None,
            advertise_port: None,
            client_names: vec![KUBELET_CLIENT_CN.to_string()],
        }
    }
}

pub use crate::host::KubeletEndpoint;

fn buffered(r: Response<status::Body>) -> Response<Body> {
    r.map(Either::Left)
}

/// The identity the host sees in its audit log's user agent for kubelet calls.
fn caller() -> UserInfo {
    UserInfo {
        name: "kubelet-api".into(),
        ..UserInfo::default()
    }
}

/// Serves one request on the kubelet listener.
pub async fn handle(
    state: Arc<ProxyState>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let route = route::parse(req.method(), req.uri().path(), req.uri().query());
    if route == Route::Health {
        return buffered(status::healthy());
    }
    let label = match &route {
        Route::Pod(c) => c.action.metric_label(),
        _ => "kubelet_other",
    };
    let tenant = match auth::identify_or_reject(
        &state,
        &conn,
        Caller::Kubelet,
        label,
        started,
        req.uri().path(),
    ) {
        Ok(t) => t,
        Err(rejected) => return buffered(*rejected),
    };
    let response = serve(&state, &tenant, route, req).await;
    state.metrics.request(
        &tenant.label,
        label,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn serve(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    route: Route,
    req: Request<Incoming>,
) -> Response<Body> {
    match route {
        Route::Health => buffered(status::healthy()),
        Route::Refused(message) => buffered(status::failure(403, "Forbidden", &message, None)),
        Route::BadRequest(message) => buffered(status::bad_request(&message)),
        Route::MethodNotAllowed => buffered(status::failure(
            405,
            "MethodNotAllowed",
            &format!("{} is not supported on {}", req.method(), req.uri().path()),
            None,
        )),
        Route::Pod(call) => serve_pod(state, tenant, call, req).await,
    }
}

async fn serve_pod(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    call: PodCall,
    req: Request<Incoming>,
) -> Response<Body> {
    let host_ns = tenant.vc.host_namespace(&call.namespace);
    if !super::handler::mapped(state, tenant, &call.namespace, &host_ns) {
        return buffered(status::failure(
            404,
            "NotFound",
            &format!(
                "pods {:?} not found: namespace {:?} has nothing running on the host",
                call.pod, call.namespace
            ),
            Some(serde_json::json!({"name": call.pod, "kind": "pods"})),
        ));
    }
    let user = caller();
    let target = Target {
        auth: tenant,
        user: &user,
        path_and_query: call.host_path(&host_ns),
        tenant_ns: &call.namespace,
        host_ns: &host_ns,
    };
    tracing::debug!(tenant = %tenant.label, namespace = %call.namespace, pod = %call.pod, action = ?call.action, "kubelet proxy: forwarding");
    if call.action == Action::Logs {
        return logs(state, &target).await;
    }
    if !forward::is_upgrade(req.headers()) {
        return buffered(status::bad_request(&format!(
            "{} needs a streaming upgrade (SPDY or websocket)",
            call.action.subresource()
        )));
    }
    let label = call.action.metric_label();
    let metrics = StreamMetrics {
        to_host: state
            .metrics
            .stream_counter(&tenant.label, label, "to_host"),
        to_tenant: state
            .metrics
            .stream_counter(&tenant.label, label, "to_tenant"),
        open: state.metrics.open_streams_gauge(&tenant.label, label),
    };
    buffered(forward::upgrade(state, &target, req, metrics).await)
}

/// A log read: the host's answer streams through as it comes (`kubectl logs -f`); a failure
/// (no such pod or container) comes back as the host's Status, naming tenant namespaces only.
async fn logs(state: &ProxyState, target: &Target<'_>) -> Response<Body> {
    let b = Request::builder()
        .method(http::Method::GET)
        .uri(target.path_and_query.as_str());
    let res = match forward::send_bodiless(state, target, b).await {
        Ok(r) => r,
        Err(answer) => return buffered(*answer),
    };
    if !res.status().is_success() {
        return buffered(forward::unstreamed_answer(state, target, res).await);
    }
    let (parts, body) = res.into_parts();
    let mut out = Response::builder().status(parts.status);
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        out = out.header(header::CONTENT_TYPE, ct.clone());
    }
    out.body(Either::Right(body))
        .unwrap_or_else(|_| buffered(status::internal("building the response")))
}
