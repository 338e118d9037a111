//! VM-like kinds (VirtualMachine, VirtualMachinePool, VirtualMachineInstance): where each keeps
//! what KubeVirt runs, and the rules over it.
//!
//! A kind says where its parts sit with one [`VmTemplate`] (in its own module under
//! [`crate::kinds`]); everything here reads objects through it, so no rule repeats "where the
//! VMI spec is in kind K".
//!
//! - [`host_refs`]: secondary networks and DataSources by namespace, allowed host ones.
//! - [`hotplug`]: volume hotplug through the host's virt-api the tenant VM takes up.
//! - [`refs`]: what the VM references by name (Secrets, ConfigMaps, PVCs, ...).
//! - [`safety`]: what never reaches the host.
//! - [`size`]: instancetypes and the guest's size (vCPUs, memory), storage.

pub mod annotations;
pub mod host_refs;
pub mod hotplug;
pub mod refs;
pub mod safety;
pub mod size;

use serde_json::Value;

use crate::field_path;

/// Where a VM-like kind keeps its parts, as JSON pointers into the object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmTemplate {
    /// The VMI spec: `/spec/template/spec` of a VirtualMachine, `/spec` of a VMI.
    pub vmi_spec: &'static str,
    /// The VirtualMachine spec (run strategy, instancetype, `dataVolumeTemplates`); `None` for a
    /// VirtualMachineInstance, which has none.
    pub vm_spec: Option<&'static str>,
    /// The labels the running instances carry (what a Service selects); `None`: the object's
    /// own labels (a VMI is its instance).
    pub instance_labels: Option<&'static str>,
    /// How many VMs one object stands for (a pool's `spec.replicas`, default 1); `None`: one.
    pub replicas: Option<&'static str>,
    /// The metadata blocks whose annotations and labels reach the host's VMs, VMIs and
    /// virt-launcher pods (the object's own, and its templates').
    pub metadata: &'static [&'static str],
}

impl VmTemplate {
    /// The VMI spec of an object.
    pub fn vmi_spec<'a>(&self, obj: &'a Value) -> Option<&'a Value> {
        obj.pointer(self.vmi_spec)
    }

    /// The VMI spec's field path, for messages (`spec.template.spec`).
    pub fn vmi_spec_path(&self) -> String {
        field_path(self.vmi_spec)
    }

    /// The VM spec's field path, for messages (`spec`, `spec.virtualMachineTemplate.spec`).
    pub fn vm_spec_path(&self) -> Option<String> {
        self.vm_spec.map(field_path)
    }

    /// The `dataVolumeTemplates` of an object.
    pub fn data_volume_templates<'a>(&self, obj: &'a Value) -> Option<&'a Vec<Value>> {
        obj.pointer(self.vm_spec?)?
            .get("dataVolumeTemplates")?
            .as_array()
    }

    /// The labels an object's instances carry.
    pub fn instance_labels(&self, obj: &kube::api::DynamicObject) -> Option<Value> {
        match self.instance_labels {
            Some(p) => obj.data.pointer(p).cloned(),
            None => obj
                .metadata
                .labels
                .as_ref()
                .and_then(|l| serde_json::to_value(l).ok()),
        }
    }

    /// How many VMs the object stands for.
    pub fn replicas(&self, obj: &Value) -> u64 {
        self.replicas
            .map(|p| obj.pointer(p).and_then(Value::as_u64).unwrap_or(1))
            .unwrap_or(1)
    }

    /// Whether the object runs (takes vCPUs and memory): a VM unless halted (KubeVirt's default
    /// run strategy is Halted), a pool's VMs likewise, a VMI unless it has finished.
    pub fn is_running(&self, obj: &Value) -> bool {
        match self.vm_spec {
            Some(p) => {
                let Some(spec) = obj.pointer(p) else {
                    return false;
                };
                match spec.get("runStrategy").and_then(Value::as_str) {
                    Some(strategy) => strategy != "Halted",
                    None => spec.get("running").and_then(Value::as_bool) == Some(true),
                }
            }
            None => !matches!(
                obj.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            ),
        }
    }
}
