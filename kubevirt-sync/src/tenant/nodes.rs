//! Tenant Nodes: each host node running one of the tenant's VMIs is shown as a tenant Node with
//! its name and a few visible labels; no addresses, no taints, nothing else of the host's.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kvtenant_api::labels::{HOST_NODE, MANAGED_BY, MANAGED_BY_VALUE};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::kinds;
use serde_json::json;

use super::Tenant;
use crate::error::{Cluster, Error};

/// Host node labels a tenant may see (topology and KubeVirt scheduling facts, no host secrets).
const VISIBLE_NODE_LABELS: &[&str] = &[
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "kubevirt.io/schedulable",
];

/// The labels of the tenant Node shown for a host node with these labels.
pub fn tenant_node_labels(
    name: &str,
    host_labels: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = host_labels
        .iter()
        .filter(|(k, _)| VISIBLE_NODE_LABELS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert("kubernetes.io/hostname".into(), name.to_string());
    labels.insert(HOST_NODE.into(), "true".into());
    labels.insert(MANAGED_BY.into(), MANAGED_BY_VALUE.into());
    labels
}

impl Tenant {
    /// The host nodes running this tenant's host objects (from the host cache).
    fn nodes_in_use(&self) -> BTreeSet<String> {
        let owned: HashMap<String, String> =
            self.host.namespaces_of(&self.vc.uid).into_iter().collect();
        let mut out = BTreeSet::new();
        for kind in kinds::all() {
            for o in self.host.objects_in_any(kind.id, &owned) {
                if let Some(n) = kind.host_node(&o.data) {
                    out.insert(n.to_string());
                }
            }
        }
        out
    }

    /// Shows a host node as a tenant Node (once; kept until no longer in use).
    pub(super) async fn ensure_node(&self, name: &str) -> Result<(), Error> {
        let mut shown = self.nodes.lock().await;
        if shown.contains(name) {
            return Ok(());
        }
        let host_nodes: Api<Node> = Api::all(self.host.client.clone());
        self.api_call(Cluster::Host, "get");
        let host_labels = host_nodes
            .get_opt(name)
            .await
            .map_err(Error::api("get", Cluster::Host, format!("Node {name}")))?
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default();
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": tenant_node_labels(name, &host_labels)},
            "spec": {},
        });
        let api: Api<Node> = Api::all(self.client.clone());
        self.api_call(Cluster::Tenant, "apply");
        api.patch(
            name,
            &PatchParams::apply(kvtenant_api::MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await
        .map_err(Error::api("apply", Cluster::Tenant, format!("Node {name}")))?;
        shown.insert(name.to_string());
        Ok(())
    }

    /// Removes tenant Nodes kvtenant made for host nodes no longer running the tenant's VMIs,
    /// and shows those that do.
    pub(super) async fn prune_nodes(&self) -> Result<(), Error> {
        let in_use = self.nodes_in_use();
        let api: Api<Node> = Api::all(self.client.clone());
        self.api_call(Cluster::Tenant, "list");
        let listed = api
            .list(&ListParams::default().labels(&format!("{HOST_NODE}=true")))
            .await
            .map_err(Error::api("list", Cluster::Tenant, "Nodes"))?;
        for n in listed.items {
            let name = n.name_any();
            if in_use.contains(&name) {
                continue;
            }
            self.api_call(Cluster::Tenant, "delete");
            api.delete(&name, &DeleteParams::default())
                .await
                .gone_ok()
                .map_err(Error::api(
                    "delete",
                    Cluster::Tenant,
                    format!("Node {name}"),
                ))?;
            self.nodes.lock().await.remove(&name);
        }
        for name in in_use {
            self.ensure_node(&name).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_nodes_show_only_visible_labels() {
        let host = BTreeMap::from([
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
            (
                "node-role.kubernetes.io/control-plane".to_string(),
                String::new(),
            ),
            ("secret.example/rack".to_string(), "r7".to_string()),
        ]);
        let l = tenant_node_labels("n1", &host);
        assert_eq!(
            l.get("kubernetes.io/arch").map(String::as_str),
            Some("amd64")
        );
        assert_eq!(
            l.get("kubernetes.io/hostname").map(String::as_str),
            Some("n1")
        );
        assert!(!l.contains_key("secret.example/rack"));
        assert!(!l.contains_key("node-role.kubernetes.io/control-plane"));
        assert_eq!(l.get(HOST_NODE).map(String::as_str), Some("true"));
    }
}
