//! Helpers shared by the KubeVirt integration tests: a control plane with KubeVirt's real
//! virt-api and virt-controller (plus kube-scheduler, kwok and the node agent), VMs, waits.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use testenv::kubevirt::{KubeVirt, KubeVirtOptions};
use testenv::testing::wait_for;
use testenv::{ControlPlane, Options};

pub const WAIT: Duration = Duration::from_secs(60);

pub fn vm_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
        "virtualmachines",
    )
}

pub fn vmi_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstance"),
        "virtualmachineinstances",
    )
}

pub struct Host {
    pub kv: KubeVirt,
    pub client: Client,
    pub cp: ControlPlane,
}

pub async fn host(name: &str, ns: &str) -> Host {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,testenv=info,kube_client::client::builder=off".into()),
        )
        .with_test_writer()
        .try_init();
    let cp = ControlPlane::start(Options::new(name).with_controller_manager())
        .await
        .expect("control plane");
    let kv = KubeVirt::start(&cp, KubeVirtOptions::new())
        .await
        .expect("KubeVirt");
    eprintln!("[{name}] KubeVirt started in {:.1?}", kv.started_after);
    let client = cp.client().unwrap();
    Api::<Namespace>::all(client.clone())
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    Host { kv, client, cp }
}

pub fn vm(ns: &str, name: &str, run_strategy: &str) -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "runStrategy": run_strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "domain": {
                        "devices": {
                            "disks": [{"name": "root", "disk": {"bus": "virtio"}}],
                            "interfaces": [{"name": "default", "masquerade": {}}],
                        },
                        "resources": {"requests": {"memory": "128Mi"}},
                    },
                    "networks": [{"name": "default", "pod": {}}],
                    "volumes": [{"name": "root", "containerDisk": {"image": "quay.io/containerdisks/fedora:41"}}],
                },
            },
        },
    })
}

pub async fn create_vm(client: &Client, ns: &str, body: Value) -> DynamicObject {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &vm_ar());
    api.create(
        &PostParams::default(),
        &serde_json::from_value(body).unwrap(),
    )
    .await
    .expect("create VM")
}

pub async fn get(client: &Client, ar: &ApiResource, ns: &str, name: &str) -> Option<DynamicObject> {
    Api::<DynamicObject>::namespaced_with(client.clone(), ns, ar)
        .get_opt(name)
        .await
        .unwrap()
}

pub fn at<'a>(o: &'a DynamicObject, ptr: &str) -> Option<&'a Value> {
    o.data.pointer(ptr)
}

pub fn condition_true(o: &DynamicObject, kind: &str) -> bool {
    at(o, "/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == kind && c["status"] == "True")
        })
}

/// Waits for the VMI to be Running (node agent) and Ready (virt-controller, from the pod).
pub async fn vmi_running(client: &Client, ns: &str, name: &str) -> DynamicObject {
    wait_for(
        &format!("VMI {ns}/{name} Running and Ready"),
        WAIT,
        || async {
            get(client, &vmi_ar(), ns, name).await.filter(|v| {
                at(v, "/status/phase") == Some(&json!("Running")) && condition_true(v, "Ready")
            })
        },
    )
    .await
}

pub async fn vm_status(client: &Client, ns: &str, name: &str, want: &str) -> DynamicObject {
    wait_for(&format!("VM {ns}/{name} {want}"), WAIT, || async {
        get(client, &vm_ar(), ns, name)
            .await
            .filter(|v| at(v, "/status/printableStatus") == Some(&json!(want)))
    })
    .await
}
