//! A hostile tenant without webhooks: VMs that would make the host's scheduler, KubeVirt or
//! container runtime act for the tenant are created straight in the tenant's apiserver (no
//! admission runs in these tests, as when a tenant admin deleted kvtenant's webhooks) and must
//! never reach the host. Real apiservers; KubeVirt's real virt-api and virt-controller on the
//! host (nodes, pods and virt-handler simulated: no VM boots).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn host_acting_fields_and_annotations_never_reach_the_host() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    let api: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    let mut sidecar = vm_manifest("sidecar", "default", json!({}));
    sidecar["spec"]["template"]["metadata"]["annotations"] =
        json!({"hooks.kubevirt.io/hookSidecars": "[{\"image\": \"registry.example/evil\"}]"});
    let mut keepalive = vm_manifest("keepalive", "default", json!({}));
    keepalive["metadata"]["annotations"] =
        json!({"kubevirt.io/keep-launcher-alive-after-failure": "true"});
    let mut multus = vm_manifest("multus", "default", json!({}));
    multus["spec"]["template"]["metadata"]["annotations"] =
        json!({"k8s.v1.cni.cncf.io/networks": "kube-system/host-net"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "tolerant",
            vm_manifest(
                "tolerant",
                "default",
                json!({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}),
            ),
            "spec.template.spec.tolerations",
        ),
        (
            "critical",
            vm_manifest(
                "critical",
                "default",
                json!({"priorityClassName": "system-node-critical"}),
            ),
            "spec.template.spec.priorityClassName",
        ),
        (
            "scheduler",
            vm_manifest(
                "scheduler",
                "default",
                json!({"schedulerName": "host-scheduler"}),
            ),
            "spec.template.spec.schedulerName",
        ),
        (
            "host-token",
            vm_manifest(
                "host-token",
                "default",
                json!({"volumes": [{"name": "sa", "serviceAccount": {"serviceAccountName": "default"}}]}),
            ),
            "spec.template.spec.volumes[0].serviceAccount",
        ),
        ("sidecar", sidecar, "hooks.kubevirt.io/hookSidecars"),
        (
            "keepalive",
            keepalive,
            "kubevirt.io/keep-launcher-alive-after-failure",
        ),
        ("multus", multus, "k8s.v1.cni.cncf.io/networks"),
    ];
    let mut good = vm_manifest("good", "default", json!({}));
    good["spec"]["template"]["metadata"]["annotations"] =
        json!({"vm.kubevirt.io/os": "fedora", "example.com/owner": "team-a"});
    // passes kvtenant's rules, but the host's KubeVirt refuses it (ignition is behind a feature
    // gate the host does not enable): the tenant is told the host's reason
    let mut ignition = vm_manifest("ignition", "default", json!({}));
    ignition["spec"]["template"]["metadata"]["annotations"] =
        json!({"kubevirt.io/ignitiondata": "{}"});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(ignition).unwrap(),
    )
    .await
    .unwrap();
    for (_, vm, _) in &cases {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(vm.clone()).unwrap(),
        )
        .await
        .unwrap();
    }
    api.create(
        &PostParams::default(),
        &serde_json::from_value(good).unwrap(),
    )
    .await
    .unwrap();
    let refused = cases
        .iter()
        .map(|(n, _, f)| (*n, *f))
        .chain(std::iter::once(("ignition", "the host cluster refused it")));
    for (name, field) in refused {
        let ev = sync_refused(&t.client(), "default", name, WAIT).await;
        let msg = ev.message.unwrap_or_default();
        assert!(msg.contains(field), "{name}: {msg}");
    }
    // a VM with guest-only KubeVirt annotations and its own annotations is synced; none of the
    // refused ones is on the host
    let host = env.host_api(&vm_resource(), &t.host_ns("default"));
    let synced = wait_for("the good VM on the host", WAIT, || {
        let host = host.clone();
        async move { get(&host, "good").await }
    })
    .await;
    assert_eq!(
        synced.data["spec"]["template"]["metadata"]["annotations"]["example.com/owner"],
        "team-a"
    );
    for (name, _, _) in &cases {
        assert!(get(&host, name).await.is_none(), "{name} reached the host");
    }
}
