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
    /// Only standalone VMIs count (a VM's instance is counted by the VM).
    fn usage(&self, obj: &Value, size: GuestSize) -> Option<Usage> {
        owner_kinds(obj)
            .is_empty()
            .then(|| Usage::of_vm(&TEMPLATE, obj, size))
    }
}
