//! KubeVirt VirtualMachineInstances: synced when enabled or when VirtualMachines are (a VM's
//! instance is what tenants look at); the VMIs the host makes for VMs are mirrored up. VMIs have
//! no `/status` subresource: status is written through the main resource.

use kvtenant_api::SyncKind;
use serde_json::Value;

use super::{ApiKind, Enablement, SyncedKind};
use crate::quota::{Usage, owner_kinds};
use crate::vm::VmTemplate;
use crate::vm::size::GuestSize;

pub const KIND: &str = "VirtualMachineInstance";

/// A VMI is its own template.
pub const TEMPLATE: VmTemplate = VmTemplate {
    vmi_spec: "/spec",
    vm_spec: None,
    instance_labels: None,
    replicas: None,
    metadata: &["/metadata"],
};

pub struct VirtualMachineInstance;

impl SyncedKind for VirtualMachineInstance {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineInstance)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineInstance)
    }
    fn list_page_size(&self) -> u32 {
        super::LARGE_OBJECT_PAGE
    }
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        if enabled.contains(&SyncKind::VirtualMachineInstance)
            || enabled.contains(&SyncKind::VirtualMachine)
        {
            Enablement::Synced
        } else {
            Enablement::Off
        }
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    fn status_subresource(&self) -> bool {
        false
    }
    fn vm_template(&self) -> Option<&'static VmTemplate> {
        Some(&TEMPLATE)
    }
    fn host_node<'a>(&self, host: &'a Value) -> Option<&'a str> {
        host.pointer("/status/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
    }
    fn in_quota(&self) -> bool {
        true
    }
    /// Only standalone VMIs the tenant made count: a VM's instance is counted by the VM, and a
    /// mirror (an instance the host made) always comes from something the tenant made.
    fn usage(&self, obj: &Value, size: GuestSize) -> Option<Usage> {
        (owner_kinds(obj).is_empty() && !crate::translate::is_mirror_json(obj))
            .then(|| Usage::of_vm(&TEMPLATE, obj, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::MIRROR_OF;
    use serde_json::json;

    #[test]
    fn only_standalone_instances_the_tenant_made_count() {
        let size = GuestSize {
            vcpus: 1,
            memory: 1 << 27,
        };
        let standalone = json!({"metadata": {"name": "i"}, "spec": {}});
        assert_eq!(
            VirtualMachineInstance
                .usage(&standalone, size)
                .map(|u| u.vms),
            Some(1)
        );
        let owned = json!({"metadata": {"ownerReferences": [{"kind": "VirtualMachine", "name": "i"}]}, "spec": {}});
        assert_eq!(VirtualMachineInstance.usage(&owned, size), None);
        let mirror = json!({"metadata": {"annotations": {MIRROR_OF: "host-uid"}}, "spec": {}});
        assert_eq!(VirtualMachineInstance.usage(&mirror, size), None);
    }
}
