//! Host-made objects and their mirrors: made once the owners are shown, kept as the host has
//! them, let go with the host object (the `none / host-made` and `mirror` rows of the table).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::api::DynamicObject;
use kvtenant_api::labels::{MIRROR_FINALIZER, MIRROR_OF};
use serde_json::json;

use super::fake::*;
use super::*;

#[test]
fn host_made_objects_are_mirrored_with_owners_mapped() {
    let mut f = Fake::new();
    let h = host_made("VirtualMachineInstance", Some(("VirtualMachine", "vm1")));
    // the owner has no tenant counterpart yet: wait
    let p = run(&f, "VirtualMachineInstance", None, Some(&h));
    assert!(p.steps.is_empty());
    assert_eq!(p.requeue, Some(OWNER_WAIT));
    f.tenant_uids
        .insert(("VirtualMachine".into(), "vm1".into()), "t-vm1".into());
    let p = run(&f, "VirtualMachineInstance", None, Some(&h));
    let [Step::CreateMirror(m)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!(p.direction, Direction::Up);
    assert_eq!(m.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        m.metadata.annotations.as_ref().unwrap()[MIRROR_OF],
        "h-made"
    );
    assert_eq!(m.metadata.finalizers, Some(vec![MIRROR_FINALIZER.into()]));
    assert_eq!(
        m.metadata.owner_references.as_ref().unwrap()[0].uid,
        "t-vm1"
    );
    assert_eq!(m.data["status"]["phase"], "Running");
    // being deleted on the host: not mirrored
    let p = run(&f, "VirtualMachineInstance", None, Some(&deleting(h)));
    assert!(p.is_noop(), "{p:?}");
}

/// After a restart the tenant caches fill kind by kind: a VMI mirror planned before its VM is
/// cached keeps the owner it has (an owner-less VMI would count in the tenant's VM quota).
#[test]
fn a_mirror_keeps_its_owner_while_the_tenant_cache_does_not_show_it() {
    let mut f = Fake::new();
    f.tenant_uids
        .insert(("VirtualMachine".into(), "vm1".into()), "t-vm1".into());
    let h = host_made("VirtualMachineInstance", Some(("VirtualMachine", "vm1")));
    let p = run(&f, "VirtualMachineInstance", None, Some(&h));
    let [Step::CreateMirror(m)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    let mut m = (**m).clone();
    m.metadata.uid = Some("t-mirror".into());
    f.tenant_uids.clear();
    m.data["spec"]["domain"] = json!({"edited": true});
    let p = run(&f, "VirtualMachineInstance", Some(&m), Some(&h));
    let [Step::ShowNode(_), Step::ReplaceMirror(back, _)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!(
        back.metadata.owner_references.as_ref().unwrap()[0].uid,
        "t-vm1"
    );
}

#[test]
fn host_made_objects_of_kinds_that_do_not_mirror_stay_on_the_host() {
    let f = Fake::new();
    let h = host_made("VirtualMachineClone", None);
    assert!(
        run(&f, "VirtualMachineClone", None, Some(&h))
            .steps
            .is_empty()
    );
    let s = obj(
        "Secret",
        json!({"metadata": {"name": "s", "namespace": "h", "uid": "x"}}),
    );
    assert!(run(&f, "Secret", None, Some(&s)).steps.is_empty());
}

#[test]
fn host_migrations_are_shown_and_cancelled_by_the_tenant_only_if_it_may_migrate() {
    let mut f = Fake::new();
    let h = host_made("VirtualMachineInstanceMigration", None);
    let p = run(&f, "VirtualMachineInstanceMigration", None, Some(&h));
    let [Step::CreateMirror(m)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    let mut m = (**m).clone();
    m.metadata.uid = Some("t-mirror".into());
    let deleted = deleting(m);
    // the tenant deletes the mirror: the host migration stays, the mirror is let go (and made again)
    let p = run(
        &f,
        "VirtualMachineInstanceMigration",
        Some(&deleted),
        Some(&h),
    );
    assert_eq!(p.steps, [Step::ReleaseMirror]);
    f.spec.vm_policy.allow_migrations = true;
    let p = run(
        &f,
        "VirtualMachineInstanceMigration",
        Some(&deleted),
        Some(&h),
    );
    assert_eq!(p.steps, [Step::DeleteHost, Step::ReleaseMirror]);
}

fn mirror_of(f: &Fake, h: &DynamicObject) -> DynamicObject {
    let p = run(f, "VirtualMachineInstance", None, Some(h));
    let [Step::CreateMirror(m)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    let mut m = (**m).clone();
    m.metadata.uid = Some("t-mirror".into());
    m.metadata.resource_version = Some("3".into());
    m
}

#[test]
fn an_unchanged_mirror_shows_its_node_and_nothing_else() {
    let f = Fake::new();
    let h = host_made("VirtualMachineInstance", None);
    let m = mirror_of(&f, &h);
    let p = run(&f, "VirtualMachineInstance", Some(&m), Some(&h));
    assert_eq!(p.steps, [Step::ShowNode("node-7".into())]);
}

#[test]
fn tenant_edits_of_a_mirror_are_reverted() {
    let f = Fake::new();
    let h = host_made("VirtualMachineInstance", None);
    let mut m = mirror_of(&f, &h);
    m.data["spec"]["domain"] = json!({"edited": true});
    let p = run(&f, "VirtualMachineInstance", Some(&m), Some(&h));
    let [Step::ShowNode(_), Step::ReplaceMirror(back, status)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!(back.data["spec"]["domain"], json!({}));
    assert_eq!(back.metadata.resource_version.as_deref(), Some("3"));
    assert_eq!(back.metadata.uid.as_deref(), Some("t-mirror"));
    assert_eq!(
        *status, None,
        "VMIs have no /status: the status goes with the object"
    );
}

#[test]
fn a_mirror_follows_its_host_object_out() {
    let f = Fake::new();
    let h = host_made("VirtualMachineInstance", None);
    let m = mirror_of(&f, &h);
    // the tenant deleted the mirror: the host object goes, then the mirror
    let p = run(
        &f,
        "VirtualMachineInstance",
        Some(&deleting(m.clone())),
        Some(&h),
    );
    assert_eq!(
        p.steps,
        [
            Step::ShowNode("node-7".into()),
            Step::DeleteHost,
            Step::ReleaseMirror
        ]
    );
    let p = run(
        &f,
        "VirtualMachineInstance",
        Some(&deleting(m.clone())),
        None,
    );
    assert_eq!(p.steps, [Step::ReleaseMirror]);
    // gone on the host
    let p = run(&f, "VirtualMachineInstance", Some(&m), None);
    assert_eq!(p.steps, [Step::ReleaseMirror, Step::DeleteMirror]);
    // ... and once its finalizer is released, only deleted (no second patch)
    let mut released = m.clone();
    released.metadata.finalizers = None;
    let p = run(&f, "VirtualMachineInstance", Some(&released), None);
    assert_eq!(p.steps, [Step::DeleteMirror]);
    // replaced on the host by a new object of the same name: the old mirror goes
    let mut newer = h.clone();
    newer.metadata.uid = Some("h-made-2".into());
    let p = run(&f, "VirtualMachineInstance", Some(&m), Some(&newer));
    assert_eq!(
        p.steps,
        [
            Step::ShowNode("node-7".into()),
            Step::ReleaseMirror,
            Step::DeleteMirror
        ]
    );
}
