//! Isolation of a tenant's host namespaces (`spec.isolation`): Pod Security labels, a
//! ResourceQuota, a LimitRange and a NetworkPolicy in every host namespace the syncer maps.
//!
//! The builders are pure; the syncer applies them to each host namespace it creates or resyncs,
//! with its own field manager ([`FIELD_MANAGER`]), so its server-side applies to the Namespace
//! touch only the Pod Security labels and never drop labels the syncer set.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kvtenant_api::VirtualCluster;
use kvtenant_api::labels::{self, VirtualClusterRef};
use serde_json::json;

/// Name of the ResourceQuota, LimitRange and NetworkPolicy in each host namespace.
pub const OBJECT_NAME: &str = "kvtenant-isolation";
/// Field manager of the isolation objects and the Pod Security labels.
pub const FIELD_MANAGER: &str = "kvtenant-isolation";
/// Label every namespace carries with its own name (set by the apiserver).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Pod Security labels for the tenant's host namespaces: the level of
/// `spec.isolation.podSecurity`, enforced, audited and warned.
pub fn pod_security_labels(vc: &VirtualCluster) -> BTreeMap<String, String> {
    let level = vc.spec.isolation.pod_security.as_str().to_owned();
    BTreeMap::from([
        (labels::POD_SECURITY_ENFORCE.to_owned(), level.clone()),
        ("pod-security.kubernetes.io/audit".to_owned(), level.clone()),
        ("pod-security.kubernetes.io/warn".to_owned(), level),
    ])
}

/// The host Namespace for tenant namespace `tenant_ns`: name from the mapping, labels and
/// annotations naming the tenant, and the Pod Security labels.
pub fn host_namespace(
    vcref: &VirtualClusterRef,
    vc: &VirtualCluster,
    tenant_ns: &str,
    tenant_ns_uid: Option<&str>,
) -> Namespace {
    let mut meta = vcref.host_namespace_meta(tenant_ns, tenant_ns_uid);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(pod_security_labels(vc));
    Namespace {
        metadata: meta,
        ..Namespace::default()
    }
}

fn meta(vcref: &VirtualClusterRef, host_ns: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(OBJECT_NAME.to_owned()),
        namespace: Some(host_ns.to_owned()),
        labels: Some(vcref.labels()),
        ..ObjectMeta::default()
    }
}

/// The ResourceQuota of `spec.isolation.resourceQuota`, if set.
pub fn resource_quota(
    vcref: &VirtualClusterRef,
    vc: &VirtualCluster,
    host_ns: &str,
) -> Option<ResourceQuota> {
    let spec = vc.spec.isolation.resource_quota.clone()?;
    Some(ResourceQuota {
        metadata: meta(vcref, host_ns),
        spec: Some(spec),
        ..ResourceQuota::default()
    })
}

/// The LimitRange of `spec.isolation.limitRange`, if set.
pub fn limit_range(
    vcref: &VirtualClusterRef,
    vc: &VirtualCluster,
    host_ns: &str,
) -> Option<LimitRange> {
    let spec = vc.spec.isolation.limit_range.clone()?;
    Some(LimitRange {
        metadata: meta(vcref, host_ns),
        spec: Some(spec),
    })
}

/// The NetworkPolicy (unless `spec.isolation.networkPolicy` is false): every pod of the host
/// namespace accepts traffic only from the tenant's own host namespaces (selected by the
/// VirtualCluster's uid label) and from the VirtualCluster's namespace (its control plane), and
/// sends traffic only to the tenant's own host namespaces, its Managed control plane's apiserver
/// (pods use the tenant's API with the tenant's token), the cluster DNS and (internetEgress)
/// addresses outside egressExcept.
pub fn network_policy(
    vcref: &VirtualClusterRef,
    vc: &VirtualCluster,
    host_ns: &str,
) -> Result<Option<NetworkPolicy>, serde_json::Error> {
    if !vc.spec.isolation.network_policy {
        return Ok(None);
    }
    let tenant = json!({"namespaceSelector": {"matchLabels": {
        labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
        labels::VIRTUALCLUSTER_UID: vcref.uid,
    }}});
    let mut egress = egress_rules(vcref, vc, &tenant);
    let mut from = vec![tenant, by_name(&vcref.namespace)];
    let (sources, targets) = mapped_namespaces(vcref, vc, host_ns);
    if !sources.is_empty() {
        egress.push(json!({"to": sources.iter().map(|ns| by_name(ns)).collect::<Vec<_>>()}));
    }
    from.extend(targets.iter().map(|ns| by_name(ns)));
    serde_json::from_value(json!({
        "metadata": meta(vcref, host_ns),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": from}],
            "egress": egress,
        }
    }))
    .map(Some)
}

fn by_name(ns: &str) -> serde_json::Value {
    json!({"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}}})
}

/// The host namespaces `spec.mapServices` connects to host namespace `host_ns`: those of
/// fromHost sources (the tenant's pods reach the mapped host Services) and, when a toHost
/// source lives in `host_ns`, those of its targets (host workloads reach the tenant's Service).
/// The platform admin chose them; malformed references are skipped.
fn mapped_namespaces(
    vcref: &VirtualClusterRef,
    vc: &VirtualCluster,
    host_ns: &str,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let ns_of = |r: &str| kvtenant_api::parse_service_ref(r).map(|(ns, _)| ns.to_string());
    let m = &vc.spec.map_services;
    let sources = m.from_host.iter().filter_map(|x| ns_of(&x.from)).collect();
    let targets = m
        .to_host
        .iter()
        .filter(|x| ns_of(&x.from).is_some_and(|t| vcref.host_namespace(&t) == host_ns))
        .filter_map(|x| ns_of(&x.to))
        .collect();
    (sources, targets)
}

/// The egress rules: the same virtual cluster, its control plane's apiserver, the host's DNS,
/// and (internetEgress) every address outside egressExcept, per address family.
fn egress_rules(
    vcref: &VirtualClusterRef,
    vc: &VirtualCluster,
    tenant: &serde_json::Value,
) -> Vec<serde_json::Value> {
    let mut egress = vec![
        json!({"to": [tenant]}),
        json!({
            "to": [{
                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: vcref.namespace}},
                "podSelector": {"matchLabels": {
                    "app.kubernetes.io/name": labels::CONTROL_PLANE_APP,
                    "app.kubernetes.io/instance": vcref.name,
                }},
            }],
            "ports": [{"protocol": "TCP", "port": labels::CONTROL_PLANE_APISERVER_PORT}],
        }),
        json!({
            "to": [{
                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }),
    ];
    if vc.spec.isolation.internet_egress {
        let except = vc.spec.isolation.egress_except();
        let blocks: Vec<serde_json::Value> = [("0.0.0.0/0", false), ("::/0", true)]
            .into_iter()
            .map(|(all, v6)| {
                let ex: Vec<&String> = except.iter().filter(|c| c.contains(':') == v6).collect();
                if ex.is_empty() {
                    json!({"ipBlock": {"cidr": all}})
                } else {
                    json!({"ipBlock": {"cidr": all, "except": ex}})
                }
            })
            .collect();
        egress.push(json!({"to": blocks}));
    }
    egress
}

#[cfg(test)]
mod flows;

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use kvtenant_api::{PodSecurityLevel, VirtualClusterSpec};

    fn vc() -> (VirtualCluster, VirtualClusterRef) {
        let mut vc = VirtualCluster::new("alpha", VirtualClusterSpec::default());
        vc.metadata.namespace = Some("tenants".into());
        vc.metadata.uid = Some("uid-1".into());
        let r = VirtualClusterRef::from_virtualcluster(&vc).unwrap();
        (vc, r)
    }

    #[test]
    fn network_policy_admits_only_the_tenant_and_dns() {
        let (vc, r) = vc();
        let np = network_policy(&r, &vc, "h1").unwrap().unwrap();
        let v = serde_json::to_value(&np).unwrap();
        assert_eq!(v["spec"]["podSelector"], json!({}));
        assert_eq!(v["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        let from = &v["spec"]["ingress"][0]["from"];
        assert_eq!(
            from[0]["namespaceSelector"]["matchLabels"][labels::VIRTUALCLUSTER_UID],
            "uid-1"
        );
        assert_eq!(
            from[1]["namespaceSelector"]["matchLabels"][NAMESPACE_NAME_LABEL],
            "tenants"
        );
        assert_eq!(from.as_array().unwrap().len(), 2);
        let api = &v["spec"]["egress"][1];
        assert_eq!(api["ports"][0]["port"], 6443);
        assert_eq!(
            api["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
            r.name
        );
        let dns = &v["spec"]["egress"][2];
        assert_eq!(dns["ports"][0]["port"], 53);
        assert_eq!(
            dns["to"][0]["podSelector"]["matchLabels"]["k8s-app"],
            "kube-dns"
        );

        let mut off = vc.clone();
        off.spec.isolation.network_policy = false;
        assert!(network_policy(&r, &off, "h1").unwrap().is_none());
    }

    #[test]
    fn quota_and_limits_only_when_set_and_pod_security_from_spec() {
        let (mut vc, r) = vc();
        assert!(resource_quota(&r, &vc, "h1").is_none());
        assert!(limit_range(&r, &vc, "h1").is_none());
        vc.spec.isolation.resource_quota =
            Some(serde_json::from_value(json!({"hard": {"pods": "10"}})).unwrap());
        let q = resource_quota(&r, &vc, "h1").unwrap();
        assert_eq!(q.metadata.namespace.as_deref(), Some("h1"));
        assert_eq!(
            q.labels()
                .get(labels::VIRTUALCLUSTER_UID)
                .map(String::as_str),
            Some("uid-1")
        );
        vc.spec.isolation.pod_security = PodSecurityLevel::Restricted;
        let ns = host_namespace(&r, &vc, "default", Some("t-uid"));
        let l = ns.labels();
        assert_eq!(
            l.get(labels::POD_SECURITY_ENFORCE).map(String::as_str),
            Some("restricted")
        );
        assert_eq!(
            l.get(labels::VIRTUALCLUSTER_UID).map(String::as_str),
            Some("uid-1")
        );
        assert_eq!(ns.metadata.name, Some(r.host_namespace("default")));
    }
}
