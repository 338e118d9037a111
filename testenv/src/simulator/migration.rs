//! The simulated live migration (VirtualMachineInstanceMigration, `kubevirt.io/v1`).
//!
//! A migration of a Running VMI succeeds after a short delay: the VMI moves to the next simulated
//! node (`status.nodeName` and the `kubevirt.io/nodeName` label) and gets `status.migrationState`;
//! the migration gets `status.phase: Succeeded` and the same migration state. A migration of a
//! missing or not Running VMI fails (`phase: Failed`). No memory is copied anywhere.

use std::sync::Arc;

use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::controller::{Ctx, ReconcileError};
use super::kinds::{self, LABEL_NODE_NAME};
use super::util::{self, phase};
use super::vmi::status_mut;

pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let vmims = ctx.api(&ns, &kinds::vmim());
    let Some(vmim) = vmims.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if util::is_final_phase(phase(&vmim)) || vmim.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let vmi_name = util::str_at(&vmim.data, &["spec", "vmiName"])
        .unwrap_or_default()
        .to_string();
    let vmis = ctx.api(&ns, &kinds::vmi());
    let now = util::now();
    let vmi = if vmi_name.is_empty() {
        None
    } else {
        vmis.get_opt(&vmi_name).await?
    };
    let Some(mut vmi) = vmi.filter(|v| phase(v) == "Running") else {
        let status = json!({"status": {
            "phase": "Failed",
            "phaseTransitionTimestamps": [{"phase": "Failed", "phaseTransitionTimestamp": now}],
        }});
        vmims
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        return Ok(Action::await_change());
    };
    let done_before = util::str_at(&vmi.data, &["status", "migrationState", "migrationUid"])
        == vmim.uid().as_deref();
    tokio::time::sleep(ctx.phase_delay).await;
    let source = util::str_at(&vmi.data, &["status", "nodeName"])
        .unwrap_or_default()
        .to_string();
    let target = ctx.next_node(&source);
    let state = json!({
        "migrationUid": vmim.uid(),
        "sourceNode": source,
        "targetNode": target,
        "mode": "PreCopy",
        "completed": true,
        "failed": false,
        "startTimestamp": now,
        "endTimestamp": util::now(),
    });
    let state = if done_before {
        util::at(&vmi.data, &["status", "migrationState"])
            .cloned()
            .unwrap_or(state)
    } else {
        vmi.labels_mut()
            .insert(LABEL_NODE_NAME.into(), target.clone());
        let status = status_mut(&mut vmi);
        status.insert("nodeName".into(), json!(target));
        status.insert("migrationState".into(), state.clone());
        vmis.replace(&vmi_name, &PostParams::default(), &vmi)
            .await?;
        state
    };
    let status = json!({"status": {
        "phase": "Succeeded",
        "migrationState": state,
        "phaseTransitionTimestamps": [
            {"phase": "Pending", "phaseTransitionTimestamp": now},
            {"phase": "Succeeded", "phaseTransitionTimestamp": util::now()},
        ],
    }});
    vmims
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(Action::await_change())
}
