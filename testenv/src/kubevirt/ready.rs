//! Readiness checks after start: the aggregated `subresources.kubevirt.io` API is Available,
//! the apiserver calls virt-api's webhooks (probed with server-side dry-run creates: nothing is
//! stored), virt-controller holds its leader Lease, and kwok made the nodes Ready.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

use super::NAMESPACE;

/// The subresource API group virt-api serves.
pub const SUBRESOURCE_GROUP: &str = "subresources.kubevirt.io";
/// Its versions.
pub const SUBRESOURCE_VERSIONS: [&str; 2] = ["v1", "v1alpha3"];

/// Outcome of one check: `Ok(())` when ready, else what is still missing.
pub type Check = Result<(), String>;

pub async fn apiservices_available(client: &kube::Client) -> Check {
    let api = Api::<APIService>::all(client.clone());
    for version in SUBRESOURCE_VERSIONS {
        let name = format!("{version}.{SUBRESOURCE_GROUP}");
        let conditions = api
            .get(&name)
            .await
            .map_err(|e| format!("APIService {name}: {e}"))?
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default();
        if !conditions
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True")
        {
            return Err(format!(
                "APIService {name} not Available: {}",
                conditions
                    .iter()
                    .map(|c| format!(
                        "{}={} {}",
                        c.type_,
                        c.status,
                        c.message.as_deref().unwrap_or("")
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
    }
    Ok(())
}

fn vm_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kubevirt.io", "v1", "VirtualMachine"),
        "virtualmachines",
    )
}

/// A VM for dry-run probes; without its volume the disk names nothing (KubeVirt refuses it).
pub fn probe_vm(with_volume: bool) -> Value {
    let volumes = if with_volume {
        json!([{"name": "probe", "containerDisk": {"image": "kvtenant.invalid/testenv-probe"}}])
    } else {
        json!([])
    };
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "kvtenant-testenv-probe", "namespace": "default"},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {
                    "devices": {"disks": [{"name": "probe", "disk": {"bus": "virtio"}}]},
                    "resources": {"requests": {"memory": "64Mi"}},
                },
                "volumes": volumes,
            }},
        },
    })
}

/// Both VM webhooks answer: an invalid VM is refused by KubeVirt's validator, a valid one
/// comes back mutated (machine type defaulted).
pub async fn webhooks_answer(client: &kube::Client) -> Check {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &vm_resource());
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let bad: DynamicObject = serde_json::from_value(probe_vm(false)).map_err(|e| e.to_string())?;
    match api.create(&pp, &bad).await {
        Err(kube::Error::Api(s)) if s.message.contains("virtualmachine-validator.kubevirt.io") => {}
        Err(e) => return Err(format!("validating webhook: {e}")),
        Ok(_) => return Err("validating webhook: an invalid VM was admitted".into()),
    }
    let good: DynamicObject = serde_json::from_value(probe_vm(true)).map_err(|e| e.to_string())?;
    match api.create(&pp, &good).await {
        Ok(vm)
            if vm
                .data
                .pointer("/spec/template/spec/domain/machine/type")
                .is_some() =>
        {
            Ok(())
        }
        Ok(_) => Err("mutating webhook: the machine type was not defaulted".into()),
        Err(e) => Err(format!("mutating webhook: {e}")),
    }
}

pub async fn controller_leads(client: &kube::Client) -> Check {
    let api: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let lease = api
        .get_opt("virt-controller")
        .await
        .map_err(|e| format!("Lease virt-controller: {e}"))?;
    match lease.and_then(|l| l.spec).and_then(|s| s.holder_identity) {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("virt-controller holds no leader Lease yet".into()),
    }
}

pub async fn nodes_ready(client: &kube::Client, nodes: &[String]) -> Check {
    let api: Api<Node> = Api::all(client.clone());
    for name in nodes {
        let node = api
            .get(name)
            .await
            .map_err(|e| format!("Node {name}: {e}"))?;
        let ready = node
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if !ready {
            return Err(format!("Node {name} not Ready (kwok)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_vm_without_volume_names_a_missing_volume() {
        let bad = probe_vm(false);
        assert_eq!(
            bad["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["name"],
            "probe"
        );
        assert_eq!(bad["spec"]["template"]["spec"]["volumes"], json!([]));
        assert_eq!(
            probe_vm(true)["spec"]["template"]["spec"]["volumes"][0]["name"],
            "probe"
        );
    }
}
