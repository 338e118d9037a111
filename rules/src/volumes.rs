//! PersistentVolumes bound to a tenant's claims, shown in the tenant read-only: when the host
//! counterpart of a tenant claim (its copy, or a host-made claim the tenant sees as a mirror) is
//! `Bound` to a host PersistentVolume whose `claimRef` is that host claim, the tenant gets a
//! PersistentVolume of the same name ([`mirror`]) pre-bound to the **tenant** claim, and the
//! claim gets its `spec.volumeName` ([`volume_name_patch`]).
//!
//! What the mirror shows: capacity, access modes, volume mode, storage class, reclaim policy,
//! the claim reference (tenant namespace, name, uid) and `status.phase: Bound`. What it never
//! shows: the host's volume source (a hostPath or local path, a CSI handle, a server address:
//! [`PLACEHOLDER_DRIVER`] stands in, a FlexVolume driver no tenant node has), its node affinity
//! (host node names), mount options, the host's labels and annotations, the host claim's
//! namespace and uid.
//!
//! Why a tenant's own PersistentVolume binder accepts it: a volume whose `claimRef` names a
//! claim with its uid is pre-bound; the binder binds that claim to it (`spec.volumeName`,
//! `pv.kubernetes.io/bind-completed`) and writes nothing on the volume but `status.phase: Bound`.
//! `pv.kubernetes.io/provisioned-by` names [`PROVISIONER`], which no in-tree plugin is, so when
//! the claim goes the binder waits for an external provisioner instead of deleting anything;
//! kvtenant deletes the mirror (and lets go of the `kubernetes.io/pv-protection` finalizer the
//! tenant's protection controller adds).

use kvtenant_api::labels::{HOST_VOLUME, MANAGED_BY, MANAGED_BY_VALUE};
use serde_json::{Map, Value, json};

/// `pv.kubernetes.io/provisioned-by` on a mirror: no plugin of a tenant's controller manager.
pub const PROVISIONER: &str = "tenancy.kvtenant.io/host";
/// The FlexVolume driver of a mirror's placeholder source (a PersistentVolume must have one).
pub const PLACEHOLDER_DRIVER: &str = "tenancy.kvtenant.io/host-volume";

/// A claim by namespace, name and uid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub uid: &'a str,
}

/// The volume a claim is bound to: its `spec.volumeName` once `status.phase` is `Bound`.
pub fn bound_volume(claim: &Value) -> Option<&str> {
    let phase = claim.pointer("/status/phase").and_then(Value::as_str);
    claim
        .pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty() && phase == Some("Bound"))
}

/// The volume a tenant claim names (`spec.volumeName`), bound or not.
pub fn named_volume(claim: &Value) -> Option<&str> {
    claim
        .pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
}

/// Whether a host PersistentVolume is bound to this host claim (its `claimRef` names the claim's
/// namespace, name and uid): only such a volume is shown to the claim's tenant.
pub fn bound_to(pv: &Value, claim: &Claim) -> bool {
    let r = |f: &str| {
        pv.pointer(&format!("/spec/claimRef/{f}"))
            .and_then(Value::as_str)
    };
    r("namespace") == Some(claim.namespace)
        && r("name") == Some(claim.name)
        && r("uid") == Some(claim.uid)
}

/// The tenant's mirror of the host PersistentVolume `pv`, bound to the host claim `host_claim`,
/// for the tenant claim `tenant_claim`; `None` when the volume is not bound to that host claim.
pub fn mirror(pv: &Value, host_claim: &Claim, tenant_claim: &Claim) -> Option<Value> {
    if !bound_to(pv, host_claim) {
        return None;
    }
    let name = pv.pointer("/metadata/name")?.as_str()?;
    let mut spec = Map::new();
    for field in [
        "capacity",
        "accessModes",
        "volumeMode",
        "storageClassName",
        "persistentVolumeReclaimPolicy",
    ] {
        if let Some(v) = pv.pointer(&format!("/spec/{field}")) {
            spec.insert(field.into(), v.clone());
        }
    }
    spec.insert("flexVolume".into(), json!({"driver": PLACEHOLDER_DRIVER}));
    spec.insert(
        "claimRef".into(),
        json!({
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "namespace": tenant_claim.namespace,
            "name": tenant_claim.name,
            "uid": tenant_claim.uid,
        }),
    );
    Some(json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "labels": {MANAGED_BY: MANAGED_BY_VALUE, HOST_VOLUME: "true"},
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": spec,
    }))
}

/// Whether a tenant PersistentVolume is one of kvtenant's mirrors (by its label).
pub fn is_mirror(tenant_pv: &Value) -> bool {
    tenant_pv
        .pointer(&format!(
            "/metadata/labels/{}",
            HOST_VOLUME.replace('/', "~1")
        ))
        .and_then(Value::as_str)
        == Some("true")
}

/// Whether the tenant's PersistentVolume differs from the mirror kvtenant wants (`desired`,
/// from [`mirror`]): its spec (a tenant edit; what the apiserver defaults on top is not a
/// difference), its labels and annotations of kvtenant's, or its phase.
pub fn differs(current: &Value, desired: &Value) -> bool {
    let spec_differs = current.get("spec") != desired.get("spec")
        && !crate::translate::contained(&desired["spec"], &current["spec"])
        || spec_extra(current, desired);
    let meta = |v: &Value, f: &str| {
        v.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let meta_differs = ["labels", "annotations"].iter().any(|f| {
        let have = meta(current, f);
        meta(desired, f)
            .iter()
            .any(|(k, v)| have.get(k.as_str()) != Some(v))
    });
    spec_differs || meta_differs || !shows_bound(current)
}

/// A tenant edit that added a field to the spec (a volume source, node affinity): the mirror's
/// spec has only the fields of [`mirror`] and what the apiserver defaults.
fn spec_extra(current: &Value, desired: &Value) -> bool {
    const DEFAULTED: &[&str] = &["volumeMode", "persistentVolumeReclaimPolicy"];
    let (Some(have), Some(want)) = (
        current.get("spec").and_then(Value::as_object),
        desired.get("spec").and_then(Value::as_object),
    ) else {
        return false;
    };
    have.keys()
        .any(|k| !want.contains_key(k) && !DEFAULTED.contains(&k.as_str()))
}

/// Whether a tenant PersistentVolume's status is `Bound`.
pub fn shows_bound(tenant_pv: &Value) -> bool {
    tenant_pv.pointer("/status/phase").and_then(Value::as_str) == Some("Bound")
}

/// The status a mirror is written with.
pub fn mirror_status() -> Value {
    json!({"phase": "Bound"})
}

/// Whether the tenant PersistentVolume `tenant_pv` is the mirror kvtenant shows for this tenant
/// claim (namespace and name): only that mirror is removed when the claim no longer has it.
pub fn mirrors_claim(tenant_pv: &Value, namespace: &str, name: &str) -> bool {
    is_mirror(tenant_pv)
        && tenant_pv
            .pointer("/spec/claimRef/namespace")
            .and_then(Value::as_str)
            == Some(namespace)
        && tenant_pv
            .pointer("/spec/claimRef/name")
            .and_then(Value::as_str)
            == Some(name)
}

/// The merge patch giving the tenant claim the volume its host claim is bound to, when it names
/// none yet (a claim's `spec.volumeName` is set once; a tenant binder may have set it first).
pub fn volume_name_patch(tenant_claim: &Value, volume: &str) -> Option<Value> {
    named_volume(tenant_claim)
        .is_none()
        .then(|| json!({"spec": {"volumeName": volume}}))
}

/// What the tenant should show for one claim, given its host counterpart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimVolume {
    /// Show (create or repair) the mirror of this host volume.
    Show(String),
    /// Remove the mirror of this name, if kvtenant's and this claim's: the host claim is no
    /// longer bound to it (the host volume was deleted, the claim lost).
    Hide(String),
    Nothing,
}

/// The decision for a tenant claim (`tenant`, `None` when it is gone) and its host counterpart.
pub fn decide(tenant: Option<&Value>, host: Option<&Value>) -> ClaimVolume {
    let bound = host.and_then(bound_volume);
    match (tenant.and_then(named_volume), bound) {
        (_, Some(v)) if tenant.is_some() => ClaimVolume::Show(v.to_string()),
        (Some(v), _) => ClaimVolume::Hide(v.to_string()),
        // the tenant claim is gone: the mirror of what its host claim was bound to goes
        (None, _) if tenant.is_none() => host
            .and_then(named_volume)
            .map_or(ClaimVolume::Nothing, |v| ClaimVolume::Hide(v.to_string())),
        _ => ClaimVolume::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Claim = Claim {
        namespace: "tenants-ab12-t1-default",
        name: "data",
        uid: "h-uid",
    };
    const TENANT: Claim = Claim {
        namespace: "default",
        name: "data",
        uid: "t-uid",
    };

    fn host_pv() -> Value {
        json!({"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": "pvc-123", "uid": "pv-uid", "resourceVersion": "7",
                "labels": {"topology.example/rack": "r7"},
                "annotations": {"pv.kubernetes.io/provisioned-by": "rancher.io/local-path"},
                "finalizers": ["kubernetes.io/pv-protection"]},
            "spec": {"capacity": {"storage": "2Gi"}, "accessModes": ["ReadWriteOnce"],
                "volumeMode": "Filesystem", "storageClassName": "fast",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": "/srv/volumes/tenant-b/secret", "type": ""},
                "mountOptions": ["hard"],
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["rack7-node3"]}]}]}},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "namespace": "tenants-ab12-t1-default", "name": "data", "uid": "h-uid",
                    "resourceVersion": "5"}},
            "status": {"phase": "Bound", "lastPhaseTransitionTime": "2026-01-01T00:00:00Z"}})
    }

    #[test]
    fn a_mirror_shows_the_volume_bound_to_the_tenant_claim_and_nothing_of_the_host() {
        let m = mirror(&host_pv(), &HOST, &TENANT).expect("bound to the host claim");
        assert_eq!(m["metadata"]["name"], "pvc-123");
        assert_eq!(
            m["spec"]["claimRef"],
            json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": "default", "name": "data", "uid": "t-uid"})
        );
        assert_eq!(m["spec"]["capacity"]["storage"], "2Gi");
        assert_eq!(m["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(m["spec"]["storageClassName"], "fast");
        assert_eq!(m["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(m["spec"]["volumeMode"], "Filesystem");
        assert_eq!(m["spec"]["flexVolume"]["driver"], PLACEHOLDER_DRIVER);
        let text = m.to_string();
        for leak in [
            "/srv/volumes",
            "rack7-node3",
            "tenants-ab12",
            "h-uid",
            "rancher.io",
            "rack",
            "hard",
            "pv-uid",
        ] {
            assert!(!text.contains(leak), "{leak} leaks: {text}");
        }
        assert!(m.get("status").is_none(), "written through /status");
        assert!(is_mirror(&m));
        assert!(mirrors_claim(&m, "default", "data"));
        assert!(!mirrors_claim(&m, "default", "other"));
        assert!(!mirrors_claim(&m, "prod", "data"));
    }

    #[test]
    fn a_volume_bound_to_another_claim_or_an_older_one_of_the_name_is_not_shown() {
        let other = Claim {
            name: "other",
            ..HOST
        };
        assert_eq!(mirror(&host_pv(), &other, &TENANT), None);
        let older = Claim {
            uid: "recreated",
            ..HOST
        };
        assert_eq!(mirror(&host_pv(), &older, &TENANT), None);
        let mut unbound = host_pv();
        unbound["spec"]
            .as_object_mut()
            .map(|s| s.remove("claimRef"));
        assert_eq!(mirror(&unbound, &HOST, &TENANT), None);
    }

    #[test]
    fn tenant_edits_and_an_unbound_phase_are_differences_defaults_are_not() {
        let want = mirror(&host_pv(), &HOST, &TENANT).unwrap();
        let mut have = want.clone();
        have["status"] = mirror_status();
        have["metadata"]["finalizers"] = json!(["kubernetes.io/pv-protection"]);
        have["metadata"]["annotations"]["pv.kubernetes.io/bound-by-controller"] = json!("yes");
        assert!(!differs(&have, &want), "what the tenant's controllers add");
        let mut edited = have.clone();
        edited["spec"]["persistentVolumeReclaimPolicy"] = json!("Delete");
        assert!(differs(&edited, &want));
        let mut source = have.clone();
        source["spec"]["hostPath"] = json!({"path": "/"});
        assert!(differs(&source, &want), "an added field");
        let mut relabelled = have.clone();
        relabelled["metadata"]["labels"] = json!({});
        assert!(differs(&relabelled, &want));
        let mut released = have.clone();
        released["status"]["phase"] = json!("Released");
        assert!(differs(&released, &want));
        let mut rebound = have;
        rebound["spec"]["claimRef"]["uid"] = json!("another");
        assert!(differs(&rebound, &want));
    }

    #[test]
    fn a_claim_shows_the_volume_its_host_claim_is_bound_to_and_loses_it_with_it() {
        let bound = json!({"spec": {"volumeName": "pvc-123"}, "status": {"phase": "Bound"}});
        let lost = json!({"spec": {"volumeName": "pvc-123"}, "status": {"phase": "Lost"}});
        let pending = json!({"spec": {}, "status": {"phase": "Pending"}});
        let fresh = json!({"spec": {}});
        let named = json!({"spec": {"volumeName": "pvc-123"}});
        assert_eq!(bound_volume(&bound), Some("pvc-123"));
        assert_eq!(bound_volume(&lost), None);
        assert_eq!(
            decide(Some(&fresh), Some(&bound)),
            ClaimVolume::Show("pvc-123".into())
        );
        assert_eq!(
            decide(Some(&named), Some(&bound)),
            ClaimVolume::Show("pvc-123".into())
        );
        assert_eq!(decide(Some(&fresh), Some(&pending)), ClaimVolume::Nothing);
        assert_eq!(decide(Some(&fresh), None), ClaimVolume::Nothing);
        assert_eq!(
            decide(Some(&named), Some(&lost)),
            ClaimVolume::Hide("pvc-123".into()),
            "the host volume is gone"
        );
        assert_eq!(
            decide(None, Some(&bound)),
            ClaimVolume::Hide("pvc-123".into()),
            "the tenant claim is gone"
        );
        assert_eq!(decide(None, Some(&pending)), ClaimVolume::Nothing);
        assert_eq!(
            volume_name_patch(&fresh, "pvc-123"),
            Some(json!({"spec": {"volumeName": "pvc-123"}}))
        );
        assert_eq!(volume_name_patch(&named, "pvc-123"), None);
    }
}
