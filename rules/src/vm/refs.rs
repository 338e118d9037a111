//! References from VM-like objects to the namespaced objects they need on the host.
//!
//! KubeVirt ties objects by name within a namespace; since names stay unchanged on the host,
//! following a reference only means syncing the named object into the same host namespace.

use serde_json::Value;

use super::VmTemplate;
use crate::kinds::{config_map, data_volume, pvc, secret, service_account};

/// Annotation of a VM naming the claim a memory dump is asked into (`virtctl memory-dump get
/// --claim-name`): the VM references that claim, so its host copy is made before KubeVirt's
/// virt-api, which looks the claim up on the host, sees the request. kvtenant's subresource
/// proxy sets it on the tenant VM when it forwards a `memorydump` call; a tenant may set it too
/// (it only names a claim of the VM's own namespace, as a volume would).
pub const MEMORY_DUMP_CLAIM: &str = "tenancy.kvtenant.io/memory-dump-claim";

/// The claim a VM's [`MEMORY_DUMP_CLAIM`] annotation names.
pub fn memory_dump_claim(
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<ObjRef> {
    let name = annotations?
        .get(MEMORY_DUMP_CLAIM)
        .filter(|n| !n.is_empty())?;
    Some(ObjRef {
        kind: pvc::KIND,
        name: name.clone(),
    })
}

/// A reference to a namespaced object in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjRef {
    pub kind: &'static str,
    pub name: String,
}

/// Adds a reference to `out` when `name` is a non-empty string.
pub(crate) fn push(out: &mut Vec<ObjRef>, kind: &'static str, name: Option<&Value>) {
    if let Some(name) = name.and_then(Value::as_str).filter(|n| !n.is_empty()) {
        out.push(ObjRef {
            kind,
            name: name.to_string(),
        });
    }
}

/// The Secret, ConfigMap and claim a volume names: the fields a KubeVirt volume shares with a
/// pod's.
pub(crate) fn push_volume_sources(out: &mut Vec<ObjRef>, vol: &Value) {
    push(out, secret::KIND, vol.pointer("/secret/secretName"));
    push(out, config_map::KIND, vol.pointer("/configMap/name"));
    push(
        out,
        pvc::KIND,
        vol.pointer("/persistentVolumeClaim/claimName"),
    );
}

/// Everything a VM-like object references by name: Secrets, ConfigMaps, PVCs, ServiceAccounts
/// and DataVolumes (sorted, no duplicates). DataVolumes created from the object's own
/// `dataVolumeTemplates` are not references: the host makes them.
pub fn references(template: &VmTemplate, obj: &Value) -> Vec<ObjRef> {
    let mut out = Vec::new();
    let Some(spec) = template.vmi_spec(obj) else {
        return out;
    };
    let templated: Vec<&str> = template
        .data_volume_templates(obj)
        .into_iter()
        .flatten()
        .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
        .collect();
    for vol in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        push_volume_sources(&mut out, vol);
        push(&mut out, pvc::KIND, vol.pointer("/memoryDump/claimName"));
        push(
            &mut out,
            service_account::KIND,
            vol.pointer("/serviceAccount/serviceAccountName"),
        );
        for cloud_init in ["cloudInitNoCloud", "cloudInitConfigDrive"] {
            for field in ["secretRef", "userDataSecretRef", "networkDataSecretRef"] {
                push(
                    &mut out,
                    secret::KIND,
                    vol.pointer(&format!("/{cloud_init}/{field}/name")),
                );
            }
        }
        push(&mut out, secret::KIND, vol.pointer("/sysprep/secret/name"));
        push(
            &mut out,
            config_map::KIND,
            vol.pointer("/sysprep/configMap/name"),
        );
        if let Some(dv) = vol.pointer("/dataVolume/name").and_then(Value::as_str)
            && !templated.contains(&dv)
        {
            push(&mut out, data_volume::KIND, vol.pointer("/dataVolume/name"));
        }
    }
    for cred in spec
        .get("accessCredentials")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        push(
            &mut out,
            secret::KIND,
            cred.pointer("/sshPublicKey/source/secret/secretName"),
        );
        push(
            &mut out,
            secret::KIND,
            cred.pointer("/userPassword/source/secret/secretName"),
        );
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::{pool, virtual_machine};
    use serde_json::json;

    #[test]
    fn finds_cloud_init_secrets_volumes_and_credentials() {
        let vm = json!({"spec": {
            "dataVolumeTemplates": [{"metadata": {"name": "root-dv"}}],
            "template": {"spec": {
            "volumes": [
                {"name": "a", "cloudInitNoCloud": {"userDataSecretRef": {"name": "ci"}}},
                {"name": "b", "configMap": {"name": "cm"}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                {"name": "d", "dataVolume": {"name": "root-dv"}},
                {"name": "e", "dataVolume": {"name": "shared-dv"}},
                {"name": "f", "serviceAccount": {"serviceAccountName": "sa"}},
                {"name": "g", "containerDisk": {"image": "quay.io/containerdisks/fedora"}},
                {"name": "h", "secret": {"secretName": "ci"}}
            ],
            "accessCredentials": [{"sshPublicKey": {"source": {"secret": {"secretName": "keys"}}}}]
        }}}});
        let refs = references(&virtual_machine::TEMPLATE, &vm);
        let pairs: Vec<(&str, &str)> = refs.iter().map(|r| (r.kind, r.name.as_str())).collect();
        assert_eq!(
            pairs,
            [
                ("ConfigMap", "cm"),
                ("DataVolume", "shared-dv"),
                ("PersistentVolumeClaim", "data"),
                ("Secret", "ci"),
                ("Secret", "keys"),
                ("ServiceAccount", "sa"),
            ]
        );
    }

    #[test]
    fn pools_reference_through_their_vm_template() {
        let pool_obj = json!({"spec": {"virtualMachineTemplate": {"spec": {"template": {"spec": {
            "volumes": [{"name": "a", "cloudInitNoCloud": {"secretRef": {"name": "ci"}}}]
        }}}}}});
        assert_eq!(references(&pool::TEMPLATE, &pool_obj).len(), 1);
        assert!(references(&virtual_machine::TEMPLATE, &pool_obj).is_empty());
    }

    #[test]
    fn a_memory_dump_claim_is_named_by_its_annotation() {
        let marks = |v: &str| {
            std::collections::BTreeMap::from([(MEMORY_DUMP_CLAIM.to_string(), v.to_string())])
        };
        assert_eq!(
            memory_dump_claim(Some(&marks("dump"))),
            Some(ObjRef {
                kind: pvc::KIND,
                name: "dump".into()
            })
        );
        assert_eq!(memory_dump_claim(Some(&marks(""))), None);
        assert_eq!(memory_dump_claim(None), None);
    }
}
