//! Pods: every tenant Pod runs on the host under the same name in the mapped namespace (the
//! host schedules it). The tenant sees the host's decisions: the node (a binding in the
//! tenant), the status (phase, IPs, container states). Deleting in the tenant deletes on the
//! host, gracefully; a pod the host removed (eviction, node loss) is removed in the tenant.
//!
//! What never reaches the host: Pod Security escapes above the VirtualCluster's level
//! ([`crate::pod::security`]), host placement ([`crate::pod::placement`]), a host
//! ServiceAccount or token ([`crate::pod::identity`]). A pod that uses the cluster's DNS
//! resolves through the tenant's own CoreDNS on the host ([`crate::pod::dns`]).
//!
//! KubeVirt's virt-launcher pods of the tenant's VMs are mirrored into the tenant, read-only, as
//! vcluster shows them: `kubectl logs` reads a VM's launcher and `guest-console-log` there.

use serde_json::Value;

use super::{ApiKind, HostContext, MirrorContext, SyncedKind, TenantFix};
use crate::pod::{identity, placement, refs, security};
use crate::vm::refs::ObjRef;
use crate::vm::size::GuestSize;
use crate::{Policy, Violation};

pub const KIND: &str = "Pod";

/// KubeVirt's label on the virt-launcher pods it makes: the host-made pods mirrored up.
pub const LAUNCHER_SELECTOR: &str = "kubevirt.io=virt-launcher";

/// Values of a host pod the tenant's admission computes itself and refuses when they come set
/// (priority from its PriorityClasses, overhead from its RuntimeClasses).
const MIRROR_DROPPED: &[&str] = &[
    "/spec/priority",
    "/spec/preemptionPolicy",
    "/spec/overhead",
    "/spec/runtimeClassName",
];

/// The tenant mirror of a virt-launcher pod; `false` until the host bound the pod (a pod's spec
/// cannot change after creation: the mirror is made with its node) and while the tenant lacks
/// the pod's ServiceAccount (its admission would refuse the pod; the mirror follows once it
/// exists).
fn launcher_mirror(data: &mut Value, ctx: &MirrorContext) -> bool {
    if node_name(data).is_none() {
        return false;
    }
    crate::translate::remove_pointers(data, MIRROR_DROPPED);
    let sa = data
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    (ctx.tenant_uid)("ServiceAccount", sa).is_some()
}

pub struct Pod;

/// The node a pod runs on.
fn node_name(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
}

impl SyncedKind for Pod {
    fn api(&self) -> ApiKind {
        ApiKind::core(KIND, "pods")
    }
    /// The node is the host scheduler's choice; priority and preemption are computed by the
    /// host's Priority admission from the class (a tenant value would be refused there).
    fn host_assigned(&self) -> &'static [&'static str] {
        &[
            "/spec/nodeName",
            "/spec/priority",
            "/spec/preemptionPolicy",
            "/spec/overhead",
        ]
    }
    /// A pod's spec is immutable but for container images, `activeDeadlineSeconds`, added
    /// tolerations and removed scheduling gates (which the tenant's apiserver enforces on the
    /// tenant pod too): what kvtenant adds or rewrites on the host (identity, environment,
    /// confinement) stays as it was when the host copy was made; images follow the tenant.
    fn keep_host_fixed(&self, desired: &mut Value, host: &Value) {
        keep_fixed_pod_spec(desired, host);
    }
    fn watch_host_copies_only(&self) -> bool {
        true
    }
    fn list_page_size(&self) -> u32 {
        super::LARGE_OBJECT_PAGE
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    fn host_made_selector(&self) -> Option<&'static str> {
        Some(LAUNCHER_SELECTOR)
    }
    fn to_tenant_data(&self, data: &mut Value, ctx: &MirrorContext) -> bool {
        launcher_mirror(data, ctx)
    }
    fn references_others(&self) -> bool {
        true
    }
    fn references(&self, obj: &Value) -> Vec<ObjRef> {
        obj.get("spec").map(refs::references).unwrap_or_default()
    }
    fn violations(&self, obj: &Value, policy: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        let mut out = security::check(obj, policy.pod_security);
        if let Some(spec) = obj.get("spec") {
            out.extend(placement::check(spec, policy.vm));
        }
        out.extend(crate::pod::networks::check(obj, policy.vm));
        out
    }
    fn to_host_data(&self, data: &mut Value, ctx: &HostContext) {
        if let Some(spec) = data.get_mut("spec") {
            identity::to_host(spec, ctx.tenant_namespace, ctx.name, ctx.api);
            placement::confine(spec, ctx.nodes);
            ctx.point_dns(spec);
        }
    }
    fn dns_spec(&self) -> Option<&'static str> {
        Some("/spec")
    }
    fn tenant_token(&self, obj: &Value) -> Option<String> {
        obj.get("spec").and_then(identity::token_service_account)
    }
    fn follows_host_lifecycle(&self) -> bool {
        true
    }
    /// Bound, and a status from the host's kubelet (a node the tenant chose itself at creation
    /// is not the host's doing).
    fn ran_on_host(&self, tenant: &Value) -> bool {
        node_name(tenant).is_some()
            && ["/status/hostIP", "/status/startTime"]
                .iter()
                .any(|p| crate::is_set(tenant.pointer(p)))
    }
    fn tenant_fix(&self, tenant: &Value, host: &Value) -> Option<TenantFix> {
        match (node_name(tenant), node_name(host)) {
            (None, Some(node)) => Some(TenantFix::Bind(node.to_string())),
            _ => None,
        }
    }
    fn host_node<'a>(&self, host: &'a Value) -> Option<&'a str> {
        node_name(host)
    }
}

/// Fields of a pod spec no update may change, that kvtenant's translation may have made
/// differently at creation.
const FIXED: &[&str] = &[
    "/spec/nodeSelector",
    "/spec/affinity",
    "/spec/tolerations",
    "/spec/volumes",
    "/spec/automountServiceAccountToken",
    "/spec/serviceAccountName",
    "/spec/serviceAccount",
    "/spec/securityContext",
    "/spec/dnsPolicy",
    "/spec/dnsConfig",
    "/spec/enableServiceLinks",
    "/spec/schedulerName",
    "/spec/priorityClassName",
    "/spec/priority",
    "/spec/preemptionPolicy",
    "/spec/overhead",
    "/spec/runtimeClassName",
    "/spec/nodeName",
];

/// The host pod's fixed fields and containers, with the tenant's images.
fn keep_fixed_pod_spec(desired: &mut Value, host: &Value) {
    crate::translate::keep::take_host_values(desired, host, FIXED);
    for list in ["containers", "initContainers"] {
        let Some(host_list) = host
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let images: Vec<(Value, Value)> = desired
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c.get("name")?.clone(), c.get("image")?.clone())))
            .collect();
        let merged: Vec<Value> = host_list
            .iter()
            .map(|c| {
                let mut c = c.clone();
                let image = images
                    .iter()
                    .find(|(n, _)| Some(n) == c.get("name"))
                    .map(|(_, i)| i.clone());
                if let (Some(o), Some(i)) = (c.as_object_mut(), image) {
                    o.insert("image".into(), i);
                }
                c
            })
            .collect();
        if let Some(spec) = desired.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert(list.into(), Value::Array(merged));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_launcher_pod_is_mirrored_without_what_the_tenants_admission_computes() {
        let mut pending = json!({"spec": {"serviceAccountName": "default"}});
        let mut data = json!({"spec": {"priority": 1000, "preemptionPolicy": "PreemptLowerPriority",
            "runtimeClassName": "kata", "overhead": {"cpu": "1"}, "serviceAccountName": "default",
            "nodeName": "n1", "containers": [{"name": "compute", "image": "virt-launcher"}]},
            "status": {"phase": "Running", "podIP": "10.244.0.9"}});
        let has_default =
            |k: &str, n: &str| (k == "ServiceAccount" && n == "default").then(|| "u".to_string());
        let ctx = MirrorContext {
            host_namespace: "h",
            tenant_namespace: "default",
            tenant_uid: &has_default,
        };
        assert!(!Pod.to_tenant_data(&mut pending, &ctx), "not bound yet");
        assert!(Pod.to_tenant_data(&mut data, &ctx));
        for p in MIRROR_DROPPED {
            assert!(data.pointer(p).is_none(), "{p}");
        }
        assert_eq!(data["spec"]["nodeName"], "n1");
        assert_eq!(data["status"]["podIP"], "10.244.0.9");
        // the VM's own ServiceAccount, not in the tenant (yet): no mirror
        let mut other = json!({"spec": {"serviceAccountName": "builder", "nodeName": "n1"}});
        assert!(!Pod.to_tenant_data(&mut other, &ctx));
        let none = |_: &str, _: &str| None;
        let ctx = MirrorContext {
            tenant_uid: &none,
            ..ctx
        };
        assert!(!Pod.to_tenant_data(&mut json!({"spec": {"nodeName": "n1"}}), &ctx));
        assert_eq!(Pod.host_made_selector(), Some("kubevirt.io=virt-launcher"));
    }

    #[test]
    fn an_update_keeps_what_the_host_fixed_and_takes_the_tenants_images() {
        let host = json!({"spec": {"nodeSelector": {"pool": "old"}, "nodeName": "n1",
            "containers": [{"name": "web", "image": "nginx:1", "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "old"}]}]}});
        let mut desired = json!({"spec": {"nodeSelector": {"pool": "new"},
            "containers": [{"name": "web", "image": "nginx:2", "env": [{"name": "KUBERNETES_SERVICE_HOST", "value": "new"}]}]}});
        Pod.keep_host_fixed(&mut desired, &host);
        assert_eq!(desired["spec"]["nodeSelector"]["pool"], "old");
        assert_eq!(desired["spec"]["nodeName"], "n1");
        assert_eq!(desired["spec"]["containers"][0]["image"], "nginx:2");
        assert_eq!(desired["spec"]["containers"][0]["env"][0]["value"], "old");
        let mut no_affinity = json!({"spec": {"affinity": {"x": 1}}});
        Pod.keep_host_fixed(&mut no_affinity, &json!({"spec": {}}));
        assert!(no_affinity["spec"].get("affinity").is_none());
    }

    #[test]
    fn a_scheduled_host_copy_binds_the_tenant_pod_once() {
        let tenant = json!({"spec": {"containers": []}});
        let host = json!({"spec": {"nodeName": "n1"}});
        assert_eq!(
            Pod.tenant_fix(&tenant, &host),
            Some(TenantFix::Bind("n1".into()))
        );
        let bound = json!({"spec": {"nodeName": "n1"}});
        assert_eq!(Pod.tenant_fix(&bound, &host), None);
        assert!(!Pod.ran_on_host(&bound), "no kubelet status yet");
        let ran = json!({"spec": {"nodeName": "n1"}, "status": {"hostIP": "172.18.0.3"}});
        assert!(Pod.ran_on_host(&ran));
        assert!(!Pod.ran_on_host(&tenant));
        assert_eq!(Pod.host_node(&host), Some("n1"));
    }

    #[test]
    fn pod_security_and_placement_are_both_checked() {
        let vm = kvtenant_api::VmPolicy::default();
        let p = Policy::vm_only(&vm);
        let pod = json!({"spec": {"hostNetwork": true, "priorityClassName": "system-node-critical",
            "containers": [{"name": "c"}]}});
        let paths: Vec<String> = Pod
            .violations(&pod, &p, None)
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(paths, ["spec.hostNetwork", "spec.priorityClassName"]);
    }
}
