//! The host cluster's own address ranges ([`HostNetworks`]): its ServiceCIDRs, its nodes' pod
//! ranges and addresses, read at start and every [`REFRESH`] (nodes come and go). The plan
//! refuses tenant EndpointSlices pointing there.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use kvtenant_rules::host_networks::HostNetworks;

/// How often the ranges are read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// The ranges of these nodes and ServiceCIDRs (pure).
pub fn from_objects(nodes: &[Node], service_cidrs: &[ServiceCIDR]) -> HostNetworks {
    let mut n = HostNetworks::default();
    for s in service_cidrs {
        for cidr in s.spec.iter().flat_map(|s| s.cidrs.iter().flatten()) {
            n.add(cidr, "the host's Service range");
        }
    }
    for node in nodes {
        let name = node.name_any();
        for cidr in node.spec.iter().flat_map(|s| s.pod_cidrs.iter().flatten()) {
            n.add(cidr, format!("the pod range of host node {name}"));
        }
        let addresses = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten());
        for a in addresses.filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP") {
            n.add(&a.address, format!("host node {name}"));
        }
    }
    n
}

/// The ranges as last read, shared with the plans.
#[derive(Default)]
pub struct Shared(RwLock<Arc<HostNetworks>>);

impl Shared {
    pub fn get(&self) -> Arc<HostNetworks> {
        self.0.read().map(|n| n.clone()).unwrap_or_default()
    }

    fn set(&self, n: HostNetworks) {
        if let Ok(mut g) = self.0.write() {
            *g = Arc::new(n);
        }
    }
}

/// Reads the ranges now and every [`REFRESH`]. What cannot be read keeps the last ranges
/// (ServiceCIDRs may be forbidden or absent on older hosts: the nodes' ranges still count).
pub async fn refresh(client: Client, shared: Arc<Shared>) {
    let mut reported = false;
    loop {
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await;
        let cidrs = Api::<ServiceCIDR>::all(client.clone())
            .list(&ListParams::default())
            .await;
        match (&nodes, &cidrs) {
            (Ok(nodes), Ok(cidrs)) => shared.set(from_objects(&nodes.items, &cidrs.items)),
            (Ok(nodes), Err(e)) => {
                if !reported {
                    tracing::warn!(error = %e, "cannot list the host's ServiceCIDRs: EndpointSlices are checked against the nodes' ranges only");
                    reported = true;
                }
                shared.set(from_objects(&nodes.items, &[]));
            }
            (Err(e), _) => {
                tracing::warn!(error = %e, "listing host nodes for their address ranges")
            }
        }
        tokio::time::sleep(REFRESH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_cidrs_pod_ranges_and_node_addresses_count() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "w1"},
            "spec": {"podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "192.0.2.7"},
                {"type": "Hostname", "address": "w1"},
            ]}
        }))
        .unwrap();
        let cidr: ServiceCIDR = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": ["10.96.0.0/12"]}
        }))
        .unwrap();
        let n = from_objects(&[node], &[cidr]);
        assert_eq!(n.len(), 3);
        assert!(n.containing("10.96.5.5").unwrap().contains("Service range"));
        assert!(n.containing("10.244.1.3").unwrap().contains("host node w1"));
        assert_eq!(n.containing("192.0.2.7").as_deref(), Some("host node w1"));
        assert_eq!(n.containing("198.51.100.1"), None);
    }
}
