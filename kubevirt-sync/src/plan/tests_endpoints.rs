//! EndpointSlices: synced only for a selector-less Service the tenant has, after it, labelled
//! as kvtenant's on the host; gone when the Service gains a selector or goes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kube::api::DynamicObject;
use kvtenant_rules::kinds::endpoint_slice::{HOST_MANAGED_BY, MANAGED_BY, SERVICE_NAME};
use kvtenant_rules::vm::refs::ObjRef;
use serde_json::{Value, json};

use super::fake::*;
use super::*;

fn service(spec: Value) -> DynamicObject {
    obj(
        "Service",
        json!({"metadata": {"name": "db", "namespace": "default", "uid": "t-svc"}, "spec": spec}),
    )
}

fn slice(address: &str) -> DynamicObject {
    obj(
        "EndpointSlice",
        json!({"metadata": {"name": "db-1", "namespace": "default", "uid": "t-eps",
            "labels": {SERVICE_NAME: "db",
                       MANAGED_BY: "endpointslicemirroring-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address], "nodeName": "node-1"}],
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]}),
    )
}

fn with_service(spec: Value) -> Fake {
    let mut f = Fake::new();
    f.tenant_objects
        .insert(("Service".into(), "db".into()), service(spec));
    f
}

#[test]
fn a_slice_of_a_selector_less_service_syncs_after_its_service() {
    let f = with_service(json!({"ports": [{"name": "pg", "port": 5432}]}));
    let t = slice("192.0.2.10");
    let p = run(&f, "EndpointSlice", Some(&t), None);
    let [
        Step::Dependencies(deps),
        Step::EnsureHostNamespace,
        Step::CreateHost(h),
        Step::ClearRefusal,
    ] = p.steps.as_slice()
    else {
        panic!("{p:?}")
    };
    assert_eq!(
        deps,
        &[ObjRef {
            kind: "Service",
            name: "db".into()
        }]
    );
    let labels = h.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[SERVICE_NAME], "db");
    assert_eq!(labels[MANAGED_BY], HOST_MANAGED_BY);
    assert_eq!(h.metadata.namespace.as_deref(), Some(f.host_ns().as_str()));
    assert_eq!(
        h.data["endpoints"],
        json!([{"addresses": ["192.0.2.10"]}]),
        "no nodeName on the host"
    );
    // the copy as written is in sync
    let mut copy = (**h).clone();
    copy.metadata.uid = Some("h-eps".into());
    let again = run(&f, "EndpointSlice", Some(&t), Some(&copy));
    assert_eq!(
        again.steps,
        [
            Step::Dependencies(deps.clone()),
            Step::EnsureHostNamespace,
            Step::ClearRefusal
        ]
    );
    // the Service gains a selector, or goes: the copy goes
    let selecting = with_service(json!({"selector": {"app": "db"}}));
    assert_eq!(
        run(&selecting, "EndpointSlice", Some(&t), Some(&copy)).steps,
        [Step::DeleteHost]
    );
    assert!(
        run(&selecting, "EndpointSlice", Some(&t), None)
            .steps
            .is_empty()
    );
    // the Service gone from the tenant's cache: while its host copy is there (kvtenant
    // recreating it with the host's cluster IP), the slice's copy stays; then it goes
    let mut recreating = Fake::new();
    recreating
        .host_uids
        .insert(("Service".into(), "db".into()), "h-svc".into());
    assert!(
        run(&recreating, "EndpointSlice", Some(&t), Some(&copy))
            .steps
            .is_empty()
    );
    assert_eq!(
        run(&Fake::new(), "EndpointSlice", Some(&t), Some(&copy)).steps,
        [Step::DeleteHost]
    );
    let mut deleting_svc = with_service(json!({}));
    let gone = deleting(service(json!({})));
    deleting_svc
        .tenant_objects
        .insert(("Service".into(), "db".into()), gone);
    assert!(
        run(&deleting_svc, "EndpointSlice", Some(&t), None)
            .steps
            .is_empty()
    );
}

#[test]
fn slices_the_tenants_controller_computes_never_sync() {
    let f = with_service(json!({}));
    let mut t = slice("10.1.2.3");
    t.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(MANAGED_BY.into(), "endpointslice-controller.k8s.io".into());
    assert!(run(&f, "EndpointSlice", Some(&t), None).steps.is_empty());
}

#[test]
fn a_slice_pointing_at_the_metadata_service_is_refused() {
    let f = with_service(json!({}));
    let t = slice("169.254.169.254");
    let p = run(&f, "EndpointSlice", Some(&t), None);
    let [Step::Refuse(v)] = p.steps.as_slice() else {
        panic!("{p:?}")
    };
    assert_eq!(v[0].path, "endpoints[0].addresses[0]");
}

/// A host-made Service (KubeVirt's exporter) is shown with the host's cluster IP, so the tenant's
/// DNS names it at the address that works; without it when a tenant Service holds that address.
#[test]
fn an_exporter_service_is_shown_with_the_hosts_cluster_ip_unless_the_tenant_has_it() {
    let mut f = Fake::new();
    let h = obj(
        "Service",
        json!({"metadata": {"name": "virt-export-exp", "namespace": "h", "uid": "h-svc"},
            "spec": {"clusterIP": "10.0.0.42", "clusterIPs": ["10.0.0.42"], "ports": [{"port": 443}],
                     "selector": {"kubevirt.io.virt-export-service": "virt-export-exp"}}}),
    );
    let create = |f: &Fake| {
        let p = run(f, "Service", None, Some(&h));
        let [Step::CreateMirror(m)] = p.steps.as_slice() else {
            panic!("{p:?}")
        };
        m.data["spec"].clone()
    };
    assert_eq!(create(&f)["clusterIP"], "10.0.0.42");
    f.taken_ips.push("10.0.0.42".into());
    let spec = create(&f);
    assert!(spec.get("clusterIP").is_none() && spec.get("clusterIPs").is_none());
    assert_eq!(spec["ports"], json!([{"port": 443}]));
}
