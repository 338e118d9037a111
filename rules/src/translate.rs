//! Pure translation between tenant and host objects. Lossless: everything but the metadata
//! kvtenant owns passes through as JSON (`DynamicObject::data`), unknown fields included.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::DynamicObject;
use kvtenant_api::labels::{
    MANAGED_BY, MANAGED_BY_VALUE, TENANT_NAME, TENANT_NAMESPACE, TENANT_UID, TenantObjectRef,
    VIRTUALCLUSTER_UID, VirtualClusterRef,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use kvtenant_api::labels::{MIRROR_FINALIZER, MIRROR_OF, SPEC_HASH};

/// Annotation prefixes host controllers (KubeVirt, CDI, Kubernetes) write on objects; an update
/// from the tenant keeps them.
const HOST_OWNED_ANNOTATION_PREFIXES: &[&str] = &[
    "kubevirt.io/",
    "cdi.kubevirt.io/",
    "pv.kubernetes.io/",
    "volume.kubernetes.io/",
    "volume.beta.kubernetes.io/",
];

/// The desired host copy of a tenant object: same name, the host namespace, tenant labels and
/// annotations plus kvtenant's identity, owner references mapped through `map_owner` (dropped
/// when it returns `None`), no finalizers, no status.
pub fn to_host(
    tenant: &DynamicObject,
    host_ns: &str,
    vc: &VirtualClusterRef,
    map_owner: impl Fn(&OwnerReference) -> Option<OwnerReference>,
) -> DynamicObject {
    let m = &tenant.metadata;
    let mut labels = m.labels.clone().unwrap_or_default();
    labels.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    labels.insert(VIRTUALCLUSTER_UID.into(), vc.uid.clone());
    let mut annotations = m.annotations.clone().unwrap_or_default();
    annotations.extend(
        TenantObjectRef {
            namespace: m.namespace.clone(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
        }
        .annotations(),
    );
    annotations.remove(SPEC_HASH);
    let owners: Vec<OwnerReference> = m
        .owner_references
        .iter()
        .flatten()
        .filter_map(&map_owner)
        .collect();
    let mut data = tenant.data.clone();
    if let Some(obj) = data.as_object_mut() {
        obj.remove("status");
    }
    let mut host = DynamicObject {
        types: tenant.types.clone(),
        metadata: ObjectMeta {
            name: m.name.clone(),
            namespace: Some(host_ns.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: (!owners.is_empty()).then_some(owners),
            ..ObjectMeta::default()
        },
        data,
    };
    let hash = content_hash(&host);
    if let Some(a) = host.metadata.annotations.as_mut() {
        a.insert(SPEC_HASH.into(), hash);
    }
    host
}

/// Removes the values at JSON pointers (`*` matches every array element), e.g. fields the host
/// assigns itself.
pub fn remove_pointers(v: &mut Value, pointers: &[&str]) {
    fn remove(v: &mut Value, parts: &[&str]) {
        match parts {
            [] => {}
            [last] => match v {
                Value::Object(m) => {
                    m.remove(*last);
                }
                Value::Array(a) if *last == "*" => a.clear(),
                _ => {}
            },
            [first, rest @ ..] => match v {
                Value::Object(m) => {
                    if let Some(child) = m.get_mut(*first) {
                        remove(child, rest);
                    }
                }
                Value::Array(a) if *first == "*" => {
                    for child in a {
                        remove(child, rest);
                    }
                }
                _ => {}
            },
        }
    }
    for p in pointers {
        let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        remove(v, &parts);
    }
}

/// Whether a label selector (`matchLabels`-style map) selects these labels. An empty selector
/// selects nothing here: a Service without a selector does not expose a VM.
pub fn selects(selector: &serde_json::Map<String, Value>, labels: Option<&Value>) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// Hash of what kvtenant writes: labels, annotations (without the hash itself), owner
/// references and data.
pub fn content_hash(obj: &DynamicObject) -> String {
    let mut annotations = obj.metadata.annotations.clone().unwrap_or_default();
    annotations.remove(SPEC_HASH);
    let canonical = serde_json::json!({
        "labels": obj.metadata.labels,
        "annotations": annotations,
        "ownerReferences": obj.metadata.owner_references,
        "data": obj.data,
    });
    let digest = Sha256::digest(canonical.to_string().as_bytes());
    hex::encode(&digest[..16])
}

/// Whether `host` is a copy kvtenant made for the VirtualCluster with this uid.
/// The tenant object to create again: its metadata without the server's fields, its data with
/// `values` merged in (JSON merge patch), no status.
pub fn recreated(t: &DynamicObject, values: &Value) -> DynamicObject {
    let mut out = t.clone();
    let m = &mut out.metadata;
    m.uid = None;
    m.resource_version = None;
    m.creation_timestamp = None;
    m.generation = None;
    m.managed_fields = None;
    fn merge(into: &mut Value, patch: &Value) {
        match (into, patch) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    if v.is_null() {
                        a.remove(k);
                    } else {
                        merge(a.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            (slot, v) => *slot = v.clone(),
        }
    }
    merge(&mut out.data, values);
    if let Some(o) = out.data.as_object_mut() {
        o.remove("status");
    }
    out
}

/// The value of [`kvtenant_api::labels::RECREATE_PENDING`] for recreating the tenant object
/// `old_uid` as `object` (`original`: the object as it was, put back if the tenant refuses
/// `object`).
pub fn recreate_pending(old_uid: &str, object: &DynamicObject, original: &DynamicObject) -> String {
    serde_json::json!({"uid": old_uid, "object": object, "original": original}).to_string()
}

/// The tenant object a host copy says kvtenant was recreating, and the original, when that
/// recreate was cut short: the copy still stands for the deleted object (its tenant uid is the
/// one the annotation names). After a completed recreate the copy stands for the new object, and
/// a leftover annotation means nothing.
pub fn interrupted_recreate(host: &DynamicObject) -> Option<(DynamicObject, DynamicObject)> {
    let a = host.metadata.annotations.as_ref()?;
    let pending: Value =
        serde_json::from_str(a.get(kvtenant_api::labels::RECREATE_PENDING)?).ok()?;
    let old = pending.get("uid")?.as_str()?;
    if a.get(TENANT_UID).map(String::as_str) != Some(old) {
        return None;
    }
    let obj = |k: &str| serde_json::from_value(pending.get(k)?.clone()).ok();
    Some((obj("object")?, obj("original")?))
}

/// Whether `host` is kvtenant's copy of a tenant object of this VirtualCluster.
pub fn is_copy_for(host: &DynamicObject, vc_uid: &str) -> bool {
    let labels = host.metadata.labels.as_ref();
    labels
        .and_then(|l| l.get(VIRTUALCLUSTER_UID))
        .map(String::as_str)
        == Some(vc_uid)
        && is_kvtenant_copy(host)
}

/// Whether `host` was written by kvtenant at all (for any VirtualCluster): it carries kvtenant's
/// label, names its tenant object, and that object's name is its own (copies keep their names).
/// Host controllers copy a copy's metadata onto objects they make: KubeVirt's export controller
/// the labels and annotations of a VirtualMachineExport onto its exporter Pod and Service (other
/// names), CDI the annotations (not the labels) of a DataVolume onto its claim (the same name).
/// Those are the host's objects, not copies whose tenant object is gone.
pub fn is_kvtenant_copy(host: &DynamicObject) -> bool {
    let labelled = host
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE));
    labelled
        && host.metadata.annotations.as_ref().is_some_and(|a| {
            a.contains_key(TENANT_UID)
                && a.get(TENANT_NAME)
                    .is_none_or(|n| n == host.metadata.name.as_deref().unwrap_or_default())
        })
}

/// `sub` is contained in `sup`: every field of `sub` is in `sup` with a contained value (arrays
/// element-wise, same length). Host defaults (fields the host adds) are therefore not drift.
pub fn contained(sub: &Value, sup: &Value) -> bool {
    match (sub, sup) {
        (Value::Object(a), Value::Object(b)) => a
            .iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| contained(v, w)) || v.is_null()),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| contained(x, y))
        }
        _ => sub == sup,
    }
}

/// Whether the host copy needs a write to match `desired`: the tenant changed (hash) or someone
/// changed the host copy behind kvtenant's back (drift).
pub fn host_needs_update(current: &DynamicObject, desired: &DynamicObject) -> bool {
    let hash = |o: &DynamicObject| {
        o.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SPEC_HASH))
            .cloned()
    };
    if hash(current) != hash(desired) {
        return true;
    }
    let mut want = desired.data.clone();
    let mut have = current.data.clone();
    for v in [&mut want, &mut have] {
        if let Some(o) = v.as_object_mut() {
            o.remove("status");
        }
    }
    let labels_ok = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| current.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    !(labels_ok && contained(&want, &have))
}

/// The object to PUT to the host to make `current` match `desired`: the host's identity,
/// resourceVersion, finalizers, status and host-controller annotations are kept.
pub fn merge_for_update(current: &DynamicObject, desired: &DynamicObject) -> DynamicObject {
    let mut out = desired.clone();
    let m = &mut out.metadata;
    m.resource_version = current.metadata.resource_version.clone();
    m.uid = current.metadata.uid.clone();
    m.finalizers = current.metadata.finalizers.clone();
    let mut annotations: BTreeMap<String, String> = current
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            HOST_OWNED_ANNOTATION_PREFIXES
                .iter()
                .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.extend(m.annotations.take().unwrap_or_default());
    m.annotations = Some(annotations);
    // host-set owner references (e.g. none for tenant objects) are replaced by the mapped ones
    if let (Some(obj), Some(status)) = (out.data.as_object_mut(), current.data.get("status")) {
        obj.insert("status".into(), status.clone());
    }
    out
}

/// The tenant mirror of a host-made object: same name in the tenant namespace, host labels and
/// annotations plus [`MIRROR_OF`], owner references mapped, kvtenant's finalizer, spec and status
/// as on the host. kvtenant's own keys are dropped: a host controller that copies a copy's
/// labels and annotations onto what it makes (KubeVirt's exporter Pod and Service) copies them too.
pub fn to_tenant_mirror(
    host: &DynamicObject,
    tenant_ns: &str,
    map_owner: impl Fn(&OwnerReference) -> Option<OwnerReference>,
) -> DynamicObject {
    let m = &host.metadata;
    let mut annotations = m.annotations.clone().unwrap_or_default();
    for k in [TENANT_NAMESPACE, TENANT_NAME, TENANT_UID, SPEC_HASH] {
        annotations.remove(k);
    }
    annotations.insert(MIRROR_OF.into(), m.uid.clone().unwrap_or_default());
    let labels = m.labels.clone().map(|mut l| {
        l.remove(MANAGED_BY);
        l.remove(VIRTUALCLUSTER_UID);
        l
    });
    let owners: Vec<OwnerReference> = m
        .owner_references
        .iter()
        .flatten()
        .filter_map(&map_owner)
        .collect();
    DynamicObject {
        types: host.types.clone(),
        metadata: ObjectMeta {
            name: m.name.clone(),
            namespace: Some(tenant_ns.to_string()),
            labels: labels.filter(|l| !l.is_empty()),
            annotations: Some(annotations),
            owner_references: (!owners.is_empty()).then_some(owners),
            finalizers: Some(vec![MIRROR_FINALIZER.to_string()]),
            ..ObjectMeta::default()
        },
        data: host.data.clone(),
    }
}

/// Whether a tenant object is kvtenant's mirror of a host-made object.
pub fn is_mirror(tenant: &DynamicObject) -> bool {
    tenant
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(MIRROR_OF))
}

/// Whether a tenant object (as JSON) is kvtenant's mirror of a host-made object.
pub fn is_mirror_json(obj: &Value) -> bool {
    obj.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| a.contains_key(MIRROR_OF))
}

/// Whether the tenant mirror differs from what it should be (tenant edits are reverted).
pub fn mirror_differs(current: &DynamicObject, desired: &DynamicObject) -> bool {
    current.data != desired.data
        || current.metadata.labels.clone().unwrap_or_default()
            != desired.metadata.labels.clone().unwrap_or_default()
        || current
            .metadata
            .owner_references
            .clone()
            .unwrap_or_default()
            != desired
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default()
        || desired
            .metadata
            .annotations
            .iter()
            .flatten()
            .any(|(k, v)| current.metadata.annotations.as_ref().and_then(|a| a.get(k)) != Some(v))
}

/// The object to PUT to the tenant to make a mirror match: keeps the tenant's identity.
pub fn merge_mirror(current: &DynamicObject, desired: &DynamicObject) -> DynamicObject {
    let mut out = desired.clone();
    out.metadata.resource_version = current.metadata.resource_version.clone();
    out.metadata.uid = current.metadata.uid.clone();
    out.metadata.finalizers = current.metadata.finalizers.clone();
    out
}

/// Maps an owner reference by looking the owner up by kind and name: names are unchanged
/// between tenant and host, so only the uid changes.
pub fn map_owner_by_name(
    owner: &OwnerReference,
    lookup_uid: impl Fn(&str, &str) -> Option<String>,
) -> Option<OwnerReference> {
    let uid = lookup_uid(&owner.kind, &owner.name)?;
    Some(OwnerReference {
        uid,
        ..owner.clone()
    })
}

pub mod keep;

#[cfg(test)]
mod tests;
