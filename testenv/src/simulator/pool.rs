//! The simulated VirtualMachinePool controller (`pool.kubevirt.io/v1beta1`).
//!
//! A pool with `spec.replicas: N` gets VMs `<pool>-0` … `<pool>-(N-1)` built from
//! `spec.virtualMachineTemplate` (labels, annotations, spec) with a controller owner reference to
//! the pool; VMs past N are deleted. `status.replicas`, `status.readyReplicas` and
//! `status.labelSelector` (for the `/scale` subresource) are written through `/status`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::controller::{Ctx, ReconcileError};
use super::kinds;
use super::util::{self, spec};

/// The names of a pool's members, for triggering the VM controller when a pool changes.
pub fn member_refs(pool: &DynamicObject, vm_ar: &ApiResource) -> Vec<ObjectRef<DynamicObject>> {
    let ns = pool.namespace().unwrap_or_default();
    let n = replicas(pool).max(
        util::at(&pool.data, &["status", "replicas"])
            .and_then(Value::as_i64)
            .unwrap_or(0),
    );
    (0..n)
        .map(|i| {
            ObjectRef::new_with(&format!("{}-{i}", pool.name_any()), vm_ar.clone()).within(&ns)
        })
        .collect()
}

fn replicas(pool: &DynamicObject) -> i64 {
    spec(pool)
        .get("replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(0)
}

/// `metav1.FormatLabelSelector` for a `matchLabels`-only selector.
fn selector_string(pool: &DynamicObject) -> String {
    util::at(spec(pool), &["selector", "matchLabels"])
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let pools = ctx.api(&ns, &kinds::pool());
    let Some(pool) = pools.get_opt(&name).await? else {
        return Ok(Action::await_change());
    };
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let uid = pool.uid().unwrap_or_default();
    let want = replicas(&pool);
    let vms = ctx.api(&ns, &kinds::vm());
    let owned: Vec<DynamicObject> = vms
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|vm| util::controlled_by(vm, &uid))
        .collect();
    let existing: BTreeSet<String> = owned.iter().map(ResourceExt::name_any).collect();

    let template = spec(&pool)
        .get("virtualMachineTemplate")
        .cloned()
        .unwrap_or_default();
    for i in 0..want {
        let vm_name = format!("{name}-{i}");
        if existing.contains(&vm_name) {
            continue;
        }
        let meta = template.get("metadata").cloned().unwrap_or_default();
        let vm = util::to_dynamic(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {
                "name": vm_name,
                "namespace": ns,
                "labels": meta.get("labels").cloned().unwrap_or_else(|| json!({})),
                "annotations": meta.get("annotations").cloned().unwrap_or_else(|| json!({})),
                "ownerReferences": [util::controller_ref(&pool, &kinds::pool())],
            },
            "spec": template.get("spec").cloned().unwrap_or_else(|| json!({})),
        }))?;
        match vms.create(&PostParams::default(), &vm).await {
            Ok(_) => {}
            Err(e) if util::is_already_exists(&e) => {}
            Err(e) => return Err(e.into()),
        }
    }
    for vm in &owned {
        let index = vm
            .name_any()
            .strip_prefix(&format!("{name}-"))
            .and_then(|s| s.parse::<i64>().ok());
        if index.is_none_or(|i| i >= want) && vm.meta().deletion_timestamp.is_none() {
            match vms
                .delete(&vm.name_any(), &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(e) if util::is_not_found(&e) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    let current = owned
        .iter()
        .filter(|vm| vm.meta().deletion_timestamp.is_none())
        .count() as i64;
    let ready = owned
        .iter()
        .filter(|vm| util::at(&vm.data, &["status", "ready"]) == Some(&json!(true)))
        .count() as i64;
    let status = json!({
        "replicas": current,
        "readyReplicas": ready,
        "labelSelector": selector_string(&pool),
    });
    let changed = ["replicas", "readyReplicas", "labelSelector"]
        .iter()
        .any(|k| util::at(&pool.data, &["status", k]) != status.get(*k));
    if changed {
        pools
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await?;
    }
    // Members appear after this pass; count them on the next one.
    if current != want {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    Ok(Action::requeue(Duration::from_secs(30)))
}
