//! What objects take of a virtual cluster's tenant-wide VM quota (`spec.vmPolicy.quota`). Each
//! kind says whether and how its objects count ([`crate::kinds::SyncedKind::usage`]).

use serde_json::Value;

use crate::vm::VmTemplate;
use crate::vm::size::{GuestSize, storage_request};

/// What objects take from the tenant-wide quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub vms: u64,
    pub vcpus: u64,
    /// Bytes.
    pub memory: u128,
    /// Bytes.
    pub storage: u128,
}

impl Usage {
    pub fn plus(self, o: Usage) -> Usage {
        Usage {
            vms: self.vms.saturating_add(o.vms),
            vcpus: self.vcpus.saturating_add(o.vcpus),
            memory: self.memory.saturating_add(o.memory),
            storage: self.storage.saturating_add(o.storage),
        }
    }

    /// What a VM-like object takes: its VMs (a pool: `replicas`), their vCPUs and memory while
    /// running, the storage of their `dataVolumeTemplates`.
    pub fn of_vm(template: &VmTemplate, obj: &Value, size: GuestSize) -> Usage {
        let n = template.replicas(obj);
        let running = template.is_running(obj);
        Usage {
            vms: n,
            vcpus: if running {
                size.vcpus.saturating_mul(n)
            } else {
                0
            },
            memory: if running {
                size.memory.saturating_mul(u128::from(n))
            } else {
                0
            },
            storage: storage_request(template, obj).saturating_mul(u128::from(n)),
        }
    }
}

/// The kinds of an object's owners.
pub fn owner_kinds(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|o| o.get("kind").and_then(Value::as_str))
        .collect()
}
