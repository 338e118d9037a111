//! Values the host sets once on an object and that must survive kvtenant's updates.
//!
//! KubeVirt's VM mutator (virt-api) gives a VirtualMachine a random firmware UUID and serial and
//! the PCI topology version only when it is **created**; on updates it leaves them alone. An
//! update from the tenant whose spec lacks them (no tenant-side webhooks ran) would drop them,
//! and virt-controller would then put a *different* UUID (derived from the name) and no serial:
//! after its next start the guest would see new SMBIOS identifiers and device topology. So every
//! update carries the host's values over where the tenant's spec sets none.

use serde_json::Value;

/// JSON pointers (RFC 6901) of the values kept for a kind: each kind says its own
/// ([`crate::kinds::SyncedKind::host_kept`]).
#[cfg(test)]
fn host_kept(kind: &str) -> &'static [&'static str] {
    crate::kinds::by_kind(kind).map_or(&[], |k| k.host_kept())
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

/// Copies the value at each pointer from `current` into `out` where `out` has none (creating
/// the objects on the way); values `out` has win.
pub fn keep_host_set(out: &mut Value, current: &Value, pointers: &[&str]) {
    for p in pointers {
        let Some(value) = current.pointer(p) else {
            continue;
        };
        if out.pointer(p).is_some() {
            continue;
        }
        let tokens: Vec<String> = p.trim_start_matches('/').split('/').map(unescape).collect();
        set_at(out, &tokens, value.clone());
    }
}

/// Makes `out` hold, at each pointer, exactly what `current` holds (the value, or nothing):
/// fields the host fixed at creation (a Pod's spec is immutable but for images and a few
/// others), so a change of kvtenant's translation (a new node confinement, say) never asks the
/// host for an update it would refuse, and is not drift.
pub fn take_host_values(out: &mut Value, current: &Value, pointers: &[&str]) {
    for p in pointers {
        let tokens: Vec<String> = p.trim_start_matches('/').split('/').map(unescape).collect();
        match current.pointer(p) {
            Some(value) => {
                set_at(out, &tokens, value.clone());
            }
            None => {
                if let Some((last, parent)) = tokens.split_last() {
                    let parent_ptr: String = parent.iter().map(|t| format!("/{t}")).collect();
                    if let Some(o) = out.pointer_mut(&parent_ptr).and_then(Value::as_object_mut) {
                        o.remove(last);
                    }
                }
            }
        }
    }
}

/// Sets `value` at `tokens` below `node`, creating objects on the way (never replacing a
/// non-object); false if the path runs into a non-object.
fn set_at(node: &mut Value, tokens: &[String], value: Value) -> bool {
    let Some(o) = node.as_object_mut() else {
        return false;
    };
    match tokens {
        [] => false,
        [last] => {
            o.insert(last.clone(), value);
            true
        }
        [first, rest @ ..] => {
            let child = o
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            if child.is_null() {
                *child = Value::Object(Default::default());
            }
            set_at(child, rest, value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn host_vm() -> Value {
        json!({"spec": {"template": {
            "metadata": {"annotations": {"kubevirt.io/pci-topology-version": "v3"}},
            "spec": {"domain": {"firmware": {"uuid": "u-1", "serial": "s-1"}, "memory": {"guest": "128Mi"}}},
        }}})
    }

    #[test]
    fn a_tenant_update_without_firmware_keeps_the_hosts() {
        let mut out = json!({"spec": {"template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"domain": {"memory": {"guest": "256Mi"}}}}}});
        keep_host_set(&mut out, &host_vm(), host_kept("VirtualMachine"));
        assert_eq!(
            out["spec"]["template"]["spec"]["domain"]["firmware"],
            json!({"uuid": "u-1", "serial": "s-1"})
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["domain"]["memory"]["guest"],
            "256Mi"
        );
        assert_eq!(
            out["spec"]["template"]["metadata"],
            json!({"labels": {"a": "b"}, "annotations": {"kubevirt.io/pci-topology-version": "v3"}})
        );
    }

    #[test]
    fn the_tenants_own_values_win_and_other_kinds_keep_nothing() {
        let mut out =
            json!({"spec": {"template": {"spec": {"domain": {"firmware": {"uuid": "mine"}}}}}});
        keep_host_set(&mut out, &host_vm(), host_kept("VirtualMachine"));
        assert_eq!(
            out["spec"]["template"]["spec"]["domain"]["firmware"]["uuid"],
            "mine"
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["domain"]["firmware"]["serial"],
            "s-1"
        );
        assert!(host_kept("Service").is_empty());
        let mut none = json!({});
        keep_host_set(&mut none, &json!({}), host_kept("VirtualMachine"));
        assert_eq!(none, json!({}), "nothing on the host, nothing added");
    }
}
