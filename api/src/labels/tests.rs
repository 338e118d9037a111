use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::*;
use crate::{VirtualCluster, VirtualClusterSpec};

fn vc_ref() -> VirtualClusterRef {
    VirtualClusterRef {
        namespace: "tenants".into(),
        name: "alpha".into(),
        uid: "6f1c1c0e-2b7a-4d53-9a0e-3c5d7e9f1a2b".into(),
    }
}

#[test]
fn keys() {
    assert_eq!(VIRTUALCLUSTER, "tenancy.kvtenant.io/virtualcluster");
    assert_eq!(
        VIRTUALCLUSTER_NAMESPACE,
        "tenancy.kvtenant.io/virtualcluster-namespace"
    );
    assert_eq!(VIRTUALCLUSTER_UID, "tenancy.kvtenant.io/virtualcluster-uid");
    assert_eq!(TENANT_NAMESPACE, "tenancy.kvtenant.io/tenant-namespace");
    assert_eq!(TENANT_UID, "tenancy.kvtenant.io/tenant-uid");
    assert_eq!(TENANT_NAME, "tenancy.kvtenant.io/tenant-name");
    assert_eq!(MANAGED_BY, "tenancy.kvtenant.io/managed-by");
    assert_eq!(MANAGED_BY_VALUE, "kvtenant");
}

#[test]
fn from_virtualcluster() {
    let mut vc = VirtualCluster::new("alpha", VirtualClusterSpec::default());
    assert_eq!(VirtualClusterRef::from_virtualcluster(&vc), None);
    vc.metadata.namespace = Some("tenants".into());
    vc.metadata.uid = Some(vc_ref().uid);
    assert_eq!(VirtualClusterRef::from_virtualcluster(&vc), Some(vc_ref()));
}

#[test]
fn host_namespace_metadata_round_trips() {
    let vc = vc_ref();
    let meta = vc.host_namespace_meta("kube-system", Some("tenant-ns-uid"));
    let name = meta.name.clone().unwrap();
    assert_eq!(
        name,
        crate::naming::host_namespace("tenants", "alpha", &vc.uid, "kube-system")
    );
    let labels = meta.labels.clone().unwrap();
    assert_eq!(labels[MANAGED_BY], "kvtenant");
    assert_eq!(labels[VIRTUALCLUSTER], "alpha");
    assert_eq!(labels[VIRTUALCLUSTER_NAMESPACE], "tenants");
    assert_eq!(labels[VIRTUALCLUSTER_UID], vc.uid);
    assert_eq!(labels[TENANT_NAMESPACE], "kube-system");
    let owner = HostNamespaceOwner::from_meta(&meta).unwrap();
    assert_eq!(
        owner,
        HostNamespaceOwner {
            virtual_cluster: vc.clone(),
            tenant_namespace: "kube-system".into(),
            tenant_uid: Some("tenant-ns-uid".into()),
        }
    );
    assert!(owner.is_owned_by(&vc.uid));
    assert!(!owner.is_owned_by("another-uid"));
    assert!(owner.matches_name(&name));
    assert!(!owner.matches_name("tenants-alpha-kube-system"));
}

#[test]
fn label_values_are_valid() {
    // Label values: at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends.
    let valid = |v: &str| {
        v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
            && v.chars().last().is_none_or(|c| c.is_ascii_alphanumeric())
    };
    let vc = VirtualClusterRef {
        namespace: "n".repeat(63),
        name: "v".repeat(40),
        uid: vc_ref().uid,
    };
    let (labels, _) = vc.host_namespace_metadata(&"t".repeat(63), None);
    for (k, v) in &labels {
        assert!(valid(v), "{k}={v}");
    }
}

#[test]
fn reverse_lookup_requires_kvtenant_metadata() {
    let (labels, annotations) = vc_ref().host_namespace_metadata("default", None);
    assert!(HostNamespaceOwner::from_metadata(&labels, &annotations).is_some());

    // Not managed by kvtenant.
    let mut l = labels.clone();
    l.insert(MANAGED_BY.into(), "someone-else".into());
    assert_eq!(HostNamespaceOwner::from_metadata(&l, &annotations), None);
    // Missing the VirtualCluster's identity.
    for key in [VIRTUALCLUSTER, VIRTUALCLUSTER_NAMESPACE, VIRTUALCLUSTER_UID] {
        let mut l = labels.clone();
        l.remove(key);
        assert_eq!(
            HostNamespaceOwner::from_metadata(&l, &annotations),
            None,
            "{key}"
        );
    }
    // The annotation is authoritative; the label is the fallback.
    let mut a = annotations.clone();
    a.insert(TENANT_NAMESPACE.into(), "from-annotation".into());
    assert_eq!(
        HostNamespaceOwner::from_metadata(&labels, &a)
            .unwrap()
            .tenant_namespace,
        "from-annotation"
    );
    let owner = HostNamespaceOwner::from_metadata(&labels, &BTreeMap::new()).unwrap();
    assert_eq!(owner.tenant_namespace, "default");
    let mut l = labels.clone();
    l.remove(TENANT_NAMESPACE);
    assert_eq!(
        HostNamespaceOwner::from_metadata(&l, &BTreeMap::new()),
        None
    );
    assert_eq!(HostNamespaceOwner::from_meta(&ObjectMeta::default()), None);
}

#[test]
fn selector_selects_by_uid() {
    assert_eq!(
        vc_ref().selector(),
        "tenancy.kvtenant.io/managed-by=kvtenant,tenancy.kvtenant.io/virtualcluster-uid=6f1c1c0e-2b7a-4d53-9a0e-3c5d7e9f1a2b"
    );
}

#[test]
fn tenant_object_ref_round_trips() {
    for r in [
        TenantObjectRef {
            namespace: Some("default".into()),
            name: "vm1".into(),
            uid: "u1".into(),
        },
        TenantObjectRef {
            namespace: None,
            name: "cluster-thing".into(),
            uid: "u2".into(),
        },
    ] {
        assert_eq!(TenantObjectRef::from_annotations(&r.annotations()), Some(r));
    }
    assert_eq!(TenantObjectRef::from_annotations(&BTreeMap::new()), None);
}
