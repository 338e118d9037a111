//! The real `kvtenant` binary against real apiservers (testenv): the admin commands a platform
//! admin runs, and kubectl after `connect`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "cli/admin.rs"]
mod admin;
#[path = "cli/dev.rs"]
mod dev;
#[path = "cli/port_forward.rs"]
mod port_forward;
#[path = "cli/support.rs"]
mod support;

// The tests, by topic; each runs its namesake in the module named.

// the admin commands ([`admin`])

#[tokio::test(flavor = "multi_thread")]
async fn create_list_connect_disconnect_pause_resume_delete() {
    admin::create_list_connect_disconnect_pause_resume_delete().await;
}

#[test]
fn crds_prints_the_committed_yaml() {
    admin::crds_prints_the_committed_yaml();
}

// `kvtenant dev` ([`dev`])

#[test]
fn dev_mode_runs_a_sample_vm_and_ctrl_c_cleans_up() {
    dev::dev_mode_runs_a_sample_vm_and_ctrl_c_cleans_up();
}

// `connect` port-forwarding ([`port_forward`])

#[tokio::test(flavor = "multi_thread")]
async fn connect_port_forwards_when_the_server_is_unreachable() {
    port_forward::connect_port_forwards_when_the_server_is_unreachable().await;
}
