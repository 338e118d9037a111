//! The host namespaces' NetworkPolicy as a table of flows a tenant's pod or VM may and may not
//! make: a small evaluator of the policy kvtenant renders (namespace and pod selectors by
//! labels, ipBlocks with exceptions, ports), checked row by row. No CNI runs here, so this
//! checks what the policy says, the part kvtenant controls.

use std::collections::BTreeMap;
use std::net::IpAddr;

use kvtenant_api::labels::{self, VirtualClusterRef};
use kvtenant_api::{VirtualCluster, VirtualClusterSpec};
use serde_json::{Value, json};

use super::{NAMESPACE_NAME_LABEL, network_policy};

/// One end of a flow: a pod in a namespace with labels, or an address outside the cluster.
enum End {
    Pod {
        ns: BTreeMap<String, String>,
        pod: BTreeMap<String, String>,
    },
    Outside(IpAddr),
}

fn labels_match(selector: Option<&Value>, labels: &BTreeMap<String, String>) -> bool {
    selector
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    let bits = |a: IpAddr| -> (u128, u32) {
        match a {
            IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
            IpAddr::V6(v) => (u128::from(v), 128),
        }
    };
    let ((a, width), (n, nw)) = (bits(ip), bits(net));
    if width != nw || len > width {
        return false;
    }
    let shift = width - len;
    len == 0 || (a >> shift) == (n >> shift)
}

fn peer_matches(peer: &Value, end: &End, own_ns: &BTreeMap<String, String>) -> bool {
    match (end, peer.get("ipBlock")) {
        (End::Outside(ip), Some(b)) => {
            let cidr = b.get("cidr").and_then(Value::as_str).unwrap_or_default();
            let except = b.get("except").and_then(Value::as_array);
            in_cidr(*ip, cidr)
                && !except
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .any(|c| in_cidr(*ip, c))
        }
        (End::Pod { ns, pod }, None) => {
            let ns_ok = match peer.get("namespaceSelector") {
                Some(sel) => labels_match(Some(sel), ns),
                None => ns == own_ns,
            };
            ns_ok && labels_match(peer.get("podSelector"), pod)
        }
        _ => false,
    }
}

fn allowed(
    rules: &Value,
    field: &str,
    end: &End,
    port: (&str, i64),
    own: &BTreeMap<String, String>,
) -> bool {
    rules.as_array().into_iter().flatten().any(|rule| {
        let peers_ok = match rule.get(field).and_then(Value::as_array) {
            None => true,
            Some(p) => p.iter().any(|peer| peer_matches(peer, end, own)),
        };
        let ports_ok = match rule.get("ports").and_then(Value::as_array) {
            None => true,
            Some(ps) => ps.iter().any(|p| {
                p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == port.0
                    && p.get("port").and_then(Value::as_i64) == Some(port.1)
            }),
        };
        peers_ok && ports_ok
    })
}

fn ns(vc_uid: Option<&str>, name: &str) -> BTreeMap<String, String> {
    let mut l = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), name.to_string())]);
    if let Some(uid) = vc_uid {
        l.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
        l.insert(labels::VIRTUALCLUSTER_UID.into(), uid.into());
    }
    l
}

fn pod(ns_labels: BTreeMap<String, String>, pod: &[(&str, &str)]) -> End {
    End::Pod {
        ns: ns_labels,
        pod: pod
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

fn outside(ip: &str) -> End {
    End::Outside(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0])))
}

fn policy(spec: Value) -> (Value, BTreeMap<String, String>) {
    let spec: VirtualClusterSpec = serde_json::from_value(spec).unwrap_or_default();
    let mut vc = VirtualCluster::new("alpha", spec);
    vc.metadata.namespace = Some("tenants".into());
    vc.metadata.uid = Some("uid-a".into());
    let r = VirtualClusterRef::from_virtualcluster(&vc).unwrap_or(VirtualClusterRef {
        namespace: String::new(),
        name: String::new(),
        uid: String::new(),
    });
    // the host namespace of the tenant's namespace "web"
    let host_ns = r.host_namespace("web");
    let np = network_policy(&r, &vc, &host_ns).ok().flatten();
    let v = serde_json::to_value(np).unwrap_or_default();
    (v["spec"].clone(), ns(Some("uid-a"), &host_ns))
}

#[test]
fn mapped_services_open_their_namespaces_only() {
    let (spec, own) = policy(json!({"mapServices": {
        "fromHost": [{"from": "databases/pg", "to": "web/pg"}],
        "toHost": [{"from": "web/api", "to": "monitoring/tenant-a-api"},
                   {"from": "other/x", "to": "ops/x"}],
    }}));
    let egress = |end: End| allowed(&spec["egress"], "to", &end, ("TCP", 5432), &own);
    let ingress = |end: End| allowed(&spec["ingress"], "from", &end, ("TCP", 8080), &own);
    let rows: Vec<(&str, bool, bool)> = vec![
        (
            "egress to a fromHost source namespace",
            egress(pod(ns(None, "databases"), &[])),
            true,
        ),
        (
            "egress to another host namespace",
            egress(pod(ns(None, "payments"), &[])),
            false,
        ),
        (
            "ingress from a toHost target namespace",
            ingress(pod(ns(None, "monitoring"), &[])),
            true,
        ),
        (
            "ingress from another host namespace",
            ingress(pod(ns(None, "payments"), &[])),
            false,
        ),
        (
            "ingress from a toHost target of another tenant namespace",
            ingress(pod(ns(None, "ops"), &[])),
            false,
        ),
    ];
    let wrong: Vec<_> = rows.iter().filter(|(_, got, want)| got != want).collect();
    assert!(wrong.is_empty(), "flows not as expected: {wrong:?}");
}

#[test]
fn the_default_policy_as_a_table_of_flows() {
    let (spec, own) = policy(json!({}));
    let egress = |end: End, port: (&str, i64)| allowed(&spec["egress"], "to", &end, port, &own);
    let ingress = |end: End| allowed(&spec["ingress"], "from", &end, ("TCP", 80), &own);
    let dns = || pod(ns(None, "kube-system"), &[("k8s-app", "kube-dns")]);
    let rows: Vec<(&str, bool, bool)> = vec![
        (
            "egress to the same namespace",
            egress(pod(own.clone(), &[]), ("TCP", 80)),
            true,
        ),
        (
            "egress to another namespace of the same virtual cluster",
            egress(pod(ns(Some("uid-a"), "h-a-db"), &[]), ("TCP", 5432)),
            true,
        ),
        (
            "egress to another tenant",
            egress(pod(ns(Some("uid-b"), "h-b-web"), &[]), ("TCP", 80)),
            false,
        ),
        (
            "egress to a host namespace",
            egress(pod(ns(None, "monitoring"), &[]), ("TCP", 9090)),
            false,
        ),
        (
            "its own control plane's apiserver (pods use the tenant's API)",
            egress(
                pod(
                    ns(None, "tenants"),
                    &[
                        ("app.kubernetes.io/name", "kvtenant-control-plane"),
                        ("app.kubernetes.io/instance", "alpha"),
                    ],
                ),
                ("TCP", 6443),
            ),
            true,
        ),
        (
            "another VirtualCluster's control plane in the same namespace",
            egress(
                pod(
                    ns(None, "tenants"),
                    &[
                        ("app.kubernetes.io/name", "kvtenant-control-plane"),
                        ("app.kubernetes.io/instance", "beta"),
                    ],
                ),
                ("TCP", 6443),
            ),
            false,
        ),
        (
            "its control plane's etcd",
            egress(
                pod(
                    ns(None, "tenants"),
                    &[
                        ("app.kubernetes.io/name", "kvtenant-control-plane"),
                        ("app.kubernetes.io/instance", "alpha"),
                    ],
                ),
                ("TCP", 2379),
            ),
            false,
        ),
        ("DNS over UDP", egress(dns(), ("UDP", 53)), true),
        ("DNS over TCP", egress(dns(), ("TCP", 53)), true),
        (
            "kube-dns on another port",
            egress(dns(), ("TCP", 8080)),
            false,
        ),
        (
            "the Internet over IPv4",
            egress(outside("1.1.1.1"), ("TCP", 443)),
            true,
        ),
        (
            "the Internet over IPv6",
            egress(outside("2606:4700::1111"), ("TCP", 443)),
            true,
        ),
        (
            "cloud metadata",
            egress(outside("169.254.169.254"), ("TCP", 80)),
            false,
        ),
        (
            "a private address (the host's networks)",
            egress(outside("10.96.0.1"), ("TCP", 443)),
            false,
        ),
        (
            "a private address, 192.168/16",
            egress(outside("192.168.1.10"), ("TCP", 22)),
            false,
        ),
        (
            "IPv6 link-local",
            egress(outside("fe80::1"), ("TCP", 22)),
            false,
        ),
        (
            "ingress from the same virtual cluster",
            ingress(pod(ns(Some("uid-a"), "h-a-db"), &[])),
            true,
        ),
        (
            "ingress from the virtual cluster's control plane namespace",
            ingress(pod(ns(None, "tenants"), &[])),
            true,
        ),
        (
            "ingress from another tenant",
            ingress(pod(ns(Some("uid-b"), "h-b-web"), &[])),
            false,
        ),
        (
            "ingress from a host namespace",
            ingress(pod(ns(None, "default"), &[])),
            false,
        ),
        (
            "ingress from the Internet (needs the tenant's own policy)",
            ingress(outside("1.1.1.1")),
            false,
        ),
    ];
    let wrong: Vec<String> = rows
        .iter()
        .filter(|(_, got, want)| got != want)
        .map(|(what, got, want)| format!("{what}: allowed={got}, want {want}"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn internet_egress_can_be_closed_or_its_exceptions_chosen() {
    let (spec, own) = policy(json!({"isolation": {"internetEgress": false}}));
    assert!(!allowed(
        &spec["egress"],
        "to",
        &outside("1.1.1.1"),
        ("TCP", 443),
        &own
    ));
    let (spec, own) = policy(json!({"isolation": {"egressExcept": ["203.0.113.0/24"]}}));
    assert!(!allowed(
        &spec["egress"],
        "to",
        &outside("203.0.113.7"),
        ("TCP", 443),
        &own
    ));
    assert!(allowed(
        &spec["egress"],
        "to",
        &outside("10.1.2.3"),
        ("TCP", 443),
        &own
    ));
    assert!(in_cidr(
        "10.1.2.3".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])),
        "0.0.0.0/0"
    ));
}
