//! The admission webhooks of the fake virt-api, each with one rule taken from KubeVirt.
//!
//! * `virtualmachine-validator.kubevirt.io` (`/virtualmachines-validate`) and
//!   `virtualmachineinstances-create-validator.kubevirt.io` (`/virtualmachineinstances-validate-create`):
//!   every disk in `domain.devices.disks` must name a volume in `volumes`. A VM that breaks it is
//!   rejected as KubeVirt's admitter does: `allowed: false`, status code 422, reason Invalid,
//!   message `spec.template.spec.domain.devices.disks[0].Name 'rootdisk' not found.` and one
//!   `FieldValueInvalid` cause per disk.
//! * `virtualmachines-mutator.kubevirt.io` (`/virtualmachines-mutate`): a VM without
//!   `spec.template.spec.domain.machine.type` gets `q35` (KubeVirt's default machine type on
//!   amd64), by a JSONPatch.
//! * `virtualmachineinstances-mutator.kubevirt.io` (`/virtualmachineinstances-mutate`): on CREATE,
//!   adds the finalizer `kubevirt.io/foregroundDeleteVirtualMachine` and `status.phase: Pending`.

use base64::Engine as _;
use serde_json::{Value, json};

use super::kinds::FINALIZER_FOREGROUND_DELETE;
use super::util;

/// KubeVirt's default machine type on amd64.
pub const DEFAULT_MACHINE_TYPE: &str = "q35";

/// Which webhook a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    ValidateVm,
    ValidateVmiCreate,
    MutateVm,
    MutateVmi,
}

impl Hook {
    pub fn from_path(path: &str) -> Option<Self> {
        match path {
            "/virtualmachines-validate" => Some(Self::ValidateVm),
            "/virtualmachineinstances-validate-create" => Some(Self::ValidateVmiCreate),
            "/virtualmachines-mutate" => Some(Self::MutateVm),
            "/virtualmachineinstances-mutate" => Some(Self::MutateVmi),
            _ => None,
        }
    }
}

/// The outcome of one review, for counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Reviewed {
    pub review: Value,
    pub denied: bool,
}

/// Answers an AdmissionReview (admission.k8s.io/v1); `Err` is a malformed request.
pub fn review(hook: Hook, body: &[u8]) -> Result<Reviewed, String> {
    let review: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid AdmissionReview: {e}"))?;
    let request = review
        .get("request")
        .ok_or_else(|| "AdmissionReview without request".to_string())?;
    let uid = request.get("uid").cloned().unwrap_or(Value::Null);
    let operation = request
        .get("operation")
        .and_then(Value::as_str)
        .unwrap_or("");
    let object = request.get("object").unwrap_or(&Value::Null);
    let mut response = json!({"uid": uid, "allowed": true});
    let mut denied = false;
    match hook {
        Hook::ValidateVm | Hook::ValidateVmiCreate => {
            let (spec, field) = if hook == Hook::ValidateVm {
                (
                    util::at(object, &["spec", "template", "spec"]),
                    "spec.template.spec",
                )
            } else {
                (object.get("spec"), "spec")
            };
            let causes = spec.map(|s| disk_causes(s, field)).unwrap_or_default();
            if !causes.is_empty() {
                denied = true;
                response["allowed"] = json!(false);
                response["status"] = invalid_status(&causes);
            }
        }
        Hook::MutateVm => {
            if let Some(patch) = machine_type_patch(object) {
                set_patch(&mut response, &patch);
            }
        }
        Hook::MutateVmi => {
            if operation == "CREATE" {
                let patch = vmi_create_patch(object);
                if !patch.is_empty() {
                    set_patch(&mut response, &patch);
                }
            }
        }
    }
    Ok(Reviewed {
        review: json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }),
        denied,
    })
}

fn set_patch(response: &mut Value, ops: &[Value]) {
    let bytes = serde_json::to_vec(ops).unwrap_or_default();
    response["patchType"] = json!("JSONPatch");
    response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(bytes));
}

/// One cause per disk whose name is not a volume name (KubeVirt's `validateDisks`).
pub fn disk_causes(vmi_spec: &Value, field: &str) -> Vec<Value> {
    let volumes: Vec<&str> = vmi_spec
        .get("volumes")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter_map(|v| v.get("name").and_then(Value::as_str))
                .collect()
        })
        .unwrap_or_default();
    util::at(vmi_spec, &["domain", "devices", "disks"])
        .and_then(Value::as_array)
        .map(|disks| {
            disks
                .iter()
                .enumerate()
                .filter_map(|(idx, disk)| {
                    let name = disk.get("name").and_then(Value::as_str).unwrap_or("");
                    (!volumes.contains(&name)).then(|| {
                        json!({
                            "type": "FieldValueInvalid",
                            "message": format!("{field}.domain.devices.disks[{idx}].Name '{name}' not found."),
                            "field": format!("{field}.domain.devices.disks[{idx}].name"),
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// KubeVirt's `ToAdmissionResponse`: the messages joined by ", ", code 422, reason Invalid.
fn invalid_status(causes: &[Value]) -> Value {
    let message = causes
        .iter()
        .filter_map(|c| c.get("message").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    json!({
        "message": message,
        "reason": "Invalid",
        "code": 422,
        "details": {"causes": causes},
    })
}

/// JSONPatch adding the default machine type, if the VM has a domain without one.
pub fn machine_type_patch(vm: &Value) -> Option<Vec<Value>> {
    let domain = util::at(vm, &["spec", "template", "spec", "domain"])?.as_object()?;
    match domain.get("machine") {
        Some(m) if m.is_object() => {
            let has_type = m
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| !t.is_empty());
            (!has_type).then(|| {
                vec![json!({"op": "add", "path": "/spec/template/spec/domain/machine/type", "value": DEFAULT_MACHINE_TYPE})]
            })
        }
        _ => Some(vec![
            json!({"op": "add", "path": "/spec/template/spec/domain/machine", "value": {"type": DEFAULT_MACHINE_TYPE}}),
        ]),
    }
}

/// JSONPatch of the VMI mutator on CREATE: the foreground-delete finalizer and phase Pending.
pub fn vmi_create_patch(vmi: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    match util::at(vmi, &["metadata", "finalizers"]).and_then(Value::as_array) {
        None => ops.push(json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER_FOREGROUND_DELETE]})),
        Some(fs) if !fs.iter().any(|f| f.as_str() == Some(FINALIZER_FOREGROUND_DELETE)) => {
            ops.push(json!({"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER_FOREGROUND_DELETE}));
        }
        Some(_) => {}
    }
    let stamp = json!([{"phase": "Pending", "phaseTransitionTimestamp": util::now()}]);
    match vmi.get("status") {
        Some(Value::Object(status)) => {
            let phase = status.get("phase").and_then(Value::as_str).unwrap_or("");
            if phase.is_empty() {
                ops.push(json!({"op": "add", "path": "/status/phase", "value": "Pending"}));
                if !status.contains_key("phaseTransitionTimestamps") {
                    ops.push(json!({"op": "add", "path": "/status/phaseTransitionTimestamps", "value": stamp}));
                }
            }
        }
        _ => ops.push(json!({"op": "add", "path": "/status", "value": {"phase": "Pending", "phaseTransitionTimestamps": stamp}})),
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(disks: Value, volumes: Value, domain_extra: Value) -> Value {
        let mut domain = json!({"devices": {"disks": disks}});
        if let (Some(d), Value::Object(extra)) = (domain.as_object_mut(), domain_extra) {
            d.extend(extra);
        }
        json!({"spec": {"template": {"spec": {"domain": domain, "volumes": volumes}}}})
    }

    fn admission(object: Value, operation: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "abc", "operation": operation, "object": object},
        }))
        .unwrap()
    }

    #[test]
    fn rejects_a_disk_without_volume_like_kubevirt() {
        let bad = vm(
            json!([{"name": "rootdisk", "disk": {"bus": "virtio"}}]),
            json!([{"name": "other", "containerDisk": {"image": "x"}}]),
            json!({}),
        );
        let r = review(Hook::ValidateVm, &admission(bad, "CREATE")).unwrap();
        assert!(r.denied);
        let resp = &r.review["response"];
        assert_eq!(resp["uid"], "abc");
        assert_eq!(resp["allowed"], false);
        assert_eq!(resp["status"]["code"], 422);
        assert_eq!(resp["status"]["reason"], "Invalid");
        assert_eq!(
            resp["status"]["message"],
            "spec.template.spec.domain.devices.disks[0].Name 'rootdisk' not found."
        );
        assert_eq!(
            resp["status"]["details"]["causes"][0]["field"],
            "spec.template.spec.domain.devices.disks[0].name"
        );
    }

    #[test]
    fn admits_a_vm_whose_disks_have_volumes() {
        let good = vm(
            json!([{"name": "rootdisk"}]),
            json!([{"name": "rootdisk"}]),
            json!({}),
        );
        let r = review(Hook::ValidateVm, &admission(good, "UPDATE")).unwrap();
        assert!(!r.denied);
        assert_eq!(r.review["response"]["allowed"], true);
    }

    #[test]
    fn defaults_the_machine_type_only_when_missing() {
        let without = vm(json!([]), json!([]), json!({}));
        assert_eq!(
            machine_type_patch(&without).unwrap()[0]["path"],
            "/spec/template/spec/domain/machine"
        );
        let empty = vm(json!([]), json!([]), json!({"machine": {}}));
        assert_eq!(
            machine_type_patch(&empty).unwrap()[0]["path"],
            "/spec/template/spec/domain/machine/type"
        );
        let set = vm(
            json!([]),
            json!([]),
            json!({"machine": {"type": "pc-q35-rhel9.4.0"}}),
        );
        assert!(machine_type_patch(&set).is_none());

        let r = review(Hook::MutateVm, &admission(without, "CREATE")).unwrap();
        let patch = base64::engine::general_purpose::STANDARD
            .decode(r.review["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(ops[0]["value"]["type"], "q35");
        assert_eq!(r.review["response"]["patchType"], "JSONPatch");
    }

    #[test]
    fn vmi_mutator_adds_finalizer_and_pending() {
        let ops = vmi_create_patch(&json!({"metadata": {"name": "x"}, "spec": {}}));
        assert_eq!(ops[0]["value"][0], FINALIZER_FOREGROUND_DELETE);
        assert_eq!(ops[1]["value"]["phase"], "Pending");
        let ops = vmi_create_patch(&json!({
            "metadata": {"finalizers": ["a"]},
            "status": {"virtualMachineRevisionName": "r"},
        }));
        assert_eq!(ops[0]["path"], "/metadata/finalizers/-");
        assert_eq!(ops[1]["path"], "/status/phase");
    }
}
