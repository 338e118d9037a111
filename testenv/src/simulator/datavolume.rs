//! The simulated CDI DataVolume controller (`cdi.kubevirt.io/v1beta1`).
//!
//! A DataVolume gets a PersistentVolumeClaim of the same name (owned by it; spec from
//! `spec.pvc` or `spec.storage`, with `ReadWriteOnce` and 1Gi as defaults), and at once
//! `status.phase: Succeeded`, `progress: "100.0%"`, `claimName` and the conditions Bound, Ready
//! and Running (False, Completed). Nothing is imported, and without a provisioner the claim stays
//! Pending.

use std::sync::Arc;

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use serde_json::{Map, Value, json};

use super::controller::{Ctx, ReconcileError};
use super::kinds;
use super::util::{self, spec};

/// The claim CDI would create for a DataVolume.
fn claim_for(dv: &DynamicObject) -> Value {
    let source = spec(dv)
        .get("pvc")
        .or_else(|| spec(dv).get("storage"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut claim_spec = Map::new();
    claim_spec.insert(
        "accessModes".into(),
        source
            .get("accessModes")
            .cloned()
            .unwrap_or_else(|| json!(["ReadWriteOnce"])),
    );
    let mut resources = source
        .get("resources")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if util::at(&resources, &["requests", "storage"]).is_none() {
        let requests = util::obj_mut(
            util::obj_mut(&mut resources)
                .entry("requests")
                .or_insert_with(|| json!({})),
        );
        requests.insert("storage".into(), json!("1Gi"));
    }
    claim_spec.insert("resources".into(), resources);
    for key in ["storageClassName", "volumeMode", "selector", "volumeName"] {
        if let Some(v) = source.get(key) {
            claim_spec.insert(key.into(), v.clone());
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": dv.name_any(),
            "namespace": dv.namespace(),
            "labels": {
                "app": "containerized-data-importer",
                "app.kubernetes.io/component": "storage",
                "app.kubernetes.io/managed-by": "cdi-controller",
            },
            "annotations": {
                "cdi.kubevirt.io/storage.pod.phase": "Succeeded",
                "cdi.kubevirt.io/storage.condition.running": "false",
                "cdi.kubevirt.io/createdForDataVolume": dv.uid(),
            },
            "ownerReferences": [util::controller_ref(dv, &kinds::datavolume())],
        },
        "spec": claim_spec,
    })
}

pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let dvs = ctx.api(&ns, &kinds::datavolume());
    let Some(dv) = dvs.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if dv.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    if pvcs.get_opt(&name).await?.is_none() {
        let pvc: PersistentVolumeClaim = serde_json::from_value(claim_for(&dv))?;
        match pvcs.create(&PostParams::default(), &pvc).await {
            Ok(_) => {}
            Err(e) if util::is_already_exists(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if util::str_at(&dv.data, &["status", "phase"]) != Some("Succeeded")
        || util::str_at(&dv.data, &["status", "claimName"]) != Some(name.as_str())
    {
        let now = util::now();
        let cond = |type_: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            })
        };
        let status = json!({"status": {
            "phase": "Succeeded",
            "progress": "100.0%",
            "claimName": name,
            "conditions": [
                cond("Bound", "True", "Bound", &format!("PVC {name} Bound")),
                cond("Ready", "True", "", ""),
                cond("Running", "False", "Completed", "Import Complete"),
            ],
        }});
        dvs.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
    }
    Ok(Action::await_change())
}
