//! Secondary networks for tenants, with KubeVirt's real virt-api and virt-controller on the host
//! and Multus' real NetworkAttachmentDefinition CRD (read from its Go module,
//! `testenv::multus`). The host runs no Multus and no CNI: no network is attached to anything;
//! what is exercised is which definitions reach the host, what the host VMs name, and that the
//! host's real virt-controller finds those definitions when it renders the virt-launcher pod
//! (it refuses to render one whose network it cannot find) and names them in the pod's
//! `k8s.v1.cni.cncf.io/networks` annotation Multus would read.
//!
//! A tenant sees the host network `spec.vmPolicy.allowedNetworks` allows, read-only (its edits
//! and deletes reverted); its own networks are synced when their CNI config passes
//! `spec.vmPolicy.tenantNetworks` and refused with an Event naming the field otherwise (a
//! disallowed CNI type, bridge or VLAN); a VM or a pod (by Multus' annotation) naming another
//! tenant's network is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::HOST_OBJECT;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

fn nad_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("k8s.cni.cncf.io", "v1", "NetworkAttachmentDefinition"),
        "network-attachment-definitions",
    )
}

fn nad(name: &str, ns: &str, config: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"config": config.to_string()}}))
    .unwrap()
}

fn bridge(bridge: &str, vlan: u16) -> Value {
    json!({"cniVersion": "0.3.1", "type": "bridge", "bridge": bridge, "vlan": vlan,
        "ipam": {"type": "host-local", "subnet": "10.200.0.0/24"}})
}

/// A VM with the pod network and these Multus networks (interface name, networkName).
fn vm_with_networks(name: &str, networks: &[(&str, &str)]) -> DynamicObject {
    let mut interfaces = vec![json!({"name": "default", "masquerade": {}})];
    let mut nets = vec![json!({"name": "default", "pod": {}})];
    for (iface, network) in networks {
        interfaces.push(json!({"name": iface, "bridge": {}}));
        nets.push(json!({"name": iface, "multus": {"networkName": network}}));
    }
    let vm = vm_manifest(
        name,
        "default",
        json!({"domain": {"devices": {"interfaces": interfaces}}, "networks": nets}),
    );
    serde_json::from_value(vm).unwrap()
}

async fn allow_networks(hc: &kube::Client, vc: &str) {
    let kinds = default_kinds_and(&["NetworkAttachmentDefinition"]);
    Api::<VirtualCluster>::namespaced(hc.clone(), VC_NAMESPACE)
        .patch(
            vc,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "kubevirt": {"syncKinds": kinds},
                "vmPolicy": {
                    "allowedNetworks": ["net-system/vlan10"],
                    "tenantNetworks": {
                        "allowedCniTypes": ["bridge", "host-local"],
                        "allowedBridges": ["br-tenants"],
                        "allowedVlans": [100, 101]
                    }
                }
            }})),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tenant_networks_pass_the_policy_and_vms_attach_to_their_own_and_allowed_host_ones() {
    let env = Env::start(2).await;
    let hc = env.host_client();
    let crd = testenv::multus::install(&hc, WAIT).await.unwrap();
    eprintln!("NetworkAttachmentDefinition CRD from {}", crd.display());

    // the host's network, in a namespace of the host's own
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "net-system"}})).unwrap();
    Api::<Namespace>::all(hc.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    let host_config = bridge("br-host", 10);
    let host_text = host_config.to_string();
    Api::<DynamicObject>::namespaced_with(hc.clone(), "net-system", &nad_resource())
        .create(
            &PostParams::default(),
            &nad("vlan10", "net-system", host_config.clone()),
        )
        .await
        .unwrap();
    for t in &env.tenants {
        allow_networks(&hc, &t.vc.name).await;
    }
    let (t1, t2) = (&env.tenants[0], &env.tenants[1]);
    let (tc, tc2) = (t1.client(), t2.client());
    wait_crd(&tc, "network-attachment-definitions.k8s.cni.cncf.io").await;
    wait_crd(&tc2, "network-attachment-definitions.k8s.cni.cncf.io").await;

    // the host network shown read-only, where the host has it
    let kc = t1.kubeconfig();
    let shown = wait_for("the host network shown in the tenant", WAIT, || async {
        let (ok, out, _) = testenv::testing::kubectl_output(
            kc,
            &[
                "get",
                "net-attach-def",
                "-n",
                "net-system",
                "vlan10",
                "-o",
                "json",
            ],
            "",
            Duration::from_secs(20),
        );
        ok.then(|| serde_json::from_str::<Value>(&out).ok())
            .flatten()
    })
    .await;
    assert_eq!(shown["spec"]["config"], host_text.as_str());
    assert_eq!(shown["metadata"]["labels"][HOST_OBJECT], "true");
    let shown_api: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "net-system", &nad_resource());
    shown_api
        .patch(
            "vlan10",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"config": bridge("br-host", 4000).to_string()}})),
        )
        .await
        .unwrap();
    eventually(
        "the tenant's edit of the shown network reverted",
        WAIT,
        || async {
            get(&shown_api, "vlan10")
                .await
                .is_some_and(|n| n.data["spec"]["config"] == host_text.as_str())
        },
    )
    .await;
    shown_api
        .delete("vlan10", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the deleted shown network back", WAIT, || async {
        get(&shown_api, "vlan10").await.is_some()
    })
    .await;

    // the tenant's own network passes the policy and reaches its host namespace
    let host_ns = t1.host_ns("default");
    let tenant_nads: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "default", &nad_resource());
    let host_nads = env.host_api(&nad_resource(), &host_ns);
    for name in ["mine", "mine2"] {
        tenant_nads
            .create(
                &PostParams::default(),
                &nad(name, "default", bridge("br-tenants", 100)),
            )
            .await
            .unwrap();
    }
    let copy = wait_for("the tenant's network on the host", WAIT, || {
        get(&host_nads, "mine")
    })
    .await;
    assert_eq!(
        copy.data["spec"]["config"],
        bridge("br-tenants", 100).to_string()
    );

    // disallowed CNI type, bridge, VLAN: refused with the field, never on the host
    let refused = [
        (
            "other-type",
            json!({"cniVersion": "0.3.1", "type": "macvlan", "master": "br-tenants"}),
            "spec.vmPolicy.tenantNetworks.allowedCniTypes",
        ),
        (
            "host-bridge",
            bridge("br-host", 100),
            "spec.vmPolicy.tenantNetworks.allowedBridges",
        ),
        (
            "other-vlan",
            bridge("br-tenants", 10),
            "spec.vmPolicy.tenantNetworks.allowedVlans",
        ),
    ];
    for (name, config, _) in &refused {
        tenant_nads
            .create(
                &PostParams::default(),
                &nad(name, "default", config.clone()),
            )
            .await
            .unwrap();
    }
    for (name, _, field) in &refused {
        let event = sync_refused(&tc, "default", name, WAIT).await;
        let message = event.message.unwrap_or_default();
        assert!(message.contains(field), "{name}: {message}");
        assert!(
            get(&host_nads, name).await.is_none(),
            "{name} reached the host"
        );
    }

    // a VM on its own network and the allowed host network: the host VM names them where the
    // host has them, and the host's real virt-controller finds both for the launcher pod
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    vms.create(
        &PostParams::default(),
        &vm_with_networks(
            "vm1",
            &[
                ("own", "mine"),
                ("own2", "default/mine2"),
                ("host", "net-system/vlan10"),
            ],
        ),
    )
    .await
    .unwrap();
    let host_vms = env.host_api(&vm_resource(), &host_ns);
    let host_vm = wait_for("the VM on the host", WAIT, || get(&host_vms, "vm1")).await;
    let names: Vec<&str> = host_vm.data["spec"]["template"]["spec"]["networks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.pointer("/multus/networkName").and_then(Value::as_str))
        .collect();
    // `default/mine2` names the tenant's namespace: the host copy names it in its own
    assert_eq!(names, ["mine", "mine2", "net-system/vlan10"]);
    let pods: Api<Pod> = Api::namespaced(hc.clone(), &host_ns);
    let annotation = wait_for(
        "the virt-launcher pod naming the networks",
        WAIT,
        || async {
            pods.list(&ListParams::default().labels("kubevirt.io=virt-launcher"))
                .await
                .ok()?
                .items
                .into_iter()
                .find_map(|p| {
                    p.metadata
                        .annotations?
                        .get("k8s.v1.cni.cncf.io/networks")
                        .cloned()
                })
        },
    )
    .await;
    let attached: Vec<(String, String)> = serde_json::from_str::<Vec<Value>>(&annotation)
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["namespace"].as_str().unwrap_or_default().to_string(),
                n["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        attached,
        [
            (host_ns.clone(), "mine".to_string()),
            (host_ns.clone(), "mine2".to_string()),
            ("net-system".to_string(), "vlan10".to_string())
        ],
        "{annotation}"
    );

    // another tenant's network, named by its host namespace: refused, never on the host
    let t2_nads: Api<DynamicObject> = Api::namespaced_with(tc2.clone(), "default", &nad_resource());
    t2_nads
        .create(
            &PostParams::default(),
            &nad("theirs", "default", bridge("br-tenants", 101)),
        )
        .await
        .unwrap();
    let t2_host_ns = t2.host_ns("default");
    let t2_host_nads = env.host_api(&nad_resource(), &t2_host_ns);
    wait_for("the other tenant's network on the host", WAIT, || {
        get(&t2_host_nads, "theirs")
    })
    .await;
    let theirs = format!("{t2_host_ns}/theirs");
    vms.create(
        &PostParams::default(),
        &vm_with_networks("thief", &[("stolen", theirs.as_str())]),
    )
    .await
    .unwrap();
    let event = sync_refused(&tc, "default", "thief", WAIT).await;
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains("spec.vmPolicy.allowedNetworks") && message.contains("multus.networkName"),
        "{message}"
    );
    assert!(get(&host_vms, "thief").await.is_none());

    // a pod asking Multus for it by annotation: refused the same way (the tenant runs no
    // controllers: its default ServiceAccount is made here)
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(tc.clone(), "default")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "thief-pod", "namespace": "default",
            "annotations": {"k8s.v1.cni.cncf.io/networks": theirs}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    Api::<Pod>::namespaced(tc.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    // (a control: this tenant's pods are synced and refused with Events at all)
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe-pod", "namespace": "default"},
        "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "busybox"}]}}))
    .unwrap();
    Api::<Pod>::namespaced(tc.clone(), "default")
        .create(&PostParams::default(), &probe)
        .await
        .unwrap();
    let probe = sync_refused(&tc, "default", "probe-pod", WAIT).await;
    assert!(probe.message.unwrap_or_default().contains("hostNetwork"));
    let event = sync_refused(&tc, "default", "thief-pod", WAIT).await;
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains("spec.vmPolicy.allowedNetworks"),
        "{message}"
    );
    assert!(get_pod(&pods, "thief-pod").await.is_none());
}

async fn get_pod(api: &Api<Pod>, name: &str) -> Option<Pod> {
    api.get_opt(name).await.ok().flatten()
}
