//! Every row of the state table in the module docs but the mirror rows ([`super::tests_mirror`]),
//! plus the kind-specific turns (mirror-only kinds, triggers, host-assigned fields, start/stop
//! taken up).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kvtenant_api::labels::{
    MANAGED_BY, MANAGED_BY_VALUE, SPEC_HASH, TENANT_UID, VIRTUALCLUSTER_UID,
};
use serde_json::json;

use super::fake::*;
use super::*;

#[test]
fn nothing_on_either_side_is_nothing_to_do() {
    let p = run(&Fake::new(), "VirtualMachine", None, None);
    assert!(p.is_noop());
    assert_eq!(p.direction, Direction::Noop);
}

#[test]
fn a_copy_whose_tenant_object_is_gone_is_deleted_after_asking_the_tenant() {
    let f = Fake::new();
    let h = copy_of(&f, &vm(plain_spec()), None);
    let p = run(&f, "VirtualMachine", None, Some(&h));
    assert_eq!(p.steps, [Step::ConfirmTenantGone, Step::DeleteHost]);
    assert_eq!(p.direction, Direction::Delete);
}

#[test]
fn a_recreate_cut_short_is_finished_instead_of_deleting_the_copy() {
    let f = Fake::new();
    let t = vm(plain_spec());
    let mut h = copy_of(&f, &t, None);
    let old_uid = h.metadata.annotations.as_ref().unwrap()[TENANT_UID].clone();
    let new = recreated(&t, &json!({"spec": {"running": false}}));
    let original = recreated(&t, &json!({}));
    h.metadata.annotations.as_mut().unwrap().insert(
        kvtenant_api::labels::RECREATE_PENDING.into(),
        kvtenant_rules::translate::recreate_pending(&old_uid, &new, &original),
    );
    let p = run(&f, "VirtualMachine", None, Some(&h));
    assert_eq!(p.direction, Direction::Up);
    let [Step::RestoreTenant(objs)] = p.steps.as_slice() else {
        panic!("{:?}", p.steps);
    };
    assert_eq!(objs[0].data["spec"]["running"], false);
    assert_eq!(objs[1].data, original.data);
    // a leftover of a finished recreate (the copy stands for another uid) is no reason
    h.metadata
        .annotations
        .as_mut()
        .unwrap()
        .insert(TENANT_UID.into(), "another".into());
    let p = run(&f, "VirtualMachine", None, Some(&h));
    assert_eq!(p.steps, [Step::ConfirmTenantGone, Step::DeleteHost]);
}

#[test]
fn another_virtual_clusters_copy_is_left_alone() {
    let f = Fake::new();
    let mut other = Fake::new();
    other.vc.uid = "other-vc".into();
    let h = copy_of(&other, &vm(plain_spec()), None);
    let p = run(&f, "VirtualMachine", None, Some(&h));
    assert!(p.steps.is_empty(), "{p:?}");
}

#[test]
fn an_object_being_deleted_in_the_tenant_waits_for_its_absence() {
    let f = Fake::new();
    let t = deleting(vm(plain_spec()));
    let h = copy_of(&f, &t, None);
    assert!(
        run(&f, "VirtualMachine", Some(&t), Some(&h))
            .steps
            .is_empty()
    );
}

#[test]
fn a_mirror_only_kind_created_by_the_tenant_is_refused_naming_the_setting() {
    let f = Fake::new(); // DataVolume not enabled, VirtualMachine is
    let dv = obj(
        "DataVolume",
        json!({"metadata": {"name": "d", "namespace": "default"}, "spec": {}}),
    );
    let p = run(&f, "DataVolume", Some(&dv), None);
    let [Step::Refuse(v)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!(v[0].path, "spec.kubevirt.syncKinds");
    assert!(v[0].message.contains("add DataVolume"), "{}", v[0].message);
}

#[test]
fn dependencies_sync_only_while_referenced() {
    let mut f = Fake::new();
    let s = obj(
        "Secret",
        json!({"metadata": {"name": "ci-secret", "namespace": "default", "uid": "t-s"}, "type": "Opaque"}),
    );
    assert!(run(&f, "Secret", Some(&s), None).steps.is_empty());
    let copy = copy_of(&f, &s, None);
    assert_eq!(
        run(&f, "Secret", Some(&s), Some(&copy)).steps,
        [Step::DeleteHost]
    );
    f.referenced = true;
    let p = run(&f, "Secret", Some(&s), None);
    assert!(
        matches!(
            p.steps.as_slice(),
            [
                Step::EnsureHostNamespace,
                Step::CreateHost(_),
                Step::ClearRefusal
            ]
        ),
        "{p:?}"
    );
    // a token Secret is refused even when referenced
    let mut token = s.clone();
    token.data["type"] = json!("kubernetes.io/service-account-token");
    assert!(matches!(
        run(&f, "Secret", Some(&token), None).steps.as_slice(),
        [Step::Refuse(_)]
    ));
}

#[test]
fn services_sync_without_the_addresses_the_host_assigns() {
    let f = Fake::new();
    let svc = obj(
        "Service",
        json!({"metadata": {"name": "web", "namespace": "default", "uid": "t-svc"},
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.0.0.95", "clusterIPs": ["10.0.0.95"],
                 "ports": [{"port": 22, "nodePort": 30022}], "type": "NodePort"}}),
    );
    let p = run(&f, "Service", Some(&svc), None);
    let [
        Step::EnsureHostNamespace,
        Step::CreateHost(h),
        Step::ClearRefusal,
    ] = p.steps.as_slice()
    else {
        panic!("{p:?}")
    };
    assert_eq!(h.data["spec"].get("clusterIP"), None);
    assert_eq!(h.data["spec"].get("clusterIPs"), None);
    assert_eq!(h.data["spec"]["ports"][0].get("nodePort"), None);
    assert_eq!(h.data["spec"]["ports"][0]["port"], 22);
}

#[test]
fn a_service_kvtenant_keeps_for_a_host_service_never_syncs_down() {
    let mut f = Fake::new();
    let svc = obj(
        "Service",
        json!({"metadata": {"name": "registry", "namespace": "default", "uid": "t-svc"},
        "spec": {"clusterIP": "10.0.0.20", "ports": [{"port": 5000}]}}),
    );
    let copy = copy_of(&f, &svc, None);
    f.mapped_in = true;
    assert!(run(&f, "Service", Some(&svc), None).steps.is_empty());
    // a copy made while it was the tenant's goes
    assert_eq!(
        run(&f, "Service", Some(&svc), Some(&copy)).steps,
        vec![Step::DeleteHost]
    );
    f.mapped_in = false;
    assert!(matches!(
        run(&f, "Service", Some(&svc), None).steps.as_slice(),
        [
            Step::EnsureHostNamespace,
            Step::CreateHost(_),
            Step::ClearRefusal
        ]
    ));
}

#[test]
fn a_vm_that_escapes_the_tenant_is_refused_and_nothing_reaches_the_host() {
    let f = Fake::new();
    let mut spec = plain_spec();
    spec["template"]["spec"]["volumes"] =
        json!([{"name": "h", "hostDisk": {"path": "/etc", "type": "Disk"}}]);
    let p = run(&f, "VirtualMachine", Some(&vm(spec)), None);
    let [Step::Refuse(v)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!(v[0].path, "spec.template.spec.volumes[0].hostDisk");
}

#[test]
fn host_acting_annotations_on_the_vm_itself_are_refused_without_any_webhook() {
    let f = Fake::new();
    let mut t = vm(plain_spec());
    t.metadata.annotations = Some(
        [(
            "kubevirt.io/keep-launcher-alive-after-failure".to_string(),
            "true".to_string(),
        )]
        .into(),
    );
    let p = run(&f, "VirtualMachine", Some(&t), None);
    let [Step::Refuse(v)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!(
        v[0].path,
        "metadata.annotations[kubevirt.io/keep-launcher-alive-after-failure]"
    );
}

#[test]
fn a_new_vm_brings_its_dependencies_then_its_namespace_then_itself() {
    let f = Fake::new();
    let t = vm(plain_spec());
    let p = run(&f, "VirtualMachine", Some(&t), None);
    assert_eq!(p.direction, Direction::Down);
    let [
        Step::Dependencies(deps),
        Step::EnsureHostNamespace,
        Step::CreateHost(h),
        Step::ClearRefusal,
    ] = p.steps.as_slice()
    else {
        panic!("{p:?}")
    };
    assert_eq!(deps.len(), 1);
    assert_eq!(
        (deps[0].kind, deps[0].name.as_str()),
        ("Secret", "ci-secret")
    );
    assert_eq!(h.metadata.namespace.as_deref(), Some(f.host_ns().as_str()));
    assert_eq!(h.metadata.name.as_deref(), Some("vm1"));
    let labels = h.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[VIRTUALCLUSTER_UID], "vc-uid");
    assert_eq!(labels[MANAGED_BY], MANAGED_BY_VALUE);
    assert_eq!(labels["app"], "web");
    assert_eq!(
        h.metadata.annotations.as_ref().unwrap()[TENANT_UID],
        "t-vm1"
    );
    assert_eq!(h.data["spec"], t.data["spec"]);
}

#[test]
fn a_name_taken_on_the_host_is_refused() {
    let f = Fake::new();
    let t = vm(plain_spec());
    let mut taken = host_made("VirtualMachine", None);
    taken.metadata.name = Some("vm1".into());
    let mut other = Fake::new();
    other.vc.uid = "other-vc".into();
    for h in [taken, copy_of(&other, &t, None)] {
        let p = run(&f, "VirtualMachine", Some(&t), Some(&h));
        let last = p.steps.last().unwrap();
        let Step::Refuse(v) = last else {
            panic!("{p:?}")
        };
        assert_eq!(v[0].path, "metadata.name");
        assert!(
            !p.steps
                .iter()
                .any(|s| matches!(s, Step::CreateHost(_) | Step::ReplaceHost(_)))
        );
    }
}

#[test]
fn an_unchanged_copy_only_brings_its_status_up() {
    let f = Fake::new();
    let t = vm(plain_spec());
    let status = json!({"printableStatus": "Running"});
    let h = copy_of(&f, &t, Some(status.clone()));
    let p = run(&f, "VirtualMachine", Some(&t), Some(&h));
    assert_eq!(
        &p.steps[1..],
        [
            Step::EnsureHostNamespace,
            Step::ClearRefusal,
            Step::StatusUp(status.clone())
        ]
    );
    let mut seen = t.clone();
    seen.data["status"] = status;
    let p = run(&f, "VirtualMachine", Some(&seen), Some(&h));
    assert_eq!(
        &p.steps[1..],
        [Step::EnsureHostNamespace, Step::ClearRefusal]
    );
}

#[test]
fn tenant_edits_and_host_drift_are_written_to_the_host() {
    let f = Fake::new();
    let t = vm(plain_spec());
    let h = copy_of(&f, &t, Some(json!({"printableStatus": "Stopped"})));
    // the tenant changed its VM
    let mut edited = t.clone();
    edited.data["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"cores": 2});
    let p = run(&f, "VirtualMachine", Some(&edited), Some(&h));
    let Some(Step::ReplaceHost(r)) = p.steps.get(2) else {
        panic!("{p:?}")
    };
    assert_eq!(
        r.data["spec"]["template"]["spec"]["domain"]["cpu"]["cores"],
        2
    );
    assert_eq!(
        r.metadata.resource_version.as_deref(),
        Some("100"),
        "replaces what it read"
    );
    assert_eq!(
        r.data["status"]["printableStatus"], "Stopped",
        "keeps the host's status"
    );
    // someone changed the host copy
    let mut drifted = h.clone();
    drifted.data["spec"]["template"]["spec"]["volumes"][0]["cloudInitNoCloud"] =
        json!({"userDataSecretRef": {"name": "someone-elses"}});
    let p = run(&f, "VirtualMachine", Some(&t), Some(&drifted));
    let Some(Step::ReplaceHost(r)) = p.steps.get(2) else {
        panic!("{p:?}")
    };
    assert_eq!(
        r.data["spec"]["template"]["spec"]["volumes"][0]["cloudInitNoCloud"]["userDataSecretRef"]["name"],
        "ci-secret"
    );
    // fields the host adds are defaults, not drift
    let mut defaulted = h.clone();
    defaulted.data["spec"]["template"]["spec"]["domain"]["machine"] = json!({"type": "q35"});
    let p = run(&f, "VirtualMachine", Some(&t), Some(&defaulted));
    assert!(
        !p.steps.iter().any(|s| matches!(s, Step::ReplaceHost(_))),
        "{p:?}"
    );
}

#[test]
fn a_tenant_edit_keeps_the_firmware_identity_the_host_gave_the_vm() {
    let f = Fake::new();
    let t = vm(plain_spec());
    let mut h = copy_of(&f, &t, None);
    h.data["spec"]["template"]["spec"]["domain"]["firmware"] =
        json!({"uuid": "u-1", "serial": "s-1"});
    let mut edited = t.clone();
    edited.data["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"cores": 2});
    let p = run(&f, "VirtualMachine", Some(&edited), Some(&h));
    let Some(Step::ReplaceHost(r)) = p.steps.get(2) else {
        panic!("{p:?}")
    };
    let fw = &r.data["spec"]["template"]["spec"]["domain"]["firmware"];
    assert_eq!(
        (fw["uuid"].as_str(), fw["serial"].as_str()),
        (Some("u-1"), Some("s-1"))
    );
    assert_eq!(
        r.data["spec"]["template"]["spec"]["domain"]["cpu"]["cores"],
        2
    );
}

#[test]
fn a_start_through_the_host_virt_api_is_taken_up_not_reverted() {
    let f = Fake::new();
    let t = vm(plain_spec());
    let mut started = copy_of(&f, &t, None);
    started.data["spec"]["runStrategy"] = json!("Always");
    // virt-api wrote it (the host cache keeps who owns the run fields)
    started.metadata.managed_fields = Some(vec![
        serde_json::from_value(json!({"manager": "virt-api", "operation": "Update",
            "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:runStrategy": {}}}}))
        .unwrap(),
    ]);
    let p = run(&f, "VirtualMachine", Some(&t), Some(&started));
    assert_eq!(
        p.steps.last(),
        Some(&Step::TakeUp(json!({"spec": {"runStrategy": "Always"}})))
    );
    // the same change by anyone else is drift: repaired
    let mut edited_on_host = started.clone();
    edited_on_host.metadata.managed_fields = None;
    let p = run(&f, "VirtualMachine", Some(&t), Some(&edited_on_host));
    assert!(
        p.steps.iter().any(|s| matches!(s, Step::ReplaceHost(_)))
            && !p.steps.iter().any(|s| matches!(s, Step::TakeUp(_))),
        "{p:?}"
    );
    // a tenant edit at the same time wins: the hash differs, the host is updated
    let mut edited = t.clone();
    edited.data["spec"]["template"]["spec"]["domain"]["cpu"] = json!({"cores": 2});
    let p = run(&f, "VirtualMachine", Some(&edited), Some(&started));
    assert!(
        p.steps.iter().any(|s| matches!(s, Step::ReplaceHost(_))),
        "{p:?}"
    );
    // the hash alone is what tells kvtenant's copies apart
    assert!(
        started
            .metadata
            .annotations
            .as_ref()
            .unwrap()
            .contains_key(SPEC_HASH)
    );
}

#[test]
fn owner_references_are_mapped_to_host_uids_or_dropped() {
    let mut f = Fake::new();
    let mut t = vm(plain_spec());
    t.metadata.owner_references = Some(vec![
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "t-cm"}),
        )
        .unwrap(),
        serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "Secret", "name": "gone", "uid": "t-x"}),
        )
        .unwrap(),
    ]);
    f.host_uids
        .insert(("ConfigMap".into(), "cm".into()), "h-cm".into());
    let p = run(&f, "VirtualMachine", Some(&t), None);
    let Some(Step::CreateHost(h)) = p.steps.get(2) else {
        panic!("{p:?}")
    };
    let owners = h.metadata.owner_references.as_ref().unwrap();
    assert_eq!(owners.len(), 1);
    assert_eq!(owners[0].uid, "h-cm");
}
