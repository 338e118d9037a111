//! Snapshots and restores for tenants, with KubeVirt's real virt-api and virt-controller on the
//! host (Snapshot feature gate on through the `KubeVirt` CR; the node agent plays virt-handler):
//! a tenant snapshots a VM, changes it, restores it. The host's snapshot controller makes the
//! snapshot content (shown read-only in the tenant), the host's restore controller restores the
//! host VM, and the tenant's VM takes the restored spec up instead of the syncer reverting it.
//! No CSI driver runs here: the VM's only disk is a containerDisk, which KubeVirt does not
//! snapshot (the content holds the VM's spec and no volume backups); the VM is stopped, so the
//! snapshot is offline (no guest freeze).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use testenv::kubevirt::KubeVirtOptions;

const WAIT: Duration = Duration::from_secs(90);

fn snapshot_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.kubevirt.io", "v1beta1", kind),
        plural,
    )
}

fn memory(vm: &DynamicObject) -> Value {
    vm.data["spec"]["template"]["spec"]["domain"]["memory"]["guest"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_snapshots_changes_and_restores_a_vm() {
    let env = Env::start_with_kubevirt(
        1,
        false,
        KubeVirtOptions::new().with_feature_gates(&["Snapshot"]),
    )
    .await;
    let t = &env.tenants[0];
    let tc = t.client();
    let hc = env.host_client();
    let kinds = default_kinds_and(&["VirtualMachineSnapshot"]);
    patch_vc_spec(&hc, &t.vc.name, json!({"kubevirt": {"syncKinds": kinds}})).await;
    for crd in [
        "virtualmachinesnapshots.snapshot.kubevirt.io",
        "virtualmachinerestores.snapshot.kubevirt.io",
        "virtualmachinesnapshotcontents.snapshot.kubevirt.io",
    ] {
        wait_crd(&tc, crd).await;
    }

    // a stopped VM with 128Mi
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    let mut vm = vm_manifest("vm1", "default", json!({}));
    vm["spec"]["runStrategy"] = json!("Halted");
    vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
        .await
        .unwrap();
    let host_ns = t.host_ns("default");
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    wait_for("the VM on the host", WAIT, || get(&host_vms, "vm1")).await;

    // snapshot: made on the host, ready in the tenant, its content shown read-only
    let snaps: Api<DynamicObject> = Api::namespaced_with(
        tc.clone(),
        "default",
        &snapshot_resource("VirtualMachineSnapshot", "virtualmachinesnapshots"),
    );
    let snap: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "before", "namespace": "default"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}}}))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    let ready = wait_for("the snapshot ready in the tenant", WAIT, || async {
        get(&snaps, "before")
            .await
            .filter(|s| s.data["status"]["readyToUse"] == true)
    })
    .await;
    let content_name = ready.data["status"]["virtualMachineSnapshotContentName"]
        .as_str()
        .expect("the snapshot names its content")
        .to_string();
    let contents: Api<DynamicObject> = Api::namespaced_with(
        tc.clone(),
        "default",
        &snapshot_resource(
            "VirtualMachineSnapshotContent",
            "virtualmachinesnapshotcontents",
        ),
    );
    let content = wait_for("the snapshot content shown in the tenant", WAIT, || {
        get(&contents, &content_name)
    })
    .await;
    assert_eq!(
        content.data["spec"]["source"]["virtualMachine"]["spec"]["template"]["spec"]["domain"]["memory"]
            ["guest"],
        "128Mi"
    );
    assert!(
        content
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(kvtenant_api::labels::MIRROR_OF),
        "a read-only mirror"
    );

    // the tenant changes its VM
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"template": {"spec": {"domain": {"memory": {"guest": "256Mi"}}}}}}),
        ),
    )
    .await
    .unwrap();
    wait_for("the change on the host", WAIT, || async {
        get(&host_vms, "vm1").await.filter(|v| memory(v) == "256Mi")
    })
    .await;

    // restore: carried out on the host, taken up by the tenant's VM
    let restores: Api<DynamicObject> = Api::namespaced_with(
        tc.clone(),
        "default",
        &snapshot_resource("VirtualMachineRestore", "virtualmachinerestores"),
    );
    let restore: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
        "metadata": {"name": "back", "namespace": "default"},
        "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"},
                 "virtualMachineSnapshotName": "before"}}))
    .unwrap();
    restores
        .create(&PostParams::default(), &restore)
        .await
        .unwrap();
    wait_for("the restore complete in the tenant", WAIT, || async {
        get(&restores, "back")
            .await
            .filter(|r| r.data["status"]["complete"] == true)
    })
    .await;
    let restored = wait_for("the tenant VM restored", WAIT, || async {
        get(&vms, "vm1").await.filter(|v| memory(v) == "128Mi")
    })
    .await;
    assert!(
        restored
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(kvtenant_api::labels::LAST_RESTORE_TAKEN_UP)
    );
    // the host VM stays restored: a later change of the tenant VM reaches the host with the
    // restored spec (the syncer writes the tenant's VM, which is the restored one now)
    vms.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"after-restore": "yes"}}})),
    )
    .await
    .unwrap();
    let host = wait_for("the tenant's later change on the host", WAIT, || async {
        get(&host_vms, "vm1").await.filter(|v| {
            v.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get("after-restore").is_some_and(|x| x == "yes"))
        })
    })
    .await;
    assert_eq!(memory(&host), "128Mi");
}
