//! Host classes shown in a tenant, read-only, so what names them resolves in the virtual cluster
//! as on the host: every StorageClass (a tenant's claims are provisioned by the host's), the
//! IngressClasses the VirtualCluster allows its Ingresses (`spec.isolation.allowedIngressClasses`)
//! and the PriorityClasses it allows (`spec.vmPolicy.allowedPriorityClasses`; the tenant's
//! built-in `system-*` classes stay its own); with KubeVirt, the cluster instancetypes its VMs may
//! use (`spec.vmPolicy.allowedInstancetypes`) and every cluster preference, so `kubectl get
//! virtualmachineclusterinstancetypes` in the tenant lists what its VMs can name. The KubeVirt
//! kinds need their CRDs in the tenant: [`crds`] names them, copied like the synced kinds' CRDs.

use kvtenant_api::labels::{HOST_CLASS, MANAGED_BY, MANAGED_BY_VALUE};
use kvtenant_api::{SyncKind, VirtualClusterSpec};
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
    CLUSTER_INSTANCETYPE,
    CLUSTER_PREFERENCE,
];

/// KubeVirt's cluster-wide instancetypes.
pub const CLUSTER_INSTANCETYPE: ApiKind = ApiKind {
    group: INSTANCETYPE_GROUP,
    version: "v1beta1",
    kind: "VirtualMachineClusterInstancetype",
    plural: "virtualmachineclusterinstancetypes",
};

/// KubeVirt's cluster-wide preferences.
pub const CLUSTER_PREFERENCE: ApiKind = ApiKind {
    group: INSTANCETYPE_GROUP,
    version: "v1beta1",
    kind: "VirtualMachineClusterPreference",
    plural: "virtualmachineclusterpreferences",
};

const INSTANCETYPE_GROUP: &str = "instancetype.kubevirt.io";

/// Labels and annotations of a shown instancetype or preference that the tenant sees too (its
/// class, size, vendor, display name) besides kvtenant's.
const INSTANCETYPE_PREFIX: &str = "instancetype.kubevirt.io/";

/// The CRD a class kind needs in the tenant (KubeVirt's kinds), `<plural>.<group>`.
pub fn crd(kind: &ApiKind) -> Option<String> {
    (kind.group == INSTANCETYPE_GROUP).then(|| format!("{}.{}", kind.plural, kind.group))
}

/// The CRDs of the class kinds a tenant with these KubeVirt kinds synced is shown: the cluster
/// instancetypes and preferences when it syncs VM-like kinds.
pub fn crds(enabled: &[SyncKind]) -> Vec<String> {
    let vms = [SyncKind::VirtualMachine, SyncKind::VirtualMachinePool]
        .iter()
        .any(|k| enabled.contains(k));
    if !vms {
        return Vec::new();
    }
    CLASS_KINDS.iter().filter_map(crd).collect()
}

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
        "VirtualMachineClusterInstancetype" => spec.vm_policy.instancetype_allowed(name),
        "VirtualMachineClusterPreference" => true,
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
        .filter(|(k, _)| {
            VISIBLE_ANNOTATIONS.contains(&k.as_str()) || k.starts_with(INSTANCETYPE_PREFIX)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut labels: Map<String, Value> = host
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(INSTANCETYPE_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(MANAGED_BY.into(), json!(MANAGED_BY_VALUE));
    labels.insert(HOST_CLASS.into(), json!("true"));
    out.insert(
        "apiVersion".into(),
        json!(format!("{}/{}", kind.group, kind.version)),
    );
    out.insert("kind".into(), json!(kind.kind));
    out.insert(
        "metadata".into(),
        json!({"name": name, "annotations": annotations, "labels": labels}),
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
    fn instancetypes_show_as_allowed_and_need_their_crds() {
        let mut spec = VirtualClusterSpec::default();
        assert!(shown(&CLUSTER_INSTANCETYPE, "u1.huge", &spec), "unset: any");
        spec.vm_policy.allowed_instancetypes = Some(vec!["u1.small".into()]);
        assert!(shown(&CLUSTER_INSTANCETYPE, "u1.small", &spec));
        assert!(!shown(&CLUSTER_INSTANCETYPE, "u1.huge", &spec));
        assert!(shown(&CLUSTER_PREFERENCE, "fedora", &spec));
        assert_eq!(crd(&CLASS_KINDS[0]), None);
        assert_eq!(
            crds(&[SyncKind::VirtualMachine]),
            [
                "virtualmachineclusterinstancetypes.instancetype.kubevirt.io",
                "virtualmachineclusterpreferences.instancetype.kubevirt.io"
            ]
        );
        assert!(crds(&[SyncKind::DataVolume]).is_empty());
        let host = json!({"apiVersion": "instancetype.kubevirt.io/v1beta1",
            "kind": "VirtualMachineClusterInstancetype",
            "metadata": {"name": "u1.small", "uid": "h-2", "generation": 1,
                "labels": {"instancetype.kubevirt.io/class": "general.purpose", "team": "x"},
                "annotations": {"instancetype.kubevirt.io/displayName": "Small"}},
            "spec": {"cpu": {"guest": 1}, "memory": {"guest": "2Gi"}}});
        let t = tenant_copy(&CLUSTER_INSTANCETYPE, &host);
        assert_eq!(t["spec"], host["spec"]);
        assert_eq!(
            t["metadata"],
            json!({"name": "u1.small",
                "annotations": {"instancetype.kubevirt.io/displayName": "Small"},
                "labels": {"instancetype.kubevirt.io/class": "general.purpose",
                    MANAGED_BY: MANAGED_BY_VALUE, HOST_CLASS: "true"}})
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
