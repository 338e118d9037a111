//! KubeVirt VirtualMachineInstanceMigrations: synced down; status up.

use kvtenant_api::SyncKind;

use super::{ApiKind, SyncedKind};

pub struct VirtualMachineInstanceMigration;

impl SyncedKind for VirtualMachineInstanceMigration {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineInstanceMigration)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineInstanceMigration)
    }
}
