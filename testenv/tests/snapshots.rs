//! The simulated CSI snapshots (`testenv::snapshots`): on a plain control plane, a claim of the
//! StorageClass `simulated` is bound by the simulated provisioner, a VolumeSnapshot of it
//! becomes ready with its content, and the content follows the snapshot out. With KubeVirt's
//! real virt-controller (Snapshot gate), a VirtualMachineSnapshot of a stopped VM with such a
//! claim becomes ready through a VolumeSnapshot KubeVirt made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};
use testenv::snapshots::{self, SimulatedSnapshots};
use testenv::testing::{eventually, wait_for};
use testenv::{ControlPlane, Options};

const WAIT: Duration = Duration::from_secs(90);

async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap()
}

fn claim(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"storageClassName": snapshots::STORAGE_CLASS, "accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "2Gi"}}},
    })
}

async fn bound(api: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    wait_for(&format!("claim {name} Bound"), WAIT, || async {
        api.get_opt(name)
            .await
            .unwrap()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_snapshot_of_a_claim_is_ready_with_its_content() {
    let cp = ControlPlane::start(Options::new("snapshots").with_controller_manager())
        .await
        .unwrap();
    let client = cp.client().unwrap();
    let _snaps = SimulatedSnapshots::install(client.clone(), WAIT)
        .await
        .unwrap();
    let ns = "snap";
    create(
        &Api::<Namespace>::all(client.clone()),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    create(&claims, claim(ns, "disk")).await;
    let disk = bound(&claims, "disk").await;
    let volume = disk.spec.unwrap().volume_name.unwrap();

    let vs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &snapshots::resource("VolumeSnapshot"));
    let made = create(
        &vs,
        json!({"apiVersion": "snapshot.storage.k8s.io/v1", "kind": "VolumeSnapshot",
               "metadata": {"name": "s1", "namespace": ns},
               "spec": {"source": {"persistentVolumeClaimName": "disk"}}}),
    )
    .await;
    let ready = wait_for("the VolumeSnapshot ready", WAIT, || async {
        vs.get_opt("s1")
            .await
            .unwrap()
            .filter(|s| s.data["status"]["readyToUse"] == true)
    })
    .await;
    let uid = made.metadata.uid.unwrap();
    let content_name = format!("snapcontent-{uid}");
    assert_eq!(
        ready.data["status"]["boundVolumeSnapshotContentName"],
        content_name.as_str()
    );
    assert_eq!(ready.data["status"]["restoreSize"], "2Gi");
    assert!(ready.data["status"]["creationTime"].is_string());

    let contents: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &snapshots::resource("VolumeSnapshotContent"),
    );
    let content = contents.get(&content_name).await.unwrap();
    assert_eq!(content.data["spec"]["driver"], snapshots::DRIVER);
    assert_eq!(content.data["spec"]["deletionPolicy"], "Delete");
    assert_eq!(
        content.data["spec"]["volumeSnapshotClassName"],
        snapshots::SNAPSHOT_CLASS
    );
    assert_eq!(
        content.data["spec"]["source"]["volumeHandle"],
        volume.as_str()
    );
    assert_eq!(
        content.data["spec"]["volumeSnapshotRef"]["uid"],
        uid.as_str()
    );
    assert_eq!(content.data["status"]["readyToUse"], true);
    assert_eq!(content.data["status"]["restoreSize"], 2u64 << 30);
    assert!(content.data["status"]["creationTime"].is_i64());

    // a claim restored from the snapshot binds too
    let mut restored = claim(ns, "restored");
    restored["spec"]["dataSource"] = json!({"apiGroup": "snapshot.storage.k8s.io",
                                            "kind": "VolumeSnapshot", "name": "s1"});
    create(&claims, restored).await;
    bound(&claims, "restored").await;

    // the content follows its snapshot out (deletionPolicy Delete)
    vs.delete("s1", &DeleteParams::default()).await.unwrap();
    eventually("the content deleted with its snapshot", WAIT, || async {
        contents.get_opt(&content_name).await.unwrap().is_none()
    })
    .await;
}

fn kubevirt_ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

/// KubeVirt's real snapshot controller takes a VolumeSnapshot of the VM's claim through the
/// simulated VolumeSnapshotClass. Prints what KubeVirt made.
#[tokio::test(flavor = "multi_thread")]
async fn kubevirt_snapshots_a_vm_claim_through_the_simulated_class() {
    use testenv::kubevirt::{KubeVirt, KubeVirtOptions};
    let cp = ControlPlane::start(Options::new("kv-snapshots").with_controller_manager())
        .await
        .unwrap();
    let _kv = KubeVirt::start(
        &cp,
        KubeVirtOptions::new().with_feature_gates(&["Snapshot"]),
    )
    .await
    .unwrap();
    let client = cp.client().unwrap();
    let ns = "default";
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    create(&claims, claim(ns, "data")).await;
    bound(&claims, "data").await;
    let vms: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kubevirt_ar("kubevirt.io", "v1", "VirtualMachine", "virtualmachines"),
    );
    create(
        &vms,
        json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": ns},
            "spec": {"runStrategy": "Halted", "template": {"spec": {
                "domain": {"devices": {"disks": [{"name": "data", "disk": {"bus": "virtio"}}]},
                           "memory": {"guest": "128Mi"}},
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            }}},
        }),
    )
    .await;
    let snaps: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kubevirt_ar(
            "snapshot.kubevirt.io",
            "v1beta1",
            "VirtualMachineSnapshot",
            "virtualmachinesnapshots",
        ),
    );
    create(
        &snaps,
        json!({"apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
               "metadata": {"name": "snap1", "namespace": ns},
               "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}}}),
    )
    .await;
    let ready = wait_for("the VirtualMachineSnapshot ready", WAIT, || async {
        snaps
            .get_opt("snap1")
            .await
            .unwrap()
            .filter(|s| s.data["status"]["readyToUse"] == true)
    })
    .await;
    let vs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &snapshots::resource("VolumeSnapshot"));
    let made = vs.list(&Default::default()).await.unwrap().items;
    for s in &made {
        println!(
            "KubeVirt's VolumeSnapshot {}: labels {:?}, ownerReferences {}, spec {}, status {}",
            s.metadata.name.as_deref().unwrap_or_default(),
            s.metadata.labels,
            serde_json::to_string(&s.metadata.owner_references).unwrap(),
            s.data["spec"],
            s.data["status"],
        );
    }
    println!("VirtualMachineSnapshot status: {}", ready.data["status"]);
    assert_eq!(made.len(), 1, "one VolumeSnapshot for the VM's one claim");
    let s = &made[0];
    let uid = ready.metadata.uid.as_deref().unwrap();
    assert_eq!(
        s.metadata.name.as_deref(),
        Some(format!("vmsnapshot-{uid}-volume-data").as_str())
    );
    assert_eq!(
        s.data["spec"]["source"]["persistentVolumeClaimName"],
        "data"
    );
    assert_eq!(
        s.data["spec"]["volumeSnapshotClassName"],
        snapshots::SNAPSHOT_CLASS
    );
    assert_eq!(s.data["status"]["readyToUse"], true);
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "VirtualMachineSnapshotContent");
}
