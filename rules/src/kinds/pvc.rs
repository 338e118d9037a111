//! PersistentVolumeClaims: synced while a synced VM references them; the claims CDI makes for
//! DataVolumes are mirrored into the tenant like the DataVolumes.

use serde_json::Value;

use super::{ApiKind, SyncedKind, Trigger};
use crate::Policy;
use crate::vm::size::GuestSize;
use crate::{Violation, is_set};

pub const KIND: &str = "PersistentVolumeClaim";

pub struct PersistentVolumeClaim;

impl SyncedKind for PersistentVolumeClaim {
    fn api(&self) -> ApiKind {
        ApiKind::core(KIND, "persistentvolumeclaims")
    }
    fn trigger(&self) -> Trigger {
        Trigger::WhenReferenced
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    /// A claim may not bind a host PersistentVolume by name, nor copy from another namespace.
    fn violations(&self, obj: &Value, _: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        let mut out = Vec::new();
        if is_set(obj.pointer("/spec/volumeName")) {
            out.push(Violation::new(
                "spec.volumeName",
                "binding a host PersistentVolume by name is not allowed; let the storage \
                 class provision the volume",
            ));
        }
        if is_set(obj.pointer("/spec/dataSourceRef/namespace")) {
            out.push(Violation::new(
                "spec.dataSourceRef.namespace",
                "a claim may not copy from another namespace",
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_may_not_bind_host_volumes_or_copy_across_namespaces() {
        let vm = kvtenant_api::VmPolicy::default();
        let p = Policy::vm_only(&vm);
        let bad = json!({"spec": {"volumeName": "pv-1", "dataSourceRef": {"namespace": "x"}}});
        let paths: Vec<String> = PersistentVolumeClaim
            .violations(&bad, &p, None)
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(paths, ["spec.volumeName", "spec.dataSourceRef.namespace"]);
        let ok = json!({"spec": {"resources": {"requests": {"storage": "1Gi"}}}});
        assert!(PersistentVolumeClaim.violations(&ok, &p, None).is_empty());
    }
}
