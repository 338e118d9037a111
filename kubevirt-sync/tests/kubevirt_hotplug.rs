//! Volume hotplug for tenants, with KubeVirt's real virt-api and virt-controller on the host
//! (DeclarativeHotplugVolumes or HotplugVolumes feature gate on through the `KubeVirt` CR, one
//! test each; kwok nodes, no VM boots). On a stopped VM: `virtctl addvolume --persist` /
//! `removevolume --persist` run
//! against the tenant, go through kvtenant's subresource proxy to the host's virt-api, which
//! changes the host VM's volumes and disks; the tenant VM takes the change up instead of the
//! syncer reverting it. A hotplug naming a claim the tenant does not have in the VM's namespace,
//! and any other change made on the host VM, are still reverted. On a running VM the host's
//! virt-controller also attaches the volume to the instance through an attachment pod, and the
//! node agent (**simulated** virt-handler) reports it attached: the tenant's VMI shows it.
//! `virtctl memory-dump get` / `remove` on a running VM: the memory dump volume of the tenant's
//! claim lands in both VMs (the node agent reports the dump written: **simulated**, nothing is
//! dumped) and the tenant VM shows the request Completed; `memory-dump get --create-claim`
//! makes the claim in the tenant, sized with the filesystem overhead of kvtenant's tenant
//! CDIConfig (the host's), and the dump into it completes the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::{Value, json};
use testenv::kubevirt::KubeVirtOptions;

const WAIT: Duration = Duration::from_secs(90);

fn names(vm: &DynamicObject, ptr: &str) -> Vec<String> {
    vm.data
        .pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

fn volumes(vm: &DynamicObject) -> Vec<String> {
    names(vm, "/spec/template/spec/volumes")
}

fn disks(vm: &DynamicObject) -> Vec<String> {
    names(vm, "/spec/template/spec/domain/devices/disks")
}

fn spec_hash(vm: &DynamicObject) -> Option<String> {
    vm.metadata
        .annotations
        .as_ref()?
        .get(kvtenant_rules::translate::SPEC_HASH)
        .cloned()
}

async fn create_pvc(client: &Client, ns: &str, name: &str) {
    let pvc = json!({"metadata": {"name": name, "namespace": ns}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(pvc).unwrap(),
        )
        .await
        .unwrap();
}

/// DeclarativeHotplugVolumes only: virt-api patches the host VM's spec itself.
#[tokio::test(flavor = "multi_thread")]
async fn virtctl_addvolume_and_removevolume_change_the_tenant_vm() {
    hotplug_through_the_tenant("DeclarativeHotplugVolumes").await;
}

/// HotplugVolumes: virt-api records the request in the host VM's `status.volumeRequests`,
/// virt-controller writes the spec.
#[tokio::test(flavor = "multi_thread")]
async fn volume_requests_applied_by_virt_controller_change_the_tenant_vm() {
    hotplug_through_the_tenant("HotplugVolumes").await;
}

async fn hotplug_through_the_tenant(gate: &str) {
    let env =
        Env::start_with_kubevirt(1, false, KubeVirtOptions::new().with_feature_gates(&[gate]))
            .await;
    let shared = env.syncer.as_ref().unwrap().tenants();
    let _proxy = Proxy::start(shared, ProxyConfig::local()).await.unwrap();
    let t = &env.tenants[0];
    let tc = t.client();
    wait_subresources_available(&tc, WAIT).await;

    // the tenant's claim, and another namespace's
    create_pvc(&tc, "default", "data").await;
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(tc.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    create_pvc(&tc, "other", "theirs").await;

    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    let mut vm = vm_manifest("vm1", "default", json!({}));
    vm["spec"]["runStrategy"] = json!("Halted");
    vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
        .await
        .unwrap();
    let host_vms = env.host_api(&vm_resource(), &t.host_ns("default"));
    let first = wait_for("the VM on the host", WAIT, || get(&host_vms, "vm1")).await;
    let first_hash = spec_hash(&first);
    assert!(first_hash.is_some());

    // addvolume --persist: the tenant VM takes the hotplugged volume and disk up
    virtctl(
        &env,
        t.kubeconfig(),
        &[
            "-n",
            "default",
            "addvolume",
            "vm1",
            "--volume-name=data",
            "--persist",
        ],
    );
    let tenant_vm = wait_for("the tenant VM with the hotplugged volume", WAIT, || async {
        get(&vms, "vm1")
            .await
            .filter(|vm| volumes(vm).contains(&"data".to_string()))
    })
    .await;
    let vol = &tenant_vm.data["spec"]["template"]["spec"]["volumes"][1];
    assert_eq!(vol["persistentVolumeClaim"]["claimName"], "data");
    assert_eq!(vol["persistentVolumeClaim"]["hotpluggable"], true);
    assert_eq!(disks(&tenant_vm), ["root", "data"]);
    // the host VM keeps it, rewritten from the tenant VM that now has it (new content hash)
    wait_for(
        "the host VM written from the new tenant VM",
        WAIT,
        || async {
            get(&host_vms, "vm1")
                .await
                .filter(|h| volumes(h) == ["root", "data"] && disks(h) == ["root", "data"])
                .filter(|h| spec_hash(h) != first_hash)
        },
    )
    .await;

    // removevolume --persist: gone from both
    virtctl(
        &env,
        t.kubeconfig(),
        &[
            "-n",
            "default",
            "removevolume",
            "vm1",
            "--volume-name=data",
            "--persist",
        ],
    );
    wait_for("the tenant VM without the volume", WAIT, || async {
        get(&vms, "vm1")
            .await
            .filter(|vm| volumes(vm) == ["root"] && disks(vm) == ["root"])
    })
    .await;
    wait_for("the host VM without the volume", WAIT, || async {
        get(&host_vms, "vm1")
            .await
            .filter(|vm| volumes(vm) == ["root"] && disks(vm) == ["root"])
    })
    .await;

    // a hotplug naming a claim the tenant has not in this namespace (virtctl checks the claim
    // exists, so the request is sent as a client of the API would): virt-api writes it on the
    // host VM, the syncer reverts it, the tenant VM never has it
    let body = json!({"name": "theirs", "disk": {"name": "theirs", "disk": {"bus": "scsi"}},
        "volumeSource": {"persistentVolumeClaim": {"claimName": "theirs"}}});
    let req = http::Request::put(
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/vm1/addvolume",
    )
    .header("Content-Type", "application/json")
    .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
    .unwrap();
    let res = tc.send(req).await.unwrap();
    assert!(
        res.status().is_success(),
        "addvolume of another namespace's claim: {}",
        res.status()
    );
    wait_for(
        "the host VM with the foreign volume reverted",
        WAIT,
        || async {
            get(&host_vms, "vm1")
                .await
                .filter(|vm| volumes(vm) == ["root"] && disks(vm) == ["root"])
        },
    )
    .await;
    assert_eq!(volumes(&get(&vms, "vm1").await.unwrap()), ["root"]);

    // a change made on the host VM that is not a hotplug: reverted, not taken up
    host_vms
        .patch(
            "vm1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"domain": {
                "memory": {"guest": "256Mi"}}}}}})),
        )
        .await
        .unwrap();
    wait_for("the host VM's memory reverted", WAIT, || async {
        get(&host_vms, "vm1").await.filter(|vm| {
            vm.data["spec"]["template"]["spec"]["domain"]["memory"]["guest"] == "128Mi"
        })
    })
    .await;
    let tenant_vm = get(&vms, "vm1").await.unwrap();
    assert_eq!(
        tenant_vm.data["spec"]["template"]["spec"]["domain"]["memory"]["guest"],
        "128Mi"
    );
}

fn volume_status<'a>(vmi: &'a DynamicObject, name: &str) -> Option<&'a Value> {
    vmi.data["status"]["volumeStatus"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)
}

/// KubeVirt with DeclarativeHotplugVolumes, the proxy, and in the tenant's `default` namespace
/// a running VM `vm1` and a claim `claim` the host's (simulated) provisioner binds
/// (virt-controller attaches bound claims only).
async fn running_vm_and_claim(claim: &str) -> (Env, Proxy) {
    let env = Env::start_with_kubevirt(
        1,
        false,
        KubeVirtOptions::new().with_feature_gates(&["DeclarativeHotplugVolumes"]),
    )
    .await;
    let shared = env.syncer.as_ref().unwrap().tenants();
    let proxy = Proxy::start(shared, ProxyConfig::local()).await.unwrap();
    let tc = env.tenants[0].client();
    wait_subresources_available(&tc, WAIT).await;
    let pvc = json!({"metadata": {"name": claim, "namespace": "default"}, "spec": {
        "storageClassName": testenv::snapshots::STORAGE_CLASS,
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
    Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::namespaced(tc.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(pvc).unwrap(),
        )
        .await
        .unwrap();
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    let vm = vm_manifest("vm1", "default", json!({}));
    vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
        .await
        .unwrap();
    let vmis: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vmi_resource());
    wait_for("the VMI running in the tenant", WAIT, || async {
        get(&vmis, "vm1")
            .await
            .filter(|v| v.data["status"]["phase"] == "Running")
    })
    .await;
    (env, proxy)
}

/// A running VM (DeclarativeHotplugVolumes): `virtctl addvolume --persist` through the tenant
/// reaches the host VM, the host's virt-controller puts the volume into the running VMI and makes
/// the attachment pod (`hp-volume-*`, run by kwok), the node agent (**simulated** virt-handler)
/// reports the volume attached; the tenant's VMI shows it Ready and the tenant VM keeps it.
/// `removevolume --persist` takes it from both VMs and the VMI, and virt-controller deletes the
/// attachment pod.
#[tokio::test(flavor = "multi_thread")]
async fn a_volume_hotplugged_into_a_running_vm_is_shown_attached_in_the_tenant() {
    let (env, _proxy) = running_vm_and_claim("data").await;
    let t = &env.tenants[0];
    let tc = t.client();
    let host_ns = t.host_ns("default");
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    let vmis: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vmi_resource());

    virtctl(
        &env,
        t.kubeconfig(),
        &[
            "-n",
            "default",
            "addvolume",
            "vm1",
            "--volume-name=data",
            "--persist",
        ],
    );
    // the running instance has it, attached: shown in the tenant's VMI
    let vmi = wait_for("the volume Ready in the tenant's VMI", WAIT, || async {
        get(&vmis, "vm1")
            .await
            .filter(|v| volume_status(v, "data").is_some_and(|s| s["phase"] == "Ready"))
    })
    .await;
    assert!(
        names(&vmi, "/spec/volumes").contains(&"data".to_string()),
        "in the VMI's spec: {}",
        vmi.data["spec"]
    );
    let status = volume_status(&vmi, "data").unwrap();
    assert_eq!(status["persistentVolumeClaimInfo"]["claimName"], "data");
    let attach_pod = status["hotplugVolume"]["attachPodName"]
        .as_str()
        .expect("the attachment pod named")
        .to_string();
    assert!(attach_pod.starts_with("hp-volume-"), "{attach_pod}");
    let host_pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(env.host_client(), &host_ns);
    assert!(host_pods.get_opt(&attach_pod).await.unwrap().is_some());
    // the tenant VM keeps it (taken up, not reverted)
    let tenant_vm = get(&vms, "vm1").await.unwrap();
    assert!(volumes(&tenant_vm).contains(&"data".to_string()));
    assert_eq!(disks(&tenant_vm), ["root", "data"]);
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    wait_for("the host VM keeps the volume", WAIT, || async {
        get(&host_vms, "vm1")
            .await
            .filter(|h| volumes(h) == ["root", "data"])
    })
    .await;

    // removevolume: detached from the instance, gone from both VMs, the attachment pod deleted
    virtctl(
        &env,
        t.kubeconfig(),
        &[
            "-n",
            "default",
            "removevolume",
            "vm1",
            "--volume-name=data",
            "--persist",
        ],
    );
    // the host's first (virt-controller and the simulated virt-handler), then the tenant's:
    // a timeout says which side is behind
    let host_vmis = env.host_api(&vmi_resource(), &host_ns);
    wait_for("the volume gone from the host's VMI", WAIT, || async {
        get(&host_vmis, "vm1")
            .await
            .filter(|v| volume_status(v, "data").is_none() && names(v, "/spec/volumes") == ["root"])
    })
    .await;
    wait_for("the volume gone from the tenant's VMI", WAIT, || async {
        get(&vmis, "vm1")
            .await
            .filter(|v| volume_status(v, "data").is_none() && names(v, "/spec/volumes") == ["root"])
    })
    .await;
    wait_for("the tenant VM without the volume", WAIT, || async {
        get(&vms, "vm1")
            .await
            .filter(|vm| volumes(vm) == ["root"] && disks(vm) == ["root"])
    })
    .await;
    eventually("the attachment pod deleted on the host", WAIT, || async {
        host_pods.get_opt(&attach_pod).await.unwrap().is_none()
    })
    .await;
    let vmi = get(&vmis, "vm1").await.unwrap();
    assert_eq!(vmi.data["status"]["phase"], "Running", "still running");
}

fn dump_request(vm: &DynamicObject) -> &Value {
    &vm.data["status"]["memoryDumpRequest"]
}

/// `virtctl memory-dump get --claim-name` through the tenant on a running VM
/// (DeclarativeHotplugVolumes), into a claim no VM or pod used before: kvtenant's proxy marks
/// the tenant VM with the claim, so the syncer makes the claim's host copy, which virt-api looks
/// for. virt-api records the request on the host VM, the host's
/// virt-controller adds the `memoryDump` volume of the host copy of the tenant's claim to the
/// host VM and VMI and makes the attachment pod; the node agent (**simulated** virt-handler:
/// nothing is dumped) reports the dump done; virt-controller takes the volume out of the VMI,
/// annotates the claim with the dump's file name and marks the request Completed. The tenant VM
/// shows the request and keeps the volume; `virtctl memory-dump remove` takes both away. Then
/// `virtctl memory-dump get --create-claim` makes a tenant claim sized with the host's
/// filesystem overhead (shown in the tenant's CDIConfig) and the dump into it completes.
#[tokio::test(flavor = "multi_thread")]
async fn memory_dump_of_a_running_vm_lands_in_the_tenant_claim() {
    let (env, _proxy) = running_vm_and_claim("dump").await;
    let t = &env.tenants[0];
    let tc = t.client();
    let host_ns = t.host_ns("default");
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    let host_vmis = env.host_api(&vmi_resource(), &host_ns);

    // the claim is not used by any VM or pod yet: it has no host copy, which virt-api looks for
    let host_claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(env.host_client(), &host_ns);
    assert!(host_claims.get_opt("dump").await.unwrap().is_none());

    virtctl(
        &env,
        t.kubeconfig(),
        &[
            "-n",
            "default",
            "memory-dump",
            "get",
            "vm1",
            "--claim-name=dump",
        ],
    );
    let host_vm = wait_for("the host VM's memory dump Completed", WAIT, || async {
        get(&host_vms, "vm1")
            .await
            .filter(|vm| dump_request(vm)["phase"] == "Completed")
    })
    .await;
    let file = dump_request(&host_vm)["fileName"]
        .as_str()
        .expect("the dump's file name")
        .to_string();
    assert!(
        file.starts_with("vm1-dump-") && file.ends_with(".memory.dump"),
        "{file}"
    );
    assert_eq!(dump_request(&host_vm)["claimName"], "dump");
    let vol = json!({"name": "dump", "memoryDump": {"claimName": "dump", "hotpluggable": true}});
    assert_eq!(host_vm.data["spec"]["template"]["spec"]["volumes"][1], vol);
    assert_eq!(disks(&host_vm), ["root"], "a memory dump has no disk");
    // the claim used is the host copy of the tenant's claim: virt-controller annotated it
    let host_pvcs: Api<DynamicObject> = env.host_api(
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(&()),
        &host_ns,
    );
    let host_pvc = get(&host_pvcs, "dump").await.unwrap();
    assert!(kvtenant_rules::translate::is_kvtenant_copy(&host_pvc));
    let annotations = host_pvc.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("kubevirt.io/memory-dump"),
        Some(&file),
        "{annotations:?}"
    );
    // done: the volume is out of the running instance again
    let host_vmi = get(&host_vmis, "vm1").await.unwrap();
    assert_eq!(names(&host_vmi, "/spec/volumes"), ["root"]);
    assert_eq!(host_vmi.data["status"]["phase"], "Running");

    // the tenant VM shows the request and keeps the volume
    let tenant_vm = wait_for("the tenant VM's memory dump Completed", WAIT, || async {
        get(&vms, "vm1")
            .await
            .filter(|vm| dump_request(vm)["phase"] == "Completed")
    })
    .await;
    assert_eq!(dump_request(&tenant_vm)["fileName"], file.as_str());
    // the proxy marked the tenant VM with the claim, whose host copy the syncer then made
    let marks = tenant_vm.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        marks.get(kvtenant_rules::vm::refs::MEMORY_DUMP_CLAIM),
        Some(&"dump".to_string())
    );
    assert_eq!(
        tenant_vm.data["spec"]["template"]["spec"]["volumes"][1],
        vol
    );
    assert_eq!(disks(&tenant_vm), ["root"]);
    let host_vm = get(&host_vms, "vm1").await.unwrap();
    assert_eq!(volumes(&host_vm), ["root", "dump"], "not reverted");

    // memory-dump remove: the volume and the request gone from both VMs
    virtctl(
        &env,
        t.kubeconfig(),
        &["-n", "default", "memory-dump", "remove", "vm1"],
    );
    for (what, api) in [("the host VM", &host_vms), ("the tenant VM", &vms)] {
        wait_for(&format!("{what} without the memory dump"), WAIT, || async {
            get(api, "vm1")
                .await
                .filter(|vm| volumes(vm) == ["root"] && dump_request(vm).is_null())
        })
        .await;
    }

    // memory-dump get --create-claim: virtctl sizes the claim it makes in the tenant with the
    // filesystem overhead of the tenant's CDIConfig (kvtenant's, its status the host's overhead;
    // without it virtctl failed with "CDI config not initialized")
    let configs: Api<DynamicObject> = Api::all_with(tc.clone(), &cdi_config_resource());
    let host_config = Api::<DynamicObject>::all_with(env.host_client(), &cdi_config_resource())
        .get("config")
        .await
        .unwrap();
    let host_overhead = host_config.data["status"]["filesystemOverhead"].clone();
    assert!(host_overhead["global"].is_string(), "{host_overhead}");
    let config = wait_for(
        "the tenant CDIConfig's filesystem overhead",
        WAIT,
        || async {
            get(&configs, "config")
                .await
                .filter(|c| c.data["status"]["filesystemOverhead"].is_object())
        },
    )
    .await;
    assert_eq!(
        config.data["status"],
        json!({"filesystemOverhead": host_overhead}),
        "the host's overhead and nothing else of its status"
    );
    let vmi = get(
        &Api::<DynamicObject>::namespaced_with(tc.clone(), "default", &vmi_resource()),
        "vm1",
    )
    .await
    .unwrap();
    let mem = vmi.data["spec"]["domain"]["resources"]["requests"]["memory"]
        .as_str()
        .map_or(0.0, |m| {
            m.strip_suffix("Mi")
                .expect("memory in Mi")
                .parse::<f64>()
                .unwrap()
        });
    let overhead: f64 = host_overhead["global"].as_str().unwrap().parse().unwrap();
    // KubeVirt's CalcExpectedMemoryDumpSize (memory + 100Mi) and GetSizeIncludingGivenOverhead
    // (times 1 + overhead, rounded up to a MiB)
    let expected = format!("{}Mi", ((mem + 100.0) * (1.0 + overhead)).ceil());
    let out = virtctl(
        &env,
        t.kubeconfig(),
        &[
            "-n",
            "default",
            "memory-dump",
            "get",
            "vm1",
            "--claim-name=dump2",
            "--create-claim",
            &format!("--storage-class={}", testenv::snapshots::STORAGE_CLASS),
        ],
    );
    assert!(out.contains("PVC default/dump2 created"), "{out}");
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(tc.clone(), "default");
    let claim = claims.get("dump2").await.unwrap();
    let requests = claim.spec.unwrap().resources.unwrap().requests.unwrap();
    assert_eq!(
        requests["storage"].0, expected,
        "sized with the host's overhead"
    );
    let host_vm = wait_for("the host VM's dump into dump2 Completed", WAIT, || async {
        get(&host_vms, "vm1").await.filter(|vm| {
            dump_request(vm)["claimName"] == "dump2" && dump_request(vm)["phase"] == "Completed"
        })
    })
    .await;
    let file = dump_request(&host_vm)["fileName"]
        .as_str()
        .unwrap()
        .to_string();
    let host_pvc = get(&host_pvcs, "dump2").await.unwrap();
    assert!(kvtenant_rules::translate::is_kvtenant_copy(&host_pvc));
    let annotations = host_pvc.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(annotations.get("kubevirt.io/memory-dump"), Some(&file));
    wait_for(
        "the tenant VM's dump into dump2 Completed",
        WAIT,
        || async {
            get(&vms, "vm1").await.filter(|vm| {
                dump_request(vm)["claimName"] == "dump2" && dump_request(vm)["phase"] == "Completed"
            })
        },
    )
    .await;
}

/// `cdi.kubevirt.io/v1beta1` CDIConfigs.
fn cdi_config_resource() -> kube::api::ApiResource {
    kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "CDIConfig"),
        "cdiconfigs",
    )
}
