//! The tenant → host translation (kvtenant-rules) of any JSON object, as each synced kind: the
//! rules' checks, references and host data never panic, and the host copy always lands in the
//! tenant's own host namespace, carries the tenant's identity and no status.
#![no_main]

use kube::api::DynamicObject;
use kvtenant_api::VmPolicy;
use kvtenant_api::labels::{VIRTUALCLUSTER_UID, VirtualClusterRef};
use kvtenant_rules::kinds::{self, HostContext};
use kvtenant_rules::pod::dns::TenantDns;
use kvtenant_rules::{Policy, translate};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(obj) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let vc = VirtualClusterRef {
        namespace: "tenants".into(),
        name: "t1".into(),
        uid: "11111111-2222-3333-4444-555555555555".into(),
    };
    let vm_policy = VmPolicy::default();
    let policy = Policy::vm_only(&vm_policy);
    let nodes = kvtenant_api::NodesSpec::default();
    let dns = TenantDns::Ready {
        nameserver: "10.96.0.10".into(),
        domain: "cluster.local".into(),
    };
    let tenant_ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let host_ns = vc.host_namespace(&tenant_ns);
    assert!(
        host_ns.len() <= 63 && host_ns.starts_with("tenants-"),
        "{host_ns}"
    );
    for kind in kinds::all() {
        let _ = kind.violations(&obj, &policy, None);
        let _ = kind.references(&obj);
        let _ = kind.belongs_to(&obj);
        let Ok(mut t) = serde_json::from_value::<DynamicObject>(obj.clone()) else {
            continue;
        };
        let name = t.metadata.name.clone().unwrap_or_default();
        translate::remove_pointers(&mut t.data, kind.host_assigned());
        kind.to_host_data(
            &mut t.data,
            &HostContext {
                tenant_namespace: &tenant_ns,
                name: &name,
                vc_uid: &vc.uid,
                nodes: &nodes,
                api: None,
                dns: &dns,
            },
        );
        let host = translate::to_host(&t, &host_ns, &vc, |_| None);
        assert_eq!(host.metadata.namespace.as_deref(), Some(host_ns.as_str()));
        assert_eq!(
            host.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(VIRTUALCLUSTER_UID)),
            Some(&vc.uid)
        );
        assert!(host.data.get("status").is_none());
        assert!(translate::is_copy_for(&host, &vc.uid));
        assert!(!translate::host_needs_update(&host, &host));
        let merged = translate::merge_for_update(&host, &host);
        assert_eq!(merged.metadata.namespace, host.metadata.namespace);
        let _ = translate::content_hash(&host);
    }
});
