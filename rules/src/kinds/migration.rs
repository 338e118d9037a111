//! KubeVirt VirtualMachineInstanceMigrations. Migrating is an operator's right on a KubeVirt
//! cluster (the `kubevirt.io:migrate` role), and here the VirtualCluster's:
//! `spec.vmPolicy.allowMigrations` decides whether the tenant's migrations are synced down
//! (status up) and whether `virtctl migrate` is served; otherwise they are refused, naming the
//! field. Migrations the host makes in the tenant's namespaces (node drains, evacuations, the
//! host's operators, and `virtctl migrate` through kvtenant, which the host's virt-api carries
//! out) are mirrored up read-only, so the tenant sees why its VM moves. A tenant delete of such
//! a mirror cancels the host migration only when migrations are allowed; otherwise the mirror
//! comes back.

use kvtenant_api::SyncKind;
use serde_json::Value;

use super::{ApiKind, SyncedKind};
use crate::vm::size::GuestSize;
use crate::{Policy, Violation};

pub const KIND: &str = "VirtualMachineInstanceMigration";

/// The VirtualCluster field that grants migrations.
pub const FIELD: &str = "spec.vmPolicy.allowMigrations";

/// What a tenant who may not migrate is told.
pub const REFUSED: &str = "live migration is not allowed for this virtual cluster; ask the \
platform admin to set the VirtualCluster's spec.vmPolicy.allowMigrations";

pub struct VirtualMachineInstanceMigration;

impl SyncedKind for VirtualMachineInstanceMigration {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineInstanceMigration)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineInstanceMigration)
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    fn violations(&self, _obj: &Value, policy: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        if policy.vm.allow_migrations {
            Vec::new()
        } else {
            vec![Violation::new(FIELD, REFUSED)]
        }
    }
    fn mirror_delete_reaches_host(&self, policy: &Policy) -> bool {
        policy.vm.allow_migrations
    }
}

/// Why a call of KubeVirt's subresource API is refused by the VirtualCluster's policy, if it
/// is: `virtualmachines/migrate` creates a migration on the host (through the host's virt-api,
/// not through the syncer), so it needs the same right as a migration object.
pub fn subresource_refused(resource: &str, subresource: &str, policy: &Policy) -> Option<String> {
    (resource == "virtualmachines" && subresource == "migrate" && !policy.vm.allow_migrations)
        .then(|| REFUSED.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn migrations_need_the_virtual_clusters_consent() {
        let mut vm = kvtenant_api::VmPolicy::default();
        let vmim = json!({"spec": {"vmiName": "vm1"}});
        let k = VirtualMachineInstanceMigration;
        let refused = k.violations(&vmim, &Policy::vm_only(&vm), None);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].path, FIELD);
        assert!(refused[0].message.contains(FIELD));
        assert!(!k.mirror_delete_reaches_host(&Policy::vm_only(&vm)));
        let p = Policy::vm_only(&vm);
        assert!(subresource_refused("virtualmachines", "migrate", &p).is_some());
        assert_eq!(subresource_refused("virtualmachines", "start", &p), None);
        assert_eq!(
            subresource_refused("virtualmachineinstances", "migrate", &p),
            None
        );

        vm.allow_migrations = true;
        let p = Policy::vm_only(&vm);
        assert!(k.violations(&vmim, &p, None).is_empty());
        assert!(k.mirror_delete_reaches_host(&p));
        assert_eq!(subresource_refused("virtualmachines", "migrate", &p), None);
        assert!(k.mirrors_host_made(), "drains are shown either way");
    }
}
