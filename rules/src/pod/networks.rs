//! A tenant Pod's Multus annotations, which its host copy keeps: the secondary networks it asks
//! for (`k8s.v1.cni.cncf.io/networks`) must be networks of its own namespace, named plainly
//! (they resolve in the copy's host namespace), or host networks of
//! `spec.vmPolicy.allowedNetworks` ([`crate::vm::host_refs::network`], as for VMs); replacing
//! the pod's cluster network (`v1.multus-cni.io/default-network`) is refused: it would take the
//! pod out of the isolation NetworkPolicy.

use kvtenant_api::VmPolicy;
use serde_json::Value;

use crate::Violation;
use crate::vm::host_refs::{Resolved, network};

/// The annotation listing a pod's secondary networks.
pub const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// The annotation replacing a pod's cluster network.
pub const DEFAULT_NETWORK: &str = "v1.multus-cni.io/default-network";

/// Most bytes of the networks annotation kvtenant reads.
const MAX_BYTES: usize = 16 * 1024;

/// The networks an annotation value names, as Multus reads it: a JSON list of objects
/// (`name`, `namespace`), or a comma-separated list of `[namespace/]name[@interface]`.
fn named(value: &str) -> Result<Vec<String>, String> {
    let value = value.trim();
    if value.starts_with('[') {
        let list: Vec<Value> =
            serde_json::from_str(value).map_err(|e| format!("is not a JSON list: {e}"))?;
        list.iter()
            .map(|n| {
                let name = n.get("name").and_then(Value::as_str).unwrap_or_default();
                match n.get("namespace").and_then(Value::as_str) {
                    Some(ns) if !ns.is_empty() => Ok(format!("{ns}/{name}")),
                    _ => Ok(name.to_string()),
                }
            })
            .collect()
    } else {
        Ok(value
            .split(',')
            .map(|n| n.trim().split('@').next().unwrap_or_default().to_string())
            .filter(|n| !n.is_empty())
            .collect())
    }
}

/// The violations of a pod's Multus annotations.
pub fn check(pod: &Value, policy: &VmPolicy) -> Vec<Violation> {
    let mut out = Vec::new();
    let annotations = pod
        .pointer("/metadata/annotations")
        .and_then(Value::as_object);
    let namespace = pod.pointer("/metadata/namespace").and_then(Value::as_str);
    if annotations.is_some_and(|a| a.contains_key(DEFAULT_NETWORK)) {
        out.push(Violation::new(
            format!("metadata.annotations[{DEFAULT_NETWORK}]"),
            "replacing the pod's cluster network would take it out of the virtual cluster's \
             network isolation; remove the annotation and add networks with \
             k8s.v1.cni.cncf.io/networks",
        ));
    }
    let Some(value) = annotations.and_then(|a| a.get(NETWORKS)) else {
        return out;
    };
    let path = format!("metadata.annotations[{NETWORKS}]");
    let value = value.as_str().unwrap_or_default();
    if value.len() > MAX_BYTES {
        out.push(Violation::new(
            path,
            format!("more than the {MAX_BYTES} bytes kvtenant reads"),
        ));
        return out;
    }
    match named(value) {
        Err(e) => out.push(Violation::new(path, format!("the value {e}"))),
        Ok(names) => {
            for name in names {
                let refused = match network(&name, namespace, policy) {
                    Resolved::Refused(m) => Some(m),
                    // the copy keeps the value: a network of the pod's own namespace must be
                    // named plainly to resolve in its host namespace
                    Resolved::Host(host) if host != name && !name.contains('/') => None,
                    Resolved::Host(host) if host != name => Some(format!(
                        "network {name:?} names the pod's own namespace; name it {host:?}"
                    )),
                    Resolved::Host(_) => None,
                };
                if let Some(m) = refused {
                    out.push(Violation::new(path.clone(), m));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: Value) -> Value {
        json!({"metadata": {"namespace": "a", "annotations": annotations}})
    }

    #[test]
    fn own_and_allowed_host_networks_pass_others_are_refused() {
        let policy = VmPolicy {
            allowed_networks: vec!["net-system/vlan10".into()],
            ..VmPolicy::default()
        };
        let ok = pod(json!({NETWORKS: "mine@eth1, net-system/vlan10"}));
        assert!(check(&ok, &policy).is_empty());
        let ok_json = pod(json!({NETWORKS:
            r#"[{"name": "mine"}, {"name": "vlan10", "namespace": "net-system"}]"#}));
        assert!(check(&ok_json, &policy).is_empty());
        let theirs = pod(json!({NETWORKS: "kvtenant-x-other/theirs"}));
        let found = check(&theirs, &policy);
        assert_eq!(found.len(), 1);
        assert!(found[0].message.contains("spec.vmPolicy.allowedNetworks"));
        let theirs_json = pod(json!({NETWORKS: r#"[{"name": "x", "namespace": "kube-system"}]"#}));
        assert_eq!(check(&theirs_json, &policy).len(), 1);
        let own_ns = pod(json!({NETWORKS: "a/mine"}));
        assert!(
            check(&own_ns, &policy)[0]
                .message
                .contains("name it \"mine\"")
        );
        let bad = pod(json!({NETWORKS: "[{", DEFAULT_NETWORK: "net-system/vlan10"}));
        let paths: Vec<String> = check(&bad, &policy).into_iter().map(|v| v.path).collect();
        assert_eq!(
            paths,
            [
                "metadata.annotations[v1.multus-cni.io/default-network]",
                "metadata.annotations[k8s.v1.cni.cncf.io/networks]"
            ]
        );
        let big = pod(json!({NETWORKS: "a,".repeat(MAX_BYTES)}));
        assert_eq!(check(&big, &policy).len(), 1);
        assert!(check(&pod(json!({})), &policy).is_empty());
    }
}
