//! Integration tests of KubeVirt's **real** virt-api and virt-controller (v1.8.1, built from the
//! Go module proxy) on a testenv control plane, with kube-scheduler, kwok (simulated nodes and
//! pods) and the node agent (simulated virt-handler). Nothing boots: "Running" means KubeVirt's
//! control plane did its part and the node agent reported the guest up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams, PostParams, WatchParams};
use kube::core::{ApiResource, GroupVersionKind, WatchEvent};
use serde_json::{Value, json};
use testenv::process::alive;
use testenv::testing::wait_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_reaches_running_through_the_real_virt_controller() {
    let h = host("kv-running", "vms").await;
    create_vm(&h.client, "vms", vm("vms", "vm1", "Always")).await;

    let vmi = vmi_running(&h.client, "vms", "vm1").await;
    // virt-controller made the VMI from the VM...
    let owner = &vmi.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("VirtualMachine", "vm1")
    );
    // ...and its virt-launcher pod, which kube-scheduler bound to a kwok node
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "vms");
    let launcher = pods
        .list(&ListParams::default().labels("kubevirt.io=virt-launcher"))
        .await
        .unwrap()
        .items;
    assert_eq!(launcher.len(), 1, "one virt-launcher pod");
    let pod = &launcher[0];
    let node = pod.spec.as_ref().unwrap().node_name.clone().unwrap();
    assert!(h.kv.nodes().contains(&node), "{node} is a kwok node");
    assert_eq!(at(&vmi, "/status/nodeName"), Some(&json!(node)));
    // the node agent (simulated virt-handler) reported the pod IP and the guest
    let pod_ip = pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    assert_eq!(
        at(&vmi, "/status/interfaces/0/ipAddress"),
        Some(&json!(pod_ip))
    );
    assert_eq!(
        at(&vmi, "/status/guestOSInfo/id"),
        Some(&json!("simulated"))
    );
    // virt-controller's part: Ready from the pod, the VM's status from the VMI
    for kind in ["Ready", "LiveMigratable", "AgentConnected"] {
        assert!(
            condition_true(&vmi, kind),
            "condition {kind} True in {:?}",
            at(&vmi, "/status/conditions")
        );
    }
    vm_status(&h.client, "vms", "vm1", "Running").await;
    // virt-controller writes printableStatus and ready in separate passes: wait for both
    wait_for("VM vms/vm1 ready", WAIT, || async {
        get(&h.client, &vm_ar(), "vms", "vm1")
            .await
            .filter(|v| at(v, "/status/ready") == Some(&json!(true)))
    })
    .await;
    assert_eq!(h.kv.node_agent_stats().vmis_started, 1);
    // the heartbeat, written as kubevirt-handler bound to its node, passed KubeVirt's node
    // restriction policy
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(h.client.clone());
    let n = nodes.get(&node).await.unwrap();
    assert!(
        n.annotations().contains_key("kubevirt.io/heartbeat"),
        "{:?}",
        n.annotations()
    );
    assert_eq!(h.kv.node_agent_stats().errors, 0, "no refused write");

    // everything dies with its owner
    let mut pids = h.kv.pids();
    pids.extend(h.cp.pids());
    drop(h);
    for pid in pids {
        assert!(!alive(pid), "process {pid} still running after drop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_vm_is_refused_with_kubevirts_own_message() {
    let h = host("kv-invalid", "vms").await;
    // a disk naming no volume, applied with the real kubectl as a user would
    let mut bad = vm("vms", "bad", "Halted");
    bad["spec"]["template"]["spec"]["volumes"] = json!([]);
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(h.cp.kubeconfig_path())
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(bad.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("kubectl apply: {stderr}");
    assert!(!out.status.success(), "an invalid VM was accepted");
    // KubeVirt's own wording (pkg/virt-api/webhooks), as kubectl shows a 422 with causes
    assert!(
        stderr.contains("spec.template.spec.domain.devices.disks[0].Name 'root' not found."),
        "{stderr}"
    );
    // the API answer names the webhook that refused it
    let api: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), "vms", &vm_ar());
    let err = api
        .create(
            &PostParams::default(),
            &serde_json::from_value(bad).unwrap(),
        )
        .await
        .expect_err("an invalid VM was accepted");
    let kube::Error::Api(status) = err else {
        panic!("expected an API error, got {err}");
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains(
            "admission webhook \"virtualmachine-validator.kubevirt.io\" denied the request"
        ),
        "{}",
        status.message
    );
    assert!(get(&h.client, &vm_ar(), "vms", "bad").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_through_the_aggregated_api_ends_succeeded() {
    let h = host("kv-stop", "vms").await;
    create_vm(&h.client, "vms", vm("vms", "vm1", "Always")).await;
    let vmi = vmi_running(&h.client, "vms", "vm1").await;
    vm_status(&h.client, "vms", "vm1", "Running").await;

    // watch the VMI from its current version, to see every phase it passes
    let vmis: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), "vms", &vmi_ar());
    let rv = vmi.resource_version().unwrap();
    let mut events = vmis
        .watch(&WatchParams::default().fields("metadata.name=vm1"), &rv)
        .await
        .unwrap()
        .boxed();

    let req = http::Request::put(
        "/apis/subresources.kubevirt.io/v1/namespaces/vms/virtualmachines/vm1/stop",
    )
    .header("content-type", "application/json")
    .body(b"{}".to_vec())
    .unwrap();
    let (parts, _) = h
        .client
        .send(req.map(Into::into))
        .await
        .unwrap()
        .into_parts();
    assert_eq!(parts.status.as_u16(), 202, "stop answered {}", parts.status);

    let mut phases = Vec::new();
    let deleted = tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.try_next().await.unwrap() {
            match ev {
                WatchEvent::Modified(o) | WatchEvent::Added(o) => {
                    if let Some(p) = at(&o, "/status/phase").and_then(Value::as_str)
                        && phases.last().map(String::as_str) != Some(p)
                    {
                        phases.push(p.to_string());
                    }
                }
                WatchEvent::Deleted(_) => return true,
                _ => {}
            }
        }
        false
    })
    .await;
    assert_eq!(
        deleted,
        Ok(true),
        "VMI deleted after stop; phases seen {phases:?}"
    );
    assert_eq!(
        phases.last().map(String::as_str),
        Some("Succeeded"),
        "{phases:?}"
    );
    assert!(!phases.iter().any(|p| p == "Failed"), "{phases:?}");
    vm_status(&h.client, "vms", "vm1", "Stopped").await;
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "vms");
    wait_for("virt-launcher pod gone", WAIT, || async {
        pods.list(&ListParams::default().labels("kubevirt.io=virt-launcher"))
            .await
            .unwrap()
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(h.kv.node_agent_stats().vmis_stopped, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_with_a_datavolume_template_runs_on_simulated_cdi() {
    let h = host("kv-dv", "vms").await;
    let mut body = vm("vms", "vm-dv", "Always");
    body["spec"]["dataVolumeTemplates"] = json!([{
        "metadata": {"name": "vm-dv-root"},
        "spec": {"storage": {"resources": {"requests": {"storage": "2Gi"}}},
                 "source": {"blank": {}}},
    }]);
    body["spec"]["template"]["spec"]["volumes"] =
        json!([{"name": "root", "dataVolume": {"name": "vm-dv-root"}}]);
    create_vm(&h.client, "vms", body).await;
    // virt-controller made the DataVolume; simulated CDI reported it imported, with a claim that
    // kube-controller-manager bound; kube-scheduler placed the launcher pod using it
    vmi_running(&h.client, "vms", "vm-dv").await;
    let dv_ar = testenv::cdi::datavolume_resource();
    let dv = get(&h.client, &dv_ar, "vms", "vm-dv-root").await.unwrap();
    assert_eq!(at(&dv, "/status/phase"), Some(&json!("Succeeded")));
    let owner = &dv.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("VirtualMachine", "vm-dv")
    );
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(h.client.clone(), "vms");
    let claim = claims.get("vm-dv-root").await.unwrap();
    assert_eq!(claim.status.unwrap().phase.as_deref(), Some("Bound"));
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "vms");
    let pod = &pods
        .list(&ListParams::default().labels("kubevirt.io=virt-launcher"))
        .await
        .unwrap()
        .items[0];
    let uses_claim = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .any(|v| {
            v.persistent_volume_claim
                .as_ref()
                .is_some_and(|c| c.claim_name == "vm-dv-root")
        });
    assert!(uses_claim, "the launcher pod mounts the claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_halted_before_its_instance_ran_stops() {
    let h = host("kv-halt", "vms").await;
    create_vm(&h.client, "vms", vm("vms", "vm1", "Always")).await;
    // at once, before anything ran: virt-controller deletes the young VMI
    let vms: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), "vms", &vm_ar());
    vms.patch(
        "vm1",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"runStrategy": "Halted"}})),
    )
    .await
    .unwrap();
    vm_status(&h.client, "vms", "vm1", "Stopped").await;
    wait_for("the VMI gone", WAIT, || async {
        get(&h.client, &vmi_ar(), "vms", "vm1")
            .await
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_migration_moves_the_vmi_to_the_other_node() {
    let h = host("kv-migrate", "vms").await;
    create_vm(&h.client, "vms", vm("vms", "vm1", "Always")).await;
    let vmi = vmi_running(&h.client, "vms", "vm1").await;
    let source = at(&vmi, "/status/nodeName")
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();

    let vmim_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachineInstanceMigration"),
        "virtualmachineinstancemigrations",
    );
    let vmims: Api<DynamicObject> = Api::namespaced_with(h.client.clone(), "vms", &vmim_ar);
    let body = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceMigration",
                      "metadata": {"name": "mig1", "namespace": "vms"},
                      "spec": {"vmiName": "vm1"}});
    vmims
        .create(
            &PostParams::default(),
            &serde_json::from_value(body).unwrap(),
        )
        .await
        .unwrap();
    // real virt-controller drives the migration object; the node agent plays both handlers
    wait_for("the migration Succeeded", WAIT, || async {
        vmims
            .get_opt("mig1")
            .await
            .unwrap()
            .filter(|m| at(m, "/status/phase") == Some(&json!("Succeeded")))
    })
    .await;
    let moved = vmi_running(&h.client, "vms", "vm1").await;
    let target = at(&moved, "/status/nodeName").unwrap().as_str().unwrap();
    assert_ne!(target, source, "the VMI runs on the other node");
    assert_eq!(
        at(&moved, "/status/migrationState/completed"),
        Some(&json!(true))
    );
    assert_eq!(
        moved
            .labels()
            .get("kubevirt.io/nodeName")
            .map(String::as_str),
        Some(target)
    );
    // the source launcher pod ended; the target pod runs on the target node
    let pods: Api<Pod> = Api::namespaced(h.client.clone(), "vms");
    wait_for("the source pod Succeeded", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("kubevirt.io=virt-launcher"))
            .await
            .unwrap()
            .items;
        let on = |node: &str, phase: &str| {
            list.iter().any(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(phase)
            })
        };
        (on(&source, "Succeeded") && on(target, "Running")).then_some(())
    })
    .await;
    vm_status(&h.client, "vms", "vm1", "Running").await;
    assert_eq!(h.kv.node_agent_stats().migration_steps, 4);
}
