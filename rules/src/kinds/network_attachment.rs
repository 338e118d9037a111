//! Multus NetworkAttachmentDefinitions (`k8s.cni.cncf.io/v1`): the tenant's secondary networks,
//! synced when enabled (`spec.kubevirt.syncKinds`) and only when their CNI config passes
//! `spec.vmPolicy.tenantNetworks` ([`crate::cni`]). A VM of the same namespace names one by its
//! plain name (or `<namespace>/<name>`), which on the host resolves to the copy in the VM's own
//! host namespace. The host's networks of `spec.vmPolicy.allowedNetworks` are shown read-only
//! ([`crate::host_objects`]) and never synced down.

use kvtenant_api::SyncKind;
use serde_json::Value;

use super::{ApiKind, SyncedKind};
use crate::vm::size::GuestSize;
use crate::{Policy, Violation};

pub const KIND: &str = "NetworkAttachmentDefinition";

/// The annotation naming a device-plugin resource a network needs: Multus' resource injector
/// (and KubeVirt, for SR-IOV) adds it to the pod's requests, claiming host devices.
pub const RESOURCE_NAME: &str = "k8s.v1.cni.cncf.io/resourceName";

pub struct NetworkAttachmentDefinition;

impl SyncedKind for NetworkAttachmentDefinition {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::NetworkAttachmentDefinition)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::NetworkAttachmentDefinition)
    }
    /// The CRD has no `/status`.
    fn status_subresource(&self) -> bool {
        false
    }
    /// The host's own networks are never cached: only kvtenant's copies are watched there.
    fn watch_host_copies_only(&self) -> bool {
        true
    }
    fn violations(&self, obj: &Value, policy: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        let mut out = Vec::new();
        if obj
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .is_some_and(|a| a.contains_key(RESOURCE_NAME))
        {
            out.push(Violation::new(
                format!("metadata.annotations[{RESOURCE_NAME}]"),
                "the annotation claims host devices for the VM's pod; tenant networks may not \
                 name a device resource (ask the platform admin for a host network in \
                 spec.vmPolicy.allowedNetworks)",
            ));
        }
        let config = obj.pointer("/spec/config").and_then(Value::as_str);
        out.extend(crate::cni::check(config, &policy.vm.tenant_networks));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvtenant_api::{TenantNetworks, VmPolicy};
    use serde_json::json;

    #[test]
    fn a_network_passes_only_what_the_policy_allows() {
        let config = json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": "br-t", "vlan": 7})
            .to_string();
        let nad = json!({"metadata": {"name": "n"}, "spec": {"config": config}});
        let none = VmPolicy::default();
        let refused = NetworkAttachmentDefinition.violations(&nad, &Policy::vm_only(&none), None);
        let paths: Vec<&str> = refused.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.config[type]",
                "spec.config[bridge]",
                "spec.config[vlan]"
            ]
        );
        let vm = VmPolicy {
            tenant_networks: TenantNetworks {
                allowed_cni_types: vec!["bridge".into()],
                allowed_bridges: vec!["br-t".into()],
                allowed_vlans: vec![7],
            },
            ..VmPolicy::default()
        };
        let p = Policy::vm_only(&vm);
        assert!(
            NetworkAttachmentDefinition
                .violations(&nad, &p, None)
                .is_empty()
        );
        let mut sriov = nad.clone();
        sriov["metadata"]["annotations"] = json!({RESOURCE_NAME: "intel.com/sriov"});
        assert_eq!(
            NetworkAttachmentDefinition.violations(&sriov, &p, None)[0].path,
            "metadata.annotations[k8s.v1.cni.cncf.io/resourceName]"
        );
        assert!(!NetworkAttachmentDefinition.status_subresource());
    }
}
