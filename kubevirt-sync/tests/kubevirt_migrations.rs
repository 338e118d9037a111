//! Migration rights (`spec.vmPolicy.allowMigrations`), with KubeVirt's real virt-api and
//! virt-controller on the host (the node agent plays virt-handler: nothing is copied, no VM
//! boots): by default a tenant's VirtualMachineInstanceMigration is refused by the syncer with a
//! SyncRefused Event naming the field and `virtctl migrate` by the subresource proxy; a
//! migration the host makes (as a node drain does) is shown in the tenant read-only, status
//! included, and a tenant deleting it neither cancels the host's migration nor loses the view;
//! once the VirtualCluster allows migrations, the tenant's migration reaches the host.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kvtenant_api::VirtualCluster;
use kvtenant_kubevirt_sync::proxy::{Proxy, ProxyConfig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

fn vmim_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstanceMigration"),
        "virtualmachineinstancemigrations",
    )
}

fn vmim(name: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": name}, "spec": {"vmiName": "vm1"}}))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_are_the_virtual_clusters_choice_and_host_migrations_are_shown() {
    let env = Env::start(1).await;
    let shared = env.syncer.as_ref().unwrap().tenants();
    let _proxy = Proxy::start(shared, ProxyConfig::local()).await.unwrap();
    let t = &env.tenants[0];
    let tc = t.client();
    wait_subresources_available(&tc, WAIT).await;
    let vms: Api<DynamicObject> = Api::namespaced_with(tc.clone(), "default", &vm_resource());
    vms.create(
        &PostParams::default(),
        &serde_json::from_value(vm_manifest("vm1", "default", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let tenant_vmis: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "default", &vmi_resource());
    wait_for("the tenant VMI Running", WAIT, || async {
        get(&tenant_vmis, "vm1")
            .await
            .filter(|v| v.data["status"]["phase"] == "Running")
    })
    .await;

    // the tenant's own migration: refused by the syncer, naming the field
    let tenant_vmims: Api<DynamicObject> =
        Api::namespaced_with(tc.clone(), "default", &vmim_resource());
    tenant_vmims
        .create(&PostParams::default(), &vmim("mine"))
        .await
        .unwrap();
    let event = sync_refused(&tc, "default", "mine", WAIT).await;
    let message = event.message.unwrap_or_default();
    assert!(
        message.contains("spec.vmPolicy.allowMigrations"),
        "{message}"
    );
    let host_ns = t.host_ns("default");
    let host_vmims = env.host_api(&vmim_resource(), &host_ns);
    assert!(
        get(&host_vmims, "mine").await.is_none(),
        "refused: not on the host"
    );

    // virtctl migrate: refused by the proxy (the host's virt-api would create the migration)
    let out = Command::new(&env.kv.binaries().virtctl)
        .arg("--kubeconfig")
        .arg(t.kubeconfig())
        .args(["migrate", "vm1"])
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "virtctl migrate: {printed}");
    assert!(printed.contains("allowMigrations"), "{printed}");

    // a migration the host makes (a drain's): mirrored up with its status
    let drain = host_vmims
        .create(&PostParams::default(), &vmim("drain-1"))
        .await
        .unwrap();
    let mirror = wait_for(
        "the host's migration Succeeded in the tenant",
        WAIT,
        || async {
            get(&tenant_vmims, "drain-1")
                .await
                .filter(|m| m.data["status"]["phase"] == "Succeeded")
        },
    )
    .await;
    assert_eq!(mirror.data["spec"]["vmiName"], "vm1");

    // the tenant deletes the mirror: the host's migration stays and is shown again
    tenant_vmims
        .delete("drain-1", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the mirror shown again", WAIT, || async {
        get(&tenant_vmims, "drain-1")
            .await
            .filter(|m| m.metadata.uid != mirror.metadata.uid)
            .filter(|m| m.metadata.deletion_timestamp.is_none())
    })
    .await;
    let still = get(&host_vmims, "drain-1")
        .await
        .expect("the host migration");
    assert_eq!(still.metadata.uid, drain.metadata.uid);

    // the VirtualCluster allows migrations: the tenant's migration reaches the host
    Api::<VirtualCluster>::namespaced(env.host_client(), VC_NAMESPACE)
        .patch(
            &t.vc.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"vmPolicy": {"allowMigrations": true}}})),
        )
        .await
        .unwrap();
    wait_for("the tenant's migration on the host", WAIT, || {
        get(&host_vmims, "mine")
    })
    .await;
}
