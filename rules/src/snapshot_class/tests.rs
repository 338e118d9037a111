use std::collections::HashMap;

use serde_json::json;

use super::*;

fn sc(name: &str, provisioner: &str) -> Value {
    json!({"metadata": {"name": name}, "provisioner": provisioner})
}

fn vsc(name: &str, driver: &str, default: Option<&str>) -> Value {
    let annotations = default.map(|v| json!({DEFAULT_CLASS_ANNOTATION: v}));
    json!({"metadata": {"name": name, "annotations": annotations}, "driver": driver,
        "deletionPolicy": "Delete"})
}

fn profile(name: &str, class: Option<&str>) -> Value {
    json!({"metadata": {"name": name}, "status": {"snapshotClass": class}})
}

fn host(storage: &[Value], profiles: &[Value], snapshot: &[Value]) -> HostClasses {
    HostClasses {
        storage_classes: storage.iter().filter_map(storage_class_entry).collect(),
        profiles: profiles.iter().filter_map(profile_entry).collect(),
        snapshot_classes: snapshot.iter().filter_map(snapshot_class_entry).collect(),
    }
}

#[test]
fn one_class_of_the_driver_is_taken() {
    let h = host(
        &[sc("fast", "csi.a")],
        &[],
        &[vsc("a-snap", "csi.a", None), vsc("b", "csi.b", None)],
    );
    assert_eq!(h.resolve("fast"), Resolved::Class("a-snap".into()));
}

#[test]
fn missing_objects_resolve_to_no_class() {
    let h = host(&[sc("fast", "csi.a")], &[], &[vsc("b", "csi.b", None)]);
    // no VolumeSnapshotClass of the driver
    assert!(matches!(h.resolve("fast"), Resolved::NoClass(m) if m.contains("csi.a")));
    // no StorageClass
    assert!(
        matches!(h.resolve("gone"), Resolved::NoClass(m) if m.contains("no StorageClass gone"))
    );
    // nothing listed at all (no snapshot CRDs, no CDI)
    assert!(matches!(
        HostClasses::default().resolve("fast"),
        Resolved::NoClass(_)
    ));
}

#[test]
fn the_storage_profile_wins_without_fallback() {
    let classes = [
        vsc("a-snap", "csi.a", Some("true")),
        vsc("other", "csi.x", None),
    ];
    // the profile names a class of another driver: KubeVirt takes it
    let h = host(
        &[sc("fast", "csi.a")],
        &[profile("fast", Some("other"))],
        &classes,
    );
    assert_eq!(h.resolve("fast"), Resolved::Class("other".into()));
    // the profile names a class the host does not have: no class, the driver's is not tried
    let h = host(
        &[sc("fast", "csi.a")],
        &[profile("fast", Some("gone"))],
        &classes,
    );
    assert!(matches!(h.resolve("fast"), Resolved::NoClass(m) if m.contains("gone")));
    // an empty or unset status.snapshotClass: by driver
    let h = host(
        &[sc("fast", "csi.a")],
        &[profile("fast", Some("")), profile("x", None)],
        &classes,
    );
    assert!(h.profiles.is_empty());
    assert_eq!(h.resolve("fast"), Resolved::Class("a-snap".into()));
    // the profile counts only with its StorageClass
    let h = host(&[], &[profile("fast", Some("other"))], &classes);
    assert!(matches!(h.resolve("fast"), Resolved::NoClass(_)));
}

#[test]
fn ties_are_broken_by_the_default_annotation_whatever_its_value() {
    let sc = [sc("fast", "csi.a")];
    // several, one annotated (even "false": KubeVirt looks at the key only)
    let h = host(
        &sc,
        &[],
        &[vsc("a1", "csi.a", None), vsc("a2", "csi.a", Some("false"))],
    );
    assert_eq!(h.resolve("fast"), Resolved::Class("a2".into()));
    // several, none annotated: KubeVirt fails the snapshot
    let h = host(
        &sc,
        &[],
        &[vsc("a1", "csi.a", None), vsc("a2", "csi.a", None)],
    );
    assert_eq!(
        h.resolve("fast"),
        Resolved::Ambiguous(vec!["a1".into(), "a2".into()])
    );
    // several annotated: whichever KubeVirt's cache lists first
    let h = host(
        &sc,
        &[],
        &[
            vsc("a1", "csi.a", Some("true")),
            vsc("a2", "csi.a", Some("true")),
            vsc("a3", "csi.a", None),
        ],
    );
    assert_eq!(
        h.resolve("fast"),
        Resolved::AnyOf(vec!["a1".into(), "a2".into()])
    );
}

#[test]
fn a_vm_claims_its_pvc_data_volume_and_memory_dump_volumes_once() {
    let vm = json!({"spec": {"template": {"spec": {"volumes": [
        {"name": "root", "containerDisk": {"image": "x"}},
        {"name": "a", "persistentVolumeClaim": {"claimName": "pvc-a"}},
        {"name": "b", "dataVolume": {"name": "dv-b"}},
        {"name": "again", "persistentVolumeClaim": {"claimName": "pvc-a"}},
        {"name": "dump", "memoryDump": {"claimName": "dump"}},
        {"name": "ci", "cloudInitNoCloud": {"userData": "x"}}]}}}});
    assert_eq!(vm_claims(&vm), vec!["pvc-a", "dv-b", "dump"]);
    assert!(vm_claims(&json!({})).is_empty());
}

#[test]
fn a_claims_class_comes_from_the_host_claim_else_its_data_volume() {
    let pvc = json!({"spec": {"storageClassName": "fast"}});
    let dv = json!({"spec": {"storage": {"storageClassName": "slow"}}});
    assert_eq!(
        claim_class(Some(&pvc), Some(&dv), true),
        ClaimClass::Named("fast".into())
    );
    assert_eq!(
        claim_class(Some(&json!({"spec": {}})), None, true),
        ClaimClass::Unnamed
    );
    assert_eq!(
        claim_class(None, Some(&dv), true),
        ClaimClass::Named("slow".into())
    );
    let dv_pvc = json!({"spec": {"pvc": {"storageClassName": "old"}}});
    assert_eq!(
        claim_class(None, Some(&dv_pvc), true),
        ClaimClass::Named("old".into())
    );
    // a DataVolume naming no class: its claim decides, once CDI made it
    assert_eq!(
        claim_class(None, Some(&json!({"spec": {}})), false),
        ClaimClass::Pending
    );
    assert_eq!(claim_class(None, None, true), ClaimClass::Pending);
    assert_eq!(claim_class(None, None, false), ClaimClass::Missing);
}

/// A simulated host: objects by (kind, name) in one namespace `ns`.
#[derive(Default)]
struct Fake {
    classes: Option<Arc<HostClasses>>,
    objects: HashMap<(&'static str, String), Value>,
    tenant: Vec<String>,
}

impl Fake {
    fn with(mut self, kind: &'static str, name: &str, obj: Value) -> Self {
        self.objects.insert((kind, name.to_string()), obj);
        self
    }
}

impl HostStorage for Fake {
    fn classes(&self) -> Option<Arc<HostClasses>> {
        self.classes.clone()
    }
    fn vm(&self, namespace: &str, name: &str) -> Option<Value> {
        assert_eq!(namespace, "ns");
        self.objects.get(&("vm", name.to_string())).cloned()
    }
    fn host_claim(&self, _: &str, name: &str) -> Option<Value> {
        self.objects.get(&("pvc", name.to_string())).cloned()
    }
    fn host_data_volume(&self, _: &str, name: &str) -> Option<Value> {
        self.objects.get(&("dv", name.to_string())).cloned()
    }
    fn tenant_has_claim(&self, _: &str, name: &str) -> bool {
        self.tenant.iter().any(|n| n == name)
    }
    fn backend_claims(&self, _: &str, vm: &str) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((k, _), o)| {
                *k == "pvc"
                    && o.pointer(&format!("/metadata/labels/{BACKEND_CLAIM_LABEL}"))
                        == Some(&json!(vm))
            })
            .map(|(_, o)| o.clone())
            .collect()
    }
}

fn snapshot(vm: &str) -> Value {
    json!({"metadata": {"namespace": "ns"}, "spec": {"source": {
        "apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": vm}}})
}

fn vm_with(volumes: Value) -> Value {
    json!({"spec": {"template": {"spec": {"volumes": volumes}}}})
}

fn testenv_like() -> Arc<HostClasses> {
    Arc::new(host(
        &[
            sc("simulated", "simulated.driver"),
            sc("plain", "other.driver"),
        ],
        &[],
        &[vsc("simulated-snapshots", "simulated.driver", None)],
    ))
}

fn refused(d: Decision) -> String {
    match d {
        Decision::Refused(v) => {
            assert!(v.iter().all(|v| v.path == "spec.source.name"));
            v.iter()
                .map(|v| v.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        }
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_snapshot_is_refused_when_a_claim_resolves_to_a_class_not_allowed() {
    let host = Fake {
        classes: Some(testenv_like()),
        ..Fake::default()
    }
    .with(
        "vm",
        "vm1",
        vm_with(json!([{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}])),
    )
    .with(
        "pvc",
        "data",
        json!({"spec": {"storageClassName": "simulated"}}),
    );
    let s = snapshot("vm1");
    // unset: any class
    assert_eq!(decide(&s, None, &host), Decision::Allowed);
    let gold = ["gold".to_string()];
    let m = refused(decide(&s, Some(&gold), &host));
    assert!(
        m.contains(FIELD) && m.contains("simulated-snapshots") && m.contains("data"),
        "{m}"
    );
    let ok = ["simulated-snapshots".to_string()];
    assert_eq!(decide(&s, Some(&ok), &host), Decision::Allowed);
    // an empty list allows no class
    assert!(refused(decide(&s, Some(&[]), &host)).contains("allowed: none"));
}

#[test]
fn with_a_list_no_class_is_refused_and_a_vm_without_claims_is_allowed() {
    let ok = ["simulated-snapshots".to_string()];
    let host = Fake {
        classes: Some(testenv_like()),
        ..Fake::default()
    }
    .with(
        "vm",
        "disks",
        vm_with(json!([{"name": "root", "containerDisk": {"image": "x"}}])),
    )
    .with(
        "vm",
        "plain",
        vm_with(json!([{"name": "d", "dataVolume": {"name": "p"}}])),
    )
    .with("pvc", "p", json!({"spec": {"storageClassName": "plain"}}))
    .with("vm", "tpm", vm_with(json!([])))
    .with(
        "pvc",
        "persistent-state-for-tpm",
        json!({"metadata": {
        "name": "persistent-state-for-tpm", "labels": {BACKEND_CLAIM_LABEL: "tpm"}}, "spec": {}}),
    );
    assert_eq!(
        decide(&snapshot("disks"), Some(&ok), &host),
        Decision::Allowed
    );
    let m = refused(decide(&snapshot("plain"), Some(&ok), &host));
    assert!(
        m.contains("no VolumeSnapshotClass") && m.contains("other.driver"),
        "{m}"
    );
    let m = refused(decide(&snapshot("tpm"), Some(&ok), &host));
    assert!(
        m.contains("persistent-state-for-tpm") && m.contains("names no StorageClass"),
        "{m}"
    );
    // a VM that is not there at all
    let m = refused(decide(&snapshot("nope"), Some(&ok), &host));
    assert!(m.contains("no VirtualMachine \"nope\""), "{m}");
    // a claim neither side has
    let host = host.with(
        "vm",
        "lost",
        vm_with(json!([{"name": "d", "persistentVolumeClaim": {"claimName": "x"}}])),
    );
    assert!(refused(decide(&snapshot("lost"), Some(&ok), &host)).contains("x does not exist"));
    // not a VM: KubeVirt fails it on its own
    let mut other = snapshot("disks");
    other["spec"]["source"]["kind"] = json!("Pod");
    assert_eq!(decide(&other, Some(&[]), &host), Decision::Allowed);
}

#[test]
fn unlisted_classes_and_claims_on_their_way_wait() {
    let ok = ["simulated-snapshots".to_string()];
    let vm = vm_with(json!([{"name": "d", "dataVolume": {"name": "dv"}}]));
    let unlisted = Fake::default().with("vm", "vm1", vm.clone());
    assert_eq!(
        decide(&snapshot("vm1"), Some(&ok), &unlisted),
        Decision::Wait
    );
    let on_the_way = Fake {
        classes: Some(testenv_like()),
        tenant: vec!["dv".into()],
        ..Fake::default()
    }
    .with("vm", "vm1", vm);
    assert_eq!(
        decide(&snapshot("vm1"), Some(&ok), &on_the_way),
        Decision::Wait
    );
    // its DataVolume on the host names the class: known before CDI makes the claim
    let named = on_the_way.with(
        "dv",
        "dv",
        json!({"spec": {"storage": {"storageClassName": "simulated"}}}),
    );
    assert_eq!(
        decide(&snapshot("vm1"), Some(&ok), &named),
        Decision::Allowed
    );
}

#[test]
fn several_default_classes_must_all_be_allowed() {
    let classes = Arc::new(host(
        &[sc("fast", "csi.a")],
        &[],
        &[
            vsc("a1", "csi.a", Some("true")),
            vsc("a2", "csi.a", Some("true")),
        ],
    ));
    let host = Fake {
        classes: Some(classes),
        ..Fake::default()
    }
    .with(
        "vm",
        "vm1",
        vm_with(json!([{"name": "d", "persistentVolumeClaim": {"claimName": "c"}}])),
    )
    .with("pvc", "c", json!({"spec": {"storageClassName": "fast"}}));
    let one = ["a1".to_string()];
    assert!(refused(decide(&snapshot("vm1"), Some(&one), &host)).contains("any of"));
    let both = ["a1".to_string(), "a2".to_string()];
    assert_eq!(
        decide(&snapshot("vm1"), Some(&both), &host),
        Decision::Allowed
    );
}
