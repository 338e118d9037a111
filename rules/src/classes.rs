//! Host classes shown in a tenant, read-only, so what names them resolves in the virtual cluster
//! as on the host: every StorageClass (a tenant's claims are provisioned by the host's), the
//! IngressClasses the VirtualCluster allows its Ingresses (`spec.isolation.allowedIngressClasses`)
//! and the PriorityClasses it allows (`spec.vmPolicy.allowedPriorityClasses`; the tenant's
//! built-in `system-*` classes stay its own).

use kvtenant_api::VirtualClusterSpec;
use kvtenant_api::labels::{HOST_CLASS, MANAGED_BY, MANAGED_BY_VALUE};
use serde_json::{Map, Value, json};

use crate::kinds::ApiKind;

/// The class kinds, in the order they are shown.
pub const CLASS_KINDS: &[ApiKind] = &[
    ApiKind {
        group: "storage.k8s.io",
        version: "v1",
        kind: "StorageClass",
        plural: "storageclasses",
    },
    ApiKind {
        group: "networking.k8s.io",
        version: "v1",
        kind: "IngressClass",
        plural: "ingressclasses",
    },
    ApiKind {
        group: "scheduling.k8s.io",
        version: "v1",
        kind: "PriorityClass",
        plural: "priorityclasses",
    },
];

/// Annotations of a host class a tenant sees (the default-class markers).
const VISIBLE_ANNOTATIONS: &[&str] = &[
    "storageclass.kubernetes.io/is-default-class",
    "ingressclass.kubernetes.io/is-default-class",
];

/// Whether the tenant sees the host class `name` of this kind.
pub fn shown(kind: &ApiKind, name: &str, spec: &VirtualClusterSpec) -> bool {
    match kind.kind {
        "StorageClass" => true,
        "IngressClass" => spec
            .isolation
            .allowed_ingress_classes
            .iter()
            .any(|c| c == name),
        "PriorityClass" => {
            !name.starts_with("system-") && spec.vm_policy.priority_class_allowed(name)
        }
        _ => false,
    }
}

/// The tenant's read-only copy of a host class (its data, its default marker, kvtenant's labels).
pub fn tenant_copy(kind: &ApiKind, host: &Value) -> Value {
    let mut out = match host.as_object() {
        Some(o) => o.clone(),
        None => Map::new(),
    };
    out.remove("status");
    let name = host
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    let annotations: Map<String, Value> = host
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| VISIBLE_ANNOTATIONS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert(
        "apiVersion".into(),
        json!(format!("{}/{}", kind.group, kind.version)),
    );
    out.insert("kind".into(), json!(kind.kind));
    out.insert(
        "metadata".into(),
        json!({"name": name, "annotations": annotations,
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, HOST_CLASS: "true"}}),
    );
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_classes_show_and_others_only_when_allowed() {
        let mut spec = VirtualClusterSpec::default();
        let [sc, ic, pc] = [CLASS_KINDS[0], CLASS_KINDS[1], CLASS_KINDS[2]];
        assert!(shown(&sc, "fast", &spec));
        assert!(!shown(&ic, "public", &spec));
        assert!(!shown(&pc, "batch-high", &spec));
        spec.isolation.allowed_ingress_classes = vec!["public".into()];
        spec.vm_policy.allowed_priority_classes =
            vec!["batch-high".into(), "system-node-critical".into()];
        assert!(shown(&ic, "public", &spec));
        assert!(shown(&pc, "batch-high", &spec));
        assert!(
            !shown(&pc, "system-node-critical", &spec),
            "the tenant's own built-in"
        );
    }

    #[test]
    fn a_tenant_copy_keeps_the_class_and_its_default_marker_only() {
        let host = json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": "fast", "uid": "h-1", "resourceVersion": "9",
                "labels": {"team": "storage"},
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "provisioner": "example.com/fast", "parameters": {"tier": "1"},
            "reclaimPolicy": "Delete"});
        let t = tenant_copy(&CLASS_KINDS[0], &host);
        assert_eq!(t["provisioner"], "example.com/fast");
        assert_eq!(t["parameters"]["tier"], "1");
        assert_eq!(
            t["metadata"],
            json!({"name": "fast",
                "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
                "labels": {MANAGED_BY: MANAGED_BY_VALUE, HOST_CLASS: "true"}})
        );
    }
}
