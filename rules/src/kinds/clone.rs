//! KubeVirt VirtualMachineClones: synced down; the VM the host's clone controller makes is
//! mirrored up as a VirtualMachine.

use kvtenant_api::SyncKind;

use super::{ApiKind, SyncedKind};

pub struct VirtualMachineClone;

impl SyncedKind for VirtualMachineClone {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineClone)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineClone)
    }
}
