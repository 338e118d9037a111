//! `virtctl memory-dump get --claim-name=X` through the tenant. KubeVirt's virt-api (v1.8.1,
//! `pkg/virt-api/rest/memorydump.go`) looks the claim up in the VM's namespace on the host
//! before it records the request, and kvtenant makes the host copy of a tenant claim only once
//! a synced VM or pod uses it. So before forwarding a `memorydump` call the proxy marks the
//! tenant VM with [`MEMORY_DUMP_CLAIM`] naming the claim: the VM then references it, and the
//! syncer makes its host copy with the usual checks (only a claim of the VM's own namespace).
//! The proxy then waits, at most [`PREPARE_WAIT`], until the host has the claim and the host VM
//! carries the mark (written from the marked tenant VM, so the memory dump volume
//! virt-controller adds next is taken up, not reverted). A claim the tenant does not have is not
//! marked: virt-api answers that it is not found. The mark stays (the claim's host copy does
//! too, until the tenant deletes the claim).

use std::time::Duration;

use http::Method;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kvtenant_rules::kinds;
use kvtenant_rules::vm::refs::MEMORY_DUMP_CLAIM;
use serde_json::{Value, json};

use super::route::Call;

/// How long a `memorydump` call waits for the claim's host copy before it is forwarded anyway.
pub const PREPARE_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

/// The claim a `memorydump` call asks the dump into (`PUT .../virtualmachines/{name}/memorydump`
/// with a `claimName`); `None` for any other call, or one without a claim (virt-api then takes
/// the claim of the VM's current request, already on the host).
pub fn requested_claim(call: &Call, method: &Method, body: &[u8]) -> Option<String> {
    if method != Method::PUT
        || call.resource != "virtualmachines"
        || call.name.is_none()
        || call.action != "memorydump"
    {
        return None;
    }
    let body: Value = serde_json::from_slice(body).ok()?;
    body.get("claimName")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// Whether an object carries the mark naming `claim`.
pub fn marked(obj: &DynamicObject, claim: &str) -> bool {
    obj.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(MEMORY_DUMP_CLAIM))
        .map(String::as_str)
        == Some(claim)
}

/// The merge patch marking a VM.
pub fn mark_patch(claim: &str) -> Value {
    json!({"metadata": {"annotations": {MEMORY_DUMP_CLAIM: claim}}})
}

/// Marks the tenant VM `vm` for `claim` (if the tenant has that claim) and waits until the host
/// has the claim's copy and the marked VM. Errors are logged and end the wait: the call is
/// forwarded and virt-api answers.
pub async fn prepare(
    tenant: &Client,
    host: &Client,
    tenant_ns: &str,
    host_ns: &str,
    vm: &str,
    claim: &str,
) {
    // the VirtualMachine kind of kvtenant's registry (always there: VMs are what it syncs)
    let Some(vm_kind) = kinds::by_kind("VirtualMachine") else {
        return;
    };
    let tenant_claims: Api<PersistentVolumeClaim> = Api::namespaced(tenant.clone(), tenant_ns);
    let tenant_vms: Api<DynamicObject> =
        Api::namespaced_with(tenant.clone(), tenant_ns, &vm_kind.resource);
    match tenant_claims.get_opt(claim).await {
        Ok(Some(_)) => {}
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(%e, "memory dump: reading the tenant claim");
            return;
        }
    }
    match tenant_vms.get_opt(vm).await {
        Ok(Some(v)) if marked(&v, claim) => {}
        Ok(Some(_)) => {
            if let Err(e) = tenant_vms
                .patch(
                    vm,
                    &PatchParams::default(),
                    &Patch::Merge(mark_patch(claim)),
                )
                .await
            {
                tracing::debug!(%e, "memory dump: marking the tenant VM");
                return;
            }
        }
        Ok(None) => return,
        Err(e) => {
            tracing::debug!(%e, "memory dump: reading the tenant VM");
            return;
        }
    }
    let host_claims: Api<PersistentVolumeClaim> = Api::namespaced(host.clone(), host_ns);
    let host_vms: Api<DynamicObject> =
        Api::namespaced_with(host.clone(), host_ns, &vm_kind.resource);
    let ready = async {
        loop {
            let claim_there = matches!(host_claims.get_opt(claim).await, Ok(Some(_)));
            let vm_marked = matches!(
                host_vms.get_opt(vm).await,
                Ok(Some(v)) if marked(&v, claim)
            );
            if claim_there && vm_marked {
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    };
    if tokio::time::timeout(PREPARE_WAIT, ready).await.is_err() {
        tracing::debug!(
            claim,
            vm,
            "memory dump: the claim's host copy not made in time"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(resource: &str, name: Option<&str>, action: &str) -> Call {
        Call {
            version: "v1".into(),
            namespace: "default".into(),
            resource: resource.into(),
            name: name.map(str::to_string),
            action: action.into(),
        }
    }

    #[test]
    fn only_a_memorydump_put_with_a_claim_names_one() {
        let body = br#"{"claimName": "dump"}"#;
        let dump = call("virtualmachines", Some("vm1"), "memorydump");
        assert_eq!(
            requested_claim(&dump, &Method::PUT, body).as_deref(),
            Some("dump")
        );
        assert_eq!(requested_claim(&dump, &Method::POST, body), None);
        assert_eq!(requested_claim(&dump, &Method::PUT, b"{}"), None);
        assert_eq!(
            requested_claim(&dump, &Method::PUT, br#"{"claimName": ""}"#),
            None
        );
        assert_eq!(requested_claim(&dump, &Method::PUT, b"not json"), None);
        let remove = call("virtualmachines", Some("vm1"), "removememorydump");
        assert_eq!(requested_claim(&remove, &Method::PUT, body), None);
        let vmi = call("virtualmachineinstances", Some("vm1"), "memorydump");
        assert_eq!(requested_claim(&vmi, &Method::PUT, body), None);
    }

    #[test]
    fn the_mark_names_the_claim() {
        let vm = |patch: Value| -> DynamicObject {
            let mut v = json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachine",
                "metadata": {"name": "vm1"}});
            if let Some(a) = patch.pointer("/metadata/annotations") {
                v["metadata"]["annotations"] = a.clone();
            }
            serde_json::from_value(v).unwrap()
        };
        assert!(!marked(&vm(json!({})), "dump"));
        assert!(marked(&vm(mark_patch("dump")), "dump"));
        assert!(!marked(&vm(mark_patch("dump")), "other"));
    }
}
