//! `spec.sync.pods`: an External virtual cluster whose own kubelets run its pods does not have
//! them copied to the host, whether it says so (`pods: false`) or, left unset, has Nodes of its
//! own; one without Nodes (the usual imported control plane) has them copied as before. Real
//! apiservers and kubectl; the host pods of the control tenant run on kwok nodes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Pod, Secret, Service, ServiceAccount};
use kube::api::{Api, PostParams};
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::VirtualClusterRef;
use serde_json::{Value, json};
use testenv::{ControlPlane, Options};

const WAIT: Duration = Duration::from_secs(120);

fn apply(kubeconfig: &std::path::Path, manifest: &Value) {
    let path = std::env::temp_dir().join(format!(
        "kvtenant-podswitch-{}-{}-{}.json",
        std::process::id(),
        kubeconfig.to_string_lossy().len(),
        manifest["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::write(&path, manifest.to_string()).unwrap();
    kubectl(kubeconfig, &["apply", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
}

/// Registers an External VirtualCluster with this `spec.sync`.
async fn register(
    host: &kube::Client,
    name: &str,
    cp: &ControlPlane,
    sync: Value,
) -> VirtualClusterRef {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": format!("{name}-kubeconfig"), "namespace": VC_NAMESPACE},
        "stringData": {"kubeconfig": std::fs::read_to_string(cp.kubeconfig_path()).unwrap()}
    }))
    .unwrap();
    Api::<Secret>::namespaced(host.clone(), VC_NAMESPACE)
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let vc: VirtualCluster = serde_json::from_value(json!({
        "apiVersion": "tenancy.kvtenant.io/v1alpha1", "kind": "VirtualCluster",
        "metadata": {"name": name, "namespace": VC_NAMESPACE},
        "spec": {"controlPlane": {"mode": "External",
            "kubeconfigSecretRef": {"name": format!("{name}-kubeconfig")}},
            "sync": sync}
    }))
    .unwrap();
    let created = Api::<VirtualCluster>::namespaced(host.clone(), VC_NAMESPACE)
        .create(&PostParams::default(), &vc)
        .await
        .unwrap();
    VirtualClusterRef::from_virtualcluster(&created).unwrap()
}

/// A pod using a ConfigMap, and a Service (always synced), in the tenant's `default` (once its
/// controllers made the ServiceAccount a pod needs).
async fn workload(client: kube::Client, kubeconfig: &std::path::Path) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
    wait_for("the default ServiceAccount", WAIT, || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;
    apply(
        kubeconfig,
        &json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "namespace": "default"}, "data": {"a": "1"}}),
    );
    // not waiting for the tenant's DNS: synced at once if pods are synced
    apply(
        kubeconfig,
        &json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "default"},
            "spec": {"dnsPolicy": "Default", "containers": [{"name": "c", "image": "busybox",
                "volumeMounts": [{"name": "s", "mountPath": "/etc/s"}]}],
                "volumes": [{"name": "s", "configMap": {"name": "settings"}}]}}),
    );
    apply(
        kubeconfig,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"},
            "spec": {"ports": [{"port": 80}]}}),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_are_not_copied_for_an_imported_cluster_with_its_own_kubelets() {
    let env = Env::start_with_controllers(1).await;
    let hc = env.host_client();
    let control = &env.tenants[0];

    // turned off explicitly
    let off_cp = ControlPlane::start(
        Options::new("tenant-off").with_controllers(kvtenant_api::TENANT_CONTROLLERS),
    )
    .await
    .unwrap();
    let off = register(&hc, "off", &off_cp, json!({"pods": false})).await;
    // left unset, with a Node of its own (a kubelet registered it) before kvtenant serves it
    let own_cp = ControlPlane::start(
        Options::new("tenant-own").with_controllers(kvtenant_api::TENANT_CONTROLLERS),
    )
    .await
    .unwrap();
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "own-kubelet-1"}});
    apply(own_cp.kubeconfig_path(), &node);
    let own = register(&hc, "own", &own_cp, json!({})).await;
    for cp in [&off_cp, &own_cp] {
        wait_crd(&cp.client().unwrap(), "virtualmachines.kubevirt.io").await;
    }

    for (client, kc) in [
        (control.client(), control.kubeconfig()),
        (off_cp.client().unwrap(), off_cp.kubeconfig_path()),
        (own_cp.client().unwrap(), own_cp.kubeconfig_path()),
    ] {
        workload(client, kc).await;
    }
    // the control tenant's pod and the ConfigMap it uses are copied
    let host_ns = control.host_ns("default");
    let host_pods: Api<Pod> = Api::namespaced(hc.clone(), &host_ns);
    let host_cms: Api<ConfigMap> = Api::namespaced(hc.clone(), &host_ns);
    eventually("the control tenant's pod on the host", WAIT, || async {
        host_pods.get_opt("web").await.ok().flatten().is_some()
    })
    .await;
    assert!(host_cms.get_opt("settings").await.unwrap().is_some());

    for (vc, cp) in [(&off, &off_cp), (&own, &own_cp)] {
        let host_ns = vc.host_namespace("default");
        // the Service is synced (the tenant is served)...
        let host_services: Api<Service> = Api::namespaced(hc.clone(), &host_ns);
        eventually(
            &format!("{}'s Service on the host", vc.name),
            WAIT,
            || async { host_services.get_opt("svc").await.ok().flatten().is_some() },
        )
        .await;
        // ...its pod, made before it, is not, nor the ConfigMap only the pod uses, nor is the
        // pod refused
        let host_pods: Api<Pod> = Api::namespaced(hc.clone(), &host_ns);
        let host_cms: Api<ConfigMap> = Api::namespaced(hc.clone(), &host_ns);
        assert!(
            host_pods.get_opt("web").await.unwrap().is_none(),
            "{}'s pod copied to the host",
            vc.name
        );
        assert!(host_cms.get_opt("settings").await.unwrap().is_none());
        let events: Api<Event> = Api::namespaced(cp.client().unwrap(), "default");
        let refused: Vec<Event> = events
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("SyncRefused"))
            .collect();
        assert!(refused.is_empty(), "{refused:?}");
        let tenant_pod: Api<Pod> = Api::namespaced(cp.client().unwrap(), "default");
        let p = tenant_pod.get("web").await.unwrap();
        assert!(
            p.spec.unwrap().node_name.is_none(),
            "kvtenant does not bind it: the tenant's own scheduler and kubelets would"
        );
    }
}
