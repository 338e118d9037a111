//! Snapshots and restores for tenants, with KubeVirt's real virt-api and virt-controller on the
//! host (Snapshot feature gate on through the `KubeVirt` CR; the node agent plays virt-handler):
//! a tenant snapshots a VM, changes it, restores it. The host's snapshot controller makes the
//! snapshot content (shown read-only in the tenant), the host's restore controller restores the
//! host VM, and the tenant's VM takes the restored spec up instead of the syncer reverting it.
//! The first VM's only disk is a containerDisk, which KubeVirt does not snapshot (the content
//! holds the VM's spec and no volume backups); the second has a claim of testenv's
//! snapshot-capable class, snapshotted through the **simulated** CSI snapshotter
//! (`testenv::snapshots`: external-snapshotter's real CRDs, a VolumeSnapshot ready at once,
//! nothing copied) and restored into a claim made from the VolumeSnapshot. The VMs are stopped,
//! so the snapshots are offline (no guest freeze). A third test holds a snapshot to the virtual
//! cluster's `spec.vmPolicy.allowedVolumeSnapshotClasses`.

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

/// A host with KubeVirt's Snapshot gate and one tenant syncing `VirtualMachineSnapshot`, once
/// the tenant serves these CRDs.
async fn snapshot_env(tenant_controllers: bool, crds: &[&str]) -> Env {
    let env = Env::start_with_kubevirt(
        1,
        tenant_controllers,
        KubeVirtOptions::new().with_feature_gates(&["Snapshot"]),
    )
    .await;
    let t = &env.tenants[0];
    let kinds = default_kinds_and(&["VirtualMachineSnapshot"]);
    patch_vc_spec(
        &env.host_client(),
        &t.vc.name,
        json!({"kubevirt": {"syncKinds": kinds}}),
    )
    .await;
    for crd in crds {
        wait_crd(&t.client(), crd).await;
    }
    env
}

/// The tenant's `snapshot.kubevirt.io` objects of a kind in `default`.
fn snapshot_api(tc: &kube::Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    Api::namespaced_with(tc.clone(), "default", &snapshot_resource(kind, plural))
}

/// Snapshots vm1 in the tenant as `name`: the tenant's snapshots, and this one once ready there.
async fn snapshot_ready(tc: &kube::Client, name: &str) -> (Api<DynamicObject>, DynamicObject) {
    let snaps = snapshot_api(tc, "VirtualMachineSnapshot", "virtualmachinesnapshots");
    let snap: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}}}))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    let ready = wait_for("the snapshot ready in the tenant", WAIT, || async {
        get(&snaps, name)
            .await
            .filter(|s| s.data["status"]["readyToUse"] == true)
    })
    .await;
    (snaps, ready)
}

/// Restores vm1 from `snapshot` in the tenant as `back`: the restore once complete there.
async fn restore_complete(tc: &kube::Client, snapshot: &str) -> DynamicObject {
    let restores = snapshot_api(tc, "VirtualMachineRestore", "virtualmachinerestores");
    let restore: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineRestore",
        "metadata": {"name": "back", "namespace": "default"},
        "spec": {"target": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"},
                 "virtualMachineSnapshotName": snapshot}}))
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
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_snapshots_changes_and_restores_a_vm() {
    let env = snapshot_env(
        false,
        &[
            "virtualmachinesnapshots.snapshot.kubevirt.io",
            "virtualmachinerestores.snapshot.kubevirt.io",
            "virtualmachinesnapshotcontents.snapshot.kubevirt.io",
        ],
    )
    .await;
    let t = &env.tenants[0];
    let tc = t.client();

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
    let (_, ready) = snapshot_ready(&tc, "before").await;
    let content_name = ready.data["status"]["virtualMachineSnapshotContentName"]
        .as_str()
        .expect("the snapshot names its content")
        .to_string();
    let contents = snapshot_api(
        &tc,
        "VirtualMachineSnapshotContent",
        "virtualmachinesnapshotcontents",
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
    restore_complete(&tc, "before").await;
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

fn volume_snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// A claim `data` of the host's snapshot-capable class (testenv's simulated `simulated`) and a
/// stopped VM vm1 using it, in the first tenant's `default`, once the claim is bound on the host.
async fn vm_with_claim(env: &Env) {
    let t = &env.tenants[0];
    let tc = t.client();
    let claim = json!({"metadata": {"name": "data", "namespace": "default"}, "spec": {
        "storageClassName": testenv::snapshots::STORAGE_CLASS,
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(tc.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(claim).unwrap(),
        )
        .await
        .unwrap();
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    let mut vm = vm_manifest("vm1", "default", json!({}));
    vm["spec"]["runStrategy"] = json!("Halted");
    vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "data", "disk": {"bus": "virtio"}}));
    vm["spec"]["template"]["spec"]["volumes"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "data", "persistentVolumeClaim": {"claimName": "data"}}));
    vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
        .await
        .unwrap();
    let host_claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(env.host_client(), &t.host_ns("default"));
    wait_for("the claim bound on the host", WAIT, || async {
        host_claims
            .get_opt("data")
            .await
            .ok()
            .flatten()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
    })
    .await;
}

/// A VM with a claim: the host's KubeVirt snapshots the claim through the host's CSI snapshot
/// class (testenv's simulated snapshotter: its `simulated` StorageClass and
/// `simulated-snapshots` VolumeSnapshotClass), and the VolumeSnapshot it makes is shown
/// read-only in the tenant with the snapshot content; a tenant's delete of that mirror never
/// reaches the host's.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_snapshot_of_a_claim_shows_the_hosts_volume_snapshot() {
    let env = snapshot_env(
        true,
        &[
            "virtualmachinesnapshots.snapshot.kubevirt.io",
            "virtualmachinesnapshotcontents.snapshot.kubevirt.io",
            "volumesnapshots.snapshot.storage.k8s.io",
        ],
    )
    .await;
    let t = &env.tenants[0];
    let tc = t.client();

    // a claim of the host's snapshot-capable class, and a stopped VM using it
    vm_with_claim(&env).await;
    let host_ns = t.host_ns("default");
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());

    // the snapshot: the host's KubeVirt snapshots the claim
    let (snaps, ready) = snapshot_ready(&tc, "with-data").await;
    assert_eq!(
        ready.data["status"]["snapshotVolumes"]["includedVolumes"],
        json!(["data"]),
        "the claim is in the snapshot: {}",
        ready.data["status"]
    );

    // the host's VolumeSnapshot of the claim, shown read-only in the tenant
    let host_volume_snaps = env.host_api(&volume_snapshot_resource(), &host_ns);
    let host_list = host_volume_snaps.list(&Default::default()).await.unwrap();
    assert_eq!(host_list.items.len(), 1, "one VolumeSnapshot on the host");
    let name = host_list.items[0].metadata.name.clone().unwrap();
    let volume_snaps: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "default", &volume_snapshot_resource());
    let shown = wait_for("the VolumeSnapshot shown in the tenant", WAIT, || async {
        get(&volume_snaps, &name)
            .await
            .filter(|s| s.data["status"]["readyToUse"] == true)
    })
    .await;
    assert_eq!(
        shown.data["spec"]["source"]["persistentVolumeClaimName"],
        "data"
    );
    assert!(
        shown
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key(kvtenant_api::labels::MIRROR_OF),
        "a read-only mirror"
    );
    let content_name = ready.data["status"]["virtualMachineSnapshotContentName"]
        .as_str()
        .unwrap()
        .to_string();
    let owners = shown.metadata.owner_references.clone().unwrap_or_default();
    assert!(
        owners
            .iter()
            .any(|o| o.kind == "VirtualMachineSnapshotContent" && o.name == content_name),
        "owned by the tenant's snapshot content: {owners:?}"
    );

    // a tenant's delete of the mirror never reaches the host's
    volume_snaps
        .delete(&name, &Default::default())
        .await
        .unwrap();
    wait_for("the VolumeSnapshot shown again", WAIT, || {
        get(&volume_snaps, &name)
    })
    .await;
    assert!(get(&host_volume_snaps, &name).await.is_some());
    let again = wait_for("the snapshot still ready", WAIT, || async {
        get(&snaps, "with-data")
            .await
            .filter(|s| s.data["status"]["readyToUse"] == true)
    })
    .await;
    assert_eq!(again.data["status"]["phase"], "Succeeded");

    // restore: the host's restore controller makes a claim from the VolumeSnapshot and points
    // the host VM at it; the tenant's VM takes that up
    let done = restore_complete(&tc, "with-data").await;
    let restored_claim = done.data["status"]["restores"][0]["persistentVolumeClaim"]
        .as_str()
        .expect("the restore names the claim it made")
        .to_string();
    assert_eq!(
        done.data["status"]["restores"][0]["volumeSnapshotName"],
        json!(name),
        "restored from the VolumeSnapshot shown"
    );
    let data_claim = |vm: &DynamicObject| {
        vm.data["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "data"))
            .map(|v| v["persistentVolumeClaim"]["claimName"].clone())
    };
    wait_for("the tenant VM on the restored claim", WAIT, || async {
        get(&vms, "vm1")
            .await
            .filter(|v| data_claim(v) == Some(json!(restored_claim)))
    })
    .await;
    // the claim the host made from the VolumeSnapshot, shown read-only in the tenant
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(tc.clone(), "default");
    let shown_claim = wait_for("the restored claim shown in the tenant", WAIT, || async {
        claims.get_opt(&restored_claim).await.ok().flatten()
    })
    .await;
    assert!(
        shown_claim
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(kvtenant_api::labels::MIRROR_OF)
    );
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    let host_vm = get(&host_vms, "vm1").await.unwrap();
    assert_eq!(data_claim(&host_vm), Some(json!(restored_claim)));
}

/// `spec.vmPolicy.allowedVolumeSnapshotClasses`: the VM's claim is of the StorageClass
/// `simulated`, for which the host's KubeVirt takes the VolumeSnapshotClass
/// `simulated-snapshots` (the one of the provisioner's driver; testenv's simulated CSI
/// snapshots). With the list naming another class the syncer refuses the tenant's snapshot,
/// naming the field and the class, and nothing reaches the host; once the virtual cluster
/// allows `simulated-snapshots`, the snapshot syncs and the real virt-controller makes it ready.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_whose_claim_resolves_to_a_class_not_allowed_is_refused_until_allowed() {
    let env = snapshot_env(
        true,
        &[
            "virtualmachinesnapshots.snapshot.kubevirt.io",
            "virtualmachinesnapshotcontents.snapshot.kubevirt.io",
        ],
    )
    .await;
    let t = &env.tenants[0];
    let tc = t.client();
    let hc = env.host_client();
    patch_vc_spec(
        &hc,
        &t.vc.name,
        json!({"vmPolicy": {"allowedVolumeSnapshotClasses": ["gold-snapshots"]}}),
    )
    .await;
    vm_with_claim(&env).await;

    let snaps = snapshot_api(&tc, "VirtualMachineSnapshot", "virtualmachinesnapshots");
    let snap: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "with-data", "namespace": "default"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}}}))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    let event = sync_refused(&tc, "default", "with-data", WAIT).await;
    let note = event.message.unwrap_or_default();
    assert!(
        note.contains("spec.vmPolicy.allowedVolumeSnapshotClasses")
            && note.contains(testenv::snapshots::SNAPSHOT_CLASS)
            && note.contains("gold-snapshots"),
        "the refusal names the field, the class resolved and the classes allowed: {note}"
    );
    // refused before any host copy: the host never had it
    let host_snaps = env.host_api(
        &snapshot_resource("VirtualMachineSnapshot", "virtualmachinesnapshots"),
        &t.host_ns("default"),
    );
    assert!(get(&host_snaps, "with-data").await.is_none());
    assert!(
        host_snaps
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no snapshot on the host"
    );

    // the virtual cluster allows the class: the snapshot syncs and becomes ready
    patch_vc_spec(
        &hc,
        &t.vc.name,
        json!({"vmPolicy": {"allowedVolumeSnapshotClasses": [testenv::snapshots::SNAPSHOT_CLASS]}}),
    )
    .await;
    let ready = wait_for("the snapshot ready in the tenant", WAIT, || async {
        get(&snaps, "with-data")
            .await
            .filter(|s| s.data["status"]["readyToUse"] == true)
    })
    .await;
    assert_eq!(
        ready.data["status"]["snapshotVolumes"]["includedVolumes"],
        json!(["data"]),
        "the claim is in the snapshot: {}",
        ready.data["status"]
    );
    assert!(get(&host_snaps, "with-data").await.is_some());
}
