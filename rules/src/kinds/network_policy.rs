//! NetworkPolicies: synced with every `namespaceSelector` confined to the virtual cluster's own
//! host namespaces. A selector on `kubernetes.io/metadata.name` (the tenant namespace's name)
//! becomes one on the host namespace's tenant-namespace label; any other namespace label cannot
//! be read on the host and is refused with a message. Pod selectors need nothing: the host
//! copies of the tenant's pods carry the tenant's labels, in the same host namespace.

use kvtenant_api::labels::{TENANT_NAMESPACE, VIRTUALCLUSTER_UID};
use serde_json::{Map, Value, json};

use super::{ApiKind, HostContext, SyncedKind};
use crate::vm::size::GuestSize;
use crate::{Policy, Violation};

pub const KIND: &str = "NetworkPolicy";

/// The namespace label every namespace has: its name.
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub struct NetworkPolicy;

impl SyncedKind for NetworkPolicy {
    fn api(&self) -> ApiKind {
        ApiKind {
            group: "networking.k8s.io",
            version: "v1",
            kind: KIND,
            plural: "networkpolicies",
        }
    }
    fn watch_host_copies_only(&self) -> bool {
        true
    }
    fn status_subresource(&self) -> bool {
        false
    }
    fn violations(&self, obj: &Value, _: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        let mut out = Vec::new();
        for (path, peer) in peers(obj) {
            let Some(sel) = peer.get("namespaceSelector") else {
                continue;
            };
            for key in selector_keys(sel) {
                if key != NAME_LABEL {
                    out.push(Violation::new(
                        format!("{path}.namespaceSelector"),
                        format!(
                            "selecting namespaces by label {key:?} is not supported in a virtual \
                             cluster (the host cannot read your namespaces' labels); select by \
                             {NAME_LABEL} or list the namespaces"
                        ),
                    ));
                }
            }
        }
        out
    }
    fn to_host_data(&self, data: &mut Value, ctx: &HostContext) {
        for list in ["/spec/ingress", "/spec/egress"] {
            let field = if list.ends_with("ingress") {
                "from"
            } else {
                "to"
            };
            for rule in data
                .pointer_mut(list)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                for peer in rule
                    .get_mut(field)
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(sel) = peer.get_mut("namespaceSelector") {
                        *sel = host_selector(sel, ctx.vc_uid);
                    }
                }
            }
        }
    }
}

/// The peers of the policy's rules, with their paths.
fn peers(obj: &Value) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    for (list, field) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in obj
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for (j, peer) in rule
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                out.push((format!("spec.{list}[{i}].{field}[{j}]"), peer));
            }
        }
    }
    out
}

fn selector_keys(sel: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .collect();
    keys.extend(
        sel.get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("key").and_then(Value::as_str)),
    );
    keys
}

/// A tenant namespace selector as a host one: only this virtual cluster's host namespaces, the
/// namespace name read off the tenant-namespace label. Labels it cannot translate are refused
/// (see `violations`); here they become a key no namespace has, so nothing more is selected.
fn host_selector(sel: &Value, vc_uid: &str) -> Value {
    let rename = |k: &str| {
        if k == NAME_LABEL {
            TENANT_NAMESPACE.to_string()
        } else {
            format!("{TENANT_NAMESPACE}-unsupported")
        }
    };
    let mut labels = Map::new();
    labels.insert(VIRTUALCLUSTER_UID.into(), json!(vc_uid));
    for (k, v) in sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        labels.insert(rename(k), v.clone());
    }
    let mut out = json!({"matchLabels": labels});
    let exprs: Vec<Value> = sel
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| {
            let mut e = e.clone();
            if let Some(k) = e.get("key").and_then(Value::as_str).map(rename) {
                e["key"] = json!(k);
            }
            e
        })
        .collect();
    if !exprs.is_empty() {
        out["matchExpressions"] = json!(exprs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    static NODES: std::sync::LazyLock<kvtenant_api::NodesSpec> =
        std::sync::LazyLock::new(kvtenant_api::NodesSpec::default);

    fn ctx() -> HostContext<'static> {
        HostContext {
            tenant_namespace: "web",
            name: "np",
            vc_uid: "vc-1",
            nodes: &NODES,
            api: None,
            dns: &crate::pod::dns::TenantDns::Off,
        }
    }

    #[test]
    fn namespace_selectors_only_ever_select_the_tenants_own_host_namespaces() {
        let mut np = json!({"spec": {"podSelector": {}, "ingress": [{"from": [
            {"namespaceSelector": {}},
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}},
             "podSelector": {"matchLabels": {"app": "ui"}}},
            {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}]}},
            {"podSelector": {"matchLabels": {"app": "db"}}},
            {"ipBlock": {"cidr": "10.0.0.0/8"}}]}],
            "egress": [{"to": [{"namespaceSelector": {}}]}]}});
        let vm = kvtenant_api::VmPolicy::default();
        assert!(
            NetworkPolicy
                .violations(&np, &Policy::vm_only(&vm), None)
                .is_empty()
        );
        NetworkPolicy.to_host_data(&mut np, &ctx());
        let from = &np["spec"]["ingress"][0]["from"];
        assert_eq!(
            from[0]["namespaceSelector"],
            json!({"matchLabels": {VIRTUALCLUSTER_UID: "vc-1"}})
        );
        assert_eq!(
            from[1]["namespaceSelector"],
            json!({"matchLabels": {VIRTUALCLUSTER_UID: "vc-1", TENANT_NAMESPACE: "frontend"}})
        );
        assert_eq!(from[1]["podSelector"]["matchLabels"]["app"], "ui");
        assert_eq!(
            from[2]["namespaceSelector"]["matchExpressions"][0]["key"],
            TENANT_NAMESPACE
        );
        assert_eq!(
            from[3],
            json!({"podSelector": {"matchLabels": {"app": "db"}}})
        );
        assert_eq!(
            np["spec"]["egress"][0]["to"][0]["namespaceSelector"],
            json!({"matchLabels": {VIRTUALCLUSTER_UID: "vc-1"}})
        );
    }

    #[test]
    fn other_namespace_labels_are_refused_and_never_widen() {
        let np = json!({"spec": {"ingress": [{"from": [
            {"namespaceSelector": {"matchLabels": {"team": "a"}}}]}]}});
        let vm = kvtenant_api::VmPolicy::default();
        let v = NetworkPolicy.violations(&np, &Policy::vm_only(&vm), None);
        assert_eq!(v[0].path, "spec.ingress[0].from[0].namespaceSelector");
        let host = host_selector(
            &np["spec"]["ingress"][0]["from"][0]["namespaceSelector"],
            "vc-1",
        );
        assert_eq!(host["matchLabels"][VIRTUALCLUSTER_UID], "vc-1");
    }
}
