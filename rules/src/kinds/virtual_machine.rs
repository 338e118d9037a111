//! KubeVirt VirtualMachines: synced down (VMs a pool makes on the host are mirrored up); their
//! run fields follow start/stop through the host's virt-api, their volumes and disks a hotplug
//! through it ([`crate::vm::hotplug`]), their spec a restore by the host's restore controller
//! ([`super::snapshot`]).

use kube::api::DynamicObject;
use kvtenant_api::SyncKind;
use serde_json::Value;

use super::{ApiKind, SyncedKind};
use crate::quota::{Usage, owner_kinds};
use crate::vm::VmTemplate;
use crate::vm::refs::ObjRef;
use crate::vm::size::GuestSize;

pub const KIND: &str = "VirtualMachine";

/// Where a VirtualMachine keeps its VMI template.
pub const TEMPLATE: VmTemplate = VmTemplate {
    vmi_spec: "/spec/template/spec",
    vm_spec: Some("/spec"),
    instance_labels: Some("/spec/template/metadata/labels"),
    replicas: None,
    metadata: &["/metadata", "/spec/template/metadata"],
};

pub struct VirtualMachine;

impl SyncedKind for VirtualMachine {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachine)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachine)
    }
    fn list_page_size(&self) -> u32 {
        super::LARGE_OBJECT_PAGE
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    /// KubeVirt's VM mutator gives a VM its firmware UUID and serial and its PCI topology
    /// version only at creation; a tenant's update must not drop them (the guest would see new
    /// SMBIOS identifiers after its next start).
    fn host_kept(&self) -> &'static [&'static str] {
        &[
            "/spec/template/spec/domain/firmware/uuid",
            "/spec/template/spec/domain/firmware/serial",
            "/spec/template/metadata/annotations/kubevirt.io~1pci-topology-version",
        ]
    }
    fn vm_template(&self) -> Option<&'static VmTemplate> {
        Some(&TEMPLATE)
    }
    fn host_change_to_take_up(
        &self,
        host: &DynamicObject,
        desired: &DynamicObject,
    ) -> Option<Value> {
        // a restore by the host's restore controller, else a start/stop through its virt-api
        super::snapshot::restored_vm_patch(host, desired)
            .or_else(|| crate::runstate::host_run_change(host, desired))
    }
    fn host_hotplug_to_take_up(
        &self,
        host: &DynamicObject,
        desired: &DynamicObject,
        owns: &dyn Fn(&ObjRef) -> bool,
    ) -> Option<Value> {
        crate::vm::hotplug::host_hotplug_change(&TEMPLATE, host, desired, owns)
    }
    fn in_quota(&self) -> bool {
        true
    }
    /// A VM counts unless a pool owns it (the pool counts its VMs).
    fn usage(&self, obj: &Value, size: GuestSize) -> Option<Usage> {
        (!owner_kinds(obj).contains(&super::pool::KIND)).then(|| Usage::of_vm(&TEMPLATE, obj, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pool_owned_vms_are_counted_by_the_pool() {
        let size = GuestSize {
            vcpus: 2,
            memory: 1 << 30,
        };
        let vm = json!({"spec": {"runStrategy": "Always", "template": {"spec": {}}}});
        assert_eq!(
            VirtualMachine.usage(&vm, size),
            Some(Usage {
                vms: 1,
                vcpus: 2,
                memory: 1 << 30,
                storage: 0
            })
        );
        let mut owned = vm.clone();
        owned["metadata"] =
            json!({"ownerReferences": [{"kind": "VirtualMachinePool", "name": "p"}]});
        assert_eq!(VirtualMachine.usage(&owned, size), None);
    }
}
