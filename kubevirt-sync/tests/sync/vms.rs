//! VMs synced both ways: a VM applied with kubectl runs on the host and its status comes back,
//! two tenants' same-named VMs do not collide, a pool shows its VMs and instances in the
//! tenant, a tenant's edit keeps the firmware identity KubeVirt gave the host VM, and a host
//! edit stopping a VM is repaired (only virt-api's start/stop is taken up).

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::WAIT;
use super::common::*;

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

pub async fn kubectl_apply_runs_the_vm_on_the_host_and_status_comes_back() {
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
    // the syncer made and updates the tenant's VMI: its writes name kvtenant, not "unknown"
    let managers = testenv::testing::field_managers(t.kubeconfig(), &["vmi", "vm1"]);
    assert!(!managers.is_empty());
    assert!(managers.iter().all(|m| m == "kvtenant"), "{managers:?}");
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
    // the value of the first sample of `metric` whose line has every one of `labels`
    let value = |metric: &str, labels: &[String]| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(metric) && labels.iter().all(|x| l.contains(x.as_str())))
            .unwrap_or_else(|| panic!("no {metric} with {labels:?} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    for direction in ["down", "up"] {
        let labels = [format!("direction=\"{direction}\"")];
        let count = value("kvtenant_sync_reconcile_seconds_count", &labels);
        assert!(count > 0.0, "{direction} reconciles counted: {count}");
    }
    assert!(text.contains("kvtenant_sync_api_calls_total{"), "{text}");
    // what the caches hold: the tenant's VM and the host's copy are counted
    for cache in ["tenant", "host"] {
        let labels = [
            format!("cache=\"{cache}\""),
            "kind=\"VirtualMachine\"".to_owned(),
        ];
        let bytes = value("kvtenant_sync_cache_bytes{", &labels);
        assert!(bytes > 0.0, "{cache} VirtualMachine cache bytes: {bytes}");
    }

    // delete in the tenant deletes on the host
    kubectl(t.kubeconfig(), &["delete", "vm", "vm1", "--wait=false"]);
    eventually("the host VM gone", WAIT, || {
        let api = host_vms.clone();
        async move { get(&api, "vm1").await.is_none() }
    })
    .await;
}

pub async fn two_tenants_with_the_same_names_do_not_collide() {
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

pub async fn a_pool_of_three_shows_three_vms_and_instances_in_the_tenant() {
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

/// KubeVirt's VM mutator gives a VM a random firmware UUID and serial (and the PCI topology
/// version) only on create; an update whose spec lacks them drops them and virt-controller puts
/// a different, name-derived UUID in. A tenant's edit must not change what the guest sees.
pub async fn a_tenant_edit_keeps_the_firmware_identity_kubevirt_gave_the_host_vm() {
    let (_env, api, host) = super::env_with_vm1().await;
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

/// Someone on the host (not virt-api) adds a template label the tenant's VM does not have and
/// stops the host copy in the same write. The label is a host addition (not drift), but the
/// stop is not virt-api's: the host copy runs again and the tenant's VM keeps its run strategy
/// (a stop through the host's virt-api would have been taken up into the tenant instead).
pub async fn a_host_edit_stopping_the_vm_is_repaired_not_taken_up() {
    let (_env, api, host) = super::env_with_vm1().await;
    let strategy = |vm: &DynamicObject| vm.data["spec"]["runStrategy"].clone();
    wait_for("the host VM", WAIT, || async {
        get(&host, "vm1")
            .await
            .filter(|vm| strategy(vm) == "Always")
    })
    .await;
    let edit = json!({"spec": {"runStrategy": "Halted",
        "template": {"metadata": {"labels": {"added-on-host": "yes"}}}}});
    host.patch("vm1", &PatchParams::default(), &Patch::Merge(&edit))
        .await
        .unwrap();
    wait_for("the host VM running again", WAIT, || async {
        get(&host, "vm1")
            .await
            .filter(|vm| strategy(vm) == "Always")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tenant_vm = get(&api, "vm1").await.unwrap();
    assert_eq!(
        strategy(&tenant_vm),
        "Always",
        "the tenant's run strategy kept"
    );
    assert_eq!(strategy(&get(&host, "vm1").await.unwrap()), "Always");
}
