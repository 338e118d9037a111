//! The syncer against real apiservers: one host running KubeVirt's real virt-api and
//! virt-controller (nodes, pods and virt-handler simulated: no VM boots) and tenant control
//! planes driven with the real kubectl.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "sync/lifecycle.rs"]
mod lifecycle;
#[path = "sync/refusals.rs"]
mod refusals;
#[path = "sync/vms.rs"]
mod vms;

use std::time::Duration;

/// Bound on each wait: generous, since CI shares 2 cores among several control planes.
const WAIT: Duration = Duration::from_secs(120);

/// One tenant with common's plain VM `vm1` created in its `default` namespace: the environment,
/// the tenant's VMs there and their host copies' namespace.
async fn env_with_vm1() -> (
    common::Env,
    kube::Api<kube::api::DynamicObject>,
    kube::Api<kube::api::DynamicObject>,
) {
    let env = common::Env::start(1).await;
    let t = &env.tenants[0];
    let api = kube::Api::namespaced_with(t.client(), "default", &common::vm_resource());
    let vm = common::vm_manifest("vm1", "default", serde_json::json!({}));
    api.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(vm).unwrap(),
    )
    .await
    .unwrap();
    let host = env.host_api(&common::vm_resource(), &t.host_ns("default"));
    (env, api, host)
}

// The tests, by topic; each runs its namesake in the module named.

// VMs synced both ways ([`vms`])

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_apply_runs_the_vm_on_the_host_and_status_comes_back() {
    vms::kubectl_apply_runs_the_vm_on_the_host_and_status_comes_back().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_with_the_same_names_do_not_collide() {
    vms::two_tenants_with_the_same_names_do_not_collide().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_of_three_shows_three_vms_and_instances_in_the_tenant() {
    vms::a_pool_of_three_shows_three_vms_and_instances_in_the_tenant().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_edit_keeps_the_firmware_identity_kubevirt_gave_the_host_vm() {
    vms::a_tenant_edit_keeps_the_firmware_identity_kubevirt_gave_the_host_vm().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_edit_stopping_the_vm_is_repaired_not_taken_up() {
    vms::a_host_edit_stopping_the_vm_is_repaired_not_taken_up().await;
}

// what the syncer refuses or leaves out ([`refusals`])

#[tokio::test(flavor = "multi_thread")]
async fn host_disk_and_node_pinning_are_refused_with_an_event() {
    refusals::host_disk_and_node_pinning_are_refused_with_an_event().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_datavolume_sync_template_volumes_show_and_direct_ones_are_refused() {
    refusals::without_datavolume_sync_template_volumes_show_and_direct_ones_are_refused().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn services_are_synced_and_the_tenant_shows_the_host_assigned_addresses() {
    refusals::services_are_synced_and_the_tenant_shows_the_host_assigned_addresses().await;
}

// the syncer and its VirtualCluster over time ([`lifecycle`])

#[tokio::test(flavor = "multi_thread")]
async fn a_syncer_killed_while_creating_200_vms_converges_after_restart() {
    lifecycle::a_syncer_killed_while_creating_200_vms_converges_after_restart().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_host_vms_and_resume_restores_them() {
    lifecycle::pause_stops_host_vms_and_resume_restores_them().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unusable_kubeconfig_is_reported_on_the_virtualcluster() {
    lifecycle::an_unusable_kubeconfig_is_reported_on_the_virtualcluster().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crd_copies_survive_a_restart_unwritten_and_follow_host_changes() {
    lifecycle::crd_copies_survive_a_restart_unwritten_and_follow_host_changes().await;
}
