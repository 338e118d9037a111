//! The host's cluster instancetypes and preferences in a virtual cluster, with KubeVirt's real
//! virt-api and virt-controller on the host (the node agent plays virt-handler): the tenant lists
//! the instancetypes `spec.vmPolicy.allowedInstancetypes` allows and every preference (read-only
//! copies, their CRDs copied from the host), creates a VM from one, and the host's
//! virt-controller sizes it: the tenant's instance has the instancetype's memory and the
//! tenant's VM shows the revisions KubeVirt recorded, as on the host, and the revisions exist in
//! the tenant (read-only). A VM naming an instancetype
//! the tenant is not allowed is refused; a shown copy the tenant deletes comes back. The tenant's
//! own (namespaced) instancetype is refused while the VirtualCluster lists the allowed ones, and
//! without the list is synced to its host namespace and sizes its VM there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::VirtualCluster;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("instancetype.kubevirt.io", "v1beta1", kind),
        plural,
    )
}

fn object(kind: &str, name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "instancetype.kubevirt.io/v1beta1", "kind": kind,
        "metadata": {"name": name}, "spec": spec}))
    .unwrap()
}

fn sized_vm(name: &str, instancetype: &str) -> DynamicObject {
    sized_vm_of(name, "VirtualMachineClusterInstancetype", instancetype)
}

fn sized_vm_of(name: &str, kind: &str, instancetype: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"runStrategy": "Always",
            "instancetype": {"kind": kind, "name": instancetype},
            "preference": {"kind": "VirtualMachineClusterPreference", "name": "virtio"},
            "template": {"metadata": {"labels": {"vm": name}}, "spec": {
                "domain": {"devices": {"disks": [{"name": "root", "disk": {}}]}},
                "volumes": [{"name": "root",
                    "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}]}}}}))
    .unwrap()
}

fn names(list: &str) -> Vec<String> {
    let mut v: Vec<String> = list.lines().map(str::to_string).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_see_the_allowed_host_instancetypes_and_make_vms_from_them() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let tc = t.client();
    let hc = env.host_client();
    let it = resource(
        "VirtualMachineClusterInstancetype",
        "virtualmachineclusterinstancetypes",
    );
    let pref = resource(
        "VirtualMachineClusterPreference",
        "virtualmachineclusterpreferences",
    );
    // the host's offer, made through the host's real virt-api webhooks
    let host_its: Api<DynamicObject> = Api::all_with(hc.clone(), &it);
    for (name, memory) in [("tiny", "128Mi"), ("huge", "64Gi")] {
        host_its
            .create(
                &PostParams::default(),
                &object(
                    "VirtualMachineClusterInstancetype",
                    name,
                    json!({"cpu": {"guest": 1}, "memory": {"guest": memory}}),
                ),
            )
            .await
            .unwrap();
    }
    Api::<DynamicObject>::all_with(hc.clone(), &pref)
        .create(
            &PostParams::default(),
            &object(
                "VirtualMachineClusterPreference",
                "virtio",
                json!({"devices": {"preferredDiskBus": "virtio"}}),
            ),
        )
        .await
        .unwrap();
    Api::<VirtualCluster>::namespaced(hc.clone(), VC_NAMESPACE)
        .patch(
            &t.vc.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"vmPolicy": {"allowedInstancetypes": ["tiny"]}}})),
        )
        .await
        .unwrap();

    // kubectl in the tenant lists what it may use
    let kc = t.kubeconfig();
    eventually(
        "the allowed instancetype listed in the tenant",
        WAIT,
        || async {
            let (ok, out, _) = testenv::testing::kubectl_output(
                kc,
                &["get", "virtualmachineclusterinstancetypes", "-o", "name"],
                "",
                Duration::from_secs(20),
            );
            ok && names(&out) == ["virtualmachineclusterinstancetype.instancetype.kubevirt.io/tiny"]
        },
    )
    .await;
    let prefs = kubectl(
        kc,
        &["get", "virtualmachineclusterpreferences", "-o", "name"],
    );
    assert_eq!(
        names(&prefs),
        ["virtualmachineclusterpreference.instancetype.kubevirt.io/virtio"]
    );
    let tenant_its: Api<DynamicObject> = Api::all_with(tc.clone(), &it);
    let shown = get(&tenant_its, "tiny").await.unwrap();
    assert_eq!(shown.data["spec"]["memory"]["guest"], "128Mi");

    // a VM from it: sized by the host's virt-controller
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    vms.create(&PostParams::default(), &sized_vm("sized", "tiny"))
        .await
        .unwrap();
    let vmis: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vmi_resource());
    let vmi = wait_for("the tenant's instance Running", WAIT, || async {
        get(&vmis, "sized")
            .await
            .filter(|v| v.data["status"]["phase"] == "Running")
    })
    .await;
    assert_eq!(
        vmi.data["spec"]["domain"]["memory"]["guest"], "128Mi",
        "the instancetype's memory"
    );
    assert_eq!(
        vmi.data["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"],
        "virtio"
    );
    let host_vms = env.host_api(&vm_resource(), &t.host_ns("default"));
    let (tenant_vm, host_vm) = wait_for("the revisions shown in the tenant VM", WAIT, || async {
        let tv = get(&vms, "sized").await?;
        let hv = get(&host_vms, "sized").await?;
        let revision = &hv.data["status"]["instancetypeRef"]["controllerRevisionRef"]["name"];
        (revision.is_string()
            && tv.data["status"]["instancetypeRef"] == hv.data["status"]["instancetypeRef"]
            && tv.data["status"]["preferenceRef"] == hv.data["status"]["preferenceRef"])
            .then_some((tv, hv))
    })
    .await;
    // the revision the status names is shown in the tenant, owned by the tenant's VM, with the
    // sizes the host's virt-controller recorded
    let revisions: Api<DynamicObject> = Api::namespaced_with(
        tc.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apps", "v1", "ControllerRevision"),
            "controllerrevisions",
        ),
    );
    let revision = tenant_vm.data["status"]["instancetypeRef"]["controllerRevisionRef"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let shown_revision = wait_for("the VM's revision shown in the tenant", WAIT, || {
        get(&revisions, &revision)
    })
    .await;
    let owner = &shown_revision.metadata.owner_references.clone().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("VirtualMachine", tenant_vm.metadata.uid.as_ref())
    );
    assert_eq!(
        shown_revision.data["data"]["spec"]["memory"]["guest"],
        "128Mi"
    );

    // KubeVirt v1.8 keeps the revisions in the status; both specs still name just the instancetype
    let named = json!({"kind": "VirtualMachineClusterInstancetype", "name": "tiny"});
    assert_eq!(tenant_vm.data["spec"]["instancetype"], named);
    assert_eq!(host_vm.data["spec"]["instancetype"], named);

    // an instancetype the tenant may not use is refused, naming the field
    vms.create(&PostParams::default(), &sized_vm("too-big", "huge"))
        .await
        .unwrap();
    let event = sync_refused(&tc, "default", "too-big", WAIT).await;
    let message = event.message.unwrap_or_default();
    assert!(message.contains("allowedInstancetypes"), "{message}");

    // the tenant's own instancetype: synced to its host namespace, sizing its VM there
    let own = resource("VirtualMachineInstancetype", "virtualmachineinstancetypes");
    Api::<DynamicObject>::namespaced_with(tc.clone(), "default", &own)
        .create(
            &PostParams::default(),
            &object(
                "VirtualMachineInstancetype",
                "mine",
                json!({"cpu": {"guest": 1}, "memory": {"guest": "192Mi"}}),
            ),
        )
        .await
        .unwrap();
    vms.create(
        &PostParams::default(),
        &sized_vm_of("own-sized", "VirtualMachineInstancetype", "mine"),
    )
    .await
    .unwrap();
    // while the VirtualCluster lists the instancetypes its VMs may use, the tenant's own are
    // refused (they would size VMs past the list); without the list they are the tenant's
    let event = sync_refused(&tc, "default", "own-sized", WAIT).await;
    let message = event.message.unwrap_or_default();
    assert!(message.contains("allowedInstancetypes"), "{message}");
    Api::<VirtualCluster>::namespaced(hc.clone(), VC_NAMESPACE)
        .patch(
            &t.vc.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"vmPolicy": {"allowedInstancetypes": null}}})),
        )
        .await
        .unwrap();
    let vmi = wait_for("the own-sized instance Running", WAIT, || async {
        get(&vmis, "own-sized")
            .await
            .filter(|v| v.data["status"]["phase"] == "Running")
    })
    .await;
    assert_eq!(vmi.data["spec"]["domain"]["memory"]["guest"], "192Mi");
    let host_own = env.host_api(&own, &t.host_ns("default"));
    assert!(get(&host_own, "mine").await.is_some());
    // every host instancetype is shown now
    eventually("every host instancetype listed", WAIT, || async {
        get(&tenant_its, "huge").await.is_some()
    })
    .await;

    // a shown copy the tenant deletes comes back
    tenant_its
        .delete("tiny", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the instancetype shown again", WAIT, || async {
        get(&tenant_its, "tiny")
            .await
            .filter(|o| o.metadata.uid != shown.metadata.uid)
    })
    .await;
}
