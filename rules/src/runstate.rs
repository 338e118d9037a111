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
//!
//! Only virt-api's writes count: the host copy's `managedFields` must name virt-api
//! ([`VIRT_API_MANAGER`]) as the only owner of the changed run fields it has. Host-side
//! additions are not drift (webhooks default fields), so without that check a host writer that
//! adds a field the tenant has not set yet (a label, while the tenant's own edit of it is on its
//! way) and stops the VM in the same write would look like a start/stop; it is drift, repaired.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::api::DynamicObject;
use serde_json::{Map, Value, json};

use kvtenant_api::labels::PAUSED_RUN_STRATEGY;

use crate::translate::{SPEC_HASH, contained};

/// The VM spec fields virt-api's start/stop/restart write.
pub const RUN_FIELDS: &[&str] = &["runStrategy", "running"];

/// The field manager of KubeVirt's virt-api: client-go names a writer after its binary
/// (`rest.DefaultKubernetesUserAgent`), and KubeVirt's virt-api sets no other.
pub const VIRT_API_MANAGER: &str = "virt-api";

/// Whether the `managedFields` entry owns the run field `field` of the spec.
fn owns_run_field(entry: &ManagedFieldsEntry, field: &str) -> bool {
    entry
        .fields_v1
        .as_ref()
        .and_then(|f| f.0.get("f:spec"))
        .and_then(|s| s.get(format!("f:{field}")))
        .is_some()
}

/// The `managedFields` entries that own a run field, reduced to those fields: what the
/// syncer's host cache keeps of an object's `managedFields` ([`host_run_change`] reads them).
pub fn run_field_owners(entries: &[ManagedFieldsEntry]) -> Vec<ManagedFieldsEntry> {
    entries
        .iter()
        .filter_map(|e| {
            let owned: Map<String, Value> = RUN_FIELDS
                .iter()
                .filter(|f| owns_run_field(e, f))
                .map(|f| (format!("f:{f}"), json!({})))
                .collect();
            (!owned.is_empty()).then(|| ManagedFieldsEntry {
                manager: e.manager.clone(),
                operation: e.operation.clone(),
                subresource: e.subresource.clone(),
                fields_v1: Some(FieldsV1(json!({ "f:spec": owned }))),
                ..ManagedFieldsEntry::default()
            })
        })
        .collect()
}

/// Whether virt-api is the only writer that owns `field` on the host copy.
fn written_by_virt_api(host: &DynamicObject, field: &str) -> bool {
    let mut owners = host
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| owns_run_field(e, field))
        .peekable();
    owners.peek().is_some() && owners.all(|e| e.manager.as_deref() == Some(VIRT_API_MANAGER))
}

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
    // the run fields the host copy has were last written by virt-api (a start/stop), not by
    // someone editing the copy
    let on_host: Vec<&String> = changed
        .keys()
        .filter(|f| host_spec.get(*f).is_some())
        .collect();
    if on_host.is_empty() || !on_host.iter().all(|f| written_by_virt_api(host, f)) {
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

    /// `obj` whose run fields `manager` wrote last (its `managedFields` entry).
    fn written_by(manager: &str, hash: &str, spec: Value) -> DynamicObject {
        let mut o = obj(hash, spec);
        let fields: Map<String, Value> = RUN_FIELDS
            .iter()
            .map(|f| (format!("f:{f}"), json!({})))
            .collect();
        o.metadata.managed_fields = Some(vec![
            serde_json::from_value(json!({"manager": "kvtenant", "operation": "Update",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:template": {}}}}))
            .unwrap(),
            serde_json::from_value(json!({"manager": manager, "operation": "Update",
                "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": fields}}))
            .unwrap(),
        ]);
        o
    }

    #[test]
    fn a_host_side_start_goes_up() {
        let desired = obj("a", json!({"runStrategy": "Halted", "template": {"x": 1}}));
        let host = written_by(
            VIRT_API_MANAGER,
            "a",
            json!({"runStrategy": "Always", "template": {"x": 1, "defaulted": true}}),
        );
        assert_eq!(
            host_run_change(&host, &desired),
            Some(json!({"spec": {"runStrategy": "Always"}}))
        );
        let desired = obj("a", json!({"running": false, "template": {}}));
        let host = written_by(
            VIRT_API_MANAGER,
            "a",
            json!({"running": true, "template": {}}),
        );
        assert_eq!(
            host_run_change(&host, &desired),
            Some(json!({"spec": {"running": true}}))
        );
    }

    #[test]
    fn a_run_field_written_by_anyone_but_virt_api_is_drift() {
        // a host writer added a template label the tenant has not set (yet) and stopped the VM
        // in the same write: the label is a host addition, the stop is not virt-api's
        let desired = obj(
            "a",
            json!({"runStrategy": "Always", "template": {"labels": {}}}),
        );
        let spec = json!({"runStrategy": "Halted", "template": {"labels": {"gen": "h1"}}});
        assert_eq!(
            host_run_change(&written_by("kubectl-patch", "a", spec.clone()), &desired),
            None
        );
        // no managedFields at all: not known to be virt-api's
        assert_eq!(host_run_change(&obj("a", spec.clone()), &desired), None);
        // virt-api's stop is taken up
        assert_eq!(
            host_run_change(&written_by(VIRT_API_MANAGER, "a", spec), &desired),
            Some(json!({"spec": {"runStrategy": "Halted"}}))
        );
    }

    #[test]
    fn the_cache_keeps_only_the_run_fields_owners() {
        let host = written_by(VIRT_API_MANAGER, "a", json!({"runStrategy": "Always"}));
        let kept = run_field_owners(host.metadata.managed_fields.as_deref().unwrap());
        assert_eq!(kept.len(), 1, "the kvtenant entry owns no run field");
        assert_eq!(kept[0].manager.as_deref(), Some(VIRT_API_MANAGER));
        assert_eq!(
            kept[0].fields_v1.as_ref().unwrap().0,
            json!({"f:spec": {"f:runStrategy": {}, "f:running": {}}})
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
