//! The decisions of the tenant's `metrics.k8s.io` (pure): which path is which request, which of
//! the host's PodMetrics and NodeMetrics a tenant gets and how they look to it, and the
//! discovery documents.
//!
//! What a tenant sees is decided from two sides that must agree: the tenant's own objects (its
//! Pods and Nodes, listed in the tenant with the caller's label and field selectors, so the
//! selectors are evaluated on what the tenant wrote and can only narrow) and the host's (the
//! host namespace kvtenant made for that tenant namespace, the host nodes running the tenant's
//! host pods or selected for it). A tenant Node or Pod with a name of the host's that is not the
//! tenant's gets nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::{GROUP, VERSION};

/// A request of the metrics API, from the raw path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// `/apis/metrics.k8s.io`
    Group,
    /// `/apis/metrics.k8s.io/v1beta1`
    Discovery,
    /// PodMetrics: of one namespace (`None`: every namespace), one pod or all.
    Pods {
        namespace: Option<String>,
        name: Option<String>,
    },
    /// NodeMetrics: one node or all.
    Nodes {
        name: Option<String>,
    },
    /// A path with a malformed name or segment.
    BadRequest(String),
    NotFound,
}

impl Request {
    /// The RBAC resource and verb the request needs (`None`: discovery, not authorized per
    /// resource).
    pub fn rbac(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Self::Pods { name, .. } => Some(("pods", if name.is_some() { "get" } else { "list" })),
            Self::Nodes { name } => Some(("nodes", if name.is_some() { "get" } else { "list" })),
            _ => None,
        }
    }

    /// A bounded label for the proxy's request metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Pods { .. } => "metrics-pods",
            Self::Nodes { .. } => "metrics-nodes",
            Self::Group | Self::Discovery => "metrics-discovery",
            Self::BadRequest(_) | Self::NotFound => "metrics-other",
        }
    }
}

/// The path prefix of the group.
pub fn prefix() -> String {
    format!("/apis/{GROUP}")
}

/// Whether a path belongs to the metrics API (else it is the subresource API's).
pub fn is_metrics_path(path: &str) -> bool {
    let p = prefix();
    path == p || path.starts_with(&format!("{p}/"))
}

/// A DNS-1123 subdomain (namespace, pod and node names); no `..`.
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        && !s.contains("..")
}

/// Parses a raw request path (percent-escapes are refused: no name needs them).
pub fn parse(path: &str) -> Request {
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    let Some(rest) = trimmed.strip_prefix(&prefix()) else {
        return Request::NotFound;
    };
    if rest.is_empty() {
        return Request::Group;
    }
    if path.contains('%') {
        return Request::BadRequest(format!("escaped characters are not allowed in {path:?}"));
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Request::NotFound;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let Some((version, parts)) = parts.split_first() else {
        return Request::NotFound;
    };
    if *version != VERSION {
        return Request::NotFound;
    }
    let checked = |what: &str, v: &str| -> Result<String, Request> {
        if is_name(v) {
            Ok(v.to_string())
        } else {
            Err(Request::BadRequest(format!("invalid {what} {v:?}")))
        }
    };
    let result = match parts {
        [] => Ok(Request::Discovery),
        ["pods"] => Ok(Request::Pods {
            namespace: None,
            name: None,
        }),
        ["nodes"] => Ok(Request::Nodes { name: None }),
        ["nodes", name] => checked("name", name).map(|n| Request::Nodes { name: Some(n) }),
        ["namespaces", ns, "pods"] => checked("namespace", ns).map(|ns| Request::Pods {
            namespace: Some(ns),
            name: None,
        }),
        ["namespaces", ns, "pods", name] => checked("namespace", ns).and_then(|ns| {
            checked("name", name).map(|n| Request::Pods {
                namespace: Some(ns),
                name: Some(n),
            })
        }),
        _ => Ok(Request::NotFound),
    };
    result.unwrap_or_else(|refused| refused)
}

/// What the tenant's list call may carry from the caller's query: its label and field
/// selectors (evaluated by the tenant apiserver on the tenant's own objects). Anything else of
/// the query is dropped; `watch` is refused by the caller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selectors {
    pub labels: Option<String>,
    pub fields: Option<String>,
    pub watch: bool,
}

/// Reads the selectors of a query string (`application/x-www-form-urlencoded`).
pub fn selectors(query: Option<&str>) -> Selectors {
    let mut out = Selectors::default();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match k.as_ref() {
            "labelSelector" if !v.is_empty() => out.labels = Some(v.into_owned()),
            "fieldSelector" if !v.is_empty() => out.fields = Some(v.into_owned()),
            "watch" => out.watch = v == "true" || v == "1",
            _ => {}
        }
    }
    out
}

/// A tenant object a metrics item is shown for: its namespace (empty for Nodes), name and
/// labels, as the tenant has them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

fn item_name(v: &Value) -> Option<&str> {
    v.pointer("/metadata/name").and_then(Value::as_str)
}

fn item_namespace(v: &Value) -> Option<&str> {
    v.pointer("/metadata/namespace").and_then(Value::as_str)
}

/// The metadata of an item shown to the tenant: the tenant object's namespace, name and labels
/// and the host item's creation time; nothing else of the host's.
fn tenant_metadata(shown: &Shown, host: &Value) -> Value {
    let mut meta = json!({"name": shown.name});
    if !shown.namespace.is_empty() {
        meta["namespace"] = json!(shown.namespace);
    }
    if let Some(ts) = host.pointer("/metadata/creationTimestamp") {
        meta["creationTimestamp"] = ts.clone();
    }
    if !shown.labels.is_empty() {
        meta["labels"] = json!(shown.labels);
    }
    meta
}

/// The tenant's PodMetrics for tenant namespace `pods` (all in one namespace) from the host's
/// items of `host_ns`: only items of that host namespace whose pod the tenant has there, with
/// the tenant's namespace and labels and the host's measurements (timestamp, window,
/// containers), in the tenant's order.
pub fn pod_metrics(pods: &[Shown], host_ns: &str, host_items: &[Value]) -> Vec<Value> {
    let by_name: BTreeMap<&str, &Value> = host_items
        .iter()
        .filter(|v| item_namespace(v) == Some(host_ns))
        .filter_map(|v| Some((item_name(v)?, v)))
        .collect();
    pods.iter()
        .filter_map(|p| {
            let host = by_name.get(p.name.as_str())?;
            Some(json!({
                "metadata": tenant_metadata(p, host),
                "timestamp": host.get("timestamp").cloned().unwrap_or(Value::Null),
                "window": host.get("window").cloned().unwrap_or(Value::Null),
                "containers": host.get("containers").cloned().unwrap_or_else(|| json!([])),
            }))
        })
        .collect()
}

/// The host nodes a tenant is shown: those running its host pods and, when the VirtualCluster
/// confines it to selected nodes, those selected (as the syncer shows tenant Nodes).
pub fn visible_nodes<'a>(
    pod_nodes: impl IntoIterator<Item = &'a str>,
    selected: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<String> {
    pod_nodes
        .into_iter()
        .chain(selected)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

/// Which of the tenant's Nodes get the host's NodeMetrics: those that stand for a host node the
/// tenant is shown (a Node the tenant made with a host node's name gets nothing).
pub fn nodes_to_read<'a>(tenant_nodes: &'a [Shown], visible: &BTreeSet<String>) -> Vec<&'a Shown> {
    tenant_nodes
        .iter()
        .filter(|n| visible.contains(&n.name))
        .collect()
}

/// The tenant's NodeMetrics for a tenant Node from the host's item of the same name.
pub fn node_metrics(node: &Shown, host: &Value) -> Option<Value> {
    if item_name(host) != Some(node.name.as_str()) {
        return None;
    }
    Some(json!({
        "metadata": tenant_metadata(node, host),
        "timestamp": host.get("timestamp").cloned().unwrap_or(Value::Null),
        "window": host.get("window").cloned().unwrap_or(Value::Null),
        "usage": host.get("usage").cloned().unwrap_or_else(|| json!({})),
    }))
}

/// A list of `kind` (`PodMetricsList`, `NodeMetricsList`).
pub fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": kind,
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "metadata": {},
        "items": items,
    })
}

/// One item, with its kind.
pub fn item(kind: &str, mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("kind".into(), json!(kind));
        o.insert("apiVersion".into(), json!(format!("{GROUP}/{VERSION}")));
    }
    v
}

/// The `APIResourceList` metrics-server serves.
pub fn resource_list() -> Value {
    json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    })
}

/// The `APIGroup` document.
pub fn api_group() -> Value {
    let v = json!({"groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION});
    json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": GROUP,
        "versions": [v.clone()],
        "preferredVersion": v,
    })
}

/// How metrics-server words a missing item (`podmetrics.metrics.k8s.io "ns/name" not found`).
pub fn not_found_message(resource: &str, namespace: Option<&str>, name: &str) -> String {
    let what = match resource {
        "pods" => "podmetrics",
        _ => "nodemetrics",
    };
    match namespace {
        Some(ns) => format!("{what}.{GROUP} \"{ns}/{name}\" not found"),
        None => format!("{what}.{GROUP} \"{name}\" not found"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(ns: &str, name: &str) -> Shown {
        Shown {
            namespace: ns.into(),
            name: name.into(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
        }
    }

    fn host_pod(ns: &str, name: &str) -> Value {
        json!({
            "metadata": {
                "name": name, "namespace": ns, "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"kvtenant.io/managed-by": "kvtenant", "secret": "host-label"},
            },
            "timestamp": "2026-01-01T00:00:00Z",
            "window": "15s",
            "containers": [{"name": "c", "usage": {"cpu": "1m", "memory": "1Mi"}}],
        })
    }

    #[test]
    fn parses_the_metrics_paths() {
        assert_eq!(parse("/apis/metrics.k8s.io"), Request::Group);
        assert_eq!(parse("/apis/metrics.k8s.io/v1beta1"), Request::Discovery);
        assert_eq!(parse("/apis/metrics.k8s.io/v1beta1/"), Request::Discovery);
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/pods"),
            Request::Pods {
                namespace: None,
                name: None
            }
        );
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/namespaces/dev/pods/web-1"),
            Request::Pods {
                namespace: Some("dev".into()),
                name: Some("web-1".into())
            }
        );
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/nodes/kwok-node-1"),
            Request::Nodes {
                name: Some("kwok-node-1".into())
            }
        );
        assert_eq!(parse("/apis/metrics.k8s.io/v1"), Request::NotFound);
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/namespaces/dev"),
            Request::NotFound
        );
        assert_eq!(
            parse("/apis/metrics.k8s.io/v1beta1/namespaces/dev/pods/a/b"),
            Request::NotFound
        );
        assert!(is_metrics_path("/apis/metrics.k8s.io/v1beta1/pods"));
        assert!(!is_metrics_path("/apis/metrics.k8s.iox/v1beta1"));
        assert!(!is_metrics_path("/apis/subresources.kubevirt.io/v1"));
        assert_eq!(
            Request::Pods {
                namespace: None,
                name: None
            }
            .rbac(),
            Some(("pods", "list"))
        );
        assert_eq!(
            Request::Nodes {
                name: Some("n".into())
            }
            .rbac(),
            Some(("nodes", "get"))
        );
    }

    #[test]
    fn crafted_names_are_refused() {
        for p in [
            "/apis/metrics.k8s.io/v1beta1/namespaces/../pods",
            "/apis/metrics.k8s.io/v1beta1/namespaces/a..b/pods",
            "/apis/metrics.k8s.io/v1beta1/namespaces/dev/pods/..",
            "/apis/metrics.k8s.io/v1beta1/namespaces/dev/pods/x%2f..%2fy",
            "/apis/metrics.k8s.io/v1beta1/namespaces/DEV/pods",
            "/apis/metrics.k8s.io/v1beta1/namespaces//pods",
            "/apis/metrics.k8s.io/v1beta1/nodes/..",
            "/apis/metrics.k8s.io/v1beta1/nodes/-x",
        ] {
            assert!(matches!(parse(p), Request::BadRequest(_)), "{p}");
        }
    }

    #[test]
    fn only_selectors_pass_from_the_query() {
        let s = selectors(Some(
            "labelSelector=app%3Dweb&fieldSelector=metadata.name%3Dx&limit=5&watch=true",
        ));
        assert_eq!(s.labels.as_deref(), Some("app=web"));
        assert_eq!(s.fields.as_deref(), Some("metadata.name=x"));
        assert!(s.watch);
        assert_eq!(selectors(None), Selectors::default());
        assert_eq!(selectors(Some("labelSelector=")).labels, None);
    }

    #[test]
    fn pod_metrics_only_of_the_tenants_pods_in_its_host_namespace() {
        let pods = vec![shown("dev", "web"), shown("dev", "db")];
        let host = vec![
            host_pod("h-dev", "web"),
            // a host pod the tenant does not have (not shown)
            host_pod("h-dev", "intruder"),
            // another host namespace's pod of the same name (not this namespace's)
            host_pod("h-other", "db"),
        ];
        let out = pod_metrics(&pods, "h-dev", &host);
        assert_eq!(out.len(), 1, "{out:?}");
        let m = &out[0];
        assert_eq!(m["metadata"]["name"], "web");
        assert_eq!(m["metadata"]["namespace"], "dev", "the tenant's namespace");
        assert_eq!(
            m["metadata"]["labels"],
            json!({"app": "web"}),
            "the tenant's labels, never the host copy's"
        );
        assert_eq!(m["containers"][0]["usage"]["cpu"], "1m");
        assert_eq!(m["window"], "15s");
        assert!(!m.to_string().contains("h-dev"));
    }

    #[test]
    fn node_metrics_only_for_nodes_the_tenant_is_shown() {
        let visible = visible_nodes(["kwok-node-1", ""], ["selected-1"]);
        assert_eq!(
            visible,
            BTreeSet::from(["kwok-node-1".to_string(), "selected-1".to_string()])
        );
        let tenant_nodes = vec![
            shown("", "kwok-node-1"),
            // a Node the tenant created with a host node's name
            shown("", "host-control-plane"),
        ];
        let read: Vec<&str> = nodes_to_read(&tenant_nodes, &visible)
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(read, ["kwok-node-1"]);
        let host = json!({
            "metadata": {"name": "kwok-node-1", "labels": {"host-only": "x"}},
            "timestamp": "t", "window": "20s", "usage": {"cpu": "2", "memory": "1Gi"},
        });
        let m = node_metrics(&tenant_nodes[0], &host).unwrap();
        assert_eq!(m["usage"]["cpu"], "2");
        assert!(m["metadata"].get("namespace").is_none());
        assert_eq!(m["metadata"]["labels"], json!({"app": "kwok-node-1"}));
        assert!(node_metrics(&tenant_nodes[1], &host).is_none());
    }

    #[test]
    fn documents_are_metrics_servers() {
        let l = list("PodMetricsList", vec![]);
        assert_eq!(l["apiVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(l["items"], json!([]));
        let r = resource_list();
        assert_eq!(r["groupVersion"], "metrics.k8s.io/v1beta1");
        assert_eq!(r["resources"][1]["kind"], "PodMetrics");
        assert_eq!(api_group()["preferredVersion"]["version"], "v1beta1");
        assert_eq!(
            not_found_message("pods", Some("dev"), "web"),
            r#"podmetrics.metrics.k8s.io "dev/web" not found"#
        );
        assert_eq!(item("NodeMetrics", json!({}))["kind"], "NodeMetrics");
    }
}
