//! A live migration a tenant starts with the real virtctl: through the tenant apiserver and
//! kvtenant's subresource proxy to the host's real virt-api, which creates the migration;
//! KubeVirt's real virt-controller runs it (the node agent plays both virt-handlers: nothing is
//! copied, no VM boots) and the tenant sees its instance on the new node. The VirtualCluster
//! allows migrations (`spec.vmPolicy.allowMigrations`); `kubevirt_migrations.rs` tests the default.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

fn node_of(vmi: &DynamicObject) -> Option<String> {
    vmi.data["status"]["nodeName"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread")]
async fn virtctl_migrate_in_the_tenant_moves_the_instance_on_the_host() {
    let env = Env::start(1).await;
    let shared = env.syncer.as_ref().unwrap().tenants();
    let _proxy = Proxy::start(shared, ProxyConfig::local()).await.unwrap();
    let t = &env.tenants[0];
    // migrating is the VirtualCluster's choice (spec.vmPolicy.allowMigrations, default false)
    kube::Api::<kvtenant_api::VirtualCluster>::namespaced(env.host_client(), VC_NAMESPACE)
        .patch(
            &t.vc.name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"vmPolicy": {"allowMigrations": true}}})),
        )
        .await
        .unwrap();
    let tenants = env.syncer.as_ref().unwrap().tenants();
    eventually("the syncer serving the new policy", WAIT, || async {
        tenants
            .get(&t.vc.uid)
            .is_some_and(|h| h.spec.vm_policy.allow_migrations)
    })
    .await;
    wait_subresources_available(&t.client(), WAIT).await;
    let vms: Api<DynamicObject> = Api::namespaced_with(t.client(), "default", &vm_resource());
    vms.create(
        &PostParams::default(),
        &serde_json::from_value(vm_manifest("vm1", "default", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let tenant_vmis: Api<DynamicObject> =
        Api::namespaced_with(t.client(), "default", &vmi_resource());
    let running = |v: &DynamicObject| {
        v.data["status"]["phase"] == "Running"
            && v.data["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    };
    let before = wait_for("the tenant VMI Running and Ready", WAIT, || async {
        get(&tenant_vmis, "vm1").await.filter(running)
    })
    .await;
    let source = node_of(&before).unwrap();

    let out = Command::new(&env.kv.binaries().virtctl)
        .arg("--kubeconfig")
        .arg(t.kubeconfig())
        .args(["migrate", "vm1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "virtctl migrate: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // the migration exists on the host, in the tenant's namespace, and succeeds
    let vmim_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstanceMigration"),
        "virtualmachineinstancemigrations",
    );
    let host_vmims = env.host_api(&vmim_ar, &t.host_ns("default"));
    wait_for("the host migration Succeeded", WAIT, || async {
        host_vmims
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|m| m.data["status"]["phase"] == "Succeeded")
    })
    .await;
    // the tenant sees its instance on the other node, migration completed
    let after = wait_for("the tenant VMI on the new node", WAIT, || async {
        get(&tenant_vmis, "vm1")
            .await
            .filter(|v| running(v) && node_of(v).is_some_and(|n| n != source))
    })
    .await;
    assert_eq!(
        after.data.pointer("/status/migrationState/completed"),
        Some(&Value::Bool(true))
    );
}
