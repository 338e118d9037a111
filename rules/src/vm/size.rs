//! The size of a VM-like object: the instancetype it names, its guest (vCPUs, memory) as
//! KubeVirt sizes it, and the storage its `dataVolumeTemplates` request.

use serde_json::Value;

use super::VmTemplate;
use crate::quantity::quantity_at;

/// KubeVirt's default instancetype kind, when `spec.instancetype.kind` is not set.
pub const CLUSTER_INSTANCETYPE_KIND: &str = "VirtualMachineClusterInstancetype";

/// The size of a VM's guest: what the per-VM limits and the tenant-wide quota count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestSize {
    pub vcpus: u64,
    /// Guest memory, bytes.
    pub memory: u128,
}

/// The instancetype a VirtualMachine (or a pool's VM template) names in `spec.instancetype`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstancetypeRef {
    /// As written, [`CLUSTER_INSTANCETYPE_KIND`] when not set.
    pub kind: String,
    pub name: String,
}

impl InstancetypeRef {
    /// Whether it names a cluster-wide instancetype (KubeVirt compares kinds case-insensitively,
    /// singular or plural).
    pub fn is_cluster_wide(&self) -> bool {
        let k = self.kind.to_ascii_lowercase();
        k == "virtualmachineclusterinstancetype" || k == "virtualmachineclusterinstancetypes"
    }
}

/// `spec.instancetype` of a VirtualMachine (or a pool's VM template); VMIs have none.
pub fn instancetype_ref(template: &VmTemplate, obj: &Value) -> Option<InstancetypeRef> {
    let it = obj.pointer(template.vm_spec?)?.get("instancetype")?;
    let name = it
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())?;
    let kind = it
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .unwrap_or(CLUSTER_INSTANCETYPE_KIND);
    Some(InstancetypeRef {
        kind: kind.to_string(),
        name: name.to_string(),
    })
}

/// The guest a VM-like object asks for, as KubeVirt sizes it: vCPUs from the CPU topology
/// (sockets × cores × threads, each 1 when unset), else from the CPU limit or request (rounded
/// up), else 1; memory from `domain.memory.guest`, else the memory request, else the limit.
/// An instancetype's size (when the object names one and the caller looked it up) wins, as
/// KubeVirt refuses VMs that set both.
pub fn guest_size(
    template: &VmTemplate,
    obj: &Value,
    instancetype: Option<GuestSize>,
) -> GuestSize {
    if let (Some(size), Some(_)) = (instancetype, instancetype_ref(template, obj)) {
        return size;
    }
    let domain = template.vmi_spec(obj).and_then(|s| s.get("domain"));
    let at = |ptr: &str| domain.and_then(|d| d.pointer(ptr));
    let topology: Vec<Option<u64>> = ["/cpu/sockets", "/cpu/cores", "/cpu/threads"]
        .iter()
        .map(|p| at(p).and_then(Value::as_u64))
        .collect();
    let vcpus = if topology.iter().any(Option::is_some) {
        topology
            .iter()
            .map(|t| t.unwrap_or(1).max(1))
            .fold(1u64, u64::saturating_mul)
    } else {
        quantity_at(at("/resources/limits/cpu"))
            .or_else(|| quantity_at(at("/resources/requests/cpu")))
            .map(|c| u64::try_from(c).unwrap_or(u64::MAX))
            .unwrap_or(1)
    };
    let memory = quantity_at(at("/memory/guest"))
        .or_else(|| quantity_at(at("/resources/requests/memory")))
        .or_else(|| quantity_at(at("/resources/limits/memory")))
        .unwrap_or(0);
    GuestSize { vcpus, memory }
}

/// Storage a VM-like object requests on the host per VM, bytes: its `dataVolumeTemplates`.
pub fn storage_request(template: &VmTemplate, obj: &Value) -> u128 {
    template
        .data_volume_templates(obj)
        .into_iter()
        .flatten()
        .map(data_volume_storage)
        .fold(0u128, u128::saturating_add)
}

/// Storage a DataVolume (or a `dataVolumeTemplates` entry) requests, bytes.
pub fn data_volume_storage(dv: &Value) -> u128 {
    quantity_at(dv.pointer("/spec/storage/resources/requests/storage"))
        .or_else(|| quantity_at(dv.pointer("/spec/pvc/resources/requests/storage")))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::pool::TEMPLATE as POOL;
    use crate::kinds::virtual_machine::TEMPLATE as VM;
    use serde_json::json;

    fn vm(spec: Value) -> Value {
        json!({"spec": {"template": {"spec": spec}}})
    }

    #[test]
    fn guest_size_follows_kubevirt() {
        let topo =
            vm(json!({"domain": {"cpu": {"sockets": 2, "cores": 2}, "memory": {"guest": "2Gi"}}}));
        assert_eq!(
            guest_size(&VM, &topo, None),
            GuestSize {
                vcpus: 4,
                memory: 2 << 30
            }
        );
        let by_resources =
            vm(json!({"domain": {"resources": {"requests": {"cpu": "1500m", "memory": "1Gi"}}}}));
        assert_eq!(
            guest_size(&VM, &by_resources, None),
            GuestSize {
                vcpus: 2,
                memory: 1 << 30
            }
        );
        let mut typed = vm(json!({}));
        typed["spec"]["instancetype"] = json!({"name": "u1.large"});
        let it = GuestSize {
            vcpus: 8,
            memory: 32 << 30,
        };
        assert_eq!(guest_size(&VM, &typed, Some(it)), it);
        assert_eq!(guest_size(&VM, &typed, None).vcpus, 1);
    }

    #[test]
    fn running_storage_and_replicas() {
        let mut v = vm(json!({}));
        assert!(!VM.is_running(&v), "KubeVirt's default is Halted");
        v["spec"]["runStrategy"] = json!("Always");
        assert!(VM.is_running(&v));
        v["spec"]["dataVolumeTemplates"] = json!([
            {"spec": {"storage": {"resources": {"requests": {"storage": "10Gi"}}}}},
            {"spec": {"pvc": {"resources": {"requests": {"storage": "1Gi"}}}}}
        ]);
        assert_eq!(storage_request(&VM, &v), 11 << 30);
        let pool =
            json!({"spec": {"replicas": 3, "virtualMachineTemplate": {"spec": {"running": true}}}});
        assert_eq!(POOL.replicas(&pool), 3);
        assert!(POOL.is_running(&pool));
    }
}
