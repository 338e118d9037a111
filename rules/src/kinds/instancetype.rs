//! KubeVirt's namespaced VirtualMachineInstancetypes and VirtualMachinePreferences: the tenant's
//! own sizes and defaults, synced down whenever VM-like kinds are (a VM naming one needs it in
//! its host namespace, where the host's virt-controller expands it). They come before the VMs in
//! the registry, so a first sync makes them first; a VM synced before its instancetype is
//! refused by the host's virt-api and tried again. The cluster-wide ones are the host's, shown
//! read-only ([`crate::classes`]).

use kvtenant_api::SyncKind;

use super::{ApiKind, Enablement, SyncedKind};

/// Synced when listed, or whenever VMs or pools are.
fn with_vms(own: SyncKind, enabled: &[SyncKind]) -> Enablement {
    let wanted = [own, SyncKind::VirtualMachine, SyncKind::VirtualMachinePool]
        .iter()
        .any(|k| enabled.contains(k));
    if wanted {
        Enablement::Synced
    } else {
        Enablement::Off
    }
}

pub struct VirtualMachineInstancetype;

impl SyncedKind for VirtualMachineInstancetype {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineInstancetype)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineInstancetype)
    }
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        with_vms(SyncKind::VirtualMachineInstancetype, enabled)
    }
    /// Instancetypes have no subresources.
    fn status_subresource(&self) -> bool {
        false
    }
}

pub struct VirtualMachinePreference;

impl SyncedKind for VirtualMachinePreference {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachinePreference)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachinePreference)
    }
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        with_vms(SyncKind::VirtualMachinePreference, enabled)
    }
    fn status_subresource(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaced_instancetypes_come_with_vms() {
        for k in [
            &VirtualMachineInstancetype as &dyn SyncedKind,
            &VirtualMachinePreference,
        ] {
            assert_eq!(
                k.enablement(&[SyncKind::VirtualMachine]),
                Enablement::Synced
            );
            assert_eq!(
                k.enablement(&[SyncKind::VirtualMachinePool]),
                Enablement::Synced
            );
            assert_eq!(k.enablement(&[SyncKind::DataVolume]), Enablement::Off);
            assert!(!k.status_subresource());
            assert!(!k.mirrors_host_made());
        }
        assert_eq!(
            VirtualMachineInstancetype.api().plural,
            "virtualmachineinstancetypes"
        );
    }
}
