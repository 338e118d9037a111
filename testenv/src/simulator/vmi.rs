//! The simulated VirtualMachineInstance lifecycle (virt-controller's VMI controller and
//! virt-handler in one): Pending → Scheduled → Running, a short delay before each step.
//!
//! VMIs have no `/status` subresource, so every status change is a write of the whole object.
//! A Running VMI has `status.nodeName` and the `kubevirt.io/nodeName` label, a fake pod-network
//! address in `status.interfaces[0]` (data only: nothing listens there) and the conditions Ready,
//! LiveMigratable and AgentConnected. No virt-launcher pod is created and no VM boots.
//!
//! A deleted VMI loses the finalizers KubeVirt puts on it (`kubevirt.io/foregroundDeleteVirtualMachine`
//! from the VMI mutating webhook, `kubevirt.io/virtualMachineControllerFinalize` from the VM
//! controller) once it is marked Succeeded. A VMI whose controlling VM is gone is deleted.

use std::sync::Arc;

use kube::api::{DeleteParams, DynamicObject, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::controller::{Ctx, ReconcileError};
use super::kinds::{self, FINALIZER_FOREGROUND_DELETE, FINALIZER_VM_CONTROLLER, LABEL_NODE_NAME};
use super::util::{self, phase};

pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let vmis = ctx.api(&ns, &kinds::vmi());
    let Some(mut vmi) = vmis.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };

    if vmi.meta().deletion_timestamp.is_some() {
        let ours = [FINALIZER_FOREGROUND_DELETE, FINALIZER_VM_CONTROLLER];
        let finalizers = vmi.finalizers().to_vec();
        if finalizers.iter().any(|f| ours.contains(&f.as_str())) {
            vmi.meta_mut().finalizers = Some(
                finalizers
                    .into_iter()
                    .filter(|f| !ours.contains(&f.as_str()))
                    .collect(),
            );
            if !util::is_final_phase(phase(&vmi)) {
                set_phase(&mut vmi, "Succeeded");
                set_ready(&mut vmi, false);
            }
            vmis.replace(&name, &PostParams::default(), &vmi).await?;
        }
        return Ok(Action::await_change());
    }

    if let Some((vm_name, vm_uid)) = util::controller_owner(&vmi, "VirtualMachine") {
        let owner_alive = ctx
            .api(&ns, &kinds::vm())
            .get_opt(vm_name)
            .await?
            .is_some_and(|vm| vm.uid().as_deref() == Some(vm_uid));
        if !owner_alive {
            tracing::debug!(%ns, %name, "simulator: deleting the VMI of a deleted VM");
            match vmis.delete(&name, &DeleteParams::background()).await {
                Ok(_) => ctx.counters.inc(&ctx.counters.vmis_deleted),
                Err(e) if util::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(Action::await_change());
        }
    }

    match phase(&vmi) {
        "" | "Pending" | "Scheduling" => {
            tokio::time::sleep(ctx.phase_delay).await;
            let node = ctx.first_node();
            vmi.labels_mut()
                .insert(LABEL_NODE_NAME.into(), node.clone());
            set_phase(&mut vmi, "Scheduled");
            status_mut(&mut vmi).insert("nodeName".into(), json!(node));
            vmis.replace(&name, &PostParams::default(), &vmi).await?;
        }
        "Scheduled" => {
            tokio::time::sleep(ctx.phase_delay).await;
            let (ip, mac) = ctx.next_address();
            let iface = util::at(&vmi.data, &["spec", "domain", "devices", "interfaces"])
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .and_then(|i| i.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_string();
            set_phase(&mut vmi, "Running");
            set_ready(&mut vmi, true);
            let now = util::now();
            let status = status_mut(&mut vmi);
            status.insert(
                "interfaces".into(),
                json!([{
                    "name": iface,
                    "interfaceName": "eth0",
                    "ipAddress": ip,
                    "ipAddresses": [ip],
                    "mac": mac,
                    "infoSource": "domain, guest-agent",
                    "queueCount": 1,
                }]),
            );
            upsert_condition(status, "LiveMigratable", true, &now);
            upsert_condition(status, "AgentConnected", true, &now);
            status.insert(
                "guestOSInfo".into(),
                json!({
                    "id": "kvtenant-simulator",
                    "name": "KubeVirt simulator (no guest runs)",
                    "prettyName": "kvtenant KubeVirt simulator",
                    "version": "0",
                }),
            );
            status.insert("qosClass".into(), json!("Burstable"));
            status.insert(
                "launcherContainerImageVersion".into(),
                json!("kvtenant-simulator"),
            );
            vmis.replace(&name, &PostParams::default(), &vmi).await?;
        }
        _ => {}
    }
    Ok(Action::await_change())
}

/// The VMI's `status` object, created if missing.
pub fn status_mut(vmi: &mut DynamicObject) -> &mut serde_json::Map<String, Value> {
    let data = util::obj_mut(&mut vmi.data);
    util::obj_mut(data.entry("status").or_insert_with(|| json!({})))
}

/// Sets `status.phase` and appends a phase transition timestamp.
pub fn set_phase(vmi: &mut DynamicObject, phase: &str) {
    let now = util::now();
    let status = status_mut(vmi);
    status.insert("phase".into(), json!(phase));
    let stamps = status
        .entry("phaseTransitionTimestamps")
        .or_insert_with(|| json!([]));
    if let Some(a) = stamps.as_array_mut() {
        a.push(json!({"phase": phase, "phaseTransitionTimestamp": now}));
    }
}

fn set_ready(vmi: &mut DynamicObject, ready: bool) {
    let now = util::now();
    upsert_condition(status_mut(vmi), "Ready", ready, &now);
}

/// Sets a VMI condition (`status` True/False), keeping the transition time when unchanged.
pub fn upsert_condition(
    status: &mut serde_json::Map<String, Value>,
    type_: &str,
    ok: bool,
    now: &str,
) {
    let value = if ok { "True" } else { "False" };
    let conds = status.entry("conditions").or_insert_with(|| json!([]));
    if !conds.is_array() {
        *conds = json!([]);
    }
    if let Some(a) = conds.as_array_mut() {
        match a
            .iter_mut()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        {
            Some(c) if c.get("status").and_then(Value::as_str) == Some(value) => {}
            Some(c) => {
                c["status"] = json!(value);
                c["lastTransitionTime"] = json!(now);
            }
            None => a.push(json!({
                "type": type_,
                "status": value,
                "lastProbeTime": null,
                "lastTransitionTime": now,
            })),
        }
    }
}

/// Removes a VMI condition; reports whether it was there.
pub fn remove_condition(status: &mut serde_json::Map<String, Value>, type_: &str) -> bool {
    let Some(a) = status.get_mut("conditions").and_then(Value::as_array_mut) else {
        return false;
    };
    let before = a.len();
    a.retain(|c| c.get("type").and_then(Value::as_str) != Some(type_));
    a.len() != before
}
