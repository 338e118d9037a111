//! The paths the proxy answers (KubeVirt's `subresources.kubevirt.io` routes, SOURCE.md (b)),
//! parsed from the raw request path. Pure.

use super::{GROUP, VERSIONS};

/// KubeVirt's subresources (first path segment after the object name), for metric labels.
const SUBRESOURCES: &[&str] = &[
    "start",
    "stop",
    "restart",
    "migrate",
    "expand-spec",
    "addvolume",
    "removevolume",
    "memorydump",
    "removememorydump",
    "objectgraph",
    "evacuate",
    "portforward",
    "pause",
    "unpause",
    "freeze",
    "unfreeze",
    "reset",
    "softreboot",
    "console",
    "vnc",
    "usbredir",
    "vsock",
    "guestosinfo",
    "userlist",
    "filesystemlist",
    "sev",
    "backup",
    "redefine-checkpoint",
];

/// Group-version endpoints virt-api serves without authorization; forwarded as they are.
const INFO: &[&str] = &["version", "healthz", "guestfs"];

/// Group-version endpoints never forwarded: the host's profiler is not the tenant's business.
const REFUSED: &[&str] = &[
    "start-cluster-profiler",
    "stop-cluster-profiler",
    "dump-cluster-profiler",
];

/// A namespaced call: `/apis/subresources.kubevirt.io/{version}/namespaces/{namespace}/...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub version: String,
    /// The tenant namespace.
    pub namespace: String,
    /// `virtualmachines`, `virtualmachineinstances`, or `expand-vm-spec` (no name).
    pub resource: String,
    pub name: Option<String>,
    /// The path after the name, e.g. `start`, `vnc/screenshot`, `portforward/22/tcp`.
    pub action: String,
}

impl Call {
    /// The subresource a SubjectAccessReview names: the first segment after the name, as the
    /// apiserver's request info and virt-api's authorizer read it.
    pub fn subresource(&self) -> &str {
        self.action.split('/').next().unwrap_or_default()
    }

    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        if self.resource == "expand-vm-spec" {
            return "expand-vm-spec";
        }
        let sub = self.subresource();
        SUBRESOURCES
            .iter()
            .find(|s| **s == sub)
            .copied()
            .unwrap_or("other")
    }

    /// The same call for the host namespace (path only; the query is kept by the caller).
    pub fn host_path(&self, host_ns: &str) -> String {
        let mut p = format!(
            "/apis/{GROUP}/{}/namespaces/{host_ns}/{}",
            self.version, self.resource
        );
        if let Some(name) = &self.name {
            p.push('/');
            p.push_str(name);
        }
        if !self.action.is_empty() {
            p.push('/');
            p.push_str(&self.action);
        }
        p
    }

    /// `virtualmachineinstances/console`, as RBAC names it.
    pub fn rbac_resource(&self) -> String {
        match self.subresource() {
            "" => self.resource.clone(),
            sub => format!("{}/{sub}", self.resource),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/healthz`, `/livez`, `/readyz` (no client certificate needed).
    Health,
    Root,
    /// `/apis`
    Apis,
    /// `/apis/subresources.kubevirt.io`
    Group,
    OpenApiV2,
    OpenApiV3,
    /// `/apis/subresources.kubevirt.io/{version}`
    Discovery {
        version: String,
    },
    /// `/apis/subresources.kubevirt.io/{version}/{version|healthz|guestfs}`
    Info {
        version: String,
        what: String,
    },
    Call(Call),
    /// A route virt-api has but the proxy never forwards.
    Refused {
        what: String,
    },
    /// A path with a malformed name or segment.
    BadRequest(String),
    NotFound,
}

/// A DNS-1123 subdomain (namespace and object names).
fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        && !s.contains("..")
}

/// A segment of an action path (`portforward/22/tcp`, `sev/fetchcertchain`).
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Parses a raw request path (percent-escapes are refused: no name needs them).
pub fn parse(path: &str) -> Route {
    match path {
        "/healthz" | "/livez" | "/readyz" => return Route::Health,
        "/" => return Route::Root,
        "/openapi/v2" => return Route::OpenApiV2,
        "/openapi/v3" => return Route::OpenApiV3,
        _ => {}
    }
    let trimmed = path.strip_suffix('/').unwrap_or(path);
    if trimmed == "/apis" {
        return Route::Apis;
    }
    let Some(rest) = trimmed.strip_prefix(&format!("/apis/{GROUP}")) else {
        return Route::NotFound;
    };
    if rest.is_empty() {
        return Route::Group;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Route::NotFound;
    };
    if path.contains('%') {
        return Route::BadRequest(format!("escaped characters are not allowed in {path:?}"));
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let Some((version, parts)) = parts.split_first() else {
        return Route::NotFound;
    };
    if !VERSIONS.contains(version) {
        return Route::NotFound;
    }
    let version = version.to_string();
    match parts {
        [] => Route::Discovery { version },
        [what] if INFO.contains(what) => Route::Info {
            version,
            what: what.to_string(),
        },
        [what] if REFUSED.contains(what) => Route::Refused {
            what: what.to_string(),
        },
        ["namespaces", ns, "expand-vm-spec"] => {
            if !is_name(ns) {
                return Route::BadRequest(format!("invalid namespace {ns:?}"));
            }
            Route::Call(Call {
                version,
                namespace: ns.to_string(),
                resource: "expand-vm-spec".into(),
                name: None,
                action: String::new(),
            })
        }
        [
            "namespaces",
            ns,
            resource @ ("virtualmachines" | "virtualmachineinstances"),
            name,
            action @ ..,
        ] if !action.is_empty() => {
            if !is_name(ns) {
                return Route::BadRequest(format!("invalid namespace {ns:?}"));
            }
            if !is_name(name) {
                return Route::BadRequest(format!("invalid name {name:?}"));
            }
            if let Some(bad) = action.iter().find(|s| !is_segment(s)) {
                return Route::BadRequest(format!("invalid path segment {bad:?}"));
            }
            Route::Call(Call {
                version,
                namespace: ns.to_string(),
                resource: resource.to_string(),
                name: Some(name.to_string()),
                action: action.join("/"),
            })
        }
        _ => Route::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(path: &str) -> Call {
        match parse(path) {
            Route::Call(c) => c,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn parses_discovery_and_info() {
        assert_eq!(parse("/apis"), Route::Apis);
        assert_eq!(parse("/apis/"), Route::Apis);
        assert_eq!(parse("/apis/subresources.kubevirt.io"), Route::Group);
        assert_eq!(
            parse("/apis/subresources.kubevirt.io/v1"),
            Route::Discovery {
                version: "v1".into()
            }
        );
        assert_eq!(
            parse("/apis/subresources.kubevirt.io/v1alpha3/"),
            Route::Discovery {
                version: "v1alpha3".into()
            }
        );
        assert_eq!(parse("/apis/subresources.kubevirt.io/v2"), Route::NotFound);
        assert_eq!(parse("/apis/subresources.kubevirt.iox"), Route::NotFound);
        assert!(matches!(
            parse("/apis/subresources.kubevirt.io/v1/version"),
            Route::Info { .. }
        ));
        assert!(matches!(
            parse("/apis/subresources.kubevirt.io/v1/dump-cluster-profiler"),
            Route::Refused { .. }
        ));
        assert_eq!(parse("/api/v1/pods"), Route::NotFound);
        assert_eq!(parse("/healthz"), Route::Health);
    }

    #[test]
    fn parses_calls() {
        let c =
            call("/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/vm1/start");
        assert_eq!(c.namespace, "default");
        assert_eq!(c.rbac_resource(), "virtualmachines/start");
        assert_eq!(c.metric_label(), "start");
        assert_eq!(
            c.host_path("h-ns"),
            "/apis/subresources.kubevirt.io/v1/namespaces/h-ns/virtualmachines/vm1/start"
        );
        let c = call(
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/a.b/portforward/22/tcp",
        );
        assert_eq!(c.action, "portforward/22/tcp");
        assert_eq!(c.subresource(), "portforward");
        assert_eq!(c.rbac_resource(), "virtualmachineinstances/portforward");
        let c = call(
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachineinstances/x/vnc/screenshot",
        );
        assert_eq!(c.subresource(), "vnc");
        let c = call("/apis/subresources.kubevirt.io/v1/namespaces/ns/expand-vm-spec");
        assert_eq!(c.name, None);
        assert_eq!(c.rbac_resource(), "expand-vm-spec");
        assert_eq!(
            c.host_path("h"),
            "/apis/subresources.kubevirt.io/v1/namespaces/h/expand-vm-spec"
        );
        let c =
            call("/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/x/frobnicate");
        assert_eq!(c.metric_label(), "other");
    }

    #[test]
    fn refuses_traversal_and_odd_names() {
        for p in [
            "/apis/subresources.kubevirt.io/v1/namespaces/../virtualmachines/vm1/start",
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/../start",
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm/../../x",
            "/apis/subresources.kubevirt.io/v1/namespaces/NS/virtualmachines/vm/start",
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm%2f..%2fx/start",
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm//start",
        ] {
            assert!(matches!(parse(p), Route::BadRequest(_)), "{p}");
        }
        for p in [
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/pods/p/exec",
            "/apis/subresources.kubevirt.io/v1/namespaces/ns/virtualmachines/vm",
            "/apis/subresources.kubevirt.io/v1/namespaces/ns",
        ] {
            assert_eq!(parse(p), Route::NotFound, "{p}");
        }
    }
}
