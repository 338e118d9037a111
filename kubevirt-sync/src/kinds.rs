//! Synced kinds as small descriptors: one sync engine serves them all.

use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::SyncKind;

/// How an object of a kind gets synced down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Every object of the kind in the tenant is synced.
    Always,
    /// Synced only while a synced object references it (Secrets, ConfigMaps, PVCs,
    /// ServiceAccounts): unreferenced ones never reach the host.
    WhenReferenced,
    /// Synced only while its selector selects a synced VM's instances (Services exposing VMs).
    WhenSelectingVm,
}

/// A synced kind. Objects the tenant creates are synced down (tenant owns spec, host owns
/// status, copied up); objects host controllers create in a mapped namespace are mirrored up
/// read-only when `mirror_host_made` is set.
#[derive(Clone, Debug)]
pub struct KindSpec {
    pub resource: ApiResource,
    pub trigger: Trigger,
    /// Host-made objects of this kind in mapped namespaces (VMIs of VMs, VMs of pools,
    /// DataVolumes of templates and their PVCs) are mirrored into the tenant, read-only.
    pub mirror_host_made: bool,
    /// The kind has a `/status` subresource (VMIs do not: their status is written through the
    /// main resource).
    pub status_subresource: bool,
    /// Run the VM safety checks ([`crate::safety`]) and follow references ([`crate::refs`]).
    pub vm_like: bool,
    /// The KubeVirt kind this descriptor stands for, if any (for CRD mirroring).
    pub sync_kind: Option<SyncKind>,
    /// JSON pointers removed on the way down: values the host assigns itself (a Service's
    /// cluster IPs and node ports).
    pub host_assigned: &'static [&'static str],
}

impl KindSpec {
    pub fn kind(&self) -> &str {
        &self.resource.kind
    }

    fn kubevirt(k: SyncKind) -> Self {
        let gvk = GroupVersionKind::gvk(k.group(), k.version(), k.kind());
        let mut resource = ApiResource::from_gvk_with_plural(&gvk, k.plural());
        resource.plural = k.plural().to_string();
        Self {
            resource,
            trigger: Trigger::Always,
            mirror_host_made: matches!(
                k,
                SyncKind::VirtualMachine | SyncKind::VirtualMachineInstance | SyncKind::DataVolume
            ),
            status_subresource: !matches!(k, SyncKind::VirtualMachineInstance),
            vm_like: matches!(
                k,
                SyncKind::VirtualMachine
                    | SyncKind::VirtualMachineInstance
                    | SyncKind::VirtualMachinePool
            ),
            sync_kind: Some(k),
            host_assigned: &[],
        }
    }

    fn core(kind: &str, plural: &str, status_subresource: bool) -> Self {
        let gvk = GroupVersionKind::gvk("", "v1", kind);
        Self {
            resource: ApiResource::from_gvk_with_plural(&gvk, plural),
            trigger: Trigger::WhenReferenced,
            mirror_host_made: false,
            status_subresource,
            vm_like: false,
            sync_kind: None,
            host_assigned: &[],
        }
    }

    fn service() -> Self {
        Self {
            trigger: Trigger::WhenSelectingVm,
            host_assigned: &[
                "/spec/clusterIP",
                "/spec/clusterIPs",
                "/spec/healthCheckNodePort",
                "/spec/ports/*/nodePort",
            ],
            ..Self::core("Service", "services", true)
        }
    }
}

/// The kinds synced for a VirtualCluster with these KubeVirt kinds enabled, in dependency order
/// (things referenced first). VirtualMachineInstances are always included when
/// VirtualMachines are, since a VM's instance is what tenants look at.
pub fn kinds_for(enabled: &[SyncKind]) -> Vec<KindSpec> {
    let mut out = vec![
        KindSpec::core("Secret", "secrets", false),
        KindSpec::core("ConfigMap", "configmaps", false),
        KindSpec::core("ServiceAccount", "serviceaccounts", false),
        // claims CDI makes for DataVolumes are mirrored into the tenant like the DataVolumes
        KindSpec {
            mirror_host_made: true,
            ..KindSpec::core("PersistentVolumeClaim", "persistentvolumeclaims", true)
        },
        KindSpec::service(),
    ];
    let mut kinds: Vec<SyncKind> = enabled.to_vec();
    if kinds.contains(&SyncKind::VirtualMachine)
        && !kinds.contains(&SyncKind::VirtualMachineInstance)
    {
        kinds.push(SyncKind::VirtualMachineInstance);
    }
    // dependency order: DataVolumes before the VMs that use them, VMs before their instances
    for k in [
        SyncKind::DataVolume,
        SyncKind::VirtualMachinePool,
        SyncKind::VirtualMachine,
        SyncKind::VirtualMachineInstance,
        SyncKind::VirtualMachineInstanceMigration,
        SyncKind::VirtualMachineClone,
    ] {
        if kinds.contains(&k) {
            out.push(KindSpec::kubevirt(k));
        }
    }
    out
}

/// What the syncer's caches keep of an object: everything but `metadata.managedFields`, which
/// kvtenant never reads and which is often the largest part of a KubeVirt object (every
/// controller that writes status adds an entry). Applied to every watched object before it is
/// stored.
pub fn slim(obj: &mut kube::api::DynamicObject) {
    obj.metadata.managed_fields = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vms_bring_their_instances_and_dependencies_come_first() {
        let kinds = kinds_for(&[SyncKind::VirtualMachine]);
        let names: Vec<&str> = kinds.iter().map(KindSpec::kind).collect();
        assert_eq!(
            names,
            [
                "Secret",
                "ConfigMap",
                "ServiceAccount",
                "PersistentVolumeClaim",
                "Service",
                "VirtualMachine",
                "VirtualMachineInstance"
            ]
        );
        let vmi = &kinds[6];
        assert!(!vmi.status_subresource, "VMIs have no /status subresource");
        assert!(vmi.mirror_host_made);
        assert_eq!(vmi.resource.plural, "virtualmachineinstances");
        assert_eq!(vmi.resource.api_version, "kubevirt.io/v1");
    }
}
