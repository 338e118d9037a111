//! Who a host pod is. A tenant pod that uses its ServiceAccount talks to the **tenant's**
//! apiserver as the **tenant's** ServiceAccount; the host copy never runs as a host
//! ServiceAccount and never gets a host token:
//!
//! - `serviceAccountName` is dropped (the host's `default`) and `automountServiceAccountToken`
//!   is false on the host;
//! - the projected volume the tenant's apiserver added (`kube-api-access-*`: a token, the
//!   tenant's `kube-root-ca.crt`, the namespace) reads a host Secret kvtenant writes instead:
//!   a token the tenant's apiserver issued for the tenant's ServiceAccount, bound to the tenant
//!   pod, refreshed before it expires, with the tenant's CA and namespace; a projection asking
//!   for its own `audience` reads a token issued for that audience (a key of its own);
//! - `KUBERNETES_SERVICE_HOST`/`_PORT` point at the virtual cluster's apiserver, when its
//!   address is known (VirtualCluster `status.endpoint`);
//! - the downward API's `metadata.namespace` in env becomes the tenant namespace; in downwardAPI
//!   volumes (and projected ones) `metadata.namespace` and `metadata.uid`, and `metadata.uid` in
//!   env, read the host copy's annotations naming the tenant pod's namespace and uid, so a
//!   workload sees its own tenant identity, not the host's.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Keys of the token Secret.
pub const TOKEN_KEY: &str = "token";
pub const CA_KEY: &str = "ca.crt";
pub const NAMESPACE_KEY: &str = "namespace";

/// How long a token kvtenant requests lives (the tenant's apiserver may shorten it).
pub const TOKEN_SECONDS: i64 = 3600;

const PREFIX: &str = "kvtenant-token-";

/// The name of the host Secret holding a pod's token.
pub fn token_secret_name(pod: &str) -> String {
    if PREFIX.len() + pod.len() <= 253 {
        format!("{PREFIX}{pod}")
    } else {
        let digest = Sha256::digest(pod.as_bytes());
        format!("{PREFIX}{}", hex::encode(&digest[..16]))
    }
}

/// The token Secret's key of the token for `audience` (`None` or empty: the tenant apiserver's
/// own audiences).
pub fn token_key(audience: Option<&str>) -> String {
    match audience.filter(|a| !a.is_empty()) {
        None => TOKEN_KEY.to_owned(),
        Some(a) => format!("token-{}", hex::encode(&Sha256::digest(a.as_bytes())[..8])),
    }
}

/// The audiences the pod's token projections ask for, each once (`None`: the tenant apiserver's
/// own), in order.
pub fn token_audiences(spec: &Value) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = Vec::new();
    for src in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.pointer("/projected/sources").and_then(Value::as_array))
        .flatten()
    {
        let Some(t) = src.get("serviceAccountToken") else {
            continue;
        };
        let audience = t
            .get("audience")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        if !out.contains(&audience) {
            out.push(audience);
        }
    }
    out
}

/// Whether a volume is a projection of the pod's ServiceAccount token.
pub fn is_token_projection(vol: &Value) -> bool {
    vol.pointer("/projected/sources")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
}

/// The tenant ServiceAccount whose token the pod mounts, if it mounts one.
pub fn token_service_account(spec: &Value) -> Option<String> {
    let mounts = spec
        .get("volumes")
        .and_then(Value::as_array)
        .is_some_and(|v| v.iter().any(is_token_projection));
    mounts.then(|| {
        spec.get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or("default")
            .to_string()
    })
}

/// Where the virtual cluster's apiserver is, as host pods reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiEndpoint {
    pub host: String,
    pub port: u16,
}

impl ApiEndpoint {
    /// From an `https://host:port` URL (port 443 when absent).
    pub fn from_url(url: &str) -> Option<Self> {
        let rest = url.strip_prefix("https://")?;
        let authority = rest.split('/').next()?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.trim_matches(['[', ']']), p.parse().ok()?)
            }
            _ => (authority, 443),
        };
        (!host.is_empty()).then(|| Self {
            host: host.to_string(),
            port,
        })
    }
}

/// Rewrites a tenant pod spec into its host copy's identity (see the module docs).
pub fn to_host(spec: &mut Value, tenant_namespace: &str, pod: &str, api: Option<&ApiEndpoint>) {
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    s.remove("serviceAccountName");
    s.remove("serviceAccount");
    s.insert("automountServiceAccountToken".into(), Value::Bool(false));
    let secret = token_secret_name(pod);
    for vol in s
        .get_mut("volumes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if is_token_projection(vol) {
            replace_projection(vol, &secret);
        }
        downward_volume(vol);
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for c in s
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            container_env(c, tenant_namespace, api);
        }
    }
}

/// The token projection reads the token Secret: the token, the tenant's CA and namespace at the
/// paths the tenant's apiserver chose; other sources of the same volume stay.
fn replace_projection(vol: &mut Value, secret: &str) {
    let Some(sources) = vol
        .pointer_mut("/projected/sources")
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    let mut items = Vec::new();
    let mut kept = Vec::new();
    for src in sources.drain(..) {
        if let Some(t) = src.get("serviceAccountToken") {
            let path = t.get("path").and_then(Value::as_str).unwrap_or(TOKEN_KEY);
            let key = token_key(t.get("audience").and_then(Value::as_str));
            items.push(json!({"key": key, "path": path}));
        } else if src.pointer("/configMap/name").and_then(Value::as_str) == Some("kube-root-ca.crt")
        {
            let path = src
                .pointer("/configMap/items")
                .and_then(Value::as_array)
                .and_then(|i| i.iter().find(|i| i.get("key") == Some(&json!(CA_KEY))))
                .and_then(|i| i.get("path"))
                .and_then(Value::as_str)
                .unwrap_or(CA_KEY);
            items.push(json!({"key": CA_KEY, "path": path}));
        } else if let Some(d) = src.get("downwardAPI") {
            let mut rest = Vec::new();
            for item in d
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if item.pointer("/fieldRef/fieldPath").and_then(Value::as_str)
                    == Some("metadata.namespace")
                {
                    let path = item
                        .get("path")
                        .and_then(Value::as_str)
                        .unwrap_or("namespace");
                    items.push(json!({"key": NAMESPACE_KEY, "path": path}));
                } else {
                    rest.push(item.clone());
                }
            }
            if !rest.is_empty() {
                kept.push(json!({"downwardAPI": {"items": rest}}));
            }
        } else {
            kept.push(src);
        }
    }
    sources.push(json!({"secret": {"name": secret, "items": items}}));
    sources.extend(kept);
}

/// Where the host copy keeps a downward-API field that differs from the tenant pod's: the
/// annotations kvtenant puts on every host copy (the tenant object's namespace and uid).
fn tenant_field(field_path: &str) -> Option<String> {
    let key = match field_path {
        "metadata.namespace" => kvtenant_api::labels::TENANT_NAMESPACE,
        "metadata.uid" => kvtenant_api::labels::TENANT_UID,
        _ => return None,
    };
    Some(format!("metadata.annotations['{key}']"))
}

/// A downwardAPI volume's (or projected volume's) items read the tenant identity.
fn downward_volume(vol: &mut Value) {
    if let Some(items) = vol.pointer_mut("/downwardAPI/items") {
        downward_items(items);
    }
    for src in vol
        .pointer_mut("/projected/sources")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        if let Some(items) = src.pointer_mut("/downwardAPI/items") {
            downward_items(items);
        }
    }
}

fn downward_items(items: &mut Value) {
    for item in items.as_array_mut().into_iter().flatten() {
        let path = item
            .pointer("/fieldRef/fieldPath")
            .and_then(Value::as_str)
            .and_then(tenant_field);
        if let (Some(path), Some(f)) = (path, item.pointer_mut("/fieldRef")) {
            f["fieldPath"] = json!(path);
        }
    }
}

fn container_env(c: &mut Value, tenant_namespace: &str, api: Option<&ApiEndpoint>) {
    let Some(c) = c.as_object_mut() else { return };
    let env = c.entry("env").or_insert_with(|| Value::Array(Vec::new()));
    let Some(env) = env.as_array_mut() else {
        return;
    };
    for e in env.iter_mut() {
        let field = e
            .pointer("/valueFrom/fieldRef/fieldPath")
            .and_then(Value::as_str)
            .map(str::to_owned);
        match field.as_deref() {
            Some("metadata.namespace") => {
                if let Some(o) = e.as_object_mut() {
                    o.remove("valueFrom");
                    o.insert("value".into(), json!(tenant_namespace));
                }
            }
            Some(other) => {
                if let (Some(path), Some(f)) =
                    (tenant_field(other), e.pointer_mut("/valueFrom/fieldRef"))
                {
                    f["fieldPath"] = json!(path);
                }
            }
            None => {}
        }
    }
    if let Some(api) = api {
        env.retain(|e| {
            !matches!(
                e.get("name").and_then(Value::as_str),
                Some("KUBERNETES_SERVICE_HOST" | "KUBERNETES_SERVICE_PORT")
            )
        });
        env.push(json!({"name": "KUBERNETES_SERVICE_HOST", "value": api.host}));
        env.push(json!({"name": "KUBERNETES_SERVICE_PORT", "value": api.port.to_string()}));
    }
    if env.is_empty() {
        c.remove("env");
    }
}

/// When a token Secret should be written again: `None` now (missing, unreadable or within the
/// last fifth of its life), else in this many seconds.
pub fn refresh_in(expires_at: Option<i64>, now: i64) -> Option<i64> {
    let left = expires_at? - now;
    let margin = TOKEN_SECONDS / 5;
    (left > margin).then_some(left - margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant_pod_spec() -> Value {
        json!({
            "serviceAccountName": "builder",
            "serviceAccount": "builder",
            "volumes": [
                {"name": "data", "configMap": {"name": "conf"}},
                {"name": "kube-api-access-abcde", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}],
            "containers": [{"name": "c", "env": [
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "KUBERNETES_SERVICE_HOST", "value": "spoofed"}]}],
        })
    }

    #[test]
    fn each_audience_reads_a_token_of_its_own() {
        let mut spec = json!({"volumes": [
            {"name": "api", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
            {"name": "vault", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "vault", "path": "vault-token"}}]}},
            {"name": "vault-again", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "vault", "path": "t"}},
                {"serviceAccountToken": {"audience": "", "path": "default"}}]}},
        ]});
        assert_eq!(
            token_audiences(&spec),
            [None, Some("vault".to_owned())],
            "each once, an empty audience is the default"
        );
        assert_eq!(token_key(None), TOKEN_KEY);
        assert_eq!(token_key(Some("")), TOKEN_KEY);
        let vault = token_key(Some("vault"));
        assert!(vault.starts_with("token-") && vault.len() == 22, "{vault}");
        assert_ne!(vault, token_key(Some("vault2")));
        to_host(&mut spec, "apps", "p", None);
        let items =
            |i: usize| spec["volumes"][i]["projected"]["sources"][0]["secret"]["items"].clone();
        assert_eq!(items(0), json!([{"key": "token", "path": "token"}]));
        assert_eq!(items(1), json!([{"key": vault, "path": "vault-token"}]));
        assert_eq!(
            items(2),
            json!([{"key": vault, "path": "t"}, {"key": "token", "path": "default"}])
        );
    }

    #[test]
    fn the_host_copy_mounts_the_tenant_token_and_never_a_host_one() {
        let mut spec = tenant_pod_spec();
        assert_eq!(token_service_account(&spec).as_deref(), Some("builder"));
        let api = ApiEndpoint::from_url("https://team-a.vc-team-a.svc:443");
        to_host(&mut spec, "apps", "web-1", api.as_ref());
        assert!(spec.get("serviceAccountName").is_none());
        assert!(spec.get("serviceAccount").is_none());
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(
            spec["volumes"][0],
            json!({"name": "data", "configMap": {"name": "conf"}})
        );
        assert_eq!(
            spec["volumes"][1]["projected"],
            json!({"defaultMode": 420, "sources": [{"secret": {"name": "kvtenant-token-web-1", "items": [
                {"key": "token", "path": "token"},
                {"key": "ca.crt", "path": "ca.crt"},
                {"key": "namespace", "path": "namespace"}]}}]})
        );
        assert_eq!(
            spec["containers"][0]["env"],
            json!([
                {"name": "NS", "value": "apps"},
                {"name": "KUBERNETES_SERVICE_HOST", "value": "team-a.vc-team-a.svc"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": "443"}])
        );
        // translating twice gives the same copy
        let once = spec.clone();
        to_host(&mut spec, "apps", "web-1", api.as_ref());
        assert_eq!(spec, once);
    }

    #[test]
    fn pods_without_a_token_mount_none_and_names_stay_valid() {
        let mut spec =
            json!({"automountServiceAccountToken": false, "containers": [{"name": "c"}]});
        assert_eq!(token_service_account(&spec), None);
        to_host(&mut spec, "apps", "p", None);
        assert_eq!(
            spec,
            json!({"automountServiceAccountToken": false, "containers": [{"name": "c"}]})
        );
        let long = "x".repeat(253);
        assert!(token_secret_name(&long).len() <= 253);
        assert_eq!(
            ApiEndpoint::from_url("https://127.0.0.1:6443"),
            Some(ApiEndpoint {
                host: "127.0.0.1".into(),
                port: 6443
            })
        );
        assert_eq!(ApiEndpoint::from_url("http://x"), None);
    }

    #[test]
    fn tokens_are_refreshed_in_the_last_fifth_of_their_life() {
        assert_eq!(refresh_in(None, 100), None);
        assert_eq!(
            refresh_in(Some(100 + TOKEN_SECONDS), 100),
            Some(TOKEN_SECONDS * 4 / 5)
        );
        assert_eq!(refresh_in(Some(100 + TOKEN_SECONDS / 5), 100), None);
    }

    #[test]
    fn downward_api_fields_read_the_tenant_identity() {
        let mut spec = json!({
            "containers": [{"name": "c", "env": [
                {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
                {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            ]}],
            "volumes": [
                {"name": "info", "downwardAPI": {"items": [
                    {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
                    {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                ]}},
                {"name": "mix", "projected": {"sources": [
                    {"downwardAPI": {"items": [{"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                    {"configMap": {"name": "cfg"}},
                ]}},
            ]
        });
        to_host(&mut spec, "apps", "p", None);
        let ns = "metadata.annotations['tenancy.kvtenant.io/tenant-namespace']";
        let uid = "metadata.annotations['tenancy.kvtenant.io/tenant-uid']";
        let items = &spec["volumes"][0]["downwardAPI"]["items"];
        assert_eq!(items[0]["fieldRef"]["fieldPath"], ns);
        assert_eq!(items[1]["fieldRef"]["fieldPath"], uid);
        assert_eq!(items[2]["fieldRef"]["fieldPath"], "metadata.labels");
        assert_eq!(
            spec["volumes"][1]["projected"]["sources"][0]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"],
            ns
        );
        let env = &spec["containers"][0]["env"];
        assert_eq!(env[0]["valueFrom"]["fieldRef"]["fieldPath"], uid);
        assert_eq!(
            env[1]["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.nodeName"
        );
    }
}
