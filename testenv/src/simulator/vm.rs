//! The simulated VirtualMachine controller (KubeVirt's `pkg/virt-controller/watch/vm`).
//!
//! * Runs the VM's run strategy: Always/RerunOnFailure/Once start a VMI, Halted stops it, Manual
//!   waits for `status.stateChangeRequests` (added by virt-api's start/stop/restart).
//! * The VMI has the VM's name and namespace, the template's labels, the template's annotations
//!   plus `kubevirt.io/vm-generation`, a controller owner reference to the VM and virt-controller's
//!   finalizer `kubevirt.io/virtualMachineControllerFinalize` (removed by the VMI controller when
//!   the VMI is deleted).
//! * Creates the DataVolumes of `spec.dataVolumeTemplates` (owned by the VM).
//! * Writes `status` (printableStatus, ready, created, conditions, runStrategy, generations,
//!   remaining stateChangeRequests) through the `/status` subresource, and emits Events.
//!
//! Unlike KubeVirt, the simulator puts **no finalizer on the VM**: a deleted VM is gone at once,
//! and the VMI controller then deletes its VMI (what KubeVirt's VM finalizer achieves). Pool
//! members whose pool is gone are deleted here, standing in for the garbage collector when no
//! kube-controller-manager runs.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};

use super::controller::{Ctx, ReconcileError, merge_status};
use super::kinds::{self, ANNOTATION_LATEST_OBSERVED, ANNOTATION_STORAGE_OBSERVED};
use super::util::{self, RunStrategy, controlled_by, controller_owner, phase, spec, status};

const RESYNC: Duration = Duration::from_secs(30);

pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let vms = ctx.api(&ns, &kinds::vm());
    let Some(mut vm) = vms.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if vm.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if let Some((pool, pool_uid)) = controller_owner(&vm, "VirtualMachinePool") {
        let alive = ctx
            .api(&ns, &kinds::pool())
            .get_opt(pool)
            .await?
            .is_some_and(|p| p.uid().as_deref() == Some(pool_uid));
        if !alive {
            tracing::debug!(%ns, %name, "simulator: deleting VM of a deleted pool");
            delete_ignoring_missing(&vms, &name).await?;
            return Ok(Action::await_change());
        }
    }
    if let Some(patched) = ensure_observed_annotations(&ctx, &vm).await? {
        vm = patched;
    }
    ensure_data_volumes(&ctx, &vm).await?;

    let uid = vm.uid().unwrap_or_default();
    let strategy = RunStrategy::of(spec(&vm));
    let vmis = ctx.api(&ns, &kinds::vmi());
    let mut vmi = vmis.get_opt(&name).await?;
    if let Some(v) = &vmi
        && util::controller_owner(v, "VirtualMachine").is_some()
        && !controlled_by(v, &uid)
    {
        // The VMI of an earlier VM of the same name; the VMI controller deletes it.
        return Ok(Action::requeue(Duration::from_millis(200)));
    }

    // State change requests first (restart = Stop(uid) then Start), in order.
    let mut requests: Vec<Value> = status(&vm)
        .get("stateChangeRequests")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut waiting = false;
    while let Some(req) = requests.first().cloned() {
        let action = req.get("action").and_then(Value::as_str).unwrap_or("");
        let req_uid = req.get("uid").and_then(Value::as_str);
        match (action, &vmi) {
            ("Stop", Some(v)) if req_uid.is_none() || req_uid == v.uid().as_deref() => {
                if v.meta().deletion_timestamp.is_none() {
                    stop_vmi(&ctx, &vm, v).await?;
                }
                waiting = true;
                break;
            }
            ("Start", Some(v)) if v.meta().deletion_timestamp.is_some() => {
                waiting = true;
                break;
            }
            ("Start", None) if strategy != RunStrategy::Halted => {
                vmi = Some(start_vmi(&ctx, &vm).await?);
                requests.remove(0);
            }
            _ => {
                requests.remove(0);
            }
        }
    }

    if !waiting {
        let previous = util::str_at(&vm.data, &["status", "runStrategy"]);
        let deleting = vmi
            .as_ref()
            .is_some_and(|v| v.meta().deletion_timestamp.is_some());
        match (strategy, &vmi) {
            (RunStrategy::Always, None) | (RunStrategy::Once, None) => {
                vmi = Some(start_vmi(&ctx, &vm).await?);
            }
            (RunStrategy::RerunOnFailure, None) if previous != Some("RerunOnFailure") => {
                vmi = Some(start_vmi(&ctx, &vm).await?);
            }
            (RunStrategy::Always, Some(v)) if util::is_final_phase(phase(v)) && !deleting => {
                stop_vmi(&ctx, &vm, v).await?;
            }
            (RunStrategy::RerunOnFailure, Some(v)) if phase(v) == "Failed" && !deleting => {
                stop_vmi(&ctx, &vm, v).await?;
                requests.push(json!({"action": "Start"}));
            }
            (RunStrategy::Halted, Some(v)) if !deleting => {
                stop_vmi(&ctx, &vm, v).await?;
            }
            _ => {}
        }
    }

    let new_status = vm_status(&vm, vmi.as_ref(), strategy, &requests);
    if merge_status(&mut vm, new_status) {
        ctx.api(&ns, &kinds::vm())
            .replace_status(&name, &PostParams::default(), &vm)
            .await?;
    }
    Ok(Action::requeue(RESYNC))
}

async fn delete_ignoring_missing(
    api: &kube::Api<DynamicObject>,
    name: &str,
) -> Result<(), kube::Error> {
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if util::is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// virt-controller stamps the API versions it observed on the objects it manages; returns the
/// patched VM if it had to.
async fn ensure_observed_annotations(
    ctx: &Ctx,
    vm: &DynamicObject,
) -> Result<Option<DynamicObject>, kube::Error> {
    let a = vm.annotations();
    if a.contains_key(ANNOTATION_LATEST_OBSERVED) && a.contains_key(ANNOTATION_STORAGE_OBSERVED) {
        return Ok(None);
    }
    let patch = json!({"metadata": {"annotations": {
        ANNOTATION_LATEST_OBSERVED: "v1",
        ANNOTATION_STORAGE_OBSERVED: "v1",
    }}});
    ctx.api(&vm.namespace().unwrap_or_default(), &kinds::vm())
        .patch(
            &vm.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(Some)
}

async fn ensure_data_volumes(ctx: &Ctx, vm: &DynamicObject) -> Result<(), ReconcileError> {
    let Some(templates) = spec(vm)
        .get("dataVolumeTemplates")
        .and_then(Value::as_array)
    else {
        return Ok(());
    };
    let ns = vm.namespace().unwrap_or_default();
    let dvs = ctx.api(&ns, &kinds::datavolume());
    for t in templates {
        let Some(name) = util::str_at(t, &["metadata", "name"]) else {
            continue;
        };
        if dvs.get_opt(name).await?.is_some() {
            continue;
        }
        let meta = t.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let dv = util::to_dynamic(json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": meta.get("labels").cloned().unwrap_or_else(|| json!({})),
                "annotations": meta.get("annotations").cloned().unwrap_or_else(|| json!({})),
                "ownerReferences": [util::controller_ref(vm, &kinds::vm())],
            },
            "spec": t.get("spec").cloned().unwrap_or_else(|| json!({})),
        }))?;
        match dvs.create(&PostParams::default(), &dv).await {
            Ok(_) => {}
            Err(e) if util::is_already_exists(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The VMI that virt-controller's `SetupVMIFromVM` builds.
fn vmi_for(vm: &DynamicObject) -> Result<DynamicObject, serde_json::Error> {
    let template = spec(vm).get("template").cloned().unwrap_or_default();
    let meta = template.get("metadata").cloned().unwrap_or_default();
    let labels = meta.get("labels").cloned().unwrap_or_else(|| json!({}));
    let mut annotations: Map<String, Value> = meta
        .get("annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let generation = vm.metadata.generation.unwrap_or(1);
    annotations.insert(
        kinds::ANNOTATION_VM_GENERATION.into(),
        json!(generation.to_string()),
    );
    annotations.insert(ANNOTATION_LATEST_OBSERVED.into(), json!("v1"));
    annotations.insert(ANNOTATION_STORAGE_OBSERVED.into(), json!("v1"));
    util::to_dynamic(json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": vm.name_any(),
            "namespace": vm.namespace(),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [util::controller_ref(vm, &kinds::vm())],
            "finalizers": [kinds::FINALIZER_VM_CONTROLLER],
        },
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        "status": {
            "virtualMachineRevisionName": format!(
                "revision-start-vm-{}-{}",
                vm.uid().unwrap_or_default(),
                generation
            ),
        },
    }))
}

async fn start_vmi(ctx: &Ctx, vm: &DynamicObject) -> Result<DynamicObject, ReconcileError> {
    let ns = vm.namespace().unwrap_or_default();
    let vmis = ctx.api(&ns, &kinds::vmi());
    let vmi = vmi_for(vm)?;
    let created = match vmis.create(&PostParams::default(), &vmi).await {
        Ok(created) => created,
        Err(e) if util::is_already_exists(&e) => return Ok(vmis.get(&vm.name_any()).await?),
        Err(e) => {
            ctx.event(
                vm,
                &kinds::vm(),
                "Warning",
                "FailedCreate",
                format!(
                    "Error creating VirtualMachineInstance {}: {e}",
                    vm.name_any()
                ),
            )
            .await;
            return Err(e.into());
        }
    };
    ctx.counters.inc(&ctx.counters.vmis_created);
    ctx.event(
        vm,
        &kinds::vm(),
        "Normal",
        "SuccessfulCreate",
        format!(
            "Started the virtual machine by creating the new virtual machine instance {}",
            created.name_any()
        ),
    )
    .await;
    Ok(created)
}

async fn stop_vmi(
    ctx: &Ctx,
    vm: &DynamicObject,
    vmi: &DynamicObject,
) -> Result<(), ReconcileError> {
    let ns = vm.namespace().unwrap_or_default();
    delete_ignoring_missing(&ctx.api(&ns, &kinds::vmi()), &vmi.name_any()).await?;
    ctx.counters.inc(&ctx.counters.vmis_deleted);
    ctx.event(
        vm,
        &kinds::vm(),
        "Normal",
        "SuccessfulDelete",
        format!(
            "Stopped the virtual machine by deleting the virtual machine instance {}",
            vmi.uid().unwrap_or_default()
        ),
    )
    .await;
    Ok(())
}

/// The status fields the simulator owns; `null` removes a field (as KubeVirt's `omitempty`).
fn vm_status(
    vm: &DynamicObject,
    vmi: Option<&DynamicObject>,
    strategy: RunStrategy,
    requests: &[Value],
) -> Value {
    let deleting = vmi.is_some_and(|v| v.meta().deletion_timestamp.is_some());
    let vmi_phase = vmi.map(phase).unwrap_or("");
    let paused = vmi.is_some_and(|v| util::condition_true(v, "Paused"));
    let ready = vmi
        .is_some_and(|v| !deleting && vmi_phase == "Running" && util::condition_true(v, "Ready"));
    let start_pending = requests
        .iter()
        .any(|r| r.get("action").and_then(Value::as_str) == Some("Start"));
    let printable = match vmi {
        None if start_pending || strategy == RunStrategy::Always => "Starting",
        None => "Stopped",
        Some(_) if deleting || strategy == RunStrategy::Halted => "Stopping",
        Some(_) if util::is_final_phase(vmi_phase) => "Stopped",
        Some(_) if vmi_phase == "Running" && paused => "Paused",
        Some(_) if vmi_phase == "Running" => "Running",
        Some(_) => "Starting",
    };
    let mut conditions = vec![condition(
        vm,
        "Ready",
        ready,
        match (vmi, ready) {
            (None, _) => ("VMINotExists", "VMI does not exist"),
            (Some(_), false) => ("VMINotReady", "VMI is not ready"),
            (Some(_), true) => ("", ""),
        },
    )];
    if paused {
        conditions.push(condition(
            vm,
            "Paused",
            true,
            ("PausedByUser", "VMI was paused by user"),
        ));
    }
    let generation = vm.metadata.generation;
    json!({
        "printableStatus": printable,
        "ready": if ready { json!(true) } else { Value::Null },
        "created": if vmi.is_some() { json!(true) } else { Value::Null },
        "conditions": conditions,
        "runStrategy": strategy.as_str(),
        "observedGeneration": generation,
        "desiredGeneration": generation,
        "stateChangeRequests": if requests.is_empty() { Value::Null } else { json!(requests) },
    })
}

/// A VM condition, keeping `lastTransitionTime` while its status does not change.
fn condition(vm: &DynamicObject, type_: &str, ok: bool, (reason, message): (&str, &str)) -> Value {
    let status = if ok { "True" } else { "False" };
    let existing = util::at(&vm.data, &["status", "conditions"])
        .and_then(Value::as_array)
        .and_then(|cs| {
            cs.iter()
                .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))
        });
    let since = existing
        .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
        .and_then(|c| c.get("lastTransitionTime").cloned())
        .unwrap_or_else(|| json!(util::now()));
    let mut c = json!({
        "type": type_,
        "status": status,
        "lastTransitionTime": since,
    });
    if !reason.is_empty() {
        c["reason"] = json!(reason);
        c["message"] = json!(message);
    }
    c
}
