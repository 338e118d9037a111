//! PersistentVolumeClaims: synced once a synced pod or VM references them, and kept on the host
//! until the tenant deletes the claim (the host copy holds the data); the claims CDI makes
//! for DataVolumes are mirrored into the tenant like the DataVolumes. Once the host binds a
//! claim's host counterpart, the tenant sees the volume ([`crate::volumes`]) and the claim names
//! it; a tenant claim naming a volume itself is refused.

use serde_json::Value;

use super::{ApiKind, SyncedKind, TenantFix, Trigger};
use crate::Policy;
use crate::vm::size::GuestSize;
use crate::volumes::{self, ClaimVolume};
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
    fn kept_once_synced(&self) -> bool {
        true
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    /// The host binds the copy: its volume is the host's choice ([`crate::volumes`]).
    fn host_assigned(&self) -> &'static [&'static str] {
        &["/spec/volumeName"]
    }
    /// An update of the copy keeps the volume the host bound it to (set once; the apiserver
    /// refuses an update without it).
    fn host_kept(&self) -> &'static [&'static str] {
        &["/spec/volumeName"]
    }
    fn taken_from_host(&self) -> &'static [&'static str] {
        &["/spec/volumeName"]
    }
    fn shown_volume(&self, tenant: Option<&Value>, host: Option<&Value>) -> ClaimVolume {
        volumes::decide(tenant, host)
    }
    /// The tenant claim names the volume its host copy is bound to (once its mirror is shown).
    fn tenant_fix(&self, tenant: &Value, host: &Value) -> Option<TenantFix> {
        let volume = volumes::bound_volume(host)?;
        volumes::volume_name_patch(tenant, volume).map(TenantFix::Patch)
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

    #[test]
    fn a_claim_takes_up_the_volume_its_host_copy_is_bound_to() {
        let k = PersistentVolumeClaim;
        let host = json!({"spec": {"volumeName": "pvc-1"}, "status": {"phase": "Bound"}});
        assert_eq!(
            k.tenant_fix(&json!({"spec": {}}), &host),
            Some(TenantFix::Patch(json!({"spec": {"volumeName": "pvc-1"}})))
        );
        let named = json!({"spec": {"volumeName": "pvc-1"}});
        assert_eq!(k.tenant_fix(&named, &host), None);
        let pending = json!({"spec": {"volumeName": "pvc-1"}, "status": {"phase": "Pending"}});
        assert_eq!(k.tenant_fix(&json!({"spec": {}}), &pending), None);
        assert_eq!(k.host_assigned(), ["/spec/volumeName"]);
        assert_eq!(
            k.shown_volume(Some(&named), Some(&host)),
            ClaimVolume::Show("pvc-1".into())
        );
    }
}
