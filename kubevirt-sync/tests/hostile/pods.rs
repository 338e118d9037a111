//! Pods that would reach the host node or outrank the host's workloads, created straight in the
//! tenant's apiserver (no webhook): refused by the syncer with an Event naming the field, never
//! on the host; a tenant's nodeName is the host scheduler's to choose, never the tenant's.

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::WAIT;
use super::common::*;
use super::report::{Finding, Table};

const TEST: &str = "kubevirt-sync/tests/hostile/pods.rs::pod_escapes_never_reach_the_host";

fn pod(name: &str, spec: Value, container_sc: Value) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    if !container_sc.is_null() {
        p["spec"]["containers"][0]["securityContext"] = container_sc;
    }
    for (k, v) in spec.as_object().unwrap() {
        p["spec"][k] = v.clone();
    }
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_escapes_never_reach_the_host() {
    let env = Env::start(1).await;
    let t = &env.tenants[0];
    // the ServiceAccount admission of the tenant's apiserver wants the pod's ServiceAccount (no
    // controller-manager runs in this tenant to make it)
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    Api::<ServiceAccount>::namespaced(t.client(), "default")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    // the tenant's RuntimeClass admission wants the class to exist in the tenant: a tenant
    // admin makes one naming a host handler
    let rc: RuntimeClass = serde_json::from_value(
        json!({"metadata": {"name": "host-runc-unconfined"}, "handler": "runc"}),
    )
    .unwrap();
    Api::<RuntimeClass>::all(t.client())
        .create(&PostParams::default(), &rc)
        .await
        .unwrap();
    let none = Value::Null;
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "host-network",
            pod("host-network", json!({"hostNetwork": true}), none.clone()),
            "spec.hostNetwork",
            "hostNetwork: true (the host node's network namespace)",
        ),
        (
            "host-pid",
            pod("host-pid", json!({"hostPID": true}), none.clone()),
            "spec.hostPID",
            "hostPID: true (every process of the host node)",
        ),
        (
            "host-ipc",
            pod("host-ipc", json!({"hostIPC": true}), none.clone()),
            "spec.hostIPC",
            "hostIPC: true",
        ),
        (
            "host-path",
            pod(
                "host-path",
                json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                none.clone(),
            ),
            "spec.volumes[0].hostPath",
            "a hostPath volume of the node's /",
        ),
        (
            "privileged",
            pod("privileged", json!({}), json!({"privileged": true})),
            "spec.containers[0].securityContext.privileged",
            "a privileged container",
        ),
        (
            "sys-admin",
            pod(
                "sys-admin",
                json!({}),
                json!({"capabilities": {"add": ["SYS_ADMIN"]}}),
            ),
            "spec.containers[0].securityContext.capabilities.add",
            "capability SYS_ADMIN added",
        ),
        (
            "unsafe-sysctl",
            pod(
                "unsafe-sysctl",
                json!({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}),
                none.clone(),
            ),
            "spec.securityContext.sysctls[0]",
            "an unsafe sysctl (kernel.msgmax)",
        ),
        (
            "pod-critical",
            pod(
                "pod-critical",
                json!({"priorityClassName": "system-node-critical"}),
                none.clone(),
            ),
            "spec.priorityClassName",
            "priorityClassName system-node-critical",
        ),
        (
            "pod-tolerant",
            pod(
                "pod-tolerant",
                json!({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}),
                none.clone(),
            ),
            "spec.tolerations[0]",
            "toleration of the host's control-plane taint",
        ),
        (
            "pod-node-selector",
            pod(
                "pod-node-selector",
                json!({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}),
                none.clone(),
            ),
            "spec.nodeSelector[node-role.kubernetes.io/control-plane]",
            "nodeSelector on a host node label the tenant does not see",
        ),
        (
            "pod-scheduler",
            pod(
                "pod-scheduler",
                json!({"schedulerName": "host-scheduler"}),
                none.clone(),
            ),
            "spec.schedulerName",
            "a host scheduler of the tenant's choosing",
        ),
        (
            "runtime-class",
            pod(
                "runtime-class",
                json!({"runtimeClassName": "host-runc-unconfined"}),
                none.clone(),
            ),
            "spec.runtimeClassName",
            "a host RuntimeClass",
        ),
    ];
    let pods: Api<Pod> = Api::namespaced(t.client(), "default");
    for (_, p, _, _) in &cases {
        pods.create(
            &PostParams::default(),
            &serde_json::from_value(p.clone()).unwrap(),
        )
        .await
        .unwrap();
    }
    // a pod naming a host node itself: synced, but where it runs is the host scheduler's choice
    let pinned = pod(
        "pinned",
        json!({"nodeName": "kvtenant-host-control-plane"}),
        none,
    );
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pinned).unwrap(),
    )
    .await
    .unwrap();
    let host_pods: Api<Pod> = Api::namespaced(env.host_client(), &t.host_ns("default"));
    let on_host = wait_for("the pinned pod's host copy", WAIT, || async {
        host_pods.get_opt("pinned").await.ok().flatten()
    })
    .await;
    let host_node = on_host.spec.and_then(|s| s.node_name);
    let leaked = usize::from(host_node.as_deref() == Some("kvtenant-host-control-plane"));
    Finding::new(
        Table::Hostile,
        "Pod: nodeName",
        "a pod with nodeName of a host node of the tenant's choosing",
        format!(
            "synced without it: the host scheduler places the copy (bound to {})",
            host_node.as_deref().unwrap_or("no node yet")
        ),
        TEST,
    )
    .objects(2)
    .leaked(leaked)
    .record();
    for (name, _, field, tried) in &cases {
        let msg = sync_refused(&t.client(), "default", name, WAIT)
            .await
            .message
            .unwrap_or_default();
        assert!(msg.contains(field), "{name}: {msg}");
        let leaked = usize::from(host_pods.get_opt(name).await.unwrap().is_some());
        Finding::new(
            Table::Hostile,
            format!("Pod: {name}"),
            *tried,
            format!("refused, Event names `{field}`"),
            TEST,
        )
        .objects(2)
        .leaked(leaked)
        .record();
    }
}
