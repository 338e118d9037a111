//! Small helpers shared by the simulator's controllers and its virt-api: JSON access, owner
//! references, timestamps, API error classification and KubeVirt's run strategies.

use std::fmt;

use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::core::ApiResource;
use serde_json::{Value, json};

/// The current time as Kubernetes writes `metav1.Time` (RFC 3339, seconds, UTC).
pub fn now() -> String {
    Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Nanoseconds since the epoch, for unique Event names.
pub fn now_nanos() -> i128 {
    Timestamp::now().as_nanosecond()
}

/// Follows `path` through nested objects.
pub fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, key| cur.get(*key))
}

/// The string at `path`, if there is one.
pub fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

/// `v` as a JSON object, replacing it with an empty one if it is anything else.
pub fn obj_mut(v: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(serde_json::Map::new());
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("replaced by an object above"),
    }
}

/// `spec` of a dynamic object (`null` if absent).
pub fn spec(obj: &DynamicObject) -> &Value {
    obj.data.get("spec").unwrap_or(&Value::Null)
}

/// `status` of a dynamic object (`null` if absent).
pub fn status(obj: &DynamicObject) -> &Value {
    obj.data.get("status").unwrap_or(&Value::Null)
}

/// `status.phase` of an object, or "".
pub fn phase(obj: &DynamicObject) -> &str {
    str_at(&obj.data, &["status", "phase"]).unwrap_or("")
}

/// Whether a VMI phase is final (KubeVirt's `IsFinal`).
pub fn is_final_phase(phase: &str) -> bool {
    matches!(phase, "Succeeded" | "Failed")
}

/// Whether the object has a condition of `type_` with status "True".
pub fn condition_true(obj: &DynamicObject, type_: &str) -> bool {
    at(&obj.data, &["status", "conditions"])
        .and_then(Value::as_array)
        .is_some_and(|conds| {
            conds.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(type_)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

/// A controller owner reference to `owner`, as `metav1.NewControllerRef` builds it.
pub fn controller_ref(owner: &DynamicObject, ar: &ApiResource) -> Value {
    json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The controller owner reference of `obj` if it is of `kind`: (name, uid).
pub fn controller_owner<'a>(obj: &'a DynamicObject, kind: &str) -> Option<(&'a str, &'a str)> {
    obj.metadata.owner_references.as_ref().and_then(|refs| {
        refs.iter()
            .find(|r| r.controller == Some(true) && r.kind == kind)
            .map(|r| (r.name.as_str(), r.uid.as_str()))
    })
}

/// Whether `obj` is controlled by the object with `uid`.
pub fn controlled_by(obj: &DynamicObject, uid: &str) -> bool {
    obj.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.controller == Some(true) && r.uid == uid)
    })
}

pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

pub fn is_not_found(e: &kube::Error) -> bool {
    is_status(e, 404)
}

pub fn is_conflict(e: &kube::Error) -> bool {
    is_status(e, 409)
}

pub fn is_already_exists(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists")
}

/// Builds a typed-looking dynamic object from JSON (apiVersion, kind, metadata, the rest).
pub fn to_dynamic(v: Value) -> Result<DynamicObject, serde_json::Error> {
    serde_json::from_value(v)
}

/// KubeVirt's `RunStrategy` (`spec.runStrategy`, or derived from the deprecated `spec.running`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStrategy {
    Always,
    RerunOnFailure,
    Once,
    Manual,
    Halted,
    WaitAsReceiver,
}

impl RunStrategy {
    /// As `VirtualMachine.RunStrategy()`: `running: true` is Always, `running: false` Halted, and a
    /// VM with neither is Halted. Unknown values count as Halted.
    pub fn of(vm_spec: &Value) -> Self {
        if let Some(s) = vm_spec.get("runStrategy").and_then(Value::as_str) {
            return match s {
                "Always" => Self::Always,
                "RerunOnFailure" => Self::RerunOnFailure,
                "Once" => Self::Once,
                "Manual" => Self::Manual,
                "WaitAsReceiver" => Self::WaitAsReceiver,
                _ => Self::Halted,
            };
        }
        match vm_spec.get("running").and_then(Value::as_bool) {
            Some(true) => Self::Always,
            _ => Self::Halted,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::RerunOnFailure => "RerunOnFailure",
            Self::Once => "Once",
            Self::Manual => "Manual",
            Self::Halted => "Halted",
            Self::WaitAsReceiver => "WaitAsReceiver",
        }
    }
}

impl fmt::Display for RunStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_strategy_follows_kubevirt() {
        assert_eq!(
            RunStrategy::of(&json!({"running": true})),
            RunStrategy::Always
        );
        assert_eq!(
            RunStrategy::of(&json!({"running": false})),
            RunStrategy::Halted
        );
        assert_eq!(RunStrategy::of(&json!({})), RunStrategy::Halted);
        assert_eq!(
            RunStrategy::of(&json!({"runStrategy": "Manual"})),
            RunStrategy::Manual
        );
        assert_eq!(
            RunStrategy::of(&json!({"runStrategy": "RerunOnFailure"})),
            RunStrategy::RerunOnFailure
        );
    }

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        let t = now();
        assert_eq!(t.len(), "2026-01-01T00:00:00Z".len(), "{t}");
        assert!(t.ends_with('Z'));
    }
}
