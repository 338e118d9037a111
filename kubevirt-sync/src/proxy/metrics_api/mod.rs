//! `metrics.k8s.io/v1beta1` for the tenants (`kubectl top pods`, `kubectl top nodes`), served
//! from the host's metrics API (metrics-server or anything serving that API on the host).
//!
//! Each tenant gets an ExternalName Service and the `v1beta1.metrics.k8s.io` APIService
//! pointing at the subresource proxy's listener ([`super::aggregated::register`]) while the host serves the API (its
//! own `v1beta1.metrics.k8s.io` APIService is Available, followed by one watch,
//! [`super::aggregated::HostApi`]); otherwise the tenant has none, as a cluster without metrics-server, and
//! kubectl says the Metrics API is not available.
//!
//! A request comes through the tenant apiserver's aggregator, which authenticated and
//! authorized the user; the proxy authenticates the aggregator's front-proxy certificate (that
//! names the tenant, [`super::auth`]), asks the tenant again with a SubjectAccessReview (as
//! metrics-server's delegated authorization does), and then confines the answer to the tenant
//! ([`decide`]): the tenant's own Pods or Nodes are listed in the tenant with the caller's
//! selectors, and only the host's metrics of those objects are read and shown: for pods, in the
//! host namespace kvtenant made for that tenant namespace (names unchanged); for nodes, only
//! host nodes the tenant is shown (running its host pods, or selected by `spec.nodes`).

pub mod decide;

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::{Client, ResourceExt};
use serde_json::Value;

use super::auth::{self, TenantAuth, UserInfo};
use super::status::{self, Body};
use super::{ProxyState, handler};
use decide::Shown;

/// The API group served.
pub const GROUP: &str = super::aggregated::METRICS.group;
/// The version served.
pub const VERSION: &str = super::aggregated::METRICS.version;
/// Host reads made at the same time for one request.
const IN_FLIGHT: usize = 8;

/// The review of a metrics request (pure): the user as the tenant apiserver named it, the
/// resource as metrics-server's authorizer sees it.
pub fn review(
    user: &UserInfo,
    resource: &str,
    verb: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> SubjectAccessReview {
    super::authz::review_as(
        user,
        ResourceAttributes {
            group: Some(GROUP.into()),
            version: Some(VERSION.into()),
            resource: Some(resource.into()),
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            verb: Some(verb.into()),
            ..ResourceAttributes::default()
        },
    )
}

/// A failure of the tenant or the host, as the caller's answer.
fn api_failure(what: &str, e: kube::Error) -> Response<Body> {
    match e {
        kube::Error::Api(ae) => status::failure(ae.code, &ae.reason, &ae.message, None),
        other => status::failure(503, "ServiceUnavailable", &format!("{what}: {other}"), None),
    }
}

fn unavailable() -> Response<Body> {
    status::failure(
        503,
        "ServiceUnavailable",
        "the host cluster serves no metrics.k8s.io now; kubectl top is not available in this virtual cluster",
        None,
    )
}

/// Serves one request of the metrics API for an authenticated tenant.
pub async fn handle(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    req: Request<Incoming>,
) -> Response<Body> {
    let request = decide::parse(req.uri().path());
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return status::failure(
            405,
            "MethodNotAllowed",
            &format!("{} is not supported on {GROUP}", req.method()),
            None,
        );
    }
    match request {
        decide::Request::Group => status::json(200, &decide::api_group()),
        decide::Request::Discovery => status::json(200, &decide::resource_list()),
        decide::Request::BadRequest(m) => status::bad_request(&m),
        decide::Request::NotFound => status::not_found(&format!(
            "the server could not find the requested resource ({})",
            req.uri().path()
        )),
        decide::Request::Pods { .. } | decide::Request::Nodes { .. } => {
            serve(state, tenant, request, req).await
        }
    }
}

async fn serve(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    request: decide::Request,
    req: Request<Incoming>,
) -> Response<Body> {
    let sel = decide::selectors(req.uri().query());
    if sel.watch {
        return status::failure(
            405,
            "MethodNotAllowed",
            &format!("watch is not supported on {GROUP}"),
            None,
        );
    }
    let Some(user) = auth::user_from_headers(req.headers(), &tenant.requestheader) else {
        return status::unauthorized("the request names no user");
    };
    let Some((resource, verb)) = request.rbac() else {
        return status::not_found("not found");
    };
    let (namespace, name) = match &request {
        decide::Request::Pods { namespace, name } => (namespace.as_deref(), name.as_deref()),
        decide::Request::Nodes { name } => (None, name.as_deref()),
        _ => (None, None),
    };
    let sar = review(&user, resource, verb, namespace, name);
    match super::authz::ask(&tenant.client, &sar).await {
        Ok(None) => {}
        Ok(Some(reason)) => {
            let scope = namespace
                .map(|ns| format!(" in the namespace {ns:?}"))
                .unwrap_or_else(|| " at the cluster scope".into());
            return status::failure(
                403,
                "Forbidden",
                &format!(
                    "{resource}.{GROUP} is forbidden: User {:?} cannot {verb} resource {resource:?} in API group {GROUP:?}{scope}{}",
                    user.name,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ),
                None,
            );
        }
        Err(e) => {
            return status::internal(&format!(
                "authorizing the request in the virtual cluster: {e}"
            ));
        }
    }
    if !state.host_metrics.available() {
        return unavailable();
    }
    match request {
        decide::Request::Pods { namespace, name } => {
            pods(state, tenant, namespace.as_deref(), name.as_deref(), &sel).await
        }
        decide::Request::Nodes { name } => nodes(state, tenant, name.as_deref(), &sel).await,
        _ => status::not_found("not found"),
    }
}

fn list_params(sel: &decide::Selectors) -> ListParams {
    let mut lp = ListParams::default();
    if let Some(l) = &sel.labels {
        lp = lp.labels(l);
    }
    if let Some(f) = &sel.fields {
        lp = lp.fields(f);
    }
    lp
}

fn shown<K: kube::Resource>(o: &PartialObjectMeta<K>) -> Shown {
    Shown {
        namespace: o.namespace().unwrap_or_default(),
        name: o.name_any(),
        labels: o.labels().clone(),
    }
}

/// GET of a host path: `Ok(None)` when the host answers 404.
async fn host_get(host: &Client, path: &str) -> Result<Option<Value>, kube::Error> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(kube::Error::HttpError)?;
    match host.request::<Value>(req).await {
        Ok(v) => Ok(Some(v)),
        Err(kube::Error::Api(ae)) if ae.code == 404 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why the host's metrics could not be read.
enum HostFailure {
    /// The host's metrics API is gone (404 on a list) or unavailable (503).
    Unavailable,
    Call(kube::Error),
}

impl From<kube::Error> for HostFailure {
    fn from(e: kube::Error) -> Self {
        match &e {
            kube::Error::Api(ae) if ae.code == 503 => Self::Unavailable,
            _ => Self::Call(e),
        }
    }
}

/// Host metrics failures as the tenant's answer: the API gone from the host reads as not
/// available, anything else names the host call.
fn host_failure(f: HostFailure) -> Response<Body> {
    match f {
        HostFailure::Unavailable => unavailable(),
        HostFailure::Call(e) => api_failure("reading the host's metrics", e),
    }
}

async fn pods(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    namespace: Option<&str>,
    name: Option<&str>,
    sel: &decide::Selectors,
) -> Response<Body> {
    // the tenant's pods, with the caller's selectors, as the tenant has them
    let tenant_pods: Vec<Shown> = match (namespace, name) {
        (Some(ns), Some(name)) => {
            let api: Api<Pod> = Api::namespaced(tenant.client.clone(), ns);
            match api.get_metadata_opt(name).await {
                Ok(Some(p)) => vec![shown(&p)],
                Ok(None) => {
                    return status::not_found(&decide::not_found_message("pods", Some(ns), name));
                }
                Err(e) => return api_failure("reading the virtual cluster's pod", e),
            }
        }
        (ns, _) => {
            let api: Api<Pod> = match ns {
                Some(ns) => Api::namespaced(tenant.client.clone(), ns),
                None => Api::all(tenant.client.clone()),
            };
            match api.list_metadata(&list_params(sel)).await {
                Ok(l) => l.items.iter().map(shown).collect(),
                Err(e) => return api_failure("listing the virtual cluster's pods", e),
            }
        }
    };
    let mut by_ns: BTreeMap<String, Vec<Shown>> = BTreeMap::new();
    for p in tenant_pods {
        by_ns.entry(p.namespace.clone()).or_default().push(p);
    }
    let host = state.syncer.host().clone();
    let reads = futures::stream::iter(by_ns.into_iter().filter_map(|(ns, pods)| {
        let host_ns = tenant.vc.host_namespace(&ns);
        // only a host namespace kvtenant made for this tenant's namespace
        handler::mapped(state, tenant, &ns, &host_ns).then_some((host_ns, pods))
    }))
    .map(|(host_ns, pods)| {
        let host = host.clone();
        async move {
            let base = format!("/apis/{GROUP}/{VERSION}/namespaces/{host_ns}/pods");
            let items = match name {
                Some(name) => host_get(&host, &format!("{base}/{name}"))
                    .await?
                    .into_iter()
                    .collect(),
                None => match host_get(&host, &base).await? {
                    Some(l) => l
                        .get("items")
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default(),
                    // the list itself is missing: the API is gone
                    None => return Err(HostFailure::Unavailable),
                },
            };
            Ok::<_, HostFailure>(decide::pod_metrics(&pods, &host_ns, &items))
        }
    })
    .buffered(IN_FLIGHT)
    .try_collect::<Vec<Vec<Value>>>()
    .await;
    let items: Vec<Value> = match reads {
        Ok(v) => v.into_iter().flatten().collect(),
        Err(e) => return host_failure(e),
    };
    match (namespace, name) {
        (Some(ns), Some(name)) => match items.into_iter().next() {
            Some(m) => status::json(200, &decide::item("PodMetrics", m)),
            None => status::not_found(&decide::not_found_message("pods", Some(ns), name)),
        },
        _ => status::json(200, &decide::list("PodMetricsList", items)),
    }
}

/// The host nodes this tenant is shown: those running pods of its host namespaces, and those
/// its `spec.nodes.selector` selects.
async fn visible_nodes(
    state: &ProxyState,
    tenant: &TenantAuth,
) -> Result<std::collections::BTreeSet<String>, kube::Error> {
    let host = state.syncer.host().clone();
    let namespaces = state.syncer.host_namespaces_of(&tenant.uid);
    let pod_nodes: Vec<Vec<String>> = futures::stream::iter(namespaces)
        .map(|ns| {
            let api: Api<Pod> = Api::namespaced(host.clone(), &ns);
            async move {
                let pods = api.list(&ListParams::default()).await?;
                Ok::<_, kube::Error>(
                    pods.items
                        .into_iter()
                        .filter_map(|p| p.spec?.node_name)
                        .collect(),
                )
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    let selector = state
        .syncer
        .get(&tenant.uid)
        .map(|t| t.spec.nodes.selector.clone())
        .unwrap_or_default();
    let mut selected = Vec::new();
    if !selector.is_empty() {
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let api: Api<Node> = Api::all(host);
        let l = api
            .list_metadata(&ListParams::default().labels(&labels.join(",")))
            .await?;
        selected = l.items.iter().map(|n| n.name_any()).collect();
    }
    Ok(decide::visible_nodes(
        pod_nodes.iter().flatten().map(String::as_str),
        selected.iter().map(String::as_str),
    ))
}

async fn nodes(
    state: &ProxyState,
    tenant: &Arc<TenantAuth>,
    name: Option<&str>,
    sel: &decide::Selectors,
) -> Response<Body> {
    let api: Api<Node> = Api::all(tenant.client.clone());
    let tenant_nodes: Vec<Shown> = match name {
        Some(name) => match api.get_metadata_opt(name).await {
            Ok(Some(n)) => vec![shown(&n)],
            Ok(None) => return status::not_found(&decide::not_found_message("nodes", None, name)),
            Err(e) => return api_failure("reading the virtual cluster's node", e),
        },
        None => match api.list_metadata(&list_params(sel)).await {
            Ok(l) => l.items.iter().map(shown).collect(),
            Err(e) => return api_failure("listing the virtual cluster's nodes", e),
        },
    };
    let visible = match visible_nodes(state, tenant).await {
        Ok(v) => v,
        Err(e) => return api_failure("reading which host nodes the virtual cluster is shown", e),
    };
    let host = state.syncer.host().clone();
    let to_read: Vec<Shown> = decide::nodes_to_read(&tenant_nodes, &visible)
        .into_iter()
        .cloned()
        .collect();
    let reads = futures::stream::iter(to_read)
        .map(|node: Shown| {
            let host = host.clone();
            async move {
                let path = format!("/apis/{GROUP}/{VERSION}/nodes/{}", node.name);
                let found = host_get(&host, &path).await?;
                Ok::<_, HostFailure>(found.and_then(|h| decide::node_metrics(&node, &h)))
            }
        })
        .buffered(IN_FLIGHT)
        .try_collect::<Vec<Option<Value>>>()
        .await;
    let items: Vec<Value> = match reads {
        Ok(v) => v.into_iter().flatten().collect(),
        Err(e) => return host_failure(e),
    };
    match name {
        Some(name) => match items.into_iter().next() {
            Some(m) => status::json(200, &decide::item("NodeMetrics", m)),
            None => status::not_found(&decide::not_found_message("nodes", None, name)),
        },
        None => status::json(200, &decide::list("NodeMetricsList", items)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviews_as_metrics_servers_authorizer() {
        let user = UserInfo {
            name: "alice".into(),
            groups: vec!["dev".into()],
            ..UserInfo::default()
        };
        let r = review(&user, "pods", "list", Some("dev"), None);
        let a = r.spec.resource_attributes.unwrap();
        assert_eq!(a.group.as_deref(), Some("metrics.k8s.io"));
        assert_eq!(a.resource.as_deref(), Some("pods"));
        assert_eq!(a.namespace.as_deref(), Some("dev"));
        assert_eq!(a.verb.as_deref(), Some("list"));
        assert_eq!(r.spec.user.as_deref(), Some("alice"));
        let r = review(&user, "nodes", "get", None, Some("n1"));
        let a = r.spec.resource_attributes.unwrap();
        assert_eq!(a.namespace, None);
        assert_eq!(a.name.as_deref(), Some("n1"));
    }
}
