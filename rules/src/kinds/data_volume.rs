//! CDI DataVolumes: synced when enabled; those the host makes from a VM's
//! `dataVolumeTemplates` are mirrored up read-only, enabled or not (the VM's status names them).

use kvtenant_api::{SyncKind, VmPolicy};
use serde_json::Value;

use super::{ApiKind, Enablement, SyncedKind};
use crate::quota::{Usage, owner_kinds};
use crate::vm::host_refs;
use crate::vm::size::{GuestSize, data_volume_storage};
use crate::{Policy, Violation, is_set, translate};

pub const KIND: &str = "DataVolume";

/// What a tenant who creates a DataVolume sees when only templated ones are shown.
pub const MIRROR_ONLY: &str = "DataVolume is not synced for this virtual cluster (only \
DataVolumes the host makes from a VirtualMachine's dataVolumeTemplates are shown); ask the \
platform admin to add DataVolume to the VirtualCluster's spec.kubevirt.syncKinds, or use \
dataVolumeTemplates";

pub struct DataVolume;

impl SyncedKind for DataVolume {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::DataVolume)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::DataVolume)
    }
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        if enabled.contains(&SyncKind::DataVolume) {
            Enablement::Synced
        } else if enabled.contains(&SyncKind::VirtualMachine) {
            Enablement::MirrorOnly(MIRROR_ONLY)
        } else {
            Enablement::Off
        }
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    /// No source in another namespace but the host DataSources of
    /// `spec.vmPolicy.allowedDataSources`.
    fn violations(&self, obj: &Value, policy: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        let mut out = Vec::new();
        if is_set(obj.pointer("/spec/source/pvc/namespace")) {
            out.push(Violation::new(
                "spec.source.pvc.namespace",
                "a DataVolume may not copy from another namespace; clone from a PVC or \
                 DataSource in the same namespace",
            ));
        }
        let namespace = obj.pointer("/metadata/namespace").and_then(Value::as_str);
        if let Some(source_ref) = obj.pointer("/spec/sourceRef")
            && let Err(message) = host_refs::data_source(source_ref, namespace, policy.vm)
        {
            out.push(Violation::new("spec.sourceRef.namespace", message));
        }
        out
    }
    /// A `sourceRef` to an allowed host DataSource names it on the host copy.
    fn to_host_references(&self, data: &mut Value, namespace: &str, policy: &VmPolicy) {
        if let Some(spec) = data.get_mut("spec") {
            host_refs::data_source_to_host(spec, namespace, policy);
        }
    }
    fn in_quota(&self) -> bool {
        true
    }
    /// DataVolumes the tenant created count their storage; mirrors of DataVolumes made from a
    /// VM's templates do not (the VM counts them).
    fn usage(&self, obj: &Value, _: GuestSize) -> Option<Usage> {
        if translate::is_mirror_json(obj)
            || owner_kinds(obj).contains(&super::virtual_machine::KIND)
        {
            return None;
        }
        Some(Usage {
            storage: data_volume_storage(obj),
            ..Usage::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cross_namespace_sources_are_refused_and_templated_ones_not_counted() {
        let vm = kvtenant_api::VmPolicy::default();
        let p = Policy::vm_only(&vm);
        let bad =
            json!({"spec": {"sourceRef": {"kind": "DataSource", "namespace": "os", "name": "f"}}});
        assert_eq!(
            DataVolume.violations(&bad, &p, None)[0].path,
            "spec.sourceRef.namespace"
        );
        let allowed = kvtenant_api::VmPolicy {
            allowed_data_sources: vec!["os/f".into()],
            ..kvtenant_api::VmPolicy::default()
        };
        let p = Policy::vm_only(&allowed);
        assert!(DataVolume.violations(&bad, &p, None).is_empty());
        let other =
            json!({"spec": {"sourceRef": {"kind": "DataSource", "namespace": "os", "name": "g"}}});
        let found = DataVolume.violations(&other, &p, None);
        assert!(
            found[0]
                .message
                .contains("spec.vmPolicy.allowedDataSources"),
            "{found:?}"
        );
        let mut copy = json!({"spec": {"sourceRef": {"kind": "DataSource", "name": "f"}}});
        DataVolume.to_host_references(&mut copy, "os", &allowed);
        assert_eq!(copy["spec"]["sourceRef"]["namespace"], "os");
        let mine = json!({"spec": {"storage": {"resources": {"requests": {"storage": "2Gi"}}}}});
        let size = GuestSize::default();
        assert_eq!(
            DataVolume.usage(&mine, size).map(|u| u.storage),
            Some(2 << 30)
        );
        let mut templated = mine.clone();
        templated["metadata"] =
            json!({"ownerReferences": [{"kind": "VirtualMachine", "name": "vm"}]});
        assert_eq!(DataVolume.usage(&templated, size), None);
    }
}
