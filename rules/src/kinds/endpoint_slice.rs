//! EndpointSlices of selector-less Services: a tenant Service without a selector (an external
//! database, say) gets its addresses from the EndpointSlices the tenant writes, and the host copy
//! of the Service only has them if those slices are synced too.
//!
//! - Only slices of a Service the tenant has, that is synced down and has no selector (the host
//!   computes the slices of a Service with a selector from the host copies of the tenant's pods),
//!   and never the slices the tenant's own endpointslice controller manages.
//! - The Service is named by the slice's `kubernetes.io/service-name` label; names are unchanged
//!   on the host, so the label names the host copy of the Service, in the same host namespace.
//! - Legacy `Endpoints` are not synced: the tenant's EndpointSlice mirroring controller turns the
//!   tenant's Endpoints into slices, which are synced like the tenant's own. On the host the copy
//!   is managed by kvtenant (`endpointslice.kubernetes.io/managed-by`), so neither the host's
//!   endpointslice controller nor its mirroring controller takes it over (the mirroring
//!   controller would delete a slice labelled as its own that has no host Endpoints).
//! - Safety (the syncer is the boundary, a tenant can delete any webhook): addresses that would
//!   point host traffic at a node itself or at the cloud metadata service (loopback, link-local,
//!   unspecified, link-local multicast) are refused, as are addresses inside the host cluster's
//!   own ranges when the syncer knows them ([`Policy::host_networks`]: ServiceCIDRs, the nodes'
//!   pod ranges and addresses), FQDN slices and `targetRef`s to pods
//!   (a tenant's slice must not name host pods). Other `targetRef`s and `nodeName`s would name
//!   host objects by the tenant's names: they are dropped from the host copy. `hostname` stays:
//!   it only names a DNS record under the Service's own name in the tenant's host namespace.

use std::collections::BTreeMap;
use std::net::IpAddr;

use kvtenant_api::labels;
use serde_json::Value;

use super::{ApiKind, HostContext, SyncedKind, service};
use crate::host_networks::HostNetworks;
use crate::vm::refs::ObjRef;
use crate::vm::size::GuestSize;
use crate::{Policy, Violation};

pub const KIND: &str = "EndpointSlice";

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming who manages a slice.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// [`MANAGED_BY`] of the slices Kubernetes' endpointslice controller computes from a Service's
/// selector.
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// [`MANAGED_BY`] of the host copies: kvtenant's, so no host controller takes them over.
pub const HOST_MANAGED_BY: &str = "syncer.tenancy.kvtenant.io";

pub struct EndpointSlice;

impl SyncedKind for EndpointSlice {
    fn api(&self) -> ApiKind {
        ApiKind {
            group: "discovery.k8s.io",
            version: "v1",
            kind: KIND,
            plural: "endpointslices",
        }
    }
    fn watch_host_copies_only(&self) -> bool {
        true
    }
    fn status_subresource(&self) -> bool {
        false
    }
    /// Not the slices the host's endpointslice controller computes for the host copy of a
    /// Service with a selector: they carry the Service's labels, kvtenant's among them.
    fn host_copies_selector(&self) -> String {
        format!(
            "{}={},{MANAGED_BY}={HOST_MANAGED_BY}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE
        )
    }
    fn belongs_to(&self, obj: &Value) -> Option<ObjRef> {
        label(obj, SERVICE_NAME)
            .filter(|n| !n.is_empty())
            .map(|n| ObjRef {
                kind: service::KIND,
                name: n.to_string(),
            })
    }
    fn belongs_to_kind(&self) -> Option<&'static str> {
        Some(service::KIND)
    }
    /// Not the slices kvtenant copies from a headless host Service shown in the tenant
    /// (`spec.mapServices.fromHost`), nor any of a Service shown that way: they came from the
    /// host.
    fn wanted_with(&self, obj: &Value, owner: Option<&Value>) -> bool {
        label(obj, MANAGED_BY) != Some(CONTROLLER)
            && !crate::map_services::is_from_host(obj)
            && owner.is_some_and(|o| is_selector_less(o) && !crate::map_services::is_from_host(o))
    }
    fn violations(&self, obj: &Value, policy: &Policy, _: Option<GuestSize>) -> Vec<Violation> {
        violations(obj, policy.host_networks)
    }
    fn to_host_labels(&self, labels: &mut BTreeMap<String, String>) {
        labels.insert(MANAGED_BY.into(), HOST_MANAGED_BY.into());
    }
    fn to_host_data(&self, data: &mut Value, _: &HostContext) {
        for e in data
            .get_mut("endpoints")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(Value::as_object_mut)
        {
            e.remove("targetRef");
            e.remove("nodeName");
        }
    }
}

fn label<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.get(key))
        .and_then(Value::as_str)
}

/// Whether a Service has no selector: its endpoints are whatever slices are written for it.
pub fn is_selector_less(svc: &Value) -> bool {
    !crate::is_set(svc.pointer("/spec/selector"))
}

/// Why an address may not be the target of host traffic; `None`: it may.
pub fn forbidden_address(address: &str) -> Option<&'static str> {
    let Ok(ip) = address.parse::<IpAddr>() else {
        return Some("not an IP address");
    };
    let ip = crate::host_networks::unmapped(ip);
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address (this host)"),
        _ if ip.is_loopback() => Some("a loopback address (the node itself)"),
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("a link-local address (169.254.0.0/16, where the cloud metadata service is)")
        }
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address (fe80::/10)"),
        IpAddr::V4(v4) if v4.octets()[..3] == [224, 0, 0] => {
            Some("a link-local multicast address (224.0.0.0/24)")
        }
        IpAddr::V6(v6) if v6.is_multicast() && v6.segments()[0] & 0x000f == 2 => {
            Some("a link-local multicast address (ff02::/16)")
        }
        _ => None,
    }
}

fn violations(obj: &Value, host: Option<&HostNetworks>) -> Vec<Violation> {
    let mut out = Vec::new();
    if obj.get("addressType").and_then(Value::as_str) == Some("FQDN") {
        out.push(Violation::new(
            "addressType",
            "FQDN EndpointSlices are not synced to the host; use a Service of type \
             ExternalName, or IPv4/IPv6 addresses",
        ));
        return out;
    }
    let endpoints = obj.get("endpoints").and_then(Value::as_array);
    for (i, e) in endpoints.into_iter().flatten().enumerate() {
        let addresses = e.get("addresses").and_then(Value::as_array);
        for (j, a) in addresses.into_iter().flatten().enumerate() {
            let a = a.as_str().unwrap_or_default();
            if let Some(why) = forbidden_address(a) {
                out.push(Violation::new(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!(
                        "{a:?} is {why}: host traffic may not be sent there; use the address \
                         of the server outside the cluster"
                    ),
                ));
            } else if let Some(range) = host.and_then(|h| h.containing(a)) {
                out.push(Violation::new(
                    format!("endpoints[{i}].addresses[{j}]"),
                    format!(
                        "{a:?} is inside {range}, which belongs to the host cluster: a \
                         selector-less Service may only point at servers outside it; to reach \
                         your own pods give the Service a selector"
                    ),
                ));
            }
        }
        if e.pointer("/targetRef/kind").and_then(Value::as_str) == Some("Pod") {
            out.push(Violation::new(
                format!("endpoints[{i}].targetRef"),
                "a targetRef to a Pod is not allowed: on the host it would name a host pod; \
                 give a selector to the Service instead, or leave targetRef out",
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::by_kind;
    use serde_json::json;

    fn slice(labels: Value, endpoints: Value) -> Value {
        json!({"metadata": {"labels": labels}, "addressType": "IPv4",
            "endpoints": endpoints, "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]})
    }

    #[test]
    fn only_slices_written_for_selector_less_services_sync() {
        let s = slice(json!({SERVICE_NAME: "db"}), json!([]));
        assert_eq!(
            EndpointSlice.belongs_to(&s),
            Some(ObjRef {
                kind: "Service",
                name: "db".into()
            })
        );
        assert!(by_kind(service::KIND).is_some_and(|svc| {
            by_kind(KIND).is_some_and(|k| svc.id < k.id && k.belongs_to_kind() == Some(svc.name()))
        }));
        let external = json!({"spec": {"ports": [{"port": 5432}]}});
        let selecting = json!({"spec": {"selector": {"app": "db"}}});
        let empty_selector = json!({"spec": {"selector": {}}});
        assert!(EndpointSlice.wanted_with(&s, Some(&external)));
        assert!(EndpointSlice.wanted_with(&s, Some(&empty_selector)));
        assert!(!EndpointSlice.wanted_with(&s, Some(&selecting)));
        assert!(!EndpointSlice.wanted_with(&s, None), "no such Service");
        let computed = slice(
            json!({SERVICE_NAME: "db", MANAGED_BY: CONTROLLER}),
            json!([]),
        );
        assert!(!EndpointSlice.wanted_with(&computed, Some(&external)));
        // the tenant's mirroring controller makes slices of the tenant's Endpoints: synced
        let mirrored = slice(
            json!({SERVICE_NAME: "db", MANAGED_BY: "endpointslicemirroring-controller.k8s.io"}),
            json!([]),
        );
        assert!(EndpointSlice.wanted_with(&mirrored, Some(&external)));
        // what kvtenant copied from a headless host Service shown in the tenant stays there
        let from_host = |v: Value| {
            let mut v = v;
            v["metadata"]["labels"][labels::MAPPED_SERVICE] = json!(labels::MAPPED_FROM_HOST);
            v
        };
        let shown = from_host(json!({"metadata": {}, "spec": {"clusterIP": "None"}}));
        assert!(!EndpointSlice.wanted_with(&s, Some(&shown)));
        assert!(!EndpointSlice.wanted_with(&from_host(s.clone()), Some(&external)));
        assert_eq!(EndpointSlice.belongs_to(&slice(json!({}), json!([]))), None);
        assert_eq!(
            EndpointSlice.belongs_to(&slice(json!({SERVICE_NAME: ""}), json!([]))),
            None
        );
    }

    #[test]
    fn the_host_copy_is_kvtenants_and_names_no_host_object() {
        let mut labels = BTreeMap::from([
            (SERVICE_NAME.to_string(), "db".to_string()),
            (
                MANAGED_BY.to_string(),
                "endpointslicemirroring-controller.k8s.io".to_string(),
            ),
        ]);
        EndpointSlice.to_host_labels(&mut labels);
        assert_eq!(labels[MANAGED_BY], HOST_MANAGED_BY);
        assert_eq!(
            EndpointSlice.host_copies_selector(),
            format!("tenancy.kvtenant.io/managed-by=kvtenant,{MANAGED_BY}={HOST_MANAGED_BY}")
        );
        assert_eq!(labels[SERVICE_NAME], "db");
        let nodes = kvtenant_api::NodesSpec::default();
        let ctx = HostContext {
            tenant_namespace: "web",
            name: "db-1",
            vc_uid: "vc",
            nodes: &nodes,
            api: None,
            dns: &crate::pod::dns::TenantDns::Off,
        };
        let mut data = json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.1.2.3"],
            "hostname": "db-0", "nodeName": "node-1", "zone": "a",
            "targetRef": {"kind": "Node", "name": "node-1"}}]});
        EndpointSlice.to_host_data(&mut data, &ctx);
        assert_eq!(
            data,
            json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.1.2.3"],
                "hostname": "db-0", "zone": "a"}]})
        );
    }

    #[test]
    fn addresses_pointing_at_the_node_or_metadata_are_refused() {
        for bad in [
            "127.0.0.1",
            "127.3.4.5",
            "::1",
            "0.0.0.0",
            "::",
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "224.0.0.251",
            "ff02::1",
            "db.example",
        ] {
            assert!(forbidden_address(bad).is_some(), "{bad} allowed");
        }
        for good in [
            "10.1.2.3",
            "192.0.2.10",
            "8.8.8.8",
            "fd00::5",
            "2001:db8::1",
            "fec0::1",
        ] {
            assert_eq!(forbidden_address(good), None, "{good}");
        }
        let vm = kvtenant_api::VmPolicy::default();
        let p = Policy::vm_only(&vm);
        let ok = slice(
            json!({SERVICE_NAME: "db"}),
            json!([{"addresses": ["10.1.2.3"], "targetRef": {"kind": "Node", "name": "n"}}]),
        );
        assert!(EndpointSlice.violations(&ok, &p, None).is_empty());
        let bad = slice(
            json!({SERVICE_NAME: "db"}),
            json!([{"addresses": ["10.1.2.3"]},
                {"addresses": ["169.254.169.254"],
                 "targetRef": {"kind": "Pod", "namespace": "kube-system", "name": "etcd"}}]),
        );
        let paths: Vec<String> = EndpointSlice
            .violations(&bad, &p, None)
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(
            paths,
            ["endpoints[1].addresses[0]", "endpoints[1].targetRef"]
        );
        let mut fqdn = ok.clone();
        fqdn["addressType"] = json!("FQDN");
        assert_eq!(
            EndpointSlice.violations(&fqdn, &p, None)[0].path,
            "addressType"
        );
    }

    #[test]
    fn addresses_inside_the_hosts_own_ranges_are_refused() {
        let mut host = HostNetworks::default();
        host.add("10.96.0.0/12", "the host's Service range");
        host.add("192.0.2.7", "host node worker-1");
        let s = slice(
            json!({SERVICE_NAME: "db"}),
            json!([{"addresses": ["10.96.0.1"]}, {"addresses": ["198.51.100.4", "192.0.2.7"]}]),
        );
        let vm = kvtenant_api::VmPolicy::default();
        let mut policy = Policy::vm_only(&vm);
        assert!(
            EndpointSlice.violations(&s, &policy, None).is_empty(),
            "not known: not refused"
        );
        policy.host_networks = Some(&host);
        let v = EndpointSlice.violations(&s, &policy, None);
        let paths: Vec<_> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            ["endpoints[0].addresses[0]", "endpoints[1].addresses[1]"]
        );
        assert!(
            v[0].message
                .contains("the host's Service range (10.96.0.0/12)"),
            "{}",
            v[0].message
        );
        assert!(
            v[1].message.contains("host node worker-1"),
            "{}",
            v[1].message
        );
    }
}
