//! Where a host copy resolves names. A tenant pod (or a VM's VMI template) that asks for the
//! cluster's DNS (`dnsPolicy` ClusterFirst, the default, or ClusterFirstWithHostNet) gets, on
//! the host copy only, `dnsPolicy: None` and a `dnsConfig` naming the tenant's own CoreDNS
//! (the host cluster IP of its `kube-system/kube-dns`, see [`crate::dns`]) with the search path
//! and `ndots:5` the kubelet would have written, merged with the `dnsConfig` the tenant wrote
//! (as the kubelet merges it). The tenant keeps seeing the spec it wrote. `Default` and `None`
//! are left as they are, and so is ClusterFirst with `hostNetwork` (the kubelet treats it as
//! `Default`).
//!
//! A pod's spec is fixed at creation, so its host copy waits for the address
//! ([`TenantDns::Pending`]) rather than being made with the host's DNS.

use serde_json::{Value, json};

/// The tenant's DNS as host copies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantDns {
    /// Disabled (`spec.dns.enabled: false`): host copies keep the tenant's settings.
    Off,
    /// Enabled, but the host has not given `kube-system/kube-dns` an address yet.
    Pending,
    /// The nameserver (kube-dns's host cluster IP) and the cluster domain.
    Ready { nameserver: String, domain: String },
}

/// The kubelet's limits on a resolv.conf.
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// Whether a pod spec resolves through the cluster's DNS.
pub fn uses_cluster_dns(spec: &Value) -> bool {
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    match spec.get("dnsPolicy").and_then(Value::as_str) {
        None | Some("ClusterFirst") => !host_network,
        Some("ClusterFirstWithHostNet") => true,
        Some(_) => false,
    }
}

/// Points a pod spec (or VMI spec: same fields) that uses the cluster's DNS at the tenant's
/// DNS; others are left unchanged.
pub fn to_host(spec: &mut Value, tenant_namespace: &str, nameserver: &str, domain: &str) {
    if !uses_cluster_dns(spec) {
        return;
    }
    let Some(s) = spec.as_object_mut() else {
        return;
    };
    let tenant = s.get("dnsConfig").cloned().unwrap_or(Value::Null);
    let strings = |key: &str| -> Vec<String> {
        tenant
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let mut nameservers = vec![nameserver.to_string()];
    push_unique(&mut nameservers, strings("nameservers"), MAX_NAMESERVERS);
    let mut searches = vec![
        format!("{tenant_namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_string(),
    ];
    push_unique(&mut searches, strings("searches"), MAX_SEARCHES);
    // the kubelet's ndots:5, which an option of the tenant's of the same name replaces
    let mut options = vec![json!({"name": "ndots", "value": "5"})];
    for o in tenant
        .get("options")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        options.retain(|x| x.get("name") != o.get("name"));
        options.push(o.clone());
    }
    s.insert("dnsPolicy".into(), json!("None"));
    s.insert(
        "dnsConfig".into(),
        json!({"nameservers": nameservers, "searches": searches, "options": options}),
    );
}

fn push_unique(into: &mut Vec<String>, more: Vec<String>, max: usize) {
    for m in more {
        if into.len() >= max {
            break;
        }
        if !into.contains(&m) {
            into.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_first_pods_resolve_through_the_tenants_dns() {
        let mut spec = json!({"containers": [{"name": "c"}]});
        to_host(&mut spec, "web", "10.96.0.42", "cluster.local");
        assert_eq!(spec["dnsPolicy"], "None");
        assert_eq!(
            spec["dnsConfig"],
            json!({"nameservers": ["10.96.0.42"],
                   "searches": ["web.svc.cluster.local", "svc.cluster.local", "cluster.local"],
                   "options": [{"name": "ndots", "value": "5"}]})
        );
        let mut explicit = json!({"dnsPolicy": "ClusterFirst"});
        to_host(&mut explicit, "web", "10.96.0.42", "cluster.local");
        assert_eq!(explicit["dnsPolicy"], "None");
        let mut host_net = json!({"dnsPolicy": "ClusterFirstWithHostNet", "hostNetwork": true});
        to_host(&mut host_net, "web", "10.96.0.42", "cluster.local");
        assert_eq!(host_net["dnsConfig"]["nameservers"][0], "10.96.0.42");
    }

    #[test]
    fn the_tenants_dns_config_is_merged_as_the_kubelet_merges_it() {
        let mut spec = json!({"dnsConfig": {
            "nameservers": ["1.1.1.1", "10.96.0.42", "8.8.8.8", "9.9.9.9"],
            "searches": ["corp.example", "svc.cluster.local"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
        }});
        to_host(&mut spec, "web", "10.96.0.42", "cluster.local");
        assert_eq!(
            spec["dnsConfig"],
            json!({"nameservers": ["10.96.0.42", "1.1.1.1", "8.8.8.8"],
                   "searches": ["web.svc.cluster.local", "svc.cluster.local", "cluster.local",
                                "corp.example"],
                   "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]})
        );
    }

    #[test]
    fn pods_and_vms_host_copies_take_it_only_when_it_is_ready() {
        use crate::kinds::{self, HostContext};
        let nodes = kvtenant_api::NodesSpec::default();
        let ready = TenantDns::Ready {
            nameserver: "10.96.0.42".into(),
            domain: "cluster.local".into(),
        };
        let ctx = |dns| HostContext {
            tenant_namespace: "web",
            name: "x",
            vc_uid: "vc",
            nodes: &nodes,
            api: None,
            dns,
        };
        let pod = kinds::by_kind("Pod").unwrap();
        let vm = kinds::by_kind("VirtualMachine").unwrap();
        assert_eq!(pod.dns_spec(), Some("/spec"));
        assert_eq!(vm.dns_spec(), Some("/spec/template/spec"));
        assert_eq!(kinds::by_kind("Service").unwrap().dns_spec(), None);
        let mut p = json!({"spec": {"containers": [{"name": "c"}]}});
        pod.to_host_data(&mut p, &ctx(&ready));
        assert_eq!(p["spec"]["dnsConfig"]["nameservers"][0], "10.96.0.42");
        let mut v = json!({"spec": {"template": {"spec": {"domain": {}}}}});
        vm.to_host_data(&mut v, &ctx(&ready));
        assert_eq!(v["spec"]["template"]["spec"]["dnsPolicy"], "None");
        for dns in [&TenantDns::Off, &TenantDns::Pending] {
            let mut p = json!({"spec": {"containers": [{"name": "c"}]}});
            pod.to_host_data(&mut p, &ctx(dns));
            assert!(p["spec"].get("dnsPolicy").is_none(), "{dns:?}");
        }
    }

    #[test]
    fn other_policies_are_left_as_the_tenant_wrote_them() {
        for spec in [
            json!({"dnsPolicy": "Default"}),
            json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"]}}),
            json!({"hostNetwork": true}),
            json!({"dnsPolicy": "ClusterFirst", "hostNetwork": true}),
        ] {
            let mut out = spec.clone();
            to_host(&mut out, "web", "10.96.0.42", "cluster.local");
            assert_eq!(out, spec);
            assert!(!uses_cluster_dns(&spec));
        }
        assert!(uses_cluster_dns(&json!({})));
    }
}
