//! Start and stop change the VM's spec: virt-api turns `virtctl start` on a Halted VM into
//! `spec.runStrategy: Always` (or `spec.running: true`), and stop back. The proxy forwards these
//! calls to the host's virt-api, so the change lands on the host copy, whose spec the tenant
//! owns. Treated as drift, it would be reverted by the next sync.
//!
//! The rule: the run fields (`spec.runStrategy`, `spec.running`) of a VirtualMachine are last
//! writer wins. When the tenant object is unchanged since kvtenant last wrote the host copy (same
//! content hash) and the host copy differs from it only in run fields, the host's run fields are
//! copied up to the tenant (a merge patch); the tenant's next sync down then agrees with the
//! host. A tenant edit (new hash) still goes down, and any other host-side change is still
//! repaired, as is kvtenant's own stop of a paused virtual cluster's VMs (marked with
//! [`PAUSED_RUN_STRATEGY`]: resume restores the tenant's run strategy). Pure; the syncer calls
//! [`host_run_change`] before repairing drift.
//!
//! So a host admin's `virtctl stop` on the host copy shows in the tenant too, as a start or stop
//! through the tenant's own virtctl does.

use kube::api::DynamicObject;
use serde_json::{Map, Value, json};

use kvtenant_api::labels::PAUSED_RUN_STRATEGY;

use crate::translate::{SPEC_HASH, contained};

/// The VM spec fields virt-api's start/stop/restart write.
pub const RUN_FIELDS: &[&str] = &["runStrategy", "running"];

fn hash(o: &DynamicObject) -> Option<&String> {
    o.metadata.annotations.as_ref()?.get(SPEC_HASH)
}

fn without_run_fields(data: &Value) -> Value {
    let mut v = data.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        for f in RUN_FIELDS {
            spec.remove(*f);
        }
    }
    v
}

/// The merge patch that takes the host's run fields up to the tenant object, when the host copy
/// (`host`) differs from what kvtenant would write (`desired`) only because virt-api started or
/// stopped the VM on the host. `None` otherwise. For VirtualMachines (see
/// [`crate::kinds::SyncedKind::host_change_to_take_up`]).
pub fn host_run_change(host: &DynamicObject, desired: &DynamicObject) -> Option<Value> {
    if hash(host).is_none() || hash(host) != hash(desired) {
        return None;
    }
    let paused_by_kvtenant = host
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(PAUSED_RUN_STRATEGY));
    if paused_by_kvtenant {
        return None;
    }
    let host_spec = host.data.get("spec")?;
    let want_spec = desired.data.get("spec")?;
    let mut changed = Map::new();
    for f in RUN_FIELDS {
        let (h, d) = (host_spec.get(*f), want_spec.get(*f));
        if h != d {
            changed.insert((*f).to_string(), h.cloned().unwrap_or(Value::Null));
        }
    }
    if changed.is_empty() {
        return None;
    }
    if !contained(
        &without_run_fields(&desired.data),
        &without_run_fields(&host.data),
    ) {
        return None;
    }
    Some(json!({ "spec": changed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(hash: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
            "metadata": {"name": "vm1", "namespace": "h", "annotations": {SPEC_HASH: hash}},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_host_side_start_goes_up() {
        let desired = obj("a", json!({"runStrategy": "Halted", "template": {"x": 1}}));
        let host = obj(
            "a",
            json!({"runStrategy": "Always", "template": {"x": 1, "defaulted": true}}),
        );
        assert_eq!(
            host_run_change(&host, &desired),
            Some(json!({"spec": {"runStrategy": "Always"}}))
        );
        let desired = obj("a", json!({"running": false, "template": {}}));
        let host = obj("a", json!({"running": true, "template": {}}));
        assert_eq!(
            host_run_change(&host, &desired),
            Some(json!({"spec": {"running": true}}))
        );
    }

    #[test]
    fn tenant_edits_and_other_drift_go_down() {
        let desired = obj("b", json!({"runStrategy": "Halted"}));
        let host = obj("a", json!({"runStrategy": "Always"}));
        assert_eq!(host_run_change(&host, &desired), None);
        let desired = obj("a", json!({"runStrategy": "Halted", "template": {"x": 1}}));
        let host = obj("a", json!({"runStrategy": "Always", "template": {"x": 2}}));
        assert_eq!(host_run_change(&host, &desired), None);
        let mut paused = obj("a", json!({"runStrategy": "Halted"}));
        paused
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(PAUSED_RUN_STRATEGY.into(), "Always".into());
        let resumed = obj("a", json!({"runStrategy": "Always"}));
        assert_eq!(host_run_change(&paused, &resumed), None);
        let same = obj("a", json!({"runStrategy": "Always"}));
        assert_eq!(host_run_change(&same, &same), None);
        // only VirtualMachines take host run changes up
        let pool = crate::kinds::by_kind("VirtualMachinePool").map(|k| {
            k.host_change_to_take_up(
                &obj("a", json!({"runStrategy": "Always"})),
                &obj("a", json!({})),
            )
        });
        assert_eq!(pool, Some(None));
    }
}
