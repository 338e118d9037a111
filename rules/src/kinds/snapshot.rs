//! KubeVirt snapshots and restores (`snapshot.kubevirt.io`), opt-in with `VirtualMachineSnapshot`
//! in `spec.kubevirt.syncKinds` (the host's KubeVirt needs its Snapshot feature gate):
//! VirtualMachineSnapshots and VirtualMachineRestores synced down (status up), the
//! VirtualMachineSnapshotContents the host's snapshot controller makes mirrored up read-only.
//!
//! A restore is carried out by the host's restore controller on the host VM; the tenant's VM is
//! the truth the syncer keeps the host copy to, so the restored spec is taken up into the tenant
//! VM ([`restored_vm_patch`], called by the VirtualMachine kind): when the host VM carries a
//! restore marker (`restore.kubevirt.io/lastRestoreUID`) the tenant VM has not taken up
//! ([`LAST_RESTORE_TAKEN_UP`]), and the tenant VM did not change meanwhile, the tenant VM gets
//! the host's spec (but for what kvtenant itself sets in the VMI template: node placement and
//! DNS) and records the marker under kvtenant's own key (the VM policy passes no unknown KubeVirt
//! annotation), instead of the host VM being reverted.
//!
//! A snapshot's first host copy waits for `spec.vmPolicy.allowedVolumeSnapshotClasses`: the
//! VolumeSnapshotClass the host's KubeVirt takes for each claim of the VM must be listed
//! ([`crate::snapshot_class`]).

use kube::api::DynamicObject;
use kvtenant_api::SyncKind;
pub use kvtenant_api::labels::LAST_RESTORE_TAKEN_UP;
use kvtenant_api::labels::SPEC_HASH;
use serde_json::{Map, Value, json};

use super::{ApiKind, Enablement, SyncedKind};
use crate::snapshot_class::{Decision, HostStorage};
use crate::vm::size::GuestSize;
use crate::{Policy, Violation};

/// The annotation KubeVirt's restore controller puts on a VM it restored.
pub const LAST_RESTORE: &str = "restore.kubevirt.io/lastRestoreUID";

/// What a tenant who creates a snapshot content is told.
pub const CONTENT_MIRROR_ONLY: &str = "VirtualMachineSnapshotContents are made by the host's \
snapshot controller for a VirtualMachineSnapshot and shown read-only; create a \
VirtualMachineSnapshot instead";

/// Fields of the VMI template that kvtenant sets on the host copy (node placement, the tenant's
/// DNS): a restore never takes them up.
const HOST_SET: &[&str] = &["nodeSelector", "tolerations", "dnsPolicy", "dnsConfig"];

fn snapshots_on(enabled: &[SyncKind]) -> bool {
    enabled.contains(&SyncKind::VirtualMachineSnapshot)
}

pub struct VirtualMachineSnapshot;

impl SyncedKind for VirtualMachineSnapshot {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineSnapshot)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineSnapshot)
    }
    /// `spec.vmPolicy.allowedVolumeSnapshotClasses` over the classes the host's KubeVirt takes
    /// for the VM's claims.
    fn host_storage_decision(
        &self,
        obj: &Value,
        policy: &Policy,
        host: &dyn HostStorage,
    ) -> Decision {
        crate::snapshot_class::decide(
            obj,
            policy.vm.allowed_volume_snapshot_classes.as_deref(),
            host,
        )
    }
}

pub struct VirtualMachineRestore;

impl SyncedKind for VirtualMachineRestore {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineRestore)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineRestore)
    }
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        if snapshots_on(enabled) || enabled.contains(&SyncKind::VirtualMachineRestore) {
            Enablement::Synced
        } else {
            Enablement::Off
        }
    }
    /// Restores write the host VM directly: no patches (they would change the host VM past the
    /// VM policy), targets only VirtualMachines (of the same namespace, as the kind is).
    fn violations(&self, obj: &Value, _: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        let mut v = Vec::new();
        if obj
            .pointer("/spec/patches")
            .and_then(Value::as_array)
            .is_some_and(|p| !p.is_empty())
        {
            v.push(Violation::new(
                "spec.patches",
                "a restore may not patch the restored VM in a virtual cluster (the patch would \
                 reach the host unchecked); restore, then change the VM",
            ));
        }
        let kind = obj.pointer("/spec/target/kind").and_then(Value::as_str);
        if kind.is_some_and(|k| k != "VirtualMachine") {
            v.push(Violation::new(
                "spec.target.kind",
                "only VirtualMachines are restored in a virtual cluster",
            ));
        }
        v
    }
}

pub struct VirtualMachineSnapshotContent;

impl SyncedKind for VirtualMachineSnapshotContent {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VirtualMachineSnapshotContent)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VirtualMachineSnapshotContent)
    }
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        if snapshots_on(enabled) {
            Enablement::MirrorOnly(CONTENT_MIRROR_ONLY)
        } else {
            Enablement::Off
        }
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
}

/// What a tenant who creates a VolumeSnapshot is told.
pub const VOLUME_SNAPSHOT_MIRROR_ONLY: &str = "VolumeSnapshots are made by the host's KubeVirt \
for a VirtualMachineSnapshot of a VM with claims and shown read-only; create a \
VirtualMachineSnapshot instead";

/// The CSI VolumeSnapshots the host's snapshot controller makes of a VM's claims (owned by the
/// VirtualMachineSnapshotContent), shown read-only with the content they belong to. Their
/// `spec.volumeSnapshotClassName` and `status.boundVolumeSnapshotContentName` name host objects
/// the tenant does not see.
pub struct VolumeSnapshot;

impl SyncedKind for VolumeSnapshot {
    fn api(&self) -> ApiKind {
        ApiKind::of(SyncKind::VolumeSnapshot)
    }
    fn sync_kind(&self) -> Option<SyncKind> {
        Some(SyncKind::VolumeSnapshot)
    }
    fn enablement(&self, enabled: &[SyncKind]) -> Enablement {
        if snapshots_on(enabled) {
            Enablement::MirrorOnly(VOLUME_SNAPSHOT_MIRROR_ONLY)
        } else {
            Enablement::Off
        }
    }
    fn mirrors_host_made(&self) -> bool {
        true
    }
    /// The host's snapshot of a claim belongs to the VM snapshot: a tenant's delete of the
    /// mirror lets it go (shown again), the host's stays.
    fn mirror_delete_reaches_host(&self, _policy: &Policy) -> bool {
        false
    }
}

/// The JSON merge patch turning `from` into `to`.
fn merge_diff(from: &Value, to: &Value) -> Option<Value> {
    if from == to {
        return None;
    }
    match (from, to) {
        (Value::Object(f), Value::Object(t)) => {
            let mut patch = Map::new();
            for (k, tv) in t {
                match f.get(k) {
                    Some(fv) => {
                        if let Some(d) = merge_diff(fv, tv) {
                            patch.insert(k.clone(), d);
                        }
                    }
                    None => {
                        patch.insert(k.clone(), tv.clone());
                    }
                }
            }
            for k in f.keys().filter(|k| !t.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Some(Value::Object(patch))
        }
        _ => Some(to.clone()),
    }
}

fn annotation<'a>(o: &'a DynamicObject, key: &str) -> Option<&'a String> {
    o.metadata.annotations.as_ref()?.get(key)
}

/// The merge patch taking a host restore of a VM up into the tenant VM: the host VM (`host`)
/// carries a restore marker the tenant VM (seen in the host copy kvtenant would write,
/// `desired`) has not taken up, and the tenant VM is unchanged since kvtenant last wrote the
/// copy. The patch makes the tenant's spec the host's (what kvtenant sets in the VMI template
/// excepted) and records the marker. `None` otherwise.
pub fn restored_vm_patch(host: &DynamicObject, desired: &DynamicObject) -> Option<Value> {
    let marker = annotation(host, LAST_RESTORE)?;
    if annotation(desired, LAST_RESTORE_TAKEN_UP) == Some(marker) {
        return None;
    }
    let hash = |o: &DynamicObject| o.metadata.annotations.as_ref()?.get(SPEC_HASH).cloned();
    if hash(host).is_none() || hash(host) != hash(desired) {
        return None;
    }
    let mut spec = merge_diff(
        desired.data.get("spec").unwrap_or(&Value::Null),
        host.data.get("spec").unwrap_or(&Value::Null),
    )
    .unwrap_or_else(|| json!({}));
    if let Some(t) = spec
        .pointer_mut("/template/spec")
        .and_then(Value::as_object_mut)
    {
        for f in HOST_SET {
            t.remove(*f);
        }
    }
    Some(json!({"metadata": {"annotations": {LAST_RESTORE_TAKEN_UP: marker}}, "spec": spec}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(annotations: Value, spec: Value) -> DynamicObject {
        serde_json::from_value(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "annotations": annotations}, "spec": spec}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_host_restore_is_taken_up_but_for_what_kvtenant_sets() {
        let desired = vm(
            json!({SPEC_HASH: "h1"}),
            json!({"runStrategy": "Halted", "template": {"spec": {
                "domain": {"memory": {"guest": "256Mi"}, "cpu": {"cores": 2}},
                "nodeSelector": {"pool": "a"}, "dnsPolicy": "None"}}}),
        );
        let restored = vm(
            json!({SPEC_HASH: "h1", LAST_RESTORE: "r1-uid"}),
            json!({"runStrategy": "Halted", "template": {"spec": {
                "domain": {"memory": {"guest": "128Mi"}},
                "nodeSelector": {"pool": "b"}, "dnsPolicy": "ClusterFirst"}}}),
        );
        let patch = restored_vm_patch(&restored, &desired);
        assert_eq!(
            patch,
            Some(
                json!({"metadata": {"annotations": {LAST_RESTORE_TAKEN_UP: "r1-uid"}},
                "spec": {"template": {"spec": {"domain": {
                    "memory": {"guest": "128Mi"}, "cpu": null}}}}})
            )
        );
        // taken up already: the tenant VM has the marker
        let mut taken = desired.clone();
        if let Some(a) = taken.metadata.annotations.as_mut() {
            a.insert(LAST_RESTORE_TAKEN_UP.into(), "r1-uid".into());
        }
        assert_eq!(restored_vm_patch(&restored, &taken), None);
        // the tenant changed its VM meanwhile: the tenant's wins
        let mut newer = desired.clone();
        if let Some(a) = newer.metadata.annotations.as_mut() {
            a.insert(SPEC_HASH.into(), "h2".into());
        }
        assert_eq!(restored_vm_patch(&restored, &newer), None);
        // no restore: nothing
        let plain = vm(json!({SPEC_HASH: "h1"}), json!({"runStrategy": "Always"}));
        assert_eq!(restored_vm_patch(&plain, &desired), None);
    }

    #[test]
    fn restores_may_not_patch_and_contents_are_the_hosts() {
        let vm_policy = kvtenant_api::VmPolicy::default();
        let p = Policy::vm_only(&vm_policy);
        let ok = json!({"spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine",
            "name": "vm1"}, "virtualMachineSnapshotName": "s1"}});
        assert!(VirtualMachineRestore.violations(&ok, &p, None).is_empty());
        let mut patched = ok.clone();
        patched["spec"]["patches"] = json!(["{\"op\": \"add\"}"]);
        assert_eq!(
            VirtualMachineRestore.violations(&patched, &p, None)[0].path,
            "spec.patches"
        );
        let on = [SyncKind::VirtualMachine, SyncKind::VirtualMachineSnapshot];
        assert_eq!(VirtualMachineRestore.enablement(&on), Enablement::Synced);
        assert!(matches!(
            VirtualMachineSnapshotContent.enablement(&on),
            Enablement::MirrorOnly(_)
        ));
        assert!(matches!(
            VolumeSnapshot.enablement(&on),
            Enablement::MirrorOnly(_)
        ));
        assert!(VolumeSnapshot.mirrors_host_made());
        let off = [SyncKind::VirtualMachine];
        assert_eq!(VirtualMachineRestore.enablement(&off), Enablement::Off);
        assert_eq!(VirtualMachineSnapshot.enablement(&off), Enablement::Off);
        assert_eq!(
            VirtualMachineSnapshotContent.enablement(&off),
            Enablement::Off
        );
        assert_eq!(VolumeSnapshot.enablement(&off), Enablement::Off);
    }
}
