//! The syncer against real apiservers: one host running KubeVirt's real virt-api and
//! virt-controller (nodes, pods and virt-handler simulated: no VM boots) and tenant control
//! planes driven with the real kubectl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Bound on each wait: generous, since CI shares 2 cores among several control planes.
const WAIT: Duration = Duration::from_secs(120);

/// The host VM's spec without what KubeVirt adds on the host: the VM mutator (real virt-api)
/// defaults the machine type (tenant-side webhooks are a separate feature), and virt-controller
/// writes the firmware UUID/serial, the architecture, an empty `resources` and the PCI topology
/// annotation into the template. The syncer leaves those alone (the tenant's spec is contained
/// in the host's, so nothing is written back).
fn strip_owned(mut spec: Value) -> Value {
    if let Some(domain) = spec
        .pointer_mut("/template/spec/domain")
        .and_then(Value::as_object_mut)
    {
        domain.remove("machine");
        domain.remove("firmware");
        if domain.get("resources") == Some(&json!({})) {
            domain.remove("resources");
        }
    }
    if let Some(tspec) = spec
        .pointer_mut("/template/spec")
        .and_then(Value::as_object_mut)
    {
        tspec.remove("architecture");
    }
    if let Some(meta) = spec
        .pointer_mut("/template/metadata")
        .and_then(Value::as_object_mut)
        && let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut)
    {
        a.remove("kubevirt.io/pci-topology-version");
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
    spec
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_runs_the_vm_on_the_host_and_status_comes_back() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let sample = repo_root().join("samples/vm-cloudinit.yaml");
    kubectl(t.kubeconfig(), &["apply", "-f", sample.to_str().unwrap()]);
    // an unreferenced Secret stays in the tenant
    kubectl(
        t.kubeconfig(),
        &[
            "create",
            "secret",
            "generic",
            "unrelated",
            "--from-literal=k=v",
        ],
    );

    let host_ns = t.host_ns("default");
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    let host_vm = wait_for("the VM on the host", WAIT, || {
        let api = host_vms.clone();
        async move { get(&api, "vm1").await }
    })
    .await;
    let tenant_vm = kubectl_json(t.kubeconfig(), &["get", "vm", "vm1"]);
    // the host copy resolves through the tenant's DNS (kvtenant's, see tests/dns.rs); the rest
    // of the spec is the tenant's
    let mut host_spec = strip_owned(serde_json::to_value(&host_vm.data["spec"]).unwrap());
    let template = host_spec
        .pointer_mut("/template/spec")
        .and_then(Value::as_object_mut)
        .unwrap();
    assert_eq!(template.remove("dnsPolicy"), Some(json!("None")));
    let dns = template.remove("dnsConfig").unwrap();
    assert_eq!(dns["searches"][0], "default.svc.cluster.local", "{dns}");
    assert!(
        tenant_vm["spec"]["template"]["spec"]
            .get("dnsConfig")
            .is_none()
    );
    assert_eq!(
        host_spec, tenant_vm["spec"],
        "the host VM's spec must be the tenant's"
    );
    assert_eq!(host_vm.metadata.labels.as_ref().unwrap()["app"], "web");

    // the tenant sees the instance Running with node and IP
    let vmi = wait_for("the VMI Running in the tenant", WAIT, || {
        let kc = t.kubeconfig().to_path_buf();
        async move {
            let out = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kc)
                .args(["get", "vmi", "vm1", "-o", "json"])
                .output()
                .ok()?;
            let v: Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["status"]["phase"] == "Running").then_some(v)
        }
    })
    .await;
    assert!(
        vmi["status"]["nodeName"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    assert!(
        vmi["status"]["interfaces"][0]["ipAddress"]
            .as_str()
            .is_some()
    );
    assert_eq!(
        vmi["metadata"]["ownerReferences"][0]["uid"],
        tenant_vm["metadata"]["uid"]
    );
    // the node running it shows in the tenant, without host addresses
    let node = kubectl_json(
        t.kubeconfig(),
        &["get", "node", vmi["status"]["nodeName"].as_str().unwrap()],
    );
    assert!(
        node["status"]["addresses"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "{node}"
    );
    let table = kubectl(t.kubeconfig(), &["get", "vm,vmi"]);
    assert!(table.contains("Running"), "{table}");
    eventually("VM printableStatus Running in the tenant", WAIT, || {
        let kc = t.kubeconfig().to_path_buf();
        async move {
            kubectl_json(&kc, &["get", "vm", "vm1"])["status"]["printableStatus"] == "Running"
        }
    })
    .await;

    let secrets: Api<Secret> = Api::namespaced(env.host_client(), &host_ns);
    assert!(secrets.get_opt("vm1-cloudinit").await.unwrap().is_some());
    assert!(secrets.get_opt("unrelated").await.unwrap().is_none());

    // stop through spec, then start again
    kubectl(
        t.kubeconfig(),
        &[
            "patch",
            "vm",
            "vm1",
            "--type=merge",
            "-p",
            r#"{"spec":{"runStrategy":"Halted"}}"#,
        ],
    );
    eventually("the VMI gone in the tenant after stop", WAIT, || {
        let kc = t.kubeconfig().to_path_buf();
        async move {
            kubectl(&kc, &["get", "vmi", "-o", "name"])
                .trim()
                .is_empty()
        }
    })
    .await;
    kubectl(
        t.kubeconfig(),
        &[
            "patch",
            "vm",
            "vm1",
            "--type=merge",
            "-p",
            r#"{"spec":{"runStrategy":"Always"}}"#,
        ],
    );
    eventually("the VMI back after start", WAIT, || {
        let kc = t.kubeconfig().to_path_buf();
        async move { kubectl(&kc, &["get", "vmi", "-o", "name"]).contains("vm1") }
    })
    .await;

    // the per-tenant metrics saw both directions
    let mut registry = prometheus_client::registry::Registry::default();
    env.syncer
        .as_ref()
        .unwrap()
        .metrics()
        .register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for direction in ["down", "up"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("kvtenant_sync_reconcile_seconds_count")
                    && l.contains(&format!("direction=\"{direction}\""))
            })
            .unwrap_or_else(|| panic!("no {direction} latency in:\n{text}"));
        let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count > 0.0, "{line}");
    }
    assert!(text.contains("kvtenant_sync_api_calls_total{"), "{text}");

    // delete in the tenant deletes on the host
    kubectl(t.kubeconfig(), &["delete", "vm", "vm1", "--wait=false"]);
    eventually("the host VM gone", WAIT, || {
        let api = host_vms.clone();
        async move { get(&api, "vm1").await.is_none() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_with_the_same_names_do_not_collide() {
    let env = Env::start(2).await;
    for (i, t) in env.tenants.iter().enumerate() {
        let api: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
        let mut vm = vm_manifest("same", "default", json!({}));
        vm["metadata"]["labels"] = json!({"tenant": format!("t{i}")});
        api.create(&PostParams::default(), &serde_json::from_value(vm).unwrap())
            .await
            .unwrap();
    }
    for (i, t) in env.tenants.iter().enumerate() {
        let host_ns = t.host_ns("default");
        let api = env.host_api(&vm_resource(), &host_ns);
        let vm = wait_for("the tenant's VM on the host", WAIT, || {
            let api = api.clone();
            async move { get(&api, "same").await }
        })
        .await;
        assert_eq!(vm.metadata.labels.unwrap()["tenant"], format!("t{i}"));
    }
    assert_ne!(
        env.tenants[0].host_ns("default"),
        env.tenants[1].host_ns("default")
    );
    // each tenant sees exactly its own VM and its own instance
    for t in &env.tenants {
        eventually("one VMI per tenant", WAIT, || {
            let kc = t.kubeconfig().to_path_buf();
            async move {
                let names = kubectl(&kc, &["get", "vmi", "-A", "-o", "name"]);
                names.lines().count() == 1
            }
        })
        .await;
        assert_eq!(
            kubectl(t.kubeconfig(), &["get", "vm", "-A", "-o", "name"])
                .lines()
                .count(),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn host_disk_and_node_pinning_are_refused_with_an_event() {
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

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_three_shows_three_vms_and_instances_in_the_tenant() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let sample = repo_root().join("samples/vm-pool.yaml");
    kubectl(t.kubeconfig(), &["apply", "-f", sample.to_str().unwrap()]);
    eventually("3 VMs and 3 VMIs in the tenant", WAIT, || {
        let kc = t.kubeconfig().to_path_buf();
        async move {
            let vms = kubectl(&kc, &["get", "vm", "-o", "name"]);
            let vmis = kubectl(&kc, &["get", "vmi", "-o", "name"]);
            vms.lines().count() == 3 && vmis.lines().count() == 3
        }
    })
    .await;
    let pool = kubectl_json(t.kubeconfig(), &["get", "vmpool", "web-pool"]);
    let vm = kubectl_json(t.kubeconfig(), &["get", "vm", "web-pool-0"]);
    assert_eq!(
        vm["metadata"]["ownerReferences"][0]["uid"],
        pool["metadata"]["uid"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_syncer_killed_while_creating_200_vms_converges_after_restart() {
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

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_host_vms_and_resume_restores_them() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let api: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(vm_manifest("vm1", "default", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let host = env.host_api(&vm_resource(), &t.host_ns("default"));
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

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_kubeconfig_is_reported_on_the_virtualcluster() {
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

#[tokio::test(flavor = "multi_thread")]
async fn services_are_synced_and_the_tenant_shows_the_host_assigned_addresses() {
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

#[tokio::test(flavor = "multi_thread")]
async fn crd_copies_survive_a_restart_unwritten_and_follow_host_changes() {
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

#[tokio::test(flavor = "multi_thread")]
async fn without_datavolume_sync_template_volumes_show_and_direct_ones_are_refused() {
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

/// KubeVirt's VM mutator gives a VM a random firmware UUID and serial (and the PCI topology
/// version) only on create; an update whose spec lacks them drops them and virt-controller puts
/// a different, name-derived UUID in. A tenant's edit must not change what the guest sees.
#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_edit_keeps_the_firmware_identity_kubevirt_gave_the_host_vm() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let api: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(vm_manifest("vm1", "default", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let host = env.host_api(&vm_resource(), &t.host_ns("default"));
    let identity = |vm: &DynamicObject| {
        (
            vm.data
                .pointer("/spec/template/spec/domain/firmware")
                .cloned(),
            vm.data
                .pointer("/spec/template/metadata/annotations/kubevirt.io~1pci-topology-version")
                .cloned(),
        )
    };
    let before = wait_for(
        "the host VM with KubeVirt's firmware identity",
        WAIT,
        || {
            let host = host.clone();
            async move {
                get(&host, "vm1")
                    .await
                    .map(|vm| identity(&vm))
                    .filter(|(fw, pci)| {
                        fw.as_ref().is_some_and(|f| f.get("serial").is_some()) && pci.is_some()
                    })
            }
        },
    )
    .await;
    // the tenant edits the VM (no tenant-side webhooks here: its spec has no firmware)
    api.patch(
        "vm1",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"template": {"spec": {"domain": {"memory": {"guest": "256Mi"}}}}}}),
        ),
    )
    .await
    .unwrap();
    let after = wait_for("the edit on the host", WAIT, || {
        let host = host.clone();
        async move {
            get(&host, "vm1")
                .await
                .filter(|vm| {
                    vm.data.pointer("/spec/template/spec/domain/memory/guest")
                        == Some(&json!("256Mi"))
                })
                .map(|vm| identity(&vm))
        }
    })
    .await;
    assert_eq!(after, before, "firmware UUID/serial and PCI topology kept");
    // and it stays so once virt-controller has seen the update
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = identity(&get(&host, "vm1").await.unwrap());
    assert_eq!(settled, before);
}
