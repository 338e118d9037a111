//! What the syncer refuses or leaves out, and what it syncs next to it: host disks and node
//! pinning refused with an Event (and tenant edits of mirrors reverted), DataVolumes without
//! DataVolume sync (template volumes mirrored, direct ones refused), Services with their host
//! addresses shown in the tenant (externalIPs refused).

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::WAIT;
use super::common::*;

pub async fn host_disk_and_node_pinning_are_refused_with_an_event() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let api: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    let bad_disk = vm_manifest(
        "hostdisk",
        "default",
        json!({"domain": {"devices": {"disks": [{"name": "root", "disk": {}}, {"name": "h", "disk": {}}]}},
               "volumes": [{"name": "root", "containerDisk": {"image": "x"}},
                           {"name": "h", "hostDisk": {"path": "/etc/shadow", "type": "Disk"}}]}),
    );
    let pinned = vm_manifest(
        "pinned",
        "default",
        json!({"nodeSelector": {"kubernetes.io/hostname": "node-1"}}),
    );
    let good = vm_manifest("good", "default", json!({}));
    for vm in [bad_disk, pinned, good] {
        api.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
            .await
            .unwrap();
    }
    for name in ["hostdisk", "pinned"] {
        let ev = sync_refused(&t.client(), "default", name, WAIT).await;
        let msg = ev.message.unwrap_or_default();
        assert!(
            msg.contains(if name == "hostdisk" {
                "hostDisk"
            } else {
                "nodeSelector"
            }),
            "{msg}"
        );
        // the condition is a second write after the Event: wait for it too
        let cond = wait_for(&format!("a Synced condition on {name}"), WAIT, || {
            let api = api.clone();
            async move {
                let vm = api.get(name).await.ok()?;
                vm.data["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Synced").cloned())
            }
        })
        .await;
        assert_eq!(cond["status"], "False");
    }
    // the good one is synced; the refused ones never appear on the host
    let host = env.host_api(&vm_resource(), &t.host_ns("default"));
    wait_for("the good VM on the host", WAIT, || {
        let host = host.clone();
        async move { get(&host, "good").await }
    })
    .await;
    assert!(get(&host, "hostdisk").await.is_none());
    assert!(get(&host, "pinned").await.is_none());

    // editing a mirror in the tenant is reverted
    let vmis: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vmi_resource());
    wait_for("the VMI mirror", WAIT, || {
        let vmis = vmis.clone();
        async move { get(&vmis, "good").await }
    })
    .await;
    vmis.patch(
        "good",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tampered": "yes"}}})),
    )
    .await
    .unwrap();
    eventually("the tenant's edit of the mirror reverted", WAIT, || {
        let vmis = vmis.clone();
        async move {
            get(&vmis, "good").await.is_some_and(|v| {
                !v.metadata
                    .labels
                    .unwrap_or_default()
                    .contains_key("tampered")
            })
        }
    })
    .await;
}

pub async fn without_datavolume_sync_template_volumes_show_and_direct_ones_are_refused() {
    // the harness's VirtualClusters keep the default syncKinds: DataVolume is not among them
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    wait_crd(&t.client(), "datavolumes.cdi.kubevirt.io").await;
    let dv_resource = kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("cdi.kubevirt.io", "v1beta1", "DataVolume"),
        "datavolumes",
    );
    let dvs: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &dv_resource);
    let direct = json!({
        "apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "direct", "namespace": "default"},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}
    });
    dvs.create(
        &PostParams::default(),
        &serde_json::from_value(direct).unwrap(),
    )
    .await
    .unwrap();
    let vms: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    let mut vm = vm_manifest(
        "with-template",
        "default",
        json!({"volumes": [{"name": "root", "dataVolume": {"name": "with-template-root"}}]}),
    );
    vm["spec"]["dataVolumeTemplates"] = json!([{
        "metadata": {"name": "with-template-root"},
        "spec": {"source": {"blank": {}}, "storage": {"resources": {"requests": {"storage": "1Gi"}}}}
    }]);
    vms.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
        .await
        .unwrap();

    let ev = sync_refused(&t.client(), "default", "direct", WAIT).await;
    let msg = ev.message.unwrap_or_default();
    assert!(msg.contains("spec.kubevirt.syncKinds"), "{msg}");
    let mirror = wait_for(
        "the template's DataVolume mirrored into the tenant",
        WAIT,
        || {
            let dvs = dvs.clone();
            async move { get(&dvs, "with-template-root").await }
        },
    )
    .await;
    assert!(
        mirror
            .annotations()
            .contains_key(kvtenant_api::labels::MIRROR_OF),
        "{mirror:?}"
    );
    // the claim CDI (here simulated CDI) makes for the template's DataVolume is mirrored too,
    // owned by the tenant's DataVolume mirror
    let pvcs: Api<DynamicObject> = Api::namespaced_with(
        t.client(),
        "default",
        &kube::core::ApiResource::erase::<k8s_openapi::api::core::v1::PersistentVolumeClaim>(&()),
    );
    let claim = wait_for(
        "the template DataVolume's claim mirrored into the tenant",
        WAIT,
        || {
            let pvcs = pvcs.clone();
            async move { get(&pvcs, "with-template-root").await }
        },
    )
    .await;
    assert!(
        claim
            .annotations()
            .contains_key(kvtenant_api::labels::MIRROR_OF),
        "{claim:?}"
    );
    let owners = claim.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(
        owners.first().map(|o| o.uid.as_str()),
        mirror.metadata.uid.as_deref(),
        "the claim mirror is owned by the DataVolume mirror: {owners:?}"
    );
    let host = env.host_api(&dv_resource, &t.host_ns("default"));
    assert!(
        get(&host, "direct").await.is_none(),
        "a refused DataVolume reached the host"
    );
}

pub async fn services_are_synced_and_the_tenant_shows_the_host_assigned_addresses() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let api: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(vm_manifest("web", "default", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let svc = |name: &str, selector: Value, extra: Value| {
        let mut s = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "NodePort", "selector": selector, "ports": [{"port": 22, "targetPort": 22}]}});
        if let (Some(spec), Value::Object(extra)) = (s["spec"].as_object_mut(), extra) {
            spec.extend(extra);
        }
        s
    };
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(t.client(), "default");
    for s in [
        svc("ssh", json!({"vm": "web"}), json!({})),
        svc("other", json!({"app": "nothing"}), json!({})),
        svc(
            "hijack",
            json!({"vm": "web"}),
            json!({"externalIPs": ["8.8.8.8"]}),
        ),
    ] {
        services
            .create(&PostParams::default(), &serde_json::from_value(s).unwrap())
            .await
            .unwrap();
    }
    let host: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(env.host_client(), &t.host_ns("default"));
    // the tenant ends up showing the host's cluster IP and node port (the ones that work)
    let addresses = |s: &k8s_openapi::api::core::v1::Service| {
        let spec = s.spec.clone().unwrap_or_default();
        let node_ports: Vec<Option<i32>> =
            spec.ports.iter().flatten().map(|p| p.node_port).collect();
        (spec.cluster_ip, node_ports)
    };
    let (hs, ts) = wait_for("the tenant Service with the host's addresses", WAIT, || {
        let (host, services) = (host.clone(), services.clone());
        async move {
            let h = host.get_opt("ssh").await.ok().flatten()?;
            let t = services.get_opt("ssh").await.ok().flatten()?;
            (addresses(&h) == addresses(&t) && addresses(&h).0.is_some()).then_some((h, t))
        }
    })
    .await;
    assert_eq!(hs.spec.unwrap().selector, ts.spec.unwrap().selector);
    eventually("every Service reaches the host", WAIT, || {
        let host = host.clone();
        async move { host.get_opt("other").await.ok().flatten().is_some() }
    })
    .await;
    assert!(
        host.get_opt("hijack").await.unwrap().is_none(),
        "externalIPs are refused"
    );
}
