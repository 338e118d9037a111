//! KubeVirt VirtualMachinePools: synced down; the VMs the host's pool controller makes are
//! mirrored up as VirtualMachines.

use kvtenant_api::SyncKind;
use serde_json::Value;

use super::{ApiKind, SyncedKind};
use crate::quota::Usage;
use crate::vm::VmTemplate;
use crate::vm::size::GuestSize;

pub const KIND: &str = "VirtualMachinePool";

/// Where a pool keeps its VM template and that VM's VMI template.
pub const TEMPLATE: VmTemplate = VmTemplate {
    vmi_spec: "/spec/virtualMachineTemplate/spec/template/spec",
    vm_spec: Some("/spec/virtualMachineTemplate/spec"),
    instance_labels: Some("/spec/virtualMachineTemplate/spec/template/metadata/labels"),
    replicas: Some("/spec/replicas"),
    metadata: &[
        "/metadata",
        "/spec/virtualMachineTemplate/metadata",
        "/spec/virtualMachineTemplate/spec/template/metadata",
    ],
};

pub struct VirtualMachinePool;

impl SyncedKind for VirtualMachinePool {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachinePool)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachinePool)
    }
    fn vm_template(&self) -> Option<&'static VmTemplate> {
        Some(&TEMPLATE)
    }
    fn in_quota(&self) -> bool {
        true
    }
    /// A pool counts `replicas` times its VM template.
    fn usage(&self, obj: &Value, size: GuestSize) -> Option<Usage> {
        Some(Usage::of_vm(&TEMPLATE, obj, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pool_counts_its_replicas() {
        let pool = json!({"spec": {"replicas": 3, "virtualMachineTemplate": {"spec": {
            "running": true,
            "dataVolumeTemplates": [{"spec": {"storage": {"resources": {"requests": {"storage": "1Gi"}}}}}],
            "template": {"spec": {}}}}}});
        let size = GuestSize {
            vcpus: 1,
            memory: 1 << 20,
        };
        let u = VirtualMachinePool.usage(&pool, size);
        assert_eq!(
            u,
            Some(Usage {
                vms: 3,
                vcpus: 3,
                memory: 3 << 20,
                storage: 3 << 30
            })
        );
    }
}
