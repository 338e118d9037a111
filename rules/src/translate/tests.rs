use super::*;
use proptest::prelude::*;
use serde_json::json;

fn vc() -> VirtualClusterRef {
    VirtualClusterRef {
        namespace: "tenants".into(),
        name: "alpha".into(),
        uid: "11111111-2222-3333-4444-555555555555".into(),
    }
}

fn vm(data: Value) -> DynamicObject {
    let mut obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {
            "name": "vm1", "namespace": "default", "uid": "tenant-uid-1",
            "resourceVersion": "42", "generation": 3,
            "labels": {"app": "web"}, "annotations": {"note": "x"},
            "finalizers": ["tenant.example/keep"],
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "t-owner"}]
        }
    }))
    .unwrap();
    obj.data = data;
    obj
}

#[test]
fn host_copy_keeps_spec_and_labels_and_adds_identity() {
    let t = vm(json!({"spec": {"runStrategy": "Always"}, "status": {"ready": true}}));
    let h = to_host(&t, "tenants-ab12cd-alpha-default", &vc(), |_| None);
    assert_eq!(
        h.metadata.namespace.as_deref(),
        Some("tenants-ab12cd-alpha-default")
    );
    assert_eq!(h.metadata.name.as_deref(), Some("vm1"));
    assert_eq!(h.metadata.uid, None);
    assert_eq!(h.metadata.resource_version, None);
    assert_eq!(h.metadata.finalizers, None);
    assert_eq!(
        h.metadata.owner_references, None,
        "unmapped owners are dropped"
    );
    assert_eq!(
        h.data,
        json!({"spec": {"runStrategy": "Always"}}),
        "status is the host's"
    );
    let labels = h.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app"], "web");
    assert_eq!(labels[VIRTUALCLUSTER_UID], vc().uid);
    let ann = h.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann[TENANT_UID], "tenant-uid-1");
    assert_eq!(ann["note"], "x");
    assert!(is_copy_for(&h, &vc().uid));
    assert!(!is_copy_for(&h, "another-vc"));
}

#[test]
fn owners_are_mapped_by_name() {
    let t = vm(json!({"spec": {}}));
    let h = to_host(&t, "ns", &vc(), |o| {
        map_owner_by_name(o, |kind, name| {
            (kind == "ConfigMap" && name == "owner").then(|| "host-owner-uid".to_string())
        })
    });
    let owners = h.metadata.owner_references.unwrap();
    assert_eq!(owners[0].uid, "host-owner-uid");
    assert_eq!(owners[0].name, "owner");
}

#[test]
fn unchanged_tenant_object_needs_no_write_but_drift_and_changes_do() {
    let t = vm(json!({"spec": {"runStrategy": "Always", "template": {"spec": {}}}}));
    let desired = to_host(&t, "ns", &vc(), |_| None);
    // the host adds defaults and status: not drift
    let mut current = desired.clone();
    current.data = json!({"spec": {"runStrategy": "Always", "template": {"spec": {"domain": {"machine": {"type": "q35"}}}}}, "status": {"ready": true}});
    current.metadata.resource_version = Some("7".into());
    assert!(!host_needs_update(&current, &desired));
    // someone edits the host copy: drift
    let mut drifted = current.clone();
    drifted.data["spec"]["runStrategy"] = json!("Halted");
    assert!(host_needs_update(&drifted, &desired));
    // the tenant changes the object: hash changes
    let t2 = vm(json!({"spec": {"runStrategy": "Halted", "template": {"spec": {}}}}));
    assert!(host_needs_update(
        &current,
        &to_host(&t2, "ns", &vc(), |_| None)
    ));
    // the update keeps the host's status, rv and host-controller annotations
    current.metadata.annotations.as_mut().unwrap().insert(
        "kubevirt.io/latest-observed-api-version".into(),
        "v1".into(),
    );
    let merged = merge_for_update(&current, &to_host(&t2, "ns", &vc(), |_| None));
    assert_eq!(merged.metadata.resource_version.as_deref(), Some("7"));
    assert_eq!(merged.data["status"], json!({"ready": true}));
    assert_eq!(merged.data["spec"]["runStrategy"], "Halted");
    assert!(
        merged
            .metadata
            .annotations
            .unwrap()
            .contains_key("kubevirt.io/latest-observed-api-version")
    );
}

#[test]
fn mirrors_carry_host_spec_status_and_mapped_owners() {
    let host: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "vm1", "namespace": "host-ns", "uid": "host-vmi",
            "labels": {"kubevirt.io/nodeName": "node-1"},
            "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine", "name": "vm1", "uid": "host-vm", "controller": true}]},
        "spec": {"domain": {}}, "status": {"phase": "Running"}
    }))
    .unwrap();
    let m = to_tenant_mirror(&host, "default", |o| {
        map_owner_by_name(o, |_, _| Some("tenant-vm".to_string()))
    });
    assert!(is_mirror(&m));
    assert_eq!(m.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        m.metadata.owner_references.as_ref().unwrap()[0].uid,
        "tenant-vm"
    );
    assert_eq!(m.data["status"]["phase"], "Running");
    assert_eq!(
        m.metadata.finalizers.as_ref().unwrap(),
        &[MIRROR_FINALIZER.to_string()]
    );
    let mut edited = m.clone();
    edited.data["spec"]["domain"] = json!({"cpu": {"cores": 64}});
    assert!(mirror_differs(&edited, &m), "tenant edits are reverted");
    assert!(!mirror_differs(&m, &m));
}

/// KubeVirt's export controller copies a VirtualMachineExport's labels and annotations onto the
/// exporter Pod and Service it makes: with the host copy's, they carry kvtenant's identity. They
/// are the host's objects (other names), shown read-only, never taken for orphaned copies.
#[test]
fn objects_a_host_controller_made_with_a_copys_identity_are_not_copies() {
    let export = to_host(
        &vm(json!({"spec": {}})),
        "tenants-ab12cd-alpha-default",
        &vc(),
        |_| None,
    );
    let mut pod = export.clone();
    pod.types = Some(kube::api::TypeMeta {
        api_version: "v1".into(),
        kind: "Pod".into(),
    });
    pod.metadata.name = Some("virt-export-vm1".into());
    pod.metadata.uid = Some("host-pod".into());
    assert!(is_copy_for(&export, &vc().uid));
    assert!(!is_copy_for(&pod, &vc().uid));
    assert!(!is_kvtenant_copy(&pod));

    // CDI copies a DataVolume's annotations (not its labels) onto the claim of the same name
    let mut claim = export.clone();
    claim.metadata.labels =
        Some([("app".to_string(), "containerized-data-importer".to_string())].into());
    assert!(!is_copy_for(&claim, &vc().uid));
    assert!(!is_kvtenant_copy(&claim));

    let m = to_tenant_mirror(&pod, "default", |_| None);
    let labels = m.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    assert!(!labels.contains_key(MANAGED_BY) && !labels.contains_key(VIRTUALCLUSTER_UID));
    let ann = m.metadata.annotations.clone().unwrap_or_default();
    for k in [TENANT_UID, TENANT_NAME, TENANT_NAMESPACE, SPEC_HASH] {
        assert!(!ann.contains_key(k), "{k} dropped from the mirror");
    }
    assert_eq!(ann[MIRROR_OF], "host-pod");
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        "[a-zA-Z0-9 _./-]{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z][a-zA-Z0-9]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    /// Any field, known to our types or not, survives tenant → host unchanged (only `status`
    /// is left to the host), and the host status comes back unchanged.
    #[test]
    fn unknown_fields_survive_the_round_trip(
        spec in arb_json(),
        extra in arb_json(),
        status in arb_json(),
    ) {
        let t = vm(json!({"spec": spec, "someFutureField": extra, "status": status.clone()}));
        let h = to_host(&t, "ns", &vc(), |_| None);
        prop_assert_eq!(&h.data["spec"], &t.data["spec"]);
        prop_assert_eq!(&h.data["someFutureField"], &t.data["someFutureField"]);
        prop_assert!(h.data.get("status").is_none());
        // JSON round trip through the wire format keeps everything
        let wire = serde_json::to_string(&h).unwrap();
        let back: DynamicObject = serde_json::from_str(&wire).unwrap();
        prop_assert_eq!(&back.data, &h.data);
        prop_assert!(!host_needs_update(&back, &h));
        // the host's status is what a mirror carries up
        let mut host_obj = back.clone();
        host_obj.data["status"] = status.clone();
        let m = to_tenant_mirror(&host_obj, "default", |_| None);
        prop_assert_eq!(&m.data["status"], &status);
        prop_assert_eq!(&m.data["someFutureField"], &t.data["someFutureField"]);
    }
}

#[test]
fn host_assigned_fields_are_removed_and_selectors_match() {
    let mut svc = json!({"spec": {"clusterIP": "10.0.0.5", "clusterIPs": ["10.0.0.5"],
        "ports": [{"port": 22, "nodePort": 30022}, {"port": 80}], "selector": {"vm": "a"}}});
    remove_pointers(
        &mut svc,
        &[
            "/spec/clusterIP",
            "/spec/clusterIPs",
            "/spec/ports/*/nodePort",
        ],
    );
    assert_eq!(
        svc,
        json!({"spec": {"ports": [{"port": 22}, {"port": 80}], "selector": {"vm": "a"}}})
    );
    let sel = svc["spec"]["selector"].as_object().unwrap().clone();
    assert!(selects(&sel, Some(&json!({"vm": "a", "other": "x"}))));
    assert!(!selects(&sel, Some(&json!({"vm": "b"}))));
    assert!(!selects(&serde_json::Map::new(), Some(&json!({"vm": "a"}))));
}

#[test]
fn a_cut_short_recreate_is_found_on_the_host_copy_and_a_finished_one_is_not() {
    let tenant = vm(json!({"spec": {"x": 1}}));
    let mut host = to_host(&tenant, "h", &vc(), |_| None);
    assert!(interrupted_recreate(&host).is_none());
    let mut again = tenant.clone();
    again.data["spec"]["x"] = json!(2);
    host.metadata.annotations.as_mut().unwrap().insert(
        kvtenant_api::labels::RECREATE_PENDING.into(),
        recreate_pending("tenant-uid-1", &again, &tenant),
    );
    // the copy still stands for the deleted object: create the new one
    let (found, original) = interrupted_recreate(&host).unwrap();
    assert_eq!(found.data["spec"]["x"], 2);
    assert_eq!(found.metadata.name.as_deref(), Some("vm1"));
    assert_eq!(original.data["spec"]["x"], 1);
    // the copy stands for the recreated object: the annotation is a leftover
    host.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(TENANT_UID.into(), "tenant-uid-2".into());
    assert!(interrupted_recreate(&host).is_none());
}

/// Found by fuzzing (`.ci/fuzz translate`): an object without `metadata.name` is written with an
/// empty tenant name; its copy is still recognised as kvtenant's (no name on either side).
#[test]
fn a_copy_of_an_object_without_a_name_is_still_a_copy() {
    let tenant: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "mhostDevetadata": {"name": "s", "namespace": "default"},
        "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}
    }))
    .unwrap();
    let host = to_host(&tenant, "tenants-ab12cd-alpha-default", &vc(), |_| None);
    assert_eq!(host.metadata.name, None);
    assert!(is_copy_for(&host, &vc().uid));
}
