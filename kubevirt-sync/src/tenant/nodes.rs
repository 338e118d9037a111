//! Tenant Nodes: each host node running one of the tenant's pods or VMIs (and, when the
//! VirtualCluster confines it to selected host nodes, each of those) is shown as a tenant Node
//! with its name, a few visible labels and the host node's status (conditions, capacity,
//! allocatable, node info), so `kubectl get nodes` shows it Ready with its version; no taints,
//! nothing else of the host's. Its address and kubelet port are kvtenant's kubelet proxy
//! ([`crate::proxy::kubelet`]), never the host node's: the tenant apiserver sends
//! `kubectl logs/exec` there. The status is written when the node is first shown and again at
//! every consistency scan.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kvtenant_api::labels::{HOST_NODE, MANAGED_BY, MANAGED_BY_VALUE};
use kvtenant_kubeutil::ResultExt;
use kvtenant_rules::kinds;
use kvtenant_rules::pod::placement::VISIBLE_NODE_LABELS;
use serde_json::json;

use super::Tenant;
use crate::error::{Cluster, Error};
use crate::host::KubeletEndpoint;

/// The parts of a host node's status a tenant sees, with the kubelet proxy as its kubelet.
pub fn tenant_node_status(
    host: Option<&serde_json::Value>,
    kubelet: Option<&KubeletEndpoint>,
) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for field in ["conditions", "capacity", "allocatable", "nodeInfo"] {
        if let Some(v) = host.and_then(|s| s.get(field)) {
            out.insert(field.into(), v.clone());
        }
    }
    if let Some(k) = kubelet {
        out.insert("addresses".into(), k.node_addresses());
        out.insert(
            "daemonEndpoints".into(),
            json!({"kubeletEndpoint": {"Port": k.port}}),
        );
    }
    serde_json::Value::Object(out)
}

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

/// Whether the tenant has Nodes kvtenant did not make (kubelets of its own).
pub(super) async fn has_own_nodes(client: &kube::Client) -> Result<bool, Error> {
    let api: Api<Node> = Api::all(client.clone());
    let own = api
        .list_metadata(
            &ListParams::default()
                .labels(&format!("!{HOST_NODE}"))
                .limit(1),
        )
        .await
        .map_err(Error::api("list", Cluster::Tenant, "Nodes"))?;
    Ok(!own.items.is_empty())
}

/// The host nodes a tenant is shown as Nodes, and the locks that keep showing and pruning
/// apart: workers showing different nodes go side by side, those showing the same node wait
/// for the first (one write), and none shows a node while the tenant's Nodes are pruned.
#[derive(Default)]
pub(super) struct ShownNodes {
    /// Held to write while pruning, to read while showing.
    gate: tokio::sync::RwLock<()>,
    /// Per host node: whether it is shown; its lock is held across the writes that show it.
    nodes: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<bool>>>>,
}

impl ShownNodes {
    /// The node's slot, made on first use.
    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<bool>> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.entry(name.to_string()).or_default().clone()
    }

    /// Forgets a pruned node (with the gate held to write: no show is under way).
    fn forget(&self, name: &str) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.remove(name);
    }
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
        self.show_node(name, false).await
    }

    /// Shows a host node as a tenant Node with the host node's status; `refresh`: even if shown.
    async fn show_node(&self, name: &str, refresh: bool) -> Result<(), Error> {
        let _showing = self.nodes.gate.read().await;
        let slot = self.nodes.slot(name);
        let mut shown = slot.lock().await;
        if *shown && !refresh {
            return Ok(());
        }
        let host_nodes: Api<Node> = Api::all(self.host.client.clone());
        self.api_call(Cluster::Host, "get");
        let host_node = host_nodes.get_opt(name).await.map_err(Error::api(
            "get",
            Cluster::Host,
            format!("Node {name}"),
        ))?;
        let kubelet = self.host.kubelet.read().ok().and_then(|k| k.clone());
        let status = tenant_node_status(
            host_node
                .as_ref()
                .and_then(|n| serde_json::to_value(n.status.as_ref()?).ok())
                .as_ref(),
            kubelet.as_ref(),
        );
        let host_labels = host_node
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
        let status = json!({"apiVersion": "v1", "kind": "Node", "status": status});
        self.api_call(Cluster::Tenant, "apply_status");
        api.patch_status(
            name,
            &PatchParams::apply(kvtenant_api::MANAGER).force(),
            &Patch::Apply(&status),
        )
        .await
        .map_err(Error::api(
            "apply status of",
            Cluster::Tenant,
            format!("Node {name}"),
        ))?;
        *shown = true;
        Ok(())
    }

    /// Removes tenant Nodes kvtenant made for host nodes no longer running the tenant's pods or
    /// VMIs, and shows those that do with their current status.
    ///
    /// The tenant's Nodes are listed before the host cache is read, and no Node is shown while
    /// they are pruned: a Node shown after the list is not pruned, one shown before it was shown
    /// for an object already in the host cache (a pod mirror shown on it is never left without
    /// its Node, which `kubectl logs/exec/port-forward` need).
    pub(super) async fn prune_nodes(&self) -> Result<(), Error> {
        let in_use = {
            let _pruning = self.nodes.gate.write().await;
            let api: Api<Node> = Api::all(self.client.clone());
            self.api_call(Cluster::Tenant, "list");
            let listed = api
                .list_metadata(&ListParams::default().labels(&format!("{HOST_NODE}=true")))
                .await
                .map_err(Error::api("list", Cluster::Tenant, "Nodes"))?;
            let mut in_use = self.nodes_in_use();
            // confined to selected host nodes: the tenant sees all of them
            let selector = &self.spec.nodes.selector;
            if !selector.is_empty() {
                let labels: Vec<String> =
                    selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let host_nodes: Api<Node> = Api::all(self.host.client.clone());
                self.api_call(Cluster::Host, "list");
                let selected = host_nodes
                    .list_metadata(&ListParams::default().labels(&labels.join(",")))
                    .await
                    .map_err(Error::api("list", Cluster::Host, "Nodes"))?;
                in_use.extend(selected.items.into_iter().map(|n| n.name_any()));
            }
            for name in unused(listed.items.iter().map(|n| n.name_any()), &in_use) {
                self.api_call(Cluster::Tenant, "delete");
                api.delete(&name, &DeleteParams::default())
                    .await
                    .gone_ok()
                    .map_err(Error::api(
                        "delete",
                        Cluster::Tenant,
                        format!("Node {name}"),
                    ))?;
                self.nodes.forget(&name);
            }
            in_use
        };
        for name in in_use {
            self.show_node(&name, true).await?;
        }
        Ok(())
    }
}

/// The listed tenant Nodes no longer in use.
fn unused(listed: impl Iterator<Item = String>, in_use: &BTreeSet<String>) -> Vec<String> {
    listed.filter(|n| !in_use.contains(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn showing_one_node_does_not_wait_for_another_and_pruning_waits_for_both() {
        let shown = ShownNodes::default();
        let gate = shown.gate.read().await;
        let a = shown.slot("a");
        let showing_a = a.lock().await;
        // node b's show goes ahead while node a's is under way
        let b = shown.slot("b");
        assert!(b.try_lock().is_ok());
        // a second show of node a waits for the first, and then finds it shown
        assert!(a.try_lock().is_err());
        assert!(Arc::ptr_eq(&a, &shown.slot("a")));
        // no pruning meanwhile
        assert!(shown.gate.try_write().is_err());
        drop(showing_a);
        drop(gate);
        let pruning = shown
            .gate
            .try_write()
            .expect("pruning once no node is being shown");
        assert!(
            shown.gate.try_read().is_err(),
            "no node is shown while pruning"
        );
        shown.forget("a");
        drop(pruning);
        assert!(
            !*shown.slot("a").lock().await,
            "a pruned node is shown again"
        );
    }

    #[test]
    fn only_nodes_out_of_use_are_pruned() {
        let in_use = BTreeSet::from(["n1".to_string()]);
        let listed = ["n1", "n2"].map(String::from);
        assert_eq!(unused(listed.into_iter(), &in_use), ["n2"]);
    }

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

    #[test]
    fn tenant_nodes_show_the_host_nodes_health_and_the_kubelet_proxy_as_their_kubelet() {
        let host = serde_json::json!({
            "conditions": [{"type": "Ready", "status": "True"}],
            "capacity": {"cpu": "32"}, "allocatable": {"cpu": "31"},
            "nodeInfo": {"kubeletVersion": "v1.34.2"},
            "addresses": [{"type": "InternalIP", "address": "192.168.7.4"}],
            "images": [{"names": ["registry.internal/secret:1"]}],
        });
        let s = tenant_node_status(Some(&host), None);
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(s["nodeInfo"]["kubeletVersion"], "v1.34.2");
        assert!(s.get("addresses").is_none());
        assert!(s.get("images").is_none());
        let proxy = KubeletEndpoint {
            address: "10.96.0.7".into(),
            port: 10250,
        };
        let s = tenant_node_status(Some(&host), Some(&proxy));
        assert_eq!(
            s["addresses"],
            json!([{"type": "InternalIP", "address": "10.96.0.7"}])
        );
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
        assert!(!s.to_string().contains("192.168.7.4"));
    }
}
