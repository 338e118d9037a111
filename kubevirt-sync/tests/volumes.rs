//! PersistentVolumes bound to a tenant's claims are shown in the tenant, read-only. No CSI driver
//! or provisioner runs here: the test makes the host PersistentVolumes itself (hostPath, pinned
//! to a kwok node), pre-bound to the host copies of the tenant's claims, and the host's real
//! kube-controller-manager binds them. The tenant runs kube-controller-manager with all its
//! controllers (its PersistentVolume binder included, as a tenant with a control plane of its
//! own would), which accepts the mirror instead of fighting it. Real apiservers, real kubectl;
//! the pods using the claims run on kwok nodes (nothing executes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Event, PersistentVolume, PersistentVolumeClaim, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kvtenant_api::labels::HOST_VOLUME;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn apply(kubeconfig: &std::path::Path, manifest: &Value) {
    let path = std::env::temp_dir().join(format!(
        "kvtenant-volumes-{}-{}.json",
        std::process::id(),
        manifest["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::write(&path, manifest.to_string()).unwrap();
    kubectl(kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

fn claim(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"storageClassName": "manual", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}})
}

fn pod(name: &str, claim: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox",
            "volumeMounts": [{"name": "v", "mountPath": "/data"}]}],
            "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": claim}}]}})
}

/// A host volume the way a host admin or provisioner might make it, pre-bound to a host claim.
fn host_volume(name: &str, host_ns: &str, claim: &PersistentVolumeClaim) -> PersistentVolume {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {"storage.example/rack": "rack-r7"},
            "annotations": {"pv.kubernetes.io/provisioned-by": "nfs.example.com"}},
        "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
            "storageClassName": "manual", "persistentVolumeReclaimPolicy": "Retain",
            "mountOptions": ["nfsvers=4.2"],
            "hostPath": {"path": format!("/srv/host-volumes/{name}-secret-path")},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["kwok-node-1"]}]}]}},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": host_ns, "name": claim.metadata.name,
                "uid": claim.metadata.uid}}
    }))
    .unwrap()
}

async fn get_pv(api: &Api<PersistentVolume>, name: &str) -> Option<PersistentVolume> {
    api.get_opt(name).await.ok().flatten()
}

fn phase(pv: &PersistentVolume) -> Option<&str> {
    pv.status.as_ref()?.phase.as_deref()
}

/// The tenant's Warning Events of a PersistentVolume binder that fights a volume or claim.
async fn binder_fights(events: &Api<Event>) -> Vec<String> {
    const FIGHTS: &[&str] = &[
        "FailedBinding",
        "VolumeMismatch",
        "ClaimMisbound",
        "ClaimLost",
        "VolumeFailedDelete",
        "VolumeFailedRecycle",
    ];
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| FIGHTS.contains(&e.reason.as_deref().unwrap_or_default()))
        .map(|e| format!("{:?} {:?}", e.reason, e.message))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn host_volumes_bound_to_tenant_claims_are_shown_bound_read_only_and_go_with_them() {
    // every controller but node lifecycle (the tenant's Nodes have no kubelet of their own)
    let env = Env::start_with_tenant_controllers(1, &["*", "-node-lifecycle-controller"]).await;
    let t = &env.tenants[0];
    let kc = t.kubeconfig();
    let host_ns = t.host_ns("default");
    let tenant_claims: Api<PersistentVolumeClaim> = Api::namespaced(t.client(), "default");
    let tenant_pvs: Api<PersistentVolume> = Api::all(t.client());
    let host_claims: Api<PersistentVolumeClaim> = Api::namespaced(env.host_client(), &host_ns);
    let host_pvs: Api<PersistentVolume> = Api::all(env.host_client());
    let all_events: Api<Event> = Api::all(t.client());

    // the tenant's controllers make the namespace's default ServiceAccount a pod needs
    let accounts: Api<ServiceAccount> = Api::namespaced(t.client(), "default");
    wait_for("the default ServiceAccount", WAIT, || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;
    for (c, p) in [("data", "app"), ("scratch", "tmp")] {
        apply(kc, &claim(c));
        apply(kc, &pod(p, c));
    }
    // the host binds each host copy to a volume made for it
    for c in ["data", "scratch"] {
        let copy = wait_for(&format!("the host copy of claim {c}"), WAIT, || async {
            host_claims.get_opt(c).await.ok().flatten()
        })
        .await;
        host_pvs
            .create(
                &PostParams::default(),
                &host_volume(&format!("host-vol-{c}"), &host_ns, &copy),
            )
            .await
            .unwrap();
    }

    // shown: the tenant's binder completed the binding to the mirror (bind-completed on the
    // claim), the claim Bound to it, the mirror Bound to the tenant claim
    let claim = wait_for("the tenant claim bound by its own binder", WAIT, || async {
        let c = tenant_claims.get_opt("data").await.ok().flatten()?;
        let done = c
            .metadata
            .annotations
            .as_ref()?
            .get("pv.kubernetes.io/bind-completed")
            == Some(&"yes".to_string());
        let bound = c.status.as_ref()?.phase.as_deref() == Some("Bound");
        (done && bound).then_some(c)
    })
    .await;
    assert_eq!(
        claim.spec.as_ref().unwrap().volume_name.as_deref(),
        Some("host-vol-data")
    );
    let mirror = wait_for("the mirror Bound", WAIT, || async {
        let pv = get_pv(&tenant_pvs, "host-vol-data").await?;
        (phase(&pv) == Some("Bound")).then_some(pv)
    })
    .await;
    let spec = mirror.spec.clone().unwrap();
    let claim_ref = spec.claim_ref.clone().unwrap();
    assert_eq!(claim_ref.namespace.as_deref(), Some("default"));
    assert_eq!(claim_ref.name.as_deref(), Some("data"));
    assert_eq!(claim_ref.uid, claim.metadata.uid, "the tenant claim's uid");
    assert_eq!(spec.capacity.unwrap()["storage"].0, "2Gi");
    assert_eq!(spec.access_modes.unwrap(), ["ReadWriteOnce"]);
    assert_eq!(spec.storage_class_name.as_deref(), Some("manual"));
    assert_eq!(
        spec.persistent_volume_reclaim_policy.as_deref(),
        Some("Retain")
    );
    assert_eq!(
        mirror.metadata.labels.as_ref().unwrap()[HOST_VOLUME],
        "true"
    );
    let host_copy = host_claims.get("data").await.unwrap();
    let shown = serde_json::to_string(&mirror).unwrap();
    for leak in [
        "/srv/host-volumes",
        "kwok-node-1",
        host_ns.as_str(),
        host_copy.metadata.uid.as_deref().unwrap(),
        "rack-r7",
        "nfs.example.com",
        "nfsvers",
    ] {
        assert!(!shown.contains(leak), "{leak} shown in the tenant: {shown}");
    }
    // the binder accepted the pre-bound volume as it is: it did not bind it itself
    assert!(
        !mirror
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("pv.kubernetes.io/bound-by-controller"),
        "the tenant's binder rebound the volume"
    );
    // kubectl shows it as a user would
    let listed = kubectl(kc, &["get", "pv", "host-vol-data", "--no-headers"]);
    assert!(
        listed.contains("Bound") && listed.contains("default/data"),
        "{listed}"
    );

    // a tenant edit is reverted
    kubectl(
        kc,
        &[
            "patch",
            "pv",
            "host-vol-data",
            "--type=merge",
            "-p",
            r#"{"spec":{"persistentVolumeReclaimPolicy":"Delete"}}"#,
        ],
    );
    wait_for("the tenant's edit reverted", WAIT, || async {
        let pv = get_pv(&tenant_pvs, "host-vol-data").await?;
        (pv.spec?.persistent_volume_reclaim_policy.as_deref() == Some("Retain")).then_some(())
    })
    .await;
    // no fight: the binder and kvtenant agree (the claim and the mirror still Bound to each
    // other, the host volume untouched, no binder warnings)
    let c = tenant_claims.get("data").await.unwrap();
    assert_eq!(c.status.unwrap().phase.as_deref(), Some("Bound"));
    assert_eq!(
        c.spec.unwrap().volume_name.as_deref(),
        Some("host-vol-data")
    );
    let fights = binder_fights(&all_events).await;
    assert!(fights.is_empty(), "{fights:?}");

    // a tenant delete is followed by the mirror shown again; the host volume stays
    let old_uid = get_pv(&tenant_pvs, "host-vol-data")
        .await
        .unwrap()
        .metadata
        .uid;
    kubectl(kc, &["delete", "pv", "host-vol-data", "--wait=false"]);
    wait_for("the mirror shown again", WAIT, || async {
        let pv = get_pv(&tenant_pvs, "host-vol-data").await?;
        (pv.metadata.uid != old_uid
            && pv.metadata.deletion_timestamp.is_none()
            && phase(&pv) == Some("Bound"))
        .then_some(())
    })
    .await;
    let host_pv = host_pvs.get("host-vol-data").await.unwrap();
    assert_eq!(
        host_pv.spec.unwrap().claim_ref.unwrap().uid,
        host_copy.metadata.uid,
        "the host volume is still bound to the host claim"
    );
    wait_for("the claim Bound to the volume again", WAIT, || async {
        let c = tenant_claims.get_opt("data").await.ok().flatten()?;
        (c.status?.phase.as_deref() == Some("Bound")).then_some(())
    })
    .await;

    // the claim goes (its pod first): so goes its mirror; the host volume is the host's
    wait_for("the scratch volume shown", WAIT, || async {
        get_pv(&tenant_pvs, "host-vol-scratch").await
    })
    .await;
    kubectl(kc, &["delete", "pod", "tmp", "--wait=false"]);
    kubectl(kc, &["delete", "pvc", "scratch", "--wait=false"]);
    wait_for("the scratch mirror gone", WAIT, || async {
        get_pv(&tenant_pvs, "host-vol-scratch")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        get_pv(&host_pvs, "host-vol-scratch").await.is_some(),
        "the tenant never deletes a host volume"
    );

    // the host volume goes (its protection let go): so goes the mirror
    host_pvs
        .delete("host-vol-data", &Default::default())
        .await
        .unwrap();
    host_pvs
        .patch(
            "host-vol-data",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    wait_for(
        "the data mirror gone with the host volume",
        WAIT,
        || async {
            get_pv(&tenant_pvs, "host-vol-data")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
}
