//! ControllerRevisions KubeVirt makes for a VM's instancetype and preference (the sizes it
//! expanded, which the VM's `status.instancetypeRef`/`preferenceRef` name): mirrored up
//! read-only, so the revisions a tenant VM's status names exist in the tenant as on a KubeVirt
//! cluster. Only those (label `instancetype.kubevirt.io/object-kind`) are watched on the host;
//! the tenant's own ControllerRevisions (StatefulSets, DaemonSets) never sync down. A tenant
//! deleting a mirror does not delete the host's revision (the VM needs it): the mirror comes back.

use kvtenant_api::SyncKind;

use super::{ApiKind, Enablement, SyncedKind, Trigger};
use crate::Policy;

/// The label KubeVirt puts on the revisions it makes for instancetypes and preferences.
pub const KUBEVIRT_REVISION_LABEL: &str = "instancetype.kubevirt.io/object-kind";

pub struct ControllerRevision;

impl SyncedKind for ControllerRevision {
    fn api(&self) -> ApiKind {
        ApiKind {
            group: "apps",
            version: "v1",
            kind: "ControllerRevision",
            plural: "controllerrevisions",
        }
    }
    /// Shown where VM-like kinds sync.
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        if enabled.contains(&SyncKind::VirtualMachine)
            || enabled.contains(&SyncKind::VirtualMachinePool)
        {
            Enablement::Synced
        } else {
            Enablement::Off
        }
    }
    fn trigger(&self) -> Trigger {
        Trigger::Never
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    fn status_subresource(&self) -> bool {
        false
    }
    /// kvtenant makes no copies of this kind; the host watcher takes KubeVirt's revisions only.
    fn watch_host_copies_only(&self) -> bool {
        true
    }
    fn host_made_selector(&self) -> Option<&'static str> {
        Some(KUBEVIRT_REVISION_LABEL)
    }
    fn mirror_delete_reaches_host(&self, _policy: &Policy) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubevirts_revisions_are_shown_never_synced_nor_deleted_by_the_tenant() {
        let k = ControllerRevision;
        assert_eq!(
            k.enablement(&[SyncKind::VirtualMachine]),
            Enablement::Synced
        );
        assert_eq!(k.enablement(&[SyncKind::DataVolume]), Enablement::Off);
        assert_eq!(k.trigger(), Trigger::Never);
        assert!(k.mirrors_host_made() && k.watch_host_copies_only());
        assert_eq!(k.host_made_selector(), Some(KUBEVIRT_REVISION_LABEL));
        let vm = kvtenant_api::VmPolicy::default();
        assert!(!k.mirror_delete_reaches_host(&Policy::vm_only(&vm)));
    }
}
