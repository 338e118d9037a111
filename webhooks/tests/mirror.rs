//! What a tenant gets (pure): the host's KubeVirt webhooks for its synced kinds, pointing at
//! kvtenant, and the VM policy webhook.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use kvtenant_api::SyncKind;
use kvtenant_webhooks::mirror::{self, NOT_A_MIRROR_CONDITION, Target, synced_resources};
use kvtenant_webhooks::paths::HookType;
use serde_json::{Value, json};

fn hook(name: &str, group: &str, resources: &[&str], extra: Value) -> Value {
    let mut h = json!({
        "name": name,
        "admissionReviewVersions": ["v1", "v1beta1"],
        "sideEffects": "None",
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "timeoutSeconds": 10,
        "namespaceSelector": {},
        "objectSelector": {},
        "clientConfig": {"service": {"name": "virt-api", "namespace": "kubevirt", "path": "/x", "port": 443}, "caBundle": "aG9zdA=="},
        "rules": [{"apiGroups": [group], "apiVersions": ["v1alpha3", "v1"], "resources": resources,
                   "operations": ["CREATE", "UPDATE"], "scope": "*"}],
    });
    if let (Some(h), Value::Object(e)) = (h.as_object_mut(), extra) {
        h.extend(e);
    }
    h
}

fn target() -> Target {
    Target {
        service_namespace: "kube-system".into(),
        service_name: "kvtenant-webhooks".into(),
        port: 9443,
        ca_bundle: "-----BEGIN CERTIFICATE-----\nkvtenant\n-----END CERTIFICATE-----\n".into(),
        prefix: "/t/uid/token".into(),
    }
}

/// A subset of KubeVirt's `virt-api-validator` (see shared/kubevirt-crds/SOURCE.md (a)).
fn kubevirt_validator() -> Value {
    json!({"metadata": {"name": "virt-api-validator", "labels": {"kubevirt.io": "virt-api-validator"}}, "webhooks": [
        hook("virt-launcher-eviction-interceptor.kubevirt.io", "", &["pods/eviction"],
             json!({"matchConditions": [{"name": "only-vms", "expression": "object.metadata.name.startsWith(\"virt-launcher\")"}]})),
        hook("virtualmachine-validator.kubevirt.io", "kubevirt.io", &["virtualmachines"],
             json!({"matchConditions": [{"name": "host-condition", "expression": "true"}]})),
        hook("virtualmachineinstances-create-validator.kubevirt.io", "kubevirt.io", &["virtualmachineinstances"], json!({})),
        hook("virtualmachinepool-validator.kubevirt.io", "pool.kubevirt.io", &["virtualmachinepools"], json!({})),
        hook("virtualmachinesnapshot-validator.snapshot.kubevirt.io", "snapshot.kubevirt.io", &["virtualmachinesnapshots"], json!({})),
        hook("kubevirt-crd-status-validator.kubevirt.io", "kubevirt.io",
             &["virtualmachines/status", "virtualmachineinstancereplicasets/status"], json!({})),
        hook("virtualmachineclusterinstancetype-validator.instancetype.kubevirt.io", "instancetype.kubevirt.io",
             &["virtualmachineclusterinstancetypes"], json!({})),
    ]})
}

fn names(cfg: &Value) -> Vec<&str> {
    cfg["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect()
}

#[test]
fn kubevirts_webhooks_for_synced_kinds_are_mirrored_and_point_at_kvtenant() {
    let out = mirror::render(
        HookType::Validating,
        &[kubevirt_validator()],
        &synced_resources(&SyncKind::DEFAULT),
        &target(),
    );
    assert_eq!(out.len(), 1);
    let cfg = &out[0];
    assert_eq!(cfg["metadata"]["name"], "virt-api-validator");
    assert_eq!(
        cfg["metadata"]["labels"]["tenancy.kvtenant.io/managed-by"],
        "kvtenant"
    );
    assert_eq!(
        names(cfg),
        [
            "virtualmachine-validator.kubevirt.io",
            "virtualmachineinstances-create-validator.kubevirt.io",
            "virtualmachinepool-validator.kubevirt.io",
        ]
    );
    let vm = &cfg["webhooks"][0];
    // as on the host
    for key in [
        "failurePolicy",
        "matchPolicy",
        "sideEffects",
        "timeoutSeconds",
        "namespaceSelector",
        "objectSelector",
    ] {
        assert_eq!(vm[key], kubevirt_validator()["webhooks"][1][key], "{key}");
    }
    assert_eq!(vm["rules"][0]["apiGroups"], json!(["kubevirt.io"]));
    assert_eq!(vm["rules"][0]["resources"], json!(["virtualmachines"]));
    assert_eq!(vm["rules"][0]["apiVersions"], json!(["v1alpha3", "v1"]));
    // the host's conditions, then kvtenant's (mirrors of host-made objects are not reviewed again)
    assert_eq!(vm["matchConditions"][0]["name"], "host-condition");
    assert_eq!(vm["matchConditions"][1]["name"], NOT_A_MIRROR_CONDITION);
    // kvtenant's endpoint, path and CA
    assert_eq!(vm["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(
        vm["clientConfig"],
        json!({
            "service": {"namespace": "kube-system", "name": "kvtenant-webhooks", "port": 9443,
                        "path": "/t/uid/token/validating/virt-api-validator/virtualmachine-validator.kubevirt.io"},
            "caBundle": base64::engine::general_purpose::STANDARD.encode(target().ca_bundle),
        })
    );

    // fewer synced kinds, fewer webhooks
    let only_vms = mirror::render(
        HookType::Validating,
        &[kubevirt_validator()],
        &synced_resources(&[SyncKind::VirtualMachine]),
        &target(),
    );
    assert_eq!(
        names(&only_vms[0]),
        [
            "virtualmachine-validator.kubevirt.io",
            "virtualmachineinstances-create-validator.kubevirt.io"
        ]
    );
    // nothing synced that KubeVirt validates: no configuration at all
    assert!(
        mirror::render(
            HookType::Validating,
            &[kubevirt_validator()],
            &synced_resources(&[SyncKind::DataVolume]),
            &target()
        )
        .is_empty()
    );
}

#[test]
fn mixed_rules_keep_only_synced_kinds_and_mutators_keep_reinvocation() {
    let mutator = json!({"metadata": {"name": "virt-api-mutator"}, "webhooks": [
        hook("virtualmachines-mutator.kubevirt.io", "kubevirt.io",
             &["virtualmachines", "virtualmachines/status", "kubevirts"],
             json!({"reinvocationPolicy": "IfNeeded"})),
    ]});
    let out = mirror::render(
        HookType::Mutating,
        &[mutator],
        &synced_resources(&SyncKind::DEFAULT),
        &target(),
    );
    let w = &out[0]["webhooks"][0];
    assert_eq!(out[0]["kind"], "MutatingWebhookConfiguration");
    assert_eq!(w["rules"][0]["resources"], json!(["virtualmachines"]));
    assert_eq!(w["reinvocationPolicy"], "IfNeeded");
    assert!(
        w["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap()
            .ends_with("/mutating/virt-api-mutator/virtualmachines-mutator.kubevirt.io")
    );
}

/// The resources a webhook's rules name, one per rule.
fn resources_of(webhook: &Value) -> Vec<&str> {
    webhook["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resources"][0].as_str().unwrap())
        .collect()
}

#[test]
fn the_policy_webhook_reviews_the_synced_vm_kinds() {
    let workloads = mirror::workload_policy_resources(&SyncKind::DEFAULT);
    let cfg =
        mirror::policy_configuration(&synced_resources(&SyncKind::DEFAULT), &workloads, &target())
            .unwrap();
    // the workload policy: pods, Services and Ingresses, failing open (the syncer refuses them
    // anyway)
    let wl = &cfg["webhooks"][1];
    assert_eq!(wl["name"], "workloadpolicy.tenancy.kvtenant.io");
    assert_eq!(wl["failurePolicy"], "Ignore");
    let reviewed = resources_of(wl);
    for r in ["pods", "services", "ingresses"] {
        assert!(reviewed.contains(&r), "{r} in {reviewed:?}");
    }
    assert!(
        !reviewed.contains(&"secrets"),
        "tenant-internal Secrets are fine"
    );
    let w = &cfg["webhooks"][0];
    assert_eq!(w["name"], "vmpolicy.tenancy.kvtenant.io");
    assert_eq!(w["failurePolicy"], "Fail");
    let resources = resources_of(w);
    // in the kinds' dependency order (kvtenant_rules::kinds::KINDS)
    assert_eq!(
        resources,
        [
            "virtualmachinepools",
            "virtualmachines",
            "virtualmachineinstances",
            "virtualmachineinstancemigrations"
        ]
    );
    assert_eq!(
        w["clientConfig"]["service"]["path"],
        "/t/uid/token/vmpolicy"
    );
    let with_dv = mirror::policy_configuration(
        &synced_resources(&[SyncKind::VirtualMachine, SyncKind::DataVolume]),
        &[],
        &target(),
    )
    .unwrap();
    assert_eq!(with_dv["webhooks"][0]["rules"].as_array().unwrap().len(), 3);
    // exports (their token Secret, source and annotations) and secondary networks (their CNI
    // config against spec.vmPolicy.tenantNetworks) are refused at admission too
    let opt_in = mirror::policy_configuration(
        &synced_resources(&[
            SyncKind::VirtualMachineExport,
            SyncKind::NetworkAttachmentDefinition,
        ]),
        &[],
        &target(),
    )
    .unwrap();
    let reviewed = resources_of(&opt_in["webhooks"][0]);
    assert_eq!(
        reviewed,
        ["network-attachment-definitions", "virtualmachineexports"]
    );
    assert!(
        mirror::policy_configuration(
            &synced_resources(&[SyncKind::VirtualMachineClone]),
            &[],
            &target()
        )
        .is_none()
    );

    let svc = mirror::service(&target(), "localhost");
    assert_eq!(svc["spec"]["type"], "ExternalName");
    assert_eq!(svc["spec"]["externalName"], "localhost");
    assert_eq!(svc["metadata"]["namespace"], "kube-system");
}
