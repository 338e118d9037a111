//! A VM snapshot exported (see `kubevirt_exports.rs`).

use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;
use testenv::kubevirt::exporter::SimulatedExporter;

use crate::common::*;
use crate::{DISK, download, export_resource};

const WAIT: Duration = Duration::from_secs(90);

fn volume_snapshot_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("snapshot.storage.k8s.io", "v1", "VolumeSnapshot"),
        "volumesnapshots",
    )
}

/// A VM snapshot exported: the tenant snapshots a stopped VM with a claim of the host's
/// snapshot-capable class (testenv's **simulated** CSI snapshotter and provisioner), then
/// exports the snapshot with the real virtctl. The host's export controller restores the claim
/// from the host's VolumeSnapshot into a claim of its own (`<export>-<claim>`, owned by the
/// export) and serves it; that claim and the exporter are shown read-only in the tenant and
/// stay on the host, and the download runs as for a claim.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_exports_a_vm_snapshot_and_downloads_it_with_virtctl() {
    let (env, _proxy) = crate::export_env(
        &["Snapshot", "VMExport"],
        &["VirtualMachineSnapshot", "VirtualMachineExport"],
        &[
            "virtualmachineexports.export.kubevirt.io",
            "virtualmachinesnapshots.snapshot.kubevirt.io",
            "volumesnapshots.snapshot.storage.k8s.io",
        ],
    )
    .await;
    let t = &env.tenants[0];
    let (tc, hc) = (t.client(), env.host_client());

    // a stopped VM with a claim of the host's snapshot-capable class
    let claim = json!({"metadata": {"name": "data", "namespace": "default"}, "spec": {
        "storageClassName": testenv::snapshots::STORAGE_CLASS,
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    Api::<PersistentVolumeClaim>::namespaced(tc.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(claim).unwrap(),
        )
        .await
        .unwrap();
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
    let kc = t.kubeconfig();
    testenv::testing::kubectl_apply(kc, &vm).unwrap();
    let host_ns = t.host_ns("default");
    let host_pvcs: Api<PersistentVolumeClaim> = Api::namespaced(hc.clone(), &host_ns);
    let bound = |c: &PersistentVolumeClaim| {
        c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
    };
    wait_for("the claim bound on the host", WAIT, || async {
        host_pvcs.get_opt("data").await.ok().flatten().filter(bound)
    })
    .await;

    // the snapshot, ready in the tenant
    let snaps: Api<DynamicObject> = Api::namespaced_with(
        tc.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("snapshot.kubevirt.io", "v1beta1", "VirtualMachineSnapshot"),
            "virtualmachinesnapshots",
        ),
    );
    let snap: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "snapshot.kubevirt.io/v1beta1", "kind": "VirtualMachineSnapshot",
        "metadata": {"name": "snap", "namespace": "default"},
        "spec": {"source": {"apiGroup": "kubevirt.io", "kind": "VirtualMachine", "name": "vm1"}}}))
    .unwrap();
    snaps.create(&PostParams::default(), &snap).await.unwrap();
    wait_for("the snapshot ready in the tenant", WAIT, || async {
        get(&snaps, "snap")
            .await
            .filter(|s| s.data["status"]["readyToUse"] == true)
    })
    .await;
    let host_volume_snaps = env.host_api(&volume_snapshot_resource(), &host_ns);
    assert_eq!(
        host_volume_snaps
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        1,
        "the claim snapshotted on the host"
    );

    // the export of the snapshot, with the real virtctl
    virtctl(
        &env,
        kc,
        &[
            "vmexport",
            "create",
            "snapexp",
            "--snapshot=snap",
            "-n",
            "default",
        ],
    );
    let host_exports = env.host_api(&export_resource(), &host_ns);
    let exports: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "default", &export_resource());
    let ready = wait_for(
        "the snapshot's export Ready in the tenant",
        WAIT,
        || async {
            get(&exports, "snapexp")
                .await
                .filter(|e| e.data["status"]["phase"] == "Ready")
        },
    )
    .await;
    let internal = &ready.data["status"]["links"]["internal"];
    assert_eq!(internal["volumes"][0]["name"], "data", "{internal}");
    assert!(
        internal
            .to_string()
            .contains("virt-export-snapexp.default.svc")
            && !internal.to_string().contains(&host_ns),
        "internal links name the tenant namespace: {internal}"
    );
    assert_eq!(ready.data["status"]["virtualMachineName"], "vm1");
    let host_export = get(&host_exports, "snapexp").await.expect("on the host");
    assert_eq!(host_export.data["spec"]["source"]["name"], "snap");

    // the claim the export controller restored from the VolumeSnapshot: the host's, bound on
    // the host, shown read-only in the tenant and owned by the tenant's export
    let restored = host_pvcs
        .get("snapexp-data")
        .await
        .expect("the export controller's claim on the host");
    assert!(bound(&restored) || restored.spec.as_ref().unwrap().volume_name.is_some());
    assert_eq!(
        restored
            .spec
            .as_ref()
            .unwrap()
            .data_source
            .as_ref()
            .unwrap()
            .kind,
        "VolumeSnapshot"
    );
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(tc.clone(), "default");
    let shown = wait_for("the restored claim shown in the tenant", WAIT, || async {
        claims.get_opt("snapexp-data").await.ok().flatten()
    })
    .await;
    let mirror_of = |a: Option<&std::collections::BTreeMap<String, String>>| {
        a.is_some_and(|a| a.contains_key(kvtenant_api::labels::MIRROR_OF))
    };
    assert!(mirror_of(shown.metadata.annotations.as_ref()));
    let tenant_export_uid = ready.metadata.uid.clone().unwrap();
    assert!(
        shown
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .any(|o| o.kind == "VirtualMachineExport" && o.uid == tenant_export_uid),
        "owned by the tenant's export"
    );
    // the exporter shown read-only, kept on the host
    let pods: Api<Pod> = Api::namespaced(tc.clone(), "default");
    let pod = wait_for("the exporter pod in the tenant", WAIT, || async {
        pods.get_opt("virt-export-snapexp").await.ok().flatten()
    })
    .await;
    assert!(mirror_of(pod.metadata.annotations.as_ref()));
    let services: Api<Service> = Api::namespaced(tc.clone(), "default");
    let svc = wait_for("the exporter Service in the tenant", WAIT, || async {
        services.get_opt("virt-export-snapexp").await.ok().flatten()
    })
    .await;
    assert!(mirror_of(svc.metadata.annotations.as_ref()));

    // the download of the snapshot's volume, through the tenant
    let token = |s: Secret| String::from_utf8(s.data.unwrap()["token"].0.clone()).unwrap();
    let tenant_token = token(
        Api::<Secret>::namespaced(tc.clone(), "default")
            .get("secret-snapexp")
            .await
            .unwrap(),
    );
    let exporter = SimulatedExporter::start(
        env.kv.layout().port_forward_target,
        tenant_token,
        DISK.to_vec(),
    )
    .await
    .unwrap();
    let downloaded = download(&env, &tc, kc, "snapexp", "data").await;
    assert_eq!(downloaded, DISK);
    // the volume is named after the source claim; the exporter serves the restored claim
    let asked = exporter.asked();
    assert!(
        asked
            .iter()
            .any(|p| p.ends_with("/volumes/snapexp-data/disk.img.gz")),
        "{asked:?}"
    );
    // what the host made is still there: not taken for orphaned copies
    assert!(host_pvcs.get_opt("snapexp-data").await.unwrap().is_some());
    assert!(
        Api::<Pod>::namespaced(hc.clone(), &host_ns)
            .get_opt("virt-export-snapexp")
            .await
            .unwrap()
            .is_some()
    );

    // the export's delete ends the exporter and the restored claim in the tenant
    virtctl(
        &env,
        kc,
        &["vmexport", "delete", "snapexp", "-n", "default"],
    );
    eventually("the export gone from the host", WAIT, || async {
        get(&host_exports, "snapexp").await.is_none()
    })
    .await;
    eventually(
        "the exporter and its claim gone from the tenant",
        WAIT,
        || async {
            pods.get_opt("virt-export-snapexp").await.unwrap().is_none()
                && claims.get_opt("snapexp-data").await.unwrap().is_none()
        },
    )
    .await;
}
