//! The kubelet API paths a tenant apiserver calls, and the host apiserver calls they become
//! (pure).
//!
//! A tenant apiserver serving `kubectl logs/exec/attach/port-forward` calls the kubelet of the
//! pod's node at `/containerLogs/{ns}/{pod}/{container}`, `/exec/{ns}/{pod}[/{uid}]/{container}`,
//! `/attach/...` and `/portForward/{ns}/{pod}[/{uid}]`. Each becomes the matching subresource
//! of the host copy of the pod (`pods/log`, `pods/exec`, `pods/attach`, `pods/portforward`) in
//! the tenant's host namespace. Only names that are valid Kubernetes names pass, only the query
//! parameters the kubelet API defines are carried over (renamed to the pod subresource's), and
//! every other kubelet path (`/run`, `/pods`, `/stats`, `/metrics`, `/logs`, `/debug`,
//! `/configz`, ...) is refused: it would reach the node rather than one pod.

use http::Method;
use kvtenant_api::naming::{
    is_dns1123_label as is_dns_label, is_dns1123_subdomain as is_dns_subdomain,
};

/// A kubelet call about one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCall {
    pub action: Action,
    /// Tenant namespace.
    pub namespace: String,
    pub pod: String,
    /// Empty for port-forward.
    pub container: String,
    /// Query of the host call, already renamed (`stdin=true`, `ports=8080`, ...).
    pub query: Vec<(String, String)>,
}

/// What the call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Logs,
    Exec,
    Attach,
    PortForward,
}

impl Action {
    /// The pod subresource on the host.
    pub fn subresource(self) -> &'static str {
        match self {
            Self::Logs => "log",
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portforward",
        }
    }

    /// Label in metrics.
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Logs => "kubelet_logs",
            Self::Exec => "kubelet_exec",
            Self::Attach => "kubelet_attach",
            Self::PortForward => "kubelet_portforward",
        }
    }
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    Health,
    Pod(PodCall),
    /// A kubelet path kvtenant does not serve to tenants.
    Refused(String),
    BadRequest(String),
    MethodNotAllowed,
}

/// Query parameters of `/containerLogs` (the same names as `pods/log`'s).
const LOG_PARAMS: &[&str] = &[
    "follow",
    "previous",
    "timestamps",
    "sinceSeconds",
    "sinceTime",
    "tailLines",
    "limitBytes",
    "stream",
];

/// Kubelet stream flags and the pod subresource's names for them.
const STREAM_PARAMS: &[(&str, &str)] = &[
    ("input", "stdin"),
    ("output", "stdout"),
    ("error", "stderr"),
    ("tty", "tty"),
];

fn is_uid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn truthy(v: &str) -> bool {
    matches!(v, "1" | "true" | "True" | "TRUE")
}

fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The host query of a call, from the kubelet query.
fn host_query(
    action: Action,
    container: &str,
    kubelet: &[(String, String)],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !container.is_empty() {
        out.push(("container".to_string(), container.to_string()));
    }
    for (k, v) in kubelet {
        match action {
            Action::Logs => {
                if LOG_PARAMS.contains(&k.as_str()) {
                    out.push((k.clone(), v.clone()));
                }
            }
            Action::Exec | Action::Attach => {
                if action == Action::Exec && k == "command" {
                    out.push(("command".into(), v.clone()));
                } else if let Some((_, host)) = STREAM_PARAMS.iter().find(|(kk, _)| kk == k)
                    && truthy(v)
                {
                    out.push(((*host).to_string(), "true".into()));
                }
            }
            Action::PortForward => {
                if k == "port" && v.parse::<u16>().is_ok_and(|p| p != 0) {
                    out.push(("ports".into(), v.clone()));
                }
            }
        }
    }
    out
}

/// Parses a kubelet request.
pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Route {
    if path == "/healthz" {
        return Route::Health;
    }
    if path.contains('%') || path.contains("//") {
        return Route::BadRequest(format!("malformed path {path:?}"));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (action, rest) = match parts.split_first() {
        Some((&"containerLogs", rest)) => (Action::Logs, rest),
        Some((&"exec", rest)) => (Action::Exec, rest),
        Some((&"attach", rest)) => (Action::Attach, rest),
        Some((&"portForward", rest)) => (Action::PortForward, rest),
        Some((first, _)) => {
            return Route::Refused(format!(
                "the kubelet API /{first} is not available from a virtual cluster"
            ));
        }
        None => return Route::Refused("/ is not available from a virtual cluster".into()),
    };
    let allowed = match action {
        Action::Logs => *method == Method::GET,
        _ => *method == Method::GET || *method == Method::POST,
    };
    if !allowed {
        return Route::MethodNotAllowed;
    }
    let (namespace, pod, uid, container) = match (action, rest) {
        (Action::Logs, [ns, pod, c]) => (*ns, *pod, None, *c),
        (Action::Exec | Action::Attach, [ns, pod, c]) => (*ns, *pod, None, *c),
        (Action::Exec | Action::Attach, [ns, pod, uid, c]) => (*ns, *pod, Some(*uid), *c),
        (Action::PortForward, [ns, pod]) => (*ns, *pod, None, ""),
        (Action::PortForward, [ns, pod, uid]) => (*ns, *pod, Some(*uid), ""),
        _ => return Route::BadRequest(format!("malformed kubelet path {path:?}")),
    };
    if !is_dns_label(namespace) {
        return Route::BadRequest(format!("invalid namespace {namespace:?}"));
    }
    if !is_dns_subdomain(pod) {
        return Route::BadRequest(format!("invalid pod name {pod:?}"));
    }
    if !container.is_empty() && !is_dns_label(container) {
        return Route::BadRequest(format!("invalid container name {container:?}"));
    }
    if uid.is_some_and(|u| !is_uid(u)) {
        return Route::BadRequest("invalid pod uid".into());
    }
    let kubelet_query = query_pairs(query);
    if action == Action::Exec && !kubelet_query.iter().any(|(k, _)| k == "command") {
        return Route::BadRequest("exec without a command".into());
    }
    Route::Pod(PodCall {
        action,
        namespace: namespace.to_string(),
        pod: pod.to_string(),
        container: container.to_string(),
        query: host_query(action, container, &kubelet_query),
    })
}

impl PodCall {
    /// Path and query of the host call, in host namespace `host_ns`.
    pub fn host_path(&self, host_ns: &str) -> String {
        let mut path = format!(
            "/api/v1/namespaces/{host_ns}/pods/{}/{}",
            self.pod,
            self.action.subresource()
        );
        if !self.query.is_empty() {
            let q = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(self.query.iter())
                .finish();
            path.push('?');
            path.push_str(&q);
        }
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(r: Route) -> PodCall {
        match r {
            Route::Pod(p) => p,
            other => panic!("not a pod call: {other:?}"),
        }
    }

    #[test]
    fn logs_become_the_host_pods_log_with_the_log_parameters_only() {
        let c = pod(parse(
            &Method::GET,
            "/containerLogs/default/web-1/nginx",
            Some("follow=true&tailLines=10&insecureSkipTLSVerifyBackend=true&x=1"),
        ));
        assert_eq!(c.action, Action::Logs);
        assert_eq!(
            c.host_path("tenants-ab-default"),
            "/api/v1/namespaces/tenants-ab-default/pods/web-1/log?container=nginx&follow=true&tailLines=10"
        );
        assert_eq!(
            parse(&Method::POST, "/containerLogs/default/web-1/nginx", None),
            Route::MethodNotAllowed
        );
    }

    #[test]
    fn exec_and_attach_flags_take_the_subresource_names() {
        let c = pod(parse(
            &Method::POST,
            "/exec/default/web-1/nginx",
            Some("command=sh&command=-c&command=echo+a%26b&input=1&output=1&error=0&tty=1"),
        ));
        assert_eq!(
            c.host_path("h"),
            "/api/v1/namespaces/h/pods/web-1/exec?container=nginx&command=sh&command=-c&command=echo+a%26b&stdin=true&stdout=true&tty=true"
        );
        let with_uid = pod(parse(
            &Method::GET,
            "/exec/default/web-1/0f1e2d3c-aaaa-bbbb-cccc-0123456789ab/nginx",
            Some("command=ls&output=1"),
        ));
        assert_eq!(with_uid.container, "nginx");
        let attach = pod(parse(
            &Method::POST,
            "/attach/default/web-1/nginx",
            Some("input=1&output=1&command=rm"),
        ));
        assert_eq!(
            attach.host_path("h"),
            "/api/v1/namespaces/h/pods/web-1/attach?container=nginx&stdin=true&stdout=true"
        );
        assert!(matches!(
            parse(&Method::POST, "/exec/default/web-1/nginx", Some("output=1")),
            Route::BadRequest(_)
        ));
    }

    #[test]
    fn port_forward_ports_are_numbers() {
        let c = pod(parse(
            &Method::POST,
            "/portForward/default/web-1",
            Some("port=8080&port=0&port=x&port=99999"),
        ));
        assert_eq!(
            c.host_path("h"),
            "/api/v1/namespaces/h/pods/web-1/portforward?ports=8080"
        );
        assert!(matches!(
            parse(&Method::POST, "/portForward/default/web-1/abc-123", None),
            Route::Pod(_)
        ));
    }

    #[test]
    fn crafted_names_and_node_wide_paths_are_refused() {
        for path in [
            "/containerLogs/../kube-system/etcd/etcd",
            "/containerLogs/default/..%2f..%2fx/c",
            "/containerLogs/default/web/../../x",
            "/containerLogs/Default/web/c",
            "/containerLogs/default/web",
            "/containerLogs/default/web/c/extra",
            "/exec/default/web/not-a-uid!/c",
            "/portForward/default",
            "/containerLogs//web/c",
            "/exec/default/web_1/c",
        ] {
            assert!(
                matches!(parse(&Method::GET, path, None), Route::BadRequest(_)),
                "{path}"
            );
        }
        for path in [
            "/run/default/web/c",
            "/pods",
            "/stats/summary",
            "/metrics/resource",
            "/logs/syslog",
            "/configz",
            "/debug/pprof/",
            "/checkpoint/default/web/c",
            "/",
        ] {
            assert!(
                matches!(parse(&Method::GET, path, None), Route::Refused(_)),
                "{path}"
            );
        }
        assert_eq!(parse(&Method::GET, "/healthz", None), Route::Health);
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("web.v1"));
        assert!(!is_dns_subdomain("web..v1"));
        assert!(is_uid("0f1e2d3c-aaaa"));
        assert!(!is_uid("x/y"));
    }
}
