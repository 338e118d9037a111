//! The syncer and its VirtualCluster over time: killed mid-way through 200 creates and
//! restarted, paused and resumed, given an unusable kubeconfig, and restarted with CRD copies
//! in place (left unwritten) while the host's CRDs change.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::WAIT;
use super::common::*;

pub async fn a_syncer_killed_while_creating_200_vms_converges_after_restart() {
    let mut env = Env::start(1).await;
    let t = &env.tenants[0];
    let api: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    let total = 200;
    for i in 0..total {
        let vm = vm_manifest(&format!("vm-{i:03}"), "default", json!({}));
        api.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
            .await
            .unwrap();
        if i == total / 2 {
            drop(env.syncer.take()); // killed mid-way: tasks aborted, nothing flushed
        }
    }
    env.start_syncer();
    let host = env.host_api(&vm_resource(), &env.tenants[0].host_ns("default"));
    eventually("all 200 VMs on the host", Duration::from_secs(180), || {
        let host = host.clone();
        async move {
            host.list(&ListParams::default())
                .await
                .map(|l| l.items.len() == total)
                .unwrap_or(false)
        }
    })
    .await;
    // exactly once each, every one a copy of a tenant VM; and every tenant VM reports Running
    let listed = host.list(&ListParams::default()).await.unwrap().items;
    let mut names: Vec<String> = listed
        .iter()
        .map(|v| v.metadata.name.clone().unwrap())
        .collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), total);
    // real virt-api/virt-controller, kube-scheduler and kwok process 200 VMs, VMIs and pods on
    // 2 cores shared with the other tests: give them room (a bound, not a measurement)
    eventually("all tenant VMs Running", Duration::from_secs(360), || {
        let api = api.clone();
        async move {
            api.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items.len() == total
                    && l.items
                        .iter()
                        .all(|v| v.data["status"]["printableStatus"] == "Running")
            })
        }
    })
    .await;
    // an orphan (host copy of a VM deleted from the tenant while the syncer was down) is removed
    drop(env.syncer.take());
    api.delete("vm-000", &DeleteParams::default())
        .await
        .unwrap();
    env.start_syncer();
    eventually("the orphan removed", WAIT, || {
        let host = host.clone();
        async move { get(&host, "vm-000").await.is_none() }
    })
    .await;
}

pub async fn pause_stops_host_vms_and_resume_restores_them() {
    let (env, api, host) = super::env_with_vm1().await;
    let t = &env.tenants[0];
    let host_vmis = env.host_api(&vmi_resource(), &t.host_ns("default"));
    wait_for("the VMI on the host", WAIT, || {
        let h = host_vmis.clone();
        async move { get(&h, "vm1").await }
    })
    .await;
    let vcs: Api<kvtenant_api::VirtualCluster> = Api::namespaced(env.host_client(), VC_NAMESPACE);
    vcs.patch(
        &t.vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    eventually("the host VM halted and its VMI gone", WAIT, || {
        let (h, hv) = (host.clone(), host_vmis.clone());
        async move {
            get(&h, "vm1")
                .await
                .is_some_and(|v| v.data["spec"]["runStrategy"] == "Halted")
                && get(&hv, "vm1").await.is_none()
        }
    })
    .await;
    // the tenant's own spec is untouched; the VirtualCluster says why nothing syncs
    assert_eq!(
        api.get("vm1").await.unwrap().data["spec"]["runStrategy"],
        "Always"
    );
    eventually("SyncerReady=False reason Paused", WAIT, || {
        let vcs = vcs.clone();
        let name = t.vc.name.clone();
        async move {
            vcs.get(&name)
                .await
                .ok()
                .and_then(|vc| vc.status)
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "SyncerReady" && c.reason == "Paused")
                })
        }
    })
    .await;
    vcs.patch(
        &t.vc.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .unwrap();
    eventually("the host VM running again after resume", WAIT, || {
        let (h, hv) = (host.clone(), host_vmis.clone());
        async move {
            get(&h, "vm1")
                .await
                .is_some_and(|v| v.data["spec"]["runStrategy"] == "Always")
                && get(&hv, "vm1").await.is_some()
        }
    })
    .await;
}

pub async fn an_unusable_kubeconfig_is_reported_on_the_virtualcluster() {
    let env = Env::start(0).await;
    let hc = env.host_client();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "broken-kubeconfig", "namespace": VC_NAMESPACE},
        "stringData": {"kubeconfig": "this is not a kubeconfig"}
    }))
    .unwrap();
    Api::<Secret>::namespaced(hc.clone(), VC_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let vc: kvtenant_api::VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": "broken", "namespace": VC_NAMESPACE},
        "spec": {"controlPlane": {"mode": "External", "kubeconfigSecretRef": {"name": "broken-kubeconfig"}}}
    }))
    .unwrap();
    let vcs: Api<kvtenant_api::VirtualCluster> = Api::namespaced(hc.clone(), VC_NAMESPACE);
    vcs.create(&PostParams::default(), &vc).await.unwrap();
    let cond = wait_for("SyncerReady=False", WAIT, || {
        let vcs = vcs.clone();
        async move {
            vcs.get("broken")
                .await
                .ok()?
                .status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "SyncerReady" && c.status == "False")
        }
    })
    .await;
    assert_eq!(cond.reason, "KubeconfigUnusable");
    assert!(
        cond.message.contains("broken-kubeconfig"),
        "{}",
        cond.message
    );
}

pub async fn crd_copies_survive_a_restart_unwritten_and_follow_host_changes() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    const VM_CRD: &str = "virtualmachines.kubevirt.io";
    let mut env = Env::start(1).await;
    let tenant: Api<CustomResourceDefinition> = Api::all(env.tenants[0].client());
    let copy = wait_for("the tenant's copy of the VM CRD", WAIT, || {
        let tenant = tenant.clone();
        async move {
            tenant.get_opt(VM_CRD).await.ok().flatten().filter(|c| {
                c.annotations()
                    .contains_key(kvtenant_kubevirt_sync::crds::COPY_HASH)
            })
        }
    })
    .await;
    let rv = copy.resource_version().unwrap();

    // a restarted syncer finds the copy current and does not write it again
    drop(env.syncer.take());
    env.start_syncer();
    let vms: Api<DynamicObject> =
        Api::namespaced_with(env.tenants[0].client(), "default", &vm_resource());
    vms.create(
        &PostParams::default(),
        &serde_json::from_value(vm_manifest("after-restart", "default", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let host = env.host_api(&vm_resource(), &env.tenants[0].host_ns("default"));
    wait_for("the VM created after the restart on the host", WAIT, || {
        let host = host.clone();
        async move { get(&host, "after-restart").await }
    })
    .await;
    assert_eq!(
        tenant
            .get(VM_CRD)
            .await
            .unwrap()
            .resource_version()
            .unwrap(),
        rv,
        "the restarted syncer rewrote an unchanged CRD copy"
    );

    // a change of the host CRD (here: a label, as a KubeVirt upgrade changes labels and
    // schemas) reaches the tenant's copy at a consistency scan
    let host_crds: Api<CustomResourceDefinition> = Api::all(env.host_client());
    host_crds
        .patch(
            VM_CRD,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"kubevirt.io/upgraded": "yes"}}})),
        )
        .await
        .unwrap();
    eventually("the host CRD change in the tenant's copy", WAIT, || {
        let tenant = tenant.clone();
        async move {
            tenant.get(VM_CRD).await.is_ok_and(|c| {
                c.labels().get("kubevirt.io/upgraded").map(String::as_str) == Some("yes")
            })
        }
    })
    .await;
}
