//! A VM snapshot's first host copy under `spec.vmPolicy.allowedVolumeSnapshotClasses`: the plan
//! reads the host's claims and classes through the view ([`super::storage`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kvtenant_api::SyncKind;
use kvtenant_rules::snapshot_class::HostClasses;
use serde_json::json;

use super::fake::*;
use super::*;

fn snapshot() -> DynamicObject {
    obj(
        "VirtualMachineSnapshot",
        json!({"metadata": {"name": "s1", "namespace": "default", "uid": "t-s1"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}}}),
    )
}

/// A tenant with snapshots on, vm1 with a claim `data` of the StorageClass `fast` on the host,
/// whose driver has the one VolumeSnapshotClass `fast-snaps`; `allowed` as the list.
fn tenant(allowed: Option<&[&str]>) -> Fake {
    let mut f = Fake::new();
    f.enabled.push(SyncKind::VirtualMachineSnapshot);
    f.spec.vm_policy.allowed_volume_snapshot_classes =
        allowed.map(|a| a.iter().map(|c| c.to_string()).collect());
    let mut spec = plain_spec();
    spec["template"]["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "d", "persistentVolumeClaim": {"claimName": "data"}}));
    let t = vm(spec);
    let h = copy_of(&f, &t, None);
    f.host_objects
        .insert(("VirtualMachine".into(), "vm1".into()), h);
    f.host_objects.insert(
        ("PersistentVolumeClaim".into(), "data".into()),
        obj(
            "PersistentVolumeClaim",
            json!({"metadata": {"name": "data"}, "spec": {"storageClassName": "fast"}}),
        ),
    );
    let mut classes = HostClasses::default();
    classes
        .storage_classes
        .insert("fast".into(), "csi.fast".into());
    classes.snapshot_classes.insert(
        "fast-snaps".into(),
        kvtenant_rules::snapshot_class::SnapshotClass {
            driver: "csi.fast".into(),
            default: false,
        },
    );
    f.storage_classes = Some(Arc::new(classes));
    f
}

#[test]
fn a_snapshot_whose_claim_resolves_to_a_class_not_allowed_never_reaches_the_host() {
    let f = tenant(Some(&["gold"]));
    let p = run(&f, "VirtualMachineSnapshot", Some(&snapshot()), None);
    let [Step::Refuse(v)] = p.steps.as_slice() else {
        panic!("refused: {p:?}")
    };
    assert!(
        v[0].message
            .contains("spec.vmPolicy.allowedVolumeSnapshotClasses")
    );
    assert!(v[0].message.contains("fast-snaps"), "{}", v[0].message);
}

#[test]
fn an_allowed_class_or_no_list_syncs_and_a_synced_snapshot_is_not_judged_again() {
    for f in [tenant(Some(&["fast-snaps"])), tenant(None)] {
        let p = run(&f, "VirtualMachineSnapshot", Some(&snapshot()), None);
        assert!(
            p.steps.iter().any(|s| matches!(s, Step::CreateHost(_))),
            "{p:?}"
        );
    }
    // already on the host: the policy changed later, the host copy stays
    let f = tenant(Some(&["gold"]));
    let h = copy_of(&f, &snapshot(), None);
    let p = run(&f, "VirtualMachineSnapshot", Some(&snapshot()), Some(&h));
    assert!(
        !p.steps.iter().any(|s| matches!(s, Step::Refuse(_))),
        "{p:?}"
    );
}

#[test]
fn the_plan_waits_for_the_hosts_classes() {
    let mut f = tenant(Some(&["fast-snaps"]));
    f.storage_classes = None;
    let p = run(&f, "VirtualMachineSnapshot", Some(&snapshot()), None);
    assert!(p.steps.is_empty());
    assert_eq!(p.requeue, Some(STORAGE_WAIT));
}
